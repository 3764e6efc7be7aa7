//! `finetune train --pause-at` and `finetune sweep` on the tiny model and the UCI sample: a
//! paused run resumes to the very weights of an uninterrupted one; a sweep with early discarding
//! finishes exactly the best K trials per setting by their validation metric at the pause,
//! summarises them, writes the winner's recipe, and a killed sweep continues where it stopped.

use super::common::*;
use finetune::recipe::Recipe;
use finetune::training::metrics::{LogRecord, read_log};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn finetune(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_finetune")).args(args).output().unwrap()
}

fn ok_json(args: &[String]) -> Value {
    let out = finetune(args);
    assert!(out.status.success(), "finetune {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Paused mid-epoch and at an epoch's end, then resumed: the same weights and test metrics as
/// the run that never paused, and the pause's validation is in the JSON and metrics.jsonl.
#[test]
fn paused_run_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    // 120 examples, batch 16: 8 steps per epoch, 3 epochs.
    let recipe = tiny_recipe(dir.path(), "full", "whole", "");
    let base = |out: &str| {
        let mut a = strings(&["train", &recipe.display().to_string(), "--no-progress", "--json", "--set"]);
        a.push(format!("output_dir=\"{}\"", dir.path().join(out).display()));
        a
    };
    let whole = ok_json(&base("whole"));
    for (pause, out, step) in [("0.3", "mid", 3), ("1", "edge", 8), ("1.5", "second", 12)] {
        let mut args = base(out);
        args.extend(strings(&["--pause-at", pause]));
        let paused = ok_json(&args);
        assert_eq!(paused["paused"]["step"], step, "--pause-at {pause}: {paused}");
        let acc = paused["paused"]["validation"]["accuracy"].as_f64().expect("validation at the pause");
        assert!((0.0..=1.0).contains(&acc));
        let run = dir.path().join(out);
        assert!(!run.join("results.json").exists(), "a paused run is not finished");
        let logged = read_log(&run.join("metrics.jsonl")).unwrap();
        let at_pause = logged.iter().find_map(|r| match r {
            LogRecord::Eval { step: s, metrics, .. } if *s == step => metrics.accuracy,
            _ => None,
        });
        assert_eq!(at_pause, Some(acc), "--pause-at {pause}: the pause's validation is in metrics.jsonl");
        let mut resume = base(out);
        resume.push("--resume".into());
        let resumed = ok_json(&resume);
        assert_eq!(resumed["test"], whole["test"], "--pause-at {pause}");
        assert_eq!(resumed["optimizer_steps"], whole["optimizer_steps"]);
        let weights = |d: &Path| std::fs::read(d.join("model/model.safetensors")).unwrap();
        assert!(weights(&run) == weights(&dir.path().join("whole")), "--pause-at {pause}: resumed weights differ");
    }
    let mut bad = base("bad");
    bad.extend(strings(&["--pause-at", "0"]));
    let out = finetune(&bad);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--pause-at"));
    assert!(!dir.path().join("bad").exists(), "a refused pause writes nothing");
}

fn sweep_args(recipe: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = strings(&["sweep", &recipe.display().to_string(), "--json", "--out", &out.display().to_string()]);
    a.extend(strings(extra));
    a
}

/// Two learning rates × three seeds, discard after half an epoch, keep one per setting, two
/// trials at a time: per setting exactly the trial with the best paused validation finishes,
/// the others keep their logs but no checkpoint; the summary's statistics are those of the
/// finished trials; the best recipe reproduces the winner's settings and seed; running the
/// same sweep again trains nothing, and different arguments are refused.
#[test]
fn sweep_discards_early_and_keeps_the_best() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "lora", "run", "");
    std::fs::write(
        &recipe,
        std::fs::read_to_string(&recipe).unwrap()
            + "[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = [\"query\", \"value\"]\nmodules_to_save = [\"classifier\"]\n",
    )
    .unwrap();
    let out = dir.path().join("sweep");
    let args = sweep_args(
        &recipe,
        &out,
        &[
            "--seeds",
            "3",
            "--grid",
            "training.learning_rate=1e-3,3e-3",
            "--discard-after",
            "0.5",
            "--keep",
            "1",
            "--parallel",
            "2",
        ],
    );
    let summary = ok_json(&args);
    let state: Value = serde_json::from_slice(&std::fs::read(out.join("sweep.json")).unwrap()).unwrap();
    let trials = state["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 6);
    for point in 0..2 {
        let mine: Vec<&Value> = trials.iter().filter(|t| t["point"] == point).collect();
        let best = mine
            .iter()
            .map(|t| t["at_pause"].as_f64().expect("every trial paused with a validation metric"))
            .fold(f64::NEG_INFINITY, f64::max);
        let finished: Vec<&&Value> = mine.iter().filter(|t| t["status"] == "finished").collect();
        assert_eq!(finished.len(), 1, "point {point}: {mine:?}");
        assert_eq!(finished[0]["at_pause"].as_f64().unwrap(), best, "the kept trial is the best at the pause");
        for t in &mine {
            let run = Path::new(t["dir"].as_str().unwrap());
            if t["status"] == "discarded" {
                assert!(!run.join("results.json").exists() && !run.join("checkpoints").exists());
                assert!(run.join("metrics.jsonl").exists(), "a discarded trial keeps its metrics");
            } else {
                assert!(run.join("results.json").exists());
            }
        }
        let p = &summary["points"][point];
        assert_eq!((p["finished"].as_u64(), p["discarded"].as_u64()), (Some(1), Some(2)));
        let result = &finished[0]["result"];
        assert_eq!(p["test_mean"], result["test"]);
        assert_eq!(p["test_std"].as_f64(), Some(0.0));
        assert_eq!(p["best_trial"], finished[0]["id"]);
        let peak = p["peak_rss_gb"].as_f64().expect("the trials' peak memory");
        assert!(peak > 0.01 && peak < 8.0, "{peak} GB");
    }
    // The winner over both settings, by validation, as a recipe.
    let best_id = summary["best_trial"].as_str().unwrap();
    let best = trials.iter().find(|t| t["id"] == best_id).unwrap();
    let v = |t: &Value| t["result"]["validation"].as_f64().unwrap_or(f64::NEG_INFINITY);
    assert!(trials.iter().all(|t| v(t) <= v(best)));
    let winner = Recipe::load(&out.join("best-recipe.toml"), &[]).unwrap();
    assert_eq!(winner.seed, best["seed"].as_u64().unwrap());
    let lr = if best["point"] == 0 { 1e-3 } else { 3e-3 };
    assert_eq!(winner.training.learning_rate, lr);
    assert!(std::fs::metadata(out.join("sweep.svg")).unwrap().len() > 1000);
    assert!(out.join("summary.json").exists() && out.join(format!("logs/{best_id}.log")).exists());

    // Again: nothing left to train, the same summary.
    let log = out.join(format!("logs/{best_id}.log"));
    let log_before = std::fs::read(&log).unwrap();
    let again = ok_json(&args);
    assert_eq!(again["points"], summary["points"]);
    assert_eq!(std::fs::read(&log).unwrap(), log_before, "a finished sweep reruns no trial");

    // A different sweep in the same directory is refused, naming what to do.
    let mut changed = args.clone();
    let at = changed.iter().position(|a| a == "3").unwrap();
    changed[at] = "4".into();
    let e = finetune(&changed);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("different sweep"), "{}", String::from_utf8_lossy(&e.stderr));

    // Bad arguments are refused before anything is written.
    for (extra, says) in [
        (&["--grid", "seed=1,2"][..], "--seeds"),
        (&["--grid", "training.nonsense=1,2"][..], "grid point"),
        (&["--discard-after", "0.5"][..], "--keep"),
    ] {
        let fresh = dir.path().join("refused");
        let e = finetune(&sweep_args(&recipe, &fresh, extra));
        let err = String::from_utf8_lossy(&e.stderr);
        assert!(!e.status.success() && err.contains(says), "{extra:?}: {err}");
        assert!(!fresh.exists(), "{extra:?}: a refused sweep wrote {}", fresh.display());
    }
}

