//! Speech: Whisper's log-Mel features, Whisper tiny.en read from its real CTranslate2 checkpoint
//! against `transformers` (fixtures by scripts/make_speech_fixtures.py), transcription of real
//! LibriVox speech, and the CTranslate2 → Hugging Face conversion. Needs the assets
//! (scripts/fetch-assets.sh whisper librivox); FINETUNE_REQUIRE_ASSETS=1 makes their absence a failure.

use super::common::*;
use burn::prelude::*;
use finetune::data::audio::read_wav;
use finetune::data::log_mel::{N_FRAMES, log_mel_spectrogram};
use finetune::inference::transcriber::Transcriber;
use finetune::io::hub::RepoKind;
use finetune::io::safetensors::SafetensorsFile;
use finetune::models::whisper::WhisperConfig;
use finetune::models::{Format, ModelDir};
use finetune::training::metrics::word_error_rate;
use std::path::PathBuf;

pub const WHISPER_REPO: &str = "finetune/whisper-tiny.en-ct2";
pub const LIBRIVOX_REPO: &str = "finetune/pocketsphinx-librivox";
const CLIP: &str = "audio/sense_and_sensibility_01_austen_64kb-0880.wav";

fn assets() -> Option<(PathBuf, PathBuf)> {
    let model = cached_asset(WHISPER_REPO, RepoKind::Model, "model.bin", "whisper")?;
    let data = cached_asset(LIBRIVOX_REPO, RepoKind::Dataset, "test.jsonl", "librivox")?;
    Some((model, data))
}

fn reference() -> (SafetensorsFile, serde_json::Value) {
    let st = SafetensorsFile::open(&fixtures().join("whisper-reference.safetensors")).unwrap();
    let json =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("whisper-reference.json")).unwrap()).unwrap();
    (st, json)
}

/// Columns `frames` of a `[rows, N_FRAMES]` row-major matrix.
fn columns(m: &[f32], rows: usize, frames: std::ops::Range<usize>) -> Vec<f32> {
    (0..rows).flat_map(|r| m[r * N_FRAMES + frames.start..r * N_FRAMES + frames.end].to_vec()).collect()
}

/// The log-Mel features of a real clip equal `WhisperFeatureExtractor`'s within 1e-4 (speech
/// frames and the padded tail); the encoder output of the CTranslate2 checkpoint equals
/// `transformers`' within 1e-4 and the decoder's logits along the transcript within 1e-3.
#[test]
fn whisper_features_encoder_and_decoder_match_transformers() {
    let Some((model_dir, data)) = assets() else { return };
    let (expected, json) = reference();
    let audio = read_wav(&data.join(CLIP)).unwrap();
    assert_eq!(audio.sample_rate, 16000);
    let mel = log_mel_spectrogram(&audio.samples, 80);
    let d = max_abs_diff(&columns(&mel, 80, 0..400), &expected.tensor("mel").unwrap().data);
    eprintln!("mel max abs diff {d:e}");
    assert!(d < 1e-4, "mel differs by {d}");
    let d = max_abs_diff(&columns(&mel, 80, 2990..3000), &expected.tensor("mel_max").unwrap().data);
    assert!(d < 1e-4, "padded mel differs by {d}");

    let dir = ModelDir::open(&model_dir).unwrap();
    assert!(matches!(dir.format, Format::CTranslate2(_)));
    let config = WhisperConfig::read(&dir).unwrap();
    assert_eq!((config.d_model, config.encoder_layers, config.vocab_size), (384, 4, 51864));
    let device = Device::default();
    let (model, report) = finetune::models::whisper::load(&dir, &config, &device).unwrap();
    assert!(report.unused.is_empty() && report.initialized.is_empty(), "{report:?}");
    let x = Tensor::<3>::from_data(TensorData::new(mel, [1, 80, N_FRAMES]), &device);
    let encoded = model.encoder.forward(x);
    let rows: Vec<i64> = (0..150).step_by(3).chain(1000..1010).collect();
    let picked = encoded.clone().select(1, Tensor::<1, Int>::from_data(TensorData::new(rows, [60]), &device));
    let d = max_abs_diff(&values(picked), &expected.tensor("encoder").unwrap().data);
    eprintln!("encoder max abs diff {d:e}");
    assert!(d < 1e-4, "encoder output differs by {d}");

    let clip = json["clips"].as_array().unwrap().iter().find(|c| c["audio"] == CLIP).unwrap();
    let mut tokens: Vec<i64> = json["prefix"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
    tokens.extend(clip["tokens"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()));
    let n = tokens.len();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(tokens, [1, n]), &device);
    let logits = model.decoder.forward(ids, &model.decoder.cross_cache(encoded));
    let head = logits.slice(s![.., .., 0..1024]);
    let d = max_abs_diff(&values(head), &expected.tensor("logits_head").unwrap().data);
    eprintln!("decoder logits max abs diff {d:e}");
    assert!(d < 1e-3, "decoder logits differ by {d}");
}

