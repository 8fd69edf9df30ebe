#!/usr/bin/env bash
# Fuzzes loradex's parsers of untrusted bytes with cargo-fuzz (libFuzzer), one target after
# the other, SECONDS each (default 600), and prints the executions per target. Not run by CI.
#
#   scripts/fuzz.sh [SECONDS]            all targets
#   scripts/fuzz.sh SECONDS TARGET...    only these
#
# Needs `cargo install cargo-fuzz --locked`. Built with the stable toolchain: cargo-fuzz's
# default AddressSanitizer needs `-Zsanitizer=address` (nightly only), so the targets are built
# with `--sanitizer none`, which passes no -Z flag. The fuzzed code is safe Rust, so what
# libFuzzer catches here are panics (debug assertions and overflow checks are on), timeouts and
# unbounded memory (-rss_limit_mb), not the memory errors an ASan build would add.
#
# Corpora are seeded from the fixtures (../shared/fixtures/peft{,2}) and the repo's adapters/
# into fuzz/corpus/TARGET (git-ignored; seeds are copied, never committed). A crash leaves its
# input in fuzz/artifacts/TARGET/; reproduce it with
#   fuzz/target/x86_64-unknown-linux-gnu/release/TARGET fuzz/artifacts/TARGET/crash-...
# and minimize it with `-minimize_crash=1 -runs=100000` on the same command line.
# Environment: FUZZ_JOBS (cargo build jobs, default 2), FIXTURES (default ../shared/fixtures).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PER=${1:-600}
shift || true
ALL=(safetensors adapter_config ref_digest recipe dataset http_bodies oci_manifest gguf base_config)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL[@]}"); fi
FIXTURES=${FIXTURES:-$ROOT/../shared/fixtures}
[ -d "$FIXTURES" ] || FIXTURES=/work/shared/fixtures
BIN=$ROOT/fuzz/target/x86_64-unknown-linux-gnu/release

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz --locked" >&2; exit 2; }

# One build of every target (they share the instrumented dependency build). 16 codegen units
# instead of cargo-fuzz's default 1: candle and gemm at one unit take far longer to build on a
# 2-core machine, for little speed in the parsers fuzzed here.
(cd fuzz && CARGO_BUILD_JOBS=${FUZZ_JOBS:-2} cargo fuzz build --sanitizer none --codegen-units 16)

seed() { # seed TARGET FILE [NAME]: copy FILE into TARGET's corpus
    local dir=$ROOT/fuzz/corpus/$1
    mkdir -p "$dir"
    cp -f "$2" "$dir/seed-${3:-$(basename "$(dirname "$2")")-$(basename "$2")}"
}

