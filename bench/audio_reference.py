#!/usr/bin/env python3
"""PyTorch + transformers + peft counterpart of finetune's audio-classification recipes
(recipes/whisper-words-*.toml): Whisper tiny.en's encoder from the Hugging Face directory that
`finetune convert` writes, the spoken-word set from the hub cache (scripts/fetch-assets.sh
spoken-words), clips resampled to 16 kHz with the same windowed-sinc filter as finetune, placed
at the start of a window of SECONDS, `WhisperFeatureExtractor(chunk_length=SECONDS)` features,
the encoder output averaged over time, a linear head (dropout), AdamW (no decay on biases and
norms), warmup + cosine, clipping at 1.0, best epoch by validation accuracy, early stopping.
transformers' encoder insists on 30 s inputs, so its modules are called directly on the
shorter window (as finetune does).

    python bench/audio_reference.py HF_DIR feature-extraction|lora [--seconds 2] [--epochs N]
        [--batch B] [--lr LR] [--patience P] [--augment] [--threads 2]

lora: peft LoRA r=8, alpha 16, dropout 0.05 on q_proj/v_proj of every encoder layer, the head
in modules_to_save. --augment: gain ±6 dB, shift up to 0.8 s, white noise at 15–40 dB SNR, two
time masks (≤10 frames) and two frequency masks (≤8 bins), as the LoRA recipe.
"""
import argparse, json, math, os, resource, time, wave

import numpy as np
import torch
import torch.nn.functional as F
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration


def snapshot(kind, repo):
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    root = os.path.join(cache, f"{kind}--" + repo.replace("/", "--"))
    return os.path.join(root, "snapshots", open(os.path.join(root, "refs", "main")).read().strip())


def resample(x, src, dst, zeros=16.0):
    """finetune's resampler: Hann-windowed sinc, cutoff at the lower Nyquist rate."""
    ratio = dst / src
    cutoff = min(ratio, 1.0)
    half = zeros / cutoff
    n_out = int(round(len(x) * ratio))
    t = np.arange(n_out) / ratio
    out = np.zeros(n_out)
    for k in range(-int(math.ceil(half)) - 1, int(math.ceil(half)) + 2):
        i = np.floor(t).astype(np.int64) + k
        d = i - t
        ok = (i >= 0) & (i < len(x)) & (np.abs(d) <= half)
        w = np.where(ok, np.sinc(d * cutoff) * (0.5 + 0.5 * np.cos(np.pi * d / half)) * cutoff, 0.0)
        out += w * x[np.clip(i, 0, len(x) - 1)]
    return out.astype(np.float32)


