//! Counters and drop reasons: one flat index space shared by the kernel's per-CPU counter array
//! and the userspace engine's counters, so both worlds report the same numbers under the same names.

use zerocopy::{Immutable, IntoBytes, KnownLayout, TryFromBytes};

/// Number of counter slots (the size of the kernel's per-CPU counter array).
pub const COUNTER_SLOTS: u32 = 128;

/// First slot used by drop reasons; `DropReason as u32 + DROP_BASE` is a reason's slot. Slots
/// below it are [`Counter`]s, with room for 64 of them: a new counter takes a free slot and
/// moves no drop reason.
pub const DROP_BASE: u32 = 64;

/// Events the datapath counts that are not drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Counter {
    /// Packets the datapath looked at.
    RxPackets = 0,
    /// A new flow to a service: backend chosen, conntrack entries created, destination rewritten.
    ServiceNewFlow = 1,
    /// A packet of a known flow to a service, destination rewritten from conntrack.
    ServiceEstablished = 2,
    /// A reply from a backend, source rewritten back to the service address.
    ReplyTranslated = 3,
    /// Passed: not an IP packet the datapath translates (ARP, ...).
    PassNotIp = 4,
    /// Passed: an IP packet to no service and of no tracked flow.
    PassNotService = 5,
    /// Passed: an IPv4 fragment (not reassembled).
    PassFragment = 6,
    /// Passed: a protocol the service table does not translate.
    PassOtherProto = 7,
    /// A reply-direction conntrack entry whose forward entry was gone; the orphan was removed.
    OrphanReplyRemoved = 8,
    /// Packets dropped, all reasons together.
    Dropped = 9,
    /// A new flow's reply tuple collided with another flow's; its source port was rewritten
    /// (a collision resolved; unresolved ones are [`DropReason::SourcePortCollision`] drops).
    SourcePortRewritten = 10,
    /// Passed: headers nest deeper than the bounded parser follows (more than two VLAN tags,
    /// more than [`crate::wire::MAX_IPV6_EXT_HEADERS`] IPv6 extension headers, or a header past
    /// [`crate::wire::MAX_HEADER_OFFSET`]). The stack handles them.
    PassHeadersTooDeep = 11,
    /// An encapsulation would have exceeded the MTU: an ICMP "fragmentation needed" / ICMPv6
    /// "packet too big" was sent back to the sender instead.
    MtuExceeded = 12,
    /// An ICMP/ICMPv6 error about a tracked flow: its outer and quoted headers were translated
    /// back (RFC 5508), toward the client or toward the backend.
    IcmpErrorTranslated = 13,
    /// Passed: an ICMP/ICMPv6 error whose quoted datagram belongs to no tracked flow (or that is
    /// not addressed to the quoted datagram's sender).
    PassIcmpErrorNoFlow = 14,
    /// A drop event could not be recorded: the kernel's ring buffer was full (the newest event
    /// is lost), or the engine's bounded queue was (the oldest is). The drop itself is counted.
    DropEventsLost = 15,
    /// A VXLAN packet from a peer node was decapsulated; its inner packet went on through the
    /// pipeline.
    TunnelDecapsulated = 16,
    /// A packet was VXLAN-encapsulated to another node (tunnel mode, both directions).
    TunnelEncapsulated = 17,
    /// A DSR carrier (IPv4 option, IPv6 destination option) was added for the backend's node.
    DsrCarrierAdded = 18,
    /// A flow another node translated (DSR or tunnel) was recorded on its backend's node.
    BackendSideNewFlow = 19,
    /// SNAT port allocations that succeeded at the first attempt (the flow's own port kept,
    /// or the first random one). This and the nine counters after it are the attempts
    /// histogram: bucket `i` counts allocations that took `2^i ..= 2^(i+1) - 1` attempts
    /// ([`Counter::snat_attempts`]).
    SnatAttempts1 = 20,
    /// SNAT allocations that took 2-3 attempts.
    SnatAttempts2 = 21,
    /// SNAT allocations that took 4-7 attempts.
    SnatAttempts4 = 22,
    /// SNAT allocations that took 8-15 attempts.
    SnatAttempts8 = 23,
    /// SNAT allocations that took 16-31 attempts.
    SnatAttempts16 = 24,
    /// SNAT allocations that took 32-63 attempts.
    SnatAttempts32 = 25,
    /// SNAT allocations that took 64-127 attempts.
    SnatAttempts64 = 26,
    /// SNAT allocations that took 128-255 attempts.
    SnatAttempts128 = 27,
    /// SNAT allocations that took 256-511 attempts.
    SnatAttempts256 = 28,
    /// SNAT allocations that took 512 attempts or more.
    SnatAttempts512 = 29,
    /// SNAT ports taken over from a flow in TIME_WAIT (the schedule found no free port; a SYN
    /// past the old flow's last sequence number took the port of one it met in its last 32
    /// attempts).
    SnatTakeOvers = 30,
    /// A lookup found a conntrack entry past its deadline that GC had not yet collected: the
    /// flow was removed (both halves) and the packet treated as having no entry (a new flow, or
    /// an untranslated reply).
    ConntrackExpiredAtLookup = 31,
    /// At XDP on a virtual device (a veth), a TCP/UDP packet whose checksum field held its
    /// pseudo-header sum, which is what a partial checksum (`CHECKSUM_PARTIAL`, a local
    /// sender's with the default offload) looks like: its rewrites moved that sum, for the
    /// device or the stack to complete (see `PacketAccess::partial_by_field`). Not an outcome:
    /// the packet is counted under one as well.
    ChecksumPartialAtXdp = 32,
}

