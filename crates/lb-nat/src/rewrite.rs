//! Address and port rewrites with incremental checksum updates (RFC 1624).

use lb_api::checksum::{udp_v4_fixup, udp_v6_fixup, update_u128, update_u16, update_u32};
use lb_api::flow::{v4_of, IpFamily, L4Proto};
use lb_api::wire::{PacketAccess, Parsed};
use zerocopy::network_endian::U16;

/// Which end of the packet a rewrite changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Source address and port (reverse translation of replies, SNAT).
    Source,
    /// Destination address and port (DNAT to a backend).
    Destination,
}

/// Rewrites the address and the TCP/UDP port of `field` in an IPv4 or IPv6 packet (the family
/// `parsed` found), updating the checksums incrementally: [`rewrite_v4`] or [`rewrite_v6`].
/// `addr` is a 16-byte address field (an IPv4 address in its first 4 bytes).
///
/// Returns `None`, leaving the packet unchanged, if a header cannot be read; never panics.
///
/// Not inlined: in the kernel it is one BPF subprogram with a frame of its own, instead of an
/// IPv4 and an IPv6 copy in the stack frame of every path that rewrites.
#[inline(never)]
pub fn rewrite<P: PacketAccess + ?Sized>(
    pkt: &mut P,
    parsed: &Parsed,
    field: Field,
    addr: &[u8; 16],
    port: u16,
) -> Option<()> {
    if parsed.tuple.family == IpFamily::V6 as u8 {
        rewrite_v6(pkt, parsed, field, addr, port)
    } else {
        rewrite_v4(pkt, parsed, field, v4_of(addr), port)
    }
}

/// Rewrites the IPv6 address and the TCP/UDP port of `field`, updating the L4 checksum
/// (pseudo-header address and port) incrementally; IPv6 has no header checksum, and a UDP
/// checksum that comes out zero is sent as `0xffff` (zero is invalid in IPv6).
///
/// Returns `None`, leaving the packet unchanged, if a header cannot be read; never panics.
#[inline(always)]
pub fn rewrite_v6<P: PacketAccess + ?Sized>(
    pkt: &mut P,
    parsed: &Parsed,
    field: Field,
    addr: &[u8; 16],
    port: u16,
) -> Option<()> {
    // Only the fields that change are read and written: the kernel stack is small.
    let at = parsed.l3_offset
        + match field {
            Field::Source => IPV6_SRC,
            Field::Destination => IPV6_DST,
        };
    let old: [u8; 16] = pkt.load(at)?;
    rewrite_port(
        pkt,
        parsed,
        field,
        port,
        |c| update_u128(c, old, *addr),
        udp_v6_fixup,
    )?;
    pkt.store(at, addr)
}

/// Rewrites the IPv4 address and the TCP/UDP port of `field`, updating the IPv4 header checksum
/// and the L4 checksum (pseudo-header address and port) incrementally.
///
/// Returns `None`, leaving the packet unchanged, if a header cannot be read (the packet changed
/// size since `parsed` was computed); never panics.
#[inline(always)]
pub fn rewrite_v4<P: PacketAccess + ?Sized>(
    pkt: &mut P,
    parsed: &Parsed,
    field: Field,
    addr: [u8; 4],
    port: u16,
) -> Option<()> {
    let at = parsed.l3_offset
        + match field {
            Field::Source => IPV4_SRC,
            Field::Destination => IPV4_DST,
        };
    let old: [u8; 4] = pkt.load(at)?;
    let check: U16 = pkt.load(parsed.l3_offset + IPV4_CHECK)?;
    rewrite_port(
        pkt,
        parsed,
        field,
        port,
        |c| update_u32(c, old, addr),
        |c| c,
    )?;
    pkt.store(at, &addr)?;
    pkt.store(
        parsed.l3_offset + IPV4_CHECK,
        &U16::new(update_u32(check.get(), old, addr)),
    )
}

// Field offsets inside the IP and L4 headers (shared with the ICMP error translation).
pub(crate) const IPV4_CHECK: usize = 10;
pub(crate) const IPV4_SRC: usize = 12;
pub(crate) const IPV4_DST: usize = 16;
pub(crate) const IPV6_SRC: usize = 8;
pub(crate) const IPV6_DST: usize = 24;
pub(crate) const TCP_CHECK: usize = 16;
pub(crate) const UDP_CHECK: usize = 6;

