//! Bad input gets a clear error naming the file, key or line — through the real CLI.

use super::common::*;
use finetune::io::safetensors::SafetensorsFile;
use std::path::Path;
use std::process::Command;

/// Run `finetune train` and return (success, stderr).
fn train_cli(recipe: &Path, overrides: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_finetune"));
    cmd.args(["train", &recipe.display().to_string(), "--no-progress"]);
    for o in overrides {
        cmd.args(["--set", o]);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A copy of the tiny model that a test may damage, and a recipe pointing at it.
fn damaged_model(dir: &Path, damage: impl FnOnce(&Path)) -> String {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny_bert().join(f), model.join(f)).unwrap();
    }
    damage(&model);
    format!("model=\"{}\"", model.display())
}

#[test]
fn corrupt_safetensors_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "full", "run", "");
    let model = damaged_model(dir.path(), |m| {
        let p = m.join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    });
    let (ok, err) = train_cli(&recipe, &[&model]);
    assert!(!ok);
    assert!(err.contains("model.safetensors") && err.contains("corrupt"), "{err}");
}

#[test]
fn shape_mismatch_names_the_key_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "full", "run", "");
    let model = damaged_model(dir.path(), |m| {
        let p = m.join("config.json");
        let text =
            std::fs::read_to_string(&p).unwrap().replace("\"intermediate_size\": 48", "\"intermediate_size\": 64");
        std::fs::write(&p, text).unwrap();
    });
    let (ok, err) = train_cli(&recipe, &[&model]);
    assert!(!ok);
    assert!(
        err.contains("shape mismatch for 'bert.encoder.layer.0.intermediate.dense.weight'")
            && err.contains("[48, 32]")
            && err.contains("[64, 32]"),
        "{err}"
    );
}

#[test]
fn missing_tokenizer_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "full", "run", "");
    let model = damaged_model(dir.path(), |m| std::fs::remove_file(m.join("tokenizer.json")).unwrap());
    let (ok, err) = train_cli(&recipe, &[&model]);
    assert!(!ok);
    assert!(err.contains("missing tokenizer") && err.contains("tokenizer.json"), "{err}");
}

#[test]
fn malformed_csv_line_is_an_error_or_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "feature-extraction", "run", "");
    let train_csv = dir.path().join("data/train.csv");
    let mut text = std::fs::read_to_string(&train_csv).unwrap();
    text.push_str("an extra, unquoted comma,positive,oops\n\"\",negative\n");
    std::fs::write(&train_csv, &text).unwrap();
    let line = text.lines().count() - 1;
    let (ok, err) = train_cli(&recipe, &[]);
    assert!(!ok);
    assert!(err.contains(&format!("train.csv:{line}")) && err.contains("expected 2 fields, found 4"), "{err}");
    let (ok, err) = train_cli(&recipe, &["data.skip_bad_rows=true"]);
    assert!(ok, "{err}");
    assert!(err.contains("skipped 2 bad row(s)"), "{err}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run/results.json")).unwrap()).unwrap();
    assert_eq!(results["skipped_rows"], 2);
}

#[test]
fn nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "full", "run", "checkpoint_every_steps = 1");
    let (ok, err) =
        train_cli(&recipe, &["training.learning_rate=1e30", "training.warmup_ratio=0.0", "training.max_grad_norm=0"]);
    assert!(!ok);
    assert!(err.contains("loss is") || err.contains("gradient norm is"), "{err}");
    // The message says what exists: the latest checkpoint, its step, and that its weights have
    // already blown up under this learning rate (so resuming from it would not help).
    assert!(err.contains("the latest checkpoint is") && err.contains("(step "), "{err}");
    assert!(err.contains("already") && err.contains("Start again with a lower learning rate"), "{err}");
    let latest = std::fs::read_to_string(dir.path().join("run/checkpoints/LATEST")).unwrap();
    let params = dir.path().join("run/checkpoints").join(latest.trim()).join("params.safetensors");
    let f = SafetensorsFile::open(&params).unwrap();
    for name in f.names() {
        assert!(f.tensor(&name).unwrap().data.iter().all(|v| v.is_finite()), "{name} in a checkpoint is not finite");
    }
}

