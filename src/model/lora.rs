//! The one LoRA seam. `LoraLinear` is a frozen base linear layer that adds, per batch row,
//! the low-rank update of whichever adapter that row names: `y = x W^T + b + s (x A^T) B^T`.
//! A batch whose rows name different adapters runs in one forward: the base matmul is shared,
//! and the low-rank parts are gathered per row into one batched matmul (base weights are never
//! copied). Also owns `LoadedAdapter` (an adapter's tensors on a device) and `Routing` (which
//! row uses which adapter). Knows nothing of model architectures or the store.

use crate::base::Arch;
use crate::error::{Error, Result};
use crate::peft::{self, safetensors::SafeView, KeyKind, LoraConfig};
use crate::util::Rng;
use candle_core::{DType, Device, Tensor, D};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// One module's low-rank pair. `a` is `[r, in]`, `b` is `[out, r]` (PEFT layout).
#[derive(Clone, Debug)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    /// DoRA's magnitude `m` (`[out]`), for adapters saved with `use_dora`: the layer's output
    /// becomes `g ⊙ (W x + s B A x) + bias` with `g = m / ‖W + s B A‖` per output row.
    pub magnitude: Option<Tensor>,
    /// Host copies `(A, (s·B)ᵀ)` for the CPU mixed-batch kernel, made on first use; `None` for
    /// pairs whose tensors change in place (training), which are copied every time.
    pub host: Option<Arc<HostCache>>,
}

/// A pair's `(A, (s·B)ᵀ)`, row-major `[r, in]` and `[r, out]`, in host memory.
pub type HostCopies = (Vec<f32>, Vec<f32>);
/// The same as IEEE half-precision bits: what the CPU decoder reads beside a quantized base,
/// where half the memory traffic matters and the base's own rounding is far larger. `(s·B)ᵀ` is
/// blocked by 8 outputs (`quant::block8`), so a range of outputs is one contiguous read.
pub type HostCopies16 = (Vec<u16>, Vec<u16>);

/// The canonical module an embedding LoRA attaches to, if `name` is one (`*.embed_tokens`,
/// `*.word_embeddings`).
pub fn is_embedding(name: &str) -> bool {
    name.ends_with("embed_tokens") || name.ends_with("word_embeddings")
}

/// `x[t] += s B A[:, ids[t]]` for each token row of `x` (`[n, hidden]`) whose pair is given:
/// an embedding LoRA's lookup (`A`'s column per token, up-projected).
pub fn embedding_delta_host(x: &mut [f32], ids: &[u32], pairs: &[Option<&LoraPair>]) -> Result<()> {
    let n = ids.len();
    if n == 0 {
        return Ok(());
    }
    let hid = x.len() / n;
    for (t, (&id, p)) in ids.iter().zip(pairs).enumerate() {
        let Some(p) = p else { continue };
        let c = p.host_copies()?;
        let (a, bt) = (&c.0, &c.1);
        let r = p.rank();
        let vocab = a.len() / r.max(1);
        if id as usize >= vocab || bt.len() != r * hid {
            return Err(Error::Model("an embedding LoRA pair does not fit the embedding".into()));
        }
        let row = &mut x[t * hid..][..hid];
        for k in 0..r {
            let h = a[k * vocab + id as usize];
            row.iter_mut().zip(&bt[k * hid..][..hid]).for_each(|(y, b)| *y += h * b);
        }
    }
    Ok(())
}

/// Borrowed from `cell` (made there on first use), or made for this call without a cell.
fn cached<T: Clone>(cell: Option<&std::sync::OnceLock<T>>, make: impl FnOnce() -> Result<T>) -> Result<Cow<'_, T>> {
    Ok(match cell {
        Some(cell) => match cell.get() {
            Some(c) => Cow::Borrowed(c),
            None => {
                let _ = cell.set(make()?);
                Cow::Borrowed(cell.get().expect("just set"))
            }
        },
        None => Cow::Owned(make()?),
    })
}

/// A pair's host copies, each made on first use.
#[derive(Debug, Default)]
pub struct HostCache {
    f32: std::sync::OnceLock<HostCopies>,
    f16: std::sync::OnceLock<HostCopies16>,
    i8: std::sync::OnceLock<super::factors8::Factors8>,
    /// DoRA's `g` against the base weight, as a device tensor and in host memory, and against
    /// the CPU decoder's (possibly quantized) weight.
    dora: std::sync::OnceLock<Tensor>,
    dora_host: std::sync::OnceLock<Vec<f32>>,
    dora_q: std::sync::OnceLock<Vec<f32>>,
}

impl HostCache {
    /// Bytes of the copies made so far.
    pub fn bytes(&self) -> usize {
        let f32 = self.f32.get().map_or(0, |c| (c.0.len() + c.1.len()) * 4);
        let f16 = self.f16.get().map_or(0, |c| (c.0.len() + c.1.len()) * 2);
        let i8 = self.i8.get().map_or(0, |c| c.a.len() + c.bt.len() + (c.a_d.len() + c.bt_d.len()) * 4);
        let dora = self.dora.get().map_or(0, |t| t.elem_count() * 4);
        let host = [&self.dora_host, &self.dora_q].iter().map(|c| c.get().map_or(0, |v| v.len() * 4)).sum::<usize>();
        f32 + f16 + i8 + dora + host
    }
}

