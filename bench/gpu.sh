#!/usr/bin/env bash
# GPU benchmark: finetune (burn's CUDA backend) vs PyTorch + transformers + peft on the same
# workloads, one after the other (never concurrently), printing a table last.
#
#   bench/gpu.sh prepare             here (no GPU needed): builds finetune-bench with --features cuda
#                                    and fills .gpu-carry/ with the stripped binary and a bf16 copy
#                                    of all-MiniLM-L6-v2, both xz-compressed (the GPU machine cannot
#                                    download, and the device tool carries at most 64 MiB)
#   bench/gpu.sh run                 on the GPU machine, from the repository root, with .gpu-carry/
#   bench/gpu.sh run --dry-run       the same script path on this CPU: 1 step, tiny shapes, the
#                                    CPU build (target/release/finetune-bench), to check the script
#
# With the `device` tool: run(command="bench/gpu.sh run", carry=[".gpu-carry"], timeout_s=540).
# Workloads (MiniLM, batch 32, seq 128, synthetic ids, forward + backward + AdamW per step):
# LoRA (q,v, r 8) and full fine-tuning, each in f32 and in bf16 autocast (f32 master weights).
# PyTorch uses its default attention on GPU (sdpa). Env: STEPS (20), BATCH (32), SEQ (128),
# PYTHON (python3), METHODS ("lora full"), PRECISIONS ("f32 bf16"), RUN_TIMEOUT (300 s per run).
#
# Known state (2026-11-27, H200): finetune's CUDA runs start, compile their kernels through NVRTC
# and did not finish 13 steps within 125 s, while PyTorch takes ~20 ms/step; the per-step lines
# finetune-bench prints to stderr ($OUT/finetune-*.err) show whether that is compile time on the
# first steps or a slow steady state. Give the first finetune run the whole budget to find out:
# METHODS=lora PRECISIONS=f32 RUN_TIMEOUT=400 bench/gpu.sh run
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu-carry
mode="${1:-}"

if [ "$mode" = prepare ]; then
  PYTHON="${PYTHON:-python3}"
  CARGO_TARGET_DIR=target/cuda cargo build --release -p finetune-bench --features cuda
  rm -rf "$CARRY" && mkdir -p "$CARRY/minilm-bf16"
  strip -o "$CARRY/finetune-bench" target/cuda/release/finetune-bench
  "$PYTHON" - "$CARRY/minilm-bf16" <<'PY'
import json, os, shutil, sys
import torch
from safetensors.torch import load_file, save_file
cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
    os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
root = os.path.join(cache, "models--sentence-transformers--all-MiniLM-L6-v2")
snap = os.path.join(root, "snapshots", open(os.path.join(root, "refs", "main")).read().strip())
out = sys.argv[1]
# bf16 halves the file so binary + model fit the device tool's 64 MiB carry; both frameworks
# load the same copy and train in f32 from it, so the step times compare like for like.
tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(os.path.join(snap, "model.safetensors")).items()}
save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
shutil.copy(os.path.join(snap, "config.json"), os.path.join(out, "config.json"))
PY
  # CUDA's cooperative_groups headers include CCCL's <nv/target>; PyTorch's wheels do not always
  # ship CCCL, so carry the headers of the nvidia-cuda-cccl wheel from this machine's Python.
  cccl="$("$PYTHON" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "include"))')"
  tar -C "$cccl" -cJf "$CARRY/cccl.tar.xz" cccl
  xz -T0 -6 "$CARRY/finetune-bench" "$CARRY/minilm-bf16/model.safetensors"
  du -sh "$CARRY"
  exit 0
fi

[ "$mode" = run ] || { echo "usage: bench/gpu.sh prepare | run [--dry-run]" >&2; exit 2; }
dry="${2:-}"
PYTHON="${PYTHON:-python3}"
STEPS="${STEPS:-20}" BATCH="${BATCH:-32}" SEQ="${SEQ:-128}"
METHODS="${METHODS:-lora full}" PRECISIONS="${PRECISIONS:-f32 bf16}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
if [ "$dry" = --dry-run ]; then
  DEVICE=cpu STEPS=1 BATCH=2 SEQ=16
  BENCH="${BENCH:-target/release/finetune-bench}"
  [ -x "$BENCH" ] || cargo build --release --quiet -p finetune-bench
  MODEL_ARGS=()
  PT_MODEL_ARGS=()
  card="CPU dry run ($(nproc) cores)"
