//! The pipeline: parse → reply of a tracked flow? → known flow? → new flow to a service?

use core::cell::Cell;

use lb_api::abi::{
    BackendKey, CtEntry, CtKey, CtKind, CtState, DatapathConfig, ForwardingMode, NodeKey,
    ServiceKey, ServiceValue, CT_F_BACKEND_SIDE, CT_F_DSR, CT_F_SNAT, CT_F_SRC_PORT_REWRITTEN,
    CT_F_TUNNEL,
};
use lb_api::checksum;
use lb_api::counters::{Counter, Counters, DropReason};
use lb_api::flow::{v4_of, FlowTuple, IpFamily, L4Proto};
use lb_api::wire::{
    parse_into, quoted_into, Disposition, EthernetHeader, Fragment, PacketAccess, Parsed,
    QuotedDatagram, TcpFlags,
};
use lb_api::Verdict;
use lb_conntrack::{
    initial_state, is_expired, partner_key, track, ConntrackTable, Direction, InsertError,
    InsertMode,
};
use lb_encap::dsr::{dsr_extract, dsr_v4_insert, dsr_v6_insert, DsrTarget};
use lb_encap::mtu::{icmp_too_big_parsed, wire_ip_len};
use lb_encap::{
    vxlan_decap_parsed, vxlan_encap_offloaded, AdjustHead, DecapError, InnerChecksum, OuterAddrs,
    TunnelConfig,
};
use lb_nat::collision::Reserve;
use lb_nat::snat::{claim_port, may_take_over, Claim, SnatConfig, SnatError};
use lb_nat::{
    resolve_source_port, rewrite, select_slot, translate_icmp_error, Field, RandomSource,
    ServiceTable, SourcePortRange,
};

/// The time the pipeline stamps entries with: the config's fixed time when set (deterministic
/// tests), the caller's clock otherwise.
#[inline(always)]
pub fn now_ns(cfg: &DatapathConfig, clock: impl FnOnce() -> u64) -> u64 {
    if cfg.fixed_now_ns != 0 {
        cfg.fixed_now_ns
    } else {
        clock()
    }
}

#[inline(always)]
fn drop<T: Counters + ?Sized>(tables: &mut T, reason: DropReason) -> Verdict {
    tables.bump(reason.slot());
    tables.bump(Counter::Dropped.slot());
    tables.drop_event(reason);
    Verdict::Drop
}

#[inline(always)]
fn pass<T: Counters + ?Sized>(tables: &mut T, why: Counter) -> Verdict {
    tables.bump(why.slot());
    Verdict::Pass
}

/// Runs one packet through the datapath and returns what to do with it: [`process_tracked`],
/// then, for a packet of no tracked flow, [`process_new`].
///
/// * A VXLAN packet from a peer node to this node's tunnel port is decapsulated, and its inner
///   packet goes on through the pipeline as if received (tunnel mode); from any other address it
///   is dropped.
/// * A reply from a backend of a tracked flow gets its source rewritten back to the service (and,
///   under SNAT, its destination back to the client); on the backend's node of a DSR flow it
///   leaves with the service address as source, of a tunnelled flow it goes back through the
///   tunnel.
/// * A packet of a tracked flow to a service gets its destination rewritten to the flow's backend
///   (and its source to this node under SNAT), then reaches a backend on another node per the
///   service's [`ForwardingMode`]: routed (SNAT), with a DSR carrier, or VXLAN-encapsulated.
/// * The first packet to a service picks a backend by flow hash, creates the flow's conntrack
///   entries (reverse-NAT first, with no-overwrite, so the reply path exists before the forward
///   path is published) and is rewritten. If that reply tuple is already owned by another flow,
///   the source port is rewritten to a free port (the collision resolver; under SNAT, the port
///   allocator), recorded in conntrack, and restored on replies.
/// * On the backend's node, the first packet of a flow another node translated (it came through
///   the tunnel or carries a DSR carrier) creates the entries its replies need, resolving a
///   collision with another flow of the same client port the same way.
/// * Anything else passes untouched; malformed packets are dropped. Every outcome bumps a counter.
///
/// `scratch` holds the packet's large working state (the parse result, the entry being built):
/// the eBPF programs pass a per-CPU map slot, because the kernel stack is 512 bytes; the engine
/// passes a field of its own. Its previous contents do not matter.
///
/// `clock` gives "now" in ns (see [`now_ns`]); it is read only by packets that create or update
/// conntrack entries, not by packets that are passed, dropped as malformed or miss every table.
#[inline(always)]
pub fn process<P, T, C>(
    pkt: &mut P,
    cfg: &DatapathConfig,
    clock: &C,
    tables: &mut T,
    scratch: &mut Scratch,
) -> Verdict
where
    P: AdjustHead + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    match process_tracked(pkt, cfg, clock, tables, scratch) {
        Step::Done(v) => v,
        Step::NewFlow => process_new(pkt, cfg, clock, tables, scratch),
    }
}

/// Where [`process_tracked`] leaves a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The packet is done with: its verdict.
    Done(Verdict),
    /// The packet belongs to no tracked flow: [`process_new`] takes it from here, with the
    /// parse result and the tunnel it came out of in the scratch area.
    NewFlow,
}

/// The first stage of [`process`]: parse (and decapsulate what came through the tunnel), ICMP
/// errors, replies and packets of tracked flows. A packet of no tracked flow is handed on as
/// [`Step::NewFlow`].
///
/// The kernel runs the two stages as two programs: `lb_xdp` ends in a tail call into
/// `lb_xdp_new_flow` (and `lb_tc` into `lb_tc_new_flow`), so that the verifier's budget of a
/// million instructions per program covers each stage on its own; the new-flow stage needs it
/// for the SNAT allocator's schedule. The engine calls both in a row ([`process`]).
#[inline(always)]
pub fn process_tracked<P, T, C>(
    pkt: &mut P,
    cfg: &DatapathConfig,
    clock: &C,
    tables: &mut T,
    scratch: &mut Scratch,
) -> Step
where
    P: AdjustHead + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    tables.bump(Counter::RxPackets.slot());
    let Scratch {
        parsed,
        entry,
        peer,
        outcome,
        tunnelled: tunnelled_slot,
        snat,
        key,
    } = scratch;
    *parsed = Parsed::EMPTY;
    if let Err(e) = parse_into(pkt, parsed) {
        return Step::Done(match e.disposition() {
            Disposition::Pass(c) => pass(tables, c),
            Disposition::Drop(r) => drop(tables, r),
        });
    }
    // ICMP errors about a translated flow are translated too; other ICMP messages and other
    // protocols parse (VLAN tags too: the offsets move) and pass.
    if matches!(
        L4Proto::from_u8(parsed.tuple.proto),
        Some(L4Proto::Icmp | L4Proto::Icmpv6)
    ) && parsed.fragment == Fragment::None
    {
        return Step::Done(icmp_error(pkt, parsed, tables, now_ns(cfg, clock)));
    }
    if let Some(v) = untranslated(tables, parsed) {
        return Step::Done(v);
    }
    let tunnelled = is_tunnel(&parsed.tuple, cfg);
    if tunnelled {
        if let Some(v) = tunnel_ingress(pkt, cfg, tables, parsed, peer) {
            return Step::Done(v);
        }
    }
    *tunnelled_slot = u8::from(tunnelled);
    if note_partial_checksum(pkt, parsed) {
        tables.bump(Counter::ChecksumPartialAtXdp.slot());
    }
    // Read back from the scratch area rather than kept across the calls above: one value less
    // for the kernel program's frame to keep (volatile, so that the compiler does not reuse
    // the one it wrote).
    // SAFETY: a valid, aligned pointer to the `u8` the reference holds.
    let tunnelled = unsafe { core::ptr::read_volatile(tunnelled_slot) } != 0;
    let ctx = Ctx {
        parsed,
        cfg,
        clock,
        peer,
        tunnelled,
        carry: Cell::new(false),
        outcome: Cell::from_mut(outcome),
        snat: Cell::from_mut(snat),
    };
    // The paths build their keys in the scratch area (`key`): a 56-byte key in their frames
    // would take the first stage's deepest call chain past the kernel's 512-byte stack.
    let v = match reply(pkt, &ctx, tables, entry, key) {
        Some(v) => v,
        None => match established(pkt, &ctx, tables, entry, key) {
            Some(v) => v,
            None => return Step::NewFlow,
        },
    };
    Step::Done(finish(pkt, &ctx, tables, entry, v))
}

