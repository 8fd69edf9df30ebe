//! Softmax attention of a token's query heads over one sequence's cached keys and values
//! (f32, or f16 widened exactly): the f32 and register-widening f16 kernels (in
//! `quant::avx`, beside the other AVX2 kernels, and `attend512`'s AVX-512 build), the choice
//! between them, the scratch path for other shapes, and the softmax they share. Every path gives each head the bits of `attend` over the same values in
//! f32, so outputs do not depend on the path or the batch. Owns no cache (`kv_cache` does) and
//! knows nothing of models.

use super::quant::{avx, dot_f32_portable, has_avx2};

/// How a query's dot products become scores before the softmax: times `scale`, then soft-capped
/// as `cap·tanh(s/cap)` where there is a cap (Gemma 2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    pub scale: f32,
    pub cap: Option<f32>,
}

impl Scores {
    /// Scaled, not capped.
    pub fn scaled(scale: f32) -> Scores {
        Scores { scale, cap: None }
    }
}

/// One layer's cached keys or values from the first attended position on, `[position][stride]`.
#[derive(Clone, Copy, Debug)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    /// f16 bits.
    F16(&'a [u16]),
}

impl KvRows<'_> {
    fn len(&self) -> usize {
        match self {
            KvRows::F32(v) => v.len(),
            KvRows::F16(v) => v.len(),
        }
    }
}

std::thread_local! {
    /// `attend_group`'s widened keys and values (reused: no allocation per call).
    static WIDE: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    /// `attend_group`'s scores for the register-widening kernel (reused likewise).
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The register-widening f16 kernels, which give the same bits: `attend_group` runs the widest
/// this CPU has unless a thread asks otherwise (`with_f16_kernel`, for tests and comparisons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F16Kernel {
    Avx2,
    Avx512,
}

