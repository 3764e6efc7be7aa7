//! Training behaviour on the tiny model and 200 real sentences: what trains and what does not,
//! early stopping, gradual unfreezing, determinism, kill-and-resume, the feature cache, and
//! using the exported model.

use super::common::*;
use finetune::io::safetensors::SafetensorsFile;
use finetune::pipeline::TrainReport;
use finetune::recipe::Recipe;
use finetune::tasks::text_classification::run;
use finetune::training::metrics::{LogRecord, read_log};
use std::path::Path;
use std::process::Command;

fn train(recipe: &Path, overrides: &[&str]) -> TrainReport {
    let _guard = serial();
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    run(&Recipe::load(recipe, &overrides).unwrap(), false, false).unwrap()
}

/// Compare every tensor of the exported model with the base checkpoint: returns the keys whose
/// values changed.
fn changed_keys(model_dir: &Path) -> Vec<String> {
    let base = SafetensorsFile::open(&tiny_bert().join("model.safetensors")).unwrap();
    let tuned = SafetensorsFile::open(&model_dir.join("model.safetensors")).unwrap();
    tuned
        .names()
        .into_iter()
        .filter(|k| !k.starts_with("classifier."))
        .filter(|k| base.tensor(k).unwrap().data != tuned.tensor(k).unwrap().data)
        .collect()
}

fn optimizer_state_params(run_dir: &Path) -> Vec<String> {
    let latest = std::fs::read_to_string(run_dir.join("checkpoints/LATEST")).unwrap();
    let f =
        SafetensorsFile::open(&run_dir.join("checkpoints").join(latest.trim()).join("optimizer.safetensors")).unwrap();
    let mut params: Vec<String> =
        f.names().into_iter().filter_map(|k| k.strip_suffix(".exp_avg").map(String::from)).collect();
    params.sort();
    params
}

fn train_losses(run_dir: &Path) -> Vec<f64> {
    read_log(&run_dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            LogRecord::Train { loss, .. } => Some(loss),
            _ => None,
        })
        .collect()
}

/// Transfer with only the top layer trainable: embeddings and layer 0 stay bit-identical, the top
/// layer and the head change, and frozen parameters have no optimizer state.
#[test]
fn transfer_trains_top_layer_only() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "transfer", "run", "");
    let report = train(&recipe, &["transfer.trainable_layers=1", "training.epochs=1"]);
    let changed = changed_keys(&report.model_dir);
    assert!(!changed.is_empty());
    for k in &changed {
        assert!(k.starts_with("bert.encoder.layer.1."), "frozen parameter {k} changed");
    }
    assert!(changed.contains(&"bert.encoder.layer.1.attention.self.query.weight".to_string()));
    let tuned = SafetensorsFile::open(&report.model_dir.join("model.safetensors")).unwrap();
    assert!(tuned.contains("classifier.weight"));
    let state = optimizer_state_params(&report.run_dir);
    assert!(state.iter().all(|p| p.starts_with("bert.encoder.layer.1.") || p.starts_with("head.")), "{state:?}");
    assert_eq!(state.len(), 16 + 2, "16 tensors in a BERT layer plus the classifier's two");
}

/// Feature extraction: the encoder is untouched, only the head has optimizer state, and a second
/// run reads the cached features instead of running the encoder.
#[test]
fn feature_extraction_trains_head_on_cached_features() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "feature-extraction", "fe", "");
    let first = train(&recipe, &[]);
    assert_eq!(first.feature_cache_hit, Some(false));
    assert!(changed_keys(&first.model_dir).is_empty(), "feature extraction changed the encoder");
    assert_eq!(optimizer_state_params(&first.run_dir), vec!["classifier.bias", "classifier.weight"]);
    let second_dir = format!("output_dir=\"{}\"", dir.path().join("fe-again").display());
    let again = train(&recipe, &[second_dir.as_str()]);
    assert_eq!(again.feature_cache_hit, Some(true));
    assert_eq!(train_losses(&first.run_dir), train_losses(&again.run_dir), "cached features must give the same run");
    assert_eq!(first.test, again.test);
}

/// Full fine-tuning changes the encoder's lowest layer too.
#[test]
fn full_trains_everything() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "full", "run", "");
    let report = train(&recipe, &["training.epochs=1"]);
    let changed = changed_keys(&report.model_dir);
    for k in ["bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight"] {
        assert!(changed.iter().any(|c| c == k), "{k} did not change");
    }
    assert_eq!(report.trainable_params, report.total_params);
}

