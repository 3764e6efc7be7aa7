#!/usr/bin/env bash
# finetune vs PyTorch + transformers on Whisper transcription of the LibriVox clips
# (`finetune transcribe` vs bench/speech_reference.py on the directory `finetune convert` writes),
# alternating, RUNS times per model. Prints one JSON line per run: model load and transcription
# seconds of each side (load listed separately), peak RSS, and whether the transcripts are equal.
#
#   bench/speech_compare.sh                      (MODELS="whisper-tiny.en-ct2 whisper-base-ct2", RUNS=2)
#
# Needs: cargo, python3 with torch + transformers (PYTHON=...), scripts/fetch-assets.sh whisper
# whisper-base librivox.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${MODELS:-"whisper-tiny.en-ct2 whisper-base-ct2"}
RUNS=${RUNS:-2}
PYTHON=${PYTHON:-python3}
OUT=${BENCH_OUT:-/tmp/finetune-speech-bench}
HUB=${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}
snapshot() { # kind--repo dir name
  local root="$HUB/$1"
  echo "$root/snapshots/$(cat "$root/refs/main")"
}
AUDIO="$(snapshot datasets--finetune--pocketsphinx-librivox)/audio"
mkdir -p "$OUT"
cargo build --release --quiet
BIN=target/release/finetune

for model in $MODELS; do
  hf="$OUT/$model-hf"
  [ -f "$hf/model.safetensors" ] || "$BIN" convert --from "finetune/$model" --out "$hf" > /dev/null
  for run in $(seq "$RUNS"); do
    /usr/bin/time -f "%M" -o "$OUT/ours.rss" "$BIN" transcribe --json --model "finetune/$model" "$AUDIO"/*.wav \
      > "$OUT/ours.jsonl" 2> "$OUT/ours.log"
    "$PYTHON" bench/speech_reference.py "$hf" "$AUDIO"/*.wav > "$OUT/theirs.jsonl" 2> /dev/null
    python3 - "$OUT" "$model" "$run" <<'PY'
import json, re, sys
out, model, run = sys.argv[1:]
log = open(f"{out}/ours.log").read()
m = re.search(r"model loaded in ([0-9.]+) s; (\d+) files \(([0-9.]+) s of audio\) transcribed in ([0-9.]+) s", log)
if not m:
    sys.exit(f"no timing line in finetune's log:\n{log}")
ours = [json.loads(l) for l in open(f"{out}/ours.jsonl") if l.startswith("{")]
lines = [json.loads(l) for l in open(f"{out}/theirs.jsonl") if l.startswith("{")]
theirs = [l for l in lines if "text" in l]
summary = [l for l in lines if "transcribe_seconds" in l][-1]
rss = int(open(f"{out}/ours.rss").read().split()[-1]) / 1e6
print(json.dumps({
    "model": model, "run": int(run), "files": len(ours),
    "finetune_load_seconds": float(m.group(1)), "finetune_transcribe_seconds": float(m.group(4)),
    "finetune_peak_rss_gb": rss,
    "pytorch_load_seconds": summary["load_seconds"], "pytorch_transcribe_seconds": summary["transcribe_seconds"],
    "pytorch_peak_rss_gb": summary["peak_rss_gb"],
    "ratio": float(m.group(4)) / summary["transcribe_seconds"],
    "same_transcripts": [a["text"] for a in ours] == [b["text"] for b in theirs],
}))
PY
  done
done
