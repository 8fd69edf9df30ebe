//! The CPU decoder and generation: PEFT parity of logits and greedy ids, batch invariance of a
//! continuous batch over several adapters, GGUF bases written here (f32 exactly, quantized
//! within a bound), the tokenizer built from GGUF metadata, seeded sampling, stop strings.

use super::common::*;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use loradex::base::BaseDir;
use loradex::model::decoder::Row;
use loradex::model::factors8::FactorDtype;
use loradex::model::generation::{Event, Finish, SamplingParams, Sequence};
use loradex::model::gguf::LoadDtype;
use loradex::model::kv_cache::KvDtype;
use loradex::model::lora::LoadedAdapter;
use loradex::model::{Engine, Prompt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(super) fn cpu_engine(dir: &Path) -> Engine {
    Engine::load(BaseDir::open(dir.to_str().unwrap()).unwrap(), Device::Cpu).unwrap()
}

pub(super) fn load_adapter(e: &Engine, dir: &Path) -> Arc<LoadedAdapter> {
    let f = loradex::peft::read_dir(dir).unwrap();
    e.adapter(&dir.display().to_string(), &f.config_bytes, &f.weights_bytes, vec![]).unwrap()
}

/// The fixture adapter with every weight multiplied by `k`: another adapter of the same shape.
fn scaled_adapter(tmp: &Path, k: f32) -> PathBuf {
    super::common::scaled_adapter(&llama().join("adapter"), &tmp.join(format!("scaled{k}")), k)
}

/// Per-position logits of one token row fed `chunk` tokens per step.
pub(super) fn position_logits(e: &Engine, ids: &[u32], adapter: Option<&LoadedAdapter>, chunk: usize) -> Vec<Vec<f32>> {
    let dec = e.decoder.as_ref().expect("a CPU decoder");
    let mut cache = dec.cache(ids.len(), None);
    let mut out = vec![];
    // chunk 1 gives every position's logits; larger chunks give each chunk's last
    for c in ids.chunks(chunk) {
        let l = dec.step(&mut [Row { tokens: c, cache: &mut cache, adapter }]).unwrap();
        out.push(l.into_iter().next().unwrap());
    }
    out
}

fn valid_rows(exp: &std::collections::HashMap<String, Tensor>) -> Vec<Vec<u32>> {
    let ids = ids_rows(&exp["input_ids"]);
    let mask = ids_rows(&exp["attention_mask"]);
    ids.into_iter().zip(mask).map(|(i, m)| i.into_iter().zip(m).filter(|(_, m)| *m == 1).map(|(i, _)| i).collect()).collect()
}

#[test]
fn the_decoder_reproduces_peft_logits_and_greedy_ids() {
    let case = llama();
    let (tol, exp) = (atol(&case), expected(&case));
    let e = cpu_engine(&case.join("base"));
    let a = load_adapter(&e, &case.join("adapter"));
    for (want, ad) in [("base_logits", None), ("lora_logits", Some(a.as_ref()))] {
        for (r, ids) in valid_rows(&exp).iter().enumerate() {
            let got = position_logits(&e, ids, ad, 1);
            for (p, g) in got.iter().enumerate() {
                let w = exp[want].get(r).unwrap().get(p).unwrap().to_vec1::<f32>().unwrap();
                let d = max_abs_diff(g, &w);
                assert!(d <= tol, "{want}: row {r} position {p} differs by {d}");
            }
            // a prompt fed whole, or in chunks, ends on the same logits, bit for bit
            let whole = position_logits(&e, ids, ad, ids.len());
            let chunked = position_logits(&e, ids, ad, 3);
            assert_eq!(whole.last(), got.last(), "{want}: row {r}: one prefill step vs token by token");
            assert_eq!(chunked.last(), got.last(), "{want}: row {r}: chunked prefill");
        }
    }
    let prompt = ids_rows(&exp["prompt_ids"])[0].clone();
    let want = ids_rows(&exp["greedy_ids"])[0].clone();
    let params = SamplingParams { max_tokens: want.len() - prompt.len(), ..Default::default() };
    let g = e.generate(prompt.clone(), params, Some(a.clone()), &mut |_| {}).unwrap();
    assert_eq!([g.prompt_ids.clone(), g.new_ids.clone()].concat(), want, "greedy ids");
    // the candle forward (used on accelerators) agrees
    let mut merged = cpu_engine(&case.join("base"));
    merged.merge(&a, 1.0).unwrap();
    assert!(merged.decoder.is_none(), "a merge drops the decoder's stale copies");
    let g2 = merged.generate(prompt, SamplingParams { max_tokens: want.len() - g.prompt_ids.len(), ..Default::default() }, None, &mut |_| {}).unwrap();
    assert_eq!(g2.new_ids, g.new_ids, "merged (candle) vs unmerged (decoder) greedy ids");
}

/// Drives sequences as the server does: sequence `i` joins at step `join[i]`, prompts are fed
/// `chunk` tokens a step, and every step is one forward over all running rows.
/// A request: prompt ids, adapter, sampling.
type Req = (Vec<u32>, Option<Arc<LoadedAdapter>>, SamplingParams);

fn continuous(e: &Engine, reqs: &[Req], join: &[usize], chunk: usize) -> Vec<(Vec<u32>, String)> {
    let dec = e.decoder.as_ref().unwrap();
    let tok = e.tok().unwrap();
    let mut seqs: Vec<Option<Sequence>> = (0..reqs.len()).map(|_| None).collect();
    let mut out: Vec<Option<(Vec<u32>, String)>> = vec![None; reqs.len()];
    let mut step = 0;
    while out.iter().any(Option::is_none) {
        for (i, (p, _, params)) in reqs.iter().enumerate() {
            if join[i] == step {
                let cap = Sequence::positions_needed(p.len(), params.max_tokens, dec.max_positions());
                seqs[i] = Some(Sequence::new(p.clone(), params.clone(), dec.cache(cap, None), dec.eos.clone(), dec.max_positions()).unwrap());
            }
        }
        let active: Vec<usize> = (0..reqs.len()).filter(|&i| seqs[i].is_some()).collect();
        if !active.is_empty() {
            let inputs: Vec<Vec<u32>> = active.iter().map(|&i| seqs[i].as_ref().unwrap().next_input(chunk).to_vec()).collect();
            let logits = {
                let mut rows = vec![];
                let mut it = active.iter().zip(&inputs).peekable();
                for (i, s) in seqs.iter_mut().enumerate() {
                    if let Some((_, inp)) = it.next_if(|(j, _)| **j == i) {
                        rows.push(Row { tokens: inp, cache: &mut s.as_mut().unwrap().cache, adapter: reqs[i].1.as_deref() });
                    }
                }
                dec.step(&mut rows).unwrap()
            };
            for ((&i, inp), l) in active.iter().zip(&inputs).zip(&logits) {
                let s = seqs[i].as_mut().unwrap();
                if let Event::Done { .. } = s.accept(tok, inp.len(), l).unwrap() {
                    out[i] = Some((s.generated.clone(), s.text().to_string()));
                    seqs[i] = None;
                }
            }
        }
        step += 1;
    }
    out.into_iter().map(Option::unwrap).collect()
}

#[test]
fn a_continuous_batch_over_three_adapters_and_none_gives_each_sequence_its_solo_ids() {
    let tmp = tempfile::tempdir().unwrap();
    // f32 weights, and Q4_1 blocks (repacked 8 rows at a time where the CPU has AVX2)
    let q = tmp.path().join("q4_1.gguf");
    write_gguf(&q, GgmlDType::Q4_1);
    for base in [llama().join("base"), q] {
        batch_invariance(&cpu_engine(&base), tmp.path());
    }
}

pub(super) fn batch_invariance(e: &Engine, tmp: &Path) {
    let adapters: Vec<Option<Arc<LoadedAdapter>>> = vec![
        Some(load_adapter(e, &llama().join("adapter"))),
        Some(load_adapter(e, &scaled_adapter(tmp, -1.5))),
        Some(load_adapter(e, &scaled_adapter(tmp, 3.0))),
        None,
    ];
    let texts = case_json(&llama())["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect::<Vec<_>>();
    let mut reqs = vec![];
    for i in 0..8 {
        let ids = e.prompt_ids(&Prompt::Text(texts[i % texts.len()].clone())).unwrap();
        let params = SamplingParams { max_tokens: 6 + i % 5, temperature: if i % 3 == 2 { 0.9 } else { 0.0 }, seed: Some(i as u64), ..Default::default() };
        reqs.push((ids, adapters[i % adapters.len()].clone(), params));
    }
    let alone: Vec<_> = reqs.iter().map(|r| continuous(e, std::slice::from_ref(r), &[0], usize::MAX)[0].clone()).collect();
    let together = continuous(e, &reqs, &[0, 0, 1, 2, 2, 3, 5, 7], 2);
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, t, "sequence {i}: alone vs in the batch");
    }
    // the adapters really differ, so the check is not vacuous
    let firsts: std::collections::BTreeSet<_> = alone[..4].iter().map(|(ids, _)| ids.clone()).collect();
    assert!(firsts.len() >= 3, "adapters should change the output: {alone:?}");
}

