//! BERT + LoRA on the CPU by hand: the classification forward and the hand-differentiated
//! training step. The forward keeps exactly the activations the backward needs (none at
//! inference); the backward computes only gradients that reach a trainable tensor (none for a
//! frozen weight, none below the lowest LoRA module). Matrix products go straight to `gemm`
//! with strides (no transposed copies; accumulation in place), and elementwise work
//! (LayerNorm, softmax, GELU and their derivatives) is one vectorized pass per row. It computes
//! what candle's autograd over the differentiable forward computes, dropout masks included (a
//! test checks every gradient against it); it exists because that path ran at 0.46x of PEFT's
//! step time. Owns only this arithmetic: it reads the frozen weights and the adapters' tensors
//! and returns logits or gradients; it never writes a tensor, and knows nothing of the
//! optimizer or the store.

use crate::error::{Error, Result};
use crate::model::bert::{Bert, Head, HeadAct, Layer};
use crate::model::lora::{dropout_mask, mixed_lora_host, LoraLinear, LoraPair, Routing};
use crate::util::Rng;
use candle_core::{Layout, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::collections::HashMap;

/// A batch's mean cross-entropy and its gradients: per LoRA module `(dA, dB)` in PEFT layout
/// (`[r, in]`, `[out, r]`), and `(dW, db)` for the classification head when it is trained.
pub struct Grads {
    pub loss: f64,
    /// Seconds spent in the forward and in the backward.
    pub forward_s: f64,
    pub backward_s: f64,
    pub lora: HashMap<String, (Vec<f32>, Vec<f32>)>,
    pub head: Option<(Vec<f32>, Vec<f32>)>,
    /// `(dW, db)` of the head's inner layer (RoBERTa's `classifier.dense`, DistilBERT's
    /// `pre_classifier`) when it is trained.
    pub head_pre: Option<(Vec<f32>, Vec<f32>)>,
}

/// Whether this path can run `bert`: CPU tensors (every activation a config may name is
/// implemented here; `bert::Config::validate` refuses the rest).
pub fn supported(_bert: &Bert, device: &candle_core::Device) -> bool {
    device.is_cpu()
}

// ---------------------------------------------------------------- matrix products

/// A row-major matrix operand: element `(i, j)` is at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
struct Op {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

fn rows(a: &[f32], ld: usize) -> Op {
    Op { ptr: a.as_ptr(), rs: ld as isize, cs: 1 }
}
/// The transpose of a row-major matrix with leading dimension `ld`.
fn trans(a: &[f32], ld: usize) -> Op {
    Op { ptr: a.as_ptr(), rs: 1, cs: ld as isize }
}

/// `c[m, n] (row stride ldc) = (acc ? c : 0) + beta * a[m, k] b[k, n]`.
///
/// # Safety
/// Every element the operands address must lie in live allocations, and `c`'s elements must
/// not be written by anyone else during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(m: usize, n: usize, k: usize, c: *mut f32, ldc: usize, a: Op, b: Op, beta: f32, acc: bool, par: Parallelism) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for i in 0..m {
                std::ptr::write_bytes(c.add(i * ldc), 0, n);
            }
        }
        return;
    }
    gemm::gemm(m, n, k, c, 1, ldc as isize, acc, a.ptr, a.cs, a.rs, b.ptr, b.cs, b.rs, 1.0, beta, false, false, false, par);
}

/// The highest offset (exclusive) an operand of `r x c` elements reaches.
fn reach(o: Op, r: usize, c: usize) -> usize {
    ((r as isize - 1) * o.rs + (c as isize - 1) * o.cs + 1) as usize
}

/// Safe `gemm_raw` over slices: each operand comes with the slice it was built from (by `rows`
/// or `trans`), and must lie inside it.
#[allow(clippy::too_many_arguments)]
fn mm(m: usize, n: usize, k: usize, c: &mut [f32], a: (Op, &[f32]), b: (Op, &[f32]), beta: f32, acc: bool) {
    if m == 0 || n == 0 || k == 0 {
        if !acc {
            c[..m * n].fill(0.0);
        }
        return;
    }
    assert!(c.len() >= m * n, "gemm: output too small");
    assert!(std::ptr::eq(a.0.ptr, a.1.as_ptr()) && reach(a.0, m, k) <= a.1.len(), "gemm: lhs out of bounds");
    assert!(std::ptr::eq(b.0.ptr, b.1.as_ptr()) && reach(b.0, k, n) <= b.1.len(), "gemm: rhs out of bounds");
    // rank-sized (skinny) products run 4x slower split across threads than on one
    let par = if m.min(n).min(k) < 16 { Parallelism::None } else { threads() };
    // SAFETY: bounds checked above; `c` is borrowed mutably, so no one else writes it.
    unsafe { gemm_raw(m, n, k, c.as_mut_ptr(), n, a.0, b.0, beta, acc, par) }
}

fn threads() -> Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `x W^T` for row-major `x [m, in]` and a PyTorch-layout weight `W [out, in]`.
fn lin(x: &[f32], w: &[f32], m: usize, inp: usize, out: usize, c: &mut [f32], acc: bool) {
    mm(m, out, inp, c, (rows(x, inp), x), (trans(w, inp), w), 1.0, acc)
}

/// A raw pointer shared by tasks that write disjoint elements through it.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: only used where each task writes a disjoint set of elements (see the call sites).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
#[derive(Clone, Copy)]
struct Shared(*const f32);
// SAFETY: read-only while shared.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

// ---------------------------------------------------------------- frozen weights

/// A CPU tensor's f32 elements (contiguous), borrowed through its storage guard.
fn host<'a>(g: &'a Storage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let Storage::Cpu(c) = g else { return Err(Error::Model(format!("{what}: not a CPU tensor"))) };
    if !l.is_contiguous() {
        return Err(Error::Model(format!("{what}: not contiguous")));
    }
    let s = c.as_slice::<f32>()?;
    s.get(l.start_offset()..l.start_offset() + l.shape().elem_count()).ok_or_else(|| Error::Model(format!("{what}: layout out of bounds")))
}

/// One linear layer: frozen weight and bias, and the LoRA pair being trained on it if any.
struct Lin<'a> {
    w: &'a [f32],
    b: &'a [f32],
    inp: usize,
    out: usize,
    /// The pair every row uses (training, or a batch on one adapter).
    lora: Option<Lo>,
    /// Each sequence's own pair (an inference batch mixing adapters).
    mixed: Option<Vec<Option<&'a LoraPair>>>,
    /// Each sequence's DoRA scale `g` (inference), where any row's adapter is DoRA.
    dora: Option<Vec<Option<Vec<f32>>>>,
}

struct Lo {
    name: String,
    a: Vec<f32>,
    b: Vec<f32>,
    r: usize,
    s: f32,
}

/// What the backward of one LoRA module needs: the (dropped-out) input and `h = x_d A^T`.
struct LoSave {
    xd: Vec<f32>,
    mask: Option<Vec<f32>>,
    h: Vec<f32>,
}

