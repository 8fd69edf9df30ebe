//! The inference core reproduces PEFT's numbers on the golden fixtures.

use super::common::*;
use candle_core::{Device, Tensor};
use loradex::base::BaseDir;
use loradex::model::lora::{Ctx, Routing};
use loradex::model::{pad_batch, Engine, Net};
use std::sync::Arc;

fn engine(case: &std::path::Path) -> Engine {
    Engine::load(BaseDir::open_dir(&case.join("base")).unwrap(), device()).unwrap()
}

fn adapter(e: &Engine, dir: &std::path::Path) -> Arc<loradex::model::lora::LoadedAdapter> {
    let f = loradex::peft::read_dir(dir).unwrap();
    e.adapter(&dir.display().to_string(), &f.config_bytes, &f.weights_bytes, vec![]).unwrap()
}

fn bert_batch(e: &Engine, exp: &std::collections::HashMap<String, Tensor>) -> loradex::model::Batch {
    let ids = ids_rows(&exp["input_ids"]);
    let tt = ids_rows(&exp["token_type_ids"]);
    let mask = ids_rows(&exp["attention_mask"]);
    let rows: Vec<(Vec<u32>, Vec<u32>)> = ids
        .iter()
        .zip(&tt)
        .zip(&mask)
        .map(|((i, t), m)| {
            let n = m.iter().filter(|&&x| x == 1).count();
            (i[..n].to_vec(), t[..n].to_vec())
        })
        .collect();
    pad_batch(&rows, e.tok.as_ref().unwrap().pad_id, &e.device).unwrap()
}

fn logits(preds: Vec<loradex::model::Prediction>) -> Vec<Vec<f32>> {
    preds.into_iter().map(|p| p.logits).collect()
}