/// Greedy transcription of the five LibriVox clips gives `transformers`' tokens exactly, and a
/// word error rate against CMU Sphinx's references below 10% (the measured value is in
/// docs/BENCHMARKS.md).
#[test]
fn whisper_transcribes_librivox_like_transformers() {
    let Some((model_dir, data)) = assets() else { return };
    let (_, json) = reference();
    let t = Transcriber::load(&model_dir, None, "cpu").unwrap();
    let mut pairs = Vec::new();
    for clip in json["clips"].as_array().unwrap() {
        let audio = read_wav(&data.join(clip["audio"].as_str().unwrap())).unwrap();
        let samples = audio.samples.clone();
        let tokens = t.greedy(t.features(&samples));
        let want: Vec<usize> =
            clip["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(tokens, want, "{}", clip["audio"]);
        let text = t.transcribe(audio).unwrap();
        assert_eq!(text, clip["text"].as_str().unwrap());
        pairs.push((clip["reference"].as_str().unwrap().to_string(), text));
    }
    let wer = word_error_rate(pairs.iter().map(|(r, h)| (r.as_str(), h.as_str())));
    eprintln!("LibriVox WER {wer:.4}");
    assert!(wer < 0.1, "WER {wer}: {pairs:?}");
}

/// `finetune convert` writes a Hugging Face Whisper directory that loads back (as safetensors)
/// to the same tensors, and `finetune transcribe` reads it.
#[test]
fn ctranslate2_whisper_converts_to_hugging_face_layout() {
    let Some((model_dir, data)) = assets() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hf");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(["convert", "--from"])
        .arg(&model_dir)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let hf = ModelDir::open(&out).unwrap();
    assert!(matches!(hf.format, Format::Safetensors(_)));
    let ct2 = ModelDir::open(&model_dir).unwrap();
    assert_eq!(WhisperConfig::read(&hf).unwrap(), WhisperConfig::read(&ct2).unwrap());
    let st = SafetensorsFile::open(&out.join("model.safetensors")).unwrap();
    // Encoder: 2 convs (4), positions, final norm (2), 4 layers of 15; decoder: tokens, positions,
    // final norm (2), 4 layers of 24.
    assert_eq!(st.names().len(), 4 + 1 + 2 + 4 * 15 + 1 + 1 + 2 + 4 * 24);
    let q = st.tensor("model.decoder.layers.3.encoder_attn.q_proj.weight").unwrap();
    assert_eq!(q.shape, vec![384, 384]);
    let clip = data.join(CLIP);
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(["transcribe", "--json", "--model"])
        .arg(&out)
        .arg(&clip)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let r: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let (_, json) = reference();
    let want = json["clips"].as_array().unwrap().iter().find(|c| c["audio"] == CLIP).unwrap()["text"].clone();
    assert_eq!(r["text"], want);
}

pub const WORDS_REPO: &str = "finetune/espeak-spoken-words";

/// A small copy of the spoken-word set: three words, `per_split` clips of each per split, as
/// manifests with absolute paths. None without the assets.
pub fn small_words(dir: &std::path::Path, per_split: usize) -> Option<PathBuf> {
    let src = cached_asset(WORDS_REPO, RepoKind::Dataset, "train.jsonl", "spoken-words")?;
    let out = dir.join("words");
    std::fs::create_dir_all(&out).unwrap();
    for split in ["train", "validation", "test"] {
        let text = std::fs::read_to_string(src.join(format!("{split}.jsonl"))).unwrap();
        let mut lines = Vec::new();
        for word in ["yes", "no", "stop"] {
            let rows = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
            for mut row in rows.filter(|r| r["label"] == word).take(per_split) {
                row["audio"] = serde_json::json!(src.join(row["audio"].as_str().unwrap()));
                lines.push(row.to_string());
            }
        }
        std::fs::write(out.join(format!("{split}.jsonl")), lines.join("\n")).unwrap();
    }
    Some(out)
}

fn audio_recipe(dir: &std::path::Path, data: &std::path::Path, method: &str, extra: &str) -> PathBuf {
    let text = format!(
        r#"task = "audio-classification"
method = "{method}"
model = "{WHISPER_REPO}"
seed = 5
output_dir = "{out}"
[data]
dataset = "{data}"
train = "train.jsonl"
validation = "validation.jsonl"
test = "test.jsonl"
[audio]
seconds = 1.5
[feature_extraction]
cache_dir = "{cache}"
{extra}
"#,
        out = dir.join(method).display(),
        data = data.display(),
        cache = dir.join("features").display(),
    );
    let path = dir.join(format!("{method}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn finetune_json(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_finetune")).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Feature extraction on Whisper's frozen encoder: features cached (the second run reads them
/// and gives the same test metrics); the saved classifier loads for `finetune eval` and `predict`.
#[test]
fn audio_feature_extraction_caches_and_saved_model_predicts() {
    let Some(_) = assets() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(data) = small_words(tmp.path(), 6) else { return };
    let recipe = audio_recipe(
        tmp.path(),
        &data,
        "feature-extraction",
        "[training]\nepochs = 20\nbatch_size = 6\nlearning_rate = 1e-2\n",
    );
    let train = |r: &std::path::Path| {
        finetune_json(&["train".as_ref(), "--json".as_ref(), "--no-progress".as_ref(), r.as_os_str()])
    };
    let first = train(&recipe);
    assert_eq!(first["feature_cache_hit"], false);
    assert_eq!(first["trainable_params"], 384 * 3 + 3);
    std::fs::remove_dir_all(tmp.path().join("feature-extraction")).unwrap();
    let second = train(&recipe);
    assert_eq!(second["feature_cache_hit"], true);
    assert_eq!(first["test"], second["test"]);
    assert!(first["test"]["accuracy"].as_f64().unwrap() > 0.5, "{first}");

    let model = PathBuf::from(first["model_dir"].as_str().unwrap());
    let test = data.join("test.jsonl");
    let m = finetune_json(&[
        "eval".as_ref(),
        "--json".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--data".as_ref(),
        test.as_os_str(),
    ]);
    assert!((m["accuracy"].as_f64().unwrap() - first["test"]["accuracy"].as_f64().unwrap()).abs() < 1e-9, "{m}");
    let clip: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&test).unwrap().lines().next().unwrap()).unwrap();
    let wav = PathBuf::from(clip["audio"].as_str().unwrap());
    let p =
        finetune_json(&["predict".as_ref(), "--json".as_ref(), "--model".as_ref(), model.as_os_str(), wav.as_os_str()]);
    assert!(["yes", "no", "stop"].contains(&p["label"].as_str().unwrap()), "{p}");
}

