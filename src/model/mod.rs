//! Inference core: loads a base model once (weights read from mmapped safetensors into one
//! shared copy), tokenizes, and runs BERT classification or Llama generation for batches whose
//! rows each choose an adapter. Also merges adapters into the weights and writes merged model
//! directories. Reads adapters from bytes; finding them (store or directory) is `resolve`'s job.

pub mod attend512;
pub mod attention;
pub mod bert;
pub mod bert_cpu;
pub mod chat;
pub mod decoder;
pub mod encoder;
pub mod factor_arena;
pub mod factors8;
pub mod family;
pub mod generation;
pub mod ggml_convert;
pub mod gguf;
mod gguf_check;
pub mod kv_cache;
pub mod llama;
pub mod rope;
mod rowwise;
pub mod lora;
pub mod lora_slots;
pub mod quant;
pub mod prefetch;
pub mod qx8;
pub mod qx8_amx;

use crate::base::BaseDir;
use crate::error::{Error, IoContext, Result};
use crate::peft::safetensors::write_f32;
use candle_core::{DType, Device, Tensor};
use lora::{Ctx, LoadedAdapter, LoraLinear, Routing};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// A base model's tensors by canonical (task-model) name, as f32.
pub struct Weights {
    map: HashMap<String, Tensor>,
}

impl Weights {
    pub fn load(base: &BaseDir, device: &Device) -> Result<Weights> {
        // SAFETY: the files are mapped read-only; loradex never writes into a base directory.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&base.weight_files)? };
        let mut map = HashMap::new();
        for (name, _) in st.tensors() {
            let t = st.load(&name, device)?;
            let t = if t.dtype() == DType::F32 { t } else { t.to_dtype(DType::F32)? };
            map.insert(base.arch.canonical(&name), t);
        }
        Ok(Weights { map })
    }
    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
    pub fn get_opt(&self, name: &str) -> Option<Tensor> {
        self.map.get(name).cloned()
    }
    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.get_opt(name).ok_or_else(|| Error::Model(format!("base weights lack {name}")))
    }
    pub fn linear(&self, prefix: &str, bias: bool) -> Result<LoraLinear> {
        let w = self.get(&format!("{prefix}.weight"))?;
        let b = if bias { Some(self.get(&format!("{prefix}.bias"))?) } else { self.get_opt(&format!("{prefix}.bias")) };
        Ok(LoraLinear::new(prefix.to_string(), w, b))
    }
}

/// The two implementations every family's base runs on.
#[derive(Clone, Debug)]
pub enum Net {
    /// A BERT-family encoder (sequence classification).
    Encoder(bert::Bert),
    /// A Llama-family decoder in candle (training, merging, accelerators).
    CausalLm(llama::Llama),
    /// A GGUF base: generation only, through `Engine::decoder` (no candle model to train or
    /// merge into).
    Gguf,
}

/// A decoder's tensors from a safetensors base (f32 copies for the CPU decoder).
struct WeightsSource<'a>(&'a Weights);

impl decoder::Source for WeightsSource<'_> {
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<quant::QWeight> {
        let t = self.0.get(name)?;
        if t.dims() != [rows, cols] {
            return Err(Error::TensorMismatch { tensor: name.into(), detail: format!("shape {:?}, expected [{rows}, {cols}]", t.dims()) });
        }
        quant::QWeight::f32(rows, cols, t.flatten_all()?.to_vec1::<f32>()?)
    }
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.0.get(name)?;
        if t.dims() != [len] {
            return Err(Error::TensorMismatch { tensor: name.into(), detail: format!("shape {:?}, expected [{len}]", t.dims()) });
        }
        Ok(t.to_vec1::<f32>()?)
    }
    fn has(&self, name: &str) -> bool {
        self.0.has(name)
    }
}

/// `a` then the ids of `b` it lacks.
fn union(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut v = a.to_vec();
    v.extend(b.iter().filter(|i| !a.contains(i)));
    v
}