else
  DEVICE=cuda
  # Unpack the carried files (xz, or Python's lzma where xz is missing).
  UNPACKED="${UNPACKED:-/tmp/finetune-gpu}"
  mkdir -p "$UNPACKED/minilm-bf16"
  cp "$CARRY/minilm-bf16/config.json" "$UNPACKED/minilm-bf16/"
  for f in finetune-bench minilm-bf16/model.safetensors; do
    "$PYTHON" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$CARRY/$f.xz" "$UNPACKED/$f"
  done
  chmod +x "$UNPACKED/finetune-bench"
  BENCH="$UNPACKED/finetune-bench"
  MODEL_ARGS=(--model "$UNPACKED/minilm-bf16")
  PT_MODEL_ARGS=(--model "$UNPACKED/minilm-bf16")
  card="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
  # burn's CUDA backend compiles kernels with NVRTC at run time: point it at the NVRTC library
  # and CUDA headers that PyTorch's nvidia wheels ship (no CUDA toolkit on the machine).
  nv="$("$PYTHON" -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || echo /nonexistent)"
  nvrtc="$(find "$nv" /usr/local/cuda* -name 'libnvrtc.so*' 2>/dev/null | grep -v builtins | head -1 || true)"
  [ -n "$nvrtc" ] || { echo "no libnvrtc.so found under $nv or /usr/local/cuda" >&2; exit 1; }
  libdir="$(dirname "$nvrtc")"
  export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if [ -z "${CUDA_PATH:-}" ]; then
    hdr="$(find "$nv" /usr/local/cuda* -name cuda_fp16.h 2>/dev/null | head -1 || true)"
    [ -n "$hdr" ] && export CUDA_PATH="$(dirname "$(dirname "$hdr")")"
  fi
  if [ -n "${CUDA_PATH:-}" ] && [ ! -e "$CUDA_PATH/include/cccl/nv/target" ] && [ -f "$CARRY/cccl.tar.xz" ]; then
    # A CUDA root of links to the machine's headers plus the carried CCCL ones.
    mkdir -p "$UNPACKED/cuda/include"
    for e in "$CUDA_PATH"/include/*; do ln -sfn "$e" "$UNPACKED/cuda/include/"; done
    rm -rf "$UNPACKED/cuda/include/cccl"
    tar -C "$UNPACKED/cuda/include" -xJf "$CARRY/cccl.tar.xz"
    export CUDA_PATH="$UNPACKED/cuda"
  fi
  echo "NVRTC: $nvrtc; CUDA_PATH=${CUDA_PATH:-unset}" >&2
fi
echo "device: $card" >&2

# Peak device memory used while a command runs (MiB, whole GPU, minus what was in use before):
# the same yardstick for both frameworks, CUDA context included.
run_measured() { # name, command...
  local name="$1"; shift
  local base=0 poll=""
  if [ "$DEVICE" = cuda ]; then
    base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/$name.mem" &
    poll=$!
  fi
  local rc=0
  timeout "${RUN_TIMEOUT:-300}" "$@" > "$OUT/$name.json" 2> "$OUT/$name.err" || rc=$?
  if [ -n "$poll" ]; then kill "$poll" 2>/dev/null || true; wait "$poll" 2>/dev/null || true; fi
  local peak=0
  [ -s "$OUT/$name.mem" ] && peak=$(sort -n "$OUT/$name.mem" | tail -1)
  echo "$((peak - base))" > "$OUT/$name.peak"
  if [ $rc -ne 0 ] || ! [ -s "$OUT/$name.json" ]; then
    echo "$name failed (exit $rc):" >&2; grep -v '^\s*$' "$OUT/$name.err" | tail -8 >&2
    echo '{}' > "$OUT/$name.json"
  fi
  echo "$name: $(cat "$OUT/$name.json")" >&2
}

rows=()
for p in $PRECISIONS; do
  for m in $METHODS; do
    common=(--batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --device "$DEVICE" --precision "$p")
    run_measured "finetune-$m-$p" "$BENCH" step "$m" "${common[@]}" "${MODEL_ARGS[@]}"
    run_measured "pytorch-$m-$p" "$PYTHON" bench/step_time.py "$m" "${common[@]}" "${PT_MODEL_ARGS[@]}" \
      --attn "$([ "$DEVICE" = cuda ] && echo sdpa || echo eager)"
    rows+=("$m $p")
  done
done

echo
echo "GPU benchmark: $card; batch $BATCH, seq $SEQ, median of $STEPS steps after 3 warm-up"
"$PYTHON" - "$OUT" "${rows[@]}" <<'PY'
import json, sys
out, rows = sys.argv[1], sys.argv[2:]
def load(name):
    r = json.load(open(f"{out}/{name}.json"))
    r["peak_mib"] = int(open(f"{out}/{name}.peak").read())
    return r
print("| method | precision | finetune ms/step | PyTorch ms/step | finetune/PyTorch | finetune tokens/s | PyTorch tokens/s | finetune peak MiB | PyTorch peak MiB |")
print("|---|---|---|---|---|---|---|---|---|")
for row in rows:
    m, p = row.split()
    f, t = load(f"finetune-{m}-{p}"), load(f"pytorch-{m}-{p}")
    fm, tm = f.get("ms_per_step"), t.get("ms_per_step")
    ratio = f"{fm / tm:.2f}" if fm and tm else "n/a"
    cell = lambda r, k: str(r.get(k, "failed"))
    print(f"| {m} | {p} | {cell(f, 'ms_per_step')} | {cell(t, 'ms_per_step')} | {ratio} | {cell(f, 'tokens_per_s')} | "
          f"{cell(t, 'tokens_per_s')} | {f['peak_mib']} | {t['peak_mib']} |")
PY
