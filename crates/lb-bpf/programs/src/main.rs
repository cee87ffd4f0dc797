//! The lb-dataplane eBPF programs.
//!
//! Each program is a thin adapter: it wraps the hook's packet in a [`PacketAccess`] over
//! `data`/`data_end`, the kernel maps in the logic crates' table traits, and calls
//! [`lb_datapath::process`], the same function the userspace engine runs.
//!
//! Programs:
//! * `lb_xdp`: the pipeline at XDP (ingress, before the stack allocates an skb): its first stage
//!   (parse, ICMP errors, replies, tracked flows), then a tail call into `lb_xdp_new_flow`, the
//!   new-flow stage, for a packet of no tracked flow. Two programs, because the verifier's
//!   budget is a million instructions per program and the new-flow stage (the SNAT allocator's
//!   schedule) needs most of one.
//! * `lb_tc`, `lb_tc_new_flow`: the pipeline at TC (clsact ingress or egress), for interfaces or
//!   directions XDP cannot serve. Carriers, decapsulation and ICMP errors go through the kernel's
//!   skb helpers (`bpf_skb_adjust_room` with the encapsulation flags, `bpf_skb_change_tail`),
//!   which keep a GSO packet segmentable; ICMP errors go back out by `bpf_redirect`.
//! * `lb_xdp_parse_only`: parses and passes; the baseline benchmarks are set against.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::bindings::{
    __sk_buff, bpf_adj_room_mode, xdp_action, xdp_md, BPF_F_INGRESS, TC_ACT_OK, TC_ACT_SHOT,
};
use aya_ebpf::helpers::{
    bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_l4_csum_replace, bpf_redirect, bpf_skb_adjust_room,
    bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
};
use aya_ebpf::macros::{classifier, map, xdp};
use aya_ebpf::maps::{Array, HashMap, PerCpuArray, ProgramArray, RingBuf};
use aya_ebpf::programs::{TcContext, XdpContext};
use lb_api::abi::{
    BackendKey, BackendValue, CtEntry, CtKey, DatapathConfig, NodeKey, ServiceKey, ServiceValue,
};
use lb_api::checksum::l4_flags;
use lb_api::counters::{Counter, Counters, DropReason, COUNTER_SLOTS};
use lb_api::events::DropEvent;
use lb_api::wire::{parse, PacketAccess, MAX_HEADER_OFFSET};
use lb_api::Verdict;
use lb_datapath::Step;
use lb_conntrack::{ConntrackTable, InsertError, InsertMode};
use lb_encap::{AdjustHead, Room};
use lb_nat::{RandomSource, ServiceTable};
use zerocopy_shim::{FromBytes, Immutable, IntoBytes, KnownLayout};

mod zerocopy_shim {
    pub use lb_api::__zerocopy::network_endian::U16;
    pub use lb_api::__zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
}

/// Conntrack entries: service entries and reverse-NAT entries.
#[map]
static LB_CT: HashMap<CtKey, CtEntry> = HashMap::with_max_entries(65_536, 0);
/// Services by frontend.
#[map]
static LB_SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(4_096, 0);
/// Backend slots.
#[map]
static LB_BACKENDS: HashMap<BackendKey, BackendValue> = HashMap::with_max_entries(65_536, 0);
/// Peer nodes: tunnel packets are accepted from these only.
#[map]
static LB_NODES: HashMap<NodeKey, u32> = HashMap::with_max_entries(1_024, 0);
/// XDP devices whose packets may carry partial checksums that only their field shows (veths:
/// their peer's local senders use checksum offload), by interface index; set by the loader.
#[map]
static LB_XDP_PARTIAL: HashMap<u32, u8> = HashMap::with_max_entries(1_024, 0);
/// The datapath configuration (one entry).
#[map]
static LB_CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);
/// Counters, per CPU; userspace sums them.
#[map]
static LB_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Drop events for userspace (`KernelDatapath::drain_drop_events`): 256 KiB, 4095 records.
/// Not pinned: its records are transient, and a restarted loader reads its own program's.
#[map]
static LB_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Why the packet being processed was dropped (per CPU; valid when the pipeline said Drop).
/// Never pinned, like the scratch slot.
#[map]
static LB_DROP_REASON: PerCpuArray<DropReason> = PerCpuArray::with_max_entries(1, 0);

