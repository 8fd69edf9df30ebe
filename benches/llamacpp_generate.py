#!/usr/bin/env python3
"""Reference for `loradex bench generate`: llama.cpp (llama-cpp-python) greedy decode on the
SmolLM2-135M Q4_1 GGUF, n_threads = 2. Prints (a) single-stream decode tok/s for 128 new tokens,
prompt eval excluded, best of 3; (b) aggregate tok/s of 16 concurrent /v1/completions requests to
`python -m llama_cpp.server` on 127.0.0.1 (that server holds one Llama behind a lock, so it
serializes them); (c) aggregate tok/s of 16 sequences decoded together in one llama_batch (what a
batching server gets from llama.cpp); and the greedy ids of the first 32 new tokens.
Needs llama-cpp-python. usage: python benches/llamacpp_generate.py [--model M.gguf] [--threads 2]
[--streams 16] [--stream-tokens 64] [--no-server]

On a CPU with AMX (Intel Sapphire Rapids and later), llama-cpp-python 0.3.36 built with
GGML_NATIVE compiles llama.cpp's AMX kernel, which died here with SIGILL at its first `tilezero`
(asking Linux for the tile state first did not help). Build it without AMX and otherwise
native:
  CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' \
    -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'" pip install llama-cpp-python"""
import argparse, ctypes, json, os, socket, subprocess, sys, threading, time, urllib.request
import numpy as np, llama_cpp
from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--tokens", type=int, default=128)
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--streams", type=int, default=16)
ap.add_argument("--stream-tokens", type=int, default=64)
ap.add_argument("--prompt", default="The capital of France is")
ap.add_argument("--no-server", action="store_true")
a = ap.parse_args()
llm = Llama(a.model, n_threads=a.threads, n_threads_batch=a.threads, n_ctx=2048, verbose=False)
prompt = llm.tokenize(a.prompt.encode(), add_bos=True)  # BOS only where the GGUF asks for it
print(f"llama-cpp-python {llama_cpp.__version__}, {a.threads} threads, prompt ids {prompt}")

def single():  # seconds for new tokens 2..N (N-1 decode steps incl. sampling), and the ids
    llm.reset(); ids, t0 = [], None
    for tok in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        ids.append(tok)
        if len(ids) == 1: t0 = time.perf_counter()
        if len(ids) == a.tokens: return time.perf_counter() - t0, ids

single()  # warm-up
best, ids = min(single() for _ in range(a.runs))
print("greedy ids (32):", ids[:32])
print(f"llama.cpp single-stream: {(a.tokens - 1) / best:.1f} tok/s ({a.tokens} new tokens, prompt excluded, best of {a.runs})")

# (c) one context, n_seq_max = streams, all sequences advanced by one llama_decode per step
S, N = a.streams, a.stream_tokens
cp = llama_cpp.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = S * 256 * -(-(len(prompt) + N + 8) // 256), 512, 512, S
cp.n_threads = cp.n_threads_batch = a.threads
ctx = llama_cpp.llama_init_from_model(llm._model.model, cp)
batch = llama_cpp.llama_batch_init(max(S * len(prompt), S), 0, S)
def fill(toks):  # toks: [(token, pos, seq)] each wanting logits
    for i, (t, p, s) in enumerate(toks):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, p, 1, 1
        batch.seq_id[i][0] = s
    batch.n_tokens = len(toks)
    assert llama_cpp.llama_decode(ctx, batch) == 0
def batched():
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    t = time.perf_counter()
    fill([(tok, p, s) for s in range(S) for p, tok in enumerate(prompt)])
    rows = [s * len(prompt) + len(prompt) - 1 for s in range(S)]; out = [[] for _ in range(S)]
    for step in range(N):
        nv = llm.n_vocab()
        nxt = [int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, r), shape=(nv,)))) for r in rows]
        for s in range(S): out[s].append(nxt[s])
        if step == N - 1: break
        fill([(nxt[s], len(prompt) + step, s) for s in range(S)]); rows = list(range(S))
    return time.perf_counter() - t, out
batched()
bt, bout = min(batched() for _ in range(2))
if bout[0][:32] != ids[:32]: print("note: batched greedy ids (32) differ from single-stream:", bout[0][:32])
print(f"llama.cpp batched {S} streams (one llama_batch): {S * N / bt:.1f} tok/s aggregate "
      f"({S} x {N} new tokens in {bt:.2f} s, prompt included)")
llama_cpp.llama_batch_free(batch); llama_cpp.llama_free(ctx)

if a.no_server: sys.exit()
with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
srv = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", a.model, "--n_threads", str(a.threads),
                        "--n_threads_batch", str(a.threads), "--n_ctx", "2048", "--host", "127.0.0.1",
                        "--port", str(port), "--verbose", "False"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
url = f"http://127.0.0.1:{port}/v1/completions"
def complete(res, i):
    body = json.dumps({"prompt": a.prompt, "max_tokens": N, "temperature": 0.0}).encode()
    t = time.perf_counter()
    r = json.load(urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"}), timeout=600))
    res[i] = (t, time.perf_counter(), r["usage"]["completion_tokens"])
try:
    for _ in range(120):
        try: complete([None], 0); break  # also the warm-up
        except OSError:
            if srv.poll() is not None: sys.exit("llama_cpp.server exited (pip install 'llama-cpp-python[server]')")
            time.sleep(1)
    else: sys.exit("llama_cpp.server did not answer in 120 s")
    res = [None] * S
    th = [threading.Thread(target=complete, args=(res, i)) for i in range(S)]
    t0 = time.perf_counter(); [x.start() for x in th]; [x.join() for x in th]; wall = time.perf_counter() - t0
    lat = sorted(e - b for b, e, _ in res); toks = sum(n for *_, n in res)
    print(f"llama.cpp server {S} concurrent streams: {toks / wall:.1f} tok/s aggregate ({toks} tokens in {wall:.2f} s; "
          f"latency min {lat[0]:.2f} / median {lat[S // 2]:.2f} / max {lat[-1]:.2f} s: "
          f"{'staggered, i.e. serialized' if lat[-1] > 0.5 * S * lat[0] else 'not staggered'})")
finally:
    srv.terminate(); srv.wait(10)