/// A finished run is moved aside, never overwritten; an unfinished one must be resumed.
#[test]
fn an_existing_run_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "feature-extraction", "run", "");
    let (ok, err) = train_cli(&recipe, &["training.epochs=1"]);
    assert!(ok, "{err}");
    let first = std::fs::read(dir.path().join("run/results.json")).unwrap();
    let (ok, err) = train_cli(&recipe, &["training.epochs=1"]);
    assert!(ok, "{err}");
    assert!(err.contains("moved the previous (finished) run"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("run.1/results.json")).unwrap(), first);
    // Make the latest run look interrupted: a fresh start must refuse.
    let state = dir
        .path()
        .join("run/checkpoints")
        .join(std::fs::read_to_string(dir.path().join("run/checkpoints/LATEST")).unwrap().trim());
    let text =
        std::fs::read_to_string(state.join("state.json")).unwrap().replace("\"finished\": true", "\"finished\": false");
    std::fs::write(state.join("state.json"), text).unwrap();
    let (ok, err) = train_cli(&recipe, &["training.epochs=1"]);
    assert!(!ok);
    assert!(err.contains("unfinished run") && err.contains("--resume"), "{err}");
}

/// Every committed recipe parses and validates.
#[test]
fn committed_recipes_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            finetune::recipe::Recipe::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 6, "found {n} recipes");
}

/// Scripts get JSON from every command that prints results, and a redirected log is plain text
/// (no ANSI colour codes), whatever the command.
#[test]
fn json_output_and_plain_logs_for_scripts() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out =
            Command::new(env!("CARGO_BIN_EXE_finetune")).args(args).env("RUST_LOG", "finetune=debug").output().unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(!stderr.contains('\u{1b}'), "{args:?}: colour codes in a redirected log: {stderr:?}");
        stdout
    };
    let tiny = tiny_bert().display().to_string();
    let csv = fixtures().join("uci-sample.csv").display().to_string();
    let inspect: serde_json::Value =
        serde_json::from_str(&run(&["inspect", &tiny, "--method", "lora", "--json"])).unwrap();
    assert_eq!(inspect["arch"]["family"], "bert");
    assert!(inspect["trainable"].as_u64().unwrap() > 0 && inspect["groups"].as_array().unwrap().len() >= 3);
    let check = run(&["check", &csv, &tiny_bert().join("config.json").display().to_string(), "--json"]);
    let records: Vec<serde_json::Value> = check.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r["status"] == "ok"), "{records:?}");
    let merged = tmp.path().join("merged");
    let adapter = fixtures().join("peft/lora").display().to_string();
    let merge: serde_json::Value = serde_json::from_str(&run(&[
        "merge",
        "--adapter",
        &adapter,
        "--base",
        &tiny,
        "--out",
        &merged.display().to_string(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(merge["merged_layers"], 4);
    let prediction: serde_json::Value =
        serde_json::from_str(run(&["predict", "--model", &tiny, "great", "--json"]).lines().next().unwrap()).unwrap();
    assert!(prediction["label"].is_string(), "{prediction}");
    // Training logs (info lines with levels and times) go to a redirected stderr as plain text.
    let recipe = tiny_recipe(tmp.path(), "full", "run", "");
    let (ok, log) = train_cli(&recipe, &["training.epochs=1"]);
    assert!(ok && log.contains("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a redirected training log: {log:?}");
}

/// A classifier saved by transformers without `id2label` is usable: its classes get
/// transformers' default names (`LABEL_i`), as many as the head has.
#[test]
fn classifier_without_id2label_gets_default_label_names() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny_bert().join(f), model.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    let obj = config.as_object_mut().unwrap();
    obj.remove("id2label");
    obj.remove("label2id");
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(["predict", "--model", &model.display().to_string(), "--json", "a fine day"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(p["label"].as_str().unwrap().starts_with("LABEL_"), "{p}");
    assert_eq!(
        p["probabilities"].as_object().map(|m| m.len()).or(p["logits"].as_array().map(|a| a.len())),
        Some(3),
        "{p}"
    );
}
