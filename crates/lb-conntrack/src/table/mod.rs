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

/// Whether `entry` is past its deadline at `now_ns`. An expired entry counts as absent
/// everywhere: the GC deletes it, a full table evicts it first, and the pipeline treats a lookup
/// that finds one as a miss (a packet must not bring a dead flow back).
#[inline(always)]
#[must_use]
pub const fn is_expired(entry: &CtEntry, now_ns: u64) -> bool {
    entry.expires_ns <= now_ns
}

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
mod hash;
#[cfg(feature = "std")]
pub use hash::{HashConntrackTable, SweepCounts, MAX_CAPACITY};
