//! Gemma 2 (`Gemma2ForCausalLM`, `model_type` `gemma2`): Gemma's `(1 + w)` norms, embeddings
//! scaled by √hidden and GeGLU, plus
//! - norms after attention and around the MLP, as Gemma 3 has them (no q/k norms);
//! - scores scaled by `query_pre_attn_scalar^-1/2`;
//! - local layers (`layer_types`, or every other layer from the first) that see
//!   `sliding_window` keys, with the same RoPE base as the global ones;
//! - attention scores and final logits soft-capped as `c·tanh(x/c)`
//!   (`attn_logit_softcapping`, `final_logit_softcapping`; 50 and 30 in the releases).
//!
//! Parses its config and maps it onto the shared decoder; the layer-type, query-scale and cap
//! rules are Gemma 3's (`gemma3`).

use super::gemma3::{cap, local_layers, query_scale};
use super::gemma::gemma_act;
use super::{parse, Family};
use crate::error::{Error, Result};
use crate::model::llama::{Config as Common, DecoderOpts, DecoderSpec, LocalLayers, RopeScaling};
use serde_json::Value;

pub static FAMILY: Family = Family::decoder("gemma2", &["gemma2"], "Gemma2ForCausalLM", spec);

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
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
}

fn bad(what: String) -> Error {
    Error::Model(format!("gemma2 config: {what}"))
}

fn spec(v: &Value) -> Result<DecoderSpec> {
    let c: Config = parse("gemma2", v)?;
    let act = gemma_act(c.hidden_activation.as_deref(), c.common.hidden_act.as_deref(), bad)?;
    // transformers' default: layer 0 local, then every other one
    let (mask, window) = local_layers(c.layer_types.as_deref(), c.common.num_hidden_layers, c.sliding_window, |i| i % 2 == 0, bad)?;
    let (theta, scaling) = c.common.rope()?;
    if scaling != RopeScaling::None {
        return Err(bad(format!("rope scaling {scaling:?} is not supported")));
    }
    c.common.dims()?;
    let opts = DecoderOpts {
        norm_plus_one: true,
        embed_scale: true,
        act,
        sliding_window: window,
        sandwich_norms: true,
        query_scale: query_scale(c.query_pre_attn_scalar, bad)?,
        local: Some(LocalLayers { mask, theta }),
        attn_softcap: cap(c.attn_logit_softcapping, "attn_logit_softcapping", bad)?,
        final_softcap: cap(c.final_logit_softcapping, "final_logit_softcapping", bad)?,
        ..Default::default()
    };
    Ok(DecoderSpec { cfg: c.common, opts })
}