/// Why the datapath dropped a packet. Every drop is counted under exactly one reason.
///
/// It is also the `reason` field of a [`DropEvent`](crate::events::DropEvent), hence the
/// zerocopy derives: a record read from the kernel's ring buffer only decodes if its code is one
/// of these.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, TryFromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(u32)]
pub enum DropReason {
    /// A header ends past the end of the packet.
    Truncated = 0,
    /// IPv4 version field is not 4.
    BadIpVersion = 1,
    /// IPv4 IHL below 5.
    BadIpHeaderLength = 2,
    /// IPv4 total length shorter than the header.
    BadIpTotalLength = 3,
    /// TCP data offset below 5.
    BadTcpHeaderLength = 4,
    /// The service has no backend able to take new flows.
    NoBackend = 5,
    /// The backend slot chosen for the flow is missing from the backend table.
    BackendMissing = 6,
    /// The conntrack table refused the new flow's entries (full).
    ConntrackFull = 7,
    /// The datapath has not been configured (config table empty).
    NotConfigured = 8,
    /// The new flow's reply tuple is already owned by another flow (same client address and port
    /// to the same backend through another frontend or node) and every rewritten source port the
    /// resolver tried was taken too (an unresolved collision).
    SourcePortCollision = 9,
    /// UDP length field below 8 or past the end of the IP payload.
    BadUdpLength = 10,
    /// IPv6 hop-by-hop options header anywhere but first.
    BadIpv6ExtHeader = 11,
    /// A packet to this node's tunnel port from an address that is not a configured peer node.
    TunnelFromUnknownNode = 12,
    /// A tunnel packet from a peer whose VXLAN header is invalid (no I flag, another VNI, an IPv6
    /// outer UDP checksum of zero) or whose inner frame is too short.
    BadTunnelHeader = 13,
    /// The service's forwarding mode needs this node's address (SNAT source, tunnel endpoint)
    /// and none of the flow's family is configured.
    NodeAddressMissing = 14,
    /// A tunnel header or DSR carrier could not be added (no headroom, or no room in the IP
    /// header for the option).
    EncapFailed = 15,
    /// The SNAT port allocator tried its whole schedule (netfilter's: 128, 64, 32 and 16
    /// attempts) and every port was taken: the SNAT range is (nearly) exhausted for this
    /// destination. Widen `NodeSpec::snat_ports` or add node addresses.
    SnatPortsExhausted = 16,
    /// The kernel's first-stage program could not tail-call the new-flow stage (its slot in
    /// the stage array is empty): the programs were not loaded through `KernelDatapath`, or a
    /// pinned stage array was removed. Reload the datapath.
    NewFlowStageMissing = 17,
    /// The IPv4 header checksum is wrong: the stack would drop the packet before routing it,
    /// so the datapath does not start a flow for it.
    BadIpChecksum = 18,
    /// UDP over IPv6 to a service with a zero checksum, which IPv6 does not allow (RFC 8200
    /// 8.1): the backend would drop it, so no flow is started for it.
    ZeroUdpChecksumV6 = 19,
}

