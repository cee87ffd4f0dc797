//! The tables behind the control-plane API: typed access to the object's maps by their
//! [`lb_api::tables`] entries, the datapath configuration, services and backends (the
//! [`ServiceStore`] the control plane writes through, as it does into the engine's tables) and
//! conntrack reads.

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use lb_api::abi::{
    AffinityKey, AffinityValue, BackendAddrKey, BackendKey, BackendValue, CtEntry, CtKey,
    DatapathConfig, NodeKey, ServiceKey, ServiceValue,
};
use lb_api::counters::Counter;
use lb_api::tables::{
    Table, AFFINITY, BACKENDS, BACKENDS_BY_ADDR, CONFIG, CONNTRACK, COUNTERS, NODES, SERVICES,
};
use lb_control::{self as control, ConfigError, ServiceSpec, ServiceStore, TableSizes};

use crate::{Error, KernelDatapath};

impl KernelDatapath {
    /// The loaded map of `table`.
    pub(crate) fn map(&mut self, table: Table) -> Result<&mut Map, Error> {
        self.ebpf.map_mut(table.name).ok_or_else(|| missing(table))
    }

    /// The loaded map of `table`, to read.
    pub(crate) fn map_ro(&self, table: Table) -> Result<&Map, Error> {
        self.ebpf.map(table.name).ok_or_else(|| missing(table))
    }

