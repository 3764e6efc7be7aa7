#!/usr/bin/env python3
"""Fixtures for the vision tests (run from the repository root; needs torch, torchvision, Pillow).

1. tests/fixtures/pth/: small state dicts saved by torch.save in both layouts (zip and legacy),
   with a strided view, f16, bf16 and int64 tensors, a nested dict; their contents as safetensors;
   and `evil.pth`, a checkpoint whose pickle would call os.system when loaded by Python's pickle.
2. tests/fixtures/images/: four real photographs (scikit-image's sample data, public domain /
   CC0, from the PyPI wheel scikit-image==0.25.2, fetched with pip download, not installed),
   resized (short side 256, bilinear, antialiased) and centre-cropped to 224x224 by PIL as
   torchvision's ImageNet preprocessing does, saved as PNG.
   tests/fixtures/mobilenet_v2-reference.safetensors: torchvision's MobileNetV2 (the real
   IMAGENET1K_V1 weights from scripts/fetch-assets.sh mobilenet) logits and pooled features for
   those PNGs, normalised with the ImageNet mean/std; and the same model's logits in train mode
   (batch statistics) for a batch of the four, to check BatchNorm's training path.
3. tests/fixtures/peft/mobilenet-lora/: a peft LoRA adapter on that MobileNetV2 (r=4, alpha 8, on a
   3x3 stem conv and 1x1 convolutions, non-zero B, a new 3-class classifier in modules_to_save),
   saved by peft itself, with its logits on the four photographs (mobilenet-lora-reference.safetensors).
4. tests/fixtures/efficientnet_lite0-reference.safetensors: EfficientNet-Lite0 (the real weights
   from scripts/fetch-assets.sh efficientnet) through its reference implementation, PyPI
   `efficientnet_lite_pytorch==0.1.0` (lukemelas' efficientnet_pytorch with the Lite variants;
   fetched with pip download --no-deps and imported from the unpacked wheel): pooled features and
   logits of the four photographs normalised as TensorFlow's Lite models expect, and train-mode
   logits with dropout and drop-connect off.
5. tests/fixtures/resnet-reference.safetensors: torchvision's resnet18 and resnet50 (10 classes)
   with every tensor filled by `formula(key, index)` below (no pretrained ResNet is among the
   project's assets; the formula is cheap to reproduce in the Rust test, so no weights are
   committed): logits and pooled features of a formula input [2, 3, 64, 64], eval mode.

Usage: python3 scripts/make_vision_fixtures.py [--hub-cache DIR] [--only pth,mobilenet,efficientnet,resnet]
"""
import argparse, glob, io, json, os, subprocess, sys, tempfile, zipfile

import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

FIX = "tests/fixtures"
IMAGES = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]


def pth_fixtures():
    out = os.path.join(FIX, "pth")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    base = torch.randn(4, 6)
    sd = {
        "layer.weight": torch.randn(3, 5),
        "layer.bias": torch.randn(3),
        "strided": base.t()[1:5:2],  # a non-contiguous view with an offset
        "half": torch.randn(2, 3).half(),
        "bf16": torch.randn(5).bfloat16(),
        "steps": torch.tensor(7, dtype=torch.int64),
        "scalar": torch.tensor(2.5),
    }
    ckpt = {"state_dict": sd, "epoch": 3}
    torch.save(ckpt, os.path.join(out, "zip.pth"))
    torch.save(ckpt, os.path.join(out, "legacy.pth"), _use_new_zipfile_serialization=False)
    save_file({k: v.float().contiguous().reshape(v.shape) for k, v in sd.items()}, os.path.join(out, "expected.safetensors"))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo finetune-test-should-never-print",))

    torch.save({"weight": torch.zeros(2), "payload": Evil()}, os.path.join(out, "evil.pth"))


def sample_images(tmp):
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--platform", "manylinux_2_17_x86_64", "--python-version", "3.11",
                    "scikit-image==0.25.2", "-d", tmp], check=True)
    wheel = glob.glob(os.path.join(tmp, "scikit_image-0.25.2-*.whl"))[0]
    z = zipfile.ZipFile(wheel)
    return {name: Image.open(io.BytesIO(z.read(f"skimage/data/{name}"))).convert("RGB") for name in IMAGES}


def mobilenet_reference(hub):
    snap = glob.glob(os.path.join(hub, "models--finetune--mobilenet_v2.imagenet1k_v1/snapshots/*"))[0]
    cfg = json.load(open(os.path.join(snap, "config.json")))
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(os.path.join(snap, "mobilenet_v2-b0353104.pth"), weights_only=True))
    model.eval()
    out = os.path.join(FIX, "images")
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        images = sample_images(tmp)
    prep = torchvision.transforms.Compose([
        torchvision.transforms.Resize(256, interpolation=torchvision.transforms.InterpolationMode.BILINEAR),
        torchvision.transforms.CenterCrop(224),
    ])
    to_tensor = torchvision.transforms.Compose([
        torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize(cfg["pretrained_cfg"]["mean"], cfg["pretrained_cfg"]["std"]),
    ])
    batch = []
    for name in IMAGES:
        png = os.path.join(out, os.path.splitext(name)[0] + ".png")
        prep(images[name]).save(png)
        batch.append(to_tensor(Image.open(png).convert("RGB")))
    x = torch.stack(batch)
    peft_adapter(model, x)  # before the train-mode forward below moves the running statistics
    with torch.no_grad():
        features = torch.nn.functional.adaptive_avg_pool2d(model.features(x), 1).flatten(1)
        logits = model.classifier(features)
        model.train()
        model.classifier[0].p = 0.0
        train_logits = model(x)
    save_file({"logits": logits.contiguous(), "features": features.contiguous(), "train_logits": train_logits.contiguous()},
              os.path.join(FIX, "mobilenet_v2-reference.safetensors"))
    for name, row in zip(IMAGES, logits):
        top = row.topk(3).indices.tolist()
        print(name, [cfg["label_names"][i] for i in top])
    json.dump({"images": [os.path.splitext(n)[0] + ".png" for n in IMAGES],
               "top1": [int(r.argmax()) for r in logits]},
              open(os.path.join(FIX, "mobilenet_v2-reference.json"), "w"), indent=1)


