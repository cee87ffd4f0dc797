//! Translation of ICMP and ICMPv6 errors about a translated flow (RFC 5508 section 4.2,
//! RFC 4443 for ICMPv6).
//!
//! An error such as "port unreachable", "fragmentation needed" / "packet too big" or "time
//! exceeded" quotes the datagram that caused it, as that datagram was on the wire where the error
//! was raised. A NAT between the two ends must make the quote read as the receiver of the error
//! sent it, or the receiver's stack finds no socket for it (and path MTU discovery breaks).
//! [`translate_icmp_error`] rewrites, in place:
//!
//! * the quoted IP header's addresses (and, IPv4, its header checksum);
//! * the quoted TCP/UDP ports, and the quoted transport checksum when the quote holds it (it
//!   covers the quoted addresses through the pseudo-header);
//! * the outer destination, which is the quoted datagram's sender, and the outer source only when
//!   it is the quoted datagram's destination (the peer itself answered; a router in between keeps
//!   its own address);
//! * the outer IPv4 header checksum, and the ICMP checksum for every changed word of the quote
//!   (ICMPv6: also for the outer addresses, which its pseudo-header covers).
//!
//! Every checksum is updated incrementally (RFC 1624) for the words that change, and only those
//! words are read and written: the kernel stack is small, and a quote may be cut anywhere after
//! its ports.

use lb_api::checksum::{finish, udp_v4_fixup, udp_v6_fixup, update_u16};
use lb_api::flow::{v4_of, FlowTuple, IpFamily, L4Proto};
use lb_api::wire::{PacketAccess, Parsed, QuotedDatagram};
use zerocopy::network_endian::U16;

use crate::rewrite::{IPV4_CHECK, IPV4_DST, IPV4_SRC, IPV6_DST, IPV6_SRC, TCP_CHECK, UDP_CHECK};

/// Offset of the checksum inside the ICMP/ICMPv6 header.
const ICMP_CHECK: usize = 2;

