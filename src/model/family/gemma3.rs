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
//! linearly (Gemma 3 4B and up: factor 8); the local layers' never is. Soft-capped scores and
//! logits (Gemma 2's, off in Gemma 3's releases) are applied where a config asks for them;
//! bidirectional attention is refused rather than ignored.

use super::gemma::gemma_act;
use super::{parse, Family};
use crate::error::{Error, Result};
use crate::model::llama::{rope_scaling, Config as Common, RopeScaling, DecoderOpts, DecoderSpec, LocalLayers, MAX_LOCAL_LAYERS};
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

/// Which layers are local (bit `i` set): from `layer_types` where the config lists them,
/// else those `default_local` picks; every local layer needs a positive `sliding_window`
/// (returned). Shared with Gemma 2.
pub(super) fn local_layers(
    layer_types: Option<&[String]>,
    layers: usize,
    sliding_window: Option<usize>,
    default_local: impl Fn(usize) -> bool,
    bad: impl Fn(String) -> Error,
) -> Result<(u128, Option<usize>)> {
    if layers > MAX_LOCAL_LAYERS {
        return Err(bad(format!("{layers} layers (at most {MAX_LOCAL_LAYERS})")));
    }
    let mut mask = 0u128;
    match layer_types {
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
            for i in (0..layers).filter(|&i| default_local(i)) {
                mask |= 1 << i;
            }
        }
    }
    let window = sliding_window.filter(|w| *w > 0);
    if mask != 0 && window.is_none() {
        return Err(bad("local layers without a positive sliding_window".into()));
    }
    Ok((mask, window))
}

/// transformers 5's RoPE parameters keyed by layer type (`full_attention`,
/// `sliding_attention`), where a config's `rope_parameters` is so keyed. Shared with OLMo 3.
pub(super) fn per_layer_type(common: &Common) -> Option<&Value> {
    common.rope_parameters.as_ref().filter(|p| p.get("full_attention").is_some() || p.get("sliding_attention").is_some())
}

/// One layer kind's RoPE base and scaling in `per_layer_type`'s parameters: its own
/// `rope_theta`, else `default`; plain at `default` where the config leaves the kind out. Its
/// parameters must be an object. Shared with OLMo 3.
pub(super) fn kind_rope(p: &Value, kind: &str, default: f64, bad: impl Fn(String) -> Error) -> Result<(f64, RopeScaling)> {
    let Some(k) = p.get(kind) else { return Ok((default, RopeScaling::None)) };
    if !k.is_object() {
        return Err(bad(format!("rope_parameters.{kind} is not an object")));
    }
    let theta = k.get("rope_theta").and_then(Value::as_f64).unwrap_or(default);
    Ok((theta, rope_scaling(k).map_err(|e| bad(format!("{kind}: {e}")))?))
}

/// `query_pre_attn_scalar` as the whole number the spec keeps (`None`: `head_dim`'s).
pub(super) fn query_scale(s: Option<f64>, bad: impl Fn(String) -> Error) -> Result<Option<u32>> {
    match s {
        None => Ok(None),
        Some(s) if s > 0.0 && s.fract() == 0.0 && s <= u32::MAX as f64 => Ok(Some(s as u32)),
        Some(s) => Err(bad(format!("query_pre_attn_scalar {s} is not a positive whole number"))),
    }
}

/// A soft cap (`attn_logit_softcapping`, `final_logit_softcapping`): none where absent or 0,
/// else a positive finite value.
pub(super) fn cap(v: Option<f64>, what: &str, bad: impl Fn(String) -> Error) -> Result<Option<f32>> {
    match v {
        None => Ok(None),
        Some(0.0) => Ok(None),
        Some(c) if c > 0.0 && c.is_finite() => Ok(Some(c as f32)),
        Some(c) => Err(bad(format!("{what} {c} is not positive"))),
    }
}

fn spec(v: &Value) -> Result<DecoderSpec> {
    let mut c: Config = parse("gemma3_text", v)?;
    let act = gemma_act(c.hidden_activation.as_deref(), c.common.hidden_act.as_deref(), bad)?;
    if c.use_bidirectional_attention {
        return Err(bad("bidirectional attention is not supported (causal LMs only)".into()));
    }
    let layers = c.common.num_hidden_layers;
    let p = c.sliding_window_pattern.unwrap_or(6);
    if p == 0 && c.layer_types.is_none() {
        return Err(bad("sliding_window_pattern 0".into()));
    }
    let (mask, window) = local_layers(c.layer_types.as_deref(), layers, c.sliding_window, |i| (i + 1) % p.max(1) != 0, bad)?;
    // RoPE bases: per layer type (transformers 5), or rope_theta and rope_local_base_freq
    let (global, local) = match per_layer_type(&c.common).cloned() {
        Some(p) => {
            let set = |kind: &str, default: f64| -> Result<(f64, f64)> {
                let (theta, scaling) = kind_rope(&p, kind, default, bad)?;
                match scaling {
                    RopeScaling::None => Ok((theta, 1.0)),
                    RopeScaling::Linear(f) => Ok((theta, f)),
                    other => Err(bad(format!("{kind}: rope scaling {other:?} (default or linear)"))),
                }
            };
            let (l, lf) = set("sliding_attention", 10_000.0)?;
            if lf != 1.0 {
                return Err(bad("rope scaling on the local layers is not supported".into()));
            }
            (set("full_attention", 1_000_000.0)?, l)
        }
        // the older style: `rope_scaling` is the global layers' only
        None => {
            let (theta, scaling) = c.common.rope()?;
            let factor = match scaling {
                RopeScaling::None => 1.0,
                RopeScaling::Linear(f) => f,
                other => return Err(bad(format!("rope scaling {other:?} (default or linear)"))),
            };
            ((theta, factor), c.rope_local_base_freq.unwrap_or(10_000.0))
        }
    };
    let ((theta, factor), local) = (global, local);
    c.common.rope_theta = Some(theta);
    c.common.rope_parameters = None;
    c.common.rope_scaling = (factor != 1.0).then(|| serde_json::json!({"rope_type": "linear", "factor": factor}));
    let query_scale = query_scale(c.query_pre_attn_scalar, bad)?;
    let (attn_softcap, final_softcap) =
        (cap(c.attn_logit_softcapping, "attn_logit_softcapping", bad)?, cap(c.final_logit_softcapping, "final_logit_softcapping", bad)?);
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
        attn_softcap,
        final_softcap,
        ..Default::default()
    };
    Ok(DecoderSpec { cfg: c.common, opts })
}