/// Early stopping ends the run after `patience` evaluations without improvement.
#[test]
fn early_stopping_stops() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(
        dir.path(),
        "feature-extraction",
        "run",
        "epochs = 10\n[training.early_stopping]\npatience = 2\nmin_delta = 1.0",
    );
    // 10 epochs are asked for, but no evaluation can beat the first by min_delta = 1.0.
    let recipe_text = std::fs::read_to_string(&recipe).unwrap().replace("epochs = 3\n", "");
    std::fs::write(&recipe, recipe_text).unwrap();
    let report = train(&recipe, &[]);
    assert!(report.stopped_early);
    assert_eq!(report.epochs_run, 3);
    assert_eq!(report.best.as_ref().unwrap().epoch, 0);
    let evals = read_log(&report.run_dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| matches!(r, LogRecord::Eval { .. }))
        .count();
    assert_eq!(evals, 3);

    // Patience running out on the last asked-for epoch skipped nothing: not an early stop.
    let out = format!("output_dir={:?}", dir.path().join("run-last"));
    let report = train(&recipe, &["training.epochs=3", &out]);
    assert_eq!(report.epochs_run, 3);
    assert!(!report.stopped_early);
}

/// Gradual unfreezing: groups unfreeze top-down, one per epoch, and a group never reached stays
/// bit-identical.
#[test]
fn gradual_unfreezing_goes_top_down() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "transfer", "run", "");
    let report = train(&recipe, &["transfer.unfreeze_every_epochs=1", "transfer.layer_lr_decay=0.9"]);
    let unfrozen: Vec<(usize, String)> = read_log(&report.run_dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            LogRecord::Unfreeze { epoch, group, .. } => Some((epoch, group)),
            _ => None,
        })
        .collect();
    assert_eq!(unfrozen, vec![(1, "layer.1".to_string()), (2, "layer.0".to_string())]);
    // Parameters that were ever updated have optimizer state; the embeddings never unfroze.
    let updated = optimizer_state_params(&report.run_dir);
    assert!(updated.iter().any(|k| k.starts_with("bert.encoder.layer.0.")));
    assert!(!updated.iter().any(|k| k.starts_with("bert.embeddings.")), "embeddings were never unfrozen");
    let changed = changed_keys(&report.model_dir);
    assert!(!changed.iter().any(|k| k.starts_with("bert.embeddings.")), "embeddings were never unfrozen");
}

/// The same seed gives the same losses and results; another seed does not.
#[test]
fn same_seed_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "full", "a", "");
    let out = |name: &str| format!("output_dir=\"{}\"", dir.path().join(name).display());
    let a = train(&recipe, &[out("a").as_str(), "training.epochs=2"]);
    let b = train(&recipe, &[out("b").as_str(), "training.epochs=2"]);
    let c = train(&recipe, &[out("c").as_str(), "training.epochs=2", "seed=8"]);
    assert_eq!(train_losses(&a.run_dir), train_losses(&b.run_dir));
    assert_eq!(a.test, b.test);
    assert_ne!(train_losses(&a.run_dir), train_losses(&c.run_dir));
    let weights = |r: &TrainReport| std::fs::read(r.model_dir.join("model.safetensors")).unwrap();
    assert!(weights(&a) == weights(&b), "same seed must give bit-identical weights");
}

/// `training.group_by_length` trains the same number of steps on other batches, deterministically.
#[test]
fn group_by_length_regroups_batches_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "full", "plain", "");
    let out = |name: &str| format!("output_dir=\"{}\"", dir.path().join(name).display());
    let grouped = ["training.epochs=1", "training.group_by_length=true"];
    let plain = train(&recipe, &[out("plain").as_str(), "training.epochs=1"]);
    let a = train(&recipe, &[&[out("a").as_str()][..], &grouped[..]].concat());
    let b = train(&recipe, &[&[out("b").as_str()][..], &grouped[..]].concat());
    let (lp, la) = (train_losses(&plain.run_dir), train_losses(&a.run_dir));
    assert_eq!(la, train_losses(&b.run_dir));
    assert_eq!(la.len(), lp.len());
    assert_ne!(la, lp, "grouping by length must change the batches");
}

