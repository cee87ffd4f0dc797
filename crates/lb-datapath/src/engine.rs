//! The userspace engine: [`process`](crate::process) over hashbrown tables.
//!
//! It is the reference the kernel programs are compared to (differential tests), a simulator for
//! CNI authors, and a datapath for hosts without eBPF.

use std::vec::Vec;

use lb_api::__zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
use lb_api::abi::{
    AffinityKey, AffinityValue, BackendAddrKey, BackendKey, BackendValue, CtEntry, CtKey,
    DatapathConfig, NodeKey, ServiceKey, ServiceValue,
};
use lb_api::counters::{Counter, CounterSnapshot, Counters, DropReason};
use lb_api::events::DropEvent;
use lb_api::flow::L4Proto;
use lb_api::wire::PacketAccess;
use lb_api::IpFamily;
use lb_api::Verdict;
use lb_conntrack::{
    Clock, ConntrackGc, ConntrackMetrics, ConntrackTable, GcReport, HashConntrackTable,
    InsertError, InsertMode, MonotonicClock,
};
use lb_control::{
    default_config, remove_service, set_node, upsert_service, ConfigError, NodeSpec, ServiceSpec,
    ServiceStore, TableSizes,
};
use lb_encap::{
    insert_room_at_head, remove_room_at_head, truncate_at_tail, AdjustHead, HeadroomPacket, Room,
};
use lb_nat::collision::XorShift32;
use lb_nat::{HashServiceTable, RandomSource, ServiceTable};
use std::collections::VecDeque;

mod dataplane;

/// How many drop events the engine keeps until they are drained at the default sizes: about
/// what the kernel's 256 KiB ring buffer holds (4095 56-byte records in 64-byte slots). An
/// engine of other sizes keeps [`TableSizes::drop_event_capacity`].
pub const DROP_EVENT_QUEUE_LEN: usize = 4096;

/// Bytes of room the engine keeps in front of a frame, as XDP does (`XDP_PACKET_HEADROOM`), for
/// encapsulation and DSR carriers.
pub const HEADROOM: usize = 256;

/// Bytes of room the engine keeps after a frame (the ICMP errors it builds can grow a short
/// frame).
const TAILROOM: usize = 1024;

/// What the kernel keeps beside a packet's bytes at TC (in the skb), as far as the datapath
/// or the kernel's helpers read it: the engine's model of it, so that the one pipeline decides
/// as it does in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkbMeta {
    /// The transport checksum is partial (`CHECKSUM_PARTIAL`): its field holds the
    /// pseudo-header sum, and the device or the stack adds the rest when the packet leaves.
    /// What a local sender's packets are on a veth with the default checksum offload.
    pub checksum_partial: bool,
    /// The GSO segment size (`skb_shinfo(skb)->gso_size`, `__sk_buff.gso_size`; zero: not a
    /// GSO packet): a local TCP sender's large packets with segmentation offload. The MTU
    /// decision uses it.
    pub gso_size: u16,
    /// What kind of segmentation a GSO packet asks for (with `gso_size` non-zero).
    pub gso_type: GsoType,
}

/// The kind of a GSO packet's segmentation (`skb_shinfo(skb)->gso_type`), as far as the
/// kernel's resizing helpers care.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GsoType {
    /// TCP segmentation (TSO): what a local TCP sender's GSO packets are.
    #[default]
    Tcp,
    /// UDP segmentation (`SKB_GSO_UDP_L4`).
    Udp,
    /// None the helpers know: what `BPF_PROG_TEST_RUN` makes of a `gso_size` it is given
    /// (it sets no type). The kernel resizes no such packet.
    Unknown,
}

/// The TC program's packet: its bytes, with room in front to grow (the kernel reallocates the
/// skb's head), and the skb's metadata ([`SkbMeta`], its protocol). Its room operations do
/// what the kernel's helpers at TC do (`bpf_skb_adjust_room`, `bpf_skb_change_tail`, as the
/// TC program calls them), refusing what they refuse: the reference for the TC program in
/// differential tests.
struct TcPacket<'a> {
    pkt: HeadroomPacket<'a>,
    meta: SkbMeta,
    /// `skb->protocol`: the EtherType the frame was received with, as long as a tunnel's
    /// encapsulation or decapsulation does not change the family.
    protocol: u16,
    /// `skb->encapsulation`: set by a tunnel's encapsulation.
    encapsulated: bool,
}

