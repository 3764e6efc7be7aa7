#!/usr/bin/env python3
"""transformers' reading of the real Gemma 3 270M GGUF (Q4_K_M, the asset `scripts/fetch-assets.sh
gemma3` lays out): the tokenizer on a few texts, the logits of the last position of a prompt and
the greedy continuation (20 tokens). transformers dequantizes the file to f32, as finetune does.

Outputs: tests/fixtures/gemma3-reference.json (tokenizer cases, prompt ids, greedy ids) and
tests/fixtures/gemma3-reference.safetensors (`last_logits` [262144]).

Usage: python scripts/make_gemma3_reference.py GGUF_FILE   (needs torch, transformers, gguf)
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
TEXTS = ["Hello, world!", "The capital of France is", "  leading spaces and\ttabs\nnewlines",
         "naïve café déjà vu 🤖", "<start_of_turn>user\nHi<end_of_turn>"]


def main():
    path = sys.argv[1]
    d, f = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    cases = [{"text": t, "ids": tok(t, add_special_tokens=True)["input_ids"]} for t in TEXTS]
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    prompt = cases[1]["ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
        out = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)
    greedy = out[0, len(prompt):].tolist()
    print("greedy:", repr(tok.decode(greedy)))
    with open(os.path.join(FIX, "gemma3-reference.json"), "w") as fh:
        json.dump({"gguf_sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                   "tokenizer_cases": cases, "prompt_ids": prompt, "greedy_ids": greedy,
                   "greedy_text": tok.decode(greedy)}, fh, indent=1, ensure_ascii=False)
    save_file({"last_logits": logits.contiguous()}, os.path.join(FIX, "gemma3-reference.safetensors"))


if __name__ == "__main__":
    main()
