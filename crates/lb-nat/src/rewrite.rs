//! Address and port rewrites with incremental checksum updates (RFC 1624).

use lb_api::checksum::{field_diff, l4_flags, update_u32};
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
/// (pseudo-header address and port) through [`PacketAccess::l4_csum_replace`], which applies
/// the packet's checksum state (complete or partial); IPv6 has no header checksum, and a UDP
/// checksum that comes out zero is sent as `0xffff` (zero is invalid in IPv6).
///
/// Returns `None` if a header cannot be read; never panics.
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
    if let Some((check_at, flags)) = l4_checksum(parsed) {
        let diff = field_diff(pkt, at, addr)?;
        pkt.l4_csum_replace(
            check_at,
            0,
            diff,
            flags | l4_flags::DIFF | l4_flags::PSEUDO_HDR,
        )?;
        rewrite_port(pkt, parsed, field, port, check_at, flags)?;
    }
    pkt.store(at, addr)
}

/// Rewrites the IPv4 address and the TCP/UDP port of `field`, updating the IPv4 header checksum
/// and, through [`PacketAccess::l4_csum_replace`], the L4 checksum (pseudo-header address and
/// port) per the packet's checksum state.
///
/// Returns `None` if a header cannot be read (the packet changed size since `parsed` was
/// computed); never panics.
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
    if let Some((check_at, flags)) = l4_checksum(parsed) {
        pkt.l4_csum_replace(
            check_at,
            u32::from_be_bytes(old),
            u32::from_be_bytes(addr),
            flags | l4_flags::SIZE_4 | l4_flags::PSEUDO_HDR,
        )?;
        rewrite_port(pkt, parsed, field, port, check_at, flags)?;
    }
    // The header checksum is always complete: updated in place (which keeps a
    // `CHECKSUM_COMPLETE` skb's sum right, the change and its update cancelling out).
    let check: U16 = pkt.load(parsed.l3_offset + IPV4_CHECK)?;
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

/// The bit of [`l4_flags::FOUND_PARTIAL`].
const FOUND_PARTIAL_SHIFT: u32 = l4_flags::FOUND_PARTIAL.trailing_zeros();

/// Where the packet's TCP/UDP checksum is and the [`l4_flags`] its updates take: UDP over IPv4
/// keeps "no checksum" (zero) as it is, UDP over IPv6 has no such value; both send a computed
/// zero as `0xffff`. `None` for other protocols, whose checksums the rewrites leave alone.
#[inline(always)]
fn l4_checksum(parsed: &Parsed) -> Option<(usize, u64)> {
    let v6 = parsed.tuple.family == IpFamily::V6 as u8;
    // Arithmetic, not a branch: the verifier would walk every rewrite twice.
    let family = if v6 { l4_flags::IPV6 } else { 0 }
        | (u64::from(parsed.checksum_partial) << FOUND_PARTIAL_SHIFT);
    match L4Proto::from_u8(parsed.tuple.proto) {
        Some(L4Proto::Tcp) => Some((parsed.l4_offset + TCP_CHECK, family)),
        Some(L4Proto::Udp) => {
            let zero = if v6 {
                l4_flags::MARK_MANGLED_0 | l4_flags::MARK_ENFORCE
            } else {
                l4_flags::MARK_MANGLED_0
            };
            Some((parsed.l4_offset + UDP_CHECK, family | zero))
        }
        _ => None,
    }
}

