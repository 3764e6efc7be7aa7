//! `finetune advise`: which method, with which settings, for this model, this data and this
//! machine — measured, not guessed.
//!
//! Why: choosing between feature extraction, transfer learning, full fine-tuning and the PEFT
//! methods is the first question of every fine-tuning job, and the usual answer is a rule of
//! thumb ("small data, similar domain → feature extraction"; "does not fit in memory →
//! QLoRA"). The rules are sound but they need numbers a user does not have: how long an epoch
//! of each method takes on this machine and how much memory it peaks at.
//!
//! How: the advisor inspects the model (what kind it is: text encoder, image CNN or decoder; its
//! weights' size), the data (split files found by name, examples, classes and their balance,
//! text lengths in the model's own tokens and words, image sizes) and the machine (cores, memory,
//! AVX512-BF16, a CUDA build). It then runs every candidate method for real: the shipped recipe
//! of that task and method (compiled in from `recipes/`) pointed at the user's model and data, as
//! a child `finetune train … --set training.max_steps=K` with its own output directory, timing
//! the steps, the validation pass and the fixed costs (loading, feature computation, test,
//! saving) from the run's own report, and its peak memory from `wait4`. An epoch's estimate is
//! steps per epoch × the measured seconds per step plus the measured validation pass; a run's is
//! that times the recipe's epochs plus the fixed costs (early stopping can only make it shorter).
//! [`decide`] applies the rules to the measurements and the budgets (`--memory`, `--time`), and
//! the chosen recipe is written with the reasoning as its header.
//!
//! Measured (docs/BENCHMARKS.md "Advice"): estimates against the real runs of the written recipes
//! on movie reviews (MiniLM), Fashion-MNIST (MobileNetV2) and ChatterBot SFT (SmolLM2).
//! Fallback: none needed — a candidate whose probe fails is reported with its error and left out.

use crate::io::atomic::write_atomic;
use crate::io::hub::{self, RepoKind};
use crate::models::ModelDir;
use crate::recipe::{Recipe, Task, apply_override};
use crate::training::trainer::TrainerConfig;
use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `finetune advise` was asked.
pub struct AdviseArgs {
    pub model: String,
    pub gguf_file: Option<String>,
    pub data: String,
    /// Memory budget in GB (default: what the machine has available now).
    pub memory_gb: Option<f64>,
    /// Time budget for the whole run, e.g. `45m`, `2h`, `1h30m`.
    pub time: Option<String>,
    pub out: PathBuf,
    /// Optimizer steps per probe (default by task).
    pub probe_steps: Option<usize>,
    /// Settings for every candidate's recipe (`data.text_column=sentence`).
    pub overrides: Vec<String>,
    pub json: bool,
}

/// A method the advisor can measure: its name and the shipped recipe it starts from.
struct Template {
    name: &'static str,
    toml: &'static str,
}

const TEXT: [Template; 3] = [
    Template { name: "feature-extraction", toml: include_str!("../../recipes/minilm-movie-feature-extraction.toml") },
    Template { name: "lora", toml: include_str!("../../recipes/minilm-movie-lora.toml") },
    Template { name: "full", toml: include_str!("../../recipes/minilm-movie-full.toml") },
];
const TEXT_QLORA: Template = Template { name: "qlora", toml: include_str!("../../recipes/minilm-movie-qlora.toml") };
const IMAGE: [Template; 4] = [
    Template {
        name: "feature-extraction",
        toml: include_str!("../../recipes/mobilenet-fashion-feature-extraction.toml"),
    },
    Template { name: "transfer", toml: include_str!("../../recipes/mobilenet-fashion-transfer.toml") },
    Template { name: "lora", toml: include_str!("../../recipes/mobilenet-fashion-lora.toml") },
    Template { name: "full", toml: include_str!("../../recipes/mobilenet-fashion-full.toml") },
];
const DECODER: [Template; 2] = [
    Template { name: "lora", toml: include_str!("../../recipes/smollm2-chatterbot-lora.toml") },
    Template { name: "qlora", toml: include_str!("../../recipes/smollm2-chatterbot-qlora.toml") },
];

/// The model as the advisor sees it.
struct ModelFacts {
    task: Task,
    /// Where it is (for the report).
    dir: PathBuf,
    kind: String,
    weight_bytes: u64,
    gguf_file: Option<String>,
}

/// The data as the advisor sees it.
#[derive(Debug, Default, Serialize)]
pub struct DataFacts {
    pub dir: PathBuf,
    pub train: String,
    pub validation: Option<String>,
    pub test: Option<String>,
    pub train_examples: usize,
    pub validation_examples: usize,
    pub test_examples: usize,
    /// Examples per class in the training split (class name, count).
    pub classes: Vec<(String, usize)>,
    /// Text: mean and 95th percentile of tokens per example (the model's tokenizer), tokens
    /// per whitespace word, share of unknown tokens, share truncated at `max_length`.
    pub tokens_mean: Option<f64>,
    pub tokens_p95: Option<usize>,
    pub tokens_per_word: Option<f64>,
    pub unknown_share: Option<f64>,
    pub truncated_share: Option<f64>,
    /// Text: the `data.max_length` advised (the longest 1% of examples fit, within the model's
    /// positions and 512).
    pub max_length: Option<usize>,
    /// Images: side length and channels of the first training image.
    pub image: Option<(usize, usize, usize)>,
    /// How the data differs from what the model was pretrained on, where it can be seen.
    pub different_domain: Option<String>,
}

