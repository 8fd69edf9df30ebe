//! `combine` reproduces PEFT's `add_weighted_adapter` on the `llama-combine` golden fixture
//! (factors for linear/cat/ties/magnitude_prune, the product B·A for svd, logits for all),
//! DARE's statistics, the SVD routine, the refusals, and the CLI end to end.

use super::common::*;
use candle_core::Tensor;
use loradex::base::{Arch, BaseDir};
use loradex::combine::merge::{self, Merge, SignMethod};
use loradex::combine::svd::{self, Mat};
use loradex::combine::{self, CombineError, Method, Params, Spec};
use loradex::error::Error;
use loradex::model::lora::{Ctx, Routing};
use loradex::model::{Engine, Net};
use loradex::peft::safetensors::{write_f32, SafeView};
use loradex::util::Rng;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

fn case() -> PathBuf {
    fixtures().join("../peft2/llama-combine")
}

/// The fixture's inputs by PEFT adapter name.
fn input_dir(name: &str) -> PathBuf {
    match name {
        "default" => case().join("adapters"),
        other => case().join("adapters").join(other),
    }
}

/// The `case.json:combine` entry for `kind`.
fn entry(kind: &str) -> Value {
    case_json(&case())["combine"].as_array().unwrap().iter().find(|c| c["type"] == kind).unwrap_or_else(|| panic!("no {kind} in case.json")).clone()
}

struct Files {
    name: String,
    config: Vec<u8>,
    weights: Vec<u8>,
}

fn files(dir: &Path, name: &str) -> Files {
    Files {
        name: name.into(),
        config: std::fs::read(dir.join("adapter_config.json")).unwrap(),
        weights: std::fs::read(dir.join("adapter_model.safetensors")).unwrap(),
    }
}

fn run_combine(inputs: &[(&Files, f64)], spec: &Spec) -> loradex::Result<combine::Combined> {
    let ins: Vec<combine::Input> = inputs
        .iter()
        .map(|(f, w)| combine::Input { name: &f.name, config_bytes: &f.config, weights_bytes: &f.weights, weight: *w })
        .collect();
    combine::combine(Some(Arch::by_name("llama").unwrap()), &ins, spec)
}

fn spec(method: Method, density: Option<f64>) -> Spec {
    Spec::new(method, Params { density, ..Default::default() }).unwrap()
}

/// Combines the fixture's inputs as `case.json` says PEFT did for `kind`.
fn combine_as_peft(kind: &str) -> combine::Combined {
    let e = entry(kind);
    let inputs: Vec<Files> = e["adapters"].as_array().unwrap().iter().map(|n| files(&input_dir(n.as_str().unwrap()), n.as_str().unwrap())).collect();
    let weights: Vec<f64> = e["weights"].as_array().unwrap().iter().map(|w| w.as_f64().unwrap()).collect();
    let pairs: Vec<(&Files, f64)> = inputs.iter().zip(weights).collect();
    let s = spec(kind.parse().unwrap(), e["density"].as_f64());
    run_combine(&pairs, &s).unwrap()
}

/// Tensors of a safetensors buffer as (shape, f32 values).
fn tensors(bytes: &[u8]) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let v = SafeView::parse(bytes, "t").unwrap();
    v.tensors.iter().map(|(k, i)| (k.clone(), (i.shape.clone(), v.to_f32(k, "t").unwrap()))).collect()
}

fn peft_dir(kind: &str) -> PathBuf {
    case().join(entry(kind)["saved"].as_str().unwrap())
}

