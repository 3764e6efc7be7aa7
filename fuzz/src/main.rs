//! `finetune-fuzz`: the long run of the hostile-file harness (see `engine.rs`).
//!
//! ```text
//! cargo build -p finetune && cargo run --release -p finetune-fuzz -- --cases 10000
//! cargo run --release -p finetune-fuzz -- --target gguf --case 1234     # reproduce one input
//! ```
//!
//! The debug build of `finetune` is the default binary: its overflow checks and debug
//! assertions turn silent arithmetic wrap-arounds into visible failures. Failing inputs are kept
//! under `fuzz/failures/<target>-<case>/`; the summary goes to stdout and, with `--report`, to a
//! JSON file.

mod engine;

use engine::{Report, Settings, Target};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Args {
    binary: PathBuf,
    cases: u64,
    first: u64,
    seed: u64,
    targets: Vec<String>,
    memory_mib: u64,
    timeout_s: f64,
    batch: usize,
    keep: PathBuf,
    report: Option<PathBuf>,
    /// Show this many of the most common error messages per target.
    errors: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: finetune-fuzz [--binary target/debug/finetune] [--cases 1000] [--first N] [--case N] [--seed 1] \
         [--target NAME]... [--memory-mib 2048] [--timeout-s 20] [--batch 100] [--keep fuzz/failures] \
         [--report FILE.json] [--errors N]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let mut a = Args {
        binary: root.join("target/debug/finetune"),
        cases: 1000,
        first: 0,
        seed: 1,
        targets: Vec::new(),
        memory_mib: 2048,
        timeout_s: 20.0,
        batch: 100,
        keep: root.join("fuzz/failures"),
        report: None,
        errors: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        let number = |v: String| v.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--binary" => a.binary = value().into(),
            "--cases" => a.cases = number(value()),
            "--case" => {
                a.first = number(value());
                a.cases = 1;
            }
            "--first" => a.first = number(value()),
            "--seed" => a.seed = number(value()),
            "--target" => a.targets.push(value()),
            "--memory-mib" => a.memory_mib = number(value()),
            "--timeout-s" => a.timeout_s = value().parse().unwrap_or_else(|_| usage()),
            "--batch" => a.batch = number(value()) as usize,
            "--keep" => a.keep = value().into(),
            "--report" => a.report = Some(value().into()),
            "--errors" => a.errors = number(value()) as usize,
            _ => usage(),
        }
    }
    a
}

/// `<hub cache>/<repo dir>/snapshots/<first snapshot>/<file>`, if fetched.
fn hub_file(repo_dir: &str, file: &str) -> Option<PathBuf> {
    let cache = std::env::var_os("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HF_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/huggingface"));
        home.join("hub")
    });
    let mut snapshots: Vec<PathBuf> =
        std::fs::read_dir(cache.join(repo_dir).join("snapshots")).ok()?.flatten().map(|e| e.path()).collect();
    snapshots.sort();
    snapshots.into_iter().map(|s| s.join(file)).find(|p| p.is_file())
}

