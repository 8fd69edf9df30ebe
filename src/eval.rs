//! Held-out evaluation of classification adapters (`loradex eval`): several adapters, and
//! optionally the base's own head, scored side by side on one labelled CSV/JSONL file.
//! Owns turning a validated [`Request`] into a [`Report`]: reading the data through
//! `train::data` (its bounded reads), mapping each example's label to every column's head
//! (a label a head does not know is an error naming it), running the rows through the same
//! inference path as `predict` (`Engine::classify`, every column's rows mixed in each batch, on
//! the CPU), and scoring with training's own `train::Metrics`. It must not print, train or
//! change any weight; the only store writes are marking a stored adapter used (as `predict`
//! does) and, in [`record`], evaluation rows, which live outside manifests and digests.

use crate::adapters;
use crate::base::BaseDir;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::model::lora::{LoadedAdapter, Routing};
use crate::model::{Engine, Net};
use crate::store::{Ref, Store};
use crate::train::data::{self, Example};
use crate::train::Metrics;
use candle_core::Device;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name of the base-head column (what `predict --adapter base` calls the bare base).
pub const BASE_HEAD: &str = "base";

/// What to evaluate, already checked ([`Request::new`]) before any file or model is opened.
#[derive(Clone, Debug)]
pub struct Request {
    /// Store refs, digests or PEFT directories, in column order.
    pub refs: Vec<String>,
    /// Add a column for the base's own classification head.
    pub base_head: bool,
    pub data: PathBuf,
    /// Base directory (or hub id); `None`: where the store last saw the first stored ref's base.
    pub base: Option<String>,
    pub text_field: String,
    pub label_field: String,
    /// Examples per forward (each carries one row per column).
    pub batch_size: usize,
    /// Results will be recorded on the stored adapters ([`record`]).
    pub record: bool,
}

impl Request {
    /// Checks the arguments themselves: at least one column, refs that parse (or name a
    /// directory), no ref twice, a `.csv`/`.jsonl`/`.json` data file, a batch size above 0,
    /// and `record` only for store refs.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        refs: Vec<String>,
        base_head: bool,
        data: PathBuf,
        base: Option<String>,
        text_field: String,
        label_field: String,
        batch_size: usize,
        record: bool,
    ) -> Result<Request> {
        if refs.is_empty() && !base_head {
            return Err(Error::InvalidArgument("name at least one adapter REF (or --base-head)".into()));
        }
        for (i, r) in refs.iter().enumerate() {
            if refs[..i].contains(r) {
                return Err(Error::InvalidArgument(format!("{r} is given twice")));
            }
            let is_dir = Path::new(r).is_dir();
            if is_dir && record {
                return Err(Error::InvalidArgument(format!("--record stores results on store adapters, and {r} is a directory: import it first")));
            }
            if !is_dir {
                if r.starts_with("sha256:") {
                    Digest::parse(r)?;
                } else {
                    Ref::parse(r)?;
                }
            }
        }
        match data.extension().and_then(|e| e.to_str()) {
            Some("csv" | "jsonl" | "json") => {}
            _ => return Err(Error::InvalidArgument(format!("--data {}: expected a .csv or .jsonl file", data.display()))),
        }
        if batch_size == 0 {
            return Err(Error::InvalidArgument("--batch-size must be at least 1".into()));
        }
        if text_field.is_empty() || label_field.is_empty() {
            return Err(Error::InvalidArgument("--text-field and --label-field must not be empty".into()));
        }
        Ok(Request { refs, base_head, data, base, text_field, label_field, batch_size, record })
    }
}

/// One column's results: `accuracy`, `macro_f1`, … flattened beside its name.
#[derive(Clone, Debug, Serialize)]
pub struct Column {
    /// The ref as given, or [`BASE_HEAD`].
    pub r#ref: String,
    /// The stored adapter's digest (`None`: a PEFT directory, or the base head).
    pub digest: Option<Digest>,
    pub base_head: bool,
    /// Two-label heads: ROC AUC of the second label's probability (e.g. `insult`).
    pub auc: Option<f64>,
    #[serde(flatten)]
    pub metrics: Metrics,
}

