//! Fuzz target: `adapter_config.json` (`LoraConfig::parse`) and what is asked of a parsed
//! config: `scale_for` on module paths built from its own `rank_pattern`/`alpha_pattern` keys
//! and target modules, key classification against its `modules_to_save`, and the round trip
//! through `new_config_json` (the config loradex writes for the same settings must parse back
//! to the same settings).
#![no_main]

use libfuzzer_sys::fuzz_target;
use loradex::peft::{classify_key, new_config_json, LoraConfig, NewConfig, KEY_PREFIX};

fuzz_target!(|data: &[u8]| {
    let Ok(c) = LoraConfig::parse(data) else { return };
    assert!(c.r > 0, "parse accepted r = 0");

    let mut modules: Vec<String> = vec!["model.layers.0.self_attn.q_proj".into(), "bert.encoder.layer.1.attention.self.value".into()];
    for k in c.rank_pattern.keys().chain(c.alpha_pattern.keys()).chain(c.target_modules.iter().map(String::as_str)) {
        modules.push(k.to_string());
        modules.push(format!("model.layers.0.{k}"));
        modules.push(format!("x{k}"));
    }
    for m in &modules {
        for rank in [1, c.r, 7] {
            let _ = c.scale_for(m, rank);
        }
        assert!(c.rank_for(m) > 0, "rank_pattern gave rank 0");
        for suffix in [".lora_A.weight", ".lora_B.weight", ".weight", ".modules_to_save.default.weight"] {
            let _ = classify_key(&format!("{KEY_PREFIX}{m}{suffix}"), &c.modules_to_save);
        }
    }

    let task = c.task_type.clone().unwrap_or_default();
    let written = new_config_json(&NewConfig {
        r: c.r,
        alpha: c.lora_alpha,
        dropout: c.lora_dropout,
        use_rslora: c.use_rslora,
        use_dora: c.use_dora,
        layers_to_transform: c.layers_to_transform.as_deref(),
        target_modules: &c.target_modules,
        modules_to_save: &c.modules_to_save,
        task_type: &task,
        base_model_name_or_path: None,
    });
    let back = LoraConfig::parse(&written).expect("a config loradex writes parses");
    assert_eq!(back.r, c.r);
    assert_eq!(back.lora_alpha, c.lora_alpha);
    assert_eq!(back.lora_dropout, c.lora_dropout);
    assert_eq!(back.use_rslora, c.use_rslora);
    assert_eq!(back.use_dora, c.use_dora);
    assert_eq!(back.layers_to_transform, c.layers_to_transform);
    assert_eq!(back.target_modules, c.target_modules);
    assert_eq!(back.modules_to_save, c.modules_to_save);
});
