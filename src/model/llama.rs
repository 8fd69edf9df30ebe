//! The one Llama-family decoder in candle (training, merging, accelerators): RMSNorm, RoPE
//! (default type), grouped-query attention, gated MLP, tied or untied embeddings, a KV cache.
//! A family (`model::family`) hands it a `DecoderSpec`: Llama's config plus the options that
//! distinguish Mistral (sliding window), Qwen2 (q/k/v biases, read from the weights), Qwen3
//! (per-head q/k norms), Gemma (`(1 + w)` norms, scaled embeddings, GeGLU), Gemma 3 (also
//! norms after attention and around the MLP, a query scale, local layers with their own window
//! and RoPE base) and Phi-3 (fused `qkv_proj`/`gate_up_proj`).
//! Every projection sits behind the `LoraLinear` seam; a LoRA on a fused projection applies to
//! its fused output, as PEFT's does. Owns only the architecture math.

use super::lora::{embed, rms_norm, softmax, Ctx, LoraLinear};
pub use super::rope::{llama3_divisors, rope_inv_freqs};
pub(crate) use super::rope::{rope_scaling, RopeScaling};
use super::Weights;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, D};
use serde_json::Value;

#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// llama.cpp's per-frequency divisors of a GGUF (`rope_freqs.weight`, Llama 3.1's scaling
    /// as the converter bakes it), carried into the config a GGUF base is read as.
    #[serde(default)]
    pub rope_freq_factors: Option<Vec<f64>>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<Value>,
    #[serde(default)]
    pub hidden_act: Option<String>,
}
fn eps() -> f64 {
    1e-6
}
fn max_pos() -> usize {
    2048
}

/// The gated MLP's activation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MlpAct {
    #[default]
    Silu,
    /// `gelu_pytorch_tanh` (Gemma's GeGLU).
    GeluTanh,
}

impl MlpAct {
    /// From a config's activation name.
    pub fn parse(name: Option<&str>) -> Result<MlpAct> {
        match name.unwrap_or("silu") {
            "silu" | "swish" => Ok(MlpAct::Silu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(MlpAct::GeluTanh),
            a => Err(Error::Model(format!("hidden_act {a:?} is not supported (silu, gelu_pytorch_tanh)"))),
        }
    }
    pub fn apply(self, x: f32) -> f32 {
        match self {
            MlpAct::Silu => silu(x),
            MlpAct::GeluTanh => 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044715 * x * x * x)).tanh()),
        }
    }
}

/// `x · σ(x)` from `bert_cpu::exp_neg` of `-|x|` (no overflow either side; a few ulps from
/// libm's, and unlike libm's a loop of it vectorizes where each `exp` was a call).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    let e = super::bert_cpu::exp_neg(-x.abs());
    if x >= 0.0 {
        x / (1.0 + e)
    } else {
        x * e / (1.0 + e)
    }
}