/// LoRA on the encoder's query/value projections with augmentation: only the adapters and the
/// head train (peft-format adapter with encoder keys and the classifier), and the merged model
/// differs from the base exactly in the adapted projections.
#[test]
fn audio_lora_trains_only_adapters_and_head() {
    let Some((model_dir, _)) = assets() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(data) = small_words(tmp.path(), 4) else { return };
    let recipe = audio_recipe(
        tmp.path(),
        &data,
        "lora",
        "[audio.augment]\ngain_db = 6.0\nshift_seconds = 0.3\nnoise_snr_db = [20.0, 40.0]\ntime_masks = 1\nfreq_masks = 1\n\
         [training]\nepochs = 1\nbatch_size = 6\nlearning_rate = 1e-2\nwarmup_ratio = 0.0\n\
         [lora]\nr = 4\nlora_alpha = 8\ntarget_modules = [\"q_proj\", \"v_proj\"]\n",
    );
    let report = finetune_json(&["train".as_ref(), "--json".as_ref(), "--no-progress".as_ref(), recipe.as_os_str()]);
    assert_eq!(report["optimizer_steps"], 2);
    assert_eq!(report["trainable_params"], 4 * 2 * (384 * 4 + 4 * 384) + 384 * 3 + 3);
    let adapter = PathBuf::from(report["model_dir"].as_str().unwrap());
    let files = finetune::io::peft::AdapterFiles::read(&adapter).unwrap();
    assert_eq!(files.tensors.len(), 4 * 2 * 2 + 2, "{:?}", files.tensors.keys().collect::<Vec<_>>());
    let b = files.tensor("base_model.model.encoder.layers.3.self_attn.v_proj.lora_B.weight").unwrap();
    assert!(b.data.iter().any(|v| *v != 0.0), "lora_B did not train");
    assert!(files.tensors.contains_key("base_model.model.classifier.weight"));

    let merged = SafetensorsFile::open(&tmp.path().join("lora/model/model.safetensors")).unwrap();
    let base = finetune::models::whisper::ct2_tensors(&finetune::io::ctranslate2::Ct2Model::open(&model_dir).unwrap())
        .unwrap();
    for name in merged.names().into_iter().filter(|n| n.starts_with("encoder.")) {
        let original = &base[&format!("model.{name}")];
        let moved = max_abs_diff(&merged.tensor(&name).unwrap().data, &original.data) > 0.0;
        let adapted = name.ends_with("q_proj.weight") || name.ends_with("v_proj.weight");
        assert_eq!(moved, adapted, "{name}");
    }
}

