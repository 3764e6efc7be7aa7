//! Numerics against PyTorch/transformers (fixtures made by scripts/make_fixtures.py).

use super::common::*;
use burn::prelude::*;
use finetune::data::batch::EncoderInput;
use finetune::data::tokenizer::TextTokenizer;
use finetune::io::safetensors::{HostTensor, SafetensorsFile, write_safetensors};
use finetune::models::text_classifier::{TextClassifier, pool};
use finetune::models::{Head, ModelDir, load_text_classifier};
use finetune::nn::classification_head::Pooling;
use finetune::training::loss::cross_entropy;

pub fn reference_input(device: &Device) -> EncoderInput {
    let ids = reference("input_ids");
    let types = reference("token_type_ids");
    let mask = reference("attention_mask");
    let [b, l] = [ids.shape[0], ids.shape[1]];
    let as_int = |t: &HostTensor| t.data.iter().map(|&v| v as i64).collect::<Vec<_>>();
    EncoderInput {
        input_ids: Tensor::from_data(TensorData::new(as_int(&ids), [b, l]), device),
        token_type_ids: Tensor::from_data(TensorData::new(as_int(&types), [b, l]), device),
        attention_mask: Tensor::from_data(TensorData::new(mask.data, [b, l]), device),
    }
}

fn load_tiny(pooling: Pooling, device: &Device) -> TextClassifier {
    let dir = ModelDir::open(&tiny_bert()).unwrap();
    let (model, report) = load_text_classifier(&dir, 3, pooling, 0.1, Head::FromCheckpoint, device).unwrap();
    assert!(report.initialized.is_empty(), "fixture has every weight: {:?}", report.initialized);
    model
}

/// Hidden states, pooler output, mean pooling and logits of the tiny random BERT match
/// transformers to 1e-4 (inputs include padding and token_type_ids).
#[test]
fn tiny_bert_matches_transformers() {
    let device = Device::flex();
    let model = load_tiny(Pooling::Pooler, &device).valid();
    let input = reference_input(&device);
    let hidden = model.bert.forward(&input);
    let tol = 1e-4;
    let d = max_abs_diff(&values(hidden.clone()), &reference("last_hidden_state").data);
    assert!(d < tol, "last_hidden_state differs by {d}");
    let d = max_abs_diff(&values(model.bert.pool(&hidden).unwrap()), &reference("pooler_output").data);
    assert!(d < tol, "pooler_output differs by {d}");
    let mean = pool(&model.bert, hidden, input.attention_mask.clone(), Pooling::Mean);
    let d = max_abs_diff(&values(mean), &reference("mean_pooled").data);
    assert!(d < tol, "mean pooling differs by {d}");
    let d = max_abs_diff(&values(model.forward(&input)), &reference("logits").data);
    assert!(d < tol, "logits differ by {d}");
}

/// Gradients of the cross-entropy loss w.r.t. weights match PyTorch autograd.
#[test]
fn tiny_bert_gradients_match_pytorch() {
    let device = Device::flex().autodiff();
    // Dropout off (transformers computed the reference in eval mode) but autodiff on.
    let model = load_tiny(Pooling::Pooler, &device).without_dropout();
    let input = reference_input(&device);
    let labels: Vec<i64> = reference("labels").data.iter().map(|&v| v as i64).collect();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [3]), &device);
    let loss = cross_entropy(model.forward(&input), labels);
    let loss_value: f32 = loss.clone().into_scalar();
    assert!((loss_value - reference("loss").data[0]).abs() < 1e-5, "loss {loss_value}");
    let grads = loss.backward();
    let check = |name: &str, g: Tensor<2>, transpose: bool| {
        let r = reference(name);
        let r = if transpose { r.transpose2() } else { r };
        let d = max_abs_diff(&values(g), &r.data);
        assert!(d < 1e-5, "{name}: gradient differs by {d}");
    };
    check("grad.classifier.weight", model.head.classifier.weight.val().grad(&grads).unwrap(), true);
    let q = &model.bert.encoder.layer[0].attention.self_attn.query.weight;
    check("grad.bert.encoder.layer.0.attention.self.query.weight", q.val().grad(&grads).unwrap(), true);
    let ln = model.bert.embeddings.layer_norm.gamma.val().grad(&grads).unwrap();
    let d = max_abs_diff(&values(ln), &reference("grad.bert.embeddings.LayerNorm.weight").data);
    assert!(d < 1e-5, "embeddings LayerNorm gradient differs by {d}");
}