/// Kill a training process (SIGKILL) after it has checkpointed, resume it, and get bit-identical
/// final weights and the same loss curve as an uninterrupted run.
#[test]
fn kill_and_resume_matches_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "checkpoint_every_steps = 3";
    let recipe = tiny_recipe(dir.path(), "full", "whole", extra);
    // Long enough (240 steps) that the poll below always catches it mid-run, even on a loaded machine.
    let long = ["training.epochs=30", "transfer.trainable_layers=1"];
    let whole = train(&recipe, &long);

    let killed_dir = dir.path().join("killed");
    let mut args: Vec<String> = vec!["train".into(), recipe.display().to_string(), "--no-progress".into()];
    for o in long.iter().map(|s| s.to_string()).chain([format!("output_dir=\"{}\"", killed_dir.display())]) {
        args.push("--set".into());
        args.push(o);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let latest = killed_dir.join("checkpoints/LATEST");
    let started = std::time::Instant::now();
    loop {
        let step = std::fs::read_to_string(&latest)
            .ok()
            .and_then(|s| s.trim().trim_start_matches("step-").parse::<usize>().ok())
            .unwrap_or(0);
        if step >= 12 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "training finished before it could be killed");
        assert!(started.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!killed_dir.join("results.json").exists(), "the run was killed before finishing");

    args.push("--resume".into());
    let status = Command::new(env!("CARGO_BIN_EXE_finetune")).args(&args).output().unwrap();
    assert!(status.status.success(), "resume failed: {}", String::from_utf8_lossy(&status.stderr));
    let weights = |d: &Path| std::fs::read(d.join("model/model.safetensors")).unwrap();
    assert!(weights(&whole.run_dir) == weights(&killed_dir), "resumed weights differ from an uninterrupted run");
    assert_eq!(train_losses(&whole.run_dir), train_losses(&killed_dir));
}

/// Die (as `kill -9` would: `io::failpoint` aborts, nothing is cleaned up) at the moments a kill
/// from outside can hardly aim at: between the micro-batches of one accumulated step, with a
/// checkpoint written but not renamed into place, renamed but not yet named by LATEST, with a
/// file written but not renamed, halfway through replacing the model directory, and after the
/// model is saved but before `results.json`. Each run then resumes to the very weights and loss
/// curve of an uninterrupted run, and no temp file or half-replaced folder survives.
#[test]
fn killed_at_the_worst_moments_resumes_bit_exactly_without_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "checkpoint_every_steps = 2\ngrad_accum_steps = 2";
    let recipe = tiny_recipe(dir.path(), "full", "whole", extra);
    let common = ["transfer.trainable_layers=1"];
    let run = |out: &Path, failpoint: Option<&str>, resume: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_finetune"));
        cmd.args(["train", &recipe.display().to_string(), "--no-progress"]);
        for o in common.iter().map(|s| s.to_string()).chain([format!("output_dir=\"{}\"", out.display())]) {
            cmd.args(["--set", &o]);
        }
        if resume {
            cmd.arg("--resume");
        }
        match failpoint {
            Some(f) => cmd.env("FINETUNE_FAILPOINT", f),
            None => cmd.env_remove("FINETUNE_FAILPOINT"),
        };
        cmd.output().unwrap()
    };
    let whole_dir = dir.path().join("uninterrupted");
    let whole = run(&whole_dir, None, false);
    assert!(whole.status.success(), "{}", String::from_utf8_lossy(&whole.stderr));
    let weights = |d: &Path| std::fs::read(d.join("model/model.safetensors")).unwrap();
    let leftovers = |d: &Path| -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![d.to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.contains(".tmp") || name.contains(".old") {
                    found.push(e.path().display().to_string());
                }
                if e.path().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        found
    };
    // 3 epochs of 5 steps, 2 micro-batches each; checkpoints every 2 steps and at epoch ends.
    for point in [
        "train.micro_batch@7",
        "checkpoint.written@2",
        "checkpoint.renamed@3",
        "atomic.before_rename@9",
        "replace_dir.filled@1",
        "replace_dir.moved_aside@1",
        "pipeline.saved@1",
    ] {
        let out = dir.path().join(point.replace(['.', '@'], "-"));
        let killed = run(&out, Some(point), false);
        let stderr = String::from_utf8_lossy(&killed.stderr);
        assert!(!killed.status.success() && stderr.contains("failpoint"), "{point}: not killed: {stderr}");
        assert!(!out.join("results.json").exists(), "{point}: killed before the results");
        // A new run must not mistake the killed one for a finished run.
        let again = run(&out, None, false);
        let again_err = String::from_utf8_lossy(&again.stderr);
        assert!(!again.status.success() && again_err.contains("unfinished run"), "{point}: {again_err}");
        let resumed = run(&out, None, true);
        assert!(resumed.status.success(), "{point}: resume failed: {}", String::from_utf8_lossy(&resumed.stderr));
        assert!(weights(&whole_dir) == weights(&out), "{point}: resumed weights differ from an uninterrupted run");
        assert_eq!(train_losses(&whole_dir), train_losses(&out), "{point}");
        let metrics = |d: &Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
        let strip = |m: String| -> Vec<String> {
            // Throughput differs between runs; every other field is the same to the byte.
            m.lines().map(|l| l.split(",\"examples_per_s\"").next().unwrap().to_string()).collect()
        };
        assert_eq!(strip(metrics(&whole_dir)), strip(metrics(&out)), "{point}: metrics.jsonl");
        assert_eq!(leftovers(&out), Vec::<String>::new(), "{point}");
    }
}