/// The machine.
#[derive(Debug, Serialize)]
pub struct MachineFacts {
    pub cores: usize,
    pub memory_total_gb: Option<f64>,
    pub memory_available_gb: Option<f64>,
    pub avx512_bf16: bool,
    pub cuda_build: bool,
}

/// One candidate's measurement and what it predicts for the full run.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub method: String,
    pub probe_steps: usize,
    pub seconds_per_step: f64,
    pub steps_per_epoch: usize,
    pub validation_seconds: f64,
    /// Loading, feature computation, the test pass, saving: paid once per run.
    pub fixed_seconds: f64,
    pub epoch_seconds: f64,
    pub epochs: usize,
    pub run_seconds: f64,
    pub peak_gb: f64,
    pub trainable_params: u64,
    pub total_params: u64,
}

/// What the rules decided.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Decision {
    /// Index into the estimates.
    pub chosen: usize,
    /// Epochs to write (fewer than the template's when `--time` asks).
    pub epochs: usize,
    /// A cap on optimizer steps when not even one epoch fits `--time`.
    pub max_steps: Option<usize>,
    pub reasons: Vec<String>,
    /// What to try after the chosen method, if anything.
    pub next: Option<String>,
}

/// The budgets and the facts the rules read.
pub struct Situation<'a> {
    pub task: Task,
    pub train_examples: usize,
    pub different_domain: Option<&'a str>,
    pub memory_gb: f64,
    pub time_seconds: Option<f64>,
    /// The model's weights in f32, GB (decides QLoRA first for decoders that crowd memory).
    pub weights_gb: f64,
}

/// Small data: below this many training examples feature extraction comes first.
const SMALL: usize = 2_000;
/// Large data: from this many examples a different domain makes full fine-tuning pay.
const LARGE: usize = 10_000;

/// The method preference for a situation, with the reason, before budgets are applied.
fn preference(s: &Situation) -> (Vec<&'static str>, String) {
    let n = s.train_examples;
    match s.task {
        Task::CausalLm if s.weights_gb * 4.0 > s.memory_gb => (
            vec!["qlora", "lora"],
            format!(
                "the model's weights alone are {:.2} GB in f32, over a quarter of the {:.1} GB budget: QLoRA keeps \
                 the frozen base in 4 bits (NF4) and trains LoRA adapters on top",
                s.weights_gb, s.memory_gb
            ),
        ),
        Task::CausalLm => (
            vec!["lora", "qlora"],
            "instruction/chat SFT of a decoder: LoRA on every projection is the standard — full fine-tuning would \
             keep AdamW's two moments for every weight (3× the weights again) for little gain on a small SFT set; \
             QLoRA when memory is short"
                .to_string(),
        ),
        _ if n < SMALL => (
            vec!["feature-extraction", "transfer", "lora", "full"],
            format!(
                "{n} training examples is a small dataset: a frozen backbone with a trained head (feature \
                 extraction) overfits least, and its features are computed once; if it plateaus, LoRA or \
                 transfer learning next"
            ),
        ),
        _ if n >= LARGE && s.different_domain.is_some() => (
            vec!["full", "transfer", "lora", "feature-extraction"],
            format!(
                "{n} training examples and a domain unlike the pretraining data ({}): with this much data \
                 updating every layer pays, and frozen features would carry the wrong domain",
                s.different_domain.unwrap_or_default()
            ),
        ),
        Task::ImageClassification => (
            vec!["transfer", "lora", "full", "feature-extraction"],
            format!(
                "{n} training examples, close to the pretraining domain: transfer learning (a new head, the top \
                 blocks first, gradual unfreezing with smaller rates lower down) adapts without destroying \
                 what the lower layers know"
            ),
        ),
        _ => (
            vec!["lora", "full", "transfer", "feature-extraction"],
            format!(
                "{n} training examples, close to the pretraining domain: LoRA trains a small fraction of the \
                 parameters and comes near full fine-tuning (on movie reviews here: 1.5 points below it over \
                 seeds for q,v r 8, 0.6 at seed 42 with every linear layer)"
            ),
        ),
    }
}

