//! HTTP serving on one shared base (axum + tokio). Each request names its adapter (or none);
//! adapters load from the store on first use into a byte-bounded LRU cache and are leased in
//! the store while resident. Classification jobs from concurrent requests are gathered by one
//! batcher thread into mixed-adapter forwards; generation requests join `llm`'s continuous
//! batch (OpenAI-compatible endpoints in `openai`). Refs are resolved per request, so a re-tag
//! is seen by new requests while requests in flight finish on the adapter they hold.

mod cache;
pub mod llm;
pub mod metrics;
mod openai;

use crate::base::BaseDir;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::model::lora::{LoadedAdapter, Routing};
use crate::model::{pad_batch, Engine, Net, Prediction};
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cache::Cache;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// How long a lease outlives its last renewal where the store cannot tell whether this
/// process lives (no /proc, another pid namespace); where it can, the lease lasts while the
/// server runs. Renewed (with the adapter's use time) at most once a minute while requests use it.
const LEASE_SECS: i64 = 600;

pub struct Options {
    pub base: String,
    pub addr: String,
    pub cache_bytes: usize,
    pub max_batch: usize,
    pub max_queue: usize,
    pub token: Option<String>,
    pub cuda: bool,
    pub home: PathBuf,
    /// Generation: sequences in the continuous batch at once.
    pub max_running: usize,
    /// Generation: KV cache budget in bytes.
    pub kv_cache_bytes: usize,
    /// Generation: requests waiting for a slot (503 beyond).
    pub max_waiting: usize,
    /// Generation: prompt tokens prefilled per step.
    pub prefill_tokens: usize,
    /// GGUF bases: keep quantized or dequantize to f32.
    pub dtype: crate::model::gguf::LoadDtype,
}

impl Options {
    /// Defaults for everything but the base and the store.
    pub fn new(base: String, home: PathBuf) -> Options {
        Options {
            base,
            addr: "127.0.0.1:8080".into(),
            cache_bytes: 256 << 20,
            max_batch: 64,
            max_queue: 1024,
            token: None,
            cuda: false,
            home,
            max_running: 32,
            kv_cache_bytes: 1 << 30,
            max_waiting: 256,
            prefill_tokens: 512,
            dtype: Default::default(),
        }
    }
}

struct Job {
    rows: Vec<(Vec<u32>, Vec<u32>)>,
    adapter: Option<Arc<LoadedAdapter>>,
    reply: oneshot::Sender<Result<Vec<Prediction>>>,
}

struct Shared {
    engine: Arc<Engine>,
    base_fp: Digest,
    base_id: String,
    store: Mutex<Store>,
    cache: Mutex<Cache>,
    jobs: mpsc::Sender<Job>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<metrics::Metrics>,
    token: Option<String>,
    holder: crate::store::Holder,
    llm: Option<Arc<llm::Llm>>,
}