impl LoraPair {
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }
    /// `(s·B)ᵀ`, `[r, out]`: the scaled up-projection the gathered and kernel paths multiply by.
    fn scaled_bt(&self) -> Result<Tensor> {
        Ok((self.b.t()? * self.scale)?)
    }
    /// `(A, (s·B)ᵀ)` in host memory: borrowed from the pair's cache (made on first use), or
    /// copied for this call when the pair's tensors change in place.
    pub fn host_copies(&self) -> Result<Cow<'_, HostCopies>> {
        cached(self.host.as_ref().map(|c| &c.f32), || self.copies_f32())
    }
    /// `host_copies` made for the caller (not kept).
    pub fn copies_f32(&self) -> Result<HostCopies> {
        let a = self.a.flatten_all()?.to_vec1::<f32>()?;
        let bt = self.scaled_bt()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        Ok((a, bt))
    }

    /// `host_copies` rounded to half precision.
    pub fn host_copies_f16(&self) -> Result<Cow<'_, HostCopies16>> {
        cached(self.host.as_ref().map(|c| &c.f16), || self.copies_f16())
    }
    /// `host_copies` rounded to half precision, made for the caller (not kept).
    pub fn copies_f16(&self) -> Result<HostCopies16> {
        let half = |v: &[f32]| v.iter().map(|x| half::f16::from_f32(*x).to_bits()).collect::<Vec<u16>>();
        let c = self.copies_f32()?;
        let r = self.a.dim(0)?;
        let out = c.1.len() / r.max(1);
        Ok((half(&c.0), super::quant::block8(&c.1, r, out)))
    }
    /// `host_copies` in 8 bits (`factors8`), for decoders set to read factors so.
    pub fn host_copies_i8(&self) -> Result<Cow<'_, super::factors8::Factors8>> {
        cached(self.host.as_ref().map(|c| &c.i8), || self.copies_i8())
    }
    /// `host_copies` in 8 bits, made for the caller (not kept).
    pub fn copies_i8(&self) -> Result<super::factors8::Factors8> {
        let c = self.copies_f32()?;
        Ok(super::factors8::Factors8::new(&c.0, &c.1, self.a.dim(0)?))
    }
    /// DoRA's per-output scale `g = m / ‖W + s B A‖` (row norms of the updated weight, detached
    /// as PEFT detaches them) against base weight `w`; `None` for a plain LoRA pair. Made once
    /// per pair where its tensors are fixed (the first base it meets is its base).
    pub fn dora_scale(&self, w: &Tensor) -> Result<Option<Tensor>> {
        let Some(m) = &self.magnitude else { return Ok(None) };
        let make = || -> Result<Tensor> {
            let full = (w + self.delta(1.0)?.detach())?;
            let norm = full.sqr()?.sum(1)?.sqrt()?.detach();
            Ok(m.broadcast_div(&norm)?)
        };
        Ok(Some(cached(self.host.as_ref().map(|c| &c.dora), make)?.into_owned()))
    }

    /// `dora_scale` in host memory.
    pub fn dora_scale_host(&self, w: &Tensor) -> Result<Option<Cow<'_, Vec<f32>>>> {
        if self.magnitude.is_none() {
            return Ok(None);
        }
        let make = || -> Result<Vec<f32>> { Ok(self.dora_scale(w)?.expect("a DoRA pair").to_vec1::<f32>()?) };
        Ok(Some(cached(self.host.as_ref().map(|c| &c.dora_host), make)?))
    }

    /// `dora_scale` against the CPU decoder's weight (`rows` outputs, each read by `row`).
    pub fn dora_scale_rows(&self, rows: usize, cols: usize, row: &dyn Fn(usize, &mut [f32]) -> Result<()>) -> Result<Option<Cow<'_, Vec<f32>>>> {
        let Some(m) = &self.magnitude else { return Ok(None) };
        let make = || -> Result<Vec<f32>> {
            let m = m.to_vec1::<f32>()?;
            let c = self.host_copies()?;
            let (a, bt) = (&c.0, &c.1);
            let r = self.rank();
            if m.len() != rows || a.len() != r * cols || bt.len() != r * rows {
                return Err(Error::Model("a DoRA pair does not fit the layer".into()));
            }
            let mut w = vec![0f32; cols];
            let mut g = Vec::with_capacity(rows);
            for (j, mj) in m.iter().enumerate() {
                row(j, &mut w)?;
                for k in 0..r {
                    let s = bt[k * rows + j];
                    w.iter_mut().zip(&a[k * cols..][..cols]).for_each(|(w, a)| *w += s * a);
                }
                let norm = w.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt() as f32;
                g.push(mj / norm);
            }
            Ok(g)
        };
        Ok(Some(cached(self.host.as_ref().map(|c| &c.dora_q), make)?))
    }

    /// `s * B A`, the dense update merged into `W` (the scale is applied to the small `B`).
    pub fn delta(&self, sign: f64) -> Result<Tensor> {
        Ok((&self.b * (self.scale * sign))?.matmul(&self.a)?)
    }
}

