//! The pipeline: parse → reply of a tracked flow? → known flow? → new flow to a service?

use lb_api::abi::{
    BackendKey, CtEntry, CtKey, CtKind, DatapathConfig, ServiceKey, CT_F_SRC_PORT_REWRITTEN,
};
use lb_api::counters::{Counter, Counters, DropReason};
use lb_api::flow::{FlowTuple, L4Proto};
use lb_api::wire::{
    parse_into, quoted_into, Disposition, Fragment, PacketAccess, Parsed, QuotedDatagram,
};
use lb_api::Verdict;
use lb_conntrack::{
    initial_state, is_expired, partner_key, track, ConntrackTable, Direction, InsertError,
    InsertMode,
};
use lb_nat::collision::Reserve;
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

/// Runs one packet through the datapath and returns what to do with it.
///
/// * A reply from a backend of a tracked flow gets its source rewritten back to the service.
/// * A packet of a tracked flow to a service gets its destination rewritten to the flow's backend.
/// * The first packet to a service picks a backend by flow hash, creates the flow's two
///   conntrack entries (reverse-NAT first, with no-overwrite, so the reply path exists before the
///   forward path is published) and is rewritten.
/// * If that reply tuple is already owned by another flow (the same client ip:port reached the
///   same backend through another frontend or node), the client's source port is rewritten to a
///   random free port of the configured range; conntrack records it, packets of the flow keep
///   getting it, and replies get the original port back.
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
    P: PacketAccess + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    tables.bump(Counter::RxPackets.slot());
    let Scratch { parsed, entry } = scratch;
    *parsed = Parsed::EMPTY;
    if let Err(e) = parse_into(pkt, parsed) {
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
    // ICMP errors about a translated flow are translated too; other ICMP messages and other
    // protocols parse (VLAN tags too: the offsets move) and pass. TCP and UDP over IPv4 and
    // IPv6 are translated.
    if matches!(
        L4Proto::from_u8(t.proto),
        Some(L4Proto::Icmp | L4Proto::Icmpv6)
    ) {
        return icmp_error(pkt, parsed, tables);
    }
    if !matches!(L4Proto::from_u8(t.proto), Some(L4Proto::Tcp | L4Proto::Udp)) {
        return pass(tables, Counter::PassOtherProto);
    }

    let ctx = Ctx { parsed, cfg, clock };
    let rkey = CtKey::new(t, CtKind::ReverseNat);
    if let Some(rev) = tables.get_mut(&rkey) {
        let back = ReplyTarget {
            svc_addr: rev.nat_addr,
            svc_port: rev.nat_port,
            client_port: if rev.flags & CT_F_SRC_PORT_REWRITTEN != 0 {
                rev.rewritten_src_port
            } else {
                t.dst_port
            },
        };
        return reply(pkt, &ctx, tables, &rkey, &back);
    }

    // Each path builds the forward key itself, so that it lives in that path's frame only.
    if let Some(v) = established(pkt, &ctx, tables, entry) {
        return v;
    }
    new_flow(pkt, &ctx, tables, entry)
}

/// Per-packet working state too large for the kernel stack; see [`process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Scratch {
    /// The packet's parse result; after [`process`] it still holds the flow as far as it was
    /// parsed, which the callers put into drop events.
    pub parsed: Parsed,
    /// The conntrack entry a new flow is building.
    pub entry: CtEntry,
}

impl Default for Scratch {
    fn default() -> Self {
        Self {
            parsed: Parsed::EMPTY,
            entry: CtEntry::default(),
        }
    }
}

/// What every path needs besides the packet and the tables. Bundled so that each path is a
/// function of at most five arguments: in the kernel the paths are separate BPF subprograms
/// (`inline(never)`), which the BPF calling convention limits to five register arguments, and
/// which give each path its own stack frame instead of one frame holding all three.
struct Ctx<'a, C> {
    parsed: &'a Parsed,
    cfg: &'a DatapathConfig,
    clock: &'a C,
}

impl<C: Fn() -> u64> Ctx<'_, C> {
    /// Now: the config's fixed time when set, the clock otherwise. Read once per path, only
    /// where the path is about to write conntrack.
    #[inline(always)]
    fn now(&self) -> u64 {
        now_ns(self.cfg, self.clock)
    }
}