/// The second stage of [`process`], for a packet [`process_tracked`] found no flow of: the
/// first packet of a flow to a service, or on the backend's node the first packet of a flow
/// another node translated. Works from the scratch area as the first stage left it.
#[inline(always)]
pub fn process_new<P, T, C>(
    pkt: &mut P,
    cfg: &DatapathConfig,
    clock: &C,
    tables: &mut T,
    scratch: &mut Scratch,
) -> Verdict
where
    P: AdjustHead + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    let Scratch {
        parsed,
        entry,
        key,
        peer,
        outcome,
        tunnelled,
        snat,
    } = scratch;
    let ctx = Ctx {
        parsed,
        cfg,
        clock,
        peer,
        tunnelled: *tunnelled != 0,
        carry: Cell::new(false),
        outcome: Cell::from_mut(outcome),
        snat: Cell::from_mut(snat),
    };
    let v = match new_flow(pkt, &ctx, tables, entry, key) {
        Some(v) => v,
        None => backend_side(pkt, &ctx, tables, entry, key),
    };
    finish(pkt, &ctx, tables, entry, v)
}

/// Counts a drop for `reason` (the reason, the total, the drop event) and returns the verdict.
/// What the kernel programs count when the new-flow stage cannot be reached.
#[inline(always)]
pub fn count_drop<T: Counters + ?Sized>(tables: &mut T, reason: DropReason) -> Verdict {
    drop(tables, reason)
}

/// A path's verdict `v`, completed: a packet the path left to be carried to its peer node
/// gets its carrier (and then its outcome counted), a packet too big for the carrier becomes
/// the ICMP error. Here, once per stage, not in the paths, so that the carrier's frame (and the
/// tunnel's) does not stack on theirs, and the verifier walks it once per stage rather than
/// once per path (its checksum loop is long).
#[inline(always)]
fn finish<P, T, C>(
    pkt: &mut P,
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    entry: &CtEntry,
    v: Verdict,
) -> Verdict
where
    P: AdjustHead + ?Sized,
    T: Counters + ?Sized,
    C: Fn() -> u64,
{
    if ctx.carry.get() {
        // The path translated the packet and recorded the flow; a packet gets one outcome,
        // counted once the carrier is there.
        if let Err(d) = to_peer(pkt, ctx, tables, entry) {
            return d;
        }
        tables.bump(u32::from(ctx.outcome.get()));
        return Verdict::Pass;
    }
    if v != TOO_BIG {
        return v;
    }
    too_big(pkt, ctx, tables, entry.flags)
}

/// A path's answer for a packet that would exceed the underlay MTU once carried (flags of the
/// carrier in the scratch entry): [`process`] turns it into the ICMP error. The paths never send
/// a packet back otherwise.
const TOO_BIG: Verdict = Verdict::Tx;

/// The verdict for a parsed packet the datapath does not translate: fragments (the datapath
/// does not reassemble; first or later, they go to the stack) and protocols other than TCP and
/// UDP (ICMP and the rest parse, VLAN tags too, but are not translated).
#[inline(always)]
fn untranslated<T: Counters + ?Sized>(tables: &mut T, parsed: &Parsed) -> Option<Verdict> {
    if parsed.fragment != Fragment::None {
        return Some(pass(tables, Counter::PassFragment));
    }
    if !matches!(
        L4Proto::from_u8(parsed.tuple.proto),
        Some(L4Proto::Tcp | L4Proto::Udp)
    ) {
        return Some(pass(tables, Counter::PassOtherProto));
    }
    None
}

/// Whether `t` is UDP to this node's tunnel endpoint. A subprogram of its own in the kernel,
/// comparing addresses as integers: inlined, its byte-wise compares spilled some 130 bytes onto
/// the program's frame, which every path's frame adds to.
#[inline(never)]
fn is_tunnel(t: &FlowTuple, cfg: &DatapathConfig) -> bool {
    if t.proto != L4Proto::Udp as u8 || t.dst_port != cfg.tunnel_port() {
        return false;
    }
    if t.family == IpFamily::V6 as u8 {
        let node = u128::from_ne_bytes(cfg.node_v6);
        node != 0 && u128::from_ne_bytes(t.dst) == node
    } else {
        let node = u32::from_ne_bytes(cfg.node_v4);
        node != 0 && u32::from_ne_bytes(v4_of(&t.dst)) == node
    }
}

/// Per-packet working state too large for the kernel stack; see [`process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Scratch {
    /// The packet's parse result; after [`process`] it still holds the flow as far as it was
    /// parsed, which the callers put into drop events.
    pub parsed: Parsed,
    /// The conntrack entry a path is building or working from.
    pub entry: CtEntry,
    /// A conntrack key a path is building (the reverse-NAT key of a new flow).
    pub key: CtKey,
    /// The peer node a tunnelled packet came from.
    pub peer: [u8; 16],
    /// The outcome counter of a path whose packet is still to be carried to its peer node.
    /// Kept here, in map memory in the kernel, rather than on the stack: the verifier does not
    /// track it, so the carrier's code is verified once, not once per path.
    pub outcome: u8,
    /// Non-zero when the packet came out of the node-to-node tunnel (set by
    /// [`process_tracked`] for [`process_new`]).
    pub tunnelled: u8,
    /// The SNAT allocator's working state.
    pub snat: SnatScratch,
}

/// The SNAT allocator's working state in the [`Scratch`] area: map memory in the kernel, which
/// the verifier does not track. Values it tracked would split the states it walks: the
/// attempts count after the loop would make it walk the rest of the path once for every
/// attempt the loop can end at, a noted port every later attempt's state in two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct SnatScratch {
    /// Attempts of the allocation for the flow being created. Written after the allocator's
    /// loop and read back from here before the histogram is counted.
    pub attempts: u32,
    /// The port noted for a TIME_WAIT take-over (zero: none).
    pub take_over: u16,
    /// The service key of the flow holding a port looked at for a take-over.
    pub holder: CtKey,
}

impl Default for Scratch {
    fn default() -> Self {
        Self {
            parsed: Parsed::EMPTY,
            entry: CtEntry::default(),
            key: CtKey::default(),
            peer: [0; 16],
            outcome: 0,
            tunnelled: 0,
            snat: SnatScratch::default(),
        }
    }
}

/// What every path needs besides the packet and the tables. Bundled so that each path is a
/// function of at most five arguments: in the kernel the paths are separate BPF subprograms
/// (`inline(never)`), which the BPF calling convention limits to five register arguments, and
/// which give each path its own stack frame instead of one frame holding all of them.
struct Ctx<'a, C> {
    parsed: &'a Parsed,
    cfg: &'a DatapathConfig,
    clock: &'a C,
    /// With `tunnelled`: the peer node the packet was decapsulated from.
    peer: &'a [u8; 16],
    /// The packet came out of the node-to-node tunnel.
    tunnelled: bool,
    /// Set by a path that translated the packet of a flow in the scratch entry which must now
    /// be carried to its peer node (DSR carrier or tunnel); [`process`] adds the carrier and
    /// then bumps the path's outcome counter, `outcome`.
    carry: Cell<bool>,
    /// See [`Scratch::outcome`].
    outcome: &'a Cell<u8>,
    /// See [`Scratch::snat`]: one pointer for its fields (the context lives on the stack).
    snat: &'a Cell<SnatScratch>,
}

impl<C> Ctx<'_, C> {
    /// [`SnatScratch::attempts`].
    #[inline(always)]
    fn attempts(&self) -> &Cell<u32> {
        // SAFETY: `Cell<T>` has the layout of `T`, so a field of the `Cell`'s value is a
        // `Cell` of the field's type, with the same interior mutability (as
        // `Cell::as_slice_of_cells` does for slices).
        unsafe { &*(&raw mut (*self.snat.as_ptr()).attempts).cast::<Cell<u32>>() }
    }

    /// [`SnatScratch::take_over`].
    #[inline(always)]
    fn take_over(&self) -> &Cell<u16> {
        // SAFETY: as in `attempts`.
        unsafe { &*(&raw mut (*self.snat.as_ptr()).take_over).cast::<Cell<u16>>() }
    }

    /// [`SnatScratch::holder`].
    #[inline(always)]
    fn holder(&self) -> &Cell<CtKey> {
        // SAFETY: as in `attempts`.
        unsafe { &*(&raw mut (*self.snat.as_ptr()).holder).cast::<Cell<CtKey>>() }
    }
}

