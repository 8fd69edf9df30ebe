//! Adapter combination: a new LoRA adapter made from several, as PEFT 0.21's
//! `LoraModel.add_weighted_adapter` makes it. Owns the combination types, their argument
//! rules, PEFT's rank and config rules, and the per-module algebra on the factors; `merge`
//! holds the task-tensor merges and `svd` the decomposition. Works on adapter bytes in memory
//! only: it must not touch the store (checking that inputs share a base and a task is
//! `adapters::combine`'s), build device tensors, or print.
//!
//! What PEFT does, and so what this does, for weights `wᵢ` and input scalings `sᵢ`
//! (`lora_alpha / r`, per module with `alpha_pattern`, `/√r` with rslora):
//! - `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`: the A factors are merged
//!   with weights `sign(wᵢsᵢ)·√|wᵢsᵢ|`, the B factors with `√|wᵢsᵢ|`, separately (so the
//!   product is not `Σ wᵢsᵢBᵢAᵢ`). Every input must have the same rank.
//! - `cat`: `A = [w₁s₁A₁; w₂s₂A₂; …]`, `B = [B₁ B₂ …]`, rank the sum of the inputs' ranks:
//!   exactly `Σ wᵢsᵢBᵢAᵢ`.
//! - `svd` and the `*_svd` types: the deltas `sᵢBᵢAᵢ` are merged with weights `wᵢ` (PEFT
//!   0.21; before it, the scaling was applied twice here), decomposed, and truncated to the new
//!   rank (`svd_rank`, else the largest input rank): `B = U·diag(S)`, `A = Vᵀ`, optionally
//!   clamped at a quantile.
//!
//! The new config is the first input's with `r` and `lora_alpha` set to the new rank, so its
//! scaling is 1, `use_rslora` off (PEFT's fix for rslora inputs, huggingface/peft#3449: with it
//! on, the scaling would be `√r` and the result overscaled), `target_modules` the union of the
//! inputs', and no rank/alpha patterns. A single input is always combined `linear`, as PEFT
//! does. PEFT gives a combined adapter the base model's copy of any `modules_to_save` module,
//! not an input's trained one; loradex refuses such inputs instead of dropping their heads.

pub mod merge;
pub mod svd;

use crate::base::Arch;
use crate::error::{Error, Result};
use crate::peft::{self, safetensors::SafeView, KeyKind, LoraConfig};
use crate::util::Rng;
use merge::Merge;
pub use merge::SignMethod;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use svd::Mat;

/// PEFT's combination types (`combination_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Linear,
    Cat,
    Svd,
    Ties,
    TiesSvd,
    DareLinear,
    DareTies,
    DareLinearSvd,
    DareTiesSvd,
    MagnitudePrune,
    MagnitudePruneSvd,
}

const METHODS: [(Method, &str); 11] = [
    (Method::Linear, "linear"),
    (Method::Cat, "cat"),
    (Method::Svd, "svd"),
    (Method::Ties, "ties"),
    (Method::TiesSvd, "ties_svd"),
    (Method::DareLinear, "dare_linear"),
    (Method::DareTies, "dare_ties"),
    (Method::DareLinearSvd, "dare_linear_svd"),
    (Method::DareTiesSvd, "dare_ties_svd"),
    (Method::MagnitudePrune, "magnitude_prune"),
    (Method::MagnitudePruneSvd, "magnitude_prune_svd"),
];