/// Apply the rules and the budgets to the measured candidates.
pub fn decide(s: &Situation, estimates: &[Estimate]) -> Result<Decision> {
    ensure!(!estimates.is_empty(), "no candidate method could be measured");
    let (order, why) = preference(s);
    let mut reasons = vec![why];
    let ranked: Vec<usize> = order
        .iter()
        .filter_map(|m| estimates.iter().position(|e| e.method == *m))
        .chain((0..estimates.len()).filter(|i| !order.contains(&estimates[*i].method.as_str())))
        .collect();
    let fits_memory = |e: &Estimate| e.peak_gb <= s.memory_gb;
    let (mut epochs, mut max_steps, mut chosen) = (0, None, None);
    // The first preferred method that fits memory and at least one epoch of which fits the time.
    for &i in &ranked {
        let e = &estimates[i];
        if !fits_memory(e) {
            reasons.push(format!(
                "{}: its measured peak {:.2} GB is over the {:.1} GB budget",
                e.method, e.peak_gb, s.memory_gb
            ));
            continue;
        }
        let Some(t) = s.time_seconds.filter(|t| e.run_seconds > *t) else {
            chosen = Some(i);
            break;
        };
        let whole = ((t - e.fixed_seconds) / e.epoch_seconds).floor();
        if whole >= 1.0 {
            epochs = (whole as usize).min(e.epochs);
            reasons.push(format!(
                "{}: {} epochs would take about {}, over the {} budget: shortened to {epochs}",
                e.method,
                e.epochs,
                duration(e.run_seconds),
                duration(t)
            ));
            chosen = Some(i);
            break;
        }
        reasons.push(format!(
            "{}: not even one epoch fits the {} budget ({} fixed + {} per epoch)",
            e.method,
            duration(t),
            duration(e.fixed_seconds),
            duration(e.epoch_seconds)
        ));
    }
    let chosen = match chosen {
        Some(i) => i,
        None => match ranked.iter().copied().find(|&i| fits_memory(&estimates[i])) {
            // Fits memory but not one epoch of time: a cap on steps.
            Some(i) => {
                let e = &estimates[i];
                let left = s.time_seconds.unwrap_or(e.run_seconds) - e.fixed_seconds - e.validation_seconds;
                let steps = ((left / e.seconds_per_step).floor().max(1.0) as usize).min(e.steps_per_epoch);
                epochs = 1;
                max_steps = Some(steps);
                reasons.push(format!("{}: capped at {steps} of its {} steps per epoch", e.method, e.steps_per_epoch));
                i
            }
            None => {
                let i = (0..estimates.len())
                    .min_by(|&a, &b| estimates[a].peak_gb.total_cmp(&estimates[b].peak_gb))
                    .expect("not empty");
                reasons.push(format!(
                    "no candidate fits the {:.1} GB budget; {} needs the least ({:.2} GB): shorten data.max_length \
                     or training.batch_size (with training.grad_accum_steps) to lower it",
                    s.memory_gb, estimates[i].method, estimates[i].peak_gb
                ));
                i
            }
        },
    };
    if epochs == 0 {
        epochs = estimates[chosen].epochs;
    }
    let name = estimates[chosen].method.as_str();
    // A decoder's alternatives are about memory, not quality: nothing to try "next".
    let next = (s.task != Task::CausalLm)
        .then_some(())
        .and_then(|_| {
            order
                .iter()
                .skip_while(|m| **m != name)
                .skip(1)
                .find(|m| estimates.iter().any(|e| e.method == **m && fits_memory(e)))
        })
        .map(|m| format!("if validation plateaus, try {m} next"));
    Ok(Decision { chosen, epochs, max_steps, reasons, next })
}

/// `45m`, `2h`, `1h30m`, `90s` → seconds.
pub fn parse_duration(text: &str) -> Result<f64> {
    let bad = || anyhow::anyhow!("--time {text:?}: give a duration with units, e.g. 90s, 45m, 2h or 1h30m");
    let (mut total, mut number) = (0.0, String::new());
    for c in text.trim().chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600.0,
            'm' => 60.0,
            's' => 1.0,
            _ => return Err(bad()),
        };
        let n: f64 = number.parse().map_err(|_| bad())?;
        total += n * unit;
        number.clear();
    }
    ensure!(number.is_empty() && total > 0.0, bad());
    Ok(total)
}

fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

pub fn run(args: &AdviseArgs) -> Result<()> {
    let time_seconds = args.time.as_deref().map(parse_duration).transpose()?;
    if let Some(m) = args.memory_gb {
        ensure!(m > 0.0, "--memory {m}: give the budget in GB, e.g. --memory 8");
    }
    let model = inspect_model(&args.model, args.gguf_file.as_deref())?;
    let machine = machine();
    let dir = dataset_dir(&args.data)?;
    let splits = find_splits(&dir, model.task)?;
    let templates: Vec<&Template> = match model.task {
        Task::CausalLm => DECODER.iter().collect(),
        Task::ImageClassification => IMAGE.iter().collect(),
        _ => TEXT.iter().collect(),
    };
    let first = Recipe::parse(&toml::to_string(&adapt(templates[0], args, &model, &splits)?)?, &[])?;
    let data = inspect_data(&first, &model, &splits)?;
    let base = |t: &Template| -> Result<toml::Value> {
        let mut v = adapt(t, args, &model, &splits)?;
        if let Some(n) = data.max_length {
            apply_override(&mut v, &format!("data.max_length={n}"))?;
        }
        Ok(v)
    };
    let memory_gb = args.memory_gb.or(machine.memory_available_gb).unwrap_or(f64::INFINITY);
    report_facts(args.json, &model, &data, &machine);

    let work = WorkDir(std::env::temp_dir().join(format!("finetune-advise-{}", std::process::id())));
    let work = &work.0;
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let steps = args.probe_steps.unwrap_or(if model.task == Task::CausalLm { 4 } else { 20 });
    let mut estimates = Vec::new();
    let probe_all = |list: &[&Template], estimates: &mut Vec<Estimate>| -> Result<()> {
        for t in list {
            let value = base(t)?;
            match probe(t.name, &value, work, steps, args.json) {
                Ok(e) => estimates.push(e),
                Err(e) => eprintln!("{}: not measured: {e:#}", t.name),
            }
        }
        Ok(())
    };
    probe_all(&templates, &mut estimates)?;
    unfreezing_estimate(&mut estimates);
    if model.task == Task::TextClassification && !estimates.iter().any(|e| e.peak_gb <= memory_gb) {
        probe_all(&[&TEXT_QLORA], &mut estimates)?;
    }
    let situation = Situation {
        task: model.task,
        train_examples: data.train_examples,
        different_domain: data.different_domain.as_deref(),
        memory_gb,
        time_seconds,
        // In f32, as the probes loaded them.
        weights_gb: estimates.iter().map(|e| e.total_params).max().unwrap_or(0) as f64 * 4.0 / 1e9,
    };
    let decision = decide(&situation, &estimates)?;
    let chosen = &estimates[decision.chosen];
    let template = templates
        .iter()
        .copied()
        .chain(std::iter::once(&TEXT_QLORA))
        .find(|t| t.name == chosen.method)
        .expect("measured");
    let mut value = base(template)?;
    apply_override(&mut value, &format!("training.epochs={}", decision.epochs))?;
    if let Some(m) = decision.max_steps {
        apply_override(&mut value, &format!("training.max_steps={m}"))?;
    }
    let text = recipe_text(&value, &decision, chosen, &data, memory_gb, time_seconds)?;
    Recipe::parse(&text, &[]).context("the advised recipe does not validate (a bug: please report it)")?;
    write_atomic(&args.out, text.as_bytes()).with_context(|| format!("writing {}", args.out.display()))?;
    if args.json {
        let json = serde_json::json!({
            "model": {"dir": model.dir, "kind": model.kind, "task": model.task, "weight_bytes": model.weight_bytes},
            "data": data, "machine": machine, "memory_budget_gb": memory_gb, "time_budget_seconds": time_seconds,
            "estimates": estimates, "decision": decision, "recipe": args.out,
        });
        println!("{json}");
    } else {
        print_estimates(&estimates, decision.chosen);
        println!();
        println!("advice: {}", chosen.method);
        for r in &decision.reasons {
            println!("  - {r}");
        }
        if let Some(n) = &decision.next {
            println!("  - {n}");
        }
        println!("recipe: {} (finetune train {})", args.out.display(), args.out.display());
    }
    Ok(())
}

