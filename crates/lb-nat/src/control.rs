//! The control-plane API a CNI programs against: typed service specs, their validation, and how
//! they are written into service/backend tables. The userspace engine and the kernel loader both
//! implement [`ServiceStore`], so one piece of code decides what the tables contain.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::vec::Vec;

pub use lb_api::abi::ForwardingMode;
use lb_api::abi::{BackendKey, BackendValue, DatapathConfig, NodeKey, ServiceKey, ServiceValue};
use lb_api::flow::{IpFamily, L4Proto};

use crate::maglev::{maglev_table, MaglevBackend, MAGLEV_TABLE_SIZES};

/// Most backends one service may have.
pub const MAX_BACKENDS_PER_SERVICE: usize = 1024;

/// Most backend slots a random-selection service may use (weights are expanded into slots).
pub const MAX_RANDOM_SLOTS: u32 = 4096;

/// Default session-affinity timeout (kube-proxy's `sessionAffinityConfig.clientIP.timeoutSeconds`).
pub const AFFINITY_DEFAULT_TIMEOUT_S: u32 = 10_800;
/// Longest session-affinity timeout Kubernetes accepts.
pub const AFFINITY_MAX_TIMEOUT_S: u32 = 86_400;

/// [`ServiceValue::flags`] bit: the slots hold a Maglev table.
pub const SVC_F_MAGLEV: u32 = 0x1;
/// [`ServiceValue::flags`] bit: `externalTrafficPolicy: Local` (only node-local backends).
pub const SVC_F_LOCAL: u32 = 0x2;

/// Whether a backend takes new flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendState {
    /// Ready: takes new flows.
    #[default]
    Active,
    /// Being deleted: keeps its existing flows (they live in conntrack), gets no new ones.
    Terminating,
}

/// A backend: address, weight, state, and the node it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendSpec {
    /// Pod address and target port.
    pub addr: SocketAddr,
    /// Relative weight of new flows; 0 takes none. Default 1.
    pub weight: u16,
    /// Active or terminating.
    pub state: BackendState,
    /// The address of the node the backend runs on, when that is another node: packets to it
    /// are forwarded in the service's [`ForwardingMode`], and `externalTrafficPolicy: Local`
    /// skips it. `None` (the default): this node, plain DNAT.
    pub node: Option<IpAddr>,
}

impl From<SocketAddr> for BackendSpec {
    fn from(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: 1,
            state: BackendState::Active,
            node: None,
        }
    }
}

impl core::str::FromStr for BackendSpec {
    type Err = std::net::AddrParseError;
    /// Parses `ip:port` into an active, weight-1 backend on this node.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<SocketAddr>().map(Self::from)
    }
}

impl BackendSpec {
    /// Whether the backend may receive new flows under `policy`.
    #[must_use]
    pub fn takes_new_flows(&self, policy: TrafficPolicy) -> bool {
        self.state == BackendState::Active
            && self.weight > 0
            && (policy == TrafficPolicy::Cluster || self.node.is_none())
    }
}

/// How a new flow picks its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selection {
    /// Flow hash modulo the slots (weights expand into slots). Cheapest; on a backend change
    /// most flows of a hash-picked (not yet tracked) mapping move.
    #[default]
    Random,
    /// Maglev consistent hashing over a table of `table_size` entries (a prime from
    /// [`MAGLEV_TABLE_SIZES`]): about 1/N of flows move when
    /// one of N backends goes.
    Maglev {
        /// Entries in the table (and slots in the backend table).
        table_size: u32,
    },
}

/// Kubernetes `sessionAffinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionAffinity {
    /// Each flow picks its backend independently.
    #[default]
    None,
    /// Flows from one client address stick to one backend for `timeout_s` seconds
    /// (1..=86400, default 10800).
    ClientIp {
        /// Stickiness timeout in seconds.
        timeout_s: u32,
    },
}

