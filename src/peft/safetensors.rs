//! A safetensors reader that cannot panic on hostile bytes: the header size is capped, every
//! offset is checked arithmetic, every tensor must lie inside the file, match its shape and
//! dtype, and not overlap another. Also the writer used for adapters loradex itself produces.
//! Knows nothing about PEFT key names; `peft` maps names, `model` turns views into tensors.

use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// Largest header accepted. PEFT adapters have headers of a few KiB; a 100 MB header is hostile.
pub const MAX_HEADER: u64 = 16 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    U8,
    I8,
    Bool,
}

impl Dtype {
    fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "F64" => Dtype::F64,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "BOOL" => Dtype::Bool,
            _ => return None,
        })
    }
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U8 | Dtype::I8 | Dtype::Bool => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::Bool => "BOOL",
        }
    }
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range inside the data section.
    pub start: usize,
    pub end: usize,
}

/// A parsed, validated safetensors buffer: tensor infos plus the data they point into.
pub struct SafeView<'a> {
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
    data: &'a [u8],
}

impl<'a> SafeView<'a> {
    /// Parses and validates `bytes`. `path` is only used in error messages.
    pub fn parse(bytes: &'a [u8], path: &str) -> Result<SafeView<'a>> {
        let (header_len, header) = read_header(bytes, path)?;
        let data_start = 8usize + header_len;
        let data = &bytes[data_start..];
        let (tensors, metadata) = parse_header(header, path)?;
        // every tensor inside the data section; no overlaps; data fully covered
        let mut ranges: Vec<(usize, usize, &str)> = tensors.iter().map(|(k, t)| (t.start, t.end, k.as_str())).collect();
        ranges.sort();
        let mut cursor = 0usize;
        for (s, e, name) in &ranges {
            if *e > data.len() {
                return Err(Error::Truncated {
                    path: path.into(),
                    detail: format!("tensor {name} ends at byte {e} of a {}-byte data section", data.len()),
                });
            }
            if *s != cursor {
                return Err(bad(path, format!("tensor {name} starts at {s}, expected {cursor} (gap or overlap)")));
            }
            cursor = *e;
        }
        if cursor != data.len() {
            return Err(bad(path, format!("{} trailing bytes after the last tensor", data.len() - cursor)));
        }
        Ok(SafeView { tensors, metadata, data })
    }

    pub fn bytes(&self, name: &str) -> Option<&'a [u8]> {
        self.tensors.get(name).map(|t| &self.data[t.start..t.end])
    }

    /// The tensor converted to f32 (F32, F16, BF16 and F64 are accepted).
    pub fn to_f32(&self, name: &str, path: &str) -> Result<Vec<f32>> {
        let t = self.tensors.get(name).ok_or_else(|| Error::TensorMismatch { tensor: name.into(), detail: "missing".into() })?;
        let b = &self.data[t.start..t.end];
        Ok(match t.dtype {
            Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect(),
            Dtype::BF16 => b.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)).collect(),
            Dtype::F16 => b.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
            other => {
                return Err(Error::UnsupportedDtype { path: path.into(), tensor: name.into(), dtype: other.name().into() })
            }
        })
    }
}

fn bad(path: &str, detail: String) -> Error {
    Error::BadHeader { path: path.into(), detail }
}