/// An adapter resolves its pairs by projection slot for the first decoder that runs it, its
/// copies laid out in one arena; on another decoder its rows look their pairs up by module path
/// and read each pair's own cached copies. Both ways give the same bits, in each precision
/// factors are read in beside a quantized base.
#[test]
fn an_adapters_pairs_by_slot_give_the_bits_of_its_pairs_by_path() {
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("q4_1.gguf");
    write_gguf(&q, GgmlDType::Q4_1);
    for factors in [FactorDtype::F32, FactorDtype::F16, FactorDtype::Int8] {
        let (mut first, mut second) = (cpu_engine(&q), cpu_engine(&q));
        first.set_lora_factors(factors).unwrap();
        second.set_lora_factors(factors).unwrap();
        let a = load_adapter(&first, &llama().join("adapter"));
        let ids = first.prompt_ids(&Prompt::Text("hello there, how are you".into())).unwrap();
        let by_slot = position_logits(&first, &ids, Some(&a), 1);
        let id = |e: &Engine| e.decoder.as_ref().unwrap().id();
        let slots = a.slots.get().expect("resolved by slot on first use");
        assert!(slots.is_for(id(&first)) && !slots.is_for(id(&second)));
        assert!((0..4).any(|s| matches!(slots.get(0, s), Some(Some(_)))), "the fixture adapter has pairs on layer 0");
        let by_path = position_logits(&second, &ids, Some(&a), 1);
        assert_eq!(by_slot, by_path, "{factors}");
        assert_ne!(by_slot, position_logits(&first, &ids, None, 1), "the adapter changes the logits");
    }
}

/// Pieces of several element types come back from an arena as they went in, each on a cache
/// line, whatever offset from its huge page the arena starts at (arenas start at different
/// ones), and an empty layout still builds.
#[test]
fn a_factor_arena_gives_back_each_piece_aligned() {
    use loradex::model::factor_arena::Layout;
    let (a, b, c) = ((0..300).map(|i| (i % 251 - 125) as i8).collect::<Vec<i8>>(), vec![0x3c00u16, 7, 0xffff], vec![1.5f32, -0.25, f32::MAX]);
    for _ in 0..3 {
        let mut l = Layout::default();
        let (pa, pb, pc, pe) = (l.piece(&a), l.piece(&b), l.piece(&c), l.piece::<f32>(&[]));
        let arena = l.build().unwrap();
        assert_eq!(arena.get::<i8>(pa), &a[..]);
        assert_eq!(arena.get::<u16>(pb), &b[..]);
        assert_eq!(arena.get::<f32>(pc), &c[..]);
        assert!(arena.get::<f32>(pe).is_empty());
        for p in [arena.get::<i8>(pa).as_ptr() as usize, arena.get::<u16>(pb).as_ptr() as usize, arena.get::<f32>(pc).as_ptr() as usize] {
            assert_eq!(p % 64, 0, "a piece off its cache line");
        }
        assert_eq!(arena.bytes(), 384 + 12, "300 bytes, 6 from 320, 12 from 384");
    }
    assert_eq!(Layout::default().build().unwrap().bytes(), 0);
}