pub const SENTENCES_REPO: &str = "finetune/espeak-sentences";

/// Four training, two validation and two test clips of the spoken sentences, as manifests with
/// absolute paths. None without the asset.
pub fn small_sentences(dir: &std::path::Path) -> Option<PathBuf> {
    let src = cached_asset(SENTENCES_REPO, RepoKind::Dataset, "train.jsonl", "spoken-sentences")?;
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (split, n) in [("train", 4), ("validation", 2), ("test", 2)] {
        let text = std::fs::read_to_string(src.join(format!("{split}.jsonl"))).unwrap();
        let rows: Vec<String> = text
            .lines()
            .take(n)
            .map(|l| {
                let mut row: serde_json::Value = serde_json::from_str(l).unwrap();
                row["audio"] = serde_json::json!(src.join(row["audio"].as_str().unwrap()));
                row.to_string()
            })
            .collect();
        std::fs::write(data.join(format!("{split}.jsonl")), rows.join("\n")).unwrap();
    }
    Some(data)
}

/// LoRA transcription fine-tuning on a few synthetic clips (decoder q/v adapters, frozen encoder
/// computed once): only adapter weights train, the run reports the test WER before and after,
/// and `finetune transcribe --adapter` (base + adapter) gives the merged model's transcripts.
#[test]
fn whisper_lora_transcription_fine_tuning() {
    let Some((model_dir, _)) = assets() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(data) = small_sentences(tmp.path()) else { return };
    let recipe = tmp.path().join("lora.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"task = "transcription"
method = "lora"
model = "{}"
output_dir = "{}"
[data]
dataset = "{}"
train = "train.jsonl"
validation = "validation.jsonl"
test = "test.jsonl"
[training]
epochs = 1
batch_size = 2
eval_batch_size = 2
learning_rate = 1e-2
warmup_ratio = 0.0
metric = "loss"
[lora]
r = 4
lora_alpha = 8
target_modules = "model\\.decoder\\.layers\\.\\d+\\.(self_attn|encoder_attn)\\.(q_proj|v_proj)"
"#,
            model_dir.display(),
            tmp.path().join("run").display(),
            data.display()
        ),
    )
    .unwrap();
    let report = finetune_json(&["train".as_ref(), "--json".as_ref(), "--no-progress".as_ref(), recipe.as_os_str()]);
    assert_eq!(report["optimizer_steps"], 2);
    // 4 layers x 2 attentions x (q, v) x (A [384, 4] + B [4, 384]).
    assert_eq!(report["trainable_params"], 4 * 2 * 2 * 2 * 384 * 4);
    assert!(report["test_wer_base"].as_f64().is_some() && report["test_wer"].as_f64().is_some(), "{report}");
    let adapter = PathBuf::from(report["model_dir"].as_str().unwrap());
    let files = finetune::io::peft::AdapterFiles::read(&adapter).unwrap();
    assert_eq!(files.tensors.len(), 4 * 2 * 2 * 2);
    let b = files.tensor("base_model.model.model.decoder.layers.0.encoder_attn.v_proj.lora_B.weight").unwrap();
    assert!(b.data.iter().any(|v| *v != 0.0), "lora_B did not train");

    // The merged model differs from the base only in the adapted projections.
    let merged = SafetensorsFile::open(&tmp.path().join("run/model/model.safetensors")).unwrap();
    let base = finetune::models::whisper::ct2_tensors(&finetune::io::ctranslate2::Ct2Model::open(&model_dir).unwrap())
        .unwrap();
    for (name, original) in &base {
        let moved = max_abs_diff(&merged.tensor(name).unwrap().data, &original.data) > 0.0;
        let adapted =
            name.starts_with("model.decoder.") && (name.ends_with("q_proj.weight") || name.ends_with("v_proj.weight"));
        assert_eq!(moved, adapted, "{name}");
    }
    // Base + adapter transcribes like the merged model.
    let test = data.join("test.jsonl");
    let with_adapter = finetune_json(&[
        "transcribe".as_ref(),
        "--json".as_ref(),
        "--model".as_ref(),
        model_dir.as_os_str(),
        "--adapter".as_ref(),
        adapter.as_os_str(),
        "--data".as_ref(),
        test.as_os_str(),
    ]);
    assert!(
        (with_adapter["wer"].as_f64().unwrap() - report["test_wer"].as_f64().unwrap()).abs() < 1e-9,
        "{with_adapter} {report}"
    );
}

