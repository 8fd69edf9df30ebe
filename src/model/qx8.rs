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

/// The instruction sets the group kernels are built for, best last. Every one gives
/// bit-identical outputs: the integer block dots are exact (no saturation in any of them), and
/// the float steps are the same operations in the same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// AVX2 + FMA + F16C: `maddubs` (u8·s8 pairs to i16) then `madd` to i32.
    Avx2,
    /// AVX2 + AVX-VNNI (Intel Alder Lake / Sapphire Rapids and later, AMD Zen 5): one `vpdpbusd`
    /// per 32 bytes, u8·s8 quads straight into i32.
    AvxVnni,
    /// AVX-512 VNNI (+ F, BW, VL; AMD Zen 4, Intel Ice Lake server and later, which may lack
    /// AVX-VNNI): two groups (16 rows) and up to 8 tokens at once on 512-bit registers
    /// (`pair512`), 256-bit `vpdpbusd` for a lone group.
    Avx512Vnni,
    /// AVX-512 VNNI plus AMX-INT8 (Intel Sapphire Rapids and later, where Linux grants the tile
    /// state): two groups and 16 tokens per tile multiply (`qx8_amx::tile16`) where a call has
    /// `AMX_MIN_TOKENS` tokens or more left; `Avx512Vnni`'s kernels for the rest.
    Amx,
}