/// Rewrites the ICMP/ICMPv6 error `parsed` describes so that its quoted datagram reads `to`
/// (addresses and ports; protocol and family are the quote's own), updating the outer header
/// and every checksum involved. `quote` is the quote as [`lb_api::wire::quoted_into`] found it.
///
/// The outer destination is rewritten when it is the quote's source (the error goes back to the
/// quoted datagram's sender); the outer source when it is the quote's destination. A quote that
/// is a later fragment (no transport header) gets its addresses translated only.
///
/// Returns `None`, leaving the packet unchanged, if a field cannot be read (the packet is not the
/// one `parsed` and `quote` describe); every field is read before the first one is written.
/// Never panics.
///
/// Not inlined: in the kernel it is one BPF subprogram with a frame of its own.
#[inline(never)]
pub fn translate_icmp_error<P: PacketAccess + ?Sized>(
    pkt: &mut P,
    parsed: &Parsed,
    quote: &QuotedDatagram,
    to: &FlowTuple,
) -> Option<()> {
    let v6 = parsed.family() == IpFamily::V6;
    let (old, l3) = (&quote.tuple, parsed.l3_offset);
    let (alen, src_at, dst_at) = if v6 {
        (16, IPV6_SRC, IPV6_DST)
    } else {
        (4, IPV4_SRC, IPV4_DST)
    };
    // What each address change adds to a checksum that covers it (RFC 1624): the same for the
    // quoted IP header, the quoted transport pseudo-header, the outer header and ICMPv6's
    // pseudo-header, since an outer address is only rewritten when it is the quoted one.
    let d_src = addr_delta(&old.src, &to.src, alen);
    let d_dst = addr_delta(&old.dst, &to.dst, alen);
    // The outer addresses are compared as two words each, without copying them to the stack.
    let outer_dst_changes = d_src != 0 && same_addr(pkt, l3 + dst_at, &old.src, v6)?;
    let outer_src_changes = d_dst != 0 && same_addr(pkt, l3 + src_at, &old.dst, v6)?;
    let q = parsed.icmp.quote_offset as usize;
    let icmp_at = parsed.l4_offset + ICMP_CHECK;
    let icmp_check: U16 = pkt.load(icmp_at)?;
    let mut icmp = apply(apply(icmp_check.get(), d_src), d_dst);
    // IPv4 header checksums; ICMPv6's pseudo-header holds the outer addresses instead.
    let mut v4_checks = [0u16; 2];
    if v6 {
        if outer_dst_changes {
            icmp = apply(icmp, d_src);
        }
        if outer_src_changes {
            icmp = apply(icmp, d_dst);
        }
    } else {
        let outer: U16 = pkt.load(l3 + IPV4_CHECK)?;
        let quoted: U16 = pkt.load(q + IPV4_CHECK)?;
        let mut oc = outer.get();
        if outer_dst_changes {
            oc = apply(oc, d_src);
        }
        if outer_src_changes {
            oc = apply(oc, d_dst);
        }
        let qc = apply(apply(quoted.get(), d_src), d_dst);
        // The quoted header's checksum is a word of the ICMP message too.
        if qc != quoted.get() {
            icmp = update_u16(icmp, quoted.get(), qc);
        }
        v4_checks = [oc, qc];
    }
    let l4 = quoted_l4(pkt, parsed, quote, to, &mut icmp, apply_both(d_src, d_dst))?;

    // Every field was read: from here on the stores cannot fail.
    store_quoted_l4(pkt, quote, to, &l4)?;
    if d_src != 0 {
        store_addr(pkt, q + src_at, &to.src, v6)?;
    }
    if d_dst != 0 {
        store_addr(pkt, q + dst_at, &to.dst, v6)?;
    }
    if outer_dst_changes {
        store_addr(pkt, l3 + dst_at, &to.src, v6)?;
    }
    if outer_src_changes {
        store_addr(pkt, l3 + src_at, &to.dst, v6)?;
    }
    if !v6 {
        let [oc, qc] = v4_checks;
        pkt.store(l3 + IPV4_CHECK, &U16::new(oc))?;
        pkt.store(q + IPV4_CHECK, &U16::new(qc))?;
    }
    pkt.store(icmp_at, &U16::new(icmp))
}

/// The one's-complement sum that changing the first `len` bytes (4 or 16) of `old` into `new`
/// adds to a checksum covering them (RFC 1624: `~m + m'` per 16-bit word); zero when they are
/// equal, so that an unchanged address leaves every checksum as it was.
#[inline(always)]
fn addr_delta(old: &[u8; 16], new: &[u8; 16], len: usize) -> u32 {
    let mut sum = 0u32;
    let mut changed = false;
    // Bounded: 8 words at most.
    for (i, (o, n)) in old.chunks_exact(2).zip(new.chunks_exact(2)).enumerate() {
        if i * 2 >= len {
            break;
        }
        if let ([a, b], [c, d]) = (o, n) {
            let (o, n) = (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]));
            changed |= o != n;
            sum += u32::from(!o) + u32::from(n);
        }
    }
    if changed {
        sum
    } else {
        0
    }
}

/// `check` updated by a [`addr_delta`] (identity for zero).
#[inline(always)]
fn apply(check: u16, delta: u32) -> u16 {
    finish(u32::from(!check) + delta)
}

/// Both address changes, as one function of a transport checksum.
#[inline(always)]
fn apply_both(d_src: u32, d_dst: u32) -> impl FnOnce(u16) -> u16 {
    move |c| apply(apply(c, d_src), d_dst)
}

/// Whether the address at `at` (4 or 16 bytes) is `addr`; `None` if the packet ends before it.
#[inline(always)]
fn same_addr<P: PacketAccess + ?Sized>(
    pkt: &P,
    at: usize,
    addr: &[u8; 16],
    v6: bool,
) -> Option<bool> {
    if v6 {
        let here: u128 = pkt.load(at)?;
        Some(here == u128::from_ne_bytes(*addr))
    } else {
        let here: [u8; 4] = pkt.load(at)?;
        Some(u32::from_ne_bytes(here) == u32::from_ne_bytes(v4_of(addr)))
    }
}

