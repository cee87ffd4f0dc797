//! The userspace engine: [`process`](crate::process) over hashbrown tables.
//!
//! It is the reference the kernel programs are compared to (differential tests), a simulator for
//! CNI authors, and a datapath for hosts without eBPF.

use std::vec::Vec;

use lb_api::__zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
use lb_api::abi::{
    BackendKey, BackendValue, CtEntry, CtKey, DatapathConfig, NodeKey, ServiceKey, ServiceValue,
};
use lb_api::counters::{Counter, CounterSnapshot, Counters, DropReason};
use lb_api::events::DropEvent;
use lb_api::wire::{PacketAccess, SlicePacket};
use lb_api::Verdict;
use lb_conntrack::{
    Clock, ConntrackGc, ConntrackMetrics, ConntrackTable, GcReport, HashConntrackTable,
    InsertError, InsertMode, MonotonicClock, TimeoutPolicy,
};
use lb_encap::{AdjustHead, HeadroomPacket};
use lb_nat::collision::XorShift32;
use lb_nat::control::{
    remove_service, set_node, upsert_service, ConfigError, NodeSpec, ServiceSpec, ServiceStore,
};
use lb_nat::{HashServiceTable, RandomSource, ServiceTable};
use std::collections::VecDeque;

/// How many drop events the engine keeps until they are drained: about what the kernel's
/// 256 KiB ring buffer holds (4095 56-byte records in 64-byte slots).
pub const DROP_EVENT_QUEUE_LEN: usize = 4096;

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
        node_v4: [0; 4],
        vni: 0,
        node_v6: [0; 16],
        tunnel_port: 0,
        mtu: 0,
        snat_port_min: 0,
        snat_port_max: 0,
    }
}

/// Bytes of room the engine keeps in front of a frame, as XDP does (`XDP_PACKET_HEADROOM`), for
/// encapsulation and DSR carriers.
pub const HEADROOM: usize = 256;

/// Bytes of room the engine keeps after a frame (the ICMP errors it builds can grow a short
/// frame).
const TAILROOM: usize = 1024;

/// What the kernel keeps beside a packet's bytes at TC (in the skb), as far as the datapath
/// reads it: the engine's model of it, so that the one pipeline decides as it does in the
/// kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkbMeta {
    /// The transport checksum is partial (`CHECKSUM_PARTIAL`): its field holds the
    /// pseudo-header sum, and the device or the stack adds the rest when the packet leaves.
    /// What a local sender's packets are on a veth with the default checksum offload.
    pub checksum_partial: bool,
}

/// A packet whose bytes can be rewritten but whose length cannot change: the TC hook's packet
/// as the eBPF program sees it (its `adjust_head`/`adjust_tail` always fail).
struct FixedLenPacket<'a>(SlicePacket<'a>);

impl PacketAccess for FixedLenPacket<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn load<T: FromBytes + KnownLayout + Immutable + Copy>(&self, offset: usize) -> Option<T> {
        self.0.load(offset)
    }

    fn store<T: IntoBytes + Immutable>(&mut self, offset: usize, value: &T) -> Option<()> {
        self.0.store(offset, value)
    }

    fn checksum_partial(&self) -> bool {
        self.0.checksum_partial()
    }
}

impl AdjustHead for FixedLenPacket<'_> {
    fn adjust_head(&mut self, _delta: i32) -> Option<()> {
        None
    }

    fn adjust_tail(&mut self, _delta: i32) -> Option<()> {
        None
    }

    fn resizable(&self) -> bool {
        false
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
    /// The reason the packet being processed was dropped for, if it was; the engine turns it
    /// into a [`DropEvent`] after the packet (the pipeline does not read the clock on drop paths).
    pub pending_drop: Option<DropReason>,
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
    fn is_peer_node(&self, key: &NodeKey) -> bool {
        self.services.is_peer_node(key)
    }
}

impl Counters for UserTables {
    fn bump(&mut self, slot: u32) {
        self.counters.bump(slot);
    }
    fn drop_event(&mut self, reason: DropReason) {
        self.pending_drop = Some(reason);
    }
}

