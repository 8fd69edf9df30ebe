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

fn engine(case: &Path) -> Engine {
    Engine::load(BaseDir::open_dir(&case.join("base")).unwrap(), device()).unwrap()
}

fn adapter(e: &Engine, dir: &Path) -> Arc<LoadedAdapter> {
    let f = loradex::peft::read_dir(dir).unwrap();
    e.adapter(&dir.display().to_string(), &f.config_bytes, &f.weights_bytes, vec![]).unwrap()
}

/// A copy of an adapter with its LoRA factors (not its saved copies of base weights) times `k`.
fn lora_scaled(src: &Path, dst: &Path, k: f64) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("adapter_config.json"), dst.join("adapter_config.json")).unwrap();
    let mut ts = candle_core::safetensors::load(src.join("adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
    for (key, t) in ts.iter_mut() {
        if key.contains(".lora_") && !key.contains("magnitude") {
            *t = (&*t * k).unwrap();
        }
    }
    candle_core::safetensors::save(&ts, dst.join("adapter_model.safetensors")).unwrap();
    dst.to_path_buf()
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
            let got = loradex::model::encoder::classify(m, &batch.ids, &batch.type_ids, &batch.mask, &ctx).unwrap();
            assert_close(&got, &exp[want], tol, &format!("{name} {want} (cpu path {cpu})"));
        }
        // one forward, rows alternating between the adapter and the base
        let rows: Vec<Option<usize>> = (0..n).map(|i| (i % 2 == 0).then_some(0)).collect();
        let routing = Routing { adapters: vec![a.clone()], rows: rows.clone() };
        let mut ctx = Ctx::infer(&routing);
        ctx.cpu_kernels = cpu;
        let got = loradex::model::encoder::classify(m, &batch.ids, &batch.type_ids, &batch.mask, &ctx).unwrap();
        for (i, r) in rows.iter().enumerate() {
            let want = if r.is_some() { "lora_logits" } else { "base_logits" };
            assert_close(&got[i..=i], &rows_of(&exp[want], &[i]), tol, &format!("{name} mixed row {i} (cpu path {cpu})"));
        }
    }
    // two adapters of the family and the base in one batch: each row as it is alone
    let tmp = tempfile::tempdir().unwrap();
    let other = adapter(&e, &lora_scaled(&case.join("adapter"), &tmp.path().join("other"), 0.5));
    let solo = |a: Option<&Arc<LoadedAdapter>>| match a {
        Some(a) => logits(e.classify_batch(&batch, &Routing::single(a.clone(), n)).unwrap()),
        None => logits(e.classify_batch(&batch, &Routing::base(n)).unwrap()),
    };
    let (sa, so, sb) = (solo(Some(&a)), solo(Some(&other)), solo(None));
    let rows: Vec<Option<usize>> = (0..n).map(|i| [Some(0), Some(1), None][i % 3]).collect();
    let got = logits(e.classify_batch(&batch, &Routing { adapters: vec![a.clone(), other.clone()], rows }).unwrap());
    for (i, g) in got.iter().enumerate() {
        let want = [&sa, &so, &sb][i % 3];
        assert!(max_abs_diff(g, &want[i]) <= 1e-5, "{name}: two-adapter mixed row {i}");
    }
    assert!(max_abs_diff(&sa[0], &so[0]) > 1e-4, "{name}: the scaled adapter should differ");
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
    // two adapters of the family and the base in one step: each row as it is alone
    let tmp = tempfile::tempdir().unwrap();
    let other = adapter(&e, &lora_scaled(&case.join("adapter"), &tmp.path().join("other"), 0.5));
    let dec = e.decoder.as_ref().unwrap();
    let ids = ids_rows(&exp["input_ids"]);
    let mask = ids_rows(&exp["attention_mask"]);
    let toks: Vec<Vec<u32>> = ids.iter().zip(&mask).map(|(i, m)| i[..m.iter().filter(|&&x| x == 1).count()].to_vec()).collect();
    let run = |choice: &[Option<&LoadedAdapter>]| {
        let mut caches: Vec<_> = toks.iter().map(|t| dec.cache(t.len(), None)).collect();
        let mut rows: Vec<Row> = toks.iter().zip(caches.iter_mut()).zip(choice).map(|((t, c), a)| Row { tokens: t, cache: c, adapter: *a }).collect();
        dec.step(&mut rows).unwrap()
    };
    let three: Vec<Option<&LoadedAdapter>> = (0..b).map(|i| [Some(a.as_ref()), Some(other.as_ref()), None][i % 3]).collect();
    let got = run(&three);
    for (i, g) in got.iter().enumerate() {
        let alone = run(&vec![three[i]; b]);
        assert_eq!(g, &alone[i], "{name}: two-adapter mixed row {i} differs from its solo run");
    }
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

