#!/usr/bin/env python3
"""PyTorch + transformers reference for finetune's token-classification recipes (named entities).

Reads the same recipe TOML as `finetune train` and runs the same job: the model and CoNLL split
files from the Hugging Face hub cache, words tokenized as pre-split words with the first sub-token
of each word labelled (transformers' run_ner.py), the encoder + dropout + linear head on every
token, full fine-tuning or LoRA (peft, the classifier in modules_to_save), AdamW without decay on
biases/LayerNorm, linear warmup and decay, global-norm clipping, per-epoch validation, best epoch by
the recipe's metric (seqeval entity F1), test metrics of the best epoch. Entity scores come from
seqeval itself (`pip install seqeval`).

    python scripts/reference_token_train.py recipes/minilm-wnut16-ner-full.toml [--set key=value ...]
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
from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
from transformers import AutoModel, PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_train import apply_override, hub_dir  # noqa: E402


def read_conll(path):
    sentences, words, tags = [], [], []
    for line in open(path, encoding="utf-8"):
        fields = line.split()
        if not fields:
            if words:
                sentences.append((words, tags))
            words, tags = [], []
        elif fields[0] != "-DOCSTART-":
            words.append(fields[0])
            tags.append(fields[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    with open(args.recipe, "rb") as f:
        recipe = tomllib.load(f)
    for o in args.overrides:
        apply_override(recipe, o)
    seed = recipe.get("seed", 42)
    torch.manual_seed(seed)
    data, tr, head_cfg = recipe["data"], recipe["training"], recipe.get("head", {})
    model_dir, data_dir = hub_dir(recipe["model"], "models"), hub_dir(data["dataset"], "datasets")
    splits = {k: read_conll(os.path.join(data_dir, data[k])) for k in ["train", "validation", "test"] if data.get(k)}
    labels = data.get("labels") or sorted({t for _, tags in splits["train"] for t in tags})
    label_id = {l: i for i, l in enumerate(labels)}
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))
    tok.backend_tokenizer.no_padding()
    max_len = data.get("max_length", 128)
    enc = {}
    for k, sents in splits.items():
        rows = []
        for words, tags in sents:
            e = tok(words, is_split_into_words=True, truncation=True, max_length=max_len)
            prev, lab = None, []
            for w in e.word_ids():
                lab.append(label_id[tags[w]] if w is not None and w != prev else -100)
                prev = w
            rows.append((e["input_ids"], lab))
        enc[k] = rows

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = AutoModel.from_pretrained(model_dir, add_pooling_layer=False, attn_implementation="eager")
            self.dropout = torch.nn.Dropout(head_cfg.get("dropout", 0.1))
            self.classifier = torch.nn.Linear(self.bert.config.hidden_size, len(labels))
            torch.nn.init.normal_(self.classifier.weight, std=self.bert.config.initializer_range)
            torch.nn.init.zeros_(self.classifier.bias)

        def forward(self, ids, mask):
            return self.classifier(self.dropout(self.bert(input_ids=ids, attention_mask=mask).last_hidden_state))

    model = Tagger()
    if recipe["method"] == "lora":
        from peft import LoraConfig, get_peft_model
        lc = dict(recipe["lora"])
        lc["modules_to_save"] = sorted(set(lc.get("modules_to_save", [])) | {"classifier"})
        model = get_peft_model(model, LoraConfig(**lc)).base_model.model

    def collate(split, idx):
        rows = [enc[split][i] for i in idx]
        L = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), L), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros(len(rows), L, dtype=torch.long)
        lab = torch.full((len(rows), L), -100, dtype=torch.long)
        for r, (i, l) in enumerate(rows):
            ids[r, :len(i)] = torch.tensor(i)
            mask[r, :len(i)] = 1
            lab[r, :len(l)] = torch.tensor(l)
        return ids, mask, lab

    bs, ebs, epochs, lr = tr["batch_size"], tr.get("eval_batch_size", 64), tr["epochs"], tr["learning_rate"]
    n = len(enc["train"])
    total = math.ceil(n / bs) * epochs
    warmup = tr.get("warmup_steps") or math.ceil(tr.get("warmup_ratio", 0.06) * total)
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p], "weight_decay": 0.0 if k.endswith("bias") or "LayerNorm" in k else tr.get("weight_decay", 0.01)}
              for k, p in named]
    opt = torch.optim.AdamW(groups, lr=lr)

    def evaluate(split):
        model.eval()
        gold, pred, loss, count = [], [], 0.0, 0
        with torch.no_grad():
            for b in range(0, len(enc[split]), ebs):
                idx = list(range(b, min(b + ebs, len(enc[split]))))
                ids, mask, lab = collate(split, idx)
                logits = model(ids, mask)
                keep = lab != -100
                loss += F.cross_entropy(logits[keep], lab[keep], reduction="sum").item()
                count += keep.sum().item()
                best = logits.argmax(-1)
                for r in range(len(idx)):
                    k = keep[r]
                    gold.append([labels[i] for i in lab[r][k].tolist()])
                    pred.append([labels[i] for i in best[r][k].tolist()])
        return {"loss": loss / count, "accuracy": accuracy_score(gold, pred), "precision": precision_score(gold, pred),
                "recall": recall_score(gold, pred), "f1": f1_score(gold, pred), "examples": len(enc[split])}

    metric = tr.get("metric", "f1")
    gen = torch.Generator().manual_seed(seed)
    best, best_state, history, step, t0 = None, None, [], 0, time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen).tolist()
        for b in range(0, n, bs):
            lr_now = lr * step / max(warmup, 1) if step < warmup else lr * max(0.0, 1 - (step - warmup) / max(total - warmup, 1))
            for g in opt.param_groups:
                g["lr"] = lr_now
            ids, mask, lab = collate("train", perm[b:b + bs])
            logits = model(ids, mask)
            loss = F.cross_entropy(logits.reshape(-1, len(labels)), lab.reshape(-1), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in named], tr.get("max_grad_norm", 1.0))
            opt.step()
            step += 1
        m = evaluate("validation")
        history.append({"epoch": epoch, **m})
        print(f"epoch {epoch + 1}: validation {m}", file=sys.stderr)
        better = best is None or (m[metric] < best[1] if metric == "loss" else m[metric] > best[1])
        if better:
            best = (epoch, m[metric])
            best_state = {k: p.detach().clone() for k, p in model.state_dict().items()}
    model.load_state_dict(best_state)
    report = {"framework": f"torch {torch.__version__}", "recipe": args.recipe, "overrides": args.overrides,
              "train_seconds": time.perf_counter() - t0, "best_epoch": best[0] + 1, "validation": history,
              "test": evaluate("test") if "test" in enc else None,
              "trainable_params": sum(p.numel() for _, p in named)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
