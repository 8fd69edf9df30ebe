//! Request bodies of every HTTP endpoint, parsed from untrusted bytes into validated, typed
//! requests before any work is queued: a request that cannot run is refused here (400) and
//! never joins a batch. Pure functions over bytes and strings (no server state, no model), so
//! they are fuzzed directly (`fuzz/`). What a request means (resolving refs, tokenizing,
//! scheduling) belongs to the handlers in `serve` and `openai`, not here.

use crate::model::chat::Message;
pub use crate::model::generation::MAX_STOPS;
use crate::model::generation::SamplingParams;
use serde_json::Value;

/// Most texts one `/v1/classify` request may carry.
pub const MAX_TEXTS: usize = 1024;

/// Why a body was refused: the message of a 400 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

/// A body that must be one JSON object.
pub fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, Invalid> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(invalid("the body must be a JSON object")),
        Err(e) => Err(invalid(format!("invalid JSON body: {e}"))),
    }
}

/// An optional adapter ref: absent or null is the base alone; otherwise a non-empty string.
fn adapter_field(m: &serde_json::Map<String, Value>) -> Result<Option<String>, Invalid> {
    match m.get("adapter") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(r)) if !r.is_empty() => Ok(Some(r.clone())),
        Some(_) => Err(invalid("\"adapter\" must be a non-empty string or null")),
    }
}

/// The most adapters one per-request mix may weigh.
pub const MAX_MIX: usize = 8;

/// A per-request mix, `"adapters": [{"ref": "a", "weight": 0.7}, ...]`: each ref and its weight.
pub type Mix = Vec<(String, f64)>;

/// The optional `adapters` mix; it may not appear beside a single adapter.
fn mix_field(m: &serde_json::Map<String, Value>) -> Result<Option<Mix>, Invalid> {
    let shape = || invalid(format!("\"adapters\" must be a list of 1 to {MAX_MIX} objects {{\"ref\": REF, \"weight\": NUMBER}}"));
    match m.get("adapters") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_MIX => a
            .iter()
            .map(|e| {
                let o = e.as_object().ok_or_else(shape)?;
                if o.keys().any(|k| k != "ref" && k != "weight") {
                    return Err(shape());
                }
                let r = o.get("ref").and_then(Value::as_str).filter(|r| !r.is_empty()).ok_or_else(shape)?;
                let w = o.get("weight").and_then(Value::as_f64).filter(|w| w.is_finite()).ok_or_else(shape)?;
                Ok((r.to_string(), w))
            })
            .collect::<Result<Mix, _>>()
            .map(Some),
        Some(_) => Err(shape()),
    }
}

/// `POST /v1/classify`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifyRequest {
    pub texts: Vec<String>,
    /// The ref as given (`NAME[:TAG]` or `sha256:…`), or none for the base's own head.
    pub adapter: Option<String>,
    /// A weighted mix of adapters instead of one.
    pub mix: Option<Mix>,
}

pub fn parse_classify(body: &[u8]) -> Result<ClassifyRequest, Invalid> {
    let m = parse_object(body)?;
    let texts: Vec<String> = match m.get("texts") {
        Some(Value::Array(a)) if !a.is_empty() => {
            if a.len() > MAX_TEXTS {
                return Err(invalid(format!("at most {MAX_TEXTS} texts per request")));
            }
            a.iter().map(|t| t.as_str().map(str::to_string).ok_or_else(|| invalid("texts must be strings"))).collect::<Result<_, _>>()?
        }
        _ => return Err(invalid("\"texts\" must be a non-empty array of strings")),
    };
    let (adapter, mix) = (adapter_field(&m)?, mix_field(&m)?);
    if adapter.is_some() && mix.is_some() {
        return Err(invalid("name either \"adapter\" or an \"adapters\" mix, not both"));
    }
    Ok(ClassifyRequest { texts, adapter, mix })
}

/// Which generation endpoint a request came to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Completion,
    Chat,
}

/// A parsed, validated generation request (before tokenization).
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// `BASE` or `BASE:REF` as given.
    pub model: String,
    /// The one adapter named by `model`, the `adapter` field, the header or the query.
    pub adapter: Option<String>,
    /// A weighted mix of adapters instead of one (the `adapters` field).
    pub mix: Option<Mix>,
    pub prompt: PromptIn,
    pub params: SamplingParams,
    pub stream: bool,
}

impl GenerationRequest {
    /// The `BASE` part of `model`.
    pub fn base(&self) -> &str {
        self.model.split_once(':').map_or(self.model.as_str(), |(b, _)| b)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PromptIn {
    Text(String),
    Ids(Vec<u32>),
    Chat(Vec<Message>),
}

fn opt<T>(m: &serde_json::Map<String, Value>, key: &str, f: impl Fn(&Value) -> Option<T>, what: &str) -> Result<Option<T>, Invalid> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => f(x).map(Some).ok_or_else(|| invalid(format!("\"{key}\" must be {what}"))),
    }
}