/// An API error: status + message, rendered as `{"error": {"message", "type"}}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ty = match self.0 {
            StatusCode::BAD_REQUEST => "invalid_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "wrong_base",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded",
            _ => "internal",
        };
        (self.0, axum::Json(json!({"error": {"message": self.1, "type": ty}}))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::InvalidRef(..) | Error::InvalidDigest(_) | Error::InvalidArgument(_) | Error::Tokenizer(_) => StatusCode::BAD_REQUEST,
            Error::WrongBase { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

pub(crate) fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

impl Shared {
    /// `adapter` for a request that may name none (the base alone).
    fn adapter_opt(&self, spec: Option<&str>) -> Result<(Option<Digest>, Option<Arc<LoadedAdapter>>)> {
        Ok(match spec {
            Some(r) => {
                let (d, a) = self.adapter(r)?;
                (Some(d), Some(a))
            }
            None => (None, None),
        })
    }

    /// Resolves a ref to its digest and the resident adapter, loading it on a miss.
    fn adapter(&self, spec: &str) -> Result<(Digest, Arc<LoadedAdapter>)> {
        let d = self.store.lock().expect("store lock").resolve(spec)?;
        let hit = {
            let mut c = self.cache.lock().expect("cache lock");
            c.get(&d).map(|a| (a, c.trim(&d)))
        };
        if let Some((a, evicted)) = hit {
            self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
            // throttled in the store: at most one write a minute per adapter
            self.store.lock().expect("store lock").renew(&d, &self.holder, LEASE_SECS)?;
            self.evicted(evicted);
            return Ok((d, a));
        }
        self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
        let (m, cfg, w) = {
            let mut s = self.store.lock().expect("store lock");
            let files = s.adapter_files(&d)?;
            if files.0.base_fingerprint != self.base_fp {
                return Err(Error::WrongBase { expected: files.0.base_fingerprint.to_string(), got: self.base_fp.to_string() });
            }
            // the lease also marks the adapter used now
            s.lease(&d, &self.holder, LEASE_SECS)?;
            files
        };
        let a = self.engine.adapter(&d.to_string(), &cfg, &w, m.labels)?;
        let evicted = self.cache.lock().expect("cache lock").insert(d, a.clone());
        self.evicted(evicted);
        Ok((d, a))
    }

    /// Counts evictions and releases their store leases (prune may take them again).
    fn evicted(&self, evicted: Vec<Digest>) {
        if evicted.is_empty() {
            return;
        }
        self.metrics.cache_evictions.fetch_add(evicted.len() as u64, Ordering::Relaxed);
        let mut s = self.store.lock().expect("store lock");
        for e in evicted {
            let _ = s.release(&e, &self.holder);
        }
    }

    fn authorized(&self, h: &HeaderMap) -> bool {
        match &self.token {
            None => true,
            Some(t) => h
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|v| constant_time_eq(v.as_bytes(), t.as_bytes())),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The batcher: waits for a job, gathers whatever else is queued (up to `max_batch` rows),
/// and runs them as one mixed-adapter forward.
fn batcher(engine: Arc<Engine>, mut rx: mpsc::Receiver<Job>, max_batch: usize, queued: Arc<AtomicUsize>, shared: std::sync::Weak<Shared>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        let mut rows = jobs[0].rows.len();
        while rows < max_batch {
            match rx.try_recv() {
                Ok(j) => {
                    rows += j.rows.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        queued.fetch_sub(jobs.len(), Ordering::Relaxed);
        let mut adapters: Vec<Arc<LoadedAdapter>> = vec![];
        let mut all_rows = vec![];
        let mut routing_rows = vec![];
        for j in &jobs {
            let slot = j.adapter.as_ref().map(|a| match adapters.iter().position(|x| Arc::ptr_eq(x, a)) {
                Some(i) => i,
                None => {
                    adapters.push(a.clone());
                    adapters.len() - 1
                }
            });
            for r in &j.rows {
                all_rows.push(r.clone());
                routing_rows.push(slot);
            }
        }
        let result = (|| {
            let pad = engine.tok()?.pad_id;
            let batch = pad_batch(&all_rows, pad, &engine.device)?;
            engine.classify_batch(&batch, &Routing { adapters, rows: routing_rows })
        })();
        if let Some(s) = shared.upgrade() {
            s.metrics.forward_batches.fetch_add(1, Ordering::Relaxed);
            s.metrics.forward_rows.fetch_add(all_rows.len() as u64, Ordering::Relaxed);
        }
        match result {
            Ok(mut preds) => {
                for j in jobs.into_iter().rev() {
                    let mine = preds.split_off(preds.len() - j.rows.len());
                    let _ = j.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for j in jobs {
                    let _ = j.reply.send(Err(Error::Model(msg.clone())));
                }
            }
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("worker failed: {e}")))?
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    if !v.is_object() {
        return Err(bad("the body must be a JSON object"));
    }
    Ok(v)
}

async fn classify(s: Arc<Shared>, body: Bytes) -> Result<Value, ApiError> {
    let v = parse_body(&body)?;
    let texts: Vec<String> = match v.get("texts") {
        Some(Value::Array(a)) if !a.is_empty() => {
            a.iter().map(|t| t.as_str().map(str::to_string).ok_or_else(|| bad("texts must be strings"))).collect::<Result<_, _>>()?
        }
        _ => return Err(bad("\"texts\" must be a non-empty array of strings")),
    };
    if texts.len() > 1024 {
        return Err(bad("at most 1024 texts per request"));
    }
    let spec = match v.get("adapter") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) => Some(r.clone()),
        Some(_) => return Err(bad("\"adapter\" must be a string or null")),
    };
    if !matches!(s.engine.net, Net::Bert(_)) {
        return Err(bad("this base is not a classifier (use /v1/completions)"));
    }
    let s2 = s.clone();
    let (digest, adapter, rows) = blocking(move || {
        let (d, a) = s2.adapter_opt(spec.as_deref())?;
        let tok = s2.engine.tok()?;
        let rows = texts.iter().map(|t| tok.encode(t, s2.engine.max_len)).collect::<Result<Vec<_>>>()?;
        Ok((d, a, rows))
    })
    .await?;
    let (tx, rx) = oneshot::channel();
    let n = rows.len();
    s.queued.fetch_add(1, Ordering::Relaxed);
    if s.jobs.try_send(Job { rows, adapter, reply: tx }).is_err() {
        s.queued.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "queue full, retry later".into()));
    }
    let preds = rx.await.map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "batcher stopped".into()))??;
    debug_assert_eq!(preds.len(), n);
    Ok(json!({
        "adapter": v.get("adapter").cloned().unwrap_or(Value::Null),
        "digest": digest.map(|d| d.to_string()),
        "results": preds.iter().map(|p| json!({"label": p.label, "index": p.index, "probabilities": p.probabilities, "logits": p.logits})).collect::<Vec<_>>(),
    }))
}

async fn list_adapters(s: Arc<Shared>) -> Result<Value, ApiError> {
    blocking(move || {
        let resident: Vec<Value> = {
            let c = s.cache.lock().expect("cache lock");
            let mut v: Vec<Value> = c
                .entries
                .iter()
                .map(|(d, e)| json!({"digest": d.to_string(), "bytes": e.adapter.bytes, "in_use": Arc::strong_count(&e.adapter) > 1}))
                .collect();
            v.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
            v
        };
        let stored = s.store.lock().expect("store lock").list(Some(&s.base_fp))?;
        Ok(json!({"base": s.base_fp.to_string(), "resident": resident, "stored": stored}))
    })
    .await
}

async fn adapter_action(s: Arc<Shared>, spec: String, action: String) -> Result<Value, ApiError> {
    blocking(move || match action.as_str() {
        "load" => {
            let (d, a) = s.adapter(&spec)?;
            Ok(json!({"ref": spec, "digest": d.to_string(), "bytes": a.bytes, "resident": true}))
        }
        "unload" => {
            let d = s.store.lock().expect("store lock").resolve(&spec)?;
            let removed = s.cache.lock().expect("cache lock").remove(&d);
            if removed {
                s.store.lock().expect("store lock").release(&d, &s.holder)?;
            }
            Ok(json!({"ref": spec, "digest": d.to_string(), "resident": false, "was_resident": removed}))
        }
        other => Err(ApiError(StatusCode::NOT_FOUND, format!("unknown adapter action {other:?} (load, unload)"))),
    })
    .await
}

fn respond(s: &Shared, endpoint: &str, t0: Instant, r: Result<Value, ApiError>) -> Response {
    respond_with(s, endpoint, t0, r.map(|v| (StatusCode::OK, axum::Json(v)).into_response()))
}

fn respond_with(s: &Shared, endpoint: &str, t0: Instant, r: Result<Response, ApiError>) -> Response {
    let resp = r.unwrap_or_else(IntoResponse::into_response);
    s.metrics.observe(endpoint, resp.status().as_u16(), t0.elapsed().as_secs_f64());
    resp
}

macro_rules! guarded {
    ($s:expr, $h:expr, $ep:expr, $t0:expr, $body:expr) => {{
        if !$s.authorized(&$h) {
            respond(&$s, $ep, $t0, Err(ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into())))
        } else {
            let r = $body.await;
            respond(&$s, $ep, $t0, r)
        }
    }};
}

