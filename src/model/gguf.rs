//! GGUF files as bases (llama.cpp's format, read with candle's `gguf_file`; `llama`, `qwen2`,
//! `qwen3`, `gemma`, `gemma2`, `gemma3`, `phi3`, `smollm3`, `granite` and `olmo2` architectures; SmolLM3's layers
//! without RoPE are llama.cpp's fixed every fourth, the family's default): the model's hyper-parameters
//! as a Hugging Face `config.json` (with what llama.cpp fixes in code rather than in the file
//! made explicit: Gemma 2 and 3's layer patterns and query scales, Gemma 3's local RoPE base), its tensors under
//! Hugging Face's names (with what llama.cpp's converters changed undone: a Llama's
//! interleaved `q`/`k` rotary rows, Gemma's norms stored plus one),
//! so PEFT adapters apply as trained,
//! a `Source` that keeps GGML blocks quantized or dequantizes them, and the tokenizer and chat
//! template from `tokenizer.ggml.*` (the tokenizer is built in `tokenizer`). Owns no model math
//! and no store logic.

mod tokenizer;

use super::decoder::Source;
use super::gguf_check as header;
use super::quant::{BlockFmt, QWeight};
use crate::error::{Error, IoContext, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// How a GGUF base's frozen weights are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LoadDtype {
    /// As stored: Q4_0/Q4_1/Q8_0 blocks with loradex's kernels, other GGML types through
    /// candle's, f16/bf16 as f32.
    #[default]
    Native,
    /// Everything dequantized to f32 at load (what transformers runs from a GGUF file).
    F32,
}

impl std::str::FromStr for LoadDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "native" | "auto" => Ok(LoadDtype::Native),
            "f32" => Ok(LoadDtype::F32),
            other => Err(Error::InvalidArgument(format!("--dtype {other:?}: use native or f32"))),
        }
    }
}

/// A GGUF `general.architecture` loradex reads, and what it becomes.
#[derive(Debug)]
pub struct GgufArch {
    pub name: &'static str,
    /// The Hugging Face `model_type` and class of the `config.json` it is read as.
    pub model_type: &'static str,
    pub hf_class: &'static str,
    /// Whether llama.cpp's converter interleaved the rotary halves of `q`/`k` rows
    /// (`LlamaModel.permute`); the other converters keep Hugging Face's order.
    pub permuted_qk: bool,
    /// Phi-3's fused projections: `attn_qkv` is `qkv_proj`, `ffn_up` is `gate_up_proj`.
    pub fused: bool,
    /// Gemma's converter stores RMSNorm weights plus one (llama.cpp multiplies by the weight,
    /// Gemma by `1 + w`); they are read back minus one.
    pub norm_plus_one: bool,
    /// Gemma 2/3's norms after attention (`post_attention_norm`) and after the MLP
    /// (`post_ffw_norm`), with `ffn_norm` before the MLP (not after attention, as in Llama);
    /// OLMo 2 has the first two only.
    pub sandwich_norms: bool,
    /// `hidden_act` of the `config.json`.
    pub hidden_act: &'static str,
}

