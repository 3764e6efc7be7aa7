#!/usr/bin/env bash
# Accuracy and speed of finetune against the PyTorch + transformers reference, same recipe.
#
#   bench/compare.sh [METHOD ...]     (default: feature-extraction transfer full)
#
# For each method it runs `finetune train recipes/minilm-movie-METHOD.toml` (release build), then
# scripts/reference_train.py on the same recipe, one after the other (never concurrently), each
# under /usr/bin/time for peak RSS; the feature cache starts cold. JSON reports go to
# bench/results/METHOD-{finetune,pytorch}.json and a summary table is printed at the end.
# Needs: scripts/fetch-assets.sh done, and a Python with torch + transformers ($PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT=bench/results
mkdir -p "$OUT"
methods=("$@")
[ ${#methods[@]} -gt 0 ] || methods=(feature-extraction transfer full)

cargo build --release --quiet
for m in "${methods[@]}"; do
  recipe="recipes/minilm-movie-$m.toml"
  run_dir="$OUT/runs/$m"
  cache=$(mktemp -d)
  rm -rf "$run_dir"
  echo "== $m: finetune" >&2
  /usr/bin/time -v -o "$OUT/$m-finetune.time" ./target/release/finetune train "$recipe" --json --no-progress \
    --set "output_dir=\"$run_dir\"" --set "feature_extraction.cache_dir=\"$cache\"" > "$OUT/$m-finetune.json"
  rm -rf "$cache"
  echo "== $m: pytorch" >&2
  /usr/bin/time -v -o "$OUT/$m-pytorch.time" "$PYTHON" scripts/reference_train.py "$recipe" > "$OUT/$m-pytorch.json"
done

"$PYTHON" - "$OUT" "${methods[@]}" <<'PY'
import json, re, sys, platform, os
out, methods = sys.argv[1], sys.argv[2:]
def rss(path):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(path).read())
    return int(m.group(1)) / 1024 / 1024
print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
print("| method | framework | test acc | macro-F1 | best epoch | s/epoch (train) | feature pass s | peak RSS GB |")
print("|---|---|---|---|---|---|---|---|")
for m in methods:
    f = json.load(open(f"{out}/{m}-finetune.json"))
    p = json.load(open(f"{out}/{m}-pytorch.json"))
    fe = f["train_seconds"] / max(f["epochs_run"], 1)
    pe = p["train_seconds"] / max(len(p["epoch_seconds"]), 1)
    ff = f.get("feature_seconds"); pf = p.get("feature_seconds")
    print(f"| {m} | finetune | {f['test']['accuracy']:.4f} | {f['test']['macro_f1']:.4f} | {f['best']['epoch'] + 1} | {fe:.1f} | {'' if ff is None else f'{ff:.1f}'} | {rss(f'{out}/{m}-finetune.time'):.2f} |")
    print(f"| {m} | PyTorch | {p['test']['accuracy']:.4f} | {p['test']['macro_f1']:.4f} | {p['best_epoch']} | {pe:.1f} | {'' if pf is None else f'{pf:.1f}'} | {rss(f'{out}/{m}-pytorch.time'):.2f} |")
PY
