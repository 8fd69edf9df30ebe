"""loradex's own golden fixtures, for families the shared sets lack, made by the reference
implementation (PyTorch + transformers + PEFT) the way ../shared/fixtures/peft2/make_fixtures2.py
makes its decoder cases: the same layout (base/, adapter/, expected.safetensors, case.json),
texts, tokenizer recipe and tolerance.

- qwen3-causal: Llama's layout plus an RMSNorm over each head of q and k before RoPE
  (`q_norm`, `k_norm`), an explicit `head_dim` (16, not hidden / heads = 8).
- gemma3-causal (`gemma3_text`): Gemma's `(1 + w)` norms, scaled embeddings and GeGLU, plus
  per-head q/k norms, norms after attention and around the MLP, scores scaled by
  `query_pre_attn_scalar`, and sliding-window layers (window 4, shorter than the texts) with
  their own RoPE base beside a global one.
- gemma3-linear-causal: the same, its global layers' RoPE scaled linearly (factor 8, as
  Gemma 3 4B and up have it; local layers unscaled).
- llama3-rope-causal: a Llama whose RoPE is Llama 3.1's (`rope_type` `llama3`: low
  frequencies divided by `factor`, high ones kept, a smooth blend between), with an original
  context of 16 so that the fixture's 16-wide heads have frequencies of all three kinds.
- phi3-longrope-causal: Phi-3.5's `longrope` RoPE (per-frequency short and long factors, cos
  and sin scaled by the attention factor), an original context of 64 under a declared 128, so
  the fixture's texts (37 positions) run on the short factors, as every sequence loradex
  admits for such a base does.
- phi3-partial-causal: Phi-4-mini's shape of RoPE, on half of each head
  (`partial_rotary_factor` 0.5; the rest passes through), with long rope as above.
- smollm3-causal: SmolLM3's Llama layout with RoPE left out of every fourth layer
  (`no_rope_layers`), four layers so that one of them has none.
- granite-causal: IBM Granite's Llama layout with its four multipliers set away from 1
  (embeddings 3, residual branches 0.5, scores 0.2 against 1/sqrt(16) = 0.25, logits / 2.5).
- olmo2-causal: OLMo 2's norms after the attention and the MLP only (no pre-norms), and
  q/k norms over all heads at once.
- gemma2-causal: Gemma's norms, embeddings and GeGLU, the sandwich norms, local layers
  alternating with global ones (one RoPE base), and soft-capped attention scores and final
  logits (caps 0.5 and 0.4, small enough to bend these small scores and logits). Its query
  scale is head_dim's and its layer pattern llama.cpp's (even layers local), so that a GGUF
  of it means the same.
- qwen2-yarn-causal: Qwen2 (q/k/v biases) with YaRN RoPE (`rope_type` `yarn`, factor 4, an
  original context of 2048 so that the 16-wide heads have kept, blended and interpolated
  frequencies; cos and sin scaled by the default attention factor 0.1·ln 4 + 1).
- olmo3-causal: OLMo 3, OLMo 2's norms with sliding-window layers (window 4, shorter than the
  texts) beside every fourth full one, the full layers' RoPE scaled by YaRN (explicit
  `attention_factor`, `beta_fast` 8) and the sliding ones plain, as the long-context
  releases have it.

Every norm weight is moved off its initial value, as training would, so that each matters.

Usage (a scratch venv with torch, transformers >= 5 and peft; never in CI):
    python scripts/make-fixtures3.py tests/fixtures [CASE ...]   (every case when none is named)
"""
import json
import os
import sys

import peft
import torch
import transformers
import transformers as T
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

OUT = sys.argv[1]
ONLY = set(sys.argv[2:])
CORPUS = [
    "배송이 늦어서 불편합니다", "상담사님 친절하시네요", "씨발 빨리 보내라", "미친놈들 진짜 짜증나네",
    "예쁘네요 남자친구 있어요?", "몸매 좋으신데 같이 저녁 드실래요?", "환불 언제 되나요",
    "the delivery was late and i am upset", "thank you for the quick help", "this product is great",
    "terrible service never again", "where is my refund", "the agent was very kind", "i love it",
] * 4
TEXTS = ["배송이 늦어서 불편합니다", "씨발 빨리 보내라", "예쁘네요 남자친구 있어요?",
         "thank you for the quick help", "terrible service never again, where is my refund?"]


