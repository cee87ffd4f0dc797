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
//!   not exposed), so the scan is one `get_next_key` + `lookup` per entry.
//! * The GC task wakes within [`PRESSURE_POLL`] (1 s) of the datapath refusing a new flow for a
//!   full table (its `conntrack_full` counter grew), whatever its adaptive interval: a burst
//!   after a quiet night is not refused for hours, and no CNI has to call `sweep_now` for it.
//! * A sweep reads a live map. The kernel restarts `get_next_key` from the first key when the
//!   current key was deleted by the datapath meanwhile, so a scan is bounded at twice the map's
//!   capacity. The delete step runs in the kernel: the keys the scan found expired go to the
//!   sweep program (`lb_ct_sweep`, by `BPF_PROG_TEST_RUN`, 64 keys per run), which re-reads each
//!   entry and deletes its flow only if it is still dead, by [`lb_conntrack::reap`] (the pair
//!   rules the engine's sweep decides by too). The check and the delete are nanoseconds apart:
//!   the race test (`tests/gc_race.rs`) lost 3 refreshed flows in 300 rounds with the former
//!   sweep by syscalls (re-read, then delete: microseconds apart; still there as
//!   [`KernelDatapath::conntrack_gc_by_syscalls`], for comparison) and none with the sweep
//!   program. A flow's reverse-NAT entry is deleted right after its service entry; a reply in
//!   between finds the orphan and removes it.
//!
//! A CNI runs it as a task ([`KernelDatapath::spawn_conntrack_gc`], [`ConntrackGcTask`]); the
//! single sweep ([`KernelDatapath::conntrack_gc`]) is there for agents that schedule it
//! themselves.
//!
//! ```no_run
//! use lb_bpf::KernelDatapath;
//! use lb_conntrack::{Clock, GcConfig, MonotonicClock};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dp = KernelDatapath::load()?;
//! let gc = dp.spawn_conntrack_gc(GcConfig::default())?;
//! loop {
//!     std::thread::sleep(std::time::Duration::from_secs(60));
//!     let mut m = dp.conntrack_metrics(MonotonicClock.now_ns(), None)?;
//!     m.gc = gc.status().stats;
//!     println!("{} entries, {}‰ full, {} deleted", m.entries, m.utilization_permille(), m.gc.total_deleted);
//! }
//! # }
//! ```

use std::os::fd::AsFd as _;
use std::sync::{mpsc, Arc, Mutex};

use aya::maps::{Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use lb_api::abi::{CtEntry, CtKey, DatapathConfig};
use lb_api::counters::DropReason;
use lb_conntrack::{
    Clock as _, ConntrackGc, ConntrackMetrics, GcConfig, GcReport, GcStats, GcTable,
    MonotonicClock, TableStats,
};

use lb_api::tables::{Table, CONFIG, CONNTRACK, COUNTERS, CT_SWEEP};

use crate::{Error, KernelDatapath, Program};

/// The kernel conntrack map behind [`GcTable`].
pub struct KernelConntrackTable<'a> {
    map: HashMap<&'a mut MapData, CtKey, CtEntry>,
    capacity: u64,
    insert_failures_full: u64,
    /// The delete step in the kernel (`None`: by syscalls, re-read then delete).
    sweeper: Option<&'a mut KernelSweeper>,
}

/// The sweep program (`lb_ct_sweep`) and its batch map, as handles of their own (a duplicated
/// file descriptor each), so that a GC task on another thread can run it.
pub(crate) struct KernelSweeper {
    keys: Map,
    program: Xdp,
}

