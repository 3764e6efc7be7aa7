//! Interop with Hugging Face peft: adapters written by Python peft (fixtures made by
//! scripts/make_fixtures.py) load here and give peft's logits; trainable-parameter counts match.

use super::common::*;
use burn::prelude::*;
use finetune::io::peft::AdapterFiles;
use finetune::io::safetensors::SafetensorsFile;
use finetune::models::text_classifier::TextClassifier;
use finetune::models::{Head, ModelDir, load_text_classifier};
use finetune::nn::classification_head::Pooling;

fn peft_reference(name: &str) -> Vec<f32> {
    SafetensorsFile::open(&fixtures().join("peft-reference.safetensors")).unwrap().tensor(name).unwrap().data
}

fn tiny(device: &Device) -> TextClassifier {
    let dir = ModelDir::open(&tiny_bert()).unwrap();
    load_text_classifier(&dir, 3, Pooling::Pooler, 0.1, Head::FromCheckpoint, device).unwrap().0
}

fn with_adapter(name: &str, device: &Device) -> (TextClassifier, finetune::methods::Tuner) {
    let files = AdapterFiles::read(&fixtures().join("peft").join(name)).unwrap();
    finetune::methods::load_adapter(tiny(device), &files, device).unwrap()
}

/// LoRA (with modules_to_save), rsLoRA (regex targets), DoRA and prompt tuning adapters written by
/// peft give peft's logits within 1e-5.
#[test]
fn peft_adapters_give_peft_logits() {
    let device = Device::flex();
    let input = super::numerics::reference_input(&device);
    for name in ["lora", "rslora", "dora", "prompt"] {
        let (model, _) = with_adapter(name, &device);
        let logits = values(model.valid().forward(&input));
        let d = max_abs_diff(&logits, &peft_reference(&format!("{name}.logits")));
        assert!(d < 1e-5, "{name}: logits differ from peft by {d}");
    }
}

/// peft LoRA adapters (SEQ_CLS, peft's default modules_to_save) on the RoBERTa, XLM-RoBERTa,
/// DistilBERT and ELECTRA fixtures (scripts/make_encoder_fixtures.py) load over their base and
/// give peft's logits (1e-5); the head comes from the adapter's `classifier` (RoBERTa's and
/// ELECTRA's `classifier.dense` + `classifier.out_proj`).
#[test]
fn peft_adapters_of_other_encoder_families_give_peft_logits() {
    let refs = super::numerics::encoder_references();
    for name in ["tiny-roberta", "tiny-xlm-roberta", "tiny-distilbert", "tiny-electra"] {
        let base = fixtures().join("encoders").join(name).display().to_string();
        let adapter = fixtures().join("encoders").join(format!("peft-{name}"));
        let m = finetune::inference::text::FinetunedClassifier::load(Some(&base), Some(&adapter), "cpu", None)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let input = super::numerics::encoder_reference_input(name, &Device::flex());
        let logits = values(m.model.forward(&input));
        let d = max_abs_diff(&logits, &refs.tensor(&format!("{name}.peft_logits")).unwrap().data);
        assert!(d < 1e-5, "{name}: logits differ from peft by {d}");
    }
}

/// The number of trainable parameters equals peft's `print_trainable_parameters` for each config.
#[test]
fn trainable_parameter_counts_match_peft() {
    let device = Device::flex().autodiff();
    for name in ["lora", "rslora", "dora", "prompt"] {
        let (model, spec) = with_adapter(name, &device);
        let (_, count) = spec.trainable_counts(&model, &Default::default());
        assert_eq!(count as f32, peft_reference(&format!("{name}.trainable_params"))[0], "{name}");
    }
}

fn load_with_adapter(name: &str) -> finetune::inference::text::FinetunedClassifier {
    let base = tiny_bert().display().to_string();
    let adapter = fixtures().join("peft").join(name);
    finetune::inference::text::FinetunedClassifier::load(Some(&base), Some(&adapter), "cpu", None).unwrap()
}

