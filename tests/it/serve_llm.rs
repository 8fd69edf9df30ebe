//! Generation over HTTP: concurrent requests over several adapters get their solo ids,
//! streamed chunks concatenate to the plain text, chat through the template, adapters named
//! four ways, errors as documented statuses, a cancelled stream frees its slot, a full queue
//! sheds load with 503 and the server keeps serving; responses checked against the OpenAPI
//! schema, streamed ones included.

use super::common::*;
use super::schema::Checker;
use candle_core::Device;
use loradex::base::BaseDir;
use loradex::model::generation::SamplingParams;
use loradex::model::{Engine, Prompt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

const TEMPLATE: &str = "{% for m in messages %}<s>{{ m.role }}: {{ m.content }}</s>{% endfor %}{% if add_generation_prompt %}<s>assistant:{% endif %}";

/// The fixture Llama base with a chat template in its tokenizer_config.json.
fn chat_base(tmp: &Path) -> PathBuf {
    let d = tmp.join("base");
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(llama().join("base").join(f), d.join(f)).unwrap();
    }
    let mut tc: Value = serde_json::from_slice(&std::fs::read(llama().join("base/tokenizer_config.json")).unwrap()).unwrap();
    tc["chat_template"] = TEMPLATE.into();
    std::fs::write(d.join("tokenizer_config.json"), tc.to_string()).unwrap();
    d
}

fn scaled(tmp: &Path, k: f32) -> PathBuf {
    scaled_adapter(&llama().join("adapter"), &tmp.join(format!("scaled{k}")), k)
}

