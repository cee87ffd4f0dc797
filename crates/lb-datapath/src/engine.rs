//! The userspace engine: [`process`](crate::process) over hashbrown tables.
//!
//! It is the reference the kernel programs are compared to (differential tests), a simulator for
//! CNI authors, and a datapath for hosts without eBPF.

use lb_api::abi::{
    BackendKey, BackendValue, CtEntry, CtKey, DatapathConfig, ServiceKey, ServiceValue,
};
use lb_api::counters::{CounterSnapshot, Counters};
use lb_api::wire::SlicePacket;
use lb_api::Verdict;
use lb_conntrack::{
    Clock, ConntrackTable, HashConntrackTable, InsertError, InsertMode, MonotonicClock,
    TimeoutPolicy,
};
use lb_nat::collision::XorShift32;
use lb_nat::control::{remove_service, upsert_service, ConfigError, ServiceSpec, ServiceStore};
use lb_nat::{HashServiceTable, RandomSource, ServiceTable};

/// A datapath configuration with netfilter's timeouts and the given hash seed.
#[must_use]
pub fn default_config(hash_seed: u32) -> DatapathConfig {
    DatapathConfig {
        timeouts: TimeoutPolicy::netfilter().to_timeouts(),
        fixed_now_ns: 0,
        hash_seed,
        flags: 0,
        src_port_min: 0,
        src_port_max: 0,
        src_port_tries: 0,
    }
}

/// The engine's tables: conntrack, services and counters.
#[derive(Debug, Clone)]
pub struct UserTables {
    /// Conntrack entries.
    pub ct: HashConntrackTable,
    /// Services and backends.
    pub services: HashServiceTable,
    /// Counters, indexed like the kernel's counter array.
    pub counters: CounterSnapshot,
    /// The pipeline's random source (seeded: runs are reproducible).
    pub rng: XorShift32,
}

impl RandomSource for UserTables {
    fn random_u32(&mut self) -> u32 {
        self.rng.random_u32()
    }
}

impl ConntrackTable for UserTables {
    fn get_mut(&mut self, key: &CtKey) -> Option<&mut CtEntry> {
        self.ct.get_mut(key)
    }
    fn insert(
        &mut self,
        key: &CtKey,
        entry: &CtEntry,
        mode: InsertMode,
    ) -> Result<(), InsertError> {
        self.ct.insert(key, entry, mode)
    }
    fn remove(&mut self, key: &CtKey) -> bool {
        self.ct.remove(key)
    }
}

impl ServiceTable for UserTables {
    fn service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        self.services.service(key)
    }
    fn backend(&self, key: &BackendKey) -> Option<BackendValue> {
        self.services.backend(key)
    }
}

impl Counters for UserTables {
    fn bump(&mut self, slot: u32) {
        self.counters.bump(slot);
    }
}

/// The userspace datapath.
#[derive(Debug)]
pub struct Engine<C: Clock = MonotonicClock> {
    cfg: DatapathConfig,
    tables: UserTables,
    clock: C,
    scratch: crate::Scratch,
}

impl Engine<MonotonicClock> {
    /// An engine with a conntrack table of `ct_capacity` entries, netfilter timeouts and the
    /// system's monotonic clock.
    #[must_use]
    pub fn new(ct_capacity: usize) -> Self {
        Self::with_clock(ct_capacity, default_config(0), MonotonicClock)
    }
}

impl<C: Clock> Engine<C> {
    /// An engine with an explicit configuration and clock. The random source (collision
    /// resolution) is seeded from `cfg.hash_seed`, so runs are reproducible.
    pub fn with_clock(ct_capacity: usize, cfg: DatapathConfig, clock: C) -> Self {
        let tables = UserTables {
            ct: HashConntrackTable::with_capacity(ct_capacity),
            services: HashServiceTable::default(),
            counters: CounterSnapshot::default(),
            rng: XorShift32::new(cfg.hash_seed ^ 0x5eed_0001),
        };
        Self {
            cfg,
            tables,
            clock,
            scratch: crate::Scratch::default(),
        }
    }

    /// Runs one Ethernet frame through the pipeline, rewriting it in place.
    pub fn process(&mut self, frame: &mut [u8]) -> Verdict {
        let now = crate::now_ns(&self.cfg, || self.clock.now_ns());
        let mut pkt = SlicePacket::new(frame);
        crate::process(
            &mut pkt,
            &self.cfg,
            now,
            &mut self.tables,
            &mut self.scratch,
        )
    }

    /// Adds or replaces a service.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the invalid field.
    pub fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<(), ConfigError> {
        upsert_service(&mut self.tables.services, spec)
    }

    /// Removes a service. Established flows keep their conntrack entries until they expire.
    pub fn remove_service(&mut self, spec: &ServiceSpec) {
        remove_service(&mut self.tables.services, spec);
    }

    /// The conntrack table.
    #[must_use]
    pub fn conntrack(&self) -> &HashConntrackTable {
        &self.tables.ct
    }

    /// The counters.
    #[must_use]
    pub fn counters(&self) -> &CounterSnapshot {
        &self.tables.counters
    }

    /// All tables.
    #[must_use]
    pub fn tables(&self) -> &UserTables {
        &self.tables
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &DatapathConfig {
        &self.cfg
    }

    /// Replaces the configuration.
    pub fn set_config(&mut self, cfg: DatapathConfig) {
        self.cfg = cfg;
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }
}

impl<C: Clock> ServiceStore for Engine<C> {
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), ConfigError> {
        self.tables.services.put_service(key, value)
    }
    fn put_backend(&mut self, key: BackendKey, value: BackendValue) -> Result<(), ConfigError> {
        self.tables.services.put_backend(key, value)
    }
    fn get_service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        self.tables.services.get_service(key)
    }
    fn remove_backend(&mut self, key: &BackendKey) {
        self.tables.services.remove_backend(key);
    }
    fn remove_service(&mut self, key: &ServiceKey) {
        self.tables.services.remove_service(key);
    }
}