/// What distinguishes one decoder family from Llama.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DecoderOpts {
    /// RMSNorm scales by `1 + w` (Gemma).
    pub norm_plus_one: bool,
    /// Embeddings are multiplied by √hidden (Gemma).
    pub embed_scale: bool,
    pub act: MlpAct,
    /// Each query sees at most this many keys, itself included (Mistral).
    pub sliding_window: Option<usize>,
    /// `qkv_proj` and `gate_up_proj` instead of separate projections (Phi-3).
    pub fused: bool,
    /// An RMSNorm over each head of q and k before RoPE, `self_attn.{q,k}_norm` (Qwen3,
    /// Gemma 3).
    pub qk_norm: bool,
    /// Norms after attention and around the MLP (Gemma 3): `post_attention_layernorm`
    /// normalizes the attention's output before the residual add, `pre_feedforward_layernorm`
    /// the MLP's input and `post_feedforward_layernorm` its output.
    pub sandwich_norms: bool,
    /// Attention scores scaled by `query_pre_attn_scalar^-1/2` instead of `head_dim^-1/2`.
    pub query_scale: Option<u32>,
    /// Layers of two kinds (Gemma 2 and 3): local ones use `sliding_window` and their own
    /// RoPE base, the others see every key with the config's base. `None`: `sliding_window`
    /// (if any) applies to every layer.
    pub local: Option<LocalLayers>,
    /// Attention scores (after scaling, before the mask) become `c·tanh(s/c)` (Gemma 2's
    /// `attn_logit_softcapping`).
    pub attn_softcap: Option<f32>,
    /// The final logits become `c·tanh(l/c)` (Gemma 2's `final_logit_softcapping`).
    pub final_softcap: Option<f32>,
    /// RoPE's cos and sin (the global layers') scaled by this (Phi-3.5's long-rope attention
    /// factor).
    pub rope_mscale: Option<f32>,
    /// RoPE turns only the first this-many dimensions of each head (even; Phi-4-mini's
    /// `partial_rotary_factor`); the rest pass through. `None`: the whole head.
    pub rotary_dims: Option<usize>,
    /// Bit `i`: layer `i` applies no RoPE at all (SmolLM3's `no_rope_layers` zeros).
    pub nope_layers: u128,
    /// The q/k norms (`qk_norm`) run over all heads of a token at once (OLMo 2: weights of
    /// `heads · head_dim`), not over each head.
    pub qk_norm_full: bool,
    /// No norm before the attention or the MLP, only `post_attention_layernorm` and
    /// `post_feedforward_layernorm` on their outputs before the residual adds (OLMo 2).
    pub post_norms_only: bool,
    /// Granite's multipliers: embeddings times `embedding_multiplier`, each attention and MLP
    /// output times `residual_multiplier` before its residual add, scores scaled by
    /// `attention_multiplier` (instead of `1/√head_dim`), logits divided by `logits_scaling`.
    pub scales: Option<Multipliers>,
}

/// Granite's four scalars (see `DecoderOpts::scales`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Multipliers {
    pub embedding: f32,
    pub residual: f32,
    pub attention: f32,
    pub logits: f32,
}

/// `c·tanh(x/c)`: Gemma 2's soft cap, one value at a time (every attention path and the
/// logits use this one function, so their bits agree).
#[inline]
pub fn softcap(x: f32, c: f32) -> f32 {
    (x / c).tanh() * c
}

/// Which layers are local (sliding-window) ones, and their RoPE base.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalLayers {
    /// Bit `i`: layer `i` is local.
    pub mask: u128,
    pub theta: f64,
}

/// The most layers a config with local layers may have (`LocalLayers::mask`'s bits).
pub const MAX_LOCAL_LAYERS: usize = 128;

/// A decoder as a family describes it.
#[derive(Clone, Debug)]
pub struct DecoderSpec {
    pub cfg: Config,
    pub opts: DecoderOpts,
}