/// Qwen3's per-head q/k norms and explicit `head_dim`, on loradex's own fixture (made by
/// transformers + PEFT, `scripts/make-fixtures3.py`).
#[test]
fn qwen3_matches_peft() {
    decoder_case("qwen3-causal", "qwen3");
}

/// Gemma 3's per-head norms, sandwich norms, query scaling, and local layers with their own
/// window and RoPE base (window 4, shorter than the texts), on loradex's own fixture.
#[test]
fn gemma3_matches_peft() {
    decoder_case("gemma3-causal", "gemma3");
}

/// Llama 3.1's RoPE scaling (`rope_type` `llama3`): low frequencies divided by the factor,
/// high ones kept, the middle blended; the fixture's original context of 16 gives its heads
/// frequencies of all three kinds.
#[test]
fn llama3_rope_scaling_matches_peft() {
    decoder_case("llama3-rope-causal", "llama");
}

/// Phi-3.5's `longrope` RoPE: the short factors and the attention factor on cos and sin, the
/// context held to the original 64 positions (the texts use 37).
#[test]
fn phi3_longrope_matches_peft() {
    decoder_case("phi3-longrope-causal", "phi3");
}

/// Phi-4-mini's partial rotary (`partial_rotary_factor` 0.5: RoPE on the first half of each
/// head, the rest passed through), with its long rope over the rotated dimensions only.
#[test]
fn phi3_partial_rotary_matches_peft() {
    decoder_case("phi3-partial-causal", "phi3");
}

/// SmolLM3: Llama with RoPE left out of every fourth layer (the fixture's layer 3).
#[test]
fn smollm3_matches_peft() {
    decoder_case("smollm3-causal", "smollm3");
}

/// IBM Granite: its embedding, residual, attention and logit multipliers, each set away
/// from its neutral value in the fixture.
#[test]
fn granite_matches_peft() {
    decoder_case("granite-causal", "granite");
}

/// OLMo 2: norms only after the attention and the MLP, q/k norms over all heads at once.
#[test]
fn olmo2_matches_peft() {
    decoder_case("olmo2-causal", "olmo2");
}

/// OLMo 3: OLMo 2's norms with sliding-window layers (window 4, shorter than the texts) beside
/// every fourth full one, whose RoPE alone is YaRN-scaled (explicit attention factor).
#[test]
fn olmo3_matches_peft() {
    decoder_case("olmo3-causal", "olmo3");
}

/// YaRN RoPE (`rope_type` `yarn`) on Qwen2: the fixture's original context of 2048 gives its
/// heads kept, blended and interpolated frequencies, and cos and sin carry the default
/// attention factor (0.1·ln 4 + 1).
#[test]
fn qwen2_yarn_rope_scaling_matches_peft() {
    decoder_case("qwen2-yarn-causal", "qwen2");
}

/// Gemma 2's sandwich norms, alternating local and global layers, and soft-capped attention
/// scores and final logits (caps small enough to bend the fixture's values), on loradex's own
/// fixture.
#[test]
fn gemma2_matches_peft() {
    decoder_case("gemma2-causal", "gemma2");
}

/// Gemma 3 4B and up scale their global layers' RoPE linearly (factor 8 here), their local
/// layers' not at all: PEFT's logits and greedy ids on such a config.
#[test]
fn gemma3_with_linear_rope_scaling_matches_peft() {
    decoder_case("gemma3-linear-causal", "gemma3");
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

fn lora_spec(targets: &[&str], save: &[&str]) -> loradex::train::LoraSpec {
    loradex::train::LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        use_rslora: false,
        use_dora: false,
        layers_to_transform: None,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        modules_to_save: save.iter().map(|s| s.to_string()).collect(),
        learning_rate: 1e-2,
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        seed: 5,
    }
}

fn labelled(case: &Path) -> Vec<loradex::train::Example> {
    let labels = ["정상", "욕설", "성희롱"];
    texts(case).into_iter().enumerate().map(|(i, t)| loradex::train::Example { text: t, completion: None, label: Some(labels[i % 3].into()) }).collect()
}