/// An adapter resident on a device: LoRA pairs by canonical module path, and fully saved
/// modules (classification heads) by canonical parameter name (`classifier.weight`).
#[derive(Debug)]
pub struct LoadedAdapter {
    pub id: String,
    pub modules: HashMap<String, LoraPair>,
    pub saved: HashMap<String, Tensor>,
    pub labels: Vec<String>,
    /// Bytes of its tensors as loaded (`resident_bytes` adds the copies made since).
    pub bytes: usize,
    /// The flat tensors this adapter contributes to a `Bank`, by module list; filled only when
    /// its pairs are cacheable (see `LoraPair::host`).
    pub flat: std::sync::OnceLock<Flat>,
    /// Its pairs by projection slot of the first CPU decoder that runs it (`slot_terms`).
    pub slots: std::sync::OnceLock<super::lora_slots::SlotTerms>,
}

/// An adapter's LoRA tensors laid out for a `Bank`: for each module of `modules` in order,
/// `Aᵀ` (`[in, r]`) in `a` and `(s·B)ᵀ` (`[r, out]`) in `b`, zeros where it has no such module.
#[derive(Debug)]
pub struct Flat {
    modules: Vec<String>,
    a: Tensor,
    b: Tensor,
}

impl LoadedAdapter {
    /// Bytes it holds now: its tensors, plus the copies decoders made of its factors as they
    /// met it (an arena of them per decoder slot list, and each pair's own cached copies).
    pub fn resident_bytes(&self) -> usize {
        let pairs: usize = self.modules.values().filter_map(|p| p.host.as_ref()).map(|c| c.bytes()).sum();
        self.bytes + pairs + self.slots.get().map_or(0, |s| s.bytes())
    }
    /// Its pairs by slot of decoder `decoder` (`names`: every slot's module path, layer-major,
    /// `slots` a layer), resolved on first use; `None` when they were resolved for another
    /// decoder, whose rows then look their pairs up by path.
    pub fn slot_terms(&self, decoder: u64, slots: usize, factors: super::factors8::FactorDtype, names: impl FnOnce() -> Vec<String>) -> Result<Option<&super::lora_slots::SlotTerms>> {
        if self.slots.get().is_none() {
            let _ = self.slots.set(super::lora_slots::SlotTerms::build(decoder, slots, factors, &names(), &self.modules)?);
        }
        Ok(self.slots.get().filter(|s| s.is_for(decoder)))
    }
    /// Laid out over `layout` (module, in, out) with rank `r`; cached when the layout repeats.
    fn flat(&self, layout: &[(String, usize, usize)], r: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
        let key: Vec<String> = layout.iter().map(|(m, _, _)| m.clone()).collect();
        if let Some(f) = self.flat.get().filter(|f| f.modules == key) {
            return Ok((f.a.clone(), f.b.clone()));
        }
        let (mut a_parts, mut b_parts) = (vec![], vec![]);
        for (m, d_in, d_out) in layout {
            match self.modules.get(m) {
                Some(p) => {
                    a_parts.push(p.a.t()?.contiguous()?.flatten_all()?);
                    b_parts.push(p.scaled_bt()?.contiguous()?.flatten_all()?);
                }
                None => {
                    a_parts.push(Tensor::zeros(d_in * r, DType::F32, dev)?);
                    b_parts.push(Tensor::zeros(r * d_out, DType::F32, dev)?);
                }
            }
        }
        let (a, b) = (Tensor::cat(&a_parts, 0)?, Tensor::cat(&b_parts, 0)?);
        // pairs that change in place (training) are never cached
        if self.modules.values().all(|p| p.host.is_some()) {
            let _ = self.flat.set(Flat { modules: key, a: a.clone(), b: b.clone() });
        }
        Ok((a, b))
    }
}

/// Every row's LoRA tensors for one mixed forward on an accelerator, gathered once for all
/// modules: row `i` of `a` holds its adapter's flat `Aᵀ` blocks (zeros for base rows), so each
/// module takes a slice instead of stacking 64 adapters' tensors itself (about 200 kernel
/// launches per module before). Needs one rank across the batch's adapters.
pub struct Bank {
    offsets: HashMap<String, (usize, usize, usize, usize)>,
    a: Tensor,
    b: Tensor,
    r: usize,
}

impl Bank {
    /// `None` when the batch's adapters differ in rank (the per-module path handles that).
    fn build(routing: &Routing, dev: &Device) -> Result<Option<Bank>> {
        let mut shapes = std::collections::BTreeMap::new();
        let mut rank = None;
        for a in &routing.adapters {
            for (m, p) in &a.modules {
                if *rank.get_or_insert(p.rank()) != p.rank() {
                    return Ok(None);
                }
                shapes.insert(m.clone(), (p.a.dims()[1], p.b.dims()[0]));
            }
        }
        let Some(r) = rank else { return Ok(None) };
        let layout: Vec<(String, usize, usize)> = shapes.into_iter().map(|(m, (i, o))| (m, i, o)).collect();
        let (mut offsets, mut oa, mut ob) = (HashMap::new(), 0, 0);
        for (m, i, o) in &layout {
            offsets.insert(m.clone(), (oa, ob, *i, *o));
            oa += i * r;
            ob += r * o;
        }
        let (mut a_slots, mut b_slots) = (vec![Tensor::zeros((1, oa), DType::F32, dev)?], vec![Tensor::zeros((1, ob), DType::F32, dev)?]);
        for ad in &routing.adapters {
            let (a, b) = ad.flat(&layout, r, dev)?;
            a_slots.push(a.unsqueeze(0)?);
            b_slots.push(b.unsqueeze(0)?);
        }
        let idx: Vec<u32> = routing.rows.iter().map(|r| r.map(|i| i as u32 + 1).unwrap_or(0)).collect();
        let idx = Tensor::from_vec(idx, routing.rows.len(), dev)?;
        let a = Tensor::cat(&a_slots, 0)?.index_select(&idx, 0)?;
        let b = Tensor::cat(&b_slots, 0)?.index_select(&idx, 0)?;
        Ok(Some(Bank { offsets, a, b, r }))
    }