/// B·A of every module, as f64 `out × in` matrices.
fn products(t: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> BTreeMap<String, Mat> {
    let mat = |(s, d): &(Vec<usize>, Vec<f32>)| Mat::from_vec(s[0], s[1], d.iter().map(|&x| x as f64).collect());
    t.keys()
        .filter_map(|k| k.strip_suffix(".lora_A.weight"))
        .map(|m| (m.to_string(), mat(&t[&format!("{m}.lora_B.weight")]).matmul(&mat(&t[&format!("{m}.lora_A.weight")]))))
        .collect()
}

fn max_diff64(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn engine() -> Engine {
    Engine::load(BaseDir::open_dir(&case().join("base")).unwrap(), device()).unwrap()
}

/// The largest difference between the fixture llama's logits with `routing` and `exp[want]`,
/// over positions where the attention mask is 1.
fn logits_diff(e: &Engine, routing: &Routing, exp: &HashMap<String, Tensor>, want: &str) -> f32 {
    let Net::CausalLm(m) = &e.net else { panic!("not a llama engine") };
    let ids = exp["input_ids"].to_dtype(candle_core::DType::U32).unwrap().to_device(&e.device).unwrap();
    let mask = exp["attention_mask"].to_dtype(candle_core::DType::F32).unwrap().to_device(&e.device).unwrap();
    let got = m.forward(&ids, Some(&mask), 0, None, &Ctx::infer(routing)).unwrap();
    let mut worst = 0f32;
    for (r, row) in ids_rows(&exp["attention_mask"]).iter().enumerate() {
        let valid = row.iter().filter(|&&x| x == 1).count();
        let g = got.get(r).unwrap().narrow(0, 0, valid).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let w = exp[want].get(r).unwrap().narrow(0, 0, valid).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        worst = worst.max(max_abs_diff(&g, &w));
    }
    worst
}

fn combined_logits_diff(e: &Engine, c: &combine::Combined, kind: &str) -> f32 {
    let exp = expected(&case());
    let a = e.adapter(kind, &c.config_bytes, &c.weights_bytes, vec![]).unwrap();
    logits_diff(e, &Routing::single(a, exp["input_ids"].dims()[0]), &exp, &format!("combined_{kind}_logits"))
}

#[test]
fn factors_equal_peft_for_linear_cat_ties_and_magnitude_prune() {
    let tol = atol(&case()) as f64;
    for kind in ["linear", "cat", "ties", "magnitude_prune"] {
        let c = combine_as_peft(kind);
        let dir = peft_dir(kind);
        // the config is PEFT's, byte for byte (r, lora_alpha, target_modules, patterns)
        let peft_cfg = std::fs::read(dir.join("adapter_config.json")).unwrap();
        let (ours, theirs): (Value, Value) = (serde_json::from_slice(&c.config_bytes).unwrap(), serde_json::from_slice(&peft_cfg).unwrap());
        assert_eq!(ours, theirs, "{kind}: adapter_config.json");
        assert_eq!(String::from_utf8_lossy(&c.config_bytes), String::from_utf8_lossy(&peft_cfg), "{kind}: config bytes");
        let (got, want) = (tensors(&c.weights_bytes), tensors(&std::fs::read(dir.join("adapter_model.safetensors")).unwrap()));
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{kind}: tensor keys");
        let mut worst = 0f64;
        for (k, (shape, w)) in &want {
            assert_eq!(&got[k].0, shape, "{kind}: {k} shape");
            let g: Vec<f64> = got[k].1.iter().map(|&x| x as f64).collect();
            let w: Vec<f64> = w.iter().map(|&x| x as f64).collect();
            let d = max_diff64(&g, &w);
            assert!(d <= tol, "{kind}: {k} differs from PEFT's by {d}");
            worst = worst.max(d);
        }
        eprintln!("combine {kind}: factors max |ours - PEFT| = {worst:e}");
    }
}

#[test]
fn svd_product_equals_peft_and_its_config_is_peft_s() {
    let tol = atol(&case()) as f64;
    let c = combine_as_peft("svd");
    let dir = peft_dir("svd");
    let theirs: Value = serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&c.config_bytes).unwrap(), theirs);
    let (got, want) = (tensors(&c.weights_bytes), tensors(&std::fs::read(dir.join("adapter_model.safetensors")).unwrap()));
    for (k, (shape, _)) in &want {
        assert_eq!(&got[k].0, shape, "{k} shape");
    }
    let (pg, pw) = (products(&got), products(&want));
    assert_eq!(pg.keys().collect::<Vec<_>>(), pw.keys().collect::<Vec<_>>());
    let mut worst = 0f64;
    for (m, w) in &pw {
        let d = max_diff64(&pg[m].data, &w.data);
        assert!(d <= tol, "{m}: B·A differs from PEFT's by {d}");
        worst = worst.max(d);
    }
    // and the rank-4 truncation mattered: the full weighted sum is another matrix
    let cat = products(&tensors(&combine_as_peft("cat").weights_bytes));
    assert!(pw.iter().any(|(m, w)| max_diff64(&cat[m].data, &w.data) > 10.0 * tol), "svd equals the untruncated sum: the test would not see a wrong truncation");
    eprintln!("combine svd: B·A max |ours - PEFT| = {worst:e}");
}

#[test]
fn combined_adapters_reproduce_peft_logits() {
    let tol = atol(&case());
    let e = engine();
    for kind in ["linear", "cat", "svd", "ties", "magnitude_prune"] {
        let d = combined_logits_diff(&e, &combine_as_peft(kind), kind);
        eprintln!("combine {kind}: logits max |ours - PEFT| = {d:e}");
        assert!(d <= tol, "combined_{kind}_logits differ by {d} > {tol}");
    }
    // the fixture's combinations really differ from one another and from the inputs
    let exp = expected(&case());
    let a = e.adapter("default", &std::fs::read(input_dir("default").join("adapter_config.json")).unwrap(), &std::fs::read(input_dir("default").join("adapter_model.safetensors")).unwrap(), vec![]).unwrap();
    let d = logits_diff(&e, &Routing::single(a, 5), &exp, "lora_logits");
    assert!(d <= tol, "the first input alone gives lora_logits: {d}");
    let d = logits_diff(&e, &Routing::base(5), &exp, "combined_linear_logits");
    assert!(d > 100.0 * tol, "linear is indistinguishable from the base ({d})");
}