/// Training (dropout, activations kept for the backward) or inference.
struct Mode<'r> {
    train: bool,
    p: f32,
    rng: &'r mut Rng,
}

impl Lin<'_> {
    /// `y = x W^T + b (+ s (drop(x) A^T) B^T)` for `x [m, in]`. The dropout mask is drawn for
    /// `m * stride` rows (the full batch) and row `i` of `x` takes mask row `i * stride`: with
    /// `stride = s`, `x` holds only each sequence's first row.
    fn fwd(&self, x: &[f32], m: usize, mode: &mut Mode, stride: usize) -> Result<(Vec<f32>, Option<LoSave>)> {
        let mut y = vec![0f32; m * self.out];
        y.par_chunks_mut(self.out).with_min_len(16).for_each(|r| r.copy_from_slice(self.b));
        lin(x, self.w, m, self.inp, self.out, &mut y, true);
        if let Some(per_seq) = &self.mixed {
            let d = mixed_lora_host(x, per_seq, m / per_seq.len().max(1), self.inp, self.out)?;
            add_into(&mut y, &d);
            self.dora_rows(&mut y, m);
            return Ok((y, None));
        }
        let Some(lo) = &self.lora else { return Ok((y, None)) };
        let (xd, mask): (std::borrow::Cow<[f32]>, _) = if mode.train && mode.p > 0.0 {
            let full = dropout_mask(mode.p, m * stride * self.inp, mode.rng);
            let mask = if stride == 1 { full } else { every_nth_row(&full, self.inp, stride) };
            (x.iter().zip(&mask).map(|(a, b)| a * b).collect(), Some(mask))
        } else {
            (x.into(), None)
        };
        let mut h = vec![0f32; m * lo.r];
        lin(&xd, &lo.a, m, self.inp, lo.r, &mut h, false);
        mm(m, self.out, lo.r, &mut y, (rows(&h, lo.r), &h), (trans(&lo.b, lo.r), &lo.b), lo.s, true);
        self.dora_rows(&mut y, m);
        // inference keeps nothing for a backward
        let save = mode.train.then(|| LoSave { xd: xd.into_owned(), mask, h });
        Ok((y, save))
    }

    /// DoRA rows: `y = g ⊙ (y - b) + b` for each of the `m` rows whose sequence has a scale.
    fn dora_rows(&self, y: &mut [f32], m: usize) {
        let Some(per_seq) = &self.dora else { return };
        let per = m / per_seq.len().max(1);
        for (r, row) in y.chunks_mut(self.out).enumerate() {
            if let Some(g) = per_seq.get(r / per.max(1)).and_then(Option::as_ref) {
                for ((v, g), b) in row.iter_mut().zip(g).zip(self.b) {
                    *v = g * (*v - b) + b;
                }
            }
        }
    }

    /// Backward for `dy [m, out]`: the LoRA gradients (into `grads`) and, when `dx` is given,
    /// `dx (+)= dy W (+ s (dy B) A ⊙ mask)` (accumulating when `acc`).
    fn bwd(&self, dy: &[f32], m: usize, save: Option<&LoSave>, dx: Option<(&mut [f32], bool)>, grads: &mut HashMap<String, (Vec<f32>, Vec<f32>)>) {
        let mut t = None;
        if let (Some(lo), Some(sv)) = (&self.lora, save) {
            // dB = s dy^T h  [out, r];  t = dy B  [m, r];  dA = s t^T x_d  [r, in]
            let mut db = vec![0f32; self.out * lo.r];
            let mut tv = vec![0f32; m * lo.r];
            // two independent single-threaded products, one per thread
            rayon::join(
                || mm(self.out, lo.r, m, &mut db, (trans(dy, self.out), dy), (rows(&sv.h, lo.r), &sv.h), lo.s, false),
                || mm(m, lo.r, self.out, &mut tv, (rows(dy, self.out), dy), (rows(&lo.b, lo.r), &lo.b), 1.0, false),
            );
            let mut da = vec![0f32; lo.r * self.inp];
            mm(lo.r, self.inp, m, &mut da, (trans(&tv, lo.r), &tv), (rows(&sv.xd, self.inp), &sv.xd), lo.s, false);
            grads.insert(lo.name.clone(), (da, db));
            t = Some(tv);
        }
        let Some((dx, acc)) = dx else { return };
        mm(m, self.inp, self.out, dx, (rows(dy, self.out), dy), (rows(self.w, self.inp), self.w), 1.0, acc);
        if let (Some(lo), Some(tv), Some(sv)) = (&self.lora, t, save) {
            match &sv.mask {
                None => mm(m, self.inp, lo.r, dx, (rows(&tv, lo.r), &tv), (rows(&lo.a, self.inp), &lo.a), lo.s, true),
                Some(mask) => {
                    let mut tmp = vec![0f32; m * self.inp];
                    mm(m, self.inp, lo.r, &mut tmp, (rows(&tv, lo.r), &tv), (rows(&lo.a, self.inp), &lo.a), lo.s, false);
                    dx.par_chunks_mut(4096).zip(tmp.par_chunks(4096)).zip(mask.par_chunks(4096)).for_each(|((d, t), k)| {
                        for ((d, t), k) in d.iter_mut().zip(t).zip(k) {
                            *d += t * k;
                        }
                    });
                }
            }
        }
    }
}

// ---------------------------------------------------------------- elementwise kernels

/// Rows per task in the row kernels.
const ROWS: usize = 16;

/// LayerNorm over rows of `h`: returns `(y, x̂, 1/σ)`.
fn ln_fwd(x: &[f32], w: &[f32], b: &[f32], eps: f32, h: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let m = x.len() / h;
    let mut y = vec![0f32; x.len()];
    let mut xh = vec![0f32; x.len()];
    let mut rstd = vec![0f32; m];
    y.par_chunks_mut(h * ROWS)
        .zip(xh.par_chunks_mut(h * ROWS))
        .zip(rstd.par_chunks_mut(ROWS))
        .zip(x.par_chunks(h * ROWS))
        .for_each(|(((y, xh), rs), x)| simd::ln_rows(x, w, b, eps, y, xh, rs));
    (y, xh, rstd)
}

/// LayerNorm backward (frozen scale and shift).
fn ln_bwd(dy: &[f32], xh: &[f32], rstd: &[f32], w: &[f32], h: usize) -> Vec<f32> {
    let mut dx = vec![0f32; dy.len()];
    dx.par_chunks_mut(h * ROWS)
        .zip(dy.par_chunks(h * ROWS))
        .zip(xh.par_chunks(h * ROWS))
        .zip(rstd.par_chunks(ROWS))
        .for_each(|(((dx, dy), xh), r)| simd::ln_bwd_rows(dy, xh, r, w, dx));
    dx
}

#[derive(Clone, Copy, PartialEq)]
enum Act {
    GeluErf,
    GeluTanh,
    Relu,
}

const CHUNK: usize = 8192;

/// The activation of `z`, in place semantics: returns `act(z)`.
fn act_fwd(act: Act, z: &[f32]) -> Vec<f32> {
    let mut a = vec![0f32; z.len()];
    a.par_chunks_mut(CHUNK).zip(z.par_chunks(CHUNK)).for_each(|(a, z)| simd::act_fwd(act, z, a));
    a
}

