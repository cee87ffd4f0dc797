//! The conntrack table abstraction and its userspace implementation.
//!
//! # When the table is full
//!
//! * **Kernel** (`LB_CT`, a preallocated `BPF_MAP_TYPE_HASH`): an insert into a full map fails
//!   with `E2BIG`; the pipeline drops the new flow's first packet and counts
//!   `DropReason::ConntrackFull`. The kernel map never evicts anything by itself (it is not an
//!   LRU map), so no established flow is ever lost to a new one; the userspace GC
//!   (`lb_bpf::conntrack_gc`) keeps the map below its budget by deleting expired pairs.
//! * **Userspace** ([`HashConntrackTable`]): an insert into a full table first evicts an expired
//!   flow, then a closing one (FIN/RST seen), and never a live flow in any other state; if there is
//!   none, the insert is refused with [`InsertError::Full`] and counted in [`TableStats`].
//!   Candidates come from a bounded list ([`EVICTION_CANDIDATES`] keys) that each GC sweep refills
//!   with the flows that are closing or will expire before the next sweep, soonest deadline
//!   first; an insert consumes it from the front and checks at most [`EXPIRED_WINDOW`] keys plus
//!   the stale ones it drops for good, so a full-table insert costs O(1) lookups amortized, never
//!   a scan. Evicting a flow removes both of its entries.

use lb_api::abi::{CtEntry, CtKey};

/// How an insert treats an existing entry under the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertMode {
    /// Fail with [`InsertError::Exists`] if the key is present (`BPF_NOEXIST`): the atomic
    /// "reserve" step of an allocation.
    NoExist,
    /// Create or overwrite (`BPF_ANY`).
    Any,
}

/// Why an insert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// An entry with this key exists (with [`InsertMode::NoExist`]).
    Exists,
    /// The table is at capacity and holds nothing it may evict: every entry is a live flow that
    /// is neither expired nor closing (userspace), or the kernel map refused with `E2BIG`.
    Full,
    /// Another error code from the kernel map.
    Other(i32),
}

/// A conntrack table: the kernel's hash map or a userspace table.
///
/// Methods take `&mut self` so that userspace tables need no interior mutability; the kernel
/// implementation is a zero-sized handle on a global map.
pub trait ConntrackTable {
    /// The entry under `key`, for in-place update.
    fn get_mut(&mut self, key: &CtKey) -> Option<&mut CtEntry>;
    /// Inserts `entry` under `key`. A new entry's `last_seen_ns` is taken as "now" when a full
    /// table looks for an expired entry to evict.
    ///
    /// # Errors
    /// [`InsertError`] when the key exists (with [`InsertMode::NoExist`]) or the table is full.
    fn insert(&mut self, key: &CtKey, entry: &CtEntry, mode: InsertMode)
        -> Result<(), InsertError>;
    /// Removes the entry under `key`; whether one was there.
    fn remove(&mut self, key: &CtKey) -> bool;
}

/// Why a userspace table evicted a flow to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvictionReason {
    /// The flow had expired (not yet collected by GC).
    Expired,
    /// The flow was closing (FIN or RST seen) and not yet expired.
    Closing,
}

/// Insert and eviction counters of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableStats {
    /// Inserts refused because the table was full and nothing was evictable.
    pub insert_failures_full: u64,
    /// Inserts refused because the key existed ([`InsertMode::NoExist`]).
    pub insert_failures_exists: u64,
    /// Flows (pairs) evicted because they had expired.
    pub evictions_expired: u64,
    /// Flows (pairs) evicted because they were closing.
    pub evictions_closing: u64,
}

/// Size of the bounded eviction-candidate list of [`HashConntrackTable`].
pub const EVICTION_CANDIDATES: usize = 4096;

/// How many candidates from the front an insert checks for an expired one before it takes a
/// closing flow.
pub const EXPIRED_WINDOW: usize = 8;

#[cfg(feature = "std")]
mod hash {
    use super::{
        ConntrackTable, EvictionReason, InsertError, InsertMode, TableStats, EVICTION_CANDIDATES,
        EXPIRED_WINDOW,
    };
    use crate::pair::partner_key;
    use hashbrown::HashMap;
    use lb_api::abi::{CtEntry, CtKey, CtState};
    use std::vec::Vec;

    /// Userspace conntrack table: a hashbrown map allocated once, refusing inserts beyond its
    /// capacity (like a preallocated kernel hash map) after trying to evict an expired or closing
    /// flow (see the module docs), so no packet allocates.
    ///
    /// The map is allocated for twice the capacity: when deletions leave tombstones, hashbrown
    /// then rehashes in place instead of growing (it grows only above half its buckets' load).
    #[derive(Debug, Clone)]
    pub struct HashConntrackTable {
        map: HashMap<CtKey, CtEntry>,
        capacity: usize,
        candidates: Vec<CtKey>,
        head: usize,
        stats: TableStats,
    }

    impl HashConntrackTable {
        /// A table holding at most `capacity` entries.
        #[must_use]
        pub fn with_capacity(capacity: usize) -> Self {
            Self {
                map: HashMap::with_capacity(capacity.saturating_mul(2).saturating_add(2)),
                capacity,
                candidates: Vec::with_capacity(EVICTION_CANDIDATES),
                head: 0,
                stats: TableStats::default(),
            }
        }