impl<C: Fn() -> u64> Ctx<'_, C> {
    /// Now: the config's fixed time when set, the clock otherwise. Read once per path, only
    /// where the path is about to write conntrack.
    #[inline(always)]
    fn now(&self) -> u64 {
        now_ns(self.cfg, self.clock)
    }
}

/// A VXLAN packet to this node's tunnel port: accepted from configured peer nodes only,
/// decapsulated, and the inner frame re-parsed into `parsed`. `None`: the inner packet goes on
/// through the pipeline (`peer` holds the node it came from).
#[inline(never)]
fn tunnel_ingress<P, T>(
    pkt: &mut P,
    cfg: &DatapathConfig,
    tables: &mut T,
    parsed: &mut Parsed,
    peer: &mut [u8; 16],
) -> Option<Verdict>
where
    P: AdjustHead + ?Sized,
    T: ServiceTable + Counters + ?Sized,
{
    *peer = parsed.tuple.src;
    if !tables.is_peer_node(&NodeKey { addr: *peer }) {
        return Some(drop(tables, DropReason::TunnelFromUnknownNode));
    }

    let Some(outer) = pkt.load::<EthernetHeader>(0) else {
        return Some(drop(tables, DropReason::Truncated));
    };
    match vxlan_decap_parsed(pkt, parsed, cfg.tunnel_port(), Some(cfg.vni)) {
        Ok(_) => {}
        // A valid tunnel packet that could not shrink (at TC: one the kernel cannot resize,
        // such as a VLAN-tagged one).
        Err(DecapError::CannotShrink) => return Some(drop(tables, DropReason::EncapFailed)),
        Err(_) => return Some(drop(tables, DropReason::BadTunnelHeader)),
    }
    // The inner frame carries the MACs of the far side; the stack takes it only when it is
    // addressed to this node, as the outer frame was.
    let Some(mut inner) = pkt.load::<EthernetHeader>(0) else {
        return Some(drop(tables, DropReason::BadTunnelHeader));
    };
    inner.dst = outer.dst;
    inner.src = outer.src;
    if pkt.store(0, &inner).is_none() {
        return Some(drop(tables, DropReason::BadTunnelHeader));
    }
    tables.bump(Counter::TunnelDecapsulated.slot());
    *parsed = Parsed::EMPTY;
    if let Err(e) = parse_into(pkt, parsed) {
        return Some(match e.disposition() {
            Disposition::Pass(c) => pass(tables, c),
            Disposition::Drop(r) => drop(tables, r),
        });
    }
    untranslated(tables, parsed)
}

/// A packet of a tracked flow: `None` when its forward key has no entry (a new flow). `e` and
/// `fkey` are scratch space (the key in the stack frame would overflow the kernel's 512 bytes).
#[inline(never)]
fn established<P, T, C>(
    pkt: &mut P,
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    e: &mut CtEntry,
    fkey: &mut CtKey,
) -> Option<Verdict>
where
    P: AdjustHead + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    let parsed = ctx.parsed;
    flow_key(pkt, ctx, fkey);
    let fkey = &*fkey;
    let fwd = tables.get_mut(fkey)?;
    let now = ctx.now();
    if is_expired(fwd, now) {
        forget_expired_flow(tables, fkey);
        return None; // a new flow replaces it
    }
    track(
        fwd,
        Direction::Original,
        parsed.tcp_flags,
        now,
        &ctx.cfg.timeouts,
    );
    // Where the client's side ended: a SYN must be past it to take the flow's SNAT port over
    // once the flow is in TIME_WAIT.
    if parsed.tcp_flags & TcpFlags::FIN != 0 {
        fwd.fin_seq_end = parsed.tcp_seq_end;
    }
    // Work from a copy in the scratch area: the kernel stack is 512 bytes.
    *e = *fwd;
    let backend_side = e.flags & CT_F_BACKEND_SIDE != 0;
    refresh_reverse(tables, fkey, e, now)?;
    if e.flags & (CT_F_DSR | CT_F_TUNNEL) != 0 && !backend_side && exceeds_mtu(ctx, e.flags) {
        return Some(TOO_BIG);
    }
    if let Err(v) = translate(pkt, parsed, tables, e) {
        return Some(v);
    }
    let carry = e.flags & (CT_F_DSR | CT_F_TUNNEL) != 0 && !backend_side;
    Some(done(ctx, tables, carry, Counter::ServiceEstablished))
}

/// The service key of the flow a packet belongs to, as [`new_flow`] or [`backend_side`]
/// recorded it: the packet's tuple; on the backend's node of a flow another node translated,
/// with the service address a DSR carrier brings as destination (the tuple the client sent),
/// or, out of the tunnel, with the node it came from as [`CtKey::origin`]. Flows that several
/// nodes forward from one client address and port to one backend arrive with one tuple; these
/// keys tell them apart.
#[inline(always)]
fn flow_key<P: PacketAccess + ?Sized, C>(pkt: &P, ctx: &Ctx<'_, C>, k: &mut CtKey) {
    let t = &ctx.parsed.tuple;
    *k = CtKey::new(t, CtKind::Service);
    if ctx.tunnelled {
        k.origin = *ctx.peer;
    } else if may_carry_dsr(ctx.parsed) {
        if let Some(svc) = dsr_extract(pkt, ctx.parsed) {
            k.dst = svc.addr;
            k.dst_port = svc.port;
        }
    }
}

/// Whether a packet has IPv4 options or an IPv6 destination options header, where a DSR carrier
/// would be: most packets have neither, and skip the search.
#[inline(always)]
fn may_carry_dsr(parsed: &Parsed) -> bool {
    parsed.ipv6_dest_opts != 0
        || (parsed.tuple.family == IpFamily::V4 as u8 && parsed.l4_offset > parsed.l3_offset + 20)
}

/// Keeps the reverse half of a tracked flow (service entry `e`, key `fkey`) in step: its timers
/// follow the service entry's; lost (evicted), it is rebuilt from the service entry. A DSR flow
/// on the node that forwarded it has no reverse half (its replies go around this node). `None`
/// if the service entry is gone meanwhile.
///
/// A subprogram of its own in the kernel: the reverse key lives in its frame, not in
/// [`established`]'s, which is on the deepest call chain of the first stage.
#[inline(never)]
fn refresh_reverse<T: ConntrackTable + ?Sized>(
    tables: &mut T,
    fkey: &CtKey,
    e: &mut CtEntry,
    now: u64,
) -> Option<()> {
    let Some(rk) = partner_key(fkey, e) else {
        return Some(());
    };
    match tables.get_mut(&rk) {
        Some(r) => {
            r.last_seen_ns = now;
            r.expires_ns = e.expires_ns;
        }
        None => {
            make_reverse(e, (&fkey.src, fkey.src_port), (&fkey.dst, fkey.dst_port));
            let _ = tables.insert(&rk, e, InsertMode::NoExist);
            *e = *tables.get_mut(fkey)?;
        }
    }
    Some(())
}

/// [`partner_key`] as a subprogram of its own in the kernel, so that its field selections do not
/// spill onto the reply path's frame, which is on the first stage's deepest call chain (inlined
/// into the established path, they once took it past the 512-byte stack).
#[inline(never)]
fn partner_of(key: &CtKey, e: &CtEntry) -> Option<CtKey> {
    partner_key(key, e)
}