/// POST with extra headers; (status, body).
fn post(addr: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(s, "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// The `data:` payloads of an SSE body (chunked transfer framing ignored: payload lines are
/// whole JSON documents or `[DONE]`).
fn sse_data(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn generation_over_http_streams_chats_and_batches_adapters_like_solo_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let base = chat_base(tmp.path());
    import(&home, &llama().join("adapter"), "gen/qkvo", &base);
    import(&home, &scaled(tmp.path(), -1.5), "gen/neg", &base);
    import(&home, &scaled(tmp.path(), 3.0), "gen/big", &base);
    // solo references from the library
    let e = Engine::load(BaseDir::open_dir(&base).unwrap(), Device::Cpu).unwrap();
    let solo = |adapter: Option<&Path>, prompt: &Prompt, max: usize| {
        let a = adapter.map(|d| {
            let f = loradex::peft::read_dir(d).unwrap();
            e.adapter("x", &f.config_bytes, &f.weights_bytes, vec![]).unwrap()
        });
        let ids = e.prompt_ids(prompt).unwrap();
        e.generate(ids, SamplingParams { max_tokens: max, ..Default::default() }, a, &mut |_| {}).unwrap()
    };
    let neg = scaled(tmp.path(), -1.5);
    let big = scaled(tmp.path(), 3.0);
    let cases: Vec<(Option<&str>, Option<PathBuf>)> =
        vec![(Some("gen/qkvo"), Some(llama().join("adapter"))), (Some("gen/neg"), Some(neg)), (Some("gen/big"), Some(big)), (None, None)];
    let prompts = ["the delivery was", "where is my refund", "thank you", "씨발 빨리 보내라"];
    let mut want = vec![];
    for (i, (_, dir)) in cases.iter().enumerate() {
        want.push(solo(dir.as_deref(), &Prompt::Text(prompts[i].into()), 10));
    }
    let srv = Server::start(&home, &base, &["--max-running", "8"]);
    let oa = Checker::file("openapi.yaml");
    // 16 concurrent clients over 3 adapters and none
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let addr = srv.addr.clone();
            let (name, _) = cases[i % 4].clone();
            let prompt = prompts[i % 4];
            std::thread::spawn(move || {
                let model = match name {
                    Some(n) => format!("base:{n}"),
                    None => "base".into(),
                };
                post(&addr, "/v1/completions", &json!({"model": model, "prompt": prompt, "max_tokens": 10}).to_string(), &[])
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (st, b) = h.join().unwrap();
        assert_eq!(st, 200, "{b}");
        let v = json(&b);
        oa.assert_valid("components/schemas/CompletionResponse", &v);
        assert_eq!(ids(&v["choices"][0]["token_ids"]), want[i % 4].new_ids, "client {i}: batched vs solo ids");
        assert_eq!(v["choices"][0]["text"], want[i % 4].text);
    }
    // the adapter by field, header and query parameter; disagreeing names are a 400
    let body = json!({"model": "base", "prompt": prompts[0], "max_tokens": 10}).to_string();
    for (path, hdr, field) in [
        ("/v1/completions?adapter=gen%2Fqkvo", vec![], false),
        ("/v1/completions", vec![("X-Loradex-Adapter", "gen/qkvo")], false),
        ("/v1/completions", vec![], true),
    ] {
        let b = if field { json!({"model": "base", "adapter": "gen/qkvo", "prompt": prompts[0], "max_tokens": 10}).to_string() } else { body.clone() };
        let (st, r) = post(&srv.addr, path, &b, &hdr);
        assert_eq!(st, 200, "{path} {hdr:?}: {r}");
        assert_eq!(ids(&json(&r)["choices"][0]["token_ids"]), want[0].new_ids, "{path} {hdr:?}");
    }
    let (st, r) = post(&srv.addr, "/v1/completions", &json!({"model": "base:gen/neg", "prompt": "x", "adapter": "gen/qkvo"}).to_string(), &[]);
    assert_eq!(st, 400, "{r}");
    // streamed chunks concatenate to the plain text, and end with usage and [DONE]
    let (st, r) = post(&srv.addr, "/v1/completions", &json!({"model": "base:gen/qkvo", "prompt": prompts[0], "max_tokens": 10, "stream": true}).to_string(), &[]);
    assert_eq!(st, 200, "{r}");
    let data = sse_data(&r);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{r}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| json(d)).collect();
    for c in &chunks {
        oa.assert_valid("components/schemas/CompletionChunk", c);
    }
    let text: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(text, want[0].text, "streamed text");
    let last = chunks.last().unwrap();
    assert_eq!(last["usage"]["completion_tokens"], want[0].new_ids.len());
    assert!(last["choices"][0]["finish_reason"].is_string());
    // chat: the template renders the messages; streamed chat deltas concatenate likewise
    let msgs = vec![loradex::model::chat::Message { role: "user".into(), content: "where is my refund".into() }];
    let chat_want = solo(Some(&llama().join("adapter")), &Prompt::Chat(msgs), 8);
    let cbody = json!({"model": "base:gen/qkvo", "messages": [{"role": "user", "content": "where is my refund"}], "max_tokens": 8});
    let (st, r) = post(&srv.addr, "/v1/chat/completions", &cbody.to_string(), &[]);
    assert_eq!(st, 200, "{r}");
    let v = json(&r);
    oa.assert_valid("components/schemas/ChatCompletionResponse", &v);
    assert_eq!(v["choices"][0]["message"]["content"], chat_want.text);
    assert_eq!(v["usage"]["prompt_tokens"], chat_want.prompt_ids.len());
    let mut sbody = cbody.clone();
    sbody["stream"] = true.into();
    let (_, r) = post(&srv.addr, "/v1/chat/completions", &sbody.to_string(), &[]);
    let data = sse_data(&r);
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| json(d)).collect();
    for c in &chunks {
        oa.assert_valid("components/schemas/ChatCompletionChunk", c);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, chat_want.text, "streamed chat text");
    // models: the base and BASE:REF for each stored adapter
    let (st, r) = http(&srv.addr, "GET", "/v1/models", None, None);
    assert_eq!(st, 200);
    let v = json(&r);
    oa.assert_valid("components/schemas/ModelList", &v);
    let names: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    for n in ["base", "base:gen/qkvo:latest", "base:gen/neg:latest", "base:gen/big:latest"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    // errors keep the JSON shape and their statuses
    for (path, b, status) in [
        ("/v1/completions", json!({"model": "base:nope/none", "prompt": "x"}), 404),
        ("/v1/completions", json!({"model": "base", "prompt": "x", "max_tokens": 500}), 400),
        ("/v1/completions", json!({"model": "base", "prompt": "x", "temperature": 9}), 400),
        ("/v1/completions", json!({"model": "base", "prompt": "x", "n": 2}), 400),
        ("/v1/completions", json!({"model": "base", "prompt": [999999]}), 400),
        ("/v1/chat/completions", json!({"model": "base", "messages": []}), 400),
        ("/v1/chat/completions", json!({"model": "other", "messages": [{"role": "user", "content": "x"}]}), 404),
    ] {
        let (st, r) = post(&srv.addr, path, &b.to_string(), &[]);
        assert_eq!(st, status, "{b}: {r}");
        oa.assert_valid("components/schemas/Error", &json(&r));
    }
    // metrics cover generation
    let (_, m) = http(&srv.addr, "GET", "/metrics", None, None);
    let metric = |name: &str| m.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).unwrap_or(-1.0);
    assert!(metric("loradex_llm_generated_tokens_total") >= 160.0, "{m}");
    assert!(metric("loradex_llm_time_to_first_token_seconds_count") >= 16.0, "{m}");
    assert!(metric("loradex_llm_inter_token_latency_seconds_count") > 0.0, "{m}");
    assert_eq!(metric("loradex_llm_running_sequences"), 0.0, "{m}");
    assert_eq!(metric("loradex_llm_kv_cache_bytes_used"), 0.0, "every reservation returned: {m}");
    assert!(metric("loradex_llm_kv_cache_bytes_total") > 0.0);
}

#[test]
fn a_cancelled_stream_frees_its_slot_and_a_full_queue_answers_503() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let base = llama().join("base");
    // one running sequence, one waiting
    let srv = Server::start(&home, &base, &["--max-running", "1", "--max-waiting", "1"]);
    let body = json!({"model": "base", "prompt": "the", "max_tokens": 120, "stream": true}).to_string();
    let metrics = || {
        let (_, m) = http(&srv.addr, "GET", "/metrics", None, None);
        m
    };
    let metric = |m: &str, name: &str| m.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).unwrap_or(-1.0);
    // the fixture model is so small that a stream can finish before the disconnect is seen, so
    // a few tries are allowed; each must leave the slot free
    let mut tries = 0;
    let m = loop {
        tries += 1;
        let mut s = std::net::TcpStream::connect(&srv.addr).unwrap();
        write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        while !line.starts_with("data: ") {
            line.clear();
            r.read_line(&mut line).unwrap();
        }
        drop(r);
        s.shutdown(std::net::Shutdown::Both).unwrap();
        drop(s);
        // the slot comes back: a new request runs
        let (st, b) = post(&srv.addr, "/v1/completions", &json!({"model": "base", "prompt": "the", "max_tokens": 4}).to_string(), &[]);
        assert_eq!(st, 200, "{b}");
        let m = metrics();
        if metric(&m, "loradex_llm_cancelled_total") >= 1.0 || tries == 5 {
            break m;
        }
    };
    assert!(metric(&m, "loradex_llm_cancelled_total") >= 1.0, "no stream was cancelled in {tries} tries: {m}");
    assert!(metric(&m, "loradex_llm_generated_tokens_total") < (120 * tries) as f64, "every cancelled stream ran on: {m}");
    assert_eq!(metric(&m, "loradex_llm_kv_cache_bytes_used"), 0.0, "{m}");
    // many at once against one slot and one waiting place: some are shed, none fail otherwise
    let handles: Vec<_> = (0..12)
        .map(|_| {
            let addr = srv.addr.clone();
            std::thread::spawn(move || post(&addr, "/v1/completions", &json!({"model": "base", "prompt": "the delivery", "max_tokens": 100}).to_string(), &[]))
        })
        .collect();
    let res: Vec<(u16, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let codes: Vec<u16> = res.iter().map(|r| r.0).collect();
    assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{codes:?}");
    assert!(codes.contains(&503), "12 requests against 1 slot + 1 waiting never got a 503: {codes:?}");
    assert!(codes.contains(&200));
    let oa = Checker::file("openapi.yaml");
    oa.assert_valid("components/schemas/Error", &json(&res.iter().find(|r| r.0 == 503).unwrap().1));
    let (st, _) = post(&srv.addr, "/v1/completions", &json!({"model": "base", "prompt": "x", "max_tokens": 2}).to_string(), &[]);
    assert_eq!(st, 200, "the server keeps serving");
    // a request that can never fit the KV budget is refused up front
    let small = Server::start(&home, &base, &["--kv-cache-bytes", "4096"]);
    let (st, b) = post(&small.addr, "/v1/completions", &json!({"model": "base", "prompt": "the delivery was late", "max_tokens": 50}).to_string(), &[]);
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("KV cache"), "{b}");
}

