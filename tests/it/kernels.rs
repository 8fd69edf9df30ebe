//! The integer block kernels: every ISA build this CPU runs gives bit-identical outputs to the
//! AVX2 build for 1 to 4 rows, and all agree with a plain f32 dot of the dequantized values.

use loradex::model::quant::{dequantize_row, quantize_row, BlockFmt, Q8, QK};
use loradex::model::prefetch::Pace;
use loradex::model::qx8::{self, Isa};

pub(super) struct Lcg(pub(super) u64);
impl Lcg {
    pub(super) fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    pub(super) fn unit(&mut self) -> f32 {
        self.next() as f32 / (1u64 << 31) as f32 * 2.0 - 1.0
    }
}

/// `rows` rows of random GGML blocks with finite scales (and, for Q8_0, the extreme -128).
fn random_blocks(f: BlockFmt, rows: usize, cols: usize, rng: &mut Lcg) -> Vec<u8> {
    let mut v = vec![];
    for _ in 0..rows * cols / QK {
        v.extend_from_slice(&half::f16::from_f32(rng.unit() * 0.05).to_le_bytes());
        let mut quants = f.bytes() - 2;
        if f == BlockFmt::Q4_1 {
            v.extend_from_slice(&half::f16::from_f32(rng.unit() * 0.1).to_le_bytes());
            quants -= 2;
        }
        for i in 0..quants {
            v.push(if f == BlockFmt::Q8_0 && i == 0 { 0x80 } else { rng.next() as u8 });
        }
    }
    assert_eq!(v.len(), rows * cols / QK * f.bytes());
    v
}

#[test]
fn every_isa_gives_the_avx2_bits_and_the_dequantized_dot() {
    if !Isa::Avx2.supported() {
        eprintln!("no AVX2: the group kernels are not used on this CPU");
        return;
    }
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.supported()).collect();
    eprintln!("ISAs checked: {isas:?}");
    let (rows, cols) = (16, 8 * QK);
    let nb = cols / QK;
    let mut rng = Lcg(7);
    for f in [BlockFmt::Q4_0, BlockFmt::Q4_1, BlockFmt::Q8_0] {
        let raw = random_blocks(f, rows, cols, &mut rng);
        let packed = qx8::repack(f, rows, cols, &raw);
        // 4 activation rows, one of them with large values so the integer sums run near their bounds
        let x: Vec<f32> = (0..4 * cols).map(|i| if i < cols { if i % 2 == 0 { 9.0 } else { -9.0 } } else { rng.unit() * 3.0 }).collect();
        let mut q = vec![Q8 { d: 0.0, s: 0.0, qs: [0; QK] }; 4 * nb];
        for t in 0..4 {
            quantize_row(&x[t * cols..][..cols], &mut q[t * nb..][..nb]);
        }
        for g in 1..=4 {
            for grp in 0..rows / 8 {
                let xs: [*const Q8; 4] = std::array::from_fn(|i| q[i.min(g - 1) * nb..].as_ptr());
                let run = |isa: Isa| {
                    let mut out = [[0f32; 8]; 4];
                    // SAFETY: the ISA is supported; packed holds rows / 8 groups of nb blocks; each xs row has nb blocks.
                    unsafe { qx8::group_with(isa, f, &packed, grp, nb, &xs, g, &mut out) };
                    out
                };
                let want = run(Isa::Avx2);
                for &isa in &isas {
                    let got = run(isa);
                    for t in 0..g {
                        let (a, b): (Vec<u32>, Vec<u32>) = (got[t].iter().map(|v| v.to_bits()).collect(), want[t].iter().map(|v| v.to_bits()).collect());
                        assert_eq!(a, b, "{f:?} {isa:?} g={g} group {grp} token {t}");
                    }
                }
                // against f32: dequantized weight row · dequantized activation row
                for t in 0..g {
                    let xq: Vec<f32> = q[t * nb..][..nb].iter().flat_map(|b| b.qs.iter().map(move |v| *v as f32 * b.d)).collect();
                    for (r, got) in want[t].iter().enumerate() {
                        let row = grp * 8 + r;
                        let mut w = vec![0f32; cols];
                        dequantize_row(f, &raw[row * nb * f.bytes()..][..nb * f.bytes()], &mut w);
                        let exact: f64 = w.iter().zip(&xq).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let scale: f64 = w.iter().zip(&xq).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum::<f64>() + 1e-6;
                        let err = (*got as f64 - exact).abs();
                        assert!(err <= 1e-3 * scale, "{f:?} g={g} row {row} token {t}: {got} vs {exact} (scale {scale})");
                    }
                }
            }
        }
    }
}

