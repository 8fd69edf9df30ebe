//! HTTP serving on one shared base (axum + tokio). Each request names its adapter (or none);
//! adapters load from the store on first use into a byte-bounded LRU cache and are leased in
//! the store while resident. Classification jobs from concurrent requests are gathered by one
//! batcher thread into mixed-adapter forwards; generation requests join `llm`'s continuous
//! batch (OpenAI-compatible endpoints in `openai`). Refs are resolved per request, so a re-tag
//! is seen by new requests while requests in flight finish on the adapter they hold.

mod cache;
mod classify;
pub use classify::enqueue;
pub mod http;
pub mod llm;
pub mod metrics;
mod openai;
pub mod request;

use crate::base::BaseDir;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::model::lora::LoadedAdapter;
use crate::model::Engine;
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cache::Cache;
pub use http::{LogFormat, RequestLog};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

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
    /// Generation beside a quantized base: the precision LoRA factors are read in (`None`: the
    /// decoder's default).
    pub lora_factors: Option<crate::model::factors8::FactorDtype>,
    /// Pull refs missing from the store from `PREFIX/NAME:TAG` of this registry.
    pub registry: Option<(String, crate::registry::Remote)>,
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
            lora_factors: None,
            registry: None,
        }
    }
}

struct Shared {
    engine: Arc<Engine>,
    base_fp: Digest,
    base_id: String,
    store: Mutex<Store>,
    cache: Mutex<Cache>,
    jobs: mpsc::Sender<classify::Job>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<metrics::Metrics>,
    token: Option<String>,
    holder: crate::store::Holder,
    llm: Option<Arc<llm::Llm>>,
    /// Where refs missing from the store are pulled from (`PREFIX/NAME:TAG`).
    registry: Option<(String, crate::registry::Remote)>,
    /// One pull at a time: concurrent first requests for an adapter pull it once.
    pulling: Mutex<()>,
}

/// An API error: status + message, rendered as `{"error": {"message", "type"}}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub fn status(&self) -> StatusCode {
        self.0
    }
    pub fn message(&self) -> &str {
        &self.1
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ty = match self.0 {
            StatusCode::BAD_REQUEST => "invalid_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "wrong_base",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            s if s.is_client_error() => "invalid_request",
            _ => "internal",
        };
        let mut r = (self.0, axum::Json(json!({"error": {"message": self.1, "type": ty}}))).into_response();
        if self.0.is_server_error() {
            r.extensions_mut().insert(http::ErrorCause(self.1));
        }
        r
    }
}