/// `dz = da ⊙ act'(z)`, written over `da`.
fn act_bwd(act: Act, z: &[f32], da: &mut [f32]) {
    da.par_chunks_mut(CHUNK).zip(z.par_chunks(CHUNK)).for_each(|(d, z)| simd::act_bwd(act, z, d));
}

/// The branch-free approximations the activation kernels use (public so tests can bound them).
pub use simd::{erf, exp_neg};

/// Vectorizable kernels (activations, softmax rows), compiled for AVX2 + FMA when the CPU has
/// them. Reductions keep 8 explicit lanes, so both variants add in the same order.
mod simd {
    use super::Act;
    const SQRT_1_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    const K_TANH: f32 = 0.797_884_6; // sqrt(2/pi)

    /// erf(x) as a rational function of x on [-4, 4] (±1 beyond, in f32), branch-free so it
    /// vectorizes; the approximation Eigen and XLA use for f32. Max error ~1e-7 (tested).
    #[inline(always)]
    pub fn erf(x: f32) -> f32 {
        let x = x.clamp(-4.0, 4.0);
        let x2 = x * x;
        let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
        p = x2 * p + -2.101_024e-6;
        p = x2 * p + -5.692_506_4e-5;
        p = x2 * p + -7.349_906_3e-4;
        p = x2 * p + -2.954_6e-3;
        p = x2 * p + -1.609_603_3e-2;
        p *= x;
        let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
        q = x2 * q + -1.682_827e-3;
        q = x2 * q + -7.373_329e-3;
        q = x2 * q + -1.426_474e-2;
        p / q
    }

    /// e^x for x <= 0 (clamped at -87): 2^n times a degree-6 polynomial on |r| <= ln2/2.
    #[inline(always)]
    pub fn exp_neg(x: f32) -> f32 {
        let x = x.clamp(-87.0, 0.0);
        let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
        let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
        let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        // 2^n from the bits of n + 2^23 + 127 (exact: n is a whole number in -125..=0), not
        // `n as i32`, whose saturating conversion kept every loop over this function scalar
        let biased = (n + (8_388_608.0 + 127.0)).to_bits().wrapping_sub(0x4B00_0000);
        p * f32::from_bits(biased << 23)
    }

    /// tanh(u) = 1 - 2 / (e^{2u} + 1), from `exp_neg` on -2|u|.
    #[inline(always)]
    fn tanh(u: f32) -> f32 {
        let e = exp_neg(-2.0 * u.abs());
        let t = (1.0 - e) / (1.0 + e);
        t.copysign(u)
    }

    // Kernels use plain index loops over equal-length slices: iterator adapters such as
    // `Zip::fold` may stay out of line, compiled without the AVX2 features.
    crate::util::simd_dispatch! {
        /// `a = act(z)`.
        pub fn act_fwd(act: Act, z: &[f32], a: &mut [f32]) {
            let n = z.len().min(a.len());
            let (z, a) = (&z[..n], &mut a[..n]);
            match act {
                Act::GeluErf => {
                    for i in 0..n {
                        a[i] = 0.5 * z[i] * (1.0 + erf(z[i] * SQRT_1_2));
                    }
                }
                Act::GeluTanh => {
                    for i in 0..n {
                        let x = z[i];
                        a[i] = 0.5 * x * (1.0 + tanh(K_TANH * (x + 0.044715 * x * x * x)));
                    }
                }
                Act::Relu => {
                    for i in 0..n {
                        a[i] = z[i].max(0.0);
                    }
                }
            }
        }
    }

    crate::util::simd_dispatch! {
        /// `d *= act'(z)`.
        pub fn act_bwd(act: Act, z: &[f32], d: &mut [f32]) {
            let n = z.len().min(d.len());
            let (z, d) = (&z[..n], &mut d[..n]);
            match act {
                Act::GeluErf => {
                    for i in 0..n {
                        let x = z[i];
                        d[i] *= 0.5 * (1.0 + erf(x * SQRT_1_2)) + x * INV_SQRT_2PI * exp_neg(-0.5 * x * x);
                    }
                }
                Act::GeluTanh => {
                    for i in 0..n {
                        let x = z[i];
                        let t = tanh(K_TANH * (x + 0.044715 * x * x * x));
                        d[i] *= 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K_TANH * (1.0 + 3.0 * 0.044715 * x * x);
                    }
                }
                Act::Relu => {
                    for i in 0..n {
                        d[i] = if z[i] > 0.0 { d[i] } else { 0.0 };
                    }
                }
            }
        }
    }

    crate::util::simd_dispatch! {
        /// Each row of `p` (length `bias.len()`): `softmax(row + bias)`, in place.
        pub fn softmax_rows(p: &mut [f32], bias: &[f32]) {
            let n = bias.len();
            for row in p.chunks_exact_mut(n) {
                let mut mx = [f32::NEG_INFINITY; 8];
                for i in 0..n {
                    row[i] += bias[i];
                    mx[i & 7] = mx[i & 7].max(row[i]);
                }
                let mx = mx.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
                let mut acc = [0f32; 8];
                for i in 0..n {
                    row[i] = exp_neg(row[i] - mx);
                    acc[i & 7] += row[i];
                }
                let inv = 1.0 / acc.iter().sum::<f32>();
                for v in row.iter_mut() {
                    *v *= inv;
                }
            }
        }
    }