#[test]
fn seeded_sampling_repeats_and_stop_strings_end_the_text() {
    let e = cpu_engine(&llama().join("base"));
    let prompt = e.prompt_ids(&Prompt::Text("thank you for the quick help".into())).unwrap();
    let sampled = |seed| {
        let p = SamplingParams { max_tokens: 20, temperature: 1.0, top_p: 0.95, top_k: 50, seed: Some(seed), ..Default::default() };
        e.generate(prompt.clone(), p, None, &mut |_| {}).unwrap()
    };
    let (a, b, c) = (sampled(1), sampled(1), sampled(2));
    assert_eq!(a.new_ids, b.new_ids, "same seed, same tokens");
    assert_ne!(a.new_ids, c.new_ids, "another seed should differ somewhere in 20 tokens");
    // a stop string taken from the middle of the greedy text
    let free = e.generate(prompt.clone(), SamplingParams { max_tokens: 24, ..Default::default() }, None, &mut |_| {}).unwrap();
    let chars: Vec<char> = free.text.chars().collect();
    assert!(chars.len() > 6, "need some text to cut: {:?}", free.text);
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let mut streamed = String::new();
    let cut = e
        .generate(prompt, SamplingParams { max_tokens: 24, stop: vec![stop.clone()], ..Default::default() }, None, &mut |ev| match ev {
            Event::Token { text, .. } | Event::Done { text, .. } => streamed.push_str(text),
            Event::Pending => {}
        })
        .unwrap();
    let at = free.text.find(&stop).unwrap();
    assert_eq!(cut.text, free.text[..at], "the text ends before the stop string {stop:?}");
    assert_eq!(streamed, cut.text, "streamed pieces concatenate to the text");
    assert_eq!(cut.finish_reason, Finish::Stop);
    assert!(cut.new_ids.len() < free.new_ids.len(), "generation stopped at the stop string");
}

/// llama.cpp's row order for `q`/`k`: the inverse of loradex's `unpermute_rows`.
fn to_gguf_rows(t: &Tensor, heads: usize) -> Tensor {
    let rows = t.dims()[0];
    let perm = loradex::model::gguf::unpermute_rows(rows, heads).unwrap();
    let mut inv = vec![0u32; rows];
    for (hf, &g) in perm.iter().enumerate() {
        inv[g] = hf as u32;
    }
    t.index_select(&Tensor::new(inv, &Device::Cpu).unwrap(), 0).unwrap()
}

/// Writes the fixture Llama base as a GGUF file as llama.cpp's converter would, with its
/// projections in `dtype`.
pub(super) fn write_gguf(out: &Path, dtype: GgmlDType) {
    write_gguf_of(&llama().join("base"), "llama", out, dtype)
}