/// Rewrites the TCP/UDP port of `field` and updates the L4 checksum at `check_at` for it
/// (`flags` from [`l4_checksum`]).
#[inline(always)]
fn rewrite_port<P: PacketAccess + ?Sized>(
    pkt: &mut P,
    parsed: &Parsed,
    field: Field,
    port: u16,
    check_at: usize,
    flags: u64,
) -> Option<()> {
    let port_at = parsed.l4_offset
        + match field {
            Field::Source => 0,
            Field::Destination => 2,
        };
    let old_port: U16 = pkt.load(port_at)?;
    pkt.l4_csum_replace(
        check_at,
        u32::from(old_port.get()),
        u32::from(port),
        flags | l4_flags::SIZE_2,
    )?;
    pkt.store(port_at, &U16::new(port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_api::wire::testing::{
        complete_partial_checksum, make_checksum_partial, tcp_v4_frame, tcp_v6_frame, udp_v4_frame,
        udp_v6_frame,
    };
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

    /// Where the frame's transport checksum is.
    fn check_offset(frame: &mut [u8]) -> usize {
        let p = parse(&SlicePacket::new(frame)).unwrap();
        p.l4_offset
            + if p.tuple.proto == 6 {
                TCP_CHECK
            } else {
                UDP_CHECK
            }
    }

    proptest! {
        /// A partial checksum (the seed a local sender leaves, `CHECKSUM_PARTIAL`) rewritten
        /// per the partial rule, then completed as the device completes it, gives the checksum
        /// of a frame built from scratch with the new address and port: IPv4 and IPv6, TCP
        /// and UDP, source and destination.
        #[test]
        fn partial_rewrite_completes_to_fresh_frame(src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), new in any::<[u8; 16]>(),
                                                   sp in 1u16.., dp in 1u16.., np in 1u16.., flags in any::<u8>(),
                                                   payload in proptest::collection::vec(any::<u8>(), 0..40),
                                                   udp in any::<bool>(), v6 in any::<bool>(), source in any::<bool>()) {
            let build = |s: [u8; 16], sp: u16, d: [u8; 16], dp: u16| match (v6, udp) {
                (true, true) => udp_v6_frame(s, sp, d, dp, &payload),
                (true, false) => tcp_v6_frame(s, sp, d, dp, flags, &payload),
                (false, true) => udp_v4_frame(v4_of(&s), sp, v4_of(&d), dp, &payload),
                (false, false) => tcp_v4_frame(v4_of(&s), sp, v4_of(&d), dp, flags, &payload),
            };
            let v4new = { let mut a = [0u8; 16]; a[..4].copy_from_slice(&new[..4]); a };
            let new = if v6 { new } else { v4new };
            let (src, dst) = if v6 { (src, dst) } else {
                let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
                a[..4].copy_from_slice(&src[..4]);
                b[..4].copy_from_slice(&dst[..4]);
                (a, b)
            };
            let mut frame = build(src, sp, dst, dp);
            make_checksum_partial(&mut frame);
            let check_at = check_offset(&mut frame);
            let mut pkt = SlicePacket::with_partial_checksum(&mut frame, true);
            let parsed = parse(&pkt).unwrap();
            let (field, mut expect) = if source { (Field::Source, build(new, np, dst, dp)) }
                                      else { (Field::Destination, build(src, sp, new, np)) };
            rewrite(&mut pkt, &parsed, field, &new, np).unwrap();
            // The seed is right for the new addresses: it completes to the fresh frame's checksum.
            complete_partial_checksum(&mut frame);
            if udp && expect[check_at..check_at + 2] == [0, 0] { expect[check_at..check_at + 2].copy_from_slice(&[0xff, 0xff]); }
            // 0x0000 and 0xffff are one checksum (one's complement).
            let norm = |f: &mut [u8]| if f[check_at..check_at + 2] == [0xff, 0xff] { f[check_at..check_at + 2].copy_from_slice(&[0, 0]); };
            norm(&mut frame); norm(&mut expect);
            prop_assert_eq!(&frame[..], &expect[..]);
        }
    }

    #[test]
    fn partial_port_change_leaves_the_seed() {
        let mut f = tcp_v4_frame([1, 1, 1, 1], 5, [2, 2, 2, 2], 6, 0x02, b"x");
        make_checksum_partial(&mut f);
        let check_at = check_offset(&mut f);
        let seed = [f[check_at], f[check_at + 1]];
        let mut pkt = SlicePacket::with_partial_checksum(&mut f, true);
        let parsed = parse(&pkt).unwrap();
        // Same address, another port: the seed covers no port.
        rewrite_v4(&mut pkt, &parsed, Field::Source, [1, 1, 1, 1], 7).unwrap();
        assert_eq!([f[check_at], f[check_at + 1]], seed);
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