async fn generation(s: Arc<Shared>, h: HeaderMap, q: Option<String>, body: Bytes, kind: openai::Kind, ep: &str, t0: Instant) -> Response {
    if !s.authorized(&h) {
        return respond(&s, ep, t0, Err(ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into())));
    }
    let r = openai::generate(s.clone(), kind, h, q, body).await;
    respond_with(&s, ep, t0, r)
}

/// The router over shared state (also used by tests through `start`).
fn router(s: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/health",
            get(|State(s): State<Arc<Shared>>| async move {
                let t0 = Instant::now();
                let v = json!({"status": "ok", "base": s.base_fp.to_string(), "model": s.base_id, "arch": s.engine.base.arch.name()});
                respond(&s, "/health", t0, Ok(v))
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<Arc<Shared>>, h: HeaderMap| async move {
                if !s.authorized(&h) {
                    return ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into()).into_response();
                }
                let (bytes, n) = {
                    let c = s.cache.lock().expect("cache lock");
                    (c.resident_bytes(), c.entries.len())
                };
                let llm = s.llm.as_ref().map(|l| metrics::LlmGauges {
                    running: l.running.load(Ordering::Relaxed),
                    waiting: l.waiting(),
                    kv_bytes_used: l.budget.used(),
                    kv_bytes_total: l.budget.total(),
                });
                let text = s.metrics.render(bytes, n, s.queued.load(Ordering::Relaxed), llm);
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
            }),
        )
        .route(
            "/v1/classify",
            post(|State(s): State<Arc<Shared>>, h: HeaderMap, body: Bytes| async move {
                let t0 = Instant::now();
                guarded!(s, h, "/v1/classify", t0, classify(s.clone(), body))
            }),
        )
        .route(
            "/v1/completions",
            post(|State(s): State<Arc<Shared>>, h: HeaderMap, RawQuery(q): RawQuery, body: Bytes| async move {
                let t0 = Instant::now();
                generation(s, h, q, body, openai::Kind::Completion, "/v1/completions", t0).await
            }),
        )
        .route(
            "/v1/chat/completions",
            post(|State(s): State<Arc<Shared>>, h: HeaderMap, RawQuery(q): RawQuery, body: Bytes| async move {
                let t0 = Instant::now();
                generation(s, h, q, body, openai::Kind::Chat, "/v1/chat/completions", t0).await
            }),
        )
        .route(
            "/v1/models",
            get(|State(s): State<Arc<Shared>>, h: HeaderMap| async move {
                let t0 = Instant::now();
                guarded!(s, h, "/v1/models", t0, openai::models(s.clone()))
            }),
        )
        .route(
            "/v1/adapters",
            get(|State(s): State<Arc<Shared>>, h: HeaderMap| async move {
                let t0 = Instant::now();
                guarded!(s, h, "/v1/adapters", t0, list_adapters(s.clone()))
            }),
        )
        .route(
            "/v1/adapters/{ref}/{action}",
            post(|State(s): State<Arc<Shared>>, h: HeaderMap, UrlPath((r, action)): UrlPath<(String, String)>| async move {
                let t0 = Instant::now();
                guarded!(s, h, "/v1/adapters/action", t0, adapter_action(s.clone(), r, action))
            }),
        )
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()).into_response() })
        .with_state(s)
}

