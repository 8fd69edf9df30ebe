//! BERT encoder for sequence classification (`BertForSequenceClassification` layout), with
//! every linear layer behind the `LoraLinear` seam and a per-row classification head (an
//! adapter's `modules_to_save` head replaces the base head for its rows). Owns only the
//! architecture math; classification on the CPU runs `bert_cpu`'s hand-written forward.

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
        Ok(())
    }
}

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

/// A classification head: `[labels, hidden]` weight and `[labels]` bias.
#[derive(Clone, Debug)]
pub struct Head {
    pub weight: Tensor,
    pub bias: Tensor,
}

#[derive(Clone, Debug)]
pub struct Bert {
    pub cfg: Config,
    pub(crate) word: Tensor,
    pub(crate) position: Tensor,
    pub(crate) token_type: Tensor,
    pub(crate) emb_norm: Norm,
    pub(crate) layers: Vec<Layer>,
    pub(crate) pooler: Option<LoraLinear>,
    /// The base model's own head (absent for bare encoders such as all-MiniLM-L6-v2).
    pub classifier: Option<Head>,
}

impl Bert {
    pub fn new(cfg: Config, w: &Weights) -> Result<Bert> {
        let norm = |p: &str| -> Result<Norm> { Ok(Norm { w: w.get(&format!("{p}.weight"))?, b: w.get(&format!("{p}.bias"))? }) };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("bert.encoder.layer.{i}");
            layers.push(Layer {
                query: w.linear(&format!("{p}.attention.self.query"), true)?,
                key: w.linear(&format!("{p}.attention.self.key"), true)?,
                value: w.linear(&format!("{p}.attention.self.value"), true)?,
                attn_out: w.linear(&format!("{p}.attention.output.dense"), true)?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                intermediate: w.linear(&format!("{p}.intermediate.dense"), true)?,
                output: w.linear(&format!("{p}.output.dense"), true)?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let pooler = if w.has("bert.pooler.dense.weight") { Some(w.linear("bert.pooler.dense", true)?) } else { None };
        let classifier = match (w.get_opt("classifier.weight"), w.get_opt("classifier.bias")) {
            (Some(weight), Some(bias)) => Some(Head { weight, bias }),
            _ => None,
        };
        if !matches!(cfg.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu") {
            return Err(Error::Model(format!("hidden_act {:?} is not supported", cfg.hidden_act)));
        }
        Ok(Bert {
            word: w.get("bert.embeddings.word_embeddings.weight")?,
            position: w.get("bert.embeddings.position_embeddings.weight")?,
            token_type: w.get("bert.embeddings.token_type_embeddings.weight")?,
            emb_norm: norm("bert.embeddings.LayerNorm")?,
            layers,
            pooler,
            classifier,
            cfg,
        })
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
        let emb = embed(&self.word, ids)?;
        let pos = self.position.narrow(0, 0, s)?.unsqueeze(0)?;
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
            None => cls.squeeze(1)?,
        })
    }

    /// The head rows using `adapter` get: the adapter's saved classifier, else the base one.
    pub fn head_for<'a>(&'a self, adapter: Option<&'a LoadedAdapter>) -> Result<Head> {
        if let Some(a) = adapter {
            for m in crate::base::HEAD_MODULES {
                if let (Some(w), Some(b)) = (a.saved.get(&format!("{m}.weight")), a.saved.get(&format!("{m}.bias"))) {
                    return Ok(Head { weight: w.clone(), bias: b.clone() });
                }
            }
        }
        self.classifier
            .clone()
            .ok_or_else(|| Error::Model("the base has no classifier and the adapter saves none (modules_to_save)".into()))
    }

    /// Logits per row; rows may use different heads (and so have different label counts).
    pub fn classify(&self, ids: &Tensor, type_ids: &Tensor, mask: &Tensor, ctx: &Ctx) -> Result<Vec<Vec<f32>>> {
        if !ctx.train && ctx.cpu_kernels && super::bert_cpu::supported(self, ids.device()) {
            return super::bert_cpu::classify(self, ids, type_ids, mask, ctx.routing);
        }
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
    Ok(pooled.matmul(&head.weight.t()?)?.broadcast_add(&head.bias)?)
}

/// Mean of token states over the mask (sentence embeddings, as sentence-transformers pools).
pub fn mean_pool(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
    let sum = x.broadcast_mul(&m)?.sum(1)?;
    Ok(sum.broadcast_div(&m.sum(1)?.clamp(1e-9, f64::MAX)?)?)
}
