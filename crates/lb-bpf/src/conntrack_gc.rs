//! Conntrack GC and metrics for the kernel map (`LB_CT`), with the same sweeper
//! ([`ConntrackGc`]) and the same metrics struct ([`ConntrackMetrics`]) as the userspace table.
//!
//! How the kernel side behaves, honestly:
//! * `LB_CT` is a preallocated `BPF_MAP_TYPE_HASH`. When it is full, the datapath's insert fails
//!   with `E2BIG`, the new flow's packet is dropped and counted as `DropReason::ConntrackFull`
//!   ([`ConntrackMetrics::table`]`.insert_failures_full`). The map never evicts: established flows
//!   are never displaced by new ones, and nothing is dropped silently. Keeping the map below its
//!   budget is the job of this GC, whose interval shrinks under pressure.
//! * aya 0.14 has no batched map operations (`BPF_MAP_LOOKUP_AND_DELETE_BATCH` and friends are
//!   not exposed), so a sweep is one `get_next_key` + `lookup` per entry and one `lookup` +
//!   `delete` per expired entry.
//! * A sweep reads a live map. The kernel restarts `get_next_key` from the first key when the
//!   current key was deleted by the datapath meanwhile, so a scan is bounded at twice the map's
//!   capacity. Each expired entry is re-read just before its delete and kept if a packet
//!   refreshed it; a packet landing between that re-read and the delete (microseconds) loses its
//!   flow, which the datapath then re-creates as a mid-stream pickup. A flow's reverse-NAT entry is
//!   deleted right after its service entry; a reply in between finds the orphan and removes it.
//!
//! ```no_run
//! use lb_bpf::KernelDatapath;
//! use lb_conntrack::{Clock, ConntrackGc, GcConfig, MonotonicClock};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut dp = KernelDatapath::load()?;
//! let mut gc = ConntrackGc::new(GcConfig::default());
//! loop {
//!     let report = dp.conntrack_gc(&mut gc, MonotonicClock.now_ns())?;
//!     let m = dp.conntrack_metrics(MonotonicClock.now_ns(), Some(&gc))?;
//!     println!("{} entries, {}‰ full, {} deleted", m.entries, m.utilization_permille(), report.deleted);
//!     std::thread::sleep(report.next_interval);
//! }
//! # }
//! ```

use aya::maps::{HashMap, IterableMap, MapData, MapError};
use lb_api::abi::{CtEntry, CtKey};
use lb_api::counters::DropReason;
use lb_conntrack::{ConntrackGc, ConntrackMetrics, GcReport, GcTable, TableStats};

use crate::{maps, Error, KernelDatapath};

/// The kernel conntrack map behind [`GcTable`].
pub struct KernelConntrackTable<'a> {
    map: HashMap<&'a mut MapData, CtKey, CtEntry>,
    capacity: u64,
    insert_failures_full: u64,
}

impl std::fmt::Debug for KernelConntrackTable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelConntrackTable")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

fn is_enoent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

impl GcTable for KernelConntrackTable<'_> {
    type Error = MapError;

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn for_each_entry(&mut self, f: &mut dyn FnMut(&CtKey, &CtEntry)) -> Result<u64, MapError> {
        let bound = self.capacity.saturating_mul(2).max(1);
        let mut n = 0;
        for item in self.map.iter() {
            let (k, e) = item?;
            f(&k, &e);
            n += 1;
            if n >= bound {
                break;
            }
        }
        Ok(n)
    }

    fn read(&mut self, key: &CtKey) -> Result<Option<CtEntry>, MapError> {
        match self.map.get(key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(e) if is_enoent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete(&mut self, key: &CtKey) -> Result<bool, MapError> {
        match self.map.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if is_enoent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn insert_failures_full(&self) -> u64 {
        self.insert_failures_full
    }
}

fn map_err(source: MapError) -> Error {
    Error::Map {
        map: maps::CONNTRACK,
        source,
    }
}

impl KernelDatapath {
    /// Capacity (`max_entries`) of the kernel conntrack map.
    ///
    /// # Errors
    /// [`Error::Map`] if the map's info cannot be read.
    pub fn conntrack_capacity(&self) -> Result<u64, Error> {
        let m: HashMap<&MapData, CtKey, CtEntry> = self.hash_ro(maps::CONNTRACK)?;
        let info = m.map().info().map_err(map_err)?;
        Ok(u64::from(info.max_entries()))
    }

    /// One GC sweep of the kernel conntrack map at `now_ns` (the datapath's clock:
    /// `CLOCK_MONOTONIC`, or `DatapathConfig::fixed_now_ns` in tests).
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read or written.
    pub fn conntrack_gc(&mut self, gc: &mut ConntrackGc, now_ns: u64) -> Result<GcReport, Error> {
        let capacity = self.conntrack_capacity()?;
        let insert_failures_full = self.counters()?.drops(DropReason::ConntrackFull);
        let map = self.hash::<CtKey, CtEntry>(maps::CONNTRACK)?;
        let mut table = KernelConntrackTable {
            map,
            capacity,
            insert_failures_full,
        };
        gc.run(&mut table, now_ns).map_err(map_err)
    }

    /// Metrics of the kernel conntrack map at `now_ns`, with `gc`'s figures when given.
    ///
    /// # Errors
    /// [`Error::Map`] if the map or the counters cannot be read.
    pub fn conntrack_metrics(
        &self,
        now_ns: u64,
        gc: Option<&ConntrackGc>,
    ) -> Result<ConntrackMetrics, Error> {
        let capacity = self.conntrack_capacity()?;
        let m: HashMap<&MapData, CtKey, CtEntry> = self.hash_ro(maps::CONNTRACK)?;
        let mut metrics = ConntrackMetrics {
            capacity,
            ..ConntrackMetrics::default()
        };
        for item in m.iter() {
            let (k, e) = item.map_err(map_err)?;
            metrics.add(&k, &e, now_ns);
        }
        metrics.table = TableStats {
            insert_failures_full: self.counters()?.drops(DropReason::ConntrackFull),
            ..TableStats::default()
        };
        if let Some(gc) = gc {
            metrics.gc = gc.stats();
        }
        Ok(metrics)
    }
}