    /// Per-row `[rows, in, r]` and `[rows, r, out]` for `module`, if any adapter has it.
    fn rows(&self, module: &str) -> Result<Option<(Tensor, Tensor)>> {
        let Some(&(oa, ob, d_in, d_out)) = self.offsets.get(module) else { return Ok(None) };
        let n = self.a.dim(0)?;
        let a = self.a.narrow(1, oa, d_in * self.r)?.contiguous()?.reshape((n, d_in, self.r))?;
        let b = self.b.narrow(1, ob, self.r * d_out)?.contiguous()?.reshape((n, self.r, d_out))?;
        Ok(Some((a, b)))
    }
}

impl LoadedAdapter {
    /// A per-request weighted mix `Σ wᵢ sᵢ Bᵢ Aᵢ x`, as one low-rank pair per module: the
    /// inputs' `A`s stacked and their scaled, weighted `B`s side by side (PEFT's `cat`
    /// combination exactly, built from the factors: no dense update is made). Its rows then run
    /// in any mixed batch like any adapter's. The head and labels are the first input's; all
    /// inputs must share the labels. DoRA adapters cannot be mixed (their rescaling is not
    /// linear in the update).
    pub fn mix(id: &str, inputs: &[(&LoadedAdapter, f64)]) -> Result<LoadedAdapter> {
        let Some((first, _)) = inputs.first() else { return Err(Error::InvalidArgument("an empty adapter mix".into())) };
        for (a, _) in inputs {
            if a.labels != first.labels {
                return Err(Error::InvalidArgument(format!("adapters {} and {} have different labels and cannot be mixed", first.id, a.id)));
            }
            if a.modules.values().any(|p| p.magnitude.is_some()) {
                return Err(Error::InvalidArgument(format!("adapter {} is DoRA: DoRA adapters cannot be mixed per request", a.id)));
            }
        }
        let mut names: Vec<&String> = inputs.iter().flat_map(|(a, _)| a.modules.keys()).collect();
        names.sort();
        names.dedup();
        let mut modules = HashMap::new();
        let mut bytes = 0;
        for m in names {
            let (mut a_parts, mut b_parts) = (vec![], vec![]);
            for (ad, w) in inputs {
                if let Some(p) = ad.modules.get(m) {
                    a_parts.push(p.a.clone());
                    b_parts.push((&p.b * (p.scale * w))?);
                }
            }
            let (a, b) = (Tensor::cat(&a_parts, 0)?, Tensor::cat(&b_parts, 1)?);
            bytes += (a.elem_count() + b.elem_count()) * 4;
            modules.insert(m.clone(), LoraPair { a, b, scale: 1.0, magnitude: None, host: Some(Default::default()) });
        }
        Ok(LoadedAdapter { id: id.into(), modules, saved: first.saved.clone(), labels: first.labels.clone(), bytes, flat: Default::default(), slots: Default::default() })
    }

    /// Builds device tensors from an adapter's safetensors bytes (already checked against the
    /// base at import; checked again here for shapes it relies on).
    pub fn from_peft(id: &str, arch: Arch, config: &LoraConfig, weights: &[u8], labels: Vec<String>, device: &Device) -> Result<Self> {
        let view = SafeView::parse(weights, peft::WEIGHTS_FILE)?;
        let mut a = HashMap::new();
        let mut b = HashMap::new();
        let mut saved = HashMap::new();
        let mut mags = HashMap::new();
        let mut bytes = 0usize;
        for (key, info) in &view.tensors {
            let data = view.to_f32(key, peft::WEIGHTS_FILE)?;
            bytes += data.len() * 4;
            let t = Tensor::from_vec(data, info.shape.as_slice(), device)?;
            match peft::classify_key(key, &config.modules_to_save)? {
                KeyKind::LoraA(m) => {
                    a.insert(arch.canonical(&m), (m, t));
                }
                KeyKind::LoraB(m) => {
                    b.insert(arch.canonical(&m), t);
                }
                KeyKind::Saved(m, p) => {
                    saved.insert(format!("{}.{p}", arch.canonical(&m)), t);
                }
                KeyKind::Magnitude(m) => {
                    mags.insert(arch.canonical(&m), t);
                }
                // an embedding pair is kept in the linear layout: A [r, vocab], B [hidden, r]
                KeyKind::EmbedA(m) => {
                    a.insert(arch.canonical(&m), (m, t));
                }
                KeyKind::EmbedB(m) => {
                    b.insert(arch.canonical(&m), t);
                }
                // a copy of a base weight: `Engine::adapter` checks it equals the base's
                KeyKind::BaseLayer(m, p) => {
                    saved.insert(format!("{}.{p}", arch.canonical(&m)), t);
                }
            }
        }
        let mut modules = HashMap::new();
        for (m, (peft_name, a_t)) in a {
            let b_t = b.remove(&m).ok_or_else(|| Error::TensorMismatch { tensor: m.clone(), detail: "lora_A without lora_B".into() })?;
            let r = a_t.dims().first().copied().unwrap_or(0);
            if a_t.rank() != 2 || b_t.rank() != 2 || r == 0 || b_t.dims()[1] != r {
                let detail = format!("lora_A {:?} and lora_B {:?} are not [r, in] and [out, r] with r > 0", a_t.dims(), b_t.dims());
                return Err(Error::TensorMismatch { tensor: m, detail });
            }
            // PEFT builds each module at `rank_for` and refuses tensors of another rank.
            let want = config.rank_for(&peft_name);
            if r != want {
                return Err(Error::TensorMismatch { tensor: m, detail: format!("rank {r}, but the config gives this module rank {want} (r / rank_pattern)") });
            }
            // patterns match PEFT's module names, not loradex's canonical ones
            let scale = config.scale_for(&peft_name, r);
            let magnitude = mags.remove(&m);
            match &magnitude {
                Some(g) if g.dims() != [b_t.dims()[0]] => {
                    return Err(Error::TensorMismatch { tensor: m, detail: format!("lora_magnitude_vector {:?}, expected [{}]", g.dims(), b_t.dims()[0]) });
                }
                None if config.use_dora => return Err(Error::TensorMismatch { tensor: m, detail: "use_dora without a lora_magnitude_vector".into() }),
                _ => {}
            }
            modules.insert(m, LoraPair { a: a_t, b: b_t, scale, magnitude, host: Some(Default::default()) });
        }
        if let Some(m) = mags.keys().next() {
            return Err(Error::TensorMismatch { tensor: m.clone(), detail: "a DoRA magnitude without its lora_A/lora_B".into() });
        }
        if let Some(m) = b.keys().next() {
            return Err(Error::TensorMismatch { tensor: m.clone(), detail: "lora_B without lora_A".into() });
        }
        Ok(LoadedAdapter { id: id.into(), modules, saved, labels, bytes, flat: Default::default(), slots: Default::default() })
    }
}

