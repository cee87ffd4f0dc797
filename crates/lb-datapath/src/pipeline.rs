//! The pipeline: parse → reply of a tracked flow? → known flow? → new flow to a service?

use lb_api::abi::{BackendKey, CtEntry, CtKey, CtKind, DatapathConfig, ServiceKey};
use lb_api::counters::{Counter, Counters, DropReason};
use lb_api::flow::{v4_of, FlowTuple, IpFamily, L4Proto};
use lb_api::wire::{parse_into, Disposition, Fragment, PacketAccess, Parsed};
use lb_api::Verdict;
use lb_conntrack::{initial_state, track, ConntrackTable, Direction, InsertError, InsertMode};
use lb_nat::{rewrite_v4, select_slot, Field, ServiceTable};

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
    Verdict::Drop
}

#[inline(always)]
fn pass<T: Counters + ?Sized>(tables: &mut T, why: Counter) -> Verdict {
    tables.bump(why.slot());
    Verdict::Pass
}

/// Runs one packet through the datapath and returns what to do with it.
///
/// * A reply from a backend of a tracked flow gets its source rewritten back to the service.
/// * A packet of a tracked flow to a service gets its destination rewritten to the flow's backend.
/// * The first packet to a service picks a backend by flow hash, creates the flow's two
///   conntrack entries (reverse-NAT first, with no-overwrite, so the reply path exists before the
///   forward path is published) and is rewritten.
/// * Anything else passes untouched; malformed packets are dropped. Every outcome bumps a counter.
#[inline(always)]
pub fn process<P, T>(pkt: &mut P, cfg: &DatapathConfig, now: u64, tables: &mut T) -> Verdict
where
    P: PacketAccess + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + ?Sized,
{
    tables.bump(Counter::RxPackets.slot());
    let mut parsed = Parsed::EMPTY;
    if let Err(e) = parse_into(pkt, &mut parsed) {
        return match e.disposition() {
            Disposition::Pass(c) => pass(tables, c),
            Disposition::Drop(r) => drop(tables, r),
        };
    }
    // The datapath does not reassemble: fragments (first or later) go to the stack.
    if parsed.fragment != Fragment::None {
        return pass(tables, Counter::PassFragment);
    }
    let t = &parsed.tuple;
    // IPv6 and ICMP parse (VLAN tags too: the offsets move) but only IPv4 TCP/UDP is translated.
    if !matches!(L4Proto::from_u8(t.proto), Some(L4Proto::Tcp | L4Proto::Udp))
        || t.family != IpFamily::V4 as u8
    {
        return pass(tables, Counter::PassOtherProto);
    }

    let rkey = CtKey::new(t, CtKind::ReverseNat);
    if let Some(rev) = tables.get_mut(&rkey) {
        let (svc_addr, svc_port) = (rev.nat_addr, rev.nat_port);
        return reply(pkt, &parsed, cfg, now, tables, &rkey, svc_addr, svc_port);
    }

    let fkey = CtKey::new(t, CtKind::Service);
    if let Some(fwd) = tables.get_mut(&fkey) {
        track(
            fwd,
            Direction::Original,
            parsed.tcp_flags,
            now,
            &cfg.timeouts,
        );
        // Copy only what the rest of the path needs: the kernel stack is 512 bytes.
        let (be_addr, be_port, expires) = (fwd.nat_addr, fwd.nat_port, fwd.expires_ns);
        // Keep the reverse half in step; rebuild it if it was lost.
        let rk = reverse_key(t, be_addr, be_port);
        match tables.get_mut(&rk) {
            Some(r) => {
                r.last_seen_ns = now;
                r.expires_ns = expires;
            }
            None => {
                if let Some(fwd) = tables.get_mut(&fkey) {
                    let mut r = *fwd;
                    make_reverse(&mut r, t);
                    let _ = tables.insert(&rk, &r, InsertMode::NoExist);
                }
            }
        }
        if rewrite_v4(pkt, &parsed, Field::Destination, v4_of(&be_addr), be_port).is_none() {
            return drop(tables, DropReason::Truncated);
        }
        return pass(tables, Counter::ServiceEstablished);
    }

    new_flow(pkt, &parsed, cfg, now, tables, &fkey)
}

