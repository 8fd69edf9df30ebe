//! Key/value caches of the CPU decoder, one per sequence, and the byte budget they are reserved
//! against. A sequence reserves room for its whole life (prompt + `max_tokens`) when it is
//! admitted, so the running set can never outgrow the budget, and the reservation comes back
//! when the cache is dropped (finished, cancelled or failed). Owns no model math and no
//! scheduling policy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes of KV cache a model needs per token: keys and values, f32, every layer.
pub fn bytes_per_token(layers: usize, kv_dim: usize) -> usize {
    layers * kv_dim * 2 * std::mem::size_of::<f32>()
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
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    len: usize,
    capacity: usize,
    kv_dim: usize,
    _reservation: Option<KvReservation>,
}

impl SeqCache {
    /// Room for `capacity` positions (memory grows as positions are written).
    pub fn new(layers: usize, kv_dim: usize, capacity: usize, reservation: Option<KvReservation>) -> SeqCache {
        SeqCache {
            k: (0..layers).map(|_| Vec::new()).collect(),
            v: (0..layers).map(|_| Vec::new()).collect(),
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
    /// Bytes written so far.
    pub fn bytes(&self) -> usize {
        bytes_per_token(self.k.len(), self.kv_dim) * self.len
    }
    /// Appends one position's key and value rows to `layer` (the step commits with `advance`).
    pub(crate) fn push(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        self.k[layer].extend_from_slice(k);
        self.v[layer].extend_from_slice(v);
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