impl Method {
    pub fn name(self) -> &'static str {
        METHODS.iter().find(|(m, _)| *m == self).map(|(_, n)| *n).unwrap_or("?")
    }
    /// The merge applied to factors (or, for SVD types, to deltas); `None` for `cat`.
    fn merge(self) -> Option<Merge> {
        use Method::*;
        Some(match self {
            Linear | Svd => Merge::TaskArithmetic,
            Ties | TiesSvd => Merge::Ties,
            DareLinear | DareLinearSvd => Merge::DareLinear,
            DareTies | DareTiesSvd => Merge::DareTies,
            MagnitudePrune | MagnitudePruneSvd => Merge::MagnitudePrune,
            Cat => return None,
        })
    }
    pub fn is_svd(self) -> bool {
        self.name().ends_with("svd")
    }
    pub fn needs_density(self) -> bool {
        !matches!(self.merge(), None | Some(Merge::TaskArithmetic))
    }
    pub fn uses_sign(self) -> bool {
        matches!(self.merge(), Some(Merge::Ties | Merge::DareTies))
    }
    pub fn is_random(self) -> bool {
        matches!(self.merge(), Some(Merge::DareLinear | Merge::DareTies))
    }
    /// What agrees with PEFT: its factors (`linear`, `cat`, `ties`, `magnitude_prune`), the
    /// product B·A only (SVD types: another SVD routine), or nothing exactly (DARE: random).
    pub fn peft_agreement(self) -> &'static str {
        if self.is_random() {
            "statistical (random drop; not PyTorch's random stream)"
        } else if self.is_svd() {
            "product B·A (factors differ by the SVD routine)"
        } else {
            "factors"
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = CombineError;
    fn from_str(s: &str) -> Result<Self, CombineError> {
        METHODS.iter().find(|(_, n)| *n == s).map(|(m, _)| *m).ok_or_else(|| CombineError::UnknownMethod(s.to_string()))
    }
}

