//! The parser against etherparse on generated frames: VLAN tags, IPv4, IPv6 with extension
//! headers, TCP and UDP. Both must agree on offsets and tuple wherever both accept.

mod strategies;

use etherparse::{LaxSlicedPacket, NetSlice, SlicedPacket, TransportSlice};
use lb_api::wire::{parse, quoted_tuple, Fragment, SlicePacket};
use proptest::prelude::*;
use strategies::{build, frame_spec};

proptest! {
    #[test]
    fn agrees_with_etherparse(spec in frame_spec()) {
        let mut f = build(&spec);
        let ours = parse(&SlicePacket::new(&mut f.clone())).expect("we parse what etherparse emits");
        let theirs = SlicedPacket::from_ethernet(&f).unwrap();
        prop_assert_eq!(ours.vlan_count as usize, spec.vlans.len());
        for (i, v) in spec.vlans.iter().enumerate() {
            prop_assert_eq!(ours.vlan_tci[i] & 0x0fff, *v);
        }
        match theirs.net.as_ref().unwrap() {
            NetSlice::Ipv4(ip) => {
                prop_assert_eq!(&ours.tuple.src[..4], &ip.header().source()[..]);
                prop_assert_eq!(&ours.tuple.dst[..4], &ip.header().destination()[..]);
            }
            NetSlice::Ipv6(ip) => {
                prop_assert_eq!(ours.tuple.src, ip.header().source());
                prop_assert_eq!(ours.tuple.dst, ip.header().destination());
                prop_assert_eq!(ours.ipv6_dest_opts != 0, spec.dest_opts);
            }
        }
        let (sp, dp, hdr_start) = match theirs.transport.as_ref().unwrap() {
            TransportSlice::Tcp(t) => (t.source_port(), t.destination_port(), t.slice().as_ptr()),
            TransportSlice::Udp(u) => (u.source_port(), u.destination_port(), u.slice().as_ptr()),
            other => panic!("{other:?}"),
        };
        prop_assert_eq!((ours.tuple.src_port, ours.tuple.dst_port), (sp, dp));
        if let TransportSlice::Tcp(t) = theirs.transport.as_ref().unwrap() {
            let end = t
                .sequence_number()
                .wrapping_add(t.payload().len() as u32)
                .wrapping_add(u32::from(t.syn()) + u32::from(t.fin()));
            prop_assert_eq!((ours.tcp_seq, ours.tcp_seq_end), (t.sequence_number(), end));
        }
        prop_assert_eq!(ours.l4_offset, hdr_start as usize - f.as_ptr() as usize);
        prop_assert_eq!(ours.fragment, Fragment::None);
        let _ = &mut f;
    }

    #[test]
    fn never_panics_and_agrees_on_acceptance_of_truncations(spec in frame_spec(), cut in 0usize..200) {
        let f = build(&spec);
        let cut = cut.min(f.len());
        let mut g = f[..cut].to_vec();
        let ours = parse(&SlicePacket::new(&mut g));
        let theirs = SlicedPacket::from_ethernet(&f[..cut]);
        if cut < f.len() {
            // Lengths in the IP header no longer match: we must refuse (etherparse's strict
            // mode does too).
            prop_assert!(ours.is_err(), "{:?}", ours);
            prop_assert!(theirs.is_err() || LaxSlicedPacket::from_ethernet(&f[..cut]).is_ok());
        }
    }
}

#[test]
fn icmp_error_quote_gives_the_inner_tuple() {
    use etherparse::{IcmpEchoHeader, Icmpv4Type, PacketBuilder};
    // Inner: the TCP SYN 10.0.0.1:40000 → 10.96.0.10:80, as quoted by a router.
    let inner =
        lb_api::wire::testing::tcp_v4_frame([10, 0, 0, 1], 40000, [10, 96, 0, 10], 80, 2, b"");
    let quote = &inner[14..14 + 28];
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([10, 0, 0, 254], [10, 0, 0, 1], 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut f, quote)
        .unwrap();
    let p = parse(&SlicePacket::new(&mut f.clone())).unwrap();
    assert_eq!((p.icmp.ty, p.icmp.code), (3, 4));
    let t = quoted_tuple(&SlicePacket::new(&mut f), &p).unwrap();
    assert_eq!(
        (&t.src[..4], t.src_port, &t.dst[..4], t.dst_port),
        (&[10, 0, 0, 1][..], 40000, &[10, 96, 0, 10][..], 80)
    );
    // Echo carries the identifier in the ports.
    let mut e = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .icmpv4(Icmpv4Type::EchoRequest(IcmpEchoHeader {
            id: 0x4242,
            seq: 1,
        }))
        .write(&mut e, b"ping")
        .unwrap();
    let p = parse(&SlicePacket::new(&mut e)).unwrap();
    assert_eq!((p.tuple.src_port, p.icmp.quote_offset), (0x4242, 0));
}

