#!/usr/bin/env python3
"""PyTorch + transformers counterpart of `finetune transcribe`: loads the Hugging Face directory
that `finetune convert` wrote (so it also checks that transformers accepts it), transcribes WAV
files greedily with `generate` (prefix <|startoftranscript|>, for a multilingual model
<|en|><|transcribe|>, then <|notimestamps|>, as finetune; the model's
suppress lists, KV cache), prints one JSON line per file and a summary with wall time and peak RSS.

    python bench/speech_reference.py HF_DIR a.wav b.wav ... [--threads 2]
"""
import argparse, json, resource, time, wave

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("files", nargs="+")
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
start = time.time()
model = WhisperForConditionalGeneration.from_pretrained(a.model).eval()
fe = WhisperFeatureExtractor.from_pretrained(a.model)
tok = Tokenizer.from_file(f"{a.model}/tokenizer.json")
ids = lambda t: tok.token_to_id(t)
prefix = [ids("<|startoftranscript|>")]
if model.config.vocab_size >= 51865:
    prefix += [ids("<|en|>"), ids("<|transcribe|>")]
prefix.append(ids("<|notimestamps|>"))
loaded = time.time()
for f in a.files:
    with wave.open(f) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    feats = torch.from_numpy(fe(x, sampling_rate=16000, return_tensors="np").input_features)
    with torch.no_grad():
        out = model.generate(feats, decoder_input_ids=torch.tensor([prefix]), max_new_tokens=440,
                             do_sample=False, num_beams=1)
    print(json.dumps({"audio": f, "text": tok.decode(out[0].tolist(), skip_special_tokens=True).strip()}))
print(json.dumps({"impl": "pytorch", "files": len(a.files), "load_seconds": loaded - start,
                  "transcribe_seconds": time.time() - loaded, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                  "torch": torch.__version__}))
