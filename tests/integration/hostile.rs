//! Hostile files never crash finetune: a short run of the hostile-file harness
//! (`fuzz/src/engine.rs`; the long run is `finetune-fuzz`, see docs/RELIABILITY.md). Every
//! mutated input must get `ok` or a clean `error` line from `finetune check`, within the time
//! and memory limits; a panic, abort, signal or stall fails the test with the input kept.

#[allow(dead_code)]
#[path = "../../fuzz/src/engine.rs"]
mod engine;

use super::common::cached_asset;
use finetune::io::hub::RepoKind;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn settings(binary: PathBuf, work: &Path, timeout: Duration) -> engine::Settings {
    engine::Settings {
        binary,
        run_seed: 20261207,
        memory_kib: 2048 * 1024,
        timeout,
        batch: 200,
        work: work.join("work"),
        keep: Some(work.join("failures")),
    }
}

#[test]
fn mutated_inputs_get_an_answer_or_an_error_never_a_crash() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut assets = BTreeMap::new();
    for (name, repo, kind, file, fetch) in [
        ("mobilenet-config", "finetune/mobilenet_v2.imagenet1k_v1", RepoKind::Model, "config.json", "test"),
        ("wav", "finetune/espeak-spoken-words", RepoKind::Dataset, "audio/down/en-029+f1-s140.wav", "test"),
        ("chat-jsonl", "finetune/chatterbot-qa", RepoKind::Dataset, "test.jsonl", "chatterbot"),
        ("idx-labels", "finetune/fashion-mnist", RepoKind::Dataset, "t10k-labels-idx1-ubyte.gz", "test"),
    ] {
        if let Some(dir) = cached_asset(repo, kind, file, fetch) {
            assets.insert(name, dir.join(file));
        }
    }
    let targets = engine::targets(&root.join("tests/fixtures"), &root.join("recipes"), &assets).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(env!("CARGO_BIN_EXE_finetune").into(), tmp.path(), Duration::from_secs(120));
    let mut report = engine::Report::default();
    for t in &targets {
        assert_eq!(engine::bad_seeds(t, &s), vec![], "{}: seeds must read cleanly before mutation", t.name);
        engine::run_target(t, 0..300, &s, &mut report);
    }
    let failures: Vec<String> = report
        .failures
        .iter()
        .map(|f| format!("{:?} {} case {} (seed {}): {}", f.verdict, f.target, f.case, f.seed, f.detail))
        .collect();
    assert!(failures.is_empty(), "hostile inputs that finetune did not refuse cleanly:\n{}", failures.join("\n"));
    // The mutations reach the readers' checks: each target saw refusals, and the harness counted
    // every case.
    for (name, r) in &report.targets {
        assert_eq!(r.counts.values().sum::<usize>(), 300, "{name}: {:?}", r.counts);
        assert!(r.counts.get("Error").copied().unwrap_or(0) > 30, "{name}: {:?}", r.counts);
    }
    assert!(report.targets.len() >= 11, "targets: {:?}", report.targets.keys().collect::<Vec<_>>());
}

/// The harness itself sees what it exists to see: a stand-in for `finetune check` that answers
/// one file, then dies by a signal, stalls, or aborts on an allocation; each is counted against
/// the right input and the rest of the batch still runs.
#[test]
fn harness_attributes_crashes_and_stalls_to_the_input() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("fake-finetune");
    // Arguments: `check FILE...`. The file's first byte decides: 'k' crash, 'h' hang, else ok.
    std::fs::write(
        &fake,
        "#!/bin/sh\nshift\nfor f in \"$@\"; do\n  case $(head -c1 \"$f\") in\n    k) kill -SEGV $$ ;;\n    \
         h) exec sleep 30 ;;\n    *) echo \"ok    $f: fine\" ;;\n  esac\ndone\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let seed = |byte: u8| engine::Seed::generated("test", "x.bin", vec![byte; 8]);
    // Unmutated inputs would be more direct, but every case is mutated: look the verdicts up
    // per case instead, from each case's first byte.
    let target = engine::Target::new("fake", vec![seed(b'a'), seed(b'k'), seed(b'h')]);
    let s = settings(fake, tmp.path(), Duration::from_secs(2));
    let mut report = engine::Report::default();
    engine::run_target(&target, 0..40, &s, &mut report);
    let mut expected = BTreeMap::new();
    for case in 0..40 {
        let (_, bytes) = engine::make_case(&target, s.run_seed, case);
        let v = match bytes.first() {
            Some(b'k') => engine::Verdict::Crash,
            Some(b'h') => engine::Verdict::Hang,
            _ => engine::Verdict::Ok,
        };
        expected.insert(case, v);
    }
    let got: BTreeMap<u64, engine::Verdict> = report.failures.iter().map(|f| (f.case, f.verdict)).collect();
    let want: BTreeMap<u64, engine::Verdict> =
        expected.iter().filter(|(_, v)| **v != engine::Verdict::Ok).map(|(c, v)| (*c, *v)).collect();
    assert!(want.values().any(|v| *v == engine::Verdict::Crash), "no crash case among {expected:?}");
    assert!(want.values().any(|v| *v == engine::Verdict::Hang), "no hang case among {expected:?}");
    assert_eq!(got, want);
    let oks = expected.values().filter(|v| **v == engine::Verdict::Ok).count();
    assert_eq!(report.targets["fake"].counts.get("Ok").copied().unwrap_or(0), oks);
    let crash = report.failures.iter().find(|f| f.verdict == engine::Verdict::Crash).unwrap();
    assert!(crash.detail.contains("signal: 11"), "{}", crash.detail);
    assert!(crash.kept.as_ref().unwrap().join("x.bin").is_file());
}
