//! Key/value caches of the CPU decoder, one per sequence, and the byte budget they are reserved
//! against. Positions are stored in f32 (beside f32 bases: PEFT-exact) or as f16 bits (beside
//! quantized bases, as llama.cpp does: half the bytes every decode step reads, and a rounding
//! far below the base's own). A sequence reserves room for its whole life (prompt + `max_tokens`) when it is
//! admitted, so the running set can never outgrow the budget, and the reservation comes back
//! when the cache is dropped (finished, cancelled or failed). Owns no model math and no
//! scheduling policy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How cached keys and values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    F16,
}

impl KvDtype {
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
        }
    }
}

/// Bytes of KV cache a model needs per token: keys and values, every layer.
pub fn bytes_per_token(layers: usize, kv_dim: usize, dtype: KvDtype) -> usize {
    layers * kv_dim * 2 * dtype.bytes()
}

/// One layer's keys or values, `[position][kv_dim]` row-major.
#[derive(Debug)]
pub enum KvStore {
    F32(Vec<f32>),
    /// f16 bits, rounded to nearest even.
    F16(Vec<u16>),
}

impl KvStore {
    fn new(dtype: KvDtype) -> KvStore {
        match dtype {
            KvDtype::F32 => KvStore::F32(Vec::new()),
            KvDtype::F16 => KvStore::F16(Vec::new()),
        }
    }
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            KvStore::F32(v) => v.len(),
            KvStore::F16(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn extend(&mut self, x: &[f32]) {
        match self {
            KvStore::F32(v) => v.extend_from_slice(x),
            KvStore::F16(v) => {
                // the slice conversion (F16C, 8 at a time where the CPU has it; the same
                // round-to-nearest-even bits as one at a time)
                use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
                let s = v.len();
                v.resize(s + x.len(), 0);
                v[s..].reinterpret_cast_mut::<half::f16>().convert_from_f32_slice(x);
            }
        }
    }
    fn truncate(&mut self, n: usize) {
        match self {
            KvStore::F32(v) => v.truncate(n),
            KvStore::F16(v) => v.truncate(n),
        }
    }
    /// The rows from value `from` on, as the attention kernels read them.
    pub fn rows(&self, from: usize) -> super::quant::KvRows<'_> {
        match self {
            KvStore::F32(v) => super::quant::KvRows::F32(&v[from..]),
            KvStore::F16(v) => super::quant::KvRows::F16(&v[from..]),
        }
    }
}

/// A byte budget shared by every sequence's cache.
#[derive(Clone, Debug)]
pub struct KvBudget {
    total: usize,
    used: Arc<AtomicUsize>,
}

/// Bytes held out of a `KvBudget`; returned on drop.
#[derive(Debug)]
pub struct KvReservation {
    bytes: usize,
    used: Arc<AtomicUsize>,
}

impl Drop for KvReservation {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl KvBudget {
    pub fn new(total: usize) -> KvBudget {
        KvBudget { total, used: Default::default() }
    }
    pub fn total(&self) -> usize {
        self.total
    }
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
    /// Holds `bytes` if they fit beside what is already held.
    pub fn try_reserve(&self, bytes: usize) -> Option<KvReservation> {
        let mut cur = self.used.load(Ordering::Acquire);
        loop {
            let next = cur.checked_add(bytes).filter(|n| *n <= self.total)?;
            match self.used.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(KvReservation { bytes, used: self.used.clone() }),
                Err(now) => cur = now,
            }
        }
    }
}

/// One sequence's keys and values: per layer, `[position][kv_heads · head_dim]` row-major.
#[derive(Debug)]
pub struct SeqCache {
    pub(crate) k: Vec<KvStore>,
    pub(crate) v: Vec<KvStore>,
    dtype: KvDtype,
    len: usize,
    capacity: usize,
    kv_dim: usize,
    _reservation: Option<KvReservation>,
}

impl SeqCache {
    /// Room for `capacity` positions (memory grows as positions are written).
    pub fn new(layers: usize, kv_dim: usize, dtype: KvDtype, capacity: usize, reservation: Option<KvReservation>) -> SeqCache {
        SeqCache {
            k: (0..layers).map(|_| KvStore::new(dtype)).collect(),
            v: (0..layers).map(|_| KvStore::new(dtype)).collect(),
            dtype,
            len: 0,
            capacity,
            kv_dim,
            _reservation: reservation,
        }
    }
    /// Positions written.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }
    /// Bytes written so far.
    pub fn bytes(&self) -> usize {
        bytes_per_token(self.k.len(), self.kv_dim, self.dtype) * self.len
    }
    /// Appends one position's key and value rows to `layer` (the step commits with `advance`).
    pub(crate) fn push(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        self.k[layer].extend(k);
        self.v[layer].extend(v);
    }
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
    /// Drops positions written by a step that failed, so the cache matches `len` again.
    pub(crate) fn rollback(&mut self) {
        let keep = self.len * self.kv_dim;
        for (k, v) in self.k.iter_mut().zip(&mut self.v) {
            k.truncate(keep);
            v.truncate(keep);
        }
    }
}