/// Kubernetes `externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    /// Any backend of the cluster.
    #[default]
    Cluster,
    /// Only backends on this node (keeps the client address, no second hop).
    Local,
}

/// A range of ports, inclusive (`min..=max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub min: u16,
    /// Last port.
    pub max: u16,
}

impl PortRange {
    /// Checks that the range is non-empty and does not include port 0.
    ///
    /// # Errors
    /// [`ConfigError::EmptyPortRange`] naming `field`.
    pub fn validate(&self, field: &'static str) -> Result<(), ConfigError> {
        if self.min == 0 || self.min > self.max {
            return Err(ConfigError::EmptyPortRange {
                field,
                min: self.min,
                max: self.max,
            });
        }
        Ok(())
    }
}

/// A service: one frontend and the backends its flows are spread over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Identifier chosen by the caller, unique per service, non-zero.
    pub id: u32,
    /// Address and port clients connect to (ClusterIP, NodePort, external IP).
    pub frontend: SocketAddr,
    /// Transport protocol.
    pub proto: L4Proto,
    /// Backends. `"ip:port".parse()` gives an active backend of weight 1.
    pub backends: Vec<BackendSpec>,
    /// Backend selection algorithm.
    pub selection: Selection,
    /// Session affinity.
    pub affinity: SessionAffinity,
    /// External traffic policy.
    pub external_traffic_policy: TrafficPolicy,
    /// How packets reach backends on other nodes. Default SNAT.
    pub mode: ForwardingMode,
}

impl Default for ServiceSpec {
    /// An invalid placeholder (id 0, frontend `0.0.0.0:0`, TCP, no backends) to fill with
    /// `..Default::default()`.
    fn default() -> Self {
        Self {
            id: 0,
            frontend: SocketAddr::from(([0, 0, 0, 0], 0)),
            proto: L4Proto::Tcp,
            backends: Vec::new(),
            selection: Selection::Random,
            affinity: SessionAffinity::None,
            external_traffic_policy: TrafficPolicy::Cluster,
            mode: ForwardingMode::Snat,
        }
    }
}