impl Counter {
    /// All counters, in slot order.
    pub const ALL: [Counter; 33] = [
        Self::RxPackets,
        Self::ServiceNewFlow,
        Self::ServiceEstablished,
        Self::ReplyTranslated,
        Self::PassNotIp,
        Self::PassNotService,
        Self::PassFragment,
        Self::PassOtherProto,
        Self::OrphanReplyRemoved,
        Self::Dropped,
        Self::SourcePortRewritten,
        Self::PassHeadersTooDeep,
        Self::MtuExceeded,
        Self::IcmpErrorTranslated,
        Self::PassIcmpErrorNoFlow,
        Self::DropEventsLost,
        Self::TunnelDecapsulated,
        Self::TunnelEncapsulated,
        Self::DsrCarrierAdded,
        Self::BackendSideNewFlow,
        Self::SnatAttempts1,
        Self::SnatAttempts2,
        Self::SnatAttempts4,
        Self::SnatAttempts8,
        Self::SnatAttempts16,
        Self::SnatAttempts32,
        Self::SnatAttempts64,
        Self::SnatAttempts128,
        Self::SnatAttempts256,
        Self::SnatAttempts512,
        Self::SnatTakeOvers,
        Self::ConntrackExpiredAtLookup,
        Self::ChecksumPartialAtXdp,
    ];

    /// The outcome counters: every packet the datapath sees bumps exactly one of them
    /// ([`Counter::Dropped`] stands for all the drop reasons), so `rx_packets` is their sum.
    /// The other counters note something about a packet besides its outcome.
    pub const OUTCOMES: [Counter; 13] = [
        Self::ServiceNewFlow,
        Self::ServiceEstablished,
        Self::ReplyTranslated,
        Self::PassNotIp,
        Self::PassNotService,
        Self::PassFragment,
        Self::PassOtherProto,
        Self::PassHeadersTooDeep,
        Self::IcmpErrorTranslated,
        Self::PassIcmpErrorNoFlow,
        Self::BackendSideNewFlow,
        Self::MtuExceeded,
        Self::Dropped,
    ];

    /// The slot of the attempts-histogram counter of a SNAT allocation that took `attempts`
    /// tries ([`Counter::SnatAttempts1`] and the nine after it). Arithmetic, not a `match`:
    /// in the kernel it runs inside the allocator's loop, where every branch costs the verifier.
    #[inline(always)]
    #[must_use]
    pub const fn snat_attempts_slot(attempts: u32) -> u32 {
        Self::SnatAttempts1 as u32 + attempts_bucket(attempts) as u32
    }

    /// Slot in the counter array.
    #[inline(always)]
    #[must_use]
    pub const fn slot(self) -> u32 {
        self as u32
    }

