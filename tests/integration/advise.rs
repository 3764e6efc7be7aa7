//! `finetune advise` on the tiny model and the UCI sample (120 training sentences): every
//! candidate is measured by a real probe run, the small dataset gets feature extraction first,
//! budgets change the advice and say why, the written recipe trains, and bad arguments are
//! refused before anything is written.

use super::common::*;
use finetune::recipe::Recipe;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn advise(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_finetune"));
    cmd.args(["advise", "--json", "--probe-steps", "2", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra);
    cmd.output().unwrap()
}

fn advice(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Value {
    let o = advise(model, data, out, extra);
    assert!(o.status.success(), "advise {extra:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn advise_measures_candidates_and_writes_a_recipe_that_trains() {
    let dir = tempfile::tempdir().unwrap();
    let data = uci_splits(dir.path());
    let out = dir.path().join("advised.toml");
    let a = advice(&tiny_bert(), &data, &out, &[]);
    assert_eq!(a["data"]["train_examples"], 120);
    assert_eq!(a["data"]["validation"], "validation.csv");
    assert_eq!(a["data"]["classes"].as_array().unwrap().len(), 2, "{}", a["data"]);
    let estimates = a["estimates"].as_array().unwrap();
    let methods: Vec<&str> = estimates.iter().map(|e| e["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["feature-extraction", "lora", "full"]);
    for e in estimates {
        assert_eq!(e["probe_steps"], 2, "{e}");
        // The shipped recipes' batches: 32, 16 (LoRA), 32.
        let batch = if e["method"] == "lora" { 16 } else { 32 };
        assert_eq!(e["steps_per_epoch"], 120usize.div_ceil(batch) as u64, "{e}");
        let peak = e["peak_gb"].as_f64().unwrap();
        assert!(peak > 0.01 && peak < 8.0, "{e}");
        assert!(e["run_seconds"].as_f64().unwrap() > 0.0 && e["fixed_seconds"].as_f64().unwrap() > 0.0, "{e}");
        let (trainable, total) = (e["trainable_params"].as_u64().unwrap(), e["total_params"].as_u64().unwrap());
        assert!(if e["method"] == "full" { trainable == total } else { trainable < total }, "{e}");
    }
    // 120 examples: a small dataset, feature extraction first, and the reason says so.
    let chosen = a["decision"]["chosen"].as_u64().unwrap() as usize;
    assert_eq!(methods[chosen], "feature-extraction");
    assert!(a["decision"]["reasons"][0].as_str().unwrap().contains("120 training examples"));
    let recipe = Recipe::load(&out, &[]).unwrap();
    assert_eq!(recipe.method.name(), "feature-extraction");
    assert_eq!((recipe.data.train.as_str(), recipe.data.test.as_deref()), ("train.csv", Some("test.csv")));
    assert!(std::fs::read_to_string(&out).unwrap().starts_with("# Written by `finetune advise`"));
    let run = dir.path().join("run");
    let trained = Command::new(env!("CARGO_BIN_EXE_finetune"))
        .arg("train")
        .arg(&out)
        .args(["--no-progress", "--json", "--set"])
        .arg(format!("output_dir=\"{}\"", run.display()))
        .arg("--set")
        .arg(format!("feature_extraction.cache_dir=\"{}\"", dir.path().join("features").display()))
        .output()
        .unwrap();
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
    assert!(run.join("results.json").exists());

    // Settings for every candidate reach the written recipe.
    let a = advice(&tiny_bert(), &data, &out, &["--set", "training.epochs=2"]);
    assert!(a["estimates"].as_array().unwrap().iter().all(|e| e["epochs"] == 2), "{}", a["estimates"]);
    assert_eq!(Recipe::load(&out, &[]).unwrap().training.epochs, 2);
    // A memory budget nothing fits: the leanest, and how to lower it.
    let a = advice(&tiny_bert(), &data, &out, &["--memory", "0.001"]);
    let reasons = a["decision"]["reasons"].to_string();
    assert!(reasons.contains("0.0 GB budget") && reasons.contains("max_length"), "{reasons}");
    // A time budget shorter than the fixed costs: one epoch, capped at some steps.
    let a = advice(&tiny_bert(), &data, &out, &["--time", "0.01s"]);
    assert!(a["decision"]["max_steps"].as_u64().is_some(), "{}", a["decision"]);
}

#[test]
fn advise_refuses_bad_arguments_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let data = uci_splits(dir.path());
    let out = dir.path().join("advised.toml");
    for (model, data, extra, says) in [
        (tiny_bert(), data.clone(), &["--time", "90"][..], "45m"),
        (tiny_bert(), data.clone(), &["--memory=-1"][..], "--memory"),
        (tiny_bert(), data.clone(), &["--set", "training.nonsense=1"][..], "nonsense"),
        (tiny_bert(), dir.path().join("no-such-data"), &[][..], "no-such-data"),
        (tiny_bert(), dir.path().to_path_buf(), &[][..], "no training file"),
        (dir.path().join("no-such-model"), data.clone(), &[][..], "no-such-model"),
    ] {
        let o = advise(&model, &data, &out, extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?}: a refused advice wrote {}", out.display());
    }
}
