//! The first packet of a flow: to a service (pick a backend, record the flow, translate), or,
//! on the backend's node, of a flow another node translated (record the flow its replies need).
//!
//! The flow's mode is chosen here as `CT_F_*` flags (`flags`) before its entry exists, and tested
//! as that local value rather than read back through the entry's accessors: the entry is
//! written later, in the scratch area (map memory in the kernel).

use lb_api::abi::{
    AffinityKey, AffinityValue, BackendAddrKey, CtEntry, CtKey, CtKind, ForwardingMode, ServiceKey,
    ServiceValue, CT_F_BACKEND_SIDE, CT_F_DSR, CT_F_SNAT, CT_F_TUNNEL,
};
use lb_api::counters::{Counter, Counters, DropReason};
use lb_api::flow::{FlowTuple, IpFamily, L4Proto};
use lb_api::wire::{PacketAccess, Parsed};
use lb_api::Verdict;
use lb_conntrack::{initial_state, make_reverse, reverse_key, ConntrackTable, InsertMode};
use lb_encap::AdjustHead;
use lb_nat::{rewrite, select_slot, Field, RandomSource, ServiceTable};

use super::carriers::exceeds_mtu;
use super::context::{Ctx, Outcome};
use super::reserve::reserve_reply;
use super::tracked::{flow_key, translate};
use super::{drop, pass};

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

/// Session affinity's pick for a new flow of service `service_id` (affinity timeout
/// `timeout_s`): the backend the client's live entry names, while it is still in the
/// service's active set (the backends-by-address table), written into the scratch area
/// ([`Ctx::backend`]) with the entry's time refreshed, as kube-proxy's `recent` match does for
/// each new connection. `false` (counted as a miss or a stale entry): the flow hash picks
/// ([`hashed_backend`]), and the entry is rewritten for its pick.
///
/// A subprogram of its own in the kernel, beside [`hashed_backend`] rather than under it: each
/// one's frame then adds to the new-flow path's alone.
#[inline(never)]
fn sticky_backend<T, C>(tables: &mut T, ctx: &Ctx<'_, C>, service_id: u32, timeout_s: u32) -> bool
where
    T: ServiceTable + Counters + ?Sized,
    C: Fn() -> u64,
{
    let t = &ctx.parsed.tuple;
    let key = &affinity_key(t, service_id);
    let Some(mut a) = tables.affinity(key) else {
        tables.bump(Counter::AffinityMiss.slot());
        return false;
    };
    let now = ctx.now();
    let found = if a.is_live(now, timeout_s) {
        tables.backend_by_addr(&BackendAddrKey {
            service_id,
            port: a.backend_port,
            family: t.family,
            pad: 0,
            addr: a.backend_addr,
        })
    } else {
        None
    };
    let Some(b) = found else {
        tables.bump(Counter::AffinityStale.slot());
        return false;
    };
    ctx.backend().set(b);
    a.last_used_ns = now;
    a.timeout_s = timeout_s;
    tables.set_affinity(key, &a);
    tables.bump(Counter::AffinityHit.slot());
    true
}

/// The flow hash's pick for a new flow of service `svc` (its `backend_count` slots, at
/// least one), written into the scratch area ([`Ctx::backend`]); with session affinity
/// (`timeout_s` non-zero) recorded as the client's entry. `Some(reason)`: the slot is empty.
#[inline(never)]
fn hashed_backend<T, C>(
    tables: &mut T,
    ctx: &Ctx<'_, C>,
    svc: &ServiceValue,
    timeout_s: u32,
) -> Option<DropReason>
where
    T: ServiceTable + Counters + ?Sized,
    C: Fn() -> u64,
{
    let t = &ctx.parsed.tuple;
    let service_id = svc.id;
    let Some(slot) = select_slot(t, ctx.cfg.hash_seed, svc.backend_count) else {
        return Some(DropReason::NoBackend);
    };
    // The slot of the set the service entry names (an update writes the other, then flips).
    let Some(b) = tables.backend(&svc.slot_key(slot)) else {
        return Some(DropReason::BackendMissing);
    };
    ctx.backend().set(b);
    if timeout_s != 0 {
        tables.set_affinity(
            &affinity_key(t, service_id),
            &AffinityValue {
                last_used_ns: ctx.now(),
                backend_addr: b.addr,
                backend_port: b.port,
                pad: 0,
                timeout_s,
            },
        );
    }
    None
}

/// The affinity key of the client of `t` for service `service_id`.
#[inline(always)]
fn affinity_key(t: &FlowTuple, service_id: u32) -> AffinityKey {
    AffinityKey {
        client: t.src,
        service_id,
        family: t.family,
        pad: [0; 3],
    }
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
pub(super) fn new_flow<P, T, C>(
    pkt: &mut P,
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    e: &mut CtEntry,
    rk: &mut CtKey,
) -> Option<Outcome>
where
    P: AdjustHead + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    let (parsed, cfg) = (ctx.parsed, ctx.cfg);
    let t = &parsed.tuple;
    let svc = service_of(tables, t)?;
    if zero_udp_checksum_v6(pkt, parsed) {
        return Some(Outcome::Done(drop(tables, DropReason::ZeroUdpChecksumV6)));
    }
    if svc.backend_count == 0 {
        return Some(Outcome::Reject);
    }
    let timeout_s = svc.affinity_timeout_s;
    if timeout_s == 0 || !sticky_backend(tables, ctx, svc.id, timeout_s) {
        if let Some(reason) = hashed_backend(tables, ctx, &svc, timeout_s) {
            return Some(Outcome::Done(drop(tables, reason)));
        }
    }
    let be = &ctx.backend().get();

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
        return Some(Outcome::Done(drop(tables, DropReason::NodeAddressMissing)));
    }
    if flags & (CT_F_DSR | CT_F_TUNNEL) != 0 && exceeds_mtu(ctx, flags) {
        e.flags = flags;
        return Some(Outcome::TooBig);
    }
    // Where the packet cannot grow (at TC, one that is not plain IPv4/IPv6 behind its Ethernet
    // header, such as a VLAN-tagged one), no carrier can be added: refused before the flow is
    // recorded, so that no entry (nor a collision port) is left for a packet that is dropped.
    if flags & (CT_F_DSR | CT_F_TUNNEL) != 0 && !pkt.resizable() {
        return Some(Outcome::Done(drop(tables, DropReason::EncapFailed)));
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
            Err(v) => return Some(Outcome::Done(v)),
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
        return Some(Outcome::Done(drop(tables, DropReason::ConntrackFull)));
    }
    if let Err(v) = translate(pkt, parsed, tables, e) {
        return Some(Outcome::Done(v));
    }
    if flags & (CT_F_DSR | CT_F_TUNNEL) != 0 {
        return Some(Outcome::CarryNewFlow);
    }
    Some(Outcome::Done(pass(tables, Counter::ServiceNewFlow)))
}

/// On the backend's node: the first packet of a flow another node translated, recognised by how
/// it arrived (out of the tunnel from a peer node, or with a DSR carrier). Records the flow's
/// two halves so that its replies go back the right way (through the tunnel, or straight to the
/// client from the service address), resolving a collision with another flow of the same client
/// address and port to the same backend by rewriting the source port. Anything else is not ours.
#[inline(never)]
pub(super) fn backend_side<P, T, C>(
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
