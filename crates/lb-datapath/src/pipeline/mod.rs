//! The pipeline: parse → reply of a tracked flow? → known flow? → new flow to a service?
//!
//! One file per path or concept:
//! * this module: the entry points ([`process`], its two stages), the parse step, and the
//!   completion of a path's [`Outcome`] (carrier, ICMP error, counting);
//! * [`scratch`]: the per-packet working state kept off the kernel stack ([`Scratch`]);
//! * [`context`]: what every path gets besides packet and tables ([`Ctx`]), and what it returns
//!   ([`Outcome`]);
//! * [`tunnel`]: VXLAN from a peer node, decapsulated on the way in;
//! * [`tracked`]: the paths of a tracked flow, its replies and its further packets;
//! * [`pair`]: keeping a flow's two conntrack entries in step (the layout itself is
//!   [`lb_conntrack`]'s pair module);
//! * [`new_flow`](mod@new_flow): the first packet of a flow, to a service or on a backend's node;
//! * [`reserve`]: reserving the reply tuple of a new flow (collision resolver, SNAT allocator);
//! * [`carriers`]: DSR carrier and VXLAN on the way to the peer node, MTU and the ICMP error
//!   for a packet too big for them;
//! * [`icmp_error`](mod@icmp_error): ICMP errors about translated flows;
//! * [`reject`](mod@reject): the reset or "port unreachable" for a service without backends.
//!
//! The paths are BPF subprograms of their own in the kernel (`#[inline(never)]`), each with its
//! own frame of the 512-byte stack: the comments on the attributes say which frame a value
//! was kept off. Do not change them without `cargo xtask stack` and the verifier test.

mod carriers;
mod context;
mod icmp_error;
mod new_flow;
mod pair;
mod reject;
mod reserve;
mod scratch;
mod tracked;
mod tunnel;

#[cfg(all(test, feature = "std"))]
mod tests;

use core::cell::Cell;

use lb_api::abi::{CtEntry, DatapathConfig};
use lb_api::checksum;
use lb_api::counters::{Counter, Counters, DropReason};
use lb_api::flow::L4Proto;
use lb_api::wire::{parse_into, Disposition, Fragment, PacketAccess, Parsed};
use lb_api::Verdict;
use lb_conntrack::ConntrackTable;
use lb_encap::AdjustHead;
use lb_nat::{RandomSource, ServiceTable};

use carriers::{pseudo_sum, to_peer, too_big};
use context::{Ctx, Outcome};
use icmp_error::icmp_error;
use new_flow::{backend_side, new_flow};
use reject::reject;
pub use scratch::{Scratch, SnatScratch};
use tracked::{established, reply};
use tunnel::{is_tunnel, tunnel_ingress};

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

/// Counts a drop for `reason` (the reason, the total, the drop event): the verdict.
#[inline(always)]
fn drop<T: Counters + ?Sized>(tables: &mut T, reason: DropReason) -> Verdict {
    tables.bump(reason.slot());
    tables.bump(Counter::Dropped.slot());
    tables.drop_event(reason);
    Verdict::Drop
}

/// Counts a pass as `why`: the verdict.
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
///   service's [`ForwardingMode`](lb_api::abi::ForwardingMode): routed (SNAT), with a DSR carrier, or VXLAN-encapsulated.
/// * The first packet to a service picks a backend (its client's session-affinity backend
///   while that is live and still in the set, else by flow hash), creates the flow's conntrack
///   entries (reverse-NAT first, with no-overwrite, so the reply path exists before the forward
///   path is published) and is rewritten. If that reply tuple is already owned by another flow,
///   the source port is rewritten to a free port (the collision resolver; under SNAT, the port
///   allocator), recorded in conntrack, and restored on replies.
/// * The first packet to a service without a usable backend is rejected: a TCP reset or an
///   ICMP/ICMPv6 "port unreachable" goes back to the client from the service address.
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
        carry_counter,
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
        snat: Cell::from_mut(snat),
    };
    // The paths build their keys in the scratch area (`key`): a 56-byte key in their frames
    // would take the first stage's deepest call chain past the kernel's 512-byte stack.
    let outcome = match reply(pkt, &ctx, tables, entry, key) {
        Some(o) => o,
        None => match established(pkt, &ctx, tables, entry, key) {
            Some(o) => o,
            None => return Step::NewFlow,
        },
    };
    Step::Done(finish(pkt, &ctx, tables, entry, carry_counter, outcome))
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
        carry_counter,
        tunnelled,
        snat,
    } = scratch;
    let ctx = Ctx {
        parsed,
        cfg,
        clock,
        peer,
        tunnelled: *tunnelled != 0,
        snat: Cell::from_mut(snat),
    };
    match new_flow(pkt, &ctx, tables, entry, key) {
        Some(Outcome::Reject) => reject(pkt, &ctx, tables),
        Some(outcome) => finish(pkt, &ctx, tables, entry, carry_counter, outcome),
        None => backend_side(pkt, &ctx, tables, entry, key),
    }
}

/// Counts a drop for `reason` (the reason, the total, the drop event) and returns the verdict.
/// What the kernel programs count when the new-flow stage cannot be reached.
#[inline(always)]
pub fn count_drop<T: Counters + ?Sized>(tables: &mut T, reason: DropReason) -> Verdict {
    drop(tables, reason)
}

/// A path's [`Outcome`], completed into the packet's verdict: a packet the path left to be
/// carried to its peer node gets its carrier (and then its outcome counted), a packet too big
/// for the carrier becomes the ICMP error. Here, once per stage, not in the paths, so that the
/// carrier's frame (and the tunnel's) does not stack on theirs, and the verifier walks it once
/// per stage rather than once per path (its checksum loop is long).
///
/// The counter of a carried packet waits in `carry_counter` (the scratch area: map memory in
/// the kernel) while the carrier is added: the verifier does not track it there, so the
/// carrier's code is verified once, not once per path and counter.
#[inline(always)]
fn finish<P, T, C>(
    pkt: &mut P,
    ctx: &Ctx<'_, C>,
    tables: &mut T,
    entry: &CtEntry,
    carry_counter: &mut u8,
    outcome: Outcome,
) -> Verdict
where
    P: AdjustHead + ?Sized,
    T: Counters + ?Sized,
    C: Fn() -> u64,
{
    let counter = match outcome {
        Outcome::Done(v) => return v,
        Outcome::TooBig => return too_big(pkt, ctx, tables, entry.flags),
        // The new-flow stage rejects before it would get here.
        Outcome::Reject => return drop(tables, DropReason::NoBackend),
        Outcome::CarryReply => Counter::ReplyTranslated,
        Outcome::CarryEstablished => Counter::ServiceEstablished,
        Outcome::CarryNewFlow => Counter::ServiceNewFlow,
    };
    // SAFETY: a valid, aligned pointer to the `u8` the reference holds. Volatile, so that the
    // compiler reads the counter back after the carrier rather than keep it in a register.
    unsafe { core::ptr::write_volatile(carry_counter, counter.slot() as u8) };
    // The path translated the packet and recorded the flow; a packet gets one outcome,
    // counted once the carrier is there.
    if let Err(d) = to_peer(pkt, ctx, tables, entry) {
        return d;
    }
    // SAFETY: as above.
    tables.bump(u32::from(unsafe {
        core::ptr::read_volatile(carry_counter)
    }));
    Verdict::Pass
}

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
