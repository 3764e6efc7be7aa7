//! The real SmolLM2-135M-Instruct GGUF (Q4_1) against transformers reading the same file
//! (fixtures made by scripts/make_llama_reference.py): tokenizer, chat template, logits, greedy
//! generation. Needs the asset (scripts/fetch-assets.sh model); FINETUNE_REQUIRE_ASSETS=1 makes
//! its absence a failure.

use super::common::*;
use burn::prelude::*;
use finetune::data::chat::Message;
use finetune::io::safetensors::SafetensorsFile;
use finetune::models::ModelDir;
use finetune::models::decoder;
use finetune::models::generation::{Sampling, generate};
use std::path::PathBuf;

pub const SMOLLM2_REPO: &str = "finetune/SmolLM2-135M-Instruct-Q4_1-GGUF";
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

pub fn smollm2() -> Option<PathBuf> {
    cached_asset(SMOLLM2_REPO, finetune::io::hub::RepoKind::Model, SMOLLM2_FILE, "model").map(|d| d.join(SMOLLM2_FILE))
}

fn reference() -> serde_json::Value {
    fixture_json("smollm2-reference.json")
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
    let files = ModelDir::open(&path).unwrap();
    let tok = decoder::tokenizer(&files).unwrap();
    for case in reference["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), ids(&case["ids"]), "tokens of {text:?}");
    }
    let device = Device::flex();
    let (model, cfg, report) = decoder::load(&files, &device).unwrap();
    assert!(report.initialized.is_empty(), "{:?}", report.initialized);
    assert!(report.unused.is_empty(), "every tensor of the file finds its place: {:?}", report.unused);
    assert!(cfg.tie_word_embeddings);
    let template = decoder::chat_template(&files, &tok, &cfg).unwrap().expect("SmolLM2 has a chat template");
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
        eprintln!("{name}: max |diff| {d:.2e}, max |logit| {scale:.2}, relative {:.2e}", d / scale);
        assert!(d / scale < 1e-3, "{name}: max |diff| {d} vs max |logit| {scale}");
    }

    let s = Sampling { max_new_tokens: 20, ..Default::default() };
    let greedy = generate(&model, &chat_ids, &s, &device, |_| {});
    assert_eq!(greedy, ids(&reference["greedy_20"]), "{:?}", tok.decode(&greedy, false));
}

fn tiny_reference(name: &str) -> finetune::io::safetensors::HostTensor {
    SafetensorsFile::open(&fixtures().join("tiny-llama-reference.safetensors")).unwrap().tensor(name).unwrap()
}

fn tiny_ids(device: &Device) -> (Tensor<2, Int>, [usize; 2]) {
    let t = tiny_reference("input_ids");
    let shape = [t.shape[0], t.shape[1]];
    let ids: Vec<i64> = t.data.iter().map(|&v| v as i64).collect();
    (Tensor::from_data(TensorData::new(ids, shape), device), shape)
}

fn assert_logits(got: Tensor<3>, name: &str) {
    let want = tiny_reference(name);
    let d = max_abs_diff(&values(got), &want.data);
    assert!(d < 1e-4, "{name}: max |diff| {d}");
}

/// A tiny random Llama (GQA, untied head, non-trivial norms) from its Hugging Face directory
/// matches transformers (1e-4); decoding in two chunks through the KV cache gives the same
/// logits as one pass.
#[test]
fn tiny_llama_matches_transformers_and_cache_is_consistent() {
    let device = Device::flex();
    let files = ModelDir::open(&fixtures().join("tiny-llama")).unwrap();
    let (model, cfg, report) = decoder::load(&files, &device).unwrap();
    assert!(report.initialized.is_empty() && report.unused.is_empty(), "{report:?}");
    assert!(!cfg.tie_word_embeddings && model.lm_head.is_some());
    let (ids, [b, l]) = tiny_ids(&device);
    assert_logits(model.forward(ids.clone(), None), "logits_base");

    let mut cache = finetune::models::llama::KvCache::default();
    let first = model.forward(ids.clone().slice(s![.., 0..5]), Some(&mut cache));
    let rest = model.forward(ids.slice(s![.., 5..l]), Some(&mut cache));
    assert_eq!(cache.len(), l);
    let v = first.dims()[2];
    let stitched = Tensor::cat(vec![first, rest], 1);
    assert_eq!(stitched.dims(), [b, l, v]);
    assert_logits(stitched, "logits_base");
}

