//! RoPE's frequencies as a config asks for them: the plain `θ^(-2i/d)` and its scalings
//! (`linear`, Llama 3.1's `llama3`, YaRN's `yarn`, and per-frequency divisors, which is how
//! llama.cpp's converters bake Llama 3.1's and Phi-3.5's into a GGUF). Owns the arithmetic of the
//! inverse frequencies and the parsing of one RoPE parameter set; the rotation itself is each
//! decoder implementation's, and which layers use which base is `llama::DecoderSpec`'s.

use crate::error::{Error, Result};
use serde_json::Value;

/// How RoPE's inverse frequencies are scaled from the plain `θ^(-2i/d)`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum RopeScaling {
    None,
    /// Every frequency divided by the factor (positions stretched).
    Linear(f64),
    /// Llama 3.1's: wavelengths shorter than `original / high` kept, longer than
    /// `original / low` divided by `factor`, a smooth blend between.
    Llama3 { factor: f64, low: f64, high: f64, original: f64 },
    /// Frequency `i` divided by divisor `i` (llama.cpp's `rope_freqs`).
    Divisors(Vec<f64>),
    /// YaRN (Qwen2.5 and Qwen3 past 32K, OLMo 3's long context): frequencies that turn fewer
    /// than `beta_slow` times over `original` positions divided by `factor`, those that turn
    /// more than `beta_fast` times kept, a linear ramp between (over dimensions rounded out
    /// to whole ones where `truncate`); cos and sin then scaled by `attention`.
    Yarn { factor: f64, original: f64, beta_fast: f64, beta_slow: f64, truncate: bool, attention: f64 },
}

impl RopeScaling {
    /// `inv` (one f32 per frequency) scaled: transformers divides the f32 values by a linear
    /// factor; Llama 3's blend divides each by an f32 divisor (`llama3_divisors`), which is
    /// how llama.cpp's converter stores it, so a GGUF of the same model gives the same bits.
    pub(crate) fn apply(&self, theta: f64, mut inv: Vec<f32>) -> Result<Vec<f32>> {
        match self {
            RopeScaling::Yarn { factor, original, beta_fast, beta_slow, truncate, .. } => {
                inv = yarn_inv_freqs(theta, inv.len() * 2, *factor, *original, *beta_fast, *beta_slow, *truncate);
            }
            RopeScaling::None => {}
            RopeScaling::Linear(f) => inv.iter_mut().for_each(|v| *v /= *f as f32),
            RopeScaling::Llama3 { factor, low, high, original } => {
                let d = llama3_divisors(&inv, *factor, *low, *high, *original);
                inv.iter_mut().zip(&d).for_each(|(v, x)| *v = (*v as f64 / *x as f64) as f32);
            }
            RopeScaling::Divisors(d) => {
                if d.len() != inv.len() || d.iter().any(|x| !(*x > 0.0 && x.is_finite())) {
                    return Err(Error::Model(format!("rope_freq_factors: {} positive divisors for {} frequencies", d.len(), inv.len())));
                }
                // the divisors are f32 values (a GGUF tensor), whatever the config text kept
                inv.iter_mut().zip(d).for_each(|(v, x)| *v = (*v as f64 / (*x as f32) as f64) as f32);
            }
        }
        Ok(inv)
    }
    /// What cos and sin are multiplied by (YaRN's attention factor), where not 1.
    pub(crate) fn attention(&self) -> Option<f32> {
        match self {
            RopeScaling::Yarn { attention, .. } if *attention != 1.0 => Some(*attention as f32),
            _ => None,
        }
    }
}

/// YaRN's inverse frequencies for `dim` rotated dimensions, in transformers' f32 steps: the
/// plain frequency `e = 1 / θ^(2i/dim)` and the interpolated `1 / (factor · θ^(2i/dim))`,
/// mixed by `m = 1 − clamp((i − low) / (high − low), 0, 1)` as `interp·(1 − m) + e·m`, where
/// `low` and `high` are the dimensions at which a frequency turns `beta_fast` and `beta_slow`
/// times over `original` positions (floored and ceiled where `truncate`, then kept within
/// `0..dim − 1`; equal ones pulled 0.001 apart).
fn yarn_inv_freqs(theta: f64, dim: usize, factor: f64, original: f64, beta_fast: f64, beta_slow: f64, truncate: bool) -> Vec<f32> {
    let corr = |rotations: f64| dim as f64 * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln());
    let (mut low, mut high) = (corr(beta_fast), corr(beta_slow));
    if truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
    if low == high {
        high += 0.001;
    }
    (0..dim / 2)
        .map(|i| {
            let pos = theta.powf(2.0 * i as f64 / dim as f64) as f32;
            let (extra, inter) = (1.0 / pos, 1.0 / (factor as f32 * pos));
            let ramp = ((i as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
            let keep = 1.0 - ramp;
            inter * (1.0 - keep) + extra * keep
        })
        .collect()
}

/// Llama 3.1's RoPE scaling as one divisor per frequency of `inv`, the way llama.cpp's converter
/// writes `rope_freqs.weight`: 1 where the wavelength is shorter than `original / high`,
/// `factor` where it is longer than `original / low`, and `1 / ((1 - s) / factor + s)` between,
/// with `s = (original / wavelength - low) / (high - low)` (f64 arithmetic, f32 results).
pub fn llama3_divisors(inv: &[f32], factor: f64, low: f64, high: f64, original: f64) -> Vec<f32> {
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    inv.iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f64::consts::PI / f as f64;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor as f32
            } else {
                let s = (original / wavelen - low) / (high - low);
                (1.0 / ((1.0 - s) / factor + s)) as f32
            }
        })
        .collect()
}

