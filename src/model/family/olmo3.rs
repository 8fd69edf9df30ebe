//! OLMo 3 (`Olmo3ForCausalLM`, `model_type` `olmo3`): OLMo 2's layers (norms after the
//! attention and the MLP only, q/k norms over all heads at once) with sliding-window layers
//! beside full ones (`layer_types`; by default every fourth layer is full), each kind with its
//! own RoPE parameters: the full layers' may be scaled (YaRN, in the long-context releases),
//! the sliding ones' are plain. Parses its config and maps it onto the shared decoder.

use super::gemma3::{kind_rope, local_layers, per_layer_type};
use super::{olmo2, parse, Family};
use crate::error::{Error, Result};
use crate::model::llama::{Config as Common, DecoderSpec, LocalLayers};
use crate::model::rope::RopeScaling;
use serde_json::Value;

pub static FAMILY: Family = Family::decoder("olmo3", &["olmo3"], "Olmo3ForCausalLM", spec);

/// OLMo 3's RoPE base where a config names none (transformers' `default_theta`).
const DEFAULT_THETA: f64 = 500_000.0;

#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
}

fn bad(what: String) -> Error {
    Error::Model(format!("olmo3 config: {what}"))
}

fn spec(v: &Value) -> Result<DecoderSpec> {
    let mut c: Config = parse("olmo3", v)?;
    let layers = c.common.num_hidden_layers;
    let (mask, window) = local_layers(c.layer_types.as_deref(), layers, c.sliding_window, |i| (i + 1) % 4 != 0, bad)?;
    // RoPE per layer type (transformers 5), or the older rope_theta and rope_scaling, whose
    // scaling is the full layers' only
    let theta = c.common.rope_theta.unwrap_or(DEFAULT_THETA);
    let local_theta = match per_layer_type(&c.common).cloned() {
        Some(p) => {
            let (local_theta, sliding) = kind_rope(&p, "sliding_attention", theta, bad)?;
            if sliding != RopeScaling::None {
                return Err(bad("rope scaling on the sliding-window layers is not supported".into()));
            }
            // the full layers' set as the config's own (its scaling parsed where it is used)
            let (full_theta, _) = kind_rope(&p, "full_attention", theta, bad)?;
            (c.common.rope_parameters, c.common.rope_scaling, c.common.rope_theta) = (p.get("full_attention").cloned(), None, Some(full_theta));
            local_theta
        }
        None => {
            c.common.rope_theta = Some(theta);
            // one base for both kinds: the one the full layers read
            c.common.rope()?.0
        }
    };
    let mut spec = olmo2::spec_of(c.common)?;
    if mask != 0 {
        (spec.opts.sliding_window, spec.opts.local) = (window, Some(LocalLayers { mask, theta: local_theta }));
    }
    // the full layers' scaling is checked here rather than at the first forward
    spec.cfg.rope()?;
    Ok(spec)
}
