//! Phi-3 (`Phi3ForCausalLM`): fused `qkv_proj` (`[q; k; v]` rows) and `gate_up_proj`
//! (`[gate; up]`). A LoRA on a fused projection applies to the fused output, as PEFT's does.
//! Phi-3.5's `longrope` RoPE runs on its short factors, with cos and sin scaled by the
//! attention factor, and the context is held to `original_max_position_embeddings`: past it
//! transformers and llama.cpp switch to the long factors, which would change the rotation of
//! keys already cached. A partial rotary (Phi-4-mini's `partial_rotary_factor`) turns the
//! first dimensions of each head and passes the rest through.

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
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

fn bad(what: String) -> Error {
    Error::Model(format!("phi3 config: {what}"))
}

/// A `longrope` (or `su`) parameter set as `(short factors, attention factor, original
/// context)`; `None` for any other type.
fn longrope(p: &Value, max_positions: usize, top_original: Option<usize>) -> Result<Option<(Vec<f64>, f64, usize)>> {
    if !matches!(crate::model::rope::rope_type(p), "longrope" | "su") {
        return Ok(None);
    }
    let short: Vec<f64> = p
        .get("short_factor")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .ok_or_else(|| bad("longrope without short_factor".into()))?;
    let original = p.get("original_max_position_embeddings").and_then(Value::as_u64).map(|v| v as usize).or(top_original).unwrap_or(max_positions);
    if original == 0 {
        return Err(bad("original_max_position_embeddings 0".into()));
    }
    // transformers' default: from the context's stretch
    let attention = match p.get("attention_factor").and_then(Value::as_f64) {
        Some(a) if a > 0.0 && a.is_finite() => a,
        Some(a) => return Err(bad(format!("attention_factor {a}"))),
        None => {
            let factor = max_positions as f64 / original as f64;
            if factor <= 1.0 { 1.0 } else { (1.0 + factor.ln() / (original as f64).ln()).sqrt() }
        }
    };
    Ok(Some((short, attention, original)))
}

fn spec(v: &Value) -> Result<DecoderSpec> {
    let mut c: Config = parse("phi3", v)?;
    let partial = c
        .partial_rotary_factor
        .or_else(|| c.common.rope_parameters.as_ref().and_then(|p| p.get("partial_rotary_factor")).and_then(Value::as_f64))
        .unwrap_or(1.0);
    let hd = c.common.head_dim.unwrap_or(c.common.hidden_size / c.common.num_attention_heads.max(1));
    // transformers: the first int(head_dim · factor) dimensions of each head turn
    let x = hd as f64 * partial;
    let rot = if (x - x.round()).abs() < 1e-6 { x.round() } else { x.floor() } as usize;
    if !(partial > 0.0 && partial <= 1.0) || rot == 0 || !rot.is_multiple_of(2) {
        return Err(bad(format!("partial_rotary_factor {partial} does not give an even number of rotated dimensions of {hd}")));
    }
    let rotary_dims = (rot < hd).then_some(rot);
    let act = MlpAct::parse(c.common.hidden_act.as_deref())?;
    let params = c.common.rope_parameters.as_ref().or(c.common.rope_scaling.as_ref()).cloned();
    let mut rope_mscale = None;
    if let Some((short, attention, original)) = params.as_ref().map(|p| longrope(p, c.common.max_position_embeddings, c.original_max_position_embeddings)).transpose()?.flatten() {
        let theta = params.as_ref().and_then(|p| p.get("rope_theta")).and_then(Value::as_f64).or(c.common.rope_theta).unwrap_or(10000.0);
        c.common.rope_theta = Some(theta);
        (c.common.rope_parameters, c.common.rope_scaling, c.common.rope_freq_factors) = (None, None, Some(short));
        c.common.max_position_embeddings = c.common.max_position_embeddings.min(original);
        rope_mscale = (attention != 1.0).then_some(attention as f32);
    }
    c.common.dims()?;
    let opts = DecoderOpts { fused: true, act, sliding_window: c.sliding_window.filter(|w| *w > 0), rope_mscale, rotary_dims, ..Default::default() };
    Ok(DecoderSpec { cfg: c.common, opts })
}
