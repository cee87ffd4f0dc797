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
mod hash {
    use super::{
        ConntrackTable, EvictionReason, InsertError, InsertMode, TableStats, EVICTION_CANDIDATES,
        EXPIRED_WINDOW,
    };
    use crate::pair::partner_key;
    use core::hash::{BuildHasher, Hasher};
    use hashbrown::DefaultHashBuilder;
    use lb_api::abi::{CtEntry, CtKey, CtKind, CtState};
    use std::vec::Vec;

    /// Asks the CPU to start loading the cache line of `item` (no effect if `None` or on
    /// targets without a prefetch instruction).
    #[inline(always)]
    fn prefetch<T>(item: Option<&T>) {
        #[cfg(target_arch = "x86_64")]
        if let Some(item) = item {
            // SAFETY: a prefetch is a hint: it never faults and has no effect on memory, and
            // the pointer comes from a live reference anyway.
            #[allow(unused_unsafe)]
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    core::ptr::from_ref(item).cast::<i8>(),
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = item;
    }

    /// Asks the kernel to back `v`'s allocation with transparent huge pages (a hint: it changes
    /// how the memory is mapped, never its contents; refused or absent THP leaves 4 KiB pages).
    ///
    /// Random lookups in a table of more than a few thousand entries miss the TLB on almost
    /// every slab access with 4 KiB pages, and under virtualization each such miss is a
    /// two-dimensional page walk; with 2 MiB pages a 100k-entry table needs a handful of TLB
    /// entries. Done before the first write, so the pages are faulted in huge.
    fn advise_huge_pages<T>(v: &Vec<T>) {
        #[cfg(target_os = "linux")]
        {
            const PAGE: usize = 4096;
            const HUGE: usize = 2 << 20;
            let bytes = v.capacity().saturating_mul(core::mem::size_of::<T>());
            if bytes < HUGE {
                return;
            }
            let start = (v.as_ptr() as usize).next_multiple_of(PAGE);
            let end = (v.as_ptr() as usize).saturating_add(bytes) & !(PAGE - 1);
            if end > start {
                // SAFETY: the range lies inside `v`'s allocation (rounded inwards to pages) and
                // MADV_HUGEPAGE only changes the backing policy of mapped memory, not its
                // contents or validity; an error is harmless and ignored.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
                }
            }
        }
    }

    /// A key and its entry, side by side so that a hit reads them in one memory access (two
    /// arrays made the entry's load wait on the key comparison: two cache misses in a row).
    /// Aligned to a cache line, so the key and the entry's first 24 bytes (the timestamps a
    /// lookup reads) share the first line of the slot and no slot straddles more lines than it
    /// must; the size follows `CtEntry`'s (rounded up to a multiple of 64).
    #[derive(Debug, Clone, Copy)]
    #[repr(C, align(64))]
    struct Slot {
        key: CtKey,
        entry: CtEntry,
    }

    /// An index word that holds no entry.
    const EMPTY: u64 = 0;

    /// The largest capacity a table takes (slot numbers and probe positions fit in 32 bits).
    pub const MAX_CAPACITY: usize = 1 << 30;