def read_split(root, name):
    xs, ys = [], []
    labels = [l.strip() for l in open(f"{root}/labels.txt") if l.strip()]
    for line in open(f"{root}/{name}.jsonl"):
        row = json.loads(line)
        with wave.open(f"{root}/{row['audio']}") as w:
            rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
        xs.append(resample(x, rate, 16000) if rate != 16000 else x.astype(np.float32))
        ys.append(labels.index(row["label"]))
    return xs, np.array(ys), labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("method", choices=["feature-extraction", "lora"])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--wd", type=float, default=0.01)
    ap.add_argument("--warmup-ratio", type=float, default=0.05)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    root = snapshot("datasets", "finetune/espeak-spoken-words")
    (x, y, labels), (xv, yv, _), (xt, yt, _) = (read_split(root, s) for s in ("train", "validation", "test"))
    window = int(a.seconds * 16000) // 160 // 2 * 2 * 160
    fe = WhisperFeatureExtractor(feature_size=80, chunk_length=a.seconds)
    fe.n_samples, fe.nb_max_frames = window, window // 160
    whisper = WhisperForConditionalGeneration.from_pretrained(a.model)
    encoder = whisper.model.encoder

    def place(clip, augment):
        out = np.zeros(window, dtype=np.float32)
        shift = int(rng.uniform() * 0.8 * 16000) if augment else 0
        shift = min(shift, max(window - len(clip), 0))
        n = min(len(clip), window - shift)
        out[shift:shift + n] = clip[:n]
        if augment:
            out *= 10 ** (rng.uniform(-6, 6) / 20)
            power = float(np.mean(clip ** 2))
            snr = rng.uniform(15, 40)
            out += rng.uniform(-1, 1, window).astype(np.float32) * math.sqrt(3 * power / 10 ** (snr / 10))
        return out

    def features(clips, augment=False):
        mel = fe([place(c, augment) for c in clips], sampling_rate=16000, return_tensors="np", padding="max_length",
                 max_length=window).input_features
        if augment:
            for m in mel:
                mean = m.mean()
                for _ in range(2):
                    w = int(rng.uniform() * 11); t0 = int(rng.uniform() * (m.shape[1] - w)); m[:, t0:t0 + w] = mean
                for _ in range(2):
                    w = int(rng.uniform() * 9); f0 = int(rng.uniform() * (m.shape[0] - w)); m[f0:f0 + w, :] = mean
        return torch.from_numpy(mel)

    def encode(mel):
        h = F.gelu(encoder.conv2(F.gelu(encoder.conv1(mel)))).permute(0, 2, 1)
        h = h + encoder.embed_positions.weight[: h.shape[1]]
        for layer in encoder.layers:
            h = layer(h, None)
        return encoder.layer_norm(h).mean(1)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.classifier = torch.nn.Linear(encoder.config.d_model, len(labels))
            torch.nn.init.normal_(self.classifier.weight, 0, 0.02); torch.nn.init.zeros_(self.classifier.bias)
            self.dropout = torch.nn.Dropout(a.dropout)

        def forward(self, mel):
            return self.classifier(self.dropout(encode(mel)))

    model = Classifier()
    feature_seconds = None
    if a.method == "feature-extraction":
        encoder.eval()
        start = time.time()
        with torch.no_grad():
            feats = [torch.cat([encode(features(s[i:i + a.eval_batch])) for i in range(0, len(s), a.eval_batch)])
                     for s in (x, xv, xt)]
        feature_seconds = time.time() - start
        head = torch.nn.Sequential(model.dropout, model.classifier)
        trainable = head
        fwd_train = lambda idx: head(feats[0][idx])
        evals = [lambda s, e, f=f: head(f[s:e]) for f in feats[1:]]
    else:
        from peft import LoraConfig, get_peft_model
        cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                         modules_to_save=["classifier"])
        trainable = get_peft_model(model, cfg)
        fwd_train = lambda idx: trainable(features([x[i] for i in idx], a.augment))
        evals = [lambda s, e, c=c: trainable(features(c[s:e])) for c in (xv, xt)]
    params = [(n, p) for n, p in trainable.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim > 1]
    no_decay = [p for n, p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}], lr=a.lr)
    steps_per_epoch = math.ceil(len(x) / a.batch)
    total = steps_per_epoch * a.epochs
    warmup = math.ceil(a.warmup_ratio * total)
    lr_at = lambda s: a.lr * s / max(warmup, 1) if s < warmup else a.lr * 0.5 * (1 + math.cos(math.pi * min((s - warmup) / max(total - warmup, 1), 1)))

    def evaluate(fn, ys):
        correct = 0
        with torch.no_grad():
            for i in range(0, len(ys), a.eval_batch):
                correct += int((fn(i, i + a.eval_batch).argmax(1) == torch.from_numpy(ys[i:i + a.eval_batch])).sum())
        return correct / len(ys)

    best, best_state, bad, step, train_seconds, epochs_run = -1.0, None, 0, 0, 0.0, 0
    for epoch in range(a.epochs):
        trainable.train()
        if a.method == "feature-extraction":
            encoder.eval()
        order = rng.permutation(len(x))
        start = time.time()
        for i in range(0, len(x), a.batch):
            idx = order[i:i + a.batch]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = F.cross_entropy(fwd_train(idx), torch.from_numpy(y[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
            opt.step()
            step += 1
        train_seconds += time.time() - start
        epochs_run += 1
        trainable.eval()
        acc = evaluate(evals[0], yv)
        print(json.dumps({"epoch": epoch + 1, "validation_accuracy": acc, "epoch_seconds": time.time() - start}), flush=True)
        if acc > best:
            best, bad = acc, 0
            best_state = {k: v.clone() for k, v in trainable.state_dict().items()}
        else:
            bad += 1
            if a.patience and bad >= a.patience:
                break
    trainable.load_state_dict(best_state)
    trainable.eval()
    print(json.dumps({
        "impl": "pytorch", "method": a.method, "seconds": a.seconds, "augment": a.augment, "train_examples": len(x),
        "epochs_run": epochs_run, "steps": step, "best_validation_accuracy": best, "test_accuracy": evaluate(evals[1], yt),
        "train_seconds": train_seconds, "seconds_per_epoch": train_seconds / max(epochs_run, 1),
        "feature_seconds": feature_seconds, "trainable_params": sum(p.numel() for _, p in params),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