    /// The hash map of `table`.
    pub(crate) fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        table: Table,
    ) -> Result<HashMap<&mut MapData, K, V>, Error> {
        HashMap::try_from(self.map(table)?).map_err(|source| Error::Map {
            map: table.name,
            source,
        })
    }

    /// The hash map of `table`, to read.
    pub(crate) fn hash_ro<K: aya::Pod, V: aya::Pod>(
        &self,
        table: Table,
    ) -> Result<HashMap<&MapData, K, V>, Error> {
        HashMap::try_from(self.map_ro(table)?).map_err(|source| Error::Map {
            map: table.name,
            source,
        })
    }

    /// Writes the datapath configuration.
    ///
    /// # Errors
    /// [`Error::Map`] if the kernel refuses the write.
    pub fn set_config(&mut self, cfg: &DatapathConfig) -> Result<(), Error> {
        let mut a: Array<&mut MapData, DatapathConfig> = Array::try_from(self.map(CONFIG)?)
            .map_err(|source| Error::Map {
                map: CONFIG.name,
                source,
            })?;
        a.set(0, *cfg, 0).map_err(|source| Error::Map {
            map: CONFIG.name,
            source,
        })
    }

    /// Sets this node's identity: its addresses (SNAT source, tunnel endpoint), its peers and
    /// the tunnel's parameters. The rest of the configuration in the kernel (timeouts, seeds)
    /// is kept.
    ///
    /// # Errors
    /// [`Error::Config`] naming the invalid field (nothing is written then), or a refused map
    /// write.
    pub fn set_node(&mut self, node: &control::NodeSpec) -> Result<(), Error> {
        node.validate()?;
        let mut cfg = self.config()?;
        control::set_node(self, &mut cfg, node)?;
        self.set_config(&cfg)
    }

    /// The datapath configuration in the kernel.
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read.
    pub fn config(&mut self) -> Result<DatapathConfig, Error> {
        let a: Array<&mut MapData, DatapathConfig> =
            Array::try_from(self.map(CONFIG)?).map_err(|source| Error::Map {
                map: CONFIG.name,
                source,
            })?;
        a.get(&0, 0).map_err(|source| Error::Map {
            map: CONFIG.name,
            source,
        })
    }

    /// Adds or replaces a service (same rules and write order as the userspace engine).
    ///
    /// # Errors
    /// [`Error::Config`] naming the invalid field, or a refused map write.
    pub fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<(), Error> {
        control::upsert_service(self, spec).map_err(Error::from)
    }

    /// Removes a service, its slots and its flows (see [`lb_control::remove_service`]); the
    /// number of flows deleted.
    ///
    /// # Errors
    /// [`Error::Config`] with [`ConfigError::Store`] naming the table (conntrack, counters)
    /// that could not be read or written; the service and its slots are gone by then.
    pub fn remove_service(&mut self, spec: &ServiceSpec) -> Result<u64, Error> {
        control::remove_service(self, spec).map_err(Error::from)
    }

    /// Deletes every flow to `backend` over `proto`, both entries of each (see
    /// [`lb_control::flush_backend_flows`]); the number of flows deleted.
    ///
    /// # Errors
    /// As [`remove_service`](Self::remove_service).
    pub fn flush_backend_flows(
        &mut self,
        backend: std::net::SocketAddr,
        proto: lb_api::flow::L4Proto,
    ) -> Result<u64, Error> {
        control::flush_backend_flows(self, backend, proto).map_err(Error::from)
    }

    /// All service entries, sorted by key bytes (to compare with the engine's table).
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read.
    pub fn service_entries(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, Error> {
        sorted_entries(self.hash_ro(SERVICES)?, SERVICES)
    }

    /// All backend slots (of both slot sets), sorted by key bytes.
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read.
    pub fn backend_slots(&self) -> Result<Vec<(BackendKey, BackendValue)>, Error> {
        sorted_entries(self.hash_ro(BACKENDS)?, BACKENDS)
    }

    /// All conntrack entries, sorted by key bytes.
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read.
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtEntry)>, Error> {
        let m: HashMap<&MapData, CtKey, CtEntry> = self.hash_ro(CONNTRACK)?;
        let mut v = m
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::Map {
                map: CONNTRACK.name,
                source,
            })?;
        v.sort_by(|a, b| {
            zerocopy::IntoBytes::as_bytes(&a.0).cmp(zerocopy::IntoBytes::as_bytes(&b.0))
        });
        Ok(v)
    }

    /// All session-affinity entries, sorted by key bytes (expired ones included, until they
    /// are replaced or evicted).
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read.
    pub fn affinity_entries(&self) -> Result<Vec<(AffinityKey, AffinityValue)>, Error> {
        let m: HashMap<&MapData, AffinityKey, AffinityValue> = self.hash_ro(AFFINITY)?;
        let mut v = m
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::Map {
                map: AFFINITY.name,
                source,
            })?;
        v.sort_by(|a, b| {
            zerocopy::IntoBytes::as_bytes(&a.0).cmp(zerocopy::IntoBytes::as_bytes(&b.0))
        });
        Ok(v)
    }

    /// The conntrack entry under `key`, if any.
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read.
    pub fn conntrack_entry(&self, key: &CtKey) -> Result<Option<CtEntry>, Error> {
        let m: HashMap<&MapData, CtKey, CtEntry> = self.hash_ro(CONNTRACK)?;
        match m.get(key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(None)
            }
            Err(source) => Err(Error::Map {
                map: CONNTRACK.name,
                source,
            }),
        }
    }

    /// Deletes the conntrack entry under `key` alone (not its partner; the engine's
    /// `Engine::conntrack_remove` does the same). Whether an entry was there.
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be written.
    pub fn conntrack_remove(&mut self, key: &CtKey) -> Result<bool, Error> {
        let mut m: HashMap<&mut MapData, CtKey, CtEntry> = self.hash(CONNTRACK)?;
        match m.remove(key) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(source) => Err(Error::Map {
                map: CONNTRACK.name,
                source,
            }),
        }
    }

    /// Deletes every conntrack entry.
    ///
    /// # Errors
    /// [`Error::Map`] if the map cannot be read or written.
    pub fn flush_conntrack(&mut self) -> Result<(), Error> {
        let keys: Vec<CtKey> = self
            .conntrack_entries()?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let mut m: HashMap<&mut MapData, CtKey, CtEntry> = self.hash(CONNTRACK)?;
        for k in keys {
            let _ = m.remove(&k);
        }
        Ok(())
    }
}