/// Key of the reverse-NAT entry of a flow: the tuple the backend replies with.
#[inline(always)]
fn reverse_key(t: &FlowTuple, backend: [u8; 16], backend_port: u16) -> CtKey {
    let reply = FlowTuple {
        src: backend,
        src_port: backend_port,
        dst: t.src,
        dst_port: t.src_port,
        ..*t
    };
    CtKey::new(&reply, CtKind::ReverseNat)
}

/// Turns a flow's service entry into its reverse-NAT entry: same timers, and the service
/// address (the original destination) to restore as the replies' source.
#[inline(always)]
fn make_reverse(e: &mut CtEntry, t: &FlowTuple) {
    e.nat_addr = t.dst;
    e.nat_port = t.dst_port;
    e.packets_orig = 0;
    e.packets_reply = 0;
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn reply<P, T>(
    pkt: &mut P,
    parsed: &Parsed,
    cfg: &DatapathConfig,
    now: u64,
    tables: &mut T,
    rkey: &CtKey,
    svc_addr: [u8; 16],
    svc_port: u16,
) -> Verdict
where
    P: PacketAccess + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + ?Sized,
{
    let t = &parsed.tuple;
    let client = FlowTuple {
        src: t.dst,
        src_port: t.dst_port,
        dst: svc_addr,
        dst_port: svc_port,
        ..*t
    };
    let fkey = CtKey::new(&client, CtKind::Service);
    let expires = match tables.get_mut(&fkey) {
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
    if let Some(rev) = tables.get_mut(rkey) {
        rev.last_seen_ns = now;
        rev.expires_ns = expires;
        rev.packets_reply = rev.packets_reply.wrapping_add(1);
    }
    if rewrite_v4(pkt, parsed, Field::Source, v4_of(&svc_addr), svc_port).is_none() {
        return drop(tables, DropReason::Truncated);
    }
    pass(tables, Counter::ReplyTranslated)
}

#[inline(always)]
fn new_flow<P, T>(
    pkt: &mut P,
    parsed: &Parsed,
    cfg: &DatapathConfig,
    now: u64,
    tables: &mut T,
    fkey: &CtKey,
) -> Verdict
where
    P: PacketAccess + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + ?Sized,
{
    let t = &parsed.tuple;
    let skey = ServiceKey {
        addr: t.dst,
        port: t.dst_port,
        proto: t.proto,
        family: t.family,
    };
    let Some(svc) = tables.service(&skey) else {
        return pass(tables, Counter::PassNotService);
    };
    let Some(slot) = select_slot(t, cfg.hash_seed, svc.backend_count) else {
        return drop(tables, DropReason::NoBackend);
    };
    let Some(be) = tables.backend(&BackendKey {
        service_id: svc.id,
        slot,
    }) else {
        return drop(tables, DropReason::BackendMissing);
    };

    let state = initial_state(t.proto, parsed.tcp_flags);
    // One entry on the stack, turned from the reverse half into the forward half in place: the
    // kernel stack is 512 bytes.
    let mut e = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        expires_ns: now.saturating_add(cfg.timeouts.of(state as u8)),
        state: state as u8,
        proto: t.proto,
        family: t.family,
        service_id: svc.id,
        backend_id: be.id,
        ..CtEntry::default()
    };
    make_reverse(&mut e, t);
    let rk = reverse_key(t, be.addr, be.port);
    match tables.insert(&rk, &e, InsertMode::NoExist) {
        Ok(()) => {}
        Err(InsertError::Exists) => {
            // Another flow already owns this reply tuple: the same client address and port reach
            // this backend through another frontend. Overwriting would steal that flow's replies.
            return drop(tables, DropReason::SourcePortCollision);
        }
        Err(_) => return drop(tables, DropReason::ConntrackFull),
    }
    e.nat_addr = be.addr;
    e.nat_port = be.port;
    e.packets_orig = 1;
    if tables.insert(fkey, &e, InsertMode::NoExist).is_err() {
        // Never leave half a pair behind.
        tables.remove(&rk);
        return drop(tables, DropReason::ConntrackFull);
    }
    if rewrite_v4(pkt, parsed, Field::Destination, v4_of(&be.addr), be.port).is_none() {
        return drop(tables, DropReason::Truncated);
    }
    pass(tables, Counter::ServiceNewFlow)
}
