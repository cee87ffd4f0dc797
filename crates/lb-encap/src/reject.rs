//! Rejecting a packet in place, as kube-proxy rejects connections to a service without
//! endpoints (iptables `REJECT`): a TCP segment gets a reset back to its sender
//! ([`tcp_reset_parsed`]), a UDP datagram an ICMP/ICMPv6 "port unreachable"
//! ([`icmp_port_unreachable_parsed`]), both from the address the packet was sent to.
//!
//! The reset follows RFC 9293 3.10.7.1 for a segment to a closed port (Linux's
//! `tcp_v4_send_reset`): to a segment with ACK, `RST` with the segment's acknowledgement number
//! as sequence number; to one without, `RST|ACK` with sequence number 0 acknowledging the
//! segment's whole sequence space (data, SYN, FIN). A reset is never answered.

use lb_api::checksum;
use lb_api::wire::{EthernetHeader, Ipv4Header, Ipv6Header, Parsed, TcpFlags, TcpHeader};
use lb_api::IpFamily;
use zerocopy::network_endian::{U16, U32};

use crate::mtu::{icmp_error_parsed, IcmpMessage};
use crate::tunnel::AdjustHead;

/// Rewrites the TCP segment in `pkt`, parsed into `p`, into the reset its sender gets from the
/// segment's destination: addresses, ports and MACs swapped, no options, no payload (the packet
/// is cut to its headers with [`AdjustHead::truncate`]).
///
/// Returns `None`, leaving the packet to be dropped, for a segment that is itself a reset, one
/// whose IP header has options or IPv6 extension headers (the reset keeps the fixed header
/// only: it would have to move the TCP header), or when the buffer cannot be cut; the packet
/// may then be partly rewritten.
pub fn tcp_reset_parsed<P: AdjustHead + ?Sized>(pkt: &mut P, p: &Parsed) -> Option<()> {
    if p.tcp_flags & TcpFlags::RST != 0 {
        return None;
    }
    let l3 = p.l3_offset;
    let v6 = p.family() == IpFamily::V6;
    let ip_len = if v6 { Ipv6Header::LEN } else { Ipv4Header::LEN };
    let l4 = l3 + ip_len;
    if p.l4_offset != l4 {
        return None;
    }
    let seg: TcpHeader = pkt.load(l4)?;
    let eth: EthernetHeader = pkt.load(0)?;
    let (seq, ack, flags) = if p.tcp_flags & TcpFlags::ACK != 0 {
        (seg.ack.get(), 0, TcpFlags::RST)
    } else {
        (0, p.tcp_seq_end, TcpFlags::RST | TcpFlags::ACK)
    };
    pkt.truncate(l4 + TcpHeader::LEN)?;
    pkt.store(
        0,
        &EthernetHeader {
            dst: eth.src,
            src: eth.dst,
            ether_type: eth.ether_type,
        },
    )?;
    let t = &p.tuple;
    let (from, to) = (t.dst, t.src);
    let pseudo = if v6 {
        pkt.store(
            l3,
            &Ipv6Header {
                vtc_flow: [0x60, 0, 0, 0],
                payload_len: U16::new(TcpHeader::LEN as u16),
                next_header: 6,
                hop_limit: 64,
                src: from,
                dst: to,
            },
        )?;
        checksum::pseudo_sum_v6(&from, &to, 6, TcpHeader::LEN as u32)
    } else {
        let (from, to) = (
            [from[0], from[1], from[2], from[3]],
            [to[0], to[1], to[2], to[3]],
        );
        let mut ip = Ipv4Header {
            version_ihl: 0x45,
            tos: 0,
            total_len: U16::new((Ipv4Header::LEN + TcpHeader::LEN) as u16),
            id: U16::new(0),
            // Don't fragment, as Linux sends its resets.
            frag_off: U16::new(0x4000),
            ttl: 64,
            proto: 6,
            check: U16::new(0),
            src: from,
            dst: to,
        };
        ip.check = U16::new(checksum::ipv4_header_checksum(
            zerocopy::IntoBytes::as_bytes(&ip),
        ));
        pkt.store(l3, &ip)?;
        checksum::pseudo_sum_v4(from, to, 6, TcpHeader::LEN as u16)
    };
    pkt.store(
        l4,
        &TcpHeader {
            src_port: seg.dst_port,
            dst_port: seg.src_port,
            seq: U32::new(seq),
            ack: U32::new(ack),
            data_offset: 5 << 4,
            flags,
            window: U16::new(0),
            check: U16::new(0),
            urgent: U16::new(0),
        },
    )?;
    let c = checksum::finish(checksum::sum_packet(pkt, l4, TcpHeader::LEN, pseudo)?);
    pkt.store(crate::opaque(l4 + TcpHeader::CHECK_OFFSET), &U16::new(c))
}