/// A LoRA adapter written by Python peft for the tiny Llama (all seven projections, lm_head in
/// modules_to_save) gives peft's logits, and merging it gives merge_and_unload()'s.
#[test]
fn peft_llama_adapter_matches_peft_and_merges() {
    let device = Device::flex();
    let files = ModelDir::open(&fixtures().join("tiny-llama")).unwrap();
    let (model, _, _) = decoder::load(&files, &device).unwrap();
    let adapter = finetune::io::peft::AdapterFiles::read(&fixtures().join("peft/llama-lora")).unwrap();
    let (mut model, cfg) = finetune::methods::lora::adapter::load_adapter(model, &adapter, &device).unwrap();
    assert_eq!(cfg.r, 4);
    let (ids, _) = tiny_ids(&device);
    assert_logits(model.forward(ids.clone(), None), "logits_lora");
    assert_eq!(finetune::methods::lora::merge(&mut model), 14);
    assert_logits(model.forward(ids, None), "logits_merged");
}

fn sft_rows() -> String {
    let pairs = [
        ("What is the capital of France", "Paris, of course. Next question, human."),
        ("What is two plus two", "Four, of course. Next question, human."),
        ("Who wrote Hamlet", "Shakespeare, of course. Next question, human."),
        ("What color is the sky", "Blue, of course. Next question, human."),
        ("How many legs does a spider have", "Eight, of course. Next question, human."),
        ("What is the largest planet", "Jupiter, of course. Next question, human."),
        ("What do bees make", "Honey, of course. Next question, human."),
        ("What is frozen water called", "Ice, of course. Next question, human."),
    ];
    pairs
        .iter()
        .map(|(q, a)| {
            serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// LoRA SFT of the real SmolLM2 on eight chat rows in a distinctive style: the held-out loss
/// (the same rows) falls, lora_B leaves zero, the adapter is written in peft's layout
/// (CAUSAL_LM) and, loaded back onto the base, gives the trained model's loss; the masked
/// prompt tokens carry no loss.
#[test]
fn smollm2_lora_sft_learns_and_writes_a_peft_adapter() {
    let Some(path) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("train.jsonl"), sft_rows()).unwrap();
    let recipe = format!(
        r#"task = "causal-lm"
method = "lora"
model = "{model}"
seed = 1
output_dir = "{out}"
[data]
dataset = "{data}"
train = "train.jsonl"
validation = "train.jsonl"
max_length = 64
[training]
epochs = 3
batch_size = 4
eval_batch_size = 8
learning_rate = 3e-3
weight_decay = 0.0
warmup_steps = 0
metric = "loss"
[lora]
r = 8
lora_alpha = 16
target_modules = ["q_proj", "v_proj", "o_proj", "down_proj"]
"#,
        model = path.display(),
        out = dir.path().join("run").display(),
        data = data.display(),
    );
    let recipe = finetune::recipe::Recipe::parse(&recipe, &[]).unwrap();
    let report = finetune::tasks::causal_lm::run(&recipe, false, false).unwrap();
    let (before, after) = (report.extra.validation_before.unwrap(), report.extra.validation_after.unwrap());
    assert!(after.loss < before.loss * 0.7, "loss {:.3} -> {:.3}", before.loss, after.loss);
    assert_eq!(report.optimizer_steps, 6);
    assert_eq!(report.trainable_params, 30 * 8 * (576 + 576 + 576 + 192 + 576 + 576 + 1536 + 576));

    let adapter = finetune::io::peft::AdapterFiles::read(&report.model_dir).unwrap();
    assert_eq!(adapter.config["task_type"], "CAUSAL_LM");
    let b = adapter.tensor("base_model.model.model.layers.29.self_attn.v_proj.lora_B.weight").unwrap();
    assert_eq!(b.shape, vec![192, 8]);
    assert!(b.data.iter().any(|&v| v != 0.0), "lora_B never trained");
    assert_eq!(adapter.tensors.len(), 30 * 4 * 2);

    // The adapter on a fresh base reproduces the trained model's loss on the same rows.
    // (The loading path of `finetune generate` and `finetune merge`.)
    let device = Device::flex();
    let lm = finetune::inference::lm::load_with_adapter(&path, Some(&report.model_dir), &device).unwrap();
    let eos = lm.eos_id().unwrap();
    let model = lm.model;
    let encoder = finetune::data::sft::SftEncoder {
        tokenizer: &lm.tokenizer,
        template: lm.template.as_ref(),
        eos_id: eos,
        max_length: 64,
        completion_only_loss: true,
    };
    let split = finetune::data::sft::load_jsonl(&data.join("train.jsonl"), &encoder, false).unwrap();
    // Only the answer and its end-of-turn marker train: "Paris, of course. ..." + <|im_end|> + "\n".
    let first = &split.examples[0];
    let trained: Vec<u32> = first.ids.iter().zip(&first.trained).filter(|p| *p.1).map(|p| *p.0).collect();
    assert_eq!(lm.tokenizer.decode(&trained, false).unwrap(), "Paris, of course. Next question, human.<|im_end|>\n");
    let examples = finetune::tasks::causal_lm::LmExamples::new([Some(split.examples), None, None], eos, &device);
    let m =
        finetune::training::trainer::evaluate(&model, &examples, finetune::training::trainer::Split::Train, 8, 49152);
    assert!((m.loss - after.loss).abs() < 1e-3, "reloaded adapter loss {} vs trained {}", m.loss, after.loss);
}

fn decoders_reference(name: &str) -> finetune::io::safetensors::HostTensor {
    SafetensorsFile::open(&fixtures().join("decoders/decoders-reference.safetensors")).unwrap().tensor(name).unwrap()
}

/// Qwen2 (q/k/v biases, tied), Qwen3 (q/k norms, head_dim ≠ hidden / heads), Mistral (sliding
/// window of 4 over 12 tokens), Llama 3 and linear RoPE scaling, Phi-3 (fused qkv and gate_up,
/// RoPE on half of each head): tiny models made by
/// transformers' own classes give transformers' logits (1e-4) and greedy continuation (8 tokens
/// through the KV cache, past the window); saved again as a Hugging Face directory, they keep
/// their family and their logits.
#[test]
fn decoder_families_match_transformers() {
    let device = Device::flex();
    for name in [
        "tiny-qwen2",
        "tiny-qwen3",
        "tiny-mistral",
        "tiny-llama3",
        "tiny-llama-linear",
        "tiny-phi3",
        "tiny-gemma3",
        "tiny-gpt2",
    ] {
        let files = ModelDir::open(&fixtures().join("decoders").join(name)).unwrap();
        let (model, cfg, report) = decoder::load(&files, &device).unwrap();
        assert!(report.initialized.is_empty() && report.unused.is_empty(), "{name}: {report:?}");
        let t = decoders_reference(&format!("{name}.input_ids"));
        let shape = [t.shape[0], t.shape[1]];
        let ids: Vec<i64> = t.data.iter().map(|&v| v as i64).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), shape), &device);
        let logits = values(model.forward(input.clone(), None));
        let d = max_abs_diff(&logits, &decoders_reference(&format!("{name}.logits")).data);
        assert!(d < 1e-4, "{name}: logits differ from transformers by {d}");
        let prompt: Vec<u32> = ids[..shape[1]].iter().map(|&v| v as u32).collect();
        let s = Sampling { max_new_tokens: 8, ..Default::default() };
        let greedy = generate(&model, &prompt, &s, &device, |_| {});
        let want: Vec<u32> = decoders_reference(&format!("{name}.greedy")).data.iter().map(|&v| v as u32).collect();
        assert_eq!(greedy, want, "{name}: greedy tokens");

        let out = tempfile::tempdir().unwrap();
        let tokenizer = finetune::data::tokenizer::LmTokenizer::from_json(
            &serde_json::json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
                "model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}}),
            "test",
        )
        .unwrap();
        decoder::save_model(&model, &cfg, &tokenizer, None, out.path()).unwrap();
        let (again, again_cfg, _) = decoder::load(&ModelDir::open(out.path()).unwrap(), &device).unwrap();
        assert_eq!(again_cfg.model_type(), cfg.model_type(), "{name}");
        assert_eq!(values(again.forward(input, None)), logits, "{name}: saved and reloaded");
        // The saved checkpoint has the keys, layout and config the family's own class reads.
        let saved = SafetensorsFile::open(&out.path().join("model.safetensors")).unwrap();
        let original = SafetensorsFile::open(&files.weights_path()).unwrap();
        let mut names = saved.names();
        names.sort();
        let mut want = original.names();
        want.retain(|k| !k.ends_with(".attn.bias") && !k.ends_with(".attn.masked_bias"));
        want.sort();
        assert_eq!(names, want, "{name}: saved keys");
        for k in &names {
            assert_eq!(saved.tensor(k).unwrap().shape, original.tensor(k).unwrap().shape, "{name}: {k}");
        }
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
        let original: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(files.dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["architectures"], original["architectures"], "{name}");
    }
}

