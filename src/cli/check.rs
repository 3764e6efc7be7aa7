//! `finetune check FILE...`: read each file the way training and inference would, and say what it
//! holds or the first thing wrong with it, before a long run finds out.
//!
//! One line per file: `ok    <file>: <what it holds>` or `error <file>: <why>`. A panic while
//! reading is a bug in finetune, never the file's fault: it is caught, reported as
//! `BUG   <file>: ...`, and the remaining files are still checked. The exit status is 0 when
//! every file is fine, 1 when some file is not, 101 when reading one hit a bug.
//!
//! This is also the entry point of the hostile-file harness (`fuzz/`), which feeds it mutated
//! files under a memory limit and counts anything other than `ok` and `error` lines.

use crate::data::text::{Columns, read_rows};
use crate::io::safetensors::SafetensorsFile;
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::Path;

/// What kind of file a path is, by its name (`--as` overrides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileKind {
    Safetensors,
    Gguf,
    /// A PyTorch checkpoint (`.pth`, `.pt`, `pytorch_model.bin`).
    Pth,
    /// CTranslate2's `model.bin`.
    Ct2,
    Wav,
    Image,
    /// `tokenizer.json`.
    Tokenizer,
    /// A model's `config.json`.
    Config,
    /// A peft adapter's `adapter_config.json` (with its `adapter_model.safetensors`).
    Adapter,
    /// A recipe (`.toml`).
    Recipe,
    /// A labelled CSV/TSV/JSONL dataset, or chat/instruction JSONL.
    Dataset,
    /// An IDX image or label file (MNIST layout, optionally gzipped).
    Idx,
}

impl FileKind {
    pub fn of(path: &Path) -> Result<Self> {
        let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
        Ok(match (name.as_str(), ext) {
            ("tokenizer.json", _) => Self::Tokenizer,
            ("config.json", _) => Self::Config,
            ("adapter_config.json", _) => Self::Adapter,
            ("model.bin", _) => Self::Ct2,
            ("pytorch_model.bin", _) | (_, "pth" | "pt") => Self::Pth,
            (n, _) if n.contains("-idx1-") || n.contains("-idx3-") => Self::Idx,
            (_, "safetensors") => Self::Safetensors,
            (_, "gguf") => Self::Gguf,
            (_, "wav") => Self::Wav,
            (_, "png" | "jpg" | "jpeg" | "bmp" | "gif" | "webp") => Self::Image,
            (_, "toml") => Self::Recipe,
            (_, "csv" | "tsv" | "jsonl" | "ndjson") => Self::Dataset,
            _ => bail!(
                "{}: cannot tell what kind of file this is from its name; pass --as (one of safetensors, gguf, pth, \
                 ct2, wav, image, tokenizer, config, adapter, recipe, dataset, idx)",
                path.display()
            ),
        })
    }
}

/// Check every file; returns the process exit status.
pub fn run(files: &[std::path::PathBuf], kind: Option<FileKind>, columns: &Columns, json: bool) -> i32 {
    let mut status = 0;
    let mut out = std::io::stdout().lock();
    for path in files {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let kind = match kind {
                Some(k) => k,
                None => FileKind::of(path)?,
            };
            check(path, kind, columns)
        }));
        let shown = path.display().to_string();
        let (verdict, line) = match result {
            Ok(Ok(summary)) => ("ok", format!("ok    {shown}: {summary}")),
            Ok(Err(e)) => {
                status = status.max(1);
                let msg = format!("{e:#}");
                ("error", if msg.contains(&shown) { format!("error {msg}") } else { format!("error {shown}: {msg}") })
            }
            Err(panic) => {
                status = 101;
                let msg = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                ("bug", format!("BUG   {shown}: finetune panicked reading it: {msg}"))
            }
        };
        if json {
            // The message without the verdict word; JSON escapes whatever the file put in it.
            let message = line.split_once(' ').map_or("", |(_, m)| m.trim_start());
            let record = serde_json::json!({"file": shown, "status": verdict, "message": message});
            let _ = writeln!(out, "{record}").and_then(|_| out.flush());
            continue;
        }
        // One line per file, flushed, so whoever reads the output knows how far it got. Text
        // from the file (a name, an architecture) may hold control characters: shown escaped.
        let line: String = line
            .chars()
            .flat_map(|c| match c {
                '\n' => vec![' '],
                c if c.is_control() => c.escape_default().collect(),
                c => vec![c],
            })
            .collect();
        let _ = writeln!(out, "{line}").and_then(|_| out.flush());
    }
    status
}