/// On RoBERTa (two-layer head under `classifier`) and DistilBERT (`pre_classifier` +
/// `classifier`), the hand-differentiated CPU step gives autograd's loss and gradients for
/// every LoRA tensor and every head parameter, which all get a gradient.
#[test]
fn encoder_families_cpu_step_matches_autograd() {
    use loradex::train::{GradPath, Task, Trainer};
    for (name, targets, save, head) in [
        ("roberta-seqcls", &["query", "key", "value", "dense"][..], &["classifier"][..], &["classifier.dense.weight", "classifier.out_proj.weight"][..]),
        ("distilbert-seqcls", &["q_lin", "v_lin", "lin1"][..], &["pre_classifier", "classifier"][..], &["pre_classifier.weight", "classifier.weight"][..]),
    ] {
        let case = case(name);
        let e = Engine::load(BaseDir::open_dir(&case.join("base")).unwrap(), candle_core::Device::Cpu).unwrap();
        let labels = vec!["정상".to_string(), "욕설".into(), "성희롱".into()];
        let mut tr = Trainer::new(e, Task::SeqCls, lora_spec(targets, save), labels).unwrap();
        for h in head {
            assert!(tr.var_names().iter().any(|n| n.ends_with(h)), "{name}: {h} is not trained: {:?}", tr.var_names());
        }
        let ex = labelled(&case);
        let refs: Vec<_> = ex.iter().collect();
        let (b, t, w) = tr.encode(&refs, 32).unwrap();
        for _ in 0..2 {
            tr.step(&b, &t, w.as_ref(), 1e-2).unwrap();
        }
        tr.grad_path = GradPath::Auto;
        let (l1, g1) = tr.gradients(&b, &t, w.as_ref()).unwrap();
        tr.grad_path = GradPath::Autograd;
        let (l2, g2) = tr.gradients(&b, &t, w.as_ref()).unwrap();
        assert!((l1 - l2).abs() < 1e-5 * l2.abs().max(1.0), "{name}: loss {l1} vs {l2}");
        for ((n1, a), (n2, b)) in g1.into_iter().zip(g2) {
            assert_eq!(n1, n2);
            let (a, b) = (a.unwrap_or_else(|| panic!("{name}: no gradient for {n1}")), b.unwrap_or_else(|| panic!("{name}: autograd gave {n1} none")));
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{name}: {n1} has a zero gradient");
            let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-4 * scale + 1e-6, "{name}: {n1} differs by {diff} (largest element {scale})");
        }
    }
}

