#!/usr/bin/env python3
"""A small GGUF file with one tensor per ggml block type finetune reads, and the values llama.cpp's
own Python package (`gguf`) dequantizes them to: tests/fixtures/gguf-blocks.gguf and
tests/fixtures/gguf-blocks-reference.safetensors.

The blocks are random bytes with sane f16 scales, so every code and scale bit pattern occurs.

With `spm`, instead: a Llama-style SentencePiece vocabulary in GGUF metadata
(`tokenizer.ggml.model = "llama"`: pieces with scores, byte tokens, control and user-defined
tokens, no merges — as Llama 2 / TinyLlama / Mistral v0.1 files carry it) in
tests/fixtures/llama-spm-tokenizer.gguf, and the ids and decodings of transformers' GGUF loader
(`AutoTokenizer.from_pretrained(..., gguf_file=...)`, which rebuilds the merges from the scores)
in tests/fixtures/llama-spm-tokenizer-reference.json. No real file of this kind is in a registry
package (see docs/ASSETS.md); the vocabulary is small and made up, the converter is transformers'.

With `bpe`: byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`) with the pre-tokenizers
of Qwen2 (`tokenizer.ggml.pre = "qwen2"`: digits one by one) and Llama 3 (`"llama-bpe"`: digits in
threes), a few merges that tell them apart, and transformers' ids:
tests/fixtures/bpe-<pre>-tokenizer.gguf and tests/fixtures/bpe-tokenizer-reference.json.

Usage: python scripts/make_gguf_fixtures.py [spm|bpe]   (needs numpy, gguf, safetensors; spm/bpe: transformers)
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf.quants import dequantize
from safetensors.numpy import save_file

T = gguf.GGMLQuantizationType
fixtures = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")


def blocks():
    rng = np.random.default_rng(0)
    rows, cols = 4, 512
    writer = gguf.GGUFWriter(os.path.join(fixtures, "gguf-blocks.gguf"), "llama")
    reference = {}
    for qtype, scale_offsets in [
        (T.Q4_0, [0]),
        (T.Q4_1, [0, 2]),
        (T.Q8_0, [0]),
        (T.Q4_K, [0, 2]),
        (T.Q6_K, [208]),
    ]:
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n_blocks = rows * cols // block_size
        raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
        for off in scale_offsets:  # replace the f16 scales by small normal numbers
            scales = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
            raw[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
        raw = raw.reshape(rows, cols // block_size * type_size)
        name = qtype.name.lower()
        writer.add_tensor(name, raw, raw_dtype=qtype)
        reference[name] = dequantize(raw, qtype).astype(np.float32).reshape(rows, cols)
    f16 = (rng.standard_normal((rows, cols)) * 0.1).astype(np.float16)
    writer.add_tensor("f16", f16)
    reference["f16"] = f16.astype(np.float32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    save_file(reference, os.path.join(fixtures, "gguf-blocks-reference.safetensors"))


def tokenizer_only_writer(path):
    """A GGUF writer for a file that carries a tokenizer and the least `llama` metadata a loader
    reads (no tensors)."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_layer_norm_rms_eps(1e-5)
    return w


SPM_TEXTS = ["Hello world", "hello, the world!", "  leading spaces", "in the <|user|> turn", "naïve ü", "the\tend\n"]


def spm():
    from transformers import AutoTokenizer
    pieces = ["\u2581", "e", "t", "h", "l", "o", "w", "r", "d", "n", "i", "a", "s", ",", "!", "\u2581t", "he",
              "\u2581the", "\u2581a", "in", "\u2581in", "er", "\u2581w", "or", "ld", "\u2581wor", "\u2581world",
              "ll", "llo", "\u2581he", "\u2581hello", "\u2581H", "\u2581Hello", "en", "\u2581en", "\u2581end", "ea",
              "ad", "\u2581l", "\u2581le", "\u2581lead", "ing", "\u2581s", "sp", "ac", "es", "\u2581\u2581", "u", "rn",
              "\u2581tu", "\u2581turn", "\u00ef", "ve", "\u2581na"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces + ["<|user|>", "<|end|>"]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces) + [4, 3]
    # Scores: pieces best first (as sentencepiece writes them), with a tie to exercise the order.
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i if i != 7 else 6) for i in range(len(pieces))] + [0.0, 0.0]
    path = os.path.join(fixtures, "llama-spm-tokenizer.gguf")
    w = tokenizer_only_writer(path)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = AutoTokenizer.from_pretrained(fixtures, gguf_file="llama-spm-tokenizer.gguf")
    cases = []
    for text in SPM_TEXTS:
        ids = tok(text)["input_ids"]
        cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)})
        print(repr(text), ids, repr(cases[-1]["decoded"]))
    with open(os.path.join(fixtures, "llama-spm-tokenizer-reference.json"), "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)


BPE_TEXTS = ["12345 apples", "it's 2024!\n", "Hello  world\t99", "x=1234567;", "don't stop"]


def bpe():
    from transformers import AutoTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    alphabet = list(bytes_to_unicode().values())
    merges = ["1 2", "12 3", "4 5", "\u0120 a", "p p", "\u0120a pp", "l e", "le s", "' s", "' t", "\u0120 w", "o r",
              "\u0120w or", "l d", "\u0120wor ld", "H e", "l l", "He ll", "Hell o", "9 9", "\u0120 s", "t o",
              "\u0120s to", "d o", "do n"]
    tokens = alphabet + ["".join(m.split(" ")) for m in merges] + ["<|endoftext|>"]
    types = [1] * (len(tokens) - 1) + [3]
    reference = {}
    for pre in ["qwen2", "llama-bpe"]:
        name = f"bpe-{pre}-tokenizer.gguf"
        w = tokenizer_only_writer(os.path.join(fixtures, name))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_eos_token_id(len(tokens) - 1)
        w.add_bos_token_id(len(tokens) - 1)
        w.add_add_bos_token(False)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tok = AutoTokenizer.from_pretrained(fixtures, gguf_file=name)
        reference[pre] = [{"text": t, "ids": tok(t)["input_ids"]} for t in BPE_TEXTS]
        for case in reference[pre]:
            print(pre, repr(case["text"]), case["ids"])
    with open(os.path.join(fixtures, "bpe-tokenizer-reference.json"), "w") as f:
        json.dump(reference, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    {"spm": spm, "bpe": bpe}.get((sys.argv[1:] or ["blocks"])[0], blocks)()