    /// Name used in metrics output.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::RxPackets => "rx_packets",
            Self::ServiceNewFlow => "service_new_flow",
            Self::ServiceEstablished => "service_established",
            Self::ReplyTranslated => "reply_translated",
            Self::PassNotIp => "pass_not_ip",
            Self::PassNotService => "pass_not_service",
            Self::PassFragment => "pass_fragment",
            Self::PassOtherProto => "pass_other_proto",
            Self::OrphanReplyRemoved => "orphan_reply_removed",
            Self::Dropped => "dropped",
            Self::SourcePortRewritten => "source_port_rewritten",
            Self::PassHeadersTooDeep => "pass_headers_too_deep",
            Self::MtuExceeded => "mtu_exceeded",
            Self::IcmpErrorTranslated => "icmp_error_translated",
            Self::PassIcmpErrorNoFlow => "pass_icmp_error_no_flow",
            Self::DropEventsLost => "drop_events_lost",
            Self::ConntrackExpiredAtLookup => "conntrack_expired_at_lookup",
            Self::TunnelDecapsulated => "tunnel_decapsulated",
            Self::TunnelEncapsulated => "tunnel_encapsulated",
            Self::DsrCarrierAdded => "dsr_carrier_added",
            Self::BackendSideNewFlow => "backend_side_new_flow",
            Self::SnatAttempts1 => "snat_attempts_1",
            Self::SnatAttempts2 => "snat_attempts_2_3",
            Self::SnatAttempts4 => "snat_attempts_4_7",
            Self::SnatAttempts8 => "snat_attempts_8_15",
            Self::SnatAttempts16 => "snat_attempts_16_31",
            Self::SnatAttempts32 => "snat_attempts_32_63",
            Self::SnatAttempts64 => "snat_attempts_64_127",
            Self::SnatAttempts128 => "snat_attempts_128_255",
            Self::SnatAttempts256 => "snat_attempts_256_511",
            Self::SnatAttempts512 => "snat_attempts_512_up",
            Self::SnatTakeOvers => "snat_take_overs",
            Self::ChecksumPartialAtXdp => "checksum_partial_at_xdp",
        }
    }
}

impl DropReason {
    /// All drop reasons, in slot order.
    pub const ALL: [DropReason; 20] = [
        Self::Truncated,
        Self::BadIpVersion,
        Self::BadIpHeaderLength,
        Self::BadIpTotalLength,
        Self::BadTcpHeaderLength,
        Self::NoBackend,
        Self::BackendMissing,
        Self::ConntrackFull,
        Self::NotConfigured,
        Self::SourcePortCollision,
        Self::BadUdpLength,
        Self::BadIpv6ExtHeader,
        Self::TunnelFromUnknownNode,
        Self::BadTunnelHeader,
        Self::NodeAddressMissing,
        Self::EncapFailed,
        Self::SnatPortsExhausted,
        Self::NewFlowStageMissing,
        Self::BadIpChecksum,
        Self::ZeroUdpChecksumV6,
    ];

    /// Slot in the counter array.
    #[inline(always)]
    #[must_use]
    pub const fn slot(self) -> u32 {
        DROP_BASE + self as u32
    }

    /// Name used in metrics output.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadIpVersion => "bad_ip_version",
            Self::BadIpHeaderLength => "bad_ip_header_length",
            Self::BadIpTotalLength => "bad_ip_total_length",
            Self::BadTcpHeaderLength => "bad_tcp_header_length",
            Self::NoBackend => "no_backend",
            Self::BackendMissing => "backend_missing",
            Self::ConntrackFull => "conntrack_full",
            Self::NotConfigured => "not_configured",
            Self::SourcePortCollision => "source_port_collision",
            Self::BadUdpLength => "bad_udp_length",
            Self::BadIpv6ExtHeader => "bad_ipv6_ext_header",
            Self::TunnelFromUnknownNode => "tunnel_from_unknown_node",
            Self::BadTunnelHeader => "bad_tunnel_header",
            Self::NodeAddressMissing => "node_address_missing",
            Self::EncapFailed => "encap_failed",
            Self::SnatPortsExhausted => "snat_ports_exhausted",
            Self::NewFlowStageMissing => "new_flow_stage_missing",
            Self::BadIpChecksum => "bad_ip_checksum",
            Self::ZeroUdpChecksumV6 => "zero_udp_checksum_v6",
        }
    }
}

/// Buckets of an attempts histogram: 1, 2-3, 4-7, ..., 256-511, 512 and more.
pub const ATTEMPT_BUCKETS: usize = 10;

