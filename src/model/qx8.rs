//! GGML blocks repacked eight rows at a time for AVX2, and the kernels over them. In a group,
//! each 32-byte load holds 4 consecutive values of each of 8 rows, so one broadcast of 4
//! activation bytes multiplies all 8 rows at once (`maddubs`) and the scales of 8 rows are one
//! vector: the per-block scalar work of a row-at-a-time kernel disappears, and a weight group
//! is unpacked once for up to 4 activation rows. Each output still sums its blocks in order,
//! whatever the number of rows. Used by `quant` only when the CPU has AVX2; knows nothing of
//! models.

use super::quant::{BlockFmt, Q8, QK};

/// Bytes of one group-block (8 rows × 32 values): Q4 formats keep their nibbles; Q4_0's offset
/// becomes Q4_1's `m = -8 d`.
pub fn group_block_bytes(f: BlockFmt) -> usize {
    match f {
        BlockFmt::Q4_0 | BlockFmt::Q4_1 => 16 + 16 + 128,
        BlockFmt::Q8_0 => 16 + 256,
    }
}

fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// Repacks `rows` (a multiple of 8) rows of GGML blocks.
pub fn repack(f: BlockFmt, rows: usize, cols: usize, raw: &[u8]) -> Vec<u8> {
    let nb = cols / QK;
    let bb = f.bytes();
    let gb = group_block_bytes(f);
    let mut out = vec![0u8; rows / 8 * nb * gb];
    for g in 0..rows / 8 {
        for b in 0..nb {
            let dst = &mut out[(g * nb + b) * gb..][..gb];
            for r in 0..8 {
                let src = &raw[((g * 8 + r) * nb + b) * bb..][..bb];
                let d = half::f16::from_le_bytes([src[0], src[1]]);
                dst[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
                // the 32 values of this row, as unsigned nibbles (Q4) or signed bytes (Q8)
                let mut q = [0u8; QK];
                match f {
                    BlockFmt::Q4_0 | BlockFmt::Q4_1 => {
                        let (m, qs) = if f == BlockFmt::Q4_1 { ([src[2], src[3]], &src[4..20]) } else { (f16_bytes(-8.0 * d.to_f32()), &src[2..18]) };
                        dst[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&m);
                        for j in 0..16 {
                            q[j] = qs[j] & 15;
                            q[j + 16] = qs[j] >> 4;
                        }
                        // load s (0..4) holds values 4s..4s+4 in low nibbles, 4(s+4).. in high
                        for s in 0..4 {
                            for j in 0..4 {
                                dst[32 + s * 32 + r * 4 + j] = q[4 * s + j] | (q[4 * (s + 4) + j] << 4);
                            }
                        }
                    }
                    BlockFmt::Q8_0 => {
                        q.copy_from_slice(&src[2..34]);
                        for s in 0..8 {
                            for j in 0..4 {
                                dst[16 + s * 32 + r * 4 + j] = q[4 * s + j];
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// Row `r` of a repacked matrix as f32.
pub fn dequantize_row(f: BlockFmt, data: &[u8], cols: usize, r: usize, out: &mut [f32]) {
    let nb = cols / QK;
    let gb = group_block_bytes(f);
    let (g, ri) = (r / 8, r % 8);
    let h = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    for b in 0..nb {
        let blk = &data[(g * nb + b) * gb..][..gb];
        let d = h(&blk[2 * ri..]);
        let o = &mut out[b * QK..][..QK];
        match f {
            BlockFmt::Q4_0 | BlockFmt::Q4_1 => {
                let m = h(&blk[16 + 2 * ri..]);
                for s in 0..4 {
                    for j in 0..4 {
                        let byte = blk[32 + s * 32 + ri * 4 + j];
                        o[4 * s + j] = (byte & 15) as f32 * d + m;
                        o[4 * (s + 4) + j] = (byte >> 4) as f32 * d + m;
                    }
                }
            }
            BlockFmt::Q8_0 => {
                for s in 0..8 {
                    for j in 0..4 {
                        o[4 * s + j] = blk[16 + s * 32 + ri * 4 + j] as i8 as f32 * d;
                    }
                }
            }
        }
    }
}

/// `out[t][r] = row (8g + r) · xs[t]` for the `g` tokens given (1..=4).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `data` holds group `group` of `nb` blocks; each `xs[t]`
/// (t < g) points at `nb` blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn group(f: BlockFmt, data: &[u8], group: usize, nb: usize, xs: &[*const Q8; 4], g: usize, out: &mut [[f32; 8]; 4]) {
    let base = data.as_ptr().add(group * nb * group_block_bytes(f));
    match (f, g) {
        (BlockFmt::Q8_0, 1) => kernel::q8::<1>(base, nb, xs, out),
        (BlockFmt::Q8_0, 2) => kernel::q8::<2>(base, nb, xs, out),
        (BlockFmt::Q8_0, 3) => kernel::q8::<3>(base, nb, xs, out),
        (BlockFmt::Q8_0, _) => kernel::q8::<4>(base, nb, xs, out),
        (_, 1) => kernel::q4::<1>(base, nb, xs, out),
        (_, 2) => kernel::q4::<2>(base, nb, xs, out),
        (_, 3) => kernel::q4::<3>(base, nb, xs, out),
        (_, _) => kernel::q4::<4>(base, nb, xs, out),
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::Q8;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn bcast(x: &Q8, s: usize) -> __m256i {
        _mm256_set1_epi32((x.qs.as_ptr() as *const i32).add(s).read_unaligned())
    }

    /// Q4 groups (Q4_0 and Q4_1): per block, the integer dot of 8 rows in one int16 vector
    /// (8 partial sums of at most 3810 each: no saturation), then `acc += d·dx·idot + m·s`.
    #[inline(always)]
    pub unsafe fn q4<const G: usize>(base: *const u8, nb: usize, xs: &[*const Q8; 4], out: &mut [[f32; 8]; 4]) {
        let mut acc = [_mm256_setzero_ps(); G];
        let m4 = _mm256_set1_epi8(15);
        let ones = _mm256_set1_epi16(1);
        for b in 0..nb {
            let blk = base.add(b * 160);
            let mut sum = [_mm256_setzero_si256(); G];
            for s in 0..4 {
                let raw = _mm256_loadu_si256(blk.add(32 + s * 32) as *const __m256i);
                let lo = _mm256_and_si256(raw, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                for t in 0..G {
                    let x = &*xs[t].add(b);
                    sum[t] = _mm256_add_epi16(sum[t], _mm256_maddubs_epi16(lo, bcast(x, s)));
                    sum[t] = _mm256_add_epi16(sum[t], _mm256_maddubs_epi16(hi, bcast(x, s + 4)));
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            let m = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
            for t in 0..G {
                let x = &*xs[t].add(b);
                let idot = _mm256_cvtepi32_ps(_mm256_madd_epi16(sum[t], ones));
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(x.d)), idot, acc[t]);
                acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(x.s), acc[t]);
            }
        }
        for t in 0..G {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }

    /// Q8_0 groups: signed weights by the sign trick, int32 sums per block.
    #[inline(always)]
    pub unsafe fn q8<const G: usize>(base: *const u8, nb: usize, xs: &[*const Q8; 4], out: &mut [[f32; 8]; 4]) {
        let mut acc = [_mm256_setzero_ps(); G];
        let ones = _mm256_set1_epi16(1);
        for b in 0..nb {
            let blk = base.add(b * 272);
            let mut sum = [_mm256_setzero_si256(); G];
            for s in 0..8 {
                let w = _mm256_loadu_si256(blk.add(16 + s * 32) as *const __m256i);
                let aw = _mm256_sign_epi8(w, w);
                for t in 0..G {
                    let x = &*xs[t].add(b);
                    let p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(bcast(x, s), w));
                    sum[t] = _mm256_add_epi32(sum[t], _mm256_madd_epi16(p, ones));
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            for t in 0..G {
                let x = &*xs[t].add(b);
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(x.d)), _mm256_cvtepi32_ps(sum[t]), acc[t]);
            }
        }
        for t in 0..G {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }
}