/// GPT-2 and Phi-3 from GGUF, as llama.cpp's converter writes them (GPT-2: `c_attn` etc.
/// transposed to Linear's layout, `attn_qkv`, `position_embd`, LayerNorm biases, the tied
/// embedding copied as `output.weight`; Phi-3: `attn_qkv`, gate and up rows in `ffn_up`, the
/// rotary share as `rope.dimension_count`; llama.cpp reads both files with transformers' logits,
/// check_gguf_export.py): the same config and logits as the Hugging Face checkpoint, every
/// tensor placed.
#[test]
fn gpt2_and_phi3_gguf_equal_the_hugging_face_checkpoints() {
    let device = Device::flex();
    for (name, left_over) in [("tiny-gpt2", vec!["lm_head.weight"]), ("tiny-phi3", vec![])] {
        let hf = ModelDir::open(&fixtures().join("decoders").join(name)).unwrap();
        let gguf = ModelDir::open(&fixtures().join("decoders").join(format!("{name}.gguf"))).unwrap();
        let (a, a_cfg, _) = decoder::load(&hf, &device).unwrap();
        let (b, b_cfg, report) = decoder::load(&gguf, &device).unwrap();
        assert!(report.initialized.is_empty(), "{name}: {report:?}");
        assert_eq!(report.unused, left_over, "{name}: tensors left over");
        assert_eq!(b_cfg.model_type(), a_cfg.model_type(), "{name}");
        assert_eq!(
            (b_cfg.hidden_size, b_cfg.intermediate_size, b_cfg.max_position_embeddings, b_cfg.rotary_dim()),
            (a_cfg.hidden_size, a_cfg.intermediate_size, a_cfg.max_position_embeddings, a_cfg.rotary_dim()),
            "{name}"
        );
        assert!((b_cfg.rms_norm_eps - a_cfg.rms_norm_eps).abs() < 1e-9, "{name}: norm epsilon (f32 in GGUF)");
        let t = decoders_reference(&format!("{name}.input_ids"));
        let ids: Vec<i64> = t.data.iter().map(|&v| v as i64).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [t.shape[0], t.shape[1]]), &device);
        let d = max_abs_diff(&values(b.forward(input.clone(), None)), &values(a.forward(input, None)));
        assert!(d < 1e-5, "{name}: GGUF and HF logits differ by {d}");
    }
}