/// The architectures a GGUF base may have. All keep Llama's tensor names (Phi-3 with its two
/// fused projections); Qwen2's q/k/v biases come as `blk.N.attn_{q,k,v}.bias`. Mistral files
/// are written as `llama`.
pub const ARCHS: [GgufArch; 10] = [
    GgufArch { name: "llama", model_type: "llama", hf_class: "LlamaForCausalLM", permuted_qk: true, fused: false, norm_plus_one: false, sandwich_norms: false, hidden_act: "silu" },
    GgufArch { name: "qwen2", model_type: "qwen2", hf_class: "Qwen2ForCausalLM", permuted_qk: false, fused: false, norm_plus_one: false, sandwich_norms: false, hidden_act: "silu" },
    GgufArch { name: "qwen3", model_type: "qwen3", hf_class: "Qwen3ForCausalLM", permuted_qk: false, fused: false, norm_plus_one: false, sandwich_norms: false, hidden_act: "silu" },
    GgufArch {
        name: "gemma",
        model_type: "gemma",
        hf_class: "GemmaForCausalLM",
        permuted_qk: false,
        fused: false,
        norm_plus_one: true,
        sandwich_norms: false,
        hidden_act: "gelu_pytorch_tanh",
    },
    GgufArch {
        name: "gemma2",
        model_type: "gemma2",
        hf_class: "Gemma2ForCausalLM",
        permuted_qk: false,
        fused: false,
        norm_plus_one: true,
        sandwich_norms: true,
        hidden_act: "gelu_pytorch_tanh",
    },
    GgufArch {
        name: "gemma3",
        model_type: "gemma3_text",
        hf_class: "Gemma3ForCausalLM",
        permuted_qk: false,
        fused: false,
        norm_plus_one: true,
        sandwich_norms: true,
        hidden_act: "gelu_pytorch_tanh",
    },
    GgufArch { name: "smollm3", model_type: "smollm3", hf_class: "SmolLM3ForCausalLM", permuted_qk: true, fused: false, norm_plus_one: false, sandwich_norms: false, hidden_act: "silu" },
    GgufArch { name: "granite", model_type: "granite", hf_class: "GraniteForCausalLM", permuted_qk: true, fused: false, norm_plus_one: false, sandwich_norms: false, hidden_act: "silu" },
    GgufArch { name: "olmo2", model_type: "olmo2", hf_class: "Olmo2ForCausalLM", permuted_qk: false, fused: false, norm_plus_one: false, sandwich_norms: true, hidden_act: "silu" },
    GgufArch { name: "phi3", model_type: "phi3", hf_class: "Phi3ForCausalLM", permuted_qk: false, fused: true, norm_plus_one: false, sandwich_norms: false, hidden_act: "silu" },
];

pub struct Gguf {
    /// The file, or the label of bytes held in memory (what errors name).
    pub path: PathBuf,
    pub content: Content,
    arch: &'static GgufArch,
    /// Where tensor data is read from.
    backing: Backing,
}

/// Where a GGUF's bytes live.
enum Backing {
    File,
    /// A whole file in memory (fuzzing, tests): read through a cursor, never written to disk.
    Bytes(std::sync::Arc<[u8]>),
}

/// A seekable reader over a GGUF's bytes.
pub trait ReadSeek: std::io::Read + std::io::Seek {}
impl<T: std::io::Read + std::io::Seek> ReadSeek for T {}

