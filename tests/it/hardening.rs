//! Issue 10's hardening items, one test each: a request that cannot run fails alone, auth on
//! every endpoint but /health, JSON errors for axum's own rejections, request logs, PEFT-exact
//! `rank_pattern`/`alpha_pattern`, and hostile configs, recipes and files refused, not panics.

use super::common::*;
use loradex::peft::LoraConfig;
use loradex::peft::safetensors::{write_f32, SafeView};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A copy of the fixture BERT base without its classification head (like all-MiniLM-L6-v2).
fn headless_base(dst: &Path) -> PathBuf {
    let src = bert().join("base");
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            let v = SafeView::parse(&bytes, "base").unwrap();
            let mut m = BTreeMap::new();
            for (k, info) in &v.tensors {
                if !k.starts_with("classifier") {
                    m.insert(k.clone(), (info.shape.clone(), v.to_f32(k, "base").unwrap()));
                }
            }
            assert!(m.len() < v.tensors.len(), "the fixture base has a classifier to drop");
            std::fs::write(dst.join(p.file_name().unwrap()), write_f32(&m)).unwrap();
        } else {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
    dst.to_path_buf()
}

fn error_type(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not the JSON error shape: {body:?}"));
    assert!(v["error"]["message"].is_string(), "{body}");
    v["error"]["type"].as_str().unwrap().to_string()
}

#[test]
fn a_request_without_a_head_is_refused_alone_and_batched_tenants_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let base = headless_base(&tmp.path().join("headless"));
    import(&home, &bert().join("adapter"), "en/sentiment:v1", &base);
    let srv = Server::start(&home, &base, &["--max-batch", "64"]);
    let texts = case_json(&bert())["texts"].clone();
    let handles: Vec<_> = (0..40)
        .map(|i| {
            let addr = srv.addr.clone();
            let adapter = if i % 2 == 0 { Value::Null } else { Value::from("en/sentiment:v1") };
            let body = serde_json::json!({"adapter": adapter, "texts": texts}).to_string();
            std::thread::spawn(move || (i, http(&addr, "POST", "/v1/classify", Some(&body), None)))
        })
        .collect();
    for h in handles {
        let (i, (st, body)) = h.join().unwrap();
        if i % 2 == 0 {
            assert_eq!(st, 400, "null adapter on a headless base: {body}");
            assert_eq!(error_type(&body), "invalid_request");
            assert!(body.contains("classification head"), "{body}");
        } else {
            assert_eq!(st, 200, "a tenant with a head must be served: {body}");
            assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["results"].as_array().unwrap().len(), 5);
        }
    }
}

