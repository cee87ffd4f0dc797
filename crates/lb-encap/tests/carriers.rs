//! Geneve, DSR carriers and MTU errors checked against etherparse and smoltcp.

use etherparse::{Icmpv4Type, Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};
use lb_api::counters::Counters;
use lb_api::counters::{Counter, CounterSnapshot};
use lb_api::flow::v4_addr;
use lb_api::wire::testing::{tcp_v4_frame, udp_v4_frame};
use lb_api::wire::{parse, SlicePacket};
use lb_encap::dsr::{dsr_extract, dsr_v4_insert, dsr_v6_insert, DsrTarget};
use lb_encap::geneve::{geneve_decap, geneve_encap, GeneveOption, GENEVE_PORT};
use lb_encap::mtu::icmp_too_big;
use lb_encap::{vxlan_encap, AdjustHead, EncapError, HeadroomPacket, OuterAddrs, TunnelConfig};
use proptest::prelude::*;

const HEADROOM: usize = 128;

fn with_headroom(frame: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; HEADROOM + frame.len()];
    b[HEADROOM..].copy_from_slice(frame);
    b
}

/// An Ethernet/IPv6/TCP frame built by etherparse.
fn tcp_v6_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    let mut s = [0u8; 16];
    s[0] = 0xfd;
    s[15] = 1;
    let mut d = s;
    d[15] = 2;
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6(s, d, 64)
        .tcp(40000, 80, 1, 1000)
        .write(&mut f, payload)
        .unwrap();
    f
}

fn geneve_cfg() -> TunnelConfig {
    let mut c = TunnelConfig::new(
        0x00ab_cdef,
        OuterAddrs::V4 {
            src: [192, 168, 1, 1],
            dst: [192, 168, 1, 2],
        },
        [2, 0, 0, 0, 0, 0xa],
        [2, 0, 0, 0, 0, 0xb],
    );
    c.port = GENEVE_PORT;
    c
}

/// Geneve frame carrying the DSR option and one other option.
pub fn geneve_frame(inner: &[u8], target: &DsrTarget) -> Vec<u8> {
    let (d, n) = target.geneve_data();
    let opts = [
        GeneveOption {
            class: 0x0102,
            ty: 0x80,
            data: &[1, 2, 3, 4],
        },
        GeneveOption {
            class: lb_encap::dsr::DSR_GENEVE_CLASS,
            ty: lb_encap::dsr::DSR_GENEVE_TYPE,
            data: &d[..n],
        },
    ];
    let mut b = with_headroom(inner);
    let mut p = HeadroomPacket::new(&mut b, HEADROOM, inner.len()).unwrap();
    geneve_encap(&mut p, &geneve_cfg(), &opts, 99).unwrap();
    p.bytes().to_vec()
}

