//! The OpenAI-compatible generation endpoints: `/v1/completions`, `/v1/chat/completions`
//! (plain JSON or Server-Sent Events in OpenAI's chunk format, ending with `data: [DONE]`) and
//! `/v1/models`. Turns requests parsed by `request` (adapter from `model` `BASE:REF`, the
//! `adapter` field, the `X-Loradex-Adapter` header or the `adapter` query parameter) into
//! `GenRequest`s, and scheduler events into response bodies. Scheduling is `llm`'s.

use super::llm::{GenEvent, GenRequest, Refused};
pub use super::request::Kind;
use super::request::{parse_generation, PromptIn};
use super::{bad, blocking, ApiError, Shared};
use crate::model::Prompt;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc;

pub const ADAPTER_HEADER: &str = "x-loradex-adapter";

fn refused(r: Refused) -> ApiError {
    match r {
        Refused::TooLarge(m) => bad(m),
        Refused::QueueFull => ApiError(StatusCode::SERVICE_UNAVAILABLE, "the generation queue is full, retry later".into()),
        Refused::Stopped => ApiError(StatusCode::SERVICE_UNAVAILABLE, "the generation scheduler has stopped".into()),
    }
}

/// Handles `/v1/completions` and `/v1/chat/completions`.
pub async fn generate(s: Arc<Shared>, kind: Kind, headers: HeaderMap, query: Option<String>, body: Bytes, log: &mut super::RequestLog) -> Result<Response, ApiError> {
    let header = match headers.get(ADAPTER_HEADER) {
        Some(h) => Some(h.to_str().map_err(|_| bad("X-Loradex-Adapter must be ASCII"))?),
        None => None,
    };
    let p = parse_generation(kind, &body, header, query.as_deref())?;
    log.adapter = p.adapter.clone();
    log.rows = Some(1);
    let base = p.base();
    if base != s.base_id && base != s.base_fp.to_string() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("model {base:?} is not served here (serving {:?})", s.base_id)));
    }
    let Some(llm) = s.llm.clone() else {
        return Err(bad("this base is not a causal LM (use /v1/classify)"));
    };
    let s2 = s.clone();
    let (adapter_spec, mix, prompt_in) = (p.adapter.clone(), p.mix.clone(), p.prompt);
    let (digest, adapter, prompt) = blocking(move || {
        let (d, a) = s2.adapter_choice(adapter_spec.as_deref(), mix.as_deref())?;
        let ids = match prompt_in {
            PromptIn::Ids(ids) => ids,
            PromptIn::Text(t) => s2.engine.prompt_ids(&Prompt::Text(t))?,
            PromptIn::Chat(m) => s2.engine.prompt_ids(&Prompt::Chat(m))?,
        };
        Ok((d, a, ids))
    })
    .await?;
    let vocab = s.engine.decoder.as_ref().map_or(0, |d| d.vocab);
    if let Some(t) = prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(bad(format!("prompt token id {t} is outside the vocabulary ({vocab})")));
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    llm.submit(GenRequest { prompt, params: p.params, adapter, events: tx }).map_err(refused)?;
    let id = format!("{}-{:x}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, crate::util::unique_suffix());
    let meta = Meta { id, kind, model: p.model, created: crate::util::now_secs(), digest: digest.map(|d| d.to_string()) };
    if p.stream {
        return Ok(stream(meta, rx).into_response());
    }
    let (mut text, mut ids) = (String::new(), vec![]);
    loop {
        match rx.recv().await {
            Some(GenEvent::Token { id, text: t }) => {
                ids.push(id);
                text.push_str(&t);
            }
            Some(GenEvent::Done { id, text: t, finish, prompt_tokens, completion_tokens }) => {
                ids.extend(id);
                text.push_str(&t);
                let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
                let choice = match kind {
                    Kind::Completion => json!({"index": 0, "text": text, "finish_reason": finish.as_str(), "logprobs": null, "token_ids": ids}),
                    Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish.as_str(), "logprobs": null, "token_ids": ids}),
                };
                return Ok(axum::Json(meta.body(vec![choice], Some(usage))).into_response());
            }
            Some(GenEvent::Error(m)) => return Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, m)),
            None => return Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the generation scheduler stopped".into())),
        }
    }
}

