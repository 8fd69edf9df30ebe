//! OLMo 3 (`Olmo3ForCausalLM`, `model_type` `olmo3`): OLMo 2's layers (norms after the
//! attention and the MLP only, q/k norms over all heads at once) with sliding-window layers
//! beside full ones (`layer_types`; by default every fourth layer is full), each kind with its
//! own RoPE parameters: the full layers' may be scaled (YaRN, in the long-context releases),
//! the sliding ones' are plain. Parses its config and maps it onto the shared decoder.

use super::gemma3::local_layers;
use super::{olmo2, parse, Family};
use crate::error::{Error, Result};
use crate::model::llama::{Config as Common, DecoderSpec, LocalLayers};
use crate::model::rope::{rope_scaling, RopeScaling};
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
    let per_type = c.common.rope_parameters.as_ref().filter(|p| p.get("full_attention").is_some() || p.get("sliding_attention").is_some()).cloned();
    let theta = c.common.rope_theta.unwrap_or(DEFAULT_THETA);
    let local_theta = match per_type {
        Some(p) => {
            // each kind's parameters are an object (indexing anything else would panic)
            for kind in ["full_attention", "sliding_attention"] {
                if p.get(kind).is_some_and(|k| !k.is_object()) {
                    return Err(bad(format!("rope_parameters.{kind} is not an object")));
                }
            }
            let local_theta = match p.get("sliding_attention") {
                None => theta,
                Some(s) => match rope_scaling(s).map_err(|e| bad(format!("sliding_attention: {e}")))? {
                    RopeScaling::None => s.get("rope_theta").and_then(Value::as_f64).unwrap_or(theta),
                    _ => return Err(bad("rope scaling on the sliding-window layers is not supported".into())),
                },
            };
            let mut full = p.get("full_attention").cloned().unwrap_or_else(|| serde_json::json!({"rope_type": "default"}));
            if full.get("rope_theta").is_none() {
                full["rope_theta"] = theta.into();
            }
            (c.common.rope_parameters, c.common.rope_scaling) = (Some(full), None);
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
