//! Gemma (`GemmaForCausalLM`): an explicit `head_dim`, RMSNorm scaling by `1 + w`, embeddings
//! scaled by √hidden, GeGLU (`gelu_pytorch_tanh`), and usually a head tied to the embeddings.

use super::{parse, Family};
use crate::error::{Error, Result};
use crate::model::llama::{Config as Common, DecoderOpts, DecoderSpec, MlpAct};
use serde_json::Value;

pub static FAMILY: Family = Family::decoder("gemma", &["gemma"], "GemmaForCausalLM", spec);

#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    /// Overrides `hidden_act` where present (as transformers reads it).
    #[serde(default)]
    pub hidden_activation: Option<String>,
}

/// Gemma's MLP activation as transformers reads it (`hidden_activation`, else `hidden_act`,
/// else `gelu_pytorch_tanh`), which must be GeGLU's. Shared by Gemma 2 and 3.
pub(super) fn gemma_act(hidden_activation: Option<&str>, hidden_act: Option<&str>, bad: impl Fn(String) -> Error) -> Result<MlpAct> {
    let act = MlpAct::parse(Some(hidden_activation.or(hidden_act).unwrap_or("gelu_pytorch_tanh")))?;
    if act != MlpAct::GeluTanh {
        return Err(bad(format!("activation {act:?} is not Gemma's (gelu_pytorch_tanh)")));
    }
    Ok(act)
}

fn spec(v: &Value) -> Result<DecoderSpec> {
    let c: Config = parse("gemma", v)?;
    let act = gemma_act(c.hidden_activation.as_deref(), c.common.hidden_act.as_deref(), |what| Error::Model(format!("gemma config: {what}")))?;
    c.common.dims()?;
    Ok(DecoderSpec { cfg: c.common, opts: DecoderOpts { norm_plus_one: true, embed_scale: true, act, ..Default::default() } })
}
