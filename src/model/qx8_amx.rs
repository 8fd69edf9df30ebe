//! Intel AMX (Sapphire Rapids and later) for the repacked groups of `qx8`: one tile
//! multiply (`tdpbsud`, signed activations × unsigned Q4 nibbles; `tdpbssd` for Q8_0) gives the
//! exact integer block dots of 16 weight rows (two groups) for up to 16 tokens at once, where
//! the AVX-512 kernels need 64 `vpdpbusd`. The float steps after each block are `pair512`'s,
//! one token at a time in the same order, so every output has the bits of every other ISA:
//! batch invariance does not depend on which kernel ran. Owns the tile state of the thread
//! it runs on (configured and released in each call) and the process's permission to use it;
//! knows nothing of models.
//!
//! The instructions are written with `asm!` (Rust's AMX intrinsics are not stable); the
//! permission is asked of Linux once (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), and a CPU or kernel
//! that refuses it simply does not offer the ISA.

use super::prefetch::Pace;
use super::quant::Q8;

/// Tokens one call takes at most (a tile's rows).
pub const TILE_TOKENS: usize = 16;

/// Whether this CPU has AMX-INT8 and the kernel lets this process use the tile data (asked
/// once; later calls read the answer).
pub fn supported() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    // CPUID.(7,0).EDX: bit 24 AMX-TILE, bit 25 AMX-INT8
    let c = std::arch::x86_64::__cpuid_count(7, 0);
    if c.edx >> 24 & 1 == 0 || c.edx >> 25 & 1 == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; it changes only this process's
    // permission to use the AMX register state.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// The tile configuration (palette 1): tmm0 the `m × 16` i32 sums, tmm1 the `m × 32` activation
/// bytes of one block, tmm2 the weights' `8 × 64` bytes (4 consecutive values of 16 rows each);
/// tmm3..5 the same for the next block.
#[repr(C, align(64))]
struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl Config {
    fn new(m: usize) -> Config {
        let mut c = Config { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        (c.colsb[0], c.rows[0]) = (64, m as u8);
        (c.colsb[1], c.rows[1]) = (32, m as u8);
        (c.colsb[2], c.rows[2]) = (64, 8);
        // a second set (tmm3..5) for the next block
        (c.colsb[3], c.rows[3]) = (64, m as u8);
        (c.colsb[4], c.rows[4]) = (32, m as u8);
        (c.colsb[5], c.rows[5]) = (64, 8);
        c
    }
}

#[repr(C, align(64))]
struct Aligned<T>(T);

/// 32 bytes of each of two groups as one 512-bit value (inlined into the AVX-512 caller).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn two(a: *const u8, b: *const u8) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(a as *const __m256i)), _mm256_loadu_si256(b as *const __m256i), 1)
}

/// The 8 f16 scales of each of two groups as 16 floats.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scales(a: *const u8, b: *const u8) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(a as *const __m128i)), _mm_loadu_si128(b as *const __m128i), 1))
}

/// `out[t][r] = row (8·group + r) · x[t]` for `r < 16` (groups `group` and `group + 1`) and
/// `t < m`, token `t`'s blocks at `x + t·nb` (the rows of an activation matrix). The outputs
/// are `pair512`'s, bit for bit.
///
/// # Safety
/// `supported()` and AVX-512 F/BW/VL (every AMX CPU has them); `data` holds groups `group` and
/// `group + 1` of `nb` blocks each in `f`'s repacked layout; `x` points at `m` (1..=16) rows of
/// `nb` blocks. Asks for `pf`'s lines at one `step` a block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile16(f: super::quant::BlockFmt, data: &[u8], group: usize, nb: usize, x: *const Q8, m: usize, out: &mut [[f32; 16]; TILE_TOKENS], pf: &mut Pace) {
    // A full tile (every call a decode step or a prefill makes: fewer tokens go to the AVX-512
    // kernels) has its token loops unrolled and its 16 sums in registers; with the count known
    // only at run time they lived on the stack, a load and a store more per token and block,
    // beside the loop's own instructions.
    if m == TILE_TOKENS {
        tile::<true>(f, data, group, nb, x, m, out, pf)
    } else {
        tile::<false>(f, data, group, nb, x, m, out, pf)
    }
}