struct Meta {
    id: String,
    kind: Kind,
    model: String,
    created: i64,
    digest: Option<String>,
}

impl Meta {
    fn body(&self, choices: Vec<Value>, usage: Option<Value>) -> Value {
        let object = match self.kind {
            Kind::Completion => "text_completion",
            Kind::Chat if usage.is_some() && choices.first().is_some_and(|c| c.get("message").is_some()) => "chat.completion",
            Kind::Chat => "chat.completion.chunk",
        };
        let mut v = json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices, "adapter_digest": self.digest});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }
    fn chunk(&self, text: &str, finish: Option<&str>, usage: Option<Value>) -> Sse {
        let choice = match self.kind {
            Kind::Completion => json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": null}),
            Kind::Chat => json!({"index": 0, "delta": {"content": text}, "finish_reason": finish, "logprobs": null}),
        };
        Sse::default().data(self.body(vec![choice], usage).to_string())
    }
}

enum Phase {
    Start,
    Tokens,
    Finished,
    Closed,
}

/// The response as Server-Sent Events: a chunk per visible piece of text, the last with the
/// finish reason and usage, then `[DONE]`. Dropping the stream (the client left) drops the
/// receiver, which the scheduler sees within one step.
fn stream(meta: Meta, rx: mpsc::UnboundedReceiver<GenEvent>) -> impl IntoResponse {
    let st = futures_util::stream::unfold((rx, meta, Phase::Start), |(mut rx, meta, phase)| async move {
        match phase {
            Phase::Closed => None,
            Phase::Finished => Some((Ok::<_, Infallible>(Sse::default().data("[DONE]")), (rx, meta, Phase::Closed))),
            Phase::Start if meta.kind == Kind::Chat => {
                let choice = json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null, "logprobs": null});
                let ev = Sse::default().data(meta.body(vec![choice], None).to_string());
                Some((Ok(ev), (rx, meta, Phase::Tokens)))
            }
            Phase::Start | Phase::Tokens => loop {
                match rx.recv().await {
                    Some(GenEvent::Token { text, .. }) if text.is_empty() => continue,
                    Some(GenEvent::Token { text, .. }) => break Some((Ok(meta.chunk(&text, None, None)), (rx, meta, Phase::Tokens))),
                    Some(GenEvent::Done { text, finish, prompt_tokens, completion_tokens, .. }) => {
                        let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
                        break Some((Ok(meta.chunk(&text, Some(finish.as_str()), Some(usage))), (rx, meta, Phase::Finished)));
                    }
                    Some(GenEvent::Error(m)) => {
                        let ev = Sse::default().data(json!({"error": {"message": m, "type": "internal"}}).to_string());
                        break Some((Ok(ev), (rx, meta, Phase::Finished)));
                    }
                    None => break None,
                }
            },
        }
    });
    axum::response::sse::Sse::new(st).keep_alive(KeepAlive::default())
}

/// `GET /v1/models`: the base, and `BASE:REF` for every stored adapter made for it.
pub async fn models(s: Arc<Shared>) -> Result<Value, ApiError> {
    blocking(move || {
        let rows = s.store.lock().expect("store lock").list(Some(&s.base_fp))?;
        let now = crate::util::now_secs();
        let mut data = vec![json!({"id": s.base_id, "object": "model", "created": now, "owned_by": "loradex", "base_fingerprint": s.base_fp.to_string()})];
        for r in rows {
            data.push(json!({"id": format!("{}:{}", s.base_id, r.r#ref), "object": "model", "created": r.created_at, "owned_by": "loradex", "parent": s.base_id, "digest": r.digest}));
        }
        Ok(json!({"object": "list", "data": data}))
    })
    .await
}