/// `eval --json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub data: String,
    pub data_digest: Digest,
    pub examples: usize,
    pub base: Digest,
    pub results: Vec<Column>,
}

/// A column ready to run: its adapter (`None`: the base head) and its head's labels.
struct Scorer {
    name: String,
    digest: Option<Digest>,
    adapter: Option<Arc<LoadedAdapter>>,
    labels: Vec<String>,
}

/// The base to load: the one asked for, else a directory where the store saw the base of the
/// first stored ref (and that still has that fingerprint).
fn pick_base(store: &Store, req: &Request) -> Result<BaseDir> {
    if let Some(b) = &req.base {
        return BaseDir::open(b);
    }
    let stored = req.refs.iter().find(|r| !Path::new(r.as_str()).is_dir());
    let Some(first) = stored else { return Err(Error::InvalidArgument("no stored adapter to take the base from: pass --base".into())) };
    let fp = store.manifest(&store.resolve(first)?)?.base_fingerprint;
    for p in store.base_paths(&fp)? {
        if let Ok(b) = BaseDir::open_dir(Path::new(&p)) {
            if store.base_fingerprint(&b).is_ok_and(|f| f == fp) {
                return Ok(b);
            }
        }
    }
    Err(Error::NotFound(format!("the base {fp} of {first} at any path this store has seen: pass --base")))
}

/// Truth indices of `ex` in `labels`; a label the head does not know is an error naming it.
fn truth(ex: &[Example], labels: &[String], column: &str, data: &Path) -> Result<Vec<usize>> {
    ex.iter()
        .enumerate()
        .map(|(i, e)| {
            let l = e.label.as_deref().unwrap_or("");
            labels.iter().position(|x| x == l).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{}: example {} has label {l:?}, which {column} does not know (its labels: {})",
                    data.display(),
                    i + 1,
                    labels.join(", ")
                ))
            })
        })
        .collect()
}

/// Cross-entropy of `logits` at `t` (log-softmax, shifted by the maximum).
fn nll(logits: &[f32], t: usize) -> f64 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
    lse - logits.get(t).copied().unwrap_or(f32::NEG_INFINITY) as f64
}

/// Runs the evaluation `req` describes (on the CPU) with adapters from `store`.
pub fn evaluate(store: &Store, req: &Request) -> Result<Report> {
    evaluate_with(store, req, &mut |_, _| {})
}

