#!/usr/bin/env python3
"""A small GGUF file with one tensor per ggml block type finetune reads, and the values llama.cpp's
own Python package (`gguf`) dequantizes them to: tests/fixtures/gguf-blocks.gguf and
tests/fixtures/gguf-blocks-reference.safetensors.

The blocks are random bytes with sane f16 scales, so every code and scale bit pattern occurs.
Usage: python scripts/make_gguf_fixtures.py   (needs numpy, gguf, safetensors)
"""
import os
import numpy as np
import gguf
from gguf.quants import dequantize
from safetensors.numpy import save_file

rng = np.random.default_rng(0)
fixtures = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
T = gguf.GGMLQuantizationType
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