/// The fewest tokens for which `quant` uses AMX tiles under `Isa::Amx`.
pub const AMX_MIN_TOKENS: usize = 16;

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni, Isa::Amx];
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Amx => "amx",
        }
    }
    /// Whether the 512-bit group pairs (`pair512`) run under this ISA.
    pub fn wide(self) -> bool {
        matches!(self, Isa::Avx512Vnni | Isa::Amx)
    }
    /// Whether this CPU runs it.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let base = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c");
            base && match self {
                Isa::Avx2 => true,
                Isa::AvxVnni => std::is_x86_feature_detected!("avxvnni"),
                Isa::Avx512Vnni => avx512_vnni(),
                Isa::Amx => avx512_vnni() && super::qx8_amx::supported(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
    /// The best this CPU runs (callers already know it has AVX2).
    pub fn best() -> Isa {
        Isa::ALL.into_iter().rev().find(|i| i.supported()).unwrap_or(Isa::Avx2)
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512_vnni() -> bool {
    std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl") && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512f")
}

/// The ISA `group` uses: the best supported, unless `set_isa` chose another (benchmarks compare
/// them in one run). 0 = not chosen yet.
static ISA: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The kernels' current ISA: on first use, `LORADEX_ISA` (`avx2`, `avx-vnni`, `avx512-vnni`, `amx`)
/// where it names one this CPU runs (an operator's override, e.g. where 512-bit code lowers the
/// clock), else the best supported.
pub fn isa() -> Isa {
    use std::sync::atomic::Ordering::Relaxed;
    match ISA.load(Relaxed) {
        0 => {
            let wanted = std::env::var("LORADEX_ISA").ok().and_then(|v| Isa::ALL.into_iter().find(|i| i.name() == v.trim()));
            let b = wanted.filter(|i| i.supported()).unwrap_or_else(Isa::best);
            ISA.store(b as u8 + 1, Relaxed);
            b
        }
        v => Isa::ALL[(v - 1) as usize],
    }
}

/// Makes `group` use `isa` from now on (process-wide); refused where the CPU lacks it.
pub fn set_isa(isa: Isa) -> Result<(), String> {
    if !isa.supported() {
        return Err(format!("this CPU does not run the {} kernels", isa.name()));
    }
    ISA.store(isa as u8 + 1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// `out[t][r] = row (8g + r) · xs[t]` for the `g` tokens given (1..=4), with the current `isa`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `data` holds group `group` of `nb` blocks; each `xs[t]`
/// (t < g) points at `nb` blocks.
#[cfg(target_arch = "x86_64")]
pub unsafe fn group(f: BlockFmt, data: &[u8], group: usize, nb: usize, xs: &[*const Q8; 4], g: usize, out: &mut [[f32; 8]; 4]) {
    group_with(isa(), f, data, group, nb, xs, g, out)
}

/// `group` on a given ISA.
///
/// # Safety
/// As `group`, and the CPU runs `isa` (`Isa::supported`).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn group_with(isa: Isa, f: BlockFmt, data: &[u8], group: usize, nb: usize, xs: &[*const Q8; 4], g: usize, out: &mut [[f32; 8]; 4]) {
    let base = data.as_ptr().add(group * nb * group_block_bytes(f));
    match isa {
        Isa::Avx2 => on_avx2(f, base, nb, xs, g, out),
        Isa::AvxVnni => on_avx_vnni(f, base, nb, xs, g, out),
        Isa::Avx512Vnni | Isa::Amx => on_avx512_vnni(f, base, nb, xs, g, out),
    }
}

/// Tokens `pair512` takes at once (its 32 registers hold 8 tokens' sums and accumulators).
pub const PAIR_TOKENS: usize = 8;

/// The fewest tokens for which `quant` uses `pair512` (below, the 256-bit kernels).
pub const PAIR_MIN_TOKENS: usize = 4;

/// `out[t][r] = row (8·group + r) · xs[t]` for `r < 16`: groups `group` and `group + 1` at
/// once on 512-bit registers, for the `g` tokens given (1..=8). The same integer sums and the
/// same float steps per output as `group`, so the same bits.
///
/// # Safety
/// The CPU runs `Isa::Avx512Vnni`; `data` holds groups `group` and `group + 1` of `nb` blocks
/// each; each `xs[t]` (t < g) points at `nb` blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn pair512(f: BlockFmt, data: &[u8], group: usize, nb: usize, xs: &[*const Q8; PAIR_TOKENS], g: usize, out: &mut [[f32; 16]; PAIR_TOKENS]) {
    let gb = group_block_bytes(f);
    let b0 = data.as_ptr().add(group * nb * gb);
    let b1 = b0.add(nb * gb);
    macro_rules! go {
        ($k:ident) => {
            match g {
                1 => wide::$k::<1>(b0, b1, nb, xs, out),
                2 => wide::$k::<2>(b0, b1, nb, xs, out),
                3 => wide::$k::<3>(b0, b1, nb, xs, out),
                4 => wide::$k::<4>(b0, b1, nb, xs, out),
                5 => wide::$k::<5>(b0, b1, nb, xs, out),
                6 => wide::$k::<6>(b0, b1, nb, xs, out),
                7 => wide::$k::<7>(b0, b1, nb, xs, out),
                _ => wide::$k::<8>(b0, b1, nb, xs, out),
            }
        };
    }
    match f {
        BlockFmt::Q8_0 => go!(q8),
        _ => go!(q4),
    }
}

/// Independent integer partial sums per token for `tokens` tokens at once (at most 4): enough
/// chains in flight to cover `vpdpbusd`'s latency when few tokens share a weight load. Integer
/// sums are exact, so the split changes no bit of any output.
#[cfg(target_arch = "x86_64")]
const fn chains(tokens: usize) -> usize {
    match tokens {
        1 => 4,
        2 => 2,
        _ => 1,
    }
}

/// `pair512`'s kernels: each 512-bit value is one 32-byte load of each of the two groups.
#[cfg(target_arch = "x86_64")]
mod wide {
    use super::{Q8, PAIR_TOKENS};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn two(a: *const u8, b: *const u8) -> __m512i {
        _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(a as *const __m256i)), _mm256_loadu_si256(b as *const __m256i), 1)
    }
    #[inline(always)]
    unsafe fn scales(a: *const u8, b: *const u8) -> __m512 {
        let h = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(a as *const __m128i)), _mm_loadu_si128(b as *const __m128i), 1);
        _mm512_cvtph_ps(h)
    }
    #[inline(always)]
    unsafe fn bcast(x: &Q8, s: usize) -> __m512i {
        _mm512_set1_epi32((x.qs.as_ptr() as *const i32).add(s).read_unaligned())
    }
    #[inline(always)]
    unsafe fn store<const G: usize>(acc: &[__m512; G], out: &mut [[f32; 16]; PAIR_TOKENS]) {
        for t in 0..G {
            _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }

    #[inline(always)]
    pub unsafe fn q4<const G: usize>(b0: *const u8, b1: *const u8, nb: usize, xs: &[*const Q8; PAIR_TOKENS], out: &mut [[f32; 16]; PAIR_TOKENS]) {
        let mut acc = [_mm512_setzero_ps(); G];
        let m4 = _mm512_set1_epi8(15);
        let c = super::chains(G);
        for b in 0..nb {
            let (p0, p1) = (b0.add(b * 160), b1.add(b * 160));
            let mut sum = [[_mm512_setzero_si512(); 4]; G];
            for s in 0..4 {
                let raw = two(p0.add(32 + s * 32), p1.add(32 + s * 32));
                let lo = _mm512_and_si512(raw, m4);
                let hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
                for t in 0..G {
                    let x = &*xs[t].add(b);
                    let (i, j) = ((2 * s) % c, (2 * s + 1) % c);
                    sum[t][i] = _mm512_dpbusd_epi32(sum[t][i], lo, bcast(x, s));
                    sum[t][j] = _mm512_dpbusd_epi32(sum[t][j], hi, bcast(x, s + 4));
                }
            }
            let d = scales(p0, p1);
            let m = scales(p0.add(16), p1.add(16));
            for t in 0..G {
                let x = &*xs[t].add(b);
                let mut si = sum[t][0];
                for v in &sum[t][1..c] {
                    si = _mm512_add_epi32(si, *v);
                }
                let idot = _mm512_cvtepi32_ps(si);
                let blk = _mm512_fmadd_ps(m, _mm512_set1_ps(x.s), _mm512_mul_ps(_mm512_mul_ps(d, _mm512_set1_ps(x.d)), idot));
                acc[t] = _mm512_add_ps(acc[t], blk);
            }
        }
        store::<G>(&acc, out);
    }

    /// Signed weights: `|w|` times `x` negated where `w < 0` (where `w = 0`, `|w| = 0`).
    #[inline(always)]
    pub unsafe fn q8<const G: usize>(b0: *const u8, b1: *const u8, nb: usize, xs: &[*const Q8; PAIR_TOKENS], out: &mut [[f32; 16]; PAIR_TOKENS]) {
        let mut acc = [_mm512_setzero_ps(); G];
        let zero = _mm512_setzero_si512();
        let c = super::chains(G);
        for b in 0..nb {
            let (p0, p1) = (b0.add(b * 272), b1.add(b * 272));
            let mut sum = [[_mm512_setzero_si512(); 4]; G];
            for s in 0..8 {
                let w = two(p0.add(16 + s * 32), p1.add(16 + s * 32));
                let aw = _mm512_abs_epi8(w);
                let neg = _mm512_movepi8_mask(w);
                for t in 0..G {
                    let xv = bcast(&*xs[t].add(b), s);
                    sum[t][s % c] = _mm512_dpbusd_epi32(sum[t][s % c], aw, _mm512_mask_sub_epi8(xv, neg, zero, xv));
                }
            }
            let d = scales(p0, p1);
            for t in 0..G {
                let x = &*xs[t].add(b);
                let mut si = sum[t][0];
                for v in &sum[t][1..c] {
                    si = _mm512_add_epi32(si, *v);
                }
                acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(x.d)), _mm512_cvtepi32_ps(si), acc[t]);
            }
        }
        store::<G>(&acc, out);
    }
}

