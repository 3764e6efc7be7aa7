#!/usr/bin/env python3
"""Load a MobileNetV2 LoRA adapter written by `finetune train` (image task, method = "lora") in
Python peft, and compare its logits with torchvision loading finetune's merged model
(`<run>/model/model.safetensors`) on the test photographs. finetune's own test checks that its
base + adapter equals that merged model, so agreement here means peft reproduces finetune.

    python scripts/check_vision_adapter.py RUN_DIR [--hub-cache DIR]
"""
import argparse, glob, json, os
import torch, torchvision
from peft import PeftModel
from PIL import Image
from safetensors.torch import load_file

ap = argparse.ArgumentParser()
ap.add_argument("run")
ap.add_argument("--hub-cache", default=os.environ.get("HF_HUB_CACHE", os.path.expanduser("~/.cache/huggingface/hub")))
a = ap.parse_args()
snap = glob.glob(os.path.join(a.hub_cache, "models--finetune--mobilenet_v2.imagenet1k_v1/snapshots/*"))[0]
labels = json.load(open(os.path.join(a.run, "adapter", "finetune.json")))["labels"]
base = torchvision.models.mobilenet_v2()
base.load_state_dict(torch.load(os.path.join(snap, "mobilenet_v2-b0353104.pth"), weights_only=True))
base.classifier = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(1280, len(labels)))
peft_model = PeftModel.from_pretrained(base, os.path.join(a.run, "adapter")).eval()
merged = torchvision.models.mobilenet_v2(num_classes=len(labels))
missing, unexpected = merged.load_state_dict(load_file(os.path.join(a.run, "model", "model.safetensors")), strict=False)
assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
merged.eval()
tf = torchvision.transforms.Compose([torchvision.transforms.Resize(64), torchvision.transforms.ToTensor(),
                                     torchvision.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
x = torch.stack([tf(Image.open(p).convert("RGB")) for p in sorted(glob.glob("tests/fixtures/images/*.png"))])
with torch.no_grad():
    d = (peft_model(x) - merged(x)).abs().max().item()
print(json.dumps({"max_abs_diff_peft_vs_finetune_merged": d, "ok": d < 1e-4}))