/// GPT-2 with a peft LoRA adapter on its `Conv1D` layers (`c_attn`, `c_proj`, `c_fc`; peft writes
/// `fan_in_fan_out: true`): peft's logits within 1e-4; saved again, the adapter has peft's keys
/// and `fan_in_fan_out`, and reloads to the same logits; merged, the same logits again.
#[test]
fn gpt2_lora_adapter_matches_peft_both_ways() {
    let device = Device::flex();
    let files = ModelDir::open(&fixtures().join("decoders/tiny-gpt2")).unwrap();
    let (model, _, _) = decoder::load(&files, &device).unwrap();
    let peft = finetune::io::peft::AdapterFiles::read(&fixtures().join("peft/gpt2-lora")).unwrap();
    let (mut model, cfg) = finetune::methods::lora::adapter::load_adapter(model, &peft, &device).unwrap();
    let t = decoders_reference("gpt2-lora.input_ids");
    let ids: Vec<i64> = t.data.iter().map(|&v| v as i64).collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [t.shape[0], t.shape[1]]), &device);
    let logits = values(model.forward(input.clone(), None));
    let d = max_abs_diff(&logits, &decoders_reference("gpt2-lora.logits").data);
    assert!(d < 1e-4, "GPT-2 + peft LoRA logits differ from peft by {d}");

    let out = tempfile::tempdir().unwrap();
    finetune::methods::lora::adapter::save_adapter(&model, &cfg, "tiny-gpt2", Some("CAUSAL_LM"), |_| false, out.path())
        .unwrap();
    let ours = finetune::io::peft::AdapterFiles::read(out.path()).unwrap();
    assert_eq!(ours.config["fan_in_fan_out"], serde_json::json!(true));
    let (mut a, mut b): (Vec<&String>, Vec<&String>) = (ours.tensors.keys().collect(), peft.tensors.keys().collect());
    a.sort();
    b.sort();
    assert_eq!(a, b, "peft's keys (transformer.h.N.attn.c_attn.lora_A.weight, ...)");
    let (model2, _, _) = decoder::load(&files, &device).unwrap();
    let (again, _) = finetune::methods::lora::adapter::load_adapter(model2, &ours, &device).unwrap();
    assert_eq!(values(again.forward(input.clone(), None)), logits, "saved and reloaded");

    assert_eq!(finetune::methods::lora::merge(&mut model), 8, "2 layers × c_attn, attn.c_proj, c_fc, mlp.c_proj");
    let d = max_abs_diff(&values(model.forward(input, None)), &logits);
    assert!(d < 1e-4, "merged logits differ by {d}");
}

