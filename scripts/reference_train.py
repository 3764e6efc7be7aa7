#!/usr/bin/env python3
"""PyTorch + transformers reference for finetune's text-classification recipes.

Reads the same recipe TOML as `finetune train` and runs the same job: the same model files and
split files (resolved in the Hugging Face hub cache), the same tokenizer settings (max_length,
truncation, dynamic padding), the same model (encoder + pooling + dropout + linear head), the same
method (feature-extraction / full / transfer with gradual unfreezing and layer-wise LR decay),
AdamW with no decay on biases/LayerNorm, linear/cosine warmup schedule, global-norm clipping,
per-epoch validation, best-epoch selection on the recipe's metric, early stopping, test accuracy.

    python scripts/reference_train.py recipes/minilm-movie-full.toml [--set key=value ...] [--json]

Needs torch and transformers (not installed by the project). Prints a JSON report.
"""
import argparse
import json
import math
import os
import sys
import time
import tomllib

import torch
import torch.nn.functional as F
from transformers import BertModel, PreTrainedTokenizerFast


def apply_override(recipe, assignment):
    key, raw = assignment.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    node = recipe
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def hub_dir(spec, kind):
    if os.path.isdir(os.path.expanduser(spec)):
        return os.path.expanduser(spec)
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    root = os.path.join(cache, f"{kind}--{spec.replace('/', '--')}")
    with open(os.path.join(root, "refs", "main")) as f:
        return os.path.join(root, "snapshots", f.read().strip())


def read_split(path, text_col, label_col, pair_col=None):
    """(text, label) rows, or ((text, second text), label) with a pair column."""
    import csv
    rows = []
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    else:
        with open(path, newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ","))
    for r in records:
        text = (r[text_col], r[pair_col]) if pair_col else r[text_col]
        rows.append((text, str(r[label_col]).strip()))
    return rows


class Classifier(torch.nn.Module):
    def __init__(self, model_dir, num_labels, pooling, dropout, quantization=None):
        super().__init__()
        extra = {}
        if quantization:
            # QLoRA as people run it: transformers + bitsandbytes 4-bit linear layers.
            from transformers import BitsAndBytesConfig
            extra["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=quantization.get("type", "nf4"),
                bnb_4bit_use_double_quant=quantization.get("double_quant", True),
                bnb_4bit_compute_dtype=torch.float32)
            extra["device_map"] = "cpu"
        self.bert = BertModel.from_pretrained(model_dir, add_pooling_layer=(pooling == "pooler"),
                                              attn_implementation="eager", **extra)
        self.pooling = pooling
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(self.bert.config.hidden_size, num_labels)
        torch.nn.init.normal_(self.classifier.weight, std=self.bert.config.initializer_range)
        torch.nn.init.zeros_(self.classifier.bias)

    def features(self, ids, types, mask):
        out = self.bert(input_ids=ids, token_type_ids=types, attention_mask=mask)
        h = out.last_hidden_state
        if self.pooling == "cls":
            return h[:, 0]
        if self.pooling == "pooler":
            return out.pooler_output
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def head(self, feats):
        return self.classifier(self.dropout(feats))


def pearson(x, y):
    x, y = x - x.mean(), y - y.mean()
    d = (x.pow(2).sum() * y.pow(2).sum()).sqrt()
    return (x * y).sum().item() / d.item() if d > 0 else 0.0