/// Transfer learning with gradual unfreezing starts with the top layers only, so its first steps
/// (what the probe measured) are its cheapest; by the end every layer trains, as in full
/// fine-tuning. Its steps are estimated as the mean of the two (the shipped recipe unfreezes a
/// block every 50 steps, so most of a first epoch runs with a growing backbone); without a
/// full-fine-tuning probe the first steps' cost stays, a lower bound.
fn unfreezing_estimate(estimates: &mut [Estimate]) {
    let Some(full) = estimates.iter().find(|e| e.method == "full").map(|e| e.seconds_per_step) else { return };
    for e in estimates.iter_mut().filter(|e| e.method == "transfer" && e.seconds_per_step < full) {
        e.seconds_per_step = (e.seconds_per_step + full) / 2.0;
        e.epoch_seconds = e.steps_per_epoch as f64 * e.seconds_per_step + e.validation_seconds;
        e.run_seconds = e.fixed_seconds + e.epochs as f64 * e.epoch_seconds;
    }
}

/// The probes' directory, removed however the advice ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The recipe of template `t` pointed at the user's model, data and an output directory.
fn adapt(t: &Template, args: &AdviseArgs, model: &ModelFacts, splits: &Splits) -> Result<toml::Value> {
    let mut v: toml::Value = toml::from_str(t.toml).expect("shipped recipes parse");
    let set = |v: &mut toml::Value, key: &str, value: Option<&str>| {
        let text = match value {
            Some(s) => format!("{key}={}", toml::Value::String(s.to_string())),
            None => format!("{key}=null"),
        };
        apply_override(v, &text)
    };
    set(&mut v, "model", Some(&args.model))?;
    set(&mut v, "gguf_file", model.gguf_file.as_deref())?;
    set(&mut v, "data.dataset", Some(&args.data))?;
    set(&mut v, "data.train", Some(&splits.train))?;
    set(&mut v, "data.validation", splits.validation.as_deref())?;
    set(&mut v, "data.test", splits.test.as_deref())?;
    let stem = |s: &str| s.trim_end_matches('/').rsplit('/').next().unwrap_or(s).to_string();
    let out = format!("runs/{}-{}-{}", stem(&args.model), stem(&args.data), t.name);
    set(&mut v, "output_dir", Some(&out))?;
    if model.task == Task::ImageClassification && splits.validation.is_some() {
        apply_override(&mut v, "image.validation_split=0.0")?;
    }
    for o in &args.overrides {
        apply_override(&mut v, o).with_context(|| format!("--set {o}"))?;
    }
    Ok(v)
}

