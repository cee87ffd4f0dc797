//! Map ABI: the fixed-size `#[repr(C)]` key and value types that the eBPF maps and the userspace
//! tables share. Layouts have no implicit padding (zerocopy's `IntoBytes` derive checks that), so
//! the bytes a kernel map holds are exactly the bytes userspace compares.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::flow::FlowTuple;

/// Which half of a flow a conntrack key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CtKind {
    /// Keyed by the tuple the client sent (to the service address, before DNAT). This entry owns
    /// the flow's state, timers and the chosen backend.
    Service = 0,
    /// Keyed by the reply tuple (from the backend, after DNAT). It holds the service address to
    /// restore as the reply's source, and points back to its `Service` entry.
    ReverseNat = 1,
}

/// Conntrack key: a tuple and the [`CtKind`] of the entry.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct CtKey {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port, host order.
    pub src_port: u16,
    /// Destination port, host order.
    pub dst_port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Address family (4 or 6).
    pub family: u8,
    /// [`CtKind`] as `u8`.
    pub kind: u8,
    /// Zero.
    pub pad: u8,
    /// Zero, except in the service entry, on the backend's node, of a flow that another node
    /// translated and sent through the tunnel: the node it came from. Flows that several nodes
    /// forward from one client address and port to one backend arrive with one tuple; their
    /// origins tell them apart (incident 2). DSR flows need no origin: their service entry on
    /// the backend's node is keyed by the service address the carrier brings.
    pub origin: [u8; 16],
}

impl CtKey {
    /// The key of a tuple for an entry of `kind`.
    #[inline(always)]
    #[must_use]
    pub const fn new(t: &FlowTuple, kind: CtKind) -> Self {
        Self {
            src: t.src,
            dst: t.dst,
            src_port: t.src_port,
            dst_port: t.dst_port,
            proto: t.proto,
            family: t.family,
            kind: kind as u8,
            pad: 0,
            origin: [0; 16],
        }
    }

    /// The service key, on the backend's node, of a flow that came through the tunnel from
    /// node `origin` (see [`CtKey::origin`]).
    #[inline(always)]
    #[must_use]
    pub const fn from_origin(t: &FlowTuple, origin: [u8; 16]) -> Self {
        let mut k = Self::new(t, CtKind::Service);
        k.origin = origin;
        k
    }

    /// The tuple this key was made from.
    #[inline(always)]
    #[must_use]
    pub const fn tuple(&self) -> FlowTuple {
        FlowTuple {
            src: self.src,
            dst: self.dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto,
            family: self.family,
        }
    }
}

/// Conntrack states. TCP states follow netfilter's names and meanings (what was seen on the wire,
/// in either direction, not socket states); UDP, ICMP and other protocols have their own. The
/// value indexes [`Timeouts::ns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CtState {
    /// TCP: SYN seen from the client.
    SynSent = 0,
    /// TCP: SYN+ACK seen from the server.
    SynRecv = 1,
    /// TCP: handshake complete.
    Established = 2,
    /// TCP: a FIN seen (from either side).
    FinWait = 3,
    /// TCP: that FIN acknowledged; the other side has not sent its FIN yet.
    CloseWait = 4,
    /// TCP: FINs seen from both sides, last ACK outstanding.
    LastAck = 5,
    /// TCP: the last FIN acknowledged.
    TimeWait = 6,
    /// TCP: reset seen.
    Close = 7,
    /// TCP: simultaneous open (SYN seen from both sides).
    SynSent2 = 8,
    /// UDP: packets seen in one direction only.
    UdpUnreplied = 9,
    /// UDP: packets seen in both directions.
    UdpAssured = 10,
    /// ICMP echo request/reply exchange.
    Icmp = 11,
    /// Any other protocol.
    Generic = 12,
}

/// Number of [`CtState`] values (size of [`Timeouts::ns`]).
pub const CT_STATES: usize = 13;

impl CtState {
    /// The state for a raw value, if valid.
    #[must_use]
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::SynSent,
            1 => Self::SynRecv,
            2 => Self::Established,
            3 => Self::FinWait,
            4 => Self::CloseWait,
            5 => Self::LastAck,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::SynSent2,
            9 => Self::UdpUnreplied,
            10 => Self::UdpAssured,
            11 => Self::Icmp,
            12 => Self::Generic,
            _ => return None,
        })
    }

    /// Whether the flow is closing or closed (first to go when the table is full).
    #[must_use]
    pub const fn is_closing(self) -> bool {
        matches!(
            self,
            Self::FinWait | Self::CloseWait | Self::LastAck | Self::TimeWait | Self::Close
        )
    }
}