/// `merge` folds LoRA/rsLoRA/DoRA into the base exactly as peft's `merge_and_unload` (1e-6), the
/// merged model's forward equals the adapted one's, and the saved merged model gives peft's logits.
#[test]
fn merge_matches_peft_merge_and_unload() {
    use finetune::models::Adaptable;
    let device = Device::flex();
    let input = super::numerics::reference_input(&device);
    for name in ["lora", "rslora", "dora"] {
        let mut m = load_with_adapter(name);
        let before = values(m.model.forward(&input));
        m.merge_adapter().unwrap();
        let after = values(m.model.forward(&input));
        assert!(max_abs_diff(&before, &after) < 1e-5, "{name}: merged forward differs");
        let reference = SafetensorsFile::open(&fixtures().join("peft-reference.safetensors")).unwrap();
        let mut compared = 0;
        for (module, dense) in m.model.dense_layers() {
            let key = format!("{name}.merged.{module}.weight");
            if !reference.contains(&key) {
                continue;
            }
            let ours = values(dense.weight.val().transpose());
            let d = max_abs_diff(&ours, &reference.tensor(&key).unwrap().data);
            assert!(d < 1e-6, "{key}: merged weight differs from peft by {d}");
            compared += 1;
        }
        assert!(compared >= 4, "{name}: only {compared} merged weights compared");
        let out = tempfile::tempdir().unwrap();
        m.save_model(out.path()).unwrap();
        let plain = finetune::inference::text::FinetunedClassifier::load(
            Some(&out.path().display().to_string()),
            None,
            "cpu",
            None,
        )
        .unwrap();
        let d = max_abs_diff(&values(plain.model.forward(&input)), &peft_reference(&format!("{name}.logits")));
        assert!(d < 1e-5, "{name}: saved merged model differs from peft by {d}");
    }
}

fn lora_recipe(dir: &std::path::Path, method: &str) -> std::path::PathBuf {
    let extra = r#"
[lora]
r = 4
lora_alpha = 8
lora_dropout = 0.1
target_modules = ["query", "value"]
init_lora_weights = "gaussian"

[prompt_tuning]
num_virtual_tokens = 5
init = "text"
init_text = "great terrible review"
"#;
    let recipe = tiny_recipe(dir, method, "run", "learning_rate_unused = 0");
    let text = std::fs::read_to_string(&recipe).unwrap().replace("learning_rate_unused = 0\n", "") + extra;
    std::fs::write(&recipe, text).unwrap();
    recipe
}

/// LoRA training updates only the adapters and the head; the adapter is written in peft's format
/// and `finetune eval --adapter` reproduces the run's test metrics.
#[test]
fn lora_training_updates_only_adapters_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = lora_recipe(dir.path(), "lora");
    let report = {
        let _guard = serial();
        let r = finetune::recipe::Recipe::load(&recipe, &[]).unwrap();
        finetune::tasks::text_classification::run(&r, false, false).unwrap()
    };
    let files = AdapterFiles::read(&report.model_dir).unwrap();
    assert_eq!(files.peft_type().unwrap(), "LORA");
    let keys: Vec<&String> = files.tensors.keys().collect();
    assert_eq!(keys.len(), 2 * 2 * 2 + 2, "q,v lora_A/B in 2 layers + classifier: {keys:?}");
    let b = files.tensor("base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight").unwrap();
    assert!(b.data.iter().any(|&v| v != 0.0), "lora_B stayed zero: no gradient reached it");
    // Only adapter and head parameters have optimizer state.
    let latest = std::fs::read_to_string(report.run_dir.join("checkpoints/LATEST")).unwrap();
    let opt =
        SafetensorsFile::open(&report.run_dir.join("checkpoints").join(latest.trim()).join("optimizer.safetensors"))
            .unwrap();
    for k in opt.names() {
        assert!(k.contains(".lora.") || k.starts_with("head.classifier."), "frozen parameter has state: {k}");
    }
    assert_eq!(report.trainable_params, 2 * 2 * (32 * 4 + 4 * 32) + 32 * 2 + 2);
    let metrics = eval_adapter_cli(&tiny_bert(), &report.model_dir, &dir.path().join("data/test.csv"));
    assert!((metrics["accuracy"].as_f64().unwrap() - report.test.unwrap().accuracy.unwrap()).abs() < 1e-9);
}

