//! Training LoRA adapters on a frozen, shared base: sequence classification (BERT) and causal-LM
//! supervised fine-tuning (Llama). Base weights stay frozen (only LoRA `Var`s and a saved head
//! are optimized, with AdamW); forwards use the differentiable norm/softmax forms. The result
//! is a PEFT-format adapter put straight into the store with its metrics and provenance.
//! BERT steps on the CPU take the hand-differentiated path in `model::bert_cpu`; the rest use
//! autograd.
//! Never prints: progress goes to a callback.

pub mod data;
pub mod metrics;
pub mod recipe;

use crate::base::BaseDir;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::model::bert::{apply_head, Head};
use crate::model::bert_cpu;
use crate::model::lora::{Ctx, LoadedAdapter, LoraPair, Routing};
use crate::model::{pad_batch, Batch, Engine, Net};
use crate::peft::{self, LoraConfig, NewConfig};
use crate::store::{BlobSource, NewAdapter, Ref, Store};
use crate::util::Rng;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
pub use data::Example;
pub use metrics::Metrics;
pub use recipe::{Metric, Recipe, Task};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// What the progress callback sees after every step (and after each evaluation).
#[derive(Clone, Debug, Serialize)]
pub struct Progress {
    pub epoch: usize,
    pub epochs: usize,
    pub step: usize,
    pub total_steps: usize,
    pub loss: f64,
    pub samples_per_sec: f64,
    pub eval: Option<Metrics>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    pub validation: Option<serde_json::Value>,
}

/// Final report (`train --json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub r#ref: String,
    pub digest: Digest,
    pub task: Task,
    pub labels: Vec<String>,
    pub train_examples: usize,
    pub validation_examples: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub best_metrics: Option<serde_json::Value>,
    pub history: Vec<EpochLog>,
    pub samples_per_sec: f64,
    pub duration_s: f64,
}

/// LoRA settings for a trainer (from a recipe, or set directly by benchmarks and tests).
#[derive(Clone, Debug)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub use_rslora: bool,
    /// DoRA: a trained magnitude per output row beside each LoRA pair.
    pub use_dora: bool,
    /// PEFT's `layers_to_transform`: LoRA only in these layers (all when `None`).
    pub layers_to_transform: Option<Vec<usize>>,
    pub target_modules: Vec<String>,
    pub modules_to_save: Vec<String>,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
}

/// Holds the trainable tensors and the optimizer over a frozen engine.
pub struct Trainer {
    pub engine: Engine,
    pub task: Task,
    spec: LoraSpec,
    /// (PEFT key, variable) in key order.
    vars: Vec<(String, Var)>,
    train_adapter: Arc<LoadedAdapter>,
    eval_adapter: Arc<LoadedAdapter>,
    opt: AdamW,
    step: usize,
    pub labels: Vec<String>,
    /// Seconds of the last step spent in forward, backward and the optimizer (for benchmarks).
    pub last_timing: (f64, f64, f64),
    /// How steps differentiate (benchmarks and tests compare the two).
    pub grad_path: GradPath,
}

/// Gradients by PEFT key, `None` where the tensor got none.
pub type KeyedGrads = Vec<(String, Option<Vec<f32>>)>;

/// How a training step computes its gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradPath {
    /// The hand-differentiated CPU step (`bert_cpu`) where it applies, else autograd.
    Auto,
    /// candle's autograd over the differentiable forward, always.
    Autograd,
}

fn matches_target(module: &str, targets: &[String]) -> bool {
    targets.iter().any(|t| module == t || module.ends_with(&format!(".{t}")))
}