/// The Ethernet header's length: where TC's packet has its network header (`mac_len`).
const MAC_LEN: usize = 14;

impl<'a> TcPacket<'a> {
    fn new(pkt: HeadroomPacket<'a>, meta: SkbMeta) -> Self {
        // `eth_type_trans`: the EtherType (a VLAN tag's TPID when the tag is in the data).
        let protocol = pkt.load::<[u8; 2]>(12).map_or(0, u16::from_be_bytes);
        Self {
            pkt,
            meta,
            protocol,
            encapsulated: false,
        }
    }

    /// `bpf_skb_net_base_len`: the fixed network header's length, by the protocol.
    fn net_base_len(&self) -> Option<usize> {
        match self.protocol {
            0x0800 => Some(20),
            0x86dd => Some(40),
            _ => None,
        }
    }

    /// The checks `bpf_skb_adjust_room` makes before it changes anything: an IP packet, room
    /// after the Ethernet header or the fixed IP header (the program's two modes), a GSO
    /// packet the kernel can still segment (TCP, or UDP with a fixed size: the program always
    /// asks for one).
    fn may_adjust_room(&self, at: usize, len: usize) -> bool {
        let Some(base) = self.net_base_len() else {
            return false;
        };
        let gso_ok = self.meta.gso_size == 0 || self.meta.gso_type != GsoType::Unknown;
        (at == MAC_LEN || at == MAC_LEN + base) && len <= 0xfff && gso_ok
    }
}

impl PacketAccess for TcPacket<'_> {
    fn len(&self) -> usize {
        self.pkt.len()
    }

    fn load<T: FromBytes + KnownLayout + Immutable + Copy>(&self, offset: usize) -> Option<T> {
        self.pkt.load(offset)
    }

    fn store<T: IntoBytes + Immutable>(&mut self, offset: usize, value: &T) -> Option<()> {
        self.pkt.store(offset, value)
    }

    fn checksum_partial(&self) -> bool {
        self.meta.checksum_partial
    }

    fn gso_size(&self) -> u16 {
        self.meta.gso_size
    }
}

impl AdjustHead for TcPacket<'_> {
    /// An IPv4 or IPv6 packet (by its protocol): the kernel resizes no other.
    fn resizable(&self) -> bool {
        self.net_base_len().is_some()
    }

    /// TC has no `bpf_xdp_adjust_head`.
    fn adjust_head(&mut self, _delta: i32) -> Option<()> {
        None
    }

    /// Nor `bpf_xdp_adjust_tail`.
    fn adjust_tail(&mut self, _delta: i32) -> Option<()> {
        None
    }

    /// `bpf_skb_adjust_room` growing: the `at` bytes move toward the head, the room is zeroed;
    /// a tunnel's encapsulation marks the packet encapsulated, refuses one that already is, and
    /// makes the outer family the packet's protocol. GSO packets keep their segment size.
    fn insert_room(&mut self, at: usize, len: usize, room: Room) -> Option<()> {
        if !self.may_adjust_room(at, len) {
            return None;
        }
        if let Room::UdpTunnel(_) = room {
            if self.encapsulated || at != MAC_LEN || len < MAC_LEN {
                return None;
            }
        }
        if self.meta.gso_size == 0 && self.pkt.len() + len > BPF_SKB_MAX_LEN {
            return None;
        }
        insert_room_at_head(&mut self.pkt, at, len)?;
        for i in at..at + len {
            self.pkt.store(i, &0u8)?;
        }
        if let Room::UdpTunnel(outer) = room {
            self.encapsulated = true;
            self.protocol = ether_type(outer);
        }
        Some(())
    }

    /// `bpf_skb_adjust_room` shrinking: the `at` bytes move toward the tail. At least one fixed
    /// network header (of the family a decapsulation names, else of the protocol) must remain;
    /// a decapsulation makes the inner family the packet's protocol. As the TC program, no
    /// decapsulation to an inner frame that is not IP (the protocol would stay the outer one's).
    fn remove_room(&mut self, at: usize, len: usize, room: Room) -> Option<()> {
        if !self.may_adjust_room(at, len) || room == Room::UdpTunnelDecap(None) {
            return None;
        }
        let len_min = match room {
            Room::UdpTunnelDecap(Some(IpFamily::V4)) => 20,
            Room::UdpTunnelDecap(Some(IpFamily::V6)) => 40,
            _ => self.net_base_len()?,
        };
        let len_cur = self.pkt.len().checked_sub(MAC_LEN)?;
        if len >= len_cur || len_cur - len < len_min {
            return None;
        }
        remove_room_at_head(&mut self.pkt, at, len)?;
        if let Room::UdpTunnelDecap(Some(inner)) = room {
            self.protocol = ether_type(inner);
        }
        Some(())
    }

    /// `bpf_skb_change_tail` cutting the packet: refused for an encapsulated packet or below
    /// the Ethernet header; a GSO packet stops being one.
    fn truncate(&mut self, len: usize) -> Option<()> {
        if self.encapsulated || len < MAC_LEN || len > self.pkt.len() {
            return None;
        }
        truncate_at_tail(&mut self.pkt, len)?;
        self.meta.gso_size = 0;
        Some(())
    }
}

