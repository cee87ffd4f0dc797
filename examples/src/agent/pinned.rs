//! The pinned maps of a running node, read without loading anything: what `lbctl` shows.
//! A running agent keeps writing them; each read is one consistent pass over one map.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use lb_api::abi::{
    BackendKey, BackendValue, CtEntry, CtKey, DatapathConfig, ServiceKey, ServiceValue,
};
use lb_api::counters::{CounterSnapshot, COUNTER_SLOTS};
use lb_api::tables::{self, Table};

/// Why a pinned map cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    /// The map is not pinned there.
    #[error(
        "no pinned map {table} at {path}: is the agent running with this pin directory \
         (`datapath.pin_dir`, lbctl's --pin-dir)?"
    )]
    Missing {
        /// The map's name.
        table: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: MapError,
    },
    /// The map is there but reading it failed.
    #[error("reading pinned map {table} failed (run as root, or with CAP_BPF)")]
    Read {
        /// The map's name.
        table: &'static str,
        /// The kernel's answer.
        #[source]
        source: MapError,
    },
}

/// The pin directory of a running datapath.
#[derive(Debug, Clone)]
pub struct PinnedMaps {
    dir: PathBuf,
}

impl PinnedMaps {
    /// The maps pinned under `dir/maps/` (nothing is opened yet).
    #[must_use]
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    fn open(&self, table: Table) -> Result<Map, PinnedError> {
        let path = self.dir.join("maps").join(table.name);
        let data = MapData::from_pin(&path).map_err(|source| PinnedError::Missing {
            table: table.name,
            path,
            source,
        })?;
        Ok(match table.kind {
            tables::MapKind::Array => Map::Array(data),
            tables::MapKind::PerCpuArray => Map::PerCpuArray(data),
            _ => Map::HashMap(data),
        })
    }

    fn read_err(table: Table) -> impl Fn(MapError) -> PinnedError {
        move |source| PinnedError::Read {
            table: table.name,
            source,
        }
    }

    fn hash<K: aya::Pod + Ord + Copy, V: aya::Pod>(
        &self,
        table: Table,
    ) -> Result<Vec<(K, V)>, PinnedError> {
        let map = self.open(table)?;
        let h: HashMap<&MapData, K, V> = HashMap::try_from(&map).map_err(Self::read_err(table))?;
        let mut v = h
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(Self::read_err(table))?;
        v.sort_by_key(|a| a.0);
        Ok(v)
    }

    /// Every conntrack entry.
    ///
    /// # Errors
    /// [`PinnedError`] naming the map.
    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtEntry)>, PinnedError> {
        let map = self.open(tables::CONNTRACK)?;
        let h: HashMap<&MapData, CtKey, CtEntry> =
            HashMap::try_from(&map).map_err(Self::read_err(tables::CONNTRACK))?;
        h.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(Self::read_err(tables::CONNTRACK))
    }

    /// Every service (frontend), sorted by key.
    ///
    /// # Errors
    /// [`PinnedError`] naming the map.
    pub fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, PinnedError> {
        let mut v: Vec<(ServiceKey, ServiceValue)> = {
            let map = self.open(tables::SERVICES)?;
            let h: HashMap<&MapData, ServiceKey, ServiceValue> =
                HashMap::try_from(&map).map_err(Self::read_err(tables::SERVICES))?;
            h.iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(Self::read_err(tables::SERVICES))?
        };
        v.sort_by_key(|(_, s)| s.id);
        Ok(v)
    }

    /// Every backend slot, sorted by service and slot.
    ///
    /// # Errors
    /// [`PinnedError`] naming the map.
    pub fn backends(&self) -> Result<Vec<(BackendKey, BackendValue)>, PinnedError> {
        let map = self.open(tables::BACKENDS)?;
        let h: HashMap<&MapData, BackendKey, BackendValue> =
            HashMap::try_from(&map).map_err(Self::read_err(tables::BACKENDS))?;
        let mut v = h
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(Self::read_err(tables::BACKENDS))?;
        v.sort_by_key(|(k, _)| (k.service_id, k.slot));
        Ok(v)
    }

    /// The counters, summed over CPUs.
    ///
    /// # Errors
    /// [`PinnedError`] naming the map.
    pub fn counters(&self) -> Result<CounterSnapshot, PinnedError> {
        let map = self.open(tables::COUNTERS)?;
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(&map).map_err(Self::read_err(tables::COUNTERS))?;
        let mut snap = CounterSnapshot::default();
        for slot in 0..COUNTER_SLOTS {
            let per_cpu = a.get(&slot, 0).map_err(Self::read_err(tables::COUNTERS))?;
            if let Some(v) = snap.0.get_mut(slot as usize) {
                *v = per_cpu.iter().sum();
            }
        }
        Ok(snap)
    }

    /// The datapath configuration.
    ///
    /// # Errors
    /// [`PinnedError`] naming the map.
    pub fn config(&self) -> Result<DatapathConfig, PinnedError> {
        let map = self.open(tables::CONFIG)?;
        let a: Array<&MapData, DatapathConfig> =
            Array::try_from(&map).map_err(Self::read_err(tables::CONFIG))?;
        a.get(&0, 0).map_err(Self::read_err(tables::CONFIG))
    }

    /// Number of entries and `max_entries` of a hash table (its fill).
    ///
    /// # Errors
    /// [`PinnedError`] naming the map.
    pub fn fill(&self, table: Table) -> Result<(u64, u32), PinnedError> {
        let map = self.open(table)?;
        let data = match &map {
            Map::HashMap(d) | Map::Array(d) | Map::PerCpuArray(d) => d,
            _ => return Ok((0, 0)),
        };
        let max = data.info().map_err(Self::read_err(table))?.max_entries();
        let n = match table.name {
            n if n == tables::CONNTRACK.name => self.conntrack()?.len(),
            n if n == tables::SERVICES.name => self.services()?.len(),
            n if n == tables::BACKENDS.name => self.backends()?.len(),
            n if n == tables::NODES.name => {
                self.hash::<[u8; 16], u32>(table).map_or(0, |v| v.len())
            }
            _ => 0,
        };
        Ok((n as u64, max))
    }
}

/// The IP address in a 16-byte address field of `family` (4 or 6).
#[must_use]
pub fn ip_of(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

/// The socket address of an address field, family and port.
#[must_use]
pub fn sock(addr: &[u8; 16], family: u8, port: u16) -> SocketAddr {
    SocketAddr::new(ip_of(addr, family), port)
}