/// Reads the 8-byte length prefix and returns the header slice, checking every bound.
pub fn read_header<'a>(bytes: &'a [u8], path: &str) -> Result<(usize, &'a [u8])> {
    if bytes.len() < 8 {
        return Err(Error::Truncated { path: path.into(), detail: format!("{} bytes, need at least 8", bytes.len()) });
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER {
        return Err(Error::HeaderTooLarge { path: path.into(), size: n, limit: MAX_HEADER });
    }
    let n = n as usize;
    let end = 8usize.checked_add(n).ok_or_else(|| bad(path, "header size overflows".into()))?;
    if end > bytes.len() {
        return Err(Error::Truncated {
            path: path.into(),
            detail: format!("header claims {n} bytes but only {} follow", bytes.len() - 8),
        });
    }
    Ok((n, &bytes[8..end]))
}

type Header = (BTreeMap<String, TensorInfo>, BTreeMap<String, String>);

/// Parses the JSON header into tensor infos, validating dtype, shape and byte length.
pub fn parse_header(header: &[u8], path: &str) -> Result<Header> {
    let v: serde_json::Value = serde_json::from_slice(header).map_err(|e| bad(path, format!("not JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| bad(path, "header is not a JSON object".into()))?;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, entry) in obj {
        if name == "__metadata__" {
            let m = entry.as_object().ok_or_else(|| bad(path, "__metadata__ is not an object".into()))?;
            for (k, v) in m {
                let s = v.as_str().ok_or_else(|| bad(path, format!("__metadata__.{k} is not a string")))?;
                metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        let e = entry.as_object().ok_or_else(|| bad(path, format!("{name}: entry is not an object")))?;
        let dtype_s = e.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad(path, format!("{name}: no dtype")))?;
        let dtype = Dtype::parse(dtype_s)
            .ok_or_else(|| Error::UnsupportedDtype { path: path.into(), tensor: name.clone(), dtype: dtype_s.into() })?;
        let shape: Vec<usize> = e
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad(path, format!("{name}: no shape")))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad(path, format!("{name}: shape must be non-negative integers")))?;
        let offs = e
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .ok_or_else(|| bad(path, format!("{name}: data_offsets must be [start, end]")))?;
        let start = offs[0].as_u64().and_then(|x| usize::try_from(x).ok());
        let end = offs[1].as_u64().and_then(|x| usize::try_from(x).ok());
        let (Some(start), Some(end)) = (start, end) else {
            return Err(bad(path, format!("{name}: data_offsets must be non-negative integers")));
        };
        if end < start {
            return Err(bad(path, format!("{name}: data_offsets end {end} < start {start}")));
        }
        // every partial product must fit, in any order: tensor libraries compute strides from
        // the last dimension, so [4, 0, 2^40, 2^40] (zero elements) still overflows there
        if shape.iter().filter(|&&d| d != 0).try_fold(1usize, |a, &d| a.checked_mul(d)).is_none() {
            return Err(bad(path, format!("{name}: shape {shape:?} overflows")));
        }
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let nbytes = numel.and_then(|n| n.checked_mul(dtype.size()));
        if nbytes != Some(end - start) {
            return Err(bad(path, format!("{name}: shape {shape:?} of {dtype_s} does not fit {} bytes", end - start)));
        }
        tensors.insert(name.clone(), TensorInfo { dtype, shape, start, end });
    }
    Ok((tensors, metadata))
}

/// Reads only the header of a (possibly multi-GB) safetensors file: names, dtypes, shapes.
pub fn read_file_header(path: &std::path::Path) -> Result<BTreeMap<String, TensorInfo>> {
    use crate::error::IoContext;
    use std::io::Read;
    let p = path.display().to_string();
    let mut f = std::fs::File::open(path).at(path)?;
    let file_len = f.metadata().at(path)?.len();
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8).map_err(|_| Error::Truncated { path: p.clone(), detail: "no length prefix".into() })?;
    let n = u64::from_le_bytes(len8);
    if n > MAX_HEADER {
        return Err(Error::HeaderTooLarge { path: p, size: n, limit: MAX_HEADER });
    }
    if n + 8 > file_len {
        return Err(Error::Truncated { path: p, detail: format!("header claims {n} bytes, file has {file_len}") });
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).at(path)?;
    let (tensors, _) = parse_header(&header, &p)?;
    let data_len = file_len - 8 - n;
    if let Some((name, t)) = tensors.iter().find(|(_, t)| t.end as u64 > data_len) {
        return Err(Error::Truncated { path: p, detail: format!("tensor {name} ends at {} beyond data of {data_len} bytes", t.end) });
    }
    Ok(tensors)
}

/// Serializes f32 tensors as safetensors, in the order the reference implementation writes
/// (sorted by name; all F32), with `{"format": "pt"}` metadata as PEFT does.
pub fn write_f32(tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), "pt".into());
    header.insert("__metadata__".into(), meta.into());
    let mut offset = 0usize;
    for (name, (shape, data)) in tensors {
        let n = data.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).expect("header serializes");
    // pad the header with spaces to 8-byte alignment, as the reference writer does
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for (_, data) in tensors.values() {
        for x in data {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // subnormal: normalize
            let mut e = 127 - 15 + 1;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}