/// Per-packet working state of the pipeline (parse result, entry under construction): too large
/// for the 512-byte stack. Never pinned: its contents do not outlive a packet.
#[map]
static LB_SCRATCH: PerCpuArray<lb_datapath::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The XDP pipeline's later stages, for tail calls: slot [`NEW_FLOW_STAGE`] holds
/// `lb_xdp_new_flow` (set by the loader). A program array serves programs of one type only,
/// hence one per hook.
#[map]
static LB_XDP_STAGES: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// The TC pipeline's later stages: slot [`NEW_FLOW_STAGE`] holds `lb_tc_new_flow`.
#[map]
static LB_TC_STAGES: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// The new-flow stage's slot in the stage arrays.
const NEW_FLOW_STAGE: u32 = 0;

/// The kernel maps behind the logic crates' table traits.
struct KernelTables;

impl ConntrackTable for KernelTables {
    #[inline(always)]
    fn get_mut(&mut self, key: &CtKey) -> Option<&mut CtEntry> {
        // SAFETY: the pointer comes from a successful map lookup and points at a value of the
        // map's value type, valid for the rest of this program run (RCU); the `&mut self` borrow
        // keeps this program from handing out a second reference to it.
        LB_CT.get_ptr_mut(key).map(|p| unsafe { &mut *p })
    }

    #[inline(always)]
    fn insert(
        &mut self,
        key: &CtKey,
        entry: &CtEntry,
        mode: InsertMode,
    ) -> Result<(), InsertError> {
        let flags = match mode {
            InsertMode::NoExist => 1, // BPF_NOEXIST
            InsertMode::Any => 0,     // BPF_ANY
        };
        LB_CT.insert(key, entry, flags).map_err(|e| match e as i32 {
            -17 => InsertError::Exists, // EEXIST
            -7 => InsertError::Full,    // E2BIG
            other => InsertError::Other(other),
        })
    }

    #[inline(always)]
    fn remove(&mut self, key: &CtKey) -> bool {
        LB_CT.remove(key).is_ok()
    }
}

impl ServiceTable for KernelTables {
    #[inline(always)]
    fn service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        // SAFETY: the value is copied out while the RCU-protected lookup result is valid.
        unsafe { LB_SERVICES.get(key).copied() }
    }

    #[inline(always)]
    fn backend(&self, key: &BackendKey) -> Option<BackendValue> {
        // SAFETY: as above.
        unsafe { LB_BACKENDS.get(key).copied() }
    }

    #[inline(always)]
    fn is_peer_node(&self, key: &NodeKey) -> bool {
        LB_NODES.get_ptr(key).is_some()
    }
}

impl RandomSource for KernelTables {
    #[inline(always)]
    fn random_u32(&mut self) -> u32 {
        // SAFETY: bpf_get_prandom_u32 has no preconditions.
        unsafe { bpf_get_prandom_u32() }
    }
}

impl Counters for KernelTables {
    #[inline(always)]
    fn bump(&mut self, slot: u32) {
        bump(slot);
    }

    #[inline(always)]
    fn drop_event(&mut self, reason: DropReason) {
        // Only noted here, in a map slot: the event is written after the pipeline returns, so
        // that no path's frame grows (main + new flow + rewrite is at the 512-byte limit).
        if let Some(p) = LB_DROP_REASON.get_ptr_mut(0) {
            // SAFETY: this CPU's slot, used by one program run at a time.
            unsafe { *p = reason };
        }
    }
}