#[test]
fn dare_keeps_a_density_fraction_rescaled_and_is_unbiased() {
    // the primitive: kept fraction ≈ density, survivors exactly x / density
    let x: Vec<f64> = (0..100_000).map(|i| 1.0 + (i % 97) as f64).collect();
    for density in [0.1, 0.5, 0.9] {
        let mut rng = Rng::new(7);
        let y = merge::random_prune(&x, density, &mut rng);
        let kept = y.iter().filter(|v| **v != 0.0).count() as f64 / x.len() as f64;
        let sigma = (density * (1.0 - density) / x.len() as f64).sqrt();
        assert!((kept - density).abs() < 5.0 * sigma, "density {density}: kept {kept}");
        for (a, b) in x.iter().zip(&y) {
            assert!(*b == 0.0 || *b == a / density, "{b} is neither 0 nor {a}/{density}");
        }
        assert_eq!(merge::random_prune(&x, density, &mut Rng::new(7)), y, "a seed reproduces the drop");
        assert_ne!(merge::random_prune(&x, density, &mut Rng::new(8)), y, "another seed drops others");
    }
    assert_eq!(merge::random_prune(&x, 1.0, &mut Rng::new(1)), x, "density 1 keeps everything unscaled");

    // end to end: with the other inputs at weight 0, dare_linear's A is √(w·s)·mask·A/d
    let (d0, a1, a2) = (files(&input_dir("default"), "default"), files(&input_dir("a1"), "a1"), files(&input_dir("a2"), "a2"));
    let density = 0.3;
    let dare = |seed: u64, w: [f64; 3], m: Method, d: f64| {
        let s = Spec::new(m, Params { density: Some(d), seed: Some(seed), ..Default::default() }).unwrap();
        tensors(&run_combine(&[(&d0, w[0]), (&a1, w[1]), (&a2, w[2])], &s).unwrap().weights_bytes)
    };
    let got = dare(3, [0.5, 0.0, 0.0], Method::DareLinear, density);
    let input = tensors(&d0.weights);
    let k = (0.5f64 * 2.0).sqrt(); // weight 0.5, scaling lora_alpha / r = 8 / 4
    let (mut kept, mut total) = (0usize, 0usize);
    for (key, (_, g)) in &got {
        for (gv, xv) in g.iter().zip(&input[key].1) {
            let want = k * *xv as f64 / density;
            assert!(*gv == 0.0 || (*gv as f64 - want).abs() <= 1e-6 * want.abs().max(1.0), "{key}: {gv} vs {want}");
            kept += (*gv != 0.0) as usize;
            total += 1;
        }
    }
    let frac = kept as f64 / total as f64;
    assert!((frac - density).abs() < 5.0 * (density * (1.0 - density) / total as f64).sqrt(), "kept {frac} of {total}");
    assert_eq!(dare(3, [0.5, 0.0, 0.0], Method::DareLinear, density), got, "same seed, same adapter");
    assert_ne!(dare(4, [0.5, 0.0, 0.0], Method::DareLinear, density), got, "another seed, another drop");

    // unbiased: the mean over seeds of dare_linear's factors tends to linear's
    let w = [1.0, 0.5, 0.25];
    let linear = tensors(&run_combine(&[(&d0, w[0]), (&a1, w[1]), (&a2, w[2])], &spec(Method::Linear, None)).unwrap().weights_bytes);
    let seeds = 400;
    let mut mean: BTreeMap<String, Vec<f64>> = linear.iter().map(|(k, (_, v))| (k.clone(), vec![0.0; v.len()])).collect();
    for seed in 0..seeds {
        for (key, (_, v)) in dare(seed, w, Method::DareLinear, 0.5) {
            for (m, x) in mean.get_mut(&key).unwrap().iter_mut().zip(v) {
                *m += x as f64 / seeds as f64;
            }
        }
    }
    let (mut err, mut scale) = (0f64, 0f64);
    for (key, (_, v)) in &linear {
        for (m, x) in mean[key].iter().zip(v) {
            err = err.max((m - *x as f64).abs());
            scale = scale.max((*x as f64).abs());
        }
    }
    // each element's mean has standard deviation ≲ scale/√seeds; 0.25·scale is ~5σ
    assert!(err < 0.25 * scale, "mean over {seeds} seeds is {err} from linear (scale {scale})");

    // density 1 drops nothing: dare_linear is linear, dare_ties is ties
    assert_eq!(dare(9, w, Method::DareLinear, 1.0), linear);
    let ties1 = tensors(&run_combine(&[(&d0, w[0]), (&a1, w[1]), (&a2, w[2])], &spec(Method::Ties, Some(1.0))).unwrap().weights_bytes);
    assert_eq!(dare(9, w, Method::DareTies, 1.0), ties1);
    assert_ne!(ties1, linear, "ties' disjoint mean is not linear's sum");
}