/// Writes a fixture base (`llama`, `qwen2`, `gemma` or `phi3`) as llama.cpp's converter would:
/// a Llama's q/k rows interleaved, the others' kept, biases as `.bias` tensors, Phi-3's fused
/// projections as `attn_qkv` and `ffn_up`, Gemma's norm weights plus one, metadata under
/// `arch.`.
fn write_gguf_of(base: &Path, arch: &str, out: &Path, dtype: GgmlDType) {
    use gguf_file::Value as V;
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(base.join("config.json")).unwrap()).unwrap();
    let u = |k: &str| cfg[k].as_u64().unwrap() as u32;
    let (heads, kv) = (u("num_attention_heads") as usize, u("num_key_value_heads") as usize);
    let tensors = candle_core::safetensors::load(base.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut q = vec![];
    for (name, t) in &tensors {
        let g = match name.as_str() {
            "model.embed_tokens.weight" => "token_embd.weight".to_string(),
            "model.norm.weight" => "output_norm.weight".to_string(),
            "lm_head.weight" => "output.weight".to_string(),
            n => {
                let rest = n.strip_prefix("model.layers.").unwrap();
                let (l, m) = rest.split_once('.').unwrap();
                let (m, param) = m.rsplit_once('.').unwrap();
                let short = match m {
                    "input_layernorm" => "attn_norm",
                    // Gemma 3's sandwich norms (llama.cpp's names)
                    "post_attention_layernorm" if arch == "gemma2" || arch == "gemma3" || arch == "olmo2" => "post_attention_norm",
                    "pre_feedforward_layernorm" => "ffn_norm",
                    "post_feedforward_layernorm" => "post_ffw_norm",
                    "post_attention_layernorm" => "ffn_norm",
                    "self_attn.q_proj" => "attn_q",
                    "self_attn.k_proj" => "attn_k",
                    "self_attn.v_proj" => "attn_v",
                    "self_attn.o_proj" => "attn_output",
                    "self_attn.q_norm" => "attn_q_norm",
                    "self_attn.k_norm" => "attn_k_norm",
                    "mlp.gate_proj" => "ffn_gate",
                    "mlp.up_proj" => "ffn_up",
                    "mlp.down_proj" => "ffn_down",
                    "self_attn.qkv_proj" => "attn_qkv",
                    "mlp.gate_up_proj" => "ffn_up",
                    other => panic!("unexpected tensor {other}"),
                };
                format!("blk.{l}.{short}.{param}")
            }
        };
        let permute = arch == "llama" || arch == "smollm3" || arch == "granite";
        let t = if permute && g.ends_with("attn_q.weight") {
            to_gguf_rows(t, heads)
        } else if permute && g.ends_with("attn_k.weight") {
            to_gguf_rows(t, kv)
        } else if arch.starts_with("gemma") && g.ends_with("norm.weight") {
            (t + 1.0).unwrap()
        } else {
            t.clone()
        };
        let dt = if t.rank() == 2 { dtype } else { GgmlDType::F32 };
        q.push((g, QTensor::quantize(&t, dt).unwrap()));
    }
    // Phi-3.5's long rope as llama.cpp's converter writes it: both factor lists as tensors,
    // the attention factor and the original context in the metadata
    let rp0 = &cfg["rope_parameters"];
    let mut extra_md: Vec<(String, V)> = vec![];
    if rp0["rope_type"] == "longrope" {
        for (key, name) in [("short_factor", "rope_factors_short.weight"), ("long_factor", "rope_factors_long.weight")] {
            let f: Vec<f32> = rp0[key].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            q.push((name.into(), QTensor::quantize(&candle_core::Tensor::new(f, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap()));
        }
        let (max, orig) = (u("max_position_embeddings") as f64, rp0["original_max_position_embeddings"].as_u64().unwrap());
        extra_md.push((format!("{arch}.rope.scaling.attn_factor"), V::F32((1.0 + (max / orig as f64).ln() / (orig as f64).ln()).sqrt() as f32)));
        extra_md.push((format!("{arch}.rope.scaling.original_context_length"), V::U32(orig as u32)));
    }
    // Llama 3.1's RoPE scaling as llama.cpp's converter writes it: one divisor per frequency
    if rp0["rope_type"] == "llama3" {
        let f = |k: &str| rp0[k].as_f64().unwrap();
        let hd = cfg["head_dim"].as_u64().map_or(u("hidden_size") as usize / heads, |d| d as usize);
        let inv = loradex::model::llama::rope_inv_freqs(f("rope_theta"), hd);
        let d = loradex::model::llama::llama3_divisors(&inv, f("factor"), f("low_freq_factor"), f("high_freq_factor"), f("original_max_position_embeddings"));
        let t = candle_core::Tensor::new(d, &Device::Cpu).unwrap();
        q.push(("rope_freqs.weight".into(), QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    }
    let tj: serde_json::Value = serde_json::from_slice(&std::fs::read(base.join("tokenizer.json")).unwrap()).unwrap();
    let mut tokens = vec![String::new(); u("vocab_size") as usize];
    for (t, id) in tj["model"]["vocab"].as_object().unwrap() {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    let special: Vec<u64> = tj["added_tokens"].as_array().unwrap().iter().map(|a| a["id"].as_u64().unwrap()).collect();
    for a in tj["added_tokens"].as_array().unwrap() {
        tokens[a["id"].as_u64().unwrap() as usize] = a["content"].as_str().unwrap().to_string();
    }
    let merges: Vec<V> = tj["model"]["merges"].as_array().unwrap().iter().map(|m| V::String(format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()))).collect();
    let types: Vec<V> = (0..tokens.len()).map(|i| V::I32(if special.contains(&(i as u64)) { 3 } else { 1 })).collect();
    let rp = &cfg["rope_parameters"];
    let rope = rp["rope_theta"].as_f64().or(rp["full_attention"]["rope_theta"].as_f64()).unwrap() as f32;
    let head_dim = cfg["head_dim"].as_u64().map_or(u("hidden_size") / heads as u32, |d| d as u32);
    let a = |k: &str| format!("{arch}.{k}");
    let md: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(arch.into())),
        (a("block_count"), V::U32(u("num_hidden_layers"))),
        (a("context_length"), V::U32(u("max_position_embeddings"))),
        (a("embedding_length"), V::U32(u("hidden_size"))),
        (a("feed_forward_length"), V::U32(u("intermediate_size"))),
        (a("attention.head_count"), V::U32(heads as u32)),
        (a("attention.head_count_kv"), V::U32(kv as u32)),
        (a("attention.key_length"), V::U32(head_dim)),
        (a("rope.freq_base"), V::F32(rope)),
        (a("attention.layer_norm_rms_epsilon"), V::F32(cfg["rms_norm_eps"].as_f64().unwrap() as f32)),
        ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), V::String("default".into())),
        ("tokenizer.ggml.tokens".into(), V::Array(tokens.into_iter().map(V::String).collect())),
        ("tokenizer.ggml.merges".into(), V::Array(merges)),
        ("tokenizer.ggml.token_type".into(), V::Array(types)),
        ("tokenizer.ggml.bos_token_id".into(), V::U32(u("bos_token_id"))),
        ("tokenizer.ggml.eos_token_id".into(), V::U32(u("eos_token_id"))),
        ("tokenizer.ggml.add_bos_token".into(), V::Bool(true)),
        ("tokenizer.chat_template".into(), V::String("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}".into())),
    ];
    let mut md = md;
    md.extend(extra_md);
    // a partial rotary: llama.cpp's rope.dimension_count below the head's dimensions
    if let Some(f) = cfg["partial_rotary_factor"].as_f64().filter(|f| *f < 1.0) {
        md.push((a("rope.dimension_count"), V::U32((head_dim as f64 * f) as u32)));
    }
    if let Some(w) = cfg["sliding_window"].as_u64() {
        md.push((a("attention.sliding_window"), V::U32(w as u32)));
    }
    for (hf, key) in [("embedding_multiplier", "embedding_scale"), ("residual_multiplier", "residual_scale"), ("attention_multiplier", "attention.scale"), ("logits_scaling", "logit_scale")] {
        if let Some(v) = cfg[hf].as_f64().filter(|_| arch == "granite") {
            md.push((a(key), V::F32(v as f32)));
        }
    }
    for cap in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if let Some(c) = cfg[cap].as_f64() {
            md.push((a(cap), V::F32(c as f32)));
        }
    }
    if rp["full_attention"]["rope_type"] == "linear" {
        md.push((a("rope.scaling.type"), V::String("linear".into())));
        md.push((a("rope.scaling.factor"), V::F32(rp["full_attention"]["factor"].as_f64().unwrap() as f32)));
    }
    let mdr: Vec<(&str, &V)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tr: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(out).unwrap();
    gguf_file::write(&mut f, &mdr, &tr).unwrap();
}