#[inline(always)]
fn bump(slot: u32) {
    if let Some(p) = LB_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot is only written by programs running on this CPU, one at a time.
        unsafe { *p += 1 };
    }
}

/// Writes the drop event of the packet the pipeline just dropped straight into a reserved
/// ring-buffer slot: a subprogram of its own, called after the pipeline (so its frame adds to
/// the program's only), reading the reason and the parsed flow from their per-CPU slots. A full
/// ring loses the event, counted as `drop_events_lost`.
#[inline(never)]
fn emit_drop_event(ifindex: u32) {
    let (Some(reason), Some(scratch)) = (LB_DROP_REASON.get(0), LB_SCRATCH.get(0)) else {
        return;
    };
    let tuple = &scratch.parsed.tuple;
    let Some(mut slot) = LB_EVENTS.reserve::<DropEvent>(0) else {
        bump(Counter::DropEventsLost.slot());
        return;
    };
    // The same time the pipeline stamps conntrack with (the config's fixed time in tests).
    let now = match LB_CONFIG.get(0) {
        Some(cfg) if cfg.fixed_now_ns != 0 => cfg.fixed_now_ns,
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        _ => unsafe { bpf_ktime_get_ns() },
    };
    let p = slot.as_mut_ptr();
    // SAFETY: `p` points at a reserved, 8-aligned ring slot of `size_of::<DropEvent>()` bytes
    // owned by this program until submit; every field is written before the submit, so
    // userspace never sees uninitialized bytes.
    unsafe {
        (&raw mut (*p).timestamp_ns).write(now);
        (&raw mut (*p).reason).write(*reason);
        (&raw mut (*p).ifindex).write(ifindex);
        (&raw mut (*p).src).write(tuple.src);
        (&raw mut (*p).dst).write(tuple.dst);
        (&raw mut (*p).src_port).write(tuple.src_port);
        (&raw mut (*p).dst_port).write(tuple.dst_port);
        (&raw mut (*p).proto).write(tuple.proto);
        (&raw mut (*p).family).write(tuple.family);
        (&raw mut (*p).pad).write([0; 2]);
    }
    slot.submit(0);
}

/// [`PacketAccess`] over `data`/`data_end`: every access is checked against `data_end` with a
/// pointer comparison the verifier can follow. At XDP (`TC` false; `ctx` the `xdp_md`) the
/// packet grows and shrinks at its head and tail ([`AdjustHead`]'s room operations move the
/// bytes in front); at TC (`ctx` the `__sk_buff`) room is inserted and removed inside the
/// packet by `bpf_skb_adjust_room` and the packet cut by `bpf_skb_change_tail`, which keep the
/// skb's metadata (GSO, protocol, inner headers) right, and its checksums are updated through
/// the kernel's helpers, which know the skb's checksum state.
struct DirectPacket<const TC: bool> {
    start: usize,
    end: usize,
    /// The program's context (null: none, as for the parse-only baseline).
    ctx: *mut core::ffi::c_void,
}

/// The XDP packet.
type XdpPacket = DirectPacket<false>;
/// The TC packet.
type TcPacket = DirectPacket<true>;

impl<const TC: bool> DirectPacket<TC> {
    /// Re-reads `data`/`data_end` after the packet moved (or a helper that may move it ran:
    /// the verifier forgets every packet pointer after such a call).
    #[inline(always)]
    fn reload(&mut self) {
        if TC {
            // SAFETY: `ctx` is the program's `__sk_buff`, valid for the whole run.
            let skb = unsafe { &*self.ctx.cast::<__sk_buff>() };
            self.start = skb.data as usize;
            self.end = skb.data_end as usize;
        } else {
            // SAFETY: `ctx` is the program's `xdp_md`, valid for the whole run.
            let md = unsafe { &*self.ctx.cast::<xdp_md>() };
            self.start = md.data as usize;
            self.end = md.data_end as usize;
        }
    }
}

