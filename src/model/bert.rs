//! The one BERT-family encoder (BERT, RoBERTa, XLM-R, DistilBERT: post-LayerNorm layers,
//! learned positions) for sequence classification, with every linear layer behind the
//! `LoraLinear` seam and a per-row classification head (an adapter's `modules_to_save` head
//! replaces the base head for its rows). A family (`model::family`) hands it an `EncoderSpec`:
//! the sizes, where each tensor is named, the position offset and the head's module tree.
//! Owns only the architecture math in candle; on the CPU the engine (`model::encoder`) runs
//! `bert_cpu`, the hand-written forward and backward of this same model.

use super::lora::{embed, layer_norm, softmax, Ctx, LoadedAdapter, LoraLinear};
use super::Weights;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor, D};

#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}
impl Config {
    /// Refuses sizes the forward would divide by or index with (a hostile or broken config
    /// must be an error, never a panic).
    pub fn validate(&self) -> Result<()> {
        let (h, nh) = (self.hidden_size, self.num_attention_heads);
        if h == 0 || nh == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 || self.intermediate_size == 0 {
            return Err(Error::Model("config: hidden_size, num_attention_heads, num_hidden_layers, intermediate_size and vocab_size must be positive".into()));
        }
        if !h.is_multiple_of(nh) {
            return Err(Error::Model(format!("config: hidden_size {h} is not divisible by num_attention_heads {nh}")));
        }
        if self.max_position_embeddings < 2 || self.type_vocab_size == 0 {
            return Err(Error::Model("config: max_position_embeddings must be at least 2 and type_vocab_size positive".into()));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(Error::Model(format!("config: layer_norm_eps {} must be positive", self.layer_norm_eps)));
        }
        if !ACTIVATIONS.contains(&self.hidden_act.as_str()) {
            return Err(Error::Model(format!("hidden_act {:?} is not supported ({ACTIVATIONS:?})", self.hidden_act)));
        }
        Ok(())
    }
}

/// How a family lays an encoder out: sizes, tensor names, positions and head.
#[derive(Clone, Debug)]
pub struct EncoderSpec {
    pub cfg: Config,
    pub names: EncoderNames,
    /// The first position id of a sequence (RoBERTa: `pad_token_id + 1`; BERT: 0).
    pub position_offset: usize,
}

/// Where an encoder's tensors sit (full module names; a layer's are under `{layer}.{i}.`).
#[derive(Clone, Debug)]
pub struct EncoderNames {
    pub word: &'static str,
    pub position: &'static str,
    /// `None`: the family has no token types (DistilBERT).
    pub token_type: Option<&'static str>,
    pub emb_norm: &'static str,
    pub layer: &'static str,
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attn_out: &'static str,
    pub attn_norm: &'static str,
    pub inter: &'static str,
    pub output: &'static str,
    pub out_norm: &'static str,
    /// The backbone's pooler (BERT), if the family has one.
    pub pooler: Option<&'static str>,
    pub head: HeadNames,
}