impl From<request::Invalid> for ApiError {
    fn from(e: request::Invalid) -> Self {
        bad(e.0)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::InvalidRef(..) | Error::InvalidDigest(_) | Error::InvalidArgument(_) | Error::Tokenizer(_) => StatusCode::BAD_REQUEST,
            Error::WrongBase { .. } => StatusCode::CONFLICT,
            // the registry behind `serve --registry` is down or refused: retry later
            Error::Registry(_) => StatusCode::SERVICE_UNAVAILABLE,
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

    /// A request's adapter: one ref, a weighted mix, or none.
    fn adapter_choice(&self, spec: Option<&str>, mix: Option<&[(String, f64)]>) -> Result<(Option<Digest>, Option<Arc<LoadedAdapter>>)> {
        let Some(mix) = mix else { return self.adapter_opt(spec) };
        let parts: Vec<(Digest, Arc<LoadedAdapter>, f64)> = mix.iter().map(|(r, w)| self.adapter(r).map(|(d, a)| (d, a, *w))).collect::<Result<_>>()?;
        // a mix is its inputs' digests and weights; its low-rank concatenation is made once
        // and kept in the adapter cache like any adapter
        let key: String = parts.iter().map(|(d, _, w)| format!("{d}={w:e}\n")).collect();
        let d = Digest::of(format!("loradex-mix-v1\n{key}").as_bytes());
        if let Some(a) = self.cache.lock().expect("cache lock").get(&d) {
            return Ok((Some(d), Some(a)));
        }
        let inputs: Vec<(&LoadedAdapter, f64)> = parts.iter().map(|(_, a, w)| (a.as_ref(), *w)).collect();
        let a = Arc::new(LoadedAdapter::mix(&d.to_string(), &inputs)?);
        let evicted = self.cache.lock().expect("cache lock").insert(d, a.clone());
        self.evicted(evicted);
        Ok((Some(d), Some(a)))
    }

    /// Resolves a ref to its digest and the resident adapter, loading it on a miss.
    fn adapter(&self, spec: &str) -> Result<(Digest, Arc<LoadedAdapter>)> {
        // (the store guard must drop before `pull` takes the lock again)
        let resolved = self.store.lock().expect("store lock").resolve(spec);
        let d = match resolved {
            Err(Error::NotFound(_)) if self.registry.is_some() && !spec.starts_with("sha256:") => self.pull(spec)?,
            r => r?,
        };
        let hit = {
            let mut c = self.cache.lock().expect("cache lock");
            c.get(&d).map(|a| (a, c.trim(Some(&d))))
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

    /// Pulls a ref the store lacks from the registry (`PREFIX/NAME:TAG`) and stores it; a
    /// second request waiting here finds it stored and pulls nothing. The store is not locked
    /// while the network runs.
    fn pull(&self, spec: &str) -> Result<Digest> {
        let (prefix, remote) = self.registry.as_ref().expect("a registry");
        let r = crate::store::Ref::parse(spec)?;
        let _one = self.pulling.lock().expect("pull lock");
        if let Ok(d) = self.store.lock().expect("store lock").resolve(spec) {
            return Ok(d);
        }
        // on a thread of its own: the registry client runs its own runtime, which may not start
        // on one of the server's
        let src = format!("{prefix}/{}:{}", r.name, r.tag);
        // blobs stream into the store's tmp/ without its lock, and are renamed in by `save`
        let staging = self.store.lock().expect("store lock").staging();
        let artifact = std::thread::scope(|s| s.spawn(|| crate::registry::download(&src, remote, &staging)).join())
            .map_err(|_| Error::Registry(format!("{src}: the download thread panicked")))??;
        let p = crate::registry::save(&mut self.store.lock().expect("store lock"), artifact, Some(&r))?;
        self.metrics.registry_pulls.fetch_add(1, Ordering::Relaxed);
        Ok(p.digest)
    }

    /// Evicts what the budget no longer has room for now that requests let their adapters go
    /// (called after a batch or a sequence drops its `Arc`s, before its client hears).
    pub(crate) fn trim_idle(&self) {
        let evicted = self.cache.lock().expect("cache lock").trim(None);
        self.evicted(evicted);
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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("worker failed: {e}")))?
}

async fn list_adapters(s: Arc<Shared>) -> Result<Value, ApiError> {
    blocking(move || {
        let resident: Vec<Value> = {
            let c = s.cache.lock().expect("cache lock");
            let mut v: Vec<Value> = c
                .entries
                .iter()
                .map(|(d, e)| json!({"digest": d.to_string(), "bytes": e.adapter.resident_bytes(), "in_use": Arc::strong_count(&e.adapter) > 1}))
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
            Ok(json!({"ref": spec, "digest": d.to_string(), "bytes": a.resident_bytes(), "resident": true}))
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

/// A JSON answer with the handler's log fields attached.
fn answer(r: Result<Value, ApiError>, log: RequestLog) -> Response {
    http::with_log(r.map(|v| (StatusCode::OK, axum::Json(v)).into_response()).unwrap_or_else(IntoResponse::into_response), log)
}

async fn generation(s: Arc<Shared>, h: HeaderMap, q: Option<String>, body: Result<Bytes, BytesRejection>, kind: openai::Kind) -> Response {
    let mut log = RequestLog::default();
    let r = match http::body(body) {
        Ok(b) => openai::generate(s, kind, h, q, b, &mut log).await,
        Err(e) => Err(e),
    };
    http::with_log(r.unwrap_or_else(IntoResponse::into_response), log)
}

fn metrics_text(s: &Shared) -> Response {
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
}

/// The router over shared state (also used by tests through `start`). Authentication,
/// metrics and request logs are `http::layer`'s, around every route and fallback.
fn router(s: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/health",
            get(|State(s): State<Arc<Shared>>| async move {
                let v = json!({"status": "ok", "base": s.base_fp.to_string(), "model": s.base_id, "arch": s.engine.base.arch.name()});
                answer(Ok(v), RequestLog::default())
            }),
        )
        .route("/metrics", get(|State(s): State<Arc<Shared>>| async move { metrics_text(&s) }))
        .route(
            "/v1/classify",
            post(|State(s): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>| async move {
                let mut log = RequestLog::default();
                let r = match http::body(body) {
                    Ok(b) => classify::classify(s, b, &mut log).await,
                    Err(e) => Err(e),
                };
                answer(r, log)
            }),
        )
        .route(
            "/v1/completions",
            post(|State(s): State<Arc<Shared>>, h: HeaderMap, RawQuery(q): RawQuery, body: Result<Bytes, BytesRejection>| async move {
                generation(s, h, q, body, openai::Kind::Completion).await
            }),
        )
        .route(
            "/v1/chat/completions",
            post(|State(s): State<Arc<Shared>>, h: HeaderMap, RawQuery(q): RawQuery, body: Result<Bytes, BytesRejection>| async move {
                generation(s, h, q, body, openai::Kind::Chat).await
            }),
        )
        .route("/v1/models", get(|State(s): State<Arc<Shared>>| async move { answer(openai::models(s).await, RequestLog::default()) }))
        .route("/v1/adapters", get(|State(s): State<Arc<Shared>>| async move { answer(list_adapters(s).await, RequestLog::default()) }))
        .route(
            "/v1/adapters/{ref}/{action}",
            post(|State(s): State<Arc<Shared>>, p: Result<UrlPath<(String, String)>, PathRejection>| async move {
                match p {
                    Ok(UrlPath((r, action))) => {
                        let log = RequestLog { adapter: Some(r.clone()), rows: None };
                        answer(adapter_action(s, r, action).await, log)
                    }
                    Err(e) => answer(Err(ApiError(e.status(), e.body_text())), RequestLog::default()),
                }
            }),
        )
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()).into_response() })
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(DefaultBodyLimit::max(http::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(s.clone(), http::layer))
        .with_state(s)
}

fn build(opts: &Options) -> Result<(Arc<Shared>, mpsc::Receiver<classify::Job>)> {
    let store = Store::open(&opts.home)?;
    let base = BaseDir::open(&opts.base)?;
    let base_fp = store.base_fingerprint(&base)?;
    let base_id = base.name();
    let mut engine = Engine::load_with(base, crate::model::device(opts.cuda)?, opts.dtype)?;
    if let Some(f) = opts.lora_factors {
        engine.set_lora_factors(f)?;
    }
    let engine = Arc::new(engine);
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
        registry: opts.registry.clone(),
        pulling: Mutex::new(()),
    });
    if let Some(llm) = &shared.llm {
        let weak = Arc::downgrade(&shared);
        llm.on_release(move || {
            if let Some(s) = weak.upgrade() {
                s.trim_idle();
            }
        });
    }
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
        .spawn(move || classify::batcher(engine, rx, max_batch, queued, weak))
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
