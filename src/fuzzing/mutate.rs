//! A small seeded mutator, so the test suite can run every fuzz target over mutations of its
//! seeds on every build (a few thousand inputs, not libFuzzer's millions, and without its
//! coverage feedback): bit flips, interesting bytes and integers, inserted, deleted, repeated
//! and truncated ranges, and tokens of the formats fuzzed. The same seed gives the same
//! inputs on every machine. Knows nothing of what the bytes mean.

pub use crate::util::Rng;

const BYTES: [u8; 12] = [0, 1, 0x7f, 0x80, 0xff, b'{', b'"', b'\\', b'\n', b',', b'0', b'-'];
const INTS: [u64; 10] = [0, 1, 2, 0x7f, 0xffff, 0x7fff_ffff, 0xffff_ffff, 1 << 32, 1 << 40, u64::MAX];
/// Tokens of JSON, TOML, CSV and GGUF metadata that byte flips rarely produce.
const TOKENS: [&[u8]; 18] = [
    b"null", b"-1", b"1e308", b"0", b"\"\"", b"[]", b"{}", b"\"\\u0000\"", b"true", b"\"r\": 0", b"\"a\":", b"=", b"\n[lora]\n", b"\"\"\"",
    b"general.alignment", b"\xff\xff\xff\xff", b"\xed\xa0\x80", b"\r\n",
];

/// `seed` changed by one to four random mutations.
pub fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let n = v.len();
        match rng.below(9) {
            0 if n > 0 => {
                let i = rng.below(n);
                v[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let i = rng.below(n);
                v[i] = BYTES[rng.below(BYTES.len())];
            }
            2 if n > 0 => {
                let w = [1, 2, 4, 8][rng.below(4)];
                let x = INTS[rng.below(INTS.len())].to_le_bytes();
                let i = rng.below(n);
                for (k, b) in x[..w].iter().enumerate() {
                    if let Some(d) = v.get_mut(i + k) {
                        *d = *b;
                    }
                }
            }
            3 => {
                let i = rng.below(n + 1);
                let add: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next_u64() as u8).collect();
                v.splice(i..i, add);
            }
            4 if n > 0 => {
                let i = rng.below(n);
                let len = 1 + rng.below((n - i).min(1 + n / 4));
                v.drain(i..i + len);
            }
            5 if n > 0 => {
                let i = rng.below(n);
                let len = 1 + rng.below((n - i).min(64));
                let chunk = v[i..i + len].to_vec();
                let at = rng.below(n + 1);
                v.splice(at..at, chunk);
            }
            6 if n > 0 => v.truncate(rng.below(n)),
            7 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let i = rng.below(n + 1);
                v.splice(i..i, t.iter().copied());
            }
            _ => {
                // a run of ASCII digits becomes an extreme number
                let starts: Vec<usize> = (0..n).filter(|&i| v[i].is_ascii_digit() && (i == 0 || !v[i - 1].is_ascii_digit())).collect();
                if let Some(&s) = starts.get(rng.below(starts.len().max(1))) {
                    let e = (s..n).find(|&i| !v[i].is_ascii_digit()).unwrap_or(n);
                    let with: &[u8] = [&b"0"[..], b"99999999999999999999", b"4294967296", b"-1", b"18446744073709551615"][rng.below(5)];
                    v.splice(s..e, with.iter().copied());
                }
            }
        }
    }
    v
}

/// An input a target panicked on.
#[derive(Debug)]
pub struct Finding {
    pub input: Vec<u8>,
    pub message: String,
}

/// Runs `target` over every seed and `per_seed` mutations of each; the first panic is
/// returned with its input. Returns the number of inputs run.
pub fn run(target: super::Target, seeds: &[Vec<u8>], per_seed: usize, seed: u64) -> Result<usize, Box<Finding>> {
    let mut rng = Rng::new(seed);
    let mut count = 0;
    let one = |input: Vec<u8>| -> Result<(), Box<Finding>> {
        std::panic::catch_unwind(|| target(&input)).map_err(|p| {
            let message = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Box::new(Finding { input: input.clone(), message })
        })
    };
    for s in seeds {
        one(s.clone())?;
        count += 1;
        for _ in 0..per_seed {
            one(mutate(s, &mut rng))?;
            count += 1;
        }
    }
    Ok(count)
}