/// Removes the flow whose entry under `key` a lookup found past its deadline
/// ([`is_expired`]), both halves, as GC would have, and counts it. The caller then goes on as if
/// the lookup had missed: GC may run long after a deadline, and until then a packet must not
/// revive a dead flow (its backend may be gone, its server's TIME_WAIT over).
///
/// Its own subprogram in the kernel (`inline(never)`), so the partner key it builds never
/// weighs on the caller's stack frame; it runs once per expired flow, not per packet.
#[inline(never)]
fn forget_expired_flow<T: ConntrackTable + Counters + ?Sized>(tables: &mut T, key: &CtKey) {
    if let Some(e) = tables.get_mut(key) {
        let partner = partner_key(key, e);
        tables.remove(key);
        if let Some(p) = partner {
            tables.remove(&p);
        }
    }
    tables.bump(Counter::ConntrackExpiredAtLookup.slot());
}

/// The source address a flow's packets leave with: this node's under SNAT, the client's
/// otherwise.
#[inline(always)]
fn src_after<'a>(e: &'a CtEntry, t: &'a FlowTuple) -> &'a [u8; 16] {
    if e.flags & CT_F_SNAT != 0 {
        &e.snat_addr
    } else {
        &t.src
    }
}

/// The source port a flow's packets leave with.
#[inline(always)]
fn src_port_after(e: &CtEntry, t: &FlowTuple) -> u16 {
    if e.flags & CT_F_SRC_PORT_REWRITTEN != 0 {
        e.rewritten_src_port
    } else {
        t.src_port
    }
}

/// Rewrites a packet of the flow of service entry `e` (destination to the backend, source per
/// SNAT or the collision resolver), leaving fields that do not change alone.
#[inline(always)]
fn translate<P, T>(pkt: &mut P, parsed: &Parsed, tables: &mut T, e: &CtEntry) -> Result<(), Verdict>
where
    P: AdjustHead + ?Sized,
    T: Counters + ?Sized,
{
    let t = &parsed.tuple;
    if e.flags & CT_F_BACKEND_SIDE == 0
        && rewrite(pkt, parsed, Field::Destination, &e.nat_addr, e.nat_port).is_none()
    {
        return Err(drop(tables, DropReason::Truncated));
    }
    let (src, port) = (src_after(e, t), src_port_after(e, t));
    if (port != t.src_port || e.flags & CT_F_SNAT != 0)
        && rewrite(pkt, parsed, Field::Source, src, port).is_none()
    {
        return Err(drop(tables, DropReason::Truncated));
    }
    Ok(())
}

/// Key of the reverse-NAT entry of a flow: the tuple the backend replies with, to the address
/// and port the flow's packets carry as source (after SNAT or a port rewrite).
#[inline(always)]
fn reverse_key(
    t: &FlowTuple,
    client: &[u8; 16],
    client_port: u16,
    backend: &[u8; 16],
    backend_port: u16,
) -> CtKey {
    let reply = FlowTuple {
        src: *backend,
        src_port: backend_port,
        dst: *client,
        dst_port: client_port,
        ..*t
    };
    CtKey::new(&reply, CtKind::ReverseNat)
}

/// Turns a flow's service entry into its reverse-NAT entry: same timers; the address the
/// client sent to (`dst`: the service's; through the tunnel, the backend's) to restore as the
/// replies' source; the client's original port and (SNAT) address (`src`) to restore as their
/// destination. `src` and `dst` are the address and port fields of the service entry's key.
#[inline(always)]
fn make_reverse(e: &mut CtEntry, src: (&[u8; 16], u16), dst: (&[u8; 16], u16)) {
    e.nat_addr = *dst.0;
    e.nat_port = dst.1;
    if e.flags & CT_F_SRC_PORT_REWRITTEN != 0 {
        e.rewritten_src_port = src.1;
    }
    if e.flags & CT_F_SNAT != 0 {
        e.snat_addr = *src.0;
    }
    e.packets_orig = 0;
    e.packets_reply = 0;
}

/// A reply of a tracked flow: `None` when the packet's tuple has no reverse-NAT entry. `rev`
/// and `rkey` are scratch space (the kernel stack is 512 bytes).
#[inline(never)]
fn reply<P, T, C>(
    pkt: &mut P,
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    rev: &mut CtEntry,
    rkey: &mut CtKey,
) -> Option<Verdict>
where
    P: AdjustHead + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    *rkey = CtKey::new(&ctx.parsed.tuple, CtKind::ReverseNat);
    *rev = *tables.get_mut(rkey)?;
    Some(reply_translate(pkt, ctx, tables, rkey, rev))
}

/// [`reply`] once its reverse-NAT entry `rev` (key `rkey`) is found.
#[inline(always)]
fn reply_translate<P, T, C>(
    pkt: &mut P,
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    rkey: &CtKey,
    rev: &CtEntry,
) -> Verdict
where
    P: AdjustHead + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    let (parsed, cfg) = (ctx.parsed, ctx.cfg);
    let t = &parsed.tuple;
    // Where the reply goes back to: the client's original address and port.
    let client_port = if rev.flags & CT_F_SRC_PORT_REWRITTEN != 0 {
        rev.rewritten_src_port
    } else {
        t.dst_port
    };
    let client_addr = if rev.flags & CT_F_SNAT != 0 {
        &rev.snat_addr
    } else {
        &t.dst
    };
    // The flow's service entry.
    let Some(fkey) = partner_of(rkey, rev) else {
        return pass(tables, Counter::PassNotService);
    };
    let now = ctx.now();
    let expires = match tables.get_mut(&fkey) {
        // The service entry owns the flow's deadline (the reverse half carries a copy).
        Some(fwd) if is_expired(fwd, now) => {
            forget_expired_flow(tables, &fkey);
            return pass(tables, Counter::PassNotService);
        }
        Some(fwd) => {
            track(fwd, Direction::Reply, parsed.tcp_flags, now, &cfg.timeouts);
            fwd.expires_ns
        }
        None => {
            // The forward half is gone (expired and collected, or evicted): the flow no longer
            // exists, so neither may its reverse half.
            tables.remove(rkey);
            tables.bump(Counter::OrphanReplyRemoved.slot());
            return pass(tables, Counter::PassNotService);
        }
    };
    if let Some(r) = tables.get_mut(rkey) {
        r.last_seen_ns = now;
        r.expires_ns = expires;
        r.packets_reply = r.packets_reply.wrapping_add(1);
    }
    // On the backend's node of a tunnelled flow, the reply goes back through the tunnel
    // untranslated: the node that translated the flow translates it back.
    let tunnel_back =
        rev.flags & (CT_F_BACKEND_SIDE | CT_F_TUNNEL) == CT_F_BACKEND_SIDE | CT_F_TUNNEL;
    if tunnel_back {
        if exceeds_mtu(ctx, rev.flags) {
            return TOO_BIG;
        }
    } else if rewrite(pkt, parsed, Field::Source, &rev.nat_addr, rev.nat_port).is_none() {
        return drop(tables, DropReason::Truncated);
    }
    if (client_port != t.dst_port || rev.flags & CT_F_SNAT != 0)
        && rewrite(pkt, parsed, Field::Destination, client_addr, client_port).is_none()
    {
        return drop(tables, DropReason::Truncated);
    }
    done(ctx, tables, tunnel_back, Counter::ReplyTranslated)
}

/// A path's success: counted now, or, when the packet must still be carried to its peer node,
/// by [`process`] once the carrier is added (a packet whose carrier fails counts as dropped
/// only).
#[inline(always)]
fn done<T: Counters + ?Sized, C>(
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    carry: bool,
    c: Counter,
) -> Verdict {
    if carry {
        ctx.carry.set(true);
        ctx.outcome.set(c.slot() as u8);
        Verdict::Pass
    } else {
        pass(tables, c)
    }
}

/// Bytes a packet grows by on its way to the peer node: the DSR carrier, or the VXLAN outer
/// headers (Ethernet of the inner frame, IP, UDP, VXLAN).
#[inline(always)]
const fn carrier_len(flags: u8, v6: bool) -> usize {
    match (flags & CT_F_DSR != 0, v6) {
        (true, false) => lb_encap::dsr::DSR_IPV4_OPT_LEN,
        (true, true) => lb_encap::dsr::DSR_IPV6_EXT_LEN,
        (false, false) => EthernetHeader::LEN + 20 + 8 + lb_encap::VxlanHeader::LEN,
        (false, true) => EthernetHeader::LEN + 40 + 8 + lb_encap::VxlanHeader::LEN,
    }
}

