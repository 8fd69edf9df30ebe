//! An adapter's factor copies looked up by a decoder's projection slot instead of by module
//! path. A mixed step used to hash each token's module path into its adapter's `modules` map
//! for every projection of every layer, then follow the pair to its cache: with 32 adapters
//! in a batch, about 6,700 lookups a step over memory no other adapter shares (timed at 2.3 ms
//! a step, against 0.5 ms with every row on one adapter, whose lookups stay cached; both
//! measured with a build running beside them). `SlotTerms` resolves
//! every slot of one decoder once, the first time the adapter meets it, into a flat list of
//! its pairs' shared host caches, in the precision the decoder reads factors in. Owns that
//! list and `Copies`, a pair's copies as the decoder reads them; makes no copies itself (the
//! pair does) and knows nothing of kernels.

use super::factors8::{FactorDtype, Factors8};
use super::lora::{HostCache, HostCopies, HostCopies16, LoraPair};
use super::quant::Half;
use crate::error::Result;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// A pair's host copies `(A, (s·B)ᵀ)` as the decoder reads them: f32 beside an f32 base, half
/// precision or 8 bits beside a quantized one.
pub enum Copies<'a> {
    F32(Cow<'a, HostCopies>),
    F16(Cow<'a, HostCopies16>),
    I8(Cow<'a, Factors8>),
}

impl<'a> Copies<'a> {
    /// `p`'s copies beside a quantized base, in `factors` (made and kept in its cache on first
    /// use).
    pub fn quantized(p: &'a LoraPair, factors: FactorDtype) -> Result<Copies<'a>> {
        Ok(match factors {
            FactorDtype::F16 => Copies::F16(p.host_copies_f16()?),
            FactorDtype::Int8 => Copies::I8(p.host_copies_i8()?),
        })
    }
    /// `(A, (s·B)ᵀ)`.
    pub fn parts(&self) -> (Half<'_>, Half<'_>) {
        match self {
            Copies::F32(c) => (Half::F32(&c.0), Half::F32(&c.1)),
            Copies::F16(c) => (Half::F16(&c.0), Half::F16x8(&c.1)),
            Copies::I8(c) => (Half::I8 { q: &c.a, d: &c.a_d }, Half::I8x8 { q: &c.bt, d: &c.bt_d }),
        }
    }
}

/// One slot of a decoder, for one adapter.
#[derive(Debug)]
pub enum SlotTerm {
    /// The adapter has no pair on this projection.
    Absent,
    /// A plain LoRA pair whose copies (in the decoder's precision) are made and kept in this
    /// cache.
    Plain(Arc<HostCache>),
    /// Anything else (DoRA, a pair whose tensors change in place): looked up the slow way.
    Other,
}

/// Every slot of the decoder `decoder` (layer-major, `slots` a layer), for one adapter.
#[derive(Debug)]
pub struct SlotTerms {
    decoder: u64,
    slots: usize,
    factors: FactorDtype,
    terms: Vec<SlotTerm>,
}

impl SlotTerms {
    /// Resolves `names` (every slot's module path, layer-major, `slots` a layer) against
    /// `modules`, making each plain pair's copies in `factors` on the way.
    pub fn build(decoder: u64, slots: usize, factors: FactorDtype, names: &[String], modules: &HashMap<String, LoraPair>) -> Result<SlotTerms> {
        let mut terms = Vec::with_capacity(names.len());
        for name in names {
            terms.push(match modules.get(name) {
                None => SlotTerm::Absent,
                Some(p) => match (&p.host, &p.magnitude) {
                    (Some(cache), None) => {
                        Copies::quantized(p, factors)?;
                        SlotTerm::Plain(cache.clone())
                    }
                    _ => SlotTerm::Other,
                },
            });
        }
        Ok(SlotTerms { decoder, slots, factors, terms })
    }
    /// Whether these were resolved for decoder `decoder`.
    pub fn is_for(&self, decoder: u64) -> bool {
        self.decoder == decoder
    }
    /// Slot `slot` of layer `layer`: `None` to take the slow way, `Some(None)` where the
    /// adapter has no pair, else its copies `(A, (s·B)ᵀ)`.
    pub fn get(&self, layer: usize, slot: usize) -> Option<Option<Copies<'_>>> {
        match self.terms.get(layer * self.slots + slot)? {
            SlotTerm::Absent => Some(None),
            SlotTerm::Plain(c) => match self.factors {
                FactorDtype::F16 => c.f16().map(|c| Some(Copies::F16(Cow::Borrowed(c)))),
                FactorDtype::Int8 => c.i8().map(|c| Some(Copies::I8(Cow::Borrowed(c)))),
            },
            SlotTerm::Other => None,
        }
    }
}
