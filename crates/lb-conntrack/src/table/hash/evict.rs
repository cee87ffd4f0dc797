//! What a full table and the GC do to the userspace table: in-place sweeps of expired flows,
//! the bounded list of eviction candidates, and eviction (expired first, then closing, never a
//! live flow).

use super::HashConntrackTable;
use super::Slot;
use crate::pair::partner_key;
use crate::table::{EvictionReason, TableStats, EVICTION_CANDIDATES, EXPIRED_WINDOW};
use lb_api::abi::{CtEntry, CtKey, CtKind, CtState};

/// What one in-place sweep did (see [`HashConntrackTable::sweep_expired`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepCounts {
    /// Entries present when the sweep began.
    pub scanned: u64,
    /// Entries deleted (both halves of a flow count).
    pub deleted: u64,
}

impl HashConntrackTable {
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
            if !crate::is_expired(&e, now_ns) {
                keep(&k, &e);
                continue;
            }
            let partner = partner_key(&k, &e).map(|p| (p, self.hash(&p)));
            let found = partner.and_then(|(p, h)| self.find(&p, h));
            if k.kind == CtKind::ReverseNat as u8 {
                let service_alive = found
                    .and_then(|(_, s)| self.slots.get(s))
                    .map(|s| &s.entry)
                    .is_some_and(|se| !crate::is_expired(se, now_ns));
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
        if !crate::is_expired(self.get(key)?, now_ns) {
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
    pub(super) fn evict_one(&mut self, now_ns: u64) -> Option<EvictionReason> {
        let mut closing_at = None;
        let mut i = self.head;
        // Bounded by the window and by the list's length.
        while i < self.head.saturating_add(EXPIRED_WINDOW) {
            let Some(k) = self.candidates.get(i).copied() else {
                break;
            };
            if let Some(e) = self.get(&k) {
                if crate::is_expired(e, now_ns) {
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