fn io(path: &Path) -> impl Fn(candle_core::Error) -> Error + '_ {
    move |e| Error::Model(format!("{}: {e}", path.display()))
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Gguf> {
        let f = std::fs::File::open(path).at(path)?;
        Gguf::read(path, std::io::BufReader::new(f), Backing::File)
    }

    /// A GGUF file held in memory; `label` names it in errors.
    pub fn from_bytes(label: &str, bytes: Vec<u8>) -> Result<Gguf> {
        let bytes: std::sync::Arc<[u8]> = bytes.into();
        Gguf::read(Path::new(label), std::io::Cursor::new(bytes.clone()), Backing::Bytes(bytes))
    }

    /// Parses the header: candle's reader bounds every length by the file's size; what it
    /// leaves unchecked (an alignment of 0 divides by zero; tensor extents are checked only
    /// when a tensor is read, after their sizes may have overflowed) is checked here first.
    fn read(path: &Path, mut r: impl ReadSeek, backing: Backing) -> Result<Gguf> {
        let file_size = r.seek(std::io::SeekFrom::End(0)).at(path)?;
        r.rewind().at(path)?;
        let bad = |e: String| Error::Model(format!("{}: {e}", path.display()));
        header::check_alignment(&mut r, file_size).map_err(bad)?;
        r.rewind().at(path)?;
        let content = Content::read(&mut r).map_err(io(path))?;
        header::check_tensors(&content, file_size).map_err(bad)?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned())
            .ok_or_else(|| Error::Model(format!("{}: no general.architecture", path.display())))?;
        let Some(arch) = ARCHS.iter().find(|a| a.name == arch) else {
            let known: Vec<_> = ARCHS.iter().map(|a| a.name).collect();
            return Err(Error::Model(format!("{}: GGUF architecture {arch:?} is not supported ({})", path.display(), known.join(", "))));
        };
        Ok(Gguf { path: path.to_path_buf(), content, arch, backing })
    }

    /// A fresh reader over the bytes (tensor data is read through it).
    fn reader(&self) -> Result<Box<dyn ReadSeek + Send + '_>> {
        Ok(match &self.backing {
            Backing::File => Box::new(std::fs::File::open(&self.path).at(&self.path)?),
            Backing::Bytes(b) => Box::new(std::io::Cursor::new(b.clone())),
        })
    }

    fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }
    fn arch_u(&self, key: &str) -> Result<Option<usize>> {
        match self.meta(&format!("{}.{key}", self.arch.name)) {
            None => Ok(None),
            Some(v) => v.to_u64().map(|n| Some(n as usize)).map_err(|e| Error::Model(format!("{}.{key}: {e}", self.arch.name))),
        }
    }
    fn arch_req(&self, key: &str) -> Result<usize> {
        self.arch_u(key)?.ok_or_else(|| Error::Model(format!("{}: metadata lacks {}.{key}", self.path.display(), self.arch.name)))
    }
    fn arch_f(&self, key: &str) -> Option<f64> {
        self.meta(&format!("{}.{key}", self.arch.name)).and_then(|v| v.to_f64().ok().or_else(|| v.to_f32().ok().map(f64::from)))
    }
    fn tok_u32(&self, key: &str) -> Option<u32> {
        self.meta(&format!("tokenizer.ggml.{key}")).and_then(|v| v.to_u32().ok())
    }

    /// The hyper-parameters as the `config.json` transformers would write for this model.
    pub fn hf_config(&self) -> Result<serde_json::Value> {
        // llama.cpp's linear scaling (positions times 1/factor) is transformers' `linear`; on
        // gemma3 it applies to the global layers only, as transformers applies it
        let scaling = match self.meta(&format!("{}.rope.scaling.type", self.arch.name)).and_then(|v| v.to_string().ok()).map(String::as_str) {
            None | Some("none") => None,
            Some("linear") => match self.arch_f("rope.scaling.factor") {
                Some(f) if f > 0.0 && f.is_finite() => (f != 1.0).then(|| json!({"rope_type": "linear", "factor": f})),
                other => return Err(Error::Model(format!("{}: linear rope scaling with factor {other:?}", self.path.display()))),
            },
            Some(t) => return Err(Error::Model(format!("{}: rope scaling {t:?} is not supported (linear only)", self.path.display()))),
        };
        let heads = self.arch_req("attention.head_count")?;
        let hidden = self.arch_req("embedding_length")?;
        let vocab = match self.arch_u("vocab_size")? {
            Some(v) => v,
            None => self.tokens()?.len(),
        };
        let mut c = json!({
            "architectures": [self.arch.hf_class],
            "model_type": self.arch.model_type,
            "hidden_act": self.arch.hidden_act,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": self.arch_req("feed_forward_length")?,
            "num_hidden_layers": self.arch_req("block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": self.arch_u("attention.head_count_kv")?.unwrap_or(heads),
            "max_position_embeddings": self.arch_u("context_length")?.unwrap_or(2048),
            "rms_norm_eps": self.arch_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            "rope_theta": self.arch_f("rope.freq_base").unwrap_or(10000.0),
            "tie_word_embeddings": !self.content.tensor_infos.contains_key("output.weight"),
        });
        if let Some(sc) = scaling {
            c["rope_scaling"] = sc;
        }
        let (key_length, rotary) = (self.arch_u("attention.key_length")?, self.arch_u("rope.dimension_count")?);
        if let Some(hd) = key_length.or(rotary) {
            c["head_dim"] = hd.into();
        }
        let head_dim = key_length.unwrap_or(hidden / heads.max(1));
        // a partial rotary (Phi-4-mini) turns the first `rot` dimensions of each head
        let rot = rotary.unwrap_or(head_dim);
        if rot != head_dim {
            if self.arch.name != "phi3" || rot == 0 || rot > head_dim || rot % 2 != 0 {
                return Err(Error::Model(format!("{}: rotary embeddings over {rot} of {head_dim} head dimensions are supported on phi3 files only", self.path.display())));
            }
            c["partial_rotary_factor"] = json!(rot as f64 / head_dim as f64);
        }
        let has = |t: &str| self.content.tensor_infos.contains_key(t);
        if has("rope_factors_long.weight") || has("rope_factors_short.weight") {
            // Phi-3.5's long rope: llama.cpp runs the short factors within the original context
            if self.arch.name != "phi3" || !has("rope_factors_short.weight") {
                return Err(Error::Model(format!("{}: long/short rope factors are supported on phi3 files with short factors only", self.path.display())));
            }
            let short = self.vector_tensor("rope_factors_short.weight", rot / 2)?;
            let mut p = json!({"rope_type": "longrope", "rope_theta": c["rope_theta"], "short_factor": short});
            if has("rope_factors_long.weight") {
                p["long_factor"] = json!(self.vector_tensor("rope_factors_long.weight", rot / 2)?);
            }
            if let Some(a) = self.arch_f("rope.scaling.attn_factor") {
                p["attention_factor"] = json!(a);
            }
            if let Some(o) = self.arch_u("rope.scaling.original_context_length")? {
                c["original_max_position_embeddings"] = o.into();
            }
            c["rope_scaling"] = p;
        }
        // Llama 3.1's scaling, as llama.cpp's converter bakes it: one divisor per frequency
        if has("rope_freqs.weight") {
            c["rope_freq_factors"] = json!(self.vector_tensor("rope_freqs.weight", rot / 2)?);
        }
        if let Some(w) = self.arch_u("attention.sliding_window")?.filter(|w| *w > 0) {
            c["sliding_window"] = w.into();
        }
        match self.arch.name {
            // Granite's multipliers, under llama.cpp's names
            "granite" => {
                for (key, hf) in [
                    ("embedding_scale", "embedding_multiplier"),
                    ("residual_scale", "residual_multiplier"),
                    ("attention.scale", "attention_multiplier"),
                    ("logit_scale", "logits_scaling"),
                ] {
                    if let Some(v) = self.arch_f(key) {
                        c[hf] = json!(v);
                    }
                }
            }
            "gemma2" => self.gemma_config(&mut c, head_dim, |i| i % 2 == 0, 46)?,
            "gemma3" => {
                self.gemma_config(&mut c, head_dim, |i| (i + 1) % 6 != 0, 62)?;
                c["rope_local_base_freq"] = json!(10000.0);
            }
            _ => {}
        }
        if let Some(b) = self.tok_u32("bos_token_id") {
            c["bos_token_id"] = b.into();
        }
        if let Some(e) = self.tok_u32("eos_token_id") {
            c["eos_token_id"] = e.into();
        }
        Ok(c)
    }

    /// A small f32 tensor of the file (RoPE factors) as its `len` values.
    fn vector_tensor(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let mut r = self.reader()?;
        let t = self.content.tensor(&mut r, name, &Device::Cpu).map_err(io(&self.path))?;
        let v = t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        if v.len() != len {
            return Err(Error::Model(format!("{}: {name} has {} values for {len} frequencies", self.path.display(), v.len())));
        }
        Ok(v)
    }

    /// What llama.cpp fixes for `gemma2` and `gemma3` in code, not in the file: with a sliding
    /// window, the local layers `local` picks (Gemma 2: every other one from the first; Gemma
    /// 3: all but every sixth, whose RoPE base is an unscaled 10,000, set by the caller), and
    /// without one every layer global; queries scaled by `1/√head_dim`, except the 27B
    /// (`big_layers` layers) by `1/√(hidden/heads)`. Soft caps in the file are passed on.
    fn gemma_config(&self, c: &mut serde_json::Value, head_dim: usize, local: impl Fn(usize) -> bool, big_layers: usize) -> Result<()> {
        let layers = self.arch_req("block_count")?;
        let window = self.arch_u("attention.sliding_window")?.filter(|w| *w > 0);
        let types: Vec<&str> = (0..layers).map(|i| if window.is_some() && local(i) { "sliding_attention" } else { "full_attention" }).collect();
        c["layer_types"] = json!(types);
        let scalar = if layers == big_layers { self.arch_req("embedding_length")? / self.arch_req("attention.head_count")?.max(1) } else { head_dim };
        c["query_pre_attn_scalar"] = scalar.into();
        c["hidden_activation"] = "gelu_pytorch_tanh".into();
        for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if let Some(cap) = self.arch_f(key).filter(|v| *v != 0.0) {
                c[key] = cap.into();
            }
        }
        Ok(())
    }

    /// GGUF tensor name → Hugging Face name, for this file's architecture.
    pub fn hf_name(&self, name: &str) -> Option<String> {
        let fixed = match name {
            "token_embd.weight" => Some("model.embed_tokens.weight"),
            "output_norm.weight" => Some("model.norm.weight"),
            "output.weight" => Some("lm_head.weight"),
            _ => None,
        };
        if let Some(f) = fixed {
            return Some(f.to_string());
        }
        let rest = name.strip_prefix("blk.")?;
        let (layer, t) = rest.split_once('.')?;
        layer.parse::<usize>().ok()?;
        let (module, param) = t.rsplit_once('.')?;
        let hf = match module {
            "attn_norm" => "input_layernorm",
            "ffn_norm" if self.arch.sandwich_norms => "pre_feedforward_layernorm",
            "post_attention_norm" if self.arch.sandwich_norms => "post_attention_layernorm",
            "post_ffw_norm" if self.arch.sandwich_norms => "post_feedforward_layernorm",
            "ffn_norm" => "post_attention_layernorm",
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "attn_q_norm" => "self_attn.q_norm",
            "attn_k_norm" => "self_attn.k_norm",
            "attn_qkv" if self.arch.fused => "self_attn.qkv_proj",
            "ffn_gate" if !self.arch.fused => "mlp.gate_proj",
            "ffn_up" if self.arch.fused => "mlp.gate_up_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            _ => return None,
        };
        Some(format!("model.layers.{layer}.{hf}.{param}"))
    }

    /// Every mapped tensor's shape by Hugging Face name (what adapters are checked against).
    pub fn hf_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.content
            .tensor_infos
            .iter()
            .filter_map(|(n, i)| Some((self.hf_name(n)?, i.shape.dims().to_vec())))
            .collect()
    }

    pub fn source(&self, dtype: LoadDtype) -> Result<GgufSource<'_>> {
        let names = self.content.tensor_infos.keys().filter_map(|n| Some((self.hf_name(n)?, n.clone()))).collect();
        Ok(GgufSource { g: self, file: self.reader()?, names, dtype })
    }

    fn strings(&self, key: &str) -> Result<Vec<String>> {
        let v = self.meta(key).ok_or_else(|| Error::Tokenizer(format!("{}: no {key}", self.path.display())))?;
        let arr = v.to_vec().map_err(|e| Error::Tokenizer(format!("{key}: {e}")))?;
        arr.iter().map(|s| s.to_string().cloned().map_err(|e| Error::Tokenizer(format!("{key}: {e}")))).collect()
    }
    fn tokens(&self) -> Result<Vec<String>> {
        self.strings("tokenizer.ggml.tokens")
    }

    /// `tokenizer.chat_template`, if the file has one.
    pub fn chat_template(&self) -> Option<String> {
        self.meta("tokenizer.chat_template").and_then(|v| v.to_string().ok().cloned())
    }
    /// The text of the token `tokenizer.ggml.<key>` names (one string read, not the vocabulary).
    pub fn token_text(&self, key: &str) -> Option<String> {
        let id = self.tok_u32(key)? as usize;
        self.meta("tokenizer.ggml.tokens")?.to_vec().ok()?.get(id)?.to_string().ok().cloned()
    }

    /// The padding token: `tokenizer.ggml.padding_token_id`, else the end of sequence.
    pub fn pad_id(&self) -> Option<u32> {
        self.tok_u32("padding_token_id").or(self.tok_u32("eos_token_id"))
    }
}

