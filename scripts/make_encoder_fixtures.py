#!/usr/bin/env python3
"""Tiny *random* text encoders of the families besides BERT, made by transformers' own classes,
with transformers' outputs on fixed inputs (tests/integration/numerics.rs checks finetune against
them at 1e-4).

    python scripts/make_encoder_fixtures.py

Outputs (under tests/fixtures/encoders/):
  tiny-roberta/      RobertaForSequenceClassification: byte-level BPE tokenizer trained on the UCI
                     sample (<s> </s> <pad>=1), positions offset by padding_idx + 1
  tiny-xlm-roberta/  XLMRobertaForSequenceClassification (the same architecture under its own
                     model_type and class names)
  tiny-distilbert/   DistilBertForSequenceClassification (q_lin/k_lin/v_lin/out_lin, no token
                     types, pre_classifier + ReLU head), tiny-bert's WordPiece tokenizer
  tiny-electra/      ElectraForSequenceClassification with embedding_size 16 < hidden 32
                     (embeddings_project), GELU classification head, tiny-bert's tokenizer
  tiny-{bert,roberta}-token/  BertForTokenClassification / RobertaForTokenClassification with the
                     encoder of tiny-bert / tiny-roberta and a random 5-tag classifier, and the ids
                     transformers gives a list of words (is_split_into_words)
  peft-<model>/      a peft SEQ_CLS LoRA adapter per model on query/value (DistilBERT's q_lin/v_lin)
                     with peft's default modules_to_save, as if trained
  encoders-reference.safetensors   per model: input_ids, attention_mask, token_type_ids,
                     last_hidden_state, logits, cross-entropy loss against fixed labels, the
                     gradient of one attention weight, and peft's logits with the adapter; for the
                     token classifiers, <name>.token_logits on the same batch
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (AutoModelForTokenClassification, DistilBertConfig, DistilBertForSequenceClassification, ElectraConfig,
                          ElectraForSequenceClassification, RobertaConfig, RobertaForSequenceClassification,
                          XLMRobertaConfig, XLMRobertaForSequenceClassification)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIX, "encoders")
LABELS = {"id2label": {0: "a", 1: "b", 2: "c"}, "label2id": {"a": 0, "b": 1, "c": 2}, "num_labels": 3}
WORDS = ["Empire", "State", "Building", "=", "ESB", ".", "Pretty", "bad", "storm", "here"]
SENTENCES = ["I loved this film, truly wonderful.", "Terrible service and cold food!",
             "ok", "The plot was thin but the acting saved it; I would watch it again."]


def sample_texts():
    import csv
    with open(os.path.join(FIX, "uci-sample.csv")) as f:
        return [r["text"] for r in csv.DictReader(f)]


def bpe_tokenizer(texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    return tok


def perturb(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name or "layer_norm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def batch(tok, pad_id, with_types):
    enc = [tok.encode(s) for s in SENTENCES[:3]] + [tok.encode(SENTENCES[3], "a second segment")]
    n = max(len(e.ids) for e in enc)
    ids = torch.full((len(enc), n), pad_id, dtype=torch.long)
    types = torch.zeros((len(enc), n), dtype=torch.long)
    mask = torch.zeros((len(enc), n), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        types[i, :len(e.ids)] = torch.tensor(e.type_ids)
        mask[i, :len(e.ids)] = 1
    return ids, (types if with_types else torch.zeros_like(types)), mask


def build(name, model, tok, tokenizer_config, pad_id, with_types, grad_of):
    out = os.path.join(OUT, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model.save_pretrained(out, safe_serialization=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f, indent=2)
    ids, types, mask = batch(tok, pad_id, with_types)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if with_types:
        kwargs["token_type_ids"] = types
    base = getattr(model, model.base_model_prefix)
    with torch.no_grad():
        hidden = base(**kwargs).last_hidden_state
        logits = model(**kwargs).logits
    labels = torch.tensor([0, 2, 1, 1])
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(**kwargs).logits, labels)
    loss.backward()
    grad = dict(model.named_parameters())[grad_of].grad
    print(name, "vocab", tok.get_vocab_size(), "loss", float(loss))
    peft_logits = peft_adapter(name, model, kwargs)
    return {f"{name}.peft_logits": peft_logits, f"{name}.input_ids": ids.float(), f"{name}.token_type_ids": types.float(),
            f"{name}.attention_mask": mask.float(), f"{name}.last_hidden_state": hidden, f"{name}.logits": logits,
            f"{name}.labels": labels.float(), f"{name}.loss": loss.detach().reshape(1),
            f"{name}.grad": grad.clone()}


def peft_adapter(name, model, kwargs):
    """A peft LoRA adapter on `model` (peft's defaults for the family), moved as if trained, saved
    to peft-<name>/; peft's logits on the reference batch."""
    import copy
    from peft import LoraConfig, TaskType, get_peft_model
    gen = torch.Generator().manual_seed(99)
    targets = ["q_lin", "v_lin"] if model.config.model_type == "distilbert" else ["query", "value"]
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=targets)
    peft_model = get_peft_model(copy.deepcopy(model), cfg)
    with torch.no_grad():
        for _, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    peft_model.eval()
    out = os.path.join(OUT, f"peft-{name}")
    shutil.rmtree(out, ignore_errors=True)
    peft_model.save_pretrained(out, safe_serialization=True)
    os.remove(os.path.join(out, "README.md"))
    with open(os.path.join(out, "adapter_config.json")) as f:
        c = json.load(f)
    c["base_model_name_or_path"] = f"tests/fixtures/encoders/{name}"
    c["target_modules"] = sorted(c["target_modules"])  # peft writes a set
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
    with torch.no_grad():
        return peft_model(**kwargs).logits