#[test]
fn merges_follow_peft_definitions() {
    // magnitude pruning keeps ⌊density·n⌋ largest |x|, the lower index among equal ones
    let t = [0.1, -3.0, 2.0, -2.0, 0.5];
    assert_eq!(merge::magnitude_prune(&t, 0.6), vec![0.0, -3.0, 2.0, -2.0, 0.0]);
    assert_eq!(merge::magnitude_prune(&t, 0.4), vec![0.0, -3.0, 2.0, 0.0, 0.0]);
    assert_eq!(merge::magnitude_prune(&t, 0.1), vec![0.0; 5]);
    assert_eq!(merge::magnitude_prune(&t, 1.0), t.to_vec());
    // TIES: elect by the sum (total) or count (frequency) of signs, average agreeing weighted values
    let (a, b) = ([1.0, -2.0, 0.5], [-3.0, 1.0, 0.5]);
    let mut rng = Rng::new(0);
    let ties = |s| merge::merge(Merge::Ties, &[&a, &b], &[1.0, 2.0], 1.0, s, &mut Rng::new(0));
    assert_eq!(ties(SignMethod::Total), vec![-6.0, -2.0, 0.75]);
    assert_eq!(ties(SignMethod::Frequency), vec![1.0, 2.0, 0.75]);
    assert_eq!(merge::merge(Merge::TaskArithmetic, &[&a, &b], &[1.0, 2.0], 0.5, SignMethod::Total, &mut rng), vec![-5.0, 0.0, 1.5]);
    // magnitude_prune prunes each tensor, then sums: density 0.34 keeps one value of three
    assert_eq!(merge::merge(Merge::MagnitudePrune, &[&a, &b], &[1.0, 2.0], 0.34, SignMethod::Total, &mut rng), vec![-6.0, -2.0, 0.0]);
}

fn random_mat(rows: usize, cols: usize, seed: u64) -> Mat {
    let mut rng = Rng::new(seed);
    Mat::from_vec(rows, cols, (0..rows * cols).map(|_| rng.normal(1.0) as f64).collect())
}

fn assert_orthonormal_columns(m: &Mat, k: usize, what: &str) {
    let g = m.t().matmul(m);
    for i in 0..k {
        for j in 0..k {
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((g.at(i, j) - want).abs() < 1e-10, "{what}: columns {i},{j}: {}", g.at(i, j));
        }
    }
}

#[test]
fn jacobi_svd_decomposes_and_is_deterministic() {
    let low = random_mat(9, 2, 5).matmul(&random_mat(2, 6, 6)); // rank 2
    let cases = [(random_mat(7, 3, 1), 3), (random_mat(3, 7, 2), 3), (random_mat(12, 12, 3), 12), (low, 2), (Mat::zeros(4, 3), 0)];
    for (i, (m, rank)) in cases.iter().enumerate() {
        let d = svd::svd(m).unwrap();
        let k = m.rows.min(m.cols);
        assert_eq!((d.u.rows, d.u.cols, d.v.rows, d.v.cols, d.s.len()), (m.rows, k, m.cols, k, k), "case {i}: shapes");
        assert!(d.s.windows(2).all(|w| w[0] >= w[1]) && d.s.iter().all(|s| *s >= 0.0), "case {i}: {:?}", d.s);
        let norm = m.data.iter().map(|x| x * x).sum::<f64>().sqrt().max(1.0);
        assert!(max_diff64(&d.product(k).data, &m.data) < 1e-12 * norm, "case {i}: U S Vᵀ != M");
        assert_orthonormal_columns(&d.u, *rank, &format!("case {i}: U"));
        assert_orthonormal_columns(&d.v, *rank, &format!("case {i}: V"));
        assert!(d.s[*rank..].iter().all(|s| *s < 1e-10 * norm), "case {i}: rank {rank} but {:?}", d.s);
        let again = svd::svd(m).unwrap();
        assert_eq!((again.u, again.s, again.v), (d.u.clone(), d.s.clone(), d.v.clone()), "case {i}: not deterministic");
    }
    // known values: a permuted, sign-flipped diagonal
    let mut m = Mat::zeros(3, 3);
    m.set(0, 1, -2.0);
    m.set(1, 0, 5.0);
    m.set(2, 2, 1.0);
    assert!(max_diff64(&svd::svd(&m).unwrap().s, &[5.0, 2.0, 1.0]) < 1e-14);
    // the product shortcut gives the same singular values and product as the dense matrix
    let (p, q) = (random_mat(20, 5, 8), random_mat(5, 16, 9));
    let dense = svd::svd(&p.matmul(&q)).unwrap();
    let fast = svd::svd_of_product(&p, &q).unwrap();
    assert_eq!(fast.s.len(), 5);
    assert!(max_diff64(&fast.s, &dense.s[..5]) < 1e-10 * dense.s[0]);
    for k in [2, 5] {
        assert!(max_diff64(&fast.product(k).data, &dense.product(k).data) < 1e-10 * dense.s[0], "rank-{k} truncations differ");
    }
    assert_orthonormal_columns(&fast.u, 5, "product U");
    assert_orthonormal_columns(&fast.v, 5, "product V");
}