impl DecoderSpec {
    /// A plain Llama (also what a llama GGUF file describes).
    pub fn llama(cfg: Config) -> Result<DecoderSpec> {
        let act = MlpAct::parse(cfg.hidden_act.as_deref())?;
        if act != MlpAct::Silu {
            return Err(Error::Model(format!("hidden_act {:?} is not Llama's (silu)", cfg.hidden_act)));
        }
        cfg.dims()?;
        Ok(DecoderSpec { cfg, opts: DecoderOpts::default() })
    }
    /// `(layer prefix, slot)` names of a layer's projections, in the order the decoders hold them.
    pub fn slots(&self) -> &'static [&'static str] {
        if self.opts.fused {
            &FUSED_SLOTS
        } else {
            &SLOTS
        }
    }
    /// Whether layer `layer` is a local one (its own window and RoPE base).
    pub fn is_local(&self, layer: usize) -> bool {
        self.opts.local.is_some_and(|l| layer < MAX_LOCAL_LAYERS && l.mask >> layer & 1 == 1)
    }
    /// Whether any layer is a local one.
    pub fn has_local_layers(&self) -> bool {
        (0..self.cfg.num_hidden_layers).any(|l| self.is_local(l))
    }
    /// The first key a query at `q` sees in a local layer (`local`) or a global one (every key
    /// up to `q` from there).
    pub fn window_start(&self, local: bool, q: usize) -> usize {
        let windowed = self.opts.local.is_none() || local;
        match self.opts.sliding_window.filter(|_| windowed) {
            Some(w) => (q + 1).saturating_sub(w),
            None => 0,
        }
    }
    /// The attention scores' scale.
    pub fn attn_scale(&self, head_dim: usize) -> f64 {
        if let Some(m) = self.opts.scales {
            return m.attention as f64;
        }
        1.0 / (self.opts.query_scale.map_or(head_dim as f64, f64::from)).sqrt()
    }
    /// RoPE's inverse frequencies (one per pair of rotated dimensions): the global layers',
    /// and the local layers' (their own base) where there are any; and what the global
    /// layers' cos and sin are multiplied by: the family's (Phi-3.5's long rope), else the
    /// RoPE scaling's (YaRN's attention factor). One reading of the RoPE parameters for all.
    pub fn inv_freqs(&self, head_dim: usize) -> Result<(Vec<f32>, Option<Vec<f32>>, Option<f32>)> {
        let rot = self.rotary_dims(head_dim);
        let local = self.opts.local.filter(|_| self.has_local_layers()).map(|l| rope_base(l.theta, "the local layers' rope_theta")).transpose()?;
        let local = local.map(|t| rope_inv_freqs(t, rot));
        let (theta, scaling) = self.cfg.rope()?;
        let global = scaling.apply(theta, rope_inv_freqs(theta, rot))?;
        if let Some(f) = global.iter().chain(local.iter().flatten()).find(|f| !(f.is_finite() && **f >= 0.0)) {
            return Err(Error::Model(format!("config: these RoPE parameters give a frequency of {f}")));
        }
        Ok((global, local, self.opts.rope_mscale.or(scaling.attention())))
    }
    /// The dimensions of each head RoPE turns (the first ones).
    pub fn rotary_dims(&self, head_dim: usize) -> usize {
        self.opts.rotary_dims.unwrap_or(head_dim).min(head_dim)
    }
    /// Whether layer `layer` applies RoPE (SmolLM3 leaves it out of some).
    pub fn has_rope(&self, layer: usize) -> bool {
        !(layer < MAX_LOCAL_LAYERS && self.opts.nope_layers >> layer & 1 == 1)
    }
    /// The names (under `model.layers.N.`, without `.weight`) of a layer's norms: before the
    /// attention, before the MLP, and after each of them (Gemma 2/3, OLMo 2).
    pub fn layer_norms(&self) -> LayerNorms {
        const AFTER: Option<(&str, &str)> = Some(("post_attention_layernorm", "post_feedforward_layernorm"));
        match (self.opts.post_norms_only, self.opts.sandwich_norms) {
            (true, _) => LayerNorms { before_attn: None, before_mlp: None, after: AFTER },
            (false, true) => LayerNorms { before_attn: Some("input_layernorm"), before_mlp: Some("pre_feedforward_layernorm"), after: AFTER },
            (false, false) => LayerNorms { before_attn: Some("input_layernorm"), before_mlp: Some("post_attention_layernorm"), after: None },
        }
    }
    /// The lengths of the q and k norm weights: a head's (`head_dim`), or a token's whole q
    /// and k (OLMo 2).
    pub fn qk_norm_widths(&self, heads: usize, kv_heads: usize, head_dim: usize) -> (usize, usize) {
        if self.opts.qk_norm_full {
            (heads * head_dim, kv_heads * head_dim)
        } else {
            (head_dim, head_dim)
        }
    }
}

/// A layer's norm weights by name (`DecoderSpec::layer_norms`); `None` where it has none.
#[derive(Clone, Copy, Debug)]
pub struct LayerNorms {
    pub before_attn: Option<&'static str>,
    pub before_mlp: Option<&'static str>,
    pub after: Option<(&'static str, &'static str)>,
}

/// The seven projections of a layer, by their PEFT module names.
pub const SLOTS: [&str; 7] =
    ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];
/// A fused layer's four (Phi-3): `[q; k; v]`, o, `[gate; up]`, down.
pub const FUSED_SLOTS: [&str; 4] = ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"];

/// The longest context a config may declare (16M positions): candle's forward builds rotary
/// tables of that length, so a hostile `max_position_embeddings` must not size an allocation.
pub const MAX_POSITIONS: usize = 1 << 24;