/// A service definition the datapath cannot take: which field, and what rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `id` is zero.
    #[error("service id must be non-zero (field `id`); choose a unique id per service")]
    ZeroId,
    /// The protocol has no ports to load-balance on.
    #[error("protocol {0:?} cannot be load-balanced (field `proto`): use Tcp or Udp")]
    UnsupportedProto(L4Proto),
    /// A backend's address family differs from the frontend's.
    #[error(
        "backend {backend} is not of the frontend {frontend}'s address family (field `backends`): \
             use a NAT64-free set of backends of one family"
    )]
    FamilyMismatch {
        /// The frontend.
        frontend: SocketAddr,
        /// The offending backend.
        backend: SocketAddr,
    },
    /// Port zero on the frontend or a backend.
    #[error("port 0 is not a valid {field} port: give the port the service listens on")]
    ZeroPort {
        /// `frontend` or `backends`.
        field: &'static str,
    },
    /// Too many backends.
    #[error("{count} backends exceed the limit of {max} per service (field `backends`)")]
    TooManyBackends {
        /// Backends given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Every backend has weight 0.
    #[error(
        "all {count} backends have weight 0 (field `backends[].weight`): at least one must be > 0"
    )]
    ZeroWeightsOnly {
        /// Backends given.
        count: usize,
    },
    /// Random selection would need more slots than allowed.
    #[error(
        "weights need {slots} slots, more than {max} (field `backends[].weight`): use smaller \
             weights with a common divisor, or Maglev"
    )]
    TooManySlots {
        /// Slots the weights need.
        slots: u64,
        /// The limit.
        max: u32,
    },
    /// Maglev table size not one of the supported primes.
    #[error("Maglev table size {size} is not one of {allowed:?} (field `selection.table_size`)")]
    MaglevTableSize {
        /// Size given.
        size: u32,
        /// Supported sizes.
        allowed: [u32; 6],
    },
    /// Session-affinity timeout outside 1..=86400 s.
    #[error(
        "session affinity timeout {timeout_s} s is outside 1..={max} s \
             (field `affinity.timeout_s`; Kubernetes' default is 10800)"
    )]
    AffinityTimeout {
        /// Timeout given.
        timeout_s: u32,
        /// The maximum.
        max: u32,
    },
    /// A port range with `min > max` or including port 0.
    #[error("port range {min}-{max} is empty or includes port 0 (field `{field}`): need 1 <= min <= max")]
    EmptyPortRange {
        /// Which range.
        field: &'static str,
        /// First port given.
        min: u16,
        /// Last port given.
        max: u16,
    },
    /// Two services claim the same frontend.
    #[error(
        "services {first} and {second} both use frontend {frontend}/{proto:?} (field `frontend`): \
             a frontend belongs to one service"
    )]
    OverlappingFrontends {
        /// The shared frontend.
        frontend: SocketAddr,
        /// Its protocol.
        proto: L4Proto,
        /// Id of the first service.
        first: u32,
        /// Id of the second service.
        second: u32,
    },
    /// A node address that cannot be a node's.
    #[error(
        "{addr} cannot be a node address (field `{field}`): give the node's unicast address on \
             the network between nodes"
    )]
    BadNodeAddress {
        /// The field.
        field: &'static str,
        /// The address given.
        addr: IpAddr,
    },
    /// A VXLAN network identifier wider than 24 bits.
    #[error("VNI {vni} does not fit 24 bits (field `vni`): use 1..=16777215")]
    VniTooLarge {
        /// The VNI given.
        vni: u32,
    },
    /// An underlay MTU too small to carry an encapsulated packet.
    #[error(
        "underlay MTU {mtu} is below {min} (field `underlay_mtu`): give the MTU of the interface \
             between nodes (IPv6 requires at least 1280)"
    )]
    MtuTooSmall {
        /// The MTU given.
        mtu: u16,
        /// The least accepted.
        min: u16,
    },
    /// A node spec without any address of its own.
    #[error(
        "the node has no address (fields `address_v4`, `address_v6`): SNAT and tunnels need \
             this node's address on the network between nodes"
    )]
    NoNodeAddress,
    /// The store (kernel map or table) refused a write.
    #[error("writing the {table} table failed: {reason}")]
    Store {
        /// Which table.
        table: &'static str,
        /// What the store said.
        reason: std::string::String,
    },
}

/// Where service entries are written: the engine's hash tables or the kernel's maps.
pub trait ServiceStore {
    /// Adds a peer node (tunnel packets are accepted from it).
    fn put_node(&mut self, key: NodeKey) -> Result<(), ConfigError>;
    /// Creates or replaces a service.
    ///
    /// # Errors
    /// [`ConfigError::Store`] when the table refuses the write.
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), ConfigError>;
    /// Creates or replaces a backend slot.
    ///
    /// # Errors
    /// [`ConfigError::Store`] when the table refuses the write.
    fn put_backend(&mut self, key: BackendKey, value: BackendValue) -> Result<(), ConfigError>;
    /// The service currently stored under `key`.
    fn get_service(&self, key: &ServiceKey) -> Option<ServiceValue>;
    /// Removes a backend slot (absent is fine).
    fn remove_backend(&mut self, key: &BackendKey);
    /// Removes a service (absent is fine).
    fn remove_service(&mut self, key: &ServiceKey);
}

/// The 16-byte address field and family of an IP address.
#[must_use]
pub fn addr_bytes(ip: IpAddr) -> ([u8; 16], IpFamily) {
    match ip {
        IpAddr::V4(a) => (lb_api::flow::v4_addr(a.octets()), IpFamily::V4),
        IpAddr::V6(a) => (a.octets(), IpFamily::V6),
    }
}

