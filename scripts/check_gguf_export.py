#!/usr/bin/env python3
"""llama.cpp runs what `finetune export` writes, and agrees with finetune.

For a causal-LM LoRA adapter trained by finetune over a GGUF base:
  1. `finetune export --adapter` → a llama.cpp LoRA adapter; llama.cpp loads the base GGUF with it;
  2. `finetune export --adapter --merge --quant f32|q8_0` → merged models llama.cpp loads alone;
then, for held-out prompts (the chat template applied by finetune, the same token ids given to
both), compares llama.cpp's next-token logits with `finetune generate --json --logits` on base +
adapter, and the greedy continuations (20 tokens).

    python scripts/check_gguf_export.py --base BASE.gguf --adapter runs/NAME/adapter \
        [--finetune target/release/finetune] [--data test.jsonl]

Needs llama-cpp-python (pip builds llama.cpp) and numpy. Prints a table; exits non-zero when a
difference exceeds its tolerance: 5% of the largest logit for the adapter on the quantized base, 1e-3 relative for the F32
merge, 5% for Q8_0, 8% for the quantized base alone (the floor: llama.cpp quantizes activations to
8 bits for Q4_1 products, finetune multiplies in f32); greedy tokens are reported, not required to
match (a near-tie may flip).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [
    "What is your favorite book?",
    "Tell me about computers.",
    "Do you like music?",
    "What is the capital of France?",
]


def finetune_run(binary, base, adapter, prompt, max_new):
    cmd = [binary, "generate", "--model", base, "--prompt", prompt, "--max-new-tokens", str(max_new),
           "--json", "--logits"]
    if adapter:
        cmd += ["--adapter", adapter]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def llama_run(model, lora, ids, max_new):
    # logits_all: llama-cpp-python keeps no logits otherwise (it samples inside llama.cpp).
    kwargs = dict(model_path=model, n_ctx=512, n_threads=2, logits_all=True, verbose=False, seed=0)
    if lora:
        kwargs["lora_path"] = lora
    llm = Llama(**kwargs)
    eos = llm.token_eos()
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
    out = []
    for _ in range(max_new):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        if nxt == eos:
            break
        llm.eval([nxt])
    del llm
    return logits, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the base GGUF file the adapter was trained over")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--finetune", default=os.path.join(ROOT, "target", "release", "finetune"))
    ap.add_argument("--data", help="chat JSONL whose first user turns are the prompts (default: built-in)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=20)
    args = ap.parse_args()
    prompts = PROMPTS
    if args.data:
        prompts = []
        for line in open(args.data):
            row = json.loads(line)
            msgs = row.get("messages") or []
            user = next((m["content"] for m in msgs if m["role"] == "user"), row.get("prompt"))
            if user:
                prompts.append(user)
            if len(prompts) == args.prompts:
                break
    failures = 0
    with tempfile.TemporaryDirectory() as d:
        exports = {
            "base alone (the Q4_1 file, no adapter)": (args.base, None, 0.08, None),
            "base + adapter (llama.cpp LoRA)": (args.base, os.path.join(d, "adapter.gguf"), 0.05,
                                                ["--adapter", args.adapter]),
            "merged f32": (os.path.join(d, "merged-f32.gguf"), None, 1e-3,
                           ["--adapter", args.adapter, "--merge", "--quant", "f32"]),
            "merged q8_0": (os.path.join(d, "merged-q8_0.gguf"), None, 0.05,
                            ["--adapter", args.adapter, "--merge", "--quant", "q8_0"]),
        }
        for name, (model, lora, _, flags) in exports.items():
            if flags is None:
                continue
            out = lora or model
            subprocess.run([args.finetune, "export", "--model", args.base, *flags, "--out", out], check=True,
                           stdout=subprocess.DEVNULL)
        ours = [finetune_run(args.finetune, args.base, args.adapter, p, args.max_new) for p in prompts]
        base_only = [finetune_run(args.finetune, args.base, None, p, 1) for p in prompts]
        print("| llama.cpp runs | prompts | max abs logit diff | largest logit | relative | adapter effect (finetune) | greedy tokens equal |")
        print("|---|---|---|---|---|---|---|")
        for name, (model, lora, tol, flags) in exports.items():
            worst, scale, equal, effect = 0.0, 0.0, 0, 0.0
            for o, b in zip(ours, base_only):
                logits, greedy = llama_run(model, lora, o["prompt_ids"], args.max_new if flags else 1)
                # The base alone is compared with finetune's base alone.
                mine = np.array((o if flags else b)["next_token_logits"], dtype=np.float32)
                worst = max(worst, float(np.abs(logits - mine).max()))
                scale = max(scale, float(np.abs(mine).max()))
                effect = max(effect, float(np.abs(mine - np.array(b["next_token_logits"], dtype=np.float32)).max()))
                theirs_ids = o["ids"] if flags else b["ids"]
                n = min(len(greedy), len(theirs_ids))
                equal += greedy[:n] == theirs_ids[:n]
            rel = worst / scale
            ok = rel <= tol
            failures += not ok
            print(f"| {name} | {len(prompts)} | {worst:.4f} | {scale:.2f} | {rel:.2e}{'' if ok else ' FAIL'} "
                  f"| {effect:.3f} | {equal}/{len(prompts)} |")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
