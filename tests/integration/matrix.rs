//! The task × method table, cell by cell, on the smallest model each task has: the tiny BERT and
//! tiny Llama fixtures (made by transformers' own classes; the Llama gets a character-level
//! tokenizer written here), MobileNetV2 and Whisper tiny.en (real assets). Every supported cell
//! trains two steps, then:
//!
//! - what trained is what the method trains: the optimizer holds state for exactly the reported
//!   number of trainable parameters, and for the right ones (head only, adapters and head, the
//!   prompt and head, or everything);
//! - what the method freezes did not change: the saved (or merged) model equals the base
//!   checkpoint outside the head and the adapted layers;
//! - the saved result reloads through the inference path and predicts.
//!
//! Every unsupported cell is refused before a run directory exists, naming what the task supports.

use super::common::*;
use finetune::io::safetensors::{HostTensor, SafetensorsFile};
use finetune::methods::Method;
use finetune::recipe::{Recipe, Task};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const METHODS: [Method; 5] =
    [Method::FeatureExtraction, Method::Full, Method::Transfer, Method::Lora, Method::PromptTuning];

/// The trained parameters (optimizer state) of a finished run: path → number of elements.
fn trained(run: &Path) -> BTreeMap<String, usize> {
    let latest = std::fs::read_to_string(run.join("checkpoints/LATEST")).unwrap();
    let f = SafetensorsFile::open(&run.join("checkpoints").join(latest.trim()).join("optimizer.safetensors")).unwrap();
    f.names()
        .into_iter()
        .filter_map(|k| k.strip_suffix(".exp_avg").map(String::from))
        .map(|p| {
            let n = f.tensor(&format!("{p}.exp_avg")).unwrap().data.len();
            (p, n)
        })
        .collect()
}

fn tensors(path: &Path) -> BTreeMap<String, HostTensor> {
    let f = SafetensorsFile::open(path).unwrap();
    f.names().into_iter().map(|k| (k.clone(), f.tensor(&k).unwrap())).collect()
}

/// Keys of `saved` whose values differ from `base` (looked up as `base_key(key)`); keys the
/// base lacks (a new head) count as changed.
fn changed(
    saved: &BTreeMap<String, HostTensor>,
    base: &BTreeMap<String, HostTensor>,
    base_key: impl Fn(&str) -> String,
) -> Vec<String> {
    saved
        .iter()
        .filter(|(k, t)| base.get(&base_key(k)).is_none_or(|b| b.shape != t.shape || b.data != t.data))
        .map(|(k, _)| k.clone())
        .collect()
}

type Reload = Box<dyn Fn(&Path, Method)>;

/// What one cell needs: a recipe body (without method and output), the base checkpoint, how a
/// saved key names it there, which saved keys are the head, and a reload-and-predict check.
struct Cell {
    recipe: String,
    base: BTreeMap<String, HostTensor>,
    base_key: fn(&str) -> String,
    is_head: fn(&str) -> bool,
    /// Path-level check of one trained parameter under `method`.
    trains: fn(Method, &str) -> bool,
    /// Reload the run's output (model or adapter) and predict; panics on failure.
    reload: Reload,
}