#[test]
fn an_isa_this_cpu_lacks_is_refused() {
    for isa in Isa::ALL {
        assert_eq!(qx8::set_isa(isa).is_ok(), isa.supported(), "{isa:?}");
    }
    // leave the process on the best build for the other tests
    qx8::set_isa(Isa::best()).ok();
}

#[test]
fn the_simd_row_quantizer_gives_the_portable_bits() {
    use loradex::model::quant::quantize_row_portable;
    let mut rng = Lcg(11);
    let cols = 16 * QK;
    // ordinary values, exact halves (ties to even), an all-zero block, one huge block
    let mut x: Vec<f32> = (0..cols).map(|_| rng.unit() * 4.0).collect();
    for (i, v) in x[QK..2 * QK].iter_mut().enumerate() {
        *v = (i as f32 - 16.0) + 0.5;
    }
    x[2 * QK..3 * QK].fill(0.0);
    x[3 * QK..4 * QK].iter_mut().for_each(|v| *v *= 1e30);
    let blank = Q8 { d: 0.0, s: 0.0, qs: [0; QK] };
    let (mut a, mut b) = (vec![blank; cols / QK], vec![blank; cols / QK]);
    quantize_row(&x, &mut a);
    quantize_row_portable(&x, &mut b);
    for (i, (p, q)) in a.iter().zip(&b).enumerate() {
        assert_eq!((p.d.to_bits(), p.s.to_bits(), p.qs), (q.d.to_bits(), q.s.to_bits(), q.qs), "block {i}");
    }
}

/// `tokens` activation rows of `cols` values, quantized: the first row's values at the
/// quantizer's extremes, so integer sums run near their bounds.
fn extreme_activations(tokens: usize, cols: usize, rng: &mut Lcg) -> Vec<Q8> {
    let nb = cols / QK;
    let x: Vec<f32> = (0..tokens * cols).map(|i| if i < cols { if i % 3 == 0 { -7.0 } else { 7.0 } } else { rng.unit() * 2.0 }).collect();
    let mut q = vec![Q8 { d: 0.0, s: 0.0, qs: [0; QK] }; tokens * nb];
    for t in 0..tokens {
        quantize_row(&x[t * cols..][..cols], &mut q[t * nb..][..nb]);
    }
    q
}

/// Asserts that `got`, the outputs of groups `grp` and `grp + 1` for the token whose blocks
/// start at `xt`, has the AVX2 kernel's bits.
///
/// # Safety
/// The CPU has AVX2; groups `grp` and `grp + 1` exist in `packed`; `xt` points at `nb` blocks.
unsafe fn assert_avx2_bits(f: BlockFmt, packed: &[u8], grp: usize, nb: usize, xt: *const Q8, got: &[f32; 16], what: &str) {
    for half in 0..2 {
        let mut narrow = [[0f32; 8]; 4];
        unsafe { qx8::group_with(Isa::Avx2, f, packed, grp + half, nb, &[xt; 4], 1, &mut narrow) };
        let a: Vec<u32> = got[half * 8..][..8].iter().map(|v| v.to_bits()).collect();
        let b: Vec<u32> = narrow[0].iter().map(|v| v.to_bits()).collect();
        assert_eq!(a, b, "{f:?} {what} group {}", grp + half);
    }
}

