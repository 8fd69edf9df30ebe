#!/usr/bin/env python3
"""Reference for `loradex bench generate`: PEFT + transformers greedy-decode tokens/s on the
dequantized SmolLM2-135M (f32, torch threads = 2), base model and with a LoRA adapter (r=8,
alpha=16 on all attention + MLP projections, lora_B ~ N(0, 0.02) seeded 0 so it changes outputs).
--save-adapter DIR also saves that adapter (save_pretrained) plus DIR/expected.json with the greedy
ids of 32 new tokens for base and LoRA, for loradex to cross-check. Needs torch, transformers, peft.
usage: python benches/peft_generate.py [--model models/smollm2-hf] [--threads 2] [--save-adapter DIR]"""
import argparse, json, os, time, warnings, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import LoraConfig, get_peft_model

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="models/smollm2-hf")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--tokens", type=int, default=128)
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--prompt", default="The capital of France is")
ap.add_argument("--save-adapter", metavar="DIR")
a = ap.parse_args()
warnings.filterwarnings("ignore", category=FutureWarning)
torch.set_num_threads(a.threads)
tok = AutoTokenizer.from_pretrained(a.model)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
ids = tok(a.prompt, return_tensors="pt").input_ids

@torch.no_grad()
def gen(m, n):  # greedy, exactly n new tokens (EOS does not stop it), returns (new ids, seconds)
    t = time.perf_counter()
    out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                     eos_token_id=None, pad_token_id=tok.pad_token_id or 0,
                     stop_strings=None, temperature=None, top_p=None, top_k=None)
    dt = time.perf_counter() - t
    new = out[0, ids.shape[1]:].tolist()
    assert len(new) == n, (len(new), n)
    return new, dt

@torch.no_grad()
def argmax_loop(m, n):  # plain greedy with the KV cache, to check generate()
    out = m(input_ids=ids, use_cache=True); new = []
    for _ in range(n):
        nxt = out.logits[0, -1].argmax().item(); new.append(nxt)
        out = m(input_ids=torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
    return new

def bench(m, label):
    gen(m, 8)  # warm-up
    first = min(gen(m, 1)[1] for _ in range(a.runs))  # prompt + first token
    full = min(gen(m, a.tokens)[1] for _ in range(a.runs))
    print(f"{label}: {a.tokens / full:.1f} tok/s ({a.tokens} new tokens incl. prompt, best of {a.runs}), "
          f"decode-only {(a.tokens - 1) / (full - first):.1f} tok/s")

print(f"transformers {__import__('transformers').__version__}, peft {__import__('peft').__version__}, "
      f"torch {torch.__version__}, {torch.get_num_threads()} threads, prompt ids {ids[0].tolist()}")
base32 = gen(model, 32)[0]
assert base32 == argmax_loop(model, 32), "generate() disagrees with an argmax loop"
print("base greedy ids (32):", base32)
bench(model, "PEFT base (transformers f32)")

torch.manual_seed(0)
model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0,
                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
with torch.no_grad():
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.normal_(0.0, 0.02)
model.eval()
lora32 = gen(model, 32)[0]
assert lora32 == argmax_loop(model, 32), "generate() disagrees with an argmax loop (LoRA)"
print("lora greedy ids (32):", lora32)
print("LoRA changes greedy output:", lora32 != base32)
bench(model, "PEFT LoRA r=8 unmerged (transformers f32)")

if a.save_adapter:
    model.save_pretrained(a.save_adapter)
    with open(os.path.join(a.save_adapter, "expected.json"), "w") as f:
        json.dump({"prompt": a.prompt, "prompt_ids": ids[0].tolist(), "base_greedy_ids": base32,
                   "lora_greedy_ids": lora32}, f, indent=1)
    print("wrote", a.save_adapter)
