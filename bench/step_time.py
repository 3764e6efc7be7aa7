#!/usr/bin/env python3
"""PyTorch + transformers + peft counterpart of `finetune-bench step METHOD`: the same model
(all-MiniLM-L6-v2, mean pooling, dropout 0.1, linear head), synthetic ids, forward + backward +
AdamW step, median ms/step after 3 warm-up steps. Prints one JSON line.

    python bench/step_time.py METHOD [--batch 16] [--seq 128] [--steps 10]
        [--device cpu|cuda] [--precision f32|bf16] [--model DIR]

`--precision bf16` runs forward and backward under `torch.autocast(dtype=torch.bfloat16)` with f32
weights and optimizer (PyTorch's mixed precision). On CUDA it also reports the peak memory the
caching allocator reserved.
"""
import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
from transformers import BertModel


def hub_dir(repo):
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    root = os.path.join(cache, "models--" + repo.replace("/", "--"))
    return os.path.join(root, "snapshots", open(os.path.join(root, "refs", "main")).read().strip())


class Classifier(torch.nn.Module):
    def __init__(self, d, prompt_tokens=0, nf4=False, device="cpu", attn="eager"):
        super().__init__()
        extra = {}
        if nf4:
            from transformers import BitsAndBytesConfig
            extra = dict(device_map=device, quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float32))
        self.bert = BertModel.from_pretrained(d, add_pooling_layer=False, attn_implementation=attn, **extra)
        self.dropout = torch.nn.Dropout(0.1)
        self.classifier = torch.nn.Linear(384, 2)
        self.prompt = torch.nn.Parameter(torch.randn(prompt_tokens, 384)) if prompt_tokens else None

    def forward(self, ids, mask):
        types = torch.zeros_like(ids)
        if self.prompt is not None:
            b, n = ids.shape[0], self.prompt.shape[0]
            words = torch.cat([self.prompt.unsqueeze(0).expand(b, -1, -1), self.bert.embeddings.word_embeddings(ids)], 1)
            types = torch.zeros(b, n + ids.shape[1], dtype=torch.long, device=ids.device)
            mask = torch.cat([torch.ones(b, n, dtype=mask.dtype, device=ids.device), mask], 1)
            h = self.bert(inputs_embeds=words, token_type_ids=types, attention_mask=mask).last_hidden_state
        else:
            h = self.bert(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        return self.classifier(self.dropout((h * m).sum(1) / m.sum(1)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("method")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--model", default=None)
    ap.add_argument("--attn", default="eager", help="transformers attn_implementation (eager | sdpa)")
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    d = a.model or hub_dir("sentence-transformers/all-MiniLM-L6-v2")
    nf4 = a.method == "qlora"
    model = Classifier(d, prompt_tokens=20 if a.method == "prompt" else 0, nf4=nf4, device=a.device, attn=a.attn)
    if nf4:
        model.classifier.to(dev)  # bitsandbytes placed the (quantized) encoder already
    else:
        model.float().to(dev)  # a bf16 checkpoint (the GPU copy) trains with f32 master weights
    if a.method in ("lora", "dora", "qlora"):
        from peft import LoraConfig, get_peft_model
        cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"],
                         modules_to_save=["classifier"], use_dora=a.method == "dora")
        model = get_peft_model(model, cfg)
    elif a.method == "prompt":
        for n, p in model.named_parameters():
            p.requires_grad_(n == "prompt" or n.startswith("classifier."))
    elif a.method == "transfer2":
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("classifier.") or n.startswith(("bert.encoder.layer.4.", "bert.encoder.layer.5.")))
    elif a.method == "infer":
        model.requires_grad_(False)
    elif a.method == "head":
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("classifier."))
    ids = torch.tensor([[1000 + (i * 31 + j * 7) % 20000 for j in range(a.seq)] for i in range(a.batch)], device=dev)
    mask = torch.ones_like(ids)
    labels = torch.arange(a.batch, device=dev) % 2
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01) if params else None
    times = []
    for _ in range(a.steps + 3):
        t = time.perf_counter()
        if a.method == "infer":
            model.eval()
            with torch.no_grad(), autocast:
                out = model(ids, mask)
            out.float().sum().item()  # wait for the device, as finetune-bench's into_data does
        else:
            model.train()
            with autocast:
                loss = F.cross_entropy(model(ids, mask), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            loss.item()
        times.append(time.perf_counter() - t)
    ms = sorted(times[3:])[len(times[3:]) // 2] * 1e3
    print(json.dumps({"framework": f"pytorch {torch.__version__}", "method": a.method, "device": a.device,
                      "precision": a.precision, "attn": a.attn, "batch": a.batch, "seq": a.seq,
                      "ms_per_step": round(ms, 1), "tokens_per_s": round(a.batch * a.seq / (ms / 1e3)),
                      "trainable_params": trainable, "threads": torch.get_num_threads(),
                      "device_bytes_reserved": torch.cuda.max_memory_reserved() if cuda else None}))


if __name__ == "__main__":
    main()
