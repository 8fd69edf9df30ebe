//! The AVX-512 build of `attention`'s f16-cache kernel (`quant::avx::attend_f16`), with the
//! same bits. Each score's dot product keeps the AVX2 kernel's two 8-lane accumulators as the
//! halves of one 512-bit register, and its horizontal sum (halves, then 128-bit lanes, then
//! pairs, then the last two) becomes a transpose of 16 positions' accumulators, whose adds pair
//! the same lanes: 15 adds and 30 shuffles for 16 scores, where the AVX2 kernel spent about
//! seven instructions on each. The values pass runs every output of a head at once on 16-lane
//! registers, summing positions in order as the AVX2 kernel does. Owns only these kernels;
//! the softmax between the passes is `attention`'s, and the choice of kernel is too.

/// Whether this CPU runs `attend_f16` (AVX-512 F beside AVX2, FMA and F16C); asked once.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| std::is_x86_feature_detected!("avx512f") && super::quant::has_avx2())
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
pub use x86::attend_f16;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::model::attention::{softmax_in_place, Scores};
    use std::arch::x86_64::*;
    const PF_AHEAD: usize = 4;

    /// Lane `p` of the result is the sum of `v[p]`'s 16 lanes, added as `quant::avx::hsum`
    /// adds `hsum(lo + hi)` of a register whose low 8 lanes are `lo`: lane i with lane i + 8,
    /// then i with i + 4, i with i + 2, and the last pair. Float addition commutes exactly,
    /// so only which lanes pair at each level matters.
    #[inline(always)]
    unsafe fn sums16(v: &[__m512; 16]) -> __m512 {
        // level 1, two positions a register: 128-bit lanes [x0 x1 y0 y1] + [x2 x3 y2 y3]
        let l1: [__m512; 8] = std::array::from_fn(|a| {
            let (x, y) = (v[2 * a], v[2 * a + 1]);
            _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(x, y), _mm512_shuffle_f32x4::<0xEE>(x, y))
        });
        // level 2, four positions a register (position 4c + k in 128-bit lane k)
        let l2: [__m512; 4] = std::array::from_fn(|c| {
            let (x, y) = (l1[2 * c], l1[2 * c + 1]);
            _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(x, y), _mm512_shuffle_f32x4::<0xDD>(x, y))
        });
        // level 3, within each 128-bit lane k: positions 8e + k and 8e + 4 + k, two values each
        let l3: [__m512; 2] = std::array::from_fn(|e| {
            let (x, y) = (l2[2 * e], l2[2 * e + 1]);
            _mm512_add_ps(_mm512_shuffle_ps::<0x44>(x, y), _mm512_shuffle_ps::<0xEE>(x, y))
        });
        // level 4: lane 4k + j holds position k + 4j
        let t = _mm512_add_ps(_mm512_shuffle_ps::<0x88>(l3[0], l3[1]), _mm512_shuffle_ps::<0xDD>(l3[0], l3[1]));
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_permutexvar_ps(order, t)
    }

    /// 16 f16 values widened.
    #[inline(always)]
    unsafe fn wide(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }

    /// `quant::avx::attend_f16`, bit for bit: the `H` query heads in `q` (`[H, hd]`, `hd` a
    /// multiple of 16) over positions `0..s.len() / H` of `k` and `v` (rows `stride` apart,
    /// the head at columns `off..off + hd`); `s` is scratch for `H` rows of scores.
    ///
    /// # Safety
    /// `supported()`; every row read lies inside `k` and `v`; `q` and `out` hold `H · hd`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attend_f16<const H: usize>(q: &[f32], hd: usize, k: &[u16], v: &[u16], stride: usize, off: usize, scale: Scores, s: &mut [f32], out: &mut [f32]) {
        let np = s.len() / H;
        let zero = _mm512_setzero_ps();
        let mut part = [[zero; 16]; H];
        let mut j0 = 0;
        while j0 < np {
            let m = (np - j0).min(16);
            for (i, j) in (j0..j0 + m).enumerate() {
                let kr = k.as_ptr().add(j * stride + off);
                // as the AVX2 kernel: the value row starts for L2, keys ahead for L1 (hints:
                // wrapping_add never forms an out-of-bounds offset)
                let vr = v.as_ptr().wrapping_add(j * stride + off);
                let kn = kr.wrapping_add(PF_AHEAD * stride);
                let mut c = 0;
                while c < hd {
                    _mm_prefetch(vr.wrapping_add(c) as *const i8, _MM_HINT_T1);
                    _mm_prefetch(kn.wrapping_add(c) as *const i8, _MM_HINT_T0);
                    c += 32;
                }
                let acc = match hd / 16 {
                    4 => dots::<H, 4>(q, kr, hd),
                    8 => dots::<H, 8>(q, kr, hd),
                    c => dots_n::<H>(q, kr, hd, c),
                };
                for h in 0..H {
                    part[h][i] = acc[h];
                }
            }
            for p in part.iter_mut() {
                p[m..].fill(zero);
            }
            let mask: __mmask16 = if m == 16 { 0xFFFF } else { (1u16 << m) - 1 };
            for (h, p) in part.iter().enumerate() {
                let sc = _mm512_mul_ps(sums16(p), _mm512_set1_ps(scale.scale));
                _mm512_mask_storeu_ps(s.as_mut_ptr().add(h * np + j0), mask, sc);
            }
            j0 += 16;
        }
        for h in 0..H {
            softmax_in_place(&mut s[h * np..][..np], scale.cap);
        }
        // values: up to 64 outputs of every head a pass, positions summed in order
        let mut c = 0;
        while c + 64 <= hd {
            values::<H, 4>(s, v, np, stride, off + c, out, c, hd);
            c += 64;
        }
        match (hd - c) / 16 {
            1 => values::<H, 1>(s, v, np, stride, off + c, out, c, hd),
            2 => values::<H, 2>(s, v, np, stride, off + c, out, c, hd),
            3 => values::<H, 3>(s, v, np, stride, off + c, out, c, hd),
            _ => {}
        }
    }

    /// The `H` heads' accumulators for one key row of `16·C` values (unrolled: the common head
    /// dims, 64 and 128), dot products of the AVX2 kernel's two 8-lane runs in the halves.
    #[inline(always)]
    unsafe fn dots<const H: usize, const C: usize>(q: &[f32], kr: *const u16, hd: usize) -> [__m512; H] {
        let mut acc = [_mm512_setzero_ps(); H];
        for c in 0..C {
            let kk = wide(kr.add(16 * c));
            for (h, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(q.as_ptr().add(h * hd + 16 * c)), kk, *a);
            }
        }
        acc
    }

    /// `dots` for any number of 16-value chunks.
    #[inline(always)]
    unsafe fn dots_n<const H: usize>(q: &[f32], kr: *const u16, hd: usize, chunks: usize) -> [__m512; H] {
        let mut acc = [_mm512_setzero_ps(); H];
        for c in 0..chunks {
            let kk = wide(kr.add(16 * c));
            for (h, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(q.as_ptr().add(h * hd + 16 * c)), kk, *a);
            }
        }
        acc
    }

    /// `out[h·hd + c..][..16W] = Σ_j s[h·np + j] v[j·stride + col..][..16W]` for every head.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn values<const H: usize, const W: usize>(s: &[f32], v: &[u16], np: usize, stride: usize, col: usize, out: &mut [f32], c: usize, hd: usize) {
        let mut acc = [[_mm512_setzero_ps(); W]; H];
        for j in 0..np {
            let vr = v.as_ptr().add(j * stride + col);
            let vv: [__m512; W] = std::array::from_fn(|u| wide(vr.add(16 * u)));
            for (h, a) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*s.get_unchecked(h * np + j));
                for u in 0..W {
                    a[u] = _mm512_fmadd_ps(w, vv[u], a[u]);
                }
            }
        }
        for (h, a) in acc.iter().enumerate() {
            for (u, x) in a.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(h * hd + c + 16 * u), *x);
            }
        }
    }
}
