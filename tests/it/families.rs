//! Every registered model family reproduces PEFT's golden numbers (`../peft2/`): base, LoRA and
//! merged logits, greedy ids, and mixed batches across adapters and the base, on each path
//! (the CPU encoder and decoder, and candle's models).

use super::common::*;
use candle_core::{DType, Tensor};
use loradex::base::BaseDir;
use loradex::model::decoder::Row;
use loradex::model::lora::{Ctx, LoadedAdapter, Routing};
use loradex::model::{Engine, Net};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn case(name: &str) -> PathBuf {
    fixtures().join("../peft2").join(name)
}

fn engine(case: &Path) -> Engine {
    Engine::load(BaseDir::open_dir(&case.join("base")).unwrap(), device()).unwrap()
}

fn adapter(e: &Engine, dir: &Path) -> Arc<LoadedAdapter> {
    let f = loradex::peft::read_dir(dir).unwrap();
    e.adapter(&dir.display().to_string(), &f.config_bytes, &f.weights_bytes, vec![]).unwrap()
}

fn texts(case: &Path) -> Vec<String> {
    case_json(case)["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

fn logits(preds: Vec<loradex::model::Prediction>) -> Vec<Vec<f32>> {
    preds.into_iter().map(|p| p.logits).collect()
}

fn rows_of(t: &Tensor, rows: &[usize]) -> Tensor {
    let idx = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), t.device()).unwrap();
    t.index_select(&idx, 0).unwrap()
}

/// A seq-cls case: tokenizer ids, then base / LoRA / mixed / merged logits on the CPU encoder
/// and on candle's forward.
fn encoder_case(name: &str, family: &str) {
    let case = case(name);
    let (tol, exp) = (atol(&case), expected(&case));
    let mut e = engine(&case);
    assert_eq!(e.base.arch.name(), family);
    let batch = e.tok().unwrap().batch(&texts(&case), 64, &e.device).unwrap();
    assert_eq!(ids_rows(&batch.ids.to_dtype(DType::I64).unwrap()), ids_rows(&exp["input_ids"]), "{name}: token ids");
    let n = batch.lens.len();
    let a = adapter(&e, &case.join("adapter"));
    let Net::Encoder(m) = &e.net else { panic!("{name}: not an encoder") };
    for cpu in [true, false] {
        for (routing, want) in [(Routing::base(n), "base_logits"), (Routing::single(a.clone(), n), "lora_logits")] {
            let mut ctx = Ctx::infer(&routing);
            ctx.cpu_kernels = cpu;
            let got = m.classify(&batch.ids, &batch.type_ids, &batch.mask, &ctx).unwrap();
            assert_close(&got, &exp[want], tol, &format!("{name} {want} (cpu path {cpu})"));
        }
        // one forward, rows alternating between the adapter and the base
        let rows: Vec<Option<usize>> = (0..n).map(|i| (i % 2 == 0).then_some(0)).collect();
        let routing = Routing { adapters: vec![a.clone()], rows: rows.clone() };
        let mut ctx = Ctx::infer(&routing);
        ctx.cpu_kernels = cpu;
        let got = m.classify(&batch.ids, &batch.type_ids, &batch.mask, &ctx).unwrap();
        for (i, r) in rows.iter().enumerate() {
            let want = if r.is_some() { "lora_logits" } else { "base_logits" };
            assert_close(&got[i..=i], &rows_of(&exp[want], &[i]), tol, &format!("{name} mixed row {i} (cpu path {cpu})"));
        }
    }
    e.merge(&a, 1.0).unwrap();
    let merged = logits(e.classify_batch(&batch, &Routing::base(n)).unwrap());
    assert_close(&merged, &exp["merged_logits"], tol, &format!("{name} merged_logits"));
}

#[test]
fn roberta_matches_peft() {
    encoder_case("roberta-seqcls", "roberta");
}

#[test]
fn xlm_roberta_matches_peft() {
    encoder_case("xlmr-seqcls", "xlm-roberta");
}

#[test]
fn distilbert_matches_peft() {
    encoder_case("distilbert-seqcls", "distilbert");
}

/// Logits of candle's model where the mask is 1 equal `exp[want]`.
fn candle_logits(e: &Engine, routing: &Routing, exp: &HashMap<String, Tensor>, want: &str, tol: f32, what: &str) {
    let Net::CausalLm(m) = &e.net else { panic!("not a causal LM") };
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap().to_device(&e.device).unwrap();
    let mask = exp["attention_mask"].to_dtype(DType::F32).unwrap().to_device(&e.device).unwrap();
    let got = m.forward(&ids, Some(&mask), 0, None, &Ctx::infer(routing)).unwrap();
    for (r, row) in ids_rows(&exp["attention_mask"]).iter().enumerate() {
        let valid = row.iter().filter(|&&x| x == 1).count();
        let g = got.get(r).unwrap().narrow(0, 0, valid).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let w = exp[want].get(r).unwrap().narrow(0, 0, valid).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let d = max_abs_diff(&g, &w);
        assert!(d <= tol, "{what} {want}: row {r} differs by {d}");
    }
}

