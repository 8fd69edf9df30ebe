//! Resident adapters: an LRU cache bounded in bytes, keyed by digest. An adapter some request
//! still holds (its `Arc` is shared) is never evicted; the store lease keeps `prune` off it.

use crate::digest::Digest;
use crate::model::lora::LoadedAdapter;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Entry {
    pub adapter: Arc<LoadedAdapter>,
    pub last_use: u64,
}

#[derive(Default)]
pub struct Cache {
    pub entries: HashMap<Digest, Entry>,
    pub budget: usize,
    tick: u64,
}

impl Cache {
    pub fn new(budget: usize) -> Cache {
        Cache { entries: HashMap::new(), budget, tick: 0 }
    }

    /// Bytes its adapters hold, copies made since they loaded included.
    pub fn resident_bytes(&self) -> usize {
        self.entries.values().map(|e| e.adapter.resident_bytes()).sum()
    }

    pub fn get(&mut self, d: &Digest) -> Option<Arc<LoadedAdapter>> {
        self.tick += 1;
        let t = self.tick;
        self.entries.get_mut(d).map(|e| {
            e.last_use = t;
            e.adapter.clone()
        })
    }

    /// Inserts and evicts least-recently-used idle adapters until within budget. Returns the
    /// evicted digests (for releasing their store leases).
    pub fn insert(&mut self, d: Digest, a: Arc<LoadedAdapter>) -> Vec<Digest> {
        self.tick += 1;
        self.entries.insert(d, Entry { adapter: a, last_use: self.tick });
        self.trim(Some(&d))
    }

    /// Evicts idle adapters (least recently used first, never `keep`) until within budget.
    /// Adapters busy at one call are retried at the next; the server also calls it (with no
    /// `keep`) whenever requests let their adapters go, so the budget holds once they finish.
    pub fn trim(&mut self, keep: Option<&Digest>) -> Vec<Digest> {
        let mut evicted = vec![];
        // summed once (an adapter's bytes walk its pairs), then less each one evicted
        let mut resident = self.resident_bytes();
        while resident > self.budget {
            let victim = self
                .entries
                .iter()
                .filter(|(k, e)| Some(*k) != keep && Arc::strong_count(&e.adapter) == 1)
                .min_by_key(|(_, e)| e.last_use)
                .map(|(k, _)| *k);
            match victim {
                Some(v) => {
                    if let Some(e) = self.entries.remove(&v) {
                        resident = resident.saturating_sub(e.adapter.resident_bytes());
                    }
                    evicted.push(v);
                }
                None => break, // everything else is in use: over budget until requests finish
            }
        }
        evicted
    }

    pub fn remove(&mut self, d: &Digest) -> bool {
        self.entries.remove(d).is_some()
    }
}
