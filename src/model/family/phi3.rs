//! Phi-3 (`Phi3ForCausalLM`): fused `qkv_proj` (`[q; k; v]` rows) and `gate_up_proj`
//! (`[gate; up]`). A LoRA on a fused projection applies to the fused output, as PEFT's does;
//! partial rotary embeddings and long-rope scaling are refused.

use super::{parse, Family};
use crate::error::{Error, Result};
use crate::model::llama::{Config as Common, DecoderOpts, DecoderSpec, MlpAct};
use serde_json::Value;

pub static FAMILY: Family = Family::decoder("phi3", &["phi3"], "Phi3ForCausalLM", spec);

#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
}

fn spec(v: &Value) -> Result<DecoderSpec> {
    let c: Config = parse("phi3", v)?;
    let partial = c
        .partial_rotary_factor
        .or_else(|| c.common.rope_parameters.as_ref().and_then(|p| p.get("partial_rotary_factor")).and_then(Value::as_f64))
        .unwrap_or(1.0);
    if partial != 1.0 {
        return Err(Error::Model(format!("phi3 config: partial_rotary_factor {partial} is not supported (1.0)")));
    }
    let act = MlpAct::parse(c.common.hidden_act.as_deref())?;
    c.common.dims()?;
    Ok(DecoderSpec { cfg: c.common, opts: DecoderOpts { fused: true, act, sliding_window: c.sliding_window.filter(|w| *w > 0), ..Default::default() } })
}
