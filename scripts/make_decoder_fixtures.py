#!/usr/bin/env python3
"""Tiny *random* decoders of the families finetune reads besides Llama, made by transformers' own
classes, with transformers' logits and greedy continuations (no real checkpoint of these
families is in a registry package yet; see docs/ASSETS.md).

Families (each: vocab 96, hidden 32, 2 layers, 4 query / 2 key-value heads, non-trivial norms):
  tiny-qwen2      Qwen2ForCausalLM: q/k/v biases (o_proj none), tied embeddings
  tiny-qwen3      Qwen3ForCausalLM: q/k RMSNorm per head, head_dim 16 (≠ hidden / heads)
  tiny-mistral    MistralForCausalLM: sliding window of 4 positions over a 12-token input
  tiny-llama3     LlamaForCausalLM with rope_type "llama3" scaling (factor 8, original context 16)
  tiny-llama-linear  LlamaForCausalLM with rope_type "linear" (factor 4)
  tiny-phi3       Phi3ForCausalLM: fused qkv_proj and gate_up_proj, RoPE on half of each head
  tiny-gemma3     Gemma3ForCausalLM: scaled embeddings, (1 + w) norms around attention and MLP, GeGLU,
                  q/k norms, query_pre_attn_scalar, sliding and full layers with their own RoPE
                  bases, final logit soft-capping
  tiny-gpt2       GPT2LMHeadModel (vocab 96, n_embd 32, 2 layers, 4 heads, 64 positions): LayerNorm,
                  learned positions, Conv1D c_attn / c_proj / c_fc, tied embeddings; also as llama.cpp's
                  converter writes it (tiny-gpt2.gguf, f32); with a peft LoRA
                  adapter on c_attn, c_proj and c_fc (random B; peft sets fan_in_fan_out) and peft's
                  logits (tests/fixtures/peft/gpt2-lora, gpt2-lora.*)

Outputs (under tests/fixtures/decoders/): <name>/config.json + model.safetensors, and
decoders-reference.safetensors: <name>.input_ids [2, 12], <name>.logits [2, 12, 96],
<name>.greedy [1, 8] (greedy continuation of row 0, KV cache on); and a peft prompt-tuning
adapter for tiny-llama (tests/fixtures/peft/llama-prompt) with peft's logits of the 12 text
positions (llama-prompt.*).

Also tiny-phi3.gguf: tiny-phi3 as llama.cpp's converter writes it (f32).

Usage: python scripts/make_decoder_fixtures.py [gpt2|phi3-gguf]   (needs torch, transformers, peft,
safetensors, gguf). With `gpt2` only tiny-gpt2 and its adapter are (re)made, with `phi3-gguf` only
tiny-phi3.gguf; the other fixtures stay as committed.
"""
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Phi3Config,
                          Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "decoders")
COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, bos_token_id=1,
              eos_token_id=2, pad_token_id=0)
FAMILIES = {
    "tiny-qwen2": (Qwen2ForCausalLM, Qwen2Config(**COMMON, rope_theta=1000.0, tie_word_embeddings=True)),
    "tiny-qwen3": (Qwen3ForCausalLM, Qwen3Config(**COMMON, head_dim=16, rope_theta=1000.0, tie_word_embeddings=False)),
    "tiny-mistral": (MistralForCausalLM, MistralConfig(**COMMON, sliding_window=4, rope_theta=1000.0,
                                                       tie_word_embeddings=False)),
    "tiny-llama3": (LlamaForCausalLM, LlamaConfig(**COMMON, tie_word_embeddings=False, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})),
    "tiny-llama-linear": (LlamaForCausalLM, LlamaConfig(**COMMON, tie_word_embeddings=False, rope_parameters={
        "rope_type": "linear", "rope_theta": 500.0, "factor": 4.0})),
    "tiny-phi3": (Phi3ForCausalLM, Phi3Config(**COMMON, partial_rotary_factor=0.5, rope_theta=1000.0,
                                              tie_word_embeddings=False, sliding_window=None)),
    "tiny-gemma3": (Gemma3ForCausalLM, Gemma3TextConfig(**{**COMMON, "num_hidden_layers": 3}, head_dim=16,
                                                        query_pre_attn_scalar=12, sliding_window=4,
                                                        layer_types=["sliding_attention", "full_attention",
                                                                     "sliding_attention"],
                                                        final_logit_softcapping=3.0)),
}


def reference(name, model, ids, ref):
    with torch.no_grad():
        logits = model(ids).logits
        out = model.generate(ids[:1], max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    ref[f"{name}.input_ids"] = ids.to(torch.int64)
    ref[f"{name}.logits"] = logits.contiguous()
    ref[f"{name}.greedy"] = out[:, ids.shape[1]:].to(torch.int64).contiguous()
    print(name, "logits", tuple(logits.shape), "greedy", out[0, ids.shape[1]:].tolist())


def perturb(model):
    """Norm scales and biases away from their 1 / 0 initialisation, so that a misread one shows."""
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or ".ln_" in pname:
                p.add_(torch.randn_like(p) * 0.1)
            if pname.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)