/// Why adapters cannot be combined (or a combination request is invalid).
#[derive(Debug, thiserror::Error)]
pub enum CombineError {
    #[error("unknown combination type {0:?} (linear, cat, svd, ties, ties_svd, dare_linear, dare_ties, dare_linear_svd, dare_ties_svd, magnitude_prune, magnitude_prune_svd)")]
    UnknownMethod(String),
    #[error("unknown majority sign method {0:?} (total or frequency)")]
    UnknownSignMethod(String),
    #[error("no adapters to combine")]
    NoInputs,
    #[error("{input}: weight {weight} is not a finite number")]
    BadWeight { input: String, weight: f64 },
    #[error("combination type {0} needs a density")]
    MissingDensity(Method),
    #[error("density {0} must be in (0, 1]")]
    BadDensity(f64),
    #[error("{what} does not apply to combination type {method}")]
    NotApplicable { what: &'static str, method: Method },
    #[error("svd_clamp {0} must be a quantile in [0, 1]")]
    BadClamp(f64),
    #[error("svd_rank must be positive")]
    BadSvdRank,
    #[error("{a} and {b} were made for different bases ({base_a} and {base_b})")]
    BaseMismatch { a: String, b: String, base_a: String, base_b: String },
    #[error("{a} and {b} are for different tasks ({task_a} and {task_b})")]
    TaskMismatch { a: String, b: String, task_a: String, task_b: String },
    #[error("{a} and {b} have different labels ({labels_a:?} and {labels_b:?})")]
    LabelsMismatch { a: String, b: String, labels_a: Vec<String>, labels_b: Vec<String> },
    /// PEFT refuses this too; the message is PEFT's.
    #[error("{0}")]
    Peft(&'static str),
    #[error("{input}: {detail}")]
    Unsupported { input: String, detail: String },
    #[error("module {module}: {detail}")]
    Module { module: String, detail: String },
    #[error("module {0}: the SVD did not converge (non-finite values?)")]
    Svd(String),
}

/// A validated combination request: the type and the parameters that apply to it.
#[derive(Clone, Debug)]
pub struct Spec {
    method: Method,
    density: Option<f64>,
    sign: SignMethod,
    seed: u64,
    svd_rank: Option<usize>,
    svd_clamp: Option<f64>,
}

/// A combination's optional parameters, as given (validated by `Spec::new`).
#[derive(Clone, Debug, Default)]
pub struct Params {
    pub density: Option<f64>,
    pub majority_sign_method: Option<SignMethod>,
    pub seed: Option<u64>,
    pub svd_rank: Option<usize>,
    pub svd_clamp: Option<f64>,
}

impl Spec {
    /// Checks that every given parameter applies to `method` and is in range, and that the
    /// ones it needs are there (`density` for the pruning types). DARE's seed defaults to 0.
    pub fn new(method: Method, p: Params) -> Result<Spec, CombineError> {
        let na = |what| Err(CombineError::NotApplicable { what, method });
        match p.density {
            Some(_) if !method.needs_density() => return na("density"),
            Some(d) if !(d > 0.0 && d <= 1.0) => return Err(CombineError::BadDensity(d)),
            None if method.needs_density() => return Err(CombineError::MissingDensity(method)),
            _ => {}
        }
        if p.majority_sign_method.is_some() && !method.uses_sign() {
            return na("majority_sign_method");
        }
        if p.seed.is_some() && !method.is_random() {
            return na("seed");
        }
        if !method.is_svd() && p.svd_rank.is_some() {
            return na("svd_rank");
        }
        if !method.is_svd() && p.svd_clamp.is_some() {
            return na("svd_clamp");
        }
        if p.svd_rank == Some(0) {
            return Err(CombineError::BadSvdRank);
        }
        if let Some(q) = p.svd_clamp.filter(|q| !(0.0..=1.0).contains(q)) {
            return Err(CombineError::BadClamp(q));
        }
        Ok(Spec {
            method,
            density: p.density,
            sign: p.majority_sign_method.unwrap_or_default(),
            seed: p.seed.unwrap_or(0),
            svd_rank: p.svd_rank,
            svd_clamp: p.svd_clamp,
        })
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// The parameters that apply to the type (with their defaults), for provenance.
    pub fn params(&self) -> Value {
        let mut m = Map::new();
        if let Some(d) = self.density {
            m.insert("density".into(), d.into());
        }
        if self.method.uses_sign() {
            m.insert("majority_sign_method".into(), self.sign.name().into());
        }
        if self.method.is_random() {
            m.insert("seed".into(), self.seed.into());
            m.insert("rng".into(), "loradex SplitMix64 (does not reproduce PyTorch's random stream)".into());
        }
        if let Some(r) = self.svd_rank {
            m.insert("svd_rank".into(), r.into());
        }
        if let Some(q) = self.svd_clamp {
            m.insert("svd_clamp".into(), q.into());
        }
        Value::Object(m)
    }
}

/// One adapter to combine: its PEFT files and its weight.
pub struct Input<'a> {
    /// How errors name it (a ref or a path).
    pub name: &'a str,
    pub config_bytes: &'a [u8],
    pub weights_bytes: &'a [u8],
    pub weight: f64,
}

/// The new adapter's PEFT files.
#[derive(Debug)]
pub struct Combined {
    pub config_bytes: Vec<u8>,
    pub weights_bytes: Vec<u8>,
    /// The type actually applied (`linear` for a single input, as in PEFT).
    pub method: Method,
    pub rank: usize,
    pub modules: usize,
}

/// One module's factors in one input.
struct Factors {
    /// The module path as this input's keys spell it (without `base_model.model.`).
    peft_name: String,
    a: Mat,
    b: Mat,
    scale: f64,
}

struct Parsed<'a> {
    input: &'a Input<'a>,
    raw: Map<String, Value>,
    /// PEFT's "adapter rank": `r`, or the largest `rank_pattern` value if larger.
    max_rank: usize,
    modules: BTreeMap<String, Factors>,
}

fn parse<'a>(input: &'a Input<'a>, arch: Option<Arch>) -> Result<Parsed<'a>> {
    let unsupported = |detail: String| CombineError::Unsupported { input: input.name.to_string(), detail };
    let config = LoraConfig::parse(input.config_bytes)?;
    let raw = match serde_json::from_slice(input.config_bytes).map_err(|e| Error::json(peft::CONFIG_FILE, e))? {
        Value::Object(o) => o,
        _ => return Err(unsupported(format!("{} is not a JSON object", peft::CONFIG_FILE)).into()),
    };
    if raw.get("use_dora").is_some_and(|v| v == &Value::Bool(true)) {
        return Err(unsupported("DoRA adapters cannot be combined (add_weighted_adapter combines lora_A/lora_B only)".into()).into());
    }
    if !config.modules_to_save.is_empty() {
        return Err(unsupported(format!(
            "saves whole modules (modules_to_save: {}): PEFT's add_weighted_adapter gives the combined adapter the base \
             model's copies of them, not the trained ones, so loradex refuses rather than drop them",
            config.modules_to_save.join(", ")
        ))
        .into());
    }
    let max_rank = raw
        .get("rank_pattern")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.values().filter_map(Value::as_u64))
        .fold(config.r, |a, r| a.max(r as usize));
    let view = SafeView::parse(input.weights_bytes, peft::WEIGHTS_FILE)?;
    let mut a_side: BTreeMap<String, (String, Mat)> = BTreeMap::new();
    let mut b_side: BTreeMap<String, Mat> = BTreeMap::new();
    for (key, info) in &view.tensors {
        let kind = peft::classify_key(key, &config.modules_to_save)?;
        let (KeyKind::LoraA(m) | KeyKind::LoraB(m)) = &kind else {
            return Err(unsupported(format!("{key}: only lora_A/lora_B tensors can be combined")).into());
        };
        let &[rows, cols] = info.shape.as_slice() else {
            return Err(Error::TensorMismatch { tensor: key.clone(), detail: format!("shape {:?} is not a matrix", info.shape) });
        };
        let data: Vec<f64> = view.to_f32(key, peft::WEIGHTS_FILE)?.into_iter().map(f64::from).collect();
        if data.iter().any(|x| !x.is_finite()) {
            return Err(unsupported(format!("{key} holds non-finite values")).into());
        }
        let canonical = arch.map_or_else(|| m.clone(), |a| a.canonical(m));
        let mat = Mat::from_vec(rows, cols, data);
        match &kind {
            KeyKind::LoraA(_) => a_side.insert(canonical, (m.clone(), mat)).is_none(),
            _ => b_side.insert(canonical, mat).is_none(),
        }
        .then_some(())
        .ok_or_else(|| unsupported(format!("{key}: a second tensor for the same module")))?;
    }
    let mut modules = BTreeMap::new();
    for (canonical, (peft_name, a)) in a_side {
        let b = b_side.remove(&canonical).ok_or_else(|| Error::TensorMismatch { tensor: peft_name.clone(), detail: "lora_A without lora_B".into() })?;
        if a.rows == 0 || b.cols != a.rows {
            let detail = format!("lora_A {}x{} and lora_B {}x{} are not [r, in] and [out, r]", a.rows, a.cols, b.rows, b.cols);
            return Err(Error::TensorMismatch { tensor: peft_name, detail });
        }
        let scale = config.scale_for(&peft_name, a.rows);
        modules.insert(canonical, Factors { peft_name, a, b, scale });
    }
    if let Some(m) = b_side.keys().next() {
        return Err(Error::TensorMismatch { tensor: m.clone(), detail: "lora_B without lora_A".into() });
    }
    Ok(Parsed { input, raw, max_rank, modules })
}

