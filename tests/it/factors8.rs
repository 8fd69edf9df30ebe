//! LoRA factors in 8 bits (`--lora-factors int8`): the rounding's bound, the AVX2 kernels
//! against the portable ones that define their bits, and a decoder reading them: batch
//! invariance over several adapters, logits near the half-precision factors', and the refusal
//! beside an f32 base.

use super::common::*;
use super::generate::{batch_invariance, cpu_engine, load_adapter, position_logits, write_gguf};
use super::kernels::Lcg;
use candle_core::quantized::GgmlDType;
use loradex::model::factors8::{self, FactorDtype, Factors8, A_BLOCK};
use loradex::model::quant::{matmul, Act, Half, LowRank, QWeight};
use loradex::model::{Engine, Prompt};

/// Each value comes back within half a step of its own block's scale, the blocks are where the
/// layout says (a short last block of a factor row; the up-projection's last run zero-padded),
/// and an all-zero block has scale 0 and values 0.
#[test]
fn eight_bit_factors_round_each_value_within_half_a_step_of_its_block() {
    let mut rng = Lcg(41);
    for (r, cols, rows) in [(1, 32, 8), (3, 40, 13), (8, 576, 192), (4, 70, 9)] {
        // one factor row of A is zero; its blocks must come back zero
        let a: Vec<f32> = (0..r * cols).map(|i| if i / cols == r - 1 && r > 1 { 0.0 } else { rng.unit() * (1 + i % 7) as f32 }).collect();
        let bt: Vec<f32> = (0..r * rows).map(|_| rng.unit() * 0.01).collect();
        let f = Factors8::new(&a, &bt, r);
        let nb = cols.div_ceil(A_BLOCK);
        assert_eq!((f.a.len(), f.a_d.len()), (r * cols, r * nb), "A's layout, rank {r}");
        assert_eq!((f.bt.len(), f.bt_d.len()), (r * rows.div_ceil(8) * 8, rows.div_ceil(8)), "B's layout, rank {r}");
        for j in 0..r {
            for c in 0..cols {
                let d = f.a_d[j * nb + c / A_BLOCK];
                let back = d * f.a[j * cols + c] as f32;
                assert!((back - a[j * cols + c]).abs() <= d * 0.5 + 1e-12, "A[{j}, {c}]: {back} for {}", a[j * cols + c]);
                if j == r - 1 && r > 1 {
                    assert_eq!((d, f.a[j * cols + c]), (0.0, 0), "a zero row stays zero");
                }
            }
        }
        for j in 0..r {
            for o in 0..rows.div_ceil(8) * 8 {
                let d = f.bt_d[o / 8];
                let q = f.bt[(o / 8) * r * 8 + j * 8 + o % 8];
                let want = if o < rows { bt[j * rows + o] } else { 0.0 };
                assert!((d * q as f32 - want).abs() <= d * 0.5 + 1e-12, "(s·B)ᵀ[{j}, {o}]");
                if o >= rows {
                    assert_eq!(q, 0, "padding is zero");
                }
            }
        }
    }
}