#[test]
fn fragments_first_and_later() {
    let mut f =
        lb_api::wire::testing::udp_v4_frame([10, 0, 0, 1], 5, [10, 0, 0, 2], 53, b"abcdefgh");
    // MF set, offset 0: first fragment, ports known.
    f[20] = 0x20;
    f[21] = 0;
    lb_api::wire::testing::fix_ipv4_checksum(&mut f);
    let p = parse(&SlicePacket::new(&mut f.clone())).unwrap();
    assert_eq!((p.fragment, p.tuple.dst_port), (Fragment::First, 53));
    // Offset 1 (8 bytes): a later fragment, no ports.
    f[21] = 1;
    lb_api::wire::testing::fix_ipv4_checksum(&mut f);
    let p = parse(&SlicePacket::new(&mut f)).unwrap();
    assert_eq!((p.fragment, p.tuple.dst_port), (Fragment::Later, 0));
}

/// An Ethernet/IPv6 frame with the given raw extension-header chain (each entry: its own
/// next-header value is taken from the following entry; the last points at TCP).
fn v6_with_ext(chain: &[u8]) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&1234u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 5 << 4;
    let mut ext = Vec::new();
    for (i, _) in chain.iter().enumerate() {
        let next = chain.get(i + 1).copied().unwrap_or(6);
        if chain[i] == 44 {
            ext.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 1]);
        } else {
            ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
    }
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((ext.len() + tcp.len()) as u16).to_be_bytes());
    f.push(chain.first().copied().unwrap_or(6));
    f.push(64);
    f.extend_from_slice(&[0xfd; 16]);
    f.extend_from_slice(&[0xfe; 16]);
    f.extend_from_slice(&ext);
    f.extend_from_slice(&tcp);
    f
}

#[test]
fn ipv6_extension_walk_is_bounded_and_ordered() {
    use lb_api::counters::{Counter, DropReason};
    use lb_api::wire::{Disposition, ParseErrorKind};
    // Four headers: followed to TCP.
    let mut f = v6_with_ext(&[0, 43, 44, 60]);
    let p = parse(&SlicePacket::new(&mut f)).unwrap();
    assert_eq!(
        (p.tuple.proto, p.tuple.dst_port, p.l4_offset),
        (6, 80, 14 + 40 + 32)
    );
    assert_eq!(p.ipv6_dest_opts as usize, 14 + 40 + 24);
    // Five: more than the bound, passed to the stack.
    let mut f = v6_with_ext(&[0, 43, 60, 43, 60]);
    let e = parse(&SlicePacket::new(&mut f)).unwrap_err();
    assert_eq!(e.kind, ParseErrorKind::TooManyExtHeaders);
    assert_eq!(
        e.disposition(),
        Disposition::Pass(Counter::PassHeadersTooDeep)
    );
    // Hop-by-hop not first: malformed.
    let mut f = v6_with_ext(&[60, 0]);
    let e = parse(&SlicePacket::new(&mut f)).unwrap_err();
    assert_eq!(
        (e.kind, e.offset),
        (ParseErrorKind::HopByHopNotFirst, 14 + 40 + 8)
    );
    assert_eq!(
        e.disposition(),
        Disposition::Drop(DropReason::BadIpv6ExtHeader)
    );
    // Every truncation is an error naming a layer, never a panic.
    let full = v6_with_ext(&[0, 44]);
    for cut in 0..full.len() {
        let mut g = full[..cut].to_vec();
        assert!(parse(&SlicePacket::new(&mut g)).is_err(), "cut {cut}");
    }
}

#[test]
fn three_vlan_tags_pass_as_too_deep() {
    use lb_api::wire::ParseErrorKind;
    let plain = lb_api::wire::testing::tcp_v4_frame([10, 0, 0, 1], 1, [10, 0, 0, 2], 2, 0, b"");
    let mut f = plain[..12].to_vec();
    for _ in 0..3 {
        f.extend_from_slice(&[0x81, 0x00, 0, 5]);
    }
    f.extend_from_slice(&plain[12..]);
    let e = parse(&SlicePacket::new(&mut f)).unwrap_err();
    assert_eq!((e.kind, e.found), (ParseErrorKind::TooManyVlanTags, 0x8100));
}

#[test]
fn icmpv6_error_quote_gives_the_inner_tuple() {
    use etherparse::{Icmpv6Type, PacketBuilder};
    let mut inner = Vec::new();
    PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
        .udp(5353, 53)
        .write(&mut inner, b"query")
        .unwrap();
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv6([0xfc; 16], [0xfd; 16], 64)
        .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut f, &inner)
        .unwrap();
    let p = parse(&SlicePacket::new(&mut f.clone())).unwrap();
    assert_eq!((p.icmp.ty, p.icmp.quote_offset), (2, 14 + 40 + 8));
    let t = quoted_tuple(&SlicePacket::new(&mut f), &p).unwrap();
    assert_eq!(
        (t.src, t.dst, t.src_port, t.dst_port, t.proto),
        ([0xfd; 16], [0xfe; 16], 5353, 53, 17)
    );
}