/// Entry flag: a packet in the reply direction has been seen.
pub const CT_F_REPLY_SEEN: u8 = 0x01;
/// Entry flag: the client's source port was rewritten (see [`CtEntry::rewritten_src_port`]).
pub const CT_F_SRC_PORT_REWRITTEN: u8 = 0x02;
/// Entry flag: the flow's source is translated to this node's address (SNAT mode, see
/// [`CtEntry::snat_addr`]).
pub const CT_F_SNAT: u8 = 0x04;
/// Entry flag: DSR. On the node that picked the backend: packets carry the service address to the
/// backend's node, replies do not come back here. On the backend's node: replies leave with the
/// service address as their source.
pub const CT_F_DSR: u8 = 0x08;
/// Entry flag: VXLAN tunnel. On the node that picked the backend: packets are encapsulated to
/// [`CtEntry::tunnel_peer`] (the backend's node). On the backend's node: replies are encapsulated
/// back to `tunnel_peer` (the node the flow came from).
pub const CT_F_TUNNEL: u8 = 0x10;
/// Entry flag: made on the backend's node for a flow another node translated (DSR or tunnel): it
/// has no service-side partner on this node.
pub const CT_F_BACKEND_SIDE: u8 = 0x20;

/// Conntrack entry (104 bytes, 8-aligned).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct CtEntry {
    /// When the flow was first seen (ns, CLOCK_MONOTONIC_COARSE / `bpf_ktime_get_coarse_ns`).
    pub created_ns: u64,
    /// When the flow last saw a packet.
    pub last_seen_ns: u64,
    /// When the entry expires unless refreshed: `last_seen_ns` + the timeout of its state.
    pub expires_ns: u64,
    /// Packets in the original direction (client → service).
    pub packets_orig: u32,
    /// Packets in the reply direction.
    pub packets_reply: u32,
    /// Service entry: the backend address. Reverse-NAT entry: the service address.
    pub nat_addr: [u8; 16],
    /// With [`CT_F_TUNNEL`]: the other end of the tunnel (the backend's node on the node that
    /// picked the backend; the node the flow came from on the backend's node).
    pub tunnel_peer: [u8; 16],
    /// With [`CT_F_SNAT`]: on a service entry, the node address the client's source is translated
    /// to; on a reverse-NAT entry, the client's address, which replies get back.
    pub snat_addr: [u8; 16],
    /// Service entry: the backend port. Reverse-NAT entry: the service port.
    pub nat_port: u16,
    /// With [`CT_F_SRC_PORT_REWRITTEN`]: on a service entry, the client source port as rewritten
    /// by the collision resolver; on a reverse-NAT entry, the client's original source port,
    /// which replies get back.
    pub rewritten_src_port: u16,
    /// [`CtState`] as `u8` (meaningful on service entries).
    pub state: u8,
    /// `CT_F_*` flags.
    pub flags: u8,
    /// IP protocol.
    pub proto: u8,
    /// Address family.
    pub family: u8,
    /// Service the flow belongs to.
    pub service_id: u32,
    /// Backend the flow was sent to.
    pub backend_id: u32,
    /// Service entry of a TCP flow: the sequence number just past the original direction's FIN
    /// (its data and the FIN counted; netfilter's `td_end`), zero until then. A new SYN may take
    /// over the flow's SNAT port in TIME_WAIT only past it (`lb_nat::snat::may_take_over`).
    pub fin_seq_end: u32,
    /// Zero; keeps the entry a multiple of 8 bytes.
    pub reserved: u32,
}

