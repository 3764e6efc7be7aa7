//! Shared helpers: fixture paths, small datasets, recipes.

use burn::prelude::*;
use finetune::io::safetensors::{HostTensor, SafetensorsFile};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The hub-cache directory of a real asset holding `file`, fetched by
/// `scripts/fetch-assets.sh <fetch_target>`. Absent, the calling test is skipped with a printed
/// reason, or fails when FINETUNE_REQUIRE_ASSETS is set.
pub fn cached_asset(repo: &str, kind: finetune::io::hub::RepoKind, file: &str, fetch_target: &str) -> Option<PathBuf> {
    match finetune::io::hub::resolve(repo, kind, "main", &[file]) {
        Ok(dir) => Some(dir),
        Err(_) => {
            assert!(
                std::env::var("FINETUNE_REQUIRE_ASSETS").is_err(),
                "{repo} is not in the hub cache: run scripts/fetch-assets.sh {fetch_target}"
            );
            note_skipped(&format!("{repo} (scripts/fetch-assets.sh {fetch_target})"));
            None
        }
    }
}

/// The asset tests skipped in this run, printed once as the test binary exits (libtest captures
/// a test's own output, so a per-test message would go unseen).
static SKIPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn note_skipped(what: &str) {
    use std::io::Write;
    static REGISTER: std::sync::Once = std::sync::Once::new();
    unsafe extern "C" {
        fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
    }
    extern "C" fn print_skipped() {
        let skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts = std::collections::BTreeMap::new();
        for s in skipped.iter() {
            *counts.entry(s.as_str()).or_insert(0) += 1;
        }
        let list: Vec<String> = counts.iter().map(|(s, n)| format!("  {n} x {s}")).collect();
        let _ = writeln!(
            std::io::stderr(),
            "\n{} asset test(s) SKIPPED for missing assets (FINETUNE_REQUIRE_ASSETS=1 makes them fail):\n{}",
            skipped.len(),
            list.join("\n")
        );
    }
    // SAFETY: registers a plain function with the C runtime; it only reads a static.
    REGISTER.call_once(|| unsafe {
        atexit(print_skipped);
    });
    SKIPPED.lock().unwrap_or_else(|e| e.into_inner()).push(what.to_string());
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what} is not in the hub cache");
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn tiny_bert() -> PathBuf {
    fixtures().join("tiny-bert")
}

pub fn reference(name: &str) -> HostTensor {
    SafetensorsFile::open(&fixtures().join("tiny-bert-reference.safetensors")).unwrap().tensor(name).unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// Write train/validation/test CSVs from the committed UCI sample (200 real sentences):
/// 120 / 40 / 40 rows.
pub fn uci_splits(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(fixtures().join("uci-sample.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (name, range) in [("train", 0..120), ("validation", 120..160), ("test", 160..200)] {
        let body: Vec<&str> = std::iter::once(header).chain(rows[range].iter().copied()).collect();
        std::fs::write(data.join(format!("{name}.csv")), body.join("\n") + "\n").unwrap();
    }
    data
}

/// A recipe for the tiny model on the UCI sample; `extra` is appended TOML.
pub fn tiny_recipe(dir: &Path, method: &str, out: &str, training_extra: &str) -> PathBuf {
    let data = uci_splits(dir);
    let text = format!(
        r#"method = "{method}"
model = "{model}"
seed = 7
output_dir = "{out}"
[data]
dataset = "{data}"
train = "train.csv"
validation = "validation.csv"
test = "test.csv"
max_length = 32
[head]
pooling = "mean"
dropout = 0.1
[training]
epochs = 3
batch_size = 16
eval_batch_size = 32
learning_rate = 1e-3
warmup_ratio = 0.1
{training_extra}
[feature_extraction]
cache_dir = "{cache}"
"#,
        model = tiny_bert().display(),
        data = data.display(),
        out = dir.join(out).display(),
        cache = dir.join("features").display(),
    );
    let path = dir.join(format!("{out}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// burn's random number generator is process-wide: two trainings running at once in one process
/// would interleave their draws (initialisation, dropout). Tests that check reproducibility take
/// this lock for the duration of their in-process training.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `finetune eval --json` of a base model plus an adapter on a CSV file: the metrics.
pub fn eval_adapter_cli(model: &Path, adapter: &Path, data: &Path) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(["eval", "--model"])
        .arg(model)
        .arg("--adapter")
        .arg(adapter)
        .arg("--data")
        .arg(data)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}