    crate::util::simd_dispatch! {
        /// Softmax backward per row of `n`: `d = p ⊙ (d - Σ d ⊙ p)`, in place over `d`.
        pub fn softmax_bwd_rows(d: &mut [f32], p: &[f32], n: usize) {
            for (d, p) in d.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
                let mut acc = [0f32; 8];
                for i in 0..n {
                    acc[i & 7] += d[i] * p[i];
                }
                let dot: f32 = acc.iter().sum();
                for i in 0..n {
                    d[i] = p[i] * (d[i] - dot);
                }
            }
        }
    }

    crate::util::simd_dispatch! {
        /// LayerNorm rows of `n`: `y = x̂ w + b` with `x̂ = (x - mean) / σ`; keeps `x̂`, `1/σ`.
        pub fn ln_rows(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32], xh: &mut [f32], rstd: &mut [f32]) {
            let n = w.len();
            let (w, b) = (&w[..n], &b[..n]);
            for (((x, y), xh), rs) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)).zip(xh.chunks_exact_mut(n)).zip(rstd.iter_mut()) {
                let mut acc = [0f32; 8];
                for i in 0..n {
                    acc[i & 7] += x[i];
                }
                let mean = acc.iter().sum::<f32>() / n as f32;
                let mut acc = [0f32; 8];
                for i in 0..n {
                    let c = x[i] - mean;
                    acc[i & 7] += c * c;
                }
                let r = 1.0 / (acc.iter().sum::<f32>() / n as f32 + eps).sqrt();
                *rs = r;
                for i in 0..n {
                    let v = (x[i] - mean) * r;
                    xh[i] = v;
                    y[i] = v * w[i] + b[i];
                }
            }
        }
    }

    crate::util::simd_dispatch! {
        /// LayerNorm backward rows of `n` (frozen w, b): `dx = (g - mean(g) - x̂ mean(g x̂)) / σ`,
        /// `g = dy w`.
        pub fn ln_bwd_rows(dy: &[f32], xh: &[f32], rstd: &[f32], w: &[f32], dx: &mut [f32]) {
            let n = w.len();
            let w = &w[..n];
            for (((dy, xh), r), dx) in dy.chunks_exact(n).zip(xh.chunks_exact(n)).zip(rstd).zip(dx.chunks_exact_mut(n)) {
                let (mut sg, mut sgx) = ([0f32; 8], [0f32; 8]);
                for i in 0..n {
                    let g = dy[i] * w[i];
                    sg[i & 7] += g;
                    sgx[i & 7] += g * xh[i];
                }
                let mg = sg.iter().sum::<f32>() / n as f32;
                let mgx = sgx.iter().sum::<f32>() / n as f32;
                for i in 0..n {
                    dx[i] = (dy[i] * w[i] - mg - xh[i] * mgx) * r;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- attention

/// Multi-head attention over `b` sequences of `s` keys, with `sq` queries per sequence: all
/// `s` positions, or 1 (only `[CLS]`, in the last layer of a classifier).
struct Attn {
    b: usize,
    s: usize,
    sq: usize,
    nh: usize,
    dh: usize,
}

impl Attn {
    fn h(&self) -> usize {
        self.nh * self.dh
    }

    /// `ctx = softmax(scale q k^T + bias) v` per (sequence, head), for `q [b*sq, h]` and
    /// `k, v [b*s, h]`; returns `(ctx [b*sq, h], P [b, nh, sq, s])`.
    fn fwd(&self, q: &[f32], k: &[f32], v: &[f32], bias: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (s, sq, h, dh, nh) = (self.s, self.sq, self.h(), self.dh, self.nh);
        assert!(q.len() == self.b * sq * h && k.len() == self.b * s * h && v.len() == k.len() && bias.len() == self.b * s);
        let scale = 1.0 / (dh as f32).sqrt();
        let mut p = vec![0f32; self.b * nh * sq * s];
        let mut ctx = vec![0f32; self.b * sq * h];
        let out = SharedMut(ctx.as_mut_ptr());
        let (qp, kp, vp) = (Shared(q.as_ptr()), Shared(k.as_ptr()), Shared(v.as_ptr()));
        p.par_chunks_mut(sq * s).enumerate().for_each(|(task, pt)| {
            let (bi, hi) = (task / nh, task % nh);
            let (oq, ok) = (bi * sq * h + hi * dh, bi * s * h + hi * dh);
            let (out, qp, kp, vp) = (out, qp, kp, vp);
            // SAFETY: (asserted above) q and ctx are [b*sq, h], k and v [b*s, h]; this task
            // touches the [sq, dh] / [s, dh] blocks of sequence bi, head hi, inside them. Tasks
            // have distinct (bi, hi), so each writes only its own block of ctx (and chunk of p).
            unsafe {
                let qh = Op { ptr: qp.0.add(oq), rs: h as isize, cs: 1 };
                let kt = Op { ptr: kp.0.add(ok), rs: 1, cs: h as isize };
                gemm_raw(sq, s, dh, pt.as_mut_ptr(), s, qh, kt, scale, false, Parallelism::None);
            }
            simd::softmax_rows(pt, &bias[bi * s..][..s]);
            unsafe {
                let vh = Op { ptr: vp.0.add(ok), rs: h as isize, cs: 1 };
                gemm_raw(sq, dh, s, out.0.add(oq), h, Op { ptr: pt.as_ptr(), rs: s as isize, cs: 1 }, vh, 1.0, false, Parallelism::None);
            }
        });
        (ctx, p)
    }

    /// Backward from `dctx [b*sq, h]`: `(dq [b*sq, h], dk, dv [b*s, h])`, each when asked for.
    fn bwd(&self, q: &[f32], k: &[f32], v: &[f32], p: &[f32], dctx: &[f32], want: [bool; 3]) -> [Option<Vec<f32>>; 3] {
        let (s, sq, h, dh, nh) = (self.s, self.sq, self.h(), self.dh, self.nh);
        assert!(q.len() == self.b * sq * h && dctx.len() == q.len() && k.len() == self.b * s * h && v.len() == k.len());
        assert!(p.len() == self.b * nh * sq * s);
        let scale = 1.0 / (dh as f32).sqrt();
        let rows = [sq, s, s];
        let mut outs: [Option<Vec<f32>>; 3] = std::array::from_fn(|i| want[i].then(|| vec![0f32; self.b * rows[i] * h]));
        let ptrs: [Option<SharedMut>; 3] = std::array::from_fn(|i| outs[i].as_mut().map(|o| SharedMut(o.as_mut_ptr())));
        let (qp, kp, vp, dp) = (Shared(q.as_ptr()), Shared(k.as_ptr()), Shared(v.as_ptr()), Shared(dctx.as_ptr()));
        p.par_chunks(sq * s).enumerate().for_each(|(task, pt)| {
            let (bi, hi) = (task / nh, task % nh);
            let (oq, ok) = (bi * sq * h + hi * dh, bi * s * h + hi * dh);
            let (qp, kp, vp, dp, ptrs) = (qp, kp, vp, dp, ptrs);
            // SAFETY: as in `fwd`: blocks of distinct (bi, hi) are disjoint; `ds` is local.
            let blk = |x: Shared, o: usize| Op { ptr: unsafe { x.0.add(o) }, rs: h as isize, cs: 1 };
            let blk_t = |x: Shared, o: usize| Op { ptr: unsafe { x.0.add(o) }, rs: 1, cs: h as isize };
            let mut ds = vec![0f32; sq * s];
            unsafe {
                // dP = dctx_h v_h^T  [sq, s]
                gemm_raw(sq, s, dh, ds.as_mut_ptr(), s, blk(dp, oq), blk_t(vp, ok), 1.0, false, Parallelism::None);
                if let Some(dv) = ptrs[2] {
                    // dv_h = P^T dctx_h  [s, dh]
                    let pt_t = Op { ptr: pt.as_ptr(), rs: 1, cs: s as isize };
                    gemm_raw(s, dh, sq, dv.0.add(ok), h, pt_t, blk(dp, oq), 1.0, false, Parallelism::None);
                }
            }
            // dS = P ⊙ (dP - rowsum(dP ⊙ P))
            simd::softmax_bwd_rows(&mut ds, pt, s);
            unsafe {
                if let Some(dq) = ptrs[0] {
                    // dq_h = scale dS k_h  [sq, dh]
                    let dso = Op { ptr: ds.as_ptr(), rs: s as isize, cs: 1 };
                    gemm_raw(sq, dh, s, dq.0.add(oq), h, dso, blk(kp, ok), scale, false, Parallelism::None);
                }
                if let Some(dk) = ptrs[1] {
                    // dk_h = scale dS^T q_h  [s, dh]
                    let ds_t = Op { ptr: ds.as_ptr(), rs: 1, cs: s as isize };
                    gemm_raw(s, dh, sq, dk.0.add(ok), h, ds_t, blk(qp, oq), scale, false, Parallelism::None);
                }
            }
        });
        outs
    }
}

// ---------------------------------------------------------------- the step

struct LayerW<'a> {
    q: Lin<'a>,
    k: Lin<'a>,
    v: Lin<'a>,
    o: Lin<'a>,
    ln1: (&'a [f32], &'a [f32]),
    i: Lin<'a>,
    o2: Lin<'a>,
    ln2: (&'a [f32], &'a [f32]),
}

impl LayerW<'_> {
    fn has_lora(&self) -> bool {
        [&self.q, &self.k, &self.v, &self.o, &self.i, &self.o2].iter().any(|l| l.lora.is_some())
    }
}

/// Where each linear layer's LoRA comes from.
enum Source<'p> {
    /// Training: the pairs being trained, every row.
    Train(&'p HashMap<String, LoraPair>),
    /// Inference: each row's adapter.
    Route(&'p Routing),
}

/// The frozen tensors' slices in the order `frozen_tensors` listed them, handed out as layers
/// are built.
struct Slices<'a> {
    it: std::vec::IntoIter<&'a [f32]>,
    src: Source<'a>,
}

impl<'a> Slices<'a> {
    fn next(&mut self) -> &'a [f32] {
        self.it.next().expect("one slice per listed tensor")
    }

    /// A linear layer from its next two slices (weight, bias) and its LoRA pair if trained.
    fn lin(&mut self, l: &LoraLinear) -> Result<Lin<'a>> {
        let (w, b) = (self.next(), self.next());
        let (out, inp) = l.weight.dims2()?;
        if w.len() != out * inp || b.len() != out {
            return Err(Error::Model(format!("{}: bias does not match the weight's {out} outputs", l.name)));
        }
        let lo = |pr: &LoraPair| -> Result<Lo> {
            Ok(Lo { name: l.name.clone(), a: pr.a.flatten_all()?.to_vec1()?, b: pr.b.flatten_all()?.to_vec1()?, r: pr.rank(), s: pr.scale as f32 })
        };
        let (lora, mixed, dora) = match &self.src {
            Source::Train(pairs) => {
                if pairs.get(&l.name).is_some_and(|p| p.magnitude.is_some()) {
                    return Err(Error::Model(format!("{}: DoRA trains through autograd, not the hand-written step", l.name)));
                }
                (pairs.get(&l.name).map(lo).transpose()?, None, None)
            }
            Source::Route(routing) => {
                let per_seq = routing.row_pairs(&l.name);
                let dora: Vec<Option<Vec<f32>>> =
                    per_seq.iter().map(|p| Ok(p.map(|p| p.dora_scale_host(&l.weight)).transpose()?.flatten().map(|g| g.into_owned()))).collect::<Result<_>>()?;
                let dora = dora.iter().any(Option::is_some).then_some(dora);
                if dora.as_ref().is_some_and(|d| d.iter().flatten().any(|g| g.len() != out)) {
                    return Err(Error::Model(format!("{}: a DoRA magnitude does not match the layer's {out} outputs", l.name)));
                }
                if per_seq.iter().all(Option::is_none) {
                    (None, None, None)
                } else if routing.uniform().is_some() {
                    (per_seq[0].map(lo).transpose()?, None, dora)
                } else {
                    (None, Some(per_seq), dora)
                }
            }
        };
        Ok(Lin { w, b, inp, out, lora, mixed, dora })
    }
}

