//! Llama (`LlamaForCausalLM`): the reference decoder. Its `config.json` is the common part
//! of every decoder family's (`model::llama::Config`).

use super::{parse, Family};
use crate::error::Result;
use crate::model::llama::{Config, DecoderSpec};
use serde_json::Value;

pub static FAMILY: Family = Family::decoder("llama", &["llama"], "LlamaForCausalLM", spec);

fn spec(v: &Value) -> Result<DecoderSpec> {
    DecoderSpec::llama(parse::<Config>("llama", v)?)
}