impl ServiceSpec {
    /// Checks the spec against the datapath's rules.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        if !matches!(self.proto, L4Proto::Tcp | L4Proto::Udp) {
            return Err(ConfigError::UnsupportedProto(self.proto));
        }
        if self.frontend.port() == 0 {
            return Err(ConfigError::ZeroPort { field: "frontend" });
        }
        if self.backends.len() > MAX_BACKENDS_PER_SERVICE {
            return Err(ConfigError::TooManyBackends {
                count: self.backends.len(),
                max: MAX_BACKENDS_PER_SERVICE,
            });
        }
        for b in &self.backends {
            if b.addr.is_ipv4() != self.frontend.is_ipv4() {
                return Err(ConfigError::FamilyMismatch {
                    frontend: self.frontend,
                    backend: b.addr,
                });
            }
            if b.addr.port() == 0 {
                return Err(ConfigError::ZeroPort { field: "backends" });
            }
            if let Some(node) = b.node {
                if node.is_unspecified() || node.is_multicast() {
                    return Err(ConfigError::BadNodeAddress {
                        field: "backends[].node",
                        addr: node,
                    });
                }
            }
        }
        if !self.backends.is_empty() && self.backends.iter().all(|b| b.weight == 0) {
            return Err(ConfigError::ZeroWeightsOnly {
                count: self.backends.len(),
            });
        }
        match self.selection {
            Selection::Random => {
                let slots = self.random_slot_weights().1;
                if slots > u64::from(MAX_RANDOM_SLOTS) {
                    return Err(ConfigError::TooManySlots {
                        slots,
                        max: MAX_RANDOM_SLOTS,
                    });
                }
            }
            Selection::Maglev { table_size } => {
                if !MAGLEV_TABLE_SIZES.contains(&table_size) {
                    return Err(ConfigError::MaglevTableSize {
                        size: table_size,
                        allowed: MAGLEV_TABLE_SIZES,
                    });
                }
            }
        }
        if let SessionAffinity::ClientIp { timeout_s } = self.affinity {
            if timeout_s == 0 || timeout_s > AFFINITY_MAX_TIMEOUT_S {
                return Err(ConfigError::AffinityTimeout {
                    timeout_s,
                    max: AFFINITY_MAX_TIMEOUT_S,
                });
            }
        }
        Ok(())
    }

    /// The service table key of the frontend.
    #[must_use]
    pub fn key(&self) -> ServiceKey {
        let (addr, family) = addr_bytes(self.frontend.ip());
        ServiceKey {
            addr,
            port: self.frontend.port(),
            proto: self.proto as u8,
            family: family as u8,
        }
    }

    /// For random selection: the greatest common divisor of the weights of backends taking new
    /// flows, and the number of slots they expand to (each backend gets `weight / gcd` slots).
    fn random_slot_weights(&self) -> (u16, u64) {
        let policy = self.external_traffic_policy;
        let g = self
            .backends
            .iter()
            .filter(|b| b.takes_new_flows(policy))
            .fold(0u16, |g, b| gcd(g, b.weight));
        let slots = self
            .backends
            .iter()
            .filter(|b| b.takes_new_flows(policy))
            .map(|b| u64::from(b.weight / g.max(1)))
            .sum();
        (g.max(1), slots)
    }

    /// The backend slot array the datapath selects from: indexes into [`Self::backends`].
    ///
    /// Only backends taking new flows appear (active, weight > 0, node-local under
    /// `externalTrafficPolicy: Local`); terminating backends keep their established flows
    /// through conntrack. Random selection repeats a backend `weight / gcd` times; Maglev fills
    /// its table. Call [`Self::validate`] first.
    #[must_use]
    pub fn slots(&self) -> Vec<u32> {
        let policy = self.external_traffic_policy;
        match self.selection {
            Selection::Random => {
                let (g, _) = self.random_slot_weights();
                let mut v = Vec::new();
                for (i, b) in self.backends.iter().enumerate() {
                    if b.takes_new_flows(policy) {
                        v.extend(core::iter::repeat_n(i as u32, usize::from(b.weight / g)));
                    }
                }
                v
            }
            Selection::Maglev { table_size } => {
                let mb: Vec<MaglevBackend> = self
                    .backends
                    .iter()
                    .map(|b| {
                        let w = if b.takes_new_flows(policy) {
                            b.weight
                        } else {
                            0
                        };
                        MaglevBackend::from_addr(b.addr, w)
                    })
                    .collect();
                maglev_table(&mb, table_size)
            }
        }
    }

    /// The service table value for this spec with `slot_count` slots.
    #[must_use]
    pub fn value(&self, slot_count: u32) -> ServiceValue {
        let mut flags = 0;
        if matches!(self.selection, Selection::Maglev { .. }) {
            flags |= SVC_F_MAGLEV;
        }
        if self.external_traffic_policy == TrafficPolicy::Local {
            flags |= SVC_F_LOCAL;
        }
        flags |= (self.mode as u32) << ServiceValue::MODE_SHIFT;
        ServiceValue {
            id: self.id,
            backend_count: slot_count,
            flags,
            affinity_timeout_s: match self.affinity {
                SessionAffinity::None => 0,
                SessionAffinity::ClientIp { timeout_s } => timeout_s,
            },
        }
    }
}