/// Run `value` for `steps` optimizer steps in a child process and turn its report into an estimate.
fn probe(name: &str, value: &toml::Value, work: &Path, steps: usize, quiet: bool) -> Result<Estimate> {
    let dir = work.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let recipe_path = dir.join("recipe.toml");
    std::fs::write(&recipe_path, toml::to_string(value)?)?;
    let recipe = Recipe::load(&recipe_path, &[])?;
    if !quiet {
        eprintln!("measuring {name}: {steps} steps …");
    }
    let log_path = dir.join("log.txt");
    let log = std::fs::File::create(&log_path)?;
    let exe = std::env::current_exe().context("locating the finetune binary")?;
    let started = Instant::now();
    let mut child = std::process::Command::new(exe)
        .arg("train")
        .arg(&recipe_path)
        .args(["--no-progress", "--json", "--set"])
        .arg(format!("training.max_steps={steps}"))
        .arg("--set")
        .arg(format!("output_dir={}", toml::Value::String(dir.join("run").display().to_string())))
        .args(if name == "feature-extraction" {
            // Computed afresh, as a first real run would, and not left in the user's cache.
            let cache = toml::Value::String(dir.join("features").display().to_string());
            vec!["--set".to_string(), format!("feature_extraction.cache_dir={cache}")]
        } else {
            Vec::new()
        })
        .stderr(log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting a probe")?;
    let mut stdout = Vec::new();
    use std::io::Read;
    child.stdout.take().expect("piped").read_to_end(&mut stdout)?;
    let (ok, peak_gb) = super::sweep::wait_with_peak(&child)?;
    let wall = started.elapsed().as_secs_f64();
    if !ok {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let last = text.lines().rev().find(|l| l.starts_with("error")).unwrap_or("(no error line)");
        bail!("{last}");
    }
    let r: serde_json::Value = serde_json::from_slice(&stdout).context("the probe's report is not JSON")?;
    let num = |k: &str| r.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
    let done = (num("optimizer_steps") as usize).max(1);
    let train_examples = num("train_examples") as usize;
    let seconds_per_step = num("train_seconds") / done as f64;
    let validation_seconds = num("validation_seconds");
    let t = &recipe.training;
    let steps_per_epoch = TrainerConfig::steps_per_epoch(t.batch_size, t.grad_accum_steps, train_examples);
    let fixed_seconds = (wall - num("train_seconds") - validation_seconds).max(0.0);
    let epoch_seconds = steps_per_epoch as f64 * seconds_per_step + validation_seconds;
    let epochs = t.max_steps.map_or(t.epochs, |m| m.div_ceil(steps_per_epoch.max(1)).min(t.epochs));
    Ok(Estimate {
        method: name.to_string(),
        probe_steps: done,
        seconds_per_step,
        steps_per_epoch,
        validation_seconds,
        fixed_seconds,
        epoch_seconds,
        epochs,
        run_seconds: fixed_seconds + epochs as f64 * epoch_seconds,
        peak_gb,
        trainable_params: num("trainable_params") as u64,
        total_params: num("total_params") as u64,
    })
}

fn print_estimates(estimates: &[Estimate], chosen: usize) {
    println!();
    println!(
        "{:<20} {:>10} {:>9} {:>11} {:>10} {:>7} {:>13} {:>9} {:>12}",
        "method", "s/step", "steps/ep", "s/epoch", "fixed s", "epochs", "run (at most)", "peak GB", "trainable"
    );
    for (i, e) in estimates.iter().enumerate() {
        let name = if i == chosen { format!("{} *", e.method) } else { e.method.clone() };
        println!(
            "{:<20} {:>10.3} {:>9} {:>11.1} {:>10.1} {:>7} {:>13} {:>9.2} {:>12}",
            name,
            e.seconds_per_step,
            e.steps_per_epoch,
            e.epoch_seconds,
            e.fixed_seconds,
            e.epochs,
            duration(e.run_seconds),
            e.peak_gb,
            e.trainable_params
        );
    }
}

fn recipe_text(
    value: &toml::Value,
    d: &Decision,
    e: &Estimate,
    data: &DataFacts,
    memory_gb: f64,
    time: Option<f64>,
) -> Result<String> {
    let mut out = format!("# Written by `finetune advise`: {}.\n", e.method);
    out += &format!(
        "# Data: {} training / {} validation / {} test examples in {}.\n",
        data.train_examples,
        data.validation_examples,
        data.test_examples,
        data.dir.display()
    );
    out += &format!(
        "# Estimate on this machine: {} per epoch, {} for {} epoch(s) at most, peak {:.2} GB \
         (budget {:.1} GB{}).\n",
        duration(e.epoch_seconds),
        duration(e.fixed_seconds + d.epochs as f64 * e.epoch_seconds),
        d.epochs,
        e.peak_gb,
        memory_gb,
        time.map(|t| format!(", {}", duration(t))).unwrap_or_default()
    );
    for r in d.reasons.iter().chain(d.next.iter()) {
        out += &format!("# - {r}\n");
    }
    out += "\n";
    out += &toml::to_string(value)?;
    Ok(out)
}

fn report_facts(json: bool, model: &ModelFacts, data: &DataFacts, machine: &MachineFacts) {
    if json {
        return;
    }
    let task = serde_json::to_value(model.task).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    println!(
        "model:    {} ({}, {:.1} MB of weights) → task {task}",
        model.dir.display(),
        model.kind,
        model.weight_bytes as f64 / 1e6
    );
    println!(
        "data:     {} — train {} ({} examples), validation {} ({}), test {} ({})",
        data.dir.display(),
        data.train,
        data.train_examples,
        data.validation.as_deref().unwrap_or("held out of train"),
        data.validation_examples,
        data.test.as_deref().unwrap_or("none"),
        data.test_examples
    );
    if !data.classes.is_empty() {
        let list: Vec<String> = data.classes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        println!("classes:  {}", list.join(", "));
    }
    if let (Some(m), Some(p), Some(w)) = (data.tokens_mean, data.tokens_p95, data.tokens_per_word) {
        println!(
            "text:     {m:.0} tokens per example (95th percentile {p}), {w:.2} tokens per word, {:.2}% unknown, {:.1}% truncated",
            data.unknown_share.unwrap_or(0.0) * 100.0,
            data.truncated_share.unwrap_or(0.0) * 100.0
        );
    }
    if let Some((w, h, c)) = data.image {
        println!("images:   {w}×{h}, {c} channel(s)");
    }
    if let Some(d) = &data.different_domain {
        println!("domain:   unlike the pretraining data: {d}");
    }
    println!(
        "machine:  {} cores, {:.1} GB memory ({:.1} GB available), AVX512-BF16 {}, CUDA build {}",
        machine.cores,
        machine.memory_total_gb.unwrap_or(f64::NAN),
        machine.memory_available_gb.unwrap_or(f64::NAN),
        if machine.avx512_bf16 { "yes" } else { "no" },
        if machine.cuda_build { "yes" } else { "no" }
    );
}

fn machine() -> MachineFacts {
    use super::sweep::meminfo_gb;
    MachineFacts {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_total_gb: meminfo_gb("MemTotal"),
        memory_available_gb: meminfo_gb("MemAvailable"),
        avx512_bf16: crate::ops::bf16_gemm_available(),
        cuda_build: cfg!(feature = "cuda"),
    }
}

/// Resolve the model and tell what task its kind trains for.
fn inspect_model(spec: &str, gguf_file: Option<&str>) -> Result<ModelFacts> {
    let local = Path::new(spec);
    let dir = if local.exists() {
        local.to_path_buf()
    } else if let Some(d) = hub::cached_snapshot(&hub::hub_cache(), RepoKind::Model, spec, "main") {
        d
    } else {
        hub::resolve(spec, RepoKind::Model, "main", &["config.json"])
            .with_context(|| format!("--model {spec}: give a model directory or a hub id"))?
    };
    let ggufs: Vec<String> = if dir.is_dir() {
        let mut v: Vec<String> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".gguf"))
            .collect();
        v.sort();
        v
    } else {
        Vec::new()
    };
    let gguf_file = match (gguf_file, dir.join("config.json").is_file()) {
        (Some(f), _) => Some(f.to_string()),
        (None, false) if ggufs.len() == 1 => Some(ggufs[0].clone()),
        (None, false) if ggufs.len() > 1 => {
            bail!(
                "--model {spec}: a GGUF repository with several files; choose one with --gguf-file: {}",
                ggufs.join(", ")
            )
        }
        _ => None,
    };
    let path = match &gguf_file {
        Some(f) if dir.is_dir() => dir.join(f),
        _ => dir.clone(),
    };
    let files = ModelDir::open(&path).with_context(|| format!("--model {spec}"))?;
    let weight_bytes = std::fs::metadata(if gguf_file.is_some() { path.clone() } else { files.weights_path() })
        .map(|m| m.len())
        .unwrap_or(0);
    let raw = if gguf_file.is_some() { None } else { files.raw_config().ok() };
    let model_type = raw.as_ref().and_then(|r| r.get("model_type")?.as_str().map(str::to_string));
    let (task, kind) = if gguf_file.is_some() || crate::models::decoder::config(&files).is_ok() {
        let kind = model_type.clone().unwrap_or_else(|| "gguf decoder".into());
        (Task::CausalLm, kind)
    } else if crate::models::image_classifier::is_image_model(&files.dir) {
        let arch = raw.as_ref().and_then(|r| r.get("architecture")?.as_str().map(str::to_string));
        (Task::ImageClassification, arch.unwrap_or_else(|| "image CNN".into()))
    } else if model_type.as_deref() == Some("whisper") || files.dir.join("model.bin").is_file() {
        bail!(
            "--model {spec}: a Whisper model; `finetune advise` covers text encoders, image CNNs and decoders — \
             start from recipes/whisper-words-lora.toml or recipes/whisper-sentences-lora.toml"
        )
    } else {
        (Task::TextClassification, model_type.unwrap_or_else(|| "text encoder".into()))
    };
    Ok(ModelFacts { task, dir: path, kind, weight_bytes, gguf_file })
}

