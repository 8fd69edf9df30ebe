//! The decoder forward's row-wise steps over `[n, w]` token rows: RMSNorm, the query and key
//! heads' norms and rotary embedding, the gated activation, residual adds and biases. Each runs
//! in parallel from `PAR_MIN_ROWS` rows, and a step whose output a quantized matrix reads next
//! also makes that output's 8-bit blocks (`quant::quantize_row`) row by row in the same pass:
//! a parallel region of its own for them cost a barrier and about 5 us per matrix call (16
//! streams of SmolLM2, four calls a layer). Every element is computed alike whether a row runs
//! alone or beside others. Owns no weights, caches or matrices.

use super::llama::MlpAct;
use super::quant::{quantize_row, Q8, QK};
use rayon::prelude::*;

/// The fewest token rows for which the forward's row-wise steps (norms, rotary, the gated
/// activation) run in parallel. Serial, they left the second thread idle long enough to fall
/// asleep between products, and waking it cost more than the step (perf, 16 streams: the
/// second thread off the CPU a fifth of the time).
pub(super) const PAR_MIN_ROWS: usize = 4;

/// `n` rows' 8-bit blocks, to be filled by a row-wise step: where some matrix of the model
/// reads 8-bit activations and the rows come in whole blocks.
pub(super) fn blocks_for(on: bool, n: usize, w: usize) -> Option<Vec<Q8>> {
    (on && w.is_multiple_of(QK)).then(|| vec![Q8::ZERO; n * w / QK])
}

crate::util::simd_dispatch! {
    /// `g = silu(g) · u`, element by element (SwiGLU's gate): thousands of exps a row, one
    /// vector of them at a time where the CPU has AVX2.
    fn silu_gate(g: &mut [f32], u: &[f32]) {
        let n = g.len().min(u.len());
        let (g, u) = (&mut g[..n], &u[..n]);
        for i in 0..n {
            g[i] = super::llama::silu(g[i]) * u[i];
        }
    }
}

/// `g = act(g) · u` row by row (`w` wide), then `g`'s rows quantized into `q` where given.
pub(super) fn gate_rows(g: &mut [f32], u: &[f32], w: usize, act: MlpAct, q: Option<&mut [Q8]>) {
    let gate = |(gr, ur): (&mut [f32], &[f32])| match act {
        MlpAct::Silu => silu_gate(gr, ur),
        other => gr.iter_mut().zip(ur).for_each(|(a, b)| *a = other.apply(*a) * b),
    };
    zip_rows(g, u, w, q, gate);
}

/// Adds a bias to each of its width's rows of `y`.
pub(super) fn add_bias(y: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        y.chunks_mut(b.len()).for_each(|r| r.iter_mut().zip(b).for_each(|(y, b)| *y += b));
    }
}

/// RMSNorm of each `h`-wide row of `x` into `out`: `w · x / sqrt(mean(x²) + eps)`; `out`'s rows
/// quantized into `q` where given.
pub(super) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32], h: usize, q: Option<&mut [Q8]>) {
    zip_rows(out, x, h, q, |(o, xr)| norm_into(xr, w, eps, o));
}

/// One row of `rms_norm_rows`.
fn norm_into(xr: &[f32], w: &[f32], eps: f32, o: &mut [f32]) {
    let r = rms_scale(xr, eps);
    for ((o, v), wv) in o.iter_mut().zip(xr).zip(w) {
        *o = wv * (v * r);
    }
}

/// `rms_norm_rows` of one row into itself, the same bits.
fn norm_row(xr: &mut [f32], w: &[f32], eps: f32) {
    let r = rms_scale(xr, eps);
    xr.iter_mut().zip(w).for_each(|(v, wv)| *v = wv * (*v * r));
}

/// `1 / sqrt(mean(x²) + eps)` of one row.
fn rms_scale(xr: &[f32], eps: f32) -> f32 {
    let ms = xr.iter().map(|v| v * v).sum::<f32>() / xr.len() as f32;
    1.0 / (ms + eps).sqrt()
}

/// `f` over the matching `w`-wide rows of `a` and `b`, each row of `a` then quantized into its
/// blocks of `q` where given; in parallel from `PAR_MIN_ROWS` rows.
fn zip_rows(a: &mut [f32], b: &[f32], w: usize, q: Option<&mut [Q8]>, f: impl Fn((&mut [f32], &[f32])) + Send + Sync) {
    let par = a.len() / w >= PAR_MIN_ROWS;
    match q {
        None if par => a.par_chunks_mut(w).zip(b.par_chunks(w)).for_each(f),
        None => a.chunks_mut(w).zip(b.chunks(w)).for_each(f),
        Some(q) => {
            let one = |((ar, br), qr): ((&mut [f32], &[f32]), &mut [Q8])| {
                f((&mut *ar, br));
                quantize_row(ar, qr);
            };
            let nb = w / QK;
            if par {
                a.par_chunks_mut(w).zip(b.par_chunks(w)).zip(q.par_chunks_mut(nb)).for_each(one);
            } else {
                a.chunks_mut(w).zip(b.chunks(w)).zip(q.chunks_mut(nb)).for_each(one);
            }
        }
    }
}

/// `out` = `x` normalized by `w` row by row, or `x` itself where a layer has no such norm;
/// quantized into `q` where given.
pub(super) fn pre_norm(x: &[f32], w: Option<&[f32]>, eps: f32, out: &mut [f32], h: usize, q: Option<&mut [Q8]>) {
    zip_rows(out, x, h, q, |(o, xr)| pre_norm_row(xr, w, eps, o));
}