/// The userspace datapath.
#[derive(Debug)]
pub struct Engine<C: Clock = MonotonicClock> {
    cfg: DatapathConfig,
    tables: UserTables,
    clock: C,
    scratch: crate::Scratch,
    /// The frame being processed, with headroom and tailroom (kept to avoid an allocation per
    /// packet).
    buf: Vec<u8>,
    drop_events: VecDeque<DropEvent>,
    /// [`process`](Self::process) runs as XDP on a virtual device (see
    /// [`set_xdp_virtual_device`](Self::set_xdp_virtual_device)).
    xdp_virtual_device: bool,
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
            pending_drop: None,
        };
        Self {
            cfg,
            tables,
            clock,
            scratch: crate::Scratch::default(),
            buf: Vec::new(),
            drop_events: VecDeque::new(),
            xdp_virtual_device: false,
        }
    }

    /// Runs one Ethernet frame through the pipeline, rewriting it in place: translations keep
    /// its length, encapsulation, DSR carriers and ICMP errors change it.
    pub fn process(&mut self, frame: &mut Vec<u8>) -> Verdict {
        self.buf.clear();
        self.buf.resize(HEADROOM, 0);
        self.buf.extend_from_slice(frame);
        self.buf.resize(HEADROOM + frame.len() + TAILROOM, 0);
        let Some(pkt) = HeadroomPacket::new(&mut self.buf, HEADROOM, frame.len()) else {
            return Verdict::Drop;
        };
        let mut pkt = pkt.on_virtual_device(self.xdp_virtual_device);
        let clock = || self.clock.now_ns();
        let verdict = crate::process(
            &mut pkt,
            &self.cfg,
            &clock,
            &mut self.tables,
            &mut self.scratch,
        );
        frame.clear();
        frame.extend_from_slice(pkt.bytes());
        self.record_drop_event();
        verdict
    }

    /// Runs one frame through the pipeline as a hook that cannot resize packets runs it (TC,
    /// where the eBPF program has no `bpf_xdp_adjust_head`): translations as in
    /// [`process`](Self::process), but whatever would grow or shrink the packet (tunnel
    /// encapsulation and decapsulation, DSR carriers, ICMP "too big" errors) fails, and the
    /// packet gets the verdict the pipeline gives such a failure. The reference for the TC
    /// program in differential tests.
    pub fn process_fixed_len(&mut self, frame: &mut [u8]) -> Verdict {
        self.process_tc(frame, SkbMeta::default())
    }

    /// [`process_fixed_len`](Self::process_fixed_len) of a packet with the skb state `meta`
    /// (a partial checksum: what a local sender's packets are at TC on a veth).
    pub fn process_tc(&mut self, frame: &mut [u8], meta: SkbMeta) -> Verdict {
        let mut pkt = FixedLenPacket(SlicePacket::with_partial_checksum(
            frame,
            meta.checksum_partial,
        ));
        let clock = || self.clock.now_ns();
        let verdict = crate::process(
            &mut pkt,
            &self.cfg,
            &clock,
            &mut self.tables,
            &mut self.scratch,
        );
        self.record_drop_event();
        verdict
    }

    /// Turns the drop the pipeline just noted, if any, into a drop event.
    fn record_drop_event(&mut self) {
        if let Some(reason) = self.tables.pending_drop.take() {
            let now = crate::now_ns(&self.cfg, || self.clock.now_ns());
            let tuple = self.scratch.parsed.tuple;
            self.queue_drop_event(DropEvent::new(reason, &tuple, now, 0));
        }
    }

    /// Whether [`process`](Self::process) runs as XDP on a virtual device (a veth), whose
    /// packets may carry partial checksums that only their field shows: the kernel's XDP
    /// program on a device the loader registered with
    /// `KernelDatapath::set_xdp_partial_checksums` (it does so itself for a device with no bus
    /// device behind it). Off by default, as on a NIC.
    pub fn set_xdp_virtual_device(&mut self, virtual_device: bool) {
        self.xdp_virtual_device = virtual_device;
    }

    /// Sets this node's identity (addresses, peers, tunnel parameters).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the invalid field; nothing changes then.
    pub fn set_node(&mut self, node: &NodeSpec) -> Result<(), ConfigError> {
        set_node(&mut self.tables.services, &mut self.cfg, node)
    }

    /// Queues an event; when the queue is full the oldest goes, counted as
    /// [`Counter::DropEventsLost`] (a consumer that falls behind sees the latest drops).
    fn queue_drop_event(&mut self, ev: DropEvent) {
        if self.drop_events.len() >= DROP_EVENT_QUEUE_LEN {
            self.drop_events.pop_front();
            self.tables.counters.bump(Counter::DropEventsLost.slot());
        }
        self.drop_events.push_back(ev);
    }

    /// The drop events recorded since the last call, oldest first (at most
    /// [`DROP_EVENT_QUEUE_LEN`]; older ones were counted as [`Counter::DropEventsLost`]).
    /// `KernelDatapath::drain_drop_events` reads the kernel's the same way.
    pub fn drain_drop_events(&mut self) -> Vec<DropEvent> {
        self.drop_events.drain(..).collect()
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

    /// One conntrack GC sweep at the engine's current time.
    pub fn conntrack_gc(&mut self, gc: &mut ConntrackGc) -> GcReport {
        let now = crate::now_ns(&self.cfg, || self.clock.now_ns());
        match gc.run(&mut self.tables.ct, now) {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    /// Conntrack metrics at the engine's current time, with `gc`'s figures when given.
    #[must_use]
    pub fn conntrack_metrics(&self, gc: Option<&ConntrackGc>) -> ConntrackMetrics {
        let now = crate::now_ns(&self.cfg, || self.clock.now_ns());
        let ct = &self.tables.ct;
        let mut m = ConntrackMetrics::from_entries(ct.iter(), ct.capacity() as u64, now);
        m.table = ct.stats();
        if let Some(gc) = gc {
            m.gc = gc.stats();
        }
        m
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
    fn put_node(&mut self, key: NodeKey) -> Result<(), ConfigError> {
        self.tables.services.put_node(key)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use lb_api::abi::CtState;
    use lb_api::flow::L4Proto;
    use lb_api::wire::{testing::tcp_v4_frame, TcpFlags};
    use lb_conntrack::{GcConfig, ManualClock};
    use std::vec;

    #[test]
    fn fixed_len_translates_like_process_and_cannot_add_a_carrier() {
        let dsr = |e: &mut Engine<ManualClock>| {
            let mut node = NodeSpec {
                address_v4: Some([192, 168, 1, 10].into()),
                ..NodeSpec::default()
            };
            node.peers.push([192, 168, 1, 11].into());
            e.set_node(&node).unwrap();
            e.upsert_service(&ServiceSpec {
                id: 1,
                frontend: "10.96.0.10:80".parse().unwrap(),
                proto: L4Proto::Tcp,
                backends: vec![remote("10.1.0.2:8080")],
                mode: lb_nat::control::ForwardingMode::Dsr,
                ..Default::default()
            })
            .unwrap();
            e.upsert_service(&ServiceSpec {
                id: 2,
                frontend: "10.96.0.11:80".parse().unwrap(),
                proto: L4Proto::Tcp,
                backends: vec!["10.1.0.3:8080".parse().unwrap()],
                ..Default::default()
            })
            .unwrap();
        };
        let mut cfg = default_config(0);
        cfg.fixed_now_ns = 1_000;
        let (mut grows, mut fixed) = (
            Engine::with_clock(64, cfg, ManualClock::new(0)),
            Engine::with_clock(64, cfg, ManualClock::new(0)),
        );
        dsr(&mut grows);
        dsr(&mut fixed);
        let syn = |vip: [u8; 4]| tcp_v4_frame([10, 0, 0, 1], 40000, vip, 80, TcpFlags::SYN, b"");
        // Plain DNAT keeps the length: the same in both models.
        let (mut a, mut b) = (syn([10, 96, 0, 11]), syn([10, 96, 0, 11]));
        assert_eq!(grows.process(&mut a), Verdict::Pass);
        assert_eq!(fixed.process_fixed_len(&mut b), Verdict::Pass);
        assert_eq!(a, b);
        // The DSR option needs 8 more bytes: only the growing model adds it.
        let (mut a, mut b) = (syn([10, 96, 0, 10]), syn([10, 96, 0, 10]));
        assert_eq!(grows.process(&mut a), Verdict::Pass);
        assert_eq!(a.len(), b.len() + 8);
        assert_eq!(fixed.process_fixed_len(&mut b), Verdict::Drop);
        assert_eq!(fixed.counters().drops(DropReason::EncapFailed), 1);
        let ev = fixed.drain_drop_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].reason, DropReason::EncapFailed);
    }

    fn remote(addr: &str) -> lb_nat::control::BackendSpec {
        lb_nat::control::BackendSpec {
            node: Some("192.168.1.11".parse().unwrap()),
            ..addr.parse().unwrap()
        }
    }

    #[test]
    fn drops_are_queued_as_events_with_reason_tuple_and_time() {
        let mut e = Engine::with_clock(64, default_config(0), ManualClock::new(5_000));
        e.upsert_service(&ServiceSpec {
            id: 1,
            frontend: "10.96.0.10:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec![],
            ..Default::default()
        })
        .unwrap();
        let mut syn = tcp_v4_frame(
            [10, 0, 0, 1],
            40000,
            [10, 96, 0, 10],
            80,
            TcpFlags::SYN,
            b"",
        );
        assert_eq!(e.process(&mut syn.clone()), Verdict::Drop);
        // TCP data offset 4 (< 5): parsing stops at TCP, so the ports are not known.
        syn[14 + 20 + 12] = 4 << 4;
        e.clock().advance(10);
        assert_eq!(e.process(&mut syn), Verdict::Drop);
        // A passed packet records nothing.
        let mut other = tcp_v4_frame([10, 0, 0, 1], 1, [10, 0, 0, 2], 2, TcpFlags::SYN, b"");
        assert_eq!(e.process(&mut other), Verdict::Pass);

        let evs = e.drain_drop_events();
        let got: std::vec::Vec<_> = evs
            .iter()
            .map(|ev| {
                (
                    ev.reason,
                    ev.src_port,
                    ev.dst_port,
                    ev.proto,
                    ev.timestamp_ns,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (DropReason::NoBackend, 40000, 80, 6, 5_000),
                (DropReason::BadTcpHeaderLength, 0, 0, 6, 5_010),
            ]
        );
        assert_eq!(lb_api::flow::v4_of(&evs[1].dst), [10, 96, 0, 10]);
        assert!(e.drain_drop_events().is_empty(), "drained events are gone");
        assert_eq!(e.counters().get(Counter::DropEventsLost), 0);
    }

    #[test]
    fn a_full_event_queue_keeps_the_newest_and_counts_the_lost() {
        let mut e = Engine::with_clock(64, default_config(0), ManualClock::new(1));
        let mut bad = tcp_v4_frame([10, 0, 0, 1], 1, [10, 0, 0, 2], 2, TcpFlags::SYN, b"");
        bad[14] = 0x44; // IPv4 IHL 4
        let extra = 5;
        for _ in 0..DROP_EVENT_QUEUE_LEN + extra {
            e.clock().advance(1);
            assert_eq!(e.process(&mut bad.clone()), Verdict::Drop);
        }
        let evs = e.drain_drop_events();
        assert_eq!(evs.len(), DROP_EVENT_QUEUE_LEN);
        assert_eq!(e.counters().get(Counter::DropEventsLost), extra as u64);
        // The oldest `extra` went: the first kept event is from packet `extra + 1`.
        assert_eq!(evs[0].timestamp_ns, 1 + extra as u64 + 1);
        assert!(evs
            .iter()
            .all(|ev| ev.reason == DropReason::BadIpHeaderLength));
    }

    #[test]
    fn engine_gc_reclaims_expired_pairs_and_reports_metrics() {
        let mut e = Engine::with_clock(64, default_config(0), ManualClock::new(1));
        e.upsert_service(&ServiceSpec {
            id: 1,
            frontend: "10.96.0.10:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec!["10.1.0.2:8080".parse().unwrap()],
            ..Default::default()
        })
        .unwrap();
        let mut syn = tcp_v4_frame(
            [10, 0, 0, 1],
            40000,
            [10, 96, 0, 10],
            80,
            TcpFlags::SYN,
            b"",
        );
        assert_eq!(e.process(&mut syn), Verdict::Pass);
        let m = e.conntrack_metrics(None);
        assert_eq!(
            (m.entries, m.in_state(CtState::SynSent), m.by_proto.tcp),
            (2, 1, 1)
        );
        let mut gc = ConntrackGc::new(GcConfig::default());
        assert_eq!(e.conntrack_gc(&mut gc).deleted, 0);
        e.clock().advance(121 * 1_000_000_000); // past SYN_SENT's 120 s
        assert_eq!(e.conntrack_gc(&mut gc).deleted, 2);
        let m = e.conntrack_metrics(Some(&gc));
        assert_eq!((m.entries, m.gc.runs, m.gc.total_deleted), (0, 2, 2));
    }
}