/// Prompt tuning trains the prompt (initialised from a text's embeddings) and the head only.
#[test]
fn prompt_tuning_trains_prompt_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = lora_recipe(dir.path(), "prompt-tuning");
    let report = {
        let _guard = serial();
        let r = finetune::recipe::Recipe::load(&recipe, &[]).unwrap();
        finetune::tasks::text_classification::run(&r, false, false).unwrap()
    };
    let files = AdapterFiles::read(&report.model_dir).unwrap();
    assert_eq!(files.peft_type().unwrap(), "PROMPT_TUNING");
    let keys: Vec<&String> = files.tensors.keys().collect();
    assert_eq!(keys, vec!["base_model.classifier.bias", "base_model.classifier.weight", "prompt_embeddings"]);
    assert_eq!(report.trainable_params, 5 * 32 + 32 * 2 + 2);
    let latest = std::fs::read_to_string(report.run_dir.join("checkpoints/LATEST")).unwrap();
    let opt =
        SafetensorsFile::open(&report.run_dir.join("checkpoints").join(latest.trim()).join("optimizer.safetensors"))
            .unwrap();
    for k in opt.names() {
        assert!(k.starts_with("prompt.") || k.starts_with("head.classifier."), "frozen parameter has state: {k}");
    }
}

/// Switching adapters over one base gives each adapter's own logits, and the bare base is intact.
#[test]
fn adapters_switch_without_reloading_the_base() {
    use finetune::inference::text::AdapterSet;
    let device = Device::flex();
    let input = super::numerics::reference_input(&device);
    let base = tiny(&device).valid();
    let base_logits = values(base.forward(&input));
    let mut set = AdapterSet::new(base, &device);
    for name in ["lora", "dora", "prompt"] {
        set.add(name, &fixtures().join("peft").join(name)).unwrap();
    }
    for name in ["dora", "lora", "prompt", "dora"] {
        let logits = values(set.activate(Some(name)).unwrap().forward(&input));
        let d = max_abs_diff(&logits, &peft_reference(&format!("{name}.logits")));
        assert!(d < 1e-5, "{name} after switching: differs from peft by {d}");
    }
    let d = max_abs_diff(&values(set.activate(None).unwrap().forward(&input)), &base_logits);
    assert_eq!(d, 0.0, "the base model changed");
}