fn run_cell(tmp: &Path, task: Task, method: Method, cell: &Cell) {
    let out = tmp.join(format!("{}-{}", task.name(), method.name()));
    let text = format!(
        "task = \"{}\"\nmethod = \"{}\"\noutput_dir = \"{}\"\n{}",
        task.name(),
        method.name(),
        out.display(),
        cell.recipe
    );
    let supported = task.methods().contains(&method);
    let recipe = Recipe::parse(&text, &[]);
    if !supported {
        let e = format!("{:#}", recipe.expect_err("an unsupported cell is refused"));
        assert!(e.contains("it supports: "), "{task:?} × {method:?}: {e}");
        assert!(!out.exists(), "{task:?} × {method:?}: a run directory was created");
        return;
    }
    let recipe = recipe.unwrap_or_else(|e| panic!("{task:?} × {method:?}: {e:#}"));
    let outcome = {
        let _guard = serial();
        finetune::tasks::train(&recipe, false, false).unwrap_or_else(|e| panic!("{task:?} × {method:?}: {e:#}"))
    };
    let report = &outcome.json;
    let what = format!("{} × {}", task.name(), method.name());

    // What trained: the optimizer's state covers exactly the reported trainable parameters.
    let state = trained(&out);
    assert!(!state.is_empty(), "{what}: nothing trained");
    assert_eq!(state.values().sum::<usize>() as u64, report["trainable_params"].as_u64().unwrap(), "{what}");
    for p in state.keys() {
        assert!((cell.trains)(method, p), "{what}: {p} trained");
    }
    match method {
        Method::Full => assert_eq!(report["trainable_params"], report["total_params"], "{what}: full trains all"),
        Method::Lora => assert!(state.keys().any(|p| p.contains(".lora.")), "{what}: no adapter trained"),
        Method::PromptTuning => assert!(state.contains_key("prompt.embeddings"), "{what}: the prompt did not train"),
        _ => {}
    }

    // What did not train did not change, in the saved model (merged, for an adapter run that
    // writes one).
    let model_file = out.join("model/model.safetensors");
    if model_file.is_file() {
        let saved = tensors(&model_file);
        let diff = changed(&saved, &cell.base, cell.base_key);
        let body: Vec<&String> = diff.iter().filter(|k| !(cell.is_head)(k)).collect();
        match method {
            Method::Full => assert!(!body.is_empty(), "{what}: full fine-tuning changed only the head"),
            Method::Lora => {
                let targets = recipe.lora.as_ref().unwrap();
                for k in &body {
                    let module = k.rsplit_once('.').map_or("", |(m, _)| m);
                    assert!(targets.targets(module), "{what}: {k} changed but is not adapted");
                }
                assert!(!body.is_empty(), "{what}: the merged model equals the base");
            }
            _ => assert!(body.is_empty(), "{what}: frozen tensors changed: {body:?}"),
        }
    } else {
        assert!(method.is_peft(), "{what}: no model saved");
    }
    (cell.reload)(&out, method);
}

fn run_row(task: Task, cell: Option<Cell>) {
    let Some(cell) = cell else { return };
    let tmp = tempfile::tempdir().unwrap();
    for method in METHODS {
        run_cell(tmp.path(), task, method, &cell);
    }
}

const TRAINING: &str = "[training]\nepochs = 1\nbatch_size = 4\neval_batch_size = 8\nlearning_rate = 1e-2\nwarmup_ratio = 0.0\nmax_steps = 2\n";

#[test]
fn text_classification_row() {
    text_classification_row_for(&tiny_bert(), "mean", "[\"query\", \"value\"]", |k| {
        k.starts_with("classifier.") || k.starts_with("bert.pooler.")
    });
}

/// The other encoder families, with their own classification heads (`head.pooling = "pooler"`:
/// RoBERTa's and ELECTRA's `classifier.dense`, DistilBERT's `pre_classifier`, new layers that
/// every method trains with the classifier).
#[test]
fn text_classification_row_other_families() {
    let families = fixtures().join("encoders");
    let targets = "[\"query\", \"value\", \"q_lin\", \"v_lin\"]";
    for name in ["tiny-roberta", "tiny-distilbert", "tiny-electra"] {
        text_classification_row_for(&families.join(name), "pooler", targets, |k| {
            k.starts_with("classifier.") || k.starts_with("pre_classifier.")
        });
    }
}

fn text_classification_row_for(model: &Path, pooling: &str, targets: &str, is_head: fn(&str) -> bool) {
    let tmp = tempfile::tempdir().unwrap();
    let data = uci_splits(tmp.path());
    let recipe = format!(
        "model = \"{}\"\n[data]\ndataset = \"{}\"\ntrain = \"train.csv\"\nvalidation = \"validation.csv\"\ntest = \"test.csv\"\nmax_length = 32\n\
         [head]\npooling = \"{pooling}\"\n[feature_extraction]\ncache_dir = \"{}\"\n{TRAINING}\
         [lora]\nr = 4\nlora_alpha = 8\ntarget_modules = {targets}\n[prompt_tuning]\nnum_virtual_tokens = 4\n",
        model.display(),
        data.display(),
        tmp.path().join("features").display()
    );
    let test_file = data.join("test.csv");
    let base = model.display().to_string();
    let reload = move |out: &Path, method: Method| {
        let m = if method.is_peft() {
            finetune::inference::text::FinetunedClassifier::load(Some(&base), Some(&out.join("adapter")), "cpu", None)
        } else {
            finetune::inference::text::FinetunedClassifier::load(
                Some(&out.join("model").display().to_string()),
                None,
                "cpu",
                None,
            )
        }
        .unwrap_or_else(|e| panic!("{base} × {method:?}: {e:#}"));
        let cols = finetune::data::text::Columns::default();
        let metrics = m.evaluate_file(&test_file, &cols, 16, false).unwrap();
        assert!(metrics.loss.is_finite() && metrics.examples == 40, "{metrics:?}");
    };
    run_row(
        Task::TextClassification,
        Some(Cell {
            recipe,
            base: tensors(&model.join("model.safetensors")),
            base_key: |k| k.to_string(),
            is_head,
            trains: |method, p| match method {
                Method::FeatureExtraction => p.starts_with("classifier."),
                Method::Transfer => p.starts_with("head.") || p.starts_with("bert.pooler."),
                // The pooler of a family whose head holds it is saved with the classifier.
                Method::Lora => p.contains(".lora.") || p.starts_with("head.") || p.starts_with("bert.pooler."),
                Method::PromptTuning => {
                    p.starts_with("prompt.") || p.starts_with("head.") || p.starts_with("bert.pooler.")
                }
                _ => true,
            },
            reload: Box::new(reload),
        }),
    );
}