seed_all() {
    local tmp f n i
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    i=0
    # safetensors: adapter files as they are, and every fixture's bare JSON header (the target
    # frames an input starting with `{` itself, so header mutations reach the offset checks)
    while IFS= read -r f; do
        i=$((i + 1))
        if [ "$(stat -c %s "$f")" -le 65536 ]; then seed safetensors "$f" "file$i.safetensors"; fi
        n=$(od -An -tu8 -N8 "$f" | tr -d ' ')
        if [ "$n" -le 65536 ]; then
            head -c "$((8 + n))" "$f" | tail -c +9 > "$tmp/h"
            seed safetensors "$tmp/h" "header$i.json"
        fi
    done < <(find "$FIXTURES" -name '*.safetensors' | sort)
    i=0
    while IFS= read -r f; do
        i=$((i + 1))
        seed adapter_config "$f" "config$i.json"
    done < <(find "$FIXTURES" -name adapter_config.json | sort)
    # base configs: every fixture base's config.json (the shared sets' and loradex's own)
    i=0
    while IFS= read -r f; do
        i=$((i + 1))
        seed base_config "$f" "base$i.json"
    done < <(find "$FIXTURES" "$ROOT/tests/fixtures" -path '*/base/config.json' | sort)
    # refs and digests: the recipes' names, the fixtures' digests, and a few edge spellings
    {
        sed -n 's/^name = "\(.*\)"$/\1/p' adapters/*/recipe.toml
        find "$FIXTURES" -name adapter_config.json | head -3 | xargs sha256sum | sed 's/^\([0-9a-f]*\) .*/sha256:\1/'
        printf '%s\n' en/sentiment ko/customer-service:v2 a.b_c-d/e:1.0 sha256 'a/../b:x' 'a:b:c' 'x:'
    } > "$tmp/refs"
    i=0
    while IFS= read -r f; do
        i=$((i + 1))
        printf '%s' "$f" > "$tmp/r"
        seed ref_digest "$tmp/r" "ref$i"
    done < "$tmp/refs"
    # recipes, alone and followed by a NUL and --set overrides
    for f in adapters/*/recipe.toml; do
        seed recipe "$f"
        { cat "$f"; printf '\0train.epochs=2\nlora.target_modules=["query","key"]\ndata.labels.x=1\n'; } > "$tmp/s"
        seed recipe "$tmp/s" "$(basename "$(dirname "$f")")-sets.toml"
    done
    # datasets: first byte = mode (bit 0 JSONL, bit 1 labels required, high bits split fraction)
    for f in adapters/*/train.csv adapters/*/train.jsonl; do
        case $f in *.jsonl) m='\101' ;; *) m='\102' ;; esac
        { printf "$m"; cat "$f"; } > "$tmp/d"
        seed dataset "$tmp/d" "$(basename "$(dirname "$f")")-$(basename "$f")"
    done
    # HTTP bodies: first byte = endpoint (0 classify, 1 completions, 2 chat) + header/query bits
    i=0
    for b in '{"adapter": "en/sentiment:v1", "texts": ["배송이 늦어요", "great"]}' '{"adapter": null, "texts": ["x"]}' \
        '{"model": "base:en/sentiment:v1", "prompt": "hi", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 1, "stop": ["\n"], "stream": true}' \
        '{"model": "base", "prompt": [1, 2, 3], "adapter": "a"}' \
        '{"model": "base", "messages": [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": [{"type": "text", "text": "hi"}]}], "max_completion_tokens": 4, "n": 1}'; do
        for sel in '\000' '\001' '\002' '\021' '\042'; do
            i=$((i + 1)); { printf "$sel"; printf '%s' "$b"; } > "$tmp/b"; seed http_bodies "$tmp/b" "body$i.json"
        done
    done
    # OCI manifests as `loradex push` writes them, and loradex's metadata blob
    local d1=sha256:$(printf a | sha256sum | cut -d' ' -f1) d2=sha256:$(printf b | sha256sum | cut -d' ' -f1)
    printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.loradex.adapter.v1+json","config":{"mediaType":"application/vnd.loradex.adapter.v1+json","digest":"'$d1'","size":120},"layers":[{"mediaType":"application/vnd.loradex.peft.config.v1+json","digest":"'$d2'","size":300,"annotations":{"org.opencontainers.image.title":"adapter_config.json"}},{"mediaType":"application/vnd.loradex.peft.safetensors.v1","digest":"'$d1'","size":4096,"annotations":{"org.opencontainers.image.title":"adapter_model.safetensors"}}],"annotations":{"org.loradex.rank":"8"}}' > "$tmp/m"
    seed oci_manifest "$tmp/m" manifest.json
    printf '%s' '{"media_type":"application/vnd.loradex.adapter.v1+json","base_fingerprint":"'$d1'","base_arch":"bert","task":"SEQ_CLS","labels":["a","b"],"metrics":{"accuracy":0.9},"provenance":{"by":"train"}}' > "$tmp/m"
    seed oci_manifest "$tmp/m" artifact-config.json
    # GGUF: a tiny llama base (2 layers, hidden 32, a 12-token BPE vocabulary), its matrices in
    # Q4_1 and in Q8_0, and the Q4_1 one with a 12-piece SentencePiece vocabulary instead (the
    # test suite's seeds, `loradex::fuzzing::tiny_gguf` and `tiny_gguf_spm`, are the same shape)
    for v in 3:gpt2 8:gpt2 3:llama; do
        python3 - "$tmp/g" "${v%%:*}" "${v##*:}" <<'PY'
import random, struct, sys
out, qtype, tok_model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
random.seed(qtype)
s = lambda b: struct.pack("<Q", len(b)) + b
kv = lambda k, t, v: s(k.encode()) + struct.pack("<I", t) + v
arr = lambda t, items: struct.pack("<IQ", t, len(items)) + b"".join(items)
tokens = ["<s>", "</s>", "h", "e", "l", "o", "\u0120", "he", "ll", "hell", "hello", "\u0120h"]
merges = ["h e", "l l", "he ll", "hell o", "\u0120 h"]
tmpl = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
meta = [kv("general.architecture", 8, s(b"llama")), kv("general.alignment", 4, struct.pack("<I", 32))]
for k, v in [("block_count", 2), ("context_length", 64), ("embedding_length", 32), ("feed_forward_length", 64),
             ("attention.head_count", 2), ("attention.head_count_kv", 1)]:
    meta.append(kv("llama." + k, 4, struct.pack("<I", v)))
meta += [kv("llama.rope.freq_base", 6, struct.pack("<f", 10000.0)), kv("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5))]
if tok_model == "gpt2":
    meta += [kv("tokenizer.ggml.model", 8, s(b"gpt2")), kv("tokenizer.ggml.pre", 8, s(b"smollm")),
             kv("tokenizer.ggml.tokens", 9, arr(8, [s(t.encode()) for t in tokens])),
             kv("tokenizer.ggml.merges", 9, arr(8, [s(m.encode()) for m in merges])),
             kv("tokenizer.ggml.token_type", 9, arr(5, [struct.pack("<i", 3 if i < 2 else 1) for i in range(len(tokens))])),
             kv("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 0)), kv("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 1))]
else:  # SentencePiece: pieces with scores and types (unknown, control, byte, normal)
    pieces = ["<unk>", "<s>", "</s>", "<0x21>", "\u2581", "h", "e", "l", "o", "he", "ll", "\u2581he"]
    types = [2, 3, 3, 6] + [1] * 8
    meta += [kv("tokenizer.ggml.model", 8, s(b"llama")),
             kv("tokenizer.ggml.tokens", 9, arr(8, [s(t.encode()) for t in pieces])),
             kv("tokenizer.ggml.scores", 9, arr(6, [struct.pack("<f", -float(i)) for i in range(len(pieces))])),
             kv("tokenizer.ggml.token_type", 9, arr(5, [struct.pack("<i", t) for t in types])),
             kv("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 1)), kv("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 2)),
             kv("tokenizer.ggml.unknown_token_id", 4, struct.pack("<I", 0))]
meta += [kv("tokenizer.ggml.add_bos_token", 7, b"\x01"), kv("tokenizer.chat_template", 8, s(tmpl.encode()))]
def f32(n): return b"".join(struct.pack("<f", random.uniform(-0.25, 0.25)) for _ in range(n))
def quant(rows, cols):  # random blocks: d and m as f16, then the quants
    per = {3: lambda: struct.pack("<ee", 0.01, -0.05) + bytes(random.randrange(256) for _ in range(16)),
           8: lambda: struct.pack("<e", 0.01) + bytes(random.randrange(256) for _ in range(32))}[qtype]
    return b"".join(per() for _ in range(rows * cols // 32))
tensors = [("token_embd.weight", [32, 12], 0, f32(12 * 32)), ("output_norm.weight", [32], 0, f32(32))]
for l in range(2):
    for n, r, c in [("attn_q", 32, 32), ("attn_k", 16, 32), ("attn_v", 16, 32), ("attn_output", 32, 32),
                    ("ffn_gate", 64, 32), ("ffn_up", 64, 32), ("ffn_down", 32, 64)]:
        tensors.append((f"blk.{l}.{n}.weight", [c, r], qtype, quant(r, c)))
    for n in ["attn_norm", "ffn_norm"]:
        tensors.append((f"blk.{l}.{n}.weight", [32], 0, f32(32)))
pad = lambda b: b + bytes(-len(b) % 32)
infos, data = b"", b""
for name, dims, t, raw in tensors:
    infos += s(name.encode()) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", t, len(data))
    data = pad(data + raw)
head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)) + b"".join(meta) + infos
open(out, "wb").write(pad(head) + data)
PY
        seed gguf "$tmp/g" "tiny-llama-${v/:/-}.gguf"
    done
}
seed_all

total=0
failed=()
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log=fuzz/artifacts/$t/last-run.log
    echo "== $t: ${SECONDS_PER}s"
    rc=0
    "$BIN/$t" "fuzz/corpus/$t" -max_total_time="$SECONDS_PER" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" > "$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    [ -n "$execs" ] || execs=$(sed -n 's/^#\([0-9]*\)[[:space:]]*DONE.*/\1/p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    echo "$t: ${execs:-?} executions in ${secs:-?} s (rc $rc; log $log)"
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        grep -m5 -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" || true
    fi
    total=$((total + ${execs:-0}))
done
echo "total: $total executions"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