impl<const TC: bool> DirectPacket<TC> {
    /// `bpf_skb_adjust_room` by `len_diff` bytes at `at`: after the Ethernet header
    /// (`BPF_ADJ_ROOM_MAC`) or after the fixed IPv4/IPv6 header, by the skb's protocol
    /// (`BPF_ADJ_ROOM_NET`); nowhere else (a VLAN-tagged packet's protocol is its tag's, which
    /// the helper refuses anyway).
    #[inline(always)]
    fn adjust_room(&mut self, at: usize, len_diff: i32, room: Room) -> Option<()> {
        // SAFETY: `ctx` is the program's `__sk_buff`; `protocol` is a readable field.
        let protocol = unsafe { (*self.ctx.cast::<__sk_buff>()).protocol };
        let base = if protocol == u32::from(0x0800u16.to_be()) {
            20
        } else if protocol == u32::from(0x86ddu16.to_be()) {
            40
        } else {
            return None;
        };
        let mode = if at == 14 {
            bpf_adj_room_mode::BPF_ADJ_ROOM_MAC
        } else if at == 14 + base {
            bpf_adj_room_mode::BPF_ADJ_ROOM_NET
        } else {
            return None;
        };
        // SAFETY: `ctx` is the program's `__sk_buff`; the helper checks the packet and the
        // flags itself and fails without changing anything.
        let r = unsafe { bpf_skb_adjust_room(self.ctx.cast(), len_diff, mode, room.tc_flags()) };
        self.reload();
        (r == 0).then_some(())
    }
}

impl<const TC: bool> AdjustHead for DirectPacket<TC> {
    #[inline(always)]
    fn adjust_head(&mut self, delta: i32) -> Option<()> {
        if TC || self.ctx.is_null() {
            return None;
        }
        // SAFETY: `ctx` is the program's context; the helper checks the headroom and the new
        // start itself and fails without changing anything.
        if unsafe { bpf_xdp_adjust_head(self.ctx.cast(), delta) } != 0 {
            return None;
        }
        self.reload();
        Some(())
    }

    #[inline(always)]
    fn adjust_tail(&mut self, delta: i32) -> Option<()> {
        if TC || self.ctx.is_null() {
            return None;
        }
        // SAFETY: as above; the helper checks the tailroom and the minimum length.
        if unsafe { bpf_xdp_adjust_tail(self.ctx.cast(), delta) } != 0 {
            return None;
        }
        self.reload();
        Some(())
    }

    /// At TC, an IPv4 or IPv6 packet (the skb's protocol): the kernel resizes no other (a
    /// VLAN-tagged packet's protocol is its tag's). At XDP any packet (but the parse-only
    /// baseline's, which has no context).
    #[inline(always)]
    fn resizable(&self) -> bool {
        if !TC {
            return !self.ctx.is_null();
        }
        // SAFETY: `ctx` is the program's `__sk_buff`; `protocol` is a readable field.
        let protocol = unsafe { (*self.ctx.cast::<__sk_buff>()).protocol };
        protocol == u32::from(0x0800u16.to_be()) || protocol == u32::from(0x86ddu16.to_be())
    }

    #[inline(always)]
    fn insert_room(&mut self, at: usize, len: usize, room: Room) -> Option<()> {
        if !TC {
            return lb_encap::insert_room_at_head(self, at, len);
        }
        if len > 0xfff {
            return None;
        }
        self.adjust_room(at, len as i32, room)
    }

    /// At TC, not to an inner frame that is not IP: the kernel keeps the skb's protocol (the
    /// outer family's) and could set no other, so the stack would misread the frame.
    #[inline(always)]
    fn remove_room(&mut self, at: usize, len: usize, room: Room) -> Option<()> {
        if !TC {
            return lb_encap::remove_room_at_head(self, at, len);
        }
        if len > 0xfff || room == Room::UdpTunnelDecap(None) {
            return None;
        }
        self.adjust_room(at, -(len as i32), room)
    }

