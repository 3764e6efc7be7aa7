//! `finetune sweep`: a recipe over seeds × a grid of settings, each trial an ordinary run.
//!
//! Why: fine-tuning results move with the random seed as much as with most hyperparameters
//! (Dodge et al. 2020, *Fine-Tuning Pretrained Language Models: Weight Initializations, Data
//! Orders, and Early Stopping*); on our movie reviews four seeds of full fine-tuning span 1.9
//! points. A sweep reports each setting as mean ± std over seeds, and can spend its compute the
//! way Dodge et al. recommend: start every seed, train each for a fraction of the first epoch
//! (`--discard-after`), keep the best `--keep` per setting by the validation metric, and finish
//! only those.
//!
//! How: every trial is `finetune train RECIPE --set seed=S --set output_dir=SWEEP/trials/ID`
//! (plus the grid point's settings) in a child process of this binary, so a trial is exactly the
//! run a user would get, with its own run directory, log and `--resume`. Early discarding
//! pauses a trial (`finetune train --pause-at`, a validated, resumable checkpoint) and later
//! resumes the kept ones; the paused validation is the only extra work. `sweep.json` (written
//! atomically after every trial) holds the plan and each trial's state, so a killed sweep run
//! again with the same arguments continues where it stopped. `--parallel P` runs P trials at
//! once with the cores split between them (`RAYON_NUM_THREADS`); each holds its own model.
//!
//! Results: `summary.json`, `sweep.svg` (every trial's validation curve, and the test metric per
//! setting) and `best-recipe.toml` (the trial with the best validation metric, as a recipe that
//! reproduces it: the test split never chooses).

use crate::io::atomic::write_atomic;
use crate::recipe::Recipe;
use crate::training::checkpoint::RunDir;
use crate::training::config::Metric;
use crate::training::metrics::EvalMetrics;
use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// What `finetune sweep` was asked (its command-line arguments).
pub struct SweepArgs {
    pub recipe: PathBuf,
    pub overrides: Vec<String>,
    pub seeds: usize,
    pub grid: Vec<String>,
    pub discard_after: Option<f64>,
    pub keep: Option<usize>,
    pub parallel: usize,
    pub out: Option<PathBuf>,
}