proptest! {
    #[test]
    fn geneve_round_trip_and_dsr_option(payload in proptest::collection::vec(any::<u8>(), 0..200),
                                        port in any::<u16>(), six in any::<bool>()) {
        let inner = tcp_v4_frame([10, 0, 0, 1], 1234, [10, 1, 0, 2], 8080, 0x10, &payload);
        let target = if six { DsrTarget::v6([0xfd; 16], port) } else { DsrTarget::v4([10, 96, 0, 10], port) };
        let out = geneve_frame(&inner, &target);
        // etherparse sees a UDP datagram to 6081 whose payload ends with the inner frame.
        let s = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(TransportSlice::Udp(u)) = s.transport else { panic!("not UDP") };
        prop_assert_eq!(u.destination_port(), GENEVE_PORT);
        prop_assert!(u.payload().ends_with(&inner));
        let mut b = out.clone();
        let n = b.len();
        let mut p = HeadroomPacket::new(&mut b, 0, n).unwrap();
        let info = geneve_decap(&mut p, GENEVE_PORT).unwrap();
        prop_assert_eq!(info.vni, 0x00ab_cdef);
        prop_assert_eq!(info.dsr, Some(target));
        prop_assert_eq!(p.bytes(), &inner[..]);
    }

    #[test]
    fn dsr_v4_option_is_a_valid_ipv4_option(addr in any::<[u8; 4]>(), port in any::<u16>(),
                                            payload in proptest::collection::vec(any::<u8>(), 0..100)) {
        let f = tcp_v4_frame([10, 0, 0, 1], 40000, [10, 1, 0, 2], 8080, 0x18, &payload);
        let mut b = with_headroom(&f);
        let parsed = parse(&SlicePacket::new(&mut f.clone())).unwrap();
        let mut p = HeadroomPacket::new(&mut b, HEADROOM, f.len()).unwrap();
        let t = DsrTarget::v4(addr, port);
        dsr_v4_insert(&mut p, &parsed, &t, 1500).unwrap();
        let out = p.bytes().to_vec();
        let s = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &s.net else { panic!() };
        let h = ip.header().to_header();
        prop_assert_eq!(h.header_checksum, h.calc_header_checksum());
        let p4 = port.to_be_bytes();
        prop_assert_eq!(h.options.as_slice(), &[0x9a, 8, p4[0], p4[1], addr[0], addr[1], addr[2], addr[3]][..]);
        // The TCP checksum still verifies (smoltcp) and the payload is untouched.
        let Some(TransportSlice::Tcp(tcp)) = &s.transport else { panic!() };
        let want = tcp.to_header().calc_checksum_ipv4(&h, tcp.payload()).unwrap();
        prop_assert_eq!(tcp.checksum(), want);
        prop_assert_eq!(tcp.payload(), &payload[..]);
        let mut o = out.clone();
        let back = parse(&SlicePacket::new(&mut o)).unwrap();
        prop_assert_eq!(dsr_extract(&SlicePacket::new(&mut o.clone()), &back), Some(t));
    }

    #[test]
    fn dsr_v6_dest_option(addr in any::<[u8; 16]>(), port in any::<u16>(),
                          payload in proptest::collection::vec(any::<u8>(), 0..100)) {
        let f = tcp_v6_frame(&payload);
        let mut b = with_headroom(&f);
        let parsed = parse(&SlicePacket::new(&mut f.clone())).unwrap();
        let mut p = HeadroomPacket::new(&mut b, HEADROOM, f.len()).unwrap();
        let t = DsrTarget::v6(addr, port);
        dsr_v6_insert(&mut p, &parsed, &t, 1500).unwrap();
        let out = p.bytes().to_vec();
        let s = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &s.net else { panic!() };
        let ext = etherparse::Ipv6Extensions::from_slice(ip.header().next_header(), ip.extensions().slice()).unwrap().0;
        let dst = ext.destination_options.expect("a destination options header");
        let p6 = port.to_be_bytes();
        let mut want = vec![0x1b, 20];
        want.extend_from_slice(&addr);
        want.extend_from_slice(&[p6[0], p6[1], 0, 0]);
        prop_assert_eq!(dst.payload(), &want[..]);
        let Some(TransportSlice::Tcp(tcp)) = &s.transport else { panic!() };
        let want = tcp.to_header().calc_checksum_ipv6(&ip.header().to_header(), tcp.payload()).unwrap();
        prop_assert_eq!(tcp.checksum(), want);
        let mut o = out.clone();
        let back = parse(&SlicePacket::new(&mut o)).unwrap();
        prop_assert_eq!(dsr_extract(&SlicePacket::new(&mut o.clone()), &back), Some(t));
    }
}

/// What [`vxlan_encap_or_too_big`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MtuOutcome {
    /// The packet is encapsulated: send it to the tunnel peer.
    Encapsulated,
    /// The packet is now an ICMP error to its sender (counted): send it back.
    TooBigSent,
}

/// VXLAN-encapsulates `pkt`, or, if that would exceed the MTU, turns it into the ICMP error for
/// its sender with the inner MTU the encapsulation reported, and bumps `mtu_exceeded`: the
/// encapsulation's MTU error feeding `icmp_too_big`. (The pipeline checks the carrier's size
/// before it encapsulates, then calls `icmp_too_big_parsed` the same way.)
fn vxlan_encap_or_too_big<P: AdjustHead + ?Sized, C: Counters + ?Sized>(
    pkt: &mut P,
    cfg: &TunnelConfig,
    flow_hash: u32,
    from: [u8; 16],
    counters: &mut C,
) -> Result<MtuOutcome, EncapError> {
    match vxlan_encap(pkt, cfg, flow_hash) {
        Ok(()) => Ok(MtuOutcome::Encapsulated),
        Err(EncapError::MtuExceeded { inner_mtu, .. }) => {
            icmp_too_big(pkt, inner_mtu, from).ok_or(EncapError::Malformed)?;
            counters.bump(Counter::MtuExceeded.slot());
            Ok(MtuOutcome::TooBigSent)
        }
        Err(e) => Err(e),
    }
}