/// A classification head's module tree: an optional inner layer with its activation, then the
/// output layer (the first of `out` present is used; BERT heads may be `classifier` or `score`).
#[derive(Clone, Debug)]
pub struct HeadNames {
    pub pre: Option<(&'static str, HeadAct)>,
    pub out: &'static [&'static str],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadAct {
    Tanh,
    Relu,
}

impl HeadAct {
    pub fn apply(self, x: f32) -> f32 {
        match self {
            HeadAct::Tanh => x.tanh(),
            HeadAct::Relu => x.max(0.0),
        }
    }
    /// The derivative at output `y` and input `z`.
    pub fn grad(self, y: f32, z: f32) -> f32 {
        match self {
            HeadAct::Tanh => 1.0 - y * y,
            HeadAct::Relu => (z > 0.0) as u8 as f32,
        }
    }
}

/// The activations the encoder implements (every path: candle's and `bert_cpu`'s).
pub const ACTIVATIONS: &[&str] = &["gelu", "gelu_new", "gelu_pytorch_tanh", "relu"];

fn gelu() -> String {
    "gelu".into()
}
fn two() -> usize {
    2
}
fn eps() -> f64 {
    1e-12
}

#[derive(Clone, Debug)]
pub(crate) struct Norm {
    pub(crate) w: Tensor,
    pub(crate) b: Tensor,
}

#[derive(Clone, Debug)]
pub(crate) struct Layer {
    pub(crate) query: LoraLinear,
    pub(crate) key: LoraLinear,
    pub(crate) value: LoraLinear,
    pub(crate) attn_out: LoraLinear,
    pub(crate) attn_norm: Norm,
    pub(crate) intermediate: LoraLinear,
    pub(crate) output: LoraLinear,
    pub(crate) out_norm: Norm,
}

/// A classification head: an optional inner layer `([hidden, hidden], [hidden], act)`, then a
/// `[labels, hidden]` weight and `[labels]` bias.
#[derive(Clone, Debug)]
pub struct Head {
    pub pre: Option<(Tensor, Tensor, HeadAct)>,
    pub weight: Tensor,
    pub bias: Tensor,
}

#[derive(Clone, Debug)]
pub struct Bert {
    pub cfg: Config,
    pub names: EncoderNames,
    pub position_offset: usize,
    pub(crate) word: Tensor,
    pub(crate) position: Tensor,
    pub(crate) token_type: Tensor,
    pub(crate) emb_norm: Norm,
    pub(crate) layers: Vec<Layer>,
    pub(crate) pooler: Option<LoraLinear>,
    /// The base model's own head (absent for bare encoders such as all-MiniLM-L6-v2).
    pub classifier: Option<Head>,
}

/// A `[rows, cols]` matrix, shape-checked (a misshapen base is an error naming the tensor).
pub(crate) fn matrix(w: &Weights, name: &str, rows: Option<usize>, cols: usize) -> Result<Tensor> {
    let t = w.get(name)?;
    match t.dims() {
        [r, c] if *c == cols && rows.is_none_or(|n| n == *r) => Ok(t),
        d => Err(Error::TensorMismatch { tensor: name.into(), detail: format!("shape {d:?}, expected [{}, {cols}]", rows.map_or("n".into(), |r| r.to_string())) }),
    }
}

/// A vector of `len`, shape-checked.
pub(crate) fn vector(w: &Weights, name: &str, len: usize) -> Result<Tensor> {
    let t = w.get(name)?;
    if t.dims() != [len] {
        return Err(Error::TensorMismatch { tensor: name.into(), detail: format!("shape {:?}, expected [{len}]", t.dims()) });
    }
    Ok(t)
}

impl Bert {
    pub fn new(spec: EncoderSpec, w: &Weights) -> Result<Bert> {
        let EncoderSpec { cfg, names, position_offset } = spec;
        cfg.validate()?;
        let (h, ffn) = (cfg.hidden_size, cfg.intermediate_size);
        let norm = |p: &str| -> Result<Norm> { Ok(Norm { w: vector(w, &format!("{p}.weight"), h)?, b: vector(w, &format!("{p}.bias"), h)? }) };
        let lin = |p: String, out: usize, inp: usize| -> Result<LoraLinear> {
            let weight = matrix(w, &format!("{p}.weight"), Some(out), inp)?;
            let bias = vector(w, &format!("{p}.bias"), out)?;
            Ok(LoraLinear::new(p, weight, Some(bias)))
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = |m: &str| format!("{}.{i}.{m}", names.layer);
            layers.push(Layer {
                query: lin(p(names.query), h, h)?,
                key: lin(p(names.key), h, h)?,
                value: lin(p(names.value), h, h)?,
                attn_out: lin(p(names.attn_out), h, h)?,
                attn_norm: norm(&p(names.attn_norm))?,
                intermediate: lin(p(names.inter), ffn, h)?,
                output: lin(p(names.output), h, ffn)?,
                out_norm: norm(&p(names.out_norm))?,
            });
        }
        let pooler = match names.pooler {
            Some(p) if w.has(&format!("{p}.weight")) => Some(lin(p.to_string(), h, h)?),
            _ => None,
        };
        let word = matrix(w, &format!("{}.weight", names.word), Some(cfg.vocab_size), h)?;
        let position = matrix(w, &format!("{}.weight", names.position), None, h)?;
        if position.dims()[0] < position_offset + 1 {
            return Err(Error::TensorMismatch { tensor: format!("{}.weight", names.position), detail: format!("fewer rows than the position offset {position_offset} needs") });
        }
        let token_type = match names.token_type {
            Some(t) => matrix(w, &format!("{t}.weight"), None, h)?,
            // no token types: one zero row, which every (zero) type id reads
            None => Tensor::zeros((1, h), DType::F32, word.device())?,
        };
        let emb_norm = norm(names.emb_norm)?;
        let mut bert = Bert { word, position, token_type, emb_norm, layers, pooler, classifier: None, cfg, names, position_offset };
        bert.classifier = bert.base_head(w)?;
        Ok(bert)
    }