const fn gcd(mut a: u16, mut b: u16) -> u16 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

/// Checks a set of services together: each valid, and no frontend (address, port, protocol)
/// claimed by two services.
///
/// # Errors
/// The first [`ConfigError`] found.
pub fn validate_services(specs: &[ServiceSpec]) -> Result<(), ConfigError> {
    let mut seen: hashbrown::HashMap<ServiceKey, u32> = hashbrown::HashMap::new();
    for s in specs {
        s.validate()?;
        if let Some(first) = seen.insert(s.key(), s.id) {
            return Err(ConfigError::OverlappingFrontends {
                frontend: s.frontend,
                proto: s.proto,
                first,
                second: s.id,
            });
        }
    }
    Ok(())
}

/// Writes (or rewrites) a service into `store` without a moment where a flow could find an empty
/// slot: new backend slots first, then the service with its new count, then slots past the count
/// are removed.
///
/// # Errors
/// A [`ConfigError`] if the spec is invalid (nothing is written) or the store refuses a write.
pub fn upsert_service<S: ServiceStore + ?Sized>(
    store: &mut S,
    spec: &ServiceSpec,
) -> Result<(), ConfigError> {
    spec.validate()?;
    let key = spec.key();
    let old_count = store.get_service(&key).map_or(0, |v| v.backend_count);
    let slots = spec.slots();
    for (slot, &bi) in slots.iter().enumerate() {
        let Some(b) = spec.backends.get(bi as usize) else {
            continue;
        };
        let (addr, family) = addr_bytes(b.addr.ip());
        let value = BackendValue {
            addr,
            port: b.addr.port(),
            family: family as u8,
            state: 0,
            // Stable per backend (its position in the spec), not per slot.
            id: bi + 1,
            node: b.node.map_or([0; 16], |n| addr_bytes(n).0),
        };
        store.put_backend(
            BackendKey {
                service_id: spec.id,
                slot: slot as u32,
            },
            value,
        )?;
    }
    let count = slots.len() as u32;
    store.put_service(key, spec.value(count))?;
    for slot in count..old_count {
        store.remove_backend(&BackendKey {
            service_id: spec.id,
            slot,
        });
    }
    Ok(())
}

/// Removes a service and its backend slots.
pub fn remove_service<S: ServiceStore + ?Sized>(store: &mut S, spec: &ServiceSpec) {
    let key = spec.key();
    let count = store.get_service(&key).map_or(0, |v| v.backend_count);
    store.remove_service(&key);
    for slot in 0..count {
        store.remove_backend(&BackendKey {
            service_id: spec.id,
            slot,
        });
    }
}