fn dataset_dir(spec: &str) -> Result<PathBuf> {
    let local = crate::io::paths::expand_path(spec);
    if local.is_dir() {
        return Ok(local);
    }
    hub::cached_snapshot(&hub::hub_cache(), RepoKind::Dataset, spec, "main").with_context(|| {
        format!(
            "--data {spec}: no such directory, and no dataset of that id in the hub cache {} \
             (give a directory of split files, or fetch the dataset first)",
            hub::hub_cache().display()
        )
    })
}

/// Split files, relative to the dataset directory.
#[derive(Debug, PartialEq)]
pub struct Splits {
    pub train: String,
    pub validation: Option<String>,
    pub test: Option<String>,
}

/// Find the train / validation / test files of `dir` by their names, for a model of `task`.
pub fn find_splits(dir: &Path, task: Task) -> Result<Splits> {
    let mut names: Vec<(String, bool)> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| {
            let e = e.ok()?;
            Some((e.file_name().into_string().ok()?, e.path().is_dir()))
        })
        .collect();
    names.sort();
    let usable = |name: &str, is_dir: bool| -> Option<usize> {
        let lower = name.to_lowercase();
        match task {
            Task::ImageClassification if is_dir => Some(0),
            Task::ImageClassification => (lower.contains("images-idx") || lower.contains("-images")).then_some(1),
            Task::CausalLm => (!is_dir && lower.ends_with(".jsonl")).then_some(0),
            _ if is_dir => None,
            _ => [".csv", ".tsv", ".jsonl", ".json"].iter().position(|x| lower.ends_with(x)),
        }
    };
    let pick = |keys: &[&str]| -> Option<String> {
        names
            .iter()
            .filter_map(|(n, d)| usable(n, *d).map(|rank| (rank, n)))
            .filter(|(_, n)| {
                let lower = n.to_lowercase();
                let stem = lower.split(['.', '-', '_']).collect::<Vec<_>>();
                keys.iter().any(|k| stem.contains(k))
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, n)| n.clone())
    };
    let train = pick(&["train"]).with_context(|| {
        let list: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        format!(
            "{}: no training file found (a name with `train` in it, e.g. train.csv, train.jsonl, \
             train-images-idx3-ubyte.gz, or a train/ folder of class folders); it holds: {}",
            dir.display(),
            list.join(", ")
        )
    })?;
    Ok(Splits { train, validation: pick(&["validation", "valid", "val", "dev"]), test: pick(&["test", "t10k"]) })
}