/// Resuming with a recipe that would change the run is refused, naming each change, and the
/// run's own recipe.toml is left as it was; changing only the device is allowed.
#[test]
fn resume_refuses_a_changed_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "full", "run", "checkpoint_every_steps = 2\nmax_steps = 2");
    let out = dir.path().join("run");
    let cli = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_finetune"));
        cmd.args(["train", &recipe.display().to_string(), "--no-progress", "--set", "training.max_steps=4"]);
        cmd.args(extra);
        cmd.env("FINETUNE_FAILPOINT", "checkpoint.written@2");
        cmd.output().unwrap()
    };
    let killed = cli(&[]);
    assert!(!killed.status.success());
    let saved = std::fs::read_to_string(out.join("recipe.toml")).unwrap();
    let changed = cli(&["--resume", "--set", "training.batch_size=8", "--set", "training.learning_rate=0.01"]);
    let err = String::from_utf8_lossy(&changed.stderr);
    assert!(!changed.status.success(), "{err}");
    assert!(
        err.contains("training.batch_size: 16 → 8") && err.contains("training.learning_rate: 0.001 → 0.01"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(out.join("recipe.toml")).unwrap(), saved, "recipe.toml was overwritten");
    let mut same = Command::new(env!("CARGO_BIN_EXE_finetune"));
    same.args(["train", &recipe.display().to_string(), "--no-progress", "--resume"]);
    same.args(["--set", "training.max_steps=4", "--set", "device=\"cpu\""]);
    let same = same.output().unwrap();
    assert!(same.status.success(), "{}", String::from_utf8_lossy(&same.stderr));
}

/// `finetune eval` and `finetune predict` on the exported model agree with the run's own test
/// evaluation.
#[test]
fn exported_model_evaluates_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "feature-extraction", "run", "");
    let report = train(&recipe, &[]);
    let model = report.model_dir.display().to_string();
    let test_csv = dir.path().join("data/test.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(["eval", "--model", &model, "--data", &test_csv.display().to_string(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let test = report.test.unwrap();
    assert!((metrics["accuracy"].as_f64().unwrap() - test.accuracy.unwrap()).abs() < 1e-9);
    assert!((metrics["loss"].as_f64().unwrap() - test.loss).abs() < 1e-4);

    let out = Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(["predict", "--model", &model, "--json", "What a great phone.", "Terrible, it broke."])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let p = l["probabilities"].as_object().unwrap();
        let sum: f64 = p.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-5);
        assert!(p.contains_key(l["label"].as_str().unwrap()));
    }
}

