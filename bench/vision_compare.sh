#!/usr/bin/env bash
# finetune vs PyTorch + torchvision on the Fashion-MNIST recipes (recipes/mobilenet-fashion-*.toml,
# bench/vision_reference.py), one after the other on this machine, each printing one JSON line:
# test accuracy, seconds per epoch (training steps only), feature seconds, peak RSS.
#
#   bench/vision_compare.sh [SIZE] [TRAIN_EXAMPLES] [mobilenet|efficientnet|efficientnet-more]   (defaults: 64 5000 mobilenet)
#
# `efficientnet` runs EfficientNet-Lite0 instead: feature extraction and one epoch of full
# fine-tuning (with augmentation), gradual unfreezing and LoRA on the pointwise convolutions, against
# the reference implementation in PyTorch; `efficientnet-more` only the last two.
#
# Every run uses the first TRAIN_EXAMPLES training images (after holding out every 10th image of
# the 60,000 for validation: 6,000), the whole validation split and the whole test split (10,000).
# Needs: cargo, python3 with torch + torchvision, scripts/fetch-assets.sh mobilenet fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-64}
N=${2:-5000}
MODELS=${3:-mobilenet}
OUT=${BENCH_OUT:-/tmp/finetune-vision-bench}
mkdir -p "$OUT"
cargo build --release --quiet
BIN=target/release/finetune

ours() { # name recipe overrides...
  local name=$1 recipe=$2
  shift 2
  rm -rf "$OUT/$name"
  local start rss
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$OUT/$name.rss" "$BIN" train "$recipe" --json --no-progress \
    --set output_dir="$OUT/$name" --set image.size="$SIZE" --set image.max_train_examples="$N" \
    --set feature_extraction.cache_dir="$OUT/features-$name" "$@" > "$OUT/$name.json"
  rss=$(tail -1 "$OUT/$name.rss")
  python3 - "$OUT/$name.json" "$name" "$rss" "$start" <<'PY'
import json, sys, time
r = json.load(open(sys.argv[1])); epochs = max(r["epochs_run"], 1)
print(json.dumps({"impl": "finetune", "run": sys.argv[2], "test_accuracy": r["test"]["accuracy"],
  "best_validation_accuracy": r["best"]["metrics"]["accuracy"] if r.get("best") else None,
  "epochs_run": r["epochs_run"], "steps": r["optimizer_steps"], "seconds_per_epoch": r["train_seconds"] / epochs,
  "feature_seconds": r.get("feature_seconds"), "peak_rss_gb": int(sys.argv[3]) / 1e6,
  "wall_seconds": time.time() - float(sys.argv[4])}))
PY
}

theirs() { # name args...
  local name=$1
  shift
  local start
  start=$(date +%s.%N)
  python3 bench/vision_reference.py "$@" --size "$SIZE" --max-train "$N" | tail -1 |
    python3 -c "import json,sys,time; r=json.load(sys.stdin); r['run']='$name'; r['wall_seconds']=time.time()-$start; print(json.dumps(r))"
}

# EfficientNet-Lite0 gradual unfreezing (no augmentation) and LoRA on its pointwise convolutions.
lite_tail() {
  ours lite-transfer recipes/mobilenet-fashion-transfer.toml --set model=finetune/efficientnet_lite0.imagenet \
    --set training.epochs=1 --set transfer.unfreeze_every_steps=5 --set image.augment=null
  theirs lite-transfer transfer --arch efficientnet_lite0 --epochs 1 --unfreeze-every-steps 5
  ours lite-lora-aug recipes/mobilenet-fashion-lora.toml --set model=finetune/efficientnet_lite0.imagenet \
    --set training.epochs=1 --set 'lora.target_modules=_blocks\.\d+\._(expand|project)_conv|_conv_head'
  theirs lite-lora-aug lora --arch efficientnet_lite0 --epochs 1 --augment --lr 2e-3
}

if [ "$MODELS" = efficientnet ]; then
  ours lite-fe recipes/efficientnet-fashion-feature-extraction.toml
  theirs lite-fe feature-extraction --arch efficientnet_lite0 --epochs 10 --batch 128 --lr 3e-3 --warmup-ratio 0.02 \
    --patience 3
  ours lite-full-aug recipes/mobilenet-fashion-full.toml --set model=finetune/efficientnet_lite0.imagenet \
    --set training.epochs=1
  theirs lite-full-aug full --arch efficientnet_lite0 --epochs 1 --augment
  lite_tail
  exit 0
fi
if [ "$MODELS" = efficientnet-more ]; then
  lite_tail
  exit 0
fi

# Feature extraction (no augmentation: features cached), 10 epochs with early stopping (patience 3).
ours fe recipes/mobilenet-fashion-feature-extraction.toml
theirs fe feature-extraction --epochs 10 --batch 128 --lr 3e-3 --warmup-ratio 0.02 --patience 3
# Full fine-tuning, 1 epoch, with and without augmentation.
ours full-aug recipes/mobilenet-fashion-full.toml --set training.epochs=1
theirs full-aug full --epochs 1 --augment
ours full recipes/mobilenet-fashion-full.toml --set training.epochs=1 --set image.augment=null
theirs full full --epochs 1
# Gradual unfreezing: head + final conv first, one more block every 5 steps, lr decay 0.9 per group.
ours transfer-aug recipes/mobilenet-fashion-transfer.toml --set training.epochs=1 --set transfer.unfreeze_every_steps=5
theirs transfer-aug transfer --epochs 1 --augment --unfreeze-every-steps 5
# Feature extraction with augmentation (no cache: the frozen backbone runs on every batch), 3 epochs.
ours fe-aug recipes/mobilenet-fashion-feature-extraction.toml --set training.epochs=3 \
  --set image.augment.crop_scale=[0.7,1.0] --set image.augment.crop_ratio=[0.8,1.25]
theirs fe-aug feature-extraction --epochs 3 --batch 128 --lr 3e-3 --warmup-ratio 0.02 --patience 3 --augment
# Gradual unfreezing without augmentation.
ours transfer recipes/mobilenet-fashion-transfer.toml --set training.epochs=1 --set transfer.unfreeze_every_steps=5 \
  --set image.augment=null
theirs transfer transfer --epochs 1 --unfreeze-every-steps 5
# LoRA r=8 on every 1x1 convolution, head trains, BatchNorm statistics frozen; 1 epoch, augmented.
ours lora-aug recipes/mobilenet-fashion-lora.toml --set training.epochs=1
theirs lora-aug lora --epochs 1 --augment --lr 2e-3