/// The bucket of an attempts histogram that `attempts` falls in: `i` for `2^i ..= 2^(i+1)-1`,
/// the last for everything from 512 on (0 counts as 1).
#[inline(always)]
#[must_use]
pub const fn attempts_bucket(attempts: u32) -> usize {
    // floor(log2), branch-free (eBPF has no count-leading-zeros instruction; the compiler
    // expands it into shifts and a population count): a branch per bucket costs the kernel's
    // verifier a state per bucket wherever it is used.
    let b = (31 - (attempts | 1).leading_zeros()) as usize;
    if b < ATTEMPT_BUCKETS {
        b
    } else {
        ATTEMPT_BUCKETS - 1
    }
}

/// A sink for counter increments: a per-CPU array in the kernel, an array in userspace.
pub trait Counters {
    /// Adds one to the counter at `slot` (a [`Counter::slot`] or [`DropReason::slot`]).
    fn bump(&mut self, slot: u32);

    /// Notes that the packet being processed is dropped for `reason` (the pipeline calls it once
    /// per drop, after counting the reason). The caller of the pipeline turns it into a
    /// [`DropEvent`](crate::events::DropEvent) once the packet is done, with the packet's flow as
    /// far as it was parsed (the parse result it passed in its scratch area), the time and the
    /// interface: the kernel programs into their ring buffer, the engine into its bounded queue.
    /// Building the event there keeps it off the pipeline paths' stack frames. Sinks that keep
    /// only numbers (a [`CounterSnapshot`]) ignore it.
    #[inline(always)]
    fn drop_event(&mut self, _reason: DropReason) {}
}

/// A snapshot of all counter slots, summed over CPUs where the source is per-CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterSnapshot(pub [u64; COUNTER_SLOTS as usize]);

impl Default for CounterSnapshot {
    fn default() -> Self {
        Self([0; COUNTER_SLOTS as usize])
    }
}

impl CounterSnapshot {
    /// Value of a counter.
    #[must_use]
    pub fn get(&self, c: Counter) -> u64 {
        self.0.get(c.slot() as usize).copied().unwrap_or(0)
    }

    /// Value of a drop reason's counter.
    #[must_use]
    pub fn drops(&self, r: DropReason) -> u64 {
        self.0.get(r.slot() as usize).copied().unwrap_or(0)
    }
}

impl Counters for CounterSnapshot {
    fn bump(&mut self, slot: u32) {
        if let Some(v) = self.0.get_mut(slot as usize) {
            *v += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_distinct_and_in_range() {
        let mut seen = [false; COUNTER_SLOTS as usize];
        for s in Counter::ALL
            .iter()
            .map(|c| c.slot())
            .chain(DropReason::ALL.iter().map(|r| r.slot()))
        {
            assert!(s < COUNTER_SLOTS);
            assert!(!seen[s as usize], "slot {s} used twice");
            seen[s as usize] = true;
        }
        assert!(Counter::ALL.iter().all(|c| c.slot() < DROP_BASE));
    }

    #[test]
    fn attempts_buckets_are_powers_of_two() {
        let cases = [
            (0, 0),
            (1, 0),
            (2, 1),
            (3, 1),
            (4, 2),
            (7, 2),
            (8, 3),
            (128, 7),
            (240, 7),
            (255, 7),
            (256, 8),
            (511, 8),
            (512, 9),
            (u32::MAX, 9),
        ];
        for (n, b) in cases {
            assert_eq!(attempts_bucket(n), b, "{n} attempts");
        }
        let slot = Counter::snat_attempts_slot;
        assert_eq!(slot(1), Counter::SnatAttempts1.slot());
        assert_eq!(slot(3), Counter::SnatAttempts2.slot());
        assert_eq!(slot(240), Counter::SnatAttempts128.slot());
        assert_eq!(slot(300), Counter::SnatAttempts256.slot());
        assert_eq!(slot(9999), Counter::SnatAttempts512.slot());
        // The histogram's counters are consecutive slots, in bucket order.
        let hist = &Counter::ALL[20..30];
        assert_eq!(hist[0], Counter::SnatAttempts1);
        for (b, c) in hist.iter().enumerate() {
            assert_eq!(slot(1 << b), c.slot(), "{c:?}");
        }
    }
}
