//! The layering docs/ARCHITECTURE.md describes, checked on the source: each top-level module of
//! `src/` may import only the modules below it, so arrows point down:
//! `cli → tasks → pipeline, inference → recipe → methods → models → data, training → nn → ops → quant → io`.

use std::collections::BTreeSet;
use std::path::Path;

/// Each layer and the crate modules it may import (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "cli",
        &[
            "tasks",
            "pipeline",
            "inference",
            "recipe",
            "methods",
            "models",
            "data",
            "training",
            "nn",
            "ops",
            "quant",
            "io",
        ],
    ),
    (
        "tasks",
        &["pipeline", "inference", "recipe", "methods", "models", "data", "training", "nn", "ops", "quant", "io"],
    ),
    ("pipeline", &["recipe", "methods", "models", "data", "training", "nn", "ops", "quant", "io"]),
    ("inference", &["methods", "models", "data", "training", "nn", "ops", "quant", "io"]),
    ("recipe", &["methods", "models", "data", "training", "nn", "ops", "quant", "io"]),
    ("methods", &["models", "data", "training", "nn", "ops", "quant", "io"]),
    ("models", &["data", "nn", "ops", "quant", "io"]),
    ("training", &["data", "nn", "ops", "quant", "io"]),
    ("data", &["nn", "ops", "quant", "io"]),
    ("nn", &["ops", "quant", "io"]),
    ("ops", &["quant", "io"]),
    ("quant", &["io"]),
    ("io", &[]),
];

/// `crate::<module>` references in a file, including grouped `use crate::{a::.., b::..}` imports.
fn crate_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                out.insert(item.trim().split("::").next().unwrap_or("").to_string());
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            out.insert(name);
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn layers_only_import_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layers: Vec<&str> = ALLOWED.iter().map(|(l, _)| *l).collect();
    let mut violations = Vec::new();
    let mut checked = 0;
    for (layer, allowed) in ALLOWED {
        let mut paths = Vec::new();
        let dir = src.join(layer);
        assert!(dir.is_dir(), "src/{layer}/ is missing: update ALLOWED and docs/ARCHITECTURE.md together");
        files(&dir, &mut paths);
        for path in paths {
            checked += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            for module in crate_modules(&text) {
                if module != *layer && layers.contains(&module.as_str()) && !allowed.contains(&module.as_str()) {
                    violations.push(format!("{} imports crate::{module}", path.strip_prefix(&src).unwrap().display()));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} files checked");
    assert!(violations.is_empty(), "imports that point up (see docs/ARCHITECTURE.md):\n{}", violations.join("\n"));
}

/// Every top-level module of the crate is a layer above (or a process-level root file).
#[test]
fn every_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for line in lib.lines().filter_map(|l| l.strip_prefix("pub mod ")) {
        let module = line.trim_end_matches(';');
        assert!(
            ALLOWED.iter().any(|(l, _)| *l == module) || module == "allocator",
            "src/lib.rs declares `{module}`, which has no layer in the architecture test"
        );
    }
}

#[test]
fn the_checker_sees_grouped_imports() {
    let found = crate_modules("use crate::{models::Adaptable, io::x};\nlet a = crate::ops::rng::SplitMix64::new(1);");
    assert_eq!(found, BTreeSet::from(["models".to_string(), "io".to_string(), "ops".to_string()]));
}

/// A task is a thin adapter over the pipeline: no task file grows past 400 lines.
#[test]
fn task_files_stay_thin() {
    let tasks = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tasks");
    for entry in std::fs::read_dir(&tasks).unwrap().flatten() {
        let lines = std::fs::read_to_string(entry.path()).unwrap().lines().count();
        assert!(
            lines <= 400,
            "{} has {lines} lines: move what is not the task's into the layers below",
            entry.path().display()
        );
    }
}