/// Whether the packet, carried to the peer node per `flags` (DSR carrier or tunnel), would
/// exceed the underlay MTU: by its length, or, for a GSO packet (TC), by its segments'
/// ([`wire_ip_len`]): they are what leaves, each with the carrier.
#[inline(always)]
fn exceeds_mtu<C>(ctx: &Ctx<'_, C>, flags: u8) -> bool {
    let parsed = ctx.parsed;
    let added = carrier_len(flags, parsed.tuple.family == IpFamily::V6 as u8);
    wire_ip_len(parsed, parsed.gso_size) + added > usize::from(ctx.cfg.mtu())
}

/// Turns a packet [`exceeds_mtu`] refused into the ICMP "fragmentation needed" / ICMPv6 "packet
/// too big" its sender needs, from this node, with the MTU that leaves room for the carrier
/// (`flags`), quoting the packet as the sender sent it (no path rewrote it), and returns the
/// verdict that sends it back.
#[inline(never)]
fn too_big<P, T, C>(pkt: &mut P, ctx: &Ctx<'_, C>, tables: &mut T, flags: u8) -> Verdict
where
    P: AdjustHead + ?Sized,
    T: Counters + ?Sized,
{
    let t = &ctx.parsed.tuple;
    let from = ctx.cfg.node_addr(t.family);
    if from == [0; 16] {
        return drop(tables, DropReason::NodeAddressMissing);
    }
    if !pkt.resizable() {
        return drop(tables, DropReason::EncapFailed);
    }
    let added = carrier_len(flags, t.family == IpFamily::V6 as u8);
    let inner_mtu = usize::from(ctx.cfg.mtu()).saturating_sub(added) as u16;
    if icmp_too_big_parsed(pkt, ctx.parsed, inner_mtu, &from).is_none() {
        return drop(tables, DropReason::EncapFailed);
    }
    // The outcome: the error is on its way (when it could not be built, the drop is).
    tables.bump(Counter::MtuExceeded.slot());
    Verdict::Tx
}

/// Carries a translated packet of entry `e`'s flow to the peer node: adds the DSR carrier with
/// the service address (the packet's original destination), or VXLAN-encapsulates it to
/// `e.tunnel_peer`. The packet's MACs stay: the outer packet is routed by this node's stack.
#[inline(never)]
fn to_peer<P, T, C>(
    pkt: &mut P,
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    e: &CtEntry,
) -> Result<(), Verdict>
where
    P: AdjustHead + ?Sized,
    T: Counters + ?Sized,
    C: Fn() -> u64,
{
    let (done, c) = if e.flags & CT_F_DSR != 0 {
        (
            dsr_carry(pkt, ctx.parsed, ctx.cfg),
            Counter::DsrCarrierAdded,
        )
    } else {
        let peer = &e.tunnel_peer;
        (
            tunnel_carry(pkt, ctx.parsed, ctx.cfg, peer),
            Counter::TunnelEncapsulated,
        )
    };
    if !done {
        return Err(drop(tables, DropReason::EncapFailed));
    }
    tables.bump(c.slot());
    Ok(())
}

/// Adds the DSR carrier with the service address (the packet's original destination).
///
/// Returns whether it did: a `bool`, not the error, because a returned enum whose payload the
/// caller ignores reaches the verifier as a partly uninitialized register.
#[inline(never)]
fn dsr_carry<P: AdjustHead + ?Sized>(pkt: &mut P, parsed: &Parsed, cfg: &DatapathConfig) -> bool {
    let t = &parsed.tuple;
    if t.family == IpFamily::V6 as u8 {
        dsr_v6_insert(pkt, parsed, &DsrTarget::v6(t.dst, t.dst_port), cfg.mtu()).is_ok()
    } else {
        let target = DsrTarget::v4(v4_of(&t.dst), t.dst_port);
        dsr_v4_insert(pkt, parsed, &target, cfg.mtu()).is_ok()
    }
}

/// VXLAN-encapsulates the packet to `peer`, from this node's address. The frame's MACs become
/// the outer frame's: the outer packet is routed by this node's stack. Returns whether it did
/// (see [`dsr_carry`]).
#[inline(never)]
fn tunnel_carry<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    parsed: &Parsed,
    cfg: &DatapathConfig,
    peer: &[u8; 16],
) -> bool {
    let t = &parsed.tuple;
    let Some(eth) = pkt.load::<EthernetHeader>(0) else {
        return false;
    };
    // The underlay is of the flow's family: an IPv6 flow goes to the peer's IPv6 address.
    let outer = if t.family == IpFamily::V6 as u8 {
        OuterAddrs::V6 {
            src: cfg.node_v6,
            dst: *peer,
        }
    } else {
        OuterAddrs::V4 {
            src: cfg.node_v4,
            dst: v4_of(peer),
        }
    };
    // An IPv6 outer UDP checksum may not be zero; it is derived from the inner one (a sum over
    // the whole packet would exceed the verifier's budget and the bytes a program may read).
    let Some(inner) = inner_checksum(pkt, parsed) else {
        return false;
    };
    let mut tc = TunnelConfig::new(cfg.vni, outer, eth.src, eth.dst);
    tc.port = cfg.tunnel_port();
    tc.mtu = cfg.mtu();
    vxlan_encap_offloaded(pkt, &tc, t.hash(cfg.hash_seed), &inner).is_ok()
}

/// The packet's inner transport segment, as [`vxlan_encap_offloaded`] needs it: where it is
/// and the sum of its pseudo-header, from the addresses the packet carries now (translated).
#[inline(never)]
fn inner_checksum<P: PacketAccess + ?Sized>(pkt: &P, parsed: &Parsed) -> Option<InnerChecksum> {
    let ip_end = parsed.l3_offset + usize::from(parsed.ip_len);
    let wire_end = parsed.l3_offset + wire_ip_len(parsed, parsed.gso_size);
    Some(InnerChecksum::new(parsed.l4_offset, ip_end, pseudo_sum(pkt, parsed)?).on_wire(wire_end))
}

/// The sum of the packet's transport pseudo-header (addresses, protocol, transport length),
/// unfolded. The addresses are summed in place, not copied onto the stack.
#[inline(always)]
fn pseudo_sum<P: PacketAccess + ?Sized>(pkt: &P, parsed: &Parsed) -> Option<u32> {
    let l3 = parsed.l3_offset;
    let ip_end = l3 + usize::from(parsed.ip_len);
    let l4_len = ip_end.checked_sub(parsed.l4_offset)? as u32;
    let (addrs_at, addrs_len) = if parsed.tuple.family == IpFamily::V6 as u8 {
        (l3 + 8, 32)
    } else {
        (l3 + 12, 8)
    };
    let addrs = checksum::sum_packet(pkt, addrs_at, addrs_len, 0)?;
    Some(addrs + (l4_len >> 16) + (l4_len & 0xffff) + u32::from(parsed.tuple.proto))
}

/// Notes (in [`Parsed::checksum_partial`]) whether the packet's checksum is to be taken for partial
/// where the hook cannot see its state ([`PacketAccess::partial_by_field`]: XDP on a veth): its field tells
/// ([`looks_partial`]). The rewrites then move the partial sum instead of the
/// checksum. Notes the packet's GSO segment size too ([`Parsed::gso_size`]), for the MTU
/// decisions. A subprogram of its own in the kernel: the device lookup's key stays off the
/// first stage's frame, and the skb's metadata is read here, not kept on it.
///
/// Returns what it noted, and the caller uses it: a subprogram that returns nothing may exit
/// with a stack pointer left in its return register (by the checksum loop's `black_box`),
/// which the verifier refuses.
#[inline(never)]
fn note_partial_checksum<P: PacketAccess + ?Sized>(pkt: &P, parsed: &mut Parsed) -> bool {
    // Only where the hook cannot see the checksum state (XDP): compiled out at TC.
    let partial = P::MAY_HIDE_PARTIAL && looks_partial(pkt, parsed) && pkt.partial_by_field();
    parsed.checksum_partial = partial;
    parsed.gso_size = pkt.gso_size();
    partial
}

