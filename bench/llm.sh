#!/usr/bin/env bash
# LLM fine-tuning on the CPU, finetune vs PyTorch + transformers + peft, alternating in one run
# (never concurrently): time per step, tokens/s, peak RSS and the mean training loss of the first
# STEPS steps, per model × method × sequence length.
#
#   bench/llm.sh [CONFIG ...]   CONFIG = MODEL-METHOD, MODEL in smollm2 gemma3, METHOD in lora qlora gguf-lora
#                               (default: smollm2-lora smollm2-qlora smollm2-gguf-lora)
#   env: STEPS (5), SEQS ("256"), BATCH (8), PRECISION (f32 | bf16: bf16 matrix products / torch.autocast),
#        GC ("true": finetune's gradient checkpointing; "true false" runs both), PYTORCH (1; 0 skips it),
#        PYTORCH_GC (0; 1 also runs PyTorch with gradient_checkpointing_enable()), PYTHON
#
# Both sides train on ChatterBot's conversations packed to SEQ tokens (the recipes' data); finetune
# also scores 16 held-out conversations before and after (outside the step times). PyTorch has no
# NF4 on the CPU (bitsandbytes' 4-bit kernels need CUDA) and no GGUF-block training, so qlora and
# gguf-lora rows are finetune only. Needs scripts/fetch-assets.sh model chatterbot (and gemma3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
STEPS="${STEPS:-5}" SEQS="${SEQS:-256}" BATCH="${BATCH:-8}" PRECISION="${PRECISION:-f32}" GC="${GC:-true}"
PYTORCH="${PYTORCH:-1}" PYTORCH_GC="${PYTORCH_GC:-0}"
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(smollm2-lora smollm2-qlora smollm2-gguf-lora)
HUB="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"
snapshot() { ls -d "$HUB/$1"/snapshots/* | head -1; }
DATA=$(snapshot datasets--finetune--chatterbot-qa)
cargo build --release --quiet
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# The full training file; the held-out files cut to 16 conversations.
mkdir -p "$OUT/data"
cp "$DATA/train.jsonl" "$OUT/data/"
for f in validation test; do head -16 "$DATA/$f.jsonl" > "$OUT/data/$f.jsonl"; done
rss() { awk -F': ' '/Maximum resident set size/ {printf "%.2f", $2 / 1048576}' "$1"; }

echo "| model | method | seq | side | gradient checkpointing | s/step (mean of $STEPS) | tokens/s | peak RSS GB | mean train loss, steps 1-$STEPS |"
echo "|---|---|---|---|---|---|---|---|---|"
for config in "${configs[@]}"; do
  model="${config%%-*}" method="${config#*-}"
  case "$model" in
    smollm2) recipe_model=smollm2-chatterbot; gguf="$(snapshot models--finetune--SmolLM2-135M-Instruct-Q4_1-GGUF)/SmolLM2-135M-Instruct.Q4_1.gguf"; template=() ;;
    gemma3) recipe_model=gemma3-chatterbot; gguf="$(snapshot models--finetune--gemma-3-270m-Q4_K_M-GGUF)/gemma-3-270m-q4_k_m.gguf"; template=(--chat-template recipes/templates/gemma.jinja) ;;
    *) echo "unknown model in $config (smollm2, gemma3)" >&2; exit 2 ;;
  esac
  recipe="recipes/$recipe_model-$method.toml"
  [ -f "$recipe" ] || { echo "no recipe $recipe for $config" >&2; exit 2; }
  for seq in $SEQS; do
    for gc in $GC; do
      rm -rf "$OUT/run"
      /usr/bin/time -v -o "$OUT/f.time" ./target/release/finetune train "$recipe" \
        --set data.dataset="$OUT/data" --set data.max_length="$seq" --set training.batch_size="$BATCH" \
        --set training.max_steps="$STEPS" --set training.gradient_checkpointing="$gc" \
        --set precision="$PRECISION" --set output_dir="$OUT/run" > "$OUT/f.log" 2>&1 \
        || { echo "finetune failed:"; tail -5 "$OUT/f.log"; exit 1; }
      "$PYTHON" - "$OUT/run" "$(rss "$OUT/f.time")" "$model" "$method" "$seq" "$gc" "$STEPS" <<'PY'
import json, sys
run, rss, model, method, seq, gc, steps = sys.argv[1:]
r = json.load(open(f"{run}/results.json"))
tokens = r["train_tokens_per_second"]
train = [r for r in map(json.loads, open(f"{run}/metrics.jsonl")) if r.get("kind") == "train"]
loss = [t["loss"] for t in train if "loss" in t and t.get("step") == int(steps)]
s_step = r["train_seconds"] / int(steps)
print(f"| {model} | {method} | {seq} | finetune | {gc} | {s_step:.2f} | {tokens:.0f} | {rss} | {loss[-1] if loss else float('nan'):.5f} |")
PY
    done
    [ "$PYTORCH" = 1 ] && [ "$method" = lora ] || continue
    pgc=(no)
    [ "$PYTORCH_GC" = 1 ] && pgc=(no yes)
    for g in "${pgc[@]}"; do
      extra=()
      [ "$g" = yes ] && extra+=(--gradient-checkpointing)
      [ "$PRECISION" = bf16 ] && extra+=(--bf16)
      /usr/bin/time -v -o "$OUT/p.time" "$PYTHON" bench/sft_reference.py --gguf "$gguf" --data "$OUT/data" \
        "${template[@]}" --max-length "$seq" --batch "$BATCH" --max-steps "$STEPS" --skip-eval "${extra[@]}" \
        --out "$OUT/p.json" > /dev/null 2> "$OUT/p.err" || { echo "pytorch failed:"; tail -3 "$OUT/p.err"; exit 1; }
      "$PYTHON" - "$OUT/p.json" "$(rss "$OUT/p.time")" "$model" "$method" "$seq" "$g" <<'PY'
import json, sys
path, rss, model, method, seq, gc = sys.argv[1:]
r = json.load(open(path))
gc = "true" if gc == "yes" else "false"
loss = sum(r["losses"]) / len(r["losses"])
print(f"| {model} | {method} | {seq} | pytorch {r['torch']} + peft | {gc} | {r['train_seconds'] / r['steps']:.2f} | {r['tokens_per_second']:.0f} | {rss} | {loss:.5f} |")
PY
    done
  done
done
