//! OLMo 2 (`Olmo2ForCausalLM`, `model_type` `olmo2`): Llama's projections with the norms
//! moved: none before the attention or the MLP, `post_attention_layernorm` and
//! `post_feedforward_layernorm` on their outputs before the residual adds, and q/k norms over
//! all of a token's heads at once (weights of `heads · head_dim` and `kv_heads · head_dim`).
//! Parses its config and maps it onto the shared decoder.

use super::{parse, Family};
use crate::error::{Error, Result};
use crate::model::llama::{Config as Common, DecoderOpts, DecoderSpec, MlpAct};
use serde_json::Value;

pub static FAMILY: Family = Family::decoder("olmo2", &["olmo2"], "Olmo2ForCausalLM", spec);

#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    /// OLMo 1's clipping of q/k/v; no OLMo 2 release sets it.
    #[serde(default)]
    pub clip_qkv: Option<f64>,
    /// OLMo 3's local layers (llama.cpp writes its files as `olmo2`): refused, not ignored.
    #[serde(default)]
    pub sliding_window: Option<usize>,
}

fn spec(v: &Value) -> Result<DecoderSpec> {
    let c: Config = parse("olmo2", v)?;
    if c.clip_qkv.is_some() {
        return Err(Error::Model("olmo2 config: clip_qkv is not supported".into()));
    }
    if c.sliding_window.is_some_and(|w| w > 0) {
        return Err(Error::Model("olmo2 config: sliding-window layers (OLMo 3) are read from an olmo3 config.json, not from an olmo2 one or GGUF".into()));
    }
    spec_of(c.common)
}

/// OLMo 2's layers over `common` (OLMo 3 adds its sliding-window layers to this).
pub(super) fn spec_of(common: Common) -> Result<DecoderSpec> {
    let act = MlpAct::parse(common.hidden_act.as_deref())?;
    common.dims()?;
    Ok(DecoderSpec { cfg: common, opts: DecoderOpts { act, qk_norm: true, qk_norm_full: true, post_norms_only: true, ..Default::default() } })
}