/// Whether the TCP/UDP packet's checksum field holds its pseudo-header sum, as a partial
/// checksum (`CHECKSUM_PARTIAL`) does ([`checksum::looks_partial`]). A subprogram of its own in
/// the kernel: it runs for every TCP/UDP packet, before any path.
#[inline(always)]
fn looks_partial<P: PacketAccess + ?Sized>(pkt: &P, parsed: &Parsed) -> bool {
    let at = parsed.l4_offset
        + if parsed.tuple.proto == L4Proto::Tcp as u8 {
            16
        } else {
            6
        };
    let (Some(check), Some(pseudo)) = (pkt.load::<[u8; 2]>(at), pseudo_sum(pkt, parsed)) else {
        return false;
    };
    checksum::looks_partial(u16::from_be_bytes(check), pseudo)
}

/// The collision resolver's random source: the tables' own (`bpf_get_prandom_u32` in the kernel)
/// normally; under the config's fixed clock, a xorshift generator seeded from that clock and the
/// flow, so that deterministic runs (the differential suite) draw the same ports in both worlds.
struct Draw<'a, T: ?Sized> {
    tables: &'a mut T,
    fixed: u32,
}

impl<T: RandomSource + ?Sized> RandomSource for Draw<'_, T> {
    #[inline(always)]
    fn random_u32(&mut self) -> u32 {
        // Branch-free: a branch on `fixed` here would split every state of the allocator's
        // loops in two for the kernel's verifier. All ones when seeded, zero otherwise (a seed
        // is odd, and xorshift never reaches zero from a non-zero state).
        let seeded = 0u32.wrapping_sub((self.fixed | self.fixed.wrapping_neg()) >> 31);
        let mut x = self.fixed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.fixed = x & seeded;
        (x & seeded) | (self.tables.random_u32() & !seeded)
    }
}

/// The random source of the collision resolver and the SNAT allocator: the tables' own
/// (`bpf_get_prandom_u32` in the kernel) normally; under the config's fixed clock, seeded from
/// that clock and the flow (see [`Draw`]).
#[inline(always)]
fn draw<'a, T: ?Sized, C>(ctx: &Ctx<'_, C>, tables: &'a mut T) -> Draw<'a, T> {
    let cfg = ctx.cfg;
    let fixed = if cfg.fixed_now_ns != 0 {
        (ctx.parsed.tuple.hash(cfg.hash_seed) ^ cfg.fixed_now_ns as u32) | 1
    } else {
        0
    };
    Draw { tables, fixed }
}

/// Inserts reverse entry `e` under `rk` without overwriting: the insert *is* the reservation of
/// the reply tuple, so two CPUs can never both own it. Under SNAT the port comes from the SNAT
/// allocator ([`snat_reserve`]); otherwise, if another flow owns the reply tuple, the collision
/// resolver tries other source ports from the collision range and marks `e` rewritten. Returns
/// the source port the flow's packets will carry.
#[inline(always)]
fn reserve_reply<T, C>(
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    e: &mut CtEntry,
    rk: &mut CtKey,
) -> Result<u16, Verdict>
where
    T: ConntrackTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    if e.flags & CT_F_SNAT != 0 {
        return snat_reserve(ctx, tables, e, rk);
    }
    let (t, cfg) = (&ctx.parsed.tuple, ctx.cfg);
    match tables.insert(rk, e, InsertMode::NoExist) {
        Ok(()) => return Ok(t.src_port),
        Err(InsertError::Exists) => {}
        Err(_) => return Err(drop(tables, DropReason::ConntrackFull)),
    }
    // Another flow already owns this reply tuple: the same client address and port reach this
    // backend through another frontend or node. Overwriting would steal that flow's replies;
    // give this flow another source port.
    e.flags |= CT_F_SRC_PORT_REWRITTEN;
    e.rewritten_src_port = t.src_port;
    let range =
        SourcePortRange::from_config(cfg.src_port_min, cfg.src_port_max, cfg.src_port_tries);
    let mut draw = draw(ctx, &mut *tables);
    let got = resolve_source_port(&range, &mut draw, |d, port| {
        rk.dst_port = port;
        match d.tables.insert(rk, e, InsertMode::NoExist) {
            Ok(()) => Reserve::Reserved,
            Err(InsertError::Exists) => Reserve::Taken,
            Err(_) => Reserve::Failed,
        }
    });
    match got {
        Some(port) => {
            tables.bump(Counter::SourcePortRewritten.slot());
            Ok(port)
        }
        None => Err(drop(tables, DropReason::SourcePortCollision)),
    }
}

/// Under SNAT: a port of this node's SNAT range for the flow, by the allocator of
/// [`lb_nat::snat`] ([`claim_port`]: the flow's own port if it is in the range and free, then
/// netfilter's schedule of 128, 64, 32, 16 attempts) — the same schedule in the kernel and in
/// the engine. Claiming a port is inserting the reverse entry keyed by the reply tuple with
/// that port where absent. In the schedule's last 32 attempts a TCP SYN notes a port whose
/// flow is in TIME_WAIT and ended before the SYN's sequence number ([`note_take_over`]); with
/// no free port at the end, it takes that port over ([`take_over`]). Counts the attempts
/// (histogram) and take-overs; an exhausted range is dropped as
/// [`DropReason::SnatPortsExhausted`].
#[inline(always)]
fn snat_reserve<T, C>(
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    e: &mut CtEntry,
    rk: &mut CtKey,
) -> Result<u16, Verdict>
where
    T: ConntrackTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    let parsed = ctx.parsed;
    let src_port = parsed.tuple.src_port;
    let cfg = SnatConfig::of_datapath(ctx.cfg);
    ctx.take_over().set(0);
    // Both closures point the reverse key and entry at their port: they reach them through
    // the allocator's context.
    let mut claimer = Claimer {
        draw: draw(ctx, &mut *tables),
        rk,
        e,
    };
    let got = claim_port(
        &cfg,
        &mut claimer,
        src_port,
        |d, c| {
            claim_key(d.rk, d.e, c.port, src_port);
            match d.draw.tables.insert(d.rk, d.e, InsertMode::NoExist) {
                Ok(()) => Claim::Reserved,
                Err(InsertError::Exists) => {
                    if c.may_take_over {
                        note_take_over(d.draw.tables, d.rk, ctx);
                    }
                    Claim::Taken
                }
                Err(_) => Claim::Full,
            }
        },
        |d| {
            let port = ctx.take_over().get();
            if port == 0 {
                return None;
            }
            claim_key(d.rk, d.e, port, src_port);
            take_over(d.draw.tables, d.rk, d.e, ctx).then_some(port)
        },
    );
    match got {
        Ok(a) => {
            ctx.attempts().set(a.attempts);
            // SAFETY: a valid, aligned pointer to the `u32` of the `Cell`, not otherwise
            // borrowed. Volatile so that the compiler reads the number back rather than reuse
            // the known one: see `SnatScratch`.
            let attempts = unsafe { core::ptr::read_volatile(ctx.attempts().as_ptr()) };
            tables.bump(Counter::snat_attempts_slot(attempts));
            Ok(a.port)
        }
        Err(SnatError::TableFull) => Err(drop(tables, DropReason::ConntrackFull)),
        Err(_) => Err(drop(tables, DropReason::SnatPortsExhausted)),
    }
}

/// The SNAT allocator's context in the pipeline: the random source, and the reverse key and
/// entry of the flow, which each claim points at its port.
struct Claimer<'a, T: ?Sized> {
    draw: Draw<'a, T>,
    rk: &'a mut CtKey,
    e: &'a mut CtEntry,
}

impl<T: RandomSource + ?Sized> RandomSource for Claimer<'_, T> {
    #[inline(always)]
    fn random_u32(&mut self) -> u32 {
        self.draw.random_u32()
    }
}

/// Points reverse key `rk` and reverse entry `e` at SNAT port `port`: the entry restores the
/// client's port on replies when it changed.
#[inline(always)]
fn claim_key(rk: &mut CtKey, e: &mut CtEntry, port: u16, src_port: u16) {
    rk.dst_port = port;
    if port == src_port {
        e.flags &= !CT_F_SRC_PORT_REWRITTEN;
    } else {
        e.flags |= CT_F_SRC_PORT_REWRITTEN;
        e.rewritten_src_port = src_port;
    }
}