impl CtEntry {
    /// Whether the entry carries every flag of `flag` (one or more `CT_F_*` bits).
    #[inline(always)]
    #[must_use]
    pub const fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }

    /// [`CT_F_REPLY_SEEN`]: a packet in the reply direction has been seen.
    #[inline(always)]
    #[must_use]
    pub const fn reply_seen(&self) -> bool {
        self.has(CT_F_REPLY_SEEN)
    }

    /// [`CT_F_SRC_PORT_REWRITTEN`]: the client's source port was rewritten
    /// ([`rewritten_src_port`](Self::rewritten_src_port)).
    #[inline(always)]
    #[must_use]
    pub const fn src_port_rewritten(&self) -> bool {
        self.has(CT_F_SRC_PORT_REWRITTEN)
    }

    /// [`CT_F_SNAT`]: the flow's source is translated to this node's address
    /// ([`snat_addr`](Self::snat_addr)).
    #[inline(always)]
    #[must_use]
    pub const fn is_snat(&self) -> bool {
        self.has(CT_F_SNAT)
    }

    /// [`CT_F_DSR`]: a direct-server-return flow.
    #[inline(always)]
    #[must_use]
    pub const fn is_dsr(&self) -> bool {
        self.has(CT_F_DSR)
    }

    /// [`CT_F_TUNNEL`]: a flow carried through the node-to-node tunnel
    /// ([`tunnel_peer`](Self::tunnel_peer)).
    #[inline(always)]
    #[must_use]
    pub const fn is_tunnel(&self) -> bool {
        self.has(CT_F_TUNNEL)
    }

    /// [`CT_F_BACKEND_SIDE`]: made on the backend's node for a flow another node translated.
    #[inline(always)]
    #[must_use]
    pub const fn is_backend_side(&self) -> bool {
        self.has(CT_F_BACKEND_SIDE)
    }

    /// Whether the flow's packets leave this node for the backend's node with a carrier (DSR or
    /// tunnel): set on the node that picked the backend, not on the backend's node.
    #[inline(always)]
    #[must_use]
    pub const fn is_carried_to_peer(&self) -> bool {
        self.flags & (CT_F_DSR | CT_F_TUNNEL) != 0 && !self.is_backend_side()
    }

    /// Whether the flow's replies go back to the node it came from through the tunnel: the
    /// backend's node of a tunnelled flow.
    #[inline(always)]
    #[must_use]
    pub const fn replies_through_tunnel(&self) -> bool {
        self.has(CT_F_BACKEND_SIDE | CT_F_TUNNEL)
    }
}

/// Per-state timeouts in nanoseconds, indexed by [`CtState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Timeouts {
    /// Timeout of each state, in ns.
    pub ns: [u64; CT_STATES],
}

impl Timeouts {
    /// Timeout of a state in ns (the generic timeout for an out-of-range value).
    #[inline(always)]
    #[must_use]
    pub fn of(&self, state: u8) -> u64 {
        match self.ns.get(state as usize) {
            Some(v) => *v,
            None => self.ns.get(CtState::Generic as usize).copied().unwrap_or(0),
        }
    }
}

/// Datapath configuration: one value in the kernel's config array, a field of the userspace engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct DatapathConfig {
    /// Conntrack timeouts per state.
    pub timeouts: Timeouts,
    /// When non-zero, the datapath uses this as "now" instead of its clock. Deterministic tests
    /// (and the differential suite) set it so that both worlds stamp identical timestamps.
    pub fixed_now_ns: u64,
    /// Seed of the flow hash that picks backends.
    pub hash_seed: u32,
    /// Reserved, zero.
    pub flags: u32,
    /// First port of the source-port-collision rewrite range (0: the default, 20000).
    pub src_port_min: u16,
    /// Last port of the source-port-collision rewrite range (0: the default, 29999).
    pub src_port_max: u16,
    /// Random ports the collision resolver tries (0: the default, 3; at most 32).
    pub src_port_tries: u32,
    /// This node's IPv4 address: the SNAT source and the tunnel's outer source (zero: none).
    pub node_v4: [u8; 4],
    /// VXLAN network identifier of the node-to-node tunnel.
    pub vni: u32,
    /// This node's IPv6 address (zero: none).
    pub node_v6: [u8; 16],
    /// UDP port of the node-to-node VXLAN tunnel (0: the default, 4789).
    pub tunnel_port: u16,
    /// Underlay MTU: the largest IP packet after encapsulation or a DSR carrier (0: 1500).
    pub mtu: u16,
    /// First port of the SNAT range (0: the default, 32768).
    pub snat_port_min: u16,
    /// Last port of the SNAT range (0: the default, 60999).
    pub snat_port_max: u16,
}

