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
    python scripts/check_peft_interop.py --tasks      # regression and multi-label (saved model and
        # LoRA adapter in transformers/peft: the same logits) and token classification (saved
        # model and TOKEN_CLS adapter: the same tag for every word)

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


def task_data(d):
    """The committed sentences as regression (+1/-1), multi-label (polarity; `long` above ten
    words) and tagged-word (capitalised words as B-CAP/I-CAP) training files."""
    with open(os.path.join(ROOT, "tests", "fixtures", "uci-sample.csv"), newline="") as f:
        rows = list(csv.reader(f))[1:]
    for name, part in [("train", rows[:160]), ("validation", rows[160:])]:
        with open(os.path.join(d, f"{name}-regression.csv"), "w", newline="") as f:
            csv.writer(f).writerows([["text", "label"]] + [[t, "1.0" if l == "positive" else "-1.0"] for t, l in part])
        with open(os.path.join(d, f"{name}-sets.csv"), "w", newline="") as f:
            csv.writer(f).writerows([["text", "label"]] + [[t, l + (";long" if len(t.split()) > 10 else "")]
                                                           for t, l in part])
        with open(os.path.join(d, f"{name}.conll"), "w") as f:
            for t, _ in part:
                words, prev = t.split(), False
                for w in words:
                    cap = w[:1].isupper()
                    f.write(f"{w}\t{('I-CAP' if prev else 'B-CAP') if cap else 'O'}\n")
                    prev = cap
                f.write("\n")


TASKS = {
    "regression": ('', "-regression.csv", '[head]\npooling = "pooler"\nproblem_type = "regression"\n', "pearson"),
    "multi-label": ('', "-sets.csv", '[head]\npooling = "pooler"\nproblem_type = "multi_label_classification"\n',
                    "micro_f1"),
    "token": ('task = "token-classification"\n', ".conll", "", "f1"),
}


def check_task(finetune, d, task, method):
    """Train `task` with `method` on tiny-bert; compare finetune's outputs with transformers'
    (full) or peft's (lora)."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification
    head, suffix, extra, metric = TASKS[task]
    run = os.path.join(d, f"run-{task}-{method}")
    lora = '[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = ["query", "value"]\n' if method == "lora" else ""
    sep = 'label_separator = ";"\n' if task == "multi-label" else ""
    text = (f'{head}method = "{method}"\nmodel = "{TINY}"\nseed = 3\noutput_dir = "{run}"\n[data]\ndataset = "{d}"\n'
            f'train = "train{suffix}"\nvalidation = "validation{suffix}"\nmax_length = 32\n{sep}{extra}'
            f'[training]\nepochs = 2\nbatch_size = 16\nlearning_rate = 5e-3\nmetric = "{metric}"\n{lora}')
    path = os.path.join(d, f"{task}-{method}.toml")
    with open(path, "w") as f:
        f.write(text)
    subprocess.run([finetune, "train", path, "--no-progress"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    args = ["--model", os.path.join(run, "model")] if method == "full" else \
        ["--model", TINY, "--adapter", os.path.join(run, "adapter")]
    out = subprocess.run([finetune, "predict", *args, "--json", *TEXTS], check=True, capture_output=True,
                         text=True).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    cls = AutoModelForTokenClassification if task == "token" else AutoModelForSequenceClassification
    if method == "full":
        model = cls.from_pretrained(os.path.join(run, "model"), attn_implementation="eager").eval()
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    else:
        notes = json.load(open(os.path.join(run, "adapter", "finetune.json")))
        labels = notes["labels"]
        base = cls.from_pretrained(TINY, num_labels=len(labels), ignore_mismatched_sizes=True,
                                   attn_implementation="eager")
        model = PeftModel.from_pretrained(base, os.path.join(run, "adapter")).eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(TINY, "tokenizer.json"))
    tok.backend_tokenizer.no_padding()
    tok.backend_tokenizer.no_truncation()
    if task == "token":
        same = True
        for t, r in zip(TEXTS, rows):
            words = t.split()
            enc = tok(words, is_split_into_words=True, return_tensors="pt")
            with torch.no_grad():
                best = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0].argmax(-1)
            tags, prev = ["O"] * len(words), None
            for i, w in enumerate(enc.word_ids()):
                if w is not None and w != prev:
                    tags[w] = labels[best[i].item()]
                prev = w
            same &= tags == [tag for _, tag in r["words"]]
        print(f"| {task} {method} | {len(TEXTS)} | {'same tags' if same else 'tags differ FAIL'} |")
        return same
    with torch.no_grad():
        theirs = torch.stack([model(**tok(t, truncation=True, max_length=32, return_tensors="pt")).logits[0]
                              for t in TEXTS])
    if task == "regression":
        ours = torch.tensor([[r["score"]] for r in rows])
    else:
        # multi-label: finetune prints sigmoid probabilities; compare them with transformers' sigmoid
        ours = torch.tensor([[r["probabilities"][l] for l in labels] for r in rows])
        theirs = torch.sigmoid(theirs)
    diff = (ours - theirs).abs().max().item()
    print(f"| {task} {method} | {len(TEXTS)} | {diff:.2e}{'' if diff < 1e-5 else ' FAIL'} |")
    return diff < 1e-5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--finetune", default=os.path.join(ROOT, "target", "release", "finetune"))
    ap.add_argument("--families", action="store_true", help="the other encoder families' fixtures")
    ap.add_argument("--tasks", action="store_true", help="regression, multi-label and token classification")
    args = ap.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory() as d:
        write_data(d)
        print("| adapter | texts | max abs logit difference (finetune vs peft) |")
        print("|---|---|---|")
        if args.tasks:
            task_data(d)
            for task in TASKS:
                for method in ["full", "lora"]:
                    failures += not check_task(args.finetune, d, task, method)
        elif args.families:
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