#[test]
fn a_gguf_base_written_here_matches_its_safetensors_exactly_in_f32_and_closely_quantized() {
    let tmp = tempfile::tempdir().unwrap();
    let case = llama();
    let st = cpu_engine(&case.join("base"));
    let a_st = load_adapter(&st, &case.join("adapter"));
    let exp = expected(&case);
    let rows = valid_rows(&exp);
    let texts = case_json(&case)["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect::<Vec<_>>();
    let f32_path = tmp.path().join("tiny-f32.gguf");
    write_gguf(&f32_path, GgmlDType::F32);
    let gb = BaseDir::open(f32_path.to_str().unwrap()).unwrap();
    let g = Engine::load_with(gb.clone(), Device::Cpu, LoadDtype::F32).unwrap();
    // the tokenizer from GGUF metadata tokenizes as the fixture's tokenizer.json
    for (t, want) in texts.iter().zip(&rows) {
        assert_eq!(&g.prompt_ids(&Prompt::Text(t.clone())).unwrap(), want, "token ids of {t:?}");
    }
    let a_g = load_adapter(&g, &case.join("adapter"));
    for ids in &rows {
        for ad in [None, Some((&a_st, &a_g))] {
            let want = position_logits(&st, ids, ad.map(|a| a.0.as_ref()), 1);
            let got = position_logits(&g, ids, ad.map(|a| a.1.as_ref()), 1);
            assert_eq!(got, want, "f32 GGUF vs safetensors, bit for bit");
        }
    }
    assert_eq!(g.decoder.as_ref().unwrap().kv_dtype(), KvDtype::F32, "an f32 base keeps an f32 cache (PEFT-exact)");
    // the base's shapes come from the file, so adapters import against it; its fingerprint is
    // not the safetensors base's
    let home = tmp.path().join("home");
    import(&home, &case.join("adapter"), "gg/qkvo", &f32_path);
    let fp = |b: &BaseDir| b.fingerprint().unwrap();
    assert_ne!(fp(&gb), fp(&BaseDir::open_dir(&case.join("base")).unwrap()));
    // the chat template travels in the metadata
    let chat = g.chat.as_ref().expect("a chat template");
    let m = vec![loradex::model::chat::Message { role: "user".into(), content: "hi".into() }];
    assert_eq!(chat.render(&m, true).unwrap(), "<|user|>hi\n<|assistant|>");
    // quantized: projections stay in GGML blocks; logits within a bound of f32
    for (dt, bound) in [(GgmlDType::Q8_0, 0.02f32), (GgmlDType::Q4_1, 0.25), (GgmlDType::Q4_0, 0.3)] {
        let p = tmp.path().join(format!("tiny-{dt:?}.gguf"));
        write_gguf(&p, dt);
        let q = Engine::load(BaseDir::open(p.to_str().unwrap()).unwrap(), Device::Cpu).unwrap();
        let dec = q.decoder.as_ref().unwrap();
        assert_eq!(dec.weight_format(), format!("{dt:?}"));
        // beside quantized weights the cache holds f16: half the bytes of the f32 base's
        assert_eq!(dec.kv_dtype(), KvDtype::F16);
        assert_eq!(dec.kv_bytes_per_token() * 2, g.decoder.as_ref().unwrap().kv_bytes_per_token());
        let a_q = load_adapter(&q, &case.join("adapter"));
        let worst = worst_logit_diff((&st, Some(&a_st)), (&q, Some(&a_q)), &rows);
        assert!(worst <= bound, "{dt:?}: logits differ by {worst} > {bound}");
        assert!(worst > 0.0, "{dt:?}: quantization should change something");
    }
}

/// The largest difference between two engines' logits over `rows`, each with its adapter.
fn worst_logit_diff(a: (&Engine, Option<&LoadedAdapter>), b: (&Engine, Option<&LoadedAdapter>), rows: &[Vec<u32>]) -> f32 {
    let mut worst = 0f32;
    for ids in rows {
        let (want, got) = (position_logits(a.0, ids, a.1, 1), position_logits(b.0, ids, b.1, 1));
        for (gv, wv) in got.iter().zip(&want) {
            worst = worst.max(max_abs_diff(gv, wv));
        }
    }
    worst
}

/// Writes `base` as an f32 GGUF of `arch` at `out`, loads it (it must read as `family`), and
/// asserts its logits are `st`'s bit for bit over `rows`, without and with the adapter in
/// `adapter` (`a_st` on `st`). Returns the GGUF engine and its adapter.
#[allow(clippy::too_many_arguments)]
fn f32_gguf_matches(base: &Path, adapter: &Path, arch: &str, family: &str, out: &Path, st: &Engine, a_st: &LoadedAdapter, rows: &[Vec<u32>]) -> (Engine, Arc<LoadedAdapter>) {
    write_gguf_of(base, arch, out, GgmlDType::F32);
    let gb = BaseDir::open(out.to_str().unwrap()).unwrap();
    assert_eq!(gb.arch.name(), family);
    let g = Engine::load_with(gb, Device::Cpu, LoadDtype::F32).unwrap();
    let a_g = load_adapter(&g, adapter);
    for ids in rows {
        for ad in [None, Some((a_st, a_g.as_ref()))] {
            let want = position_logits(st, ids, ad.map(|a| a.0), 1);
            let got = position_logits(&g, ids, ad.map(|a| a.1), 1);
            assert_eq!(got, want, "{arch}: f32 GGUF vs safetensors, bit for bit (adapter: {})", ad.is_some());
        }
    }
    (g, a_g)
}

/// A GGUF of fixture case `name` written as llama.cpp's converter for `arch` would loads as
/// `family`: bit for bit the safetensors base's logits in f32, with and without the PEFT
/// fixture adapter, PEFT's greedy ids, and within `q8_tol` with Q8_0 projections.
fn gguf_matches_safetensors(name: &str, arch: &str, family: &str, tmp: &Path, q8_tol: f32) -> PathBuf {
    let case = &case(name);
    let st = cpu_engine(&case.join("base"));
    let a_st = load_adapter(&st, &case.join("adapter"));
    let exp = expected(case);
    let rows = valid_rows(&exp);
    let p = tmp.join(format!("{arch}-f32.gguf"));
    let (g, a_g) = f32_gguf_matches(&case.join("base"), &case.join("adapter"), arch, family, &p, &st, &a_st, &rows);
    let prompt = ids_rows(&exp["prompt_ids"])[0].clone();
    let want = ids_rows(&exp["greedy_ids"])[0].clone();
    let params = SamplingParams { max_tokens: want.len() - prompt.len(), ..Default::default() };
    let out = g.generate(prompt, params, Some(a_g.clone()), &mut |_| {}).unwrap();
    assert_eq!([out.prompt_ids, out.new_ids].concat(), want, "{arch} GGUF: PEFT's greedy ids");
    let q8 = tmp.join(format!("{arch}-q8.gguf"));
    write_gguf_of(&case.join("base"), arch, &q8, GgmlDType::Q8_0);
    // factors in f32, so that the bound is the base's own rounding
    let mut q = cpu_engine(&q8);
    q.set_lora_factors(FactorDtype::F32).unwrap();
    let a_q = load_adapter(&q, &case.join("adapter"));
    let worst = worst_logit_diff((&st, Some(&a_st)), (&q, Some(&a_q)), &rows);
    assert!(worst > 0.0 && worst <= q8_tol, "{arch} Q8_0: logits differ by {worst}");
    p
}

/// A Qwen2 GGUF (llama.cpp keeps its q/k rows in Hugging Face's order and writes its q/k/v
/// biases) loads as the Qwen2 family; a GGUF of an unknown architecture is refused by name.
#[test]
fn a_qwen2_gguf_base_matches_its_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let p = gguf_matches_safetensors("qwen2-causal", "qwen2", "qwen2", tmp.path(), 0.02);
    let g2 = std::fs::read(&p).unwrap();
    let at = g2.windows(5).position(|w| w == b"qwen2").unwrap();
    let mut bad = g2.clone();
    bad[at..at + 5].copy_from_slice(b"gpt2x");
    let err = loradex::model::gguf::Gguf::from_bytes("bad.gguf", bad).err().unwrap().to_string();
    assert!(err.contains("\"gpt2x\" is not supported (llama, qwen2, qwen3, gemma, gemma2, gemma3, smollm3, granite, olmo2, phi3)"), "{err}");
}