impl DatapathConfig {
    /// This node's address of `family` as a 16-byte address field (zero if not configured).
    #[inline(always)]
    #[must_use]
    pub const fn node_addr(&self, family: u8) -> [u8; 16] {
        if family == crate::flow::IpFamily::V6 as u8 {
            self.node_v6
        } else {
            crate::flow::v4_addr(self.node_v4)
        }
    }

    /// The tunnel's UDP port.
    #[inline(always)]
    #[must_use]
    pub const fn tunnel_port(&self) -> u16 {
        if self.tunnel_port == 0 {
            DEFAULT_TUNNEL_PORT
        } else {
            self.tunnel_port
        }
    }

    /// First port of the SNAT range.
    #[inline(always)]
    #[must_use]
    pub const fn snat_port_min(&self) -> u16 {
        if self.snat_port_min == 0 {
            DEFAULT_SNAT_PORT_MIN
        } else {
            self.snat_port_min
        }
    }

    /// Last port of the SNAT range.
    #[inline(always)]
    #[must_use]
    pub const fn snat_port_max(&self) -> u16 {
        if self.snat_port_max == 0 || self.snat_port_max < self.snat_port_min() {
            DEFAULT_SNAT_PORT_MAX
        } else {
            self.snat_port_max
        }
    }

    /// The underlay MTU.
    #[inline(always)]
    #[must_use]
    pub const fn mtu(&self) -> u16 {
        if self.mtu == 0 {
            1500
        } else {
            self.mtu
        }
    }
}

/// The node-to-node tunnel's default UDP port (VXLAN's IANA port).
pub const DEFAULT_TUNNEL_PORT: u16 = 4789;

/// First port of the default SNAT range (Linux's default ephemeral range, 32768-60999).
pub const DEFAULT_SNAT_PORT_MIN: u16 = 32768;
/// Last port of the default SNAT range.
pub const DEFAULT_SNAT_PORT_MAX: u16 = 60999;

/// How a service's packets reach a backend on another node (Cilium's and Calico's NodePort modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum ForwardingMode {
    /// The node translates the client's source to its own address: replies come back through it
    /// (an extra hop) and the backend sees the node, not the client.
    #[default]
    Snat = 0,
    /// Direct server return: the service address travels with the packet (an IPv4 option or IPv6
    /// destination option); the backend's node answers the client directly, from the service
    /// address. The backend sees the client.
    Dsr = 1,
    /// The packet is VXLAN-encapsulated to the backend's node, and replies return through the
    /// tunnel. The backend sees the client (Calico's way).
    Tunnel = 2,
    /// DSR for TCP, SNAT for UDP.
    Hybrid = 3,
}

impl ForwardingMode {
    /// The mode from its `u8` value (unknown values are SNAT, the mode that needs nothing from
    /// the other node).
    #[inline(always)]
    #[must_use]
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Dsr,
            2 => Self::Tunnel,
            3 => Self::Hybrid,
            _ => Self::Snat,
        }
    }

    /// The mode a flow of protocol `proto` gets: hybrid resolves to DSR (TCP) or SNAT.
    #[inline(always)]
    #[must_use]
    pub const fn for_proto(self, proto: u8) -> Self {
        match self {
            Self::Hybrid if proto == 6 => Self::Dsr,
            Self::Hybrid => Self::Snat,
            m => m,
        }
    }
}

/// Service key: the frontend address, port and protocol a client connects to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ServiceKey {
    /// Frontend address (VIP, node address, external IP).
    pub addr: [u8; 16],
    /// Frontend port, host order.
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Address family.
    pub family: u8,
}

/// Service value: identity and the number of backend slots taking new flows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ServiceValue {
    /// Service id (key prefix of its backend slots).
    pub id: u32,
    /// Number of slots `0..backend_count` in the backend table for this service.
    pub backend_count: u32,
    /// Flags ([`SVC_F_MAGLEV`], [`SVC_F_LOCAL`]) in the low byte; the [`ForwardingMode`] in the
    /// second byte (at [`ServiceValue::MODE_SHIFT`]).
    pub flags: u32,
    /// Session-affinity timeout in seconds (0: no affinity).
    pub affinity_timeout_s: u32,
}

