//! Reserving a new flow's reply tuple: inserting its reverse-NAT entry without overwriting,
//! with another source port when another flow owns the tuple (the collision resolver) or, under
//! SNAT, with a port of this node's SNAT range (the SNAT allocator, TIME_WAIT take-over
//! included).

use core::cell::Cell;

use lb_api::abi::{CtEntry, CtKey, CtState, CT_F_SRC_PORT_REWRITTEN};
use lb_api::counters::{Counter, Counters, DropReason};
use lb_api::flow::L4Proto;
use lb_api::wire::{Parsed, TcpFlags};
use lb_api::Verdict;
use lb_conntrack::{service_key_of, ConntrackTable, InsertError, InsertMode};
use lb_nat::collision::Reserve;
use lb_nat::snat::{claim_port, may_take_over, Claim, SnatConfig, SnatError};
use lb_nat::{resolve_source_port, RandomSource, SourcePortRange};

use super::context::Ctx;
use super::drop;

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
pub(super) fn reserve_reply<T, C>(
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    e: &mut CtEntry,
    rk: &mut CtKey,
) -> Result<u16, Verdict>
where
    T: ConntrackTable + Counters + RandomSource + ?Sized,
    C: Fn() -> u64,
{
    if e.is_snat() {
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
/// flow is in TIME_WAIT and ended before the SYN's sequence number ([`note_time_wait_port`]);
/// with no free port at the end, it takes that port over ([`take_over_time_wait_port`]). Counts the attempts
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
    ctx.time_wait_port().set(0);
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
                        note_time_wait_port(d.draw.tables, d.rk, ctx);
                    }
                    Claim::Taken
                }
                Err(_) => Claim::Full,
            }
        },
        |d| {
            let port = ctx.time_wait_port().get();
            if port == 0 {
                return None;
            }
            claim_key(d.rk, d.e, port, src_port);
            take_over_time_wait_port(d.draw.tables, d.rk, d.e, ctx).then_some(port)
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
/// The service key is derived by [`service_key_of`] for the reverse entry alone, not by
/// [`partner_key`](lb_conntrack::partner_key) for a key of any kind: the kernel's verifier walks
/// this once per attempt of the take-over window, and with `partner_key` the new-flow stage
/// exceeds its million instructions (measured).
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
    if !rev.is_snat() {
        return false;
    }
    // SAFETY: the `Cell`'s value is not otherwise borrowed while this reference lives (the
    // `Cell` is only used through this function).
    let fk = unsafe { &mut *holder.as_ptr() };
    *fk = service_key_of(rk, rev);
    let Some(fwd) = tables.get_mut(fk) else {
        return false;
    };
    let time_wait = fwd.state == CtState::TimeWait as u8;
    may_take_over(time_wait, fwd.fin_seq_end, Some(parsed.tcp_seq))
}

/// In the take-over window: notes the port of `rk` in the scratch area when its flow may be
/// taken over ([`time_wait_holder`]) and no port is noted yet
/// ([`SnatScratch::time_wait_port`](super::SnatScratch::time_wait_port)).
#[inline(never)]
fn note_time_wait_port<T: ConntrackTable + ?Sized, C>(
    tables: &mut T,
    rk: &CtKey,
    ctx: &Ctx<'_, C>,
) {
    if ctx.time_wait_port().get() == 0 && time_wait_holder(tables, rk, ctx.parsed, ctx.holder()) {
        ctx.time_wait_port().set(rk.dst_port);
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
fn take_over_time_wait_port<T: ConntrackTable + Counters + ?Sized, C>(
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
