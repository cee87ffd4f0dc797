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
    let p = parse(&SlicePacket::new(&mut f.clone())).unwrap();
    assert_eq!((p.fragment, p.tuple.dst_port), (Fragment::First, 53));
    // Offset 1 (8 bytes): a later fragment, no ports.
    f[21] = 1;
    let p = parse(&SlicePacket::new(&mut f)).unwrap();
    assert_eq!((p.fragment, p.tuple.dst_port), (Fragment::Later, 0));
}