impl Gguf {
    /// Every mapped tensor dequantized to f32 under its Hugging Face name, `q`/`k` rows in
    /// Hugging Face order: the weights transformers would load from this file (for training).
    pub fn dequantized(&self, device: &Device) -> Result<Vec<(String, candle_core::Tensor)>> {
        let mut f = self.reader()?;
        let mut out = vec![];
        for name in self.content.tensor_infos.keys() {
            let Some(hf) = self.hf_name(name) else { continue };
            let t = self.hf_tensor(&mut *f, name, &hf)?.dequantize(&Device::Cpu)?;
            out.push((hf, t.to_device(device)?));
        }
        Ok(out)
    }
}

/// llama.cpp's converter interleaves the rotary halves of each head's `q`/`k` rows: GGUF row
/// `h·d + 2j + t` is Hugging Face row `h·d + t·d/2 + j`. Returns, for each Hugging Face row,
/// the GGUF row that holds it.
pub fn unpermute_rows(rows: usize, heads: usize) -> Result<Vec<usize>> {
    if heads == 0 || rows == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(Error::Model(format!("{rows} rows do not split into {heads} rotary heads")));
    }
    let (d, half) = (rows / heads, rows / heads / 2);
    Ok((0..rows)
        .map(|i| {
            let (h, r) = (i / d, i % d);
            let (t, j) = (r / half, r % half);
            h * d + 2 * j + t
        })
        .collect())
}