/// A Qwen3 GGUF (q/k rows in Hugging Face's order, the per-head norms as `attn_q_norm` /
/// `attn_k_norm`) loads as the Qwen3 family.
#[test]
fn a_qwen3_gguf_base_matches_its_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    gguf_matches_safetensors("qwen3-causal", "qwen3", "qwen3", tmp.path(), 0.02);
}

/// A Llama 3.1-style GGUF (its RoPE scaling baked into `rope_freqs.weight`, as llama.cpp's
/// converter writes it) loads with that scaling: the safetensors logits (`rope_type` `llama3`)
/// bit for bit, PEFT's greedy ids, and close in Q8_0.
#[test]
fn a_llama3_rope_gguf_base_matches_its_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    gguf_matches_safetensors("llama3-rope-causal", "llama", "llama", tmp.path(), 0.02);
}

/// A Phi-3.5-style GGUF (long-rope factors as `rope_factors_short/long.weight`, the attention
/// factor and original context in the metadata) runs its short factors within the original
/// context: the safetensors logits bit for bit, PEFT's greedy ids, close in Q8_0, and the
/// context held to the original 64 positions.
#[test]
fn a_phi3_longrope_gguf_base_matches_its_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    // (Q8_0: this wider base with its random adapter moves by 0.023; the 32-wide Phi-3 by 0.015)
    let p = gguf_matches_safetensors("phi3-longrope-causal", "phi3", "phi3", tmp.path(), 0.03);
    let g = Engine::load_with(BaseDir::open(p.to_str().unwrap()).unwrap(), Device::Cpu, LoadDtype::F32).unwrap();
    assert_eq!(g.decoder.as_ref().unwrap().max_positions(), 64, "past the original context the long factors would take over");
}

/// A Phi-4-mini-style GGUF (RoPE over half of each head, `rope.dimension_count` 8 of 16,
/// with long-rope factors over those dimensions) matches its safetensors bit for bit and
/// gives PEFT's greedy ids.
#[test]
fn a_phi3_partial_rotary_gguf_base_matches_its_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    // (Q8_0: rounding this base's weights alone moves its logits with the fixture's random
    // adapter by 0.034 in transformers; loradex's 8-bit activations add a little)
    gguf_matches_safetensors("phi3-partial-causal", "phi3", "phi3", tmp.path(), 0.05);
}

/// A SmolLM3 GGUF (Llama's converter, so q/k rows interleaved; llama.cpp leaves RoPE out of
/// every fourth layer by itself) loads as the SmolLM3 family: bit for bit, PEFT's greedy ids.
#[test]
fn a_smollm3_gguf_base_matches_its_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    // (Q8_0: 0.022 here, the 64-wide fixtures' level, against 0.015 for the 32-wide ones)
    gguf_matches_safetensors("smollm3-causal", "smollm3", "smollm3", tmp.path(), 0.03);
}

/// A Granite GGUF (the four multipliers as `granite.embedding_scale`, `residual_scale`,
/// `attention.scale` and `logit_scale`) matches its safetensors bit for bit and gives PEFT's
/// greedy ids.
#[test]
fn a_granite_gguf_base_matches_its_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    gguf_matches_safetensors("granite-causal", "granite", "granite", tmp.path(), 0.03);
}

/// An OLMo 2 GGUF (`post_attention_norm` and `post_ffw_norm` only, whole-width
/// `attn_q_norm`/`attn_k_norm`, q/k rows in Hugging Face's order) loads as the OLMo 2 family:
/// bit for bit, PEFT's greedy ids.
#[test]
fn an_olmo2_gguf_base_matches_its_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    gguf_matches_safetensors("olmo2-causal", "olmo2", "olmo2", tmp.path(), 0.03);
}

/// A Gemma 2 GGUF (its sandwich norms under llama.cpp's names, the soft caps as
/// `gemma2.*_logit_softcapping`, every other layer local from the first as llama.cpp fixes
/// it) loads as the Gemma 2 family: the fixture's safetensors logits bit for bit, PEFT's
/// greedy ids, and within 0.1 in Q8_0.
#[test]
fn a_gemma2_gguf_base_matches_its_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    // Q8_0's rounding of this base moves its logits with the fixture's random adapter by
    // 0.077 in transformers too (measured); the soft caps keep them within 0.4
    gguf_matches_safetensors("gemma2-causal", "gemma2", "gemma2", tmp.path(), 0.1);
}

/// Gemma and Phi-3 GGUFs (and a Mistral, which llama.cpp writes as `llama`) load as their
/// families: bit for bit the safetensors base's logits in f32 with and without the PEFT
/// fixture adapter, PEFT's greedy ids, and close when quantized. Gemma's norms come back from
/// their stored `1 + w`; Phi-3's fused `attn_qkv`/`ffn_up` are its `qkv_proj`/`gate_up_proj`,
/// which the fixture adapter targets.
#[test]
fn gemma_phi3_and_mistral_gguf_bases_match_their_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, arch, family) in [("gemma-causal", "gemma", "gemma"), ("phi3-causal", "phi3", "phi3"), ("mistral-causal", "llama", "llama")] {
        gguf_matches_safetensors(name, arch, family, tmp.path(), 0.02);
    }
}