/// RoPE's plain inverse frequencies `θ^(-2i/d)` as f32, `d / 2` of them.
pub fn rope_inv_freqs(theta: f64, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64) as f32).collect()
}

/// One RoPE parameter set (`rope_type`, or the older `type`): `default`, `linear` (a positive
/// `factor`), `dynamic` (a positive `factor`; plain frequencies within the context), `llama3` (`factor`, `low_freq_factor` < `high_freq_factor`,
/// `original_max_position_embeddings`) or `yarn` (`factor`, `original_max_position_embeddings`;
/// optional `beta_fast` 32, `beta_slow` 1, `truncate` true, and `attention_factor`, else
/// transformers' default from `factor`, `mscale` and `mscale_all_dim`); other types are
/// refused by name.
pub(crate) fn rope_scaling(p: &Value) -> Result<RopeScaling> {
    let ty = rope_type(p);
    // the arithmetic runs in f32: a value it cannot hold (0 or infinite there) is refused
    let num = |k: &str| -> Result<f64> {
        match p.get(k).and_then(Value::as_f64) {
            Some(f) if f > 0.0 && (f as f32).is_normal() => Ok(f),
            other => Err(Error::Model(format!("{ty} rope scaling needs a positive {k} within f32's range, not {other:?}"))),
        }
    };
    match ty {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear(num("factor")?)),
        "llama3" => {
            let (low, high) = (num("low_freq_factor")?, num("high_freq_factor")?);
            if high <= low {
                return Err(Error::Model(format!("llama3 rope scaling: high_freq_factor {high} is not above low_freq_factor {low}")));
            }
            Ok(RopeScaling::Llama3 { factor: num("factor")?, low, high, original: num("original_max_position_embeddings")? })
        }
        // transformers rescales dynamic NTK RoPE only past max_position_embeddings; up to it
        // the frequencies are the plain ones, bit for bit, and loradex admits no position past
        // it (a request that would reach one is refused)
        "dynamic" => {
            num("factor")?;
            Ok(RopeScaling::None)
        }
        "yarn" => {
            let factor = num("factor")?;
            // as transformers reads them: a missing or zero beta takes its default
            let opt = |k: &str, default: f64| -> Result<f64> {
                match p.get(k).and_then(Value::as_f64) {
                    None => Ok(default),
                    Some(0.0) => Ok(default),
                    Some(_) => num(k),
                }
            };
            let (beta_fast, beta_slow) = (opt("beta_fast", 32.0)?, opt("beta_slow", 1.0)?);
            let mscale = |m: f64| if factor <= 1.0 { 1.0 } else { 0.1 * m * factor.ln() + 1.0 };
            let attention = match p.get("attention_factor").filter(|v| !v.is_null()) {
                Some(_) => num("attention_factor")?,
                None => match (opt("mscale", 0.0)?, opt("mscale_all_dim", 0.0)?) {
                    (m, all) if m != 0.0 && all != 0.0 => mscale(m) / mscale(all),
                    _ => mscale(1.0),
                },
            };
            let truncate = match p.get("truncate") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(other) => return Err(Error::Model(format!("yarn rope scaling: truncate {other} is not a boolean"))),
            };
            Ok(RopeScaling::Yarn { factor, original: num("original_max_position_embeddings")?, beta_fast, beta_slow, truncate, attention })
        }
        other => Err(Error::Model(format!("rope_type {other:?} is not supported (default, linear, dynamic, llama3 or yarn)"))),
    }
}

/// A RoPE parameter set's type: `rope_type`, or the older `type`; `default` where neither is.
pub(crate) fn rope_type(p: &Value) -> &str {
    p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default")
}
