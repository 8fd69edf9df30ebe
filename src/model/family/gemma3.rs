//! Gemma 3 text models (`Gemma3ForCausalLM`, `model_type` `gemma3_text`): Gemma's `(1 + w)`
//! norms, embeddings scaled by √hidden and GeGLU, plus
//! - an RMSNorm over each head of q and k before RoPE (`self_attn.{q,k}_norm`, also `1 + w`);
//! - norms after attention and around the MLP (`post_attention_layernorm` on the attention's
//!   output, `pre_feedforward_layernorm` and `post_feedforward_layernorm` around the MLP);
//! - scores scaled by `query_pre_attn_scalar^-1/2`;
//! - local layers (`layer_types`, or every layer but each `sliding_window_pattern`-th) that
//!   see `sliding_window` keys with their own RoPE base, beside global ones.
//!
//! Both config styles are read: transformers 5's `rope_parameters` per layer type, and the
//! earlier `rope_theta` + `rope_local_base_freq`. The global layers' RoPE may be scaled
//! linearly (Gemma 3 4B and up: factor 8); the local layers' never is. Logit soft-capping (Gemma 2's) and
//! bidirectional attention are refused rather than ignored.

use super::{parse, Family};
use crate::error::{Error, Result};
use crate::model::llama::{rope_factor, Config as Common, DecoderOpts, DecoderSpec, LocalLayers, MlpAct, MAX_LOCAL_LAYERS};
use serde_json::Value;

pub static FAMILY: Family = Family::decoder("gemma3", &["gemma3_text"], "Gemma3ForCausalLM", spec);

#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub hidden_activation: Option<String>,
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default, alias = "_sliding_window_pattern")]
    pub sliding_window_pattern: Option<usize>,
    #[serde(default)]
    pub rope_local_base_freq: Option<f64>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub use_bidirectional_attention: bool,
}

fn bad(what: String) -> Error {
    Error::Model(format!("gemma3 config: {what}"))
}

fn spec(v: &Value) -> Result<DecoderSpec> {
    let mut c: Config = parse("gemma3_text", v)?;
    let act = MlpAct::parse(Some(c.hidden_activation.as_deref().or(c.common.hidden_act.as_deref()).unwrap_or("gelu_pytorch_tanh")))?;
    if act != MlpAct::GeluTanh {
        return Err(bad(format!("activation {act:?} is not Gemma's (gelu_pytorch_tanh)")));
    }
    if c.final_logit_softcapping.is_some() || c.attn_logit_softcapping.is_some() {
        return Err(bad("logit soft-capping is not supported".into()));
    }
    if c.use_bidirectional_attention {
        return Err(bad("bidirectional attention is not supported (causal LMs only)".into()));
    }
    let layers = c.common.num_hidden_layers;
    if layers > MAX_LOCAL_LAYERS {
        return Err(bad(format!("{layers} layers (at most {MAX_LOCAL_LAYERS})")));
    }
    let mut mask = 0u128;
    match &c.layer_types {
        Some(types) => {
            if types.len() != layers {
                return Err(bad(format!("{} layer_types for {layers} layers", types.len())));
            }
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "sliding_attention" => mask |= 1 << i,
                    "full_attention" => {}
                    other => return Err(bad(format!("layer type {other:?} (sliding_attention or full_attention)"))),
                }
            }
        }
        None => {
            let p = c.sliding_window_pattern.unwrap_or(6);
            if p == 0 {
                return Err(bad("sliding_window_pattern 0".into()));
            }
            for i in (0..layers).filter(|i| (i + 1) % p != 0) {
                mask |= 1 << i;
            }
        }
    }
    let window = c.sliding_window.filter(|w| *w > 0);
    if mask != 0 && window.is_none() {
        return Err(bad("local layers without a positive sliding_window".into()));
    }
    // RoPE bases: per layer type (transformers 5), or rope_theta and rope_local_base_freq
    let per_type = c.common.rope_parameters.as_ref().filter(|p| p.get("full_attention").is_some() || p.get("sliding_attention").is_some()).cloned();
    let (global, local) = match per_type {
        Some(p) => {
            let set = |kind: &str, default: f64| -> Result<(f64, f64)> {
                let Some(k) = p.get(kind) else { return Ok((default, 1.0)) };
                Ok((k.get("rope_theta").and_then(Value::as_f64).unwrap_or(default), rope_factor(k).map_err(|e| bad(format!("{kind}: {e}")))?))
            };
            let (l, lf) = set("sliding_attention", 10_000.0)?;
            if lf != 1.0 {
                return Err(bad("rope scaling on the local layers is not supported".into()));
            }
            (set("full_attention", 1_000_000.0)?, l)
        }
        // the older style: `rope_scaling` is the global layers' only
        None => (c.common.rope()?, c.rope_local_base_freq.unwrap_or(10_000.0)),
    };
    let ((theta, factor), local) = (global, local);
    c.common.rope_theta = Some(theta);
    c.common.rope_parameters = None;
    c.common.rope_scaling = (factor != 1.0).then(|| serde_json::json!({"rope_type": "linear", "factor": factor}));
    let query_scale = match c.query_pre_attn_scalar {
        None => None,
        Some(s) if s > 0.0 && s.fract() == 0.0 && s <= u32::MAX as f64 => Some(s as u32),
        Some(s) => return Err(bad(format!("query_pre_attn_scalar {s} is not a positive whole number"))),
    };
    c.common.dims()?;
    let opts = DecoderOpts {
        norm_plus_one: true,
        embed_scale: true,
        act,
        sliding_window: window,
        qk_norm: true,
        sandwich_norms: true,
        query_scale,
        local: Some(LocalLayers { mask, theta: local }),
        ..Default::default()
    };
    Ok(DecoderSpec { cfg: c.common, opts })
}
