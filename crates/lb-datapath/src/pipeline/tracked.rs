//! The paths of a tracked flow: a reply (its tuple has a reverse-NAT entry) and a further
//! packet of the flow (its service key has an entry).

use lb_api::abi::{CtEntry, CtKey, CtKind};
use lb_api::counters::{Counter, Counters, DropReason};
use lb_api::flow::{FlowTuple, IpFamily};
use lb_api::wire::{PacketAccess, Parsed, TcpFlags};
use lb_api::Verdict;
use lb_conntrack::{is_expired, track, ConntrackTable, Direction};
use lb_encap::dsr::dsr_extract;
use lb_encap::AdjustHead;
use lb_nat::{rewrite, Field, RandomSource, ServiceTable};

use super::carriers::exceeds_mtu;
use super::context::{Ctx, Outcome};
use super::pair::{forget_expired_flow, partner_of, refresh_reverse};
use super::{drop, pass};

/// A packet of a tracked flow: `None` when its forward key has no entry (a new flow). `e` and
/// `fkey` are scratch space (the key in the stack frame would overflow the kernel's 512 bytes).
#[inline(never)]
pub(super) fn established<P, T, C>(
    pkt: &mut P,
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    e: &mut CtEntry,
    fkey: &mut CtKey,
) -> Option<Outcome>
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
    let backend_side = e.is_backend_side();
    refresh_reverse(tables, fkey, e, now)?;
    // Carried to the backend's node: on the node that picked the backend of a DSR or tunnelled
    // flow.
    if (e.is_dsr() || e.is_tunnel()) && !backend_side && exceeds_mtu(ctx, e.flags) {
        return Some(Outcome::TooBig);
    }
    if let Err(v) = translate(pkt, parsed, tables, e) {
        return Some(Outcome::Done(v));
    }
    if (e.is_dsr() || e.is_tunnel()) && !backend_side {
        return Some(Outcome::CarryEstablished);
    }
    Some(Outcome::Done(pass(tables, Counter::ServiceEstablished)))
}

/// The service key of the flow a packet belongs to, as [`new_flow`](super::new_flow::new_flow)
/// or [`backend_side`](super::new_flow::backend_side)
/// recorded it: the packet's tuple; on the backend's node of a flow another node translated,
/// with the service address a DSR carrier brings as destination (the tuple the client sent),
/// or, out of the tunnel, with the node it came from as [`CtKey::origin`]. Flows that several
/// nodes forward from one client address and port to one backend arrive with one tuple; these
/// keys tell them apart.
#[inline(always)]
pub(super) fn flow_key<P: PacketAccess + ?Sized, C>(pkt: &P, ctx: &Ctx<'_, C>, k: &mut CtKey) {
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

/// The source address a flow's packets leave with: this node's under SNAT, the client's
/// otherwise.
#[inline(always)]
fn src_after<'a>(e: &'a CtEntry, t: &'a FlowTuple) -> &'a [u8; 16] {
    if e.is_snat() {
        &e.snat_addr
    } else {
        &t.src
    }
}

/// The source port a flow's packets leave with.
#[inline(always)]
fn src_port_after(e: &CtEntry, t: &FlowTuple) -> u16 {
    if e.src_port_rewritten() {
        e.rewritten_src_port
    } else {
        t.src_port
    }
}

/// Rewrites a packet of the flow of service entry `e` (destination to the backend, source per
/// SNAT or the collision resolver), leaving fields that do not change alone.
#[inline(always)]
pub(super) fn translate<P, T>(
    pkt: &mut P,
    parsed: &Parsed,
    tables: &mut T,
    e: &CtEntry,
) -> Result<(), Verdict>
where
    P: AdjustHead + ?Sized,
    T: Counters + ?Sized,
{
    let t = &parsed.tuple;
    if !e.is_backend_side()
        && rewrite(pkt, parsed, Field::Destination, &e.nat_addr, e.nat_port).is_none()
    {
        return Err(drop(tables, DropReason::Truncated));
    }
    let (src, port) = (src_after(e, t), src_port_after(e, t));
    if (port != t.src_port || e.is_snat())
        && rewrite(pkt, parsed, Field::Source, src, port).is_none()
    {
        return Err(drop(tables, DropReason::Truncated));
    }
    Ok(())
}

/// A reply of a tracked flow: `None` when the packet's tuple has no reverse-NAT entry. `rev`
/// and `rkey` are scratch space (the kernel stack is 512 bytes).
#[inline(never)]
pub(super) fn reply<P, T, C>(
    pkt: &mut P,
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    rev: &mut CtEntry,
    rkey: &mut CtKey,
) -> Option<Outcome>
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
) -> Outcome
where
    P: AdjustHead + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    let (parsed, cfg) = (ctx.parsed, ctx.cfg);
    let t = &parsed.tuple;
    // Where the reply goes back to: the client's original address and port.
    let client_port = if rev.src_port_rewritten() {
        rev.rewritten_src_port
    } else {
        t.dst_port
    };
    let client_addr = if rev.is_snat() {
        &rev.snat_addr
    } else {
        &t.dst
    };
    // The flow's service entry.
    let Some(fkey) = partner_of(rkey, rev) else {
        return Outcome::Done(pass(tables, Counter::PassNotService));
    };
    let now = ctx.now();
    let expires = match tables.get_mut(&fkey) {
        // The service entry owns the flow's deadline (the reverse half carries a copy).
        Some(fwd) if is_expired(fwd, now) => {
            forget_expired_flow(tables, &fkey);
            return Outcome::Done(pass(tables, Counter::PassNotService));
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
            return Outcome::Done(pass(tables, Counter::PassNotService));
        }
    };
    if let Some(r) = tables.get_mut(rkey) {
        r.last_seen_ns = now;
        r.expires_ns = expires;
        r.packets_reply = r.packets_reply.wrapping_add(1);
    }
    // On the backend's node of a tunnelled flow, the reply goes back through the tunnel
    // untranslated: the node that translated the flow translates it back.
    let tunnel_back = rev.replies_through_tunnel();
    if tunnel_back {
        if exceeds_mtu(ctx, rev.flags) {
            return Outcome::TooBig;
        }
    } else if rewrite(pkt, parsed, Field::Source, &rev.nat_addr, rev.nat_port).is_none() {
        return Outcome::Done(drop(tables, DropReason::Truncated));
    }
    if (client_port != t.dst_port || rev.is_snat())
        && rewrite(pkt, parsed, Field::Destination, client_addr, client_port).is_none()
    {
        return Outcome::Done(drop(tables, DropReason::Truncated));
    }
    if tunnel_back {
        return Outcome::CarryReply;
    }
    Outcome::Done(pass(tables, Counter::ReplyTranslated))
}
