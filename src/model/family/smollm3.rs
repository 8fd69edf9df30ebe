//! SmolLM3 (`SmolLM3ForCausalLM`, `model_type` `smollm3`): Llama's layout, with RoPE left out
//! of some layers (`no_rope_layers`: 0 for a layer without it; by default every
//! `no_rope_layer_interval`-th, 4). Sliding-window attention (`use_sliding_window`) and MLP
//! biases are refused. Parses its config and maps it onto the shared decoder.

use super::{parse, Family};
use crate::error::{Error, Result};
use crate::model::llama::{Config as Common, DecoderOpts, DecoderSpec, MlpAct, MAX_LOCAL_LAYERS};
use serde_json::Value;

pub static FAMILY: Family = Family::decoder("smollm3", &["smollm3"], "SmolLM3ForCausalLM", spec);

#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub no_rope_layers: Option<Vec<u8>>,
    #[serde(default)]
    pub no_rope_layer_interval: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub mlp_bias: bool,
}

fn bad(what: String) -> Error {
    Error::Model(format!("smollm3 config: {what}"))
}

fn spec(v: &Value) -> Result<DecoderSpec> {
    let c: Config = parse("smollm3", v)?;
    if c.use_sliding_window {
        return Err(bad("sliding-window attention is not supported".into()));
    }
    if c.mlp_bias {
        return Err(bad("MLP biases are not supported".into()));
    }
    let layers = c.common.num_hidden_layers;
    if layers > MAX_LOCAL_LAYERS {
        return Err(bad(format!("{layers} layers (at most {MAX_LOCAL_LAYERS})")));
    }
    let mut nope = 0u128;
    match &c.no_rope_layers {
        Some(flags) => {
            if flags.len() != layers {
                return Err(bad(format!("{} no_rope_layers for {layers} layers", flags.len())));
            }
            for (i, f) in flags.iter().enumerate() {
                match f {
                    0 => nope |= 1 << i,
                    1 => {}
                    other => return Err(bad(format!("no_rope_layers value {other} (0 or 1)"))),
                }
            }
        }
        None => {
            let every = c.no_rope_layer_interval.unwrap_or(4);
            if every == 0 {
                return Err(bad("no_rope_layer_interval 0".into()));
            }
            for i in (0..layers).filter(|i| (i + 1) % every == 0) {
                nope |= 1 << i;
            }
        }
    }
    let act = MlpAct::parse(c.common.hidden_act.as_deref())?;
    c.common.dims()?;
    Ok(DecoderSpec { cfg: c.common, opts: DecoderOpts { act, nope_layers: nope, ..Default::default() } })
}
