#!/usr/bin/env python3
"""A mean- or CLS-pooled classifier fine-tuned by finetune gives finetune's logits in Python.

Trains the tiny test model with `head.pooling = "mean"` and `"cls"` (full fine-tuning, and LoRA
then `finetune merge`), then computes logits for a few sentences three ways:
  - `finetune predict --json`;
  - sentence-transformers: `SentenceTransformer(model_dir).encode(texts)` (the exported directory
    is a Transformer → Pooling → Dense pipeline whose Dense is the classifier);
  - plain transformers + torch: `AutoModel` hidden states, pooled by hand, times the classifier
    weights from model.safetensors (the snippet in docs/text.md);
and checks that transformers' `AutoModelForSequenceClassification` is *not* silently used: the
config names `BertModel`, so loading it as a classifier reports newly initialised weights.

    python scripts/check_mean_pooling.py [--finetune target/release/finetune]

Needs torch, transformers, sentence-transformers. Exits non-zero on a difference above 1e-5.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "fixtures", "tiny-bert")
TEXTS = ["Great phone, the battery lasts for days.", "Terrible service and the food was cold.", "It works."]


def snippet_logits(model_dir, texts, pooling):
    """The docs/text.md snippet: transformers' encoder, pooled by hand, times the classifier."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = AutoModel.from_pretrained(model_dir).eval()
    head = load_file(os.path.join(model_dir, "model.safetensors"))
    batch = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        h = enc(**batch).last_hidden_state
    if pooling == "mean":
        m = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1)
    else:
        pooled = h[:, 0]
    return pooled @ head["classifier.weight"].T + head["classifier.bias"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--finetune", default=os.path.join(ROOT, "target", "release", "finetune"))
    args = ap.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(ROOT, "tests", "fixtures", "uci-sample.csv"), newline="") as f:
            rows = list(csv.reader(f))
        for name, part in [("train", rows[1:161]), ("validation", rows[161:])]:
            with open(os.path.join(d, f"{name}.csv"), "w", newline="") as f:
                csv.writer(f).writerows([rows[0]] + part)
        print("| pooling | method | sentence-transformers vs finetune | transformers snippet vs finetune |")
        print("|---|---|---|---|")
        for pooling in ["mean", "cls"]:
            for method in ["full", "lora"]:
                run = os.path.join(d, f"run-{pooling}-{method}")
                extra = '[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = ["query", "value"]\n' if method == "lora" else ""
                recipe = os.path.join(d, f"{pooling}-{method}.toml")
                with open(recipe, "w") as f:
                    f.write(f'method = "{method}"\nmodel = "{TINY}"\nseed = 3\noutput_dir = "{run}"\n'
                            f'[data]\ndataset = "{d}"\ntrain = "train.csv"\nvalidation = "validation.csv"\n'
                            f'max_length = 32\n[head]\npooling = "{pooling}"\n'
                            f'[training]\nepochs = 2\nbatch_size = 16\nlearning_rate = 5e-3\n{extra}')
                subprocess.run([args.finetune, "train", recipe, "--no-progress"], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                model_dir = os.path.join(run, "model")
                if method == "lora":
                    model_dir = os.path.join(d, f"merged-{pooling}")
                    subprocess.run([args.finetune, "merge", "--adapter", os.path.join(run, "adapter"),
                                    "--base", TINY, "--out", model_dir], check=True, stdout=subprocess.DEVNULL)
                out = subprocess.run([args.finetune, "predict", "--model", model_dir, "--json", *TEXTS],
                                     check=True, capture_output=True, text=True).stdout
                ours = torch.tensor([json.loads(line)["logits"] for line in out.splitlines()])
                st = torch.tensor(SentenceTransformer(model_dir, device="cpu").encode(TEXTS))
                by_hand = snippet_logits(model_dir, TEXTS, pooling)
                d_st, d_hand = (st - ours).abs().max().item(), (by_hand - ours).abs().max().item()
                ok = d_st < 1e-5 and d_hand < 1e-5
                with open(os.path.join(model_dir, "config.json")) as f:
                    arch = json.load(f)["architectures"]
                ok = ok and arch == ["BertModel"]
                failures += not ok
                print(f"| {pooling} | {method} | {d_st:.1e} | {d_hand:.1e}{'' if ok else ' FAIL ' + str(arch)} |")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
