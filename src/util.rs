//! Small shared helpers: atomic file writes, clock, durations, a seeded RNG. Nothing here knows
//! about adapters or models.

use crate::error::{Error, IoContext, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).at(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        unique_suffix()
    ));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        std::fs::rename(&tmp, path).at(path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Most bytes of an adapter weights file (a LoRA of a 70B base at r=64 is about 1.6 GB).
pub const MAX_WEIGHTS_BYTES: u64 = 8 << 30;
/// Most bytes of a JSON/TOML config, a tokenizer or a chat template file.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;
/// Most bytes of a training data file.
pub const MAX_DATA_BYTES: u64 = 2 << 30;

/// Reads a regular file (symlinks followed) of at most `max` bytes. A device, FIFO or
/// directory (`/dev/zero` behind a symlink) is refused before any read, and the read itself
/// stops at `max + 1` bytes, so a file growing under us cannot exhaust memory either.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).at(path)?;
    let meta = f.metadata().at(path)?;
    if !meta.is_file() {
        return Err(Error::InvalidArgument(format!("{}: not a regular file", path.display())));
    }
    if meta.len() > max {
        return Err(Error::InvalidArgument(format!("{}: {} bytes, more than the {max} allowed", path.display(), meta.len())));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    f.take(max + 1).read_to_end(&mut out).at(path)?;
    if out.len() as u64 > max {
        return Err(Error::InvalidArgument(format!("{}: grew past the {max} bytes allowed while read", path.display())));
    }
    Ok(out)
}

/// `read_bounded` as UTF-8 text.
pub fn read_text_bounded(path: &Path, max: u64) -> Result<String> {
    String::from_utf8(read_bounded(path, max)?).map_err(|_| Error::InvalidArgument(format!("{}: not UTF-8 text", path.display())))
}

pub fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    t ^ (N.fetch_add(1, Ordering::Relaxed) << 48)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Parses durations like `90s`, `15m`, `12h`, `30d`, `2w` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().map_err(|_| Error::InvalidArgument(format!("bad duration {s:?} (use e.g. 30d, 12h, 15m, 90s)")))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return Err(Error::InvalidArgument(format!("bad duration unit in {s:?} (s, m, h, d, w)"))),
    };
    n.checked_mul(mult).ok_or_else(|| Error::InvalidArgument(format!("duration {s:?} overflows")))
}

/// Calendar fields (year, month, day, hour, minute, second) of a Unix time, UTC.
pub fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Formats a Unix time as RFC 3339 UTC (no external time crate needed).
pub fn rfc3339(secs: i64) -> String {
    let (y, m, d, hh, mm, ss) = civil(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// SplitMix64: a tiny deterministic RNG (candle's CPU RNG cannot be seeded).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// The generator as it will be after `n` more draws (SplitMix64's state advances by a
    /// constant per draw, so streams can be split across threads and stay identical).
    pub fn ahead(&self, n: u64) -> Rng {
        Rng(self.0.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Normal with mean 0 and standard deviation `std` (Box–Muller, one sample per call).
    pub fn normal(&mut self, std: f32) -> f32 {
        let u1 = self.next_f32().max(1e-7);
        let u2 = self.next_f32();
        std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// `[vis] fn name(args) [-> ret] { body }`, plus an AVX2 + FMA build of the same body chosen at run time
/// (the body must not rely on anything the baseline build lacks). Kernels that should vectorize
/// 8-wide on x86-64 are written once through this.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),*) $body:block) => {
        $crate::util::simd_dispatch! { $(#[$m])* $vis fn $name($($a: $t),*) -> () $body }
    };
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),*) -> $r:ty $body:block) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) -> $r {
            #[inline(always)]
            fn body($($a: $t),*) -> $r $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($a: $t),*) -> $r {
                    body($($a),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features this variant is compiled for.
                    return unsafe { avx2($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// Flushes subnormal floats to zero (x86's FTZ and DAZ bits) on the calling thread and on every
/// thread of rayon's global pool, for the rest of the process. Training on an Intel Xeon met
/// subnormal values in the backward pass, and each multiply-add on one takes a microcode
/// assist: `en/insults` trained at 1 sample/s instead of 25, with the same loss and metrics
/// either way (values below 1.2e-38 become 0). For the `train` command only: inference keeps
/// the exact arithmetic its tests pin down. A no-op off x86-64.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    {
        #[allow(deprecated)]
        fn set() {
            // SAFETY: reads and writes this thread's MXCSR; FTZ (bit 15) and DAZ (bit 6) only
            // change how subnormal results and inputs are treated.
            unsafe { std::arch::x86_64::_mm_setcsr(std::arch::x86_64::_mm_getcsr() | 0x8040) }
        }
        set();
        rayon::broadcast(|_| set());
    }
}
