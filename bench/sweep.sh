#!/usr/bin/env bash
# Seed sweeps with and without early discarding (issue 27's measurement), one after the other on
# this machine: for each case the sweep's table (validation and test mean ± std over seeds, best
# trial, compute) and one JSON line (best test found, mean ± std, total compute in seconds).
#
#   bench/sweep.sh [CASE ...]   CASE in lora-discard lora-all full fe-discard fe-all
#                               (default: lora-discard lora-all full)
#   env: SEEDS (8), KEEP (3), DISCARD (0.3), FULL_SEEDS (4), OUT (bench/results/sweeps)
#
#   lora-discard  recipes/minilm-movie-lora.toml, SEEDS seeds, discard after DISCARD epoch, keep KEEP
#   lora-all      the same seeds, every trial to the end
#   full          recipes/minilm-movie-full.toml, FULL_SEEDS seeds, every trial to the end
#   fe-*          recipes/minilm-movie-feature-extraction.toml (the features are computed once and
#                 cached, so its trials take seconds): the same two ways
#
# The two LoRA cases share seeds (42 ... 42 + SEEDS - 1), and a paused trial resumes to exactly the
# result of an unpaused one, so the kept trials of lora-discard are the same runs as those seeds in
# lora-all: the difference is the compute spent on the discarded ones, and whether the best seed
# survives the cut. Needs scripts/fetch-assets.sh (the model and the movie reviews).
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-8}" KEEP="${KEEP:-3}" DISCARD="${DISCARD:-0.3}" FULL_SEEDS="${FULL_SEEDS:-4}"
OUT="${OUT:-bench/results/sweeps}"
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(lora-discard lora-all full)
cargo build --release --quiet
FT=target/release/finetune
mkdir -p "$OUT"

sweep() { # case recipe args...
  local name=$1 recipe=$2
  shift 2
  local dir="$OUT/$name"
  echo "== $name: finetune sweep $recipe $* --out $dir" >&2
  "$FT" sweep "$recipe" --out "$dir" "$@" >&2
  python3 - "$dir/summary.json" "$name" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
p = s["points"][0]
print(json.dumps({
    "case": sys.argv[2], "trials": s["trials"], "finished": p["finished"], "discarded": p["discarded"],
    "best_trial": p["best_trial"], "best_trial_test": p["best_test"], "test_mean": p["test_mean"],
    "test_std": p["test_std"], "validation_mean": p["validation_mean"],
    "compute_seconds": round(s["total_wall_seconds"], 1),
}))
PY
}

for c in "${cases[@]}"; do
  case "$c" in
    lora-discard) sweep "$c" recipes/minilm-movie-lora.toml --seeds "$SEEDS" --discard-after "$DISCARD" --keep "$KEEP" ;;
    lora-all) sweep "$c" recipes/minilm-movie-lora.toml --seeds "$SEEDS" ;;
    full) sweep "$c" recipes/minilm-movie-full.toml --seeds "$FULL_SEEDS" ;;
    fe-discard) sweep "$c" recipes/minilm-movie-feature-extraction.toml --seeds "$SEEDS" --discard-after "$DISCARD" --keep "$KEEP" ;;
    fe-all) sweep "$c" recipes/minilm-movie-feature-extraction.toml --seeds "$SEEDS" ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
  esac
done
