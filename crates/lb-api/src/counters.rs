//! Counters and drop reasons: one flat index space shared by the kernel's per-CPU counter array
//! and the userspace engine's counters, so both worlds report the same numbers under the same names.
//!
//! Every counter and every drop reason is declared once, below, in a `counter_space!` table:
//! its doc, its slot (counters) or code (drop reasons), its metric name and, for counters, whether
//! it is an outcome. The enum, [`Counter::name`], [`Counter::ALL`], [`Counter::OUTCOMES`],
//! [`DropReason::name`] and [`DropReason::ALL`] are generated from it, and a compile-time check
//! refuses a slot used twice or past its limit. Adding one is one line plus its doc; see
//! `docs/extending.md`.
//!
//! The slots are the layout of a pinned map (`LB_COUNTERS`) that outlives a loader restart: a
//! declared slot never moves. New counters take free slots below [`DROP_BASE`], new drop reasons
//! the next code.

use zerocopy::{Immutable, IntoBytes, KnownLayout, TryFromBytes};

/// Number of counter slots (the size of the kernel's per-CPU counter array).
pub const COUNTER_SLOTS: u32 = 128;

/// First slot used by drop reasons; `DropReason as u32 + DROP_BASE` is a reason's slot. Slots
/// below it are [`Counter`]s, with room for 64 of them: a new counter takes a free slot and
/// moves no drop reason.
pub const DROP_BASE: u32 = 64;

