#!/usr/bin/env python3
"""The SmolLM2 LoRA SFT recipe (recipes/smollm2-chatterbot-lora.toml) in PyTorch + transformers +
peft, the way a Python user would run it, for the side-by-side numbers in docs/BENCHMARKS.md.

Same model file (transformers reads the GGUF and dequantizes it to f32), same data and loss mask
(chat template rendered turn by turn, loss on assistant turns incl. <|im_end|>), same packing
into rows of max_length, same LoRA (r, alpha, dropout, all seven projections), AdamW without
weight decay, cosine schedule with 5% warmup, clipping at 1.0. Held-out loss is the mean over
target tokens of the unpacked validation/test conversations, before and after training.
The forward is transformers' standard one (logits at every position), as users run it.

With --chat-template FILE (a base model without one, e.g. Gemma 3 270M with
recipes/templates/gemma.jinja) conversations are rendered with that template, as the recipe's
`data.chat_template` does.

Usage: python bench/sft_reference.py --gguf FILE --data DIR [--chat-template FILE] [--max-steps N]
       [--adapter-out DIR] [--out results.json]
"""
import argparse, json, math, os, random, resource, sys, time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from sft_masks import encode_chat  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--gguf", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--max-length", type=int, default=256)
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--eval-batch", type=int, default=16)
ap.add_argument("--epochs", type=int, default=1)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--r", type=int, default=16)
ap.add_argument("--alpha", type=float, default=32)
ap.add_argument("--dropout", type=float, default=0.05)
ap.add_argument("--no-packing", action="store_true")
ap.add_argument("--max-steps", type=int)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--seed", type=int, default=42)
ap.add_argument("--skip-eval", action="store_true")
ap.add_argument("--bf16", action="store_true", help="forward and backward under torch.autocast(bfloat16)")
ap.add_argument("--gradient-checkpointing", action="store_true",
                help="transformers' gradient_checkpointing_enable() (each decoder layer recomputed in backward)")
ap.add_argument("--chat-template")
ap.add_argument("--adapter-out", help="save the trained adapter here (peft's save_pretrained)")
ap.add_argument("--out")
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)
random.seed(args.seed)

d, f = os.path.split(os.path.abspath(args.gguf))
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
if args.chat_template:
    tok.chat_template = open(args.chat_template, encoding="utf-8").read()
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
eos = model.config.eos_token_id
eos = eos[0] if isinstance(eos, list) else eos


def encode(messages):
    return encode_chat(tok, messages, args.max_length)


def load(name):
    out = []
    for line in open(os.path.join(args.data, name), encoding="utf-8"):
        if line.strip():
            ids, tr = encode(json.loads(line)["messages"])
            if any(tr[1:]):
                out.append((ids, tr))
    return out


def pack(examples, n):
    rows, ids, tr = [], [], []
    for e_ids, e_tr in examples:
        for i, t in zip(e_ids, e_tr):
            ids.append(i); tr.append(t)
            if len(ids) == n:
                rows.append((ids, tr)); ids, tr = [], []
    if any(tr[1:]):
        rows.append((ids, tr))
    return rows


def collate(batch):
    n = max(len(i) for i, _ in batch)
    ids = torch.full((len(batch), n), eos, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for b, (i, t) in enumerate(batch):
        ids[b, : len(i)] = torch.tensor(i)
        mask[b, : len(i)] = 1
        labels[b, : len(i)] = torch.tensor([x if y else -100 for x, y in zip(i, t)])
    return ids, mask, labels


@torch.no_grad()
def evaluate(m, examples):
    if not examples:
        return None
    m.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    total, count, correct = 0.0, 0, 0
    for s in range(0, len(order), args.eval_batch):
        ids, mask, labels = collate([examples[i] for i in order[s : s + args.eval_batch]])
        logits = m(input_ids=ids, attention_mask=mask).logits[:, :-1]
        target = labels[:, 1:]
        keep = target != -100
        lp = torch.log_softmax(logits[keep].float(), -1)
        total += -lp.gather(1, target[keep][:, None]).sum().item()
        count += int(keep.sum())
        correct += int((lp.argmax(-1) == target[keep]).sum())
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "token_accuracy": correct / count, "examples": len(examples)}


train = load("train.jsonl")
validation, test = load("validation.jsonl"), load("test.jsonl")
if not args.no_packing:
    train = pack(train, args.max_length)
train_tokens = sum(len(i) for i, _ in train)
print(f"{len(train)} train rows, {train_tokens} tokens", file=sys.stderr)
before = {} if args.skip_eval else {"validation": evaluate(model, validation), "test": evaluate(model, test)}

cfg = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout, task_type="CAUSAL_LM",
                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
model = get_peft_model(model, cfg)
if args.gradient_checkpointing:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
steps_per_epoch = math.ceil(len(train) / args.batch)
total = steps_per_epoch * args.epochs if args.max_steps is None else min(args.max_steps, steps_per_epoch * args.epochs)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
sched = get_cosine_schedule_with_warmup(opt, math.ceil(0.05 * total), total)
step, times, tokens_done, losses = 0, [], 0, []
t_train = time.perf_counter()
for epoch in range(args.epochs):
    order = torch.randperm(len(train)).tolist()
    for s in range(0, len(order), args.batch):
        if step >= total:
            break
        model.train()
        batch = [train[i] for i in order[s : s + args.batch]]
        ids, mask, labels = collate(batch)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        tokens_done += sum(len(i) for i, _ in batch)
        step += 1
        losses.append(loss.item())
        print(f"step {step}/{total} loss {loss.item():.4f} {times[-1]*1000:.0f} ms", file=sys.stderr)
train_seconds = time.perf_counter() - t_train
after = {} if args.skip_eval else {"validation": evaluate(model, validation), "test": evaluate(model, test)}
steady = sorted(times[2:] or times)
result = {
    "torch": torch.__version__, "threads": args.threads, "train_rows": len(train), "trainable_params": trainable,
    "steps": step, "train_seconds": train_seconds, "tokens_per_second": tokens_done / train_seconds,
    "median_step_ms": steady[len(steady) // 2] * 1000, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "losses": losses, "before": before, "after": after,
}
print(json.dumps(result, indent=1))
if args.adapter_out:
    model.save_pretrained(args.adapter_out)
if args.out:
    json.dump(result, open(args.out, "w"), indent=1)
