//! Garbage collection: a sweeper whose interval adapts to pressure, for any table behind
//! [`GcTable`] (the userspace [`HashConntrackTable`], the kernel map in `lb_bpf::conntrack_gc`).
//!
//! A sweep visits every entry once and collects the keys of expired ones, then deletes each flow
//! whose entry is *still* expired when it comes to it (re-read just before the delete, so a
//! packet that refreshed the flow in between wins). A flow's two entries go together: deleting a
//! service entry deletes its reverse-NAT partner; an expired reverse-NAT entry goes with its
//! expired service entry, or alone when it is an orphan, and stays while its service entry is
//! alive.
//!
//! The interval adapts like Cilium's: after a sweep that deleted more than 25 % of the capacity
//! it shrinks by that ratio (at most ×0.1, never below [`GcConfig::min_interval`]); after one that
//! deleted less than 5 % it grows ×1.5 (up to [`GcConfig::max_interval`]). A sweep that sees new
//! insert failures (the table was full) drops straight to the minimum.
//!
//! ```
//! use lb_api::abi::{CtEntry, CtKey};
//! use lb_conntrack::{ConntrackGc, ConntrackTable, GcConfig, HashConntrackTable, InsertMode};
//!
//! let mut table = HashConntrackTable::with_capacity(16);
//! let expired = CtEntry { expires_ns: 10, ..Default::default() };
//! table.insert(&CtKey::default(), &expired, InsertMode::Any).unwrap();
//! let mut gc = ConntrackGc::new(GcConfig::default());
//! let report = gc.run(&mut table, 11).unwrap();
//! assert_eq!((report.scanned, report.deleted), (1, 1));
//! assert!(table.is_empty());
//! ```

use core::convert::Infallible;
use core::time::Duration;
use std::collections::BinaryHeap;
use std::time::Instant;
use std::vec::Vec;

use lb_api::abi::{CtEntry, CtKey, CtKind, CtState};

use crate::metrics::GcStats;
use crate::pair::partner_key;
use crate::reap::{reap_decision, ReapDecision};
use crate::table::{is_expired, HashConntrackTable, SweepCounts, EVICTION_CANDIDATES};

/// An eviction candidate, ordered by deadline only.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    expires_ns: u64,
    key: CtKey,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.expires_ns == other.expires_ns
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.expires_ns.cmp(&other.expires_ns)
    }
}

/// What the sweeper needs from a table.
pub trait GcTable {
    /// A failure to read or write the table (never for the userspace table).
    type Error;

    /// Maximum number of entries.
    fn capacity(&self) -> u64;

    /// Calls `f` once per entry (for a kernel map: on a snapshot read while packets keep
    /// changing it); the number of entries visited.
    ///
    /// # Errors
    /// When the table cannot be read.
    fn for_each_entry(&mut self, f: &mut dyn FnMut(&CtKey, &CtEntry)) -> Result<u64, Self::Error>;

    /// The entry under `key` now.
    ///
    /// # Errors
    /// When the table cannot be read.
    fn read(&mut self, key: &CtKey) -> Result<Option<CtEntry>, Self::Error>;

    /// Deletes the entry under `key`; whether it was there.
    ///
    /// # Errors
    /// When the table cannot be written.
    fn delete(&mut self, key: &CtKey) -> Result<bool, Self::Error>;

    /// Inserts refused because the table was full, since it was created.
    fn insert_failures_full(&self) -> u64;

    /// For a table that packets keep changing and that can re-read and delete an entry in one
    /// step (the kernel map, by its sweep program, which runs [`reap`](crate::reap)): the
    /// delete step for `keys`, found expired at `now_ns` by the scan; (deleted, refreshed).
    /// `None` (the default): the sweeper re-reads and deletes key by key through
    /// [`read`](Self::read) and [`delete`](Self::delete), by the same rules
    /// ([`reap_decision`](crate::reap_decision)).
    fn reap_batch(
        &mut self,
        _keys: &[CtKey],
        _now_ns: u64,
    ) -> Option<Result<(u64, u64), Self::Error>> {
        None
    }

    /// Replaces the table's eviction candidates, soonest deadline first (tables that never
    /// evict ignore it).
    fn set_eviction_candidates(&mut self, _keys: &[CtKey]) {}