/// Declares a slot enum from one table: the enum with its docs and explicit discriminants,
/// `ALL` (declaration order, which the compile-time check below requires to be slot order),
/// `name()` (the metric name) and, for [`Counter`], `is_outcome()`.
///
/// Each line: `/// doc`, `Variant = slot => "metric_name"`, and for counters `outcome` or `note`
/// (every packet bumps exactly one outcome; a note says something about a packet besides it).
macro_rules! counter_space {
    (
        $(#[$meta:meta])*
        pub enum Counter {
            $(
                $(#[doc = $doc:literal])*
                $Variant:ident = $code:literal => $name:literal $kind:ident,
            )*
        }
    ) => {
        counter_space! {
            @enum $(#[$meta])* Counter { $( $(#[doc = $doc])* $Variant = $code => $name, )* }
        }

        impl Counter {
            /// Whether the counter is an outcome: every packet the datapath sees bumps exactly one
            /// of them ([`Counter::Dropped`] standing for all the drop reasons), so `rx_packets`
            /// is their sum. The other counters note something about a packet besides it.
            #[must_use]
            pub const fn is_outcome(self) -> bool {
                match self {
                    $(Self::$Variant => counter_space!(@outcome $kind),)*
                }
            }
        }
    };
    (@outcome outcome) => { true };
    (@outcome note) => { false };
    (
        $(#[$meta:meta])*
        pub enum $Enum:ident {
            $(
                $(#[doc = $doc:literal])*
                $Variant:ident = $code:literal => $name:literal,
            )*
        }
    ) => {
        counter_space! {
            @enum $(#[$meta])* $Enum { $( $(#[doc = $doc])* $Variant = $code => $name, )* }
        }
    };
    (
        @enum $(#[$meta:meta])* $Enum:ident {
            $( $(#[doc = $doc:literal])* $Variant:ident = $code:literal => $name:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        pub enum $Enum {
            $(
                $(#[doc = $doc])*
                $Variant = $code,
            )*
        }

        impl $Enum {
            /// Every variant, in slot order.
            pub const ALL: [$Enum; [$($code),*].len()] = [$(Self::$Variant),*];

            /// The declared discriminants, in declaration order (checked at compile time).
            const CODES: [u32; [$($code),*].len()] = [$($code),*];

            /// Name used in metrics output.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$Variant => $name,)*
                }
            }
        }
    };
}

/// Whether `slots` strictly increase (so none is used twice) and stay below `limit`.
#[cfg_attr(
    not(test),
    expect(
        clippy::indexing_slicing,
        reason = "const evaluation only: an index out of range fails the build"
    )
)]
const fn slots_ascending_below(slots: &[u32], limit: u32) -> bool {
    let mut i = 0;
    while i < slots.len() {
        if slots[i] >= limit || (i > 0 && slots[i] <= slots[i - 1]) {
            return false;
        }
        i += 1;
    }
    true
}

counter_space! {
    /// Events the datapath counts that are not drops.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Counter {
        /// Packets the datapath looked at.
        RxPackets = 0 => "rx_packets" note,
        /// A new flow to a service: backend chosen, conntrack entries created, destination rewritten.
        ServiceNewFlow = 1 => "service_new_flow" outcome,
        /// A packet of a known flow to a service, destination rewritten from conntrack.
        ServiceEstablished = 2 => "service_established" outcome,
        /// A reply from a backend, source rewritten back to the service address.
        ReplyTranslated = 3 => "reply_translated" outcome,
        /// Passed: not an IP packet the datapath translates (ARP, ...).
        PassNotIp = 4 => "pass_not_ip" outcome,
        /// Passed: an IP packet to no service and of no tracked flow.
        PassNotService = 5 => "pass_not_service" outcome,
        /// Passed: an IPv4 fragment (not reassembled).
        PassFragment = 6 => "pass_fragment" outcome,
        /// Passed: a protocol the service table does not translate.
        PassOtherProto = 7 => "pass_other_proto" outcome,
        /// A reply-direction conntrack entry whose forward entry was gone; the orphan was removed.
        OrphanReplyRemoved = 8 => "orphan_reply_removed" note,
        /// Packets dropped, all reasons together.
        Dropped = 9 => "dropped" outcome,
        /// A new flow's reply tuple collided with another flow's; its source port was rewritten
        /// (a collision resolved; unresolved ones are [`DropReason::SourcePortCollision`] drops).
        SourcePortRewritten = 10 => "source_port_rewritten" note,
        /// Passed: headers nest deeper than the bounded parser follows (more than two VLAN tags,
        /// more than [`crate::wire::MAX_IPV6_EXT_HEADERS`] IPv6 extension headers, or a header past
        /// [`crate::wire::MAX_HEADER_OFFSET`]). The stack handles them.
        PassHeadersTooDeep = 11 => "pass_headers_too_deep" outcome,
        /// An encapsulation would have exceeded the MTU: an ICMP "fragmentation needed" / ICMPv6
        /// "packet too big" was sent back to the sender instead.
        MtuExceeded = 12 => "mtu_exceeded" outcome,
        /// An ICMP/ICMPv6 error about a tracked flow: its outer and quoted headers were translated
        /// back (RFC 5508), toward the client or toward the backend.
        IcmpErrorTranslated = 13 => "icmp_error_translated" outcome,
        /// Passed: an ICMP/ICMPv6 error whose quoted datagram belongs to no tracked flow (or that is
        /// not addressed to the quoted datagram's sender).
        PassIcmpErrorNoFlow = 14 => "pass_icmp_error_no_flow" outcome,
        /// A drop event could not be recorded: the kernel's ring buffer was full (the newest event
        /// is lost), or the engine's bounded queue was (the oldest is). The drop itself is counted.
        DropEventsLost = 15 => "drop_events_lost" note,
        /// A VXLAN packet from a peer node was decapsulated; its inner packet went on through the
        /// pipeline.
        TunnelDecapsulated = 16 => "tunnel_decapsulated" note,
        /// A packet was VXLAN-encapsulated to another node (tunnel mode, both directions).
        TunnelEncapsulated = 17 => "tunnel_encapsulated" note,
        /// A DSR carrier (IPv4 option, IPv6 destination option) was added for the backend's node.
        DsrCarrierAdded = 18 => "dsr_carrier_added" note,
        /// A flow another node translated (DSR or tunnel) was recorded on its backend's node.
        BackendSideNewFlow = 19 => "backend_side_new_flow" outcome,
        /// SNAT port allocations that succeeded at the first attempt (the flow's own port kept,
        /// or the first random one). This and the nine counters after it are the attempts
        /// histogram: bucket `i` counts allocations that took `2^i ..= 2^(i+1) - 1` attempts
        /// ([`Counter::snat_attempts_slot`]).
        SnatAttempts1 = 20 => "snat_attempts_1" note,
        /// SNAT allocations that took 2-3 attempts.
        SnatAttempts2 = 21 => "snat_attempts_2_3" note,
        /// SNAT allocations that took 4-7 attempts.
        SnatAttempts4 = 22 => "snat_attempts_4_7" note,
        /// SNAT allocations that took 8-15 attempts.
        SnatAttempts8 = 23 => "snat_attempts_8_15" note,
        /// SNAT allocations that took 16-31 attempts.
        SnatAttempts16 = 24 => "snat_attempts_16_31" note,
        /// SNAT allocations that took 32-63 attempts.
        SnatAttempts32 = 25 => "snat_attempts_32_63" note,
        /// SNAT allocations that took 64-127 attempts.
        SnatAttempts64 = 26 => "snat_attempts_64_127" note,
        /// SNAT allocations that took 128-255 attempts.
        SnatAttempts128 = 27 => "snat_attempts_128_255" note,
        /// SNAT allocations that took 256-511 attempts.
        SnatAttempts256 = 28 => "snat_attempts_256_511" note,
        /// SNAT allocations that took 512 attempts or more.
        SnatAttempts512 = 29 => "snat_attempts_512_up" note,
        /// SNAT ports taken over from a flow in TIME_WAIT (the schedule found no free port; a SYN
        /// past the old flow's last sequence number took the port of one it met in its last 32
        /// attempts).
        SnatTakeOvers = 30 => "snat_take_overs" note,
        /// A lookup found a conntrack entry past its deadline that GC had not yet collected: the
        /// flow was removed (both halves) and the packet treated as having no entry (a new flow, or
        /// an untranslated reply).
        ConntrackExpiredAtLookup = 31 => "conntrack_expired_at_lookup" note,
        /// At XDP on a virtual device (a veth), a TCP/UDP packet whose checksum field held its
        /// pseudo-header sum, which is what a partial checksum (`CHECKSUM_PARTIAL`, a local
        /// sender's with the default offload) looks like: its rewrites moved that sum, for the
        /// device or the stack to complete (see `PacketAccess::partial_by_field`). Not an outcome:
        /// the packet is counted under one as well.
        ChecksumPartialAtXdp = 32 => "checksum_partial_at_xdp" note,
        /// Flows deleted because their backend left their service (a service update without it,
        /// the service's removal, or an explicit flush of the backend's flows): counted by the
        /// control plane when it deletes them, one per flow (both of its entries go). Not about
        /// a packet.
        CtBackendRemoved = 33 => "ct_backend_removed" note,
        /// A new flow of a service with session affinity went to the backend its client's live
        /// affinity entry named (the entry's time refreshed).
        AffinityHit = 34 => "affinity_hit" note,
        /// A new flow of a service with session affinity from a client with no entry: a backend
        /// picked by hash, and recorded for the client.
        AffinityMiss = 35 => "affinity_miss" note,
        /// A new flow of a service with session affinity whose client's entry had expired or
        /// named a backend no longer in the service's set: a backend picked by hash replaced it.
        AffinityStale = 36 => "affinity_stale" note,
        /// A new flow to a service without a usable backend was rejected as kube-proxy rejects
        /// it: a TCP reset, or for UDP an ICMP/ICMPv6 "port unreachable", went back to the client
        /// from the service address (a reset is not answered, and a segment with IP options or
        /// IPv6 extension headers gets none: those are dropped as `no_backend`).
        RejectNoEndpoints = 37 => "reject_no_endpoints" outcome,
        /// A packet of a tracked flow found the flow's reverse-NAT entry missing (deleted on its
        /// own: by an operator's flush of one entry, or a GC that deleted the pair's halves in
        /// two steps) and rebuilt it from the service entry, so the flow's replies are translated
        /// again.
        ReverseEntryRebuilt = 38 => "reverse_entry_rebuilt" note,
        /// As [`Counter::ReverseEntryRebuilt`], but the rebuild's insert was refused (the
        /// conntrack table was full, or another flow had taken the reply tuple): the packet
        /// goes on translated, its flow's replies pass untranslated until a rebuild succeeds.
        /// Raise `lb_control::TableSizes::conntrack` if it grows.
        ReverseEntryRebuildFailed = 39 => "reverse_entry_rebuild_failed" note,
    }
}

counter_space! {
    /// Why the datapath dropped a packet. Every drop is counted under exactly one reason.
    ///
    /// It is also the `reason` field of a [`DropEvent`](crate::events::DropEvent), hence the
    /// zerocopy derives: a record read from the kernel's ring buffer only decodes if its code is
    /// one of these. The number declared is the code; the slot is `DROP_BASE + code`.
    #[derive(
        Debug, Clone, Copy, PartialEq, Eq, Hash, TryFromBytes, IntoBytes, KnownLayout, Immutable,
    )]
    pub enum DropReason {
        /// A header ends past the end of the packet.
        Truncated = 0 => "truncated",
        /// IPv4 version field is not 4.
        BadIpVersion = 1 => "bad_ip_version",
        /// IPv4 IHL below 5.
        BadIpHeaderLength = 2 => "bad_ip_header_length",
        /// IPv4 total length shorter than the header.
        BadIpTotalLength = 3 => "bad_ip_total_length",
        /// TCP data offset below 5.
        BadTcpHeaderLength = 4 => "bad_tcp_header_length",
        /// The service has no backend able to take new flows, and no reject could be made of
        /// the packet (a TCP reset, which is never answered, or a segment with IP options or
        /// IPv6 extension headers; or the packet could not be resized): see
        /// `reject_no_endpoints`.
        NoBackend = 5 => "no_backend",
        /// The backend slot chosen for the flow is missing from the backend table.
        BackendMissing = 6 => "backend_missing",
        /// The conntrack table (`LB_CT`, `tables::CONNTRACK`) refused the new flow's entries
        /// (full): raise `lb_control::TableSizes::conntrack` (a flow takes two entries).
        ConntrackFull = 7 => "conntrack_full",
        /// The datapath has not been configured (config table empty).
        NotConfigured = 8 => "not_configured",
        /// The new flow's reply tuple is already owned by another flow (same client address and port
        /// to the same backend through another frontend or node) and every rewritten source port the
        /// resolver tried was taken too (an unresolved collision).
        SourcePortCollision = 9 => "source_port_collision",
        /// UDP length field below 8 or past the end of the IP payload.
        BadUdpLength = 10 => "bad_udp_length",
        /// IPv6 hop-by-hop options header anywhere but first.
        BadIpv6ExtHeader = 11 => "bad_ipv6_ext_header",
        /// A packet to this node's tunnel port from an address that is not a configured peer node.
        TunnelFromUnknownNode = 12 => "tunnel_from_unknown_node",
        /// A tunnel packet from a peer whose VXLAN header is invalid (no I flag, another VNI, an IPv6
        /// outer UDP checksum of zero) or whose inner frame is too short.
        BadTunnelHeader = 13 => "bad_tunnel_header",
        /// The service's forwarding mode needs this node's address (SNAT source, tunnel endpoint)
        /// and none of the flow's family is configured.
        NodeAddressMissing = 14 => "node_address_missing",
        /// A tunnel header or DSR carrier could not be added (no headroom, or no room in the IP
        /// header for the option).
        EncapFailed = 15 => "encap_failed",
        /// The SNAT port allocator tried its whole schedule (netfilter's: 128, 64, 32 and 16
        /// attempts) and every port was taken: the SNAT range is (nearly) exhausted for this
        /// destination. Widen `NodeSpec::snat_ports` or add node addresses.
        SnatPortsExhausted = 16 => "snat_ports_exhausted",
        /// The kernel's first-stage program could not tail-call the new-flow stage (its slot in
        /// the stage array is empty): the programs were not loaded through `KernelDatapath`, or a
        /// pinned stage array was removed (reload the datapath), or a load that resizes pinned
        /// tables paused new flows for its final copy (milliseconds; see `lb_bpf::Resize`).
        NewFlowStageMissing = 17 => "new_flow_stage_missing",
        /// The IPv4 header checksum is wrong: the stack would drop the packet before routing it,
        /// so the datapath does not start a flow for it.
        BadIpChecksum = 18 => "bad_ip_checksum",
        /// UDP over IPv6 to a service with a zero checksum, which IPv6 does not allow (RFC 8200
        /// 8.1): the backend would drop it, so no flow is started for it.
        ZeroUdpChecksumV6 = 19 => "zero_udp_checksum_v6",
    }
}

const _: () = assert!(
    slots_ascending_below(&Counter::CODES, DROP_BASE),
    "counter slots must be declared in increasing order, each once, below DROP_BASE"
);
const _: () = assert!(
    slots_ascending_below(&DropReason::CODES, COUNTER_SLOTS - DROP_BASE),
    "drop reason codes must be declared in increasing order, each once, below COUNTER_SLOTS - DROP_BASE"
);

impl Counter {
    /// The number of outcome counters.
    #[cfg_attr(
        not(test),
        expect(
            clippy::indexing_slicing,
            reason = "const evaluation only: an index out of range fails the build"
        )
    )]
    const OUTCOME_COUNT: usize = {
        let mut n = 0;
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i].is_outcome() {
                n += 1;
            }
            i += 1;
        }
        n
    };

    /// The outcome counters ([`Counter::is_outcome`]), in slot order: every packet the datapath
    /// sees bumps exactly one of them, so `rx_packets` is their sum.
    #[cfg_attr(
        not(test),
        expect(
            clippy::indexing_slicing,
            reason = "const evaluation only: an index out of range fails the build"
        )
    )]
    pub const OUTCOMES: [Counter; Self::OUTCOME_COUNT] = {
        let mut out = [Counter::Dropped; Self::OUTCOME_COUNT];
        let mut n = 0;
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i].is_outcome() {
                out[n] = Self::ALL[i];
                n += 1;
            }
            i += 1;
        }
        out
    };

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
}