/// The reference batch of one of the other encoder families' fixtures, and the reference file.
pub fn encoder_reference_input(name: &str, device: &Device) -> EncoderInput {
    let refs = encoder_references();
    let r = |k: &str| refs.tensor(&format!("{name}.{k}")).unwrap();
    let ids = r("input_ids");
    let [b, l] = [ids.shape[0], ids.shape[1]];
    let int = |t: HostTensor| {
        let v: Vec<i64> = t.data.iter().map(|&v| v as i64).collect();
        Tensor::<2, Int>::from_data(TensorData::new(v, [b, l]), device)
    };
    EncoderInput {
        input_ids: int(ids),
        token_type_ids: int(r("token_type_ids")),
        attention_mask: Tensor::from_data(TensorData::new(r("attention_mask").data, [b, l]), device),
    }
}

pub fn encoder_references() -> SafetensorsFile {
    SafetensorsFile::open(&fixtures().join("encoders/encoders-reference.safetensors")).unwrap()
}

/// The other encoder families (tests/fixtures/encoders, made by scripts/make_encoder_fixtures.py
/// with transformers' own classes): RoBERTa's offset positions (padding included), XLM-RoBERTa's
/// names, DistilBERT's layer names and missing token types, ELECTRA's projected embeddings, and
/// each family's classification head give transformers' hidden states and logits (1e-4), its
/// loss and one attention weight's gradient (1e-5).
#[test]
fn encoder_families_match_transformers() {
    let refs = encoder_references();
    for name in ["tiny-roberta", "tiny-xlm-roberta", "tiny-distilbert", "tiny-electra"] {
        let r = |k: &str| refs.tensor(&format!("{name}.{k}")).unwrap();
        let device = Device::flex().autodiff();
        let dir = ModelDir::open(&fixtures().join("encoders").join(name)).unwrap();
        let (model, report) = load_text_classifier(&dir, 3, Pooling::Pooler, 0.0, Head::FromCheckpoint, &device)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(report.initialized.is_empty() && report.unused.is_empty(), "{name}: {report:?}");
        let model = model.without_dropout();
        let input = encoder_reference_input(name, &device);
        let b = input.input_ids.dims()[0];
        let d = max_abs_diff(&values(model.bert.forward(&input)), &r("last_hidden_state").data);
        assert!(d < 1e-4, "{name}: last_hidden_state differs by {d}");
        let logits = model.forward(&input);
        let d = max_abs_diff(&values(logits.clone()), &r("logits").data);
        assert!(d < 1e-4, "{name}: logits differ by {d}");
        let labels: Vec<i64> = r("labels").data.iter().map(|&v| v as i64).collect();
        let loss = cross_entropy(logits, Tensor::from_data(TensorData::new(labels, [b]), &device));
        let value: f32 = loss.clone().into_scalar();
        assert!((value - r("loss").data[0]).abs() < 1e-5, "{name}: loss {value} vs {}", r("loss").data[0]);
        let grads = loss.backward();
        let q = model.bert.encoder.layer[0].attention.self_attn.query.weight.val().grad(&grads).unwrap();
        let d = max_abs_diff(&values(q), &r("grad").transpose2().data);
        assert!(d < 1e-5, "{name}: query gradient differs by {d}");
    }
}