def bpe(vocab_size, bos="<s>", eos="</s>", pad="<pad>"):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", bos, eos, pad],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, tr)
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token=bos, eos_token=eos, pad_token=pad)
    fast.padding_side = "right"
    return fast


def case(out, seed, model_cls, cfg, fast, lora, norm_suffixes, norm_scale):
    if ONLY and os.path.basename(out) not in ONLY:
        return
    torch.manual_seed(seed)
    os.makedirs(out, exist_ok=True)
    base = model_cls(cfg).eval()
    # norms start at their identity: move them, as training would, so that they matter
    with torch.no_grad():
        for n, p in base.named_parameters():
            if n.endswith(norm_suffixes):
                p.add_(norm_scale(p)) if norm_scale else p.mul_(1 + 0.5 * torch.randn_like(p))
    base.save_pretrained(os.path.join(out, "base"), safe_serialization=True)
    fast.save_pretrained(os.path.join(out, "base"))
    enc = fast(TEXTS, padding=True, return_tensors="pt")
    enc.pop("token_type_ids", None)
    prompt = fast(["the delivery was"], return_tensors="pt")
    prompt.pop("token_type_ids", None)
    with torch.no_grad():
        base_logits = base(**enc).logits
    pm = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, lora_dropout=0.0, **lora)).eval()
    with torch.no_grad():
        lora_logits = pm(**enc).logits
        gen = pm.generate(**prompt, max_new_tokens=12, do_sample=False)
    pm.save_pretrained(os.path.join(out, "adapter"))
    t = dict(input_ids=enc["input_ids"].long(), attention_mask=enc["attention_mask"].long(),
             base_logits=base_logits, lora_logits=lora_logits, greedy_ids=gen.long(), prompt_ids=prompt["input_ids"].long())
    with torch.no_grad():
        t["merged_logits"] = pm.merge_and_unload()(**enc).logits
    meta = dict(kind="causal-lm", model_type=cfg.model_type, texts=TEXTS, lora=lora, seed=seed, padding_side="right", atol=1e-4,
                notes="logits compared only where attention_mask==1; greedy_ids: prompt_ids + 12 greedy tokens with the adapter",
                torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__)
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(out, "expected.safetensors"))
    with open(os.path.join(out, "case.json"), "w") as f:
        json.dump(meta, f, ensure_ascii=False, indent=2)
    print("wrote", out, {k: tuple(v.shape) for k, v in t.items()})