/// Which adapter each batch row uses: `rows[i]` indexes `adapters`, `None` is the base alone.
#[derive(Clone, Debug, Default)]
pub struct Routing {
    pub adapters: Vec<Arc<LoadedAdapter>>,
    pub rows: Vec<Option<usize>>,
}

impl Routing {
    pub fn base(n: usize) -> Routing {
        Routing { adapters: vec![], rows: vec![None; n] }
    }
    pub fn single(a: Arc<LoadedAdapter>, n: usize) -> Routing {
        Routing { adapters: vec![a], rows: vec![Some(0); n] }
    }
    /// Each row's pair for `module` (`None`: no adapter, or one without that module).
    pub fn row_pairs(&self, module: &str) -> Vec<Option<&LoraPair>> {
        self.rows.iter().map(|r| r.and_then(|i| self.adapters[i].modules.get(module))).collect()
    }
    /// `Some(choice)` when every row makes the same adapter choice.
    pub fn uniform(&self) -> Option<Option<usize>> {
        let first = *self.rows.first()?;
        self.rows.iter().all(|r| *r == first).then_some(first)
    }
    /// Rows grouped by adapter choice, in first-seen order.
    pub fn groups(&self) -> Vec<(Option<usize>, Vec<usize>)> {
        let mut out: Vec<(Option<usize>, Vec<usize>)> = vec![];
        for (i, r) in self.rows.iter().enumerate() {
            match out.iter_mut().find(|(k, _)| k == r) {
                Some((_, v)) => v.push(i),
                None => out.push((*r, vec![i])),
            }
        }
        out
    }
}

/// Per-forward context: the routing, in training the LoRA dropout, and the gathered `Bank`
/// of a mixed batch on an accelerator (built by the first module that needs it).
pub struct Ctx<'a> {
    pub routing: &'a Routing,
    pub train: bool,
    pub dropout: f32,
    pub rng: RefCell<Rng>,
    /// Built on first use; `None` inside when the batch's ranks differ.
    pub bank: std::cell::OnceCell<Option<Bank>>,
    /// Whether a model may take its hand-written CPU forward (`bert_cpu`) where it has one;
    /// benchmarks turn it off to time candle's.
    pub cpu_kernels: bool,
}

