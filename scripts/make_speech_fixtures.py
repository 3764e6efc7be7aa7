#!/usr/bin/env python3
"""Fixtures for the speech tests (run from the repository root; needs torch, transformers, numpy).

Whisper tiny.en in CTranslate2 format (scripts/fetch-assets.sh whisper) is read by an
independent Python parser of model.bin (below), its fused projections split into
`transformers`' WhisperForConditionalGeneration, and run on the LibriVox clips of
scripts/fetch-assets.sh librivox (read with Python's `wave`):

tests/fixtures/whisper-reference.safetensors
  mel            WhisperFeatureExtractor's log-Mel features of clip 0880, frames 0..400 of 3000
  mel_max        the same features' frames 2990..3000 (padding: the floor, max - 8, scaled)
  encoder        encoder output of clip 0880 at frames 0, 3, ..., 147 (50 rows) and 1000..1009
  logits_head    decoder logits (vocabulary ids 0..1024) at every position of clip 0880's
                 prefix + greedy transcript (teacher forcing)
tests/fixtures/peft/whisper-lora/ (with --peft): a LoRA adapter made by Python peft on that
  model (r=4 on q_proj/v_proj of every encoder and decoder attention, non-zero B) and
  tests/fixtures/whisper-lora-reference.safetensors: its logits (ids 0..1024) on clip 0880 for
  the clip's transcript tokens.
tests/fixtures/whisper-reference.json
  per clip: greedy tokens and text from a plain greedy loop over the HF model (prefix
  <|startoftranscript|><|notimestamps|>, the model's suppress_ids / suppress_ids_begin applied).

Usage: python3 scripts/make_speech_fixtures.py [--hub-cache DIR] [--peft]
"""
import argparse, glob, json, os, struct, wave

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

FIX = "tests/fixtures"
CLIP = "sense_and_sensibility_01_austen_64kb-0880"


def read_ct2(path):
    raw = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, raw, pos)
        pos += struct.calcsize(fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("H")
        s = raw[pos:pos + n - 1].decode()
        pos += n
        return s

    assert take("I") == 6
    spec, _revision = string(), take("I")
    assert spec == "WhisperSpec", spec
    dtypes = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
    out = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype = dtypes[take("B")]
        size = take("I")
        out[name] = np.frombuffer(raw[pos:pos + size], dtype=dtype).reshape(shape)
        pos += size
    return out


def hf_state(v):
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))
    sd = {}
    for side in ("encoder", "decoder"):
        i = 0
        while f"{side}/layer_{i}/ffn/linear_0/weight" in v:
            s, d = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            qkv_w, qkv_b = v[f"{s}/self_attention/linear_0/weight"], v[f"{s}/self_attention/linear_0/bias"]
            n = qkv_w.shape[0] // 3
            for j, name in enumerate(["q_proj", "k_proj", "v_proj"]):
                sd[f"{d}.self_attn.{name}.weight"] = t(qkv_w[j * n:(j + 1) * n])
                if name != "k_proj":
                    sd[f"{d}.self_attn.{name}.bias"] = t(qkv_b[j * n:(j + 1) * n])
            pairs = {"self_attention/linear_1": "self_attn.out_proj", "ffn/linear_0": "fc1", "ffn/linear_1": "fc2"}
            if side == "decoder":
                kv_w, kv_b = v[f"{s}/attention/linear_1/weight"], v[f"{s}/attention/linear_1/bias"]
                sd[f"{d}.encoder_attn.k_proj.weight"] = t(kv_w[:n])
                sd[f"{d}.encoder_attn.v_proj.weight"] = t(kv_w[n:])
                sd[f"{d}.encoder_attn.v_proj.bias"] = t(kv_b[n:])
                pairs.update({"attention/linear_0": "encoder_attn.q_proj", "attention/linear_2": "encoder_attn.out_proj"})
            for src, dst in pairs.items():
                sd[f"{d}.{dst}.weight"] = t(v[f"{s}/{src}/weight"])
                sd[f"{d}.{dst}.bias"] = t(v[f"{s}/{src}/bias"])
            norms = {"self_attention/layer_norm": "self_attn_layer_norm", "ffn/layer_norm": "final_layer_norm"}
            if side == "decoder":
                norms["attention/layer_norm"] = "encoder_attn_layer_norm"
            for src, dst in norms.items():
                sd[f"{d}.{dst}.weight"] = t(v[f"{s}/{src}/gamma"])
                sd[f"{d}.{dst}.bias"] = t(v[f"{s}/{src}/beta"])
            i += 1
        sd[f"model.{side}.layer_norm.weight"] = t(v[f"{side}/layer_norm/gamma"])
        sd[f"model.{side}.layer_norm.bias"] = t(v[f"{side}/layer_norm/beta"])
        sd[f"model.{side}.embed_positions.weight"] = t(v[f"{side}/position_encodings/encodings"])
    for c in ("conv1", "conv2"):
        sd[f"model.encoder.{c}.weight"] = t(v[f"encoder/{c}/weight"])
        sd[f"model.encoder.{c}.bias"] = t(v[f"encoder/{c}/bias"])
    sd["model.decoder.embed_tokens.weight"] = t(v["decoder/embeddings/weight"])
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]
    return sd, i