/// `evaluate`, calling `progress(done, total)` with the examples scored so far after each
/// batch (and once with 0 before the first).
pub fn evaluate_with(store: &Store, req: &Request, progress: &mut dyn FnMut(usize, usize)) -> Result<Report> {
    let examples = data::read(&req.data, &req.text_field, &req.label_field, true)?;
    let data_digest = crate::digest::hash_file(&req.data)?.0;
    let base = pick_base(store, req)?;
    let fp = store.base_fingerprint(&base)?;
    let engine = Engine::load(base, Device::Cpu)?;
    let Net::Encoder(bert) = &engine.net else {
        return Err(Error::InvalidArgument(format!("eval scores classifiers: the base is a {} model, not an encoder", engine.base.arch.name())));
    };
    let mut cols = Vec::with_capacity(req.refs.len() + 1);
    for spec in &req.refs {
        let f = adapters::fetch(spec, Some(store), &engine.base, Some(&fp))?;
        let task = crate::peft::LoraConfig::parse(&f.config_bytes)?.task_type;
        if task.as_deref() != Some("SEQ_CLS") {
            return Err(Error::InvalidArgument(format!("{spec} is a {} adapter: eval scores SEQ_CLS (classification) adapters", task.as_deref().unwrap_or("task-less"))));
        }
        if let Some(d) = f.digest {
            store.touch(&d)?;
        }
        let a = engine.adapter(&f.id, &f.config_bytes, &f.weights_bytes, f.labels)?;
        engine.check_classifier(Some(&a))?;
        cols.push(Scorer { name: spec.clone(), digest: f.digest, labels: engine.labels_for(Some(&a)), adapter: Some(a) });
    }
    if req.base_head {
        let head = bert.classifier.as_ref().ok_or_else(|| {
            Error::InvalidArgument("--base-head: this base has no classification head of its own (no classifier weights)".into())
        })?;
        let n = head.weight.dims()[0];
        let labels = if engine.labels.len() == n { engine.labels.clone() } else { (0..n).map(|i| format!("LABEL_{i}")).collect() };
        cols.push(Scorer { name: BASE_HEAD.into(), digest: None, adapter: None, labels });
    }
    // every label checked against every head before the first forward
    let truths: Vec<Vec<usize>> = cols.iter().map(|c| truth(&examples, &c.labels, &c.name, &req.data)).collect::<Result<_>>()?;
    let adapters: Vec<Arc<LoadedAdapter>> = cols.iter().filter_map(|c| c.adapter.clone()).collect();
    let mut slots = Vec::with_capacity(cols.len());
    let mut next = 0;
    for c in &cols {
        slots.push(c.adapter.as_ref().map(|_| {
            next += 1;
            next - 1
        }));
    }
    let mut preds = vec![Vec::with_capacity(examples.len()); cols.len()];
    let mut losses = vec![0f64; cols.len()];
    let mut second = vec![Vec::with_capacity(examples.len()); cols.len()];
    progress(0, examples.len());
    for (b, chunk) in examples.chunks(req.batch_size).enumerate() {
        let start = b * req.batch_size;
        let mut texts = Vec::with_capacity(chunk.len() * cols.len());
        let mut rows = Vec::with_capacity(texts.capacity());
        for slot in &slots {
            texts.extend(chunk.iter().map(|e| e.text.clone()));
            rows.extend(std::iter::repeat_n(*slot, chunk.len()));
        }
        let out = engine.classify(&texts, &Routing { adapters: adapters.clone(), rows })?;
        for (ci, col_out) in out.chunks(chunk.len()).enumerate() {
            for (j, p) in col_out.iter().enumerate() {
                preds[ci].push(p.index);
                second[ci].push(p.probabilities.get(1).copied().unwrap_or(0.0));
                losses[ci] += nll(&p.logits, truths[ci][start + j]);
            }
        }
        progress(start + chunk.len(), examples.len());
    }
    let n = examples.len();
    let results = cols
        .into_iter()
        .enumerate()
        .map(|(i, c)| Column {
            auc: (c.labels.len() == 2).then(|| crate::train::metrics::roc_auc(&truths[i].iter().map(|&t| t == 1).collect::<Vec<_>>(), &second[i])).flatten(),
            metrics: Metrics::compute(&truths[i], &preds[i], &c.labels, losses[i] / n.max(1) as f64),
            base_head: c.adapter.is_none(),
            r#ref: c.name,
            digest: c.digest,
        })
        .collect();
    Ok(Report { data: req.data.display().to_string(), data_digest, examples: n, base: fp, results })
}

/// Records each stored adapter's results on it (replacing an earlier record on the same
/// data). Returns how many were recorded; the base head and directories are not stored.
pub fn record(store: &mut Store, report: &Report) -> Result<usize> {
    let data = Path::new(&report.data).canonicalize().map(|p| p.display().to_string()).unwrap_or_else(|_| report.data.clone());
    let mut n = 0;
    for c in &report.results {
        if let Some(d) = &c.digest {
            let m = serde_json::to_value(&c.metrics).map_err(|e| Error::json("metrics", e))?;
            store.record_evaluation(d, &data, &report.data_digest, &m)?;
            n += 1;
        }
    }
    Ok(n)
}