def ranks(v):
    """1-based ranks, ties given their mean rank (SciPy's rankdata)."""
    order = torch.argsort(v, stable=True)
    out = torch.zeros_like(v)
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        out[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return out


def groups_top_down(num_layers):
    return ["head"] + [f"layer.{i}" for i in reversed(range(num_layers))] + ["embeddings"]


def group_of(name):
    if name == "prompt" or ".lora_" in name:
        return "head"
    if name.startswith("bert.encoder.layer."):
        return "layer." + name.split(".")[3]
    if name.startswith("bert.embeddings."):
        return "embeddings"
    return "head"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    with open(args.recipe, "rb") as f:
        recipe = tomllib.load(f)
    for o in args.overrides:
        apply_override(recipe, o)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed = recipe.get("seed", 42)
    torch.manual_seed(seed)
    method = recipe["method"]
    data, tr, head_cfg = recipe["data"], recipe["training"], recipe.get("head", {})
    transfer = recipe.get("transfer", {})
    model_dir = hub_dir(recipe["model"], "models")
    data_dir = hub_dir(data["dataset"], "datasets")
    text_col, label_col = data.get("text_column", "text"), data.get("label_column", "label")
    pair_col = data.get("text_pair_column")
    splits = {k: read_split(os.path.join(data_dir, data[k]), text_col, label_col, pair_col)
              for k in ["train", "validation", "test"] if data.get(k)}
    regression = head_cfg.get("problem_type") == "regression"
    labels = ["LABEL_0"] if regression else data.get("labels") or sorted({l for _, l in splits["train"]})
    label_id = {l: i for i, l in enumerate(labels)}

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))
    tok.pad_token = "[PAD]"
    max_len = data.get("max_length", 128)
    if pair_col:
        tokenized = {k: tok([t for (t, _), _ in v], [p for (_, p), _ in v], truncation=True, max_length=max_len,
                         return_token_type_ids=True)
                     for k, v in splits.items()}
    else:
        tokenized = {k: tok([t for t, _ in v], truncation=True, max_length=max_len, return_token_type_ids=True)
                     for k, v in splits.items()}
    enc = {k: v["input_ids"] for k, v in tokenized.items()}
    enc_types = {k: v["token_type_ids"] for k, v in tokenized.items()}
    if regression:
        ys = {k: torch.tensor([float(l) for _, l in v]) for k, v in splits.items()}
    else:
        ys = {k: torch.tensor([label_id[l] for _, l in v]) for k, v in splits.items()}

    def loss_of(logits, y, reduction="mean"):
        # transformers' *ForSequenceClassification: MSE of the one output for "regression".
        if regression:
            return F.mse_loss(logits.squeeze(-1), y, reduction=reduction)
        return F.cross_entropy(logits, y, reduction=reduction)

    def collate(split, idx):
        seqs = [enc[split][i] for i in idx]
        L = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), L, dtype=torch.long)
        types = torch.zeros(len(seqs), L, dtype=torch.long)
        mask = torch.zeros(len(seqs), L, dtype=torch.long)
        for r, (s, i) in enumerate(zip(seqs, idx)):
            ids[r, :len(s)] = torch.tensor(s)
            types[r, :len(s)] = torch.tensor(enc_types[split][i])
            mask[r, :len(s)] = 1
        return ids, types, mask

    model = Classifier(model_dir, len(labels), head_cfg.get("pooling", "mean"), head_cfg.get("dropout", 0.1),
                       recipe.get("quantization"))
    n_layers = model.bert.config.num_hidden_layers
    prompt = None
    if method == "lora":
        # Python peft on the same module tree; the new head trains in full (modules_to_save).
        from peft import LoraConfig, get_peft_model
        lc = dict(recipe["lora"])
        lc.setdefault("modules_to_save", [])
        if "classifier" not in lc["modules_to_save"]:
            lc["modules_to_save"].append("classifier")
        model = get_peft_model(model, LoraConfig(**lc)).base_model.model
    elif method == "prompt-tuning":
        # peft's prompt tuning only wraps transformers' *ForSequenceClassification models; the same
        # semantics by hand: prompt rows before the word embeddings, mask ones, token types zeros.
        pc = recipe["prompt_tuning"]
        emb = model.bert.embeddings.word_embeddings.weight
        if pc.get("init", "random") == "text":
            ids = tok(pc["init_text"], add_special_tokens=False)["input_ids"]
            rows = [ids[i % len(ids)] for i in range(pc["num_virtual_tokens"])]
            prompt = torch.nn.Parameter(emb[rows].detach().clone())
        else:
            prompt = torch.nn.Parameter(torch.randn(pc["num_virtual_tokens"], emb.shape[1]))
        model.register_parameter("prompt", prompt)
        inner_features = model.features

        def prompted(ids, types, mask):
            b, n = ids.shape[0], prompt.shape[0]
            words = torch.cat([prompt.unsqueeze(0).expand(b, -1, -1), model.bert.embeddings.word_embeddings(ids)], 1)
            types = torch.cat([torch.zeros(b, n, dtype=types.dtype), types], 1)
            mask = torch.cat([torch.ones(b, n, dtype=mask.dtype), mask], 1)
            out = model.bert(inputs_embeds=words, token_type_ids=types, attention_mask=mask)
            h = out.last_hidden_state
            if model.pooling == "cls":
                return h[:, 0]
            if model.pooling == "pooler":
                return out.pooler_output
            m = mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

        model.features = prompted
        del inner_features
    order = groups_top_down(n_layers)
    bs, ebs = tr["batch_size"], tr.get("eval_batch_size", 64)
    accum = tr.get("grad_accum_steps", 1)
    epochs = tr["epochs"]
    n = len(splits["train"])
    steps_per_epoch = math.ceil(math.ceil(n / bs) / accum)
    total = steps_per_epoch * epochs
    if tr.get("max_steps"):
        total = min(total, tr["max_steps"])
    warmup = tr.get("warmup_steps") or math.ceil(tr.get("warmup_ratio", 0.06) * total)
    schedule = tr.get("schedule", "linear")
    lr = tr["learning_rate"]
    decay = transfer.get("layer_lr_decay", 1.0) if method == "transfer" else 1.0

    def lr_at(step):
        if step < warmup:
            return lr * step / max(warmup, 1)
        p = min((step - warmup) / max(total - warmup, 1), 1.0)
        if schedule == "constant":
            return lr
        if schedule == "cosine":
            return lr * 0.5 * (1 + math.cos(math.pi * p))
        return lr * max(0.0, 1 - p)

    # Feature extraction: the encoder runs once over every split, then only the head trains.
    feature_seconds = None
    feats = None
    if method == "feature-extraction":
        t0 = time.perf_counter()
        model.eval()
        feats = {}
        with torch.no_grad():
            for k in splits:
                idx = sorted(range(len(enc[k])), key=lambda i: -len(enc[k][i]))
                out = torch.zeros(len(idx), model.bert.config.hidden_size)
                for b in range(0, len(idx), ebs):
                    bi = idx[b:b + ebs]
                    out[bi] = model.features(*collate(k, bi))
                feats[k] = out
        feature_seconds = time.perf_counter() - t0
        for p in model.bert.parameters():
            p.requires_grad_(False)

    def unfrozen(epoch, step):
        if method == "full":
            return len(order)
        if method == "feature-extraction":
            return 1
        k = 1 + transfer.get("trainable_layers", 0)
        if transfer.get("unfreeze_every_epochs"):
            k += epoch // transfer["unfreeze_every_epochs"]
        elif transfer.get("unfreeze_every_steps"):
            k += step // transfer["unfreeze_every_steps"]
        return min(k, len(order))

    named = list(model.named_parameters())
    param_groups = []
    for name, p in named:
        depth = order.index(group_of(name))
        no_decay = name.endswith("bias") or "LayerNorm" in name
        param_groups.append({"params": [p], "name": name, "scale": decay ** depth,
                             "weight_decay": 0.0 if no_decay else tr.get("weight_decay", 0.01)})
    opt = torch.optim.AdamW(param_groups, lr=lr, betas=(tr.get("adam_beta1", 0.9), tr.get("adam_beta2", 0.999)),
                            eps=tr.get("adam_epsilon", 1e-8))

    peft_trainable = {name for name, p in named if p.requires_grad} if method == "lora" else None

    def set_trainable(k):
        allowed = set(order[:k])
        for name, p in named:
            if method == "feature-extraction":
                p.requires_grad_(not name.startswith("bert."))
            elif method == "lora":
                p.requires_grad_(name in peft_trainable)
            elif method == "prompt-tuning":
                p.requires_grad_(name == "prompt" or name.startswith("classifier."))
            else:
                p.requires_grad_(group_of(name) in allowed)

    def logits_for(split, idx):
        if feats is not None:
            return model.head(feats[split][idx])
        # recipe `precision = "bf16"`: PyTorch's autocast (bf16 products, f32 weights), like finetune's.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.get("precision", "f32") == "bf16"):
            return model.head(model.features(*collate(split, idx))).float()

    def evaluate(split):
        model.eval()
        idx = sorted(range(len(splits[split])), key=lambda i: -len(enc[split][i]))
        preds = torch.zeros(len(idx), dtype=torch.float if regression else torch.long)
        loss = 0.0
        with torch.no_grad():
            for b in range(0, len(idx), ebs):
                bi = idx[b:b + ebs]
                lg = logits_for(split, bi)
                loss += loss_of(lg, ys[split][bi], reduction="sum").item()
                preds[bi] = lg.squeeze(-1) if regression else lg.argmax(1)
        y = ys[split]
        if regression:
            return {"loss": loss / len(idx), "pearson": pearson(preds.double(), y.double()),
                    "spearman": pearson(ranks(preds.double()), ranks(y.double())), "examples": len(idx)}
        acc = (preds == y).float().mean().item()
        f1s = []
        for c in range(len(labels)):
            tp = ((preds == c) & (y == c)).sum().item()
            fp = ((preds == c) & (y != c)).sum().item()
            fn = ((preds != c) & (y == c)).sum().item()
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        return {"loss": loss / len(idx), "accuracy": acc, "macro_f1": sum(f1s) / len(f1s), "examples": len(idx)}

    metric = tr.get("metric", "accuracy")
    patience = (tr.get("early_stopping") or {}).get("patience")
    min_delta = (tr.get("early_stopping") or {}).get("min_delta", 0.0)
    best, best_state, bad = None, None, 0
    step, train_seconds, epoch_seconds = 0, 0.0, []
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen).tolist()
        if tr.get("group_by_length"):
            # transformers' LengthGroupedSampler: mega-batches of 50 batches sorted by length.
            perm = [i for m in range(0, n, 50 * bs)
                    for i in sorted(perm[m:m + 50 * bs], key=lambda i: -len(enc["train"][i]))]
        batches = [perm[i:i + bs] for i in range(0, n, bs)]
        t_epoch = time.perf_counter()
        for g in range(0, len(batches), accum):
            group = batches[g:g + accum]
            set_trainable(unfrozen(epoch, step))
            model.train()
            if method == "feature-extraction":
                model.bert.eval()
            cur = lr_at(step)
            for pg in opt.param_groups:
                pg["lr"] = cur * pg["scale"]
            opt.zero_grad(set_to_none=True)
            total_ex = sum(len(b) for b in group)
            for b in group:
                loss = loss_of(logits_for("train", b), ys["train"][b]) * (len(b) / total_ex)
                loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None],
                                           tr.get("max_grad_norm", 1.0))
            opt.step()
            step += 1
            if tr.get("max_steps") and step >= tr["max_steps"]:
                break
        epoch_seconds.append(time.perf_counter() - t_epoch)
        train_seconds += epoch_seconds[-1]
        if "validation" in splits:
            m = evaluate("validation")
            history.append({"epoch": epoch, **m})
            print(f"epoch {epoch + 1}: validation {m}", file=sys.stderr)
            v = m[metric]
            better = best is None or (v > best[1] + min_delta if metric != "loss" else v < best[1] - min_delta)
            if better:
                best, bad = (epoch, v, m), 0
                best_state = {k: p.detach().clone() for k, p in model.named_parameters()}
            else:
                bad += 1
            if patience and bad >= patience:
                break
        if tr.get("max_steps") and step >= tr["max_steps"]:
            break
    if best_state is not None:
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.data.copy_(best_state[k])
    test = evaluate("test") if "test" in splits else None
    trainable = sum(p.numel() for name, p in named if p.requires_grad)
    report = {
        "framework": f"torch {torch.__version__}",
        "trainable_params": trainable, "threads": torch.get_num_threads(), "method": method,
        "precision": recipe.get("precision", "f32"),
        "recipe": args.recipe, "overrides": args.overrides, "optimizer_steps": step,
        "train_seconds": train_seconds, "epoch_seconds": epoch_seconds, "feature_seconds": feature_seconds,
        "best_epoch": best[0] + 1 if best else None, "validation": history, "test": test,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