/// A GGUF file's tokenizer and chat template, from its metadata; where the metadata's
/// tokenizer is one loradex cannot build (SentencePiece `llama`, …), the `tokenizer.json`
/// beside the file, if there is one, as the error says.
fn gguf_text(g: &gguf::Gguf, beside: &Path) -> Result<(Tok, Option<chat::ChatTemplate>)> {
    let tok = match g.tokenizer() {
        Ok((inner, pad)) => Tok::new(inner, pad)?,
        Err(Error::Tokenizer(_)) if beside.is_file() => Tok::load(beside, g.pad_id())?,
        Err(e) => return Err(e),
    };
    let chat = match g.chat_template() {
        Some(t) => {
            let special = |k| g.token_text(k).unwrap_or_default();
            Some(chat::ChatTemplate::new(&t, &special("bos_token_id"), &special("eos_token_id"))?)
        }
        None => None,
    };
    Ok((tok, chat))
}

/// What `Engine::generate` returns.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generated {
    pub prompt_ids: Vec<u32>,
    pub new_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: generation::Finish,
}

/// A tokenized batch, right-padded to its longest row.
pub struct Batch {
    pub ids: Tensor,
    pub type_ids: Tensor,
    pub mask: Tensor,
    pub lens: Vec<usize>,
}

/// Tokenizer with the directory's padding/truncation settings removed (loradex pads itself).
pub struct Tok {
    pub inner: tokenizers::Tokenizer,
    pub pad_id: u32,
}

impl Tok {
    pub fn load(path: &Path, pad_hint: Option<u32>) -> Result<Tok> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        Tok::new(inner, pad_hint)
    }

    pub fn new(mut inner: tokenizers::Tokenizer, pad_hint: Option<u32>) -> Result<Tok> {
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let pad_id = pad_hint
            .or_else(|| ["[PAD]", "<pad>", "</s>", "<|endoftext|>"].iter().find_map(|t| inner.token_to_id(t)))
            .unwrap_or(0);
        Ok(Tok { inner, pad_id })
    }

    /// Token ids (with the tokenizer's special tokens), truncated to `max_len`.
    pub fn encode(&self, text: &str, max_len: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        self.encode_with(text, max_len, true)
    }

    /// `encode`, optionally without the tokenizer's special tokens (a rendered chat template
    /// already holds them).
    pub fn encode_with(&self, text: &str, max_len: usize, add_special: bool) -> Result<(Vec<u32>, Vec<u32>)> {
        if max_len == 0 {
            return Err(Error::InvalidArgument("a maximum sequence length of 0 leaves no room for any token".into()));
        }
        let e = self.inner.encode(text, add_special).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = e.get_ids().to_vec();
        let mut tt = e.get_type_ids().to_vec();
        if ids.len() > max_len {
            // keep the final special token (e.g. [SEP]) when truncating
            let last = *ids.last().expect("non-empty");
            ids.truncate(max_len);
            tt.truncate(max_len);
            if self.inner.id_to_token(last).is_some_and(|t| t.starts_with('[') || t.starts_with('<')) {
                ids[max_len - 1] = last;
            }
        }
        Ok((ids, tt))
    }

    pub fn batch(&self, texts: &[String], max_len: usize, device: &Device) -> Result<Batch> {
        let enc: Vec<(Vec<u32>, Vec<u32>)> = texts.iter().map(|t| self.encode(t, max_len)).collect::<Result<_>>()?;
        pad_batch(&enc, self.pad_id, device)
    }
}