    /// The base's own head, if it has one whole.
    fn base_head(&self, w: &Weights) -> Result<Option<Head>> {
        let h = self.cfg.hidden_size;
        let Some(out) = self.names.head.out.iter().find(|o| w.has(&format!("{o}.weight"))) else { return Ok(None) };
        let weight = matrix(w, &format!("{out}.weight"), None, h)?;
        let bias = vector(w, &format!("{out}.bias"), weight.dims()[0])?;
        let pre = match self.names.head.pre {
            Some((p, act)) => {
                if !w.has(&format!("{p}.weight")) {
                    return Ok(None);
                }
                Some((matrix(w, &format!("{p}.weight"), Some(h), h)?, vector(w, &format!("{p}.bias"), h)?, act))
            }
            None => None,
        };
        Ok(Some(Head { pre, weight, bias }))
    }

    /// The module names of the head's parameters, `(module, is_pre)`: what a trained head saves.
    pub fn head_modules(&self) -> Vec<(&'static str, bool)> {
        let mut v: Vec<(&'static str, bool)> = self.names.head.pre.iter().map(|(p, _)| (*p, true)).collect();
        v.push((self.names.head.out[0], false));
        v
    }

    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut LoraLinear> {
        self.layers
            .iter_mut()
            .flat_map(|l| [&mut l.query, &mut l.key, &mut l.value, &mut l.attn_out, &mut l.intermediate, &mut l.output])
            .chain(self.pooler.iter_mut())
    }

    fn act(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.cfg.hidden_act.as_str() {
            "gelu" => x.gelu_erf()?,
            "relu" => x.relu()?,
            _ => x.gelu()?,
        })
    }

