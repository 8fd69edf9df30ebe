//! Continuous batching for generation. One scheduler thread owns the decoder: each step runs one
//! forward over every running sequence (a prompt chunk for those being prefilled, one token for
//! the rest), each row on its own adapter and cache. Requests wait in a bounded queue and are
//! admitted between steps when a running slot and their whole KV reservation are free; a
//! sequence leaves the batch the step it finishes or its client goes away, and its cache goes
//! back to the budget. Owns admission, stepping and per-sequence events; HTTP parsing and
//! response shapes live in `openai`.

use super::metrics::Metrics;
use crate::error::{Error, Result};
use crate::model::decoder::{Decoder, Row};
use crate::model::generation::{Event, Finish, SamplingParams, Sequence};
use crate::model::kv_cache::KvBudget;
use crate::model::lora::LoadedAdapter;
use crate::model::Tok;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// What the scheduler sends a request, in order: tokens, then one `Done` or `Error`.
#[derive(Debug)]
pub enum GenEvent {
    Token { id: u32, text: String },
    Done { id: Option<u32>, text: String, finish: Finish, prompt_tokens: usize, completion_tokens: usize },
    Error(String),
}

pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub adapter: Option<Arc<LoadedAdapter>>,
    pub events: UnboundedSender<GenEvent>,
}

/// Why a request was not queued.
#[derive(Debug)]
pub enum Refused {
    /// It can never run here (context or KV budget); a 400.
    TooLarge(String),
    /// The wait queue is full; a 503.
    QueueFull,
    /// The scheduler is gone; a 503 with the reason.
    Stopped,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_running: usize,
    pub max_waiting: usize,
    pub kv_bytes: usize,
    /// Prompt tokens fed per step across all prefilling sequences (decode rows always run).
    pub prefill_tokens: usize,
}

struct Waiting {
    req: GenRequest,
    bytes: usize,
    positions: usize,
    since: Instant,
}

struct Queue {
    q: VecDeque<Waiting>,
    closed: bool,
}

/// What the scheduler calls after sequences leave and drop their adapters (the server trims
/// its adapter cache there); set once, after the server that owns the cache exists.
type OnRelease = Arc<std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>>;

/// The handle the HTTP side holds.
pub struct Llm {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    on_release: OnRelease,
    pub budget: KvBudget,
    pub running: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
    limits: Limits,
    max_positions: usize,
    bytes_per_token: usize,
}