/// Combines `inputs` as `spec` says. `arch` (the inputs' base architecture, when known)
/// matches modules that inputs spell differently (`encoder.…` and `bert.encoder.…`).
pub fn combine(arch: Option<Arch>, inputs: &[Input], spec: &Spec) -> Result<Combined> {
    if inputs.is_empty() {
        return Err(CombineError::NoInputs.into());
    }
    if let Some(i) = inputs.iter().find(|i| !i.weight.is_finite()) {
        return Err(CombineError::BadWeight { input: i.name.to_string(), weight: i.weight }.into());
    }
    let parsed = inputs.iter().map(|i| parse(i, arch)).collect::<Result<Vec<_>>>()?;
    // PEFT: "if there is only one adapter, we can only use linear merging"
    let method = if parsed.len() == 1 { Method::Linear } else { spec.method };
    let ranks: Vec<usize> = parsed.iter().map(|p| p.max_rank).collect();
    let new_rank = match method {
        Method::Cat => ranks.iter().sum(),
        m if m.is_svd() => spec.svd_rank.unwrap_or_else(|| ranks.iter().copied().max().unwrap_or(1)),
        _ => {
            if ranks.iter().any(|&r| r != ranks[0]) {
                return Err(CombineError::Peft(
                    "All adapters must have the same r value when using combination_type linear, ties, dare_ties or dare_linear.",
                )
                .into());
            }
            ranks[0]
        }
    };
    let targets = union_targets(&parsed)?;
    let names: BTreeSet<&String> = parsed.iter().flat_map(|p| p.modules.keys()).collect();
    let mut rng = Rng::new(spec.seed);
    let mut out = BTreeMap::new();
    for canonical in names {
        let present: Vec<(&Factors, f64, &str)> =
            parsed.iter().filter_map(|p| p.modules.get(canonical).map(|f| (f, p.input.weight, p.input.name))).collect();
        let (first, _, _) = present[0];
        let (d_out, d_in) = (first.b.rows, first.a.cols);
        if let Some((_, _, who)) = present.iter().find(|(f, _, _)| f.b.rows != d_out || f.a.cols != d_in) {
            let detail = format!("{who} has another shape than {} (not the same base?)", present[0].2);
            return Err(CombineError::Module { module: canonical.clone(), detail }.into());
        }
        let (a, b) = match method {
            Method::Cat => cat(&present, new_rank, d_in, d_out),
            m if m.is_svd() => svd_module(canonical, &present, m, spec, new_rank, &mut rng)?,
            m => factors_module(canonical, &present, m, spec, new_rank, &mut rng)?,
        };
        let key = |side: &str| format!("{}{}.{side}.weight", peft::KEY_PREFIX, first.peft_name);
        let f32s = |m: &Mat| m.data.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        out.insert(key("lora_A"), (vec![a.rows, a.cols], f32s(&a)));
        out.insert(key("lora_B"), (vec![b.rows, b.cols], f32s(&b)));
    }
    let mut raw = parsed[0].raw.clone();
    raw.insert("r".into(), new_rank.into());
    raw.insert("lora_alpha".into(), new_rank.into());
    raw.insert("target_modules".into(), targets);
    raw.insert("alpha_pattern".into(), Value::Object(Map::new()));
    raw.insert("rank_pattern".into(), Value::Object(Map::new()));
    raw.insert("use_rslora".into(), false.into());
    // as PEFT writes it: two-space indent, no final newline
    let config_bytes = serde_json::to_vec_pretty(&Value::Object(raw)).map_err(|e| Error::json(peft::CONFIG_FILE, e))?;
    Ok(Combined { config_bytes, weights_bytes: peft::safetensors::write_f32(&out), method, rank: new_rank, modules: out.len() / 2 })
}