def peft_adapter(base, x):
    import copy
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(1)
    m = copy.deepcopy(base)
    m.classifier = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(1280, 3))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["features.0.0", "features.17.conv.2", "features.18.0", "features.5.conv.0.0"],
                     modules_to_save=["classifier"], init_lora_weights="gaussian")
    pm = get_peft_model(m, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    pm.eval()
    out = os.path.join(FIX, "peft", "mobilenet-lora")
    pm.save_pretrained(out)
    with torch.no_grad():
        logits = pm(x)
    save_file({"logits": logits.contiguous()}, os.path.join(FIX, "mobilenet-lora-reference.safetensors"))


def efficientnet_reference(hub):
    snap = glob.glob(os.path.join(hub, "models--finetune--efficientnet_lite0.imagenet/snapshots/*"))[0]
    cfg = json.load(open(os.path.join(snap, "config.json")))
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "efficientnet_lite_pytorch==0.1.0", "-d", tmp], check=True)
        zipfile.ZipFile(glob.glob(os.path.join(tmp, "efficientnet_lite_pytorch-0.1.0-*.whl"))[0]).extractall(tmp)
        sys.path.insert(0, tmp)
        from efficientnet_lite_pytorch import EfficientNet
        weights = os.path.join(snap, "efficientnet-lite0-57934424.pth")
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
        train_model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights,
                                                   dropout_rate=0.0, drop_connect_rate=0.0)
    to_tensor = torchvision.transforms.Compose([
        torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize(cfg["pretrained_cfg"]["mean"], cfg["pretrained_cfg"]["std"]),
    ])
    names = [os.path.splitext(n)[0] + ".png" for n in IMAGES]
    x = torch.stack([to_tensor(Image.open(os.path.join(FIX, "images", n)).convert("RGB")) for n in names])
    model.eval()
    with torch.no_grad():
        features = model._avg_pooling(model.extract_features(x)).flatten(1)
        logits = model._fc(features)
        train_model.train()
        train_logits = train_model(x)
    save_file({"logits": logits.contiguous(), "features": features.contiguous(), "train_logits": train_logits.contiguous()},
              os.path.join(FIX, "efficientnet_lite0-reference.safetensors"))
    for name, row in zip(names, logits):
        print(name, [cfg["label_names"][i] for i in row.topk(3).indices.tolist()])


def fnv1a(key):
    h = 0x811C9DC5
    for b in key.encode():
        h = ((h ^ b) * 0x01000193) % 2**32
    return h


def formula(key, shape):
    """Deterministic values in [-0.5, 0.5) scaled by the tensor's role; the Rust test has the same."""
    import numpy as np
    n = int(np.prod(shape)) if len(shape) else 1
    i = np.arange(n, dtype=np.uint64)
    u = ((i * np.uint64(2654435761) + np.uint64(fnv1a(key))) % np.uint64(2**32)).astype(np.float64) / 2**32 - 0.5
    if key.endswith("running_mean"):
        v = 0.1 * u
    elif key.endswith("running_var"):
        v = 1.0 + (u + 0.5)
    elif len(shape) == 1 and key.endswith("weight"):
        v = 1.0 + 0.2 * u
    elif len(shape) == 1:
        v = 0.1 * u
    else:
        fan_in = n // shape[0]
        v = u * 2.0 * (6.0 / fan_in) ** 0.5
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def resnet_reference():
    x = formula("input", (2, 3, 64, 64)) * 4.0
    out = {}
    for depth in (18, 50):
        model = getattr(torchvision.models, f"resnet{depth}")(num_classes=10)
        sd = {k: formula(k, tuple(v.shape)) if v.is_floating_point() else v for k, v in model.state_dict().items()}
        model.load_state_dict(sd)
        model.eval()
        with torch.no_grad():
            body = torch.nn.Sequential(*list(model.children())[:-1])
            features = body(x).flatten(1)
            out[f"resnet{depth}.features"] = features.contiguous()
            out[f"resnet{depth}.logits"] = model.fc(features).contiguous()
        print(f"resnet{depth}", out[f"resnet{depth}.logits"][0, :4].tolist(), float(features.abs().max()))
    save_file(out, os.path.join(FIX, "resnet-reference.safetensors"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--hub-cache", default=os.environ.get("HF_HUB_CACHE", os.path.expanduser("~/.cache/huggingface/hub")))
    ap.add_argument("--only", default="pth,mobilenet,efficientnet,resnet")
    args = ap.parse_args()
    parts = args.only.split(",")
    if "pth" in parts:
        pth_fixtures()
    if "mobilenet" in parts:
        mobilenet_reference(args.hub_cache)
    if "efficientnet" in parts:
        efficientnet_reference(args.hub_cache)
    if "resnet" in parts:
        resnet_reference()