#[test]
fn too_big_becomes_icmp_frag_needed_with_the_right_quote() {
    let inner = udp_v4_frame([10, 0, 0, 1], 5000, [10, 1, 0, 2], 53, &[7u8; 1472]);
    let mut b = with_headroom(&inner);
    let mut p = HeadroomPacket::new(&mut b, HEADROOM, inner.len()).unwrap();
    let mut counters = CounterSnapshot::default();
    let cfg = geneve_cfg();
    let out = vxlan_encap_or_too_big(&mut p, &cfg, 1, v4_addr([10, 0, 0, 254]), &mut counters);
    assert_eq!(out, Ok(MtuOutcome::TooBigSent));
    assert_eq!(counters.get(Counter::MtuExceeded), 1);
    let bytes = p.bytes().to_vec();
    // smoltcp verifies the checksums; etherparse names the message.
    let ip = smoltcp::wire::Ipv4Packet::new_checked(&bytes[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(ip.dst_addr().octets(), [10, 0, 0, 1]);
    let icmp = smoltcp::wire::Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum());
    let s = SlicedPacket::from_ethernet(&bytes).unwrap();
    let Some(TransportSlice::Icmpv4(i)) = s.transport else {
        panic!()
    };
    assert_eq!(
        i.icmp_type(),
        Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1450 }
        )
    );
    // The quote: the original IP header and the start of its UDP header (its checksum field
    // aside: see `quoted_checksum_survives_completion`).
    assert_eq!(&i.payload()[..26], &inner[14..40]);
    // IP header + ICMP header + the bounded quote.
    assert_eq!(bytes.len(), 14 + 20 + 8 + lb_encap::mtu::QUOTE_MAX);
    assert_eq!(&bytes[0..6], &inner[6..12], "back to the sender's MAC");
}

/// What a device that completes a partial checksum does (Linux's `skb_checksum_help`): sums
/// the bytes from the checksum's start to the end of the packet, field included, and writes
/// the folded complement into the field (`0xffff` for a zero result).
fn complete_as_a_device(frame: &mut [u8], csum_start: usize, csum_offset: usize) {
    let sum = lb_api::checksum::sum(&frame[csum_start..], 0);
    let c = match lb_api::checksum::finish(sum) {
        0 => 0xffff,
        c => c,
    };
    frame[csum_start + csum_offset..csum_start + csum_offset + 2].copy_from_slice(&c.to_be_bytes());
}

/// A packet with a partial checksum (a local sender's, checksum offload) stays marked so when TC
/// turns it into the ICMP error, and the mark points at its transport header, inside the quote:
/// a device that completes checksums writes into the quote after the error's checksum was
/// made. The quoted field is set to the value completion leaves as it is, so the error's
/// checksum holds either way (IPv4/UDP and IPv6/TCP, many payloads).
#[test]
fn quoted_checksum_survives_completion() {
    for seed in 0u8..64 {
        let payload: Vec<u8> = (0..1472u16)
            .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
            .collect();
        for v6 in [false, true] {
            let inner = if v6 {
                tcp_v6_frame(&payload[..1400])
            } else {
                udp_v4_frame([10, 0, 0, 1], 5000, [10, 1, 0, 2], 53, &payload)
            };
            let mut b = with_headroom(&inner);
            let mut p = HeadroomPacket::new(&mut b, HEADROOM, inner.len()).unwrap();
            let mut from = [0u8; 16];
            from[..4].copy_from_slice(&[10, 0, 0, 254]);
            if v6 {
                from = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe];
            }
            let mut counters = CounterSnapshot::default();
            let out = vxlan_encap_or_too_big(&mut p, &geneve_cfg(), 1, from, &mut counters);
            assert_eq!(out, Ok(MtuOutcome::TooBigSent));
            let mut bytes = p.bytes().to_vec();
            let (ip_len, l4_field) = if v6 { (40, 16) } else { (20, 6) };
            let quoted_l4 = 14 + ip_len + 8 + ip_len;
            let before = bytes.clone();
            complete_as_a_device(&mut bytes, quoted_l4, l4_field);
            assert_eq!(
                bytes, before,
                "seed {seed} v6 {v6}: completion changed the quote"
            );
            if v6 {
                let ip = smoltcp::wire::Ipv6Packet::new_checked(&bytes[14..]).unwrap();
                let icmp = smoltcp::wire::Icmpv6Packet::new_checked(ip.payload()).unwrap();
                assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
            } else {
                let ip = smoltcp::wire::Ipv4Packet::new_checked(&bytes[14..]).unwrap();
                let icmp = smoltcp::wire::Icmpv4Packet::new_checked(ip.payload()).unwrap();
                assert!(icmp.verify_checksum(), "seed {seed}");
            }
        }
    }
}

