#!/usr/bin/env bash
# Trains a DoRA adapter (use_dora, on query/value/dense) with loradex on the PEFT fixture's tiny
# BERT, exports it and merges it, then has real PEFT load the export (PeftModel.from_pretrained)
# and transformers load the merge, and compares their logits with `loradex predict`
# (scripts/peft-check.py). Not run by CI: needs a Python with torch, transformers and peft
# (e.g. ../shared/tools/peers-venv.sh).
#
#   scripts/peft-check-dora.sh PYTHON [LORADEX]    (LORADEX default: target/release/loradex)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:?usage: scripts/peft-check-dora.sh PYTHON [LORADEX]}
ld=${2:-target/release/loradex}
fixtures=${FIXTURES:-../shared/fixtures}
base=$(cd "$fixtures/peft/bert-seqcls-qv/base" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cp adapters/en-sentiment/train.csv "$tmp/"
cat > "$tmp/recipe.toml" <<TOML
name = "check/dora:v1"
base = "$base"
task = "seq-cls"
[data]
train = "train.csv"
validation_split = 0.2
labels = ["neg", "pos"]
max_seq_len = 32
[lora]
r = 4
alpha = 8
target_modules = ["query", "value", "dense"]
use_dora = true
modules_to_save = ["classifier"]
[train]
epochs = 6
batch_size = 8
learning_rate = 0.05
seed = 7
TOML
h="$tmp/home"
"$ld" --home "$h" train "$tmp/recipe.toml" --quiet > /dev/null
"$ld" --home "$h" export check/dora:v1 "$tmp/export" > /dev/null
"$ld" --home "$h" merge check/dora:v1 --base "$base" --out "$tmp/merged" > /dev/null
"$ld" --home "$h" --json predict --base "$base" --adapter check/dora:v1 \
    --text "great movie" --text "awful, boring film" --text "it was fine i guess" > "$tmp/pred.json"
grep -q lora_magnitude_vector "$tmp/export/adapter_model.safetensors" || { echo "no DoRA magnitudes in the export" >&2; exit 1; }
"$py" scripts/peft-check.py "$base" "$tmp/export" "$tmp/merged" "$tmp/pred.json"