/// The plan: what a resumed sweep must match.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Plan {
    recipe: PathBuf,
    /// sha256 of the recipe file: a changed recipe is a different sweep.
    recipe_sha256: String,
    overrides: Vec<String>,
    grid: Vec<(String, Vec<String>)>,
    seeds: Vec<u64>,
    discard_after: Option<f64>,
    keep: Option<usize>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Status {
    Pending,
    /// Stopped at the discard point; kept ones are resumed.
    Paused,
    Discarded,
    Finished,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trial {
    id: String,
    /// Index of its grid point.
    point: usize,
    seed: u64,
    dir: PathBuf,
    status: Status,
    /// The validation metric at the discard point.
    at_pause: Option<f64>,
    /// Wall time of its processes, every phase (loading, training, evaluation, saving).
    wall_seconds: f64,
    /// The largest peak resident memory of its processes, in GB.
    #[serde(default)]
    peak_rss_gb: Option<f64>,
    result: Option<TrialResult>,
    error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrialResult {
    /// The best validation metric (the checkpoint the run kept).
    validation: Option<f64>,
    test: Option<f64>,
    train_seconds: f64,
    optimizer_steps: usize,
    epochs_run: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct SweepState {
    plan: Plan,
    trials: Vec<Trial>,
}

/// A grid point's line of the summary.
#[derive(Debug, Serialize)]
pub struct PointSummary {
    pub settings: Vec<String>,
    pub finished: usize,
    pub discarded: usize,
    pub failed: usize,
    pub validation_mean: Option<f64>,
    pub validation_std: Option<f64>,
    pub test_mean: Option<f64>,
    pub test_std: Option<f64>,
    /// The trial with the best validation metric, and its test metric.
    pub best_trial: Option<String>,
    pub best_validation: Option<f64>,
    pub best_test: Option<f64>,
    pub wall_seconds: f64,
    /// The largest peak memory of its trials' processes, in GB.
    pub peak_rss_gb: Option<f64>,
}

/// What a sweep found.
#[derive(Debug, Serialize)]
pub struct SweepSummary {
    pub sweep_dir: PathBuf,
    pub metric: String,
    pub trials: usize,
    pub points: Vec<PointSummary>,
    /// The best trial over every setting (by validation), written as `best-recipe.toml`.
    pub best_trial: Option<String>,
    pub best_recipe: Option<PathBuf>,
    /// Wall time of every trial process added up: the sweep's compute.
    pub total_wall_seconds: f64,
}

/// Split `key=v1,v2,...` at the commas outside brackets, braces and quotes (so a value may be a
/// TOML list: `lora.target_modules=["query","value"],["query","key","value"]`).
fn parse_grid(spec: &str) -> Result<(String, Vec<String>)> {
    let (key, values) = spec.split_once('=').with_context(|| format!("--grid '{spec}': expected key=v1,v2,..."))?;
    let key = key.trim().to_string();
    let (mut out, mut depth, mut quote, mut current) = (Vec::new(), 0i32, None::<char>, String::new());
    for c in values.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(std::mem::take(&mut current).trim().to_string());
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current.trim().to_string());
    ensure!(out.iter().all(|v| !v.is_empty()), "--grid '{spec}': an empty value");
    for (refused, why) in [("seed", "seeds come from --seeds"), ("output_dir", "the sweep places every trial")] {
        ensure!(key != refused, "--grid {key}: {why}");
    }
    Ok((key, out))
}

/// Every combination of the grid's values, as `key=value` settings (one empty point without a grid).
fn grid_points(grid: &[(String, Vec<String>)]) -> Vec<Vec<String>> {
    grid.iter().fold(vec![Vec::new()], |points, (key, values)| {
        points
            .iter()
            .flat_map(|p| values.iter().map(move |v| [p.clone(), vec![format!("{key}={v}")]].concat()))
            .collect()
    })
}

fn mean_std(values: &[f64]) -> (Option<f64>, Option<f64>) {
    if values.is_empty() {
        return (None, None);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    // The sample standard deviation (n - 1), 0 for a single value.
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (Some(mean), Some(var.sqrt()))
}

/// A trial's `--set` arguments: the sweep's overrides, its grid point, its seed and directory.
fn trial_overrides(plan: &Plan, points: &[Vec<String>], t: &Trial) -> Vec<String> {
    let mut o = plan.overrides.clone();
    o.extend(points[t.point].iter().cloned());
    o.push(format!("seed={}", t.seed));
    o.push(format!("output_dir={}", toml::Value::String(t.dir.to_string_lossy().into_owned())));
    o
}

/// What one trial process ended with.
enum Ended {
    Paused(Option<EvalMetrics>),
    Finished(TrialResult),
}

/// Wait for `child` and return whether it succeeded and its peak resident memory in GB
/// (`wait4`'s `ru_maxrss`, which `std::process` does not expose).
pub(super) fn wait_with_peak(child: &std::process::Child) -> Result<(bool, f64)> {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own child, not yet waited for; both pointers are to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            bail!("waiting for a trial process: {e}");
        }
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    // Linux reports ru_maxrss in KiB.
    Ok((ok, usage.ru_maxrss as f64 * 1024.0 / 1e9))
}

/// A field of /proc/meminfo (`MemAvailable`, `MemTotal`), in GB (`None` where there is none).
pub(super) fn meminfo_gb(field: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0 / 1e9)
}

fn read_result(json: &serde_json::Value, metric: Metric) -> Result<TrialResult> {
    let metrics = |v: &serde_json::Value| serde_json::from_value::<EvalMetrics>(v.clone()).ok();
    Ok(TrialResult {
        validation: json.pointer("/best/value").and_then(|v| v.as_f64()),
        test: json.get("test").and_then(metrics).map(|m| m.get(metric)),
        train_seconds: json.get("train_seconds").and_then(|v| v.as_f64()).unwrap_or(0.0),
        optimizer_steps: json.get("optimizer_steps").and_then(|v| v.as_u64()).unwrap_or(0) as usize,
        epochs_run: json.get("epochs_run").and_then(|v| v.as_u64()).unwrap_or(0) as usize,
    })
}

/// Run one trial to its pause (`pause_at`) or to its end, resuming its run directory when it
/// holds a checkpoint. The child's log goes to `logs/ID.log` under the sweep directory; its peak
/// memory into `t.peak_rss_gb`.
fn run_trial(
    args: &SweepArgs,
    overrides: &[String],
    t: &mut Trial,
    log: &Path,
    pause_at: Option<f64>,
    threads: usize,
    metric: Metric,
) -> Result<Ended> {
    let run = RunDir { root: t.dir.clone() };
    if run.results().exists() {
        // Finished before the sweep could note it (a kill between the two).
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(run.results())?)?;
        return Ok(Ended::Finished(read_result(&json, metric)?));
    }
    let resume = run.latest_checkpoint().is_some();
    if !resume && t.dir.exists() {
        // Killed before its first checkpoint: nothing to keep.
        std::fs::remove_dir_all(&t.dir).with_context(|| format!("removing {}", t.dir.display()))?;
    }
    let exe = std::env::current_exe().context("locating the finetune binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("train").arg(&args.recipe).args(["--no-progress", "--json"]);
    for o in overrides {
        cmd.arg("--set").arg(o);
    }
    if resume {
        cmd.arg("--resume");
    }
    if let Some(p) = pause_at {
        cmd.arg("--pause-at").arg(p.to_string());
    }
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    cmd.env("RAYON_NUM_THREADS", threads.to_string()).stderr(log_file).stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting trial {}", t.id))?;
    let mut stdout = Vec::new();
    use std::io::Read;
    child.stdout.take().expect("stdout is piped").read_to_end(&mut stdout)?;
    let (ok, peak) = wait_with_peak(&child)?;
    t.peak_rss_gb = Some(t.peak_rss_gb.map_or(peak, |p| p.max(peak)));
    if !ok {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let last = text.lines().rev().find(|l| l.starts_with("error:")).unwrap_or("(no error line)");
        bail!("{last} (log: {})", log.display());
    }
    let json: serde_json::Value = serde_json::from_slice(&stdout)
        .with_context(|| format!("trial {}: its report is not JSON (log: {})", t.id, log.display()))?;
    match json.get("paused") {
        Some(p) => Ok(Ended::Paused(p.get("validation").and_then(|v| serde_json::from_value(v.clone()).ok()))),
        None => Ok(Ended::Finished(read_result(&json, metric)?)),
    }
}

/// Run the sweep: plan (or continue) it, run its phases, summarise.
pub fn run(args: &SweepArgs) -> Result<SweepSummary> {
    ensure!(args.seeds >= 1, "--seeds {}: at least one seed", args.seeds);
    ensure!(args.parallel >= 1, "--parallel {}: at least one trial at a time", args.parallel);
    match (args.discard_after, args.keep) {
        (Some(f), Some(k)) => {
            ensure!(f > 0.0 && f.is_finite(), "--discard-after {f}: a positive fraction of the first epoch");
            ensure!(k >= 1, "--keep {k}: keep at least one trial per setting");
        }
        (None, None) => {}
        _ => bail!("--discard-after and --keep go together: discard after FRACTION of an epoch, keep the best K"),
    }
    let text = std::fs::read(&args.recipe).with_context(|| format!("reading recipe {}", args.recipe.display()))?;
    let base = Recipe::load(&args.recipe, &args.overrides)?;
    let grid = args.grid.iter().map(|g| parse_grid(g)).collect::<Result<Vec<_>>>()?;
    let points = grid_points(&grid);
    let plan = Plan {
        recipe: args.recipe.clone(),
        recipe_sha256: format!("{:x}", Sha256::digest(&text)),
        overrides: args.overrides.clone(),
        grid,
        seeds: (0..args.seeds as u64).map(|i| base.seed + i).collect(),
        discard_after: args.discard_after,
        keep: args.keep,
    };
    // Every grid point must make a valid recipe before anything is written.
    for p in &points {
        Recipe::load(&args.recipe, &[args.overrides.clone(), p.clone()].concat())
            .with_context(|| format!("grid point {}", p.join(" ")))?;
    }
    let metric = base.training.metric;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("{}-sweep", base.output_dir.display())));
    let state_path = out.join("sweep.json");
    let state = if state_path.exists() {
        let saved: SweepState = serde_json::from_slice(&std::fs::read(&state_path)?)
            .with_context(|| format!("reading {}", state_path.display()))?;
        if saved.plan != plan {
            bail!(
                "{} holds a different sweep (recipe, its sha256, --set, --grid, --seeds, --discard-after or --keep \
                 changed); run it with the arguments it was started with, or choose another --out",
                out.display()
            );
        }
        tracing::info!("continuing the sweep in {}", out.display());
        saved
    } else {
        let trials = (0..points.len())
            .flat_map(|point| plan.seeds.iter().map(move |&seed| (point, seed)))
            .map(|(point, seed)| {
                let id = if points.len() > 1 { format!("g{point}-seed{seed}") } else { format!("seed{seed}") };
                Trial {
                    dir: out.join("trials").join(&id),
                    id,
                    point,
                    seed,
                    status: Status::Pending,
                    at_pause: None,
                    wall_seconds: 0.0,
                    peak_rss_gb: None,
                    result: None,
                    error: None,
                }
            })
            .collect();
        SweepState { plan: plan.clone(), trials }
    };
    std::fs::create_dir_all(out.join("logs"))?;
    let save = |s: &SweepState| write_atomic(&state_path, serde_json::to_string_pretty(s)?.as_bytes());
    save(&state)?;
    let state = Mutex::new(state);

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if args.parallel > cores {
        tracing::warn!("--parallel {} on {cores} cores: trials will share cores", args.parallel);
    }
    let threads = (cores / args.parallel).max(1);
    // One phase: run the trials in `status` (to the pause or the end) on `parallel` workers.
    let phase = |from: Status, pause_at: Option<f64>| -> Result<()> {
        let queue: Vec<usize> = {
            let s = state.lock().expect("no worker panicked");
            (0..s.trials.len()).filter(|&i| s.trials[i].status == from).collect()
        };
        let total = queue.len();
        let queue = Mutex::new(queue.into_iter().collect::<VecDeque<_>>());
        let done = Mutex::new(0usize);
        let running = AtomicUsize::new(0);
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = (0..args.parallel.min(total.max(1)))
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        while let Some(i) = queue.lock().expect("no worker panicked").pop_front() {
                            let mut trial = state.lock().expect("no worker panicked").trials[i].clone();
                            let overrides = trial_overrides(&plan, &points, &trial);
                            let log = out.join("logs").join(format!("{}.log", trial.id));
                            wait_for_memory(&state, &running);
                            running.fetch_add(1, Ordering::SeqCst);
                            let start = Instant::now();
                            let ended = run_trial(args, &overrides, &mut trial, &log, pause_at, threads, metric);
                            running.fetch_sub(1, Ordering::SeqCst);
                            let mut s = state.lock().expect("no worker panicked");
                            let t = &mut s.trials[i];
                            t.wall_seconds += start.elapsed().as_secs_f64();
                            t.peak_rss_gb = trial.peak_rss_gb;
                            let what = match ended {
                                Ok(Ended::Paused(m)) => {
                                    t.status = Status::Paused;
                                    t.at_pause = m.map(|m| m.get(metric));
                                    format!("paused: validation {}", m.map_or("(none)".into(), |m| m.scores()))
                                }
                                Ok(Ended::Finished(r)) => {
                                    t.status = Status::Finished;
                                    t.at_pause = t.at_pause.or(r.validation);
                                    let what = format!(
                                        "finished: validation {} {}, test {}",
                                        metric.name(),
                                        fmt_opt(r.validation),
                                        fmt_opt(r.test)
                                    );
                                    t.result = Some(r);
                                    what
                                }
                                Err(e) => {
                                    t.status = Status::Failed;
                                    t.error = Some(format!("{e:#}"));
                                    format!("failed: {e:#}")
                                }
                            };
                            let mut n = done.lock().expect("no worker panicked");
                            *n += 1;
                            tracing::info!(
                                "trial {} ({}/{total}) {what} ({:.0} s)",
                                s.trials[i].id,
                                *n,
                                s.trials[i].wall_seconds
                            );
                            save(&s)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for w in workers {
                w.join().expect("a sweep worker panicked")?;
            }
            Ok(())
        })
    };

    if let (Some(fraction), Some(keep)) = (args.discard_after, args.keep) {
        phase(Status::Pending, Some(fraction))?;
        let mut s = state.lock().expect("no worker panicked");
        for i in discard(&mut s.trials, keep, metric)? {
            // Its checkpoint will never be resumed; its metrics and log stay.
            let _ = std::fs::remove_dir_all(RunDir { root: s.trials[i].dir.clone() }.checkpoints());
        }
        save(&s)?;
        drop(s);
        phase(Status::Paused, None)?;
    } else {
        phase(Status::Pending, None)?;
    }
    let s = state.into_inner().expect("no worker panicked");
    summarise(&s, &points, &out, metric, &args.recipe, &args.overrides)
}