impl Gguf {
    /// Tensor `gname` as stored, with `q`/`k` rows moved into Hugging Face order (`hf` is its
    /// Hugging Face name). Rows are independent in every GGML type, so whole rows of bytes move.
    fn hf_tensor(&self, file: &mut dyn ReadSeek, gname: &str, hf: &str) -> Result<QTensor> {
        let mut file = file;
        let t = self.content.tensor(&mut file, gname, &Device::Cpu).map_err(io(&self.path))?;
        if self.arch.norm_plus_one && hf.ends_with("norm.weight") {
            // exact for the weights' usual range (Sterbenz): `1 + (s - 1)` is `s` again
            let minus = (t.dequantize(&Device::Cpu)? - 1.0)?;
            return Ok(QTensor::quantize(&minus, GgmlDType::F32)?);
        }
        if !self.arch.permuted_qk {
            return Ok(t);
        }
        let heads = if hf.ends_with("self_attn.q_proj.weight") {
            self.arch_req("attention.head_count")?
        } else if hf.ends_with("self_attn.k_proj.weight") {
            let h = self.arch_req("attention.head_count")?;
            self.arch_u("attention.head_count_kv")?.unwrap_or(h)
        } else {
            return Ok(t);
        };
        let (dt, shape) = (t.dtype(), t.shape().clone());
        let rows = shape.dims().first().copied().unwrap_or(0);
        let order = unpermute_rows(rows, heads)?;
        let data = t.data().map_err(io(&self.path))?;
        let rb = data.len() / rows.max(1);
        let perm: Vec<u8> = order.iter().flat_map(|&r| data[r * rb..][..rb].iter().copied()).collect();
        let storage = QStorage::from_data(std::borrow::Cow::Owned(perm), &Device::Cpu, dt).map_err(io(&self.path))?;
        QTensor::new(storage, shape).map_err(io(&self.path))
    }
}