fn main() {
    let args = parse_args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    if !args.binary.is_file() {
        eprintln!("{}: no finetune binary; build it first (cargo build)", args.binary.display());
        std::process::exit(2);
    }
    let mut assets = BTreeMap::new();
    for (name, repo, file) in [
        ("mobilenet-config", "models--finetune--mobilenet_v2.imagenet1k_v1", "config.json"),
        ("wav", "datasets--finetune--espeak-spoken-words", "audio/down/en-029+f1-s140.wav"),
        ("chat-jsonl", "datasets--finetune--chatterbot-qa", "test.jsonl"),
        ("labelled-jsonl", "datasets--finetune--uci-sentiment", "test.jsonl"),
        ("idx-labels", "datasets--finetune--fashion-mnist", "t10k-labels-idx1-ubyte.gz"),
        ("bpe-tokenizer", "models--finetune--whisper-tiny.en-ct2", "tokenizer.json"),
    ] {
        match hub_file(repo, file) {
            Some(p) => {
                assets.insert(name, p);
            }
            None => eprintln!("note: {repo}/{file} is not in the hub cache; its seed is left out"),
        }
    }
    let all = engine::targets(&root.join("tests/fixtures"), &root.join("recipes"), &assets).unwrap_or_else(|e| {
        eprintln!("reading the seed files: {e}");
        std::process::exit(2)
    });
    let chosen: Vec<&Target> =
        all.iter().filter(|t| args.targets.is_empty() || args.targets.iter().any(|n| n == t.name)).collect();
    if chosen.is_empty() {
        eprintln!("no such target; targets: {:?}", all.iter().map(|t| t.name).collect::<Vec<_>>());
        std::process::exit(2);
    }
    let work = std::env::temp_dir().join(format!("finetune-fuzz-{}", std::process::id()));
    let settings = Settings {
        binary: args.binary.clone(),
        run_seed: args.seed,
        memory_kib: args.memory_mib * 1024,
        timeout: Duration::from_secs_f64(args.timeout_s),
        batch: args.batch.max(1),
        work: work.clone(),
        keep: Some(args.keep.clone()),
    };
    let mut report = Report::default();
    let mut bad = 0;
    for t in &chosen {
        for (origin, answer) in engine::bad_seeds(t, &settings) {
            eprintln!("seed {origin} of {} does not read cleanly: {answer}", t.name);
            bad += 1;
        }
    }
    if bad > 0 {
        std::process::exit(2);
    }
    for t in chosen {
        eprintln!("{}: {} cases from {} seed(s)", t.name, args.cases, t.seeds.len());
        engine::run_target(t, args.first..args.first + args.cases, &settings, &mut report);
        let r = &report.targets[t.name];
        eprintln!("{}: {:?} in {:.0} s", t.name, r.counts, r.seconds);
        if args.errors > 0 {
            let mut shapes: Vec<(&String, &usize)> = r.errors.iter().collect();
            shapes.sort_by(|a, b| b.1.cmp(a.1));
            for (shape, n) in shapes.into_iter().take(args.errors) {
                eprintln!("    {n:>6}  {shape}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    print_report(&args, &report);
    if !report.failures.is_empty() {
        std::process::exit(1);
    }
}

fn print_report(args: &Args, report: &Report) {
    println!("| target | cases | ok | error | bug | crash | hang | seconds |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for (name, r) in &report.targets {
        let c = |k: &str| r.counts.get(k).copied().unwrap_or(0);
        let total: usize = r.counts.values().sum();
        let [ok, error, bug, crash, hang] = ["Ok", "Error", "Bug", "Crash", "Hang"].map(c);
        let seconds = r.seconds;
        println!("| {name} | {total} | {ok} | {error} | {bug} | {crash} | {hang} | {seconds:.0} |");
        json.push(format!(
            "{{\"target\":\"{name}\",\"cases\":{total},\"ok\":{ok},\"error\":{error},\"bug\":{bug},\"crash\":{crash},\"hang\":{hang},\"seconds\":{seconds:.1}}}"
        ));
    }
    for f in &report.failures {
        println!(
            "{:?} {} case {} (seed {}): {}{}",
            f.verdict,
            f.target,
            f.case,
            f.seed,
            f.detail,
            f.kept.as_ref().map(|k| format!(" [kept in {}]", k.display())).unwrap_or_default()
        );
    }
    if let Some(path) = &args.report {
        let text = format!(
            "{{\"binary\":\"{}\",\"seed\":{},\"memory_mib\":{},\"targets\":[{}],\"failures\":{}}}\n",
            args.binary.display(),
            args.seed,
            args.memory_mib,
            json.join(","),
            report.failures.len()
        );
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("{}: {e}", path.display());
        }
    }
}