#[test]
fn the_512_bit_group_pairs_give_the_avx2_bits_for_1_to_8_tokens() {
    if !Isa::Avx512Vnni.supported() {
        eprintln!("no AVX-512 VNNI on this CPU: pair512 is not used here");
        return;
    }
    use qx8::PAIR_TOKENS as P;
    let (rows, cols) = (32, 6 * QK);
    let nb = cols / QK;
    let mut rng = Lcg(13);
    for f in [BlockFmt::Q4_0, BlockFmt::Q4_1, BlockFmt::Q8_0] {
        let packed = qx8::repack(f, rows, cols, &random_blocks(f, rows, cols, &mut rng));
        let q = extreme_activations(P, cols, &mut rng);
        for g in 1..=P {
            for grp in [0, 2] {
                let xs: [*const Q8; P] = std::array::from_fn(|i| q[i.min(g - 1) * nb..].as_ptr());
                let mut wide = [[0f32; 16]; P];
                // SAFETY: AVX-512 VNNI was detected; groups grp and grp + 1 exist; each xs row has nb blocks.
                unsafe { qx8::pair512(f, &packed, grp, nb, &xs, g, &mut wide) };
                for t in 0..g {
                    // SAFETY: as above (AVX2 is implied), one token.
                    unsafe { assert_avx2_bits(f, &packed, grp, nb, xs[t], &wide[t], &format!("g={g} token {t}")) };
                }
            }
        }
    }
}

/// AMX tiles (two groups, 1 to 16 tokens per tile multiply) give the AVX2 kernel's bits for
/// every token, so a row's result does not depend on which kernel its batch size chose.
#[test]
fn amx_tiles_give_the_avx2_bits_for_1_to_16_tokens() {
    if !Isa::Amx.supported() {
        eprintln!("no AMX on this CPU (or Linux refused the tile state): the tile kernel is not used here");
        return;
    }
    use loradex::model::qx8_amx::{tile16, TILE_TOKENS as T};
    let (rows, cols) = (32, 7 * QK);
    let nb = cols / QK;
    let mut rng = Lcg(19);
    for f in [BlockFmt::Q4_0, BlockFmt::Q4_1, BlockFmt::Q8_0] {
        let packed = qx8::repack(f, rows, cols, &random_blocks(f, rows, cols, &mut rng));
        let q = extreme_activations(T, cols, &mut rng);
        for m in 1..=T {
            for grp in [0, 2] {
                let mut tiled = [[0f32; 16]; T];
                // SAFETY: AMX was detected; groups grp and grp + 1 exist; q holds m rows of nb blocks.
                unsafe { tile16(f, &packed, grp, nb, q.as_ptr(), m, &mut tiled, &mut Pace::default()) };
                for t in 0..m {
                    // SAFETY: AVX2 is implied by AMX; row t of q holds nb blocks.
                    unsafe { assert_avx2_bits(f, &packed, grp, nb, q[t * nb..].as_ptr(), &tiled[t], &format!("m={m} token {t}")) };
                }
            }
        }
    }
}

#[test]
fn attention_matches_a_plain_softmax_over_every_length() {
    use loradex::model::quant::{attend, Scores};
    let mut rng = Lcg(17);
    let (hd, stride, off) = (64, 192, 64);
    // with and without Gemma 2's soft cap (0.3: well inside tanh's bend for these scores)
    for (len, cap) in [1usize, 5, 8, 9, 47, 64].into_iter().flat_map(|l| [(l, None), (l, Some(0.3f32))]) {
        let q: Vec<f32> = (0..hd).map(|_| rng.unit()).collect();
        let k: Vec<f32> = (0..len * stride).map(|_| rng.unit()).collect();
        let v: Vec<f32> = (0..len * stride).map(|_| rng.unit()).collect();
        let scale = 0.125f32;
        let mut out = vec![0f32; hd];
        attend(&q, &k, &v, stride, off, len - 1, Scores { scale, cap }, &mut out);
        let capped = |x: f64| cap.map_or(x, |c| (x / c as f64).tanh() * c as f64);
        let s: Vec<f64> = (0..len).map(|p| capped((0..hd).map(|d| q[d] as f64 * k[p * stride + off + d] as f64).sum::<f64>() * scale as f64)).collect();
        let m = s.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for d in 0..hd {
            let want: f64 = (0..len).map(|p| e[p] / z * v[p * stride + off + d] as f64).sum();
            assert!((out[d] as f64 - want).abs() < 1e-5, "len {len} cap {cap:?} dim {d}: {} vs {want}", out[d]);
        }
    }
}

