//! Llama (`LlamaForCausalLM`): the reference decoder. Its `config.json` is the common part
//! of every decoder family's (`model::llama::Config`).

use super::{parse, Build, Family};
use crate::error::Result;
use crate::model::llama::{Config, DecoderSpec};
use serde_json::Value;

pub static FAMILY: Family = Family {
    name: "llama",
    model_types: &["llama"],
    backbone_prefix: "model.",
    backbone_roots: ROOTS,
    head_modules: &["classifier", "score"],
    task_architecture: "LlamaForCausalLM",
    build: Build::Decoder(spec),
};

/// The backbone roots every decoder family shares (`model.embed_tokens`, `model.layers`, ...).
pub(crate) const ROOTS: &[&str] = &["embed_tokens.", "layers.", "norm."];

fn spec(v: &Value) -> Result<DecoderSpec> {
    DecoderSpec::llama(parse::<Config>("llama", v)?)
}