/// The adapter named in a query string (`?adapter=REF`), percent-decoded.
pub fn query_adapter(query: Option<&str>) -> Result<Option<String>, Invalid> {
    let Some(q) = query else { return Ok(None) };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("adapter=") {
            return percent_decode(v)
                .map(|a| Some(a).filter(|a| !a.is_empty()))
                .ok_or_else(|| invalid("the adapter query parameter is not valid percent-encoded UTF-8"));
        }
    }
    Ok(None)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                if !h.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `POST /v1/completions`. `header` and `query` are the adapter named outside the body.
pub fn parse_completion(body: &[u8], header: Option<&str>, query: Option<&str>) -> Result<GenerationRequest, Invalid> {
    parse_generation(Kind::Completion, body, header, query)
}

/// `POST /v1/chat/completions`.
pub fn parse_chat(body: &[u8], header: Option<&str>, query: Option<&str>) -> Result<GenerationRequest, Invalid> {
    parse_generation(Kind::Chat, body, header, query)
}

/// Either generation endpoint. The adapter may be named in up to four places; where several
/// name one, they must agree.
pub fn parse_generation(kind: Kind, body: &[u8], header: Option<&str>, query: Option<&str>) -> Result<GenerationRequest, Invalid> {
    let m = parse_object(body)?;
    let model = match m.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(invalid("\"model\" (BASE or BASE:REF) is required")),
    };
    let from_model = model.split_once(':').map(|(_, r)| r.to_string());
    if from_model.as_deref() == Some("") {
        return Err(invalid("\"model\" BASE:REF names an empty adapter ref"));
    }
    let header = header.filter(|h| !h.is_empty()).map(str::to_string);
    let mut adapter: Option<String> = None;
    for (src, a) in [("model", from_model), ("adapter", adapter_field(&m)?), ("X-Loradex-Adapter", header), ("the adapter query parameter", query_adapter(query)?)] {
        if let Some(a) = a {
            match &adapter {
                Some(prev) if *prev != a => return Err(invalid(format!("{src} names adapter {a:?}, but {prev:?} was named too"))),
                _ => adapter = Some(a),
            }
        }
    }
    let mix = mix_field(&m)?;
    if adapter.is_some() && mix.is_some() {
        return Err(invalid("an \"adapters\" mix cannot be combined with a single adapter (model BASE:REF, adapter, header or query)"));
    }
    let prompt = match kind {
        Kind::Completion => match m.get("prompt") {
            Some(Value::String(p)) => PromptIn::Text(p.clone()),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => PromptIn::Text(a[0].as_str().unwrap_or_default().to_string()),
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(|x| x.as_u64().is_some_and(|n| n <= u32::MAX as u64)) => {
                PromptIn::Ids(a.iter().filter_map(|x| x.as_u64().map(|n| n as u32)).collect())
            }
            _ => return Err(invalid("\"prompt\" must be a string (or a list of one string, or of token ids)")),
        },
        Kind::Chat => match m.get("messages") {
            Some(Value::Array(msgs)) if !msgs.is_empty() => {
                PromptIn::Chat(msgs.iter().map(Message::from_json).collect::<crate::Result<_>>().map_err(|e| invalid(e.to_string()))?)
            }
            _ => return Err(invalid("\"messages\" must be a non-empty array")),
        },
    };
    if let Some(n) = opt(&m, "n", Value::as_u64, "an integer")? {
        if n != 1 {
            return Err(invalid("only n = 1 is supported"));
        }
    }
    let stop_err = || invalid(format!("\"stop\" must be a string or a list of at most {MAX_STOPS} strings"));
    let stop = match m.get("stop") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= MAX_STOPS => a.iter().map(|s| s.as_str().map(str::to_string).ok_or_else(stop_err)).collect::<Result<_, _>>()?,
        Some(_) => return Err(stop_err()),
    };
    let max_key = if kind == Kind::Chat && m.contains_key("max_completion_tokens") { "max_completion_tokens" } else { "max_tokens" };
    let params = SamplingParams {
        max_tokens: opt(&m, max_key, |x| x.as_u64().filter(|&n| n <= 1 << 20), "an integer from 0 to 1048576")?.unwrap_or(16) as usize,
        temperature: opt(&m, "temperature", Value::as_f64, "a number")?.unwrap_or(0.0),
        top_p: opt(&m, "top_p", Value::as_f64, "a number")?.unwrap_or(1.0),
        top_k: opt(&m, "top_k", |x| x.as_u64().filter(|&k| k <= u32::MAX as u64), "a non-negative integer")?.unwrap_or(0) as usize,
        seed: opt(&m, "seed", |x| x.as_u64().or_else(|| x.as_i64().map(|i| i as u64)), "an integer")?,
        stop,
    };
    params.validate().map_err(|e| invalid(e.to_string()))?;
    let stream = opt(&m, "stream", Value::as_bool, "a boolean")?.unwrap_or(false);
    Ok(GenerationRequest { model, adapter, mix, prompt, params, stream })
}