def main():
    fast = bpe(300)
    ids = dict(vocab_size=len(fast), bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    all7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = T.Qwen3Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                        intermediate_size=64, max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False, **ids)
    case(os.path.join(OUT, "qwen3-causal"), 28, T.Qwen3ForCausalLM, cfg, fast, dict(r=8, lora_alpha=16, target_modules=all7),
         ("q_norm.weight", "k_norm.weight"), None)
    cfg = T.Gemma3TextConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                             intermediate_size=64, max_position_embeddings=128, rms_norm_eps=1e-6, query_pre_attn_scalar=24,
                             sliding_window=4, layer_types=["sliding_attention", "full_attention", "sliding_attention"], **ids)
    # Gemma's norms scale by 1 + w from w = 0
    case(os.path.join(OUT, "gemma3-causal"), 29, T.Gemma3ForCausalLM, cfg, fast, dict(r=4, lora_alpha=8, target_modules=all7),
         ("norm.weight", "layernorm.weight"), lambda p: 0.5 * torch.randn_like(p))
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16}
    cfg = T.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=96, max_position_embeddings=128, rms_norm_eps=1e-6, rope_parameters=rope,
                        tie_word_embeddings=False, **ids)
    case(os.path.join(OUT, "llama3-rope-causal"), 32, T.LlamaForCausalLM, cfg, fast, dict(r=8, lora_alpha=16, target_modules=all7),
         ("norm.weight",), None)
    short = [1.0, 1.05, 1.2, 1.5, 2.0, 2.6, 3.1, 3.5]
    long_ = [1.0, 1.3, 2.0, 3.0, 5.0, 8.0, 12.0, 16.0]
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": short, "long_factor": long_,
            "original_max_position_embeddings": 64}
    cfg = T.Phi3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=96, max_position_embeddings=128, original_max_position_embeddings=64,
                       rms_norm_eps=1e-6, rope_parameters=rope, tie_word_embeddings=False, **ids)
    case(os.path.join(OUT, "phi3-longrope-causal"), 33, T.Phi3ForCausalLM, cfg, fast,
         dict(r=8, lora_alpha=16, target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]), ("norm.weight",), None)
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, 1.3, 2.1, 3.4], "long_factor": [1.0, 2.0, 6.0, 16.0],
            "original_max_position_embeddings": 64, "partial_rotary_factor": 0.5}
    cfg = T.Phi3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=96, max_position_embeddings=128, original_max_position_embeddings=64,
                       partial_rotary_factor=0.5, rms_norm_eps=1e-6, rope_parameters=rope, tie_word_embeddings=False, **ids)
    case(os.path.join(OUT, "phi3-partial-causal"), 34, T.Phi3ForCausalLM, cfg, fast,
         dict(r=8, lora_alpha=16, target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]), ("norm.weight",), None)
    cfg = T.SmolLM3Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=96, max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False, **ids)
    case(os.path.join(OUT, "smollm3-causal"), 35, T.SmolLM3ForCausalLM, cfg, fast, dict(r=8, lora_alpha=16, target_modules=all7),
         ("norm.weight",), None)
    cfg = T.GraniteConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=96, max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False,
                          embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=2.5, **ids)
    case(os.path.join(OUT, "granite-causal"), 36, T.GraniteForCausalLM, cfg, fast, dict(r=8, lora_alpha=16, target_modules=all7),
         ("norm.weight",), None)
    cfg = T.Olmo2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=96, max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False, **ids)
    case(os.path.join(OUT, "olmo2-causal"), 37, T.Olmo2ForCausalLM, cfg, fast, dict(r=8, lora_alpha=16, target_modules=all7),
         ("norm.weight", "layernorm.weight"), None)
    cfg = T.Gemma2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         intermediate_size=64, max_position_embeddings=128, rms_norm_eps=1e-6, query_pre_attn_scalar=16,
                         sliding_window=4, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                         attn_logit_softcapping=0.5, final_logit_softcapping=0.4, **ids)
    case(os.path.join(OUT, "gemma2-causal"), 31, T.Gemma2ForCausalLM, cfg, fast, dict(r=4, lora_alpha=8, target_modules=all7),
         ("norm.weight", "layernorm.weight"), lambda p: 0.5 * torch.randn_like(p))
    rope = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
    cfg = T.Gemma3TextConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                             intermediate_size=64, max_position_embeddings=128, rms_norm_eps=1e-6, query_pre_attn_scalar=16,
                             sliding_window=4, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                             rope_parameters=rope, **ids)
    case(os.path.join(OUT, "gemma3-linear-causal"), 30, T.Gemma3ForCausalLM, cfg, fast, dict(r=4, lora_alpha=8, target_modules=all7),
         ("norm.weight", "layernorm.weight"), lambda p: 0.5 * torch.randn_like(p))
    rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 2048}
    cfg = T.Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=96, max_position_embeddings=8192, rms_norm_eps=1e-6, rope_parameters=rope,
                        tie_word_embeddings=False, **ids)
    case(os.path.join(OUT, "qwen2-yarn-causal"), 38, T.Qwen2ForCausalLM, cfg, fast, dict(r=8, lora_alpha=16, target_modules=all7),
         ("norm.weight",), None)
    yarn = {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 8.0, "original_max_position_embeddings": 1024,
            "attention_factor": 1.2079441541679836, "beta_fast": 8, "beta_slow": 1}
    rope = {"full_attention": yarn, "sliding_attention": {"rope_type": "default", "rope_theta": 500000.0}}
    cfg = T.Olmo3Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=96, max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=False,
                        sliding_window=4, rope_parameters=rope, **ids)
    case(os.path.join(OUT, "olmo3-causal"), 39, T.Olmo3ForCausalLM, cfg, fast, dict(r=8, lora_alpha=16, target_modules=all7),
         ("norm.weight", "layernorm.weight"), None)


if __name__ == "__main__":
    main()