/// Setting up the method does not initialize the adapters it attached: a LoRA `A` (lazy, random)
/// is drawn at its first use in the first training step, from the generator the trainer seeded
/// for that step, whatever inspected the model before — so runs repeat across versions that
/// inspect the model differently (a refactor once drew `A` earlier and changed every LoRA run).
#[test]
fn method_setup_leaves_adapters_uninitialized() {
    use finetune::methods::{Method, Sections, Tuner};
    let device = Device::flex().autodiff();
    let transfer = Default::default();
    let lora: finetune::methods::lora::LoraConfig =
        serde_json::from_value(serde_json::json!({"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}))
            .unwrap();
    let sections = Sections {
        transfer: &transfer,
        lora: Some(&lora),
        prompt_tuning: None,
        quantization: None,
        batch_norm: Default::default(),
    };
    let mut tuner = Tuner::new(Method::Lora, sections, &["classifier".to_string()]).unwrap();
    let model = tuner.attach(tiny(&device), &|_| unreachable!(), &device).unwrap();
    let hooks = tuner.hooks(&model);
    let (model, _) = hooks.set_trainable(model, 0, 0);
    let adapter = model.bert.encoder.layer[0].attention.self_attn.query.lora.as_ref().unwrap();
    assert!(!adapter.a.is_initialized(), "the adapter's A was drawn before the first step");
    // ... and it is trainable once it exists.
    assert!(adapter.a.val().is_require_grad());
}

/// Every peft LoraConfig option finetune implements (fixtures: one adapter per option, written by
/// peft 0.21.2): loading gives peft's probabilities (1e-5; logits 5e-5) and trainable-parameter count; saving it again
/// writes the keys and shapes peft wrote (so peft loads it into the same modules) and a config
/// that reads back to the same adapter.
#[test]
fn every_peft_lora_option_round_trips() {
    let device = Device::flex();
    let input = super::numerics::reference_input(&device);
    let reference = SafetensorsFile::open(&fixtures().join("peft-options-reference.safetensors")).unwrap();
    let options = [
        "patterns",
        "layers",
        "layers-default",
        "exclude-names",
        "exclude-regex",
        "all-linear",
        "bias-all",
        "bias-lora-only",
    ];
    for name in options {
        let dir = fixtures().join("peft/options").join(name);
        let files = AdapterFiles::read(&dir).unwrap();
        let (model, tuner) = finetune::methods::load_adapter(tiny(&device), &files, &device).unwrap();
        let logits = values(model.valid().forward(&input));
        let theirs = reference.tensor(&format!("{name}.logits")).unwrap().data;
        let d = max_abs_diff(&logits, &theirs);
        assert!(d < 5e-5, "{name}: logits differ from peft by {d}");
        let d = max_abs_diff(&softmax_rows(&logits, 3), &softmax_rows(&theirs, 3));
        assert!(d < 1e-5, "{name}: probabilities differ from peft by {d}");
        let (_, count) = tuner.trainable_counts(&model, &Default::default());
        assert_eq!(count as f32, reference.tensor(&format!("{name}.trainable_params")).unwrap().data[0], "{name}");

        // finetune → peft: the same keys and shapes as peft's own file (peft's extra copies of a
        // module to save under bias = "all" aside), and the config reads back the same.
        let out = tempfile::tempdir().unwrap();
        tuner.save_adapter(&model, "tests/fixtures/tiny-bert", Some("SEQ_CLS"), out.path()).unwrap();
        let ours = AdapterFiles::read(out.path()).unwrap();
        let shapes = |f: &AdapterFiles| -> Vec<(String, Vec<usize>)> {
            f.tensors
                .iter()
                .filter(|(k, _)| !k.contains(".original_module.") && !k.contains(".modules_to_save."))
                .map(|(k, t)| (k.clone(), t.shape.clone()))
                .collect()
        };
        assert_eq!(shapes(&ours), shapes(&files), "{name}: saved keys differ from peft's");
        for field in [
            "r",
            "lora_alpha",
            "rank_pattern",
            "alpha_pattern",
            "layers_to_transform",
            "layers_pattern",
            "exclude_modules",
            "bias",
        ] {
            assert_eq!(numbers_as_f64(&ours.config[field]), numbers_as_f64(&files.config[field]), "{name}: {field}");
        }
        let (again, _) = finetune::methods::load_adapter(tiny(&device), &ours, &device).unwrap();
        assert_eq!(values(again.valid().forward(&input)), logits, "{name}: reloading our adapter changed the logits");
    }
}

fn softmax_rows(x: &[f32], width: usize) -> Vec<f32> {
    x.chunks(width)
        .flat_map(|row| {
            let m = row.iter().cloned().fold(f32::MIN, f32::max);
            let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
            let s: f32 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect()
}

/// JSON with every number as a float (peft writes `8` where finetune writes `8.0`).
fn numbers_as_f64(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_f64).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), numbers_as_f64(v))).collect()),
        other => other.clone(),
    }
}

/// Options finetune does not implement, and fields it does not know, are refused by name rather
/// than loaded into an adapter that computes something else.
#[test]
fn unsupported_peft_options_are_refused_by_name() {
    let device = Device::flex();
    let base = AdapterFiles::read(&fixtures().join("peft/lora")).unwrap();
    for (field, value) in [
        ("lora_bias", serde_json::json!(true)),
        ("use_qalora", serde_json::json!(true)),
        ("layer_replication", serde_json::json!([[0, 1]])),
        ("init_lora_weights", serde_json::json!("pissa")),
        ("some_future_option", serde_json::json!(0.5)),
    ] {
        let mut files = base.clone();
        files.config[field] = value;
        let err = format!("{:#}", finetune::methods::load_adapter(tiny(&device), &files, &device).err().unwrap());
        assert!(err.contains(field) && err.contains("adapter_config.json"), "{field}: {err}");
    }
    // Harmless unknown fields (null / false / empty) are accepted.
    let mut files = base.clone();
    files.config["some_future_option"] = serde_json::Value::Null;
    finetune::methods::load_adapter(tiny(&device), &files, &device).unwrap();
}