/// Where a reply goes back to: the service address to restore as its source, and the client's
/// original port.
struct ReplyTarget {
    svc_addr: [u8; 16],
    svc_port: u16,
    client_port: u16,
}

/// A packet of a tracked flow to a service: `None` when `fkey` has no entry (a new flow).
#[inline(never)]
fn established<P, T, C>(
    pkt: &mut P,
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    entry: &mut CtEntry,
) -> Option<Verdict>
where
    P: PacketAccess + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    let parsed = ctx.parsed;
    let t = &parsed.tuple;
    let fkey = &CtKey::new(t, CtKind::Service);
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
    // Copy only what the rest of the path needs: the kernel stack is 512 bytes.
    let (be_addr, be_port, expires) = (fwd.nat_addr, fwd.nat_port, fwd.expires_ns);
    let client_port = if fwd.flags & CT_F_SRC_PORT_REWRITTEN != 0 {
        fwd.rewritten_src_port
    } else {
        t.src_port
    };
    // Keep the reverse half in step; rebuild it if it was lost.
    let rk = reverse_key(t, client_port, be_addr, be_port);
    match tables.get_mut(&rk) {
        Some(r) => {
            r.last_seen_ns = now;
            r.expires_ns = expires;
        }
        None => {
            if let Some(fwd) = tables.get_mut(fkey) {
                *entry = *fwd;
                make_reverse(entry, t);
                let _ = tables.insert(&rk, entry, InsertMode::NoExist);
            }
        }
    }
    if rewrite(pkt, parsed, Field::Destination, &be_addr, be_port).is_none() {
        return Some(drop(tables, DropReason::Truncated));
    }
    if client_port != t.src_port
        && rewrite(pkt, parsed, Field::Source, &t.src, client_port).is_none()
    {
        return Some(drop(tables, DropReason::Truncated));
    }
    Some(pass(tables, Counter::ServiceEstablished))
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

/// Key of the reverse-NAT entry of a flow: the tuple the backend replies with, to the client's
/// (possibly rewritten) source port.
#[inline(always)]
fn reverse_key(t: &FlowTuple, client_port: u16, backend: [u8; 16], backend_port: u16) -> CtKey {
    let reply = FlowTuple {
        src: backend,
        src_port: backend_port,
        dst: t.src,
        dst_port: client_port,
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
    // A rewritten flow's reverse half remembers the original port, which replies get back.
    if e.flags & CT_F_SRC_PORT_REWRITTEN != 0 {
        e.rewritten_src_port = t.src_port;
    }
    e.packets_orig = 0;
    e.packets_reply = 0;
}

#[inline(never)]
fn reply<P, T, C>(
    pkt: &mut P,
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    rkey: &CtKey,
    back: &ReplyTarget,
) -> Verdict
where
    P: PacketAccess + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    let (parsed, cfg) = (ctx.parsed, ctx.cfg);
    let (svc_addr, svc_port, client_port) = (back.svc_addr, back.svc_port, back.client_port);
    let t = &parsed.tuple;
    let client = FlowTuple {
        src: t.dst,
        src_port: client_port,
        dst: svc_addr,
        dst_port: svc_port,
        ..*t
    };
    let fkey = CtKey::new(&client, CtKind::Service);
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
    if let Some(rev) = tables.get_mut(rkey) {
        rev.last_seen_ns = now;
        rev.expires_ns = expires;
        rev.packets_reply = rev.packets_reply.wrapping_add(1);
    }
    if rewrite(pkt, parsed, Field::Source, &svc_addr, svc_port).is_none() {
        return drop(tables, DropReason::Truncated);
    }
    if client_port != t.dst_port
        && rewrite(pkt, parsed, Field::Destination, &t.dst, client_port).is_none()
    {
        return drop(tables, DropReason::Truncated);
    }
    pass(tables, Counter::ReplyTranslated)
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
        if self.fixed == 0 {
            return self.tables.random_u32();
        }
        let mut x = self.fixed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.fixed = x;
        x
    }
}