/// Token classification (named entities) on the first 120 / 40 / 40 tweets of the real WNUT 2016
/// training data with the tiny BERT: every method it supports trains the right parameters and
/// its result reloads and scores entities; feature extraction and prompt tuning are refused by
/// name.
#[test]
fn token_classification_row() {
    let Some(wnut) = cached_asset("finetune/wnut16-ner", finetune::io::hub::RepoKind::Dataset, "train.conll", "wnut")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ner");
    std::fs::create_dir_all(&data).unwrap();
    let text = std::fs::read_to_string(wnut.join("train.conll")).unwrap();
    let tweets: Vec<&str> = text.split("\n\n").filter(|t| !t.trim().is_empty()).collect();
    for (name, range) in [("train", 0..120), ("validation", 120..160), ("test", 160..200)] {
        std::fs::write(data.join(format!("{name}.conll")), tweets[range].join("\n\n") + "\n").unwrap();
    }
    let recipe = format!(
        "model = \"{}\"\n[data]\ndataset = \"{}\"\ntrain = \"train.conll\"\nvalidation = \"validation.conll\"\ntest = \"test.conll\"\nmax_length = 48\n\
         {TRAINING}[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = [\"query\", \"value\"]\n[prompt_tuning]\nnum_virtual_tokens = 4\n",
        tiny_bert().display(),
        data.display(),
    );
    let test_file = data.join("test.conll");
    let reload = move |out: &Path, method: Method| {
        use finetune::inference::tokens::FinetunedTokenClassifier;
        let base = tiny_bert().display().to_string();
        let m = if method.is_peft() {
            FinetunedTokenClassifier::load(Some(&base), Some(&out.join("adapter")), "cpu")
        } else {
            FinetunedTokenClassifier::load(Some(&out.join("model").display().to_string()), None, "cpu")
        }
        .unwrap_or_else(|e| panic!("token classification × {method:?}: {e:#}"));
        let metrics = m.evaluate_file(&test_file, "tokens", "ner_tags", 16, false).unwrap();
        assert!(metrics.loss.is_finite() && metrics.f1.is_some() && metrics.examples == 40, "{metrics:?}");
        let tagged = m.predict(&["Empire State Building = ESB".to_string()]).unwrap();
        assert_eq!(tagged[0].words.len(), 5);
    };
    run_row(
        Task::TokenClassification,
        Some(Cell {
            recipe,
            base: tensors(&tiny_bert().join("model.safetensors")),
            base_key: |k| k.to_string(),
            is_head: |k| k.starts_with("classifier."),
            trains: |method, p| match method {
                Method::Transfer => p.starts_with("head."),
                Method::Lora => p.contains(".lora.") || p.starts_with("head."),
                _ => true,
            },
            reload: Box::new(reload),
        }),
    );
}

/// A character-level tokenizer for the tiny Llama's 96 ids: `<pad>`, `<s>`, `</s>`, then printable
/// ASCII.
fn char_tokenizer() -> Value {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<pad>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(t.to_string(), i.into());
    }
    for (i, c) in (32u8..125).enumerate() {
        vocab.insert((c as char).to_string(), (i + 3).into());
    }
    let special = |id: usize, content: &str| serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": " "}
    })
}

#[test]
fn causal_lm_row() {
    causal_lm_row_for(&fixtures().join("tiny-llama"));
}

