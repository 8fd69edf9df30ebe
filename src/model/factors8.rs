//! LoRA factors in 8 bits, for serving many adapters beside a quantized base. A decode step
//! over rows on different adapters reads every row's own factors, and at rank 8 on SmolLM2's
//! seven projections that is 4.9 MB an adapter in half precision: with 32 adapters in a batch,
//! 157 MB a step, which the memory bus, not the kernels, bounds. In 8 bits with a scale a block
//! the same factors are 2.6 MB. Owns the 8-bit layout (`Factors8`), its rounding, and the
//! reference (portable) kernels that define its bits; the AVX2 builds live in `quant_avx` and
//! must give the same bits. Knows nothing of adapters or decoders: `lora` makes the copies and
//! `quant` calls the kernels.
//!
//! Layout:
//! - `A` (`[r, cols]`): each factor row in blocks of `A_BLOCK` values, one f32 scale a block
//!   (`a_d`, `[r, cols.div_ceil(A_BLOCK)]`), the last block of a row possibly short.
//! - `(s·B)ᵀ` (`[r, rows]`): blocked by 8 outputs as the half-precision copies are
//!   (`quant::block8`): each run of 8 outputs holds its `r` rows of 8 values, with one f32 scale
//!   a run (`bt_d`, `[rows.div_ceil(8)]`), the last run zero-padded.
//!
//! Each scale is the block's largest magnitude over 127 and each value its quotient rounded half
//! to even, so a value's error is at most half a step of its own block.

/// Values of a factor row sharing one scale.
pub const A_BLOCK: usize = 32;

/// What precision the CPU decoder reads LoRA factors in. Beside an f32 base they are read in
/// f32 (PEFT-exact); beside a quantized one, in 8 bits unless asked otherwise: the base's own
/// 8-bit activations make its outputs move as much under a relative change of 1e-4 in an
/// adapter's factors as under either rounding (`bench generate --parts factors` measures it),
/// and 8 bits halve the bytes a step reads for each adapter in the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactorDtype {
    /// Single precision: the factors as loaded (four times the bytes of `Int8`).
    F32,
    /// Half precision.
    F16,
    /// 8 bits with a scale a block: the default beside a quantized base.
    Int8,
}

impl std::str::FromStr for FactorDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(FactorDtype::F32),
            "f16" => Ok(FactorDtype::F16),
            "int8" => Ok(FactorDtype::Int8),
            _ => Err(format!("unknown LoRA factor precision {s:?} (f32, f16 or int8)")),
        }
    }
}

impl std::fmt::Display for FactorDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FactorDtype::F32 => "f32",
            FactorDtype::F16 => "f16",
            FactorDtype::Int8 => "int8",
        })
    }
}

/// A pair's `(A, (s·B)ᵀ)` in 8 bits (see the module's layout).
#[derive(Clone, Debug)]
pub struct Factors8 {
    pub a: Vec<i8>,
    pub a_d: Vec<f32>,
    pub bt: Vec<i8>,
    pub bt_d: Vec<f32>,
}

impl Factors8 {
    /// From `a` (`[r, cols]`) and `bt` (`[r, rows]`), both row-major f32.
    pub fn new(a: &[f32], bt: &[f32], r: usize) -> Factors8 {
        let cols = a.len() / r.max(1);
        let rows = bt.len() / r.max(1);
        let (mut qa, mut a_d) = (Vec::with_capacity(a.len()), Vec::with_capacity(r * cols.div_ceil(A_BLOCK)));
        for row in a.chunks(cols.max(1)).take(r) {
            for blk in row.chunks(A_BLOCK) {
                a_d.push(round_block(blk, &mut qa));
            }
        }
        let runs = rows.div_ceil(8);
        let (mut qb, mut bt_d) = (Vec::with_capacity(r * runs * 8), Vec::with_capacity(runs));
        let mut run = vec![0f32; r * 8];
        for g in 0..runs {
            run.fill(0.0);
            let width = (rows - g * 8).min(8);
            for j in 0..r {
                run[j * 8..][..width].copy_from_slice(&bt[j * rows + g * 8..][..width]);
            }
            bt_d.push(round_block(&run, &mut qb));
        }
        Factors8 { a: qa, a_d, bt: qb, bt_d }
    }
}

/// Appends `v` rounded to 8 bits to `out`; returns its scale.
fn round_block(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    out.extend(v.iter().map(|x| (x * id).round_ties_even().clamp(-127.0, 127.0) as i8));
    d
}

