//! IBM Granite 3 (`GraniteForCausalLM`, `model_type` `granite`): Llama's layout with four
//! scalars: embeddings times `embedding_multiplier`, each attention and MLP output times
//! `residual_multiplier` before its residual add, scores scaled by `attention_multiplier`
//! (in place of `1/√head_dim`), and logits divided by `logits_scaling`. Parses its config and
//! maps it onto the shared decoder.

use super::{parse, Family};
use crate::error::{Error, Result};
use crate::model::llama::{Config as Common, DecoderOpts, DecoderSpec, MlpAct, Multipliers};
use serde_json::Value;

pub static FAMILY: Family = Family::decoder("granite", &["granite"], "GraniteForCausalLM", spec);

#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub embedding_multiplier: Option<f64>,
    #[serde(default)]
    pub residual_multiplier: Option<f64>,
    #[serde(default)]
    pub attention_multiplier: Option<f64>,
    #[serde(default)]
    pub logits_scaling: Option<f64>,
    #[serde(default)]
    pub mlp_bias: bool,
}

fn spec(v: &Value) -> Result<DecoderSpec> {
    let c: Config = parse("granite", v)?;
    if c.mlp_bias {
        return Err(Error::Model("granite config: MLP biases are not supported".into()));
    }
    c.common.dims()?;
    let num = |v: Option<f64>, default: f64, what: &str| -> Result<f32> {
        match v.unwrap_or(default) {
            x if x.is_finite() && x > 0.0 => Ok(x as f32),
            x => Err(Error::Model(format!("granite config: {what} {x} is not positive"))),
        }
    };
    let scales = Multipliers {
        embedding: num(c.embedding_multiplier, 1.0, "embedding_multiplier")?,
        residual: num(c.residual_multiplier, 1.0, "residual_multiplier")?,
        // transformers' default is 1, not 1/√head_dim (released configs all set it)
        attention: num(c.attention_multiplier, 1.0, "attention_multiplier")?,
        logits: num(c.logits_scaling, 1.0, "logits_scaling")?,
    };
    let act = MlpAct::parse(c.common.hidden_act.as_deref())?;
    Ok(DecoderSpec { cfg: c.common, opts: DecoderOpts { act, scales: Some(scales), ..Default::default() } })
}
