#!/usr/bin/env python3
"""Load a causal-LM LoRA adapter written by `finetune train` into Python peft
(`PeftModel.from_pretrained`) on the same base (transformers reading the same GGUF file, or a
Hugging Face directory) and print its held-out loss on an SFT JSONL file, computed exactly as
finetune does (chat template rendered turn by turn, loss on assistant turns, mean over target
tokens). Equal to the `validation_after` / `test_after` loss in finetune's results.json when
the adapter loads with peft's semantics.

Without --adapter it scores the model alone, e.g. a directory written by `finetune merge`.
The chat template is the adapter's `chat_template.jinja` when it has one (a recipe's
`data.chat_template`, for a base model without its own), else --chat-template, else the model's.

Usage: python scripts/check_lm_adapter.py --gguf FILE | --model DIR  [--adapter DIR] --data FILE.jsonl
       [--chat-template FILE] [--max-length 256] [--expect LOSS]
"""
import argparse, json, math, os, sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from sft_masks import encode_chat

ap = argparse.ArgumentParser()
ap.add_argument("--gguf")
ap.add_argument("--model")
ap.add_argument("--adapter", help="omit to score the model itself (e.g. one written by finetune merge)")
ap.add_argument("--data", required=True)
ap.add_argument("--max-length", type=int, default=256)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--expect", type=float)
ap.add_argument("--chat-template")
args = ap.parse_args()
torch.set_num_threads(2)
if args.gguf:
    d, f = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    base = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
else:
    tok = AutoTokenizer.from_pretrained(args.model)
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
template = args.chat_template
if args.adapter and os.path.exists(os.path.join(args.adapter, "chat_template.jinja")):
    template = os.path.join(args.adapter, "chat_template.jinja")
if template:
    tok.chat_template = open(template, encoding="utf-8").read()
model = (PeftModel.from_pretrained(base, args.adapter) if args.adapter else base).eval()
eos = base.config.eos_token_id
eos = eos[0] if isinstance(eos, list) else eos


def encode(messages):
    return encode_chat(tok, messages, args.max_length)


rows = [encode(json.loads(l)["messages"]) for l in open(args.data, encoding="utf-8") if l.strip()]
rows = [r for r in rows if any(r[1][1:])]
total, count = 0.0, 0
with torch.no_grad():
    for s in range(0, len(rows), args.batch):
        batch = rows[s : s + args.batch]
        n = max(len(i) for i, _ in batch)
        ids = torch.full((len(batch), n), eos, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        keep = torch.zeros((len(batch), n), dtype=torch.bool)
        for b, (i, t) in enumerate(batch):
            ids[b, : len(i)] = torch.tensor(i)
            mask[b, : len(i)] = 1
            keep[b, : len(t)] = torch.tensor(t)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        k = keep[:, 1:]
        lp = torch.log_softmax(logits[k], -1)
        total += -lp.gather(1, ids[:, 1:][k][:, None]).sum().item()
        count += int(k.sum())
loss = total / count
print(json.dumps({"adapter": args.adapter, "examples": len(rows), "targets": count, "loss": loss, "perplexity": math.exp(loss)}))
if args.expect is not None:
    ok = abs(loss - args.expect) < 1e-3
    print(f"finetune reported {args.expect:.6f}, peft gives {loss:.6f}: {'MATCH' if ok else 'MISMATCH'}")
    sys.exit(0 if ok else 1)
