#!/usr/bin/env python3
"""Reference for `loradex bench train`: PEFT + PyTorch seconds per training step on this
machine, same setup (random BERT-base shapes, LoRA r=8 on query/value + classifier head,
batch 8 x 128 tokens, AdamW, torch threads = cores; DEVICE=cuda for the GPU). Needs torch,
transformers, peft."""
import os, time, torch
from transformers import BertConfig, BertForSequenceClassification
from peft import LoraConfig, get_peft_model

torch.set_num_threads(int(os.environ.get("THREADS", os.cpu_count())))
torch.manual_seed(0)
dev = torch.device(os.environ.get("DEVICE", "cpu"))
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
cfg = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
model = BertForSequenceClassification(cfg)
model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1,
                                         target_modules=["query", "value"]))
model = model.to(dev).train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
ids = torch.randint(1000, 20000, (8, 128)).to(dev)
labels = torch.randint(0, 2, (8,)).to(dev)
def step():
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); opt.zero_grad(); sync()
with torch.no_grad():
    model.eval(); t = time.perf_counter(); model(input_ids=ids); sync(); fwd = time.perf_counter() - t; model.train()
step()  # warm-up
steps = int(os.environ.get("STEPS", "3"))
times = []
for _ in range(steps):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
best, mean = min(times), sum(times) / len(times)
print(f"PEFT+PyTorch {torch.__version__} on {dev}, {torch.get_num_threads()} threads: inference forward {fwd:.3f} s, "
      f"train step {best:.3f} s (best of {steps}), {mean:.3f} s mean")
print(f"best_s {best:.6f} mean_s {mean:.6f}")
