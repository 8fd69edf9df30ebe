//! `/v1/classify` and its batcher: requests are validated alone (body, adapter, head) before
//! they join a batch, then one thread gathers queued jobs into mixed-adapter forwards. A batch
//! that fails (or panics) is re-run job by job, so an error reaches only the request that
//! caused it. Owns the job queue's protocol; adapter residency and leases are `Shared`'s.

use super::request::parse_classify;
use super::{blocking, ApiError, RequestLog, Shared};
use crate::error::{Error, Result};
use crate::model::lora::{LoadedAdapter, Routing};
use crate::model::{pad_batch, Engine, Prediction};
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

pub struct Job {
    rows: Vec<(Vec<u32>, Vec<u32>)>,
    adapter: Option<Arc<LoadedAdapter>>,
    reply: oneshot::Sender<Result<Vec<Prediction>>>,
}

/// One forward over `jobs`, rows in job order; a panic becomes an error.
fn forward(engine: &Engine, jobs: &[&Job]) -> Result<Vec<Prediction>> {
    let mut adapters: Vec<Arc<LoadedAdapter>> = vec![];
    let mut all_rows = vec![];
    let mut routing_rows = vec![];
    for j in jobs {
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
    let run = || {
        let pad = engine.tok()?.pad_id;
        let batch = pad_batch(&all_rows, pad, &engine.device)?;
        engine.classify_batch(&batch, &Routing { adapters, rows: routing_rows })
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(r) => r,
        Err(p) => {
            let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
            Err(Error::Model(format!("the forward panicked: {what}")))
        }
    }
}

/// The batcher: waits for a job, gathers whatever else is queued (up to `max_batch` rows),
/// and runs them as one mixed-adapter forward.
pub fn batcher(engine: Arc<Engine>, mut rx: mpsc::Receiver<Job>, max_batch: usize, queued: Arc<AtomicUsize>, shared: std::sync::Weak<Shared>) {
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
        // Requests whose client has gone need no forward.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let rows: usize = jobs.iter().map(|j| j.rows.len()).sum();
        let refs: Vec<&Job> = jobs.iter().collect();
        let result = forward(&engine, &refs);
        let mut forwards = 1;
        let results: Vec<Result<Vec<Prediction>>> = match result {
            Ok(mut preds) => {
                let mut out: Vec<_> = jobs.iter().rev().map(|j| Ok(preds.split_off(preds.len() - j.rows.len()))).collect();
                out.reverse();
                out
            }
            // Isolate the failure: each job alone, so only the one at fault gets the error.
            Err(e) if jobs.len() > 1 => {
                tracing::warn!(error = %e, jobs = jobs.len(), "batched forward failed; re-running each request alone");
                forwards += jobs.len();
                jobs.iter().map(|j| forward(&engine, &[j])).collect()
            }
            Err(e) => vec![Err(e)],
        };
        // the jobs let their adapters go before anyone hears, so a client's next request (or a
        // listing) finds the cache back within its budget
        let replies: Vec<_> = jobs.into_iter().map(|j| j.reply).collect();
        if let Some(s) = shared.upgrade() {
            s.metrics.forward_batches.fetch_add(forwards as u64, Ordering::Relaxed);
            s.metrics.forward_rows.fetch_add(rows as u64, Ordering::Relaxed);
            s.trim_idle();
        }
        for (reply, r) in replies.into_iter().zip(results) {
            let _ = reply.send(r);
        }
    }
}

/// Queues a job for the batcher without waiting: a full queue is a 503 (retry later), a
/// batcher that has stopped a 500 (nothing will ever answer; the cause is in the log).
pub fn enqueue<T>(jobs: &mpsc::Sender<T>, job: T) -> Result<(), ApiError> {
    jobs.try_send(job).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => ApiError(StatusCode::SERVICE_UNAVAILABLE, "the classification queue is full, retry later".into()),
        mpsc::error::TrySendError::Closed(_) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the classification batcher has stopped".into()),
    })
}

/// `POST /v1/classify`.
pub async fn classify(s: Arc<Shared>, body: axum::body::Bytes, log: &mut RequestLog) -> Result<Value, ApiError> {
    let req = parse_classify(&body)?;
    log.rows = Some(req.texts.len());
    log.adapter = req.adapter.clone();
    let s2 = s.clone();
    let (spec, mix) = (req.adapter.clone(), req.mix.clone());
    let (digest, adapter, rows) = blocking(move || {
        let (d, a) = s2.adapter_choice(spec.as_deref(), mix.as_deref())?;
        s2.engine.check_classifier(a.as_deref())?;
        let tok = s2.engine.tok()?;
        let rows = req.texts.iter().map(|t| tok.encode(t, s2.engine.max_len)).collect::<Result<Vec<_>>>()?;
        Ok((d, a, rows))
    })
    .await?;
    let (tx, rx) = oneshot::channel();
    let n = rows.len();
    s.queued.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = enqueue(&s.jobs, Job { rows, adapter, reply: tx }) {
        s.queued.fetch_sub(1, Ordering::Relaxed);
        return Err(e);
    }
    let preds = rx.await.map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the classification batcher has stopped".into()))??;
    if preds.len() != n {
        return Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the batcher answered {} rows for {n}", preds.len())));
    }
    Ok(json!({
        "adapter": req.adapter,
        "digest": digest.map(|d| d.to_string()),
        "results": preds.iter().map(|p| json!({"label": p.label, "index": p.index, "probabilities": p.probabilities, "logits": p.logits})).collect::<Vec<_>>(),
    }))
}