def save(model, d):
    model.save_pretrained(d, safe_serialization=True)
    if os.path.exists(os.path.join(d, "generation_config.json")):
        os.remove(os.path.join(d, "generation_config.json"))


def save_adapter(peft_model, name):
    adapter = os.path.join(ROOT, "tests", "fixtures", "peft", name)
    peft_model.save_pretrained(adapter)
    if os.path.exists(os.path.join(adapter, "README.md")):
        os.remove(os.path.join(adapter, "README.md"))


def gpt2_gguf(model, path):
    """The tiny GPT-2 as llama.cpp's convert_hf_to_gguf.py writes it (f32): names through the gguf
    package's own GPT-2 tensor map, Conv1D weights transposed to nn.Linear's layout, the tied
    embedding also stored as output.weight; a placeholder 96-token byte-level vocabulary (llama.cpp
    reads it: llama-cpp-python's logits equal transformers', see docs/ASSETS.md)."""
    import gguf
    cfg = model.config
    w = gguf.GGUFWriter(path, "gpt2")
    w.add_block_count(cfg.n_layer)
    w.add_context_length(cfg.n_positions)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(4 * cfg.n_embd)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    tokens = [chr(0x100 + i) if i < 3 else chr(0x21 + i) for i in range(cfg.vocab_size)]
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (cfg.vocab_size - 3))
    w.add_token_merges([f"{tokens[3]} {tokens[4]}"])  # llama.cpp needs at least one
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, cfg.n_layer)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        t = t.detach().float()
        if name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            t = t.t()
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        w.add_tensor(new, t.contiguous().numpy())
        if new == "token_embd.weight":
            w.add_tensor("output.weight", t.contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def phi3_gguf():
    """tiny-phi3 as llama.cpp's convert_hf_to_gguf.py writes it (f32, no Q/K permutation for Phi-3):
    `attn_qkv`, `ffn_up` holding gate and up rows, the rotary dimension as `rope.dimension_count`;
    read from the committed checkpoint, so the other fixtures are untouched."""
    import gguf
    from transformers import Phi3ForCausalLM
    model = Phi3ForCausalLM.from_pretrained(os.path.join(OUT, "tiny-phi3")).eval()
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(os.path.join(OUT, "tiny-phi3.gguf"), "phi3")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(int(cfg.rope_parameters["partial_rotary_factor"] * head_dim))
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens = [chr(0x100 + i) if i < 3 else chr(0x21 + i) for i in range(cfg.vocab_size)]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (cfg.vocab_size - 3))
    w.add_token_merges([f"{tokens[3]} {tokens[4]}"])
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.PHI3, cfg.num_hidden_layers)
    for name, t in model.state_dict().items():
        w.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), t.detach().float().contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gpt2(ref):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(40)
    cfg = GPT2Config(vocab_size=96, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2)
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg).eval()
    perturb(model)
    save(model, os.path.join(OUT, "tiny-gpt2"))
    gpt2_gguf(model, os.path.join(OUT, "tiny-gpt2.gguf"))
    ids = torch.randint(3, cfg.vocab_size, (2, 12))
    reference("tiny-gpt2", model, ids, ref)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], task_type="CAUSAL_LM",
                      init_lora_weights=False)
    peft_model = get_peft_model(model, lora).eval()
    with torch.no_grad():
        logits = peft_model(input_ids=ids).logits
    save_adapter(peft_model, "gpt2-lora")
    ref["gpt2-lora.input_ids"] = ids.to(torch.int64).clone()
    ref["gpt2-lora.logits"] = logits.contiguous()
    print("gpt2-lora logits", tuple(logits.shape))


def main():
    path = os.path.join(OUT, "decoders-reference.safetensors")
    if sys.argv[1:] == ["gpt2"]:
        ref = load_file(path)
        gpt2(ref)
        save_file(ref, path)
        return
    if sys.argv[1:] == ["phi3-gguf"]:
        phi3_gguf()
        return
    ref = {}
    for i, (name, (cls, cfg)) in enumerate(FAMILIES.items()):
        torch.manual_seed(10 + i)
        cfg._attn_implementation = "eager"
        model = cls(cfg).eval()
        perturb(model)
        save(model, os.path.join(OUT, name))
        reference(name, model, torch.randint(3, cfg.vocab_size, (2, 12)), ref)
    # A peft prompt-tuning adapter (CAUSAL_LM, 4 random virtual tokens) for the tiny Llama of
    # scripts/make_llama_fixtures.py, and peft's logits of the text positions.
    from peft import PromptTuningConfig, get_peft_model
    torch.manual_seed(30)
    base = LlamaForCausalLM.from_pretrained(os.path.join(ROOT, "tests", "fixtures", "tiny-llama")).eval()
    peft_model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    ids = torch.randint(3, 96, (2, 12))
    with torch.no_grad():
        logits = peft_model(input_ids=ids).logits
    save_adapter(peft_model, "llama-prompt")
    ref["llama-prompt.input_ids"] = ids.to(torch.int64)
    ref["llama-prompt.logits"] = logits[:, -ids.shape[1]:].contiguous()
    print("llama-prompt logits", tuple(logits.shape))
    gpt2(ref)
    save_file(ref, path)
    phi3_gguf()


if __name__ == "__main__":
    main()