impl Llm {
    /// Starts the scheduler thread.
    pub fn start(dec: Arc<Decoder>, tok: Arc<Tok>, limits: Limits, metrics: Arc<Metrics>) -> Result<Llm> {
        let queue = Arc::new((Mutex::new(Queue { q: VecDeque::new(), closed: false }), Condvar::new()));
        let budget = KvBudget::new(limits.kv_bytes);
        let running = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(AtomicBool::new(true));
        let on_release = OnRelease::default();
        let llm = Llm {
            queue: queue.clone(),
            on_release: on_release.clone(),
            budget: budget.clone(),
            running: running.clone(),
            alive: alive.clone(),
            limits,
            max_positions: dec.max_positions(),
            bytes_per_token: dec.kv_bytes_per_token(),
        };
        let s = Scheduler { dec, tok, queue, budget, running, limits, metrics, on_release, seqs: vec![] };
        std::thread::Builder::new()
            .name("loradex-scheduler".into())
            .spawn(move || {
                let _alive = AliveGuard(alive);
                s.run()
            })
            .map_err(|e| Error::io("scheduler thread", e))?;
        Ok(llm)
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Sets what runs each time finished or cancelled sequences have let their adapters go
    /// (at most once; a second call is ignored).
    pub fn on_release(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_release.set(Box::new(f));
    }

    pub fn waiting(&self) -> usize {
        self.queue.0.lock().map(|q| q.q.len()).unwrap_or(0)
    }

    /// Checks that a request can ever run, then queues it.
    pub fn submit(&self, req: GenRequest) -> std::result::Result<(), Refused> {
        if !self.alive.load(Ordering::Acquire) {
            return Err(Refused::Stopped);
        }
        let (p, m) = (req.prompt.len(), req.params.max_tokens);
        if p + m > self.max_positions {
            return Err(Refused::TooLarge(format!(
                "the prompt ({p} tokens) plus max_tokens ({m}) exceeds the context length ({})",
                self.max_positions
            )));
        }
        let positions = Sequence::positions_needed(p, m, self.max_positions);
        let bytes = positions * self.bytes_per_token;
        if bytes > self.budget.total() {
            return Err(Refused::TooLarge(format!(
                "this request needs {bytes} bytes of KV cache ({positions} positions); the budget is {} (--kv-cache-bytes)",
                self.budget.total()
            )));
        }
        let (lock, cv) = &*self.queue;
        let mut q = lock.lock().map_err(|_| Refused::Stopped)?;
        if q.closed {
            return Err(Refused::Stopped);
        }
        if q.q.len() >= self.limits.max_waiting {
            return Err(Refused::QueueFull);
        }
        q.q.push_back(Waiting { req, bytes, positions, since: Instant::now() });
        cv.notify_one();
        Ok(())
    }
}

impl Drop for Llm {
    fn drop(&mut self) {
        if let Ok(mut q) = self.queue.0.lock() {
            q.closed = true;
        }
        self.queue.1.notify_all();
    }
}

struct AliveGuard(Arc<AtomicBool>);
impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The running sequences a step feeds, each with its input, in order: `inputs` holds
/// `(index into seqs, tokens)` with increasing indices.
fn fed_seqs<'a, 'b>(seqs: &'a mut [Running], inputs: &'b [(usize, Vec<u32>)]) -> impl Iterator<Item = (&'a mut Running, &'b [u32])> {
    let mut it = inputs.iter().peekable();
    seqs.iter_mut().enumerate().filter_map(move |(i, r)| it.next_if(|(j, _)| *j == i).map(|(_, toks)| (r, toks.as_slice())))
}

/// The fewest sequences whose logits a step hands to the pool in parallel.
const PAR_MIN_ACCEPT: usize = 4;

struct Running {
    seq: Sequence,
    adapter: Option<Arc<LoadedAdapter>>,
    events: UnboundedSender<GenEvent>,
    since: Instant,
    last: Option<Instant>,
}

struct Scheduler {
    dec: Arc<Decoder>,
    tok: Arc<Tok>,
    queue: Arc<(Mutex<Queue>, Condvar)>,
    budget: KvBudget,
    running: Arc<AtomicUsize>,
    limits: Limits,
    metrics: Arc<Metrics>,
    on_release: OnRelease,
    seqs: Vec<Running>,
}

impl Scheduler {
    fn run(mut self) {
        loop {
            if !self.admit() {
                return;
            }
            if self.seqs.is_empty() {
                continue;
            }
            self.step();
            self.running.store(self.seqs.len(), Ordering::Release);
        }
    }

    /// Moves waiting requests into the batch while a slot and their KV reservation are free
    /// (first come, first served). Blocks while there is nothing to do. False once closed.
    fn admit(&mut self) -> bool {
        let (lock, cv) = &*self.queue;
        let Ok(mut q) = lock.lock() else { return false };
        while self.seqs.is_empty() && q.q.is_empty() {
            if q.closed {
                return false;
            }
            q = match cv.wait_timeout(q, Duration::from_millis(200)) {
                Ok((g, _)) => g,
                Err(_) => return false,
            };
        }
        // requests whose client left while they waited
        let before = q.q.len();
        q.q.retain(|w| !w.req.events.is_closed());
        self.metrics.llm_cancelled.fetch_add((before - q.q.len()) as u64, Ordering::Relaxed);
        while self.seqs.len() < self.limits.max_running.max(1) {
            let Some(front) = q.q.front() else { break };
            let Some(res) = self.budget.try_reserve(front.bytes) else { break };
            let w = q.q.pop_front().expect("front exists");
            let cache = self.dec.cache(w.positions, Some(res));
            match Sequence::new(w.req.prompt, w.req.params, cache, self.dec.eos.clone(), self.dec.max_positions()) {
                Ok(seq) => self.seqs.push(Running { seq, adapter: w.req.adapter, events: w.req.events, since: w.since, last: None }),
                Err(e) => {
                    let _ = w.req.events.send(GenEvent::Error(e.to_string()));
                }
            }
        }
        self.metrics.llm_waiting.store(q.q.len(), Ordering::Relaxed);
        true
    }