impl KernelSweeper {
    /// Runs [`lb_conntrack::reap`] in the kernel on each of `keys` at `now_ns`, a batch of
    /// `CT_SWEEP` keys per run; (deleted, refreshed).
    fn reap(&mut self, keys: &[CtKey], now_ns: u64) -> Result<(u64, u64), Error> {
        let name = Program::CtSweep.name();
        let mut batch_map: Array<&mut MapData, CtKey> =
            Array::try_from(&mut self.keys).map_err(|source| Error::Map {
                map: CT_SWEEP.name,
                source,
            })?;
        let (mut deleted, mut refreshed) = (0u64, 0u64);
        for batch in keys.chunks(CT_SWEEP.default_max_entries as usize) {
            for (i, k) in (0u32..).zip(batch) {
                batch_map.set(i, k, 0).map_err(|source| Error::Map {
                    map: CT_SWEEP.name,
                    source,
                })?;
            }
            // The run's arguments and results: see the program (`programs/src/sweep.rs`).
            let mut args = [0u8; 20];
            args[..8].copy_from_slice(&now_ns.to_le_bytes());
            args[8..12].copy_from_slice(&(batch.len() as u32).to_le_bytes());
            let mut out = [0u8; 20 + 256];
            self.program
                .test_run(TestRunOptions {
                    data_in: Some(&args),
                    data_out: Some(&mut out),
                    repeat: 1,
                    ..Default::default()
                })
                .map_err(|source| Error::Program {
                    program: name,
                    source,
                })?;
            let word = |at: usize| {
                let mut w = [0u8; 4];
                w.copy_from_slice(&out[at..at + 4]);
                u64::from(u32::from_le_bytes(w))
            };
            deleted += word(12);
            refreshed += word(16);
        }
        Ok((deleted, refreshed))
    }
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
    type Error = Error;

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn for_each_entry(&mut self, f: &mut dyn FnMut(&CtKey, &CtEntry)) -> Result<u64, Error> {
        let bound = self.capacity.saturating_mul(2).max(1);
        let mut n = 0;
        for item in self.map.iter() {
            let (k, e) = item.map_err(map_err)?;
            f(&k, &e);
            n += 1;
            if n >= bound {
                break;
            }
        }
        Ok(n)
    }

    fn read(&mut self, key: &CtKey) -> Result<Option<CtEntry>, Error> {
        match self.map.get(key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(e) if is_enoent(&e) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }

    fn delete(&mut self, key: &CtKey) -> Result<bool, Error> {
        match self.map.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if is_enoent(&e) => Ok(false),
            Err(e) => Err(map_err(e)),
        }
    }

    fn reap_batch(&mut self, keys: &[CtKey], now_ns: u64) -> Option<Result<(u64, u64), Error>> {
        let sweeper = self.sweeper.as_deref_mut()?;
        Some(sweeper.reap(keys, now_ns))
    }

    fn insert_failures_full(&self) -> u64 {
        self.insert_failures_full
    }
}

fn map_err(source: MapError) -> Error {
    Error::Map {
        map: CONNTRACK.name,
        source,
    }
}

impl KernelDatapath {
    /// Capacity (`max_entries`) of the kernel conntrack map.
    ///
    /// # Errors
    /// [`Error::Map`] if the map's info cannot be read.
    pub fn conntrack_capacity(&self) -> Result<u64, Error> {
        let m: HashMap<&MapData, CtKey, CtEntry> = self.hash_ro(CONNTRACK)?;
        let info = m.map().info().map_err(map_err)?;
        Ok(u64::from(info.max_entries()))
    }

    /// One GC sweep of the kernel conntrack map at `now_ns` (the datapath's clock:
    /// `CLOCK_MONOTONIC`, or `DatapathConfig::fixed_now_ns` in tests).
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read or written.
    pub fn conntrack_gc(&mut self, gc: &mut ConntrackGc, now_ns: u64) -> Result<GcReport, Error> {
        let mut sweeper = self.sweeper()?;
        self.conntrack_gc_with(gc, now_ns, Some(&mut sweeper))
    }

    /// [`conntrack_gc`](Self::conntrack_gc) as it was before the sweep program: each expired
    /// entry re-read and deleted by two syscalls, microseconds apart, so that a packet
    /// refreshing the flow in between loses it. Kept for comparison only: the race test
    /// (`tests/gc_race.rs`) counts the flows each way loses.
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read or written.
    pub fn conntrack_gc_by_syscalls(
        &mut self,
        gc: &mut ConntrackGc,
        now_ns: u64,
    ) -> Result<GcReport, Error> {
        self.conntrack_gc_with(gc, now_ns, None)
    }