    /// What one in-place sweep did (see [`HashConntrackTable::sweep_expired`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct SweepCounts {
        /// Entries present when the sweep began.
        pub scanned: u64,
        /// Entries deleted (both halves of a flow count).
        pub deleted: u64,
    }

    /// Userspace conntrack table, allocated once at its capacity and refusing inserts beyond it
    /// (like a preallocated kernel hash map) after trying to evict an expired or closing flow
    /// (see the module docs), so no packet allocates.
    ///
    /// # Layout, and why
    /// A key is 40 bytes and an entry 80 (more if `CtEntry` grows), so a hash map holding them
    /// in its buckets spreads 120-byte slots over a bucket array kept at least half empty: a
    /// 100k-entry table spans tens of MB and every hit is a cache and TLB miss. Here each key
    /// and its entry sit in one cache-line-aligned slot of a dense slab (exactly `capacity`
    /// slots; a removed entry's slot goes on a free list), and a separate open-addressed index
    /// of 8-byte words (32 hash bits as a tag, the slot number) is sized at twice the capacity.
    /// A lookup hashes the key once, reads one index cache line in the common case (linear
    /// probing, load ≤ ½), then the slot it tags. Removal shifts the following words of the
    /// probe run back (no tombstones), so the index never needs a rehash and never allocates.
    /// A GC scan walks the slab sequentially.
    ///
    /// The hasher is hashbrown's default (foldhash), seeded per table, fed the key as two
    /// 128-bit and one 64-bit word instead of field by field.
    #[derive(Debug)]
    pub struct HashConntrackTable {
        hasher: DefaultHashBuilder,
        /// `EMPTY`, or the upper 32 bits of the key's hash above the slot number + 1. A word's
        /// home position is its tag masked, so a removal can shift words without rehashing.
        index: Vec<u64>,
        mask: usize,
        slots: Vec<Slot>,
        live: Vec<bool>,
        free: Vec<u32>,
        len: usize,
        capacity: usize,
        candidates: Vec<CtKey>,
        head: usize,
        stats: TableStats,
    }

    /// A clone is allocated at the full capacity like the original (a derived clone would
    /// allocate only what is in use, and its inserts would then allocate).
    impl Clone for HashConntrackTable {
        fn clone(&self) -> Self {
            let mut t = Self::with_capacity(self.capacity);
            t.hasher = self.hasher;
            t.index.clone_from(&self.index);
            t.mask = self.mask;
            t.slots.extend_from_slice(&self.slots);
            t.live.extend_from_slice(&self.live);
            t.free.extend_from_slice(&self.free);
            t.len = self.len;
            t.candidates.extend_from_slice(&self.candidates);
            t.head = self.head;
            t.stats = self.stats;
            t
        }
    }

    impl HashConntrackTable {
        /// A table holding at most `capacity` entries (at most [`MAX_CAPACITY`]; a larger value
        /// is clamped to it).
        #[must_use]
        pub fn with_capacity(capacity: usize) -> Self {
            let capacity = capacity.min(MAX_CAPACITY);
            // At most half the index words are in use, so probe runs stay short and an empty
            // word always ends one.
            let words = capacity.saturating_mul(2).next_power_of_two().max(8);
            let t = Self {
                hasher: DefaultHashBuilder::default(),
                index: std::vec![EMPTY; words],
                mask: words - 1,
                slots: Vec::with_capacity(capacity),
                live: Vec::with_capacity(capacity),
                free: Vec::with_capacity(capacity),
                len: 0,
                capacity,
                candidates: Vec::with_capacity(EVICTION_CANDIDATES),
                head: 0,
                stats: TableStats::default(),
            };
            advise_huge_pages(&t.index);
            advise_huge_pages(&t.slots);
            t
        }

        /// Maximum number of entries.
        #[must_use]
        pub fn capacity(&self) -> usize {
            self.capacity
        }

        /// Number of entries.
        #[must_use]
        pub fn len(&self) -> usize {
            self.len
        }

        /// Whether the table is empty.
        #[must_use]
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        /// All entries, in no particular order.
        pub fn iter(&self) -> impl Iterator<Item = (&CtKey, &CtEntry)> {
            self.slots
                .iter()
                .zip(self.live.iter())
                .filter_map(|(s, live)| live.then_some((&s.key, &s.entry)))
        }

        /// The entry under `key`.
        #[must_use]
        pub fn get(&self, key: &CtKey) -> Option<&CtEntry> {
            let (_, slot) = self.find(key, self.hash(key))?;
            self.slots.get(slot).map(|s| &s.entry)
        }

        /// The entries under a burst of keys (`out[i]` for `keys[i]`), as a vector datapath looks
        /// up the flows of a batch of packets. The result is [`get`](Self::get)'s for each key;
        /// the difference is the order of memory accesses: the index words of all keys are
        /// fetched first, then the slots they point to, then the keys are compared, so that the
        /// cache misses of the burst overlap instead of following one another. A lookup that
        /// misses the cache costs about one memory latency per dependent read (two: index word,
        /// slot); a burst of `N` costs about two latencies in all.
        pub fn get_batch<'a, const N: usize>(
            &'a self,
            keys: &[CtKey; N],
            out: &mut [Option<&'a CtEntry>; N],
        ) {
            let mut hashes = [0u64; N];
            for (h, k) in hashes.iter_mut().zip(keys) {
                *h = self.hash(k);
                prefetch(self.index.get(self.home(*h)));
            }
            for h in &hashes {
                let w = self.word(self.home(*h));
                if w != EMPTY && w >> 32 == *h >> 32 {
                    prefetch(self.slots.get(((w & 0xffff_ffff) - 1) as usize));
                }
            }
            for ((o, k), h) in out.iter_mut().zip(keys).zip(&hashes) {
                *o = self
                    .find(k, *h)
                    .and_then(|(_, slot)| self.slots.get(slot))
                    .map(|s| &s.entry);
            }
        }

        #[inline]
        fn hash(&self, key: &CtKey) -> u64 {
            let mut h = self.hasher.build_hasher();
            h.write_u128(u128::from_ne_bytes(key.src));
            h.write_u128(u128::from_ne_bytes(key.dst));
            h.write_u64(
                u64::from(key.src_port)
                    | u64::from(key.dst_port) << 16
                    | u64::from(key.proto) << 32
                    | u64::from(key.family) << 40
                    | u64::from(key.kind) << 48
                    | u64::from(key.pad) << 56,
            );
            // Zero except in the backend-side entries of tunnelled flows; hashed so that flows
            // from several nodes with one tuple do not share a home slot.
            h.write_u128(u128::from_ne_bytes(key.origin));
            h.finish()
        }

        #[inline]
        fn home(&self, hash: u64) -> usize {
            (hash >> 32) as usize & self.mask
        }

        #[inline]
        fn word(&self, pos: usize) -> u64 {
            self.index.get(pos).copied().unwrap_or(EMPTY)
        }

        /// The index position and slot of `key`.
        #[inline]
        fn find(&self, key: &CtKey, hash: u64) -> Option<(usize, usize)> {
            let tag = hash >> 32;
            let mut pos = self.home(hash);
            // Bounded by the index length; an empty word ends the run long before.
            for _ in 0..self.index.len() {
                let w = self.word(pos);
                if w == EMPTY {
                    return None;
                }
                if w >> 32 == tag {
                    let slot = ((w & 0xffff_ffff) - 1) as usize;
                    if self.slots.get(slot).is_some_and(|s| s.key == *key) {
                        return Some((pos, slot));
                    }
                }
                pos = (pos + 1) & self.mask;
            }
            None
        }

        /// The index position of the word pointing at `slot` (whose key hashes to `hash`).
        fn position_of_slot(&self, hash: u64, slot: usize) -> Option<usize> {
            let want = (hash >> 32) << 32 | (slot as u64 + 1);
            let mut pos = self.home(hash);
            for _ in 0..self.index.len() {
                match self.word(pos) {
                    EMPTY => return None,
                    w if w == want => return Some(pos),
                    _ => pos = (pos + 1) & self.mask,
                }
            }
            None
        }

        /// Empties index word `hole`, moving later words of its probe run back so that every
        /// run stays unbroken (no tombstones).
        fn erase_word(&mut self, mut hole: usize) {
            let mut j = hole;
            for _ in 0..self.index.len() {
                j = (j + 1) & self.mask;
                let w = self.word(j);
                if w == EMPTY {
                    break;
                }
                // `w` may sit anywhere from its home to `j`; it moves if the hole is in that run.
                let from_home = j.wrapping_sub(self.home(w)) & self.mask;
                let from_hole = j.wrapping_sub(hole) & self.mask;
                if from_home >= from_hole {
                    if let Some(h) = self.index.get_mut(hole) {
                        *h = w;
                    }
                    hole = j;
                }
            }
            if let Some(h) = self.index.get_mut(hole) {
                *h = EMPTY;
            }
        }

        /// Removes the entry at index position `pos`, slot `slot`.
        fn remove_at(&mut self, pos: usize, slot: usize) {
            self.erase_word(pos);
            if let Some(l) = self.live.get_mut(slot) {
                *l = false;
                self.free.push(slot as u32);
                self.len -= 1;
            }
        }

        /// Adds `key` (known absent, hashing to `hash`) with `entry`; the caller has checked
        /// the capacity.
        fn add(&mut self, key: &CtKey, entry: &CtEntry, hash: u64) {
            let slot = match self.free.pop() {
                Some(s) => {
                    let s = s as usize;
                    if let (Some(slot), Some(l)) = (self.slots.get_mut(s), self.live.get_mut(s)) {
                        (slot.key, slot.entry, *l) = (*key, *entry, true);
                    }
                    s
                }
                None => {
                    self.slots.push(Slot {
                        key: *key,
                        entry: *entry,
                    });
                    self.live.push(true);
                    self.slots.len() - 1
                }
            };
            let mut pos = self.home(hash);
            for _ in 0..self.index.len() {
                match self.index.get_mut(pos) {
                    Some(w) if *w == EMPTY => {
                        *w = (hash >> 32) << 32 | (slot as u64 + 1);
                        break;
                    }
                    _ => pos = (pos + 1) & self.mask,
                }
            }
            self.len += 1;
        }

        /// Removes the entry under `key` and its partner's.
        fn remove_pair(&mut self, key: &CtKey) -> Option<CtEntry> {
            let (pos, slot) = self.find(key, self.hash(key))?;
            let e = self.slots.get(slot)?.entry;
            self.remove_at(pos, slot);
            if let Some(p) = partner_key(key, &e) {
                ConntrackTable::remove(self, &p);
            }
            Some(e)
        }

        /// Deletes every expired flow at `now_ns` in one pass over the entries, by the GC's pair
        /// rules (`ConntrackGc`'s module docs): an expired service entry goes with its partner;
        /// an expired reverse-NAT entry goes with its expired service entry, alone when it is
        /// an orphan, and stays while its service entry is alive. `keep` sees every entry that
        /// is not expired (and may see one deleted later as a partner).
        ///
        /// No packet can refresh an entry meanwhile (the table is borrowed mutably), so unlike
        /// a kernel-map sweep this needs no collect-then-re-read step.
        pub fn sweep_expired(
            &mut self,
            now_ns: u64,
            keep: &mut dyn FnMut(&CtKey, &CtEntry),
        ) -> SweepCounts {
            let mut counts = SweepCounts {
                scanned: self.len as u64,
                deleted: 0,
            };
            for slot in 0..self.slots.len() {
                let (Some(true), Some(&Slot { key: k, entry: e })) =
                    (self.live.get(slot).copied(), self.slots.get(slot))
                else {
                    continue;
                };
                if !super::is_expired(&e, now_ns) {
                    keep(&k, &e);
                    continue;
                }
                let partner = partner_key(&k, &e).map(|p| (p, self.hash(&p)));
                let found = partner.and_then(|(p, h)| self.find(&p, h));
                if k.kind == CtKind::ReverseNat as u8 {
                    let service_alive = found
                        .and_then(|(_, s)| self.slots.get(s))
                        .map(|s| &s.entry)
                        .is_some_and(|se| !super::is_expired(se, now_ns));
                    if service_alive {
                        keep(&k, &e);
                        continue;
                    }
                }
                // The partner goes first: removing our own word could shift its word.
                if let Some((pos, s)) = found {
                    self.remove_at(pos, s);
                    counts.deleted += 1;
                }
                let h = self.hash(&k);
                if let Some(pos) = self.position_of_slot(h, slot) {
                    self.remove_at(pos, slot);
                    counts.deleted += 1;
                }
            }
            counts
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
            if !super::is_expired(self.get(key)?, now_ns) {
                return None;
            }
            self.remove_pair(key)
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
                if let Some(e) = self.get(&k) {
                    if super::is_expired(e, now_ns) {
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
                self.remove_pair(&k);
            }
            reason
        }
    }

    impl ConntrackTable for HashConntrackTable {
        #[inline]
        fn get_mut(&mut self, key: &CtKey) -> Option<&mut CtEntry> {
            let (_, slot) = self.find(key, self.hash(key))?;
            self.slots.get_mut(slot).map(|s| &mut s.entry)
        }

        fn insert(
            &mut self,
            key: &CtKey,
            entry: &CtEntry,
            mode: InsertMode,
        ) -> Result<(), InsertError> {
            let hash = self.hash(key);
            if let Some((_, slot)) = self.find(key, hash) {
                return match mode {
                    InsertMode::NoExist => {
                        self.stats.insert_failures_exists += 1;
                        Err(InsertError::Exists)
                    }
                    InsertMode::Any => {
                        if let Some(s) = self.slots.get_mut(slot) {
                            s.entry = *entry;
                        }
                        Ok(())
                    }
                };
            }
            if self.len >= self.capacity {
                match self.evict_one(entry.last_seen_ns) {
                    Some(EvictionReason::Expired) => self.stats.evictions_expired += 1,
                    Some(EvictionReason::Closing) => self.stats.evictions_closing += 1,
                    None => {
                        self.stats.insert_failures_full += 1;
                        return Err(InsertError::Full);
                    }
                }
                if self.len >= self.capacity {
                    self.stats.insert_failures_full += 1;
                    return Err(InsertError::Full);
                }
            }
            self.add(key, entry, hash);
            Ok(())
        }

        fn remove(&mut self, key: &CtKey) -> bool {
            match self.find(key, self.hash(key)) {
                Some((pos, slot)) => {
                    self.remove_at(pos, slot);
                    true
                }
                None => false,
            }
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
        fn a_batch_lookup_finds_what_single_lookups_find() {
            let mut t = HashConntrackTable::with_capacity(4096);
            for p in 0..1000u16 {
                let e = CtEntry {
                    nat_port: p,
                    ..new_entry(u64::from(p))
                };
                t.insert(&key(p), &e, InsertMode::NoExist).unwrap();
            }
            // Hits, misses and a key twice, in one burst.
            let keys: [CtKey; 8] = [0, 999, 1000, 5, 65535, 5, 500, 2000].map(key);
            let mut out = [None; 8];
            t.get_batch(&keys, &mut out);
            for (k, got) in keys.iter().zip(out) {
                assert_eq!(got.map(|e| e.nat_port), t.get(k).map(|e| e.nat_port));
            }
            assert_eq!(out.iter().filter(|o| o.is_some()).count(), 5);
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

        /// A xorshift generator: deterministic, so a failure replays.
        fn next(seed: &mut u64) -> u64 {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        }

        /// Random inserts, overwrites and removals over a small key space on small tables (long
        /// probe runs, wrap-around, slot reuse) agree with a std `HashMap` after every step.
        #[test]
        fn agrees_with_a_model_map() {
            for capacity in [1usize, 3, 8, 64] {
                let mut seed = 0x9E37_79B9_7F4A_7C15 ^ capacity as u64;
                let mut t = HashConntrackTable::with_capacity(capacity);
                let mut model = std::collections::HashMap::new();
                for step in 0..20_000u64 {
                    let r = next(&mut seed);
                    let k = key((r % (3 * capacity as u64 + 2)) as u16);
                    let e = CtEntry {
                        expires_ns: step,
                        ..Default::default()
                    };
                    match (r >> 32) % 3 {
                        0 => {
                            let mode = if r >> 40 & 1 == 0 {
                                InsertMode::NoExist
                            } else {
                                InsertMode::Any
                            };
                            let want = match (model.contains_key(&k), mode) {
                                (true, InsertMode::NoExist) => Err(InsertError::Exists),
                                (false, _) if model.len() >= capacity => Err(InsertError::Full),
                                _ => Ok(()),
                            };
                            assert_eq!(t.insert(&k, &e, mode), want, "step {step}");
                            if want.is_ok() {
                                model.insert(k, e);
                            }
                        }
                        1 => assert_eq!(t.remove(&k), model.remove(&k).is_some(), "step {step}"),
                        _ => assert_eq!(t.get(&k), model.get(&k), "step {step}"),
                    }
                    assert_eq!(t.len(), model.len());
                }
                let mut all: Vec<_> = t.iter().map(|(k, e)| (*k, *e)).collect();
                all.sort_by_key(|(k, _)| k.src_port);
                let mut want: Vec<_> = model.into_iter().collect();
                want.sort_by_key(|(k, _)| k.src_port);
                assert_eq!(all, want);
            }
        }

        #[test]
        fn a_clone_keeps_the_capacity_and_the_entries() {
            let mut t = HashConntrackTable::with_capacity(100);
            for p in 0..10 {
                t.insert(&key(p), &CtEntry::default(), InsertMode::NoExist)
                    .unwrap();
            }
            t.remove(&key(3));
            let mut c = t.clone();
            assert_eq!((c.len(), c.capacity()), (9, 100));
            assert!(c.slots.capacity() >= 100 && c.free.capacity() >= 100);
            for p in 0..10 {
                assert_eq!(c.get(&key(p)).is_some(), p != 3, "port {p}");
            }
            c.insert(&key(50), &CtEntry::default(), InsertMode::NoExist)
                .unwrap();
            assert!(t.get(&key(50)).is_none(), "the original is untouched");
        }

        #[test]
        fn capacity_is_clamped() {
            let t = HashConntrackTable::with_capacity(0);
            assert_eq!((t.capacity(), t.len()), (0, 0));
            assert!(MAX_CAPACITY < u32::MAX as usize / 2);
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
pub use hash::{HashConntrackTable, SweepCounts, MAX_CAPACITY};
