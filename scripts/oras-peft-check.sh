#!/usr/bin/env bash
# OCI interop with general tools: loradex pushes a PEFT adapter to a real registry (Debian's
# docker-registry), the ORAS Python client (`oras pull`) pulls it as an ordinary OCI artifact,
# and PEFT's PeftModel.from_pretrained loads the directory oras wrote; its logits are compared
# with `loradex predict`. Not run by CI: needs docker-registry and a Python with oras, torch,
# transformers and peft (e.g. ../shared/tools/peers-venv.sh).
#
#   scripts/oras-peft-check.sh PYTHON [LORADEX]    (LORADEX default: target/release/loradex)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:?usage: scripts/oras-peft-check.sh PYTHON [LORADEX]}
ld=${2:-target/release/loradex}
fixtures=${FIXTURES:-../shared/fixtures}
case_dir=$(cd "$fixtures/peft/bert-seqcls-qv" && pwd)
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$tmp/registry" "$port" > "$tmp/registry.yml"
docker-registry serve "$tmp/registry.yml" > "$tmp/registry.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/v2/" > /dev/null && break; sleep 0.1; done
h="$tmp/home"
"$ld" --home "$h" import "$case_dir/adapter" --name cs:v1 --base "$case_dir/base" > /dev/null
"$ld" --home "$h" push cs:v1 "127.0.0.1:$port/team/cs:v1" --plain-http
"$py" - "127.0.0.1:$port/team/cs:v1" "$tmp/pulled" <<'PY'
import sys, oras.client
target, out = sys.argv[1], sys.argv[2]
client = oras.client.OrasClient(insecure=True)
files = client.pull(target=target, outdir=out)
print("oras pulled:", sorted(f.split("/")[-1] for f in files))
PY
"$ld" --home "$h" --json predict --base "$case_dir/base" --adapter cs:v1 --text "the delivery was late" --text "thank you so much" > "$tmp/pred.json"
"$py" - "$case_dir/base" "$tmp/pulled" "$tmp/pred.json" <<'PY'
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from peft import PeftModel
base, adapter, pred = sys.argv[1:4]
pred = json.load(open(pred))
texts = [r["text"] for r in pred["results"]]
want = torch.tensor([r["logits"] for r in pred["results"]])
tok = AutoTokenizer.from_pretrained(base)
with torch.no_grad():
    m = AutoModelForSequenceClassification.from_pretrained(base).eval()
    got = PeftModel.from_pretrained(m, adapter).eval()(**tok(texts, padding=True, return_tensors="pt")).logits
d = (got - want).abs().max().item()
print(f"PeftModel.from_pretrained(oras pull of a loradex push): max |logit diff| = {d:.2e}")
sys.exit(0 if d < 1e-4 else 1)
PY
