//! End to end over loopback: per-request adapters batched together reproduce the fixture's
//! logits; re-tagging under load; eviction under a tiny cache; errors; the OpenAPI schema.

use super::common::*;
use super::schema::Checker;
use candle_core::Device;
use loradex::base::BaseDir;
use loradex::model::lora::Routing;
use loradex::model::Engine;
use serde_json::Value;
use std::sync::Arc;

fn texts() -> Vec<String> {
    case_json(&bert())["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v["results"].as_array().unwrap().iter().map(|r| r["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()).collect()
}

fn classify(addr: &str, adapter: Option<&str>) -> (u16, Value) {
    let body = serde_json::json!({"adapter": adapter, "texts": texts()}).to_string();
    let (st, b) = http(addr, "POST", "/v1/classify", Some(&body), None);
    (st, serde_json::from_str(&b).unwrap_or(Value::Null))
}

fn setup(home: &std::path::Path, tmp: &std::path::Path) -> Vec<Vec<f32>> {
    let base = bert().join("base");
    import(home, &bert().join("adapter"), "cs/default", &base);
    import(home, &bert().join("adapters_multi/other"), "cs/other", &base);
    // a third adapter: the default one with changed weights; its reference logits come from
    // the library's single-adapter path (itself checked against PEFT in fixtures.rs)
    let third = tmp.join("third");
    std::fs::create_dir_all(&third).unwrap();
    std::fs::copy(bert().join("adapter/adapter_config.json"), third.join("adapter_config.json")).unwrap();
    let mut w = std::fs::read(bert().join("adapter/adapter_model.safetensors")).unwrap();
    let (h, _) = loradex::peft::safetensors::read_header(&w, "x").unwrap();
    for c in w[8 + h..].chunks_exact_mut(4) {
        let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * -1.5;
        c.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(third.join("adapter_model.safetensors"), &w).unwrap();
    import(home, &third, "cs/third", &base);
    let e = Engine::load(BaseDir::open_dir(&base).unwrap(), Device::Cpu).unwrap();
    let f = loradex::peft::read_dir(&third).unwrap();
    let a = e.adapter("third", &f.config_bytes, &f.weights_bytes, vec![]).unwrap();
    e.classify(&texts(), &Routing::single(Arc::clone(&a), 5)).unwrap().into_iter().map(|p| p.logits).collect()
}

fn close(got: &[Vec<f32>], want: &[Vec<f32>], tol: f32) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(g, w)| max_abs_diff(g, w) <= tol)
}

#[test]
fn concurrent_requests_over_three_adapters_and_none_match_the_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let third = setup(&home, tmp.path());
    let exp = expected(&bert());
    let tol = atol(&bert());
    let want = |t: &str| exp[t].to_vec2::<f32>().unwrap();
    let cases: Vec<(Option<&'static str>, Vec<Vec<f32>>)> = vec![
        (Some("cs/default"), want("lora_logits")),
        (Some("cs/other"), want("other_logits")),
        (Some("cs/third"), third),
        (None, want("base_logits")),
    ];
    let srv = Server::start(&home, &bert().join("base"), &["--max-batch", "64"]);
    let oa = Checker::file("openapi.yaml");
    let cases = Arc::new(cases);
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let (addr, cases) = (srv.addr.clone(), cases.clone());
            std::thread::spawn(move || {
                let mut out = vec![];
                for k in 0..3 {
                    let (adapter, want) = &cases[(i + k) % cases.len()];
                    let (st, v) = classify(&addr, *adapter);
                    out.push((st, v, adapter.map(str::to_string), want.clone()));
                }
                out
            })
        })
        .collect();
    for h in handles {
        for (st, v, adapter, want) in h.join().unwrap() {
            assert_eq!(st, 200, "{v}");
            oa.assert_valid("components/schemas/ClassifyResponse", &v);
            assert!(close(&rows(&v), &want, tol), "adapter {adapter:?}: got {:?} want {want:?}", rows(&v));
        }
    }
    assert_eq!(json(&ok(&home, &["--json", "show", "cs/other"]))["labels"], serde_json::json!(["정상", "욕설", "성희롱"]));
    // the batcher really mixed adapters: fewer forwards than requests
    let (_, m) = http(&srv.addr, "GET", "/metrics", None, None);
    let metric = |name: &str| -> f64 {
        m.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|x| x.parse().ok()).unwrap_or(-1.0)
    };
    assert_eq!(metric("loradex_forward_rows_total"), 48.0 * 5.0);
    assert!(metric("loradex_forward_batches_total") <= 48.0);
    assert!(m.contains("loradex_requests_total{endpoint=\"/v1/classify\",status=\"200\"} 48"), "{m}");
    assert!(metric("loradex_cache_misses_total") >= 3.0 && metric("loradex_cache_hits_total") >= 1.0);
    // listing, health and load/unload match the API description
    let (st, h) = http(&srv.addr, "GET", "/health", None, None);
    assert_eq!(st, 200);
    oa.assert_valid("components/schemas/Health", &json(&h));
    let (st, l) = http(&srv.addr, "GET", "/v1/adapters", None, None);
    assert_eq!(st, 200);
    let l = json(&l);
    oa.assert_valid("components/schemas/AdapterList", &l);
    assert_eq!(l["resident"].as_array().unwrap().len(), 3);
    assert_eq!(l["stored"].as_array().unwrap().len(), 3);
    let (st, u) = http(&srv.addr, "POST", "/v1/adapters/cs%2Fother/unload", None, None);
    assert_eq!(st, 200, "{u}");
    oa.assert_valid("components/schemas/AdapterAction", &json(&u));
    let (_, l) = http(&srv.addr, "GET", "/v1/adapters", None, None);
    assert_eq!(json(&l)["resident"].as_array().unwrap().len(), 2);
    let (st, _) = http(&srv.addr, "POST", "/v1/adapters/cs%2Fother/load", None, None);
    assert_eq!(st, 200);
    // resident adapters are leased: prune by age cannot take them while the server runs
    let dry = json(&ok(&home, &["--json", "prune", "--older-than", "0s", "--dry-run"]));
    assert!(!dry["adapters"].as_array().unwrap().iter().any(|d| d == &json(&ok(&home, &["--json", "show", "cs/other"]))["digest"]), "{dry}");
}