/// What one layer's forward keeps for its backward.
struct LayerSave {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    p: Vec<f32>,
    lo: [Option<LoSave>; 6],
    ln1: (Vec<f32>, Vec<f32>),
    z: Vec<f32>,
    ln2: (Vec<f32>, Vec<f32>),
}

/// The frozen tensors `Slices` hands out, in order: embeddings, layers, pooler.
fn frozen_tensors(bert: &Bert) -> Result<Vec<Tensor>> {
    let mut ts: Vec<Tensor> = vec![bert.word.clone(), bert.position.clone(), bert.token_type.clone(), bert.emb_norm.w.clone(), bert.emb_norm.b.clone()];
    let lin_tensors = |l: &LoraLinear, ts: &mut Vec<Tensor>| -> Result<()> {
        ts.push(l.weight.clone());
        ts.push(l.bias.clone().ok_or_else(|| Error::Model(format!("{}: linear without bias", l.name)))?);
        Ok(())
    };
    for l in &bert.layers {
        for x in [&l.query, &l.key, &l.value, &l.attn_out] {
            lin_tensors(x, &mut ts)?;
        }
        ts.extend([l.attn_norm.w.clone(), l.attn_norm.b.clone()]);
        lin_tensors(&l.intermediate, &mut ts)?;
        lin_tensors(&l.output, &mut ts)?;
        ts.extend([l.out_norm.w.clone(), l.out_norm.b.clone()]);
    }
    if let Some(pl) = &bert.pooler {
        lin_tensors(pl, &mut ts)?;
    }
    Ok(ts)
}

/// A BERT encoder over borrowed frozen weights, with each linear layer's LoRA resolved.
struct Model<'a> {
    act: Act,
    hd: usize,
    nh: usize,
    eps: f32,
    pos0: usize,
    emb: [&'a [f32]; 5],
    layers: Vec<LayerW<'a>>,
    pooler: Option<Lin<'a>>,
}

