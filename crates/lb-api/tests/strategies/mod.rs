//! proptest strategies for frames, kept in one place and shared by the oracle tests, built with
//! etherparse's packet builder (an independent emitter).

use etherparse::{
    ip_number, IpHeaders, Ipv4Header, Ipv6Extensions, Ipv6FragmentHeader, Ipv6Header,
    Ipv6RawExtHeader, PacketBuilder, SingleVlanHeader, VlanId,
};
use proptest::prelude::*;

/// A frame description the strategies generate.
#[derive(Debug, Clone)]
pub struct FrameSpec {
    pub vlans: Vec<u16>,
    pub v6: bool,
    pub dest_opts: bool,
    pub hop_by_hop: bool,
    pub udp: bool,
    pub src4: [u8; 4],
    pub dst4: [u8; 4],
    pub src6: [u8; 16],
    pub dst6: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    /// TCP sequence number, SYN and FIN flags.
    pub tcp: (u32, bool, bool),
}

pub fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    (
        proptest::collection::vec(0u16..4095, 0..=2),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<([u8; 4], [u8; 4], [u8; 16], [u8; 16])>(),
        any::<(u16, u16)>(),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<(u32, bool, bool)>(),
    )
        .prop_map(
            |(
                vlans,
                v6,
                dest_opts,
                hop_by_hop,
                udp,
                (src4, dst4, src6, dst6),
                (sport, dport),
                payload,
                tcp,
            )| {
                FrameSpec {
                    vlans,
                    v6,
                    dest_opts,
                    hop_by_hop,
                    udp,
                    src4,
                    dst4,
                    src6,
                    dst6,
                    sport,
                    dport,
                    payload,
                    tcp,
                }
            },
        )
}

/// Serializes a spec with etherparse.
pub fn build(s: &FrameSpec) -> Vec<u8> {
    let mut out = Vec::new();
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let ip = if s.v6 {
        let mut ext = Ipv6Extensions::default();
        if s.hop_by_hop {
            ext.hop_by_hop_options =
                Some(Ipv6RawExtHeader::new_raw(0.into(), &[1, 4, 0, 0, 0, 0]).unwrap());
        }
        if s.dest_opts {
            ext.destination_options =
                Some(Ipv6RawExtHeader::new_raw(0.into(), &[1, 4, 0, 0, 0, 0]).unwrap());
        }
        IpHeaders::Ipv6(
            Ipv6Header {
                hop_limit: 64,
                source: s.src6,
                destination: s.dst6,
                ..Default::default()
            },
            ext,
        )
    } else {
        IpHeaders::Ipv4(
            Ipv4Header::new(0, 64, ip_number::TCP, s.src4, s.dst4).unwrap(),
            Default::default(),
        )
    };
    let with_vlan = match s.vlans.as_slice() {
        [] => eth.ip(ip),
        [a] => eth.single_vlan(VlanId::try_new(*a).unwrap()).ip(ip),
        [a, b, ..] => eth
            .double_vlan(VlanId::try_new(*a).unwrap(), VlanId::try_new(*b).unwrap())
            .ip(ip),
    };
    if s.udp {
        let b = with_vlan.udp(s.sport, s.dport);
        b.write(&mut out, &s.payload).unwrap();
    } else {
        let (seq, syn, fin) = s.tcp;
        let mut b = with_vlan.tcp(s.sport, s.dport, seq, 1000);
        if syn {
            b = b.syn();
        }
        if fin {
            b = b.fin();
        }
        b.write(&mut out, &s.payload).unwrap();
    }
    let _ = (SingleVlanHeader::LEN, Ipv6FragmentHeader::LEN);
    out
}
