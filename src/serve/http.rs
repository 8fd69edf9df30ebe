//! What every HTTP request goes through, whatever its endpoint: the bearer-token check (every
//! path but `/health` when a token is set), request metrics, and one `tracing` line per request
//! (method, path, status, adapter, rows, latency; the cause of a 5xx). Also turns axum's own
//! rejections (body too large, bad path) into the API's JSON error shape. Knows nothing of
//! what endpoints do: handlers report their adapter and row count through `RequestLog`.

use super::{ApiError, Shared};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

/// Most bytes a request body may have (413 beyond).
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// What a handler tells the request log, carried in the response's extensions.
#[derive(Clone, Default, Debug)]
pub struct RequestLog {
    pub adapter: Option<String>,
    pub rows: Option<usize>,
}

/// The message of an error response, for the log line of a 5xx.
#[derive(Clone, Debug)]
pub struct ErrorCause(pub String);

/// `response` with the handler's log fields attached.
pub fn with_log(mut response: Response, log: RequestLog) -> Response {
    response.extensions_mut().insert(log);
    response
}

/// The metrics label of a path: the route, not the raw path (refs would explode it).
fn endpoint(path: &str) -> &'static str {
    match path {
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/v1/classify" => "/v1/classify",
        "/v1/completions" => "/v1/completions",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/models" => "/v1/models",
        "/v1/adapters" => "/v1/adapters",
        p if p.starts_with("/v1/adapters/") => "/v1/adapters/action",
        _ => "other",
    }
}

/// The middleware over the whole router (fallbacks included).
pub(super) async fn layer(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = if path != "/health" && !s.authorized(req.headers()) {
        let mut r = ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into()).into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        r
    } else {
        next.run(req).await
    };
    let status = resp.status();
    let secs = t0.elapsed().as_secs_f64();
    s.metrics.observe(endpoint(&path), status.as_u16(), secs);
    let log = resp.extensions().get::<RequestLog>().cloned().unwrap_or_default();
    let latency_ms = (secs * 1e4).round() / 10.0;
    let adapter = log.adapter.as_deref().unwrap_or("");
    let rows = log.rows.unwrap_or(0);
    if status.is_server_error() {
        let cause = resp.extensions().get::<ErrorCause>().map(|c| c.0.as_str()).unwrap_or("");
        tracing::error!(target: "loradex::http", %method, path, status = status.as_u16(), adapter, rows, latency_ms, cause, "request failed");
    } else {
        tracing::info!(target: "loradex::http", %method, path, status = status.as_u16(), adapter, rows, latency_ms, "request");
    }
    resp
}

/// A body, or the JSON error for why axum would not read it (413 when over the limit).
pub fn body(b: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Result<axum::body::Bytes, ApiError> {
    b.map_err(|r| ApiError(r.status(), r.body_text()))
}

/// Answers a method a route does not take, in the JSON error shape.
pub async fn method_not_allowed() -> Response {
    ApiError(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint".into()).into_response()
}

/// Installs the `tracing` subscriber for `loradex serve` (stderr; `RUST_LOG` filters, default
/// `info`). Called by the binary only: the library never installs one itself.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().flatten_event(true).try_init(),
    };
}

/// How `serve` writes its log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<LogFormat> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            o => Err(crate::Error::InvalidArgument(format!("--log-format {o:?}: text or json"))),
        }
    }
}