pub struct GgufSource<'a> {
    g: &'a Gguf,
    file: Box<dyn ReadSeek + Send + 'a>,
    names: HashMap<String, String>,
    dtype: LoadDtype,
}

impl GgufSource<'_> {
    fn load(&mut self, name: &str, shape: &[usize]) -> Result<QTensor> {
        let gname = self.names.get(name).ok_or_else(|| Error::Model(format!("{}: no tensor for {name}", self.g.path.display())))?;
        let info = &self.g.content.tensor_infos[gname];
        if info.shape.dims() != shape {
            return Err(Error::TensorMismatch { tensor: gname.clone(), detail: format!("shape {:?}, expected {shape:?}", info.shape.dims()) });
        }
        self.g.hf_tensor(&mut *self.file, gname, name)
    }
}

impl Source for GgufSource<'_> {
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<QWeight> {
        let t = self.load(name, &[rows, cols])?;
        let w = match (self.dtype, BlockFmt::of(t.dtype()), t.dtype()) {
            (LoadDtype::Native, Some(f), _) => QWeight::blocks(f, rows, cols, t.data().map_err(io(&self.g.path))?.into_owned())?,
            (LoadDtype::Native, None, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) | (LoadDtype::F32, _, _) => {
                let v = t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                QWeight::f32(rows, cols, v)?
            }
            // other block types become native ones (exactly where the format allows)
            (LoadDtype::Native, None, dt) => {
                let (f, data, _) = super::ggml_convert::to_native(&t)?;
                QWeight::converted(f, rows, cols, data, dt)?
            }
        };
        Ok(w)
    }
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.load(name, &[len])?;
        Ok(t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
    }
    fn has(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }
}
