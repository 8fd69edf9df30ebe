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