def read_wav(path):
    with wave.open(path) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1 and w.getframerate() == 16000
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hub-cache", default=os.environ.get("HF_HUB_CACHE", os.path.expanduser("~/.cache/huggingface/hub")))
    ap.add_argument("--peft", action="store_true", help="only (re)make the peft adapter fixture")
    a = ap.parse_args()
    model_dir = glob.glob(os.path.join(a.hub_cache, "models--finetune--whisper-tiny.en-ct2/snapshots/*"))[0]
    data_dir = glob.glob(os.path.join(a.hub_cache, "datasets--finetune--pocketsphinx-librivox/snapshots/*"))[0]
    v = read_ct2(os.path.join(model_dir, "model.bin"))
    extra = json.load(open(os.path.join(model_dir, "config.json")))
    sd, layers = hf_state(v)
    d = v["decoder/embeddings/weight"].shape[1]
    cfg = WhisperConfig(vocab_size=v["decoder/embeddings/weight"].shape[0], num_mel_bins=80, d_model=d,
                        encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=int(v["encoder/num_heads"]),
                        decoder_attention_heads=int(v["decoder/num_heads"]), encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d,
                        max_source_positions=1500, max_target_positions=448)
    model = WhisperForConditionalGeneration(cfg)
    model.load_state_dict(sd, strict=True)
    model.eval()
    fe = WhisperFeatureExtractor(feature_size=80)
    if a.peft:
        return peft_fixture(model, fe, data_dir)
    suppress, begin = extra["suppress_ids"], extra["suppress_ids_begin"]
    prefix = [50257, 50362]  # <|startoftranscript|><|notimestamps|> in tiny.en's vocabulary
    clips = [json.loads(l) for l in open(os.path.join(data_dir, "test.jsonl"))]
    results, out = [], {}
    for clip in clips:
        audio = read_wav(os.path.join(data_dir, clip["audio"]))
        feats = torch.from_numpy(fe(audio, sampling_rate=16000, return_tensors="np").input_features)
        with torch.no_grad():
            enc = model.model.encoder(feats).last_hidden_state
            tokens = list(prefix)
            while len(tokens) < 448:
                logits = model(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([tokens])).logits[0, -1]
                logits[suppress] = -float("inf")
                if len(tokens) == len(prefix):
                    logits[begin] = -float("inf")
                nxt = int(logits.argmax())
                if nxt == 50256:
                    break
                tokens.append(nxt)
            full = model(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([tokens])).logits[0]
        generated = tokens[len(prefix):]
        from tokenizers import Tokenizer
        text = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json")).decode(generated, skip_special_tokens=True)
        results.append({"audio": clip["audio"], "reference": clip["text"], "tokens": generated, "text": text.strip()})
        print(clip["audio"], "->", text.strip())
        if CLIP in clip["audio"]:
            out["mel"] = feats[0, :, :400].contiguous()
            out["mel_max"] = feats[0, :, 2990:].contiguous()
            rows = list(range(0, 150, 3)) + list(range(1000, 1010))
            out["encoder"] = enc[0, rows].contiguous()
            out["logits_head"] = full[:, :1024].contiguous()
    save_file(out, os.path.join(FIX, "whisper-reference.safetensors"))
    json.dump({"prefix": prefix, "clips": results}, open(os.path.join(FIX, "whisper-reference.json"), "w"), indent=1)


def peft_fixture(model, fe, data_dir):
    from peft import LoraConfig, get_peft_model
    reference = json.load(open(os.path.join(FIX, "whisper-reference.json")))
    clip = next(c for c in reference["clips"] if CLIP in c["audio"])
    tokens = torch.tensor([reference["prefix"] + clip["tokens"]])
    feats = torch.from_numpy(fe(read_wav(os.path.join(data_dir, clip["audio"])), sampling_rate=16000,
                                return_tensors="np").input_features)
    torch.manual_seed(3)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          init_lora_weights="gaussian"))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    pm.eval()
    pm.save_pretrained(os.path.join(FIX, "peft", "whisper-lora"))
    with torch.no_grad():
        logits = pm(input_features=feats, decoder_input_ids=tokens).logits[0]
    save_file({"logits_head": logits[:, :1024].contiguous()}, os.path.join(FIX, "whisper-lora-reference.safetensors"))


if __name__ == "__main__":
    main()
