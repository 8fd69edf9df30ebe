//! GGML block types without loradex kernels, converted at load into ones with them. The
//! common GGUF files (llama.cpp's `Q4_K_M`, `Q5_K_M`, …) mix `Q4_K`, `Q5_0`, `Q6_K` and more;
//! through candle's row-at-a-time kernels a base of them decoded about 13 times slower than the
//! same model in `Q4_1` (SmolLM2-135M: 26 against 340 tokens/s, 2 threads). Each conversion
//! keeps the weights as close as the target format allows:
//! - `Q5_0` → `Q8_0`: exact (the same scale; the 5-bit values fit a byte).
//! - `Q4_K` → `Q4_1`, one block per 32-value sub-block: the sub-block's scale `d·sc` and offset
//!   `-dmin·m` rounded to half precision (a relative change of at most 2⁻¹¹ in each).
//! - anything else with a dequantization (`Q6_K`, `Q5_1`, `Q5_K`, `Q2_K`, `Q3_K`, `Q8_1`, …):
//!   dequantized, then rounded to `Q8_0` as llama.cpp rounds it (each value within half a step
//!   of its block's scale, `max |w| / 127`).
//!
//! Owns only the bytes of those conversions; which types have kernels, and the kernels, stay in
//! `quant`; reading files stays in `gguf`.

use super::quant::{BlockFmt, QK};
use crate::error::{Error, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

/// How a weight of another type became a native one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conversion {
    /// Every value kept exactly.
    Exact,
    /// Scales rounded to half precision.
    HalfScales,
    /// Values rounded to 8 bits a block.
    Rounded,
}

/// `t` (`[rows, cols]`, a type `BlockFmt::of` does not cover) as raw blocks of a native format.
pub fn to_native(t: &QTensor) -> Result<(BlockFmt, Vec<u8>, Conversion)> {
    let (rows, cols) = t.shape().dims2()?;
    if !cols.is_multiple_of(QK) {
        return Err(Error::Model(format!("a {:?} weight of {cols} columns (not whole blocks of {QK})", t.dtype())));
    }
    let data = t.data()?;
    let need = |block_bytes: usize, block_vals: usize| -> Result<()> {
        if !cols.is_multiple_of(block_vals) || data.len() != rows * cols / block_vals * block_bytes {
            return Err(Error::Model(format!("a {:?} weight of {} bytes for {rows}x{cols}", t.dtype(), data.len())));
        }
        Ok(())
    };
    Ok(match t.dtype() {
        GgmlDType::Q5_0 => {
            need(Q5_0_BYTES, QK)?;
            (BlockFmt::Q8_0, q5_0_to_q8_0(&data), Conversion::Exact)
        }
        GgmlDType::Q4K => {
            need(Q4K_BYTES, 256)?;
            (BlockFmt::Q4_1, q4k_to_q4_1(&data), Conversion::HalfScales)
        }
        _ => {
            let v = t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
            (BlockFmt::Q8_0, quantize_q8_0(&v), Conversion::Rounded)
        }
    })
}

const Q5_0_BYTES: usize = 22;
const Q4K_BYTES: usize = 144;

/// `Q5_0` blocks (`d`, 32 high bits, 16 bytes of nibbles; `w = d · (q - 16)`) as `Q8_0`.
pub fn q5_0_to_q8_0(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / Q5_0_BYTES * BlockFmt::Q8_0.bytes());
    for b in src.chunks_exact(Q5_0_BYTES) {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        out.extend_from_slice(&b[0..2]);
        let bit = |i: usize| (((qh >> i) & 1) as i32) << 4;
        out.extend((0..16).map(|j| ((qs[j] & 15) as i32 | bit(j)) - 16).map(|q| q as i8 as u8));
        out.extend((0..16).map(|j| ((qs[j] >> 4) as i32 | bit(j + 16)) - 16).map(|q| q as i8 as u8));
    }
    out
}

/// `Q4_K` super-blocks (256 values: `d`, `dmin`, 12 bytes of 6-bit scales and mins, 128 bytes
/// of nibbles; `w = d·sc_j · q - dmin·m_j` in sub-block `j`) as eight `Q4_1` blocks each.
pub fn q4k_to_q4_1(src: &[u8]) -> Vec<u8> {
    let h = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    let mut out = Vec::with_capacity(src.len() / Q4K_BYTES * 8 * BlockFmt::Q4_1.bytes());
    for b in src.chunks_exact(Q4K_BYTES) {
        let (d, dmin) = (h(&b[0..2]), h(&b[2..4]));
        let (scales, qs) = (&b[4..16], &b[16..144]);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, scales);
            out.extend_from_slice(&half::f16::from_f32(d * sc as f32).to_le_bytes());
            out.extend_from_slice(&half::f16::from_f32(-(dmin * m as f32)).to_le_bytes());
            // sub-block j: the low nibbles (even j) or high nibbles (odd j) of 32 bytes
            let chunk = &qs[j / 2 * 32..][..32];
            let v = |l: usize| if j % 2 == 0 { chunk[l] & 15 } else { chunk[l] >> 4 };
            for l in 0..16 {
                out.push(v(l) | (v(l + 16) << 4));
            }
        }
    }
    out
}

/// GGML's `get_scale_min_k4`: sub-block `j`'s 6-bit scale and min.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 15) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Values (a multiple of 32) as `Q8_0` blocks, rounded as llama.cpp's reference rounds them:
/// `d = max |x| / 127` (stored in half precision), `q = round(x / d)`, halves away from zero.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK * BlockFmt::Q8_0.bytes());
    for blk in x.chunks_exact(QK) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(blk.iter().map(|v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8));
    }
    out
}