    fn conntrack_gc_with(
        &mut self,
        gc: &mut ConntrackGc,
        now_ns: u64,
        sweeper: Option<&mut KernelSweeper>,
    ) -> Result<GcReport, Error> {
        let capacity = self.conntrack_capacity()?;
        let insert_failures_full = self.counters()?.drops(DropReason::ConntrackFull);
        let map = self.hash::<CtKey, CtEntry>(CONNTRACK)?;
        let mut table = KernelConntrackTable {
            map,
            capacity,
            insert_failures_full,
            sweeper,
        };
        gc.run(&mut table, now_ns)
    }

    /// The sweep program and its batch map, as handles of their own.
    fn sweeper(&self) -> Result<KernelSweeper, Error> {
        let name = Program::CtSweep.name();
        let to_error = |source| Error::Program {
            program: name,
            source,
        };
        let prog = self
            .ebpf
            .program(name)
            .ok_or(aya::programs::ProgramError::UnexpectedProgramType)
            .map_err(to_error)?;
        let info = prog.info().map_err(to_error)?;
        let program = Xdp::from_program_info(
            info,
            name.into(),
            aya_obj::programs::XdpAttachType::Interface,
        )
        .map_err(to_error)?;
        Ok(KernelSweeper {
            keys: self.map_handle(CT_SWEEP)?,
            program,
        })
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
        let m: HashMap<&MapData, CtKey, CtEntry> = self.hash_ro(CONNTRACK)?;
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

/// What a [`ConntrackGcTask`] has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcTaskStatus {
    /// Sweeps attempted (successful or not).
    pub sweeps: u64,
    /// The last successful sweep's report (`None` before the first).
    pub last_report: Option<GcReport>,
    /// The sweeper's figures: runs, last and total scanned/deleted, the current interval; what
    /// [`ConntrackMetrics::gc`] holds.
    pub stats: GcStats,
    /// The time (the datapath's clock) the last sweep ran at.
    pub last_now_ns: u64,
    /// The last sweep's error, if it failed (the task keeps sweeping at the minimum interval).
    pub last_error: Option<String>,
    /// Sweeps started early because the datapath refused new flows for a full table since the
    /// previous sweep (its `conntrack_full` counter grew), rather than at the end of the
    /// interval: see [`PRESSURE_POLL`].
    pub pressure_wakes: u64,
}

/// How often a [`ConntrackGcTask`] waiting out its interval looks at the datapath's
/// `conntrack_full` drop counter (one read of one slot of the per-CPU counter array): a table
/// that refuses new flows wakes the sweeper within this time, not at the end of an interval
/// that may have grown to hours while the node was quiet.
pub const PRESSURE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// What the task's thread is told.
enum GcCommand {
    /// Sweep now instead of waiting for the interval.
    Sweep,
    /// Stop after the current sweep.
    Stop,
}

/// Conntrack GC running on its own thread: one sweep of the kernel map at start, then one per
/// adaptive interval ([`ConntrackGc`]: shorter under pressure, longer when idle) or, sooner,
/// within [`PRESSURE_POLL`] of the datapath refusing a new flow for a full table, at the
/// datapath's clock (`DatapathConfig::fixed_now_ns` when set, `CLOCK_MONOTONIC` otherwise, read
/// from the config map before each sweep). Made by [`KernelDatapath::spawn_conntrack_gc`].
///
/// The task has its own handles (duplicated file descriptors) to the conntrack, counters and
/// config maps: it shares no state with the [`KernelDatapath`], which stays fully usable, and it
/// keeps working if the datapath value is dropped while the programs stay attached (pinned).
///
/// [`stop`](Self::stop) (or dropping the handle) wakes the thread and joins it: it returns as
/// soon as a sweep in progress ends (a sweep is bounded at twice the map's capacity in
/// entries), never after a whole interval.
#[derive(Debug)]
pub struct ConntrackGcTask {
    commands: Option<mpsc::Sender<GcCommand>>,
    thread: Option<std::thread::JoinHandle<()>>,
    status: Arc<Mutex<GcTaskStatus>>,
}

impl ConntrackGcTask {
    /// What the task has done so far.
    #[must_use]
    pub fn status(&self) -> GcTaskStatus {
        lock(&self.status).clone()
    }