fn inspect_data(recipe: &Recipe, model: &ModelFacts, splits: &Splits) -> Result<DataFacts> {
    let dir = crate::data::dataset_dir(&recipe.data)?;
    let mut facts = DataFacts {
        dir,
        train: splits.train.clone(),
        validation: splits.validation.clone(),
        test: splits.test.clone(),
        ..Default::default()
    };
    let counted = |names: &[String], ids: &[usize]| -> Vec<(String, usize)> {
        let mut counts = vec![0; names.len()];
        for &i in ids {
            if let Some(c) = counts.get_mut(i) {
                *c += 1;
            }
        }
        names.iter().cloned().zip(counts).collect()
    };
    match model.task {
        Task::ImageClassification => {
            let data = crate::data::image::load_image_data(&recipe.data, &recipe.image)?;
            facts.train_examples = data.len(0);
            facts.validation_examples = data.len(1);
            facts.test_examples = data.len(2);
            let train = data.split(0).expect("a training split");
            facts.classes = counted(&data.labels, &train.labels);
            let first = &train.images[0];
            facts.image = Some((first.width, first.height, first.channels));
            let config = crate::models::image_classifier::ImageConfig::read(&ModelDir::open(&model.dir)?)?;
            let [channels, side, _] = config.pretrained_cfg.input_size;
            let mut differences = Vec::new();
            if first.channels < channels {
                differences.push(format!("{}-channel images for a {channels}-channel model", first.channels));
            }
            if first.width.max(first.height) * 3 < side {
                differences
                    .push(format!("{}×{} pixels against {side}×{side} in pretraining", first.width, first.height));
            }
            facts.different_domain = (!differences.is_empty()).then(|| differences.join(", "));
        }
        Task::CausalLm => {
            let count = |f: &Option<String>| -> Result<usize> {
                let Some(f) = f else { return Ok(0) };
                let text = crate::data::read_text(&facts.dir.join(f))?;
                Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
            };
            facts.train_examples = count(&Some(splits.train.clone()))?;
            facts.validation_examples = count(&splits.validation)?;
            facts.test_examples = count(&splits.test)?;
        }
        _ => {
            let files = ModelDir::open(&model.dir)?;
            let tokenizer = crate::data::tokenizer::TextTokenizer::from_file(&files.tokenizer_path(), 100_000)?;
            let data = crate::data::load_text_data(&recipe.data, recipe.head.problem_type, &tokenizer)?;
            facts.train_examples = data.train.len();
            facts.validation_examples = data.validation.as_ref().map_or(0, |s| s.len());
            facts.test_examples = data.test.as_ref().map_or(0, |s| s.len());
            if let Some(ids) = data.train.targets.classes() {
                facts.classes = counted(data.labels.names(), ids);
            }
            let mut lengths: Vec<usize> = data.train.encoded.iter().map(|e| e.ids.len()).collect();
            lengths.sort_unstable();
            let n = lengths.len().max(1);
            facts.tokens_mean = Some(lengths.iter().sum::<usize>() as f64 / n as f64);
            facts.tokens_p95 = lengths.get((n * 95 / 100).min(n - 1)).copied();
            let p99 = lengths.get((n * 99 / 100).min(n - 1)).copied().unwrap_or(0);
            let room = model_positions(&files).unwrap_or(512);
            let max_length = recipe.data.max_length.max(p99.div_ceil(32) * 32).min(512).min(room);
            facts.max_length = Some(max_length);
            facts.truncated_share = Some(lengths.iter().filter(|&&l| l > max_length).count() as f64 / n as f64);
            let unk = ["[UNK]", "<unk>"].iter().find_map(|t| tokenizer.token_id(t));
            let (mut words, mut tokens, mut unknown) = (0usize, 0usize, 0usize);
            for (text, e) in data.train.texts.iter().zip(&data.train.encoded) {
                words += text.split_whitespace().count();
                tokens += e.ids.len().saturating_sub(2);
                unknown += unk.map_or(0, |u| e.ids.iter().filter(|&&i| i == u).count());
            }
            let per_word = tokens as f64 / words.max(1) as f64;
            let unknown_share = unknown as f64 / tokens.max(1) as f64;
            facts.tokens_per_word = Some(per_word);
            facts.unknown_share = Some(unknown_share);
            // English prose in a WordPiece/BPE vocabulary learnt on English: 1.1-1.4 tokens per word.
            let mut differences = Vec::new();
            if per_word > 1.6 {
                differences.push(format!("{per_word:.2} tokens per word (English prose: about 1.3)"));
            }
            if unknown_share > 0.005 {
                differences.push(format!("{:.1}% unknown tokens", unknown_share * 100.0));
            }
            facts.different_domain = (!differences.is_empty()).then(|| differences.join(", "));
        }
    }
    Ok(facts)
}