impl<'a> Ctx<'a> {
    pub fn infer(routing: &'a Routing) -> Ctx<'a> {
        Ctx::new(routing, false, 0.0, Rng::new(0))
    }
    pub fn new(routing: &'a Routing, train: bool, dropout: f32, rng: Rng) -> Ctx<'a> {
        Ctx { routing, train, dropout, rng: RefCell::new(rng), bank: Default::default(), cpu_kernels: true }
    }
    fn bank(&self, dev: &Device) -> Result<Option<&Bank>> {
        if self.bank.get().is_none() {
            let _ = self.bank.set(Bank::build(self.routing, dev)?);
        }
        Ok(self.bank.get().and_then(Option::as_ref))
    }
}

/// A frozen linear layer with the LoRA seam.
#[derive(Clone, Debug)]
pub struct LoraLinear {
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl LoraLinear {
    pub fn new(name: String, weight: Tensor, bias: Option<Tensor>) -> Self {
        LoraLinear { name, weight, bias }
    }

    fn base(&self, x2: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let y = x2.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        if ctx.train && x2.track_op() {
            // candle's matmul backward also computes the (frozen, discarded) weight gradient
            let w = self.weight.clone();
            return attach(x2, &y, move |_, _, g| g.matmul(&w));
        }
        Ok(y)
    }

    /// `x`: `[batch, seq, in]` → `[batch, seq, out]`.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (b, s, d_in) = x.dims3()?;
        let x2 = x.reshape((b * s, d_in))?;
        let y = self.base(&x2, ctx)?;
        let out = y.dim(1)?;
        let rows = ctx.routing.row_pairs(&self.name);
        if rows.iter().all(Option::is_none) {
            return Ok(y.reshape((b, s, out))?);
        }
        let dropped = ctx.train && ctx.dropout > 0.0;
        let x_in = if dropped { dropout(&x2, ctx)? } else { x2 };
        let d = self.delta_rows(&x_in, &rows, ctx, (b, s, d_in, out))?;
        let y = y.reshape((b, s, out))?;
        // DoRA rows rescale their output rows; LoRA and base rows keep g = 1
        let scales: Vec<Option<Tensor>> = rows.iter().map(|p| Ok(p.map(|p| p.dora_scale(&self.weight)).transpose()?.flatten())).collect::<Result<_>>()?;
        if scales.iter().all(Option::is_none) {
            return Ok((y + d)?);
        }
        let ones = Tensor::ones(out, DType::F32, x.device())?;
        let g = Tensor::stack(&scales.into_iter().map(|g| g.unwrap_or_else(|| ones.clone())).collect::<Vec<_>>(), 0)?.unsqueeze(1)?;
        if dropped {
            // PEFT under dropout: y + (g - 1) ⊙ W·dropout(x) + g ⊙ Δ
            let wx = x_in.matmul(&self.weight.t()?)?.reshape((b, s, out))?;
            return Ok(((y + wx.broadcast_mul(&(&g - 1.0)?)?)? + d.broadcast_mul(&g)?)?);
        }
        // g ⊙ (W x + Δ) + bias
        let z = (y + d)?;
        Ok(match &self.bias {
            Some(bias) => z.broadcast_sub(bias)?.broadcast_mul(&g)?.broadcast_add(bias)?,
            None => z.broadcast_mul(&g)?,
        })
    }

    /// Each row's low-rank term `s B A x` (`[b, s, out]`; zero for rows without this module).
    fn delta_rows(&self, x_in: &Tensor, rows: &[Option<&LoraPair>], ctx: &Ctx, (b, s, d_in, out): (usize, usize, usize, usize)) -> Result<Tensor> {
        let routing = ctx.routing;
        if routing.uniform().is_some() {
            // one adapter for the whole batch: two skinny matmuls
            let p = rows[0].expect("a uniform batch with this module");
            let h = (x_in.matmul(&p.a.t()?)? * p.scale)?;
            return Ok(h.matmul(&p.b.t()?)?.reshape((b, s, out))?);
        }
        if x_in.device().is_cpu() && !ctx.train {
            return Ok(mixed_lora_cpu(x_in, rows, s, out)?.reshape((b, s, out))?);
        }
        // mixed batch on an accelerator: each row's (Aᵀ, (s·B)ᵀ) from the forward's bank, one
        // batched matmul pair for all rows
        let dev = x_in.device();
        if let Some(bank) = ctx.bank(dev)? {
            if let Some((a_rows, b_rows)) = bank.rows(&self.name)? {
                let h = x_in.reshape((b, s, d_in))?.matmul(&a_rows)?;
                return Ok(h.matmul(&b_rows)?);
            }
        }
        // adapters of different ranks: gather per module, padded to the largest rank; rows
        // without this module get zero slot 0
        let pairs: Vec<Option<&LoraPair>> = routing.adapters.iter().map(|a| a.modules.get(&self.name)).collect();
        let r_max = pairs.iter().flatten().map(|p| p.rank()).max().unwrap_or(1);
        let mut a_slots = vec![Tensor::zeros((1, d_in, r_max), DType::F32, dev)?];
        let mut b_slots = vec![Tensor::zeros((1, r_max, out), DType::F32, dev)?];
        let mut slot_of = vec![0u32; pairs.len()];
        for (i, p) in pairs.iter().enumerate() {
            if let Some(p) = p {
                let pad = r_max - p.rank();
                let at = p.a.t()?.pad_with_zeros(1, 0, pad)?;
                let bt = p.scaled_bt()?.pad_with_zeros(0, 0, pad)?;
                slot_of[i] = a_slots.len() as u32;
                a_slots.push(at.unsqueeze(0)?);
                b_slots.push(bt.unsqueeze(0)?);
            }
        }
        let idx: Vec<u32> = routing.rows.iter().map(|r| r.map(|i| slot_of[i]).unwrap_or(0)).collect();
        let idx = Tensor::from_vec(idx, b, dev)?;
        let a_rows = Tensor::cat(&a_slots, 0)?.index_select(&idx, 0)?; // [b, in, r]
        let b_rows = Tensor::cat(&b_slots, 0)?.index_select(&idx, 0)?; // [b, r, out]
        let h = x_in.reshape((b, s, d_in))?.matmul(&a_rows)?;
        Ok(h.matmul(&b_rows)?)
    }

    /// Adds (or with `sign = -1` removes) a pair's dense update to the frozen weight.
    /// A DoRA pair merges as PEFT merges it: `W' = g ⊙ (W + s B A)` row-wise, and unmerges with
    /// the `g` made against the original weight.
    pub fn merge(&mut self, p: &LoraPair, sign: f64) -> Result<()> {
        if p.magnitude.is_some() && sign < 0.0 && p.host.is_none() {
            return Err(Error::Model(format!("{}: a DoRA pair that is still training cannot be unmerged", self.name)));
        }
        match p.dora_scale(&self.weight)? {
            None => self.weight = (&self.weight + p.delta(sign)?)?,
            Some(g) if sign > 0.0 => self.weight = (&self.weight + p.delta(1.0)?)?.broadcast_mul(&g.unsqueeze(1)?)?,
            Some(g) => self.weight = (self.weight.broadcast_div(&g.unsqueeze(1)?)? - p.delta(1.0)?)?,
        }
        Ok(())
    }
}

/// `y`, computed without a graph, attached to `x` so that backprop asks `back(x, y, dy)` for
/// `dL/dx` and nothing else. The training forward uses it for frozen linear layers (candle's
/// matmul backward would also compute the discarded weight gradient) and for LayerNorm,
/// RMSNorm and softmax, whose fused kernels drop the graph: the fused kernel runs forward and
/// an analytic backward replaces a dozen recorded elementwise nodes. The forward costs a copy
/// of `y`.
pub fn attach(x: &Tensor, y: &Tensor, back: impl Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync + 'static) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(y.clone());
    }
    let y = y.detach().contiguous()?;
    Ok(x.apply_op2(&y, Attached { back: Box::new(back) })?)
}

type Backward = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync>;

struct Attached {
    back: Backward,
}

impl candle_core::CustomOp2 for Attached {
    fn name(&self) -> &'static str {
        "attached-backward"
    }
    fn cpu_fwd(
        &self,
        _x: &candle_core::CpuStorage,
        _lx: &candle_core::Layout,
        y: &candle_core::CpuStorage,
        ly: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        if !ly.is_contiguous() || ly.start_offset() != 0 {
            candle_core::bail!("attached-backward: the precomputed output must be contiguous");
        }
        Ok((y.clone(), ly.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _x: &candle_core::CudaStorage,
        _lx: &candle_core::Layout,
        y: &candle_core::CudaStorage,
        ly: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        if !ly.is_contiguous() || ly.start_offset() != 0 {
            candle_core::bail!("attached-backward: the precomputed output must be contiguous");
        }
        Ok((y.try_clone(ly)?, ly.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some((self.back)(&x.detach(), &res.detach(), grad)?), None))
    }
}

/// The low-rank terms of a mixed batch on the CPU: for each row's tokens `h = s · A x`
/// (dot products over A's contiguous rows), then `d = Bᵀ h` as axpys over Bᵀ's rows. Thousands
/// of tiny per-row matmuls cost far more in GEMM dispatch than this arithmetic does.
/// `x`: `[rows * s, in]`; returns `[rows * s, out]`.
fn mixed_lora_cpu(x: &Tensor, rows: &[Option<&LoraPair>], s: usize, out: usize) -> Result<Tensor> {
    let d_in = x.dim(1)?;
    let xv = x.flatten_all()?.to_vec1::<f32>()?;
    let d = mixed_lora_host(&xv, rows, s, d_in, out)?;
    Ok(Tensor::from_vec(d, (rows.len() * s, out), x.device())?)
}

/// `mixed_lora_cpu` over host memory: `xv` is `[rows * s, d_in]`; returns `[rows * s, out]`.
pub(crate) fn mixed_lora_host(xv: &[f32], rows: &[Option<&LoraPair>], s: usize, d_in: usize, out: usize) -> Result<Vec<f32>> {
    if xv.len() != rows.len() * s * d_in {
        return Err(Error::Model(format!("mixed LoRA: {} inputs for {} rows of {s} x {d_in}", xv.len(), rows.len())));
    }
    // each distinct pair once: A [r, in] and s·Bᵀ [r, out], row-major
    let mut distinct: Vec<*const LoraPair> = vec![];
    // each pair's host copies: borrowed from its cache, or made for this forward
    let mut host: Vec<(usize, Cow<HostCopies>)> = vec![];
    let mut which: Vec<Option<usize>> = Vec::with_capacity(rows.len());
    for r in rows {
        which.push(match r {
            None => None,
            Some(p) => Some(match distinct.iter().position(|q| std::ptr::eq(*q, *p)) {
                Some(i) => i,
                None => {
                    distinct.push(*p);
                    let pair = p.host_copies()?;
                    if pair.0.len() != p.rank() * d_in || pair.1.len() != p.rank() * out {
                        return Err(Error::Model("mixed LoRA: a pair does not match the layer's shape".into()));
                    }
                    host.push((p.rank(), pair));
                    host.len() - 1
                }
            }),
        });
    }
    let mut d = vec![0f32; rows.len() * s * out];
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(rows.len().max(1));
    let per = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        for (ci, chunk) in d.chunks_mut(per * s * out).enumerate() {
            let k = Kernel { xv, host: &host, which: &which, first_row: ci * per, s, d_in, out };
            sc.spawn(move || kernel_rows(&k, chunk));
        }
    });
    Ok(d)
}

