//! Llama-family decoder (`LlamaForCausalLM` layout): RMSNorm, RoPE (default type), grouped-
//! query attention, SwiGLU MLP, tied or untied embeddings, a KV cache for generation. Every
//! projection sits behind the `LoraLinear` seam. Owns only the architecture math.

use super::lora::{embed, rms_norm, softmax, Ctx, LoraLinear};
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

impl Config {
    pub(crate) fn theta(&self) -> Result<f64> {
        let params = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        if let Some(p) = params {
            let ty = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
            if ty != "default" {
                return Err(Error::Model(format!("rope_type {ty:?} is not supported (default only)")));
            }
        }
        Ok(self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or(self.rope_theta)
            .unwrap_or(10000.0))
    }
    /// `(num_key_value_heads, head_dim)`, after checking the activation and that the head counts
    /// and sizes fit.
    pub fn dims(&self) -> Result<(usize, usize)> {
        if self.hidden_act.as_deref().is_some_and(|a| a != "silu") {
            return Err(Error::Model(format!("hidden_act {:?} is not supported (silu)", self.hidden_act)));
        }
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

#[derive(Clone, Debug)]
struct Layer {
    input_norm: Tensor,
    q: LoraLinear,
    k: LoraLinear,
    v: LoraLinear,
    o: LoraLinear,
    post_norm: Tensor,
    gate: LoraLinear,
    up: LoraLinear,
    down: LoraLinear,
}

#[derive(Clone, Debug)]
pub struct Llama {
    pub cfg: Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
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
    pub fn new(cfg: Config, w: &Weights, device: &Device) -> Result<Llama> {
        let (n_kv, head_dim) = cfg.dims()?;
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_norm: w.get(&format!("{p}.input_layernorm.weight"))?,
                q: w.linear(&format!("{p}.self_attn.q_proj"), false)?,
                k: w.linear(&format!("{p}.self_attn.k_proj"), false)?,
                v: w.linear(&format!("{p}.self_attn.v_proj"), false)?,
                o: w.linear(&format!("{p}.self_attn.o_proj"), false)?,
                post_norm: w.get(&format!("{p}.post_attention_layernorm.weight"))?,
                gate: w.linear(&format!("{p}.mlp.gate_proj"), false)?,
                up: w.linear(&format!("{p}.mlp.up_proj"), false)?,
                down: w.linear(&format!("{p}.mlp.down_proj"), false)?,
            });
        }
        let embed = w.get("model.embed_tokens.weight")?;
        let lm_head = match w.get_opt("lm_head.weight") {
            Some(h) if !cfg.tie_word_embeddings => h,
            _ => embed.clone(),
        };
        let theta = cfg.theta()?;
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64) as f32).collect();
        let inv = Tensor::from_vec(inv, (1, half), device)?;
        let t = Tensor::arange(0u32, cfg.max_position_embeddings as u32, device)?.to_dtype(DType::F32)?.unsqueeze(1)?;
        let freqs = t.broadcast_mul(&inv)?;
        let freqs = Tensor::cat(&[&freqs, &freqs], 1)?;
        Ok(Llama { cos: freqs.cos()?, sin: freqs.sin()?, embed, layers, norm: w.get("model.norm.weight")?, lm_head, n_kv, head_dim, cfg })
    }

    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut LoraLinear> {
        self.layers.iter_mut().flat_map(|l| [&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.gate, &mut l.up, &mut l.down])
    }

    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    fn rope(&self, x: &Tensor, pos0: usize) -> Result<Tensor> {
        let (_, _, s, d) = x.dims4()?;
        let cos = self.cos.narrow(0, pos0, s)?;
        let sin = self.sin.narrow(0, pos0, s)?;
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
        let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?)?)
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
        let causal: Vec<f32> =
            (0..s).flat_map(|i| (0..total).map(move |j| if j <= pos0 + i { 0.0 } else { -1e9 })).collect();
        let mut bias = Tensor::from_vec(causal, (1, 1, s, total), dev)?;
        if let Some(m) = mask {
            let pad = ((m.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, total))?;
            bias = bias.broadcast_add(&pad)?;
        }
        if let Some(c) = cache.as_deref_mut() {
            if c.kv.len() != self.layers.len() {
                c.kv = vec![None; self.layers.len()];
            }
        }
        let mut x = embed(&self.embed, ids)?;
        let scale = 1.0 / (hd as f64).sqrt();
        for (li, l) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &l.input_norm, self.cfg.rms_norm_eps, ctx.train)?;
            let q = l.q.forward(&h, ctx)?.reshape((b, s, nh, hd))?.transpose(1, 2)?.contiguous()?;
            let k = l.k.forward(&h, ctx)?.reshape((b, s, self.n_kv, hd))?.transpose(1, 2)?.contiguous()?;
            let v = l.v.forward(&h, ctx)?.reshape((b, s, self.n_kv, hd))?.transpose(1, 2)?.contiguous()?;
            let q = self.rope(&q, pos0)?;
            let mut k = self.rope(&k, pos0)?;
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
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let probs = softmax(&scores, ctx.train)?;
            let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, nh * hd))?;
            x = (x + l.o.forward(&attn, ctx)?)?;
            let h = rms_norm(&x, &l.post_norm, self.cfg.rms_norm_eps, ctx.train)?;
            let g = l.gate.forward(&h, ctx)?.silu()?;
            let u = l.up.forward(&h, ctx)?;
            x = (x + l.down.forward(&(g * u)?, ctx)?)?;
        }
        rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, ctx.train)
    }

    /// Logits `[b, s, vocab]`.
    pub fn forward(&self, ids: &Tensor, mask: Option<&Tensor>, pos0: usize, cache: Option<&mut Cache>, ctx: &Ctx) -> Result<Tensor> {
        let h = self.hidden(ids, mask, pos0, cache, ctx)?;
        let (b, s, d) = h.dims3()?;
        Ok(h.reshape((b * s, d))?.matmul(&self.lm_head.t()?)?.reshape((b, s, ()))?)
    }
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}
