#!/usr/bin/env bash
# Training-step time and peak memory, finetune vs PyTorch + transformers + peft, alternating in one
# run (never concurrently), each step = forward + backward + AdamW on all-MiniLM-L6-v2.
#
#   bench/steps.sh [METHOD ...]    (default: full lora prompt infer); env BATCH (16), SEQ (128), STEPS (10),
#                                  PRECISIONS ("f32"; "f32 bf16" also runs both sides under bf16 autocast)
#
# Needs scripts/fetch-assets.sh model and a Python with torch, transformers, peft ($PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
BATCH="${BATCH:-16}" SEQ="${SEQ:-128}" STEPS="${STEPS:-10}" PRECISIONS="${PRECISIONS:-f32}"
methods=("$@")
[ ${#methods[@]} -gt 0 ] || methods=(full lora prompt infer)
cargo build --release --quiet -p finetune-bench
OUT=$(mktemp -d)
rss() { awk -F': ' '/Maximum resident set size/ {printf "%.2f", $2 / 1048576}' "$1"; }
echo "| method | precision | framework | ms/step | tokens/s | peak RSS GB | trainable params |"
echo "|---|---|---|---|---|---|---|"
for m in "${methods[@]}"; do
 for precision in $PRECISIONS; do
  args=(--batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --precision "$precision")
  /usr/bin/time -v -o "$OUT/f.time" ./target/release/finetune-bench step "$m" "${args[@]}" > "$OUT/f.json"
  sides=(f p)
  if ! /usr/bin/time -v -o "$OUT/p.time" "$PYTHON" bench/step_time.py "$m" "${args[@]}" > "$OUT/p.json" 2>"$OUT/p.err"; then
    # Report and go on (e.g. qlora needs bitsandbytes); the other methods still run.
    echo "| $m | $precision | pytorch | failed: $(tail -1 "$OUT/p.err" | cut -c1-120) | | | |"
    sides=(f)
  fi
  for side in "${sides[@]}"; do
    "$PYTHON" - "$OUT/$side.json" "$(rss "$OUT/$side.time")" "$precision" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"| {r['method']} | {sys.argv[3]} | {r['framework']} | {r['ms_per_step']:.0f} | {r['tokens_per_s']:.0f} | {sys.argv[2]} | {r['trainable_params']} |")
PY
  done
 done
done
rm -rf "$OUT"