/// A Gemma 3 GGUF, written as llama.cpp's converter writes one (norms plus one, the sandwich
/// norms under llama.cpp's names, only the sliding window in the metadata), loads as the Gemma
/// 3 family with what llama.cpp fixes in code: every sixth layer global, local layers at RoPE
/// base 10,000, queries scaled by `1/√head_dim`. The fixture grown to six layers (layers 3-5
/// copies of 0-2 with halved matrices, so that layer 5 is global) with that config is the
/// safetensors reference: bit for bit in f32, with and without the fixture adapter, and the
/// base within 0.05 in Q8_0. The same
/// for a file whose global layers' RoPE is scaled linearly (`rope.scaling.*`, as in Gemma 3
/// 4B and up).
#[test]
fn a_gemma3_gguf_base_matches_its_safetensors_with_llama_cpp_layer_pattern() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["gemma3-causal", "gemma3-linear-causal"] {
        gemma3_gguf_case(name, &tmp.path().join(name));
    }
}

fn gemma3_gguf_case(name: &str, tmp: &Path) {
    let case = case(name);
    let base = tmp.join("base6");
    std::fs::create_dir_all(&base).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(case.join("base").join(f), base.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(case.join("base/config.json")).unwrap()).unwrap();
    let hd = cfg["head_dim"].clone();
    cfg["num_hidden_layers"] = 6.into();
    cfg["layer_types"] = serde_json::json!(["sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]);
    cfg["query_pre_attn_scalar"] = hd;
    std::fs::write(base.join("config.json"), cfg.to_string()).unwrap();
    let mut tensors = candle_core::safetensors::load(case.join("base/model.safetensors"), &Device::Cpu).unwrap();
    let copies: Vec<(String, candle_core::Tensor)> = tensors
        .iter()
        .filter_map(|(n, t)| {
            let rest = n.strip_prefix("model.layers.")?;
            let (l, m) = rest.split_once('.')?;
            let t = if t.rank() == 2 { (t * 0.5).unwrap() } else { t.clone() };
            Some((format!("model.layers.{}.{m}", l.parse::<usize>().ok()? + 3), t))
        })
        .collect();
    tensors.extend(copies);
    candle_core::safetensors::save(&tensors, base.join("model.safetensors")).unwrap();
    let st = cpu_engine(&base);
    let a_st = load_adapter(&st, &case.join("adapter"));
    let rows = valid_rows(&expected(&case));
    assert!(rows.iter().all(|ids| ids.len() > 4), "rows longer than the sliding window of 4 exercise it");
    f32_gguf_matches(&base, &case.join("adapter"), "gemma3", "gemma3", &tmp.join("gemma3-f32.gguf"), &st, &a_st, &rows);
    let q8 = tmp.join("gemma3-q8.gguf");
    write_gguf_of(&base, "gemma3", &q8, GgmlDType::Q8_0);
    // quantized, the base alone: this grown model with the fixture's random adapter is
    // chaotic enough that Q8_0's rounding of the base moves its logits by 0.16-0.30 in
    // transformers too; without it, by about 0.03 in both
    let q = cpu_engine(&q8);
    let worst = worst_logit_diff((&st, None), (&q, None), &rows);
    let scale = rows.iter().flat_map(|ids| position_logits(&st, ids, None, 1)).flatten().fold(0f32, |m, v| m.max(v.abs()));
    assert!(worst > 0.0 && worst <= 0.05 && scale > 0.2, "{name} Q8_0: logits differ by {worst} (largest {scale})");
}

/// Generation ends where llama.cpp and transformers end it: a GGUF's control tokens with a
/// chat format's turn-end text count beside its end-of-sequence id (here the control token
/// `<unk>` renamed `<EOT>`), and a directory's `generation_config.json` adds its list to `config.json`'s.
#[test]
fn end_tokens_come_from_gguf_turn_ends_and_generation_config() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("eot.gguf");
    write_gguf(&p, GgmlDType::F32);
    let plain = Engine::load_with(BaseDir::open(p.to_str().unwrap()).unwrap(), Device::Cpu, LoadDtype::F32).unwrap();
    assert_eq!(plain.eos_ids(), vec![2], "the fixture's GGUF names only </s>");
    let mut bytes = std::fs::read(&p).unwrap();
    let at = bytes.windows(5).position(|w| w == b"<unk>").unwrap();
    bytes[at..at + 5].copy_from_slice(b"<EOT>");
    std::fs::write(&p, &bytes).unwrap();
    let g = Engine::load_with(BaseDir::open(p.to_str().unwrap()).unwrap(), Device::Cpu, LoadDtype::F32).unwrap();
    assert_eq!(g.eos_ids(), vec![2, 0]);
    assert_eq!(g.decoder.as_ref().unwrap().eos, vec![2, 0], "the serving scheduler stops there too");
    // a directory: generation_config.json's list joins config.json's id
    let base = tmp.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    for f in std::fs::read_dir(llama().join("base")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, base.join(f.file_name().unwrap())).unwrap();
    }
    assert_eq!(cpu_engine(&base).eos_ids(), vec![2]);
    std::fs::write(base.join("generation_config.json"), r#"{"eos_token_id": [2, 7]}"#).unwrap();
    let e = cpu_engine(&base);
    assert_eq!(e.eos_ids(), vec![2, 7]);
    let ids = e.prompt_ids(&Prompt::Text("the delivery".into())).unwrap();
    let free = e.generate(ids.clone(), SamplingParams { max_tokens: 40, ..Default::default() }, None, &mut |_| {}).unwrap();
    // stopping at the first 7 the model emits, if it emits one, and never going past it
    if let Some(i) = free.new_ids.iter().position(|&t| t == 7 || t == 2) {
        assert_eq!(free.new_ids.len(), i + 1, "{:?}", free.new_ids);
    }
}

/// A GGUF whose tokenizer loradex cannot build from the metadata (an unknown model name
/// here) is refused with a message pointing at tokenizer.json, and with that file beside it
/// loads and tokenizes as that file does.
#[test]
fn a_gguf_with_an_unbuildable_tokenizer_uses_the_tokenizer_json_beside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let case = llama();
    let p = tmp.path().join("spm.gguf");
    write_gguf(&p, GgmlDType::F32);
    let mut bytes = std::fs::read(&p).unwrap();
    let key = b"tokenizer.ggml.model";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // value type (u32), string length (u64), then the text
    assert_eq!(&bytes[at + 12..at + 16], b"gpt2");
    bytes[at + 12..at + 16].copy_from_slice(b"spm1");
    std::fs::write(&p, &bytes).unwrap();
    let err = match Engine::load_with(BaseDir::open(p.to_str().unwrap()).unwrap(), Device::Cpu, LoadDtype::F32) {
        Ok(_) => panic!("an unbuildable tokenizer loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("\"spm1\" is not supported") && err.contains("tokenizer.json"), "{err}");
    std::fs::copy(case.join("base/tokenizer.json"), tmp.path().join("tokenizer.json")).unwrap();
    let g = Engine::load_with(BaseDir::open(p.to_str().unwrap()).unwrap(), Device::Cpu, LoadDtype::F32).unwrap();
    let st = cpu_engine(&case.join("base"));
    for t in ["thank you for the quick help", "where is my order"] {
        let want = st.prompt_ids(&Prompt::Text(t.into())).unwrap();
        assert_eq!(g.prompt_ids(&Prompt::Text(t.into())).unwrap(), want, "{t:?}");
    }
}