/// `dot_rows` and `low_rank` on the CPU's kernel give the portable kernels' bits for every
/// rank from 1 to 9 (the four-row groups and their remainders), factor rows with and without a
/// short last block, and output ranges with a short last run; and a matrix call with 8-bit
/// terms adds exactly what those kernels add.
#[test]
fn eight_bit_factor_kernels_give_the_portable_kernels_bits() {
    let mut rng = Lcg(43);
    for cols in [32, 40, 96, 100] {
        for r in 1..=9 {
            let a: Vec<f32> = (0..r * cols).map(|_| rng.unit()).collect();
            let f = Factors8::new(&a, &vec![0.0; r * 8], r);
            let x: Vec<f32> = (0..cols).map(|_| rng.unit() * 3.0).collect();
            let (mut got, mut want) = (vec![0f32; r], vec![0f32; r]);
            factors8::dot_rows(&f.a, &f.a_d, cols, &x, &mut got);
            factors8::dot_rows_portable(&f.a, &f.a_d, cols, &x, &mut want);
            assert_eq!(bits(&got), bits(&want), "A x: rank {r}, {cols} columns");
            // and both are the dot of the rounded values, to f32's accuracy
            for (j, g) in got.iter().enumerate() {
                let exact: f64 = (0..cols).map(|c| (f.a_d[j * cols.div_ceil(A_BLOCK) + c / A_BLOCK] * f.a[j * cols + c] as f32) as f64 * x[c] as f64).sum();
                assert!((*g as f64 - exact).abs() < 1e-4 * (1.0 + exact.abs()), "A x row {j}: {g} vs {exact}");
            }
        }
    }
    for rows in [8, 24, 29] {
        for r in 1..=9 {
            let bt: Vec<f32> = (0..r * rows).map(|_| rng.unit() * 0.1).collect();
            let f = Factors8::new(&vec![0.0; r * 32], &bt, r);
            let h: Vec<f32> = (0..r).map(|_| rng.unit()).collect();
            for o0 in (0..rows).step_by(8) {
                let y0: Vec<f32> = (0..rows - o0).map(|_| rng.unit()).collect();
                let (mut got, mut want) = (y0.clone(), y0.clone());
                factors8::low_rank(&h, &f.bt, &f.bt_d, o0, &mut got);
                factors8::low_rank_portable(&h, &f.bt, &f.bt_d, o0, &mut want);
                assert_eq!(bits(&got), bits(&want), "y += B h: rank {r}, {rows} outputs from {o0}");
            }
        }
    }
    // through a matrix call, rows with and without a term
    let (rows, cols, n, r) = (24, 64, 3, 5);
    let w = QWeight::f32(rows, cols, (0..rows * cols).map(|_| rng.unit()).collect()).unwrap();
    let x: Vec<f32> = (0..n * cols).map(|_| rng.unit()).collect();
    let mut base = vec![0f32; n * rows];
    matmul(&w, &Act::new(&x, n, cols), &[None, None, None], &mut base).unwrap();
    let a: Vec<f32> = (0..r * cols).map(|_| rng.unit()).collect();
    let bt: Vec<f32> = (0..r * rows).map(|_| rng.unit() * 0.1).collect();
    let f = Factors8::new(&a, &bt, r);
    let term = || LowRank::new(Half::I8 { q: &f.a, d: &f.a_d }, Half::I8x8 { q: &f.bt, d: &f.bt_d });
    let lora = vec![Some(term()), None, Some(term())];
    let mut y = vec![0f32; n * rows];
    matmul(&w, &Act::new(&x, n, cols), &lora, &mut y).unwrap();
    for t in 0..n {
        let mut want = base[t * rows..][..rows].to_vec();
        if t != 1 {
            let mut h = vec![0f32; r];
            factors8::dot_rows_portable(&f.a, &f.a_d, cols, &x[t * cols..][..cols], &mut h);
            factors8::low_rank_portable(&h, &f.bt, &f.bt_d, 0, &mut want);
        }
        assert_eq!(bits(&y[t * rows..][..rows]), bits(&want), "token {t}");
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A decoder reading 8-bit factors beside a Q4_1 base, its default there: a continuous batch
/// over three adapters and none still gives each sequence its solo ids; its logits, and those
/// of half-precision factors, differ from f32 factors' (each setting took) by a small fraction
/// of what the adapter adds; and an f32 base reads f32 factors and refuses less.
#[test]
fn a_decoder_on_eight_bit_factors_keeps_batch_invariance_and_stays_near_f32_factors() {
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("q4_1.gguf");
    write_gguf(&q, GgmlDType::Q4_1);
    // 8 bits is the default beside a quantized base
    let e8 = cpu_engine(&q);
    assert_eq!(e8.decoder.as_ref().unwrap().lora_factors(), FactorDtype::Int8);
    batch_invariance(&e8, tmp.path());

    let mut e16 = cpu_engine(&q);
    e16.set_lora_factors(FactorDtype::F16).unwrap();
    let mut e32 = cpu_engine(&q);
    e32.set_lora_factors(FactorDtype::F32).unwrap();
    let ids = e16.prompt_ids(&Prompt::Text("hello there, how are you".into())).unwrap();
    let logits = |e: &Engine| position_logits(e, &ids, Some(&load_adapter(e, &llama().join("adapter"))), 1);
    let base = position_logits(&e16, &ids, None, 1);
    let (l32, l16, l8) = (logits(&e32), logits(&e16), logits(&e8));
    let max_diff = |x: &[Vec<f32>], y: &[Vec<f32>]| x.iter().flatten().zip(y.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let delta = max_diff(&l32, &base);
    for (name, l) in [("8-bit", &l8), ("half-precision", &l16)] {
        let err = max_diff(l, &l32);
        assert!(err > 0.0, "the {name} factors were not used");
        assert!(err <= 0.03 * delta, "{name} factors moved the logits by {err}, against the adapter's own {delta}");
    }

    // an f32 base reads f32 factors, and refuses less
    let mut f32_base = cpu_engine(&llama().join("base"));
    assert_eq!(f32_base.decoder.as_ref().unwrap().lora_factors(), FactorDtype::F32);
    for f in [FactorDtype::Int8, FactorDtype::F16] {
        let e = f32_base.set_lora_factors(f).unwrap_err().to_string();
        assert!(e.contains("quantized base"), "{e}");
    }
    f32_base.set_lora_factors(FactorDtype::F32).unwrap();
    assert_eq!(["f32", "f16", "int8"].map(|s| s.parse::<FactorDtype>().unwrap()), [FactorDtype::F32, FactorDtype::F16, FactorDtype::Int8]);
    assert!("bf16".parse::<FactorDtype>().unwrap_err().contains("f32, f16 or int8"));
}