/// `tile16` for `m` tokens (`TILE_TOKENS` where `FULL`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile<const FULL: bool>(f: super::quant::BlockFmt, data: &[u8], group: usize, nb: usize, x: *const Q8, m: usize, out: &mut [[f32; 16]; TILE_TOKENS], pf: &mut Pace) {
    use super::quant::BlockFmt;
    let m = if FULL { TILE_TOKENS } else { m };
    use std::arch::asm;
    use std::arch::x86_64::*;
    debug_assert!((1..=TILE_TOKENS).contains(&m));
    let gb = super::qx8::group_block_bytes(f);
    let b0 = data.as_ptr().add(group * nb * gb);
    let b1 = b0.add(nb * gb);
    let stride = nb * std::mem::size_of::<Q8>();
    // scratch written before every read (each block's weights fill their slot; a tile store
    // fills the m sum rows that are read), so not zeroed: zeroing 3 KB a call showed in profiles
    let mut w = std::mem::MaybeUninit::<Aligned<[u8; 1024]>>::uninit();
    let mut sums = std::mem::MaybeUninit::<Aligned<[[[i32; 16]; TILE_TOKENS]; 2]>>::uninit();
    let mut acc = [_mm512_setzero_ps(); TILE_TOKENS];
    // a thread keeps its configuration between calls (loading one costs more than a block)
    thread_local!(static ROWS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) });
    if ROWS.get() != m {
        let cfg = Config::new(m);
        asm!("ldtilecfg [{}]", in(reg) &cfg as *const Config, options(nostack, readonly));
        ROWS.set(m);
    }
    let m4 = _mm512_set1_epi8(15);
    // Two sets of tiles, blocks alternating between them: block b's multiply runs while block
    // b - 1's sums are stored and scaled (the tile unit and the vector units work at once).
    let wp = w.as_mut_ptr() as *mut __m512i;
    macro_rules! issue {
        ($b:expr, $slot:literal, $c:literal, $a:literal, $w:literal) => {{
            let (p0, p1) = (b0.add($b * gb), b1.add($b * gb));
            // the block's weights as 8 tile rows: row k holds values 4k..4k+4 of each of 16 rows
            let wq = wp.add($slot * 8);
            match f {
                BlockFmt::Q8_0 => {
                    for s in 0..8 {
                        _mm512_store_si512(wq.add(s), two(p0.add(16 + s * 32), p1.add(16 + s * 32)));
                    }
                }
                _ => {
                    for s in 0..4 {
                        let raw = two(p0.add(32 + s * 32), p1.add(32 + s * 32));
                        _mm512_store_si512(wq.add(s), _mm512_and_si512(raw, m4));
                        _mm512_store_si512(wq.add(s + 4), _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4));
                    }
                }
            }
            let xb = (*x.add($b)).qs.as_ptr();
            asm!(
                concat!("tilezero ", $c),
                concat!("tileloadd ", $a, ", [{x} + {xs}*1]"),
                concat!("tileloadd ", $w, ", [{w} + {ws}*1]"),
                x = in(reg) xb, xs = in(reg) stride, w = in(reg) wq, ws = in(reg) 64usize,
                options(nostack, readonly)
            );
            if f == BlockFmt::Q8_0 {
                asm!(concat!("tdpbssd ", $c, ", ", $a, ", ", $w), options(nostack, nomem));
            } else {
                asm!(concat!("tdpbsud ", $c, ", ", $a, ", ", $w), options(nostack, nomem));
            }
        }};
    }
    macro_rules! finish {
        ($b:expr, $slot:literal, $c:literal) => {{
            let sp = (sums.as_mut_ptr() as *mut [[i32; 16]; TILE_TOKENS]).add($slot);
            asm!(concat!("tilestored [{s} + {ss}*1], ", $c), s = in(reg) sp, ss = in(reg) 64usize, options(nostack));
            let (p0, p1) = (b0.add($b * gb), b1.add($b * gb));
            let d = scales(p0, p1);
            if f == BlockFmt::Q8_0 {
                for (t, a) in acc.iter_mut().enumerate().take(m) {
                    let xt = &*x.add(t * nb + $b);
                    let idot = _mm512_cvtepi32_ps(_mm512_load_si512((sp as *const i32).add(t * 16) as *const __m512i));
                    *a = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(xt.d)), idot, *a);
                }
            } else {
                let mn = scales(p0.add(16), p1.add(16));
                for (t, a) in acc.iter_mut().enumerate().take(m) {
                    let xt = &*x.add(t * nb + $b);
                    let idot = _mm512_cvtepi32_ps(_mm512_load_si512((sp as *const i32).add(t * 16) as *const __m512i));
                    let blk = _mm512_fmadd_ps(mn, _mm512_set1_ps(xt.s), _mm512_mul_ps(_mm512_mul_ps(d, _mm512_set1_ps(xt.d)), idot));
                    *a = _mm512_add_ps(*a, blk);
                }
            }
        }};
    }
    for b in 0..nb {
        // a few of the lines a later call reads, while the tile unit works
        pf.step();
        if b % 2 == 0 {
            issue!(b, 0, "tmm0", "tmm1", "tmm2");
            if b > 0 {
                finish!(b - 1, 1, "tmm3");
            }
        } else {
            issue!(b, 1, "tmm3", "tmm4", "tmm5");
            finish!(b - 1, 0, "tmm0");
        }
    }
    if nb % 2 == 1 {
        finish!(nb - 1, 0, "tmm0");
    } else if nb > 0 {
        finish!(nb - 1, 1, "tmm3");
    }
    for (t, a) in acc.iter().enumerate().take(m) {
        _mm512_storeu_ps(out[t].as_mut_ptr(), *a);
    }
}