/// The same row for the other decoder families (Qwen2's biases, Qwen3's q/k norms, Mistral's
/// window, Phi-3's fused projections, Gemma 3, GPT-2's Conv1D `c_attn` and learned positions):
/// every method trains what it should on each.
#[test]
fn causal_lm_row_other_families() {
    for name in ["tiny-qwen2", "tiny-qwen3", "tiny-mistral", "tiny-phi3", "tiny-gemma3", "tiny-gpt2"] {
        causal_lm_row_for(&fixtures().join("decoders").join(name));
    }
}

fn causal_lm_row_for(fixture: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny-model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), model.join(f)).unwrap();
    }
    std::fs::write(model.join("tokenizer.json"), char_tokenizer().to_string()).unwrap();
    let data = tmp.path().join("sft");
    std::fs::create_dir_all(&data).unwrap();
    let rows: Vec<String> = (0..12)
        .map(|i| {
            serde_json::json!({"prompt": format!("Q{i}: what is {i}+1?"), "completion": format!(" {}", i + 1)})
                .to_string()
        })
        .collect();
    for (split, range) in [("train", 0..8), ("validation", 8..10), ("test", 10..12)] {
        std::fs::write(data.join(format!("{split}.jsonl")), rows[range].join("\n")).unwrap();
    }
    let recipe = format!(
        "model = \"{}\"\n[data]\ndataset = \"{}\"\ntrain = \"train.jsonl\"\nvalidation = \"validation.jsonl\"\ntest = \"test.jsonl\"\nmax_length = 48\n\
         {TRAINING}metric = \"loss\"\n[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = [\"q_proj\", \"v_proj\", \"qkv_proj\", \"c_attn\"]\n[prompt_tuning]\nnum_virtual_tokens = 4\n",
        model.display(),
        data.display()
    );
    let base = model.clone();
    let reload = move |out: &Path, method: Method| {
        let device = burn::prelude::Device::flex();
        let lm = if method.is_peft() {
            finetune::inference::lm::load_with_adapter(&base, Some(&out.join("adapter")), &device)
        } else {
            finetune::inference::lm::load_with_adapter(&out.join("model"), None, &device)
        }
        .unwrap();
        let ids = lm.tokenizer.encode("Q1: what is 1+1?", true).unwrap();
        let s = finetune::models::generation::Sampling { max_new_tokens: 4, stop_ids: vec![2], ..Default::default() };
        let out = finetune::models::generation::generate(&lm.model, &ids, &s, &device, |_| {});
        assert!(out.len() <= 4);
    };
    run_row(
        Task::CausalLm,
        Some(Cell {
            recipe,
            base: tensors(&fixture.join("model.safetensors")),
            base_key: |k| k.to_string(),
            is_head: |_| false,
            trains: |method, p| match method {
                Method::Lora => p.contains(".lora."),
                Method::PromptTuning => p.starts_with("prompt."),
                _ => true,
            },
            reload: Box::new(reload),
        }),
    );
}

#[test]
fn image_classification_row() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(model) = super::vision::mobilenet_dir() else { return };
    let Some(data) = super::vision::fashion_folders(tmp.path(), 4) else { return };
    let recipe = format!(
        "model = \"{}\"\n[data]\ndataset = \"{}\"\ntrain = \"train\"\nvalidation = \"validation\"\ntest = \"test\"\n\
         [image]\nsize = 32\ncrop_pct = 1.0\n[feature_extraction]\ncache_dir = \"{}\"\n{TRAINING}\
         [lora]\nr = 4\nlora_alpha = 8\ntarget_modules = [\"features.18.0\", \"features.17.conv.2\"]\n",
        super::vision::MOBILENET_REPO,
        data.display(),
        tmp.path().join("features").display()
    );
    let weights =
        finetune::io::pth::PthFile::open(&finetune::models::ModelDir::open(&model).unwrap().weights_path()).unwrap();
    let base = weights.names().into_iter().filter_map(|k| weights.get(&k).map(|t| (k, t.clone()))).collect();
    let image = std::fs::read_dir(data.join("test/bag")).unwrap().next().unwrap().unwrap().path();
    let reload = move |out: &Path, _: Method| {
        let m = finetune::inference::image::FinetunedImageClassifier::load(&out.join("model"), "cpu").unwrap();
        let p = m.predict(std::slice::from_ref(&image), 3).unwrap();
        assert_eq!(p.len(), 1);
        assert!(p[0].top.iter().all(|(_, v)| v.is_finite()));
        // predict --json gives every label's probability, not only the top ones.
        let total: f32 = p[0].probabilities.iter().map(|(_, v)| v).sum();
        assert!(p[0].probabilities.len() == m.labels.len() && (total - 1.0).abs() < 1e-4, "{:?}", p[0].probabilities);
    };
    run_row(
        Task::ImageClassification,
        Some(Cell {
            recipe,
            base,
            base_key: |k| k.to_string(),
            // The head, and BatchNorm step counters a torchvision checkpoint keeps but we do not.
            is_head: |k| k.starts_with("classifier."),
            trains: |method, p| match method {
                Method::FeatureExtraction => p.starts_with("classifier."),
                Method::Transfer => p.starts_with("head."),
                Method::Lora => p.contains(".lora.") || p.starts_with("head."),
                _ => true,
            },
            reload: Box::new(reload),
        }),
    );
}