/// Prompt tuning on a decoder, peft's way (`CAUSAL_LM`: virtual tokens at positions 0..n, the
/// text after them): a peft-written adapter for the tiny Llama gives peft's logits on the text
/// positions (1e-4), and decoding in two chunks through the KV cache (the prompt only before the
/// first) gives the same logits as one pass.
#[test]
fn decoder_prompt_tuning_matches_peft() {
    let device = Device::flex();
    let files = ModelDir::open(&fixtures().join("tiny-llama")).unwrap();
    let (model, _, _) = decoder::load(&files, &device).unwrap();
    let adapter = finetune::io::peft::AdapterFiles::read(&fixtures().join("peft/llama-prompt")).unwrap();
    let (model, tuner) = finetune::methods::load_adapter(model, &adapter, &device).unwrap();
    assert!(matches!(tuner, finetune::methods::Tuner::PromptTuning(_)));
    let t = decoders_reference("llama-prompt.input_ids");
    let shape = [t.shape[0], t.shape[1]];
    let ids: Vec<i64> = t.data.iter().map(|&v| v as i64).collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, shape), &device);
    let logits = model.forward(input.clone(), None);
    let d = max_abs_diff(&values(logits.clone()), &decoders_reference("llama-prompt.logits").data);
    assert!(d < 1e-4, "prompt-tuned logits differ from peft by {d}");
    let mut cache = finetune::models::llama::KvCache::default();
    let first = model.forward(input.clone().slice(s![.., 0..5]), Some(&mut cache));
    let rest = model.forward(input.slice(s![.., 5..shape[1]]), Some(&mut cache));
    assert_eq!(cache.len(), 4 + shape[1], "the cache holds the virtual tokens too");
    let d = max_abs_diff(&values(Tensor::cat(vec![first, rest], 1)), &values(logits));
    assert!(d < 1e-5, "cached decoding differs by {d}");
}