impl ServiceStore for crate::HashServiceTable {
    fn put_node(&mut self, key: NodeKey) -> Result<(), ConfigError> {
        self.nodes.insert(key);
        Ok(())
    }
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), ConfigError> {
        self.services.insert(key, value);
        Ok(())
    }
    fn put_backend(&mut self, key: BackendKey, value: BackendValue) -> Result<(), ConfigError> {
        self.backends.insert(key, value);
        Ok(())
    }
    fn get_service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        self.services.get(key).copied()
    }
    fn remove_backend(&mut self, key: &BackendKey) {
        self.backends.remove(key);
    }
    fn remove_service(&mut self, key: &ServiceKey) {
        self.services.remove(key);
    }
}

/// This node's identity in a cluster: its addresses (the SNAT source and the tunnel endpoint),
/// its peers (the only sources of tunnel packets it accepts), and the tunnel's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// This node's IPv4 address on the network between nodes.
    pub address_v4: Option<Ipv4Addr>,
    /// This node's IPv6 address on the network between nodes.
    pub address_v6: Option<Ipv6Addr>,
    /// The other nodes' addresses.
    pub peers: Vec<IpAddr>,
    /// VXLAN network identifier of the node-to-node tunnel (24 bits). Default 1.
    pub vni: u32,
    /// UDP port of the tunnel. Default 4789.
    pub tunnel_port: u16,
    /// MTU of the interface between nodes: encapsulated packets and DSR carriers that would
    /// exceed it get ICMP "fragmentation needed" / "packet too big". Default 1500.
    pub underlay_mtu: u16,
    /// Source ports SNAT translates to. Default 32768-60999.
    pub snat_ports: PortRange,
}

impl Default for NodeSpec {
    fn default() -> Self {
        Self {
            address_v4: None,
            address_v6: None,
            peers: Vec::new(),
            vni: 1,
            tunnel_port: lb_api::abi::DEFAULT_TUNNEL_PORT,
            underlay_mtu: 1500,
            snat_ports: PortRange {
                min: lb_api::abi::DEFAULT_SNAT_PORT_MIN,
                max: lb_api::abi::DEFAULT_SNAT_PORT_MAX,
            },
        }
    }
}

impl NodeSpec {
    /// Checks the spec.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field and the rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.address_v4.is_none() && self.address_v6.is_none() {
            return Err(ConfigError::NoNodeAddress);
        }
        let own = self
            .address_v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.address_v6.map(IpAddr::V6))
            .map(|a| ("address", a));
        for (field, addr) in own.chain(self.peers.iter().map(|p| ("peers", *p))) {
            if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
                return Err(ConfigError::BadNodeAddress { field, addr });
            }
        }
        if self.vni > 0x00ff_ffff {
            return Err(ConfigError::VniTooLarge { vni: self.vni });
        }
        if self.tunnel_port == 0 {
            return Err(ConfigError::ZeroPort {
                field: "tunnel_port",
            });
        }
        let min = if self.address_v6.is_some() { 1280 } else { 576 };
        if self.underlay_mtu < min {
            return Err(ConfigError::MtuTooSmall {
                mtu: self.underlay_mtu,
                min,
            });
        }
        self.snat_ports.validate("snat_ports")
    }

    /// Writes the node's fields into a datapath configuration.
    pub fn apply(&self, cfg: &mut DatapathConfig) {
        cfg.node_v4 = self.address_v4.map_or([0; 4], |a| a.octets());
        cfg.node_v6 = self.address_v6.map_or([0; 16], |a| a.octets());
        cfg.vni = self.vni;
        cfg.tunnel_port = self.tunnel_port;
        cfg.mtu = self.underlay_mtu;
        cfg.snat_port_min = self.snat_ports.min;
        cfg.snat_port_max = self.snat_ports.max;
    }

    /// The peer table's keys.
    #[must_use]
    pub fn peer_keys(&self) -> Vec<NodeKey> {
        self.peers
            .iter()
            .map(|p| NodeKey {
                addr: addr_bytes(*p).0,
            })
            .collect()
    }
}

