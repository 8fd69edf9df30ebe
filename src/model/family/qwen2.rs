//! Qwen2 (`Qwen2ForCausalLM`): Llama's layout with biases on q/k/v (loaded wherever the
//! weights hold a `.bias`). A sliding window applies only with `use_sliding_window`, from
//! layer `max_window_layers` on; loradex refuses that mix rather than ignore it.

use super::{parse, Family};
use crate::error::{Error, Result};
use crate::model::llama::{Config as Common, DecoderOpts, DecoderSpec, MlpAct};
use serde_json::Value;

pub static FAMILY: Family = Family::decoder("qwen2", &["qwen2"], "Qwen2ForCausalLM", spec);

#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub max_window_layers: Option<usize>,
}

fn spec(v: &Value) -> Result<DecoderSpec> {
    spec_as("qwen2", v)
}

/// The spec of a config read as Qwen2's (Qwen3's adds per-head norms to it), `name` naming it
/// in errors.
pub(super) fn spec_as(name: &str, v: &Value) -> Result<DecoderSpec> {
    let c: Config = parse(name, v)?;
    let mut opts = DecoderOpts { act: MlpAct::parse(c.common.hidden_act.as_deref())?, ..Default::default() };
    if c.use_sliding_window && c.sliding_window.is_some() {
        // transformers windows layers from max_window_layers on: all of them only when it is 0
        if c.max_window_layers.unwrap_or(0) != 0 {
            return Err(Error::Model(format!("{name} config: a sliding window on only some layers (max_window_layers) is not supported")));
        }
        opts.sliding_window = c.sliding_window.filter(|w| *w > 0);
    }
    c.common.dims()?;
    Ok(DecoderSpec { cfg: c.common, opts })
}
