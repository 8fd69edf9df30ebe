//! Shared helpers: fixture paths, expected tensors, temp stores, running the binary.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fixtures() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/peft");
    assert!(p.is_dir(), "PEFT fixtures not found at {}", p.display());
    p
}
pub fn bert() -> PathBuf {
    fixtures().join("bert-seqcls-qv")
}
pub fn llama() -> PathBuf {
    fixtures().join("llama-causal-qkvo")
}

pub fn expected(case: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(case.join("expected.safetensors"), &Device::Cpu).expect("expected.safetensors loads")
}

pub fn case_json(case: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(case.join("case.json")).unwrap()).unwrap()
}

pub fn atol(case: &Path) -> f32 {
    case_json(case)["atol"].as_f64().unwrap() as f32
}

pub fn ids_rows(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_vec2::<i64>().unwrap().into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn assert_close(got: &[Vec<f32>], want: &Tensor, tol: f32, what: &str) {
    let want = want.to_vec2::<f32>().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: rows");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let d = max_abs_diff(g, w);
        assert!(d <= tol, "{what}: row {i} differs by {d} > {tol}: got {g:?} want {w:?}");
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_loradex"))
}

/// Runs `loradex --home HOME ARGS...`.
pub fn run(home: &Path, args: &[&str]) -> Output {
    Command::new(bin()).arg("--home").arg(home).args(args).output().expect("loradex runs")
}

/// Runs and asserts success; returns stdout.
pub fn ok(home: &Path, args: &[&str]) -> String {
    let o = run(home, args);
    assert!(o.status.success(), "loradex {args:?} failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Runs and asserts failure; returns stderr.
pub fn fails(home: &Path, args: &[&str]) -> String {
    let o = run(home, args);
    assert!(!o.status.success(), "loradex {args:?} should fail but printed:\n{}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8(o.stderr).unwrap()
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}