/// Errors from the readers name the file themselves; `named` adds it where a reader does not.
fn check(path: &Path, kind: FileKind, columns: &Columns) -> Result<String> {
    let named = || path.display().to_string();
    match kind {
        FileKind::Safetensors => {
            let f = SafetensorsFile::open(path)?;
            let (mut params, mut non_finite) = (0usize, 0usize);
            for name in f.names() {
                let t = f.tensor(&name)?;
                params += t.data.len();
                non_finite += t.data.iter().filter(|v| !v.is_finite()).count();
            }
            Ok(format!("{} tensors, {params} values{}", f.names().len(), non_finite_note(non_finite)))
        }
        FileKind::Gguf => {
            let g = crate::io::gguf::GgufFile::open(path)?;
            let mut non_finite = 0;
            for name in g.tensors.keys() {
                let (_, data) = g.tensor_f32(name).with_context(named)?;
                non_finite += data.iter().filter(|v| !v.is_finite()).count();
            }
            let arch = g.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("unknown").to_string();
            let mut summary =
                format!("{} tensors, architecture {arch}{}", g.tensors.len(), non_finite_note(non_finite));
            if crate::models::gguf_llama::reads(&arch) && g.get(&format!("{arch}.block_count")).is_some() {
                let c = crate::models::gguf_llama::config(&g).with_context(named)?;
                summary += &format!(", {} layers, hidden {}", c.num_hidden_layers, c.hidden_size);
            }
            if g.get("tokenizer.ggml.model").is_some() {
                let json = crate::data::tokenizer::tokenizer_json_from_gguf(&g).with_context(named)?;
                let tok = crate::data::tokenizer::LmTokenizer::from_json(&json, &named())?;
                summary += &format!(", tokenizer of {} tokens", tok.vocab_size());
            }
            Ok(summary)
        }
        FileKind::Pth => {
            let f = crate::io::pth::PthFile::open(path)?;
            Ok(format!("{} tensors", f.names().len()))
        }
        FileKind::Ct2 => {
            let m = crate::io::ctranslate2::Ct2Model::open(path)?;
            let floats = m
                .variables
                .iter()
                .filter(|(_, v)| {
                    !matches!(
                        v.dtype,
                        crate::io::ctranslate2::Ct2Dtype::I8
                            | crate::io::ctranslate2::Ct2Dtype::I16
                            | crate::io::ctranslate2::Ct2Dtype::I32
                    )
                })
                .filter(|(name, _)| !m.variables.contains_key(&format!("{name}_scale")))
                .map(|(name, _)| m.tensor(name).map(|_| ()))
                .collect::<Result<Vec<()>>>()?
                .len();
            Ok(format!(
                "CTranslate2 {} (revision {}), {} variables, {floats} float tensors",
                m.spec,
                m.revision,
                m.variables.len()
            ))
        }
        FileKind::Wav => {
            let a = crate::data::audio::read_wav(path)?;
            Ok(format!("{:.2} s at {} Hz", a.seconds(), a.sample_rate))
        }
        FileKind::Image => {
            let img = crate::data::image::Image::open(path)?;
            Ok(format!("{}x{} pixels, {} channel(s)", img.width, img.height, img.channels))
        }
        FileKind::Tokenizer => {
            let tok = crate::data::tokenizer::LmTokenizer::from_file(path)?;
            let ids = tok.encode("Hello, world! Fine-tuning 123.", false).with_context(named)?;
            tok.decode(&ids, false).with_context(named)?;
            Ok(format!("tokenizer of {} tokens", tok.vocab_size()))
        }
        FileKind::Config => crate::models::describe_config(path),
        FileKind::Adapter => {
            let dir = path.parent().unwrap_or(Path::new("."));
            crate::methods::describe_adapter(&crate::io::peft::AdapterFiles::read(dir)?)
        }
        FileKind::Recipe => {
            let r = crate::recipe::Recipe::load(path, &[])?;
            Ok(format!("recipe: {:?} with {} on {}", r.task, r.method.name(), r.model))
        }
        FileKind::Dataset => check_dataset(path, columns),
        FileKind::Idx => {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.contains("-idx3-") {
                let images = crate::data::image::read_idx_images(path)?;
                let (h, w) = images.first().map_or((0, 0), |i| (i.height, i.width));
                Ok(format!("{} images of {h}x{w}", images.len()))
            } else {
                Ok(format!("{} labels", crate::data::image::read_idx_labels(path)?.len()))
            }
        }
    }
}

fn non_finite_note(n: usize) -> String {
    if n == 0 { String::new() } else { format!(" ({n} values are NaN or infinite)") }
}

/// A labelled table (`columns`), or chat/instruction rows (`messages`, or `prompt` and
/// `completion`) when a JSONL file's first row has them.
fn check_dataset(path: &Path, columns: &Columns) -> Result<String> {
    let text = crate::data::read_text(path)?;
    let first: Option<serde_json::Value> =
        text.lines().find(|l| !l.trim().is_empty()).and_then(|l| serde_json::from_str(l).ok());
    let is_chat = first.as_ref().is_some_and(|v| v.get("messages").is_some() || v.get("prompt").is_some());
    if is_chat && path.extension().is_some_and(|e| e == "jsonl" || e == "ndjson") {
        let mut rows = 0;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let value: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))?;
            crate::data::sft::parse_row(&value).with_context(|| format!("{}:{}", path.display(), i + 1))?;
            rows += 1;
        }
        return Ok(format!("{rows} chat/instruction rows"));
    }
    let raw = read_rows(path, columns, false)?;
    let labels = crate::data::text::LabelSet::infer(&raw.rows)?;
    Ok(format!("{} rows, {} labels: {:?}", raw.rows.len(), labels.len(), labels.names()))
}