/// A RoPE base `what` names, checked: θ ≤ 1 gives no rotation or NaN frequencies, never a model.
fn rope_base(theta: f64, what: &str) -> Result<f64> {
    if !(theta > 1.0 && theta.is_finite()) {
        return Err(Error::Model(format!("config: {what} {theta} must be a finite number above 1")));
    }
    Ok(theta)
}

impl Config {
    /// RoPE's base and scaling: `rope_parameters` (transformers 5) or `rope_scaling`, of type
    /// `default`, `linear` or `llama3`, or a GGUF's per-frequency divisors; other types are
    /// refused.
    pub(crate) fn rope(&self) -> Result<(f64, RopeScaling)> {
        let params = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let scaling = match (&self.rope_freq_factors, params) {
            (Some(f), _) => RopeScaling::Divisors(f.clone()),
            (None, None) => RopeScaling::None,
            (None, Some(p)) => rope_scaling(p)?,
        };
        let theta = self.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")).and_then(Value::as_f64).or(self.rope_theta).unwrap_or(10000.0);
        Ok((rope_base(theta, "rope_theta")?, scaling))
    }
    /// `(num_key_value_heads, head_dim)`, after checking the activation and that the head counts
    /// and sizes fit.
    pub fn dims(&self) -> Result<(usize, usize)> {
        let (hidden, nh) = (self.hidden_size, self.num_attention_heads);
        if nh == 0 || hidden == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 {
            return Err(Error::Model("config: hidden_size, num_attention_heads, num_hidden_layers and vocab_size must be positive".into()));
        }
        let n_kv = self.num_key_value_heads.unwrap_or(nh);
        if n_kv == 0 || !nh.is_multiple_of(n_kv) {
            return Err(Error::Model(format!("config: num_attention_heads {nh} is not a multiple of num_key_value_heads {n_kv}")));
        }
        if self.head_dim.is_none() && !hidden.is_multiple_of(nh) {
            return Err(Error::Model(format!("config: hidden_size {hidden} is not divisible by num_attention_heads {nh}")));
        }
        let hd = self.head_dim.unwrap_or(hidden / nh);
        if hd == 0 || !hd.is_multiple_of(2) {
            return Err(Error::Model(format!("config: head_dim {hd} must be even and positive")));
        }
        if self.max_position_embeddings == 0 || self.max_position_embeddings > MAX_POSITIONS {
            return Err(Error::Model(format!("config: max_position_embeddings {} is outside 1..={MAX_POSITIONS}", self.max_position_embeddings)));
        }
        Ok((n_kv, hd))
    }
    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_u64().map(|n| n as u32)).collect(),
            _ => vec![],
        }
    }
}

/// A layer's projections, in the order of `DecoderSpec::slots`.
#[derive(Clone, Debug)]
struct Layer {
    /// `None`: no norm before the attention (OLMo 2).
    input_norm: Option<Tensor>,
    /// The norm before the MLP (`post_attention_layernorm`, or Gemma 2/3's
    /// `pre_feedforward_layernorm`; `None` in OLMo 2).
    post_norm: Option<Tensor>,
    lin: Vec<LoraLinear>,
    /// The norm weights of q and k: `head_dim` each (per head), or a token's whole q and k
    /// (OLMo 2).
    qk_norm: Option<(Tensor, Tensor)>,
    /// Gemma 2/3's and OLMo 2's norms of the attention's and the MLP's outputs.
    out_norms: Option<(Tensor, Tensor)>,
    /// Its RoPE tables, when its kind has its own base.
    local: bool,
    /// Whether it applies RoPE at all (`DecoderSpec::has_rope`).
    rope: bool,
}

/// `x` normalized by `w`, or `x` itself where the layer has no such norm.
fn norm_opt(x: &Tensor, w: Option<&Tensor>, eps: f64, train: bool) -> Result<Tensor> {
    match w {
        Some(w) => rms_norm(x, w, eps, train),
        None => Ok(x.clone()),
    }
}

