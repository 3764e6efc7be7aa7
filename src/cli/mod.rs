//! The `finetune` command line.

mod advise;
mod check;
mod inspect;
mod sweep;

use crate::inference::audio::FinetunedAudioClassifier;
use crate::inference::image::FinetunedImageClassifier;
use crate::inference::lm;
use crate::inference::text::FinetunedClassifier;
use crate::inference::tokens::{FinetunedTokenClassifier, is_token_classifier};
use crate::models::generation::Sampling;
use crate::recipe::Recipe;
use crate::training::trainer::Paused;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "finetune", version, about = "Fine-tune pretrained Hugging Face models")]
pub struct Cli {
    /// More log output (-v debug, -vv trace; RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Export formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ExportFormat {
    /// llama.cpp's GGUF.
    Gguf,
}

/// Storage of a GGUF model's matrices.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum GgufQuant {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
}

impl GgufQuant {
    fn ggml_type(self) -> crate::io::gguf::GgmlType {
        use crate::io::gguf::GgmlType;
        match self {
            Self::F32 => GgmlType::F32,
            Self::F16 => GgmlType::F16,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_0 => GgmlType::Q4_0,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train per a recipe (TOML); `--set key=value` overrides any recipe field.
    Train {
        recipe: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Continue the run in the recipe's output_dir from its latest checkpoint.
        #[arg(long)]
        resume: bool,
        /// No progress bar (also off when stderr is not a terminal).
        #[arg(long)]
        no_progress: bool,
        /// Print the final report as JSON.
        #[arg(long)]
        json: bool,
        /// Stop after this many epochs (0.3: 30% of the first epoch's steps), validate, save a
        /// checkpoint and exit; `--resume` continues as if there had been no pause (what
        /// `finetune sweep` uses to discard unpromising seeds early).
        #[arg(long, value_name = "EPOCHS")]
        pause_at: Option<f64>,
    },
    /// Run a recipe over several seeds and a grid of settings (each trial an ordinary run under
    /// one sweep directory), optionally discarding unpromising seeds early (Dodge et al. 2020);
    /// prints mean ± std per setting and writes the best trial's recipe. Run it again with the
    /// same arguments to continue a killed sweep.
    Sweep {
        recipe: PathBuf,
        /// Overrides for every trial.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Seeds per setting: the recipe's seed, seed + 1, ...
        #[arg(long, default_value_t = 5)]
        seeds: usize,
        /// A setting to vary: `--grid training.learning_rate=1e-4,5e-4` (repeat it for a
        /// product of several; a value may be a TOML list).
        #[arg(long, value_name = "KEY=V1,V2,...")]
        grid: Vec<String>,
        /// Train every trial for this fraction of the first epoch, then keep only the best
        /// `--keep` of each setting by the validation metric and finish those.
        #[arg(long, value_name = "FRACTION", requires = "keep")]
        discard_after: Option<f64>,
        /// Trials per setting that survive early discarding.
        #[arg(long, value_name = "K", requires = "discard_after")]
        keep: Option<usize>,
        /// Trials run at once; the cores are split between them, and each holds its own model.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        /// The sweep directory (default: the recipe's output_dir followed by `-sweep`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recommend a method for a model and a dataset on this machine: inspects the model, the data
    /// and the machine, measures a few real steps of each candidate method (time per epoch, peak
    /// memory), applies the rules of thumb to the numbers and the budgets, and writes a recipe.
    Advise {
        /// A model directory or hub id (a GGUF repository: its one .gguf file, or --gguf-file).
        #[arg(long)]
        model: String,
        #[arg(long)]
        gguf_file: Option<String>,
        /// A dataset directory or hub id; split files are found by name (train, validation/dev, test).
        #[arg(long)]
        data: String,
        /// Memory budget in GB (default: the memory available now).
        #[arg(long, value_name = "GB")]
        memory: Option<f64>,
        /// Time budget for the whole run: 90s, 45m, 2h, 1h30m.
        #[arg(long, value_name = "DURATION")]
        time: Option<String>,
        /// Where to write the recommended recipe.
        #[arg(long, default_value = "advised-recipe.toml")]
        out: PathBuf,
        /// Optimizer steps each candidate is measured for (default 20; 4 for decoders).
        #[arg(long)]
        probe_steps: Option<usize>,
        /// A setting for every candidate's recipe, e.g. `--set data.text_column=sentence`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Print everything as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a fine-tuned model (or a base model plus an adapter) on a labelled CSV/TSV/JSONL file,
    /// or an image model on an IDX file or a folder of class directories.
    Eval {
        /// A fine-tuned model, or the base model of `--adapter`.
        #[arg(long)]
        model: Option<String>,
        /// A PEFT adapter directory (finetune's or Python peft's); repeat it to combine LoRA
        /// adapters (their updates add up, as peft's active adapters do).
        #[arg(long)]
        adapter: Vec<PathBuf>,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "text")]
        text_column: String,
        #[arg(long, default_value = "label")]
        label_column: String,
        /// The second text's column, for a sentence-pair model.
        #[arg(long)]
        text_pair_column: Option<String>,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        #[arg(long)]
        skip_bad_rows: bool,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long)]
        json: bool,
    },
    /// Predict labels for texts (arguments, or one per line on stdin), or for image files with an
    /// image model (`finetune predict --model DIR photo.png`).
    Predict {
        /// A fine-tuned model, or the base model of `--adapter`.
        #[arg(long)]
        model: Option<String>,
        /// A PEFT adapter directory (finetune's or Python peft's); repeat it to combine LoRA
        /// adapters (their updates add up, as peft's active adapters do).
        #[arg(long)]
        adapter: Vec<PathBuf>,
        texts: Vec<String>,
        /// For a sentence-pair model: the second text of each pair, in the order of the texts
        /// (on stdin: one pair per line, the two texts separated by a tab).
        #[arg(long)]
        pair: Vec<String>,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long)]
        json: bool,
    },
    /// Fold a LoRA adapter into its base model and write a plain fine-tuned model directory.
    Merge {
        /// The base model (default: the adapter's base_model_name_or_path).
        #[arg(long)]
        base: Option<String>,
        /// The adapter; repeat it to merge several (their updates add up, as peft's active
        /// adapters do).
        #[arg(long, required = true)]
        adapter: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// For a causal-LM base given as a hub id of a GGUF repository: the file.
        #[arg(long)]
        gguf_file: Option<String>,
        /// Print what was written as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Export a causal LM for llama.cpp (Ollama, LM Studio): a LoRA adapter as a GGUF adapter
    /// (`--adapter`), or the model with the adapter merged as a GGUF model (`--merge`, or no
    /// adapter), with its tokenizer and chat template.
    Export {
        /// The base model (default: the adapter's base_model_name_or_path): a Hugging Face
        /// directory, a .gguf file, or a hub id (with --gguf-file for a GGUF repository).
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        gguf_file: Option<String>,
        /// A PEFT LoRA adapter (finetune's or Python peft's); with --merge, repeat it to merge
        /// several (their updates add up).
        #[arg(long)]
        adapter: Vec<PathBuf>,
        /// Write the base with the adapter merged, not the adapter alone.
        #[arg(long)]
        merge: bool,
        #[arg(long, value_enum, default_value = "gguf")]
        to: ExportFormat,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// How a merged model's matrices are stored (norms stay f32; adapters are always f32).
        #[arg(long, value_enum, default_value = "f16")]
        quant: GgufQuant,
        /// Print what was written as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Generate text with a causal language model (optionally with a LoRA adapter), streaming
    /// tokens to the terminal. Instruct models get their chat template.
    Generate {
        /// A Hugging Face model directory, a .gguf file, or a hub id (with --gguf-file for a GGUF repo).
        #[arg(long)]
        model: String,
        #[arg(long)]
        gguf_file: Option<String>,
        /// A PEFT LoRA adapter (finetune's or Python peft's); repeat it to combine several.
        #[arg(long)]
        adapter: Vec<PathBuf>,
        /// The prompt; repeat it to generate for several prompts in one left-padded batch.
        #[arg(long, required = true)]
        prompt: Vec<String>,
        /// A system message for the chat template.
        #[arg(long)]
        system: Option<String>,
        /// Use the prompt as raw text, without the chat template.
        #[arg(long)]
        raw: bool,
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        /// 0 is greedy decoding.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print one JSON object: the prompt, its token ids, the generated ids and text.
        #[arg(long)]
        json: bool,
        /// With --json: also the logits of the first generated position (for comparing runtimes).
        #[arg(long, requires = "json")]
        logits: bool,
    },
    /// Transcribe WAV files with a Whisper model (Hugging Face or CTranslate2 directory, or hub
    /// id), optionally with a LoRA adapter; with `--data manifest.jsonl` (`audio`, `text`), report
    /// the word error rate.
    Transcribe {
        #[arg(long)]
        model: String,
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
        files: Vec<PathBuf>,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long)]
        json: bool,
    },
    /// Convert a model to the Hugging Face layout (today: a CTranslate2 Whisper model to
    /// `config.json` + `model.safetensors` that `transformers` loads).
    Convert {
        /// The source model directory (or hub id).
        #[arg(long)]
        from: String,
        #[arg(long)]
        out: PathBuf,
        /// Print what was written as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read files the way training would and report what each holds, or what is wrong with it:
    /// weights (safetensors, GGUF, .pth, CTranslate2), tokenizer.json, config.json,
    /// adapter_config.json, recipes, datasets, WAV, images, IDX. Exit status 1 if any is unusable.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Read every file as this kind instead of telling it from the name.
        #[arg(long = "as", value_enum)]
        kind: Option<check::FileKind>,
        /// For labelled datasets: the text column.
        #[arg(long, default_value = "text")]
        text_column: String,
        /// For labelled datasets: the label column.
        #[arg(long, default_value = "label")]
        label_column: String,
        /// For sentence-pair datasets: the second text's column.
        #[arg(long)]
        text_pair_column: Option<String>,
        /// One JSON object per file (`file`, `status`: ok/error/bug, `message`).
        #[arg(long)]
        json: bool,
    },
    /// Describe a model: architecture, parameters, and what a method would train.
    Inspect {
        model: String,
        /// For a hub id of a GGUF repository: the file.
        #[arg(long)]
        gguf_file: Option<String>,
        #[arg(long, default_value = "full")]
        method: String,
        /// For `transfer`: encoder layers trainable from the start.
        #[arg(long, default_value_t = 0)]
        trainable_layers: usize,
        /// Also report the model's memory with its linear layers quantized (`nf4` or `fp4`,
        /// double quantization, blocks of 64; for a GGUF decoder also `gguf`: its own blocks).
        #[arg(long)]
        quantize: Option<String>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train { recipe, overrides, resume, no_progress, json, pause_at } => {
            let mut r = Recipe::load(&recipe, &overrides)?;
            r.training.pause_at_epoch = pause_at;
            r.training.validate()?;
            let show = !no_progress && std::io::stderr().is_terminal();
            let outcome = match crate::tasks::train(&r, resume, show) {
                Err(e) if e.downcast_ref::<Paused>().is_some() => {
                    let paused = e.downcast::<Paused>().expect("checked above");
                    if json {
                        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "paused": paused }))?);
                    } else {
                        let scores = paused.validation.map(|m| format!(": validation {}", m.scores()));
                        println!("{paused}{}", scores.unwrap_or_default());
                    }
                    return Ok(());
                }
                other => other?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome.json)?);
            } else {
                println!("{}", outcome.summary.join("\n"));
            }
        }
        Command::Sweep { recipe, overrides, seeds, grid, discard_after, keep, parallel, out, json } => {
            let args = sweep::SweepArgs { recipe, overrides, seeds, grid, discard_after, keep, parallel, out };
            let summary = sweep::run(&args)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{}", summary.table().join("\n"));
            }
        }
        Command::Eval { model: Some(model), data, batch_size, device, json, .. } if is_image_model(&model) => {
            let m = FinetunedImageClassifier::load(&resolve_model_dir(&model)?, &device)?;
            let metrics = m.evaluate_split(&data, batch_size)?;
            print_eval(&metrics, json)?;
        }
        Command::Eval { model: Some(model), data, batch_size, device, json, .. } if is_audio_classifier(&model) => {
            let m = FinetunedAudioClassifier::load(&resolve_model_dir(&model)?, &device)?;
            print_eval(&m.evaluate_split(&data, batch_size)?, json)?;
        }
        Command::Eval {
            model,
            adapter,
            data,
            text_column,
            label_column,
            batch_size,
            skip_bad_rows,
            device,
            json,
            ..
        } if is_token_classifier(model.as_deref(), &adapter) => {
            anyhow::ensure!(adapter.len() <= 1, "a token classifier takes one adapter");
            let m = FinetunedTokenClassifier::load(model.as_deref(), adapter.first().map(PathBuf::as_path), &device)?;
            let (words, tags) = crate::data::tagged::fields(&text_column, &label_column);
            print_eval(&m.evaluate_file(&data, words, tags, batch_size, skip_bad_rows)?, json)?;
        }
        Command::Eval {
            model,
            adapter,
            data,
            text_column,
            label_column,
            text_pair_column,
            batch_size,
            skip_bad_rows,
            device,
            json,
        } => {
            let m = FinetunedClassifier::load_combined(model.as_deref(), &adapter, &device, None)?;
            let cols = crate::data::text::Columns {
                text: text_column,
                label: label_column,
                pair: text_pair_column,
                label_may_be_empty: false,
            };
            let metrics = m.evaluate_file(&data, &cols, batch_size, skip_bad_rows)?;
            print_eval(&metrics, json)?;
        }
        Command::Predict { model: Some(model), texts, device, json, .. } if is_image_model(&model) => {
            let m = FinetunedImageClassifier::load(&resolve_model_dir(&model)?, &device)?;
            let images: Vec<PathBuf> = texts.iter().map(PathBuf::from).collect();
            if images.is_empty() {
                anyhow::bail!("give image files to classify: finetune predict --model {model} photo.png ...");
            }
            for p in m.predict(&images, 5)? {
                if json {
                    println!("{}", serde_json::to_string(&p)?);
                } else {
                    let top: Vec<String> = p.top.iter().map(|(l, v)| format!("{l}={v:.3}")).collect();
                    println!("{}\t{}\t{}", p.label, top.join(" "), p.image.display());
                }
            }
        }
        Command::Predict { model: Some(model), texts, device, json, .. } if is_audio_classifier(&model) => {
            let m = FinetunedAudioClassifier::load(&resolve_model_dir(&model)?, &device)?;
            let files: Vec<PathBuf> = texts.iter().map(PathBuf::from).collect();
            anyhow::ensure!(
                !files.is_empty(),
                "give WAV files to classify: finetune predict --model {model} clip.wav ..."
            );
            for p in m.predict(&files, 5)? {
                if json {
                    println!("{}", serde_json::to_string(&p)?);
                } else {
                    let top: Vec<String> = p.top.iter().map(|(l, v)| format!("{l}={v:.3}")).collect();
                    println!("{}\t{}\t{}", p.label, top.join(" "), p.audio.display());
                }
            }
        }
        Command::Predict { model, adapter, texts, device, json, .. }
            if is_token_classifier(model.as_deref(), &adapter) =>
        {
            anyhow::ensure!(adapter.len() <= 1, "a token classifier takes one adapter");
            let m = FinetunedTokenClassifier::load(model.as_deref(), adapter.first().map(PathBuf::as_path), &device)?;
            let texts = if texts.is_empty() { stdin_lines()? } else { texts };
            for t in m.predict(&texts)? {
                if json {
                    println!("{}", serde_json::to_string(&t)?);
                } else {
                    let found: Vec<String> = t.entities.iter().map(|e| format!("{}={}", e.kind, e.text)).collect();
                    println!("{}\t{}", found.join(" "), t.text);
                }
            }
        }
        Command::Predict { model, adapter, texts, pair, device, json } => {
            let m = FinetunedClassifier::load_combined(model.as_deref(), &adapter, &device, None)?;
            let (texts, pairs) = if texts.is_empty() {
                let lines = stdin_lines()?;
                if m.takes_pairs() {
                    let split: Vec<(String, String)> = lines
                        .iter()
                        .enumerate()
                        .map(|(i, l)| {
                            l.split_once('\t').map(|(a, b)| (a.to_string(), b.to_string())).with_context(|| {
                                format!("stdin line {}: a text pair is two texts separated by a tab", i + 1)
                            })
                        })
                        .collect::<Result<_>>()?;
                    let (a, b) = split.into_iter().unzip();
                    (a, Some(b))
                } else {
                    (lines, None)
                }
            } else {
                (texts, (!pair.is_empty()).then_some(pair))
            };
            for p in m.predict(&texts, pairs.as_deref(), 32)? {
                if let Some(score) = p.score {
                    if json {
                        println!("{}", serde_json::json!({"text": p.text, "text_pair": p.text_pair, "score": score}));
                    } else {
                        println!("{score:.4}\t{}", p.text);
                    }
                    continue;
                }
                if json {
                    let probs: serde_json::Map<String, serde_json::Value> =
                        p.probabilities.iter().map(|(l, v)| (l.clone(), (*v as f64).into())).collect();
                    println!(
                        "{}",
                        serde_json::json!({"text": p.text, "text_pair": p.text_pair, "label": p.label, "probabilities": probs, "logits": p.logits})
                    );
                } else {
                    let probs: Vec<String> = p.probabilities.iter().map(|(l, v)| format!("{l}={v:.3}")).collect();
                    println!("{}\t{}\t{}", p.label, probs.join(" "), p.text);
                }
            }
        }
        Command::Export { model, gguf_file, adapter, merge, to: ExportFormat::Gguf, out, quant, json } => {
            use crate::inference::gguf_export;
            let base = match (&model, adapter.first()) {
                (Some(m), _) => m.clone(),
                (None, Some(a)) => crate::io::peft::AdapterFiles::read(a)?
                    .base_model()
                    .map(str::to_string)
                    .with_context(|| format!("{}: names no base model; give --model", a.display()))?,
                (None, None) => anyhow::bail!("give --model (and --adapter to export an adapter or merge one)"),
            };
            let base = lm::resolve_model(&base, gguf_file.as_deref(), "main")?;
            let written = match adapter.as_slice() {
                [a] if !merge => gguf_export::export_adapter(&base, a, &out)?,
                [_, _, ..] if !merge => anyhow::bail!(
                    "a llama.cpp adapter file holds one adapter: export each (llama.cpp takes several --lora) or merge them (--merge)"
                ),
                _ => gguf_export::export_model(&base, &adapter, &out, quant.ggml_type())?,
            };
            if json {
                println!("{}", serde_json::to_string(&written)?);
            } else {
                println!("wrote {} ({} tensors, {:.1} MB)", written.path, written.tensors, written.bytes as f64 / 1e6);
            }
        }
        Command::Merge { base, adapter, out, gguf_file, json } => {
            let n = if lm::is_causal_lm_adapter(&adapter[0])? {
                let base = base.context("--base is needed for a causal-LM adapter")?;
                let path = lm::resolve_model(&base, gguf_file.as_deref(), "main")?;
                lm::merge(&path, &adapter, &out)?
            } else if adapter.len() == 1 {
                let mut m = FinetunedClassifier::load(base.as_deref(), Some(&adapter[0]), "cpu", None)?;
                let n = m.merge_adapter()?;
                m.save_model(&out)?;
                n
            } else {
                let m = FinetunedClassifier::load_combined(base.as_deref(), &adapter, "cpu", None)?;
                m.save_model(&out)?;
                let mut n = 0;
                for dir in &adapter {
                    n += crate::io::peft::AdapterFiles::read(dir)?
                        .tensors
                        .keys()
                        .filter(|k| k.ends_with(".lora_A.weight"))
                        .count();
                }
                n
            };
            if json {
                println!("{}", serde_json::json!({"path": out.display().to_string(), "merged_layers": n}));
            } else {
                println!("merged {n} adapted layers into {}", out.display());
            }
        }
        Command::Generate {
            model,
            gguf_file,
            adapter,
            prompt,
            system,
            raw,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            device,
            json,
            logits,
        } => {
            let sampling = Sampling { temperature, top_p, seed, max_new_tokens, stop_ids: Vec::new() };
            let opts = lm::GenerateOptions { system, raw, json, logits };
            let path = lm::resolve_model(&model, gguf_file.as_deref(), "main")?;
            lm::generate_cli(&path, &adapter, &prompt, &opts, sampling, &device)?;
        }
        Command::Transcribe { model, adapter, data, files, device, json } => {
            anyhow::ensure!(!files.is_empty() || data.is_some(), "no audio files given (or --data MANIFEST)");
            let started = std::time::Instant::now();
            let t = crate::inference::transcriber::Transcriber::load(
                &resolve_model_dir(&model)?,
                adapter.as_deref(),
                &device,
            )?;
            if let Some(manifest) = &data {
                let (wer, pairs) = t.word_error_rate(manifest)?;
                if json {
                    println!("{}", serde_json::json!({ "wer": wer, "clips": pairs.len() }));
                } else {
                    for (r, h) in &pairs {
                        println!("ref: {r}\nhyp: {h}");
                    }
                    println!("WER {wer:.4} over {} clips", pairs.len());
                }
            }
            let loaded = started.elapsed().as_secs_f64();
            let (started, mut audio_seconds) = (std::time::Instant::now(), 0.0);
            for f in &files {
                let r = t.transcribe_file(f)?;
                audio_seconds += r.seconds;
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!("{}\t{}", r.audio.display(), r.text);
                }
            }
            if !files.is_empty() {
                let seconds = started.elapsed().as_secs_f64();
                tracing::info!(
                    "model loaded in {loaded:.2} s; {} files ({audio_seconds:.1} s of audio) transcribed in {seconds:.2} s",
                    files.len()
                );
            }
        }
        Command::Convert { from, out, json } => {
            let dir = crate::models::ModelDir::open(&resolve_model_dir(&from)?)?;
            let config = crate::models::whisper::WhisperConfig::read(&dir)?;
            crate::models::whisper::convert(&dir, &config, &out)?;
            if json {
                println!("{}", serde_json::json!({"path": out.display().to_string(), "model_type": "whisper"}));
            } else {
                println!("{}", out.display());
            }
        }
        Command::Check { files, kind, text_column, label_column, text_pair_column, json } => {
            let columns = crate::data::text::Columns {
                text: text_column,
                label: label_column,
                pair: text_pair_column,
                label_may_be_empty: false,
            };
            let status = check::run(&files, kind, &columns, json);
            if status != 0 {
                std::process::exit(status);
            }
        }
        Command::Advise { model, gguf_file, data, memory, time, out, probe_steps, overrides, json } => {
            let args = advise::AdviseArgs {
                model,
                gguf_file,
                data,
                memory_gb: memory,
                time,
                out,
                probe_steps,
                overrides,
                json,
            };
            advise::run(&args)?
        }
        Command::Inspect { model, gguf_file, method, trainable_layers, quantize, json } => {
            inspect::run(&model, gguf_file.as_deref(), &method, trainable_layers, quantize.as_deref(), json)?
        }
    }
    Ok(())
}

