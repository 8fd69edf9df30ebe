//! Shared helpers: fixture paths, expected tensors, temp stores, running the binary.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The PEFT fixtures: `$LORADEX_FIXTURES`, else `../shared/fixtures/peft` beside the checkout.
pub fn fixtures() -> PathBuf {
    let p = match std::env::var_os("LORADEX_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/peft"),
    };
    assert!(p.is_dir(), "PEFT fixtures not found at {}", p.display());
    p
}
/// A case of the shared second set, or of loradex's own (`tests/fixtures/`, made the same way
/// by `scripts/make-fixtures3.py`).
pub fn case(name: &str) -> PathBuf {
    let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    if own.is_dir() {
        return own;
    }
    fixtures().join("../peft2").join(name)
}
pub fn bert() -> PathBuf {
    fixtures().join("bert-seqcls-qv")
}
pub fn llama() -> PathBuf {
    fixtures().join("llama-causal-qkvo")
}

/// Where the model tests run: the CPU, or the GPU with `LORADEX_TEST_DEVICE=cuda` (a build with
/// the `cuda` feature; CI has no GPU).
pub fn device() -> Device {
    match std::env::var("LORADEX_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0).expect("LORADEX_TEST_DEVICE=cuda needs a GPU and the cuda feature"),
        Ok("cpu") | Err(_) => Device::Cpu,
        Ok(other) => panic!("LORADEX_TEST_DEVICE={other}: expected cpu or cuda"),
    }
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

/// `loradex import DIR --name NAME --base BASE`, which must succeed; returns stdout.
pub fn import(home: &Path, dir: &Path, name: &str, base: &Path) -> String {
    ok(home, &["import", dir.to_str().unwrap(), "--name", name, "--base", base.to_str().unwrap()])
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

/// Minimal HTTP/1.1 client for loopback tests: (status, body).
pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or("");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    // a server may answer an oversized body (413) and close before it has all been sent, so a
    // failed write or a reset after the answer are not the test's failure: what was answered is
    let sent = write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let mut buf = String::new();
    let read = s.read_to_string(&mut buf);
    if !buf.starts_with("HTTP/1.1 ") {
        panic!("{method} {path}: no answer (write: {sent:?}, read: {read:?}): {buf:?}");
    }
    let status = buf.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// A `loradex serve` child on a loopback port; killed on drop.
pub struct Server {
    pub child: std::process::Child,
    pub addr: String,
    /// The server's stderr lines after the startup line (its request log).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(home: &Path, base: &Path, extra: &[&str]) -> Server {
        use std::io::BufRead;
        let mut child = Command::new(bin())
            .args(["--home", home.to_str().unwrap(), "serve", "--base", base.to_str().unwrap(), "--addr", "127.0.0.1:0"])
            .args(extra)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let line = lines.next().expect("server printed nothing").unwrap();
        let addr = line.rsplit("http://").next().unwrap().trim().to_string();
        assert!(addr.starts_with("127.0.0.1:"), "unexpected startup line {line}");
        let log = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let sink = log.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        Server { child, addr, log }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A copy of the PEFT adapter in `src` with every weight multiplied by `k`, written to `dst`:
/// another adapter of the same shape.
pub fn scaled_adapter(src: &Path, dst: &Path, k: f32) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("adapter_config.json"), dst.join("adapter_config.json")).unwrap();
    let mut w = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let (h, _) = loradex::peft::safetensors::read_header(&w, "x").unwrap();
    for c in w[8 + h..].chunks_exact_mut(4) {
        let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * k;
        c.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(dst.join("adapter_model.safetensors"), &w).unwrap();
    dst.to_path_buf()
}