#[test]
fn grouped_attention_equals_one_head_at_a_time_over_f32_and_widened_f16_caches() {
    use loradex::model::attention::{with_f16_kernel, F16Kernel};
    use loradex::model::quant::{attend, attend_group, KvRows, Scores};
    let mut rng = Lcg(23);
    // (head dim, query heads per key/value head): the register-widening path takes head dims
    // that are multiples of 16 and 1 to 4 heads; the others go through the widened scratch
    let shapes = [(64, 3), (64, 1), (32, 4), (128, 2), (64, 5), (40, 3)];
    let scores = [Scores::scaled(0.125), Scores { scale: 0.125, cap: Some(0.5) }];
    // lengths about the AVX-512 kernel's blocks of 16 positions too
    for ((len, (hd, rep)), sc) in [1usize, 7, 8, 15, 16, 17, 33, 100].into_iter().flat_map(|l| shapes.map(|s| (l, s))).flat_map(|c| scores.map(|sc| (c, sc))) {
        let (kvh, stride) = (2, 3 * hd);
        let q: Vec<f32> = (0..rep * hd).map(|_| rng.unit()).collect();
        let k: Vec<f32> = (0..len * stride).map(|_| rng.unit()).collect();
        let v: Vec<f32> = (0..len * stride).map(|_| rng.unit()).collect();
        let off = kvh * hd;
        let one = |k: &[f32], v: &[f32]| -> Vec<u32> {
            let mut out = vec![0f32; rep * hd];
            for (qh, o) in q.chunks(hd).zip(out.chunks_mut(hd)) {
                attend(qh, k, v, stride, off, len - 1, sc, o);
            }
            out.iter().map(|x| x.to_bits()).collect()
        };
        let mut got = vec![0f32; rep * hd];
        attend_group(&q, hd, KvRows::F32(&k), KvRows::F32(&v), stride, off, len - 1, sc, &mut got);
        assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), one(&k, &v), "f32 cache, {len} positions, hd {hd} x {rep}, {sc:?}");
        // an f16 cache gives what the same rounded values give in f32
        let h = |x: &[f32]| -> Vec<u16> { x.iter().map(|v| half::f16::from_f32(*v).to_bits()).collect() };
        let w = |x: &[u16]| -> Vec<f32> { x.iter().map(|b| half::f16::from_bits(*b).to_f32()).collect() };
        let (k16, v16) = (h(&k), h(&v));
        let want = one(&w(&k16), &w(&v16));
        // each register-widening kernel (AVX-512 falls back to AVX2 where the CPU lacks it)
        for kernel in [F16Kernel::Avx2, F16Kernel::Avx512] {
            with_f16_kernel(kernel, || attend_group(&q, hd, KvRows::F16(&k16), KvRows::F16(&v16), stride, off, len - 1, sc, &mut got));
            assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want, "f16 cache, {kernel:?}, {len} positions, hd {hd} x {rep}, {sc:?}");
        }
    }
}

#[test]
fn widening_f16_is_exact_on_every_path() {
    use loradex::model::quant::widen_f16;
    // every finite f16 and a few specials, in lengths that leave scalar tails
    let all: Vec<u16> = (0..=u16::MAX).filter(|b| half::f16::from_bits(*b).is_finite()).collect();
    for n in [1usize, 7, 8, 9, all.len()] {
        let mut out = vec![0f32; n];
        widen_f16(&all[..n], &mut out);
        for (b, o) in all[..n].iter().zip(&out) {
            assert_eq!(o.to_bits(), half::f16::from_bits(*b).to_f32().to_bits(), "f16 bits {b:#06x}");
        }
    }
}

