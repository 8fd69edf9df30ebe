//! The library's one error type: one variant per cause, so callers (the CLI, the HTTP server)
//! can map each to an exit message or status code. Owns no I/O and never prints.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("index database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{what}: invalid JSON: {source}")]
    Json { what: String, source: serde_json::Error },
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    #[error("invalid reference {0:?}: {1}")]
    InvalidRef(String, &'static str),
    #[error("{path}: safetensors header size {size} exceeds the limit of {limit} bytes")]
    HeaderTooLarge { path: String, size: u64, limit: u64 },
    #[error("{path}: truncated safetensors file ({detail})")]
    Truncated { path: String, detail: String },
    #[error("{path}: malformed safetensors header: {detail}")]
    BadHeader { path: String, detail: String },
    #[error("{path}: tensor {tensor}: unsupported dtype {dtype}")]
    UnsupportedDtype { path: String, tensor: String, dtype: String },
    #[error("unknown peft_type {0:?}: loradex reads LORA adapters only")]
    UnknownPeftType(String),
    #[error("unsupported adapter setting: {0}")]
    UnsupportedAdapter(String),
    #[error("{path}: missing {what}")]
    Missing { path: PathBuf, what: String },
    #[error("adapter tensor {tensor}: {detail}")]
    TensorMismatch { tensor: String, detail: String },
    #[error("adapter was made for base {expected} but the given base is {got}")]
    WrongBase { expected: String, got: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("blob {digest} is corrupt: content hashes to {actual}")]
    Corrupt { digest: String, actual: String },
    #[error("model: {0}")]
    Model(String),
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("recipe: {0}")]
    Recipe(String),
    #[error("data {path}: line {line}: {detail}")]
    Data { path: PathBuf, line: usize, detail: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("hub: {0}")]
    Hub(String),
    #[error("registry: {0}")]
    Registry(String),
    #[error("cannot combine: {0}")]
    Combine(#[from] crate::combine::CombineError),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn json(what: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json { what: what.into(), source }
    }
}

/// Attach a path to `std::io::Result`s without a closure at every call site.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