    #[inline(always)]
    fn truncate(&mut self, len: usize) -> Option<()> {
        if !TC {
            return lb_encap::truncate_at_tail(self, len);
        }
        if len > self.len() {
            return None;
        }
        // SAFETY: `ctx` is the program's `__sk_buff`; the helper checks the length and fails
        // without changing anything.
        let r = unsafe { bpf_skb_change_tail(self.ctx.cast(), len as u32, 0) };
        self.reload();
        (r == 0).then_some(())
    }
}

impl<const TC: bool> PacketAccess for DirectPacket<TC> {
    #[inline(always)]
    fn len(&self) -> usize {
        if TC && !self.ctx.is_null() {
            // The whole packet: a GSO packet (TSO from a pod, GRO-merged segments) is mostly
            // outside the linear part the program sees; its headers are pulled in
            // (`tc_packet`), the rest is there all the same.
            // SAFETY: `ctx` is the program's `__sk_buff`; `len` is a readable field.
            return unsafe { (*self.ctx.cast::<__sk_buff>()).len } as usize;
        }
        self.end - self.start
    }

    #[inline(always)]
    fn load<T: FromBytes + KnownLayout + Immutable + Copy>(&self, offset: usize) -> Option<T> {
        if offset > MAX_HEADER_OFFSET {
            return None;
        }
        let p = self.start + offset;
        if p + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: `p .. p + size_of::<T>()` lies inside the packet (checked against `end`), and
        // `T: FromBytes` accepts any bytes; the read is unaligned-safe.
        Some(unsafe { core::ptr::read_unaligned(p as *const T) })
    }

    #[inline(always)]
    fn store<T: IntoBytes + Immutable>(&mut self, offset: usize, value: &T) -> Option<()> {
        if offset > MAX_HEADER_OFFSET {
            return None;
        }
        let p = self.start + offset;
        if p + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: `p .. p + size_of::<T>()` lies inside the writable packet buffer.
        unsafe { core::ptr::write_unaligned(p as *mut T, core::ptr::read(value)) };
        Some(())
    }

    /// At XDP on a device the loader registered (a veth): XDP cannot see the skb's checksum
    /// state there. TC can (its helper reads it), and a NIC hands up no partial checksums.
    const MAY_HIDE_PARTIAL: bool = !TC;

    #[inline(always)]
    fn partial_by_field(&self) -> bool {
        if TC || self.ctx.is_null() {
            return false;
        }
        // SAFETY: `ctx` is the program's `xdp_md`; `ingress_ifindex` is a readable field.
        let ifindex = unsafe { (*self.ctx.cast::<xdp_md>()).ingress_ifindex };
        LB_XDP_PARTIAL.get_ptr(&ifindex).is_some()
    }

    /// At TC the skb's `gso_size`; XDP sees no GSO packets.
    #[inline(always)]
    fn gso_size(&self) -> u16 {
        if !TC {
            return 0;
        }
        // SAFETY: `ctx` is the program's `__sk_buff`; `gso_size` is a readable field.
        unsafe { (*self.ctx.cast::<__sk_buff>()).gso_size as u16 }
    }