/// Rewrites the datagram in `pkt`, parsed into `p`, into the ICMP "port unreachable" (IPv4,
/// type 3 code 3) or ICMPv6 "port unreachable" (type 1 code 4) its sender gets from the
/// datagram's destination, quoting the datagram's start (see
/// [`icmp_too_big`](crate::mtu::icmp_too_big)). A connected UDP socket reports it as
/// `ECONNREFUSED`.
///
/// Returns `None` if the buffer cannot be resized; the packet may then be partly rewritten and
/// must be dropped.
pub fn icmp_port_unreachable_parsed<P: AdjustHead + ?Sized>(pkt: &mut P, p: &Parsed) -> Option<()> {
    let msg = if p.family() == IpFamily::V6 {
        IcmpMessage {
            ty: 1,
            code: 4,
            rest: [0; 4],
        }
    } else {
        IcmpMessage {
            ty: 3,
            code: 3,
            rest: [0; 4],
        }
    };
    let from = p.tuple.dst;
    icmp_error_parsed(pkt, p, &msg, &from)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::HeadroomPacket;
    use lb_api::wire::parse;
    use lb_api::wire::testing::{tcp_v4_frame, tcp_v6_frame, udp_v4_frame};
    use std::vec;
    use std::vec::Vec;

    fn run(frame: &[u8], f: impl Fn(&mut HeadroomPacket<'_>, &Parsed) -> Option<()>) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        buf.extend_from_slice(frame);
        buf.resize(buf.len() + 256, 0);
        let mut pkt = HeadroomPacket::new(&mut buf, 64, frame.len()).unwrap();
        let p = parse(&pkt).unwrap();
        f(&mut pkt, &p).unwrap();
        pkt.bytes().to_vec()
    }

    #[test]
    fn resets_answer_syns_and_acks_and_check_out() {
        use etherparse::{NetSlice, SlicedPacket, TransportSlice};
        let syn = tcp_v4_frame(
            [10, 0, 0, 1],
            40_000,
            [10, 96, 0, 10],
            80,
            TcpFlags::SYN,
            b"",
        );
        let out = run(&syn, |pkt, p| tcp_reset_parsed(pkt, p));
        let s = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(NetSlice::Ipv4(ip)) = s.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source(), [10, 96, 0, 10]);
        assert_eq!(ip.header().destination(), [10, 0, 0, 1]);
        let Some(TransportSlice::Tcp(tcp)) = s.transport else {
            panic!("not TCP")
        };
        assert!(tcp.rst() && tcp.ack() && !tcp.syn());
        assert_eq!((tcp.source_port(), tcp.destination_port()), (80, 40_000));
        let seq_of_syn = u32::from_be_bytes(syn[38..42].try_into().unwrap());
        assert_eq!(tcp.acknowledgment_number(), seq_of_syn.wrapping_add(1));
        assert_eq!(
            tcp.checksum(),
            tcp.to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), &[])
                .unwrap()
        );
        assert_eq!(out.len(), 14 + 20 + 20);

        // To a segment with ACK: RST with its acknowledgement number; over IPv6 too.
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        let mut b = a;
        b[15] = 1;
        let ack = tcp_v6_frame(a, 40_000, b, 80, TcpFlags::ACK, b"data");
        let out = run(&ack, |pkt, p| tcp_reset_parsed(pkt, p));
        let s = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = s.transport else {
            panic!("not TCP")
        };
        assert!(tcp.rst() && !tcp.ack());
        let ack_of_segment = u32::from_be_bytes(ack[14 + 40 + 8..14 + 40 + 12].try_into().unwrap());
        assert_eq!(tcp.sequence_number(), ack_of_segment);
        let Some(NetSlice::Ipv6(ip)) = s.net else {
            panic!("not IPv6")
        };
        assert_eq!(
            tcp.checksum(),
            tcp.to_header()
                .calc_checksum_ipv6(&ip.header().to_header(), &[])
                .unwrap()
        );

        // A reset is not answered.
        let rst = tcp_v4_frame(
            [10, 0, 0, 1],
            40_000,
            [10, 96, 0, 10],
            80,
            TcpFlags::RST,
            b"",
        );
        let mut buf = rst.clone();
        let mut pkt = HeadroomPacket::new(&mut buf, 0, rst.len()).unwrap();
        let p = parse(&pkt).unwrap();
        assert!(tcp_reset_parsed(&mut pkt, &p).is_none());
    }

    #[test]
    fn port_unreachable_comes_from_the_destination_and_quotes_the_datagram() {
        let d = udp_v4_frame([10, 0, 0, 1], 40_000, [10, 96, 0, 10], 53, b"query");
        let out = run(&d, |pkt, p| icmp_port_unreachable_parsed(pkt, p));
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&out[14..]).unwrap();
        assert_eq!(ip.source(), [10, 96, 0, 10]);
        assert_eq!(ip.destination(), [10, 0, 0, 1]);
        assert_eq!((out[34], out[35]), (3, 3));
        // The quote is the datagram but for its checksum field (set to the value checksum
        // completion leaves as it is: see `mtu::icmp_checksum`).
        assert_eq!(&out[42..68], &d[14..40]);
        assert_eq!(&out[70..], &d[42..]);
        assert_eq!(checksum::checksum(&out[34..]), 0);
    }
}