/// Whether the packet (a new flow's first) may take over the port of reverse entry `rk`:
/// its flow is a SNAT flow in TIME_WAIT and the packet a TCP SYN past that flow's FIN
/// ([`may_take_over`]). The flow's service key is left in `holder`.
///
/// The service key is derived here for SNAT reverse entries only ([`partner_key`] does it for
/// every kind): the kernel's verifier walks this once per attempt of the take-over window, and
/// with `partner_key` the new-flow stage exceeds its million instructions (measured). Debug
/// builds (the engine's tests) check that both derive the same key.
#[inline(always)]
fn time_wait_holder<T: ConntrackTable + ?Sized>(
    tables: &mut T,
    rk: &CtKey,
    parsed: &Parsed,
    holder: &Cell<CtKey>,
) -> bool {
    if parsed.tcp_flags & (TcpFlags::SYN | TcpFlags::ACK) != TcpFlags::SYN
        || parsed.tuple.proto != L4Proto::Tcp as u8
    {
        return false;
    }
    let Some(rev) = tables.get_mut(rk) else {
        return false;
    };
    if rev.flags & CT_F_SNAT == 0 {
        return false;
    }
    // SAFETY: the `Cell`'s value is not otherwise borrowed while this reference lives (the
    // `Cell` is only used through this function); written field by field in place (map memory
    // in the kernel), not built on the stack.
    let fk = unsafe { &mut *holder.as_ptr() };
    fk.src = rev.snat_addr;
    fk.src_port = if rev.flags & CT_F_SRC_PORT_REWRITTEN != 0 {
        rev.rewritten_src_port
    } else {
        rk.dst_port
    };
    fk.dst = rev.nat_addr;
    fk.dst_port = rev.nat_port;
    fk.proto = rk.proto;
    fk.family = rk.family;
    fk.kind = CtKind::Service as u8;
    fk.pad = 0;
    debug_assert_eq!(
        partner_key(rk, rev),
        Some(*fk),
        "the lean key is partner_key's"
    );
    let Some(fwd) = tables.get_mut(fk) else {
        return false;
    };
    let time_wait = fwd.state == CtState::TimeWait as u8;
    may_take_over(time_wait, fwd.fin_seq_end, Some(parsed.tcp_seq))
}

/// In the take-over window: notes the port of `rk` in the scratch area when its flow may be
/// taken over ([`time_wait_holder`]) and no port is noted yet.
#[inline(never)]
fn note_take_over<T: ConntrackTable + ?Sized, C>(tables: &mut T, rk: &CtKey, ctx: &Ctx<'_, C>) {
    if ctx.take_over().get() == 0 && time_wait_holder(tables, rk, ctx.parsed, ctx.holder()) {
        ctx.take_over().set(rk.dst_port);
    }
}

/// Takes the port of `rk` over from its flow in TIME_WAIT for the new flow of reverse entry
/// `e`: removes the old flow's service entry, then its reverse entry, and inserts `e` where
/// absent. Whether the port is now the new flow's; counted as a take-over when it is.
///
/// Removing the old service entry is what decides between allocators that noted the same
/// port: a delete succeeds once, so only one of them goes on to remove the reverse entry
/// (which, until then, still is the old flow's).
#[inline(never)]
fn take_over<T: ConntrackTable + Counters + ?Sized, C>(
    tables: &mut T,
    rk: &CtKey,
    e: &CtEntry,
    ctx: &Ctx<'_, C>,
) -> bool {
    if !time_wait_holder(tables, rk, ctx.parsed, ctx.holder()) {
        return false;
    }
    // SAFETY: as in `time_wait_holder`, which wrote it.
    let fk = unsafe { &*ctx.holder().as_ptr() };
    if !tables.remove(fk) {
        return false;
    }
    tables.remove(rk);
    if tables.insert(rk, e, InsertMode::NoExist).is_err() {
        return false;
    }
    tables.bump(Counter::SnatTakeOvers.slot());
    true
}

/// Stamps a new flow's entry: created now, in the state its first packet puts it in.
#[inline(always)]
fn start_entry<C: Fn() -> u64>(e: &mut CtEntry, ctx: &Ctx<'_, C>, now: u64) {
    let t = &ctx.parsed.tuple;
    let state = initial_state(t.proto, ctx.parsed.tcp_flags);
    e.created_ns = now;
    e.last_seen_ns = now;
    e.expires_ns = now.saturating_add(ctx.cfg.timeouts.of(state as u8));
    e.state = state as u8;
    e.proto = t.proto;
    e.family = t.family;
}

/// The service `t` is addressed to. Its own subprogram in the kernel: the key then lives in its
/// frame, not in the new-flow path's, which is the deepest.
#[inline(never)]
fn service_of<T: ServiceTable + ?Sized>(tables: &T, t: &FlowTuple) -> Option<ServiceValue> {
    tables.service(&ServiceKey {
        addr: t.dst,
        port: t.dst_port,
        proto: t.proto,
        family: t.family,
    })
}

/// Whether the packet is UDP over IPv6 with a zero checksum, which IPv6 does not allow: the
/// backend would drop it, so no flow is started for it. (Other transport checksums are not
/// verified: a sum over the whole payload is beyond the kernel verifier's budget, and the
/// receiver drops such packets, as it would without the datapath.)
#[inline(always)]
fn zero_udp_checksum_v6<P: PacketAccess + ?Sized>(pkt: &P, parsed: &Parsed) -> bool {
    parsed.tuple.family == IpFamily::V6 as u8
        && parsed.tuple.proto == L4Proto::Udp as u8
        && pkt.load::<[u8; 2]>(parsed.l4_offset + 6) == Some([0, 0])
}

/// The first packet of a flow: a service? pick a backend, create both conntrack entries, rewrite,
/// carry to the backend's node. `None`: not to a service. `e` and `rk` are scratch space.
#[inline(never)]
fn new_flow<P, T, C>(
    pkt: &mut P,
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    e: &mut CtEntry,
    rk: &mut CtKey,
) -> Option<Verdict>
where
    P: AdjustHead + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    let (parsed, cfg) = (ctx.parsed, ctx.cfg);
    let t = &parsed.tuple;
    let svc = service_of(tables, t)?;
    if zero_udp_checksum_v6(pkt, parsed) {
        return Some(drop(tables, DropReason::ZeroUdpChecksumV6));
    }
    let Some(slot) = select_slot(t, cfg.hash_seed, svc.backend_count) else {
        return Some(drop(tables, DropReason::NoBackend));
    };
    let Some(be) = tables.backend(&BackendKey {
        service_id: svc.id,
        slot,
    }) else {
        return Some(drop(tables, DropReason::BackendMissing));
    };

    // How the packet reaches the backend: a backend on another node per the service's mode.
    let node = cfg.node_addr(t.family);
    let flags = if be.node == [0; 16] || be.node == node {
        0
    } else {
        match svc.mode().for_proto(t.proto) {
            ForwardingMode::Dsr => CT_F_DSR,
            ForwardingMode::Tunnel => CT_F_TUNNEL,
            _ => CT_F_SNAT,
        }
    };
    if flags & (CT_F_SNAT | CT_F_TUNNEL) != 0 && node == [0; 16] {
        return Some(drop(tables, DropReason::NodeAddressMissing));
    }
    if flags & (CT_F_DSR | CT_F_TUNNEL) != 0 && exceeds_mtu(ctx, flags) {
        e.flags = flags;
        return Some(TOO_BIG);
    }
    // Where the packet cannot grow (at TC, one that is not plain IPv4/IPv6 behind its Ethernet
    // header, such as a VLAN-tagged one), no carrier can be added: refused before the flow is
    // recorded, so that no entry (nor a collision port) is left for a packet that is dropped.
    if flags & (CT_F_DSR | CT_F_TUNNEL) != 0 && !pkt.resizable() {
        return Some(drop(tables, DropReason::EncapFailed));
    }

    let now = ctx.now();
    // One entry (in the scratch area, off the kernel stack), turned from the reverse half into
    // the forward half in place.
    // Field by field: a struct literal would be built on the stack first.
    *e = CtEntry::default();
    e.flags = flags;
    e.service_id = svc.id;
    e.backend_id = be.id;
    if flags & CT_F_TUNNEL != 0 {
        e.tunnel_peer = be.node;
    }
    start_entry(e, ctx, now);
    let mut client_port = t.src_port;
    // One reverse key, whose client port the resolver changes per try: a key per (unrolled) try
    // would cost 40 bytes of the 512-byte kernel stack each.
    *rk = CtKey::default();
    // Under DSR the replies never come back here: no reverse half.
    if flags & CT_F_DSR == 0 {
        make_reverse(e, (&t.src, t.src_port), (&t.dst, t.dst_port));
        let client = if flags & CT_F_SNAT != 0 {
            &node
        } else {
            &t.src
        };
        *rk = reverse_key(t, client, t.src_port, &be.addr, be.port);
        client_port = match reserve_reply(ctx, tables, e, rk) {
            Ok(p) => p,
            Err(v) => return Some(v),
        };
    }
    e.nat_addr = be.addr;
    e.nat_port = be.port;
    if flags & CT_F_SNAT != 0 {
        e.snat_addr = node;
    }
    if client_port != t.src_port {
        e.rewritten_src_port = client_port;
    }
    e.packets_orig = 1;
    let fkey = &CtKey::new(t, CtKind::Service);
    if tables.insert(fkey, e, InsertMode::NoExist).is_err() {
        // Never leave half a pair behind.
        if flags & CT_F_DSR == 0 {
            tables.remove(rk);
        }
        return Some(drop(tables, DropReason::ConntrackFull));
    }
    if let Err(v) = translate(pkt, parsed, tables, e) {
        return Some(v);
    }
    let carry = flags & (CT_F_DSR | CT_F_TUNNEL) != 0;
    Some(done(ctx, tables, carry, Counter::ServiceNewFlow))
}

