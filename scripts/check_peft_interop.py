#!/usr/bin/env python3
"""Adapters saved by finetune load in Python peft and give finetune's logits.

For LoRA, rsLoRA (regex targets), DoRA and prompt tuning: train an adapter with `finetune train`
on the tiny test model and the committed 200 real sentences, ask `finetune predict --json` for
logits, load the same adapter with `PeftModel.from_pretrained` on `BertForSequenceClassification`
and compare logits (tolerance 1e-5). The recipes use `pooling = "pooler"`, the pooling
`BertForSequenceClassification` applies.

    python scripts/check_peft_interop.py [--finetune target/release/finetune]
    python scripts/check_peft_interop.py --families   # the RoBERTa, XLM-RoBERTa, DistilBERT and
        # ELECTRA fixtures (tests/fixtures/encoders): LoRA and prompt tuning through each family's
        # own *ForSequenceClassification head (AutoModelForSequenceClassification)

Needs torch, transformers and peft. Exits non-zero on a mismatch.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification, PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "fixtures", "tiny-bert")
TEXTS = [
    "Great phone, the battery lasts for days.",
    "Terrible service and the food was cold.",
    "It works.",
    "I would not recommend this movie to anyone, it was far too long and boring.",
]
VARIANTS = {
    "lora": '[lora]\nr = 4\nlora_alpha = 8\nlora_dropout = 0.1\ntarget_modules = ["query", "value"]\n',
    "rslora": '[lora]\nr = 4\nlora_alpha = 8\nuse_rslora = true\ntarget_modules = ".*\\\\.(key|output\\\\.dense)"\n'
              'init_lora_weights = "gaussian"\n',
    "dora": '[lora]\nr = 4\nlora_alpha = 8\nuse_dora = true\ntarget_modules = ["query", "value", "intermediate.dense"]\n',
    "prompt": '[prompt_tuning]\nnum_virtual_tokens = 4\ninit = "text"\ninit_text = "review sentiment"\n',
    # Every peft option finetune implements (issue 23), trained by finetune, loaded by peft.
    "all-linear": '[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = "all-linear"\n',
    "patterns": '[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = ["query", "key", "value"]\n'
                '[lora.rank_pattern]\nvalue = 2\n"layer\\\\.1\\\\.attention\\\\.self\\\\.query" = 6\n'
                '[lora.alpha_pattern]\nkey = 3\nquery = 16\n',
    "layers": '[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = ["query", "value", "dense"]\n'
              'layers_to_transform = [1]\nlayers_pattern = "layer"\n',
    "exclude": '[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = ".*\\\\.dense"\nexclude_modules = ["intermediate.dense"]\n',
    "bias-all": '[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = ["query", "value"]\nbias = "all"\n',
    "bias-lora-only": '[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = ["query", "value"]\nbias = "lora_only"\n',
}


def write_data(d):
    with open(os.path.join(ROOT, "tests", "fixtures", "uci-sample.csv"), newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    for name, part in [("train", body[:160]), ("validation", body[160:])]:
        with open(os.path.join(d, f"{name}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(part)


FAMILY_VARIANTS = {
    "lora": '[lora]\nr = 4\nlora_alpha = 8\nlora_dropout = 0.1\ntarget_modules = ["query", "value", "q_lin", "v_lin"]\n',
    "prompt": VARIANTS["prompt"],
    # A whole fine-tuned model: saved under the family's keys, loaded by transformers alone.
    "full": "",
}


def recipe(d, name, model, variants, run):
    method = {"prompt": "prompt-tuning", "full": "full"}.get(name, "lora")
    text = f'''method = "{method}"
model = "{model}"
seed = 3
output_dir = "{d}/run-{run}"
[data]
dataset = "{d}"
train = "train.csv"
validation = "validation.csv"
max_length = 32
[head]
pooling = "pooler"
[training]
epochs = 2
batch_size = 16
learning_rate = 5e-3
{variants[name]}'''
    path = os.path.join(d, f"{run}.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def check(finetune, d, label, model_dir, name, variants, model_class):
    """Train adapter `name` on `model_dir`, predict with finetune and with peft; True if equal."""
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))
    tok.backend_tokenizer.no_padding()
    tok.backend_tokenizer.no_truncation()
    run = f"{label}-{name}"
    subprocess.run([finetune, "train", recipe(d, name, model_dir, variants, run), "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if name == "full":
        merged = os.path.join(d, f"run-{run}", "model")
        out = subprocess.run([finetune, "predict", "--model", merged, "--json", *TEXTS],
                             check=True, capture_output=True, text=True).stdout
        model = model_class.from_pretrained(merged, attn_implementation="eager").eval()
    else:
        adapter = os.path.join(d, f"run-{run}", "adapter")
        out = subprocess.run([finetune, "predict", "--model", model_dir, "--adapter", adapter, "--json", *TEXTS],
                             check=True, capture_output=True, text=True).stdout
        n = len(json.loads(out.splitlines()[0])["logits"])
        base = model_class.from_pretrained(model_dir, num_labels=n, ignore_mismatched_sizes=True,
                                           attn_implementation="eager")
        model = PeftModel.from_pretrained(base, adapter).eval()
    ours = torch.tensor([json.loads(line)["logits"] for line in out.splitlines()])
    theirs = []
    with torch.no_grad():
        for t in TEXTS:
            enc = tok(t, truncation=True, max_length=32, return_tensors="pt")
            if model.config.model_type == "distilbert":
                enc.pop("token_type_ids", None)
            theirs.append(model(**enc).logits[0])
    diff = (ours - torch.stack(theirs)).abs().max().item()
    ok = diff < 1e-5
    print(f"| {label} {name} | {len(TEXTS)} | {diff:.2e}{'' if ok else ' FAIL'} |")
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--finetune", default=os.path.join(ROOT, "target", "release", "finetune"))
    ap.add_argument("--families", action="store_true", help="the other encoder families' fixtures")
    args = ap.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory() as d:
        write_data(d)
        print("| adapter | texts | max abs logit difference (finetune vs peft) |")
        print("|---|---|---|")
        if args.families:
            for family in ["tiny-roberta", "tiny-xlm-roberta", "tiny-distilbert", "tiny-electra"]:
                model_dir = os.path.join(ROOT, "tests", "fixtures", "encoders", family)
                for name in FAMILY_VARIANTS:
                    failures += not check(args.finetune, d, family, model_dir, name, FAMILY_VARIANTS,
                                          AutoModelForSequenceClassification)
        else:
            for name in VARIANTS:
                failures += not check(args.finetune, d, "tiny-bert", TINY, name, VARIANTS,
                                      BertForSequenceClassification)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