    /// Hidden states `[b, s, h]`. `ids`, `type_ids`: u32 `[b, s]`; `mask`: f32 `[b, s]`.
    pub fn encode(&self, ids: &Tensor, type_ids: &Tensor, mask: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        if s > self.cfg.max_position_embeddings {
            return Err(Error::Model(format!("sequence of {s} tokens exceeds {} positions", self.cfg.max_position_embeddings)));
        }
        let h = self.cfg.hidden_size;
        let nh = self.cfg.num_attention_heads;
        let dh = h / nh;
        if self.position_offset + s > self.position.dims()[0] {
            return Err(Error::Model(format!("sequence of {s} tokens exceeds {} positions", self.position.dims()[0] - self.position_offset)));
        }
        let emb = embed(&self.word, ids)?;
        let pos = self.position.narrow(0, self.position_offset, s)?.unsqueeze(0)?;
        let tt = embed(&self.token_type, type_ids)?;
        let mut x = emb.broadcast_add(&pos)?.add(&tt)?;
        x = layer_norm(&x, &self.emb_norm.w, &self.emb_norm.b, self.cfg.layer_norm_eps, ctx.train)?;
        // additive mask [b, 1, 1, s]
        let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, s))?;
        let scale = 1.0 / (dh as f64).sqrt();
        for l in &self.layers {
            let heads = |t: Tensor| -> Result<Tensor> { Ok(t.reshape((b, s, nh, dh))?.transpose(1, 2)?.contiguous()?) };
            let q = heads(l.query.forward(&x, ctx)?)?;
            let k = heads(l.key.forward(&x, ctx)?)?;
            let v = heads(l.value.forward(&x, ctx)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let probs = softmax(&scores, ctx.train)?;
            let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))?;
            let a = l.attn_out.forward(&attn, ctx)?;
            x = layer_norm(&(a + &x)?, &l.attn_norm.w, &l.attn_norm.b, self.cfg.layer_norm_eps, ctx.train)?;
            let i = self.act(&l.intermediate.forward(&x, ctx)?)?;
            let o = l.output.forward(&i, ctx)?;
            x = layer_norm(&(o + &x)?, &l.out_norm.w, &l.out_norm.b, self.cfg.layer_norm_eps, ctx.train)?;
        }
        Ok(x)
    }

    /// The pooled `[CLS]` representation `[b, h]` (tanh(dense) when the model has a pooler).
    pub fn pooled(&self, ids: &Tensor, type_ids: &Tensor, mask: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let x = self.encode(ids, type_ids, mask, ctx)?;
        let cls = x.narrow(1, 0, 1)?; // [b, 1, h]
        Ok(match &self.pooler {
            Some(p) => p.forward(&cls, ctx)?.tanh()?.squeeze(1)?,
            None => cls.squeeze(1)?.contiguous()?,
        })
    }

    /// The head rows using `adapter` get: each part from the adapter's saved modules where it
    /// saves it, else the base's own.
    pub fn head_for<'a>(&'a self, adapter: Option<&'a LoadedAdapter>) -> Result<Head> {
        let saved = |m: &str| adapter.and_then(|a| Some((a.saved.get(&format!("{m}.weight"))?.clone(), a.saved.get(&format!("{m}.bias"))?.clone())));
        let base = self.classifier.as_ref();
        let out = self.names.head.out.iter().find_map(|m| saved(m)).or_else(|| base.map(|h| (h.weight.clone(), h.bias.clone())));
        let Some((weight, bias)) = out else {
            return Err(Error::Model("the base has no classifier and the adapter saves none (modules_to_save)".into()));
        };
        let pre = match self.names.head.pre {
            Some((m, act)) => match saved(m).or_else(|| base.and_then(|h| h.pre.as_ref().map(|(w, b, _)| (w.clone(), b.clone())))) {
                Some((w, b)) => Some((w, b, act)),
                None => return Err(Error::Model(format!("the head's {m} is neither in the base nor saved by the adapter"))),
            },
            None => None,
        };
        Ok(Head { pre, weight, bias })
    }

    /// Logits per row through candle's forward (accelerators, and the autograd reference);
    /// rows may use different heads (and so have different label counts). The engine picks
    /// the backend: `model::encoder::classify`.
    pub fn classify(&self, ids: &Tensor, type_ids: &Tensor, mask: &Tensor, ctx: &Ctx) -> Result<Vec<Vec<f32>>> {
        let pooled = self.pooled(ids, type_ids, mask, ctx)?;
        let n = pooled.dim(0)?;
        let mut out = vec![Vec::new(); n];
        for (choice, rows) in ctx.routing.groups() {
            let head = self.head_for(choice.map(|i| ctx.routing.adapters[i].as_ref()))?;
            let idx = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), pooled.device())?;
            let logits = apply_head(&pooled.index_select(&idx, 0)?, &head)?.to_vec2::<f32>()?;
            for (r, l) in rows.into_iter().zip(logits) {
                out[r] = l;
            }
        }
        Ok(out)
    }
}

pub fn apply_head(pooled: &Tensor, head: &Head) -> Result<Tensor> {
    let x = match &head.pre {
        Some((w, b, act)) => {
            let z = pooled.matmul(&w.t()?)?.broadcast_add(b)?;
            match act {
                HeadAct::Tanh => z.tanh()?,
                HeadAct::Relu => z.relu()?,
            }
        }
        None => pooled.clone(),
    };
    Ok(x.matmul(&head.weight.t()?)?.broadcast_add(&head.bias)?)
}

/// Mean of token states over the mask (sentence embeddings, as sentence-transformers pools).
pub fn mean_pool(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
    let sum = x.broadcast_mul(&m)?.sum(1)?;
    Ok(sum.broadcast_div(&m.sum(1)?.clamp(1e-9, f64::MAX)?)?)
}
