//! VXLAN encapsulation checked against etherparse (an independent decoder), and the
//! encap → decap round trip.

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_api::wire::testing::tcp_v4_frame;
use lb_encap::{
    vxlan_decap, vxlan_encap, DecapError, EncapError, HeadroomPacket, OuterAddrs, VxlanConfig,
};
use proptest::prelude::*;

const HEADROOM: usize = 128;

fn cfg(outer: OuterAddrs) -> VxlanConfig {
    VxlanConfig::new(42, outer, [2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb])
}

fn v4() -> OuterAddrs {
    OuterAddrs::V4 {
        src: [192, 168, 1, 1],
        dst: [192, 168, 1, 2],
    }
}

fn v6() -> OuterAddrs {
    let mut src = [0u8; 16];
    src[0] = 0xfd;
    src[15] = 1;
    let mut dst = src;
    dst[15] = 2;
    OuterAddrs::V6 { src, dst }
}

fn encap(inner: &[u8], c: &VxlanConfig, hash: u32) -> Result<Vec<u8>, EncapError> {
    let mut buf = vec![0u8; HEADROOM + inner.len()];
    buf[HEADROOM..].copy_from_slice(inner);
    let mut p = HeadroomPacket::new(&mut buf, HEADROOM, inner.len()).unwrap();
    vxlan_encap(&mut p, c, hash)?;
    Ok(p.bytes().to_vec())
}

fn check_with_etherparse(out: &[u8], inner: &[u8], c: &VxlanConfig) {
    let s = SlicedPacket::from_ethernet(out).expect("etherparse decodes our outer headers");
    match (&s.net, c.outer) {
        (Some(NetSlice::Ipv4(ip)), OuterAddrs::V4 { src, dst }) => {
            let h = ip.header();
            assert_eq!((h.source(), h.destination()), (src, dst));
            let hdr = h.to_header();
            assert_eq!(hdr.header_checksum, hdr.calc_header_checksum());
        }
        (Some(NetSlice::Ipv6(ip)), OuterAddrs::V6 { src, dst }) => {
            assert_eq!(
                (ip.header().source(), ip.header().destination()),
                (src, dst)
            );
        }
        other => panic!("wrong outer network layer {other:?}"),
    }
    let Some(TransportSlice::Udp(udp)) = &s.transport else {
        panic!("outer transport is not UDP")
    };
    assert_eq!(udp.destination_port(), c.port);
    assert!(udp.source_port() >= 49152);
    match (&s.net, c.outer) {
        (Some(NetSlice::Ipv6(ip)), _) => {
            let want = udp
                .to_header()
                .calc_checksum_ipv6(&ip.header().to_header(), udp.payload())
                .unwrap();
            assert_eq!(udp.checksum(), want);
            assert_ne!(udp.checksum(), 0);
        }
        _ => assert_eq!(
            udp.checksum(),
            0,
            "IPv4 outer UDP checksum is zero (RFC 7348)"
        ),
    }
    let payload = udp.payload();
    assert_eq!(&payload[..4], &[0x08, 0, 0, 0]);
    assert_eq!(
        u32::from_be_bytes([0, payload[4], payload[5], payload[6]]),
        c.vni
    );
    assert_eq!(&payload[8..], inner);
}

proptest! {
    #[test]
    fn encap_matches_etherparse_and_decap_is_identity(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        sport in any::<u16>(), hash in any::<u32>(), six in any::<bool>(),
        vni in 0u32..0x0100_0000,
    ) {
        let inner = tcp_v4_frame([10, 0, 0, 1], sport, [10, 0, 0, 2], 80, 0x10, &payload);
        let mut c = cfg(if six { v6() } else { v4() });
        c.vni = vni;
        let out = encap(&inner, &c, hash).unwrap();
        prop_assert_eq!(out.len(), inner.len() + c.overhead());
        check_with_etherparse(&out, &inner, &c);
        let mut buf = out.clone();
        let n = buf.len();
        let mut p = HeadroomPacket::new(&mut buf, 0, n).unwrap();
        prop_assert_eq!(vxlan_decap(&mut p, c.port, Some(vni)), Ok(vni));
        prop_assert_eq!(p.bytes(), &inner[..]);
    }
}

#[test]
fn mtu_is_enforced_and_names_the_inner_mtu() {
    let inner = tcp_v4_frame([10, 0, 0, 1], 1, [10, 0, 0, 2], 80, 0x10, &[0u8; 1460]);
    let e = encap(&inner, &cfg(v4()), 1).unwrap_err();
    assert_eq!(
        e,
        EncapError::MtuExceeded {
            needed: 1550,
            inner_mtu: 1450
        }
    );
    let mut c = cfg(v4());
    c.mtu = 1550;
    assert!(encap(&inner, &c, 1).is_ok());
}

#[test]
fn decap_refuses_wrong_vni_and_missing_flag() {
    let inner = tcp_v4_frame([10, 0, 0, 1], 1, [10, 0, 0, 2], 80, 0x10, b"x");
    let out = encap(&inner, &cfg(v4()), 7).unwrap();
    let mut b = out.clone();
    let n = b.len();
    let mut p = HeadroomPacket::new(&mut b, 0, n).unwrap();
    assert_eq!(
        vxlan_decap(&mut p, 4789, Some(43)),
        Err(DecapError::VniMismatch { found: 42 })
    );
    assert_eq!(p.bytes(), &out[..], "refused packets are unchanged");
    let mut b = out.clone();
    b[42] = 0; // VXLAN flags
    let mut p = HeadroomPacket::new(&mut b, 0, n).unwrap();
    assert_eq!(vxlan_decap(&mut p, 4789, None), Err(DecapError::BadFlags));
    let mut b = out;
    let mut p = HeadroomPacket::new(&mut b, 0, n).unwrap();
    assert_eq!(vxlan_decap(&mut p, 4790, None), Err(DecapError::NotTunnel));
}

#[test]
fn decap_refuses_an_inner_frame_past_the_outer_datagram() {
    // A valid VXLAN header whose outer IPv4 and UDP lengths end right after it: the "inner
    // frame" behind is a trailer, not part of the datagram (found by the scapy barrage).
    let inner = tcp_v4_frame([10, 0, 0, 1], 1000, [10, 0, 0, 2], 80, 0x02, b"");
    let mut f = encap(&inner, &cfg(v4()), 7).unwrap();
    let (ip, udp) = (14, 14 + 20);
    f[ip + 2..ip + 4].copy_from_slice(&36u16.to_be_bytes());
    f[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    let c = lb_api::checksum::checksum(&f[ip..ip + 20]);
    f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    f[udp + 4..udp + 6].copy_from_slice(&16u16.to_be_bytes());
    let len = f.len();
    let mut p = HeadroomPacket::new(&mut f, 0, len).unwrap();
    assert_eq!(vxlan_decap(&mut p, 4789, None), Err(DecapError::NotTunnel));
    assert_eq!(p.bytes().len(), len, "the packet is unchanged");
}