/// Right-pads token rows into tensors.
pub fn pad_batch(rows: &[(Vec<u32>, Vec<u32>)], pad_id: u32, device: &Device) -> Result<Batch> {
    let n = rows.len();
    let s = rows.iter().map(|(i, _)| i.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![pad_id; n * s];
    let mut tt = vec![0u32; n * s];
    let mut mask = vec![0f32; n * s];
    for (r, (i, t)) in rows.iter().enumerate() {
        ids[r * s..r * s + i.len()].copy_from_slice(i);
        tt[r * s..r * s + t.len()].copy_from_slice(t);
        mask[r * s..r * s + i.len()].iter_mut().for_each(|m| *m = 1.0);
    }
    Ok(Batch {
        ids: Tensor::from_vec(ids, (n, s), device)?,
        type_ids: Tensor::from_vec(tt, (n, s), device)?,
        mask: Tensor::from_vec(mask, (n, s), device)?,
        lens: rows.iter().map(|(i, _)| i.len()).collect(),
    })
}

/// A generation prompt.
#[derive(Clone, Debug)]
pub enum Prompt {
    Text(String),
    Chat(Vec<chat::Message>),
}

/// One row's classification.
#[derive(serde::Serialize, Clone, Debug)]
pub struct Prediction {
    pub label: String,
    pub index: usize,
    pub probabilities: Vec<f32>,
    pub logits: Vec<f32>,
}

pub fn softmax_vec(l: &[f32]) -> Vec<f32> {
    let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = l.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// The shared base: architecture, weights, tokenizer, device.
pub struct Engine {
    pub base: BaseDir,
    pub net: Net,
    pub tok: Option<Tok>,
    pub device: Device,
    pub labels: Vec<String>,
    pub max_len: usize,
    /// The CPU decoder of a Llama-family base (serving, generation); `None` on an accelerator.
    pub decoder: Option<Arc<decoder::Decoder>>,
    pub chat: Option<chat::ChatTemplate>,
    /// The ids that end a generation (`eos_ids`), gathered once at load.
    end_ids: Vec<u32>,
}

pub fn device(cuda: bool) -> Result<Device> {
    if cuda {
        Ok(Device::new_cuda(0)?)
    } else {
        Ok(Device::Cpu)
    }
}

impl Engine {
    pub fn load(base: BaseDir, device: Device) -> Result<Engine> {
        Engine::load_with(base, device, gguf::LoadDtype::Native)
    }

    /// `dtype` applies to GGUF bases (safetensors bases compute in f32 on the CPU).
    pub fn load_with(base: BaseDir, device: Device, dtype: gguf::LoadDtype) -> Result<Engine> {
        if let Some(path) = base.gguf.clone() {
            if !device.is_cpu() {
                return Err(Error::InvalidArgument("GGUF bases run on the CPU (drop --cuda)".into()));
            }
            let g = gguf::Gguf::open(&path)?;
            // the family the file's config names (llama, qwen2) says how its decoder is built
            let family::Build::Decoder(spec) = base.arch.family().build else {
                return Err(Error::Model(format!("{}: a GGUF base must be a decoder", path.display())));
            };
            let spec = spec(&base.config)?;
            let max_len = spec.cfg.max_position_embeddings;
            let mut dec = decoder::Decoder::new(spec, &mut g.source(dtype)?)?;
            let end_ids = union(&dec.eos, &g.end_ids());
            dec.eos = end_ids.clone();
            let (tok, chat) = gguf_text(&g, &base.tokenizer_path())?;
            return Ok(Engine { base, net: Net::Gguf, tok: Some(tok), device, labels: vec![], max_len, decoder: Some(Arc::new(dec)), chat, end_ids });
        }
        let w = Weights::load(&base, &device)?;
        Engine::from_weights(base, w, device, true)
    }

    /// For training: a GGUF base is dequantized to f32 into candle's model (what transformers
    /// loads from the file), keeping the file's tokenizer, template and fingerprint; other bases
    /// load as `load` does.
    pub fn load_trainable(base: BaseDir, device: Device) -> Result<Engine> {
        let Some(path) = base.gguf.clone() else { return Engine::load(base, device) };
        let g = gguf::Gguf::open(&path)?;
        let w = Weights { map: g.dequantized(&device)?.into_iter().collect() };
        let beside = base.tokenizer_path();
        let mut e = Engine::from_weights(base, w, device, false)?;
        let (tok, chat) = gguf_text(&g, &beside)?;
        (e.tok, e.chat, e.end_ids) = (Some(tok), chat, union(&e.end_ids, &g.end_ids()));
        Ok(e)
    }

    fn from_weights(base: BaseDir, w: Weights, device: Device, with_decoder: bool) -> Result<Engine> {
        let (net, max_len, pad) = match base.arch.family().build {
            family::Build::Encoder(spec) => {
                let spec = spec(&base.config)?;
                let (m, p) = (spec.cfg.max_position_embeddings - spec.position_offset, spec.cfg.pad_token_id);
                (Net::Encoder(bert::Bert::new(spec, &w)?), m, p)
            }
            family::Build::Decoder(spec) => {
                let spec = spec(&base.config)?;
                let (m, p) = (spec.cfg.max_position_embeddings, None);
                (Net::CausalLm(llama::Llama::new(spec, &w, &device)?), m, p)
            }
        };
        let end_ids = match &net {
            Net::CausalLm(l) => union(&l.cfg.eos_ids(), &base.generation_eos()?),
            _ => vec![],
        };
        let decoder = match &net {
            Net::CausalLm(l) if device.is_cpu() && with_decoder => {
                let mut d = decoder::Decoder::new(l.spec(), &mut WeightsSource(&w))?;
                d.eos = end_ids.clone();
                Some(Arc::new(d))
            }
            _ => None,
        };
        let tp = base.tokenizer_path();
        let tok = if tp.is_file() && base.gguf.is_none() { Some(Tok::load(&tp, pad)?) } else { None };
        let labels = base.labels();
        let chat = if !base.arch.is_encoder() && base.gguf.is_none() { chat::ChatTemplate::from_dir(&base.dir)? } else { None };
        Ok(Engine { base, net, tok, device, labels, max_len, decoder, chat, end_ids })
    }

    /// Has the CPU decoder read LoRA factors in `f` beside its quantized weights
    /// (`Decoder::set_lora_factors`); before the engine is shared.
    pub fn set_lora_factors(&mut self, f: factors8::FactorDtype) -> Result<()> {
        match self.decoder.as_mut().map(Arc::get_mut) {
            Some(Some(d)) => d.set_lora_factors(f),
            Some(None) => Err(Error::Model("the decoder is already shared".into())),
            None => Err(Error::InvalidArgument(format!("LoRA factors in {f} apply to a decoder base on the CPU"))),
        }
    }

    /// Whether this base generates text.
    pub fn is_causal_lm(&self) -> bool {
        matches!(self.net, Net::CausalLm(_) | Net::Gguf)
    }

    /// The ids that end a causal LM's generation: `config.json`'s end of sequence, plus
    /// `generation_config.json`'s (transformers' `generate` stops at those too), or for a GGUF
    /// base the end tokens llama.cpp stops at (`gguf::Gguf::end_ids`).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.end_ids.clone()
    }

    /// Token ids of a prompt: plain text (with the tokenizer's special tokens), or chat
    /// messages rendered through the base's chat template.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let tok = self.tok()?;
        let (ids, _) = match prompt {
            Prompt::Text(t) => tok.encode_with(t, usize::MAX, true)?,
            Prompt::Chat(msgs) => {
                let c = self.chat.as_ref().ok_or_else(|| Error::InvalidArgument("this base has no chat template".into()))?;
                tok.encode_with(&c.render(msgs, true)?, usize::MAX, false)?
            }
        };
        if ids.is_empty() {
            return Err(Error::InvalidArgument("the prompt has no tokens".into()));
        }
        Ok(ids)
    }

    pub fn tok(&self) -> Result<&Tok> {
        self.tok.as_ref().ok_or_else(|| Error::Missing { path: self.base.dir.clone(), what: "tokenizer.json".into() })
    }

    /// Builds an adapter's tensors on this engine's device.
    pub fn adapter(&self, id: &str, config_bytes: &[u8], weights: &[u8], labels: Vec<String>) -> Result<Arc<LoadedAdapter>> {
        let cfg = crate::peft::LoraConfig::parse(config_bytes)?;
        let mut a = LoadedAdapter::from_peft(id, self.base.arch, &cfg, weights, labels, &self.device)?;
        // copies of base weights PEFT saves beside a LoRA module (`embed_tokens.base_layer`) must
        // be this base's own: loradex does not swap a base weight per adapter
        let arch = self.base.arch;
        let copies: Vec<String> = a.saved.keys().filter(|k| k.rsplit_once('.').is_some_and(|(m, _)| !arch.is_head_module(m))).cloned().collect();
        for k in copies {
            let t = a.saved.remove(&k).expect("listed");
            if let Some(base) = self.base_tensor(&k)? {
                let same = base.dims() == t.dims() && (base - &t)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? == 0.0;
                if !same {
                    return Err(Error::UnsupportedAdapter(format!(
                        "adapter {id} saves its own {k} (a resized or retrained vocabulary?): loradex serves adapters over the unchanged base weights"
                    )));
                }
            }
        }
        Ok(Arc::new(a))
    }

    /// A base tensor the engine holds in candle form (`None` where only quantized copies exist).
    fn base_tensor(&self, name: &str) -> Result<Option<Tensor>> {
        Ok(match &self.net {
            Net::CausalLm(l) if name == "model.embed_tokens.weight" => Some(l.embedding().to_device(&Device::Cpu)?),
            _ => None,
        })
    }

    /// Labels of the head a row uses.
    pub fn labels_for(&self, a: Option<&LoadedAdapter>) -> Vec<String> {
        match a {
            Some(a) if !a.labels.is_empty() => a.labels.clone(),
            _ => self.labels.clone(),
        }
    }

    /// Whether rows routed to `a` (or to no adapter) can be classified: a BERT base and a
    /// head, the adapter's saved one or the base's own. Checked before a request joins a batch,
    /// so a request that cannot run is refused alone (`InvalidArgument`) and fails no other.
    pub fn check_classifier(&self, a: Option<&LoadedAdapter>) -> Result<()> {
        let Net::Encoder(m) = &self.net else { return Err(Error::InvalidArgument("this base is not a classifier (use /v1/completions)".into())) };
        m.head_for(a).map(|_| ()).map_err(|_| {
            Error::InvalidArgument(match a {
                None => "this base has no classification head: name an adapter that saves one (modules_to_save)".into(),
                Some(a) => format!("adapter {} saves no classification head (modules_to_save) and the base has none", a.id),
            })
        })
    }

    /// Classifies pre-tokenized rows (BERT).
    pub fn classify_batch(&self, batch: &Batch, routing: &Routing) -> Result<Vec<Prediction>> {
        let Net::Encoder(m) = &self.net else { return Err(Error::Model("classification needs a BERT base".into())) };
        let ctx = Ctx::infer(routing);
        let logits = encoder::classify(m, &batch.ids, &batch.type_ids, &batch.mask, &ctx)?;
        Ok(logits
            .into_iter()
            .zip(&routing.rows)
            .map(|(l, r)| {
                let labels = self.labels_for(r.map(|i| routing.adapters[i].as_ref()));
                let probs = softmax_vec(&l);
                let index = llama::argmax(&l) as usize;
                let label = labels.get(index).cloned().unwrap_or_else(|| format!("LABEL_{index}"));
                Prediction { label, index, probabilities: probs, logits: l }
            })
            .collect())
    }

    pub fn classify(&self, texts: &[String], routing: &Routing) -> Result<Vec<Prediction>> {
        let batch = self.tok()?.batch(texts, self.max_len, &self.device)?;
        self.classify_batch(&batch, routing)
    }

    /// Generates one sequence (causal LM), calling `on_event` with each piece of text as it
    /// becomes visible. Runs the CPU decoder, or candle's model on an accelerator.
    pub fn generate(
        &self,
        prompt_ids: Vec<u32>,
        params: generation::SamplingParams,
        adapter: Option<Arc<LoadedAdapter>>,
        on_event: &mut dyn FnMut(&generation::Event),
    ) -> Result<Generated> {
        use generation::{Event, Sequence};
        params.validate()?;
        if !self.is_causal_lm() {
            return Err(Error::Model("generation needs a causal LM base".into()));
        }
        let tok = self.tok()?;
        let cap = Sequence::positions_needed(prompt_ids.len(), params.max_tokens, self.max_len);
        let mut text = String::new();
        // one forward of the new tokens, returning the last token's logits: the CPU decoder, or
        // candle's model (accelerators, or after a merge)
        // candle's model keeps its own cache; the sequence's then only bounds its positions
        let cache = match &self.decoder {
            Some(dec) => dec.cache(cap, None),
            None => kv_cache::SeqCache::new(0, 0, kv_cache::KvDtype::F32, cap, None),
        };
        let mut seq = Sequence::new(prompt_ids.clone(), params, cache, self.eos_ids(), self.max_len)?;
        let mut candle_cache = llama::Cache::default();
        let routing = match &adapter {
            Some(a) => Routing::single(a.clone(), 1),
            None => Routing::base(1),
        };
        let ctx = Ctx::infer(&routing);
        let (chunk, mut step): (usize, Box<dyn FnMut(&[u32], &mut kv_cache::SeqCache) -> Result<Vec<f32>> + '_>) = match (&self.decoder, &self.net) {
            (Some(dec), _) => {
                let a = adapter.as_deref();
                (512, Box::new(move |input, cache| Ok(dec.step(&mut [decoder::Row { tokens: input, cache, adapter: a }])?.remove(0))))
            }
            (None, Net::CausalLm(m)) => {
                let (ctx, dev) = (&ctx, &self.device);
                let cache = &mut candle_cache;
                (
                    usize::MAX,
                    Box::new(move |input, _| {
                        let ids = Tensor::from_vec(input.to_vec(), (1, input.len()), dev)?;
                        let logits = m.forward(&ids, None, cache.len(), Some(&mut *cache), ctx)?;
                        Ok(logits.get(0)?.get(input.len() - 1)?.to_vec1::<f32>()?)
                    }),
                )
            }
            _ => return Err(Error::Model("generation needs a Llama base".into())),
        };
        let finish = loop {
            let input = seq.next_input(chunk).to_vec();
            let logits = step(&input, &mut seq.cache)?;
            let ev = seq.accept(tok, input.len(), &logits)?;
            if let Event::Token { text: t, .. } | Event::Done { text: t, .. } = &ev {
                text.push_str(t);
            }
            on_event(&ev);
            if let Event::Done { finish, .. } = ev {
                break (finish, seq.generated);
            }
        };
        let (finish_reason, new_ids) = finish;
        Ok(Generated { prompt_ids, new_ids, text, finish_reason })
    }

    pub fn linears_mut(&mut self) -> Box<dyn Iterator<Item = &mut LoraLinear> + '_> {
        match &mut self.net {
            Net::Encoder(b) => Box::new(b.linears_mut()),
            Net::CausalLm(l) => Box::new(l.linears_mut()),
            Net::Gguf => Box::new(std::iter::empty()),
        }
    }

    /// Merges an adapter into the weights (sign 1) or takes it out again (sign -1).
    /// A saved head replaces the base head on merge.
    pub fn merge(&mut self, a: &LoadedAdapter, sign: f64) -> Result<()> {
        if matches!(self.net, Net::Gguf) {
            return Err(Error::Model("a GGUF base's quantized weights cannot be merged into (serve the adapter unmerged)".into()));
        }
        // the decoder's copies would go stale: generation after a merge runs candle's model
        self.decoder = None;
        let mut embedded = 0;
        if let (Net::CausalLm(l), Some(p)) = (&mut self.net, a.modules.get(decoder::EMBED)) {
            l.merge_embedding(p, sign)?;
            embedded = 1;
        }
        let mut todo: Vec<(&mut LoraLinear, &lora::LoraPair)> =
            self.linears_mut().filter_map(|l| a.modules.get(&l.name).map(|p| (l, p))).collect();
        let done = todo.len() + embedded;
        // modules are independent: merge them on all cores (the adds are memory-bound)
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(done.max(1));
        let per = done.div_ceil(threads.max(1)).max(1);
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = todo
                .chunks_mut(per)
                .map(|chunk| s.spawn(move || chunk.iter_mut().try_for_each(|(l, p)| l.merge(p, sign))))
                .collect();
            for h in handles {
                h.join().map_err(|_| Error::Model("merge thread panicked".into()))??;
            }
            Ok(())
        })?;
        if done != a.modules.len() {
            return Err(Error::Model(format!("adapter {} targets {} modules, {done} found in the base", a.id, a.modules.len())));
        }
        let base_arch = self.base.arch;
        if sign > 0.0 {
            if let Net::Encoder(b) = &mut self.net {
                if a.saved.keys().any(|k| k.rsplit_once('.').is_some_and(|(m, _)| base_arch.is_head_module(m))) {
                    b.classifier = Some(b.head_for(Some(a))?);
                    if !a.labels.is_empty() {
                        self.labels = a.labels.clone();
                    }
                }
            }
        }
        Ok(())
    }

    /// Every tensor of the (possibly merged) model by canonical name.
    pub fn state(&self, base_weights: &Weights) -> Result<BTreeMap<String, Tensor>> {
        let mut out: BTreeMap<String, Tensor> = base_weights.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut put = |name: &str, t: &Tensor| {
            out.insert(name.to_string(), t.clone());
        };
        match &self.net {
            Net::Encoder(b) => {
                let mut b = b.clone();
                for l in b.linears_mut() {
                    put(&format!("{}.weight", l.name), &l.weight);
                }
                if let Some(h) = &b.classifier {
                    let modules = b.head_modules();
                    for (m, is_pre) in modules {
                        match (is_pre, &h.pre) {
                            (true, Some((w, bias, _))) => {
                                put(&format!("{m}.weight"), w);
                                put(&format!("{m}.bias"), bias);
                            }
                            (true, None) => {}
                            (false, _) => {
                                put(&format!("{m}.weight"), &h.weight);
                                put(&format!("{m}.bias"), &h.bias);
                            }
                        }
                    }
                }
            }
            Net::CausalLm(m) => {
                put("model.embed_tokens.weight", m.embedding());
                let mut m = m.clone();
                for l in m.linears_mut() {
                    put(&format!("{}.weight", l.name), &l.weight);
                }
            }
            Net::Gguf => return Err(Error::Model("a GGUF base cannot be merged into (use its safetensors form)".into())),
        }
        Ok(out)
    }

    /// Writes a standalone model directory (config.json, model.safetensors, tokenizer files)
    /// that transformers loads as the task model.
    pub fn save_dir(&self, out: &Path) -> Result<()> {
        let w = Weights::load(&self.base, &Device::Cpu)?;
        let state = self.state(&w)?;
        let mut tensors = BTreeMap::new();
        for (k, t) in state {
            let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            tensors.insert(k, (t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?));
        }
        std::fs::create_dir_all(out).at(out)?;
        crate::util::atomic_write(&out.join("model.safetensors"), &write_f32(&tensors))?;
        let mut cfg = self.base.config.clone();
        if let Some(o) = cfg.as_object_mut() {
            let fam = self.base.arch.family();
            let head = match &self.net {
                Net::Encoder(b) => b.names.head.out.iter().find(|o| tensors.contains_key(&format!("{o}.weight"))).map(|o| format!("{o}.weight")),
                _ => None,
            };
            if let Some(head) = head {
                o.insert("architectures".into(), serde_json::json!([fam.task_architecture]));
                let labels = if self.labels.is_empty() {
                    let n = tensors[&head].0[0];
                    (0..n).map(|i| format!("LABEL_{i}")).collect()
                } else {
                    self.labels.clone()
                };
                let id2: serde_json::Map<String, serde_json::Value> =
                    labels.iter().enumerate().map(|(i, l)| (i.to_string(), l.clone().into())).collect();
                let l2i: serde_json::Map<String, serde_json::Value> =
                    labels.iter().enumerate().map(|(i, l)| (l.clone(), i.into())).collect();
                o.insert("id2label".into(), id2.into());
                o.insert("label2id".into(), l2i.into());
            } else if !fam.is_encoder() {
                o.insert("architectures".into(), serde_json::json!([fam.task_architecture]));
            }
        }
        let cfg_bytes = serde_json::to_vec_pretty(&cfg).expect("config serializes");
        crate::util::atomic_write(&out.join("config.json"), &cfg_bytes)?;
        for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "generation_config.json"] {
            let src = self.base.dir.join(f);
            if src.is_file() {
                std::fs::copy(&src, out.join(f)).at(&src)?;
            }
        }
        Ok(())
    }
}
