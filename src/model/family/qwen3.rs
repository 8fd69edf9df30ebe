//! Qwen3 (`Qwen3ForCausalLM`): Llama's layout plus an RMSNorm over each head of q and k
//! before RoPE (`self_attn.q_norm` / `k_norm`, one `head_dim`-long weight each, shared by the
//! heads), an explicit `head_dim`, and no q/k/v biases. Its sliding-window settings read as
//! Qwen2's do.

use super::{parse, Family};
use crate::error::{Error, Result};
use crate::model::llama::{Config as Common, DecoderOpts, DecoderSpec, MlpAct};
use serde_json::Value;

pub static FAMILY: Family = Family::decoder("qwen3", &["qwen3"], "Qwen3ForCausalLM", spec);

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
    let c: Config = parse("qwen3", v)?;
    let mut opts = DecoderOpts { act: MlpAct::parse(c.common.hidden_act.as_deref())?, qk_norm: true, ..Default::default() };
    if c.use_sliding_window && c.sliding_window.is_some() {
        if c.max_window_layers.unwrap_or(0) != 0 {
            return Err(Error::Model("qwen3 config: a sliding window on only some layers (max_window_layers) is not supported".into()));
        }
        opts.sliding_window = c.sliding_window.filter(|w| *w > 0);
    }
    c.common.dims()?;
    Ok(DecoderSpec { cfg: c.common, opts })
}