/// Qwen2 (biased q/k/v) and Phi-3 (fused projections) train: every LoRA tensor gets a gradient.
#[test]
fn decoder_families_train_every_lora_tensor() {
    use loradex::train::{Example, Task, Trainer};
    for (name, targets) in [
        ("qwen2-causal", &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"][..]),
        ("qwen3-causal", &["q_proj", "k_proj", "v_proj", "o_proj"][..]),
        ("phi3-causal", &["qkv_proj", "gate_up_proj", "down_proj"][..]),
    ] {
        let case = case(name);
        let e = Engine::load(BaseDir::open_dir(&case.join("base")).unwrap(), candle_core::Device::Cpu).unwrap();
        let mut tr = Trainer::new(e, Task::CausalLm, lora_spec(targets, &[]), vec![]).unwrap();
        assert_eq!(tr.var_names().len(), 2 * targets.len() * 2, "{name}: {:?}", tr.var_names());
        let ex = [
            Example { text: "where is my refund".into(), completion: Some(" the agent was very kind".into()), label: None },
            Example { text: "배송이 늦어서 불편합니다".into(), completion: None, label: None },
        ];
        let refs: Vec<_> = ex.iter().collect();
        let (b, t, w) = tr.encode(&refs, 32).unwrap();
        tr.step(&b, &t, w.as_ref(), 1e-2).unwrap();
        let (_, grads) = tr.gradients(&b, &t, w.as_ref()).unwrap();
        for (n, g) in grads {
            let g = g.unwrap_or_else(|| panic!("{name}: {n} received no gradient"));
            let norm = g.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(norm.is_finite() && norm > 0.0, "{name}: {n}: gradient norm {norm}");
        }
    }
}

/// Copies a case's base into `dst`, letting `edit` change its config and tensors.
fn edited_base(src: &Path, dst: &Path, edit: impl FnOnce(&mut serde_json::Value, &mut HashMap<String, Tensor>)) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    for f in std::fs::read_dir(src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dst.join("config.json")).unwrap()).unwrap();
    let mut ts = candle_core::safetensors::load(dst.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    edit(&mut cfg, &mut ts);
    std::fs::write(dst.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    candle_core::safetensors::save(&ts, dst.join("model.safetensors")).unwrap();
    dst.to_path_buf()
}

fn load_err(dir: &Path) -> String {
    match Engine::load(BaseDir::open_dir(dir).unwrap(), candle_core::Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// An OLMo 3 config in the older style (`rope_theta`, and `rope_scaling` for the full layers
/// only, as transformers reads it) runs as the same config written per layer type.
#[test]
fn olmo3_older_style_rope_config_reads_as_per_layer_type() {
    let tmp = tempfile::tempdir().unwrap();
    let src = case("olmo3-causal").join("base");
    edited_base(&src, &tmp.path().join("old").join("base"), |cfg, _| {
        let mut full = cfg["rope_parameters"]["full_attention"].clone();
        let theta = full["rope_theta"].take();
        full.as_object_mut().unwrap().remove("rope_theta");
        cfg.as_object_mut().unwrap().remove("rope_parameters");
        (cfg["rope_theta"], cfg["rope_scaling"]) = (theta, full);
    });
    let (new, old) = (engine(&case("olmo3-causal")), engine(&tmp.path().join("old")));
    let ids = new.prompt_ids(&loradex::model::Prompt::Text("terrible service never again, where is my refund?".into())).unwrap();
    let run = |e: &Engine| {
        let dec = e.decoder.as_ref().unwrap();
        let mut cache = dec.cache(ids.len(), None);
        dec.step(&mut [Row { tokens: &ids, cache: &mut cache, adapter: None }]).unwrap()
    };
    assert_eq!(run(&old), run(&new));
}

/// OLMo 3 configs the decoder cannot run are refused by name: RoPE scaling on the sliding
/// layers, a sliding RoPE base that cannot rotate, layer types of an unknown kind.
#[test]
fn olmo3_configs_that_cannot_run_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let src = case("olmo3-causal").join("base");
    let sliding = |v: serde_json::Value| move |cfg: &mut serde_json::Value, _: &mut HashMap<String, Tensor>| cfg["rope_parameters"]["sliding_attention"] = v;
    let d = edited_base(&src, &tmp.path().join("scaled"), sliding(serde_json::json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0})));
    assert!(load_err(&d).contains("rope scaling on the sliding-window layers"), "{}", load_err(&d));
    let d = edited_base(&src, &tmp.path().join("theta"), sliding(serde_json::json!({"rope_type": "default", "rope_theta": 0.5})));
    assert!(load_err(&d).contains("local layers' rope_theta"), "{}", load_err(&d));
    let d = edited_base(&src, &tmp.path().join("types"), |cfg, _| cfg["layer_types"][0] = "chunked_attention".into());
    assert!(load_err(&d).contains("chunked_attention"), "{}", load_err(&d));
}

/// A malformed base is an error that names the tensor or the config field, never a panic.
#[test]
fn malformed_bases_are_errors_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["qwen2-causal", "phi3-causal", "roberta-seqcls", "distilbert-seqcls"] {
        let src = case(name).join("base");
        let dec = name.ends_with("causal");
        let victim = if dec { "model.layers.1.post_attention_layernorm.weight" } else if name.starts_with("roberta") { "roberta.encoder.layer.1.output.dense.bias" } else { "distilbert.transformer.layer.1.ffn.lin2.weight" };
        let d = edited_base(&src, &tmp.path().join(format!("{name}-missing")), |_, ts| {
            ts.remove(victim).unwrap();
        });
        let e = load_err(&d);
        assert!(e.contains(victim), "{name}: missing tensor: {e}");
        let misshapen = if dec { "model.layers.0.mlp.down_proj.weight" } else if name.starts_with("roberta") { "roberta.encoder.layer.0.attention.self.key.weight" } else { "distilbert.transformer.layer.0.attention.k_lin.weight" };
        let d = edited_base(&src, &tmp.path().join(format!("{name}-shape")), |_, ts| {
            let t = &ts[misshapen];
            let (r, c) = t.dims2().unwrap();
            let cut = t.narrow(1, 0, c - 1).unwrap().contiguous().unwrap();
            assert_eq!(cut.dims2().unwrap(), (r, c - 1));
            ts.insert(misshapen.into(), cut);
        });
        let e = load_err(&d);
        assert!(e.contains(misshapen) && e.contains("shape"), "{name}: wrong shape: {e}");
        let heads = if name.starts_with("distil") { "n_heads" } else { "num_attention_heads" };
        let d = edited_base(&src, &tmp.path().join(format!("{name}-zero")), |c, _| c[heads] = 0.into());
        let e = load_err(&d);
        assert!(e.contains("positive") || e.contains("heads"), "{name}: zero heads: {e}");
        let d = edited_base(&src, &tmp.path().join(format!("{name}-indivisible")), |c, _| {
            c[heads] = 5.into();
            if dec {
                c["num_key_value_heads"] = 5.into();
                c.as_object_mut().unwrap().remove("head_dim");
            }
        });
        let e = load_err(&d);
        assert!(e.contains("divisible"), "{name}: hidden not divisible by heads: {e}");
    }
}