#[test]
fn errors_are_status_codes_with_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    import(&home, &bert().join("adapter"), "cs/default", &bert().join("base"));
    import(&home, &llama().join("adapter"), "gen/llama", &llama().join("base"));
    let srv = Server::start(&home, &bert().join("base"), &["--token", "s3cret"]);
    let oa = Checker::file("openapi.yaml");
    let t = Some("s3cret");
    let check = |st: u16, body: &str, want: u16| {
        assert_eq!(st, want, "{body}");
        let v = json(body);
        oa.assert_valid("components/schemas/Error", &v);
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    };
    let (st, b) = http(&srv.addr, "POST", "/v1/classify", Some(r#"{"texts":["hi"]}"#), None);
    check(st, &b, 401);
    let (st, b) = http(&srv.addr, "POST", "/v1/classify", Some(r#"{"texts":["hi"]}"#), Some("wrong"));
    check(st, &b, 401);
    let (st, _) = http(&srv.addr, "GET", "/health", None, None);
    assert_eq!(st, 200, "health needs no token");
    let (st, b) = http(&srv.addr, "POST", "/v1/classify", Some(r#"{"texts": ["hi"#), t);
    check(st, &b, 400);
    assert!(b.contains("invalid JSON"));
    let (st, b) = http(&srv.addr, "POST", "/v1/classify", Some(r#"{"texts": []}"#), t);
    check(st, &b, 400);
    let (st, b) = http(&srv.addr, "POST", "/v1/classify", Some(r#"{"adapter": "no/such", "texts": ["hi"]}"#), t);
    check(st, &b, 404);
    let (st, b) = http(&srv.addr, "POST", "/v1/classify", Some(r#"{"adapter": "../etc", "texts": ["hi"]}"#), t);
    check(st, &b, 400);
    let (st, b) = http(&srv.addr, "POST", "/v1/classify", Some(r#"{"adapter": "gen/llama", "texts": ["hi"]}"#), t);
    check(st, &b, 409);
    let (st, b) = http(&srv.addr, "POST", "/v1/completions", Some(r#"{"model": "base", "prompt": "hi"}"#), t);
    check(st, &b, 400);
    let (st, b) = http(&srv.addr, "GET", "/nope", None, t);
    check(st, &b, 404);
    let (st, b) = http(&srv.addr, "POST", "/v1/classify", Some(r#"{"adapter": "cs/default", "texts": ["thank you"]}"#), t);
    assert_eq!(st, 200, "{b}");
}

#[test]
fn retag_under_load_and_eviction_under_a_tiny_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    setup(&home, tmp.path());
    ok(&home, &["tag", "cs/default", "cs/live"]);
    let exp = expected(&bert());
    let tol = atol(&bert());
    let lora = exp["lora_logits"].to_vec2::<f32>().unwrap();
    let other = exp["other_logits"].to_vec2::<f32>().unwrap();
    // default (r=4, 4.5 KB) and other (r=2, 2.4 KB) do not fit 5000 bytes together
    let srv = Server::start(&home, &bert().join("base"), &["--cache-bytes", "5000"]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop) = (srv.addr.clone(), stop.clone());
            let (lora, other) = (lora.clone(), other.clone());
            std::thread::spawn(move || {
                let (mut n_lora, mut n_other) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (st, v) = classify(&addr, Some("cs/live"));
                    assert_eq!(st, 200, "{v}");
                    let r = rows(&v);
                    if close(&r, &lora, tol) {
                        n_lora += 1;
                    } else if close(&r, &other, tol) {
                        n_other += 1;
                    } else {
                        panic!("a response mixed adapters or is wrong: {r:?}");
                    }
                }
                (n_lora, n_other)
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(400));
    ok(&home, &["tag", "cs/other", "cs/live"]);
    // after the re-tag, every new request sees the new adapter
    let (st, v) = classify(&srv.addr, Some("cs/live"));
    assert_eq!(st, 200);
    assert!(close(&rows(&v), &other, tol), "re-tag not picked up");
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut a, mut b) = (0, 0);
    for c in clients {
        let (x, y) = c.join().unwrap();
        a += x;
        b += y;
    }
    assert!(a > 0 && b > 0, "load did not span the re-tag ({a} before, {b} after)");
    // alternate adapters through the tiny cache: evictions happen, answers stay right
    for _ in 0..3 {
        assert!(close(&rows(&classify(&srv.addr, Some("cs/default")).1), &lora, tol));
        assert!(close(&rows(&classify(&srv.addr, Some("cs/other")).1), &other, tol));
    }
    let (_, l) = http(&srv.addr, "GET", "/v1/adapters", None, None);
    let l = json(&l);
    let resident: u64 = l["resident"].as_array().unwrap().iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert!(resident <= 5000, "resident {resident} bytes over the 5000-byte budget: {l}");
    let (_, m) = http(&srv.addr, "GET", "/metrics", None, None);
    let ev: f64 = m.lines().find(|l| l.starts_with("loradex_cache_evictions_total")).unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(ev >= 4.0, "expected evictions, metrics:\n{m}");
}

#[test]
fn completions_choose_the_adapter_per_request() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    import(&home, &llama().join("adapter"), "gen/qkvo", &llama().join("base"));
    let srv = Server::start(&home, &llama().join("base"), &[]);
    let exp = expected(&llama());
    let want: Vec<i64> = exp["greedy_ids"].to_vec2::<i64>().unwrap()[0].clone();
    let prompt_len = exp["prompt_ids"].dims()[1];
    let oa = Checker::file("openapi.yaml");
    let (st, b) = http(&srv.addr, "POST", "/v1/completions", Some(r#"{"model": "base:gen/qkvo:latest", "prompt": "the delivery was", "max_tokens": 12, "temperature": 0}"#), None);
    assert_eq!(st, 200, "{b}");
    let v = json(&b);
    oa.assert_valid("components/schemas/CompletionResponse", &v);
    let got: Vec<i64> = v["choices"][0]["token_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    assert_eq!(got, want[prompt_len..].to_vec(), "greedy ids through the server");
    assert_eq!(v["usage"]["prompt_tokens"], prompt_len);
    let (st, b) = http(&srv.addr, "POST", "/v1/completions", Some(r#"{"model": "base", "prompt": "the delivery was", "max_tokens": 12}"#), None);
    assert_eq!(st, 200);
    let base_ids: Vec<i64> = json(&b)["choices"][0]["token_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    assert_ne!(base_ids, got, "the base alone should generate differently");
    let (st, _) = http(&srv.addr, "POST", "/v1/completions", Some(r#"{"model": "other-model", "prompt": "x"}"#), None);
    assert_eq!(st, 404);
}

#[test]
fn a_full_queue_answers_503_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    import(&home, &bert().join("adapter"), "cs", &bert().join("base"));
    // one waiting job at most; each job is 300 texts, so the batcher stays busy
    let srv = Server::start(&home, &bert().join("base"), &["--max-queue", "1", "--max-batch", "1"]);
    let texts: Vec<String> = (0..300).map(|i| format!("where is my refund {i} thank you for the quick help")).collect();
    let body = serde_json::json!({"adapter": "cs", "texts": texts}).to_string();
    let handles: Vec<_> = (0..24)
        .map(|_| {
            let (addr, body) = (srv.addr.clone(), body.clone());
            std::thread::spawn(move || http(&addr, "POST", "/v1/classify", Some(&body), None))
        })
        .collect();
    let results: Vec<(u16, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let n503 = results.iter().filter(|(s, _)| *s == 503).count();
    let n200 = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(n503 + n200, results.len(), "{:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
    assert!(n503 > 0, "24 concurrent requests against a queue of 1 never got a 503");
    assert!(n200 > 0);
    let oa = Checker::file("openapi.yaml");
    let (_, b) = results.iter().find(|(s, _)| *s == 503).unwrap();
    oa.assert_valid("components/schemas/Error", &json(b));
    assert_eq!(classify(&srv.addr, Some("cs")).0, 200, "the server stopped serving after shedding load");
}