fn build(opts: &Options) -> Result<(Arc<Shared>, mpsc::Receiver<Job>)> {
    let store = Store::open(&opts.home)?;
    let base = BaseDir::open(&opts.base)?;
    let base_fp = store.base_fingerprint(&base)?;
    let base_id = base.name();
    let engine = Arc::new(Engine::load_with(base, crate::model::device(opts.cuda)?, opts.dtype)?);
    let (tx, rx) = mpsc::channel(opts.max_queue.max(1));
    let metrics: Arc<metrics::Metrics> = Default::default();
    let llm = match (&engine.decoder, &engine.tok) {
        (Some(dec), Some(tok)) => {
            let limits = llm::Limits {
                max_running: opts.max_running.max(1),
                max_waiting: opts.max_waiting,
                kv_bytes: opts.kv_cache_bytes,
                prefill_tokens: opts.prefill_tokens.max(1),
            };
            let tok = Arc::new(crate::model::Tok::new(tok.inner.clone(), Some(tok.pad_id))?);
            Some(Arc::new(llm::Llm::start(dec.clone(), tok, limits, metrics.clone())?))
        }
        _ => None,
    };
    let shared = Arc::new(Shared {
        engine,
        base_fp,
        base_id,
        store: Mutex::new(store),
        cache: Mutex::new(Cache::new(opts.cache_bytes)),
        jobs: tx,
        queued: Arc::new(AtomicUsize::new(0)),
        metrics,
        token: opts.token.clone().filter(|t| !t.is_empty()),
        holder: crate::store::Holder::current(),
        llm,
    });
    Ok((shared, rx))
}

/// Binds, calls `on_bind` with the bound address, and serves until Ctrl-C / SIGTERM.
pub fn run_blocking(opts: Options, on_bind: impl FnOnce(std::net::SocketAddr)) -> Result<()> {
    let (shared, rx) = build(&opts)?;
    let engine = shared.engine.clone();
    let queued = shared.queued.clone();
    let weak = Arc::downgrade(&shared);
    let max_batch = opts.max_batch.max(1);
    std::thread::Builder::new()
        .name("loradex-batcher".into())
        .spawn(move || batcher(engine, rx, max_batch, queued, weak))
        .map_err(|e| Error::io("batcher thread", e))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| Error::io("tokio runtime", e))?;
    let holder = shared.holder.clone();
    let s2 = shared.clone();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&opts.addr).await.map_err(|e| Error::io(opts.addr.clone(), e))?;
        on_bind(listener.local_addr().map_err(|e| Error::io(opts.addr.clone(), e))?);
        axum::serve(listener, router(shared))
            .with_graceful_shutdown(async {
                let ctrl_c = tokio::signal::ctrl_c();
                #[cfg(unix)]
                {
                    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                    tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
                }
                #[cfg(not(unix))]
                let _ = ctrl_c.await;
            })
            .await
            .map_err(|e| Error::io("http server", e))
    })?;
    // release our leases so prune may take the adapters again
    let mut s = s2.store.lock().expect("store lock");
    let resident: Vec<Digest> = s2.cache.lock().expect("cache lock").entries.keys().copied().collect();
    for d in resident {
        let _ = s.release(&d, &holder);
    }
    Ok(())
}
