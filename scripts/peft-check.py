#!/usr/bin/env python3
"""Cross-check loradex against the reference implementation (needs torch, transformers, peft).

    scripts/peft-check.py BASE_DIR ADAPTER_EXPORT_DIR MERGED_DIR LORADEX_PREDICT_JSON

Loads BASE_DIR with transformers, applies the exported adapter with PeftModel.from_pretrained,
and compares its logits with `loradex predict --json` output for the same texts; then loads the
`loradex merge` directory with transformers alone and compares again. Exits 1 on a mismatch.
"""
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from peft import PeftModel

base, adapter, merged, pred_path = sys.argv[1:5]
pred = json.load(open(pred_path))
texts = [r["text"] for r in pred["results"]]
want = torch.tensor([r["logits"] for r in pred["results"]])
tok = AutoTokenizer.from_pretrained(base)
enc = tok(texts, padding=True, return_tensors="pt")
n_labels = want.shape[1]
ok = True
with torch.no_grad():
    # the adapter's saved head replaces the base's, whose label count may differ
    m = AutoModelForSequenceClassification.from_pretrained(base, num_labels=n_labels, ignore_mismatched_sizes=True).eval()
    pm = PeftModel.from_pretrained(m, adapter).eval()
    got = pm(**enc).logits
    d = (got - want).abs().max().item()
    print(f"PeftModel.from_pretrained(loradex export): max |logit diff| = {d:.2e}")
    ok &= d < 1e-4
    mm = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    got = mm(**enc).logits
    d = (got - want).abs().max().item()
    print(f"transformers on the loradex merge directory: max |logit diff| = {d:.2e}")
    ok &= d < 1e-4
print("OK" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