impl Trainer {
    /// `labels` is the classifier's label list (seq-cls) or empty (causal LM).
    pub fn new(mut engine: Engine, task: Task, spec: LoraSpec, labels: Vec<String>) -> Result<Trainer> {
        match (&engine.net, task) {
            (Net::Encoder(_), Task::SeqCls) | (Net::CausalLm(_), Task::CausalLm) => {}
            (Net::Gguf, _) => return Err(Error::Recipe("training needs a safetensors base (a GGUF base is quantized); dequantize it to a directory first".into())),
            _ => return Err(Error::Recipe(format!("task {task:?} does not fit a {} base", engine.base.arch.name()))),
        }
        let dev = engine.device.clone();
        let mut rng = Rng::new(spec.seed);
        let mut modules: Vec<(String, usize, usize)> = engine
            .linears_mut()
            .filter(|l| matches_target(&l.name, &spec.target_modules))
            .filter(|l| spec.layers_to_transform.as_ref().is_none_or(|ls| peft::layer_index(&l.name, &[]).is_some_and(|i| ls.contains(&i))))
            .map(|l| (l.name.clone(), l.weight.dims()[0], l.weight.dims()[1]))
            .collect();
        // DoRA's initial magnitude: ‖W‖ per output row (B = 0, so ‖W + s B A‖ = ‖W‖), as PEFT's
        let mut norms = std::collections::HashMap::new();
        if spec.use_dora {
            for l in engine.linears_mut().filter(|l| matches_target(&l.name, &spec.target_modules)) {
                norms.insert(l.name.clone(), l.weight.sqr()?.sum(1)?.sqrt()?.to_device(&dev)?);
            }
        }
        modules.sort();
        for t in &spec.target_modules {
            if !modules.iter().any(|(m, _, _)| matches_target(m, std::slice::from_ref(t))) {
                return Err(Error::Recipe(format!("target module {t:?} matches no linear layer of the base")));
            }
        }
        let mut vars = Vec::new();
        let mut pairs = std::collections::HashMap::new();
        let scale = if spec.use_rslora { spec.alpha / (spec.r as f64).sqrt() } else { spec.alpha / spec.r as f64 };
        for (m, out_f, in_f) in &modules {
            // PEFT's init: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0
            let bound = 1.0 / (*in_f as f32).sqrt();
            let a: Vec<f32> = (0..spec.r * in_f).map(|_| (rng.next_f32() * 2.0 - 1.0) * bound).collect();
            let a = Var::from_vec(a, (spec.r, *in_f), &dev)?;
            let b = Var::zeros((*out_f, spec.r), DType::F32, &dev)?;
            let magnitude = match norms.remove(m) {
                Some(n) => {
                    let v = Var::from_tensor(&n)?;
                    let t = v.as_tensor().clone();
                    vars.push((format!("{}{m}.lora_magnitude_vector", peft::KEY_PREFIX), v));
                    Some(t)
                }
                None => None,
            };
            pairs.insert(m.clone(), LoraPair { a: a.as_tensor().clone(), b: b.as_tensor().clone(), scale, magnitude, host: None });
            vars.push((format!("{}{m}.lora_A.weight", peft::KEY_PREFIX), a));
            vars.push((format!("{}{m}.lora_B.weight", peft::KEY_PREFIX), b));
        }
        let mut saved = std::collections::HashMap::new();
        if let Net::Encoder(bert) = &engine.net {
            let n = labels.len();
            let hidden = bert.cfg.hidden_size;
            let base_head = bert.classifier.as_ref();
            // PEFT's rule: a head module is trained when modules_to_save names it or a module it
            // lies in, whole or by a dotted suffix
            let trained = |m: &str| {
                spec.modules_to_save.iter().any(|t| {
                    let inside = |x: &str| x == t || x.ends_with(&format!(".{t}"));
                    let parts: Vec<&str> = m.split('.').collect();
                    (1..=parts.len()).any(|k| inside(&parts[..k].join(".")))
                })
            };
            for (m, is_pre) in bert.head_modules() {
                let rows = if is_pre { hidden } else { n };
                let from_base = base_head.and_then(|h| match is_pre {
                    true => h.pre.as_ref().map(|(w, b, _)| (w.clone(), b.clone())),
                    false => Some((h.weight.clone(), h.bias.clone())),
                });
                let from_base = from_base.filter(|(w, _)| w.dims()[0] == rows);
                if !trained(m) {
                    if from_base.is_none() {
                        return Err(Error::Recipe(format!(
                            "the base has no {m} with {rows} outputs: add \"{}\" to lora.modules_to_save",
                            m.split('.').next().unwrap_or(m)
                        )));
                    }
                    continue;
                }
                let (w, b) = match from_base {
                    Some((w, b)) => (w.to_device(&dev)?.copy()?, b.to_device(&dev)?.copy()?),
                    None => {
                        // transformers' init of a head the checkpoint lacks: N(0, 0.02), zero bias
                        let w: Vec<f32> = (0..rows * hidden).map(|_| rng.normal(0.02)).collect();
                        (Tensor::from_vec(w, (rows, hidden), &dev)?, Tensor::zeros(rows, DType::F32, &dev)?)
                    }
                };
                let (w, b) = (Var::from_tensor(&w)?, Var::from_tensor(&b)?);
                saved.insert(format!("{m}.weight"), w.as_tensor().clone());
                saved.insert(format!("{m}.bias"), b.as_tensor().clone());
                vars.push((format!("{}{m}.bias", peft::KEY_PREFIX), b));
                vars.push((format!("{}{m}.weight", peft::KEY_PREFIX), w));
            }
        }
        if vars.is_empty() {
            return Err(Error::Recipe("nothing to train: target_modules is empty and modules_to_save names no head".into()));
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let bytes = vars.iter().map(|(_, v)| v.elem_count() * 4).sum();
        let train_adapter = Arc::new(LoadedAdapter { id: "training".into(), modules: pairs, saved, labels: labels.clone(), bytes, flat: Default::default(), slots: Default::default() });
        let eval_adapter = Arc::new(detached(&train_adapter));
        let params = ParamsAdamW { lr: spec.learning_rate, weight_decay: spec.weight_decay, ..Default::default() };
        let opt = AdamW::new(vars.iter().map(|(_, v)| v.clone()).collect(), params)?;
        Ok(Trainer { engine, task, spec, vars, train_adapter, eval_adapter, opt, step: 0, labels, last_timing: (0.0, 0.0, 0.0), grad_path: GradPath::Auto })
    }

    pub fn var_names(&self) -> Vec<String> {
        self.vars.iter().map(|(k, _)| k.clone()).collect()
    }

    fn ctx<'a>(&self, routing: &'a Routing, train: bool) -> Ctx<'a> {
        Ctx::new(routing, train, if train { self.spec.dropout } else { 0.0 }, self.step_rng())
    }

    /// The dropout stream of the current step (the same for both gradient paths).
    fn step_rng(&self) -> Rng {
        Rng::new(self.spec.seed ^ (self.step as u64).wrapping_mul(0x9E37))
    }

    /// Mean loss of a batch, with the autograd graph (train) or without (eval).
    fn loss(&self, batch: &Batch, targets: &Tensor, weights: Option<&Tensor>, train: bool) -> Result<(Tensor, Tensor)> {
        let adapter = if train { &self.train_adapter } else { &self.eval_adapter };
        let n = batch.lens.len();
        let routing = Routing::single(adapter.clone(), n);
        let ctx = self.ctx(&routing, train);
        let logits = match &self.engine.net {
            // evaluation: the inference forward (bert_cpu's on the CPU)
            Net::Encoder(b) if !train => {
                let rows = crate::model::encoder::classify(b, &batch.ids, &batch.type_ids, &batch.mask, &ctx)?;
                let n_labels = rows.first().map_or(0, |r| r.len());
                Tensor::from_vec(rows.concat(), (rows.len(), n_labels), &self.engine.device)?
            }
            Net::Encoder(b) => {
                let pooled = b.pooled(&batch.ids, &batch.type_ids, &batch.mask, &ctx)?;
                let head: Head = b.head_for(Some(adapter))?;
                apply_head(&pooled, &head)?
            }
            Net::CausalLm(l) => {
                let h = l.hidden(&batch.ids, Some(&batch.mask), 0, None, &ctx)?;
                let (b, s, d) = h.dims3()?;
                h.reshape((b * s, d))?.matmul(&l.lm_head().t()?)?
            }
            Net::Gguf => return Err(Error::Recipe("training needs a safetensors base (a GGUF base is quantized); dequantize it to a directory first".into())),
        };
        // cross-entropy from differentiable ops: log-softmax, gather, (weighted) mean
        let shifted = logits.broadcast_sub(&logits.max_keepdim(1)?.detach())?;
        let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
        let logp = shifted.broadcast_sub(&lse)?;
        let picked = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
        let loss = match weights {
            Some(w) => ((picked * w)?.sum_all()? / w.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64)?.neg()?,
            None => picked.mean_all()?.neg()?,
        };
        Ok((loss, logits))
    }

    /// The batch loss and the gradient of every trainable tensor, with seconds spent in the
    /// forward and the backward.
    fn loss_and_grads(&self, batch: &Batch, targets: &Tensor, weights: Option<&Tensor>) -> Result<(f64, GradStore, f64, f64)> {
        if let (GradPath::Auto, None, Net::Encoder(bert)) = (self.grad_path, weights, &self.engine.net) {
            // DoRA's magnitudes train through autograd
            if bert_cpu::supported(bert, &self.engine.device) && !self.spec.use_dora {
                let a = &self.train_adapter;
                let head = bert.head_for(Some(a))?;
                let modules = bert.head_modules();
                let has = |pre: bool| modules.iter().any(|(m, p)| *p == pre && a.saved.contains_key(&format!("{m}.weight")));
                let trainable = (has(true), has(false));
                let t = targets.to_vec1::<u32>()?;
                let g = bert_cpu::loss_and_grads(bert, &a.modules, &head, trainable, batch, &t, self.spec.dropout, &mut self.step_rng())?;
                let mut store = GradStore::default();
                let dev = &self.engine.device;
                for (m, (da, db)) in g.lora {
                    let p = a.modules.get(&m).ok_or_else(|| Error::Model(format!("gradient for unknown module {m}")))?;
                    store.insert(&p.a, Tensor::from_vec(da, p.a.shape(), dev)?);
                    store.insert(&p.b, Tensor::from_vec(db, p.b.shape(), dev)?);
                }
                if let Some((dw, db)) = g.head {
                    store.insert(&head.weight, Tensor::from_vec(dw, head.weight.shape(), dev)?);
                    store.insert(&head.bias, Tensor::from_vec(db, head.bias.shape(), dev)?);
                }
                if let (Some((dw, db)), Some((w, b, _))) = (g.head_pre, &head.pre) {
                    store.insert(w, Tensor::from_vec(dw, w.shape(), dev)?);
                    store.insert(b, Tensor::from_vec(db, b.shape(), dev)?);
                }
                return Ok((g.loss, store, g.forward_s, g.backward_s));
            }
        }
        let t0 = Instant::now();
        let (loss, _) = self.loss(batch, targets, weights, true)?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        Ok((loss.to_scalar::<f32>()? as f64, grads, (t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64()))
    }

    /// One batch's loss and the gradient of every trainable tensor by PEFT key (`None`: the
    /// tensor got no gradient), without updating anything.
    pub fn gradients(&self, batch: &Batch, targets: &Tensor, weights: Option<&Tensor>) -> Result<(f64, KeyedGrads)> {
        let (loss, grads, _, _) = self.loss_and_grads(batch, targets, weights)?;
        let per = self
            .vars
            .iter()
            .map(|(k, v)| Ok((k.clone(), grads.get(v.as_tensor()).map(|g| g.flatten_all()?.to_vec1::<f32>()).transpose()?)))
            .collect::<Result<_>>()?;
        Ok((loss, per))
    }

    /// One optimizer step at learning rate `lr`; returns the batch loss.
    pub fn step(&mut self, batch: &Batch, targets: &Tensor, weights: Option<&Tensor>, lr: f64) -> Result<f64> {
        let (loss, mut grads, fwd, bwd) = self.loss_and_grads(batch, targets, weights)?;
        let t2 = Instant::now();
        if self.spec.max_grad_norm > 0.0 {
            let mut total = 0f64;
            for (_, v) in &self.vars {
                if let Some(g) = grads.get(v.as_tensor()) {
                    total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                }
            }
            let norm = total.sqrt();
            if norm > self.spec.max_grad_norm {
                let f = self.spec.max_grad_norm / (norm + 1e-6);
                for (_, v) in &self.vars {
                    if let Some(g) = grads.remove(v.as_tensor()) {
                        grads.insert(v.as_tensor(), (g * f)?);
                    }
                }
            }
        }
        self.opt.set_learning_rate(lr);
        self.opt.step(&grads)?;
        self.step += 1;
        self.last_timing = (fwd, bwd, t2.elapsed().as_secs_f64());
        Ok(loss)
    }

    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        self.vars.iter().map(|(_, v)| Ok(v.as_tensor().copy()?)).collect()
    }

    pub fn restore(&self, snap: &[Tensor]) -> Result<()> {
        for ((_, v), t) in self.vars.iter().zip(snap) {
            v.set(t)?;
        }
        Ok(())
    }

    /// The trained tensors as a PEFT `adapter_model.safetensors`.
    pub fn weights_bytes(&self) -> Result<Vec<u8>> {
        let mut m = BTreeMap::new();
        for (k, v) in &self.vars {
            let t = v.as_tensor().to_device(&Device::Cpu)?;
            m.insert(k.clone(), (t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?));
        }
        Ok(peft::safetensors::write_f32(&m))
    }

    pub fn config_bytes(&self, base_name: Option<&str>) -> Vec<u8> {
        peft::new_config_json(&NewConfig {
            r: self.spec.r,
            alpha: self.spec.alpha,
            dropout: self.spec.dropout as f64,
            use_rslora: self.spec.use_rslora,
            use_dora: self.spec.use_dora,
            layers_to_transform: self.spec.layers_to_transform.as_deref(),
            target_modules: &self.spec.target_modules,
            modules_to_save: &self.spec.modules_to_save,
            task_type: match self.task {
                Task::SeqCls => "SEQ_CLS",
                Task::CausalLm => "CAUSAL_LM",
            },
            base_model_name_or_path: base_name,
        })
    }

    /// Tokenizes examples into (batch, targets, weights).
    pub fn encode(&self, ex: &[&Example], max_len: usize) -> Result<(Batch, Tensor, Option<Tensor>)> {
        let tok = self.engine.tok()?;
        let dev = &self.engine.device;
        match self.task {
            Task::SeqCls => {
                let rows: Vec<(Vec<u32>, Vec<u32>)> = ex.iter().map(|e| tok.encode(&e.text, max_len)).collect::<Result<_>>()?;
                let t: Vec<u32> = ex
                    .iter()
                    .map(|e| {
                        let l = e.label.as_deref().unwrap_or("");
                        self.labels.iter().position(|x| x == l).map(|i| i as u32).ok_or_else(|| Error::Recipe(format!("unknown label {l:?}")))
                    })
                    .collect::<Result<_>>()?;
                Ok((pad_batch(&rows, tok.pad_id, dev)?, Tensor::new(t, dev)?, None))
            }
            Task::CausalLm => {
                let eos = match &self.engine.net {
                    Net::CausalLm(l) => l.cfg.eos_ids().first().copied(),
                    _ => None,
                };
                let mut rows = vec![];
                let mut loss_from = vec![];
                for e in ex {
                    let (mut ids, _) = tok.encode(&e.text, max_len)?;
                    let start = if let Some(c) = &e.completion {
                        let p = ids.len();
                        let ce = tok.inner.encode(c.as_str(), false).map_err(|e| Error::Tokenizer(e.to_string()))?;
                        ids.extend_from_slice(ce.get_ids());
                        ids.extend(eos);
                        p
                    } else {
                        1
                    };
                    ids.truncate(max_len);
                    loss_from.push(start);
                    rows.push((ids.clone(), vec![0; ids.len()]));
                }
                let batch = pad_batch(&rows, tok.pad_id, dev)?;
                let s = batch.ids.dim(1)?;
                let mut targets = vec![0u32; rows.len() * s];
                let mut w = vec![0f32; rows.len() * s];
                for (r, (ids, _)) in rows.iter().enumerate() {
                    // position t predicts token t+1
                    for t in 0..ids.len().saturating_sub(1) {
                        targets[r * s + t] = ids[t + 1];
                        if t + 1 >= loss_from[r] {
                            w[r * s + t] = 1.0;
                        }
                    }
                }
                let n = rows.len() * s;
                Ok((batch, Tensor::from_vec(targets, n, dev)?, Some(Tensor::from_vec(w, n, dev)?)))
            }
        }
    }

    /// Validation metrics (classification: full metrics; causal LM: loss and token accuracy).
    pub fn evaluate(&self, ex: &[Example], batch_size: usize, max_len: usize) -> Result<Metrics> {
        let (mut truth, mut pred) = (vec![], vec![]);
        let mut loss_sum = 0f64;
        let mut weight_sum = 0f64;
        for chunk in ex.chunks(batch_size.max(1)) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let (batch, targets, weights) = self.encode(&refs, max_len)?;
            let (loss, logits) = self.loss(&batch, &targets, weights.as_ref(), false)?;
            let am = logits.argmax(1)?.to_vec1::<u32>()?;
            let tv = targets.to_vec1::<u32>()?;
            let wv = match &weights {
                Some(w) => w.to_vec1::<f32>()?,
                None => vec![1.0; tv.len()],
            };
            let wsum: f64 = wv.iter().map(|&x| x as f64).sum();
            loss_sum += loss.to_scalar::<f32>()? as f64 * wsum;
            weight_sum += wsum;
            for ((t, p), w) in tv.into_iter().zip(am).zip(wv) {
                if w > 0.0 {
                    truth.push(t as usize);
                    pred.push(p as usize);
                }
            }
        }
        let loss = if weight_sum > 0.0 { loss_sum / weight_sum } else { 0.0 };
        Ok(match self.task {
            Task::SeqCls => Metrics::compute(&truth, &pred, &self.labels, loss),
            Task::CausalLm => {
                let correct = truth.iter().zip(&pred).filter(|(a, b)| a == b).count();
                Metrics {
                    loss,
                    accuracy: if truth.is_empty() { 0.0 } else { correct as f64 / truth.len() as f64 },
                    macro_precision: 0.0,
                    macro_recall: 0.0,
                    macro_f1: 0.0,
                    micro_precision: 0.0,
                    micro_recall: 0.0,
                    micro_f1: 0.0,
                    per_class: vec![],
                    confusion: vec![],
                    labels: vec![],
                    examples: ex.len(),
                }
            }
        })
    }
}