/// `BertForTokenClassification` and `RobertaForTokenClassification` checkpoints saved by
/// transformers (tests/fixtures/encoders/tiny-*-token) load as token classifiers (the head under
/// `classifier`, not RoBERTa's sequence head) and give transformers' logits on every token (1e-4);
/// words given one by one get transformers' ids (`is_split_into_words`; RoBERTa with
/// `add_prefix_space`).
#[test]
fn token_classifiers_match_transformers() {
    let refs = encoder_references();
    for name in ["tiny-bert-token", "tiny-roberta-token"] {
        let device = Device::flex();
        let dir = ModelDir::open(&fixtures().join("encoders").join(name)).unwrap();
        let (model, report) =
            finetune::models::load_token_classifier(&dir, 5, 0.0, Head::FromCheckpoint, &device).unwrap();
        assert!(report.initialized.is_empty() && report.unused.is_empty(), "{name}: {report:?}");
        let logits = model.valid().token_logits(&encoder_reference_input(name, &device));
        let d = max_abs_diff(&values(logits), &refs.tensor(&format!("{name}.token_logits")).unwrap().data);
        assert!(d < 1e-4, "{name}: token logits differ by {d}");
        // Words one by one: the ids transformers gives them (RoBERTa: add_prefix_space).
        let tok = finetune::data::tokenizer::TextTokenizer::from_file(&dir.tokenizer_path(), 64).unwrap();
        let words: Vec<String> =
            ["Empire", "State", "Building", "=", "ESB", ".", "Pretty", "bad", "storm", "here"].map(String::from).into();
        let ids: Vec<f32> = tok.encode_words(&words).unwrap().0.ids.iter().map(|&i| i as f32).collect();
        assert_eq!(ids, refs.tensor(&format!("{name}.word_input_ids")).unwrap().data, "{name}: word ids");
    }
}

/// A checkpoint with bare keys (`embeddings.…`, as sentence-transformers saves) loads the same
/// encoder as one with `bert.`-prefixed keys.
#[test]
fn bare_and_prefixed_keys_load_the_same_encoder() {
    let device = Device::flex();
    let src = SafetensorsFile::open(&tiny_bert().join("model.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bare: Vec<(String, HostTensor)> = src
        .names()
        .into_iter()
        .filter_map(|k| k.strip_prefix("bert.").map(|b| (b.to_string(), src.tensor(&k).unwrap())))
        .collect();
    write_safetensors(&dir.path().join("model.safetensors"), &bare, None).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny_bert().join(f), dir.path().join(f)).unwrap();
    }
    let (model, report) = load_text_classifier(
        &ModelDir::open(dir.path()).unwrap(),
        3,
        Pooling::Mean,
        0.0,
        Head::FromCheckpoint,
        &device,
    )
    .unwrap();
    assert_eq!(report.initialized, vec!["head.classifier.weight", "head.classifier.bias"]);
    let model = model.valid();
    let input = reference_input(&device);
    let d = max_abs_diff(&values(model.bert.forward(&input)), &reference("last_hidden_state").data);
    assert!(d < 1e-4, "bare-key model differs by {d}");
}

