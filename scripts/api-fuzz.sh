#!/usr/bin/env bash
# API contract testing: schemathesis (PyPI) generates requests from schemas/openapi.yaml and
# checks every answer against it (documented status, documented JSON shape, no 500, no hang)
# on a live `loradex serve` over the PEFT fixture base, once for classification (BERT) and
# once for generation (the fixture Llama). Not run in CI (it needs PyPI).
#
#   scripts/api-fuzz.sh [MAX_EXAMPLES]      (default 200 per operation)
#
# Env: VENV (default .venv-api-fuzz), LORADEX (default target/debug/loradex, built if absent),
# FIXTURES (default ../shared/fixtures/peft).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-200}"
VENV="${VENV:-.venv-api-fuzz}"
FIX="${FIXTURES:-../shared/fixtures/peft}"
BIN="${LORADEX:-target/debug/loradex}"
[ -x "$VENV/bin/st" ] || { python3 -m venv "$VENV"; "$VENV/bin/pip" install -q schemathesis; }
[ -x "$BIN" ] || cargo build --no-default-features --locked
TMP="$(mktemp -d)"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$TMP"' EXIT
HOME_DIR="$TMP/home"
"$BIN" --home "$HOME_DIR" import "$FIX/bert-seqcls-qv/adapter" --name cs/default --base "$FIX/bert-seqcls-qv/base" >/dev/null
"$BIN" --home "$HOME_DIR" import "$FIX/llama-causal-qkvo/adapter" --name gen/qkvo --base "$FIX/llama-causal-qkvo/base" >/dev/null

serve() { # BASE NAME: starts a server logging to $TMP/NAME.log, sets $addr
  "$BIN" --home "$HOME_DIR" serve --base "$1" --addr 127.0.0.1:0 --token fuzz --max-running 4 --kv-cache-bytes 67108864 \
    >/dev/null 2>"$TMP/$2.log" &
  PIDS+=($!)
  for _ in $(seq 300); do grep -q 'serving on' "$TMP/$2.log" 2>/dev/null && break; sleep 0.1; done
  addr="$(grep -m1 'serving on' "$TMP/$2.log" | sed 's/.*http:\/\///')"
}

rc=0
# each base answers the endpoints of its kind (the other kind is a documented 400)
# Generation names its adapter in up to four places that must agree (else 400), which OpenAPI
# cannot express: there schemathesis' positive_data_acceptance check is off.
for pair in "bert-seqcls-qv:^/v1/(completions|chat/completions)$:" "llama-causal-qkvo:^/v1/classify$:positive_data_acceptance"; do
  base="${pair%%:*}"; rest="${pair#*:}"; skip="${rest#*:}"; rest="${rest%:*}"
  serve "$FIX/$base/base" "$base"
  echo "== $base on $addr"
  "$VENV/bin/st" run schemas/openapi.yaml --url "http://$addr" --exclude-path-regex "$rest" ${skip:+--exclude-checks "$skip"} \
    -H "Authorization: Bearer fuzz" \
    --checks all --max-examples "$N" --request-timeout 60 || rc=1
  if grep -q '"status":500\|status=500' "$TMP/$base.log"; then
    echo "server logged a 500:"; grep 'status=500\|"status":500' "$TMP/$base.log" | head; rc=1
  fi
done
exit "$rc"
