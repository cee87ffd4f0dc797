//! A new flow to a service without a usable backend: rejected as kube-proxy rejects it (a TCP
//! reset, an ICMP/ICMPv6 "port unreachable" for UDP), back to the client from the service
//! address, instead of a silent drop that leaves the client retrying until its timeout.

use lb_api::counters::{Counter, Counters, DropReason};
use lb_api::flow::L4Proto;
use lb_api::wire::Parsed;
use lb_api::Verdict;
use lb_encap::reject::{icmp_port_unreachable_parsed, tcp_reset_parsed};
use lb_encap::AdjustHead;

use super::context::Ctx;
use super::drop;

/// Turns the packet into its reject and sends it back out (`Verdict::Tx`), counted as
/// `reject_no_endpoints`; a packet no reject can be made of (a reset, IP options or IPv6
/// extension headers under TCP, a packet the hook cannot resize) is dropped as `no_backend`.
///
/// Called by the new-flow stage itself (the new-flow path returns [`Outcome::Reject`]
/// (super::context::Outcome::Reject)), not from under the path: its frames then stack on the
/// stage's alone, and the first stage never reaches it.
#[inline(always)]
pub(super) fn reject<P, T, C>(pkt: &mut P, ctx: &Ctx<'_, C>, tables: &mut T) -> Verdict
where
    P: AdjustHead + ?Sized,
    T: Counters + ?Sized,
{
    let parsed = ctx.parsed;
    let made = pkt.resizable()
        && if parsed.tuple.proto == L4Proto::Tcp as u8 {
            reset(pkt, parsed)
        } else {
            port_unreachable(pkt, parsed)
        };
    if !made {
        return drop(tables, DropReason::NoBackend);
    }
    tables.bump(Counter::RejectNoEndpoints.slot());
    Verdict::Tx
}

/// [`tcp_reset_parsed`]: whether it was made. A subprogram of its own in the kernel (its
/// headers in its own frame).
#[inline(never)]
fn reset<P: AdjustHead + ?Sized>(pkt: &mut P, parsed: &Parsed) -> bool {
    tcp_reset_parsed(pkt, parsed).is_some()
}

/// [`icmp_port_unreachable_parsed`]: whether it was made. A subprogram of its own in the kernel.
#[inline(never)]
fn port_unreachable<P: AdjustHead + ?Sized>(pkt: &mut P, parsed: &Parsed) -> bool {
    icmp_port_unreachable_parsed(pkt, parsed).is_some()
}