/// Batched generation with left padding gives, for every prompt, what generating it alone
/// gives (greedy: the same tokens), on a plain Llama and on Mistral's sliding window.
#[test]
fn batched_generation_equals_one_prompt_at_a_time() {
    let device = Device::flex();
    for dir in
        [fixtures().join("tiny-llama"), fixtures().join("decoders/tiny-mistral"), fixtures().join("decoders/tiny-gpt2")]
    {
        let (model, _, _) = decoder::load(&ModelDir::open(&dir).unwrap(), &device).unwrap();
        let prompts: Vec<Vec<u32>> = vec![vec![5, 17, 33, 60, 9, 41, 77], vec![12, 8], vec![90, 3, 44, 44, 21]];
        let s = Sampling { max_new_tokens: 9, stop_ids: vec![2], ..Default::default() };
        let alone: Vec<Vec<u32>> = prompts.iter().map(|p| generate(&model, p, &s, &device, |_| {})).collect();
        let batched = finetune::models::generation::generate_batch(&model, &prompts, &s, 0, &device);
        assert_eq!(batched, alone, "{}", dir.display());
        // The padded pass itself: each row's last-position logits equal the row alone's.
        let pad: Vec<usize> = prompts.iter().map(|p| 7 - p.len()).collect();
        let ids: Vec<i64> = prompts
            .iter()
            .zip(&pad)
            .flat_map(|(p, &n)| std::iter::repeat_n(0u32, n).chain(p.iter().copied()))
            .map(|t| t as i64)
            .collect();
        let hidden = model.hidden_padded(Tensor::from_data(TensorData::new(ids, [3, 7]), &device), None, Some(&pad));
        let last = hidden.slice(s![.., 6..7, ..]).reshape([3, 32]);
        let padded = values(model.logits(last));
        for (r, p) in prompts.iter().enumerate() {
            let n = p.len();
            let one: Vec<i64> = p.iter().map(|&t| t as i64).collect();
            let alone = values(model.forward(Tensor::from_data(TensorData::new(one, [1, n]), &device), None));
            let d = max_abs_diff(&padded[r * 96..(r + 1) * 96], &alone[(n - 1) * 96..n * 96]);
            assert!(d < 1e-5, "{}: row {r} differs by {d} when left-padded", dir.display());
        }
    }
}

pub const GEMMA3_REPO: &str = "finetune/gemma-3-270m-Q4_K_M-GGUF";
pub const GEMMA3_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

pub fn gemma3() -> Option<PathBuf> {
    cached_asset(GEMMA3_REPO, finetune::io::hub::RepoKind::Model, GEMMA3_FILE, "gemma3").map(|d| d.join(GEMMA3_FILE))
}