    fn step(&mut self) {
        // cancelled clients leave before the forward
        let before = self.seqs.len();
        self.seqs.retain(|r| !r.events.is_closed());
        self.metrics.llm_cancelled.fetch_add((before - self.seqs.len()) as u64, Ordering::Relaxed);
        if self.seqs.len() < before {
            self.released();
        }
        if self.seqs.is_empty() {
            return;
        }
        let mut budget = self.limits.prefill_tokens.max(1);
        let mut inputs: Vec<(usize, Vec<u32>)> = vec![];
        for (i, r) in self.seqs.iter().enumerate() {
            if r.seq.prefilling() {
                if budget == 0 {
                    continue;
                }
                let t = r.seq.next_input(budget).to_vec();
                budget -= t.len();
                inputs.push((i, t));
            } else {
                inputs.push((i, r.seq.next_input(1).to_vec()));
            }
        }
        let result = {
            let mut rows: Vec<Row> =
                fed_seqs(&mut self.seqs, &inputs).map(|(r, toks)| Row { tokens: toks, cache: &mut r.seq.cache, adapter: r.adapter.as_deref() }).collect();
            self.dec.step(&mut rows)
        };
        let fed: usize = inputs.iter().map(|(_, t)| t.len()).sum();
        self.metrics.llm_steps.fetch_add(1, Ordering::Relaxed);
        self.metrics.llm_step_rows.fetch_add(inputs.len() as u64, Ordering::Relaxed);
        self.metrics.llm_step_tokens.fetch_add(fed as u64, Ordering::Relaxed);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("generation failed: {e}");
                let failed: Vec<usize> = inputs.iter().map(|(i, _)| *i).collect();
                for &i in failed.iter().rev() {
                    let r = self.seqs.remove(i);
                    drop(r.adapter);
                    let _ = r.events.send(GenEvent::Error(msg.clone()));
                }
                self.released();
                return;
            }
        };
        // each sequence takes its logits (sampling, detokenizing, stop strings) on the pool
        // when there are several: one thread doing all of them left the pool idle between
        // steps. Each sequence's result is its own, whatever runs beside it.
        let accepted: Vec<Result<Event>> = {
            let tok = &*self.tok;
            let work: Vec<(&mut Sequence, usize, &Vec<f32>)> = fed_seqs(&mut self.seqs, &inputs).zip(&logits).map(|((r, toks), l)| (&mut r.seq, toks.len(), l)).collect();
            let one = |(seq, fed, l): (&mut Sequence, usize, &Vec<f32>)| seq.accept(tok, fed, l);
            if work.len() >= PAR_MIN_ACCEPT {
                use rayon::prelude::*;
                work.into_par_iter().map(one).collect()
            } else {
                work.into_iter().map(one).collect()
            }
        };
        let now = Instant::now();
        let mut done = vec![];
        let mut outbox: Vec<(usize, GenEvent)> = vec![];
        for ((i, _), ev) in inputs.iter().zip(accepted) {
            let r = &mut self.seqs[*i];
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    outbox.push((*i, GenEvent::Error(e.to_string())));
                    done.push(*i);
                    continue;
                }
            };
            let out = match ev {
                Event::Pending => continue,
                Event::Token { id, text } => GenEvent::Token { id, text },
                Event::Done { id, text, finish } => {
                    done.push(*i);
                    GenEvent::Done { id, text, finish, prompt_tokens: r.seq.prompt.len(), completion_tokens: r.seq.generated.len() }
                }
            };
            if !matches!(out, GenEvent::Done { id: None, .. }) {
                self.metrics.llm_tokens.fetch_add(1, Ordering::Relaxed);
                match r.last {
                    None => self.metrics.ttft.observe(now.duration_since(r.since).as_secs_f64()),
                    Some(t) => self.metrics.itl.observe(now.duration_since(t).as_secs_f64()),
                }
                r.last = Some(now);
            }
            outbox.push((*i, out));
        }
        // finished sequences leave (and return their KV reservation) before their client hears
        done.sort_unstable();
        done.dedup();
        let senders: Vec<UnboundedSender<GenEvent>> = self.seqs.iter().map(|r| r.events.clone()).collect();
        for &i in done.iter().rev() {
            self.seqs.remove(i);
        }
        if !done.is_empty() {
            self.released();
        }
        self.running.store(self.seqs.len(), Ordering::Release);
        let mut gone = vec![];
        for (i, ev) in outbox {
            if senders[i].send(ev).is_err() && !done.contains(&i) {
                gone.push(i);
            }
        }
        // clients that went away while we stepped: free their slots now
        if !gone.is_empty() {
            let closed: Vec<UnboundedSender<GenEvent>> = gone.iter().map(|&i| senders[i].clone()).collect();
            self.seqs.retain(|r| !closed.iter().any(|c| c.same_channel(&r.events)));
            self.metrics.llm_cancelled.fetch_add(closed.len() as u64, Ordering::Relaxed);
            self.released();
        }
    }

    /// Sequences have left the batch and dropped their adapters.
    fn released(&self) {
        if let Some(f) = self.on_release.get() {
            f();
        }
    }
}
