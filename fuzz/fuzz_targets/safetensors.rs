//! Fuzz target: adapter weights as an import or a serving load sees them. The safetensors
//! container (`SafeView::parse`), then everything run on a parsed view: `bytes`/`to_f32` of
//! every tensor, PEFT key classification, `base::check_adapter` against a small BERT and a
//! small Llama base, and `LoadedAdapter::from_peft` on the CPU.
//!
//! An input starting with `{` is a bare JSON header: the target lays the tensors out one after
//! the other in name order (rewriting each `data_offsets` from its dtype and shape), adds the
//! length prefix and a zeroed data section (up to 1 MiB), so mutations of names, dtypes and
//! shapes reach the checks after the container's framing. Any other input is a whole file, for
//! the framing and offset checks themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loradex::base::{check_adapter, Arch};
use loradex::model::lora::LoadedAdapter;
use loradex::peft::safetensors::{parse_header, SafeView};
use loradex::peft::{classify_key, LoraConfig};
use std::collections::BTreeMap;
use std::sync::OnceLock;

const CONFIG: &[u8] = br#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query", "value", "q_proj", "v_proj"],
  "modules_to_save": ["classifier", "score"], "rank_pattern": {"value": 2}, "alpha_pattern": {"layers.1.self_attn.q_proj": 4}}"#;

struct Bases {
    config: LoraConfig,
    bert: BTreeMap<String, Vec<usize>>,
    llama: BTreeMap<String, Vec<usize>>,
}

fn bases() -> &'static Bases {
    static B: OnceLock<Bases> = OnceLock::new();
    B.get_or_init(|| {
        let mut bert = BTreeMap::new();
        let mut llama = BTreeMap::new();
        for l in 0..2 {
            for m in ["query", "key", "value"] {
                bert.insert(format!("bert.encoder.layer.{l}.attention.self.{m}.weight"), vec![32, 32]);
            }
            bert.insert(format!("bert.encoder.layer.{l}.intermediate.dense.weight"), vec![64, 32]);
            for (m, s) in [("q_proj", [32, 32]), ("k_proj", [16, 32]), ("v_proj", [16, 32]), ("o_proj", [32, 32])] {
                llama.insert(format!("model.layers.{l}.self_attn.{m}.weight"), s.to_vec());
            }
            llama.insert(format!("model.layers.{l}.mlp.down_proj.weight"), vec![32, 64]);
        }
        bert.insert("classifier.weight".into(), vec![3, 32]);
        bert.insert("classifier.bias".into(), vec![3]);
        Bases { config: LoraConfig::parse(CONFIG).expect("fixed config parses"), bert, llama }
    })
}

/// A header-only input framed as a safetensors file, its tensors laid out back to back.
fn framed(header: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(header).ok()?;
    let mut offset = 0u64;
    for (name, t) in v.as_object_mut()? {
        let (Some(size), Some(shape)) = (t.get("dtype").and_then(|d| d.as_str()).map(dtype_size), t.get("shape")) else { continue };
        let Some(numel) = shape.as_array().and_then(|s| s.iter().try_fold(1u64, |a, d| a.checked_mul(d.as_u64()?))) else { continue };
        let end = numel.checked_mul(size).and_then(|n| n.checked_add(offset)).filter(|&e| e <= 1 << 20)?;
        if name != "__metadata__" {
            t["data_offsets"] = serde_json::json!([offset, end]);
            offset = end;
        }
    }
    let header = serde_json::to_vec(&v).ok()?;
    let (tensors, _) = parse_header(&header, "fuzz").ok()?;
    let data_len = tensors.values().map(|t| t.end).max().unwrap_or(0);
    if data_len > 1 << 20 {
        return None;
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.resize(out.len() + data_len, 0);
    Some(out)
}

/// Bytes per element of a safetensors dtype name (unknown names as 1: the parser refuses them).
fn dtype_size(d: &str) -> u64 {
    match d {
        "F64" | "I64" => 8,
        "F32" | "I32" => 4,
        "F16" | "BF16" => 2,
        _ => 1,
    }
}

fn run(bytes: &[u8]) {
    let Ok(view) = SafeView::parse(bytes, "fuzz") else { return };
    let b = bases();
    for (name, info) in &view.tensors {
        let raw = view.bytes(name).expect("a parsed tensor has bytes");
        assert_eq!(raw.len(), info.end - info.start);
        if let Ok(v) = view.to_f32(name, "fuzz") {
            assert_eq!(v.len(), info.shape.iter().product::<usize>(), "{name}: element count");
        }
        let _ = classify_key(name, &b.config.modules_to_save);
    }
    let _ = check_adapter(Arch::by_name("bert").unwrap(), &b.bert, Some(32), &b.config, bytes);
    let _ = check_adapter(Arch::by_name("llama").unwrap(), &b.llama, Some(32), &b.config, bytes);
    let _ = LoadedAdapter::from_peft("fuzz", Arch::by_name("bert").unwrap(), &b.config, bytes, vec![], &candle_core::Device::Cpu);
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&b'{') {
        if let Some(file) = framed(data) {
            run(&file);
        }
    } else {
        run(data);
    }
});