/// One row of `pre_norm`.
fn pre_norm_row(xr: &[f32], w: Option<&[f32]>, eps: f32, o: &mut [f32]) {
    match w {
        Some(w) => norm_into(xr, w, eps, o),
        None => o.copy_from_slice(xr),
    }
}

/// What follows a sublayer's residual add in the same pass: the next sublayer's pre-norm
/// (`pre_norm`'s weights, or none) into `out`, quantized into `q` where given.
pub(super) struct NextNorm<'a> {
    pub w: Option<&'a [f32]>,
    pub out: &'a mut [f32],
    pub q: Option<&'a mut [Q8]>,
}

/// The seam between two sublayers, in one pass over the `h`-wide rows: each row of `b` (the
/// sublayer's output) normalized by `after` where a layer norms its sublayers' outputs (Gemma
/// 2 and 3, OLMo 2), added into `x` (times `r`: Granite's residual multiplier), then, where
/// `next` is given, `x`'s row pre-normed for the next sublayer. The same elements as those steps
/// one after another: the add ran serially between two parallel regions before.
pub(super) fn residual_rows(x: &mut [f32], b: &mut [f32], after: Option<&[f32]>, r: Option<f32>, eps: f32, h: usize, next: Option<NextNorm>) {
    let n = x.len() / h;
    type Row<'a> = (&'a mut [f32], &'a mut [f32], Option<&'a mut [f32]>, Option<&'a mut [Q8]>);
    let (w, mut outs, mut qs): (_, Vec<Option<&mut [f32]>>, Vec<Option<&mut [Q8]>>) = match next {
        Some(NextNorm { w, out, q }) => (w, out.chunks_mut(h).map(Some).collect(), q.map_or_else(|| (0..n).map(|_| None).collect(), |q| q.chunks_mut(h / QK).map(Some).collect())),
        None => (None, (0..n).map(|_| None).collect(), (0..n).map(|_| None).collect()),
    };
    let rows: Vec<Row> = x.chunks_mut(h).zip(b.chunks_mut(h)).zip(outs.drain(..)).zip(qs.drain(..)).map(|(((x, b), o), q)| (x, b, o, q)).collect();
    let one = |(xr, br, out, q): Row| {
        if let Some(a) = after {
            norm_row(br, a, eps);
        }
        match r {
            Some(r) => xr.iter_mut().zip(&*br).for_each(|(a, b)| *a += b * r),
            None => xr.iter_mut().zip(&*br).for_each(|(a, b)| *a += b),
        }
        if let Some(o) = out {
            pre_norm_row(xr, w, eps, o);
            if let Some(q) = q {
                quantize_row(o, q);
            }
        }
    };
    if n >= PAR_MIN_ROWS {
        rows.into_par_iter().for_each(one);
    } else {
        rows.into_iter().for_each(one);
    }
}

/// Where a layer turns its query and key heads before attention.
pub(super) struct Rotary<'a> {
    pub hd: usize,
    /// Dimensions turned per head: `2·half` (all of them, or a partial rotary's share).
    pub half: usize,
    /// `half` values a token.
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// Each token's query row (`q`, `[n, qw]`) and key row (`k`, `[n, kw]`): normalized by
/// `norms` (each `len`-wide run by its own weights: per head, or OLMo 2's whole row), then
/// turned by `rope`; one parallel pass over the tokens for both (one per step and tensor
/// before, four regions a layer with query/key norms).
pub(super) fn qk_rows(q: &mut [f32], k: &mut [f32], n: usize, norms: Option<(&[f32], &[f32])>, eps: f32, rope: Option<&Rotary>) {
    if n == 0 || (norms.is_none() && rope.is_none()) {
        return;
    }
    let (qw, kw) = (q.len() / n, k.len() / n);
    let one = |(t, (qr, kr)): (usize, (&mut [f32], &mut [f32]))| qk_row(qr, kr, t, norms, eps, rope);
    if n >= PAR_MIN_ROWS {
        q.par_chunks_mut(qw).zip(k.par_chunks_mut(kw)).enumerate().for_each(one);
    } else {
        q.chunks_mut(qw).zip(k.chunks_mut(kw)).enumerate().for_each(one);
    }
}

/// `qk_rows` for token `t`'s rows alone.
pub(super) fn qk_row(qr: &mut [f32], kr: &mut [f32], t: usize, norms: Option<(&[f32], &[f32])>, eps: f32, rope: Option<&Rotary>) {
    if let Some((qn, kn)) = norms {
        qr.chunks_mut(qn.len()).for_each(|r| norm_row(r, qn, eps));
        kr.chunks_mut(kn.len()).for_each(|r| norm_row(r, kn, eps));
    }
    if let Some(r) = rope {
        turn(qr, t, r);
        turn(kr, t, r);
    }
}

/// Rotary embedding (the rotate-half form of Hugging Face's Llama) of token `t`'s heads in `row`.
fn turn(row: &mut [f32], t: usize, r: &Rotary) {
    let (c, s) = (&r.cos[t * r.half..][..r.half], &r.sin[t * r.half..][..r.half]);
    for head in row.chunks_mut(r.hd) {
        let (a, b) = head[..2 * r.half].split_at_mut(r.half);
        for i in 0..r.half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * c[i] - x2 * s[i];
            b[i] = x2 * c[i] + x1 * s[i];
        }
    }
}
