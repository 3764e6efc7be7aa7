#!/usr/bin/env bash
# Wall time of one training epoch, finetune vs PyTorch + transformers, side by side in one run:
#   feature-extraction: the one-off feature pass over all splits (cold cache) + one head epoch
#   full:               one epoch of full fine-tuning (optimizer steps only, no evaluation)
# on recipes/minilm-movie-{feature-extraction,full}.toml with training.epochs=1. The two
# frameworks run one after the other, never concurrently. Needs a Python with torch and
# transformers in $PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT=bench/results/epoch
mkdir -p "$OUT"
cargo build --release --quiet
for m in feature-extraction full; do
  recipe="recipes/minilm-movie-$m.toml"
  cache=$(mktemp -d)
  rm -rf "$OUT/run-$m"
  ./target/release/finetune train "$recipe" --json --no-progress --set training.epochs=1 \
    --set "output_dir=\"$OUT/run-$m\"" --set "feature_extraction.cache_dir=\"$cache\"" > "$OUT/$m-finetune.json"
  rm -rf "$cache"
  "$PYTHON" scripts/reference_train.py "$recipe" --set training.epochs=1 > "$OUT/$m-pytorch.json"
done
"$PYTHON" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print("| workload | finetune s | PyTorch s | finetune / PyTorch |")
print("|---|---|---|---|")
for m in ["feature-extraction", "full"]:
    f = json.load(open(f"{out}/{m}-finetune.json")); p = json.load(open(f"{out}/{m}-pytorch.json"))
    if m == "feature-extraction":
        rows = [("feature pass (all splits, 10,605 sentences)", f["feature_seconds"], p["feature_seconds"]),
                ("one head epoch on cached features", f["train_seconds"], p["epoch_seconds"][0]),
                ("feature extraction, pass + 1 epoch", f["feature_seconds"] + f["train_seconds"], p["feature_seconds"] + p["epoch_seconds"][0])]
    else:
        rows = [("full fine-tuning, 1 epoch (8,483 sentences, batch 32)", f["train_seconds"], p["epoch_seconds"][0])]
    for name, a, b in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
PY