impl<'a> Model<'a> {
    /// Takes the slices of `frozen_tensors(bert)` from `sl`; `s` is the batch's sequence length.
    fn new(bert: &Bert, sl: &mut Slices<'a>, s: usize) -> Result<Model<'a>> {
        let cfg = &bert.cfg;
        let act = match cfg.hidden_act.as_str() {
            "gelu" => Act::GeluErf,
            "relu" => Act::Relu,
            "gelu_new" | "gelu_pytorch_tanh" => Act::GeluTanh,
            a => return Err(Error::Model(format!("hidden_act {a:?} is not supported"))),
        };
        let (hd, nh) = (cfg.hidden_size, cfg.num_attention_heads);
        if nh == 0 || !hd.is_multiple_of(nh) {
            return Err(Error::Model(format!("hidden size {hd} is not a multiple of {nh} attention heads")));
        }
        if s > cfg.max_position_embeddings {
            return Err(Error::Model(format!("sequence of {s} tokens exceeds {} positions", cfg.max_position_embeddings)));
        }
        let emb = [sl.next(), sl.next(), sl.next(), sl.next(), sl.next()];
        let mut layers = Vec::with_capacity(bert.layers.len());
        for l in &bert.layers {
            let l: &Layer = l;
            let (q, k, v, o) = (sl.lin(&l.query)?, sl.lin(&l.key)?, sl.lin(&l.value)?, sl.lin(&l.attn_out)?);
            let ln1 = (sl.next(), sl.next());
            let (i, o2) = (sl.lin(&l.intermediate)?, sl.lin(&l.output)?);
            let ln2 = (sl.next(), sl.next());
            layers.push(LayerW { q, k, v, o, ln1, i, o2, ln2 });
        }
        let pooler = match &bert.pooler {
            Some(pl) => Some(sl.lin(pl)?),
            None => None,
        };
        check_shapes(hd, &layers, pooler.as_ref(), emb)?;
        let pos0 = bert.position_offset;
        if emb[1].len() < (pos0 + s) * hd {
            return Err(Error::Model(format!("the position table has fewer than {} rows", pos0 + s)));
        }
        Ok(Model { act, hd, nh, eps: cfg.layer_norm_eps as f32, pos0, emb, layers, pooler })
    }

    fn attn(&self, li: usize, b: usize, s: usize) -> Attn {
        // the last layer computes only the [CLS] rows (all the pooler and the loss read)
        Attn { b, s, sq: if li + 1 == self.layers.len() { 1 } else { s }, nh: self.nh, dh: self.hd / self.nh }
    }

    /// Embeddings, every layer and the pooler: `([CLS] rows after the pooler, their input, the
    /// pooler's LoRA save, each layer's save)` (saves only in training).
    #[allow(clippy::type_complexity)]
    fn encode(&self, (ids, tids, mask): (&Tensor, &Tensor, &Tensor), mode: &mut Mode) -> Result<(Vec<f32>, Vec<f32>, Option<LoSave>, Vec<LayerSave>)> {
        let (b, s) = ids.dims2()?;
        let hd = self.hd;
        let [word, pos, tt, eln_w, eln_b] = self.emb;
        // embeddings (frozen, no gradient below them)
        let ids = ids.flatten_all()?.to_vec1::<u32>()?;
        let tids = tids.flatten_all()?.to_vec1::<u32>()?;
        let mask = mask.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        let mut x = vec![0f32; b * s * hd];
        for (t, row) in x.chunks_mut(hd).enumerate() {
            let (id, ty) = (ids[t] as usize, tids[t] as usize);
            let w = word.get(id * hd..(id + 1) * hd).ok_or_else(|| Error::Model(format!("token id {id} out of vocabulary")))?;
            let ty = tt.get(ty * hd..(ty + 1) * hd).ok_or_else(|| Error::Model(format!("token type {ty} out of range")))?;
            let ps = &pos[(self.pos0 + t % s) * hd..][..hd];
            for (((o, w), p), y) in row.iter_mut().zip(w).zip(ps).zip(ty) {
                *o = w + p + y;
            }
        }
        x = ln_fwd(&x, eln_w, eln_b, self.eps, hd).0;
        let bias: Vec<f32> = mask.iter().map(|v| (v - 1.0) * 1e9).collect();
        let mut saves: Vec<LayerSave> = Vec::with_capacity(if mode.train { self.layers.len() } else { 0 });
        for (li, lw) in self.layers.iter().enumerate() {
            let (x2, save) = layer_fwd(lw, &x, &self.attn(li, b, s), &bias, self.act, self.eps, mode)?;
            if mode.train {
                saves.push(save);
            }
            x = x2;
        }
        let cls = if self.layers.is_empty() { every_nth_row(&x, hd, s) } else { x };
        let (pooled, pool_save) = match &self.pooler {
            Some(pl) => {
                let (mut y, sv) = pl.fwd(&cls, b, mode, 1)?;
                y.iter_mut().for_each(|v| *v = v.tanh());
                (y, sv)
            }
            None => (cls.clone(), None),
        };
        Ok((pooled, cls, pool_save, saves))
    }
}

/// Classification logits per row for a batch whose rows may use different adapters (and so
/// heads): the inference forward of the CPU path, with each module's LoRA as one product pair
/// when the batch shares an adapter and the per-row kernel when it mixes them.
/// `ids`, `type_ids`: u32 `[b, s]`; `mask`: `[b, s]`.
pub fn classify(bert: &Bert, ids: &Tensor, type_ids: &Tensor, mask: &Tensor, routing: &Routing) -> Result<Vec<Vec<f32>>> {
    let (b, s) = ids.dims2()?;
    if routing.rows.len() != b {
        return Err(Error::Model(format!("routing for {} rows, batch of {b}", routing.rows.len())));
    }
    let ts = frozen_tensors(bert)?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let sl: Vec<&[f32]> = guards.iter().map(|(g, l)| host(g, l, "bert weight")).collect::<Result<_>>()?;
    let mut sl = Slices { it: sl.into_iter(), src: Source::Route(routing) };
    let model = Model::new(bert, &mut sl, s)?;
    let mut rng = Rng::new(0);
    let (pooled, _, _, _) = model.encode((ids, type_ids, mask), &mut Mode { train: false, p: 0.0, rng: &mut rng })?;
    let hd = model.hd;
    let mut out = vec![Vec::new(); b];
    for (choice, rows) in routing.groups() {
        let head = HostHead::new(&bert.head_for(choice.map(|i| routing.adapters[i].as_ref()))?, hd)?;
        for r in rows {
            out[r] = head.forward(&pooled[r * hd..][..hd]).1;
        }
    }
    Ok(out)
}

/// A classification head in host memory, shape-checked against hidden size `hd`.
struct HostHead {
    pre: Option<(Vec<f32>, Vec<f32>, HeadAct)>,
    w: Vec<f32>,
    b: Vec<f32>,
    n: usize,
    hd: usize,
}

impl HostHead {
    fn new(head: &Head, hd: usize) -> Result<HostHead> {
        let (n, h) = head.weight.dims2()?;
        if h != hd {
            return Err(Error::Model(format!("the classification head takes {h} inputs, the model gives {hd}")));
        }
        let w = head.weight.flatten_all()?.to_vec1::<f32>()?;
        let b = head.bias.flatten_all()?.to_vec1::<f32>()?;
        if b.len() != n {
            return Err(Error::Model("the classification head's bias does not match its weight".into()));
        }
        let pre = match &head.pre {
            Some((pw, pb, act)) => {
                let (pw, pb) = (pw.flatten_all()?.to_vec1::<f32>()?, pb.flatten_all()?.to_vec1::<f32>()?);
                if pw.len() != hd * hd || pb.len() != hd {
                    return Err(Error::Model(format!("the head's inner layer does not match hidden size {hd}")));
                }
                Some((pw, pb, *act))
            }
            None => None,
        };
        Ok(HostHead { pre, w, b, n, hd })
    }