    /// For a table no packet can change during a sweep (the userspace table, borrowed
    /// mutably): deletes the flows expired at `now_ns` in one pass, by the pair rules of this
    /// module, and calls `keep` for each entry that is not expired. `None` (the default, and
    /// the only right answer for a kernel map that packets keep changing) makes the sweeper
    /// scan first, then re-read and delete key by key.
    fn sweep_in_place(
        &mut self,
        _now_ns: u64,
        _keep: &mut dyn FnMut(&CtKey, &CtEntry),
    ) -> Option<SweepCounts> {
        None
    }
}

impl GcTable for HashConntrackTable {
    type Error = Infallible;

    fn capacity(&self) -> u64 {
        HashConntrackTable::capacity(self) as u64
    }

    fn for_each_entry(&mut self, f: &mut dyn FnMut(&CtKey, &CtEntry)) -> Result<u64, Infallible> {
        let mut n = 0;
        for (k, e) in self.iter() {
            f(k, e);
            n += 1;
        }
        Ok(n)
    }

    fn read(&mut self, key: &CtKey) -> Result<Option<CtEntry>, Infallible> {
        Ok(self.get(key).copied())
    }

    fn delete(&mut self, key: &CtKey) -> Result<bool, Infallible> {
        Ok(crate::ConntrackTable::remove(self, key))
    }

    fn insert_failures_full(&self) -> u64 {
        self.stats().insert_failures_full
    }

    fn set_eviction_candidates(&mut self, keys: &[CtKey]) {
        self.clear_candidates();
        for k in keys {
            self.offer_candidate(k);
        }
    }

    fn sweep_in_place(
        &mut self,
        now_ns: u64,
        keep: &mut dyn FnMut(&CtKey, &CtEntry),
    ) -> Option<SweepCounts> {
        Some(self.sweep_expired(now_ns, keep))
    }
}

/// Sweeper settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcConfig {
    /// Interval before the first adaptation (Cilium: 5 min).
    pub initial_interval: Duration,
    /// Shortest interval (Cilium: 10 s).
    pub min_interval: Duration,
    /// Longest interval.
    pub max_interval: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_secs(300),
            min_interval: Duration::from_secs(10),
            max_interval: Duration::from_secs(12 * 3600),
        }
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    /// Entries visited.
    pub scanned: u64,
    /// Entries deleted (both halves of a flow count).
    pub deleted: u64,
    /// Expired entries left alone because a packet refreshed them before their deletion.
    pub refreshed: u64,
    /// Wall time of the sweep.
    pub duration: Duration,
    /// When to sweep next.
    pub next_interval: Duration,
}

/// The adaptive sweeper. It keeps its buffers between runs, so a sweep allocates only when the
/// table holds more expired entries than ever before.
#[derive(Debug, Clone)]
pub struct ConntrackGc {
    cfg: GcConfig,
    stats: GcStats,
    expired: Vec<CtKey>,
    candidates: BinaryHeap<Candidate>,
    sorted: Vec<CtKey>,
    failures_seen: u64,
}

impl ConntrackGc {
    /// A sweeper starting at `cfg.initial_interval`.
    #[must_use]
    pub fn new(cfg: GcConfig) -> Self {
        Self {
            cfg,
            stats: GcStats {
                interval: cfg.initial_interval,
                ..GcStats::default()
            },
            expired: Vec::new(),
            candidates: BinaryHeap::with_capacity(EVICTION_CANDIDATES + 1),
            sorted: Vec::with_capacity(EVICTION_CANDIDATES),
            failures_seen: 0,
        }
    }

    /// Figures so far.
    #[must_use]
    pub fn stats(&self) -> GcStats {
        self.stats
    }

