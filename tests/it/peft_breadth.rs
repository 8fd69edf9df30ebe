//! PEFT settings beyond plain LoRA: `layers_to_transform` / `layers_pattern` (PEFT's layer
//! index rules, checked at import, honoured in training and written to the config).

use super::common::*;
use loradex::peft::{layer_index, LoraConfig};

#[test]
fn layer_index_follows_peft_rules() {
    let none: Vec<String> = vec![];
    assert_eq!(layer_index("model.layers.3.self_attn.q_proj", &none), Some(3));
    assert_eq!(layer_index("bert.encoder.layer.11.attention.self.query", &none), Some(11));
    // PEFT's default regex needs two components before the index and one after it
    assert_eq!(layer_index("layers.3.q_proj", &none), None);
    assert_eq!(layer_index("model.layers.3", &none), None);
    let pat = vec!["h".to_string()];
    assert_eq!(layer_index("transformer.h.7.attn.c_attn", &pat), Some(7));
    assert_eq!(layer_index("model.layers.7.attn", &pat), None);
}

/// Writes the llama fixture's adapter into `dst` with `layers_to_transform` set, keeping only
/// the tensors of `keep` layers.
fn restricted(dst: &std::path::Path, layers: &str, keep: &[usize]) -> std::path::PathBuf {
    let src = llama().join("adapter");
    std::fs::create_dir_all(dst).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("adapter_config.json")).unwrap()).unwrap();
    cfg["layers_to_transform"] = serde_json::from_str(layers).unwrap();
    std::fs::write(dst.join("adapter_config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let mut ts = candle_core::safetensors::load(src.join("adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
    ts.retain(|k, _| keep.iter().any(|l| k.contains(&format!(".layers.{l}."))));
    assert!(!ts.is_empty());
    candle_core::safetensors::save(&ts, dst.join("adapter_model.safetensors")).unwrap();
    dst.to_path_buf()
}

#[test]
fn layers_to_transform_is_checked_at_import_and_used_in_training() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let base = llama().join("base");
    // an integer or a list, as PEFT accepts
    let c = LoraConfig::parse(&std::fs::read(restricted(&tmp.path().join("one"), "1", &[1]).join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(c.layers_to_transform, Some(vec![1]));
    assert!(c.in_layers("model.layers.1.self_attn.q_proj") && !c.in_layers("model.layers.0.self_attn.q_proj"));
    import(&home, &restricted(&tmp.path().join("ok"), "[1]", &[1]), "only1", &base);
    // tensors in a layer the config excludes are a clear error, and nothing is stored
    let err = fails(&home, &["import", restricted(&tmp.path().join("bad"), "[1]", &[0, 1]).to_str().unwrap(), "--name", "bad", "--base", base.to_str().unwrap()]);
    assert!(err.contains("layers.0") && err.contains("layers_to_transform"), "{err}");
    assert!(fails(&home, &["show", "bad"]).contains("bad"));
    // training puts LoRA only in the listed layers and says so in the config
    let e = loradex::model::Engine::load(loradex::base::BaseDir::open_dir(&base).unwrap(), candle_core::Device::Cpu).unwrap();
    let spec = loradex::train::LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        use_rslora: false,
        use_dora: false,
        layers_to_transform: Some(vec![1]),
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        modules_to_save: vec![],
        learning_rate: 1e-2,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        seed: 1,
    };
    let tr = loradex::train::Trainer::new(e, loradex::train::Task::CausalLm, spec, vec![]).unwrap();
    let names = tr.var_names();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().all(|n| n.contains(".layers.1.")), "{names:?}");
    let cfg: serde_json::Value = serde_json::from_slice(&tr.config_bytes(None)).unwrap();
    assert_eq!(cfg["layers_to_transform"], serde_json::json!([1]));
    LoraConfig::parse(&tr.config_bytes(None)).unwrap();
}

/// A per-request mix `Σ wᵢ Bᵢ(Aᵢ x)` equals PEFT's `cat` combination of the same adapters
/// (`combined_cat_logits`), runs beside single-adapter and base rows in one decoder step, and
/// gives each row what it gives alone.
#[test]
fn per_request_mix_equals_cat_combination() {
    use loradex::model::decoder::Row;
    use loradex::model::lora::LoadedAdapter;
    let case = fixtures().join("../peft2/llama-combine");
    let (tol, exp) = (atol(&case), expected(&case));
    let e = loradex::model::Engine::load(loradex::base::BaseDir::open_dir(&case.join("base")).unwrap(), candle_core::Device::Cpu).unwrap();
    let load = |d: std::path::PathBuf| {
        let f = loradex::peft::read_dir(&d).unwrap();
        e.adapter(&d.display().to_string(), &f.config_bytes, &f.weights_bytes, vec![]).unwrap()
    };
    let (a0, a1, a2) = (load(case.join("adapters")), load(case.join("adapters/a1")), load(case.join("adapters/a2")));
    let mix = LoadedAdapter::mix("mix", &[(&a0, 1.0), (&a1, 0.5), (&a2, 0.25)]).unwrap();
    let cat = load(case.join("combined/c_cat"));
    let dec = e.decoder.as_ref().unwrap();
    let ids = ids_rows(&exp["input_ids"]);
    let mask = ids_rows(&exp["attention_mask"]);
    let toks: Vec<Vec<u32>> = ids.iter().zip(&mask).map(|(i, m)| i[..m.iter().filter(|&&x| x == 1).count()].to_vec()).collect();
    let run = |choice: &[Option<&LoadedAdapter>]| -> Vec<Vec<f32>> {
        let mut caches: Vec<_> = toks.iter().map(|t| dec.cache(t.len(), None)).collect();
        let mut rows: Vec<Row> = toks.iter().zip(caches.iter_mut()).zip(choice).map(|((t, c), a)| Row { tokens: t, cache: c, adapter: *a }).collect();
        dec.step(&mut rows).unwrap()
    };
    let n = toks.len();
    let all_mix = run(&vec![Some(&mix); n]);
    for (r, g) in all_mix.iter().enumerate() {
        let want = exp["combined_cat_logits"].get(r).unwrap().get(toks[r].len() - 1).unwrap().to_vec1::<f32>().unwrap();
        assert!(max_abs_diff(g, &want) <= tol, "mix row {r} vs PEFT's cat: {}", max_abs_diff(g, &want));
    }
    let all_cat = run(&vec![Some(cat.as_ref()); n]);
    let alone_a1 = run(&vec![Some(a1.as_ref()); n]);
    let alone_base = run(&vec![None; n]);
    // one step mixing a mix, the stored cat, a single adapter and the base
    let choice: Vec<Option<&LoadedAdapter>> = (0..n).map(|i| [Some(&mix), Some(cat.as_ref()), Some(a1.as_ref()), None][i % 4]).collect();
    let mixed = run(&choice);
    for (r, g) in mixed.iter().enumerate() {
        let alone = [&all_mix, &all_cat, &alone_a1, &alone_base][r % 4];
        assert_eq!(g, &alone[r], "row {r}: a mixed batch changed its logits");
        assert!(max_abs_diff(&all_mix[r], &all_cat[r]) < 1e-5, "row {r}: mix vs stored cat");
    }
    // labels must agree, and DoRA adapters are refused
    let labelled = LoadedAdapter { labels: vec!["x".into()], ..LoadedAdapter::mix("l", &[(&a1, 1.0)]).unwrap() };
    assert!(LoadedAdapter::mix("bad", &[(&a0, 1.0), (&labelled, 1.0)]).is_err());
}