/// The audio file of the first test row of a manifest folder.
fn first_clip(data: &Path) -> PathBuf {
    let text = std::fs::read_to_string(data.join("test.jsonl")).unwrap();
    let row: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    PathBuf::from(row["audio"].as_str().unwrap())
}

fn whisper_base(model: &Path) -> BTreeMap<String, HostTensor> {
    finetune::models::whisper::ct2_tensors(&finetune::io::ctranslate2::Ct2Model::open(model).unwrap()).unwrap()
}

#[test]
fn audio_classification_row() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(model) =
        cached_asset(super::speech::WHISPER_REPO, finetune::io::hub::RepoKind::Model, "model.bin", "whisper")
    else {
        return;
    };
    let Some(data) = super::speech::small_words(tmp.path(), 2) else { return };
    let recipe = format!(
        "model = \"{}\"\n[data]\ndataset = \"{}\"\ntrain = \"train.jsonl\"\nvalidation = \"validation.jsonl\"\ntest = \"test.jsonl\"\n\
         [audio]\nseconds = 1.0\n[feature_extraction]\ncache_dir = \"{}\"\n{TRAINING}\
         [lora]\nr = 4\nlora_alpha = 8\ntarget_modules = [\"q_proj\", \"v_proj\"]\n",
        super::speech::WHISPER_REPO,
        data.display(),
        tmp.path().join("features").display()
    );
    let clip = first_clip(&data);
    let reload = move |out: &Path, _: Method| {
        let m = finetune::inference::audio::FinetunedAudioClassifier::load(&out.join("model"), "cpu").unwrap();
        let p = m.predict(std::slice::from_ref(&clip), 3).unwrap();
        assert!(p.len() == 1 && p[0].top.iter().all(|(_, v)| v.is_finite()));
    };
    run_row(
        Task::AudioClassification,
        Some(Cell {
            recipe,
            base: whisper_base(&model),
            base_key: |k| format!("model.{k}"),
            is_head: |k| k.starts_with("classifier."),
            trains: |method, p| match method {
                Method::FeatureExtraction => p.starts_with("classifier."),
                Method::Lora => p.contains(".lora.") || p.starts_with("head."),
                _ => true,
            },
            reload: Box::new(reload),
        }),
    );
}

#[test]
fn transcription_row() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(model) =
        cached_asset(super::speech::WHISPER_REPO, finetune::io::hub::RepoKind::Model, "model.bin", "whisper")
    else {
        return;
    };
    let Some(data) = super::speech::small_sentences(tmp.path()) else { return };
    let recipe = format!(
        "model = \"{}\"\n[data]\ndataset = \"{}\"\ntrain = \"train.jsonl\"\nvalidation = \"validation.jsonl\"\ntest = \"test.jsonl\"\n\
         {TRAINING}metric = \"loss\"\n[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = \"model\\\\.decoder\\\\.layers\\\\.\\\\d+\\\\.self_attn\\\\.(q_proj|v_proj)\"\n",
        super::speech::WHISPER_REPO,
        data.display()
    );
    let clip = first_clip(&data);
    let base_dir = model.clone();
    let reload = move |out: &Path, method: Method| {
        let t = if method.is_peft() {
            finetune::inference::transcriber::Transcriber::load(&base_dir, Some(&out.join("adapter")), "cpu")
        } else {
            finetune::inference::transcriber::Transcriber::load(&out.join("model"), None, "cpu")
        }
        .unwrap();
        t.transcribe_file(&clip).unwrap();
    };
    run_row(
        Task::Transcription,
        Some(Cell {
            recipe,
            base: whisper_base(&model),
            base_key: |k| k.to_string(),
            is_head: |_| false,
            trains: |method, p| match method {
                Method::Lora => p.contains(".lora."),
                Method::PromptTuning => p.starts_with("prompt."),
                _ => true,
            },
            reload: Box::new(reload),
        }),
    );
}