impl ServiceValue {
    /// Bit position of the forwarding mode in [`ServiceValue::flags`].
    pub const MODE_SHIFT: u32 = 8;

    /// How this service's packets reach backends on other nodes.
    #[inline(always)]
    #[must_use]
    pub const fn mode(&self) -> ForwardingMode {
        ForwardingMode::from_u8((self.flags >> Self::MODE_SHIFT) as u8)
    }

    /// The backend table key of this service's slot `slot` (`0..backend_count`), in the slot set
    /// the service currently reads ([`SVC_F_SLOT_SET_B`]). The one place a packet turns a slot
    /// into a key: an update writes the other set, then flips the service entry to it.
    #[inline(always)]
    #[must_use]
    pub const fn slot_key(&self, slot: u32) -> BackendKey {
        BackendKey {
            service_id: self.id,
            slot: if self.flags & SVC_F_SLOT_SET_B != 0 {
                slot | BackendKey::SLOT_SET_B
            } else {
                slot
            },
        }
    }
}

/// [`ServiceValue::flags`] bit: the service's slots hold a Maglev table (the datapath's slot
/// lookup is then the Maglev lookup; the bit tells readers of the maps what the slots are).
pub const SVC_F_MAGLEV: u32 = 0x1;
/// [`ServiceValue::flags`] bit: `externalTrafficPolicy: Local` (the slots hold node-local
/// backends only).
pub const SVC_F_LOCAL: u32 = 0x2;
/// [`ServiceValue::flags`] bit (the top one, apart from the other flags): the service's slots
/// are the ones keyed with [`BackendKey::SLOT_SET_B`]. Its slots are double-buffered: an update
/// writes the new backend set into the set not in use, then flips this bit with one write of
/// the service entry, so a packet sees the old set or the new one, never a mix.
pub const SVC_F_SLOT_SET_B: u32 = 1 << 31;

/// Known node table key: a peer node's address. Tunnel packets are accepted only from these.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct NodeKey {
    /// The node's address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
}

/// Backend table key: a service's slot.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct BackendKey {
    /// Service id.
    pub service_id: u32,
    /// Slot, `0..backend_count`, with [`BackendKey::SLOT_SET_B`] set for the slots of set B
    /// (see [`SVC_F_SLOT_SET_B`]).
    pub slot: u32,
}

impl BackendKey {
    /// [`BackendKey::slot`] bit of the slots of set B (slot counts stay far below it).
    pub const SLOT_SET_B: u32 = 1 << 31;
}

/// Backend table value: where a slot's flows go.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct BackendValue {
    /// Backend address.
    pub addr: [u8; 16],
    /// Backend port, host order.
    pub port: u16,
    /// Address family.
    pub family: u8,
    /// Reserved, zero.
    pub state: u8,
    /// Backend id (stable across slot reshuffles).
    pub id: u32,
    /// The node the backend runs on when that is another node (zero: this node). Packets to it
    /// are forwarded in the service's [`ForwardingMode`].
    pub node: [u8; 16],
}

/// Key of the backends-by-address table: a service's active backend, by the address and port
/// it listens on. Session affinity names a client's backend this way: a backend keeps its
/// address and port across backend-set updates (Kubernetes endpoints are identified by them),
/// while its slots and its position in the set move.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct BackendAddrKey {
    /// Service id.
    pub service_id: u32,
    /// Backend port, host order.
    pub port: u16,
    /// Address family.
    pub family: u8,
    /// Zero (explicit padding: keys are compared byte by byte).
    pub pad: u8,
    /// Backend address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
}

/// Key of the session-affinity table: a client address and the service it reached.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct AffinityKey {
    /// The client's address (IPv4 in the first 4 bytes, like `FlowTuple`).
    pub client: [u8; 16],
    /// The service's id.
    pub service_id: u32,
    /// Address family.
    pub family: u8,
    /// Zero (explicit padding).
    pub pad: [u8; 3],
}