/// Adapters that were all in use at once, over a cache with room for one, are trimmed back to
/// the budget as soon as their sequences finish, with no later request to trigger it.
#[test]
fn the_adapter_cache_is_back_within_budget_once_generation_lets_go() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let base = llama().join("base");
    import(&home, &llama().join("adapter"), "gen/a", &base);
    import(&home, &scaled(tmp.path(), -1.5), "gen/b", &base);
    let e = Engine::load(BaseDir::open_dir(&base).unwrap(), Device::Cpu).unwrap();
    let f = loradex::peft::read_dir(&llama().join("adapter")).unwrap();
    // an adapter's bytes once a decoder has run it: its tensors and the copies it made
    let a = e.adapter("x", &f.config_bytes, &f.weights_bytes, vec![]).unwrap();
    let ids = e.prompt_ids(&Prompt::Text("the delivery".into())).unwrap();
    let params = SamplingParams { max_tokens: 1, ..Default::default() };
    e.generate(ids, params, Some(a.clone()), &mut |_| {}).unwrap();
    let one = a.resident_bytes();
    assert!(one > a.bytes, "the copies made for the decoder count: {one} against {}", a.bytes);
    let budget = one + one / 2;
    let srv = Server::start(&home, &base, &["--max-running", "8", "--cache-bytes", &budget.to_string()]);
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let addr = srv.addr.clone();
            let model = if i % 2 == 0 { "base:gen/a" } else { "base:gen/b" };
            std::thread::spawn(move || post(&addr, "/v1/completions", &json!({"model": model, "prompt": "the delivery", "max_tokens": 24}).to_string(), &[]))
        })
        .collect();
    for h in handles {
        let (st, b) = h.join().unwrap();
        assert_eq!(st, 200, "{b}");
    }
    let (_, l) = http(&srv.addr, "GET", "/v1/adapters", None, None);
    let l = json(&l);
    let resident: usize = l["resident"].as_array().unwrap().iter().map(|r| r["bytes"].as_u64().unwrap() as usize).sum();
    assert!(resident <= budget, "{resident} bytes resident over the {budget}-byte budget after every request ended: {l}");
    assert!(resident > 0, "the budget has room for one adapter: {l}");
}

