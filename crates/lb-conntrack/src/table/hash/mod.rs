//! The userspace conntrack table ([`HashConntrackTable`]): a dense slab of cache-line slots and
//! an open-addressed index over it. The full-table policy and the GC's sweep are in `evict`.

use super::{
    ConntrackTable, EvictionReason, InsertError, InsertMode, TableStats, EVICTION_CANDIDATES,
};
use crate::pair::partner_key;
use core::hash::{BuildHasher, Hasher};
use hashbrown::DefaultHashBuilder;
use lb_api::abi::{CtEntry, CtKey};
use std::vec::Vec;

/// Asks the CPU to start loading the cache line of `item` (no effect if `None` or on
/// targets without a prefetch instruction).
#[inline(always)]
fn prefetch<T>(item: Option<&T>) {
    #[cfg(target_arch = "x86_64")]
    if let Some(item) = item {
        // SAFETY: a prefetch is a hint: it never faults and has no effect on memory, and
        // the pointer comes from a live reference anyway.
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

mod evict;
pub use evict::SweepCounts;

#[cfg(test)]
mod tests;