    /// Asks for a sweep now (e.g. after a burst of `conntrack_full` drops) instead of at the end
    /// of the current interval. Does not wait for it: see [`status`](Self::status).
    pub fn sweep_now(&self) {
        if let Some(tx) = &self.commands {
            let _ = tx.send(GcCommand::Sweep);
        }
    }

    /// Stops the task and waits for its thread: at most the end of a sweep in progress.
    /// Returns the final status.
    pub fn stop(mut self) -> GcTaskStatus {
        self.shutdown();
        self.status()
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.commands.take() {
            let _ = tx.send(GcCommand::Stop);
        }
        if let Some(t) = self.thread.take() {
            // A panicking sweep would already have been reported by the thread itself.
            let _ = t.join();
        }
    }
}

impl Drop for ConntrackGcTask {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The status even if a sweep panicked while holding the lock: it is plain data.
fn lock(m: &Mutex<GcTaskStatus>) -> std::sync::MutexGuard<'_, GcTaskStatus> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The task's own handles to the maps it needs.
struct GcMaps {
    conntrack: Map,
    counters: Map,
    config: Map,
    capacity: u64,
    sweeper: KernelSweeper,
}

impl GcMaps {
    /// Now, as the datapath sees it.
    fn now_ns(&self) -> Result<u64, Error> {
        let a: Array<&MapData, DatapathConfig> =
            Array::try_from(&self.config).map_err(|source| Error::Map {
                map: CONFIG.name,
                source,
            })?;
        let cfg = a.get(&0, 0).map_err(|source| Error::Map {
            map: CONFIG.name,
            source,
        })?;
        Ok(lb_datapath::now_ns(&cfg, || MonotonicClock.now_ns()))
    }

    fn conntrack_full_drops(&self) -> Result<u64, Error> {
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(&self.counters).map_err(|source| Error::Map {
                map: COUNTERS.name,
                source,
            })?;
        let per_cpu = a
            .get(&DropReason::ConntrackFull.slot(), 0)
            .map_err(|source| Error::Map {
                map: COUNTERS.name,
                source,
            })?;
        Ok(per_cpu.iter().sum())
    }