/// A sweep killed (its whole process group, as Ctrl-C or a scheduler would) after its first
/// trial finished continues from there: the finished trial is not run again and every trial
/// ends with the result it would have had.
#[test]
fn killed_sweep_continues_where_it_stopped() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "full", "run", "checkpoint_every_steps = 2");
    let out = dir.path().join("sweep");
    let args = sweep_args(&recipe, &out, &["--seeds", "3", "--set", "training.epochs=6"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let finished = |s: &Value| s["trials"].as_array().unwrap().iter().filter(|t| t["status"] == "finished").count();
    loop {
        let state = std::fs::read(out.join("sweep.json")).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        if state.as_ref().is_some_and(|s| finished(s) >= 1) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the sweep ended before it could be killed");
        assert!(started.elapsed().as_secs() < 300, "no trial finished");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The sweep and its trial process: the group the sweep leads (never `kill -KILL -N` through
    // a shell tool, whose parsing of a negative number varies).
    let group = child.id() as i32;
    assert!(group > 1);
    // SAFETY: kill(2) with a negative pid signals exactly that process group.
    assert_eq!(unsafe { libc::kill(-group, libc::SIGKILL) }, 0);
    child.wait().unwrap();
    let state: Value = serde_json::from_slice(&std::fs::read(out.join("sweep.json")).unwrap()).unwrap();
    assert!(finished(&state) < 3, "the kill came after the sweep's end");
    let first = state["trials"].as_array().unwrap().iter().find(|t| t["status"] == "finished").unwrap().clone();
    let first_log = out.join(format!("logs/{}.log", first["id"].as_str().unwrap()));
    let log_before = std::fs::read(&first_log).unwrap();

    let summary = ok_json(&args);
    assert_eq!(summary["points"][0]["finished"], 3);
    assert_eq!(std::fs::read(&first_log).unwrap(), log_before, "the finished trial was not run again");
    // Each trial is the run `finetune train` gives for its seed.
    let state: Value = serde_json::from_slice(&std::fs::read(out.join("sweep.json")).unwrap()).unwrap();
    let last = state["trials"].as_array().unwrap().last().unwrap();
    let mut direct = strings(&["train", &recipe.display().to_string(), "--no-progress", "--json"]);
    for o in [
        "training.epochs=6".to_string(),
        format!("seed={}", last["seed"]),
        format!("output_dir=\"{}\"", dir.path().join("direct").display()),
    ] {
        direct.extend(["--set".to_string(), o]);
    }
    let direct = ok_json(&direct);
    assert_eq!(direct["test"]["accuracy"].as_f64(), last["result"]["test"].as_f64());
}