/// The first packet of a flow: a service? pick a backend, create both conntrack entries, rewrite.
#[inline(never)]
fn new_flow<P, T, C>(pkt: &mut P, ctx: &Ctx<'_, C>, tables: &mut T, e: &mut CtEntry) -> Verdict
where
    P: PacketAccess + ?Sized,
    T: ConntrackTable + ServiceTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    let (parsed, cfg) = (ctx.parsed, ctx.cfg);
    let t = &parsed.tuple;
    let fkey = &CtKey::new(t, CtKind::Service);
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

    let now = ctx.now();
    let state = initial_state(t.proto, parsed.tcp_flags);
    // One entry (in the scratch area, off the kernel stack), turned from the reverse half into
    // the forward half in place.
    *e = CtEntry {
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
    make_reverse(e, t);
    let mut client_port = t.src_port;
    // One reverse key, whose client port the resolver changes per try: a key per (unrolled) try
    // would cost 40 bytes of the 512-byte kernel stack each.
    let mut rk = reverse_key(t, client_port, be.addr, be.port);
    match tables.insert(&rk, e, InsertMode::NoExist) {
        Ok(()) => {}
        Err(InsertError::Exists) => {
            // Another flow already owns this reply tuple: the same client address and port reach
            // this backend through another frontend or node. Overwriting would steal that flow's
            // replies; give this flow another source port instead.
            e.flags |= CT_F_SRC_PORT_REWRITTEN;
            e.rewritten_src_port = t.src_port;
            let range = SourcePortRange::from_config(
                cfg.src_port_min,
                cfg.src_port_max,
                cfg.src_port_tries,
            );
            let fixed = if cfg.fixed_now_ns != 0 {
                (t.hash(cfg.hash_seed) ^ cfg.fixed_now_ns as u32) | 1
            } else {
                0
            };
            let mut draw = Draw {
                tables: &mut *tables,
                fixed,
            };
            let got = resolve_source_port(&range, &mut draw, |d, port| {
                rk.dst_port = port;
                match d.tables.insert(&rk, e, InsertMode::NoExist) {
                    Ok(()) => Reserve::Reserved,
                    Err(InsertError::Exists) => Reserve::Taken,
                    Err(_) => Reserve::Failed,
                }
            });
            let Some(port) = got else {
                return drop(tables, DropReason::SourcePortCollision);
            };
            client_port = port;
            tables.bump(Counter::SourcePortRewritten.slot());
        }
        Err(_) => return drop(tables, DropReason::ConntrackFull),
    }
    e.nat_addr = be.addr;
    e.nat_port = be.port;
    if client_port != t.src_port {
        e.rewritten_src_port = client_port;
    }
    e.packets_orig = 1;
    if tables.insert(fkey, e, InsertMode::NoExist).is_err() {
        // Never leave half a pair behind.
        tables.remove(&rk);
        return drop(tables, DropReason::ConntrackFull);
    }
    if client_port != t.src_port
        && rewrite(pkt, parsed, Field::Source, &t.src, client_port).is_none()
    {
        return drop(tables, DropReason::Truncated);
    }
    if rewrite(pkt, parsed, Field::Destination, &be.addr, be.port).is_none() {
        return drop(tables, DropReason::Truncated);
    }
    pass(tables, Counter::ServiceNewFlow)
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
/// Conntrack is only read (an error does not keep a flow alive), so the path needs neither the
/// clock nor the config: it takes `parsed` alone.
#[inline(never)]
fn icmp_error<P, T>(pkt: &mut P, parsed: &Parsed, tables: &mut T) -> Verdict
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
    if let Some(rev) = tables.get_mut(&key) {
        to.dst = rev.nat_addr;
        to.dst_port = rev.nat_port;
        if rev.flags & CT_F_SRC_PORT_REWRITTEN != 0 {
            to.src_port = rev.rewritten_src_port;
        }
        // (A reverse entry that also restores the client's address, SNAT, sets `to.src` here.)
    } else {
        key.kind = CtKind::Service as u8;
        let Some(fwd) = tables.get_mut(&key) else {
            return pass(tables, Counter::PassIcmpErrorNoFlow);
        };
        to.src = fwd.nat_addr;
        to.src_port = fwd.nat_port;
        if fwd.flags & CT_F_SRC_PORT_REWRITTEN != 0 {
            to.dst_port = fwd.rewritten_src_port;
        }
        // (A service entry with a SNAT address sets `to.dst` here.)
    }
    if translate_icmp_error(pkt, parsed, &quote, &to).is_none() {
        return drop(tables, DropReason::Truncated);
    }
    pass(tables, Counter::IcmpErrorTranslated)
}
