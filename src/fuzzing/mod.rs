//! The bodies of the cargo-fuzz targets (`fuzz/fuzz_targets/`, run by `scripts/fuzz.sh`), one
//! function per target, each taking untrusted bytes and asserting the properties that must
//! hold for whatever parses. They live in the library so that the main build compiles them
//! (targets kept only in `fuzz/` rotted whenever an API changed) and so that the test suite
//! runs every one over the fixtures' seeds and seeded mutations of them (`mutate`). A panic
//! here is a finding: these functions are a test harness, not API, and nothing else calls them.

mod inputs;
pub mod mutate;

pub use inputs::{adapter_config, base_config, dataset, http_bodies, oci_manifest, recipe, ref_digest};

use crate::base::{check_adapter, Arch};
use crate::model::gguf::{Gguf, LoadDtype};
use crate::model::lora::LoadedAdapter;
use crate::peft::safetensors::{parse_header, SafeView};
use crate::peft::{classify_key, LoraConfig};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name `scripts/fuzz.sh` and `fuzz/Cargo.toml` give it.
pub const TARGETS: [(&str, Target); 9] = [
    ("safetensors", safetensors),
    ("adapter_config", adapter_config),
    ("ref_digest", ref_digest),
    ("recipe", recipe),
    ("dataset", dataset),
    ("http_bodies", http_bodies),
    ("oci_manifest", oci_manifest),
    ("gguf", gguf),
    ("base_config", base_config),
];

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
pub fn frame_header(header: &[u8]) -> Option<Vec<u8>> {
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

fn safetensors_file(bytes: &[u8]) {
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

/// Adapter weights as an import or a serving load sees them: the safetensors container
/// (`SafeView::parse`), then everything run on a parsed view: `bytes`/`to_f32` of every
/// tensor, PEFT key classification, `base::check_adapter` against a small BERT and a small
/// Llama base, and `LoadedAdapter::from_peft` on the CPU.
///
/// An input starting with `{` is a bare JSON header: it is laid out as a file (`frame_header`:
/// each `data_offsets` rewritten from its dtype and shape, the length prefix added, a zeroed
/// data section of up to 1 MiB), so mutations of names, dtypes and shapes reach the checks
/// after the container's framing. Any other input is a whole file, for the framing and offset
/// checks themselves.
pub fn safetensors(data: &[u8]) {
    if data.first() == Some(&b'{') {
        if let Some(file) = frame_header(data) {
            safetensors_file(&file);
        }
    } else {
        safetensors_file(data);
    }
}

/// The largest GGUF the target loads as a model (bigger inputs are only parsed).
const GGUF_LOAD_CAP: usize = 4 << 20;

/// A GGUF base as `--base model.gguf` reads it, from memory: the header (`Gguf::from_bytes`,
/// candle's reader plus loradex's alignment and tensor-extent checks), the tensor shapes
/// adapters are checked against, the config, the end tokens, the tokenizer and chat template from
/// `tokenizer.ggml.*`, and the whole decoder load in both dtypes. Properties: never a panic;
/// a parsed file's every tensor lies inside it; a tokenizer built from it encodes text.
pub fn gguf(data: &[u8]) {
    let Ok(g) = Gguf::from_bytes("fuzz.gguf", data.to_vec()) else { return };
    for (name, t) in &g.content.tensor_infos {
        let elems: usize = t.shape.dims().iter().product();
        let bytes = elems / t.ggml_dtype.block_size() * t.ggml_dtype.type_size();
        assert!(g.content.tensor_data_offset as usize + t.offset as usize + bytes <= data.len(), "{name} passes the end");
    }
    let _ = g.hf_shapes();
    let _ = g.end_ids();
    if let Ok((tok, _)) = g.tokenizer() {
        let _ = tok.encode("Hello, 안녕하세요 123!", true);
    }
    if let Some(t) = g.chat_template() {
        if let Ok(c) = crate::model::chat::ChatTemplate::new(&t, "<s>", "</s>") {
            let m = [crate::model::chat::Message { role: "user".into(), content: "hi".into() }];
            let _ = c.render(&m, true);
        }
    }
    let Ok(cfg) = g.hf_config() else { return };
    let Ok(cfg) = serde_json::from_value::<crate::model::llama::Config>(cfg) else { return };
    if data.len() > GGUF_LOAD_CAP {
        return;
    }
    let Ok(spec) = crate::model::llama::DecoderSpec::llama(cfg) else { return };
    for dtype in [LoadDtype::Native, LoadDtype::F32] {
        let Ok(mut src) = g.source(dtype) else { return };
        let _ = crate::model::decoder::Decoder::new(spec.clone(), &mut src);
    }
}

/// A tiny but complete Llama GGUF (2 layers, hidden 32, 2 heads over 1 KV head, vocabulary of
/// 12 byte-level BPE tokens with merges, token types and a chat template), its matrices in
/// `dtype`: the seed the `gguf` target's mutations start from.
pub fn tiny_gguf(dtype: candle_core::quantized::GgmlDType) -> Vec<u8> {
    tiny_gguf_with(dtype, &mut |_| {})
}

/// `tiny_gguf` with a SentencePiece (`llama`) vocabulary of the same 12 tokens in place of its
/// byte-level BPE: `<unk> <s> </s> <0x21> ▁ h e l o he ll ▁he`, scores falling with the id, so
/// "hello" is `<s> ▁he ll o` and "!" the byte piece `<0x21>`.
pub fn tiny_gguf_spm(dtype: candle_core::quantized::GgmlDType) -> Vec<u8> {
    use candle_core::quantized::gguf_file::Value as V;
    let tokens = ["<unk>", "<s>", "</s>", "<0x21>", "\u{2581}", "h", "e", "l", "o", "he", "ll", "\u{2581}he"];
    let types = [2, 3, 3, 6, 1, 1, 1, 1, 1, 1, 1, 1];
    tiny_gguf_with(dtype, &mut |md| {
        md.retain(|(k, _)| !k.starts_with("tokenizer.ggml."));
        md.extend([
            ("tokenizer.ggml.model", V::String("llama".into())),
            ("tokenizer.ggml.tokens", V::Array(tokens.iter().map(|s| V::String(s.to_string())).collect())),
            ("tokenizer.ggml.scores", V::Array((0..tokens.len()).map(|i| V::F32(-(i as f32))).collect())),
            ("tokenizer.ggml.token_type", V::Array(types.iter().map(|&t| V::I32(t)).collect())),
            ("tokenizer.ggml.bos_token_id", V::U32(1)),
            ("tokenizer.ggml.eos_token_id", V::U32(2)),
            ("tokenizer.ggml.unknown_token_id", V::U32(0)),
            ("tokenizer.ggml.add_bos_token", V::Bool(true)),
        ]);
    })
}

/// GGUF metadata as `tiny_gguf_with` hands it to its editor.
pub type Metadata = Vec<(&'static str, candle_core::quantized::gguf_file::Value)>;

/// `tiny_gguf` with its metadata changed by `edit` before it is written (regression tests).
pub fn tiny_gguf_with(dtype: candle_core::quantized::GgmlDType, edit: &mut dyn FnMut(&mut Metadata)) -> Vec<u8> {
    use candle_core::quantized::gguf_file::{self, Value as V};
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};
    let (h, ff, layers, vocab) = (32usize, 64usize, 2usize, 12usize);
    let tokens = ["<s>", "</s>", "h", "e", "l", "o", "Ġ", "he", "ll", "hell", "hello", "Ġh"];
    let merges = ["h e", "l l", "he ll", "hell o", "Ġ h"];
    let mut rng = crate::util::Rng::new(7);
    let mut t = |rows: usize, cols: usize| -> Tensor {
        let v: Vec<f32> = (0..rows * cols).map(|_| (rng.below(2001) as f32 - 1000.0) / 4000.0).collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("shape matches")
    };
    let mut ts: Vec<(String, Tensor)> = vec![("token_embd.weight".into(), t(vocab, h)), ("output_norm.weight".into(), t(1, h).flatten_all().expect("flat"))];
    for l in 0..layers {
        for (n, r, c) in [("attn_q", h, h), ("attn_k", 16, h), ("attn_v", 16, h), ("attn_output", h, h), ("ffn_gate", ff, h), ("ffn_up", ff, h), ("ffn_down", h, ff)] {
            ts.push((format!("blk.{l}.{n}.weight"), t(r, c)));
        }
        for n in ["attn_norm", "ffn_norm"] {
            ts.push((format!("blk.{l}.{n}.weight"), t(1, h).flatten_all().expect("flat")));
        }
    }
    let q: Vec<(String, QTensor)> = ts
        .iter()
        .map(|(n, t)| (n.clone(), QTensor::quantize(t, if t.rank() == 2 && n != "token_embd.weight" { dtype } else { candle_core::quantized::GgmlDType::F32 }).expect("quantizes")))
        .collect();
    let md: Vec<(&'static str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("general.alignment", V::U32(32)),
        ("llama.block_count", V::U32(layers as u32)),
        ("llama.context_length", V::U32(64)),
        ("llama.embedding_length", V::U32(h as u32)),
        ("llama.feed_forward_length", V::U32(ff as u32)),
        ("llama.attention.head_count", V::U32(2)),
        ("llama.attention.head_count_kv", V::U32(1)),
        ("llama.rope.freq_base", V::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("tokenizer.ggml.model", V::String("gpt2".into())),
        ("tokenizer.ggml.pre", V::String("smollm".into())),
        ("tokenizer.ggml.tokens", V::Array(tokens.iter().map(|s| V::String(s.to_string())).collect())),
        ("tokenizer.ggml.merges", V::Array(merges.iter().map(|s| V::String(s.to_string())).collect())),
        ("tokenizer.ggml.token_type", V::Array((0..vocab).map(|i| V::I32(if i < 2 { 3 } else { 1 })).collect())),
        ("tokenizer.ggml.bos_token_id", V::U32(0)),
        ("tokenizer.ggml.eos_token_id", V::U32(1)),
        ("tokenizer.ggml.add_bos_token", V::Bool(true)),
        ("tokenizer.chat_template", V::String("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}".into())),
    ];
    let mut md = md;
    edit(&mut md);
    let mdr: Vec<(&str, &V)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let tr: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::io::Cursor::new(vec![]);
    gguf_file::write(&mut out, &mdr, &tr).expect("writes to memory");
    out.into_inner()
}