/// Validates `node`, writes it into `cfg` and its peers into `store`.
///
/// # Errors
/// A [`ConfigError`] naming the invalid field; nothing is written then.
pub fn set_node<S: ServiceStore + ?Sized>(
    store: &mut S,
    cfg: &mut DatapathConfig,
    node: &NodeSpec,
) -> Result<(), ConfigError> {
    node.validate()?;
    node.apply(cfg);
    for k in node.peer_keys() {
        store.put_node(k)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HashServiceTable;
    use std::string::ToString;
    use std::vec;

    fn spec(backends: Vec<BackendSpec>) -> ServiceSpec {
        ServiceSpec {
            id: 7,
            frontend: "10.96.0.10:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends,
            ..Default::default()
        }
    }

    #[test]
    fn shrinking_a_service_removes_trailing_slots() {
        let mut t = HashServiceTable::default();
        upsert_service(
            &mut t,
            &spec(vec![
                "10.1.0.1:8080".parse().unwrap(),
                "10.1.0.2:8080".parse().unwrap(),
            ]),
        )
        .unwrap();
        assert_eq!(t.backends.len(), 2);
        upsert_service(&mut t, &spec(vec!["10.1.0.2:8080".parse().unwrap()])).unwrap();
        assert_eq!(t.backends.len(), 1);
        assert_eq!(t.services.values().next().unwrap().backend_count, 1);
        remove_service(&mut t, &spec(vec![]));
        assert!(t.services.is_empty() && t.backends.is_empty());
    }

    #[test]
    fn bad_specs_are_refused_with_the_field_named() {
        let mut s = spec(vec!["[fd00::1]:80".parse().unwrap()]);
        let e = s.validate().unwrap_err();
        assert!(matches!(e, ConfigError::FamilyMismatch { .. }));
        assert!(e.to_string().contains("backends"), "{e}");
        s.backends = vec!["10.1.0.1:0".parse().unwrap()];
        assert_eq!(
            s.validate(),
            Err(ConfigError::ZeroPort { field: "backends" })
        );
        s.id = 0;
        assert_eq!(s.validate(), Err(ConfigError::ZeroId));
        let mut t = HashServiceTable::default();
        assert!(upsert_service(&mut t, &s).is_err());
        assert!(t.services.is_empty(), "an invalid spec writes nothing");
    }

    fn be(s: &str) -> BackendSpec {
        s.parse().unwrap()
    }

    #[test]
    fn terminating_and_zero_weight_backends_get_no_slots_and_weights_expand() {
        let mut s = spec(vec![
            be("10.1.0.1:80"),
            be("10.1.0.2:80"),
            be("10.1.0.3:80"),
        ]);
        s.backends[0].weight = 2;
        s.backends[1].weight = 4;
        s.backends[2].state = BackendState::Terminating;
        // gcd 2: one slot for backend 0, two for backend 1, none for the terminating one.
        assert_eq!(s.slots(), vec![0, 1, 1]);
        let mut t = HashServiceTable::default();
        upsert_service(&mut t, &s).unwrap();
        assert_eq!(t.services.values().next().unwrap().backend_count, 3);
        assert!(t.backends.values().all(|b| b.id != 3));
        s.backends[1].weight = 0;
        assert_eq!(s.slots(), vec![0]);
    }

    #[test]
    fn local_policy_keeps_only_node_local_backends() {
        let mut s = spec(vec![be("10.1.0.1:80"), be("10.1.0.2:80")]);
        s.backends[0].node = Some("10.250.0.2".parse().unwrap());
        s.external_traffic_policy = TrafficPolicy::Local;
        assert_eq!(s.slots(), vec![1]);
        assert_eq!(s.value(1).flags, SVC_F_LOCAL);
        s.external_traffic_policy = TrafficPolicy::Cluster;
        assert_eq!(s.slots(), vec![0, 1]);
    }

    #[test]
    fn maglev_service_writes_its_table_into_the_slots() {
        let mut s = spec(vec![be("10.1.0.1:80"), be("10.1.0.2:80")]);
        s.selection = Selection::Maglev { table_size: 251 };
        s.backends[1].state = BackendState::Terminating;
        let mut t = HashServiceTable::default();
        upsert_service(&mut t, &s).unwrap();
        let v = *t.services.values().next().unwrap();
        assert_eq!((v.backend_count, v.flags), (251, SVC_F_MAGLEV));
        assert!(
            t.backends.values().all(|b| b.id == 1),
            "terminating backend owns no entry"
        );
        // Back to random: the table shrinks to the active backends.
        s.selection = Selection::Random;
        upsert_service(&mut t, &s).unwrap();
        assert_eq!(t.backends.len(), 1);
    }

    #[test]
    fn affinity_weights_ranges_and_frontends_are_validated() {
        let mut s = spec(vec![be("10.1.0.1:80")]);
        s.affinity = SessionAffinity::ClientIp {
            timeout_s: AFFINITY_DEFAULT_TIMEOUT_S,
        };
        s.validate().unwrap();
        assert_eq!(s.value(1).affinity_timeout_s, 10_800);
        for bad in [0, AFFINITY_MAX_TIMEOUT_S + 1] {
            s.affinity = SessionAffinity::ClientIp { timeout_s: bad };
            let e = s.validate().unwrap_err();
            assert_eq!(
                e,
                ConfigError::AffinityTimeout {
                    timeout_s: bad,
                    max: 86_400
                }
            );
            assert!(e.to_string().contains("affinity.timeout_s"), "{e}");
        }
        s.affinity = SessionAffinity::None;

        s.backends[0].weight = 0;
        let e = s.validate().unwrap_err();
        assert_eq!(e, ConfigError::ZeroWeightsOnly { count: 1 });
        assert!(e.to_string().contains("weight"), "{e}");
        s.backends[0].weight = 1;

        s.selection = Selection::Maglev { table_size: 1000 };
        assert!(matches!(
            s.validate(),
            Err(ConfigError::MaglevTableSize { size: 1000, .. })
        ));
        s.selection = Selection::Random;
        s.backends = vec![be("10.1.0.1:80"), be("10.1.0.2:80")];
        s.backends[0].weight = 4097;
        assert!(matches!(
            s.validate(),
            Err(ConfigError::TooManySlots { .. })
        ));
        s.backends[0].weight = 1;

        let e = PortRange {
            min: 30_000,
            max: 29_999,
        }
        .validate("source_port_range")
        .unwrap_err();
        assert!(e.to_string().contains("source_port_range"), "{e}");
        assert!(PortRange { min: 0, max: 10 }.validate("r").is_err());
        PortRange {
            min: 20_000,
            max: 29_999,
        }
        .validate("r")
        .unwrap();

        let mut other = s.clone();
        other.id = 8;
        let e = validate_services(&[s.clone(), other.clone()]).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::OverlappingFrontends {
                first: 7,
                second: 8,
                ..
            }
        ));
        assert!(e.to_string().contains("frontend"), "{e}");
        other.frontend = "10.96.0.11:80".parse().unwrap();
        validate_services(&[s.clone(), other.clone()]).unwrap();
        // Same address and port, other protocol: distinct frontends.
        other.frontend = s.frontend;
        other.proto = L4Proto::Udp;
        validate_services(&[s, other]).unwrap();
    }
}