/// `x + b`, or `x + b·r` with a residual multiplier (Granite).
fn add_residual(x: Tensor, b: Tensor, r: Option<f64>) -> Result<Tensor> {
    Ok(match r {
        Some(r) => (x + (b * r)?)?,
        None => (x + b)?,
    })
}

/// `c·tanh(t/c)` element by element (Gemma 2's soft cap; `softcap` one value at a time).
fn softcap_tensor(t: Tensor, c: f32) -> Result<Tensor> {
    Ok(((t / c as f64)?.tanh()? * c as f64)?)
}

#[derive(Clone, Debug)]
pub struct Llama {
    pub cfg: Config,
    pub opts: DecoderOpts,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
    /// Local layers' tables (their own RoPE base), where the spec has them.
    local_rope: Option<(Tensor, Tensor)>,
    n_kv: usize,
    head_dim: usize,
}

/// Per-layer key/value cache for incremental decoding.
#[derive(Default)]
pub struct Cache {
    kv: Vec<Option<(Tensor, Tensor)>>,
}

impl Cache {
    pub fn len(&self) -> usize {
        self.kv.first().and_then(|c| c.as_ref()).map(|(k, _)| k.dims()[2]).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Llama {
    pub fn new(spec: DecoderSpec, w: &Weights, device: &Device) -> Result<Llama> {
        let (n_kv, head_dim) = spec.cfg.dims()?;
        let cfg = &spec.cfg;
        let (h, nh, inter) = (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size);
        let shapes = layer_shapes(&spec, n_kv, head_dim);
        let norm_of = |name: &str, len: usize| -> Result<Tensor> {
            let t = super::bert::vector(w, name, len)?;
            Ok(if spec.opts.norm_plus_one { (t + 1.0)? } else { t })
        };
        let norm = |name: &str| norm_of(name, h);
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut lin = Vec::with_capacity(shapes.len());
            for (slot, (rows, cols)) in spec.slots().iter().zip(&shapes) {
                let name = format!("{p}.{slot}");
                let weight = super::bert::matrix(w, &format!("{name}.weight"), Some(*rows), *cols)?;
                let bias = match w.has(&format!("{name}.bias")) {
                    true => Some(super::bert::vector(w, &format!("{name}.bias"), *rows)?),
                    false => None,
                };
                lin.push(LoraLinear::new(name, weight, bias));
            }
            let (qw, kw) = spec.qk_norm_widths(nh, n_kv, head_dim);
            let qk_norm = match spec.opts.qk_norm {
                true => Some((norm_of(&format!("{p}.self_attn.q_norm.weight"), qw)?, norm_of(&format!("{p}.self_attn.k_norm.weight"), kw)?)),
                false => None,
            };
            let names = spec.layer_norms();
            let named = |n: &str| norm(&format!("{p}.{n}.weight"));
            let input_norm = names.before_attn.map(named).transpose()?;
            let post_norm = names.before_mlp.map(named).transpose()?;
            let out_norms = match names.after {
                Some((a, m)) => Some((named(a)?, named(m)?)),
                None => None,
            };
            layers.push(Layer { input_norm, post_norm, lin, qk_norm, out_norms, local: spec.is_local(i), rope: spec.has_rope(i) });
        }
        let _ = (nh, inter);
        let embed = super::bert::matrix(w, "model.embed_tokens.weight", Some(cfg.vocab_size), h)?;
        let lm_head = match w.has("lm_head.weight") && !cfg.tie_word_embeddings {
            true => super::bert::matrix(w, "lm_head.weight", Some(cfg.vocab_size), h)?,
            false => embed.clone(),
        };
        let t = Tensor::arange(0u32, cfg.max_position_embeddings as u32, device)?.to_dtype(DType::F32)?.unsqueeze(1)?;
        let tables = |inv: Vec<f32>, mscale: Option<f32>| -> Result<(Tensor, Tensor)> {
            let half = inv.len();
            let freqs = t.broadcast_mul(&Tensor::from_vec(inv, (1, half), device)?)?;
            let freqs = Tensor::cat(&[&freqs, &freqs], 1)?;
            Ok(match mscale {
                Some(m) => ((freqs.cos()? * m as f64)?, (freqs.sin()? * m as f64)?),
                None => (freqs.cos()?, freqs.sin()?),
            })
        };
        let (global, local, mscale) = spec.inv_freqs(head_dim)?;
        let (cos, sin) = tables(global, mscale)?;
        let local_rope = local.map(|l| tables(l, None)).transpose()?;
        let norm_w = norm("model.norm.weight")?;
        Ok(Llama { cos, sin, local_rope, embed, layers, norm: norm_w, lm_head, n_kv, head_dim, opts: spec.opts, cfg: spec.cfg })
    }

    pub fn spec(&self) -> DecoderSpec {
        DecoderSpec { cfg: self.cfg.clone(), opts: self.opts }
    }

    /// Merges an embedding LoRA into the embedding (`E += (s B A)ᵀ`; a tied head follows it).
    pub fn merge_embedding(&mut self, p: &super::lora::LoraPair, sign: f64) -> Result<()> {
        let tied = self.lm_head.id() == self.embed.id();
        self.embed = (&self.embed + p.delta(sign)?.t()?)?;
        if tied {
            self.lm_head = self.embed.clone();
        }
        Ok(())
    }

    pub fn embedding(&self) -> &Tensor {
        &self.embed
    }

    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut LoraLinear> {
        self.layers.iter_mut().flat_map(|l| l.lin.iter_mut())
    }

    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    fn rope(&self, x: &Tensor, pos0: usize, local: bool) -> Result<Tensor> {
        let (_, _, s, d) = x.dims4()?;
        let (cos, sin) = match (&self.local_rope, local) {
            (Some((c, s)), true) => (c, s),
            _ => (&self.cos, &self.sin),
        };
        let cos = cos.narrow(0, pos0, s)?;
        let sin = sin.narrow(0, pos0, s)?;
        // a partial rotary turns the first `r` dimensions and passes the rest through
        let r = cos.dim(1)?;
        let (xr, pass) = if r < d { (x.narrow(D::Minus1, 0, r)?, Some(x.narrow(D::Minus1, r, d - r)?)) } else { (x.clone(), None) };
        let x1 = xr.narrow(D::Minus1, 0, r / 2)?;
        let x2 = xr.narrow(D::Minus1, r / 2, r / 2)?;
        let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        let turned = (xr.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?)?;
        Ok(match pass {
            Some(p) => Tensor::cat(&[&turned, &p], D::Minus1)?,
            None => turned,
        })
    }

    /// Hidden states after the final norm, `[b, s, h]`. `ids`: u32 `[b, s]` at positions
    /// `pos0..pos0+s`; `mask`: f32 `[b, pos0+s]` (1 = real token) or None.
    pub fn hidden(&self, ids: &Tensor, mask: Option<&Tensor>, pos0: usize, mut cache: Option<&mut Cache>, ctx: &Ctx) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let total = pos0 + s;
        if total > self.cfg.max_position_embeddings {
            return Err(Error::Model(format!("{total} positions exceed max_position_embeddings {}", self.cfg.max_position_embeddings)));
        }
        let dev = ids.device();
        let nh = self.cfg.num_attention_heads;
        let hd = self.head_dim;
        let rep = nh / self.n_kv;
        // additive mask [b, 1, s, total]: causal, and padding keys masked out
        let spec = self.spec();
        // one mask per kind of layer (global and local differ only with local layers)
        let bias_of = |local: bool| -> Result<Tensor> {
            let causal: Vec<f32> = (0..s)
                .flat_map(|i| {
                    let lo = spec.window_start(local, pos0 + i);
                    (0..total).map(move |j| if j <= pos0 + i && j >= lo { 0.0 } else { -1e9 })
                })
                .collect();
            let mut bias = Tensor::from_vec(causal, (1, 1, s, total), dev)?;
            if let Some(m) = mask {
                let pad = ((m.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, total))?;
                bias = bias.broadcast_add(&pad)?;
            }
            Ok(bias)
        };
        let global_bias = bias_of(false)?;
        let local_bias = if spec.has_local_layers() { Some(bias_of(true)?) } else { None };
        if let Some(c) = cache.as_deref_mut() {
            if c.kv.len() != self.layers.len() {
                c.kv = vec![None; self.layers.len()];
            }
        }
        let mut x = embed(&self.embed, ids)?;
        // embedding LoRA per row: s B A[:, id] (inside the embedding, before any scaling)
        let emb = ctx.routing.row_pairs("model.embed_tokens");
        if emb.iter().any(Option::is_some) {
            let zero = Tensor::zeros((s, self.cfg.hidden_size), DType::F32, dev)?;
            let mut d = Vec::with_capacity(b);
            for (r, p) in emb.iter().enumerate() {
                d.push(match p {
                    Some(p) => (p.a.t()?.contiguous()?.index_select(&ids.get(r)?, 0)?.matmul(&p.b.t()?)? * p.scale)?,
                    None => zero.clone(),
                });
            }
            x = (x + Tensor::stack(&d, 0)?)?;
        }
        if self.opts.embed_scale {
            x = (x * (self.cfg.hidden_size as f64).sqrt() as f32 as f64)?;
        }
        if let Some(m) = self.opts.scales {
            x = (x * m.embedding as f64)?;
        }
        let residual = self.opts.scales.map(|m| m.residual as f64);
        let scale = spec.attn_scale(hd);
        let kvd = self.n_kv * hd;
        for (li, l) in self.layers.iter().enumerate() {
            let h = norm_opt(&x, l.input_norm.as_ref(), self.cfg.rms_norm_eps, ctx.train)?;
            let (q, k, v, o, mlp) = if self.opts.fused {
                let qkv = l.lin[0].forward(&h, ctx)?;
                (qkv.narrow(2, 0, nh * hd)?, qkv.narrow(2, nh * hd, kvd)?, qkv.narrow(2, nh * hd + kvd, kvd)?, &l.lin[1], &l.lin[2..])
            } else {
                (l.lin[0].forward(&h, ctx)?, l.lin[1].forward(&h, ctx)?, l.lin[2].forward(&h, ctx)?, &l.lin[3], &l.lin[4..])
            };
            let (q, k) = match (&l.qk_norm, self.opts.qk_norm_full) {
                // over a token's heads at once, before they are split
                (Some((qn, kn)), true) => (rms_norm(&q, qn, self.cfg.rms_norm_eps, ctx.train)?, rms_norm(&k, kn, self.cfg.rms_norm_eps, ctx.train)?),
                _ => (q, k),
            };
            let (mut q, mut k) = (q.reshape((b, s, nh, hd))?, k.reshape((b, s, self.n_kv, hd))?);
            if let (Some((qn, kn)), false) = (&l.qk_norm, self.opts.qk_norm_full) {
                q = rms_norm(&q, qn, self.cfg.rms_norm_eps, ctx.train)?;
                k = rms_norm(&k, kn, self.cfg.rms_norm_eps, ctx.train)?;
            }
            let q = q.transpose(1, 2)?.contiguous()?;
            let k = k.transpose(1, 2)?.contiguous()?;
            let v = v.reshape((b, s, self.n_kv, hd))?.transpose(1, 2)?.contiguous()?;
            let q = if l.rope { self.rope(&q, pos0, l.local)? } else { q };
            let mut k = if l.rope { self.rope(&k, pos0, l.local)? } else { k };
            let bias = match (&local_bias, l.local) {
                (Some(b), true) => b,
                _ => &global_bias,
            };
            let mut v = v;
            if let Some(c) = cache.as_deref_mut() {
                if let Some((pk, pv)) = &c.kv[li] {
                    k = Tensor::cat(&[pk, &k], 2)?;
                    v = Tensor::cat(&[pv, &v], 2)?;
                }
                c.kv[li] = Some((k.clone(), v.clone()));
            }
            let kv_len = k.dim(2)?;
            if kv_len != total {
                return Err(Error::Model(format!("cache holds {} positions, expected {pos0}", kv_len - s)));
            }
            let (k, v) = if rep > 1 {
                let ex = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.unsqueeze(2)?.expand((b, self.n_kv, rep, kv_len, hd))?.reshape((b, nh, kv_len, hd))?)
                };
                (ex(&k)?, ex(&v)?)
            } else {
                (k, v)
            };
            let mut scores = (q.matmul(&k.t()?)? * scale)?;
            if let Some(c) = self.opts.attn_softcap {
                scores = softcap_tensor(scores, c)?;
            }
            let scores = scores.broadcast_add(bias)?;
            let probs = softmax(&scores, ctx.train)?;
            let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, nh * hd))?;
            let mut a = o.forward(&attn, ctx)?;
            if let Some((after_attn, _)) = &l.out_norms {
                a = rms_norm(&a, after_attn, self.cfg.rms_norm_eps, ctx.train)?;
            }
            x = add_residual(x, a, residual)?;
            let h = norm_opt(&x, l.post_norm.as_ref(), self.cfg.rms_norm_eps, ctx.train)?;
            let (g, u, down) = if self.opts.fused {
                let gu = mlp[0].forward(&h, ctx)?;
                let i = gu.dim(2)? / 2;
                (gu.narrow(2, 0, i)?, gu.narrow(2, i, i)?, &mlp[1])
            } else {
                (mlp[0].forward(&h, ctx)?, mlp[1].forward(&h, ctx)?, &mlp[2])
            };
            let g = match self.opts.act {
                MlpAct::Silu => g.silu()?,
                MlpAct::GeluTanh => g.gelu()?,
            };
            let mut m = down.forward(&(g * u)?, ctx)?;
            if let Some((_, after_mlp)) = &l.out_norms {
                m = rms_norm(&m, after_mlp, self.cfg.rms_norm_eps, ctx.train)?;
            }
            x = add_residual(x, m, residual)?;
        }
        rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, ctx.train)
    }

    /// Logits `[b, s, vocab]`.
    pub fn forward(&self, ids: &Tensor, mask: Option<&Tensor>, pos0: usize, cache: Option<&mut Cache>, ctx: &Ctx) -> Result<Tensor> {
        let h = self.hidden(ids, mask, pos0, cache, ctx)?;
        let (b, s, d) = h.dims3()?;
        let logits = h.reshape((b * s, d))?.matmul(&self.lm_head.t()?)?.reshape((b, s, ()))?;
        let logits = match self.opts.scales {
            Some(m) => (logits / m.logits as f64)?,
            None => logits,
        };
        match self.opts.final_softcap {
            Some(c) => softcap_tensor(logits, c),
            None => Ok(logits),
        }
    }
}