    /// At TC through `bpf_l4_csum_replace`, which knows the skb's checksum state (complete,
    /// partial, or `CHECKSUM_COMPLETE` with its sum to keep right); at XDP, by the state the
    /// pipeline found by the field (`FOUND_PARTIAL`, [`lb_api::checksum::l4_replace`]).
    #[inline(always)]
    fn l4_csum_replace(&mut self, at: usize, from: u32, to: u32, flags: u64) -> Option<()> {
        if !TC {
            let check: zerocopy_shim::U16 = self.load(at)?;
            let partial = flags >> 63 != 0; // FOUND_PARTIAL, without a branch
            let c = lb_api::checksum::l4_replace(check.get(), partial, from, to, flags);
            return self.store(at, &zerocopy_shim::U16::new(c));
        }
        if at > MAX_HEADER_OFFSET {
            return None;
        }
        // The helper sums the values as they lie in memory (network order).
        let flags = flags & l4_flags::KERNEL_MASK;
        let (from, to) = if flags & l4_flags::SIZE_MASK == 4 {
            (u64::from(from.to_be()), u64::from(to.to_be()))
        } else {
            (u64::from((from as u16).to_be()), u64::from((to as u16).to_be()))
        };
        // SAFETY: `ctx` is the program's `__sk_buff`; the helper checks the offset against the
        // packet and fails without writing.
        let r = unsafe { bpf_l4_csum_replace(self.ctx.cast(), at as u32, from, to, flags) };
        self.reload();
        (r == 0).then_some(())
    }
}

/// The stage of the pipeline a program runs.
#[derive(Clone, Copy)]
enum Stage {
    /// [`lb_datapath::process_tracked`].
    Tracked,
    /// [`lb_datapath::process_new`].
    NewFlow,
}

/// Runs `stage` over the packet with the kernel maps; `None` when the first stage hands the
/// packet on to the new-flow stage.
#[inline(always)]
fn run<const TC: bool>(pkt: &mut DirectPacket<TC>, stage: Stage) -> Option<Verdict> {
    let mut tables = KernelTables;
    let (Some(cfg), Some(scratch)) = (LB_CONFIG.get(0), LB_SCRATCH.get_ptr_mut(0)) else {
        tables.bump(DropReason::NotConfigured.slot());
        return Some(Verdict::Pass);
    };
    // SAFETY: the per-CPU slot is used by this program run only (a CPU runs one at a time, and
    // a tail call stays on the CPU), for the duration of this call; the new-flow stage reads
    // what the first stage of the same packet left there.
    let scratch = unsafe { &mut *scratch };
    // SAFETY: bpf_ktime_get_ns has no preconditions. The pipeline calls it only for packets that
    // touch conntrack.
    let clock = || unsafe { bpf_ktime_get_ns() };
    match stage {
        Stage::Tracked => match lb_datapath::process_tracked(pkt, cfg, &clock, &mut tables, scratch) {
            Step::Done(v) => Some(v),
            Step::NewFlow => None,
        },
        Stage::NewFlow => Some(lb_datapath::process_new(
            pkt,
            cfg,
            &clock,
            &mut tables,
            scratch,
        )),
    }
}

/// The new-flow stage could not be reached: the packet is dropped, counted.
#[inline(always)]
fn stage_missing() -> Verdict {
    lb_datapath::count_drop(&mut KernelTables, DropReason::NewFlowStageMissing)
}

/// The XDP action of a verdict (a drop writes its event).
#[inline(always)]
fn xdp_action_of(ctx: &XdpContext, v: Verdict) -> u32 {
    match v {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => {
            emit_drop_event(ctx.ingress_ifindex() as u32);
            xdp_action::XDP_DROP
        }
        Verdict::Tx => xdp_action::XDP_TX,
    }
}