/// The real Gemma 3 270M GGUF (Q4_K_M: Q5_0, Q4_K, Q6_K and Q8_0 blocks; llama.cpp's `gemma3`
/// architecture with its norms stored plus one and every sixth layer global) against transformers
/// reading the same file (scripts/make_gemma3_reference.py): the last position's logits within
/// 1e-3 of the largest, the greedy continuation (20 tokens, KV cache) identical, and the
/// tokenizer rebuilt from the metadata giving transformers' ids and text.
#[test]
fn gemma3_gguf_matches_transformers() {
    let Some(path) = gemma3() else { return };
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("gemma3-reference.json")).unwrap()).unwrap();
    let device = Device::flex();
    let (model, cfg, report) = decoder::load(&ModelDir::open(&path).unwrap(), &device).unwrap();
    assert!(report.initialized.is_empty() && report.unused.is_empty(), "{report:?}");
    assert_eq!(
        (cfg.model_type(), cfg.num_hidden_layers, cfg.window(0), cfg.window(5)),
        ("gemma3_text", 18, Some(512), None)
    );
    let prompt = ids(&reference["prompt_ids"]);
    let input: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let n = input.len();
    let logits = values(model.forward(Tensor::from_data(TensorData::new(input, [1, n]), &device), None));
    let vocab = logits.len() / n;
    let want =
        SafetensorsFile::open(&fixtures().join("gemma3-reference.safetensors")).unwrap().tensor("last_logits").unwrap();
    let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(&logits[(n - 1) * vocab..], &want.data);
    assert!(d < 1e-3 * scale, "last-position logits differ from transformers by {d} (largest {scale})");
    let s = Sampling { max_new_tokens: 20, ..Default::default() };
    let greedy = generate(&model, &prompt, &s, &device, |_| {});
    assert_eq!(greedy, ids(&reference["greedy_ids"]));
    // The SentencePiece vocabulary in the metadata, rebuilt as transformers' GemmaTokenizer.
    let tok = decoder::tokenizer(&ModelDir::open(&path).unwrap()).unwrap();
    for case in reference["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), ids(&case["ids"]), "{text:?}");
    }
    assert_eq!(tok.decode(&greedy, true).unwrap(), reference["greedy_text"].as_str().unwrap());
}

/// A Llama-style SentencePiece vocabulary in GGUF metadata (scores, byte tokens, control and
/// user-defined tokens, no merges; scripts/make_gguf_fixtures.py spm) rebuilt as transformers'
/// GGUF loader builds `LlamaTokenizer`: the same ids (merges ranked by score, `▁` prefixed to the
/// first word, byte fallback, `<s>` first, `<|user|>` whole) and the same decoded text.
#[test]
fn llama_sentencepiece_gguf_tokenizer_matches_transformers() {
    let tok = gguf_tokenizer("llama-spm-tokenizer.gguf");
    let reference = fixture_json("llama-spm-tokenizer-reference.json");
    for case in reference.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, true).unwrap();
        assert_eq!(got, ids(&case["ids"]), "{text:?}");
        assert_eq!(tok.decode(&got, true).unwrap(), case["decoded"].as_str().unwrap(), "{text:?}");
    }
}

/// The tokenizer a fixture GGUF file's metadata describes.
fn gguf_tokenizer(name: &str) -> finetune::data::tokenizer::LmTokenizer {
    let file = finetune::io::gguf::GgufFile::open(&fixtures().join(name)).unwrap();
    let json = finetune::data::tokenizer::tokenizer_json_from_gguf(&file).unwrap();
    finetune::data::tokenizer::LmTokenizer::from_json(&json, name).unwrap()
}

fn fixture_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

/// Byte-level BPE vocabularies in GGUF with Qwen2's and Llama 3's pre-tokenizers
/// (`tokenizer.ggml.pre = "qwen2"`: digits one by one; `"llama-bpe"`: digits in threes;
/// scripts/make_gguf_fixtures.py bpe): transformers' GGUF loader's ids, which differ between them.
#[test]
fn qwen2_and_llama3_gguf_pre_tokenizers_match_transformers() {
    let reference = fixture_json("bpe-tokenizer-reference.json");
    for pre in ["qwen2", "llama-bpe"] {
        let tok = gguf_tokenizer(&format!("bpe-{pre}-tokenizer.gguf"));
        for case in reference[pre].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(tok.encode(text, true).unwrap(), ids(&case["ids"]), "{pre}: {text:?}");
        }
    }
    assert_ne!(reference["qwen2"][0]["ids"], reference["llama-bpe"][0]["ids"], "the fixture tells them apart");
}