/// What one thread of `mixed_lora_host` reads.
struct Kernel<'a> {
    xv: &'a [f32],
    host: &'a [(usize, Cow<'a, HostCopies>)],
    which: &'a [Option<usize>],
    first_row: usize,
    s: usize,
    d_in: usize,
    out: usize,
}

crate::util::simd_dispatch! {
    /// One thread's share of `mixed_lora_host`: rows `k.first_row..` into `chunk`.
    fn kernel_rows(k: &Kernel<'_>, chunk: &mut [f32]) {
        let (s, d_in, out) = (k.s, k.d_in, k.out);
        let mut h = vec![0f32; 0];
        for (ri, drow) in chunk.chunks_mut(s * out).enumerate() {
            let row = k.first_row + ri;
            let Some(slot) = k.which[row] else { continue };
            let (r, pair) = &k.host[slot];
            let (a, bt) = (&pair.0, &pair.1);
            h.resize(*r, 0.0);
            for t in 0..s {
                let xt = &k.xv[(row * s + t) * d_in..][..d_in];
                for (j, hj) in h.iter_mut().enumerate() {
                    *hj = dot(xt, &a[j * d_in..][..d_in]);
                }
                let dt = &mut drow[t * out..][..out];
                for (j, hj) in h.iter().enumerate() {
                    for (o, bv) in dt.iter_mut().zip(&bt[j * out..][..out]) {
                        *o += hj * bv;
                    }
                }
            }
    }
    }
}

