//! The CPU decoder: a Llama-family causal LM forward written for serving (every decoder family
//! of `model::family`, through the `DecoderSpec` options: biases, fused projections, sliding
//! window, Gemma's norms, scaling and GeGLU). One `step` runs every
//! row of a continuous batch (a prompt being prefilled, or one new token) through one forward:
//! the frozen weights (f32 or quantized, `quant`) are read once per step for all rows, each row
//! adds its own adapter's low-rank term, and attends over its own `SeqCache` at its own
//! positions. Every number a row gets is computed from that row alone in a fixed order, so a
//! sequence's output does not depend on the rest of the batch. Owns the architecture math of
//! inference only; training and merging stay with `llama` (candle), weights come from a
//! `Source` (safetensors or GGUF), and scheduling belongs to the server.

use super::kv_cache::{bytes_per_token, KvDtype, SeqCache};
use super::llama::{Config, DecoderOpts, DecoderSpec};
use super::lora::LoadedAdapter;
use super::lora_slots::Copies;
use super::attention::attend_group;
use super::quant::{matmul, matmul_many, quantize_row, Act, Job, LowRank, QWeight, QK};
use super::rowwise::{add_bias, blocks_for, gate_rows, pre_norm, qk_row, qk_rows, residual_rows, rms_norm_rows, NextNorm, Rotary};
use super::factors8::FactorDtype;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// A number no other decoder of this process has.
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub use super::llama::SLOTS;
/// The embedding's module name (an embedding LoRA attaches to it).
pub const EMBED: &str = "model.embed_tokens";

/// Where a decoder's tensors come from, by canonical (HF) name; shapes are checked here.
pub trait Source {
    /// A `[rows, cols]` matrix.
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<QWeight>;
    /// A vector of `len` values.
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>>;
    fn has(&self, name: &str) -> bool;
}

/// A layer's projections in `DecoderSpec::slots` order, with their PEFT names and biases.
struct Layer {
    /// The norms before the attention and the MLP (`None`: none, OLMo 2).
    attn_norm: Option<Vec<f32>>,
    ffn_norm: Option<Vec<f32>>,
    lin: Vec<QWeight>,
    bias: Vec<Option<Vec<f32>>>,
    names: Vec<String>,
    /// Its place in the stack (adapters' `SlotTerms` are indexed by it).
    index: usize,
    /// The norm weights of q and k: `head_dim` each (per head), or a token's whole q and k
    /// (OLMo 2).
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// Gemma 2/3's and OLMo 2's norms of the attention's and the MLP's outputs.
    out_norms: Option<(Vec<f32>, Vec<f32>)>,
    /// Whether it is a local layer (its window and RoPE base: `DecoderSpec::is_local`).
    local: bool,
    /// Whether it applies RoPE at all (`DecoderSpec::has_rope`).
    rope: bool,
}

pub struct Decoder {
    pub cfg: Config,
    pub opts: DecoderOpts,
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub inter: usize,
    pub vocab: usize,
    pub eos: Vec<u32>,
    /// How sequences' caches store keys and values: f16 beside a quantized base, f32 beside an
    /// f32 one (`set_kv_dtype` overrides).
    kv_dtype: KvDtype,
    inv_freq: Vec<f32>,
    /// Local layers' inverse frequencies, where the spec has local layers.
    inv_freq_local: Option<Vec<f32>>,
    embed: QWeight,
    lm_head: Option<QWeight>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    /// This decoder among those the process made: adapters resolve their pairs by slot once
    /// per decoder (`LoadedAdapter::slot_terms`).
    id: u64,
    /// The precision LoRA factors are read in beside a quantized base.
    factors: FactorDtype,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Decoder({} layers, hidden {}, {})", self.layers.len(), self.hidden, self.weight_format())
    }
}

/// One row of a step: the new tokens of a sequence, its cache and its adapter.
pub struct Row<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SeqCache,
    pub adapter: Option<&'a LoadedAdapter>,
}