/// On the backend's node: the first packet of a flow another node translated, recognised by how
/// it arrived (out of the tunnel from a peer node, or with a DSR carrier). Records the flow's
/// two halves so that its replies go back the right way (through the tunnel, or straight to the
/// client from the service address), resolving a collision with another flow of the same client
/// address and port to the same backend by rewriting the source port. Anything else is not ours.
#[inline(never)]
fn backend_side<P, T, C>(
    pkt: &mut P,
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    e: &mut CtEntry,
    rk: &mut CtKey,
) -> Verdict
where
    P: AdjustHead + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    let parsed = ctx.parsed;
    let t = &parsed.tuple;
    // Keyed by the tuple the client sent and, out of the tunnel, the node it came from.
    let fkey = &mut CtKey::default();
    flow_key(pkt, ctx, fkey);
    *e = CtEntry::default();
    if ctx.tunnelled {
        e.flags = CT_F_BACKEND_SIDE | CT_F_TUNNEL;
        e.tunnel_peer = *ctx.peer;
    } else if u128::from_ne_bytes(fkey.dst) != u128::from_ne_bytes(t.dst)
        || fkey.dst_port != t.dst_port
    {
        // A DSR carrier named the service.
        e.flags = CT_F_BACKEND_SIDE | CT_F_DSR;
    } else {
        return pass(tables, Counter::PassNotService);
    }
    start_entry(e, ctx, ctx.now());
    make_reverse(e, (&fkey.src, fkey.src_port), (&fkey.dst, fkey.dst_port));
    *rk = reverse_key(t, &t.src, t.src_port, &t.dst, t.dst_port);
    let client_port = match reserve_reply(ctx, tables, e, rk) {
        Ok(p) => p,
        Err(v) => return v,
    };
    // The packet already goes to the backend.
    e.nat_addr = t.dst;
    e.nat_port = t.dst_port;
    if client_port != t.src_port {
        e.rewritten_src_port = client_port;
    }
    e.packets_orig = 1;
    if tables.insert(fkey, e, InsertMode::NoExist).is_err() {
        tables.remove(rk);
        return drop(tables, DropReason::ConntrackFull);
    }
    if client_port != t.src_port
        && rewrite(pkt, parsed, Field::Source, &t.src, client_port).is_none()
    {
        return drop(tables, DropReason::Truncated);
    }
    pass(tables, Counter::BackendSideNewFlow)
}

/// An ICMP/ICMPv6 message. Not an error (echo, ...): passes. An error (port unreachable,
/// fragmentation needed / packet too big, time exceeded, ...) about a tracked flow: its outer
/// and quoted headers are translated back so that the receiver recognises its own packet in the
/// quote (RFC 5508); about anything else: passes.
///
/// The error travels back to the quoted packet's sender, so the quote reversed is the tuple of a
/// packet towards that sender:
/// * towards a client, about a packet client → backend: the quote reversed is a reply tuple, the
///   key of the flow's reverse-NAT entry. The quote gets the service address as destination and
///   the client's original port back; the outer source, if the backend itself answered, too.
/// * towards a backend, about a reply service → client: the quote reversed is the client's
///   tuple, the key of the flow's service entry. The quote gets the backend as source and the
///   client port as the backend saw it; the outer destination becomes the backend.
///
/// Under SNAT the quote's source (towards the client) or destination (towards the backend) is
/// this node's address and port: they become the client's, or this node's, again.
///
/// Conntrack is only read (an error does not keep a flow alive); an entry past its deadline
/// (`now`) counts as absent, as for every lookup.
#[inline(never)]
fn icmp_error<P, T>(pkt: &mut P, parsed: &Parsed, tables: &mut T, now: u64) -> Verdict
where
    P: PacketAccess + ?Sized,
    T: ConntrackTable + Counters + ?Sized,
{
    // Opaque to the optimizer: otherwise it passes the packet's bounds to this BPF subprogram
    // in two registers instead of one pointer, which `process` must keep alive across its map
    // lookups: 16 more bytes on its frame, where the new-flow chain is at the 512-byte limit.
    let pkt = core::hint::black_box(pkt);
    // Echo and other informational messages: nothing quoted, nothing to translate.
    if parsed.icmp.quote_offset == 0 {
        return pass(tables, Counter::PassOtherProto);
    }
    let mut quote = QuotedDatagram::EMPTY;
    if let Err(e) = quoted_into(pkt, parsed, &mut quote) {
        return match e.disposition() {
            Disposition::Pass(c) => pass(tables, c),
            Disposition::Drop(r) => drop(tables, r),
        };
    }
    let q = &quote.tuple;
    // An error goes back to the sender of the packet it quotes; anything else is not about a
    // packet this datapath translated.
    // (Compared as integers: an array compare can become a `memcmp` call, which BPF lacks.)
    if u128::from_ne_bytes(parsed.tuple.dst) != u128::from_ne_bytes(q.src) {
        return pass(tables, Counter::PassIcmpErrorNoFlow);
    }
    // What the quote becomes: `to`, starting from the quote itself.
    let mut to = *q;
    let mut key = CtKey::new(&q.reversed(), CtKind::ReverseNat);
    match tables.get_mut(&key) {
        Some(rev) if !is_expired(rev, now) => {
            to.dst = rev.nat_addr;
            to.dst_port = rev.nat_port;
            if rev.flags & CT_F_SRC_PORT_REWRITTEN != 0 {
                to.src_port = rev.rewritten_src_port;
            }
            // SNAT: the reverse entry holds the client's address.
            if rev.flags & CT_F_SNAT != 0 {
                to.src = rev.snat_addr;
            }
        }
        _ => {
            key.kind = CtKind::Service as u8;
            let Some(fwd) = tables.get_mut(&key) else {
                return pass(tables, Counter::PassIcmpErrorNoFlow);
            };
            if is_expired(fwd, now) {
                return pass(tables, Counter::PassIcmpErrorNoFlow);
            }
            to.src = fwd.nat_addr;
            to.src_port = fwd.nat_port;
            if fwd.flags & CT_F_SRC_PORT_REWRITTEN != 0 {
                to.dst_port = fwd.rewritten_src_port;
            }
            // SNAT: the service entry holds the address the backend saw, this node's.
            if fwd.flags & CT_F_SNAT != 0 {
                to.dst = fwd.snat_addr;
            }
        }
    }
    if translate_icmp_error(pkt, parsed, &quote, &to).is_none() {
        return drop(tables, DropReason::Truncated);
    }
    pass(tables, Counter::IcmpErrorTranslated)
}
