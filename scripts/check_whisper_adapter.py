#!/usr/bin/env python3
"""Check a Whisper LoRA adapter written by `finetune train` (task = "transcription") in Python
peft: the base converted to the Hugging Face layout (`finetune convert`) + the adapter through
`PeftModel.from_pretrained` must give the logits of the merged model finetune wrote (RUN/model),
on a random log-Mel input and a short token prefix. Prints the largest difference.

    python scripts/check_whisper_adapter.py BASE_HF_DIR RUN_DIR
"""
import sys

import torch
from peft import PeftModel
from transformers import WhisperForConditionalGeneration

base_dir, run = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
mel = torch.randn(1, 80, 3000)
tokens = torch.tensor([[50257, 50362, 317, 1807, 8062]])
with torch.no_grad():
    peft_model = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(base_dir), f"{run}/adapter").eval()
    ours = WhisperForConditionalGeneration.from_pretrained(f"{run}/model").eval()
    a = peft_model(input_features=mel, decoder_input_ids=tokens).logits
    b = ours(input_features=mel, decoder_input_ids=tokens).logits
    base = WhisperForConditionalGeneration.from_pretrained(base_dir).eval()
    c = base(input_features=mel, decoder_input_ids=tokens).logits
print(f"peft(base + adapter) vs finetune's merged model: max |diff| {float((a - b).abs().max()):.3e}"
      f" (the adapter moves the logits by {float((a - c).abs().max()):.3e})")