/// Value of the session-affinity table: the backend a client was last sent to, and when.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct AffinityValue {
    /// When a new flow of this client last went to the backend (the pipeline's clock, ns).
    pub last_used_ns: u64,
    /// The backend's address (IPv4 in the first 4 bytes): with `port`, its key in the
    /// backends-by-address table.
    pub backend_addr: [u8; 16],
    /// The backend's port, host order.
    pub backend_port: u16,
    /// Zero (explicit padding).
    pub pad: u16,
    /// The service's affinity timeout when the entry was written, seconds: what GC expires the
    /// entry by (the pipeline checks the service's current timeout).
    pub timeout_s: u32,
}

impl AffinityValue {
    /// Whether the entry is still valid at `now_ns` for a service whose timeout is `timeout_s`:
    /// used less than `timeout_s` ago (an entry stamped after `now_ns`, by another CPU's
    /// clock read a moment later, is valid).
    #[inline(always)]
    #[must_use]
    pub const fn is_live(&self, now_ns: u64, timeout_s: u32) -> bool {
        now_ns.saturating_sub(self.last_used_ns) < timeout_s as u64 * 1_000_000_000
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and byte arrays, and has no
    // padding (checked by the `IntoBytes` derive), so every bit pattern is valid and all bytes are
    // initialized: exactly what `aya::Pod` requires.
    unsafe impl aya::Pod for super::CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DatapathConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BackendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BackendValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NodeKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BackendAddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityValue {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn ct_entry_flag_accessors_read_their_flag() {
        let with = |flags| CtEntry {
            flags,
            ..CtEntry::default()
        };
        let none = with(0);
        assert!(!none.is_snat() && !none.is_dsr() && !none.is_tunnel());
        assert!(!none.is_backend_side() && !none.src_port_rewritten() && !none.reply_seen());
        assert!(with(CT_F_REPLY_SEEN).reply_seen());
        assert!(with(CT_F_SRC_PORT_REWRITTEN).src_port_rewritten());
        assert!(with(CT_F_SNAT).is_snat());
        assert!(with(CT_F_DSR).is_dsr());
        assert!(with(CT_F_TUNNEL).is_tunnel());
        assert!(with(CT_F_BACKEND_SIDE).is_backend_side());
        assert!(with(CT_F_SNAT | CT_F_DSR).has(CT_F_SNAT | CT_F_DSR));
        assert!(
            !with(CT_F_SNAT).has(CT_F_SNAT | CT_F_DSR),
            "has: every flag"
        );
        // Carried to the peer node from the node that picked the backend only.
        assert!(with(CT_F_DSR).is_carried_to_peer());
        assert!(with(CT_F_TUNNEL).is_carried_to_peer());
        assert!(!with(CT_F_SNAT).is_carried_to_peer());
        assert!(!with(CT_F_DSR | CT_F_BACKEND_SIDE).is_carried_to_peer());
        assert!(!with(CT_F_TUNNEL | CT_F_BACKEND_SIDE).is_carried_to_peer());
        // Replies go back through the tunnel from the backend's node of a tunnelled flow.
        assert!(with(CT_F_TUNNEL | CT_F_BACKEND_SIDE).replies_through_tunnel());
        assert!(!with(CT_F_TUNNEL).replies_through_tunnel());
        assert!(!with(CT_F_DSR | CT_F_BACKEND_SIDE).replies_through_tunnel());
    }

    #[test]
    fn abi_sizes_are_stable() {
        // These sizes are part of the kernel/user ABI and of pinned maps: a change breaks a
        // restarted loader that re-attaches to maps of the old layout.
        assert_eq!(size_of::<CtKey>(), 56);
        assert_eq!(size_of::<CtEntry>(), 104);
        assert_eq!(align_of::<CtEntry>(), 8);
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<ServiceValue>(), 16);
        assert_eq!(size_of::<BackendKey>(), 8);
        assert_eq!(size_of::<BackendValue>(), 40);
        assert_eq!(size_of::<NodeKey>(), 16);
        assert_eq!(size_of::<BackendAddrKey>(), 24);
        assert_eq!(size_of::<AffinityKey>(), 24);
        assert_eq!(size_of::<AffinityValue>(), 32);
        assert_eq!(size_of::<DatapathConfig>(), 13 * 8 + 24 + 32);
    }

    #[test]
    fn ct_state_roundtrip() {
        for v in 0..=255u8 {
            if let Some(s) = CtState::from_u8(v) {
                assert_eq!(s as u8, v);
            } else {
                assert!(v as usize >= CT_STATES);
            }
        }
    }
}