#[test]
fn the_svd_types_and_the_one_input_rule_behave_as_peft_s() {
    let (d0, a1) = (files(&input_dir("default"), "default"), files(&input_dir("a1"), "a1"));
    let svd_rank = |r| Spec::new(Method::Svd, Params { svd_rank: Some(r), ..Default::default() }).unwrap();
    let full = run_combine(&[(&d0, 1.0), (&a1, 0.5)], &svd_rank(8)).unwrap();
    let cat = run_combine(&[(&d0, 1.0), (&a1, 0.5)], &spec(Method::Cat, None)).unwrap();
    assert_eq!(full.rank, 8);
    // at full rank svd is lossless: B·A = Σ wᵢ·sᵢBᵢAᵢ, which is cat's product
    let (pf, pc) = (products(&tensors(&full.weights_bytes)), products(&tensors(&cat.weights_bytes)));
    for (m, c) in &pc {
        assert!(max_diff64(&pf[m].data, &c.data) < 1e-5, "{m}: full-rank svd is not cat");
    }
    // the pruned SVD types weight the scaled deltas by wᵢ alone: unpruned, they are cat too
    let unpruned = Spec::new(Method::MagnitudePruneSvd, Params { density: Some(1.0), svd_rank: Some(16), ..Default::default() }).unwrap();
    let pm = products(&tensors(&run_combine(&[(&d0, 1.0), (&a1, 0.5)], &unpruned).unwrap().weights_bytes));
    for (m, c) in &pc {
        assert!(max_diff64(&pm[m].data, &c.data) < 1e-5, "{m}: magnitude_prune_svd at density 1 is not cat");
    }
    let too_big = run_combine(&[(&d0, 1.0), (&a1, 0.5)], &svd_rank(17)).unwrap_err();
    assert!(matches!(too_big, Error::Combine(CombineError::Module { .. })), "{too_big}");
    // clamping: each module's A and B values limited to ±(the 0.9 quantile of them all)
    let q = 0.9;
    let clamped = tensors(&run_combine(&[(&d0, 1.0), (&a1, 0.5)], &Spec::new(Method::Svd, Params { svd_clamp: Some(q), ..Default::default() }).unwrap()).unwrap().weights_bytes);
    let plain = tensors(&run_combine(&[(&d0, 1.0), (&a1, 0.5)], &spec(Method::Svd, None)).unwrap().weights_bytes);
    let mut changed = 0;
    for m in plain.keys().filter_map(|k| k.strip_suffix(".lora_A.weight")) {
        let (ka, kb) = (format!("{m}.lora_A.weight"), format!("{m}.lora_B.weight"));
        let mut dist: Vec<f64> = plain[&kb].1.iter().chain(&plain[&ka].1).map(|&x| x as f64).collect();
        dist.sort_by(f64::total_cmp);
        let pos = q * (dist.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = dist[lo] + (pos - lo as f64) * (dist[lo + 1] - dist[lo]);
        for k in [&ka, &kb] {
            for (c, p) in clamped[k].1.iter().zip(&plain[k].1) {
                let want = (*p as f64).clamp(-hi, hi);
                assert!((*c as f64 - want).abs() < 1e-6, "{k}: {c} is not {p} clamped to ±{hi}");
                changed += (*c != *p) as usize;
            }
        }
    }
    assert!(changed > 0, "the 0.9 quantile clamped nothing");
    // every pruned SVD type runs and yields the new rank
    for m in [Method::TiesSvd, Method::MagnitudePruneSvd, Method::DareLinearSvd, Method::DareTiesSvd] {
        let c = run_combine(&[(&d0, 1.0), (&a1, 0.5)], &spec(m, Some(0.5))).unwrap();
        assert_eq!((c.method, c.rank, c.modules), (m, 4, 4), "{m}");
    }
    // one input: PEFT combines it linearly whatever the type
    let one = run_combine(&[(&d0, 0.5)], &spec(Method::Ties, Some(0.2))).unwrap();
    assert_eq!(one.method, Method::Linear);
    let lin = run_combine(&[(&d0, 0.5)], &spec(Method::Linear, None)).unwrap();
    assert_eq!(one.weights_bytes, lin.weights_bytes);
    // and a linear combination of one adapter is that adapter (√(w·s) on each side, scaling 1)
    let (pl, p0) = (products(&tensors(&lin.weights_bytes)), products(&tensors(&d0.weights)));
    for (m, x) in &p0 {
        let want: Vec<f64> = x.data.iter().map(|v| v * 0.5 * 2.0).collect();
        assert!(max_diff64(&pl[m].data, &want) < 1e-5, "{m}");
    }
}

#[test]
fn rslora_inputs_give_a_result_of_scaling_one() {
    // PEFT's fix (huggingface/peft#3449): the result's scaling is 1, not √r
    let rs = edited("rs", None, |c| {
        c.insert("use_rslora".into(), true.into());
    });
    let c = run_combine(&[(&rs, 1.0)], &spec(Method::Linear, None)).unwrap();
    let cfg = loradex::peft::LoraConfig::parse(&c.config_bytes).unwrap();
    assert!(!cfg.use_rslora && cfg.lora_alpha == 4.0 && cfg.r == 4);
    // so one input at weight 1 is that input: B'A' = (8 / √4)·BA
    let (got, want) = (products(&tensors(&c.weights_bytes)), products(&tensors(&rs.weights)));
    for (m, w) in &want {
        let scaled: Vec<f64> = w.data.iter().map(|x| 4.0 * x).collect();
        assert!(max_diff64(&got[m].data, &scaled) < 1e-5, "{m}");
    }
}

/// A copy of the fixture's `default` adapter with `config` edited and, if `rank` is given,
/// its factors cut to that rank.
fn edited(name: &str, rank: Option<usize>, edit: impl Fn(&mut serde_json::Map<String, Value>)) -> Files {
    let f = files(&input_dir("default"), name);
    let mut cfg: serde_json::Map<String, Value> = serde_json::from_slice(&f.config).unwrap();
    edit(&mut cfg);
    let mut t = tensors(&f.weights);
    if let Some(r) = rank {
        cfg.insert("r".into(), r.into());
        for (k, (shape, v)) in t.iter_mut() {
            if k.ends_with("lora_A.weight") {
                v.truncate(r * shape[1]);
                shape[0] = r;
            } else {
                *v = v.chunks(shape[1]).flat_map(|row| row[..r].to_vec()).collect();
                shape[1] = r;
            }
        }
    }
    Files { name: name.into(), config: serde_json::to_vec(&Value::Object(cfg)).unwrap(), weights: write_f32(&t) }
}

#[test]
fn incompatible_inputs_are_refused_with_peft_s_reasons() {
    let d0 = files(&input_dir("default"), "default");
    let r2 = edited("r2", Some(2), |_| {});
    // ranks: linear-like types need equal ranks (PEFT's message); cat and svd do not
    for m in [Method::Linear, Method::Ties, Method::MagnitudePrune, Method::DareLinear, Method::DareTies] {
        let d = m.needs_density().then_some(0.5);
        let e = run_combine(&[(&d0, 1.0), (&r2, 1.0)], &spec(m, d)).unwrap_err();
        assert!(matches!(e, Error::Combine(CombineError::Peft(_))), "{m}: {e}");
        assert!(e.to_string().contains("All adapters must have the same r value"), "{e}");
    }
    let cat = run_combine(&[(&d0, 1.0), (&r2, 1.0)], &spec(Method::Cat, None)).unwrap();
    assert_eq!(cat.rank, 6);
    assert_eq!(run_combine(&[(&d0, 1.0), (&r2, 1.0)], &spec(Method::Svd, None)).unwrap().rank, 4);
    // target_modules as a regex string beside a list: PEFT's refusal; two strings are joined
    let s = edited("regex", None, |c| {
        c.insert("target_modules".into(), "q_proj|v_proj".into());
    });
    let e = run_combine(&[(&d0, 1.0), (&s, 1.0)], &spec(Method::Linear, None)).unwrap_err();
    assert!(e.to_string().contains("mix of list/set and string"), "{e}");
    let both = run_combine(&[(&s, 1.0), (&s, 1.0)], &spec(Method::Linear, None)).unwrap();
    let cfg: Value = serde_json::from_slice(&both.config_bytes).unwrap();
    assert_eq!(cfg["target_modules"], "(q_proj|v_proj)|(q_proj|v_proj)");
    // whole saved modules (a classification head) and DoRA are refused, not dropped
    let bert = files(&bert().join("adapter"), "bert-head");
    let e = combine::combine(Some(Arch::by_name("bert").unwrap()), &[combine::Input { name: "bert-head", config_bytes: &bert.config, weights_bytes: &bert.weights, weight: 1.0 }], &spec(Method::Linear, None)).unwrap_err();
    assert!(matches!(e, Error::Combine(CombineError::Unsupported { .. })) && e.to_string().contains("modules_to_save"), "{e}");
    // a module of another shape (another base)
    let mut t = tensors(&d0.weights);
    for (k, (shape, v)) in t.iter_mut().filter(|(k, _)| k.contains("v_proj.lora_B")) {
        shape[0] = 8;
        v.truncate(8 * shape[1]);
        assert!(k.ends_with("weight"));
    }
    let narrow = Files { name: "narrow".into(), config: d0.config.clone(), weights: write_f32(&t) };
    let e = run_combine(&[(&d0, 1.0), (&narrow, 1.0)], &spec(Method::Cat, None)).unwrap_err();
    assert!(matches!(e, Error::Combine(CombineError::Module { .. })) && e.to_string().contains("another shape"), "{e}");
    // weights must be finite
    let e = run_combine(&[(&d0, f64::NAN)], &spec(Method::Linear, None)).unwrap_err();
    assert!(matches!(e, Error::Combine(CombineError::BadWeight { .. })), "{e}");
}

#[test]
fn specs_accept_only_the_parameters_their_type_uses() {
    let p = |density, seed, sign| Params { density, seed, majority_sign_method: sign, ..Default::default() };
    assert!(matches!(Spec::new(Method::Ties, p(None, None, None)), Err(CombineError::MissingDensity(_))));
    assert!(matches!(Spec::new(Method::Linear, p(Some(0.5), None, None)), Err(CombineError::NotApplicable { what: "density", .. })));
    for bad in [0.0, -0.1, 1.5, f64::NAN] {
        assert!(matches!(Spec::new(Method::MagnitudePrune, p(Some(bad), None, None)), Err(CombineError::BadDensity(_))), "{bad}");
    }
    assert!(matches!(Spec::new(Method::Ties, p(Some(0.5), Some(1), None)), Err(CombineError::NotApplicable { what: "seed", .. })));
    assert!(matches!(Spec::new(Method::DareLinear, p(Some(0.5), None, Some(SignMethod::Total))), Err(CombineError::NotApplicable { .. })));
    assert!(Spec::new(Method::DareTies, p(Some(0.5), Some(3), Some(SignMethod::Frequency))).is_ok());
    assert!(matches!(Spec::new(Method::Cat, Params { svd_rank: Some(2), ..Default::default() }), Err(CombineError::NotApplicable { .. })));
    assert!(matches!(Spec::new(Method::Svd, Params { svd_clamp: Some(2.0), ..Default::default() }), Err(CombineError::BadClamp(_))));
    assert!(matches!("nope".parse::<Method>(), Err(CombineError::UnknownMethod(_))));
    for m in ["linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"] {
        assert_eq!(m.parse::<Method>().unwrap().name(), m);
    }
}

#[test]
fn cli_combines_stored_adapters_with_provenance_and_peft_exact_export() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let base = case().join("base");
    let mut digests = HashMap::new();
    for n in ["default", "a1", "a2"] {
        digests.insert(n, import(&home, &input_dir(n), n, &base).trim().to_string());
    }
    let e = engine();
    let tol = atol(&case());
    for (kind, extra) in [("linear", vec![]), ("cat", vec![]), ("ties", vec!["--density", "0.5"]), ("svd", vec![])] {
        let name = format!("mix:{kind}");
        let mut args = vec!["--json", "combine", "--type", kind, "--adapter", "default=1", "--adapter", "a1=0.5", "--adapter", "a2=0.25", "--name", &name];
        args.extend(extra);
        let m = json(&ok(&home, &args));
        super::schema::Checker::file("manifest.schema.json").assert_valid("", &m);
        let prov = &m["provenance"];
        assert_eq!(prov["source"], "combine");
        assert_eq!(prov["type"], kind);
        let inputs: Vec<(String, f64)> = prov["inputs"].as_array().unwrap().iter().map(|i| (i["digest"].as_str().unwrap().to_string(), i["weight"].as_f64().unwrap())).collect();
        assert_eq!(inputs, vec![(digests["default"].clone(), 1.0), (digests["a1"].clone(), 0.5), (digests["a2"].clone(), 0.25)]);
        assert_eq!(m["rank"], if kind == "cat" { 12 } else { 4 });
        if kind == "ties" {
            assert_eq!(prov["parameters"]["density"], 0.5);
            assert_eq!(prov["parameters"]["majority_sign_method"], "total");
        }
        // the stored adapter, fetched as inference does, gives PEFT's logits
        let fp = loradex::store::Store::open(&home).unwrap().base_fingerprint(&e.base).unwrap();
        let s = loradex::store::Store::open(&home).unwrap();
        let f = loradex::adapters::fetch(&name, Some(&s), &e.base, Some(&fp)).unwrap();
        let a = e.adapter(&f.id, &f.config_bytes, &f.weights_bytes, f.labels).unwrap();
        let d = logits_diff(&e, &Routing::single(a, 5), &expected(&case()), &format!("combined_{kind}_logits"));
        assert!(d <= tol, "{kind}: stored adapter's logits differ by {d}");
        // exported, it is PEFT's directory: same config, same keys and shapes (and factors but for svd)
        let out = tmp.path().join(format!("out-{kind}"));
        ok(&home, &["export", &name, out.to_str().unwrap()]);
        let peft = peft_dir(kind);
        let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&read(&out, "adapter_config.json")).unwrap(), serde_json::from_slice::<Value>(&read(&peft, "adapter_config.json")).unwrap());
        let (ours, theirs) = (tensors(&read(&out, "adapter_model.safetensors")), tensors(&read(&peft, "adapter_model.safetensors")));
        assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>());
        for (k, (shape, v)) in &theirs {
            assert_eq!(&ours[k].0, shape);
            if kind != "svd" {
                assert!(max_abs_diff(&ours[k].1, v) <= tol, "{kind}: exported {k}");
            }
        }
    }
    // dare: reproducible from the seed recorded in provenance
    let dare = |name: &str, seed: &str| {
        ok(&home, &["combine", "--type", "dare_ties", "--adapter", "default=1", "--adapter", "a1=0.5", "--density", "0.4", "--seed", seed, "--name", name]).trim().to_string()
    };
    let (x, y, z) = (dare("dare:x", "5"), dare("dare:y", "5"), dare("dare:z", "6"));
    assert_eq!(x, y, "same inputs and seed, same adapter (same digest)");
    assert_ne!(x, z);
    let m = json(&ok(&home, &["--json", "show", "dare:x"]));
    assert_eq!(m["provenance"]["parameters"]["seed"], 5);
    // one input: a note, and a linear result
    let o = run(&home, &["combine", "--type", "ties", "--density", "0.5", "--adapter", "a1=1", "--name", "solo"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("combined linear"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn cli_refuses_mismatched_inputs_and_bad_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    import(&home, &input_dir("default"), "d", &case().join("base"));
    import(&home, &llama().join("adapter"), "elsewhere", &llama().join("base"));
    let e = fails(&home, &["combine", "--type", "cat", "--adapter", "d=1", "--adapter", "elsewhere=1", "--name", "x"]);
    assert!(e.contains("different bases"), "{e}");
    // same base, another task
    let seq = tmp.path().join("seq");
    std::fs::create_dir_all(&seq).unwrap();
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(input_dir("a1").join("adapter_config.json")).unwrap()).unwrap();
    cfg["task_type"] = "SEQ_CLS".into();
    std::fs::write(seq.join("adapter_config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    std::fs::copy(input_dir("a1").join("adapter_model.safetensors"), seq.join("adapter_model.safetensors")).unwrap();
    import(&home, &seq, "seq", &case().join("base"));
    let e = fails(&home, &["combine", "--type", "linear", "--adapter", "d=1", "--adapter", "seq=1", "--name", "x"]);
    assert!(e.contains("different tasks") && e.contains("SEQ_CLS"), "{e}");
    let e = fails(&home, &["combine", "--type", "linear", "--adapter", "d=1", "--adapter", "missing=1", "--name", "x"]);
    assert!(e.contains("not found"), "{e}");
    // nothing was stored by the failures
    assert!(run(&home, &["show", "x"]).status.code() == Some(1));
    // arguments are refused before the store is opened
    let fresh = tmp.path().join("never");
    for (args, says) in [
        (vec!["--type", "mix", "--adapter", "d=1"], "unknown combination type"),
        (vec!["--type", "ties", "--adapter", "d=1"], "needs a density"),
        (vec!["--type", "linear", "--density", "0.5", "--adapter", "d=1"], "does not apply"),
        (vec!["--type", "ties", "--density", "1.5", "--adapter", "d=1"], "(0, 1]"),
        (vec!["--type", "linear", "--seed", "1", "--adapter", "d=1"], "does not apply"),
        (vec!["--type", "linear", "--adapter", "d"], "REF=WEIGHT"),
        (vec!["--type", "linear", "--adapter", "d=heavy"], "not a number"),
        (vec!["--type", "ties", "--density", "0.5", "--majority-sign-method", "vote", "--adapter", "d=1"], "total or frequency"),
    ] {
        let mut a = vec!["combine"];
        a.extend(args);
        a.extend(["--name", "x"]);
        let e = fails(&fresh, &a);
        assert!(e.contains(says), "{a:?}: {e}");
        assert!(!fresh.exists(), "{a:?} opened the store");
    }
}
