#!/usr/bin/env bash
# Scale-out demo: a real OCI registry (Debian's docker-registry), two `loradex serve --registry`
# replicas on empty stores, and nginx routing each adapter to one replica with
# `hash $arg_adapter consistent`, so an adapter stays warm on one replica. A trainer pushes each
# adapter once; every replica pulls what it is asked for on first use. Needs docker-registry
# and nginx (apt-get install -y docker-registry nginx) and a built loradex.
#   scripts/replicas.sh [BASE_DIR ADAPTER_DIR...]   (default: the PEFT fixture's BERT case)
set -euo pipefail
cd "$(dirname "$0")/.."
lx=${LORADEX:-target/release/loradex}
[ -x "$lx" ] || lx=target/debug/loradex
fx=${LORADEX_FIXTURES:-../shared/fixtures/peft}
base=${1:-$fx/bert-seqcls-qv/base}
shift || true
adapters=("$@")
[ ${#adapters[@]} -gt 0 ] || adapters=("$fx/bert-seqcls-qv/adapter" "$fx/bert-seqcls-qv/adapters_multi/other")
work=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; nginx -c "$work/nginx.conf" -p "$work" -s stop 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "$1 did not come up" >&2; return 1; }

# 1. the registry
rp=$(port)
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$work/registry" "$rp" > "$work/registry.yml"
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 & pids+=($!)
wait_up "http://127.0.0.1:$rp/v2/"
reg=127.0.0.1:$rp/team

# 2. a trainer's store pushes each adapter once
names=()
for i in "${!adapters[@]}"; do
  n=domain$i
  "$lx" --home "$work/trainer" import "${adapters[$i]}" --name "$n:v1" --base "$base" >/dev/null
  echo "push $n:v1 -> $reg/$n:v1 $("$lx" --home "$work/trainer" push "$n:v1" "$reg/$n:v1" --plain-http 2>/dev/null)"
  names+=("$n:v1")
done

# 3. two replicas on empty stores, pulling on a miss
ports=()
for r in 1 2; do
  p=$(port); ports+=("$p")
  "$lx" --home "$work/replica$r" serve --base "$base" --addr "127.0.0.1:$p" --registry "$reg" --plain-http 2>"$work/replica$r.log" & pids+=($!)
  wait_up "http://127.0.0.1:$p/health"
done

# 4. nginx: consistent hashing on the adapter named in the query string
np=$(port)
mkdir -p "$work/logs"
cat > "$work/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/logs/error.log;
events {}
http {
  access_log $work/logs/access.log;
  upstream loradex {
    hash \$arg_adapter consistent;
    server 127.0.0.1:${ports[0]};
    server 127.0.0.1:${ports[1]};
  }
  server {
    listen 127.0.0.1:$np;
    location / { proxy_pass http://loradex; }
  }
}
EOF
nginx -c "$work/nginx.conf" -p "$work"
wait_up "http://127.0.0.1:$np/health"

# 5. answers through nginx (each adapter lands on one replica) and from every replica directly
for n in "${names[@]}"; do
  for _ in 1 2 3; do
    curl -sf "http://127.0.0.1:$np/v1/classify?adapter=$n" -H 'content-type: application/json' \
      -d "{\"adapter\": \"$n\", \"texts\": [\"환불해 주세요\"]}" >/dev/null
  done
  echo "via nginx: $n -> $(curl -sf "http://127.0.0.1:$np/v1/classify?adapter=$n" -H 'content-type: application/json' -d "{\"adapter\": \"$n\", \"texts\": [\"환불해 주세요\"]}")"
done
# through nginx each adapter went to one replica only: together they pulled each adapter once
for r in 1 2; do
  pulls=$(curl -sf "http://127.0.0.1:${ports[$((r - 1))]}/metrics" | awk '/^loradex_registry_pulls_total/ {print $2}')
  echo "after routing: replica $r pulled $pulls adapter(s)"
done
for r in 0 1; do
  for n in "${names[@]}"; do
    label=$(curl -sf "http://127.0.0.1:${ports[$r]}/v1/classify" -H 'content-type: application/json' \
      -d "{\"adapter\": \"$n\", \"texts\": [\"환불해 주세요\"]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["label"])')
    echo "replica $((r + 1)) answers $n: $label"
  done
done
for r in 1 2; do
  pulls=$(curl -sf "http://127.0.0.1:${ports[$((r - 1))]}/metrics" | awk '/^loradex_registry_pulls_total/ {print $2}')
  echo "after asking both directly: replica $r pulled $pulls adapter(s)"
done