/// Mistral's sliding window: candle's model and the CPU decoder agree with each other, and a
/// window shorter than the prompt changes the logits (it is not ignored).
#[test]
fn mistral_sliding_window_is_honoured() {
    let tmp = tempfile::tempdir().unwrap();
    let src = case("mistral-causal");
    let exp = expected(&src);
    let d = edited_base(&src.join("base"), &tmp.path().join("w"), |c, _| c["sliding_window"] = 3.into());
    let e = Engine::load(BaseDir::open_dir(&d).unwrap(), candle_core::Device::Cpu).unwrap();
    let Net::CausalLm(m) = &e.net else { panic!() };
    let ids = ids_rows(&exp["input_ids"]);
    let mask = ids_rows(&exp["attention_mask"]);
    let dec = e.decoder.as_ref().unwrap();
    let mut changed = false;
    for (r, (row, mk)) in ids.iter().zip(&mask).enumerate() {
        let n = mk.iter().filter(|&&x| x == 1).count();
        let toks = &row[..n];
        let t = Tensor::from_vec(toks.to_vec(), (1, n), &candle_core::Device::Cpu).unwrap();
        let want = m.forward(&t, None, 0, None, &Ctx::infer(&Routing::base(1))).unwrap().get(0).unwrap().get(n - 1).unwrap().to_vec1::<f32>().unwrap();
        // the CPU decoder one token at a time: the window slides over its cache
        let mut cache = dec.cache(n, None);
        let mut last = vec![];
        for tok in toks {
            last = dec.step(&mut [Row { tokens: std::slice::from_ref(tok), cache: &mut cache, adapter: None }]).unwrap().remove(0);
        }
        assert!(max_abs_diff(&last, &want) < 1e-4, "row {r}: decoder and candle differ");
        let full = exp["base_logits"].get(r).unwrap().get(n - 1).unwrap().to_vec1::<f32>().unwrap();
        changed |= n > 3 && max_abs_diff(&last, &full) > 1e-3;
    }
    assert!(changed, "a 3-key window left every logit as full attention gives it");
}

/// `merge` writes a directory of the family's own task class that reloads as a base giving
/// PEFT's merged logits (an encoder with its saved two-layer head, and a fused decoder).
#[test]
fn merged_family_directories_reload() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, class) in [("roberta-seqcls", "RobertaForSequenceClassification"), ("distilbert-seqcls", "DistilBertForSequenceClassification"), ("phi3-causal", "Phi3ForCausalLM")] {
        let case = case(name);
        let (tol, exp) = (atol(&case), expected(&case));
        let home = tmp.path().join(format!("{name}-home"));
        let out = tmp.path().join(format!("{name}-merged"));
        import(&home, &case.join("adapter"), "a", &case.join("base"));
        ok(&home, &["merge", "a", "--base", case.join("base").to_str().unwrap(), "--out", out.to_str().unwrap()]);
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["architectures"][0], class, "{name}");
        let e = Engine::load(BaseDir::open_dir(&out).unwrap(), candle_core::Device::Cpu).unwrap();
        match &e.net {
            Net::Encoder(_) => {
                let batch = e.tok().unwrap().batch(&texts(&case), 64, &e.device).unwrap();
                let got = logits(e.classify_batch(&batch, &Routing::base(batch.lens.len())).unwrap());
                assert_close(&got, &exp["merged_logits"], tol, &format!("{name} merged directory"));
            }
            _ => decoder_logits(&e, &[None; 5], &exp, &["merged_logits"; 5], tol, name),
        }
    }
}