/// One entry point per ISA, each compiled with its features, monomorphizing the kernels over the
/// ISA's integer step.
macro_rules! entry {
    ($name:ident, $features:literal, $dot:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(f: BlockFmt, base: *const u8, nb: usize, xs: &[*const Q8; 4], g: usize, out: &mut [[f32; 8]; 4]) {
            use kernel::*;
            match (f, g) {
                (BlockFmt::Q8_0, 1) => q8::<$dot, 1>(base, nb, xs, out),
                (BlockFmt::Q8_0, 2) => q8::<$dot, 2>(base, nb, xs, out),
                (BlockFmt::Q8_0, 3) => q8::<$dot, 3>(base, nb, xs, out),
                (BlockFmt::Q8_0, _) => q8::<$dot, 4>(base, nb, xs, out),
                (_, 1) => q4::<$dot, 1>(base, nb, xs, out),
                (_, 2) => q4::<$dot, 2>(base, nb, xs, out),
                (_, 3) => q4::<$dot, 3>(base, nb, xs, out),
                (_, _) => q4::<$dot, 4>(base, nb, xs, out),
            }
        }
    };
}
entry!(on_avx2, "avx2,fma,f16c", kernel::Maddubs);
entry!(on_avx_vnni, "avx2,fma,f16c,avxvnni", kernel::VnniVex);
entry!(on_avx512_vnni, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", kernel::VnniEvex);

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::Q8;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn bcast(x: &Q8, s: usize) -> __m256i {
        _mm256_set1_epi32((x.qs.as_ptr() as *const i32).add(s).read_unaligned())
    }

    /// The integer step: `acc` (8 × i32, one per row) plus the dot of each row's 4 unsigned
    /// bytes in `u` with the 4 signed bytes in `s`. Callers keep every pair sum within i16
    /// range, so the `maddubs` build never saturates and all builds agree exactly.
    pub trait Dot {
        /// Whether `add` is a multi-cycle dependency (`vpdpbusd`), so that few tokens need
        /// several independent partial sums to keep the unit busy. `maddubs` accumulates with a
        /// one-cycle `add`, which needs none.
        const CHAINED: bool = true;
        /// Accumulates in the build's own partial form.
        unsafe fn add(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
        /// The sum of two partial sums, in the partial form (exact: callers bound the total).
        #[inline(always)]
        unsafe fn merge(a: __m256i, b: __m256i) -> __m256i {
            _mm256_add_epi32(a, b)
        }
        /// The partial form as 8 × i32 (by default it already is).
        #[inline(always)]
        unsafe fn finish(acc: __m256i) -> __m256i {
            acc
        }
        /// `add` into an 8 × i32 accumulator (by default `add` is that).
        #[inline(always)]
        unsafe fn add32(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            Self::add(acc, u, s)
        }
    }

    /// AVX2: i16 pair sums accumulated (no overflow: callers bound the sums), widened at the end.
    pub struct Maddubs;
    impl Dot for Maddubs {
        const CHAINED: bool = false;
        #[inline(always)]
        unsafe fn merge(a: __m256i, b: __m256i) -> __m256i {
            _mm256_add_epi16(a, b)
        }
        #[inline(always)]
        unsafe fn add(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            _mm256_add_epi16(acc, _mm256_maddubs_epi16(u, s))
        }
        #[inline(always)]
        unsafe fn finish(acc: __m256i) -> __m256i {
            _mm256_madd_epi16(acc, _mm256_set1_epi16(1))
        }
        #[inline(always)]
        unsafe fn add32(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            _mm256_add_epi32(acc, Self::finish(_mm256_maddubs_epi16(u, s)))
        }
    }

    /// AVX-VNNI's `vpdpbusd` (VEX).
    pub struct VnniVex;
    impl Dot for VnniVex {
        #[inline(always)]
        unsafe fn add(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            _mm256_dpbusd_avx_epi32(acc, u, s)
        }
    }

    /// AVX-512 VNNI's `vpdpbusd` on ymm registers (EVEX).
    pub struct VnniEvex;
    impl Dot for VnniEvex {
        #[inline(always)]
        unsafe fn add(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(acc, u, s)
        }
    }

    /// Q4 groups (Q4_0 and Q4_1): per block, the integer dot of 8 rows (8 pair sums of at most
    /// 3810 each in the `maddubs` build: no saturation), then `acc += d·dx·idot + m·s`.
    #[inline(always)]
    pub unsafe fn q4<D: Dot, const G: usize>(base: *const u8, nb: usize, xs: &[*const Q8; 4], out: &mut [[f32; 8]; 4]) {
        let mut acc = [_mm256_setzero_ps(); G];
        let m4 = _mm256_set1_epi8(15);
        let c = if D::CHAINED { super::chains(G) } else { 1 };
        for b in 0..nb {
            let blk = base.add(b * 160);
            let mut sum = [[_mm256_setzero_si256(); 4]; G];
            for s in 0..4 {
                let raw = _mm256_loadu_si256(blk.add(32 + s * 32) as *const __m256i);
                let lo = _mm256_and_si256(raw, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                for t in 0..G {
                    let x = &*xs[t].add(b);
                    let (i, j) = ((2 * s) % c, (2 * s + 1) % c);
                    sum[t][i] = D::add(sum[t][i], lo, bcast(x, s));
                    sum[t][j] = D::add(sum[t][j], hi, bcast(x, s + 4));
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            let m = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
            for t in 0..G {
                let x = &*xs[t].add(b);
                let mut si = sum[t][0];
                for v in &sum[t][1..c] {
                    si = D::merge(si, *v);
                }
                let idot = _mm256_cvtepi32_ps(D::finish(si));
                // the block's whole term first, then one add: the chain across blocks is one
                // add long, not two dependent FMAs
                let blk = _mm256_fmadd_ps(m, _mm256_set1_ps(x.s), _mm256_mul_ps(_mm256_mul_ps(d, _mm256_set1_ps(x.d)), idot));
                acc[t] = _mm256_add_ps(acc[t], blk);
            }
        }
        for t in 0..G {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }

    /// Q8_0 groups: signed weights by the sign trick, i32 sums per block (each step's pair sums
    /// are at most 2·128·127, within i16).
    #[inline(always)]
    pub unsafe fn q8<D: Dot, const G: usize>(base: *const u8, nb: usize, xs: &[*const Q8; 4], out: &mut [[f32; 8]; 4]) {
        let mut acc = [_mm256_setzero_ps(); G];
        let c = if D::CHAINED { super::chains(G) } else { 1 };
        for b in 0..nb {
            let blk = base.add(b * 272);
            let mut sum = [[_mm256_setzero_si256(); 4]; G];
            for s in 0..8 {
                let w = _mm256_loadu_si256(blk.add(16 + s * 32) as *const __m256i);
                let aw = _mm256_sign_epi8(w, w);
                for t in 0..G {
                    let x = &*xs[t].add(b);
                    // each step into i32: eight i16 steps could overflow
                    sum[t][s % c] = D::add32(sum[t][s % c], aw, _mm256_sign_epi8(bcast(x, s), w));
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            for t in 0..G {
                let x = &*xs[t].add(b);
                let mut si = sum[t][0];
                for v in &sum[t][1..c] {
                    si = _mm256_add_epi32(si, *v);
                }
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(x.d)), _mm256_cvtepi32_ps(si), acc[t]);
            }
        }
        for t in 0..G {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }
}
