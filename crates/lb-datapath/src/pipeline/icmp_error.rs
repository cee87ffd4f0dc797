//! ICMP and ICMPv6 errors about a translated flow, translated back (RFC 5508).

use lb_api::abi::{CtKey, CtKind};
use lb_api::counters::{Counter, Counters, DropReason};
use lb_api::wire::{quoted_into, Disposition, PacketAccess, Parsed, QuotedDatagram};
use lb_api::Verdict;
use lb_conntrack::{is_expired, ConntrackTable};
use lb_nat::translate_icmp_error;

use super::{drop, pass};

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
pub(super) fn icmp_error<P, T>(pkt: &mut P, parsed: &Parsed, tables: &mut T, now: u64) -> Verdict
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
            if rev.src_port_rewritten() {
                to.src_port = rev.rewritten_src_port;
            }
            // SNAT: the reverse entry holds the client's address.
            if rev.is_snat() {
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
            if fwd.src_port_rewritten() {
                to.dst_port = fwd.rewritten_src_port;
            }
            // SNAT: the service entry holds the address the backend saw, this node's.
            if fwd.is_snat() {
                to.dst = fwd.snat_addr;
            }
        }
    }
    if translate_icmp_error(pkt, parsed, &quote, &to).is_none() {
        return drop(tables, DropReason::Truncated);
    }
    pass(tables, Counter::IcmpErrorTranslated)
}