        /// Maximum number of entries.
        #[must_use]
        pub fn capacity(&self) -> usize {
            self.capacity
        }

        /// Number of entries.
        #[must_use]
        pub fn len(&self) -> usize {
            self.map.len()
        }

        /// Whether the table is empty.
        #[must_use]
        pub fn is_empty(&self) -> bool {
            self.map.is_empty()
        }

        /// All entries, in no particular order.
        pub fn iter(&self) -> impl Iterator<Item = (&CtKey, &CtEntry)> {
            self.map.iter()
        }

        /// The entry under `key`.
        #[must_use]
        pub fn get(&self, key: &CtKey) -> Option<&CtEntry> {
            self.map.get(key)
        }

        /// Insert and eviction counters.
        #[must_use]
        pub fn stats(&self) -> TableStats {
            self.stats
        }

        /// Offers a key as an eviction candidate (the GC calls this for entries that are closing
        /// or will expire before its next run, soonest deadline first). Ignored when the list is
        /// full.
        pub fn offer_candidate(&mut self, key: &CtKey) {
            if self.candidates.len() < EVICTION_CANDIDATES {
                self.candidates.push(*key);
            }
        }

        /// Forgets every eviction candidate (the GC does before refilling the list).
        pub fn clear_candidates(&mut self) {
            self.candidates.clear();
            self.head = 0;
        }

        /// Number of eviction candidates not yet used or dropped.
        #[must_use]
        pub fn candidates(&self) -> usize {
            self.candidates.len().saturating_sub(self.head)
        }

        /// Removes the entry under `key` if it has expired at `now_ns` (re-checked here, so a
        /// packet that refreshed it wins), and with it its partner; the removed entry.
        pub fn remove_pair_if_expired(&mut self, key: &CtKey, now_ns: u64) -> Option<CtEntry> {
            let e = *self.map.get(key)?;
            if e.expires_ns > now_ns {
                return None;
            }
            self.map.remove(key);
            if let Some(p) = partner_key(key, &e) {
                self.map.remove(&p);
            }
            Some(e)
        }

        /// Evicts one flow to make room: an expired candidate first, else a closing one.
        ///
        /// Candidates are sorted by deadline (soonest first) and consumed from the front, so
        /// this is O(1) amortized: a refreshed or vanished candidate is dropped once. Deadlines
        /// only move later, so an expired candidate, if any, sits near the front; the first
        /// [`EXPIRED_WINDOW`] are checked for one before a closing flow is taken.
        fn evict_one(&mut self, now_ns: u64) -> Option<EvictionReason> {
            let mut closing_at = None;
            let mut i = self.head;
            // Bounded by the window and by the list's length.
            while i < self.head.saturating_add(EXPIRED_WINDOW) {
                let Some(k) = self.candidates.get(i).copied() else {
                    break;
                };
                if let Some(e) = self.map.get(&k) {
                    if e.expires_ns <= now_ns {
                        return Some(self.evict_at(i, EvictionReason::Expired));
                    }
                    if closing_at.is_none()
                        && CtState::from_u8(e.state).is_some_and(CtState::is_closing)
                    {
                        closing_at = Some(i);
                    }
                }
                i += 1;
            }
            if let Some(i) = closing_at {
                return Some(self.evict_at(i, EvictionReason::Closing));
            }
            // Past the window: drop stale candidates from the front until a closing one.
            while let Some(k) = self.candidates.get(self.head).copied() {
                let closing = self
                    .map
                    .get(&k)
                    .and_then(|e| CtState::from_u8(e.state))
                    .is_some_and(CtState::is_closing);
                if closing {
                    return Some(self.evict_at(self.head, EvictionReason::Closing));
                }
                self.head += 1;
            }
            None
        }

        /// Evicts the flow of candidate `i` (and its partner), retiring the candidate.
        fn evict_at(&mut self, i: usize, reason: EvictionReason) -> EvictionReason {
            let head = self.head;
            if let (Some(k), true) = (self.candidates.get(i).copied(), i >= head) {
                // Retire it by moving the head candidate into its slot.
                self.candidates.swap(i, head);
                self.head += 1;
                if let Some(e) = self.map.remove(&k) {
                    if let Some(p) = partner_key(&k, &e) {
                        self.map.remove(&p);
                    }
                }
            }
            reason
        }
    }

    impl ConntrackTable for HashConntrackTable {
        fn get_mut(&mut self, key: &CtKey) -> Option<&mut CtEntry> {
            self.map.get_mut(key)
        }

