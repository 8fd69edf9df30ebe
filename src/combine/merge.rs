//! The task-tensor merges PEFT's `add_weighted_adapter` applies (`peft/utils/merge_utils.py`),
//! on flat `f64` vectors of equal length: task arithmetic, magnitude pruning, TIES (trim,
//! elect sign, disjoint mean) and DARE (random drop and rescale). Owns only this arithmetic.
//!
//! Ties in magnitude pruning (equal `|x|`) keep the lower index; PyTorch's `topk` leaves that
//! order unspecified. DARE draws from loradex's own SplitMix64 (`util::Rng`, one draw per
//! element, kept when `u < density` with `u` uniform in [0, 1) from the top 53 bits), so a
//! seed reproduces loradex's result, never PyTorch's `bernoulli` stream.

use crate::util::Rng;

/// How the weighted task tensors are merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// `Σ wᵢ tᵢ` (PEFT `task_arithmetic`).
    TaskArithmetic,
    /// Keep each tensor's largest `density` fraction, then `Σ wᵢ tᵢ` (`magnitude_prune`).
    MagnitudePrune,
    /// Magnitude-prune, elect a sign per element, average the agreeing weighted values (`ties`).
    Ties,
    /// Drop at random with keep probability `density`, rescale by `1/density`, `Σ wᵢ tᵢ`.
    DareLinear,
    /// DARE's random drop, then TIES' sign election and disjoint mean (`dare_ties`).
    DareTies,
}

/// How TIES elects the sign of an element (PEFT `majority_sign_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignMethod {
    /// The sign of the sum of the (pruned, unweighted) values.
    #[default]
    Total,
    /// The sign held by more of the tensors (ties go to +).
    Frequency,
}

impl SignMethod {
    pub fn name(self) -> &'static str {
        match self {
            SignMethod::Total => "total",
            SignMethod::Frequency => "frequency",
        }
    }
}

impl std::str::FromStr for SignMethod {
    type Err = super::CombineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "total" => Ok(SignMethod::Total),
            "frequency" => Ok(SignMethod::Frequency),
            other => Err(super::CombineError::UnknownSignMethod(other.to_string())),
        }
    }
}

/// Merges `tensors` (all the same length) with `weights`. `density` is used by every merge
/// but `TaskArithmetic`; `rng` only by the DARE merges.
pub fn merge(how: Merge, tensors: &[&[f64]], weights: &[f64], density: f64, sign: SignMethod, rng: &mut Rng) -> Vec<f64> {
    assert_eq!(tensors.len(), weights.len(), "merge: one weight per tensor");
    let n = tensors.first().map_or(0, |t| t.len());
    assert!(tensors.iter().all(|t| t.len() == n), "merge: tensors of different lengths");
    let pruned: Vec<Vec<f64>> = match how {
        Merge::TaskArithmetic => tensors.iter().map(|t| t.to_vec()).collect(),
        Merge::MagnitudePrune | Merge::Ties => tensors.iter().map(|t| magnitude_prune(t, density)).collect(),
        Merge::DareLinear | Merge::DareTies => tensors.iter().map(|t| random_prune(t, density, rng)).collect(),
    };
    match how {
        Merge::TaskArithmetic | Merge::MagnitudePrune | Merge::DareLinear => weighted_sum(&pruned, weights),
        Merge::Ties | Merge::DareTies => disjoint_merge(&pruned, weights, sign),
    }
}

/// `Σ wᵢ tᵢ`.
fn weighted_sum(tensors: &[Vec<f64>], weights: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; tensors.first().map_or(0, |t| t.len())];
    for (t, w) in tensors.iter().zip(weights) {
        for (o, x) in out.iter_mut().zip(t) {
            *o += x * w;
        }
    }
    out
}

/// Keeps the `⌊density·n⌋` largest magnitudes (lower index first among equal ones), zeroes the
/// rest; `density ≥ 1` keeps everything (PEFT's `prune`).
pub fn magnitude_prune(t: &[f64], density: f64) -> Vec<f64> {
    if density >= 1.0 {
        return t.to_vec();
    }
    // Python's int(density * numel): truncation of the same f64 product
    let k = ((density * t.len() as f64) as usize).min(t.len());
    let mut out = vec![0.0; t.len()];
    if k == 0 {
        return out;
    }
    let mut idx: Vec<usize> = (0..t.len()).collect();
    // a strict total order (magnitude descending, then index), so the selection is unique
    let order = |&a: &usize, &b: &usize| t[b].abs().total_cmp(&t[a].abs()).then(a.cmp(&b));
    idx.select_nth_unstable_by(k - 1, order);
    for &i in &idx[..k] {
        out[i] = t[i];
    }
    out
}

/// DARE's drop: each element kept with probability `density` and divided by it; `density ≥ 1`
/// keeps everything unscaled (PEFT's `prune`). `density` must be positive.
pub fn random_prune(t: &[f64], density: f64, rng: &mut Rng) -> Vec<f64> {
    if density >= 1.0 {
        return t.to_vec();
    }
    t.iter().map(|&x| if uniform(rng) < density { x / density } else { 0.0 }).collect()
}

/// Uniform in [0, 1) with 53 random bits.
fn uniform(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// TIES' election and disjoint merge: per element, the majority sign over the (pruned,
/// unweighted) tensors (`≥ 0` elects +), then the mean of the weighted values whose own sign
/// is the elected one (zeros never count; an element no tensor agrees on is 0).
fn disjoint_merge(tensors: &[Vec<f64>], weights: &[f64], sign: SignMethod) -> Vec<f64> {
    let n = tensors.first().map_or(0, |t| t.len());
    (0..n)
        .map(|e| {
            let magnitude: f64 = match sign {
                SignMethod::Total => tensors.iter().map(|t| t[e]).sum(),
                SignMethod::Frequency => tensors.iter().map(|t| sgn(t[e])).sum(),
            };
            let elected = if magnitude >= 0.0 { 1.0 } else { -1.0 };
            let (mut sum, mut count) = (0.0, 0usize);
            for (t, w) in tensors.iter().zip(weights) {
                if sgn(t[e]) == elected {
                    sum += t[e] * w;
                    count += 1;
                }
            }
            sum / count.max(1) as f64
        })
        .collect()
}

/// `torch.sign`: -1, 0 or 1.
fn sgn(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}