/// Writes `addr` (4 or 16 bytes of it) at `at`.
#[inline(always)]
fn store_addr<P: PacketAccess + ?Sized>(
    pkt: &mut P,
    at: usize,
    addr: &[u8; 16],
    v6: bool,
) -> Option<()> {
    if v6 {
        pkt.store(at, addr)
    } else {
        pkt.store(at, &v4_of(addr))
    }
}

/// Where the quoted transport checksum is and what it becomes; `at` is zero when the quote has
/// no transport checksum to update.
struct L4Check {
    at: usize,
    value: u16,
}

/// The quoted TCP/UDP header's part: updates `icmp` for the port words and returns the new
/// transport checksum. `pseudo` folds the quoted address changes into a transport checksum.
#[inline(always)]
fn quoted_l4<P: PacketAccess + ?Sized>(
    pkt: &P,
    parsed: &Parsed,
    quote: &QuotedDatagram,
    to: &FlowTuple,
    icmp: &mut u16,
    pseudo: impl FnOnce(u16) -> u16,
) -> Option<L4Check> {
    let none = L4Check { at: 0, value: 0 };
    let l4 = quote.l4_offset;
    let (check_off, udp) = match L4Proto::from_u8(quote.tuple.proto) {
        Some(L4Proto::Tcp) => (TCP_CHECK, false),
        Some(L4Proto::Udp) => (UDP_CHECK, true),
        _ => return Some(none),
    };
    if l4 == 0 {
        return Some(none);
    }
    let old = &quote.tuple;
    if to.src_port != old.src_port {
        *icmp = update_u16(*icmp, old.src_port, to.src_port);
    }
    if to.dst_port != old.dst_port {
        *icmp = update_u16(*icmp, old.dst_port, to.dst_port);
    }
    // A quote cut before the checksum (RFC 792 guarantees only 8 transport bytes: TCP's
    // checksum is past them) keeps what it has. Bytes past the outer IP packet are padding.
    let at = l4 + check_off;
    if at + 2 > parsed.l3_offset + parsed.ip_len as usize {
        return Some(none);
    }
    let check: U16 = pkt.load(at)?;
    let check = check.get();
    let mut c = pseudo(check);
    if to.src_port != old.src_port {
        c = update_u16(c, old.src_port, to.src_port);
    }
    if to.dst_port != old.dst_port {
        c = update_u16(c, old.dst_port, to.dst_port);
    }
    if udp {
        c = if quote.tuple.family == IpFamily::V6 as u8 {
            udp_v6_fixup(c)
        } else {
            udp_v4_fixup(check, c)
        };
    }
    if c == check {
        return Some(none);
    }
    *icmp = update_u16(*icmp, check, c);
    Some(L4Check { at, value: c })
}