/// Sentence pairs (`data.text_pair_column`) on pairs of the real sentences (same or different
/// sentiment): the second text is the tokenizer's segment B (token type 1 after the first
/// `[SEP]`); the exported model records that it takes pairs, `eval` with the pair column gives
/// the run's test metrics, and `predict` takes `--pair` or tab-separated lines and refuses single
/// texts.
#[test]
fn sentence_pairs_train_evaluate_and_predict() {
    let dir = tempfile::tempdir().unwrap();
    let tok = finetune::data::tokenizer::TextTokenizer::from_file(&tiny_bert().join("tokenizer.json"), 32).unwrap();
    let e = &tok.encode_pairs(&["a great phone"], &["it broke"]).unwrap()[0];
    let sep = e.ids.iter().position(|&i| i == 3).unwrap();
    assert_eq!(e.ids.iter().filter(|&&i| i == 3).count(), 2, "{e:?}");
    assert!(e.type_ids[..=sep].iter().all(|&t| t == 0) && e.type_ids[sep + 1..].iter().all(|&t| t == 1), "{e:?}");

    let text = std::fs::read_to_string(fixtures().join("uci-sample.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let rows: Vec<(String, String)> =
        reader.records().map(|r| r.unwrap()).map(|r| (r[0].into(), r[1].into())).collect();
    let data = dir.path().join("pairs");
    std::fs::create_dir_all(&data).unwrap();
    for (name, range) in [("train", 0..120), ("validation", 120..160), ("test", 160..200)] {
        let lines: Vec<String> = range
            .map(|i| {
                let (a, b) = (&rows[i], &rows[(i * 37 + i / 3) % rows.len()]);
                let label = if a.1 == b.1 { "same" } else { "different" };
                serde_json::json!({"premise": a.0, "hypothesis": b.0, "label": label}).to_string()
            })
            .collect();
        std::fs::write(data.join(format!("{name}.jsonl")), lines.join("\n") + "\n").unwrap();
    }
    let recipe = dir.path().join("pairs.toml");
    std::fs::write(
        &recipe,
        format!(
            "method = \"full\"\nmodel = \"{}\"\nseed = 3\noutput_dir = \"{}\"\n[data]\ndataset = \"{}\"\n\
             train = \"train.jsonl\"\nvalidation = \"validation.jsonl\"\ntest = \"test.jsonl\"\n\
             text_column = \"premise\"\ntext_pair_column = \"hypothesis\"\nmax_length = 48\n\
             [training]\nepochs = 1\nbatch_size = 8\nlearning_rate = 1e-3\n",
            tiny_bert().display(),
            dir.path().join("run").display(),
            data.display()
        ),
    )
    .unwrap();
    let report = train(&recipe, &[]);
    let model = report.model_dir.display().to_string();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.model_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["finetune"]["text_pair"], true);

    let finetune = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_finetune"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let test = data.join("test.jsonl").display().to_string();
    let out = finetune(
        &[
            "eval",
            "--model",
            &model,
            "--data",
            &test,
            "--text-column",
            "premise",
            "--text-pair-column",
            "hypothesis",
            "--json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!((metrics["accuracy"].as_f64().unwrap() - report.test.unwrap().accuracy.unwrap()).abs() < 1e-9, "{metrics}");

    let out = finetune(&["predict", "--model", &model, "--json", "Great phone.", "--pair", "It broke."], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let by_flag: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(by_flag["text_pair"], "It broke.");
    let out = finetune(&["predict", "--model", &model, "--json"], "Great phone.\tIt broke.\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let by_stdin: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(by_stdin["logits"], by_flag["logits"]);
    let out = finetune(&["predict", "--model", &model, "Great phone."], "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("classifies text pairs"), "{err}");
}

/// The UCI splits (`uci_splits`) with each row's label replaced by `label(text, polarity)`.
fn relabelled_uci_splits(dir: &Path, label: impl Fn(&str, &str) -> String) -> std::path::PathBuf {
    let data = uci_splits(dir);
    for name in ["train", "validation", "test"] {
        let path = data.join(format!("{name}.csv"));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let mut w = csv::Writer::from_path(&path).unwrap();
        w.write_record(["text", "label"]).unwrap();
        for r in reader.records().map(|r| r.unwrap()) {
            w.write_record([&r[0], &label(&r[0], &r[1])]).unwrap();
        }
        w.flush().unwrap();
    }
    data
}

/// Regression (`head.problem_type = "regression"`) on the real sentences with their polarity as a
/// number (+1 / -1): one output trained on mean squared error, validation and test scored by
/// Pearson and Spearman correlations; the exported model says `problem_type = "regression"` (what
/// transformers' loss follows), `eval` reproduces the test metrics and `predict` prints scores; a
/// label that is not a number is an error naming file and line, and a classification metric is
/// refused before anything runs.
#[test]
fn regression_trains_on_numbers_and_reports_correlations() {
    let dir = tempfile::tempdir().unwrap();
    let data = relabelled_uci_splits(dir.path(), |_, label| if label == "positive" { "1.0" } else { "-1.0" }.into());
    let recipe = dir.path().join("regression.toml");
    let body = format!(
        "method = \"full\"\nmodel = \"{}\"\nseed = 5\noutput_dir = \"{}\"\n[data]\ndataset = \"{}\"\n\
         train = \"train.csv\"\nvalidation = \"validation.csv\"\ntest = \"test.csv\"\nmax_length = 32\n\
         [head]\nproblem_type = \"regression\"\n[training]\nepochs = 2\nbatch_size = 8\nlearning_rate = 1e-3\nmetric = \"pearson\"\n",
        tiny_bert().display(),
        dir.path().join("run").display(),
        data.display()
    );
    std::fs::write(&recipe, &body).unwrap();
    let refused = Recipe::parse(&body.replace("metric = \"pearson\"", "metric = \"accuracy\""), &[]).unwrap_err();
    assert!(format!("{refused:#}").contains("choose one of: pearson, spearman, loss"), "{refused:#}");

    let report = train(&recipe, &[]);
    let test = report.test.unwrap();
    let (pearson, spearman) = (test.pearson.unwrap(), test.spearman.unwrap());
    assert!(test.accuracy.is_none() && pearson.is_finite() && spearman.is_finite(), "{test:?}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.model_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["problem_type"].as_str(), config["num_labels"].as_u64()), (Some("regression"), Some(1)));

    let model = report.model_dir.display().to_string();
    let test_csv = data.join("test.csv").display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(["eval", "--model", &model, "--data", &test_csv, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!((metrics["pearson"].as_f64().unwrap() - pearson).abs() < 1e-6, "{metrics}");
    let out = Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(["predict", "--model", &model, "--json", "What a great phone."])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(p["score"].as_f64().is_some_and(f64::is_finite), "{p}");

    std::fs::write(data.join("test.csv"), "text,label\nfine,0.5\nbroken,very bad\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(["eval", "--model", &model, "--data", &test_csv])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("test.csv:3") && err.contains("not a number"), "{err}");
}

/// Multi-label classification (`head.problem_type = "multi_label_classification"`) on the real
/// sentences labelled with their polarity and, for sentences of more than ten words, `long`
/// (sentences of four words or fewer have no label: an empty cell):
/// a sigmoid per label and binary cross-entropy, exact-match accuracy and micro-/macro-F1, the
/// saved config says so, `predict` gives every label above one half and independent
/// probabilities; feature extraction trains the same head on cached features.
#[test]
fn multi_label_trains_label_sets() {
    let dir = tempfile::tempdir().unwrap();
    // Sentences of four words or fewer have no label at all (an empty cell).
    let data = relabelled_uci_splits(dir.path(), |text, label| match text.split_whitespace().count() {
        0..=4 => String::new(),
        5..=10 => label.to_string(),
        _ => format!("{label}; long"),
    });
    for method in ["full", "feature-extraction"] {
        let recipe = dir.path().join(format!("{method}.toml"));
        let body = format!(
            "method = \"{method}\"\nmodel = \"{}\"\nseed = 5\noutput_dir = \"{}\"\n[data]\ndataset = \"{}\"\n\
             train = \"train.csv\"\nvalidation = \"validation.csv\"\ntest = \"test.csv\"\nmax_length = 32\nlabel_separator = \";\"\n\
             [feature_extraction]\ncache_dir = \"{}\"\n[head]\nproblem_type = \"multi_label_classification\"\n\
             [training]\nepochs = 2\nbatch_size = 8\nlearning_rate = 1e-3\nmetric = \"micro_f1\"\n",
            tiny_bert().display(),
            dir.path().join(format!("run-{method}")).display(),
            data.display(),
            dir.path().join("features").display()
        );
        std::fs::write(&recipe, &body).unwrap();
        let report = train(&recipe, &[]);
        assert_eq!(report.labels, ["long", "negative", "positive"]);
        let test = report.test.unwrap();
        assert!(
            test.micro_f1.is_some_and(f64::is_finite) && test.macro_f1.is_some() && test.pearson.is_none(),
            "{test:?}"
        );
        assert_eq!((test.examples, report.skipped_rows), (40, 0), "rows without labels are examples");
        if method != "full" {
            continue;
        }
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(report.model_dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["problem_type"], "multi_label_classification");
        let model = report.model_dir.display().to_string();
        let out = Command::new(env!("CARGO_BIN_EXE_finetune"))
            .args([
                "predict",
                "--model",
                &model,
                "--json",
                "What a great phone, it works well and the battery lasts for days.",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let probs: Vec<f64> = p["probabilities"].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).collect();
        let above: Vec<String> = p["probabilities"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.as_f64().unwrap() > 0.5)
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(probs.len(), 3);
        assert_eq!(p["label"].as_str().unwrap(), above.join(","), "{p}");
    }
}