/// `BPF_SKB_MAX_LEN`: the longest non-GSO packet `bpf_skb_adjust_room` grows to.
const BPF_SKB_MAX_LEN: usize = 0xffff;

/// The EtherType of an IP family.
const fn ether_type(f: IpFamily) -> u16 {
    match f {
        IpFamily::V4 => 0x0800,
        IpFamily::V6 => 0x86dd,
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
    fn backend_by_addr(&self, key: &BackendAddrKey) -> Option<BackendValue> {
        self.services.backend_by_addr(key)
    }
    fn affinity(&self, key: &AffinityKey) -> Option<AffinityValue> {
        self.services.affinity(key)
    }
    fn set_affinity(&mut self, key: &AffinityKey, value: &AffinityValue) {
        self.services.set_affinity(key, value);
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
    /// The tables' sizes, as the kernel loader's: services, backends and nodes beyond them are
    /// refused with [`ConfigError::TableFull`].
    sizes: TableSizes,
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
    /// An engine with an explicit configuration and clock, a conntrack table of `ct_capacity`
    /// entries and the other tables of [`TableSizes::default`]. The random source (collision
    /// resolution) is seeded from `cfg.hash_seed`, so runs are reproducible.
    pub fn with_clock(ct_capacity: usize, cfg: DatapathConfig, clock: C) -> Self {
        let sizes = TableSizes {
            conntrack: u32::try_from(ct_capacity).unwrap_or(u32::MAX),
            ..TableSizes::default()
        };
        Self::with_sizes(&sizes, cfg, clock)
    }

    /// An engine whose tables have the sizes the kernel loader is given (`lb_bpf::LoadOptions`),
    /// so that both refuse the same programming: conntrack holds `sizes.conntrack` entries, and
    /// services, backend slots and nodes beyond theirs are refused with
    /// [`ConfigError::TableFull`].
    pub fn with_sizes(sizes: &TableSizes, cfg: DatapathConfig, clock: C) -> Self {
        let tables = UserTables {
            ct: HashConntrackTable::with_capacity(sizes.conntrack as usize),
            services: HashServiceTable {
                affinity_capacity: sizes.affinity as usize,
                ..HashServiceTable::default()
            },
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
            sizes: *sizes,
        }
    }

    /// The tables' sizes.
    pub fn table_sizes(&self) -> &TableSizes {
        &self.sizes
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

    /// Runs one frame through the pipeline as the TC program runs it, with the skb state
    /// `meta` (a partial checksum, a GSO segment size): translations as in
    /// [`process`](Self::process), and carriers, decapsulation and ICMP errors as the kernel's
    /// helpers at TC make them (`bpf_skb_adjust_room`, `bpf_skb_change_tail`), which refuse
    /// packets that are not plain IPv4/IPv6 behind their Ethernet header (VLAN-tagged ones).
    /// The frame is rewritten in place and may change length. The reference for the TC
    /// program in differential tests.
    pub fn process_tc(&mut self, frame: &mut Vec<u8>, meta: SkbMeta) -> Verdict {
        self.buf.clear();
        self.buf.resize(HEADROOM, 0);
        self.buf.extend_from_slice(frame);
        self.buf.resize(HEADROOM + frame.len() + TAILROOM, 0);
        let Some(pkt) = HeadroomPacket::new(&mut self.buf, HEADROOM, frame.len()) else {
            return Verdict::Drop;
        };
        let mut pkt = TcPacket::new(pkt, meta);
        let clock = || self.clock.now_ns();
        let verdict = crate::process(
            &mut pkt,
            &self.cfg,
            &clock,
            &mut self.tables,
            &mut self.scratch,
        );
        frame.clear();
        frame.extend_from_slice(pkt.pkt.bytes());
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
    /// A [`ConfigError`] naming the invalid field (nothing changes then), or
    /// [`ConfigError::TableFull`] when the peers do not fit the nodes table (the configuration is
    /// kept then; the peers that fit are written, as in the kernel).
    pub fn set_node(&mut self, node: &NodeSpec) -> Result<(), ConfigError> {
        let mut cfg = self.cfg;
        set_node(self, &mut cfg, node)?;
        self.cfg = cfg;
        Ok(())
    }

    /// Queues an event; when the queue is full the oldest goes, counted as
    /// [`Counter::DropEventsLost`] (a consumer that falls behind sees the latest drops).
    fn queue_drop_event(&mut self, ev: DropEvent) {
        if self.drop_events.len() >= self.sizes.drop_event_capacity() {
            self.drop_events.pop_front();
            self.tables.counters.bump(Counter::DropEventsLost.slot());
        }
        self.drop_events.push_back(ev);
    }

    /// The drop events recorded since the last call, oldest first (at most
    /// [`DROP_EVENT_QUEUE_LEN`] at the default sizes; older ones were counted as [`Counter::DropEventsLost`]).
    /// `KernelDatapath::drain_drop_events` reads the kernel's the same way.
    pub fn drain_drop_events(&mut self) -> Vec<DropEvent> {
        self.drop_events.drain(..).collect()
    }

    /// Adds or replaces a service.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the invalid field, or [`ConfigError::TableFull`] naming the
    /// table that is full (sized by [`with_sizes`](Self::with_sizes)).
    pub fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<(), ConfigError> {
        upsert_service(self, spec)
    }

    /// Removes a service, its slots and its flows (see [`lb_control::remove_service`]); the
    /// number of flows deleted.
    pub fn remove_service(&mut self, spec: &ServiceSpec) -> u64 {
        // The engine's tables refuse no removal: there is no error to report.
        remove_service(self, spec).unwrap_or(0)
    }

    /// Deletes every flow to `backend` over `proto` (see [`lb_control::flush_backend_flows`]);
    /// the number of flows deleted.
    pub fn flush_backend_flows(&mut self, backend: std::net::SocketAddr, proto: L4Proto) -> u64 {
        // As above: nothing to fail.
        lb_control::flush_backend_flows(self, backend, proto).unwrap_or(0)
    }

    /// The conntrack table.
    #[must_use]
    pub fn conntrack(&self) -> &HashConntrackTable {
        &self.tables.ct
    }

    /// Deletes the conntrack entry under `key` alone (not its partner), as the kernel map's
    /// delete does (`KernelDatapath::conntrack_remove`): what an operator's flush of one entry,
    /// or a GC that deletes a pair's halves in two steps, leaves. The pipeline repairs what is
    /// left: a reply finding its service entry gone removes the orphan
    /// ([`Counter::OrphanReplyRemoved`]), a packet finding its reverse entry gone rebuilds it
    /// ([`Counter::ReverseEntryRebuilt`]). Whether an entry was there.
    pub fn conntrack_remove(&mut self, key: &CtKey) -> bool {
        self.tables.ct.remove(key)
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

/// A new entry in a table of `len` entries sized `table`'s setting in `sizes`: refused as the
/// kernel's preallocated hash map refuses it (`E2BIG` once it holds its size).
fn check_room(
    sizes: &TableSizes,
    table: &lb_api::tables::Table,
    len: usize,
    exists: bool,
) -> Result<(), ConfigError> {
    let Some((capacity, knob)) = sizes.of(table) else {
        return Ok(());
    };
    if exists || len < capacity as usize {
        return Ok(());
    }
    Err(ConfigError::TableFull {
        table: table.name,
        capacity,
        knob,
    })
}

impl<C: Clock> ServiceStore for Engine<C> {
    fn put_node(&mut self, key: NodeKey) -> Result<(), ConfigError> {
        let t = &self.tables.services;
        check_room(
            &self.sizes,
            &lb_api::tables::NODES,
            t.nodes.len(),
            t.nodes.contains(&key),
        )?;
        self.tables.services.put_node(key)
    }
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), ConfigError> {
        let t = &self.tables.services;
        check_room(
            &self.sizes,
            &lb_api::tables::SERVICES,
            t.services.len(),
            t.services.contains_key(&key),
        )?;
        self.tables.services.put_service(key, value)
    }
    fn put_backend(&mut self, key: BackendKey, value: BackendValue) -> Result<(), ConfigError> {
        let t = &self.tables.services;
        check_room(
            &self.sizes,
            &lb_api::tables::BACKENDS,
            t.backends.len(),
            t.backends.contains_key(&key),
        )?;
        self.tables.services.put_backend(key, value)
    }
    fn get_service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        self.tables.services.get_service(key)
    }
    fn get_backend(&self, key: &BackendKey) -> Option<BackendValue> {
        self.tables.services.get_backend(key)
    }
    fn for_each_flow(&mut self, f: &mut dyn FnMut(&CtKey, &CtEntry)) -> Result<(), ConfigError> {
        for (k, e) in self.tables.ct.iter() {
            f(k, e);
        }
        Ok(())
    }
    fn delete_flow_entry(&mut self, key: &CtKey) -> Result<bool, ConfigError> {
        Ok(ConntrackTable::remove(&mut self.tables.ct, key))
    }
    fn count_backend_flows_removed(&mut self, flows: u64) -> Result<(), ConfigError> {
        let slot = Counter::CtBackendRemoved.slot() as usize;
        if let Some(c) = self.tables.counters.0.get_mut(slot) {
            *c = c.saturating_add(flows);
        }
        Ok(())
    }
    fn remove_backend(&mut self, key: &BackendKey) {
        self.tables.services.remove_backend(key);
    }
    fn remove_service(&mut self, key: &ServiceKey) {
        self.tables.services.remove_service(key);
    }
    fn put_backend_by_addr(
        &mut self,
        key: BackendAddrKey,
        value: BackendValue,
    ) -> Result<(), ConfigError> {
        let t = &self.tables.services;
        check_room(
            &self.sizes,
            &lb_api::tables::BACKENDS_BY_ADDR,
            t.backends_by_addr.len(),
            t.backends_by_addr.contains_key(&key),
        )?;
        self.tables.services.put_backend_by_addr(key, value)
    }
    fn remove_backend_by_addr(&mut self, key: &BackendAddrKey) {
        self.tables.services.remove_backend_by_addr(key);
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
    fn tc_translates_and_carries_like_xdp_but_refuses_what_the_kernel_refuses() {
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
                mode: lb_control::ForwardingMode::Dsr,
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
        let (mut xdp, mut tc) = (
            Engine::with_clock(64, cfg, ManualClock::new(0)),
            Engine::with_clock(64, cfg, ManualClock::new(0)),
        );
        dsr(&mut xdp);
        dsr(&mut tc);
        let syn = |vip: [u8; 4]| tcp_v4_frame([10, 0, 0, 1], 40000, vip, 80, TcpFlags::SYN, b"");
        // Plain DNAT keeps the length: the same in both hooks.
        let (mut a, mut b) = (syn([10, 96, 0, 11]), syn([10, 96, 0, 11]));
        assert_eq!(xdp.process(&mut a), Verdict::Pass);
        assert_eq!(tc.process_tc(&mut b, SkbMeta::default()), Verdict::Pass);
        assert_eq!(a, b);
        // The DSR option: 8 more bytes, in both hooks alike.
        let (mut a, mut b) = (syn([10, 96, 0, 10]), syn([10, 96, 0, 10]));
        let len = a.len();
        assert_eq!(xdp.process(&mut a), Verdict::Pass);
        assert_eq!(tc.process_tc(&mut b, SkbMeta::default()), Verdict::Pass);
        assert_eq!(a.len(), len + 8);
        assert_eq!(a, b);
        assert_eq!(tc.counters().get(Counter::DsrCarrierAdded), 1);
        // A GSO packet the kernel could not segment once resized (what the test runner makes
        // of a segment size): the kernel refuses to grow it, so the carrier fails after the
        // flow is recorded (its next packet is carried), and the packet is dropped.
        let mut c = tcp_v4_frame(
            [10, 0, 0, 2],
            40000,
            [10, 96, 0, 10],
            80,
            TcpFlags::SYN,
            b"",
        );
        let untyped = SkbMeta {
            gso_size: 1000,
            gso_type: GsoType::Unknown,
            ..SkbMeta::default()
        };
        let entries = tc.conntrack().len();
        assert_eq!(tc.process_tc(&mut c, untyped), Verdict::Drop);
        assert_eq!(tc.counters().drops(DropReason::EncapFailed), 1);
        assert_eq!(
            tc.conntrack().len(),
            entries + 1,
            "DSR: one entry, not carried"
        );
        let ev = tc.drain_drop_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].reason, DropReason::EncapFailed);
    }

    #[test]
    fn tc_decides_the_mtu_of_a_gso_packet_by_its_segments() {
        let mut node = NodeSpec {
            address_v4: Some([192, 168, 1, 10].into()),
            ..NodeSpec::default()
        };
        node.peers.push([192, 168, 1, 11].into());
        let mut cfg = default_config(0);
        cfg.fixed_now_ns = 1_000;
        let mut e = Engine::with_clock(64, cfg, ManualClock::new(0));
        e.set_node(&node).unwrap();
        e.upsert_service(&ServiceSpec {
            id: 1,
            frontend: "10.96.0.10:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec![remote("10.1.0.2:8080")],
            mode: lb_control::ForwardingMode::Dsr,
            ..Default::default()
        })
        .unwrap();
        // 3000 bytes of IP packet, TSO: segments of 40 bytes of headers and `gso_size` of data.
        let big = |port| {
            tcp_v4_frame(
                [10, 0, 0, 1],
                port,
                [10, 96, 0, 10],
                80,
                TcpFlags::ACK,
                &[0x5a; 2960],
            )
        };
        let tso = |gso_size| SkbMeta {
            gso_size,
            ..SkbMeta::default()
        };
        // Segments of 1400 + 40 + 8 of carrier fit 1500: carried whole, the kernel segments it.
        let mut f = big(40_000);
        assert_eq!(e.process_tc(&mut f, tso(1400)), Verdict::Pass);
        assert_eq!(f.len(), 14 + 3000 + 8);
        assert_eq!(e.counters().get(Counter::DsrCarrierAdded), 1);
        // Segments of 1460 do not: the sender gets the ICMP error (built from the GSO packet,
        // which stops being one).
        let mut f = big(40_001);
        assert_eq!(e.process_tc(&mut f, tso(1460)), Verdict::Tx);
        assert_eq!(e.counters().get(Counter::MtuExceeded), 1);
        assert_eq!(f.len(), 14 + 20 + 8 + 128);
        // Not a GSO packet: its length decides.
        let mut f = big(40_002);
        assert_eq!(e.process_tc(&mut f, SkbMeta::default()), Verdict::Tx);
        assert_eq!(e.counters().get(Counter::MtuExceeded), 2);
    }

    fn remote(addr: &str) -> lb_control::BackendSpec {
        lb_control::BackendSpec {
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
        // A reset to a service without backends is not answered: dropped.
        let mut syn = tcp_v4_frame(
            [10, 0, 0, 1],
            40000,
            [10, 96, 0, 10],
            80,
            TcpFlags::RST,
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
