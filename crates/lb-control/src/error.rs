//! What the control plane refuses and why: [`ConfigError`] for a spec the datapath cannot take,
//! [`DataplaneError`] for anything a [`Dataplane`](crate::Dataplane) call can fail with.

use std::net::{IpAddr, SocketAddr};

use lb_api::flow::L4Proto;

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
    /// A table is full: a new entry does not fit its capacity. The same error from the kernel
    /// (the map refused with `E2BIG`) and the engine (its table holds `capacity` entries).
    #[error(
        "table {table} is full: it holds {capacity} entries (raise `{knob}` in the TableSizes \
         the datapath is loaded with, or remove entries)"
    )]
    TableFull {
        /// The map's name (`lb_api::tables`).
        table: &'static str,
        /// Its size.
        capacity: u32,
        /// The setting that sizes it.
        knob: &'static str,
    },
    /// The store (kernel map or table) refused a write.
    #[error("writing the {table} table failed: {reason}")]
    Store {
        /// Which table.
        table: &'static str,
        /// What the store said.
        reason: std::string::String,
    },
}

/// What a [`Dataplane`](crate::Dataplane) call failed with, the same type for every
/// implementation, so that a CNI programs against `&mut dyn Dataplane`.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A spec was refused (nothing was written): the same [`ConfigError`] from every datapath.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The datapath itself failed: a kernel map refused a read or write, say. The source is the
    /// implementation's own error (`lb_bpf::Error` for the kernel datapath).
    #[error("the datapath failed")]
    Datapath(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl DataplaneError {
    /// The [`ConfigError`] if a spec was refused.
    #[must_use]
    pub fn config(&self) -> Option<&ConfigError> {
        match self {
            Self::Config(e) => Some(e),
            Self::Datapath(_) => None,
        }
    }
}