    /// One row: `(the output layer's input, logits)`.
    fn forward(&self, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let hd = self.hd;
        let dot = |w: &[f32], x: &[f32]| w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
        let a = match &self.pre {
            Some((pw, pb, act)) => (0..hd).map(|j| act.apply(pb[j] + dot(&pw[j * hd..][..hd], x))).collect(),
            None => x.to_vec(),
        };
        let logits = (0..self.n).map(|j| self.b[j] + dot(&self.w[j * hd..][..hd], &a)).collect();
        (a, logits)
    }
}

/// Mean cross-entropy of `targets` and its gradients for the adapter's `pairs` (and the head's
/// inner and output layers where `head_trainable = (inner, output)` says), with LoRA dropout `p` drawn from `rng` in the autograd path's order.
#[allow(clippy::too_many_arguments)]
pub fn loss_and_grads(
    bert: &Bert,
    pairs: &HashMap<String, LoraPair>,
    head: &Head,
    head_trainable: (bool, bool),
    batch: &crate::model::Batch,
    targets: &[u32],
    p: f32,
    rng: &mut Rng,
) -> Result<Grads> {
    let (b, s) = batch.ids.dims2()?;
    if targets.len() != b {
        return Err(Error::Model(format!("{} targets for {b} rows", targets.len())));
    }
    let t_fwd = std::time::Instant::now();
    // every frozen tensor, read in place through its storage guard; the head last
    let mut ts = frozen_tensors(bert)?;
    ts.extend([head.weight.clone(), head.bias.clone()]);
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let sl: Vec<&[f32]> = guards.iter().map(|(g, l)| host(g, l, "bert weight")).collect::<Result<_>>()?;
    let mut sl = Slices { it: sl.into_iter(), src: Source::Train(pairs) };
    let model = Model::new(bert, &mut sl, s)?;
    let (hw, hb) = (sl.next(), sl.next());
    let hd = model.hd;
    let n_labels = head.weight.dims2()?.0;
    if hw.len() != n_labels * hd || hb.len() != n_labels {
        return Err(Error::Model(format!("the classification head does not match hidden size {hd}")));
    }
    // forward, keeping what the backward needs
    let mut mode = Mode { train: true, p, rng };
    let (pooled, _, pool_save, saves) = model.encode((&batch.ids, &batch.type_ids, &batch.mask), &mut mode)?;
    let (layers, pooler, act) = (&model.layers, &model.pooler, model.act);
    let attn = |li: usize| model.attn(li, b, s);
    // the head's inner layer (z = pooled Wpᵀ + bp, a = act(z)), then its output layer over a
    let pre = match &head.pre {
        Some((pw, pb, pact)) => {
            let (pw, pb) = (pw.flatten_all()?.to_vec1::<f32>()?, pb.flatten_all()?.to_vec1::<f32>()?);
            if pw.len() != hd * hd || pb.len() != hd {
                return Err(Error::Model(format!("the head's inner layer does not match hidden size {hd}")));
            }
            let mut z = vec![0f32; b * hd];
            for row in z.chunks_mut(hd) {
                row.copy_from_slice(&pb);
            }
            lin(&pooled, &pw, b, hd, hd, &mut z, true);
            let a: Vec<f32> = z.iter().map(|v| pact.apply(*v)).collect();
            Some((pw, z, a, *pact))
        }
        None => None,
    };
    let head_in: &[f32] = pre.as_ref().map_or(&pooled, |(_, _, a, _)| a);
    let mut logits = vec![0f32; b * n_labels];
    for row in logits.chunks_mut(n_labels) {
        row.copy_from_slice(hb);
    }
    lin(head_in, hw, b, hd, n_labels, &mut logits, true);

    // cross-entropy and dlogits = (softmax - onehot) / b
    let mut loss = 0f64;
    let mut dlog = vec![0f32; b * n_labels];
    for ((row, d), &t) in logits.chunks(n_labels).zip(dlog.chunks_mut(n_labels)).zip(targets) {
        let t = t as usize;
        if t >= n_labels {
            return Err(Error::Model(format!("target {t} out of {n_labels} labels")));
        }
        let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|v| (v - mx).exp()).sum();
        let lse = sum.ln();
        loss -= (row[t] - mx - lse) as f64;
        for (j, (d, v)) in d.iter_mut().zip(row).enumerate() {
            *d = ((v - mx - lse).exp() - if j == t { 1.0 } else { 0.0 }) / b as f32;
        }
    }
    loss /= b as f64;

    // backward
    let forward_s = t_fwd.elapsed().as_secs_f64();
    let t_back = std::time::Instant::now();
    let mut grads = HashMap::new();
    // dW = dyᵀ x and db = Σ dy of a linear layer with input x [b, k] and output gradient dy [b, n]
    let wgrad = |dy: &[f32], x: &[f32], n: usize, k: usize| {
        let mut dw = vec![0f32; n * k];
        mm(n, k, b, &mut dw, (trans(dy, n), dy), (rows(x, k), x), 1.0, false);
        let mut db = vec![0f32; n];
        for row in dy.chunks(n) {
            db.iter_mut().zip(row).for_each(|(a, v)| *a += v);
        }
        (dw, db)
    };
    let head_grads = head_trainable.1.then(|| wgrad(&dlog, head_in, n_labels, hd));
    // the lowest layer whose LoRA modules need a gradient: nothing below it is differentiated
    let lowest = layers.iter().position(|l| l.has_lora());
    let pool_lora = pooler.as_ref().is_some_and(|p| p.lora.is_some());
    let pre_trained = head_trainable.0 && pre.is_some();
    let done = |grads, head_pre| Grads { loss, forward_s, backward_s: t_back.elapsed().as_secs_f64(), lora: grads, head: head_grads.clone(), head_pre };
    if lowest.is_none() && !pool_lora && !pre_trained {
        return Ok(done(grads, None));
    }
    let mut dpool = vec![0f32; b * hd];
    mm(b, hd, n_labels, &mut dpool, (rows(&dlog, n_labels), &dlog), (rows(hw, hd), hw), 1.0, false);
    let mut head_pre = None;
    if let Some((pw, z, a, pact)) = &pre {
        // through the inner layer: dz = da · act'(z), dWp = dzᵀ pooled, dpooled = dz Wp
        let dz: Vec<f32> = dpool.iter().zip(a).zip(z).map(|((d, y), z)| d * pact.grad(*y, *z)).collect();
        if head_trainable.0 {
            head_pre = Some(wgrad(&dz, &pooled, hd, hd));
        }
        dpool.iter_mut().for_each(|v| *v = 0.0);
        mm(b, hd, hd, &mut dpool, (rows(&dz, hd), &dz), (rows(pw, hd), pw), 1.0, false);
    }
    if lowest.is_none() && !pool_lora {
        return Ok(done(grads, head_pre));
    }
    let dcls = match &pooler {
        Some(pl) => {
            dpool.iter_mut().zip(&pooled).for_each(|(d, y)| *d *= 1.0 - y * y);
            let mut dc = vec![0f32; b * hd];
            pl.bwd(&dpool, b, pool_save.as_ref(), lowest.is_some().then_some((&mut dc[..], false)), &mut grads);
            dc
        }
        None => dpool,
    };
    let Some(lowest) = lowest else { return Ok(done(grads, head_pre)) };
    // the last layer's output is its [CLS] rows: dcls is its gradient
    let mut dx = dcls;
    for li in (lowest..layers.len()).rev() {
        match layer_bwd(&layers[li], &saves[li], &attn(li), &dx, act, li > lowest, &mut grads) {
            Some(d) => dx = d,
            None => break,
        }
    }
    Ok(done(grads, head_pre))
}