/// Parallel trials only where memory allows: while other trials run, wait until the memory
/// available holds one more trial as large as the largest seen so far (plus 10%). The first
/// trials start at once (nothing is known of their size yet).
fn wait_for_memory(state: &Mutex<SweepState>, running: &AtomicUsize) {
    let largest = || {
        let s = state.lock().expect("no worker panicked");
        s.trials.iter().filter_map(|t| t.peak_rss_gb).fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p))))
    };
    let mut warned = false;
    while running.load(Ordering::SeqCst) > 0 {
        let (Some(need), Some(free)) = (largest(), meminfo_gb("MemAvailable")) else { return };
        if free >= need * 1.1 {
            return;
        }
        if !warned {
            tracing::warn!(
                "{free:.1} GB available, a trial takes up to {need:.1} GB: waiting for a running trial to end"
            );
            warned = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Dodge et al.'s cut: per grid point, rank the paused and finished trials by the validation
/// metric at the pause and mark the paused ones below the best `keep` discarded. Returns the
/// trials it discarded. Deterministic, so a resumed sweep that cuts again changes nothing.
fn discard(trials: &mut [Trial], keep: usize, metric: Metric) -> Result<Vec<usize>> {
    let mut discarded = Vec::new();
    let points: std::collections::BTreeSet<usize> = trials.iter().map(|t| t.point).collect();
    for point in points {
        let mut ranked: Vec<usize> = (0..trials.len())
            .filter(|&i| trials[i].point == point && matches!(trials[i].status, Status::Paused | Status::Finished))
            .collect();
        if let Some(t) = ranked.iter().map(|&i| &trials[i]).find(|t| t.at_pause.is_none()) {
            bail!(
                "trial {}: no validation metric at the discard point; early discarding needs validation data \
                 (data.validation, or image.validation_split for images)",
                t.id
            );
        }
        let key = |i: usize| {
            let v = trials[i].at_pause.expect("checked above");
            if metric.higher_is_better() { -v } else { v }
        };
        // Stable: among equal values the earlier seed stays.
        ranked.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
        for &i in ranked.iter().skip(keep) {
            if trials[i].status == Status::Paused {
                trials[i].status = Status::Discarded;
                discarded.push(i);
            }
        }
    }
    Ok(discarded)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

fn summarise(
    s: &SweepState,
    points: &[Vec<String>],
    out: &Path,
    metric: Metric,
    recipe: &Path,
    overrides: &[String],
) -> Result<SweepSummary> {
    let better = |a: f64, b: f64| if metric.higher_is_better() { a > b } else { a < b };
    let best_of = |trials: &mut dyn Iterator<Item = &Trial>| -> Option<Trial> {
        trials
            .filter(|t| t.result.as_ref().is_some_and(|r| r.validation.is_some()))
            .fold(None, |best: Option<&Trial>, t| {
                let v = |t: &Trial| t.result.as_ref().and_then(|r| r.validation).unwrap();
                match best {
                    Some(b) if !better(v(t), v(b)) => Some(b),
                    _ => Some(t),
                }
            })
            .cloned()
    };
    let mut summaries = Vec::new();
    for (point, settings) in points.iter().enumerate() {
        let trials: Vec<&Trial> = s.trials.iter().filter(|t| t.point == point).collect();
        let results: Vec<&TrialResult> = trials.iter().filter_map(|t| t.result.as_ref()).collect();
        let (validation_mean, validation_std) =
            mean_std(&results.iter().filter_map(|r| r.validation).collect::<Vec<_>>());
        let (test_mean, test_std) = mean_std(&results.iter().filter_map(|r| r.test).collect::<Vec<_>>());
        let best = best_of(&mut trials.iter().copied());
        let count = |st: Status| trials.iter().filter(|t| t.status == st).count();
        summaries.push(PointSummary {
            settings: settings.clone(),
            finished: count(Status::Finished),
            discarded: count(Status::Discarded),
            failed: count(Status::Failed),
            validation_mean,
            validation_std,
            test_mean,
            test_std,
            best_validation: best.as_ref().and_then(|b| b.result.as_ref()?.validation),
            best_test: best.as_ref().and_then(|b| b.result.as_ref()?.test),
            best_trial: best.map(|b| b.id),
            wall_seconds: trials.iter().map(|t| t.wall_seconds).sum(),
            peak_rss_gb: trials.iter().filter_map(|t| t.peak_rss_gb).reduce(f64::max),
        });
    }
    let best = best_of(&mut s.trials.iter());
    let best_recipe = match &best {
        Some(b) => {
            let mut o = overrides.to_vec();
            o.extend(points[b.point].iter().cloned());
            o.push(format!("seed={}", b.seed));
            let r = Recipe::load(recipe, &o)?;
            let r_ = b.result.as_ref().expect("the best trial finished");
            let text = format!(
                "# The best trial of the sweep in {} ({}: validation {} {}, test {}): {} with {}.\n{}",
                out.display(),
                b.id,
                metric.name(),
                fmt_opt(r_.validation),
                fmt_opt(r_.test),
                recipe.display(),
                if o.is_empty() { "no changes".into() } else { o.join(" ") },
                r.to_toml()
            );
            let path = out.join("best-recipe.toml");
            write_atomic(&path, text.as_bytes())?;
            Some(path)
        }
        None => None,
    };
    let summary = SweepSummary {
        sweep_dir: out.to_path_buf(),
        metric: metric.name().into(),
        trials: s.trials.len(),
        points: summaries,
        best_trial: best.map(|b| b.id),
        best_recipe,
        total_wall_seconds: s.trials.iter().map(|t| t.wall_seconds).sum(),
    };
    let curves: Vec<crate::training::plot::TrialCurve> = s
        .trials
        .iter()
        .map(|t| {
            let records =
                crate::training::metrics::read_log(&RunDir { root: t.dir.clone() }.metrics()).unwrap_or_default();
            let points = records
                .iter()
                .filter_map(|r| match r {
                    crate::training::metrics::LogRecord::Eval { step, metrics, .. } => {
                        Some((*step as f64, metrics.get(metric)))
                    }
                    _ => None,
                })
                .collect();
            crate::training::plot::TrialCurve { point: t.point, discarded: t.status == Status::Discarded, points }
        })
        .collect();
    let tests: Vec<(String, Vec<f64>)> = points
        .iter()
        .enumerate()
        .map(|(p, settings)| {
            let label = if settings.is_empty() { "recipe".into() } else { settings.join(" ") };
            (label, s.trials.iter().filter(|t| t.point == p).filter_map(|t| t.result.as_ref()?.test).collect())
        })
        .collect();
    if let Err(e) = crate::training::plot::plot_sweep(&curves, &tests, metric.name(), &out.join("sweep.svg")) {
        tracing::warn!("could not draw the sweep: {e:#}");
    }
    write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    if s.trials.iter().all(|t| t.status == Status::Failed) {
        bail!("every trial failed; the first: {}", s.trials[0].error.as_deref().unwrap_or("?"));
    }
    Ok(summary)
}

impl SweepSummary {
    /// The table `finetune sweep` prints.
    pub fn table(&self) -> Vec<String> {
        let pm = |m: Option<f64>, s: Option<f64>| match (m, s) {
            (Some(m), Some(s)) => format!("{m:.4} ± {s:.4}"),
            _ => "-".into(),
        };
        let mut rows: Vec<Vec<String>> = vec![vec![
            "setting".into(),
            "trials".into(),
            format!("validation {}", self.metric),
            format!("test {}", self.metric),
            "best trial (validation/test)".into(),
            "compute".into(),
            "peak RSS".into(),
        ]];
        for p in &self.points {
            let label = if p.settings.is_empty() { "(recipe)".into() } else { p.settings.join(" ") };
            let mut trials = format!("{} finished", p.finished);
            if p.discarded > 0 {
                trials += &format!(", {} discarded", p.discarded);
            }
            if p.failed > 0 {
                trials += &format!(", {} failed", p.failed);
            }
            let best = match &p.best_trial {
                Some(id) => format!("{id} ({}/{})", fmt_opt(p.best_validation), fmt_opt(p.best_test)),
                None => "-".into(),
            };
            rows.push(vec![
                label,
                trials,
                pm(p.validation_mean, p.validation_std),
                pm(p.test_mean, p.test_std),
                best,
                format!("{:.0} s", p.wall_seconds),
                p.peak_rss_gb.map_or("-".into(), |g| format!("{g:.2} GB")),
            ]);
        }
        // Columns as wide as their widest cell; the settings left-aligned, numbers right.
        let widths: Vec<usize> =
            (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
        let mut lines: Vec<String> = rows
            .iter()
            .map(|r| {
                let cells = r.iter().enumerate().map(|(c, cell)| {
                    let pad = " ".repeat(widths[c] - cell.chars().count());
                    if c == 0 { format!("{cell}{pad}") } else { format!("{pad}{cell}") }
                });
                cells.collect::<Vec<_>>().join("  ")
            })
            .collect();
        lines.push(format!(
            "{} trials, {:.0} s of compute (trial processes' wall time added up); ± is the standard deviation over seeds",
            self.trials, self.total_wall_seconds
        ));
        if let (Some(id), Some(path)) = (&self.best_trial, &self.best_recipe) {
            lines.push(format!("best by validation: {id}, written as {}", path.display()));
        }
        lines.push(format!("sweep dir: {} (summary.json, sweep.svg, trials/, logs/)", self.sweep_dir.display()));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_values_split_outside_lists_and_quotes() {
        let (k, v) = parse_grid(r#"lora.target_modules=["query","value"], ["query","key"]"#).unwrap();
        assert_eq!(k, "lora.target_modules");
        assert_eq!(v, vec![r#"["query","value"]"#, r#"["query","key"]"#]);
        let (_, v) = parse_grid("training.learning_rate=1e-4,5e-4,1e-3").unwrap();
        assert_eq!(v, vec!["1e-4", "5e-4", "1e-3"]);
        let (_, v) = parse_grid(r#"data.text_column="a,b",c"#).unwrap();
        assert_eq!(v, vec![r#""a,b""#, "c"]);
        assert!(parse_grid("seed=1,2").is_err());
        assert!(parse_grid("output_dir=a,b").is_err());
        assert!(parse_grid("lora.r=4,,8").is_err());
        assert!(parse_grid("lora.r").is_err());
    }

    #[test]
    fn grid_points_are_the_cartesian_product() {
        let grid = vec![
            ("a".to_string(), vec!["1".into(), "2".into()]),
            ("b".to_string(), vec!["x".into(), "y".into(), "z".into()]),
        ];
        let points = grid_points(&grid);
        assert_eq!(points.len(), 6);
        assert_eq!(points[0], vec!["a=1", "b=x"]);
        assert_eq!(points[5], vec!["a=2", "b=z"]);
        assert_eq!(grid_points(&[]), vec![Vec::<String>::new()]);
    }

    fn trial(point: usize, seed: u64, status: Status, at_pause: Option<f64>) -> Trial {
        Trial {
            id: format!("g{point}-seed{seed}"),
            point,
            seed,
            dir: PathBuf::new(),
            status,
            at_pause,
            wall_seconds: 0.0,
            peak_rss_gb: None,
            result: None,
            error: None,
        }
    }

    #[test]
    fn discarding_keeps_the_best_per_point_in_the_metric_direction() {
        use Status::*;
        let mut trials = vec![
            trial(0, 1, Paused, Some(0.80)),
            trial(0, 2, Paused, Some(0.85)),
            trial(0, 3, Finished, Some(0.90)),
            trial(0, 4, Failed, None),
            trial(1, 1, Paused, Some(0.70)),
            trial(1, 2, Paused, Some(0.70)),
            trial(1, 3, Paused, Some(0.75)),
        ];
        let gone = discard(&mut trials, 2, Metric::Accuracy).unwrap();
        // Point 0: the finished 0.90 and the paused 0.85 stay; point 1: 0.75, then of the tied 0.70s
        // the earlier seed.
        assert_eq!(gone, vec![0, 5]);
        let statuses: Vec<Status> = trials.iter().map(|t| t.status).collect();
        assert_eq!(statuses, vec![Discarded, Paused, Finished, Failed, Paused, Discarded, Paused]);
        // Again: nothing changes.
        assert!(discard(&mut trials, 2, Metric::Accuracy).unwrap().is_empty());
        // A loss: lower is better.
        let mut trials = vec![trial(0, 1, Paused, Some(0.4)), trial(0, 2, Paused, Some(0.3))];
        assert_eq!(discard(&mut trials, 1, Metric::Loss).unwrap(), vec![0]);
        // Without a validation metric there is nothing to rank by.
        let mut trials = vec![trial(0, 1, Paused, None)];
        assert!(format!("{:#}", discard(&mut trials, 1, Metric::Accuracy).unwrap_err()).contains("validation"));
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m.unwrap() - 2.5).abs() < 1e-12);
        assert!((s.unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[0.7]), (Some(0.7), Some(0.0)));
        assert_eq!(mean_std(&[]), (None, None));
    }
}