/// Whether `--model` names a fine-tuned audio classifier.
fn is_audio_classifier(model: &str) -> bool {
    resolve_model_dir(model).is_ok_and(|d| FinetunedAudioClassifier::is_audio_classifier(&d))
}

/// Whether `--model` names an image model (a directory, or a hub id in the cache).
fn is_image_model(model: &str) -> bool {
    resolve_model_dir(model).is_ok_and(|d| crate::models::image_classifier::is_image_model(&d))
}

/// A model directory, or a hub id resolved in the cache (any model with a `config.json`).
/// The non-empty lines of standard input (texts to predict when none are given as arguments).
fn stdin_lines() -> Result<Vec<String>> {
    let lines = std::io::stdin().lock().lines().collect::<std::io::Result<Vec<_>>>().context("reading stdin")?;
    Ok(lines.into_iter().filter(|l| !l.trim().is_empty()).collect())
}

fn resolve_model_dir(model: &str) -> Result<PathBuf> {
    crate::io::hub::resolve(model, crate::io::hub::RepoKind::Model, "main", &["config.json"])
}

fn print_eval(metrics: &crate::training::metrics::EvalMetrics, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(metrics)?);
    } else {
        println!("examples: {}\n{}\nloss:     {:.4}", metrics.examples, metrics.scores(), metrics.loss);
    }
    Ok(())
}