/// PEFT's new `target_modules`: the union of lists (sorted, as PEFT saves a set), or the
/// regexes `(t₁)|(t₂)|…`; a mix is PEFT's error.
fn union_targets(parsed: &[Parsed]) -> Result<Value> {
    let all: Vec<&Value> = parsed.iter().map(|p| p.raw.get("target_modules").unwrap_or(&Value::Null)).collect();
    if all.iter().all(|v| v.is_string()) {
        let joined: Vec<String> = all.iter().map(|v| format!("({})", v.as_str().unwrap_or_default())).collect();
        return Ok(Value::from(joined.join("|")));
    }
    if all.iter().all(|v| v.is_array()) {
        let set: BTreeSet<&str> = all.iter().flat_map(|v| v.as_array().into_iter().flatten()).filter_map(Value::as_str).collect();
        return Ok(Value::from(set.into_iter().collect::<Vec<_>>()));
    }
    Err(CombineError::Peft(
        "all adapter configs should follow the same target modules type. Combining adapters with `target_modules` type being a mix of list/set and string is not supported.",
    )
    .into())
}

/// `cat`: weighted A blocks stacked, B blocks side by side, zero-padded to `new_rank`.
fn cat(present: &[(&Factors, f64, &str)], new_rank: usize, d_in: usize, d_out: usize) -> (Mat, Mat) {
    let (mut a, mut b) = (Mat::zeros(new_rank, d_in), Mat::zeros(d_out, new_rank));
    let mut row = 0;
    for (f, w, _) in present {
        let k = w * f.scale;
        for i in 0..f.a.rows {
            for j in 0..d_in {
                a.set(row + i, j, f.a.at(i, j) * k);
            }
            for o in 0..d_out {
                b.set(o, row + i, f.b.at(o, i));
            }
        }
        row += f.a.rows;
    }
    (a, b)
}

