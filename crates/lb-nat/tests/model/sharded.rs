//! A concurrent [`NatTable`] of the model: sharded `Mutex<HashMap>`, each operation
//! atomic under its shard's lock (as a kernel hash map's bucket lock makes `BPF_NOEXIST` atomic).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use super::{NatInsertError, NatKey, NatTable, NatValue};

const SHARDS: usize = 64;

/// A NAT table for many threads, with a fixed capacity (like a preallocated kernel map).
#[derive(Debug)]
pub struct ShardedNatTable {
    shards: Vec<Mutex<HashMap<NatKey, NatValue>>>,
    hasher: RandomState,
    capacity_per_shard: usize,
}

impl ShardedNatTable {
    /// A table of about `capacity` entries (rounded up to a multiple of the shard count).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let per = capacity.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_capacity(per)))
                .collect(),
            hasher: RandomState::new(),
            capacity_per_shard: per,
        }
    }

    fn shard(&self, key: &NatKey) -> MutexGuard<'_, HashMap<NatKey, NatValue>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A shard index below SHARDS always exists; a poisoned lock still guards a consistent
        // map (no operation panics half-way), so take it.
        match self.shards.get(i).or_else(|| self.shards.first()) {
            Some(m) => m.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            None => unreachable_shard(),
        }
    }

    /// Number of entries (both halves of every pair).
    #[must_use]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    /// A copy of every entry.
    #[must_use]
    pub fn entries(&self) -> Vec<(NatKey, NatValue)> {
        let mut v = Vec::new();
        for s in &self.shards {
            let g = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            v.extend(g.iter().map(|(k, v)| (*k, *v)));
        }
        v
    }
}

#[cold]
fn unreachable_shard() -> ! {
    // `new` always creates SHARDS shards.
    std::process::abort()
}

impl NatTable for ShardedNatTable {
    fn insert_if_absent(&self, key: &NatKey, value: &NatValue) -> Result<(), NatInsertError> {
        let mut s = self.shard(key);
        if let Some(v) = s.get(key) {
            return Err(NatInsertError::Exists(*v));
        }
        if s.len() >= self.capacity_per_shard {
            return Err(NatInsertError::Full);
        }
        s.insert(*key, *value);
        Ok(())
    }

    fn compare_and_swap(&self, key: &NatKey, old: &NatValue, new: &NatValue) -> bool {
        let mut s = self.shard(key);
        match s.get_mut(key) {
            Some(v) if v == old => {
                *v = *new;
                true
            }
            _ => false,
        }
    }

    fn remove_if(&self, key: &NatKey, value: &NatValue) -> bool {
        let mut s = self.shard(key);
        if s.get(key) == Some(value) {
            s.remove(key);
            true
        } else {
            false
        }
    }

    fn get(&self, key: &NatKey) -> Option<NatValue> {
        self.shard(key).get(key).copied()
    }
}