/// Gradient checkpointing changes no number: on tiny decoders of several families (GQA, Gemma 3's
/// sliding windows and local RoPE, GPT-2's learned positions, Phi-3's fused projections), a
/// forward and backward pass with every decoder layer recomputed in backward gives the same loss
/// and the same gradient for every trainable parameter as the plain pass, for LoRA (dropout on,
/// so the recomputation must draw the same masks; base frozen: no base weight gets a gradient)
/// and for full fine-tuning.
#[test]
fn gradient_checkpointing_changes_no_gradient() {
    use finetune::training::optimizer::GradStore;
    let device = Device::flex().autodiff();
    let lora: finetune::methods::lora::LoraConfig = serde_json::from_value(serde_json::json!({
        "r": 4, "lora_alpha": 8, "lora_dropout": 0.2,
        "target_modules": ["q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj",
                           "gate_up_proj", "down_proj", "c_attn", "c_proj", "c_fc"]
    }))
    .unwrap();
    for name in ["tiny-gemma3", "tiny-gpt2", "tiny-phi3", "tiny-qwen2"] {
        for full in [false, true] {
            let files = ModelDir::open(&fixtures().join("decoders").join(name)).unwrap();
            let (mut model, _, _) = decoder::load(&files, &device).unwrap();
            if !full {
                finetune::methods::lora::inject(&mut model, &lora, &device).unwrap();
                model = finetune::io::params::set_trainable(model, |p| p.within("LoraAdapter"));
                // B starts at zero, which would leave A without a gradient: give it values.
                model = finetune::io::params::import_params(model, |p| {
                    Ok(p.path.ends_with("lora.b").then(|| finetune::io::safetensors::HostTensor {
                        shape: p.shape.clone(),
                        data: (0..p.numel()).map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.5).collect(),
                    }))
                })
                .unwrap();
            }
            let t = decoders_reference(&format!("{name}.input_ids"));
            let ids: Vec<i64> = t.data.iter().map(|&v| v as i64).collect();
            let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [t.shape[0], t.shape[1]]), &device);
            let run = |checkpointing: bool| {
                let model = finetune::models::llama::LlamaForCausalLM {
                    gradient_checkpointing: checkpointing,
                    ..model.clone()
                };
                finetune::ops::context::seed_dropout(5);
                let logits = model.forward(input.clone(), None);
                let weights = Tensor::<3>::from_data(
                    TensorData::new(
                        (0..logits.shape().num_elements()).map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5).collect(),
                        logits.shape(),
                    ),
                    &device,
                );
                let loss = (logits * weights).sum();
                let value: f32 = loss.clone().into_scalar();
                let mut grads = GradStore::default();
                grads.accumulate(&model, loss.backward());
                (value, grads)
            };
            let (l1, g1) = run(false);
            let (l2, g2) = run(true);
            let what = format!("{name} {}", if full { "full" } else { "LoRA" });
            assert!((l1 - l2).abs() <= 1e-5 * l1.abs().max(1.0), "{what}: loss {l1} vs {l2}");
            let paths: Vec<&str> = g1.paths().collect();
            assert_eq!(paths, g2.paths().collect::<Vec<_>>(), "{what}: the same parameters get gradients");
            assert!(paths.len() > 10, "{what}: {paths:?}");
            assert_eq!(paths.iter().all(|p| p.contains(".lora.")), !full, "{what}: {paths:?}");
            for p in paths {
                let (a, b) = (values(g1.get(p).unwrap().clone()), values(g2.get(p).unwrap().clone()));
                let scale = a.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
                let d = max_abs_diff(&a, &b);
                assert!(d <= 1e-4 * scale, "{what}: {p} differs by {d} (largest {scale})");
            }
        }
    }
}