/// Rewrites the TCP/UDP port of `field` and updates the L4 checksum for it and for the address
/// change (`pseudo`, which folds the address into the checksum). `udp_v6` fixes a UDP checksum
/// that comes out zero (IPv6); IPv4 UDP keeps "no checksum" (zero) as it is. Other protocols
/// are left alone.
#[inline(always)]
fn rewrite_port<P: PacketAccess + ?Sized>(
    pkt: &mut P,
    parsed: &Parsed,
    field: Field,
    port: u16,
    pseudo: impl FnOnce(u16) -> u16,
    udp_v6: impl FnOnce(u16) -> u16,
) -> Option<()> {
    let l4 = parsed.l4_offset;
    let port_at = l4
        + match field {
            Field::Source => 0,
            Field::Destination => 2,
        };
    let (check_at, udp) = match L4Proto::from_u8(parsed.tuple.proto) {
        Some(L4Proto::Tcp) => (l4 + TCP_CHECK, false),
        Some(L4Proto::Udp) => (l4 + UDP_CHECK, true),
        _ => return Some(()),
    };
    let old_port: U16 = pkt.load(port_at)?;
    let check: U16 = pkt.load(check_at)?;
    let c = update_u16(pseudo(check.get()), old_port.get(), port);
    let c = if !udp {
        c
    } else if parsed.tuple.family == IpFamily::V6 as u8 {
        udp_v6(c)
    } else {
        udp_v4_fixup(check.get(), c)
    };
    pkt.store(port_at, &U16::new(port))?;
    pkt.store(check_at, &U16::new(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_api::wire::testing::{tcp_v4_frame, tcp_v6_frame, udp_v4_frame, udp_v6_frame};
    use lb_api::wire::{parse, SlicePacket};
    use proptest::prelude::*;

    proptest! {
        /// The incrementally rewritten frame is byte-identical to one built from scratch with
        /// full checksums, and etherparse (an independent parser) accepts its checksums.
        #[test]
        fn rewrite_matches_fresh_frame(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), new in any::<[u8; 4]>(),
                                       sp in 1u16.., dp in 1u16.., np in 1u16.., flags in any::<u8>(),
                                       payload in proptest::collection::vec(any::<u8>(), 0..40), udp in any::<bool>()) {
            let build = |d: [u8; 4], p: u16| if udp { udp_v4_frame(src, sp, d, p, &payload) }
                                             else { tcp_v4_frame(src, sp, d, p, flags, &payload) };
            let mut frame = build(dst, dp);
            let mut pkt = SlicePacket::new(&mut frame);
            let parsed = parse(&pkt).unwrap();
            rewrite_v4(&mut pkt, &parsed, Field::Destination, new, np).unwrap();
            let expect = build(new, np);
            // UDP: 0x0000 and 0xffff are the same checksum; a fresh build never emits 0.
            prop_assert_eq!(&frame[..], &expect[..]);
            let sliced = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
            prop_assert!(sliced.net.is_some());
        }
    }

    proptest! {
        /// IPv6: the incrementally rewritten frame equals one built from scratch, both ends.
        #[test]
        fn rewrite_v6_matches_fresh_frame(src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), new in any::<[u8; 16]>(),
                                          sp in 1u16.., dp in 1u16.., np in 1u16.., flags in any::<u8>(),
                                          payload in proptest::collection::vec(any::<u8>(), 0..40),
                                          udp in any::<bool>(), source in any::<bool>()) {
            let build = |s: [u8; 16], sp: u16, d: [u8; 16], dp: u16| if udp { udp_v6_frame(s, sp, d, dp, &payload) }
                                             else { tcp_v6_frame(s, sp, d, dp, flags, &payload) };
            let mut frame = build(src, sp, dst, dp);
            let mut pkt = SlicePacket::new(&mut frame);
            let parsed = parse(&pkt).unwrap();
            let (field, expect) = if source { (Field::Source, build(new, np, dst, dp)) }
                                  else { (Field::Destination, build(src, sp, new, np)) };
            rewrite(&mut pkt, &parsed, field, &new, np).unwrap();
            prop_assert_eq!(&frame[..], &expect[..]);
        }
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut f = udp_v4_frame([1, 1, 1, 1], 5, [2, 2, 2, 2], 6, b"x");
        f[40] = 0;
        f[41] = 0;
        let mut pkt = SlicePacket::new(&mut f);
        let parsed = parse(&pkt).unwrap();
        rewrite_v4(&mut pkt, &parsed, Field::Source, [3, 3, 3, 3], 7).unwrap();
        assert_eq!(&f[40..42], &[0, 0]);
    }
}