/// Every frozen tensor and LoRA pair has the shape the arithmetic assumes (a malformed base is
/// an error here, as it is in the candle forward, not a panic in a kernel).
fn check_shapes(hd: usize, layers: &[LayerW], pooler: Option<&Lin>, [word, pos, tt, eln_w, eln_b]: [&[f32]; 5]) -> Result<()> {
    let bad = |what: &str| Err(Error::Model(format!("{what} does not match hidden size {hd}")));
    let lin_ok = |l: &Lin, inp: usize, out: usize| {
        l.inp == inp && l.out == out && l.lora.as_ref().is_none_or(|lo| lo.a.len() == lo.r * inp && lo.b.len() == out * lo.r)
    };
    if !word.len().is_multiple_of(hd) || !pos.len().is_multiple_of(hd) || !tt.len().is_multiple_of(hd) || eln_w.len() != hd || eln_b.len() != hd {
        return bad("an embedding table or the embedding LayerNorm");
    }
    for l in layers {
        let ffn = l.i.out;
        if ![&l.q, &l.k, &l.v, &l.o].iter().all(|x| lin_ok(x, hd, hd)) || !lin_ok(&l.i, hd, ffn) || !lin_ok(&l.o2, ffn, hd) {
            return bad("a layer's linear weight or LoRA pair");
        }
        if [l.ln1.0, l.ln1.1, l.ln2.0, l.ln2.1].iter().any(|x| x.len() != hd) {
            return bad("a layer's LayerNorm");
        }
    }
    if pooler.is_some_and(|p| !lin_ok(p, hd, hd)) {
        return bad("the pooler");
    }
    Ok(())
}

/// Rows `0, n, 2n, ...` of a row-major `[rows, h]` matrix.
fn every_nth_row(x: &[f32], h: usize, n: usize) -> Vec<f32> {
    x.chunks(h * n).flat_map(|c| c[..h].iter().copied()).collect()
}

fn add_into(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(CHUNK).zip(b.par_chunks(CHUNK)).for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// One encoder layer's forward for input `x [b*s, h]`: returns its output (`[b*sq, h]`: the
/// query rows) and what its backward needs.
#[allow(clippy::too_many_arguments)]
fn layer_fwd(lw: &LayerW, x: &[f32], at: &Attn, bias: &[f32], act: Act, eps: f32, mode: &mut Mode) -> Result<(Vec<f32>, LayerSave)> {
    let (b, s, sq, hd) = (at.b, at.s, at.sq, at.h());
    let (m, mq, stride) = (b * s, b * sq, s / sq);
    let first_rows;
    let xq: &[f32] = if sq == s {
        x
    } else {
        first_rows = every_nth_row(x, hd, s);
        &first_rows
    };
    // masks are drawn in module order q, k, v, attention output, intermediate, output
    let (q, sq_) = lw.q.fwd(xq, mq, mode, stride)?;
    let (k, sk) = lw.k.fwd(x, m, mode, 1)?;
    let (v, sv) = lw.v.fwd(x, m, mode, 1)?;
    let (ctx, pr) = at.fwd(&q, &k, &v, bias);
    let (mut a, so) = lw.o.fwd(&ctx, mq, mode, stride)?;
    drop(ctx);
    add_into(&mut a, xq);
    let (x1, xh1, r1) = ln_fwd(&a, lw.ln1.0, lw.ln1.1, eps, hd);
    drop(a);
    let (z, si) = lw.i.fwd(&x1, mq, mode, stride)?;
    let g = act_fwd(act, &z);
    let (mut o, so2) = lw.o2.fwd(&g, mq, mode, stride)?;
    drop(g);
    add_into(&mut o, &x1);
    let (x2, xh2, r2) = ln_fwd(&o, lw.ln2.0, lw.ln2.1, eps, hd);
    Ok((x2, LayerSave { q, k, v, p: pr, lo: [sq_, sk, sv, so, si, so2], ln1: (xh1, r1), z, ln2: (xh2, r2) }))
}

/// One encoder layer's backward from the gradient of its output `[b*sq, h]`: LoRA gradients
/// into `grads`, and the gradient of its input `[b*s, h]` when `need_in`.
fn layer_bwd(lw: &LayerW, sv: &LayerSave, at: &Attn, dx2: &[f32], act: Act, need_in: bool, grads: &mut HashMap<String, (Vec<f32>, Vec<f32>)>) -> Option<Vec<f32>> {
    let (b, s, sq, hd) = (at.b, at.s, at.sq, at.h());
    let (m, mq) = (b * s, b * sq);
    // x2 = LN2(o + x1); o = act(z) W2^T; z = x1 Wi^T
    let dr2 = ln_bwd(dx2, &sv.ln2.0, &sv.ln2.1, lw.ln2.0, hd);
    let mut dg = vec![0f32; mq * lw.o2.inp];
    lw.o2.bwd(&dr2, mq, sv.lo[5].as_ref(), Some((&mut dg, false)), grads);
    act_bwd(act, &sv.z, &mut dg);
    let mut dx1 = dr2;
    lw.i.bwd(&dg, mq, sv.lo[4].as_ref(), Some((&mut dx1, true)), grads);
    drop(dg);
    // x1 = LN1(ctx Wo^T + x)
    let dr1 = ln_bwd(&dx1, &sv.ln1.0, &sv.ln1.1, lw.ln1.0, hd);
    drop(dx1);
    let mut dctx = vec![0f32; mq * hd];
    lw.o.bwd(&dr1, mq, sv.lo[3].as_ref(), Some((&mut dctx, false)), grads);
    let want = [need_in || lw.q.lora.is_some(), need_in || lw.k.lora.is_some(), need_in || lw.v.lora.is_some()];
    let [dq, dk, dv] = at.bwd(&sv.q, &sv.k, &sv.v, &sv.p, &dctx, want);
    drop(dctx);
    // the query rows' input gradient: the residual plus the query projection's
    let mut dxq = dr1;
    if let Some(dq) = &dq {
        lw.q.bwd(dq, mq, sv.lo[0].as_ref(), need_in.then_some((&mut dxq[..], true)), grads);
    }
    if !need_in {
        for (l, d, save) in [(&lw.k, &dk, &sv.lo[1]), (&lw.v, &dv, &sv.lo[2])] {
            if let Some(d) = d {
                l.bwd(d, m, save.as_ref(), None, grads);
            }
        }
        return None;
    }
    let (dk, dv) = (dk.expect("wanted"), dv.expect("wanted"));
    let mut dx = if sq == s { std::mem::take(&mut dxq) } else { vec![0f32; m * hd] };
    lw.k.bwd(&dk, m, sv.lo[1].as_ref(), Some((&mut dx, true)), grads);
    lw.v.bwd(&dv, m, sv.lo[2].as_ref(), Some((&mut dx, true)), grads);
    if sq != s {
        for (row, d) in dx.chunks_mut(s * hd).zip(dxq.chunks(hd)) {
            row[..hd].iter_mut().zip(d).for_each(|(a, b)| *a += b);
        }
    }
    Some(dx)
}