/// `linear`, `ties`, `dare_*`, `magnitude_prune`: A and B merged separately, with
/// `sign·√|w·s|` on A and `√|w·s|` on B.
fn factors_module(module: &str, present: &[(&Factors, f64, &str)], method: Method, spec: &Spec, new_rank: usize, rng: &mut Rng) -> Result<(Mat, Mat)> {
    if let Some((f, _, who)) = present.iter().find(|(f, _, _)| f.a.rows != new_rank) {
        let detail = format!("{who} has rank {} here, but {method} stacks factors of the new rank {new_rank}", f.a.rows);
        return Err(CombineError::Module { module: module.to_string(), detail }.into());
    }
    let how = method.merge().expect("not cat");
    let ws: Vec<f64> = present.iter().map(|(f, w, _)| w * f.scale).collect();
    let wa: Vec<f64> = ws.iter().map(|x| x.abs().sqrt() * if *x >= 0.0 { 1.0 } else { -1.0 }).collect();
    let wb: Vec<f64> = ws.iter().map(|x| x.abs().sqrt()).collect();
    let density = spec.density.unwrap_or(1.0);
    let a_in: Vec<&[f64]> = present.iter().map(|(f, _, _)| f.a.data.as_slice()).collect();
    let a = merge::merge(how, &a_in, &wa, density, spec.sign, rng);
    let b_in: Vec<&[f64]> = present.iter().map(|(f, _, _)| f.b.data.as_slice()).collect();
    let b = merge::merge(how, &b_in, &wb, density, spec.sign, rng);
    let (first, _, _) = present[0];
    Ok((Mat::from_vec(first.a.rows, first.a.cols, a), Mat::from_vec(first.b.rows, first.b.cols, b)))
}

/// The SVD types: merged deltas `sᵢBᵢAᵢ` (weights `wᵢ`), decomposed, truncated to
/// `new_rank`, optionally clamped. Plain `svd` decomposes the product of the stacked factors
/// (the same matrix) without forming it.
fn svd_module(module: &str, present: &[(&Factors, f64, &str)], method: Method, spec: &Spec, new_rank: usize, rng: &mut Rng) -> Result<(Mat, Mat)> {
    let (d_out, d_in) = (present[0].0.b.rows, present[0].0.a.cols);
    if new_rank > d_out.min(d_in) {
        let detail = format!("rank {new_rank} is more than this {d_out}x{d_in} module's SVD has");
        return Err(CombineError::Module { module: module.to_string(), detail }.into());
    }
    let not_converged = |_| CombineError::Svd(module.to_string());
    let dec = if method == Method::Svd {
        // Σ wᵢsᵢBᵢAᵢ as one factored product: the inputs stacked, as `cat` stacks them
        let total: usize = present.iter().map(|(f, _, _)| f.a.rows).sum();
        let (q, p) = cat(present, total, d_in, d_out);
        svd::svd_of_product(&p, &q).map_err(not_converged)?
    } else {
        let deltas: Vec<Vec<f64>> = present.iter().map(|(f, _, _)| f.b.matmul(&f.a).data.iter().map(|x| x * f.scale).collect()).collect();
        let refs: Vec<&[f64]> = deltas.iter().map(Vec::as_slice).collect();
        let ws: Vec<f64> = present.iter().map(|(_, w, _)| *w).collect();
        let merged = merge::merge(method.merge().expect("svd types merge"), &refs, &ws, spec.density.unwrap_or(1.0), spec.sign, rng);
        svd::svd(&Mat::from_vec(d_out, d_in, merged)).map_err(not_converged)?
    };
    // B = U·diag(S), A = Vᵀ over the first new_rank triplets (zero past the matrix's rank)
    let (mut a, mut b) = (Mat::zeros(new_rank, d_in), Mat::zeros(d_out, new_rank));
    for j in 0..new_rank.min(dec.s.len()) {
        for o in 0..d_out {
            b.set(o, j, dec.u.at(o, j) * dec.s[j]);
        }
        for i in 0..d_in {
            a.set(j, i, dec.v.at(i, j));
        }
    }
    if let Some(q) = spec.svd_clamp {
        let mut dist: Vec<f64> = b.data.iter().chain(&a.data).copied().collect();
        dist.sort_by(f64::total_cmp);
        let hi = quantile(&dist, q);
        for x in a.data.iter_mut().chain(b.data.iter_mut()) {
            // torch.clamp(x, -hi, hi): max first, then min
            *x = x.max(-hi).min(hi);
        }
    }
    Ok((a, b))
}

/// `torch.quantile` of sorted values: linear interpolation between the closest ranks.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (pos - lo as f64) * (sorted[hi] - sorted[lo])
}