std::thread_local! {
    static F16_KERNEL: std::cell::Cell<Option<F16Kernel>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with this thread's `attend_group` on `k`'s f16 kernel where it fits (AVX-512 only
/// where the CPU has it: otherwise AVX2 runs anyway).
pub fn with_f16_kernel<R>(k: F16Kernel, f: impl FnOnce() -> R) -> R {
    let before = F16_KERNEL.replace(Some(k));
    let r = f();
    F16_KERNEL.set(before);
    r
}

/// f16 bits to f32 (exact), `dst.len()` values.
pub fn widen_f16(src: &[u16], dst: &mut [f32]) {
    if has_avx2() {
        // SAFETY: AVX2 and F16C were detected; both slices are bounded by the zip inside.
        return unsafe { avx::widen_f16(src, dst) };
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_bits(*s).to_f32();
    }
}

/// Softmax attention of the query heads in `q` (`[heads, hd]`, heads that share one key/value
/// head) over positions `0..=hi` of `k` and `v`, whose rows hold that head at columns
/// `off..off + hd`; `out` is `[heads, hd]`. Each head's output is exactly `attend`'s over the same
/// values in f32. An f16 cache is read once per group, not once per head: with AVX2, `hd` a
/// multiple of 16 and up to 4 heads, each run of keys or values is widened in registers for all
/// heads (`avx::attend_f16`, or `attend512`'s build of it with AVX-512); otherwise its rows
/// are widened into a contiguous scratch that every head then reads from the CPU's cache.
#[allow(clippy::too_many_arguments)]
pub fn attend_group(q: &[f32], hd: usize, k: KvRows, v: KvRows, stride: usize, off: usize, hi: usize, scale: Scores, out: &mut [f32]) {
    let heads = q.len() / hd.max(1);
    assert!(hd > 0 && q.len() == heads * hd && out.len() == q.len() && off + hd <= stride && (hi + 1) * stride <= k.len().min(v.len()), "attention slices");
    match (k, v) {
        (KvRows::F32(k), KvRows::F32(v)) => {
            for (qh, o) in q.chunks(hd).zip(out.chunks_mut(hd)) {
                attend(qh, k, v, stride, off, hi, scale, o);
            }
        }
        (KvRows::F16(k16), KvRows::F16(v16)) if has_avx2() && hd.is_multiple_of(16) && (1..=4).contains(&heads) => {
            SCORES.with(|sc| {
                let s = &mut *sc.borrow_mut();
                s.clear();
                s.resize(heads * (hi + 1), 0.0);
                // SAFETY: AVX2, FMA and F16C were detected; the assert above bounds every row
                // read (positions 0..=hi, columns off..off + hd within a stride); s and out are sized.
                unsafe {
                    #[cfg(target_arch = "x86_64")]
                    if super::attend512::supported() && F16_KERNEL.get() != Some(F16Kernel::Avx2) {
                        use super::attend512::attend_f16 as wide;
                        return match heads {
                            1 => wide::<1>(q, hd, k16, v16, stride, off, scale, s, out),
                            2 => wide::<2>(q, hd, k16, v16, stride, off, scale, s, out),
                            3 => wide::<3>(q, hd, k16, v16, stride, off, scale, s, out),
                            _ => wide::<4>(q, hd, k16, v16, stride, off, scale, s, out),
                        };
                    }
                    match heads {
                        1 => avx::attend_f16::<1>(q, hd, k16, v16, stride, off, scale, s, out),
                        2 => avx::attend_f16::<2>(q, hd, k16, v16, stride, off, scale, s, out),
                        3 => avx::attend_f16::<3>(q, hd, k16, v16, stride, off, scale, s, out),
                        _ => avx::attend_f16::<4>(q, hd, k16, v16, stride, off, scale, s, out),
                    }
                }
            })
        }
        (k, v) => WIDE.with(|w| {
            let (kw, vw) = &mut *w.borrow_mut();
            let n = (hi + 1) * hd;
            kw.resize(n, 0.0);
            vw.resize(n, 0.0);
            for (rows, wide) in [(k, &mut *kw), (v, &mut *vw)] {
                for j in 0..=hi {
                    let dst = &mut wide[j * hd..][..hd];
                    match rows {
                        KvRows::F32(r) => dst.copy_from_slice(&r[j * stride + off..][..hd]),
                        KvRows::F16(r) => widen_f16(&r[j * stride + off..][..hd], dst),
                    }
                }
            }
            for (qh, o) in q.chunks(hd).zip(out.chunks_mut(hd)) {
                attend(qh, kw, vw, hd, 0, hi, scale, o);
            }
        }),
    }
}

/// Softmax attention of one query head `q` over cache positions `0..=hi`: position `j`'s key
/// and value are `k[j·stride + off..][..q.len()]` and likewise in `v`; writes the weighted sum of
/// values into `out`. One call per (token, head), with its loops inside one AVX2 function.
#[allow(clippy::too_many_arguments)]
pub fn attend(q: &[f32], k: &[f32], v: &[f32], stride: usize, off: usize, hi: usize, scale: Scores, out: &mut [f32]) {
    let hd = q.len();
    assert!(hi < k.len().div_ceil(stride.max(1)) && (hi * stride + off + hd) <= k.len().min(v.len()) && out.len() == hd, "attention slices");
    let mut s = vec![0f32; hi + 1];
    if has_avx2() {
        // SAFETY: AVX2 and FMA were detected; the assert above bounds every slice read.
        unsafe { avx::attend(q, k, v, stride, off, scale, &mut s, out) };
        return;
    }
    for (j, e) in s.iter_mut().enumerate() {
        *e = dot_f32_portable(q, &k[j * stride + off..][..hd]) * scale.scale;
    }
    softmax_in_place(&mut s, scale.cap);
    out.fill(0.0);
    for (j, e) in s.iter().enumerate() {
        for (o, x) in out.iter_mut().zip(&v[j * stride + off..][..hd]) {
            *o += e * x;
        }
    }
}

/// Softmax in place, after soft-capping each score where there is a cap; `exp` is the
/// polynomial `bert_cpu` uses (max error ~1e-7), which vectorizes where libm's is a call per
/// score.
#[inline(always)]
pub(crate) fn softmax_in_place(s: &mut [f32], cap: Option<f32>) {
    if let Some(c) = cap {
        s.iter_mut().for_each(|e| *e = super::llama::softcap(*e, c));
    }
    // The max and the sum run in 8 lanes: one running value each was a chain of dependent
    // instructions as long as the sequence, most of a decode step's attention (perf, 16 streams
    // of SmolLM2). The max is the same in any order; the sum's order is fixed here (lane i
    // takes every eighth value, then the lanes in pairs, then the tail), the same on every path.
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut runs = s.chunks_exact(8);
    for r in &mut runs {
        for i in 0..8 {
            lanes[i] = lanes[i].max(r[i]);
        }
    }
    let m = runs.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for e in s.iter_mut() {
        *e = super::bert_cpu::exp_neg(*e - m);
    }
    let mut lanes = [0f32; 8];
    let mut runs = s.chunks_exact(8);
    for r in &mut runs {
        for i in 0..8 {
            lanes[i] += r[i];
        }
    }
    let l = lanes;
    let sum = runs.remainder().iter().fold(((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7])), |a, &b| a + b);
    let inv = 1.0 / sum;
    s.iter_mut().for_each(|e| *e *= inv);
}

