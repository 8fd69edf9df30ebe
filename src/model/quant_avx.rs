//! The AVX2 + FMA + F16C builds of `quant`'s and `attention`'s kernels (row-at-a-time block dots, f32 and f16
//! dots, the fused low-rank add, one head's attention). Callers check the CPU first; nothing here
//! is reached without those features.

#[cfg(target_arch = "x86_64")]
pub use x86::*;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::{BlockFmt, Q8};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// `out[i] = w · xs[i]` for `i < g`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32_x4(w: &[f32], xs: &[&[f32]; 4], g: usize, out: &mut [f32; 4]) {
        let n = w.len();
        let n8 = n / 8 * 8;
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut k = 0;
        while k < n8 {
            let wv = _mm256_loadu_ps(w.as_ptr().add(k));
            for i in 0..4 {
                if i < g {
                    acc[i] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xs[i].as_ptr().add(k)), acc[i]);
                }
            }
            k += 8;
        }
        for i in 0..g {
            let mut s = hsum(acc[i]);
            for j in n8..n {
                s += w[j] * xs[i][j];
            }
            out[i] = s;
        }
    }

    /// `out[i] = w · xs[i]` for `i < g`, `w` a row of blocks: each block's integer dot product
    /// exact, scaled into an 8-lane accumulator.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q_x4(f: BlockFmt, w: &[u8], xs: &[&[Q8]; 4], g: usize, out: &mut [f32; 4]) {
        let nb = w.len() / f.bytes();
        let x: [*const Q8; 4] = std::array::from_fn(|i| xs[i].as_ptr());
        debug_assert!(xs.iter().all(|r| r.len() >= nb));
        macro_rules! go {
            ($fmt:ident) => {
                match g {
                    1 => rows::<1>(BlockFmt::$fmt, w.as_ptr(), nb, &x, out),
                    2 => rows::<2>(BlockFmt::$fmt, w.as_ptr(), nb, &x, out),
                    3 => rows::<3>(BlockFmt::$fmt, w.as_ptr(), nb, &x, out),
                    _ => rows::<4>(BlockFmt::$fmt, w.as_ptr(), nb, &x, out),
                }
            };
        }
        match f {
            BlockFmt::Q4_0 => go!(Q4_0),
            BlockFmt::Q4_1 => go!(Q4_1),
            BlockFmt::Q8_0 => go!(Q8_0),
        }
    }

    #[inline(always)]
    unsafe fn half(p: *const u8) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([*p, *p.add(1)]) as i32)))
    }

    /// The kernel for one format and `G` rows; `f` is a constant after inlining. Even and odd
    /// blocks go to two accumulators (two dependency chains), summed at the end: the same order
    /// for every `G`.
    #[inline(always)]
    unsafe fn rows<const G: usize>(f: BlockFmt, w: *const u8, nb: usize, x: &[*const Q8; 4], out: &mut [f32; 4]) {
        let (mut a0, mut a1) = ([_mm256_setzero_ps(); G], [_mm256_setzero_ps(); G]);
        let (mut m0, mut m1) = ([0f32; G], [0f32; G]);
        let mut b = 0;
        while b + 1 < nb {
            block::<G>(f, w, b, x, &mut a0, &mut m0);
            block::<G>(f, w, b + 1, x, &mut a1, &mut m1);
            b += 2;
        }
        if b < nb {
            block::<G>(f, w, b, x, &mut a0, &mut m0);
        }
        for i in 0..G {
            out[i] = hsum(_mm256_add_ps(a0[i], a1[i])) + (m0[i] + m1[i]);
        }
    }

    /// Block `b` of the weight row into `G` rows' accumulators.
    #[inline(always)]
    unsafe fn block<const G: usize>(f: BlockFmt, w: *const u8, b: usize, x: &[*const Q8; 4], acc: &mut [__m256; G], macc: &mut [f32; G]) {
        let ones = _mm256_set1_epi16(1);
        let m4 = _mm_set1_epi8(15);
        let blk = w.add(b * f.bytes());
        let d = half(blk);
        match f {
            BlockFmt::Q4_1 => {
                let m = half(blk.add(2));
                let raw = _mm_loadu_si128(blk.add(4) as *const __m128i);
                let wv = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
                for i in 0..G {
                    let xb = &*x[i].add(b);
                    let xv = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones);
                    acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(p), acc[i]);
                    macc[i] += m * xb.s;
                }
            }
            BlockFmt::Q4_0 | BlockFmt::Q8_0 => {
                let wv = if f == BlockFmt::Q4_0 {
                    let raw = _mm_loadu_si128(blk.add(2) as *const __m128i);
                    let lo = _mm_and_si128(raw, m4);
                    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
                    _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8))
                } else {
                    _mm256_loadu_si256(blk.add(2) as *const __m256i)
                };
                let aw = _mm256_sign_epi8(wv, wv);
                for i in 0..G {
                    let xb = &*x[i].add(b);
                    let xv = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv)), ones);
                    acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(p), acc[i]);
                }
            }
        }
    }

    /// `a · b` in two 8-lane FMA accumulators, summed in a fixed order.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        dot_inline(a.as_ptr(), b.as_ptr(), a.len().min(b.len()))
    }

    #[inline(always)]
    unsafe fn dot_inline(a: *const f32, b: *const f32, n: usize) -> f32 {
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut k = 0;
        while k + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(k)), _mm256_loadu_ps(b.add(k)), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(k + 8)), _mm256_loadu_ps(b.add(k + 8)), s1);
            k += 16;
        }
        if k + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(k)), _mm256_loadu_ps(b.add(k)), s0);
            k += 8;
        }
        let mut s = hsum(_mm256_add_ps(s0, s1));
        while k < n {
            s += *a.add(k) * *b.add(k);
            k += 1;
        }
        s
    }

    /// f16 bits to f32, 8 at a time.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn widen_f16(src: &[u16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i) as *const __m128i)));
            i += 8;
        }
        while i < n {
            dst[i] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(src[i] as i16)));
            i += 1;
        }
    }

    /// `H` query heads (`q` is `[H, hd]`, `hd` a multiple of 16) attending over one key/value
    /// head stored as f16 bits: position `j`'s key is `k[j·stride + off..][..hd]`, likewise `v`.
    /// Each 16 keys or values are widened in registers once for all `H` heads, so the cache is
    /// read once per group and never copied. Per head, the operations and their order are
    /// exactly `attend`'s over the widened values (widening is exact): the same bits. `s` holds
    /// `H` rows of `hi + 1` scores; `out` is `[H, hd]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attend_f16<const H: usize>(q: &[f32], hd: usize, k: &[u16], v: &[u16], stride: usize, off: usize, scale: crate::model::attention::Scores, s: &mut [f32], out: &mut [f32]) {
        let np = s.len() / H;
        let wide = |p: *const u16| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
        // scores: dot_inline's two accumulators (even and odd 8-lane runs), then its reduction
        for j in 0..np {
            let kr = k.as_ptr().add(j * stride + off);
            // the position's value row starts for L2 now, so the values pass below finds it
            // there; keys a few positions ahead start for L1 (prefetches are hints: an address
            // past the end is harmless, and wrapping_add never forms an out-of-bounds offset)
            let vr = v.as_ptr().wrapping_add(j * stride + off);
            let kn = kr.wrapping_add(4 * stride);
            let mut c = 0;
            while c < hd {
                _mm_prefetch(vr.wrapping_add(c) as *const i8, _MM_HINT_T1);
                _mm_prefetch(kn.wrapping_add(c) as *const i8, _MM_HINT_T0);
                c += 32;
            }
            let (mut s0, mut s1) = ([_mm256_setzero_ps(); H], [_mm256_setzero_ps(); H]);
            let mut c = 0;
            while c < hd {
                let (k0, k1) = (wide(kr.add(c)), wide(kr.add(c + 8)));
                for h in 0..H {
                    let qh = q.as_ptr().add(h * hd + c);
                    s0[h] = _mm256_fmadd_ps(_mm256_loadu_ps(qh), k0, s0[h]);
                    s1[h] = _mm256_fmadd_ps(_mm256_loadu_ps(qh.add(8)), k1, s1[h]);
                }
                c += 16;
            }
            for h in 0..H {
                s[h * np + j] = hsum(_mm256_add_ps(s0[h], s1[h])) * scale.scale;
            }
        }
        for h in 0..H {
            crate::model::attention::softmax_in_place(&mut s[h * np..][..np], scale.cap);
        }
        // values in passes of 16 outputs for every head; each output sums positions in order
        let mut c = 0;
        while c < hd {
            let (mut a0, mut a1) = ([_mm256_setzero_ps(); H], [_mm256_setzero_ps(); H]);
            for j in 0..np {
                let vr = v.as_ptr().add(j * stride + off + c);
                let (v0, v1) = (wide(vr), wide(vr.add(8)));
                for h in 0..H {
                    let w = _mm256_set1_ps(*s.get_unchecked(h * np + j));
                    a0[h] = _mm256_fmadd_ps(w, v0, a0[h]);
                    a1[h] = _mm256_fmadd_ps(w, v1, a1[h]);
                }
            }
            for h in 0..H {
                _mm256_storeu_ps(out.as_mut_ptr().add(h * hd + c), a0[h]);
                _mm256_storeu_ps(out.as_mut_ptr().add(h * hd + c + 8), a1[h]);
            }
            c += 16;
        }
    }

    /// `attend`'s AVX2 build; `s` holds one score per position.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attend(q: &[f32], k: &[f32], v: &[f32], stride: usize, off: usize, scale: crate::model::attention::Scores, s: &mut [f32], out: &mut [f32]) {
        let hd = q.len();
        for (i, e) in s.iter_mut().enumerate() {
            *e = dot_inline(q.as_ptr(), k.as_ptr().add(i * stride + off), hd) * scale.scale;
        }
        crate::model::attention::softmax_in_place(s, scale.cap);
        // values in passes of 64 outputs (8 independent accumulators: FMA throughput, not its
        // latency), then 32; each output sums positions in order
        let (mut j, n8) = (0, hd / 8 * 8);
        while j + 64 <= n8 {
            values::<8>(s, v, stride, off + j, out.as_mut_ptr().add(j));
            j += 64;
        }
        while j + 32 <= n8 {
            values::<4>(s, v, stride, off + j, out.as_mut_ptr().add(j));
            j += 32;
        }
        while j < n8 {
            let mut acc = _mm256_setzero_ps();
            for (i, e) in s.iter().enumerate() {
                acc = _mm256_fmadd_ps(_mm256_set1_ps(*e), _mm256_loadu_ps(v.as_ptr().add(i * stride + off + j)), acc);
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(j), acc);
            j += 8;
        }
        while j < hd {
            let mut acc = 0f32;
            for (i, e) in s.iter().enumerate() {
                acc += e * v[i * stride + off + j];
            }
            out[j] = acc;
            j += 1;
        }
    }

    /// `out[0..8A] = Σ_i s_i v[i·stride + off..][..8A]`.
    #[inline(always)]
    unsafe fn values<const A: usize>(s: &[f32], v: &[f32], stride: usize, off: usize, out: *mut f32) {
        let mut acc = [_mm256_setzero_ps(); A];
        for (i, e) in s.iter().enumerate() {
            let w = _mm256_set1_ps(*e);
            let row = v.as_ptr().add(i * stride + off);
            for (q, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(row.add(8 * q)), *a);
            }
        }
        for (q, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(8 * q), *a);
        }
    }

    /// `y += Σ_j h_j bt[j, o0..][..y.len()]`, all `j` in one pass per 8 outputs (`o0` a
    /// multiple of 8; in the blocked layout those 8 outputs' `r` rows are one contiguous run).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn low_rank(h: &[f32], bt: super::super::Half, rows: usize, o0: usize, y: &mut [f32]) {
        use super::super::Half;
        let (n, r) = (y.len(), h.len());
        let mut i = 0;
        while i + 8 <= n {
            let mut acc = _mm256_loadu_ps(y.as_ptr().add(i));
            let blk = (o0 + i) / 8 * r * 8;
            for (j, hj) in h.iter().enumerate() {
                let b = match bt {
                    Half::F32(v) => _mm256_loadu_ps(v.as_ptr().add(j * rows + o0 + i)),
                    Half::F16(v) => _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(j * rows + o0 + i) as *const __m128i)),
                    Half::F16x8(v) => _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(blk + j * 8) as *const __m128i)),
                    Half::I8 { .. } | Half::I8x8 { .. } => unreachable!("8-bit factors have their own kernel"),
                };
                acc = _mm256_fmadd_ps(_mm256_set1_ps(*hj), b, acc);
            }
            _mm256_storeu_ps(y.as_mut_ptr().add(i), acc);
            i += 8;
        }
        while i < n {
            for (j, hj) in h.iter().enumerate() {
                y[i] += hj * bt.at(j, o0 + i, r, rows);
            }
            i += 1;
        }
    }

    /// `a · x`, `a` as half-precision bits: `dot_f16_rows` for one row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(a: &[u16], x: &[f32]) -> f32 {
        let mut out = [0f32];
        dot_f16_rows::<1>(a, a.len().min(x.len()), x, &mut out);
        out[0]
    }

    /// `out[i] = a_i · x` for the `R` rows `a_i = a[i·cols..][..cols]` in half precision. Each
    /// row has two 8-lane accumulators over 16-wide steps, their sum reduced by `hsum`, then a
    /// scalar tail, so a row's bits do not depend on `R`; the rows run interleaved, so their
    /// `R` times two multiply-add chains overlap where one row's two waited on each other's
    /// latency, and `R` rows' reads are in flight at once (a mixed batch's factors come from
    /// outside the core's caches).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_rows<const R: usize>(a: &[u16], cols: usize, x: &[f32], out: &mut [f32]) {
        assert!(a.len() >= R * cols && x.len() >= cols && out.len() >= R, "dot_f16_rows slices");
        let (mut s0, mut s1) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
        let mut k = 0;
        while k + 16 <= cols {
            let (x0, x1) = (_mm256_loadu_ps(x.as_ptr().add(k)), _mm256_loadu_ps(x.as_ptr().add(k + 8)));
            for i in 0..R {
                let p = a.as_ptr().add(i * cols + k);
                s0[i] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)), x0, s0[i]);
                s1[i] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(p.add(8) as *const __m128i)), x1, s1[i]);
            }
            k += 16;
        }
        for i in 0..R {
            let mut s = hsum(_mm256_add_ps(s0[i], s1[i]));
            for kk in k..cols {
                s += half::f16::from_bits(a[i * cols + kk]).to_f32() * x[kk];
            }
            out[i] = s;
        }
    }

    /// Eight signed bytes at `p` as f32 lanes.
    #[inline(always)]
    unsafe fn widen_i8(p: *const i8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    /// `factors8::dot_rows` for `R` factor rows of `q` (`cols` values each, scales `d`), bit
    /// for bit `dot_rows_portable`'s lanes; the rows run interleaved so that their chains and
    /// their reads overlap.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // i indexes the rows' accumulators and their data
    pub unsafe fn dot_i8_rows<const R: usize>(q: &[i8], d: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
        use crate::model::factors8::A_BLOCK;
        let nb = cols.div_ceil(A_BLOCK);
        let full = cols / A_BLOCK;
        assert!(q.len() >= R * cols && d.len() >= R * nb && x.len() >= cols && out.len() >= R, "dot_i8_rows slices");
        let mut tot = [_mm256_setzero_ps(); R];
        for b in 0..full {
            let xb = x.as_ptr().add(b * A_BLOCK);
            let xs = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(xb.add(o)));
            for i in 0..R {
                let p = q.as_ptr().add(i * cols + b * A_BLOCK);
                let mut acc = _mm256_fmadd_ps(widen_i8(p), xs[0], _mm256_setzero_ps());
                acc = _mm256_fmadd_ps(widen_i8(p.add(8)), xs[1], acc);
                acc = _mm256_fmadd_ps(widen_i8(p.add(16)), xs[2], acc);
                acc = _mm256_fmadd_ps(widen_i8(p.add(24)), xs[3], acc);
                tot[i] = _mm256_fmadd_ps(_mm256_set1_ps(*d.get_unchecked(i * nb + b)), acc, tot[i]);
            }
        }
        for i in 0..R {
            let mut s = hsum(tot[i]);
            if full < nb {
                let mut t = 0f32;
                for at in full * A_BLOCK..cols {
                    t = (q[i * cols + at] as f32).mul_add(x[at], t);
                }
                s = d[i * nb + full].mul_add(t, s);
            }
            out[i] = s;
        }
    }

    /// `factors8::low_rank`, bit for bit `low_rank_portable`: per run of 8 outputs the rank
    /// terms in order from zero, then the run's scale times that added to the outputs.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn low_rank_i8(h: &[f32], q: &[i8], d: &[f32], o0: usize, y: &mut [f32]) {
        let (n, r) = (y.len(), h.len());
        assert!(o0.is_multiple_of(8) && q.len() >= (o0 + n).div_ceil(8) * r * 8 && d.len() >= (o0 + n).div_ceil(8), "low_rank_i8 slices");
        let mut i = 0;
        while i + 8 <= n {
            let g = (o0 + i) / 8;
            let p = q.as_ptr().add(g * r * 8);
            let mut acc = _mm256_setzero_ps();
            for (j, hj) in h.iter().enumerate() {
                acc = _mm256_fmadd_ps(_mm256_set1_ps(*hj), widen_i8(p.add(j * 8)), acc);
            }
            let yp = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(yp, _mm256_fmadd_ps(_mm256_set1_ps(*d.get_unchecked(g)), acc, _mm256_loadu_ps(yp)));
            i += 8;
        }
        if i < n {
            crate::model::factors8::low_rank_portable(h, q, d, o0 + i, &mut y[i..]);
        }
    }

    /// `quantize_row`'s AVX2 build, bit for bit: the block's max |x|, `d = max / 127`, each
    /// `x / d` rounded half to even (the default rounding mode of `cvtps2dq`), `s = d · Σ q`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_row(x: &[f32], out: &mut [Q8]) {
        let sign = _mm256_set1_ps(-0.0);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (xs, b) in x.chunks_exact(32).zip(out.iter_mut()) {
            let p = xs.as_ptr();
            let v = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(p.add(o)));
            let a = v.map(|x| _mm256_andnot_ps(sign, x));
            let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let q = v.map(|x| _mm256_cvtps_epi32(_mm256_mul_ps(x, id)));
            // packs work within 128-bit halves: dwords come out as q0a q1a q2a q3a q0b q1b q2b q3b
            let p8 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            _mm256_storeu_si256(b.qs.as_mut_ptr() as *mut __m256i, _mm256_permutevar8x32_epi32(p8, order));
            let t = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let t = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
            let t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0b01_00_11_10));
            let t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0b10_11_00_01));
            b.d = d;
            b.s = d * _mm_cvtsi128_si32(t) as f32;
        }
    }

    /// `y += a · x` over `y.len()` values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let av = _mm256_set1_ps(a);
        let mut k = 0;
        while k + 8 <= n {
            let p = y.as_mut_ptr().add(k);
            _mm256_storeu_ps(p, _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(k)), _mm256_loadu_ps(p)));
            k += 8;
        }
        while k < n {
            y[k] += a * x[k];
            k += 1;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub use portable_stubs::*;

#[cfg(not(target_arch = "x86_64"))]
mod portable_stubs {
    use super::super::{BlockFmt, Q8};
    pub unsafe fn dot_f32_x4(_: &[f32], _: &[&[f32]; 4], _: usize, _: &mut [f32; 4]) {
        unreachable!("AVX2 is only detected on x86-64")
    }
    pub unsafe fn dot_q_x4(_: BlockFmt, _: &[u8], _: &[&[Q8]; 4], _: usize, _: &mut [f32; 4]) {
        unreachable!("AVX2 is only detected on x86-64")
    }
    pub unsafe fn dot_f32(_: &[f32], _: &[f32]) -> f32 {
        unreachable!("AVX2 is only detected on x86-64")
    }
    pub unsafe fn axpy(_: f32, _: &[f32], _: &mut [f32]) {
        unreachable!("AVX2 is only detected on x86-64")
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attend(_: &[f32], _: &[f32], _: &[f32], _: usize, _: usize, _: crate::model::attention::Scores, _: &mut [f32], _: &mut [f32]) {
        unreachable!("AVX2 is only detected on x86-64")
    }
    pub unsafe fn low_rank(_: &[f32], _: super::super::Half, _: usize, _: usize, _: &mut [f32]) {
        unreachable!("AVX2 is only detected on x86-64")
    }
    pub unsafe fn dot_f16(_: &[u16], _: &[f32]) -> f32 {
        unreachable!("AVX2 is only detected on x86-64")
    }
    pub unsafe fn dot_f16_rows<const R: usize>(_: &[u16], _: usize, _: &[f32], _: &mut [f32]) {
        unreachable!("AVX2 is only detected on x86-64")
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attend_f16<const H: usize>(_: &[f32], _: usize, _: &[u16], _: &[u16], _: usize, _: usize, _: crate::model::attention::Scores, _: &mut [f32], _: &mut [f32]) {
        unreachable!("AVX2 is only detected on x86-64")
    }
    pub unsafe fn widen_f16(_: &[u16], _: &mut [f32]) {
        unreachable!("AVX2 is only detected on x86-64")
    }
    pub unsafe fn dot_i8_rows<const R: usize>(_: &[i8], _: &[f32], _: usize, _: &[f32], _: &mut [f32]) {
        unreachable!()
    }
    pub unsafe fn low_rank_i8(_: &[f32], _: &[i8], _: &[f32], _: usize, _: &mut [f32]) {
        unreachable!()
    }
    pub unsafe fn quantize_row(_: &[f32], _: &mut [Q8]) {
        unreachable!("AVX2 is only detected on x86-64")
    }
}