#[test]
fn too_big_v6_becomes_packet_too_big() {
    let inner = tcp_v6_frame(&[1u8; 1400]);
    let mut b = with_headroom(&inner);
    let mut p = HeadroomPacket::new(&mut b, HEADROOM, inner.len()).unwrap();
    let mut from = [0u8; 16];
    from[0] = 0xfd;
    from[15] = 0xfe;
    let mut counters = CounterSnapshot::default();
    let out = vxlan_encap_or_too_big(&mut p, &geneve_cfg(), 1, from, &mut counters);
    assert_eq!(out, Ok(MtuOutcome::TooBigSent));
    let bytes = p.bytes().to_vec();
    let ip = smoltcp::wire::Ipv6Packet::new_checked(&bytes[14..]).unwrap();
    let icmp = smoltcp::wire::Icmpv6Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
    let s = SlicedPacket::from_ethernet(&bytes).unwrap();
    let Some(TransportSlice::Icmpv6(i)) = s.transport else {
        panic!()
    };
    assert_eq!(i.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1450 });
    assert_eq!(&i.payload()[..48], &inner[14..62]);
    assert_eq!(bytes.len(), 14 + 40 + 8 + lb_encap::mtu::QUOTE_MAX);
}

#[test]
fn dsr_v4_respects_the_mtu() {
    let f = tcp_v4_frame([10, 0, 0, 1], 1, [10, 1, 0, 2], 2, 0x10, &[0u8; 1460]);
    let parsed = parse(&SlicePacket::new(&mut f.clone())).unwrap();
    let mut b = with_headroom(&f);
    let mut p = HeadroomPacket::new(&mut b, HEADROOM, f.len()).unwrap();
    assert_eq!(
        dsr_v4_insert(&mut p, &parsed, &DsrTarget::v4([1, 2, 3, 4], 80), 1500),
        Err(EncapError::MtuExceeded {
            needed: 1508,
            inner_mtu: 1492
        })
    );
    assert_eq!(p.bytes(), &f[..], "unchanged");
}

/// The outer UDP checksum [`vxlan_encap_offloaded`] derives from the inner transport checksum
/// equals the one summed over every byte ([`vxlan_encap`]), and smoltcp accepts it: TCP and
/// UDP, even and odd lengths, with and without link padding after the inner datagram.
#[test]
fn offloaded_ipv6_outer_checksum_equals_the_full_sum() {
    use lb_api::checksum::pseudo_sum_v6;
    use lb_api::wire::testing::udp_v6_frame;
    use lb_encap::{vxlan_encap, vxlan_encap_offloaded, InnerChecksum};
    let mut cfg = TunnelConfig::new(
        42,
        OuterAddrs::V6 {
            src: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        },
        [2, 0, 0, 0, 0, 0xa],
        [2, 0, 0, 0, 0, 0xb],
    );
    cfg.mtu = 9000;
    let a = [0xfd, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
    let b = [0xfd, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    let mut checked = 0;
    for len in [0usize, 1, 2, 7, 100, 1201] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        for (proto, frame) in [
            (6u8, tcp_v6_frame(&payload)),
            (17u8, udp_v6_frame(a, 5353, b, 53, &payload)),
        ] {
            for pad in [0usize, 1, 6] {
                let mut frame = frame.clone();
                let ip_end = frame.len();
                frame.extend((0..pad).map(|i| 0xa0 + i as u8));
                let parsed = parse(&SlicePacket::new(&mut frame.clone())).unwrap();
                let l4_len = (ip_end - parsed.l4_offset) as u32;
                let src: [u8; 16] = frame[22..38].try_into().unwrap();
                let dst: [u8; 16] = frame[38..54].try_into().unwrap();
                let inner = InnerChecksum::new(
                    parsed.l4_offset,
                    ip_end,
                    pseudo_sum_v6(&src, &dst, proto, l4_len),
                );

                let mut full = with_headroom(&frame);
                let mut p = HeadroomPacket::new(&mut full, HEADROOM, frame.len()).unwrap();
                vxlan_encap(&mut p, &cfg, 7).unwrap();
                let want = p.bytes().to_vec();

                let mut off = with_headroom(&frame);
                let mut p = HeadroomPacket::new(&mut off, HEADROOM, frame.len()).unwrap();
                vxlan_encap_offloaded(&mut p, &cfg, 7, &inner).unwrap();
                let got = p.bytes().to_vec();
                assert_eq!(got, want, "proto {proto} payload {len} padding {pad}");

                let ip = smoltcp::wire::Ipv6Packet::new_checked(&got[14..]).unwrap();
                let udp = smoltcp::wire::UdpPacket::new_checked(ip.payload()).unwrap();
                assert!(udp.verify_checksum(
                    &smoltcp::wire::IpAddress::Ipv6(ip.src_addr()),
                    &smoltcp::wire::IpAddress::Ipv6(ip.dst_addr()),
                ));
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 6 * 2 * 3);
}