impl DropReason {
    /// Slot in the counter array.
    #[inline(always)]
    #[must_use]
    pub const fn slot(self) -> u32 {
        DROP_BASE + self as u32
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
        assert!(DropReason::ALL
            .iter()
            .all(|r| (DROP_BASE..COUNTER_SLOTS).contains(&r.slot())));
    }

    #[test]
    fn slots_are_the_pinned_layout() {
        // The counter map is pinned across loader restarts: these slots must never move.
        assert_eq!(Counter::RxPackets.slot(), 0);
        assert_eq!(Counter::Dropped.slot(), 9);
        assert_eq!(Counter::SnatAttempts1.slot(), 20);
        assert_eq!(Counter::ChecksumPartialAtXdp.slot(), 32);
        assert_eq!(DropReason::Truncated.slot(), 64);
        assert_eq!(DropReason::ZeroUdpChecksumV6.slot(), 64 + 19);
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.slot() as usize, i, "{c:?}: counters are dense from 0");
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}: drop reason codes are dense from 0");
        }
    }

    #[test]
    fn names_are_unique_metric_names() {
        let names: std::vec::Vec<&str> = Counter::ALL
            .iter()
            .map(|c| c.name())
            .chain(DropReason::ALL.iter().map(|r| r.name()))
            .collect();
        for (i, n) in names.iter().enumerate() {
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{n}: metric names are snake_case"
            );
            assert!(!names[..i].contains(n), "{n} named twice");
        }
    }

    #[test]
    fn outcomes_are_the_declared_ones() {
        use Counter::*;
        assert_eq!(
            Counter::OUTCOMES,
            [
                ServiceNewFlow,
                ServiceEstablished,
                ReplyTranslated,
                PassNotIp,
                PassNotService,
                PassFragment,
                PassOtherProto,
                Dropped,
                PassHeadersTooDeep,
                MtuExceeded,
                IcmpErrorTranslated,
                PassIcmpErrorNoFlow,
                BackendSideNewFlow,
                RejectNoEndpoints,
            ]
        );
        assert!(!RxPackets.is_outcome());
        assert!(!ChecksumPartialAtXdp.is_outcome());
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