/// Several adapters at once, peft's way: a `save_pretrained` directory holding two adapters (the
/// default at the root, `second` in a subfolder), both active, gives peft's logits with both
/// active; a directory holding only named adapters says which; two adapters that each train
/// the classifier are refused, as peft refuses to activate them together.
#[test]
fn several_adapters_combine_as_peft_does() {
    let device = Device::flex();
    let input = super::numerics::reference_input(&device);
    let multi = fixtures().join("peft/options/multi");
    assert_eq!(AdapterFiles::named_adapters(&multi), ["second"]);
    let base = tiny_bert().display().to_string();
    let both = [multi.clone(), multi.join("second")];
    let m = finetune::inference::text::FinetunedClassifier::load_combined(Some(&base), &both, "cpu", None).unwrap();
    let logits = values(m.model.forward(&input));
    let reference = SafetensorsFile::open(&fixtures().join("peft-options-reference.safetensors")).unwrap();
    let theirs = reference.tensor("multi.logits").unwrap().data;
    let d = max_abs_diff(&softmax_rows(&logits, 3), &softmax_rows(&theirs, 3));
    assert!(d < 1e-5, "two active adapters: probabilities differ from peft by {d}");
    // Either alone differs: the combination is not one of them.
    let one = finetune::inference::text::FinetunedClassifier::load(Some(&base), Some(&multi), "cpu", None).unwrap();
    assert!(max_abs_diff(&values(one.model.forward(&input)), &theirs) > 1e-3);

    let tmp = tempfile::tempdir().unwrap();
    let only_named = tmp.path().join("adapters");
    std::fs::create_dir_all(only_named.join("second")).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(multi.join("second").join(f), only_named.join("second").join(f)).unwrap();
    }
    let err = format!("{:#}", AdapterFiles::read(&only_named).unwrap_err());
    assert!(err.contains("second") && err.contains("--adapter"), "{err}");

    let heads = [fixtures().join("peft/lora"), fixtures().join("peft/options/bias-all")];
    let err = format!(
        "{:#}",
        finetune::inference::text::FinetunedClassifier::load_combined(Some(&base), &heads, "cpu", None).err().unwrap()
    );
    assert!(err.contains("classifier") && err.contains("together"), "{err}");
}

/// A mean-pooled classifier cannot be loaded by transformers as `BertForSequenceClassification`
/// without a random pooler changing its outputs: the exported model says `BertModel` and is a
/// sentence-transformers directory whose Dense layer is the classifier (Python reproduces the
/// logits: scripts/check_mean_pooling.py); finetune still reads it as a classifier. A
/// mean-pooled adapter carries a README saying how to reproduce it.
#[test]
fn mean_pooled_models_export_so_python_cannot_silently_disagree() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "full", "run", "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(["train", &recipe.display().to_string(), "--no-progress", "--set", "training.epochs=1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let model = dir.path().join("run/model");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"], serde_json::json!(["BertModel"]));
    let modules: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("modules.json")).unwrap()).unwrap();
    assert_eq!(modules[2]["type"], "sentence_transformers.models.Dense");
    let pooling: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("1_Pooling/config.json")).unwrap()).unwrap();
    assert_eq!(pooling["pooling_mode_mean_tokens"], true);
    let dense = SafetensorsFile::open(&model.join("2_Dense/model.safetensors")).unwrap();
    let weights = SafetensorsFile::open(&model.join("model.safetensors")).unwrap();
    assert_eq!(dense.tensor("linear.weight").unwrap().data, weights.tensor("classifier.weight").unwrap().data);
    assert_eq!(dense.tensor("linear.bias").unwrap().data, weights.tensor("classifier.bias").unwrap().data);
    let m = finetune::inference::text::FinetunedClassifier::load(Some(&model.display().to_string()), None, "cpu", None)
        .unwrap();
    assert_eq!(m.model.pooling, Pooling::Mean);

    let lora = lora_recipe(dir.path(), "lora");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(["train", &lora.display().to_string(), "--no-progress", "--set", "training.epochs=1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let readme = std::fs::read_to_string(dir.path().join("run/adapter/README.md")).unwrap();
    assert!(readme.contains("finetune merge") && readme.contains("SentenceTransformer"), "{readme}");
}