fn detached(a: &LoadedAdapter) -> LoadedAdapter {
    LoadedAdapter {
        id: a.id.clone(),
        modules: a.modules.iter().map(|(k, p)| (k.clone(), LoraPair { a: p.a.detach(), b: p.b.detach(), scale: p.scale, magnitude: None, host: None })).collect(),
        saved: a.saved.iter().map(|(k, t)| (k.clone(), t.detach())).collect(),
        labels: a.labels.clone(),
        bytes: a.bytes,
        // shares storage with the variables the optimizer updates in place; its pairs (host:
        // None) keep it from being cached
        flat: Default::default(),
        slots: Default::default(),
    }
}

/// Linear warmup, then linear decay to zero (the Hugging Face Trainer's default schedule).
pub fn lr_at(step: usize, total: usize, warmup: usize, base: f64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let rest = total.saturating_sub(warmup).max(1);
    base * (1.0 - (step - warmup) as f64 / rest as f64).max(0.0)
}

fn better(metric: Metric, new: &Metrics, old: &Metrics) -> bool {
    match metric {
        Metric::Loss => new.loss < old.loss,
        Metric::Accuracy => new.accuracy > old.accuracy,
        Metric::MacroF1 => new.macro_f1 > old.macro_f1,
    }
}

/// Trains per the recipe and stores the best checkpoint. `progress` is called after each step.
/// Trains per the recipe on `device` and stores the adapter (BERT on the CPU takes the
/// hand-differentiated step; the GPU and Llama use autograd).
pub fn train_and_store(r: &Recipe, store: &mut Store, device: &Device, progress: &mut dyn FnMut(&Progress)) -> Result<Report> {
    let t0 = Instant::now();
    let name = Ref::parse(&r.name)?;
    let base = BaseDir::open(&r.base_spec())?;
    let base_fp = store.base_fingerprint(&base)?;
    let need_label = r.task == Task::SeqCls;
    let train_path = r.path(&r.data.train);
    let all = data::read(&train_path, &r.data.text_field, &r.data.label_field, need_label)?;
    let (train, val) = match &r.data.validation {
        Some(v) => (all, data::read(&r.path(v), &r.data.text_field, &r.data.label_field, need_label)?),
        None => data::split(all, r.data.validation_split, r.train.seed),
    };
    let labels = if need_label {
        let mut both = train.clone();
        both.extend(val.iter().cloned());
        data::label_set(&both, r.data.labels.as_ref())?
    } else {
        vec![]
    };
    let engine = Engine::load_trainable(base.clone(), device.clone())?;
    let max_len = r.data.max_seq_len.min(engine.max_len);
    let spec = LoraSpec {
        r: r.lora.r,
        alpha: r.lora.alpha,
        dropout: r.lora.dropout as f32,
        use_rslora: r.lora.use_rslora,
        use_dora: r.lora.use_dora,
        layers_to_transform: r.lora.layers_to_transform.clone(),
        target_modules: r.target_modules(),
        modules_to_save: r.modules_to_save(),
        learning_rate: r.train.learning_rate,
        weight_decay: r.train.weight_decay,
        max_grad_norm: r.train.max_grad_norm,
        seed: r.train.seed,
    };
    let mut tr = Trainer::new(engine, r.task, spec, labels.clone())?;
    let bs = r.train.batch_size;
    let steps_per_epoch = train.len().div_ceil(bs);
    let total = steps_per_epoch * r.train.epochs;
    let mut best: Option<(usize, Metrics, Vec<Tensor>)> = None;
    let mut history = vec![];
    let mut since_best = 0;
    let mut samples = 0usize;
    let t_train = Instant::now();
    let mut epochs_run = 0;
    for epoch in 1..=r.train.epochs {
        epochs_run = epoch;
        let mut order: Vec<usize> = (0..train.len()).collect();
        Rng::new(r.train.seed.wrapping_add(epoch as u64)).shuffle(&mut order);
        let mut loss_sum = 0.0;
        for chunk in order.chunks(bs) {
            let ex: Vec<&Example> = chunk.iter().map(|&i| &train[i]).collect();
            let (batch, targets, weights) = tr.encode(&ex, max_len)?;
            let lr = lr_at(tr.step, total, r.train.warmup_steps, r.train.learning_rate);
            let loss = tr.step(&batch, &targets, weights.as_ref(), lr)?;
            if !loss.is_finite() {
                return Err(Error::Model(format!("loss became {loss} at step {}: lower the learning rate", tr.step)));
            }
            loss_sum += loss;
            samples += ex.len();
            progress(&Progress {
                epoch,
                epochs: r.train.epochs,
                step: tr.step,
                total_steps: total,
                loss,
                samples_per_sec: samples as f64 / t_train.elapsed().as_secs_f64().max(1e-9),
                eval: None,
            });
        }
        let train_loss = loss_sum / steps_per_epoch.max(1) as f64;
        let eval_set = if val.is_empty() { &train } else { &val };
        let m = tr.evaluate(eval_set, bs * 2, max_len)?;
        progress(&Progress {
            epoch,
            epochs: r.train.epochs,
            step: tr.step,
            total_steps: total,
            loss: train_loss,
            samples_per_sec: samples as f64 / t_train.elapsed().as_secs_f64().max(1e-9),
            eval: Some(m.clone()),
        });
        history.push(EpochLog { epoch, train_loss, validation: Some(serde_json::to_value(&m).expect("metrics serialize")) });
        let improved = best.as_ref().is_none_or(|(_, b, _)| better(r.train.metric, &m, b));
        if improved {
            best = Some((epoch, m, tr.snapshot()?));
            since_best = 0;
        } else {
            since_best += 1;
            if r.train.early_stopping_patience > 0 && since_best >= r.train.early_stopping_patience {
                break;
            }
        }
    }
    let (best_epoch, best_m, snap) = best.ok_or_else(|| Error::Model("no epoch ran".into()))?;
    tr.restore(&snap)?;
    let weights = tr.weights_bytes()?;
    let config_bytes = tr.config_bytes(Some(&r.base));
    let config = LoraConfig::parse(&config_bytes)?;
    let samples_per_sec = samples as f64 / t_train.elapsed().as_secs_f64().max(1e-9);
    let recipe_json = serde_json::to_value(r).expect("recipe serializes");
    let data_digest = crate::digest::hash_file(&train_path)?.0;
    let metrics = serde_json::json!({
        "best_epoch": best_epoch,
        "validation": best_m,
        "train_examples": train.len(),
        "validation_examples": val.len(),
    });
    let provenance = serde_json::json!({
        "source": "train",
        "recipe": recipe_json,
        "train_data_digest": data_digest,
        "base_path": base.dir.display().to_string(),
        "seed": r.train.seed,
        "epochs_run": epochs_run,
        "samples_per_sec": samples_per_sec,
        "loradex": env!("CARGO_PKG_VERSION"),
    });
    let digest = store.add(
        NewAdapter {
            config_blob: BlobSource::Bytes(&config_bytes),
            weights_blob: BlobSource::Bytes(&weights),
            config: &config,
            base_fingerprint: base_fp,
            base_arch: base.arch.name(),
            labels: labels.clone(),
            metrics: Some(metrics),
            provenance,
        },
        &name,
    )?;
    Ok(Report {
        r#ref: name.to_string(),
        digest,
        task: r.task,
        labels,
        train_examples: train.len(),
        validation_examples: val.len(),
        epochs_run,
        best_epoch,
        best_metrics: Some(serde_json::to_value(&best_m).expect("metrics serialize")),
        history,
        samples_per_sec,
        duration_s: t0.elapsed().as_secs_f64(),
    })
}
