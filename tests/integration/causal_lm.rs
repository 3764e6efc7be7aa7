//! The real SmolLM2-135M-Instruct GGUF (Q4_1) against transformers reading the same file
//! (fixtures made by scripts/make_llama_reference.py): tokenizer, chat template, logits, greedy
//! generation. Needs the asset (scripts/fetch-assets.sh model); FINETUNE_REQUIRE_ASSETS=1 makes
//! its absence a failure.

use super::common::*;
use burn::prelude::*;
use finetune::data::chat::Message;
use finetune::io::safetensors::SafetensorsFile;
use finetune::models::causal_lm::DecoderFiles;
use finetune::models::generation::{Sampling, generate};
use std::path::PathBuf;

pub const SMOLLM2_REPO: &str = "finetune/SmolLM2-135M-Instruct-Q4_1-GGUF";
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

pub fn smollm2() -> Option<PathBuf> {
    match finetune::io::hub::resolve(SMOLLM2_REPO, finetune::io::hub::RepoKind::Model, "main", &[SMOLLM2_FILE]) {
        Ok(dir) => Some(dir.join(SMOLLM2_FILE)),
        Err(_) => {
            assert!(
                std::env::var("FINETUNE_REQUIRE_ASSETS").is_err(),
                "SmolLM2 is not in the hub cache: run scripts/fetch-assets.sh model"
            );
            eprintln!("SKIPPED: SmolLM2 GGUF not in the hub cache (scripts/fetch-assets.sh model)");
            None
        }
    }
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("smollm2-reference.json")).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Tokenizer (built from the GGUF vocabulary and merges) and chat template give transformers'
/// token ids and text; logits of a prompt match within 1e-3 of the largest logit; greedy
/// decoding with the KV cache reproduces transformers' first 20 tokens.
#[test]
fn smollm2_gguf_matches_transformers() {
    let Some(path) = smollm2() else { return };
    let reference = reference();
    let files = DecoderFiles::open(&path).unwrap();
    let tok = files.tokenizer().unwrap();
    for case in reference["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), ids(&case["ids"]), "tokens of {text:?}");
    }
    let device = Device::flex();
    let (model, cfg, report) = files.load(&device).unwrap();
    assert!(report.initialized.is_empty(), "{:?}", report.initialized);
    assert!(cfg.tie_word_embeddings);
    let template = files.chat_template(&tok, &cfg).unwrap().expect("SmolLM2 has a chat template");
    let messages = [Message::new("user", "Explain in two sentences what fine-tuning a language model means.")];
    let chat = template.render(&messages, true).unwrap();
    assert_eq!(chat, reference["chat_text"].as_str().unwrap());
    let chat_ids = tok.encode(&chat, false).unwrap();
    assert_eq!(chat_ids, ids(&reference["chat_ids"]));

    let logits_ref = SafetensorsFile::open(&fixtures().join("smollm2-reference.safetensors")).unwrap();
    let plain = ids(&reference["plain_ids"]);
    let input: Vec<i64> = plain.iter().map(|&t| t as i64).collect();
    let logits = model.forward(Tensor::from_data(TensorData::new(input, [1, plain.len()]), &device), None);
    let [_, l, v] = logits.dims();
    let last = values(logits.clone().slice(s![0..1, l - 1..l, ..]).reshape([v]));
    let head = values(logits.slice(s![0..1, .., 0..512]).reshape([l, 512]));
    for (name, got) in [("plain_logits_last", last), ("plain_logits_head", head)] {
        let want = logits_ref.tensor(name).unwrap().data;
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = max_abs_diff(&got, &want);
        assert!(d / scale < 1e-3, "{name}: max |diff| {d} vs max |logit| {scale}");
    }

    let s = Sampling { max_new_tokens: 20, ..Default::default() };
    let greedy = generate(&model, &chat_ids, &s, &device, |_| {});
    assert_eq!(greedy, ids(&reference["greedy_20"]), "{:?}", tok.decode(&greedy, false));
}