/// The CPU decoder's last-token logits of every row, prefilled in one step with each row's own
/// adapter (`adapters[r]`), equal `exp` at each row's last real position.
fn decoder_logits(e: &Engine, adapters: &[Option<&LoadedAdapter>], exp: &HashMap<String, Tensor>, wants: &[&str], tol: f32, what: &str) {
    let dec = e.decoder.as_ref().expect("a CPU decoder");
    let ids = ids_rows(&exp["input_ids"]);
    let mask = ids_rows(&exp["attention_mask"]);
    let toks: Vec<Vec<u32>> = ids.iter().zip(&mask).map(|(i, m)| i[..m.iter().filter(|&&x| x == 1).count()].to_vec()).collect();
    let mut caches: Vec<_> = toks.iter().map(|t| dec.cache(t.len() + 1, None)).collect();
    let mut rows: Vec<Row> = toks.iter().zip(caches.iter_mut()).zip(adapters).map(|((t, c), a)| Row { tokens: t, cache: c, adapter: *a }).collect();
    let got = dec.step(&mut rows).unwrap();
    for (r, g) in got.iter().enumerate() {
        let last = toks[r].len() - 1;
        let w = exp[wants[r]].get(r).unwrap().get(last).unwrap().to_vec1::<f32>().unwrap();
        let d = max_abs_diff(g, &w);
        assert!(d <= tol, "{what} {}: row {r} differs by {d}", wants[r]);
    }
}

/// A causal case: base / LoRA / mixed / merged logits on candle's model and the CPU decoder,
/// and the greedy ids on both.
fn decoder_case(name: &str, family: &str) {
    let case = case(name);
    let (tol, exp) = (atol(&case), expected(&case));
    let mut e = engine(&case);
    assert_eq!(e.base.arch.name(), family);
    let a = adapter(&e, &case.join("adapter"));
    let b = exp["input_ids"].dims()[0];
    candle_logits(&e, &Routing::base(b), &exp, "base_logits", tol, name);
    candle_logits(&e, &Routing::single(a.clone(), b), &exp, "lora_logits", tol, name);
    decoder_logits(&e, &vec![None; b], &exp, &vec!["base_logits"; b], tol, name);
    decoder_logits(&e, &vec![Some(a.as_ref()); b], &exp, &vec!["lora_logits"; b], tol, name);
    // mixed: one step, rows alternating between the adapter and the base
    let mixed: Vec<Option<&LoadedAdapter>> = (0..b).map(|i| (i % 2 == 0).then_some(a.as_ref())).collect();
    let wants: Vec<&str> = mixed.iter().map(|m| if m.is_some() { "lora_logits" } else { "base_logits" }).collect();
    decoder_logits(&e, &mixed, &exp, &wants, tol, name);
    // greedy ids with the adapter, on the CPU decoder and on candle's model
    let prompt = ids_rows(&exp["prompt_ids"])[0].clone();
    let want = ids_rows(&exp["greedy_ids"])[0].clone();
    let params = loradex::model::generation::SamplingParams { max_tokens: want.len() - prompt.len(), ..Default::default() };
    let g = e.generate(prompt.clone(), params.clone(), Some(a.clone()), &mut |_| {}).unwrap();
    assert_eq!([g.prompt_ids, g.new_ids].concat(), want, "{name}: greedy ids (CPU decoder)");
    let dec = e.decoder.take();
    let g = e.generate(prompt.clone(), params, Some(a.clone()), &mut |_| {}).unwrap();
    assert_eq!([g.prompt_ids, g.new_ids].concat(), want, "{name}: greedy ids (candle)");
    e.decoder = dec;
    e.merge(&a, 1.0).unwrap();
    candle_logits(&e, &Routing::base(b), &exp, "merged_logits", tol, name);
}

#[test]
fn qwen2_matches_peft() {
    decoder_case("qwen2-causal", "qwen2");
}

#[test]
fn mistral_matches_peft() {
    decoder_case("mistral-causal", "mistral");
}

#[test]
fn gemma_matches_peft() {
    decoder_case("gemma-causal", "gemma");
}

#[test]
fn phi3_matches_peft() {
    decoder_case("phi3-causal", "phi3");
}