/// A LoRA adapter made by Python peft for Whisper tiny.en (q/v of every encoder and decoder
/// attention, non-zero B) loads onto the CTranslate2 checkpoint and gives peft's logits.
#[test]
fn peft_whisper_adapter_gives_peft_logits() {
    let Some((model_dir, data)) = assets() else { return };
    let (_, json) = reference();
    let t = Transcriber::load(&model_dir, Some(&fixtures().join("peft/whisper-lora")), "cpu").unwrap();
    let audio = read_wav(&data.join(CLIP)).unwrap();
    let clip = json["clips"].as_array().unwrap().iter().find(|c| c["audio"] == CLIP).unwrap();
    let mut tokens: Vec<i64> = json["prefix"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
    tokens.extend(clip["tokens"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()));
    let n = tokens.len();
    let device = Device::default();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(tokens, [1, n]), &device);
    let encoded = t.model.encoder.forward(t.features(&audio.samples));
    let logits = t.model.decoder.forward(ids, &t.model.decoder.cross_cache(encoded));
    let expected = SafetensorsFile::open(&fixtures().join("whisper-lora-reference.safetensors")).unwrap();
    let d = max_abs_diff(&values(logits.slice(s![.., .., 0..1024])), &expected.tensor("logits_head").unwrap().data);
    assert!(d < 1e-3, "logits differ from peft's by {d}");
}