/// Token positions a text encoder has room for (RoBERTa-style models reserve padding_idx + 1).
fn model_positions(files: &ModelDir) -> Option<usize> {
    let raw = files.raw_config().ok()?;
    let n = raw.get("max_position_embeddings")?.as_u64()? as usize;
    let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or_default();
    let offset = if ["roberta", "xlm-roberta", "camembert"].contains(&model_type) { 2 } else { 0 };
    Some(n.saturating_sub(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(method: &str, run_seconds: f64, peak_gb: f64) -> Estimate {
        Estimate {
            method: method.into(),
            probe_steps: 20,
            seconds_per_step: 0.1,
            steps_per_epoch: 100,
            validation_seconds: 5.0,
            fixed_seconds: 10.0,
            epoch_seconds: 15.0,
            epochs: ((run_seconds - 10.0) / 15.0).round() as usize,
            run_seconds,
            peak_gb,
            trainable_params: 1,
            total_params: 2,
        }
    }

    fn situation(task: Task, n: usize, domain: Option<&str>, memory_gb: f64, time: Option<f64>) -> Situation<'_> {
        Situation { task, train_examples: n, different_domain: domain, memory_gb, time_seconds: time, weights_gb: 0.1 }
    }

    #[test]
    fn the_rules_follow_data_size_domain_and_budgets() {
        let text =
            [estimate("feature-extraction", 40.0, 0.5), estimate("lora", 100.0, 0.6), estimate("full", 130.0, 1.2)];
        let pick = |s: &Situation| text[decide(s, &text).unwrap().chosen].method.clone();
        assert_eq!(pick(&situation(Task::TextClassification, 1_200, None, 8.0, None)), "feature-extraction");
        assert_eq!(pick(&situation(Task::TextClassification, 8_000, None, 8.0, None)), "lora");
        assert_eq!(pick(&situation(Task::TextClassification, 50_000, Some("code"), 8.0, None)), "full");
        // Full does not fit 1 GB: LoRA, and the reason names the budget.
        let d = decide(&situation(Task::TextClassification, 50_000, Some("code"), 1.0, None), &text).unwrap();
        assert_eq!(text[d.chosen].method, "lora");
        assert!(d.reasons.iter().any(|r| r.contains("full") && r.contains("1.0 GB")), "{:?}", d.reasons);
        // A time budget LoRA's 6 epochs miss: shortened to what fits (4 epochs of 15 s + 10 s fixed).
        let d = decide(&situation(Task::TextClassification, 8_000, None, 8.0, Some(72.0)), &text).unwrap();
        assert_eq!((text[d.chosen].method.as_str(), d.epochs, d.max_steps), ("lora", 4, None));
        let d = decide(&situation(Task::TextClassification, 8_000, None, 0.55, Some(20.0)), &text).unwrap();
        assert_eq!((text[d.chosen].method.as_str(), d.epochs, d.max_steps), ("feature-extraction", 1, Some(50)));
        // Nothing fits memory: the leanest, with the fix.
        let d = decide(&situation(Task::TextClassification, 8_000, None, 0.1, None), &text).unwrap();
        assert_eq!(text[d.chosen].method, "feature-extraction");
        assert!(d.reasons.last().unwrap().contains("max_length"));
        // Decoders: LoRA, or QLoRA first when the weights crowd the budget.
        let lm = [estimate("lora", 100.0, 2.0), estimate("qlora", 110.0, 1.6)];
        let s = situation(Task::CausalLm, 500, None, 8.0, None);
        assert_eq!(lm[decide(&s, &lm).unwrap().chosen].method, "lora");
        let s = Situation { weights_gb: 3.0, ..situation(Task::CausalLm, 500, None, 8.0, None) };
        assert_eq!(lm[decide(&s, &lm).unwrap().chosen].method, "qlora");
        assert_eq!(lm[decide(&situation(Task::CausalLm, 500, None, 1.8, None), &lm).unwrap().chosen].method, "qlora");
        // Images: transfer when the domain is close, full when it is not and data is plenty.
        let img =
            [estimate("feature-extraction", 50.0, 0.4), estimate("transfer", 90.0, 0.8), estimate("full", 120.0, 1.0)];
        let s = situation(Task::ImageClassification, 5_000, None, 8.0, None);
        assert_eq!(img[decide(&s, &img).unwrap().chosen].method, "transfer");
        let s = situation(Task::ImageClassification, 54_000, Some("gray"), 8.0, None);
        let d = decide(&s, &img).unwrap();
        assert_eq!(img[d.chosen].method, "full");
        assert_eq!(d.next.as_deref(), Some("if validation plateaus, try transfer next"));
    }

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(parse_duration("90s").unwrap(), 90.0);
        assert_eq!(parse_duration("45m").unwrap(), 2700.0);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400.0);
        assert_eq!(parse_duration("0.5h").unwrap(), 1800.0);
        for bad in ["90", "", "1x", "m", "0s"] {
            assert!(parse_duration(bad).unwrap_err().to_string().contains("45m"), "{bad}");
        }
    }

    #[test]
    fn splits_are_found_by_name() {
        let dir = std::env::temp_dir().join(format!("advise-splits-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["README.md", "train.csv", "train.jsonl", "validation.csv", "test.csv"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let s = find_splits(&dir, Task::TextClassification).unwrap();
        assert_eq!(
            s,
            Splits {
                train: "train.csv".into(),
                validation: Some("validation.csv".into()),
                test: Some("test.csv".into())
            }
        );
        let s = find_splits(&dir, Task::CausalLm).unwrap();
        assert_eq!((s.train.as_str(), s.validation, s.test), ("train.jsonl", None, None));
        for f in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let s = find_splits(&dir, Task::ImageClassification).unwrap();
        assert_eq!(
            (s.train.as_str(), s.test.as_deref()),
            ("train-images-idx3-ubyte.gz", Some("t10k-images-idx3-ubyte.gz"))
        );
        let err = find_splits(&dir.join("nothing"), Task::TextClassification).unwrap_err();
        assert!(format!("{err:#}").contains("nothing"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