/// `"adapters": [{"ref", "weight"}, ...]` on the completion endpoint gives the greedy ids of
/// the stored `cat` combination of the same adapters; a mix beside a single adapter, or of
/// an unknown ref, is a clear error, not a 500.
#[test]
fn a_per_request_mix_generates_what_its_cat_combination_does() {
    let tmp = tempfile::tempdir().unwrap();
    let case = fixtures().join("../peft2/llama-combine");
    let base = case.join("base");
    let home = tmp.path().join("home");
    import(&home, &case.join("adapters"), "d0", &base);
    import(&home, &case.join("adapters/a1"), "d1", &base);
    import(&home, &case.join("adapters/a2"), "d2", &base);
    import(&home, &case.join("combined/c_cat"), "cat", &base);
    let srv = Server::start(&home, &base, &[]);
    let gen = |extra: &str| {
        let body = format!("{{\"model\": \"base\", \"prompt\": [1, 5, 9, 33, 70], \"max_tokens\": 8{extra}}}");
        post(&srv.addr, "/v1/completions", &body, &[])
    };
    let (st, cat) = gen(", \"adapter\": \"cat\"");
    assert_eq!(st, 200, "{cat}");
    let (st, mix) = gen(", \"adapters\": [{\"ref\": \"d0\", \"weight\": 1.0}, {\"ref\": \"d1\", \"weight\": 0.5}, {\"ref\": \"d2\", \"weight\": 0.25}]");
    assert_eq!(st, 200, "{mix}");
    let text = |b: &str| json(b)["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(text(&mix), text(&cat));
    let (st, base_only) = gen("");
    assert_eq!(st, 200);
    assert_ne!(text(&base_only), text(&mix), "the mix should change the output");
    let (st, e) = gen(", \"adapter\": \"cat\", \"adapters\": [{\"ref\": \"d0\", \"weight\": 1.0}]");
    assert_eq!(st, 400, "{e}");
    let (st, e) = gen(", \"adapters\": [{\"ref\": \"nope\", \"weight\": 1.0}]");
    assert_eq!(st, 404, "{e}");
    let (st, e) = gen(", \"adapters\": []");
    assert_eq!(st, 400, "{e}");
}
