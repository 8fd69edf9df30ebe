//! GGML types without loradex kernels, converted at load (`model::ggml_convert`): each
//! conversion's values against candle's own dequantization of the original blocks, within the
//! bound its kind promises (exact for `Q5_0`); and a decoder on converted `Q5_0` / `Q5_1`
//! weights, against the safetensors base.

use super::common::*;
use super::generate::{cpu_engine, load_adapter, position_logits};
use super::kernels::Lcg;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use loradex::model::ggml_convert::{to_native, Conversion};
use loradex::model::quant::QWeight;

/// A `[rows, cols]` matrix of uneven magnitudes (a few large values, per-row scales), so that
/// blocks and sub-blocks get different scales and the K-quants' mins matter.
fn matrix(rows: usize, cols: usize, rng: &mut Lcg) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            let v = rng.unit() * (1 + (i / cols) % 5) as f32 * 0.02 + if i % 37 == 0 { 0.03 } else { 0.0 };
            if i % 97 == 0 { v * 8.0 } else { v }
        })
        .collect()
}

#[test]
fn converted_ggml_weights_keep_their_values_within_each_conversions_bound() {
    let (rows, cols) = (16, 512);
    let mut rng = Lcg(53);
    let cases = [
        (GgmlDType::Q5_0, Conversion::Exact),
        (GgmlDType::Q4K, Conversion::HalfScales),
        (GgmlDType::Q6K, Conversion::Rounded),
        (GgmlDType::Q5_1, Conversion::Rounded),
        (GgmlDType::Q5K, Conversion::Rounded),
        (GgmlDType::Q3K, Conversion::Rounded),
        (GgmlDType::Q2K, Conversion::Rounded),
    ];
    for (dt, kind) in cases {
        let w = Tensor::from_vec(matrix(rows, cols, &mut rng), (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dt).unwrap();
        let want: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let (f, data, conv) = to_native(&q).unwrap();
        assert_eq!(conv, kind, "{dt:?}");
        let qw = QWeight::converted(f, rows, cols, data, dt).unwrap();
        assert_eq!(qw.format(), format!("{f:?} from {dt:?}"));
        let mut got = vec![0f32; cols];
        for r in 0..rows {
            qw.row(r, &mut got).unwrap();
            let want = &want[r * cols..][..cols];
            for (b, (g, w)) in got.chunks(32).zip(want.chunks(32)).enumerate() {
                let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (i, (g, w)) in g.iter().zip(w).enumerate() {
                    let bound = match kind {
                        Conversion::Exact => 0.0,
                        // a sub-block's scale and min each change by at most 2^-11 of
                        // themselves, and both are at most about twice the block's largest value
                        Conversion::HalfScales => 3.0 * amax / 2048.0 + 1e-9,
                        // half a step of the block, plus its half-precision scale's rounding
                        Conversion::Rounded => amax * (0.5 / 127.0 + 1.0 / 2048.0) * 1.001 + 1e-9,
                    };
                    assert!((g - w).abs() <= bound, "{dt:?} row {r} block {b} value {i}: {g} vs {w} (bound {bound})");
                }
            }
        }
    }
}

/// Q5_0 and Q5_1 projections (32-value blocks, so the fixture's 32-wide layers can hold them)
/// load as converted `Q8_0` and decode close to the safetensors base with its adapter: the
/// exact conversion within what `Q5_0` itself costs, the rounded one a little more.
#[test]
fn a_decoder_on_converted_q5_weights_stays_near_the_safetensors_base() {
    let tmp = tempfile::tempdir().unwrap();
    let case = llama();
    let st = cpu_engine(&case.join("base"));
    let a_st = load_adapter(&st, &case.join("adapter"));
    let ids = st.prompt_ids(&loradex::model::Prompt::Text("thank you for the quick help".into())).unwrap();
    let want = position_logits(&st, &ids, Some(&a_st), 1);
    for (dt, bound) in [(GgmlDType::Q5_0, 0.1f32), (GgmlDType::Q5_1, 0.1)] {
        let p = tmp.path().join(format!("tiny-{dt:?}.gguf"));
        super::generate::write_gguf(&p, dt);
        let q = cpu_engine(&p);
        assert_eq!(q.decoder.as_ref().unwrap().weight_format(), format!("Q8_0 from {dt:?}"));
        let a_q = load_adapter(&q, &case.join("adapter"));
        let got = position_logits(&q, &ids, Some(&a_q), 1);
        let worst = got.iter().zip(&want).map(|(g, w)| max_abs_diff(g, w)).fold(0f32, f32::max);
        assert!(worst > 0.0 && worst <= bound, "{dt:?}: logits differ by {worst} (bound {bound})");
    }
}