/// DoRA (`use_dora`): PEFT's weight-norm rescaling on both encoder paths and both decoder
/// paths, beside base rows in one batch, merged, and in greedy generation.
#[test]
fn dora_encoder_matches_peft() {
    encoder_case("bert-seqcls-dora", "bert");
}

#[test]
fn dora_decoder_matches_peft() {
    decoder_case("llama-dora", "llama");
}

/// A DoRA adapter trained by loradex: its magnitudes and LoRA tensors all get gradients
/// (autograd, dropout on), and what it saves (PEFT's keys, `use_dora` in the config) reloads
/// as an adapter giving the trainer's own logits on the inference paths, merged and unmerged.
#[test]
fn dora_trains_and_round_trips() {
    use loradex::train::{Task, Trainer};
    let case = case("bert-seqcls-dora");
    let e = Engine::load(BaseDir::open_dir(&case.join("base")).unwrap(), candle_core::Device::Cpu).unwrap();
    let labels = vec!["정상".to_string(), "욕설".into(), "성희롱".into()];
    let mut spec = lora_spec(&["query", "value"], &["classifier"]);
    spec.use_dora = true;
    let mut tr = Trainer::new(e, Task::SeqCls, spec, labels.clone()).unwrap();
    let mags = tr.var_names().iter().filter(|n| n.ends_with(".lora_magnitude_vector")).count();
    assert_eq!(mags, 4, "{:?}", tr.var_names());
    let ex = labelled(&case);
    let refs: Vec<_> = ex.iter().collect();
    let (b, t, w) = tr.encode(&refs, 32).unwrap();
    let first = tr.step(&b, &t, w.as_ref(), 5e-2).unwrap();
    for _ in 0..6 {
        tr.step(&b, &t, w.as_ref(), 5e-2).unwrap();
    }
    let (last, grads) = tr.gradients(&b, &t, w.as_ref()).unwrap();
    assert!(last < first, "DoRA training did not lower the loss: {first} -> {last}");
    for (n, g) in grads {
        let g = g.unwrap_or_else(|| panic!("{n} received no gradient"));
        assert!(g.iter().any(|v| *v != 0.0), "{n}: zero gradient");
    }
    // the saved adapter is PEFT's DoRA format and reloads
    let cfg = tr.config_bytes(None);
    let wts = tr.weights_bytes().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
    assert_eq!(v["use_dora"], true);
    let mut e = std::mem::replace(&mut tr.engine, Engine::load(BaseDir::open_dir(&case.join("base")).unwrap(), candle_core::Device::Cpu).unwrap());
    let a = e.adapter("trained", &cfg, &wts, labels).unwrap();
    assert!(a.modules.values().all(|p| p.magnitude.is_some()));
    let n = b.lens.len();
    let mut ctx_rows = vec![];
    for cpu in [true, false] {
        let routing = Routing::single(a.clone(), n);
        let mut ctx = Ctx::infer(&routing);
        ctx.cpu_kernels = cpu;
        let Net::Encoder(m) = &e.net else { panic!() };
        ctx_rows.push(loradex::model::encoder::classify(m, &b.ids, &b.type_ids, &b.mask, &ctx).unwrap());
    }
    let (rows_cpu, rows_candle) = (&ctx_rows[0], &ctx_rows[1]);
    for (x, y) in rows_cpu.iter().zip(rows_candle) {
        assert!(max_abs_diff(x, y) < 1e-4, "CPU {x:?} vs candle {y:?}");
    }
    e.merge(&a, 1.0).unwrap();
    let merged = logits(e.classify_batch(&b, &Routing::base(n)).unwrap());
    for (x, y) in merged.iter().zip(rows_cpu) {
        assert!(max_abs_diff(x, y) < 1e-4, "merged {x:?} vs unmerged {y:?}");
    }
}

/// LoRA on `embed_tokens` (with the base-layer copy PEFT saves beside it) and regex
/// `rank_pattern` / `alpha_pattern`: PEFT's logits and greedy ids on both decoders, mixed with
/// base rows, merged; the adapter imports into the store.
#[test]
fn embedding_lora_and_patterns_match_peft() {
    decoder_case("llama-embed-patterns", "llama");
    let tmp = tempfile::tempdir().unwrap();
    let c = case("llama-embed-patterns");
    import(&tmp.path().join("home"), &c.join("adapter"), "emb", &c.join("base"));
}
