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

fn spec(v: &Value) -> Result<DecoderSpec> {
    let c: Config = parse("gemma", v)?;
    let act = c.hidden_activation.as_deref().or(c.common.hidden_act.as_deref()).unwrap_or("gelu_pytorch_tanh");
    let act = MlpAct::parse(Some(act))?;
    if act != MlpAct::GeluTanh {
        return Err(Error::Model(format!("gemma config: activation {act:?} is not Gemma's (gelu_pytorch_tanh)")));
    }
    c.common.dims()?;
    Ok(DecoderSpec { cfg: c.common, opts: DecoderOpts { norm_plus_one: true, embed_scale: true, act, ..Default::default() } })
}
