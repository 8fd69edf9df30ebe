//! Mistral (`MistralForCausalLM`): Llama's layout and names, with a sliding attention window
//! (`sliding_window`: each query sees at most that many keys, itself included).

use super::{parse, Family};
use crate::error::{Error, Result};
use crate::model::llama::{Config as Common, DecoderOpts, DecoderSpec, MlpAct};
use serde_json::Value;

pub static FAMILY: Family = Family::decoder("mistral", &["mistral"], "MistralForCausalLM", spec);

#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub sliding_window: Option<usize>,
}

fn spec(v: &Value) -> Result<DecoderSpec> {
    let c: Config = parse("mistral", v)?;
    if c.sliding_window == Some(0) {
        return Err(Error::Model("mistral config: sliding_window 0 leaves no key to attend to".into()));
    }
    let act = MlpAct::parse(c.common.hidden_act.as_deref())?;
    c.common.dims()?;
    Ok(DecoderSpec { cfg: c.common, opts: DecoderOpts { sliding_window: c.sliding_window, act, ..Default::default() } })
}