impl ServiceStore for KernelDatapath {
    fn put_node(&mut self, key: NodeKey) -> Result<(), ConfigError> {
        let sizes = self.sizes;
        let mut m: HashMap<&mut MapData, NodeKey, u32> =
            self.hash(NODES).map_err(|e| store_err(NODES, &e))?;
        m.insert(key, 1, 0)
            .map_err(|e| insert_err(&sizes, NODES, &e))
    }
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), ConfigError> {
        let sizes = self.sizes;
        let mut m: HashMap<&mut MapData, ServiceKey, ServiceValue> =
            self.hash(SERVICES).map_err(|e| store_err(SERVICES, &e))?;
        m.insert(key, value, 0)
            .map_err(|e| insert_err(&sizes, SERVICES, &e))
    }
    fn put_backend(&mut self, key: BackendKey, value: BackendValue) -> Result<(), ConfigError> {
        let sizes = self.sizes;
        let mut m: HashMap<&mut MapData, BackendKey, BackendValue> =
            self.hash(BACKENDS).map_err(|e| store_err(BACKENDS, &e))?;
        m.insert(key, value, 0)
            .map_err(|e| insert_err(&sizes, BACKENDS, &e))
    }
    fn get_service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        let m: HashMap<&MapData, ServiceKey, ServiceValue> = self.hash_ro(SERVICES).ok()?;
        m.get(key, 0).ok()
    }
    fn get_backend(&self, key: &BackendKey) -> Option<BackendValue> {
        let m: HashMap<&MapData, BackendKey, BackendValue> = self.hash_ro(BACKENDS).ok()?;
        m.get(key, 0).ok()
    }
    fn for_each_flow(&mut self, f: &mut dyn FnMut(&CtKey, &CtEntry)) -> Result<(), ConfigError> {
        // Bounded: a walk of a map that packets keep changing may revisit keys.
        let bound = self
            .conntrack_capacity()
            .map_err(|e| store_err(CONNTRACK, &e))?
            .saturating_mul(2)
            .max(1);
        let m: HashMap<&MapData, CtKey, CtEntry> = self
            .hash_ro(CONNTRACK)
            .map_err(|e| store_err(CONNTRACK, &e))?;
        let mut n = 0u64;
        for item in m.iter() {
            let (k, e) = item.map_err(|e| store_err(CONNTRACK, &e))?;
            f(&k, &e);
            n += 1;
            if n >= bound {
                break;
            }
        }
        Ok(())
    }
    fn delete_flow_entry(&mut self, key: &CtKey) -> Result<bool, ConfigError> {
        let mut m: HashMap<&mut MapData, CtKey, CtEntry> =
            self.hash(CONNTRACK).map_err(|e| store_err(CONNTRACK, &e))?;
        match m.remove(key) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(store_err(CONNTRACK, &e)),
        }
    }
    fn count_backend_flows_removed(&mut self, flows: u64) -> Result<(), ConfigError> {
        self.add_to_counter(Counter::CtBackendRemoved, flows)
            .map_err(|e| store_err(COUNTERS, &e))
    }
    fn remove_backend(&mut self, key: &BackendKey) {
        if let Ok(mut m) = self.hash::<BackendKey, BackendValue>(BACKENDS) {
            let _ = m.remove(key);
        }
    }
    fn remove_service(&mut self, key: &ServiceKey) {
        if let Ok(mut m) = self.hash::<ServiceKey, ServiceValue>(SERVICES) {
            let _ = m.remove(key);
        }
    }
    fn put_backend_by_addr(
        &mut self,
        key: BackendAddrKey,
        value: BackendValue,
    ) -> Result<(), ConfigError> {
        let sizes = self.sizes;
        let mut m: HashMap<&mut MapData, BackendAddrKey, BackendValue> = self
            .hash(BACKENDS_BY_ADDR)
            .map_err(|e| store_err(BACKENDS_BY_ADDR, &e))?;
        m.insert(key, value, 0)
            .map_err(|e| insert_err(&sizes, BACKENDS_BY_ADDR, &e))
    }
    fn remove_backend_by_addr(&mut self, key: &BackendAddrKey) {
        if let Ok(mut m) = self.hash::<BackendAddrKey, BackendValue>(BACKENDS_BY_ADDR) {
            let _ = m.remove(key);
        }
    }
}

/// Every entry of `m` (the map of `table`), sorted by key bytes.
fn sorted_entries<K, V>(m: HashMap<&MapData, K, V>, table: Table) -> Result<Vec<(K, V)>, Error>
where
    K: aya::Pod + zerocopy::IntoBytes + zerocopy::Immutable,
    V: aya::Pod,
{
    let mut v = m
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Map {
            map: table.name,
            source,
        })?;
    v.sort_by(|a, b| zerocopy::IntoBytes::as_bytes(&a.0).cmp(zerocopy::IntoBytes::as_bytes(&b.0)));
    Ok(v)
}

fn store_err(table: Table, e: &dyn std::fmt::Display) -> ConfigError {
    ConfigError::Store {
        table: table.name,
        reason: e.to_string(),
    }
}

/// A refused insert into `table`: [`ConfigError::TableFull`] when the map is full (a
/// preallocated hash map refuses a new key with `E2BIG` once it holds its size), else
/// [`ConfigError::Store`].
fn insert_err(sizes: &TableSizes, table: Table, e: &MapError) -> ConfigError {
    if let MapError::SyscallError(s) = e {
        if s.io_error.raw_os_error() == Some(libc::E2BIG) {
            if let Some((capacity, knob)) = sizes.of(&table) {
                return ConfigError::TableFull {
                    table: table.name,
                    capacity,
                    knob,
                };
            }
        }
    }
    store_err(table, e)
}

/// The error for a registered table the loaded object lacks.
pub(crate) fn missing(table: Table) -> Error {
    Error::MissingMap { map: table.name }
}