    /// The interval to wait before the next sweep.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.stats.interval
    }

    /// Sweeps `table` at `now_ns` (the datapath's clock) and adapts the interval.
    ///
    /// # Errors
    /// The table's error; the sweep stops there (entries deleted so far stay deleted, always in
    /// whole pairs).
    pub fn run<T: GcTable + ?Sized>(
        &mut self,
        table: &mut T,
        now_ns: u64,
    ) -> Result<GcReport, T::Error> {
        let started = Instant::now();
        let horizon = now_ns
            .saturating_add(u64::try_from(self.stats.interval.as_nanos()).unwrap_or(u64::MAX));
        self.expired.clear();
        self.candidates.clear();
        let (expired, candidates) = (&mut self.expired, &mut self.candidates);
        let mut offer = |k: &CtKey, e: &CtEntry| {
            if k.kind == CtKind::Service as u8
                && (e.expires_ns <= horizon
                    || CtState::from_u8(e.state).is_some_and(CtState::is_closing))
            {
                // Keep the EVICTION_CANDIDATES soonest deadlines: a bounded max-heap.
                candidates.push(Candidate {
                    expires_ns: e.expires_ns,
                    key: *k,
                });
                if candidates.len() > EVICTION_CANDIDATES {
                    candidates.pop();
                }
            }
        };
        let (scanned, deleted, refreshed) = match table.sweep_in_place(now_ns, &mut offer) {
            Some(c) => (c.scanned, c.deleted, 0),
            None => {
                let scanned = table.for_each_entry(&mut |k, e| {
                    if is_expired(e, now_ns) {
                        expired.push(*k);
                    } else {
                        offer(k, e);
                    }
                })?;
                let (deleted, refreshed) = match table.reap_batch(expired, now_ns) {
                    Some(r) => r?,
                    None => delete_still_expired(table, expired, now_ns)?,
                };
                (scanned, deleted, refreshed)
            }
        };
        self.sorted.clear();
        self.sorted.extend(
            core::mem::take(&mut self.candidates)
                .into_sorted_vec()
                .into_iter()
                .map(|c| c.key),
        );
        table.set_eviction_candidates(&self.sorted);

        let failures = table.insert_failures_full();
        let new_failures = failures > self.failures_seen;
        self.failures_seen = failures;
        let next = self.next_interval(deleted, table.capacity(), new_failures);
        let duration = started.elapsed();
        let s = &mut self.stats;
        s.runs += 1;
        s.last_scanned = scanned;
        s.last_deleted = deleted;
        s.last_duration = duration;
        s.total_scanned += scanned;
        s.total_deleted += deleted;
        s.total_refreshed += refreshed;
        s.interval = next;
        Ok(GcReport {
            scanned,
            deleted,
            refreshed,
            duration,
            next_interval: next,
        })
    }

    fn next_interval(&self, deleted: u64, capacity: u64, new_failures: bool) -> Duration {
        if new_failures {
            return self.cfg.min_interval;
        }
        let cur = self.stats.interval;
        let permille = deleted
            .saturating_mul(1000)
            .checked_div(capacity)
            .unwrap_or(0);
        let scale = |num: u128, den: u128| {
            Duration::from_nanos(u64::try_from(cur.as_nanos() * num / den).unwrap_or(u64::MAX))
        };
        let next = if permille > 250 {
            scale(u128::from(1000 - permille.min(900)), 1000)
        } else if permille < 50 {
            scale(3, 2)
        } else {
            cur
        };
        next.clamp(self.cfg.min_interval, self.cfg.max_interval)
    }
}