impl Decoder {
    pub fn new(spec: DecoderSpec, src: &mut dyn Source) -> Result<Decoder> {
        let cfg = spec.cfg.clone();
        let (hidden, nh) = (cfg.hidden_size, cfg.num_attention_heads);
        let (n_kv, hd) = cfg.dims()?;
        let (inter, vocab) = (cfg.intermediate_size, cfg.vocab_size);
        let shapes = super::llama::layer_shapes(&spec, n_kv, hd);
        let plus = spec.opts.norm_plus_one;
        let norm_of = |src: &mut dyn Source, name: &str, len: usize| -> Result<Vec<f32>> {
            let mut v = src.vector(name, len)?;
            if plus {
                v.iter_mut().for_each(|x| *x += 1.0);
            }
            Ok(v)
        };
        let norm = |src: &mut dyn Source, name: &str| norm_of(src, name, hidden);
        // grown as layers load: a hostile layer count fails at its first missing tensor
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let names: Vec<String> = spec.slots().iter().map(|s| format!("{p}.{s}")).collect();
            let (mut lin, mut bias) = (Vec::with_capacity(names.len()), Vec::with_capacity(names.len()));
            for (n, (r, c)) in names.iter().zip(&shapes) {
                lin.push(src.matrix(&format!("{n}.weight"), *r, *c)?);
                let b = format!("{n}.bias");
                bias.push(if src.has(&b) { Some(src.vector(&b, *r)?) } else { None });
            }
            let norms = spec.layer_norms();
            let named = |src: &mut dyn Source, n: &str| norm(src, &format!("{p}.{n}.weight"));
            let attn_norm = norms.before_attn.map(|n| named(src, n)).transpose()?;
            let ffn_norm = norms.before_mlp.map(|n| named(src, n)).transpose()?;
            let out_norms = match norms.after {
                Some((a, m)) => Some((named(src, a)?, named(src, m)?)),
                None => None,
            };
            let (qw, kw) = spec.qk_norm_widths(nh, n_kv, hd);
            let qk_norm = match spec.opts.qk_norm {
                true => Some((norm_of(src, &format!("{p}.self_attn.q_norm.weight"), qw)?, norm_of(src, &format!("{p}.self_attn.k_norm.weight"), kw)?)),
                false => None,
            };
            layers.push(Layer { attn_norm, ffn_norm, lin, bias, names, index: i, qk_norm, out_norms, local: spec.is_local(i), rope: spec.has_rope(i) });
        }
        let embed = src.matrix("model.embed_tokens.weight", vocab, hidden)?;
        let lm_head = if !cfg.tie_word_embeddings && src.has("lm_head.weight") { Some(src.matrix("lm_head.weight", vocab, hidden)?) } else { None };
        let norm = norm(src, "model.norm.weight")?;
        let (inv_freq, inv_freq_local, rope_mscale) = spec.inv_freqs(hd)?;
        let eos = cfg.eos_ids();
        let quantized = layers.iter().flat_map(|l| l.lin.iter()).any(|w| !w.is_f32());
        let kv_dtype = if quantized { KvDtype::F16 } else { KvDtype::F32 };
        let (id, factors) = (next_id(), if quantized { FactorDtype::Int8 } else { FactorDtype::F32 });
        // the scaling's attention factor (YaRN) kept as the family's would be
        let opts = DecoderOpts { rope_mscale, ..spec.opts };
        Ok(Decoder { n_heads: nh, n_kv, head_dim: hd, hidden, inter, vocab, eos, kv_dtype, inv_freq, inv_freq_local, embed, lm_head, norm, layers, cfg, opts, id, factors })
    }

    fn spec(&self) -> DecoderSpec {
        DecoderSpec { cfg: self.cfg.clone(), opts: self.opts }
    }

    /// This decoder among those the process made (what adapters' `SlotTerms` are made for).
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn max_positions(&self) -> usize {
        self.cfg.max_position_embeddings
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv * self.head_dim
    }
    pub fn layers(&self) -> usize {
        self.layers.len()
    }
    /// KV bytes per cached position.
    pub fn kv_bytes_per_token(&self) -> usize {
        bytes_per_token(self.layers.len(), self.kv_dim(), self.kv_dtype)
    }
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }
    /// Reads LoRA factors in `f` beside its quantized weights (`factors8`). An f32 base reads
    /// them in f32, so asking it for less is refused. Adapters that met this decoder before
    /// keep their copies and look their pairs up the slow way: it counts as a new decoder to
    /// them.
    pub fn set_lora_factors(&mut self, f: FactorDtype) -> Result<()> {
        if f != FactorDtype::F32 && self.layers.iter().flat_map(|l| l.lin.iter()).all(|w| w.is_f32()) {
            return Err(Error::InvalidArgument(format!("LoRA factors in {f} apply beside a quantized base; this one is f32 (load a GGUF base without --dtype f32)")));
        }
        self.factors = f;
        self.id = next_id();
        Ok(())
    }
    /// The precision LoRA factors are read in.
    pub fn lora_factors(&self) -> FactorDtype {
        self.factors
    }
    /// Stores caches made from now on in `dtype` (caches already made keep theirs).
    pub fn set_kv_dtype(&mut self, dtype: KvDtype) {
        self.kv_dtype = dtype;
    }
    /// A cache with room for `capacity` positions.
    pub fn cache(&self, capacity: usize, reservation: Option<super::kv_cache::KvReservation>) -> SeqCache {
        SeqCache::new(self.layers.len(), self.kv_dim(), self.kv_dtype, capacity, reservation)
    }
    /// The projections' storage, e.g. `Q4_1` (`f32` for unquantized bases): each format once
    /// in order of first use, with how many projections have it where they differ (a `Q4_K_M`
    /// file mixes several).
    pub fn weight_format(&self) -> String {
        let mut seen: Vec<(String, usize)> = vec![];
        for f in self.layers.iter().flat_map(|l| l.lin.iter()).map(QWeight::format) {
            match seen.iter_mut().find(|(s, _)| *s == f) {
                Some((_, n)) => *n += 1,
                None => seen.push((f, 1)),
            }
        }
        match seen.len() {
            1 => seen.remove(0).0,
            _ => seen.iter().map(|(f, n)| format!("{f} x{n}")).collect::<Vec<_>>().join(", "),
        }
    }
    /// Bytes of frozen weights held.
    pub fn weight_bytes(&self) -> usize {
        let lin: usize = self.layers.iter().flat_map(|l| l.lin.iter()).map(QWeight::bytes).sum();
        lin + self.embed.bytes() + self.lm_head.as_ref().map_or(0, QWeight::bytes)
    }
    fn head(&self) -> &QWeight {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Runs every row's new tokens through the model, appends their keys and values to the
    /// rows' caches, and returns each row's logits for its last token. On error no cache has
    /// changed.
    pub fn step(&self, rows: &mut [Row]) -> Result<Vec<Vec<f32>>> {
        // on a pool thread, so the forward's many small parallel loops do not each cross threads
        let r = rayon::scope(|_| self.forward(rows));
        for row in rows.iter_mut() {
            if r.is_err() {
                row.cache.rollback();
            }
        }
        let logits = r?;
        for row in rows.iter_mut() {
            row.cache.advance(row.tokens.len());
        }
        Ok(logits)
    }

    fn forward(&self, rows: &mut [Row]) -> Result<Vec<Vec<f32>>> {
        let (h, nh, nkv, hd) = (self.hidden, self.n_heads, self.n_kv, self.head_dim);
        let kvd = nkv * hd;
        let mut tok_row = vec![];
        let mut tok_pos = vec![];
        let mut ids = vec![];
        for (ri, r) in rows.iter().enumerate() {
            if r.tokens.is_empty() {
                return Err(Error::InvalidArgument("a row with no tokens".into()));
            }
            let p0 = r.cache.len();
            let end = p0 + r.tokens.len();
            if end > self.max_positions() || end > r.cache.capacity() {
                return Err(Error::InvalidArgument(format!(
                    "{end} positions exceed the context ({} positions, cache room {})",
                    self.max_positions(),
                    r.cache.capacity()
                )));
            }
            if r.cache.kv_dim() != kvd || r.cache.k.len() != self.layers.len() || (!r.cache.is_empty() && r.cache.k[0].len() != r.cache.len() * kvd) {
                return Err(Error::Model("a cache made for another model".into()));
            }
            for (i, &t) in r.tokens.iter().enumerate() {
                if t as usize >= self.vocab {
                    return Err(Error::InvalidArgument(format!("token id {t} is outside the vocabulary ({})", self.vocab)));
                }
                tok_row.push(ri);
                tok_pos.push(p0 + i);
                ids.push(t);
            }
        }
        let n = ids.len();
        let mut x = vec![0f32; n * h];
        for (t, &id) in ids.iter().enumerate() {
            self.embed.row(id as usize, &mut x[t * h..][..h])?;
        }
        // embedding LoRA (inside the embedding, so before any scaling)
        let emb_pairs: Vec<Option<&super::lora::LoraPair>> = tok_row.iter().map(|&r| rows[r].adapter.and_then(|a| a.modules.get(EMBED))).collect();
        if emb_pairs.iter().any(Option::is_some) {
            super::lora::embedding_delta_host(&mut x, &ids, &emb_pairs)?;
        }
        if self.opts.embed_scale {
            let k = (h as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= k);
        }
        if let Some(m) = self.opts.scales {
            x.iter_mut().for_each(|v| *v *= m.embedding);
        }
        let residual = self.opts.scales.map(|m| m.residual);
        // rotary tables for each token's position (and for local layers, where they differ)
        let half = self.inv_freq.len();
        let tables = |inv: &[f32], mscale: Option<f32>| {
            let (mut cos, mut sin) = (vec![0f32; n * half], vec![0f32; n * half]);
            for t in 0..n {
                for (i, f) in inv.iter().enumerate() {
                    let a = tok_pos[t] as f32 * f;
                    (cos[t * half + i], sin[t * half + i]) = match mscale {
                        Some(m) => (a.cos() * m, a.sin() * m),
                        None => (a.cos(), a.sin()),
                    };
                }
            }
            (cos, sin)
        };
        let global_rope = tables(&self.inv_freq, self.opts.rope_mscale);
        let local_rope = self.inv_freq_local.as_deref().map(|l| tables(l, None));
        let adapters: Vec<Option<&LoadedAdapter>> = tok_row.iter().map(|&r| rows[r].adapter).collect();
        let (mut xn, mut q, mut k, mut v) = (vec![0f32; n * h], vec![0f32; n * nh * hd], vec![0f32; n * kvd], vec![0f32; n * kvd]);
        let (mut attn, mut tmp) = (vec![0f32; n * nh * hd], vec![0f32; n * h]);
        let (mut g, mut u) = (vec![0f32; n * self.inter], vec![0f32; n * self.inter]);
        let fused = self.opts.fused;
        // a fused layer's [q; k; v] and [gate; up] outputs, split after the product
        let (mut qkv, mut gu) = if fused { (vec![0f32; n * (nh * hd + 2 * kvd)], vec![0f32; n * 2 * self.inter]) } else { (vec![], vec![]) };
        let spec = self.spec();
        let act_fn = self.opts.act;
        let eps = self.cfg.rms_norm_eps as f32;
        let scale = super::attention::Scores { scale: spec.attn_scale(hd) as f32, cap: self.opts.attn_softcap };
        let rep = nh / nkv;
        // the 8-bit rows the quantized matrices read, made by the steps that make the rows
        let q8 = self.layers.iter().flat_map(|l| l.lin.iter()).any(|w| !w.is_f32());
        let (mut xq, mut gq) = (blocks_for(q8, n, h), blocks_for(q8, n, self.inter));
        // attention's tasks each quantize their group of heads: whole blocks only
        let mut aq = blocks_for(q8 && (rep * hd).is_multiple_of(QK), n, nh * hd);
        // the first layer's input norm; each later one is made with the residual add before it
        if let Some(l) = self.layers.first() {
            pre_norm(&x, l.attn_norm.as_deref(), eps, &mut xn, h, xq.as_deref_mut());
        }
        for (li, l) in self.layers.iter().enumerate() {
            {
                let act = Act::with_q8(&xn, n, h, xq.as_deref());
                if fused {
                    self.linears(l, &act, &adapters, &mut [(0, &mut qkv)])?;
                    add_bias(&mut qkv, l.bias[0].as_deref());
                    let w = nh * hd + 2 * kvd;
                    for t in 0..n {
                        let r = &qkv[t * w..][..w];
                        q[t * nh * hd..][..nh * hd].copy_from_slice(&r[..nh * hd]);
                        k[t * kvd..][..kvd].copy_from_slice(&r[nh * hd..][..kvd]);
                        v[t * kvd..][..kvd].copy_from_slice(&r[nh * hd + kvd..]);
                    }
                } else {
                    self.linears(l, &act, &adapters, &mut [(0, &mut q), (1, &mut k), (2, &mut v)])?;
                    add_bias(&mut q, l.bias[0].as_deref());
                    add_bias(&mut k, l.bias[1].as_deref());
                    add_bias(&mut v, l.bias[2].as_deref());
                }
            }
            let (o_slot, mlp0) = if fused { (1, 2) } else { (3, 4) };
            let (cos, sin) = match (&local_rope, l.local) {
                (Some(t), true) => t,
                _ => &global_rope,
            };
            // each head's hd values (OLMo 2: a token's whole q and k) normalized, then RoPE
            let norms = l.qk_norm.as_ref().map(|(qn, kn)| (&qn[..], &kn[..]));
            let turn = l.rope.then_some(Rotary { hd, half, cos, sin });
            let spec = &spec;
            // attention from the cache of positions lo..=p (a sliding window starts the keys
            // later), one group of query heads sharing a cached head at a time
            let attend = |kc: &super::kv_cache::KvStore, vc: &super::kv_cache::KvStore, p: usize, qg: &[f32], kvh: usize, out: &mut [f32]| {
                let lo = spec.window_start(l.local, p);
                attend_group(qg, hd, kc.rows(lo * kvd), vc.rows(lo * kvd), kvd, kvh * hd, p - lo, scale, out);
            };
            // each (token, head group) is independent; small steps stay on this thread
            let work: usize = tok_pos.iter().map(|p| (p + 1) * nh * hd).sum();
            if rows.len() == n {
                // a decode step (one token a row): one task a row does its norms and RoPE, its
                // cache's new position and its attention, so the step has one parallel region
                // here instead of two with the cache writes between them
                let mut aq_rows: Vec<Option<&mut [super::quant::Q8]>> = match aq.as_deref_mut() {
                    Some(a) => a.chunks_mut(nh * hd / QK).map(Some).collect(),
                    None => (0..n).map(|_| None).collect(),
                };
                let tasks: Vec<_> = rows.iter_mut().zip(q.chunks_mut(nh * hd)).zip(k.chunks_mut(kvd)).zip(v.chunks(kvd)).zip(attn.chunks_mut(nh * hd)).zip(aq_rows.drain(..)).enumerate().collect();
                let one = |(t, (((((row, qr), kr), vr), out), oq)): (usize, (((((&mut Row, &mut [f32]), &mut [f32]), &[f32]), &mut [f32]), Option<&mut [super::quant::Q8]>))| {
                    qk_row(qr, kr, t, norms, eps, turn.as_ref());
                    row.cache.push(li, kr, vr);
                    let (kc, vc) = (&row.cache.k[li], &row.cache.v[li]);
                    for kvh in 0..nkv {
                        let g = kvh * rep * hd..(kvh + 1) * rep * hd;
                        attend(kc, vc, tok_pos[t], &qr[g.clone()], kvh, &mut out[g]);
                    }
                    if let Some(oq) = oq {
                        quantize_row(out, oq);
                    }
                };
                if work > 1 << 16 {
                    tasks.into_par_iter().for_each(one);
                } else {
                    tasks.into_iter().for_each(one);
                }
            } else {
                qk_rows(&mut q, &mut k, n, norms, eps, turn.as_ref());
                for t in 0..n {
                    rows[tok_row[t]].cache.push(li, &k[t * kvd..][..kvd], &v[t * kvd..][..kvd]);
                }
                let caches: Vec<_> = rows.iter().map(|r| (&r.cache.k[li], &r.cache.v[li])).collect();
                let (q, tok_row, tok_pos) = (&q, &tok_row, &tok_pos);
                // one task per (token, key/value head): the `rep` query heads sharing a cached
                // head read it together (their outputs are adjacent in `attn`)
                let one = |(i, (out, oq)): (usize, (&mut [f32], Option<&mut [super::quant::Q8]>))| {
                    let (t, kvh) = (i / nkv, i % nkv);
                    let (kc, vc) = caches[tok_row[t]];
                    attend(kc, vc, tok_pos[t], &q[t * nh * hd + kvh * rep * hd..][..rep * hd], kvh, out);
                    if let Some(oq) = oq {
                        quantize_row(out, oq);
                    }
                };
                let gw = rep * hd / QK;
                match (work > 1 << 16, aq.as_deref_mut()) {
                    (true, Some(aq)) => attn.par_chunks_mut(rep * hd).zip(aq.par_chunks_mut(gw).map(Some)).enumerate().for_each(one),
                    (true, None) => attn.par_chunks_mut(rep * hd).map(|o| (o, None)).enumerate().for_each(one),
                    (false, Some(aq)) => attn.chunks_mut(rep * hd).zip(aq.chunks_mut(gw).map(Some)).enumerate().for_each(one),
                    (false, None) => attn.chunks_mut(rep * hd).map(|o| (o, None)).enumerate().for_each(one),
                }
            }
            {
                let act = Act::with_q8(&attn, n, nh * hd, aq.as_deref());
                self.linears(l, &act, &adapters, &mut [(o_slot, &mut tmp)])?;
                add_bias(&mut tmp, l.bias[o_slot].as_deref());
            }
            let after = l.out_norms.as_ref().map(|(a, _)| &a[..]);
            residual_rows(&mut x, &mut tmp, after, residual, eps, h, Some(NextNorm { w: l.ffn_norm.as_deref(), out: &mut xn, q: xq.as_deref_mut() }));
            {
                let act = Act::with_q8(&xn, n, h, xq.as_deref());
                let it = self.inter;
                if fused {
                    self.linears(l, &act, &adapters, &mut [(mlp0, &mut gu)])?;
                    add_bias(&mut gu, l.bias[mlp0].as_deref());
                    for t in 0..n {
                        g[t * it..][..it].copy_from_slice(&gu[t * 2 * it..][..it]);
                        u[t * it..][..it].copy_from_slice(&gu[t * 2 * it + it..][..it]);
                    }
                } else {
                    self.linears(l, &act, &adapters, &mut [(mlp0, &mut g), (mlp0 + 1, &mut u)])?;
                    add_bias(&mut g, l.bias[mlp0].as_deref());
                    add_bias(&mut u, l.bias[mlp0 + 1].as_deref());
                }
            }
            // per token row, in parallel where there are several: thousands of exps a row,
            // which on one thread sent the other to sleep before the next product (each
            // element is computed alike either way)
            gate_rows(&mut g, &u, self.inter, act_fn, gq.as_deref_mut());
            let down = l.lin.len() - 1;
            {
                let act = Act::with_q8(&g, n, self.inter, gq.as_deref());
                self.linears(l, &act, &adapters, &mut [(down, &mut tmp)])?;
                add_bias(&mut tmp, l.bias[down].as_deref());
            }
            let after = l.out_norms.as_ref().map(|(_, a)| &a[..]);
            let next = self.layers.get(li + 1).map(|nl| NextNorm { w: nl.attn_norm.as_deref(), out: &mut xn, q: xq.as_deref_mut() });
            residual_rows(&mut x, &mut tmp, after, residual, eps, h, next);
        }
        // logits for each row's last token only
        let mut last = Vec::with_capacity(rows.len() * h);
        let mut end = 0;
        for r in rows.iter() {
            end += r.tokens.len();
            last.extend_from_slice(&x[(end - 1) * h..][..h]);
        }
        let nr = rows.len();
        let mut ln = vec![0f32; nr * h];
        let mut lq = blocks_for(!self.head().is_f32(), nr, h);
        rms_norm_rows(&last, &self.norm, eps, &mut ln, h, lq.as_deref_mut());
        let mut logits = vec![0f32; nr * self.vocab];
        let none: Vec<Option<LowRank>> = (0..nr).map(|_| None).collect();
        matmul(self.head(), &Act::with_q8(&ln, nr, h, lq.as_deref()), &none, &mut logits)?;
        if let Some(m) = self.opts.scales {
            logits.iter_mut().for_each(|l| *l /= m.logits);
        }
        if let Some(c) = self.opts.final_softcap {
            logits.iter_mut().for_each(|l| *l = super::llama::softcap(*l, c));
        }
        Ok(logits.chunks(self.vocab).map(<[f32]>::to_vec).collect())
    }

    /// Projections `slot` of layer `l` for every token, each token with its own adapter's term,
    /// all in one parallel region: `outs` pairs a slot with its output.
    fn linears(&self, l: &Layer, act: &Act, adapters: &[Option<&LoadedAdapter>], outs: &mut [(usize, &mut [f32])]) -> Result<()> {
        let cols = act.cols;
        let mut terms: Vec<Vec<Option<Copies>>> = Vec::with_capacity(outs.len());
        // DoRA tokens' output scales g per slot, found in the same pass (biases are added after)
        let mut scales: Vec<(usize, usize, std::borrow::Cow<'_, Vec<f32>>)> = vec![];
        let all_names = || self.layers.iter().flat_map(|l| l.names.iter().cloned()).collect();
        for (oi, (slot, _)) in outs.iter().enumerate() {
            let (name, w) = (&l.names[*slot], &l.lin[*slot]);
            let mut copies = Vec::with_capacity(act.n);
            for (t, a) in adapters.iter().enumerate() {
                // beside a quantized base, a plain pair's copies by slot (no path hashed)
                if let (Some(a), false) = (a, w.is_f32()) {
                    if let Some(c) = a.slot_terms(self.id, l.names.len(), self.factors, all_names)?.and_then(|s| s.get(l.index, *slot)) {
                        copies.push(c);
                        continue;
                    }
                }
                let pair = a.and_then(|a| a.modules.get(name));
                if let Some(g) = pair.map(|p| p.dora_scale_rows(w.rows, w.cols, &|r, out| w.row(r, out))).transpose()?.flatten() {
                    scales.push((oi, t, g));
                }
                copies.push(match pair {
                    // beside an f32 base the factors stay f32 (PEFT-exact); beside a quantized
                    // one they are read in the decoder's precision (`factors8::FactorDtype`)
                    Some(p) if w.is_f32() => Some(Copies::F32(p.host_copies()?)),
                    Some(p) => Some(Copies::quantized(p, self.factors)?),
                    None => None,
                });
            }
            for c in copies.iter().flatten() {
                let (a, bt) = c.parts();
                if a.len() % cols != 0 || !bt.fits(a.len() / cols, w.rows) {
                    return Err(Error::Model(format!("{name}: an adapter pair does not fit the layer")));
                }
            }
            terms.push(copies);
        }
        // h = A x per token is made inside the parallel region (s is folded into (s·B)ᵀ)
        let views: Vec<Vec<Option<LowRank>>> = terms
            .iter()
            .map(|copies| {
                copies
                    .iter()
                    .map(|c| {
                        c.as_ref().map(|c| {
                            let (a, bt) = c.parts();
                            LowRank::new(a, bt)
                        })
                    })
                    .collect()
            })
            .collect();
        let mut jobs: Vec<Job> = outs.iter_mut().zip(&views).map(|((slot, y), lora)| Job { w: &l.lin[*slot], lora, y }).collect();
        matmul_many(act, &mut jobs)?;
        drop(jobs);
        for (oi, t, g) in scales {
            let (slot, y) = &mut outs[oi];
            let rows = l.lin[*slot].rows;
            y[t * rows..][..rows].iter_mut().zip(g.iter()).for_each(|(v, g)| *v *= g);
        }
        Ok(())
    }
}