        fn insert(
            &mut self,
            key: &CtKey,
            entry: &CtEntry,
            mode: InsertMode,
        ) -> Result<(), InsertError> {
            if let Some(e) = self.map.get_mut(key) {
                return match mode {
                    InsertMode::NoExist => {
                        self.stats.insert_failures_exists += 1;
                        Err(InsertError::Exists)
                    }
                    InsertMode::Any => {
                        *e = *entry;
                        Ok(())
                    }
                };
            }
            if self.map.len() >= self.capacity {
                match self.evict_one(entry.last_seen_ns) {
                    Some(EvictionReason::Expired) => self.stats.evictions_expired += 1,
                    Some(EvictionReason::Closing) => self.stats.evictions_closing += 1,
                    None => {
                        self.stats.insert_failures_full += 1;
                        return Err(InsertError::Full);
                    }
                }
                if self.map.len() >= self.capacity {
                    self.stats.insert_failures_full += 1;
                    return Err(InsertError::Full);
                }
            }
            self.map.insert(*key, *entry);
            Ok(())
        }

        fn remove(&mut self, key: &CtKey) -> bool {
            self.map.remove(key).is_some()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use lb_api::abi::CtKind;
        #[allow(unused_imports)]
        use std::{format, prelude::rust_2021::*, vec};

        fn key(p: u16) -> CtKey {
            CtKey {
                src_port: p,
                proto: 6,
                family: 4,
                ..Default::default()
            }
        }

        fn flow(t: &mut HashConntrackTable, port: u16, state: CtState, expires: u64) -> CtKey {
            let k = CtKey {
                dst_port: 80,
                ..key(port)
            };
            let e = CtEntry {
                state: state as u8,
                proto: 6,
                expires_ns: expires,
                nat_port: 8080,
                ..Default::default()
            };
            let rk = partner_key(&k, &e).unwrap();
            let re = CtEntry { nat_port: 80, ..e };
            t.insert(&rk, &re, InsertMode::NoExist).unwrap();
            t.insert(&k, &e, InsertMode::NoExist).unwrap();
            k
        }

        fn new_entry(now: u64) -> CtEntry {
            CtEntry {
                state: CtState::SynSent as u8,
                last_seen_ns: now,
                expires_ns: now + 100,
                ..Default::default()
            }
        }

        #[test]
        fn capacity_is_enforced_and_noexist_is_honoured() {
            let mut t = HashConntrackTable::with_capacity(2);
            let e = CtEntry::default();
            t.insert(&key(1), &e, InsertMode::NoExist).unwrap();
            assert_eq!(
                t.insert(&key(1), &e, InsertMode::NoExist),
                Err(InsertError::Exists)
            );
            t.insert(&key(1), &e, InsertMode::Any).unwrap();
            t.insert(&key(2), &e, InsertMode::NoExist).unwrap();
            assert_eq!(
                t.insert(&key(3), &e, InsertMode::Any),
                Err(InsertError::Full)
            );
            assert!(t.remove(&key(2)));
            t.insert(&key(3), &e, InsertMode::Any).unwrap();
            assert_eq!(t.len(), 2);
            assert_eq!(
                t.stats(),
                TableStats {
                    insert_failures_full: 1,
                    insert_failures_exists: 1,
                    ..Default::default()
                }
            );
        }

        #[test]
        fn full_table_evicts_expired_then_closing_never_established() {
            let mut t = HashConntrackTable::with_capacity(6);
            let est = flow(&mut t, 1, CtState::Established, 1_000);
            let closing = flow(&mut t, 2, CtState::TimeWait, 1_000);
            let expired = flow(&mut t, 3, CtState::Established, 10);
            for k in [est, closing, expired] {
                t.offer_candidate(&k);
            }
            // At 50 the expired flow goes first, although the closing one was offered earlier.
            t.insert(&key(100), &new_entry(50), InsertMode::NoExist)
                .unwrap();
            assert!(t.get(&expired).is_none());
            assert_eq!(t.len(), 5, "both halves of the evicted flow are gone");
            t.insert(&key(101), &new_entry(50), InsertMode::NoExist)
                .unwrap();
            t.insert(&key(102), &new_entry(50), InsertMode::NoExist)
                .unwrap();
            assert!(t.get(&closing).is_none());
            t.insert(&key(103), &new_entry(50), InsertMode::NoExist)
                .unwrap();
            assert_eq!(
                t.insert(&key(104), &new_entry(50), InsertMode::NoExist),
                Err(InsertError::Full)
            );
            assert!(
                t.get(&est).is_some(),
                "an established flow is never evicted"
            );
            let s = t.stats();
            assert_eq!(
                (
                    s.evictions_expired,
                    s.evictions_closing,
                    s.insert_failures_full
                ),
                (1, 1, 1)
            );
            assert_eq!(
                t.candidates(),
                0,
                "the live established candidate was dropped"
            );
        }

        #[test]
        fn remove_pair_if_expired_rechecks() {
            let mut t = HashConntrackTable::with_capacity(8);
            let k = flow(&mut t, 1, CtState::Established, 100);
            assert!(t.remove_pair_if_expired(&k, 99).is_none());
            t.get_mut(&k).unwrap().expires_ns = 500; // a packet refreshed it
            assert!(t.remove_pair_if_expired(&k, 200).is_none());
            assert!(t.remove_pair_if_expired(&k, 500).is_some());
            assert!(t.is_empty());
            let _ = CtKind::Service;
        }
    }
}

#[cfg(feature = "std")]
pub use hash::HashConntrackTable;