/// Deletes the flows of `expired` (keys a scan found expired at `now_ns`) that are still
/// expired when re-read, by the pair rules ([`reap_decision`], which the kernel's sweep program
/// runs too); (deleted, refreshed).
fn delete_still_expired<T: GcTable + ?Sized>(
    table: &mut T,
    expired: &[CtKey],
    now_ns: u64,
) -> Result<(u64, u64), T::Error> {
    let mut deleted = 0u64;
    let mut refreshed = 0u64;
    for k in expired {
        let Some(e) = table.read(k)? else {
            continue; // gone with its partner already
        };
        let partner = partner_key(k, &e);
        let reverse = k.kind == CtKind::ReverseNat as u8;
        let service = match (&partner, reverse && is_expired(&e, now_ns)) {
            (Some(p), true) => table.read(p)?,
            _ => None,
        };
        match reap_decision(k, &e, service.as_ref(), now_ns) {
            ReapDecision::Keep => refreshed += u64::from(!is_expired(&e, now_ns)),
            ReapDecision::DeleteSelf => deleted += u64::from(table.delete(k)?),
            ReapDecision::DeleteBoth => {
                // A reverse entry's service entry first: no instant sees it without its reverse.
                let order = if reverse {
                    [partner, Some(*k)]
                } else {
                    [Some(*k), partner]
                };
                for key in order.iter().flatten() {
                    deleted += u64::from(table.delete(key)?);
                }
            }
        }
    }
    Ok((deleted, refreshed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConntrackTable, InsertMode};
    use std::prelude::rust_2021::*;

    fn pair(t: &mut HashConntrackTable, port: u16, expires: u64) -> (CtKey, CtKey) {
        let k = CtKey {
            src_port: port,
            dst_port: 5353,
            proto: 17,
            ..Default::default()
        };
        let e = CtEntry {
            expires_ns: expires,
            nat_port: 53,
            ..Default::default()
        };
        let rk = partner_key(&k, &e).unwrap();
        t.insert(
            &rk,
            &CtEntry {
                nat_port: 5353,
                ..e
            },
            InsertMode::NoExist,
        )
        .unwrap();
        t.insert(&k, &e, InsertMode::NoExist).unwrap();
        (k, rk)
    }

    #[test]
    fn deletes_expired_pairs_only() {
        let mut t = HashConntrackTable::with_capacity(100);
        let (live, live_r) = pair(&mut t, 1, 1_000);
        let (dead, dead_r) = pair(&mut t, 2, 10);
        // An orphan reverse entry, and a live flow whose reverse entry lags behind.
        let (orphan_svc, orphan) = pair(&mut t, 3, 10);
        t.remove(&orphan_svc);
        let (_, lag_r) = pair(&mut t, 4, 1_000);
        t.get_mut(&lag_r).unwrap().expires_ns = 5;
        let mut gc = ConntrackGc::new(GcConfig::default());
        let r = gc.run(&mut t, 100).unwrap();
        assert_eq!(r.scanned, 7);
        assert_eq!(r.deleted, 3);
        assert!(t.get(&live).is_some() && t.get(&live_r).is_some());
        assert!(
            t.get(&lag_r).is_some(),
            "a live flow keeps its reverse entry"
        );
        for k in [dead, dead_r, orphan] {
            assert!(t.get(&k).is_none());
        }
        assert_eq!(gc.stats().runs, 1);
    }

    #[test]
    fn interval_adapts_to_pressure() {
        let cfg = GcConfig::default();
        let mut gc = ConntrackGc::new(cfg);
        let mut t = HashConntrackTable::with_capacity(100);
        // Nothing to delete: grows ×1.5.
        gc.run(&mut t, 1).unwrap();
        assert_eq!(gc.interval(), Duration::from_secs(450));
        // 60 of 100 deleted: shrinks to 40 %.
        for p in 0..30 {
            pair(&mut t, p, 5);
        }
        gc.run(&mut t, 10).unwrap();
        assert_eq!(gc.interval(), Duration::from_secs(180));
        // 10 %: unchanged.
        for p in 0..5 {
            pair(&mut t, p, 5);
        }
        gc.run(&mut t, 10).unwrap();
        assert_eq!(gc.interval(), Duration::from_secs(180));
        // 96 %: ×0.1, floored at 10 s after a few runs.
        for _ in 0..3 {
            for p in 0..48 {
                pair(&mut t, p, 5);
            }
            gc.run(&mut t, 10).unwrap();
        }
        assert_eq!(gc.interval(), cfg.min_interval);
        // Refused inserts drop to the floor at once.
        let mut gc = ConntrackGc::new(cfg);
        let mut t = HashConntrackTable::with_capacity(2);
        pair(&mut t, 1, u64::MAX);
        assert!(t
            .insert(
                &CtKey {
                    src_port: 9,
                    ..Default::default()
                },
                &CtEntry::default(),
                InsertMode::Any
            )
            .is_err());
        gc.run(&mut t, 10).unwrap();
        assert_eq!(gc.interval(), cfg.min_interval);
    }

    /// The userspace table without its in-place sweep: the key-by-key path a kernel map takes.
    struct KeyByKey(HashConntrackTable);

    impl GcTable for KeyByKey {
        type Error = Infallible;
        fn capacity(&self) -> u64 {
            GcTable::capacity(&self.0)
        }
        fn for_each_entry(
            &mut self,
            f: &mut dyn FnMut(&CtKey, &CtEntry),
        ) -> Result<u64, Infallible> {
            self.0.for_each_entry(f)
        }
        fn read(&mut self, key: &CtKey) -> Result<Option<CtEntry>, Infallible> {
            self.0.read(key)
        }
        fn delete(&mut self, key: &CtKey) -> Result<bool, Infallible> {
            self.0.delete(key)
        }
        fn insert_failures_full(&self) -> u64 {
            0
        }
        fn set_eviction_candidates(&mut self, keys: &[CtKey]) {
            self.0.set_eviction_candidates(keys);
        }
    }

    /// The in-place sweep and the key-by-key sweep leave the same entries, report the same
    /// figures and offer the same eviction candidates, on a mix of live, expired, lagging,
    /// orphaned and closing flows.
    #[test]
    fn in_place_sweep_matches_the_key_by_key_sweep() {
        let mut t = HashConntrackTable::with_capacity(4_000);
        for p in 0..1_500u16 {
            let expires = u64::from(p % 7) * 40; // deadlines 0..240 around now = 100
            let (k, rk) = pair(&mut t, p, expires);
            match p % 11 {
                0 => {
                    t.remove(&k); // orphan reverse entry
                }
                1 => t.get_mut(&rk).unwrap().expires_ns = 5, // reverse lags behind
                2 => t.get_mut(&k).unwrap().state = CtState::TimeWait as u8,
                3 => {
                    t.remove(&rk); // service entry without its reverse
                }
                _ => {}
            }
        }
        let mut by_key = KeyByKey(t.clone());
        let (mut a, mut b) = (
            ConntrackGc::new(GcConfig::default()),
            ConntrackGc::new(GcConfig::default()),
        );
        let ra = a.run(&mut t, 100).unwrap();
        let rb = b.run(&mut by_key, 100).unwrap();
        assert!(ra.deleted > 1_000, "the fixture deletes much: {ra:?}");
        assert_eq!(
            (ra.scanned, ra.deleted, ra.refreshed, ra.next_interval),
            (rb.scanned, rb.deleted, rb.refreshed, rb.next_interval)
        );
        let sorted = |t: &HashConntrackTable| {
            let mut v: Vec<_> = t.iter().map(|(k, e)| (*k, *e)).collect();
            v.sort_by_key(|(k, _)| (k.src_port, k.dst_port, k.kind));
            v
        };
        assert_eq!(sorted(&t), sorted(&by_key.0));
        assert!(t.candidates() > 0);
        assert_eq!(t.candidates(), by_key.0.candidates());
    }

    /// A table wrapper in which a packet refreshes an entry between the scan and the delete.
    struct RacingTable {
        inner: HashConntrackTable,
        victim: CtKey,
    }

    impl GcTable for RacingTable {
        type Error = Infallible;
        fn capacity(&self) -> u64 {
            GcTable::capacity(&self.inner)
        }
        fn for_each_entry(
            &mut self,
            f: &mut dyn FnMut(&CtKey, &CtEntry),
        ) -> Result<u64, Infallible> {
            let n = self.inner.for_each_entry(f)?;
            // The packet arrives after the scan.
            self.inner.get_mut(&self.victim).unwrap().expires_ns = u64::MAX;
            Ok(n)
        }
        fn read(&mut self, key: &CtKey) -> Result<Option<CtEntry>, Infallible> {
            self.inner.read(key)
        }
        fn delete(&mut self, key: &CtKey) -> Result<bool, Infallible> {
            self.inner.delete(key)
        }
        fn insert_failures_full(&self) -> u64 {
            0
        }
    }

    #[test]
    fn a_refreshing_packet_wins_over_the_sweep() {
        let mut inner = HashConntrackTable::with_capacity(10);
        let (victim, victim_r) = pair(&mut inner, 1, 5);
        let mut t = RacingTable { inner, victim };
        let mut gc = ConntrackGc::new(GcConfig::default());
        let r = gc.run(&mut t, 10).unwrap();
        assert_eq!((r.deleted, r.refreshed), (0, 1));
        assert!(t.inner.get(&victim).is_some() && t.inner.get(&victim_r).is_some());
    }
}