/// Writes the quoted ports and the transport checksum [`quoted_l4`] computed.
#[inline(always)]
fn store_quoted_l4<P: PacketAccess + ?Sized>(
    pkt: &mut P,
    quote: &QuotedDatagram,
    to: &FlowTuple,
    check: &L4Check,
) -> Option<()> {
    let l4 = quote.l4_offset;
    if l4 == 0
        || !matches!(
            L4Proto::from_u8(quote.tuple.proto),
            Some(L4Proto::Tcp | L4Proto::Udp)
        )
    {
        return Some(());
    }
    if to.src_port != quote.tuple.src_port {
        pkt.store(l4, &U16::new(to.src_port))?;
    }
    if to.dst_port != quote.tuple.dst_port {
        pkt.store(l4 + 2, &U16::new(to.dst_port))?;
    }
    if check.at != 0 {
        pkt.store(check.at, &U16::new(check.value))?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_api::flow::v4_addr;
    use lb_api::wire::testing::{
        icmp_v4_error_frame, icmp_v6_error_frame, tcp_v4_frame, tcp_v6_frame, udp_v4_frame,
        udp_v6_frame,
    };
    use lb_api::wire::{parse, quoted_into, SlicePacket, TcpFlags};
    use proptest::prelude::*;
    use std::vec::Vec;

    /// The IP datagram (no Ethernet header) of a TCP or UDP packet a → b, built from scratch.
    fn datagram(v6: bool, udp: bool, a: [u8; 16], ap: u16, b: [u8; 16], bp: u16) -> Vec<u8> {
        let pl = b"payload!";
        let f = match (v6, udp) {
            (false, false) => tcp_v4_frame(v4_of(&a), ap, v4_of(&b), bp, TcpFlags::ACK, pl),
            (false, true) => udp_v4_frame(v4_of(&a), ap, v4_of(&b), bp, pl),
            (true, false) => tcp_v6_frame(a, ap, b, bp, TcpFlags::ACK, pl),
            (true, true) => udp_v6_frame(a, ap, b, bp, pl),
        };
        f[14..].to_vec()
    }

    /// An ICMP error (port unreachable) from `from` to `to` quoting `quote`.
    fn error(v6: bool, from: [u8; 16], to: [u8; 16], quote: &[u8]) -> Vec<u8> {
        if v6 {
            icmp_v6_error_frame(from, to, 1, 4, [0; 4], quote)
        } else {
            icmp_v4_error_frame(v4_of(&from), v4_of(&to), 3, 3, [0; 4], quote)
        }
    }

    fn translate(frame: &mut [u8], to: &FlowTuple) -> Option<()> {
        let mut pkt = SlicePacket::new(frame);
        let parsed = parse(&pkt).unwrap();
        let mut q = QuotedDatagram::EMPTY;
        quoted_into(&pkt, &parsed, &mut q).unwrap();
        translate_icmp_error(&mut pkt, &parsed, &q, to)
    }

    /// Checks every checksum of an ICMP error with etherparse (an independent implementation):
    /// outer IPv4 header, ICMP/ICMPv6 (pseudo-header included), quoted IPv4 header, and the
    /// quoted transport checksum when the quote holds the whole datagram.
    fn assert_checksums_valid(frame: &[u8], whole_quote: bool) {
        use etherparse::{Icmpv4Header, NetSlice, SlicedPacket, TransportSlice};
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let quote = match (&p.net, &p.transport) {
            (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(icmp))) => {
                let h = ip.header();
                assert_eq!(
                    h.to_header().calc_header_checksum(),
                    h.header_checksum(),
                    "outer IPv4 header checksum"
                );
                let want = Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload()).checksum;
                assert_eq!(want, icmp.checksum(), "ICMP checksum");
                icmp.payload()
            }
            (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) => {
                let h = ip.header();
                assert!(
                    icmp.is_checksum_valid(h.source(), h.destination()),
                    "ICMPv6 checksum"
                );
                icmp.payload()
            }
            other => panic!("not an ICMP error: {other:?}"),
        };
        if quote.first().is_some_and(|b| b >> 4 == 4) {
            let h = etherparse::Ipv4HeaderSlice::from_slice(quote).unwrap();
            assert_eq!(
                h.to_header().calc_header_checksum(),
                h.header_checksum(),
                "quoted IPv4 header checksum"
            );
        }
        if !whole_quote {
            return;
        }
        let inner = SlicedPacket::from_ip(quote).unwrap();
        let (src, dst): (Vec<u8>, Vec<u8>) = match &inner.net {
            Some(NetSlice::Ipv4(ip)) => (
                ip.header().source().to_vec(),
                ip.header().destination().to_vec(),
            ),
            Some(NetSlice::Ipv6(ip)) => (
                ip.header().source().to_vec(),
                ip.header().destination().to_vec(),
            ),
            None => panic!("quote has no IP header"),
        };
        let (want, got) = match (&inner.transport, src.len()) {
            (Some(TransportSlice::Tcp(t)), 4) => (
                t.calc_checksum_ipv4(src[..].try_into().unwrap(), dst[..].try_into().unwrap())
                    .unwrap(),
                t.checksum(),
            ),
            (Some(TransportSlice::Tcp(t)), _) => (
                t.calc_checksum_ipv6(src[..].try_into().unwrap(), dst[..].try_into().unwrap())
                    .unwrap(),
                t.checksum(),
            ),
            (Some(TransportSlice::Udp(u)), 4) => (
                u.to_header()
                    .calc_checksum_ipv4_raw(
                        src[..].try_into().unwrap(),
                        dst[..].try_into().unwrap(),
                        u.payload(),
                    )
                    .unwrap(),
                u.checksum(),
            ),
            (Some(TransportSlice::Udp(u)), _) => (
                u.to_header()
                    .calc_checksum_ipv6_raw(
                        src[..].try_into().unwrap(),
                        dst[..].try_into().unwrap(),
                        u.payload(),
                    )
                    .unwrap(),
                u.checksum(),
            ),
            other => panic!("quote has no TCP/UDP header: {other:?}"),
        };
        assert_eq!(want, got, "quoted transport checksum");
    }

    fn addr(v6: bool) -> impl Strategy<Value = [u8; 16]> {
        any::<[u8; 16]>().prop_map(move |a| if v6 { a } else { v4_addr(v4_of(&a)) })
    }

    fn case() -> impl Strategy<Value = Case> {
        any::<bool>().prop_flat_map(|v6| {
            (
                (addr(v6), 1u16.., addr(v6), 1u16..),
                // Each new field is either unchanged (None) or a new value.
                (
                    proptest::option::of(addr(v6)),
                    proptest::option::of(1u16..),
                    proptest::option::of(addr(v6)),
                    proptest::option::of(1u16..),
                ),
                (any::<bool>(), any::<bool>(), any::<bool>(), addr(v6)),
            )
                .prop_map(
                    move |((a, ap, b, bp), (na, nap, nb, nbp), (udp, cut, peer, router))| Case {
                        v6,
                        udp,
                        cut,
                        peer,
                        router,
                        old: (a, ap, b, bp),
                        new: (
                            na.unwrap_or(a),
                            nap.unwrap_or(ap),
                            nb.unwrap_or(b),
                            nbp.unwrap_or(bp),
                        ),
                    },
                )
        })
    }

    #[derive(Debug, Clone)]
    struct Case {
        v6: bool,
        udp: bool,
        /// Quote only the IP header and 8 transport bytes (RFC 792's minimum).
        cut: bool,
        /// The quoted datagram's destination raised the error (else a router did).
        peer: bool,
        router: [u8; 16],
        old: ([u8; 16], u16, [u8; 16], u16),
        new: ([u8; 16], u16, [u8; 16], u16),
    }

    impl Case {
        /// The error as the receiver gets it, with the quote `(a, ap, b, bp)`.
        fn frame(&self, (a, ap, b, bp): ([u8; 16], u16, [u8; 16], u16)) -> Vec<u8> {
            let mut q = datagram(self.v6, self.udp, a, ap, b, bp);
            if self.cut {
                q.truncate(if self.v6 { 40 } else { 20 } + 8);
            }
            let from = if self.peer { b } else { self.router };
            error(self.v6, from, a, &q)
        }
    }

    proptest! {
        /// The translated error is byte-identical to the error built from scratch around the
        /// translated datagram (outer addresses translated where they were the quote's), and
        /// etherparse accepts every checksum in it.
        #[test]
        fn translated_error_equals_fresh_error(c in case()) {
            // A router that happens to have the quoted destination's address is the peer.
            prop_assume!(c.router != c.old.2);
            let mut frame = c.frame(c.old);
            let (a, ap, b, bp) = c.new;
            let to = FlowTuple {
                src: a, src_port: ap, dst: b, dst_port: bp,
                proto: if c.udp { 17 } else { 6 },
                family: if c.v6 { 6 } else { 4 },
            };
            prop_assert_eq!(translate(&mut frame, &to), Some(()));
            let expect = c.frame(c.new);
            prop_assert_eq!(&frame, &expect);
            assert_checksums_valid(&frame, !c.cut);
        }
    }

    #[test]
    fn router_keeps_its_address_and_padding_is_not_quote() {
        // Time exceeded from a router about a TCP packet client → backend, quoting only the IP
        // header and 8 bytes, in a frame padded to a minimum Ethernet size and beyond.
        let (client, backend, vip, router) =
            ([10, 0, 0, 1], [10, 1, 0, 2], [10, 96, 0, 10], [10, 9, 9, 9]);
        let quoted = tcp_v4_frame(client, 40000, backend, 8080, TcpFlags::SYN, b"");
        let mut f = icmp_v4_error_frame(router, client, 11, 0, [0; 4], &quoted[14..14 + 28]);
        f.extend_from_slice(&[0xee; 16]);
        let to = FlowTuple {
            src: v4_addr(client),
            src_port: 40000,
            dst: v4_addr(vip),
            dst_port: 80,
            proto: 6,
            family: 4,
        };
        translate(&mut f, &to).unwrap();
        let fresh = tcp_v4_frame(client, 40000, vip, 80, TcpFlags::SYN, b"");
        let mut expect = icmp_v4_error_frame(router, client, 11, 0, [0; 4], &fresh[14..14 + 28]);
        expect.extend_from_slice(&[0xee; 16]);
        assert_eq!(f, expect);
        assert_checksums_valid(&f, false);
    }

    #[test]
    fn udp_without_checksum_in_the_quote_stays_without() {
        let (client, backend, vip) = ([10, 0, 0, 1], [10, 1, 0, 5], [10, 96, 0, 10]);
        let mut quoted = udp_v4_frame(client, 53000, backend, 5353, b"q");
        quoted[40..42].copy_from_slice(&[0, 0]);
        let mut f = icmp_v4_error_frame(backend, client, 3, 3, [0; 4], &quoted[14..]);
        let to = FlowTuple {
            src: v4_addr(client),
            src_port: 53000,
            dst: v4_addr(vip),
            dst_port: 53,
            proto: 17,
            family: 4,
        };
        translate(&mut f, &to).unwrap();
        let q = 14 + 20 + 8;
        assert_eq!(
            &f[q + 20 + 6..q + 20 + 8],
            &[0, 0],
            "no checksum stays no checksum"
        );
        assert_eq!(&f[q + 16..q + 20], &vip, "quoted destination translated");
        assert_eq!(
            &f[14 + 12..14 + 16],
            &vip,
            "outer source (the backend) translated"
        );
        assert_checksums_valid(&f, false);
    }

    #[test]
    fn a_packet_that_is_not_the_one_parsed_is_left_unchanged() {
        let quoted = udp_v6_frame([0xfd; 16], 5000, [0xfe; 16], 53, b"x");
        let mut f = icmp_v6_error_frame([0xfe; 16], [0xfd; 16], 1, 4, [0; 4], &quoted[14..]);
        let pkt = SlicePacket::new(&mut f);
        let parsed = parse(&pkt).unwrap();
        let mut q = QuotedDatagram::EMPTY;
        quoted_into(&pkt, &parsed, &mut q).unwrap();
        let to = FlowTuple {
            dst: [0xaa; 16],
            dst_port: 80,
            ..q.tuple
        };
        // The same offsets over a shorter packet: the outer header is still there, the quote not.
        let mut short = f[..14 + 40 + 8 + 20].to_vec();
        let before = short.clone();
        let mut spkt = SlicePacket::new(&mut short);
        assert_eq!(translate_icmp_error(&mut spkt, &parsed, &q, &to), None);
        assert_eq!(short, before);
    }
}
