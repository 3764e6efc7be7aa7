#!/usr/bin/env bash
# `finetune advise` against the real run of the recipe it writes (issue 27's check): for each
# setup, the advice (with its estimates) and then `finetune train` of the written recipe, timed
# and its peak memory read from the kernel (getrusage of the child); prints one JSON line per
# setup with the estimated and measured run time, epoch time and peak memory, and their errors.
#
#   bench/advise.sh [SETUP ...]   SETUP in minilm fashion smollm2 (default: all three)
#   env: OUT (bench/results/advise), and per setup the time budget given to advise:
#        MINILM_TIME (6m), FASHION_TIME (10m), SMOLLM2_TIME (none)
#
#   minilm   sentence-transformers/all-MiniLM-L6-v2 on finetune/movie-review-polarity
#   fashion  finetune/mobilenet_v2.imagenet1k_v1 on finetune/fashion-mnist
#   smollm2  finetune/SmolLM2-135M-Instruct-Q4_1-GGUF on finetune/chatterbot-qa (chat SFT)
#
# One run at a time; run it on an otherwise idle machine. Needs scripts/fetch-assets.sh (model,
# data, mobilenet, fashion-mnist, chatterbot).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/advise}"
MINILM_TIME="${MINILM_TIME-6m}" FASHION_TIME="${FASHION_TIME-10m}" SMOLLM2_TIME="${SMOLLM2_TIME-}"
setups=("$@")
[ ${#setups[@]} -gt 0 ] || setups=(minilm fashion smollm2)
cargo build --release --quiet
FT="$PWD/target/release/finetune"
mkdir -p "$OUT"

check() { # name model data time
  local name=$1 model=$2 data=$3 time=$4
  local budget=()
  [ -n "$time" ] && budget=(--time "$time")
  echo "== $name: finetune advise --model $model --data $data ${budget[*]}" >&2
  "$FT" advise --model "$model" --data "$data" "${budget[@]}" --json --out "$OUT/$name.toml" > "$OUT/$name-advice.json"
  rm -rf "$OUT/$name-run" "$OUT/$name-features"
  echo "== $name: finetune train $OUT/$name.toml" >&2
  python3 - "$FT" "$OUT" "$name" <<'PY'
import json, resource, subprocess, sys, time
ft, out, name = sys.argv[1:]
advice = json.load(open(f"{out}/{name}-advice.json"))
d = advice["decision"]
e = advice["estimates"][d["chosen"]]
start = time.monotonic()
p = subprocess.run([ft, "train", f"{out}/{name}.toml", "--json", "--no-progress",
                    "--set", f'output_dir="{out}/{name}-run"',
                    "--set", f'feature_extraction.cache_dir="{out}/{name}-features"'],
                   stdout=subprocess.PIPE, check=True)
wall = time.monotonic() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
r = json.loads(p.stdout)
epochs = max(r["epochs_run"], 1)
estimated_run = e["fixed_seconds"] + d["epochs"] * e["epoch_seconds"]
epoch = (r["train_seconds"] + r.get("validation_seconds", 0.0)) / epochs
err = lambda est, got: round(100 * (est - got) / got, 1)
print(json.dumps({
    "setup": name, "method": e["method"], "epochs": d["epochs"], "max_steps": d["max_steps"],
    "epochs_run": r["epochs_run"], "steps": r["optimizer_steps"],
    "run_s": {"estimated": round(estimated_run, 1), "measured": round(wall, 1), "error_pct": err(estimated_run, wall)},
    "epoch_s": {"estimated": round(e["epoch_seconds"], 1), "measured": round(epoch, 1), "error_pct": err(e["epoch_seconds"], epoch)},
    "peak_gb": {"estimated": round(e["peak_gb"], 3), "measured": round(peak, 3), "error_pct": err(e["peak_gb"], peak)},
    "test": r.get("test"),
}))
PY
}

for s in "${setups[@]}"; do
  case "$s" in
    minilm) check minilm sentence-transformers/all-MiniLM-L6-v2 finetune/movie-review-polarity "$MINILM_TIME" ;;
    fashion) check fashion finetune/mobilenet_v2.imagenet1k_v1 finetune/fashion-mnist "$FASHION_TIME" ;;
    smollm2) check smollm2 finetune/SmolLM2-135M-Instruct-Q4_1-GGUF finetune/chatterbot-qa "$SMOLLM2_TIME" ;;
    *) echo "unknown setup $s" >&2; exit 2 ;;
  esac
done
