#!/usr/bin/env python3
"""A tiny *random* Llama (grouped-query attention, untied lm_head) with transformers' logits, and
a LoRA adapter for it written by Python peft (all seven linear projections, non-zero lora_B,
lm_head in modules_to_save), with peft's logits and merge_and_unload() logits.

Outputs (under tests/fixtures/):
  tiny-llama/                      config.json + model.safetensors (LlamaForCausalLM)
  peft/llama-lora/                 adapter_config.json + adapter_model.safetensors (peft)
  tiny-llama-reference.safetensors input_ids [2, 9], logits_base, logits_lora, logits_merged

Usage: python scripts/make_llama_fixtures.py   (needs torch, transformers, peft, safetensors)
"""
import os

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
torch.manual_seed(0)
cfg = LlamaConfig(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500.0,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
model = LlamaForCausalLM(cfg).eval()
with torch.no_grad():  # non-trivial norms
    for name, p in model.named_parameters():
        if "norm" in name:
            p.add_(torch.randn_like(p) * 0.1)
model.save_pretrained(os.path.join(FIX, "tiny-llama"), safe_serialization=True)
ids = torch.randint(3, cfg.vocab_size, (2, 9))
with torch.no_grad():
    base = model(ids).logits

lcfg = LoraConfig(
    r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False, task_type="CAUSAL_LM",
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    modules_to_save=["lm_head"],
)
peft_model = get_peft_model(model, lcfg).eval()
with torch.no_grad():
    for name, p in peft_model.named_parameters():
        if "modules_to_save" in name:
            p.add_(torch.randn_like(p) * 0.05)
    lora = peft_model(ids).logits
peft_model.save_pretrained(os.path.join(FIX, "peft", "llama-lora"))
with torch.no_grad():
    merged = peft_model.merge_and_unload()(ids).logits
save_file(
    {"input_ids": ids.to(torch.int64), "logits_base": base.contiguous(), "logits_lora": lora.contiguous(),
     "logits_merged": merged.contiguous()},
    os.path.join(FIX, "tiny-llama-reference.safetensors"),
)
for extra in ["tiny-llama/generation_config.json", "peft/llama-lora/README.md"]:
    if os.path.exists(os.path.join(FIX, extra)):
        os.remove(os.path.join(FIX, extra))
print("max |lora - base|", (lora - base).abs().max().item())