#[test]
fn with_a_token_every_endpoint_but_health_needs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    import(&home, &bert().join("adapter"), "cs/default", &bert().join("base"));
    let srv = Server::start(&home, &bert().join("base"), &["--token", "s3cret"]);
    let body = r#"{"texts": ["hello"]}"#;
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("GET", "/metrics", None),
        ("GET", "/v1/models", None),
        ("GET", "/v1/adapters", None),
        ("POST", "/v1/adapters/cs%2Fdefault/load", None),
        ("POST", "/v1/adapters/cs%2Fdefault/unload", None),
        ("POST", "/v1/classify", Some(body)),
        ("POST", "/v1/completions", Some(r#"{"model": "base", "prompt": "x"}"#)),
        ("POST", "/v1/chat/completions", Some(r#"{"model": "base", "messages": []}"#)),
        ("GET", "/no/such/endpoint", None),
    ];
    for (m, p, b) in cases {
        let (st, resp) = http(&srv.addr, m, p, *b, None);
        assert_eq!(st, 401, "{m} {p} without a token: {resp}");
        assert_eq!(error_type(&resp), "unauthorized");
        let (st, _) = http(&srv.addr, m, p, *b, Some("wrong"));
        assert_eq!(st, 401, "{m} {p} with a wrong token");
        let (st, resp) = http(&srv.addr, m, p, *b, Some("s3cret"));
        assert_ne!(st, 401, "{m} {p} with the token: {resp}");
    }
    let (st, _) = http(&srv.addr, "GET", "/health", None, None);
    assert_eq!(st, 200);
}

#[test]
fn axum_rejections_keep_the_json_error_shape_and_requests_are_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    import(&home, &bert().join("adapter"), "cs/default", &bert().join("base"));
    let srv = Server::start(&home, &bert().join("base"), &["--log-format", "json"]);
    let huge = format!(r#"{{"texts": ["{}"]}}"#, "a".repeat(5 << 20));
    let (st, body) = http(&srv.addr, "POST", "/v1/classify", Some(&huge), None);
    assert_eq!(st, 413, "{body}");
    assert_eq!(error_type(&body), "too_large");
    let (st, body) = http(&srv.addr, "GET", "/v1/classify", None, None);
    assert_eq!(st, 405, "{body}");
    assert_eq!(error_type(&body), "method_not_allowed");
    let (st, body) = http(&srv.addr, "POST", "/v1/classify", Some(r#"{"adapter": "cs/default", "texts": ["a", "b"]}"#), None);
    assert_eq!(st, 200, "{body}");
    // the log line of each request, as JSON objects with the documented fields
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lines: Vec<Value> = srv.log.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let ok = lines.iter().find(|l| l["status"] == 200 && l["path"] == "/v1/classify");
        if let Some(l) = ok {
            assert_eq!(l["method"], "POST", "{l}");
            assert_eq!(l["adapter"], "cs/default", "{l}");
            assert_eq!(l["rows"], 2, "{l}");
            assert!(l["latency_ms"].as_f64().is_some_and(|x| x >= 0.0), "{l}");
            assert!(lines.iter().any(|l| l["status"] == 413), "{lines:?}");
            assert!(lines.iter().any(|l| l["status"] == 405), "{lines:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no JSON request log line: {:?}", srv.log.lock().unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn config(extra: &str) -> Vec<u8> {
    format!(r#"{{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]{extra}}}"#).into_bytes()
}

#[test]
fn rank_and_alpha_patterns_match_like_peft() {
    // the fixture's regex key: only layer 0's q_proj gets alpha 32
    let c = LoraConfig::parse(&std::fs::read(fixtures().join("../peft2/llama-embed-patterns/adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(c.scale_for("model.layers.0.self_attn.q_proj", 8), 4.0);
    assert_eq!(c.scale_for("model.layers.1.self_attn.q_proj", 8), 2.0);
    assert_eq!(c.scale_for("model.layers.10.self_attn.q_proj", 8), 2.0, "regex keys are anchored at the end");
    assert_eq!(c.rank_for("model.layers.3.self_attn.v_proj"), 2);
    assert_eq!(c.rank_for("model.layers.3.self_attn.q_proj"), 8);
    // a key matches whole path components only ((.*\.)?KEY$): "proj" is not "q_proj"
    let c = LoraConfig::parse(&config(r#", "rank_pattern": {"proj": 2}"#)).unwrap();
    assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), 8);
    // the first matching key in the file's order wins, not the longest
    let c = LoraConfig::parse(&config(r#", "rank_pattern": {"layers\\.\\d+\\.self_attn\\.q_proj": 4, "self_attn.q_proj": 2}"#)).unwrap();
    assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), 4);
    let c = LoraConfig::parse(&config(r#", "rank_pattern": {"self_attn.q_proj": 2, "layers\\.\\d+\\.self_attn\\.q_proj": 4}"#)).unwrap();
    assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), 2);
    // a key equal to the module path wins outright
    let c = LoraConfig::parse(&config(r#", "alpha_pattern": {"q_proj": 1, "model.layers.0.self_attn.q_proj": 64}"#)).unwrap();
    assert_eq!(c.scale_for("model.layers.0.self_attn.q_proj", 8), 8.0);
    assert_eq!(c.scale_for("model.layers.1.self_attn.q_proj", 8), 0.125);
}

#[test]
fn mistyped_configs_are_refused_not_defaulted() {
    for (extra, want) in [
        (r#", "lora_alpha": "16""#, "lora_alpha"),
        (r#", "use_rslora": "true""#, "use_rslora"),
        (r#", "lora_dropout": "0.1""#, "lora_dropout"),
        (r#", "rank_pattern": {"q_proj": "2"}"#, "rank_pattern"),
        (r#", "rank_pattern": {"q_proj": 0}"#, "rank_pattern"),
        (r#", "alpha_pattern": {"(unclosed": 2}"#, "alpha_pattern"),
        (r#", "alpha_pattern": [1]"#, "alpha_pattern"),
        (r#", "task_type": 3"#, "task_type"),
    ] {
        let err = LoraConfig::parse(&config(extra)).expect_err(extra).to_string();
        assert!(err.contains(want), "{extra}: {err}");
    }
    assert_eq!(LoraConfig::parse(&config(r#", "lora_alpha": null"#)).unwrap().lora_alpha, 8.0, "null is PEFT's default");
}

#[test]
fn an_adapter_whose_ranks_disagree_with_rank_pattern_is_refused_at_import() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let dir = tmp.path().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    let src = bert().join("adapter");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(src.join("adapter_config.json")).unwrap()).unwrap();
    cfg["rank_pattern"] = serde_json::json!({"query": 2});
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
    std::fs::copy(src.join("adapter_model.safetensors"), dir.join("adapter_model.safetensors")).unwrap();
    let err = fails(&home, &["import", dir.to_str().unwrap(), "--name", "x", "--base", bert().join("base").to_str().unwrap()]);
    assert!(err.contains("rank_pattern"), "{err}");
}

#[test]
fn hostile_files_and_sizes_are_errors_not_panics_or_unbounded_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    // weights behind a symlink to /dev/zero: refused before any read
    let dir = tmp.path().join("zero");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(bert().join("adapter/adapter_config.json"), dir.join("adapter_config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("adapter_model.safetensors")).unwrap();
    let err = fails(&home, &["import", dir.to_str().unwrap(), "--name", "z", "--base", bert().join("base").to_str().unwrap()]);
    assert!(err.contains("not a regular file"), "{err}");
    // zero attention heads: an error naming the field, not a division by zero
    let base = tmp.path().join("zero-heads");
    std::fs::create_dir_all(&base).unwrap();
    for e in std::fs::read_dir(bert().join("base")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, base.join(p.file_name().unwrap())).unwrap();
    }
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(base.join("config.json")).unwrap()).unwrap();
    cfg["num_attention_heads"] = 0.into();
    std::fs::write(base.join("config.json"), cfg.to_string()).unwrap();
    let err = fails(&home, &["predict", "--base", base.to_str().unwrap(), "--text", "hello"]);
    assert!(err.contains("num_attention_heads"), "{err}");
    // max_seq_len = 0 in a recipe: refused when the recipe is read
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("adapters/en-sentiment/recipe.toml");
    let err = loradex::train::recipe::Recipe::load(&recipe, &["data.max_seq_len=0".into()]).expect_err("max_seq_len 0").to_string();
    assert!(err.contains("max_seq_len"), "{err}");
}

/// A classification job offered to a batcher that has stopped is a 500 saying so, not "queue
/// full" (a 503 tells clients to retry, but nothing will ever answer); a full queue is the 503.
#[test]
fn a_stopped_batcher_is_a_500_and_a_full_queue_a_503() {
    let (tx, rx) = tokio::sync::mpsc::channel::<u32>(1);
    loradex::serve::enqueue(&tx, 1).expect("room for one");
    let full = loradex::serve::enqueue(&tx, 2).expect_err("full");
    assert_eq!((full.status().as_u16(), full.message()), (503, "the classification queue is full, retry later"));
    drop(rx);
    let stopped = loradex::serve::enqueue(&tx, 3).expect_err("no batcher");
    assert_eq!((stopped.status().as_u16(), stopped.message()), (500, "the classification batcher has stopped"));
}
