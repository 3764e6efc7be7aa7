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
    python scripts/check_gguf_export.py --tiny-families [--finetune ...]

`--tiny-families` instead exports the tiny Llama, Qwen2 and Qwen3 fixtures (made by
transformers; a byte-level test tokenizer added) as f32 GGUF under their own llama.cpp
architectures and compares llama.cpp's logits with transformers' (tolerance 1e-4); and checks
that llama.cpp reads the GPT-2 and Phi-3 fixture GGUFs (tests/fixtures/decoders/tiny-*.gguf, which
finetune's tests read) as transformers reads the checkpoints.

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


def tiny_families(binary):
    """Tiny transformers fixtures → finetune export → llama.cpp, against transformers' logits."""
    import shutil
    import torch
    from transformers import AutoModelForCausalLM
    tokens = ["<pad>", "<s>", "</s>", "\u0120"] + [chr(c) for c in range(33, 125)]
    special = lambda i, c: {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                            "normalized": False, "special": True}
    tok = {"version": "1.0", "truncation": None, "padding": None,
           "added_tokens": [special(0, "<pad>"), special(1, "<s>"), special(2, "</s>")], "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
           "post_processor": None,
           "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                     "vocab": {t: i for i, t in enumerate(tokens)}, "merges": []}}
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    failures = 0
    print("| family | llama.cpp vs transformers, max abs logit diff | largest logit |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for name, src in [("llama", "tiny-llama"), ("qwen2", "decoders/tiny-qwen2"), ("qwen3", "decoders/tiny-qwen3")]:
            model = os.path.join(d, name)
            os.makedirs(model)
            for f in ["config.json", "model.safetensors"]:
                shutil.copy(os.path.join(fixtures, src, f), model)
            with open(os.path.join(model, "tokenizer.json"), "w") as f:
                json.dump(tok, f)
            out = os.path.join(d, f"{name}.gguf")
            subprocess.run([binary, "export", "--model", model, "--quant", "f32", "--out", out], check=True,
                           stdout=subprocess.DEVNULL)
            ids = [5, 17, 33, 60, 3, 91, 40, 12, 8]
            hf = AutoModelForCausalLM.from_pretrained(model).eval()
            with torch.no_grad():
                want = hf(torch.tensor([ids])).logits[0].numpy()
            llm = Llama(model_path=out, n_ctx=64, n_threads=2, logits_all=True, verbose=False)
            llm.eval(ids)
            diff = float(np.abs(np.array(llm.scores[:len(ids)]) - want).max())
            ok = diff < 1e-4
            failures += not ok
            print(f"| {name} | {diff:.1e}{'' if ok else ' FAIL'} | {float(np.abs(want).max()):.2f} |")
    # Reading, not writing: the tiny GPT-2 and Phi-3 as llama.cpp's converter lays them out (the
    # files finetune's test `gpt2_and_phi3_gguf_equal_the_hugging_face_checkpoints` reads).
    ids = [5, 17, 33, 60, 3, 91, 40, 12, 8]
    for name in ["tiny-gpt2", "tiny-phi3"]:
        hf = AutoModelForCausalLM.from_pretrained(os.path.join(fixtures, "decoders", name)).eval()
        with torch.no_grad():
            want = hf(torch.tensor([ids])).logits[0].numpy()
        llm = Llama(model_path=os.path.join(fixtures, "decoders", f"{name}.gguf"), n_ctx=64, n_threads=2,
                    logits_all=True, verbose=False)
        llm.eval(ids)
        diff = float(np.abs(np.array(llm.scores[:len(ids)]) - want).max())
        failures += diff >= 1e-4
        print(f"| {name} (fixture GGUF, read) | {diff:.1e}{'' if diff < 1e-4 else ' FAIL'} | {float(np.abs(want).max()):.2f} |")
    return failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny-families", action="store_true")
    ap.add_argument("--base", help="the base GGUF file the adapter was trained over")
    ap.add_argument("--adapter")
    ap.add_argument("--finetune", default=os.path.join(ROOT, "target", "release", "finetune"))
    ap.add_argument("--data", help="chat JSONL whose first user turns are the prompts (default: built-in)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=20)
    args = ap.parse_args()
    if args.tiny_families:
        sys.exit(1 if tiny_families(args.finetune) else 0)
    if not (args.base and args.adapter):
        ap.error("--base and --adapter are needed (or --tiny-families)")
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
