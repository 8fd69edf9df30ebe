//! Checks on a GGUF header that candle's `gguf_file` reader leaves to its callers, run before
//! and after it: `general.alignment` (0 would divide by zero in the reader; GGUF, like
//! llama.cpp, wants a power of two) and every tensor's extent (element count, byte size and
//! data range computed without overflow and inside the file), so that reading a tensor can
//! neither overflow nor allocate what the file does not hold. Walks bytes only; knows nothing
//! of models or tokenizers.

use candle_core::quantized::gguf_file::Content;
use std::io::Read;

/// What a hostile header can make the walk do, bounded: nested arrays, as in candle's reader.
const MAX_DEPTH: usize = 64;

struct Walk<'a, R> {
    r: &'a mut R,
    /// Bytes of the file, and the position reached (reads past the end fail first).
    size: u64,
    pos: u64,
    /// Length prefixes: u32 in GGUF v1, u64 after.
    wide: bool,
}

impl<R: Read> Walk<'_, R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|_| format!("header ends early at byte {}", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, String> {
        self.bytes::<4>().map(u32::from_le_bytes)
    }
    fn len(&mut self) -> Result<u64, String> {
        if self.wide {
            self.bytes::<8>().map(u64::from_le_bytes)
        } else {
            self.u32().map(u64::from)
        }
    }
    /// Moves `n` bytes on, refusing to pass the end. Read through rather than sought past, so
    /// a buffered reader keeps its buffer over the header's many small values.
    fn skip(&mut self, n: u64) -> Result<(), String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.size).ok_or_else(|| format!("a value of {n} bytes at byte {} passes the end of the file", self.pos))?;
        let got = std::io::copy(&mut (&mut *self.r).take(n), &mut std::io::sink()).map_err(|e| e.to_string())?;
        if got != n {
            return Err(format!("header ends early at byte {}", self.pos + got));
        }
        self.pos = end;
        Ok(())
    }
    fn string(&mut self) -> Result<Vec<u8>, String> {
        let n = self.len()?;
        if n > self.size.saturating_sub(self.pos) {
            return Err(format!("a string of {n} bytes at byte {} passes the end of the file", self.pos));
        }
        let mut v = vec![0u8; n as usize];
        self.r.read_exact(&mut v).map_err(|e| e.to_string())?;
        self.pos += n;
        Ok(v)
    }
    /// Fixed size of a scalar value type, or None for strings and arrays.
    fn scalar_size(t: u32) -> Result<Option<u64>, String> {
        Ok(Some(match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 | 9 => return Ok(None),
            other => return Err(format!("unknown metadata value type {other}")),
        }))
    }
    /// Reads a value of type `t`: the number where it is an integer, else None.
    fn value(&mut self, t: u32, depth: usize) -> Result<Option<i128>, String> {
        if depth > MAX_DEPTH {
            return Err(format!("metadata arrays nested deeper than {MAX_DEPTH}"));
        }
        match t {
            0 => Ok(Some(self.bytes::<1>()?[0].into())),
            1 => Ok(Some((self.bytes::<1>()?[0] as i8).into())),
            2 => Ok(Some(u16::from_le_bytes(self.bytes()?).into())),
            3 => Ok(Some(i16::from_le_bytes(self.bytes()?).into())),
            4 => Ok(Some(self.u32()?.into())),
            5 => Ok(Some(i32::from_le_bytes(self.bytes()?).into())),
            10 => Ok(Some(u64::from_le_bytes(self.bytes()?).into())),
            11 => Ok(Some(i64::from_le_bytes(self.bytes()?).into())),
            8 => {
                // a value string is only passed over (keys are read by `string`)
                let n = self.len()?;
                self.skip(n).map(|_| None)
            }
            9 => {
                let et = self.u32()?;
                let n = self.len()?;
                match Self::scalar_size(et)? {
                    Some(s) => self.skip(n.checked_mul(s).ok_or("array size overflows")?)?,
                    None => {
                        // every element takes at least 4 bytes: the loop is bounded by the file
                        for _ in 0..n {
                            if self.pos >= self.size {
                                return Err(format!("an array of {n} elements passes the end of the file"));
                            }
                            self.value(et, depth + 1)?;
                        }
                    }
                }
                Ok(None)
            }
            other => {
                let s = Self::scalar_size(other)?.unwrap_or(0);
                self.skip(s).map(|_| None)
            }
        }
    }
}

/// Walks the metadata and refuses a `general.alignment` that is 0 or not a power of two.
pub fn check_alignment<R: Read>(r: &mut R, size: u64) -> Result<(), String> {
    let mut w = Walk { r, size, pos: 0, wide: true };
    let head = w.bytes::<8>()?;
    if &head[..4] != b"GGUF" {
        // candle's reader gives the error for what is not GGUF at all
        return Ok(());
    }
    w.wide = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) >= 2;
    let _tensors = w.len()?;
    let kvs = w.len()?;
    for _ in 0..kvs {
        if w.pos >= w.size {
            return Err(format!("{kvs} metadata entries pass the end of the file"));
        }
        let key = w.string()?;
        let t = w.u32()?;
        let v = w.value(t, 0)?;
        if key == b"general.alignment" {
            if let Some(a) = v {
                if a <= 0 || a > u32::MAX.into() || (a & (a - 1)) != 0 {
                    return Err(format!("general.alignment {a} is not a power of two"));
                }
            }
        }
    }
    Ok(())
}

/// Refuses a tensor whose size overflows, whose element count does not fill whole blocks, or
/// whose data range leaves the file.
pub fn check_tensors(c: &Content, size: u64) -> Result<(), String> {
    for (name, t) in &c.tensor_infos {
        let elems = t.shape.dims().iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).ok_or_else(|| format!("tensor {name}: shape {:?} overflows", t.shape.dims()))?;
        let (bs, ts) = (t.ggml_dtype.block_size() as u64, t.ggml_dtype.type_size() as u64);
        if elems % bs != 0 {
            return Err(format!("tensor {name}: {elems} elements do not fill {bs}-element blocks of {:?}", t.ggml_dtype));
        }
        let bytes = (elems / bs).checked_mul(ts);
        let end = bytes.and_then(|b| c.tensor_data_offset.checked_add(t.offset)?.checked_add(b));
        match end {
            Some(e) if e <= size && usize::try_from(e).is_ok() => {}
            _ => return Err(format!("tensor {name}: {elems} elements of {:?} at data offset {} pass the end of the file ({size} bytes)", t.ggml_dtype, t.offset)),
        }
    }
    Ok(())
}