#[test]
fn malformed_decoder_configs_are_errors_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let base = llama().join("base");
    for (key, val, want) in [
        ("num_attention_heads", serde_json::json!(0), "num_attention_heads"),
        ("num_key_value_heads", serde_json::json!(3), "num_key_value_heads"),
        ("hidden_size", serde_json::json!(48), "shape"),
        ("rope_parameters", serde_json::json!({"rope_type": "yarn", "factor": 4.0}), "original_max_position_embeddings"),
        ("rope_parameters", serde_json::json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "truncate": "yes"}), "truncate"),
        ("rope_parameters", serde_json::json!({"rope_type": "yarn", "factor": -2.0, "original_max_position_embeddings": 16}), "factor"),
        ("rope_parameters", serde_json::json!({"rope_type": "longrope", "factor": 2.0}), "\"longrope\" is not supported"),
        ("rope_parameters", serde_json::json!({"rope_type": "dynamic", "factor": 0.0}), "factor"),
        ("rope_parameters", serde_json::json!({"rope_type": "default", "rope_theta": -5.0}), "rope_theta"),
        ("rope_parameters", serde_json::json!({"rope_type": "default", "rope_theta": 1.0}), "rope_theta"),
    ] {
        let d = tmp.path().join(key);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(base.join(f), d.join(f)).unwrap();
        }
        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(base.join("config.json")).unwrap()).unwrap();
        cfg[key] = val;
        std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
        let err = match Engine::load(BaseDir::open_dir(&d).unwrap(), Device::Cpu) {
            Ok(_) => panic!("{key}: loaded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{key}: {err}");
    }
}

/// Dynamic NTK RoPE (`rope_type` `dynamic`): transformers rescales it only past
/// `max_position_embeddings`, which loradex never admits, so within the context it is the
/// plain RoPE: the fixture base with that scaling gives its own logits bit for bit (and so
/// PEFT's), and keeps its context length.
#[test]
fn dynamic_rope_within_the_context_is_the_plain_rope() {
    let tmp = tempfile::tempdir().unwrap();
    let base = llama().join("base");
    let d = tmp.path().join("dynamic");
    std::fs::create_dir_all(&d).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(base.join(f), d.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(base.join("config.json")).unwrap()).unwrap();
    let theta = cfg.get("rope_parameters").and_then(|p| p.get("rope_theta")).or(cfg.get("rope_theta")).cloned().unwrap_or(10000.0.into());
    cfg["rope_parameters"] = serde_json::json!({"rope_type": "dynamic", "factor": 4.0, "rope_theta": theta});
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let (plain, dynamic) = (cpu_engine(&base), cpu_engine(&d));
    let ids = plain.prompt_ids(&Prompt::Text("terrible service never again, where is my refund?".into())).unwrap();
    assert_eq!(position_logits(&dynamic, &ids, None, 1), position_logits(&plain, &ids, None, 1));
    let ctx = |e: &Engine| e.decoder.as_ref().unwrap().max_positions();
    assert_eq!(ctx(&dynamic), ctx(&plain));
}

#[test]
fn an_f16_kv_cache_stays_close_to_the_f32_cache_and_counts_half_the_bytes() {
    let case = llama();
    let mut e = cpu_engine(&case.join("base"));
    let a = load_adapter(&e, &case.join("adapter"));
    let rows = valid_rows(&expected(&case));
    let want: Vec<Vec<Vec<f32>>> = rows.iter().map(|ids| position_logits(&e, ids, Some(&a), 1)).collect();
    let full = e.decoder.as_ref().unwrap().kv_bytes_per_token();
    std::sync::Arc::get_mut(e.decoder.as_mut().unwrap()).expect("one owner").set_kv_dtype(KvDtype::F16);
    let dec = e.decoder.as_ref().unwrap();
    assert_eq!(dec.kv_bytes_per_token() * 2, full);
    let mut worst = 0f32;
    for (ids, want) in rows.iter().zip(&want) {
        let mut cache = dec.cache(ids.len(), None);
        assert_eq!(cache.dtype(), KvDtype::F16);
        for (p, w) in want.iter().enumerate() {
            let got = dec.step(&mut [Row { tokens: &ids[p..p + 1], cache: &mut cache, adapter: Some(&a) }]).unwrap();
            worst = worst.max(max_abs_diff(&got[0], w));
        }
        assert_eq!(cache.bytes(), ids.len() * full / 2);
    }
    assert!(worst > 0.0 && worst < 2e-3, "f16 cache moved the logits by {worst}");
}