def token_classifier(name, source, tok, pad_id, with_types):
    """A *ForTokenClassification with `source`'s encoder and a random 5-tag head, saved under
    `name`; its logits on the reference batch."""
    torch.manual_seed(1)
    tags = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    model = AutoModelForTokenClassification.from_pretrained(
        source, num_labels=5, id2label=dict(enumerate(tags)), label2id={t: i for i, t in enumerate(tags)},
        ignore_mismatched_sizes=True, attn_implementation="eager").eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.3)
        model.classifier.bias.normal_(0, 0.1)
    out = os.path.join(OUT, name)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(source, f), os.path.join(out, f))
    ids, types, mask = batch(tok, pad_id, with_types)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if with_types:
        kwargs["token_type_ids"] = types
    with torch.no_grad():
        logits = model(**kwargs).logits
    # Words given one by one, as transformers tokenizes them for token classification
    # (RoBERTa's byte-level BPE needs add_prefix_space=True for is_split_into_words).
    from transformers import AutoTokenizer
    extra = {"add_prefix_space": True} if "roberta" in name else {}
    words = AutoTokenizer.from_pretrained(out, **extra)(WORDS, is_split_into_words=True)["input_ids"]
    return {f"{name}.input_ids": ids.float(), f"{name}.token_type_ids": types.float(),
            f"{name}.attention_mask": mask.float(), f"{name}.token_logits": logits,
            f"{name}.word_input_ids": torch.tensor(words).float()}


def main():
    os.makedirs(OUT, exist_ok=True)
    wordpiece = Tokenizer.from_file(os.path.join(FIX, "tiny-bert", "tokenizer.json"))
    wordpiece.no_padding()
    wordpiece.no_truncation()
    bpe = bpe_tokenizer(sample_texts())
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                 hidden_act="gelu", attn_implementation="eager", **LABELS)
    ref = {}
    gen = torch.Generator().manual_seed(4321)
    roberta_tok_cfg = {"tokenizer_class": "RobertaTokenizerFast", "model_max_length": 64, "bos_token": "<s>",
                       "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"}
    for name, cfg_cls, model_cls in [("tiny-roberta", RobertaConfig, RobertaForSequenceClassification),
                                     ("tiny-xlm-roberta", XLMRobertaConfig, XLMRobertaForSequenceClassification)]:
        torch.manual_seed(0)
        cfg = cfg_cls(vocab_size=bpe.get_vocab_size(), max_position_embeddings=66, type_vocab_size=1,
                      pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, **small)
        model = model_cls(cfg).eval()
        perturb(model, gen)
        ref.update(build(name, model, bpe, roberta_tok_cfg, 1, False,
                         "roberta.encoder.layer.0.attention.self.query.weight"))
    bert_tok_cfg = {"tokenizer_class": "BertTokenizerFast", "do_lower_case": True, "model_max_length": 64}
    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=wordpiece.get_vocab_size(), dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                           max_position_embeddings=64, activation="gelu", pad_token_id=0,
                           attn_implementation="eager", **LABELS)
    model = DistilBertForSequenceClassification(cfg).eval()
    perturb(model, gen)
    ref.update(build("tiny-distilbert", model, wordpiece, bert_tok_cfg, 0, False,
                     "distilbert.transformer.layer.0.attention.q_lin.weight"))
    torch.manual_seed(0)
    cfg = ElectraConfig(vocab_size=wordpiece.get_vocab_size(), embedding_size=16, max_position_embeddings=64,
                        type_vocab_size=2, pad_token_id=0, layer_norm_eps=1e-12, **small)
    model = ElectraForSequenceClassification(cfg).eval()
    perturb(model, gen)
    ref.update(build("tiny-electra", model, wordpiece, bert_tok_cfg, 0, True,
                     "electra.encoder.layer.0.attention.self.query.weight"))
    ref.update(token_classifier("tiny-bert-token", os.path.join(FIX, "tiny-bert"), wordpiece, 0, True))
    ref.update(token_classifier("tiny-roberta-token", os.path.join(OUT, "tiny-roberta"), bpe, 1, False))
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(OUT, "encoders-reference.safetensors"))


if __name__ == "__main__":
    main()