/// The real all-MiniLM-L6-v2: token ids and mean-pooled embeddings of five sentences match
/// transformers (reference in tests/fixtures/minilm-reference.json). Needs the asset
/// (scripts/fetch-assets.sh model); set FINETUNE_REQUIRE_ASSETS=1 to make its absence a failure.
#[test]
fn real_minilm_matches_transformers() {
    let Ok(dir) = finetune::io::hub::resolve(
        "sentence-transformers/all-MiniLM-L6-v2",
        finetune::io::hub::RepoKind::Model,
        "main",
        &["config.json", "model.safetensors", "tokenizer.json"],
    ) else {
        assert!(
            std::env::var("FINETUNE_REQUIRE_ASSETS").is_err(),
            "MiniLM is not in the hub cache: run scripts/fetch-assets.sh model"
        );
        eprintln!("SKIPPED real_minilm_matches_transformers: MiniLM not in the hub cache");
        return;
    };
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("minilm-reference.json")).unwrap()).unwrap();
    let sentences: Vec<String> =
        reference["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    let files = ModelDir::open(&dir).unwrap();
    let tok = TextTokenizer::from_file(&files.tokenizer_path(), 128).unwrap();
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let encoded = tok.encode_all(&refs).unwrap();
    for (e, r) in encoded.iter().zip(reference["input_ids"].as_array().unwrap()) {
        let r: Vec<u32> = r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(e.ids, r, "token ids differ from transformers");
    }
    let device = Device::flex();
    let (model, _) = load_text_classifier(&files, 2, Pooling::Mean, 0.0, Head::New, &device).unwrap();
    let model = model.valid();
    let order: Vec<usize> = (0..sentences.len()).collect();
    let input = finetune::data::batch::collate(&encoded, &order, tok.pad_id(), &device);
    let got = values(model.features(&input));
    let want: Vec<f32> = reference["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect::<Vec<_>>())
        .collect();
    let d = max_abs_diff(&got, &want);
    assert!(d < 1e-4, "MiniLM mean-pooled embeddings differ by {d}");
}

/// finetune's burn-flex patch (patches/README.md): the branch-free f32 `erf` and `exp` behind
/// `Tensor::erf`, `Tensor::exp`, GELU and softmax agree with f64 references on a dense grid
/// (exp within 3e-7 relative, erf 5e-7 absolute; below e^-87 exp gives 0, not a denormal).
#[test]
fn patched_erf_exp_gelu_softmax_match_f64_references() {
    let device = Device::default();
    let xs: Vec<f32> = (-400_000..=400_000).map(|i| i as f32 * 2.2e-4).collect(); // [-88, 88]
    let n = xs.len();
    let t = Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), &device);
    let exp = values(t.clone().exp());
    let erf = values(t.clone().erf());
    let gelu = values(burn::tensor::activation::gelu(t.clone()));
    let (mut e_rel, mut erf_abs, mut gelu_abs) = (0f64, 0f64, 0f64);
    for (i, &x) in xs.iter().enumerate() {
        let x = x as f64;
        if x >= -87.0 {
            e_rel = e_rel.max(((exp[i] as f64 - x.exp()) / x.exp()).abs());
        } else {
            // Below e^-87 (f32's normal range) the patch returns 0 instead of a denormal.
            assert!(exp[i] < 1.2e-38);
        }
        erf_abs = erf_abs.max((erf[i] as f64 - libm::erf(x)).abs());
        let g = 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        gelu_abs = gelu_abs.max((gelu[i] as f64 - g).abs() / g.abs().max(1.0));
    }
    assert!(e_rel < 3e-7, "exp relative error {e_rel}");
    assert!(erf_abs < 5e-7, "erf absolute error {erf_abs}");
    assert!(gelu_abs < 3e-7, "gelu error {gelu_abs}");
    let masked = Tensor::<2>::from_data(TensorData::new(vec![0.5f32, -1e9, 2.0, 1.0], [1, 4]), &device);
    let p = values(burn::tensor::activation::softmax(masked, 1));
    let z = 0.5f64.exp() + 2f64.exp() + 1f64.exp();
    let want = [0.5f64.exp() / z, 0.0, 2f64.exp() / z, 1f64.exp() / z];
    for (a, b) in p.iter().zip(want) {
        assert!((*a as f64 - b).abs() < 1e-7, "{p:?}");
    }
}

/// The patch's element-wise loops (patches/README.md: AVX-512/AVX2 copies chosen at run time,
/// tensors of 64k elements and more split across threads) compute what the plain loops compute:
/// the in-place path (a fresh tensor) and the allocating path (a shared one) agree bit for bit,
/// and GELU's backward matches the f64 derivative within 1e-6.
#[test]
fn patched_elementwise_paths_agree_and_gelu_backward_matches_f64() {
    let xs: Vec<f32> = (-150_000..150_000).map(|i| i as f32 * 6e-5).collect(); // [-9, 9]
    let n = xs.len();
    let t = Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), &Device::default());
    let shared = values(t.clone().exp());
    let in_place = values(t.clone().add_scalar(0.0).exp());
    assert_eq!(shared, in_place, "exp: allocating and in-place paths differ");
    let gelu_shared = values(burn::tensor::activation::gelu(t.clone()));
    let gelu_in_place = values(burn::tensor::activation::gelu(t.clone().add_scalar(0.0)));
    assert_eq!(gelu_shared, gelu_in_place, "gelu: allocating and in-place paths differ");
    let scaled = values(t.clone().mul_scalar(3.0));
    assert!(scaled.iter().zip(&xs).all(|(s, x)| *s == x * 3.0));

    let device = Device::default().autodiff();
    let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), &device).require_grad();
    let grads = burn::tensor::activation::gelu(x.clone()).sum().backward();
    let got = values(x.grad(&grads).expect("gradient of x"));
    let mut worst = 0f64;
    for (g, &x) in got.iter().zip(&xs) {
        let x = x as f64;
        let want = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
            + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        worst = worst.max((*g as f64 - want).abs() / want.abs().max(1.0));
    }
    assert!(worst < 1e-6, "GELU backward differs from the f64 derivative by {worst}");
}