/// `[rows, cols]` of each projection of a layer, in `spec.slots()` order.
pub(crate) fn layer_shapes(spec: &DecoderSpec, n_kv: usize, hd: usize) -> Vec<(usize, usize)> {
    let (h, nh, inter) = (spec.cfg.hidden_size, spec.cfg.num_attention_heads, spec.cfg.intermediate_size);
    if spec.opts.fused {
        vec![((nh + 2 * n_kv) * hd, h), (h, nh * hd), (2 * inter, h), (h, inter)]
    } else {
        vec![(nh * hd, h), (n_kv * hd, h), (n_kv * hd, h), (h, nh * hd), (inter, h), (inter, h), (h, inter)]
    }
}

pub fn argmax(v: &[f32]) -> u32 {
    // the first index of the largest value (NaN never wins; a NaN first stays, as a scan that
    // only moves on `x > best` keeps it): the largest by 16 independent lanes, which vectorize
    // (a scan's compare-and-reload chain cost 1.4% of a 16-stream step over 49k logits), then
    // the first index holding it
    if v.first().is_none_or(|x| x.is_nan()) {
        return 0;
    }
    let m = lanes_max(v);
    v.iter().position(|x| *x == m).unwrap_or(0) as u32
}

crate::util::simd_dispatch! {
    /// The largest value of `v` that is not NaN (-inf if none).
    fn lanes_max(v: &[f32]) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; 16];
        let mut chunks = v.chunks_exact(16);
        for c in &mut chunks {
            for i in 0..16 {
                if c[i] > lanes[i] {
                    lanes[i] = c[i];
                }
            }
        }
        for (i, x) in chunks.remainder().iter().enumerate() {
            if *x > lanes[i] {
                lanes[i] = *x;
            }
        }
        lanes.into_iter().fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a })
    }
}