    /// Sweeps once: the time it ran at, its report and the `conntrack_full` drops it saw.
    fn sweep(&mut self, gc: &mut ConntrackGc) -> Result<(u64, GcReport, u64), Error> {
        let now = self.now_ns()?;
        let insert_failures_full = self.conntrack_full_drops()?;
        let map = HashMap::try_from(&mut self.conntrack).map_err(map_err)?;
        let mut table = KernelConntrackTable {
            map,
            capacity: self.capacity,
            insert_failures_full,
            sweeper: Some(&mut self.sweeper),
        };
        let report = gc.run(&mut table, now)?;
        Ok((now, report, insert_failures_full))
    }
}

/// Why a [`ConntrackGcTask`] stopped waiting.
enum Wake {
    /// The interval ended, or a sweep was asked for.
    Sweep,
    /// The table refused new flows since the last sweep.
    Pressure,
    /// The task is stopped.
    Stop,
}

/// Waits out `wait`, looking for pressure (the `conntrack_full` counter past `full_seen`)
/// every [`PRESSURE_POLL`].
fn wait_for_sweep(
    maps: &GcMaps,
    commands: &mpsc::Receiver<GcCommand>,
    wait: std::time::Duration,
    full_seen: u64,
) -> Wake {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Wake::Sweep;
        }
        match commands.recv_timeout(left.min(PRESSURE_POLL)) {
            Ok(GcCommand::Sweep) => return Wake::Sweep,
            Ok(GcCommand::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return Wake::Stop,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        // A counter that cannot be read wakes nothing: the interval still ends.
        if maps.conntrack_full_drops().is_ok_and(|n| n > full_seen) {
            return Wake::Pressure;
        }
    }
}

fn run_task(
    mut maps: GcMaps,
    mut gc: ConntrackGc,
    commands: &mpsc::Receiver<GcCommand>,
    status: &Mutex<GcTaskStatus>,
) {
    let mut full_seen = 0;
    loop {
        let result = maps.sweep(&mut gc);
        let wait = {
            let mut s = lock(status);
            s.sweeps += 1;
            s.stats = gc.stats();
            match result {
                Ok((now, report, full)) => {
                    s.last_now_ns = now;
                    s.last_report = Some(report);
                    s.last_error = None;
                    full_seen = full;
                    report.next_interval
                }
                Err(e) => {
                    s.last_error = Some(e.to_string());
                    gc.interval()
                }
            }
        };
        match wait_for_sweep(&maps, commands, wait, full_seen) {
            Wake::Sweep => {}
            Wake::Pressure => lock(status).pressure_wakes += 1,
            Wake::Stop => return,
        }
    }
}

impl KernelDatapath {
    /// Another handle to one of this datapath's maps (a duplicated file descriptor), for a task
    /// that outlives borrows of `self`.
    fn map_handle(&self, table: Table) -> Result<Map, Error> {
        let name = table.name;
        let m = self.map_ro(table)?;
        let data = match m {
            Map::HashMap(d) | Map::Array(d) | Map::PerCpuArray(d) => d,
            // Not reachable with this crate's object: the task's maps are of these types.
            _ => {
                return Err(Error::Map {
                    map: name,
                    source: MapError::InvalidName {
                        name: format!("{name} (not a hash, array or per-CPU array map)"),
                    },
                })
            }
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|io_error| Error::Map {
                map: name,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "dup",
                    io_error,
                }),
            })?;
        let data = MapData::from_fd(fd).map_err(|source| Error::Map { map: name, source })?;
        Map::from_map_data(data).map_err(|source| Error::Map { map: name, source })
    }

    /// Starts conntrack GC as a task: a thread that sweeps the kernel conntrack map once now and
    /// then at the adaptive interval of `cfg` (see [`ConntrackGcTask`]). A CNI starts it once
    /// after loading and keeps the handle; dropping the handle stops the task.
    ///
    /// ```no_run
    /// use lb_bpf::KernelDatapath;
    /// use lb_conntrack::GcConfig;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dp = KernelDatapath::load_pinned("/sys/fs/bpf/lb")?;
    /// let gc = dp.spawn_conntrack_gc(GcConfig::default())?;
    /// // ... later, for metrics:
    /// let status = gc.status();
    /// println!("{} sweeps, {} deleted", status.stats.runs, status.stats.total_deleted);
    /// gc.stop();
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Map`] if a map handle cannot be duplicated or its capacity read;
    /// [`Error::Task`] if the thread cannot be started.
    pub fn spawn_conntrack_gc(&self, cfg: GcConfig) -> Result<ConntrackGcTask, Error> {
        let maps = GcMaps {
            conntrack: self.map_handle(CONNTRACK)?,
            counters: self.map_handle(COUNTERS)?,
            config: self.map_handle(CONFIG)?,
            capacity: self.conntrack_capacity()?,
            sweeper: self.sweeper()?,
        };
        let (tx, rx) = mpsc::channel();
        let status = Arc::new(Mutex::new(GcTaskStatus::default()));
        let thread_status = Arc::clone(&status);
        let thread = std::thread::Builder::new()
            .name("lb-conntrack-gc".into())
            .spawn(move || run_task(maps, ConntrackGc::new(cfg), &rx, &thread_status))
            .map_err(|source| Error::Task {
                task: "conntrack GC",
                source,
            })?;
        Ok(ConntrackGcTask {
            commands: Some(tx),
            thread: Some(thread),
            status,
        })
    }
}