/// `out[i] = a_i · x` for every factor row `a_i` of `q` (`cols` values each, scales `d`), on
/// the CPU's best kernel. Every kernel gives `dot_rows_portable`'s bits.
pub fn dot_rows(q: &[i8], d: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
    let r = out.len();
    let nb = cols.div_ceil(A_BLOCK);
    assert!(q.len() >= r * cols && d.len() >= r * nb && x.len() >= cols, "an 8-bit factor of the wrong shape");
    #[cfg(target_arch = "x86_64")]
    if super::quant::has_avx2() {
        let mut j = 0;
        while j + 4 <= r {
            // SAFETY: AVX2, FMA and F16C were detected; the kernel asserts its bounds.
            unsafe { super::quant::avx::dot_i8_rows::<4>(&q[j * cols..], &d[j * nb..], cols, x, &mut out[j..]) };
            j += 4;
        }
        while j < r {
            // SAFETY: as above.
            unsafe { super::quant::avx::dot_i8_rows::<1>(&q[j * cols..], &d[j * nb..], cols, x, &mut out[j..]) };
            j += 1;
        }
        return;
    }
    dot_rows_portable(q, d, cols, x, out)
}

/// What defines `dot_rows`' bits, written as its eight lanes: each full block's 32 products
/// summed in four lane-wise multiply-adds, each block's sum added to the lanes' total times its
/// scale (fused), the lanes summed pairwise (`i + 4`, then `i + 2`, then `i + 1`), then the
/// short last block's values in order, times its scale, added fused.
#[allow(clippy::needless_range_loop)] // indices are the lanes
pub fn dot_rows_portable(q: &[i8], d: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
    let nb = cols.div_ceil(A_BLOCK);
    let full = cols / A_BLOCK;
    for (i, o) in out.iter_mut().enumerate() {
        let (q, d) = (&q[i * cols..][..cols], &d[i * nb..][..nb]);
        let mut tot = [0f32; 8];
        for b in 0..full {
            let mut acc = [0f32; 8];
            for k in 0..4 {
                for l in 0..8 {
                    let at = b * A_BLOCK + k * 8 + l;
                    acc[l] = (q[at] as f32).mul_add(x[at], acc[l]);
                }
            }
            for l in 0..8 {
                tot[l] = d[b].mul_add(acc[l], tot[l]);
            }
        }
        let mut s = lanes_sum(tot);
        if full < nb {
            let mut t = 0f32;
            for at in full * A_BLOCK..cols {
                t = (q[at] as f32).mul_add(x[at], t);
            }
            s = d[full].mul_add(t, s);
        }
        *o = s;
    }
}

/// The eight lanes summed as `hsum` sums a vector.
fn lanes_sum(v: [f32; 8]) -> f32 {
    let a = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    let b = [a[0] + a[2], a[1] + a[3]];
    b[0] + b[1]
}

/// `y += Σ_j h_j bt[j, o0..][..y.len()]` for an 8-bit blocked `(s·B)ᵀ` (`q`, scales `d`) of
/// rank `h.len()` (`o0` a multiple of 8). Every kernel gives `low_rank_portable`'s bits.
pub fn low_rank(h: &[f32], q: &[i8], d: &[f32], o0: usize, y: &mut [f32]) {
    let r = h.len();
    let runs = (o0 + y.len()).div_ceil(8);
    assert!(o0.is_multiple_of(8) && q.len() >= runs * r * 8 && d.len() >= runs, "an 8-bit factor of the wrong shape");
    #[cfg(target_arch = "x86_64")]
    if super::quant::has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected; the assert bounds every read.
        unsafe { super::quant::avx::low_rank_i8(h, q, d, o0, y) };
        return;
    }
    low_rank_portable(h, q, d, o0, y)
}

/// What defines `low_rank`'s bits: per output, the rank terms multiply-added in order from
/// zero, then that sum times the run's scale added to the output (fused).
pub fn low_rank_portable(h: &[f32], q: &[i8], d: &[f32], o0: usize, y: &mut [f32]) {
    let r = h.len();
    for (i, yv) in y.iter_mut().enumerate() {
        let (g, l) = ((o0 + i) / 8, (o0 + i) % 8);
        let mut acc = 0f32;
        for (j, hj) in h.iter().enumerate() {
            acc = hj.mul_add(q[g * r * 8 + j * 8 + l] as f32, acc);
        }
        *yv = d[g].mul_add(acc, *yv);
    }
}