#[test]
fn bert_tokenizer_matches_fixture_ids() {
    let case = bert();
    let e = engine(&case);
    let exp = expected(&case);
    let texts: Vec<String> = case_json(&case)["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let b = e.tok().unwrap().batch(&texts, 64, &e.device).unwrap();
    assert_eq!(ids_rows(&b.ids.to_dtype(candle_core::DType::I64).unwrap()), ids_rows(&exp["input_ids"]));
}

#[test]
fn bert_base_lora_other_mixed_merged_match_peft() {
    let case = bert();
    let tol = atol(&case);
    let exp = expected(&case);
    let mut e = engine(&case);
    let batch = bert_batch(&e, &exp);
    let n = batch.lens.len();
    let base = logits(e.classify_batch(&batch, &Routing::base(n)).unwrap());
    assert_close(&base, &exp["base_logits"], tol, "base_logits");
    let default = adapter(&e, &case.join("adapter"));
    let lora = logits(e.classify_batch(&batch, &Routing::single(default.clone(), n)).unwrap());
    assert_close(&lora, &exp["lora_logits"], tol, "lora_logits");
    let other = adapter(&e, &case.join("adapters_multi/other"));
    let o = logits(e.classify_batch(&batch, &Routing::single(other.clone(), n)).unwrap());
    assert_close(&o, &exp["other_logits"], tol, "other_logits");
    // mixed: one forward, each row its own adapter
    let names = case_json(&case)["mixed_adapter_names"].as_array().unwrap().clone();
    let rows = names
        .iter()
        .map(|n| match n.as_str().unwrap() {
            "default" => Some(0),
            "other" => Some(1),
            _ => None,
        })
        .collect();
    let routing = Routing { adapters: vec![default.clone(), other], rows };
    let mixed = logits(e.classify_batch(&batch, &routing).unwrap());
    assert_close(&mixed, &exp["mixed_logits"], tol, "mixed_logits");
    // the gathered batched-matmul path (accelerators; training-mode forwards) agrees too
    let Net::Encoder(m) = &e.net else { panic!() };
    let mut ctx = Ctx::infer(&routing);
    ctx.train = true;
    let gathered = m.classify(&batch.ids, &batch.type_ids, &batch.mask, &ctx).unwrap();
    assert_close(&gathered, &exp["mixed_logits"], tol, "mixed_logits (gathered path)");
    assert!(matches!(ctx.bank.get(), Some(None)), "adapters of different ranks take the per-module gather");
    // same-rank adapters take the forward-wide bank; one of them lacks the value modules
    let q_only = Arc::new(loradex::model::lora::LoadedAdapter {
        id: "q-only".into(),
        modules: default.modules.iter().filter(|(k, _)| k.ends_with("query")).map(|(k, p)| (k.clone(), p.clone())).collect(),
        saved: default.saved.clone(),
        labels: default.labels.clone(),
        bytes: 0,
        flat: Default::default(),
        slots: Default::default(),
    });
    assert!(!q_only.modules.is_empty() && q_only.modules.len() < default.modules.len());
    let again = adapter(&e, &case.join("adapter"));
    let same_rank = Routing { adapters: vec![default.clone(), q_only, again], rows: vec![Some(0), Some(1), None, Some(2), Some(1)] };
    let kernel = logits(e.classify_batch(&batch, &same_rank).unwrap());
    for round in 0..2 {
        // the second round reads the adapters' cached flat tensors
        let mut ctx = Ctx::infer(&same_rank);
        ctx.train = true;
        let banked = m.classify(&batch.ids, &batch.type_ids, &batch.mask, &ctx).unwrap();
        assert!(matches!(ctx.bank.get(), Some(Some(_))), "same-rank adapters use the bank");
        for (r, (g, k)) in banked.iter().zip(&kernel).enumerate() {
            assert!(max_abs_diff(g, k) <= tol, "round {round}: row {r}: bank {g:?} vs kernel {k:?}");
        }
    }
    assert_close(&kernel[2..3], &exp["base_logits"].narrow(0, 2, 1).unwrap(), tol, "base row");
    assert_close(&kernel[3..4], &exp["lora_logits"].narrow(0, 3, 1).unwrap(), tol, "adapter row");
    // merged into the weights, then unmerged back to the base
    e.merge(&default, 1.0).unwrap();
    let merged = logits(e.classify_batch(&batch, &Routing::base(n)).unwrap());
    assert_close(&merged, &exp["merged_logits"], tol, "merged_logits");
}

#[test]
fn llama_logits_and_greedy_ids_match_peft() {
    let case = llama();
    let tol = atol(&case);
    let exp = expected(&case);
    let mut e = engine(&case);
    let a = adapter(&e, &case.join("adapter"));
    let b = exp["input_ids"].dims()[0];
    let check = |e: &Engine, routing: &Routing, want: &str| assert_llama_logits(e, routing, &exp, want, tol);
    check(&e, &Routing::base(b), "base_logits");
    check(&e, &Routing::single(a.clone(), b), "lora_logits");
    // greedy generation with the adapter active
    let prompt: Vec<u32> = ids_rows(&exp["prompt_ids"])[0].clone();
    let want: Vec<u32> = ids_rows(&exp["greedy_ids"])[0].clone();
    // candle's model, as on an accelerator (the CPU decoder has its own test in generate.rs)
    e.decoder = None;
    let params = loradex::model::generation::SamplingParams { max_tokens: want.len() - prompt.len(), ..Default::default() };
    let g = e.generate(prompt.clone(), params, Some(a.clone()), &mut |_| {}).unwrap();
    assert_eq!([g.prompt_ids, g.new_ids].concat(), want, "greedy ids");
    e.merge(&a, 1.0).unwrap();
    check(&e, &Routing::base(b), "merged_logits");
}

/// Llama logits on the fixture's inputs equal `exp[want]` where the attention mask is 1.
fn assert_llama_logits(e: &Engine, routing: &Routing, exp: &std::collections::HashMap<String, Tensor>, want: &str, tol: f32) {
    let Net::CausalLm(m) = &e.net else { panic!("not a llama engine") };
    let ids = exp["input_ids"].to_dtype(candle_core::DType::U32).unwrap().to_device(&e.device).unwrap();
    let mask = exp["attention_mask"].to_dtype(candle_core::DType::F32).unwrap().to_device(&e.device).unwrap();
    let got = m.forward(&ids, Some(&mask), 0, None, &Ctx::infer(routing)).unwrap();
    for (r, row) in ids_rows(&exp["attention_mask"]).iter().enumerate() {
        let valid = row.iter().filter(|&&x| x == 1).count();
        let g = got.get(r).unwrap().narrow(0, 0, valid).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let w = exp[want].get(r).unwrap().narrow(0, 0, valid).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let d = max_abs_diff(&g, &w);
        assert!(d <= tol, "{want}: row {r} differs by {d}");
    }
}

#[test]
fn merge_writes_a_model_directory_that_reloads_with_merged_logits() {
    let case = bert();
    let tol = atol(&case);
    let exp = expected(&case);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let out = tmp.path().join("merged");
    import(&home, &case.join("adapter"), "cs", &case.join("base"));
    ok(&home, &["merge", "cs", "--base", case.join("base").to_str().unwrap(), "--out", out.to_str().unwrap()]);
    // the directory is a complete task model: config (with labels), weights, tokenizer
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    assert_eq!(cfg["id2label"]["1"], "욕설");
    assert!(out.join("tokenizer.json").is_file());
    // same tensor names and shapes as PEFT's merge_and_unload, values within tolerance
    let ours = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let peft = candle_core::safetensors::load(case.join("merged/model.safetensors"), &Device::Cpu).unwrap();
    let mut a: Vec<&String> = ours.keys().collect();
    let mut b: Vec<&String> = peft.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    for (k, t) in &peft {
        let d = (t - &ours[k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d <= tol, "{k} differs from PEFT's merged weight by {d}");
    }
    // and it reloads as a base of its own, giving merged_logits without any adapter
    let e = Engine::load(BaseDir::open_dir(&out).unwrap(), device()).unwrap();
    let batch = bert_batch(&e, &exp);
    let got = logits(e.classify_batch(&batch, &Routing::base(batch.lens.len())).unwrap());
    assert_close(&got, &exp["merged_logits"], tol, "merged directory logits");
}

#[test]
fn llama_merge_directory_reloads_with_merged_logits() {
    let case = llama();
    let tol = atol(&case);
    let exp = expected(&case);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let out = tmp.path().join("merged");
    import(&home, &case.join("adapter"), "gen", &case.join("base"));
    ok(&home, &["merge", "gen", "--base", case.join("base").to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let e = Engine::load(BaseDir::open_dir(&out).unwrap(), device()).unwrap();
    assert!(matches!(e.net, Net::CausalLm(_)), "merged llama did not reload as llama");
    assert_llama_logits(&e, &Routing::base(5), &exp, "merged_logits", tol);
}
