//! The pipeline over the new wire formats: VLAN-tagged IPv4 is translated (the IP header moves),
//! IPv6 services are translated both ways, fragments pass counted, and the results are checked
//! by etherparse.

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_api::counters::Counter;
use lb_api::flow::L4Proto;
use lb_api::Verdict;
use lb_conntrack::ManualClock;
use lb_control::{default_config, ServiceSpec};
use lb_datapath::engine::Engine;

fn engine() -> Engine<ManualClock> {
    let mut e = Engine::with_clock(64, default_config(1), ManualClock::new(1));
    e.upsert_service(&ServiceSpec {
        id: 1,
        frontend: "10.96.0.10:80".parse().unwrap(),
        proto: L4Proto::Tcp,
        backends: vec!["10.1.0.2:8080".parse().unwrap()],
        ..Default::default()
    })
    .unwrap();
    e
}

fn tagged(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&frame[12..]);
    f
}

#[test]
fn vlan_tagged_ipv4_is_translated_with_valid_checksums() {
    let plain =
        lb_api::wire::testing::tcp_v4_frame([10, 0, 0, 1], 40000, [10, 96, 0, 10], 80, 0x02, b"");
    for tags in [&[(0x8100, 7)][..], &[(0x88a8, 100), (0x8100, 7)][..]] {
        let mut e = engine();
        let mut f = tagged(&plain, tags);
        assert_eq!(e.process(&mut f), Verdict::Pass);
        assert_eq!(e.counters().get(Counter::ServiceNewFlow), 1, "{tags:?}");
        let s = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!()
        };
        let h = ip.header().to_header();
        assert_eq!(h.destination, [10, 1, 0, 2]);
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        let Some(TransportSlice::Tcp(t)) = &s.transport else {
            panic!()
        };
        assert_eq!(t.destination_port(), 8080);
        assert_eq!(
            t.checksum(),
            t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap()
        );
    }
}

#[test]
fn ipv6_non_service_and_fragments_pass_counted() {
    let mut e = engine();
    let mut f6 = Vec::new();
    etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .tcp(1, 80, 1, 1000)
        .write(&mut f6, b"")
        .unwrap();
    assert_eq!(e.process(&mut f6), Verdict::Pass);
    assert_eq!(e.counters().get(Counter::PassNotService), 1);
    let mut frag =
        lb_api::wire::testing::tcp_v4_frame([10, 0, 0, 1], 1, [10, 96, 0, 10], 80, 0x02, b"");
    frag[20] = 0x20; // MF: a first fragment
    lb_api::wire::testing::fix_ipv4_checksum(&mut frag);
    assert_eq!(e.process(&mut frag), Verdict::Pass);
    assert_eq!(e.counters().get(Counter::PassFragment), 1);
    assert_eq!(
        e.counters().get(Counter::ServiceNewFlow),
        0,
        "fragments are not translated"
    );
}

/// An IPv6 service: the SYN is translated to the backend, the backend's reply back to the
/// service, with checksums etherparse verifies.
#[test]
fn ipv6_service_is_translated_both_ways() {
    use lb_api::wire::testing::{tcp_v6_frame, udp_v6_frame};
    let client: [u8; 16] = "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let vip: [u8; 16] = "fd96::10".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let be: [u8; 16] = "fd01::2".parse::<std::net::Ipv6Addr>().unwrap().octets();
    for proto in [L4Proto::Tcp, L4Proto::Udp] {
        let mut e = Engine::with_clock(64, default_config(1), ManualClock::new(1));
        e.upsert_service(&ServiceSpec {
            id: 6,
            frontend: "[fd96::10]:80".parse().unwrap(),
            proto,
            backends: vec!["[fd01::2]:8080".parse().unwrap()],
            ..Default::default()
        })
        .unwrap();
        let build = |s, sp, d, dp| match proto {
            L4Proto::Tcp => tcp_v6_frame(s, sp, d, dp, 0x02, b"hi"),
            _ => udp_v6_frame(s, sp, d, dp, b"hi"),
        };
        let mut f = build(client, 40000, vip, 80);
        assert_eq!(e.process(&mut f), Verdict::Pass);
        assert_eq!(f, build(client, 40000, be, 8080), "{proto:?} DNAT");
        assert_eq!(e.counters().get(Counter::ServiceNewFlow), 1);
        let mut r = build(be, 8080, client, 40000);
        assert_eq!(e.process(&mut r), Verdict::Pass);
        assert_eq!(r, build(vip, 80, client, 40000), "{proto:?} reverse DNAT");
        assert_eq!(e.counters().get(Counter::ReplyTranslated), 1);
        let s = SlicedPacket::from_ethernet(&r).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &s.net else {
            panic!("not IPv6")
        };
        let h = ip.header().to_header();
        match &s.transport {
            Some(TransportSlice::Tcp(t)) => assert_eq!(
                t.checksum(),
                t.to_header().calc_checksum_ipv6(&h, t.payload()).unwrap()
            ),
            Some(TransportSlice::Udp(u)) => assert_eq!(
                u.checksum(),
                u.to_header().calc_checksum_ipv6(&h, u.payload()).unwrap()
            ),
            other => panic!("{other:?}"),
        }
    }
}