/// The TC action of a verdict (a drop writes its event). A packet the pipeline sends back (the
/// ICMP error it made of a packet too big for its carrier) goes back the way it came: at
/// ingress (the device it came in on is the skb's, `skb_iif` equals it) out of that device, a
/// redirect that works on a veth with its default settings (unlike `XDP_TX`, which needs NAPI
/// at the peer); at egress (the sender is on this host's side) into that device's ingress, so
/// the stack delivers it to the sender or routes it there.
#[inline(always)]
fn tc_action_of(ctx: &TcContext, v: Verdict) -> i32 {
    match v {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Tx => {
            // SAFETY: `skb` is the context pointer the kernel passed to this program;
            // `ifindex` and `ingress_ifindex` are readable fields of `__sk_buff`.
            let (ifindex, came_in) =
                unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).ingress_ifindex) };
            let flags = if came_in == ifindex {
                0
            } else {
                u64::from(BPF_F_INGRESS)
            };
            // SAFETY: bpf_redirect has no preconditions; it returns TC_ACT_REDIRECT, or
            // TC_ACT_SHOT for flags it does not know.
            unsafe { bpf_redirect(ifindex, flags) as i32 }
        }
        Verdict::Drop => {
            // SAFETY: `skb` is the context pointer the kernel passed to this program; `ifindex`
            // is a readable field of `__sk_buff`.
            emit_drop_event(unsafe { (*ctx.skb.skb).ifindex });
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn xdp_packet(ctx: &XdpContext) -> XdpPacket {
    DirectPacket {
        start: ctx.data(),
        end: ctx.data_end(),
        ctx: ctx.ctx.cast(),
    }
}

#[inline(always)]
fn tc_packet(ctx: &TcContext) -> TcPacket {
    // Make the headers linear so that direct packet access sees them.
    let want = core::cmp::min(ctx.len(), MAX_HEADER_OFFSET as u32);
    let _ = ctx.pull_data(want);
    DirectPacket {
        start: ctx.data(),
        end: ctx.data_end(),
        ctx: ctx.skb.skb.cast(),
    }
}

/// The pipeline at XDP: its first stage, then a tail call into [`lb_xdp_new_flow`] for a packet
/// of no tracked flow.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let v = match run(&mut xdp_packet(&ctx), Stage::Tracked) {
        Some(v) => v,
        None => {
            // SAFETY: `ctx` is this program's context; on success the call does not return.
            unsafe { LB_XDP_STAGES.tail_call(&ctx, NEW_FLOW_STAGE) };
            stage_missing()
        }
    };
    xdp_action_of(&ctx, v)
}

/// The pipeline's new-flow stage at XDP, tail-called by [`lb_xdp`].
#[xdp]
pub fn lb_xdp_new_flow(ctx: XdpContext) -> u32 {
    let v = run(&mut xdp_packet(&ctx), Stage::NewFlow).unwrap_or(Verdict::Pass);
    xdp_action_of(&ctx, v)
}

/// The pipeline at TC (clsact): its first stage, then a tail call into [`lb_tc_new_flow`] for a
/// packet of no tracked flow.
#[classifier]
pub fn lb_tc(ctx: TcContext) -> i32 {
    let mut pkt = tc_packet(&ctx);
    let v = run(&mut pkt, Stage::Tracked);
    // The context again from the packet (a stack slot) rather than kept in a register across
    // the pipeline: one value less for this frame to keep, which is on the deepest call chain.
    let ctx = TcContext::new(pkt.ctx.cast());
    let v = match v {
        Some(v) => v,
        None => {
            // SAFETY: as in `lb_xdp`.
            unsafe { LB_TC_STAGES.tail_call(&ctx, NEW_FLOW_STAGE) };
            stage_missing()
        }
    };
    tc_action_of(&ctx, v)
}

/// The pipeline's new-flow stage at TC, tail-called by [`lb_tc`].
#[classifier]
pub fn lb_tc_new_flow(ctx: TcContext) -> i32 {
    let v = run(&mut tc_packet(&ctx), Stage::NewFlow).unwrap_or(Verdict::Pass);
    tc_action_of(&ctx, v)
}

/// Parse only, then pass: the baseline the pipeline's cost is measured against.
#[xdp]
pub fn lb_xdp_parse_only(ctx: XdpContext) -> u32 {
    let pkt = XdpPacket {
        start: ctx.data(),
        end: ctx.data_end(),
        ctx: core::ptr::null_mut(),
    };
    match parse(&pkt) {
        Ok(p) => {
            // Keep the parse from being optimized away.
            if p.tuple.proto == 0xff {
                return xdp_action::XDP_DROP;
            }
            xdp_action::XDP_PASS
        }
        Err(_) => xdp_action::XDP_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