/// A row's low-rank term beside a quantized base (half-precision factors) is `dot_half`'s
/// `h = A x`, one factor row at a time, times the up-projection in rank order, bit for bit:
/// the down-projection is computed four factor rows at once, and that must not change a bit.
/// Ranks 1 to 9 cover the four-row groups and their remainders; 40 columns leave a tail after
/// the 16-wide steps.
#[test]
fn the_low_rank_term_gives_one_factor_row_at_a_time_bits_at_every_rank() {
    use loradex::model::quant::{block8, dot_half, matmul, Act, Half, LowRank, QWeight};
    let (rows, cols, n) = (24, 40, 3);
    let mut rng = Lcg(23);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
    let w = QWeight::f32(rows, cols, w).unwrap();
    let x: Vec<f32> = (0..n * cols).map(|_| rng.unit()).collect();
    let mut base = vec![0f32; n * rows];
    matmul(&w, &Act::new(&x, n, cols), &[None, None, None], &mut base).unwrap();
    for r in 1..=9 {
        let a: Vec<u16> = (0..r * cols).map(|_| half::f16::from_f32(rng.unit()).to_bits()).collect();
        let b: Vec<f32> = (0..r * rows).map(|_| rng.unit() * 0.1).collect();
        let bt = block8(&b, r, rows);
        let lora: Vec<Option<LowRank>> = (0..n).map(|t| (t != 1).then(|| LowRank::new(Half::F16(&a), Half::F16x8(&bt)))).collect();
        let mut y = vec![0f32; n * rows];
        matmul(&w, &Act::new(&x, n, cols), &lora, &mut y).unwrap();
        for t in 0..n {
            let xt = &x[t * cols..][..cols];
            let h: Vec<f32> = (0..r).map(|j| dot_half(Half::F16(&a[j * cols..][..cols]), xt)).collect();
            for o in 0..rows {
                let mut want = base[t * rows + o];
                if t != 1 {
                    for (j, hj) in h.iter().enumerate() {
                        let bj = half::f16::from_f32(b[j * rows + o]).to_f32();
                        want = hj.mul_add(bj, want);
                    }
                }
                assert_eq!(y[t * rows + o].to_bits(), want.to_bits(), "rank {r} token {t} output {o}");
            }
        }
    }
}

/// Greedy decoding's argmax (16 vector lanes, then the first index holding the largest) picks
/// what a scan keeping the first strictly larger value picks: ties go to the lower id, NaN never
/// wins, a NaN first stays, and -0.0 ties with 0.0.
#[test]
fn argmax_picks_what_a_first_strictly_larger_scan_picks() {
    use loradex::model::llama::argmax;
    let scan = |v: &[f32]| {
        let mut best = 0;
        for (i, x) in v.iter().enumerate() {
            if *x > v[best] {
                best = i;
            }
        }
        best as u32
    };
    let mut rng = Lcg(29);
    let specials = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, 0.0, -0.0, 1.0];
    for len in [0usize, 1, 2, 15, 16, 17, 33, 200, 49_152] {
        for case in 0..40 {
            // few distinct values, so that ties are common; specials sprinkled in
            let mut v: Vec<f32> = (0..len).map(|_| (rng.next() % 7) as f32 - 3.0).collect();
            for _ in 0..case % 5 {
                if len > 0 {
                    let i = rng.next() as usize % len;
                    v[i] = specials[rng.next() as usize % specials.len()];
                }
            }
            if case == 7 && len > 0 {
                v[0] = f32::NAN;
            }
            if case == 8 {
                v.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            }
            assert_eq!(argmax(&v), scan(&v), "length {len}, case {case}: {:?}", &v[..len.min(40)]);
        }
    }
}

/// A kernel's prefetch pace asks for every line that its ranges touch exactly once, in order,
/// for ranges of every alignment and length, and spreads them over the steps it is given.
#[test]
fn a_prefetch_pace_asks_for_every_line_once() {
    let buf = vec![0u8; 1 << 16];
    // disjoint ranges at least a line apart, so no two share a line
    let mut ranges = vec![];
    let mut at = 0;
    for (skip, len) in [(1, 1), (70, 63), (5, 64), (64, 65), (3, 200), (0, 4096), (130, 0), (1, 127)] {
        at += skip + 64;
        ranges.push(&buf[at..at + len]);
        at += len;
    }
    let mut want: Vec<usize> = ranges.iter().flat_map(|r| r.iter().map(|b| b as *const u8 as usize / 64 * 64)).collect();
    want.dedup();
    let make = || {
        let mut p = Pace::default();
        ranges.iter().for_each(|r| p.push(r));
        p
    };
    let mut p = make();
    assert_eq!(p.left(), want.len());
    let got: Vec<usize> = std::iter::from_fn(|| p.next_line()).collect();
    assert_eq!(got, want);
    for steps in [1, 3, 7, want.len(), 10 * want.len()] {
        let mut p = make();
        p.over(steps);
        for _ in 0..steps {
            p.step();
        }
        assert_eq!(p.left(), 0, "{steps} steps");
    }
    let mut p = make();
    p.over(want.len().div_ceil(2));
    p.step();
    assert_eq!(p.left(), want.len() - 2, "two lines a step");
}