/// Dot product in 8 independent lanes so the compiler vectorizes it.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

fn dropout(x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
    if !x.device().is_cpu() {
        // drawn on the accelerator (a host mask costs a transfer per module), seeded from the
        // step's stream so that runs repeat
        x.device().set_seed(ctx.rng.borrow_mut().next_u64())?;
        let keep = Tensor::rand(0f32, 1f32, x.shape(), x.device())?.ge(ctx.dropout as f64)?.to_dtype(DType::F32)?;
        return Ok((x * (keep * (1.0 / (1.0 - ctx.dropout as f64)))?)?);
    }
    let mask = dropout_mask(ctx.dropout, x.elem_count(), &mut ctx.rng.borrow_mut());
    Ok((x * Tensor::from_vec(mask, x.shape(), x.device())?)?)
}

/// An inverted-dropout mask of `n` elements: 0 with probability `p`, else `1 / (1 - p)`.
/// Every training path draws its masks here, in module order, so they agree exactly.
pub(crate) fn dropout_mask(p: f32, n: usize, rng: &mut Rng) -> Vec<f32> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let keep = 1.0 / (1.0 - p);
    let mut mask = vec![0f32; n];
    let start = rng.clone();
    // element i takes draw i of the stream, whichever thread fills it
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut r = start.ahead((c * CHUNK) as u64);
        chunk.iter_mut().for_each(|v| *v = if r.next_f32() < p { 0.0 } else { keep });
    });
    *rng = start.ahead(n as u64);
    mask
}

/// Softmax over the last dim: candle's fused kernel, with `attach`'s analytic backward in
/// training (`dx = y ⊙ (dy - Σ dy ⊙ y)`; the fused kernel alone drops the graph).
pub fn softmax(x: &Tensor, train: bool) -> Result<Tensor> {
    let y = candle_nn::ops::softmax_last_dim(&x.contiguous()?)?;
    if !train {
        return Ok(y);
    }
    attach(x, &y, |_, y, dy| y * dy.broadcast_sub(&(dy * y)?.sum_keepdim(D::Minus1)?)?)
}

/// LayerNorm over the last dim (candle's fused kernel); in training `attach`es the analytic
/// input gradient for a frozen scale and shift: `dx = (g - mean(g) - x̂ mean(g x̂)) / σ`, `g = dy w`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, train: bool) -> Result<Tensor> {
    let y = candle_nn::ops::layer_norm(&x.contiguous()?, w, b, eps as f32)?;
    if !train {
        return Ok(y);
    }
    let w = w.clone();
    attach(x, &y, move |x, _, dy| {
        let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let rstd = (xc.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        let xh = xc.broadcast_mul(&rstd)?;
        let g = dy.broadcast_mul(&w)?;
        let mg = g.mean_keepdim(D::Minus1)?;
        let mgx = (&g * &xh)?.mean_keepdim(D::Minus1)?;
        g.broadcast_sub(&mg)?.sub(&xh.broadcast_mul(&mgx)?)?.broadcast_mul(&rstd)
    })
}

/// RMSNorm over the last dim (candle's fused kernel); in training `attach`es the analytic input
/// gradient for a frozen scale: `dx = r g - x r³ mean(g x)`, `g = dy w`, `r = 1/rms(x)`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, train: bool) -> Result<Tensor> {
    let y = candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?;
    if !train {
        return Ok(y);
    }
    let w = w.clone();
    attach(x, &y, move |x, _, dy| {
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        let g = dy.broadcast_mul(&w)?;
        let mgx = (&g * x)?.mean_keepdim(D::Minus1)?;
        g.broadcast_mul(&r)?.sub(&x.broadcast_mul(&(mgx * r.powf(3.0)?)?)?)
    })
}

/// Embedding lookup for `[b, s]` ids → `[b, s, h]` (differentiable w.r.t. the table).
pub fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, s) = ids.dims2()?;
    let h = table.dim(1)?;
    Ok(table.index_select(&ids.flatten_all()?, 0)?.reshape((b, s, h))?)
}
