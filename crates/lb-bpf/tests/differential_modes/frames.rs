//! The frames the fixtures send and expect, built without the code under test, and an
//! independent reader (etherparse) of the frames that leave.

use super::*;

pub(crate) fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

pub(crate) fn client6() -> [u8; 16] {
    v6("fd00:c::9")
}
pub(crate) fn client6_2() -> [u8; 16] {
    v6("fd00:c::10")
}
pub(crate) fn node_a6() -> [u8; 16] {
    v6("fd00:1::a")
}
pub(crate) fn node_b6() -> [u8; 16] {
    v6("fd00:1::b")
}
pub(crate) fn be6() -> [u8; 16] {
    v6("fd01::2")
}
pub(crate) fn router6() -> [u8; 16] {
    v6("fd09::9")
}
pub(crate) fn vip6_snat() -> [u8; 16] {
    v6("fd96::20")
}
pub(crate) fn vip6_dsr() -> [u8; 16] {
    v6("fd96::21")
}
pub(crate) fn vip6_tun() -> [u8; 16] {
    v6("fd96::22")
}

/// The nodes of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Node {
    /// Picks backends (IPv4 and IPv6 address).
    A,
    /// Runs the backends.
    B,
    /// Picks backends; IPv4 address only, a SNAT range of one port.
    C,
}

pub(crate) fn node_spec(n: Node) -> NodeSpec {
    let v4 = |a: [u8; 4]| IpAddr::from(a);
    let v6 = |a: [u8; 16]| IpAddr::from(a);
    let base = NodeSpec {
        vni: VNI,
        underlay_mtu: MTU,
        ..NodeSpec::default()
    };
    match n {
        Node::A => NodeSpec {
            address_v4: Some(Ipv4Addr::from(NODE_A)),
            address_v6: Some(Ipv6Addr::from(node_a6())),
            peers: vec![v4(NODE_B), v4(NODE_C), v6(node_b6())],
            ..base
        },
        Node::B => NodeSpec {
            address_v4: Some(Ipv4Addr::from(NODE_B)),
            address_v6: Some(Ipv6Addr::from(node_b6())),
            peers: vec![v4(NODE_A), v4(NODE_C), v6(node_a6())],
            ..base
        },
        Node::C => NodeSpec {
            address_v4: Some(Ipv4Addr::from(NODE_C)),
            address_v6: None,
            peers: vec![v4(NODE_A), v4(NODE_B)],
            snat_ports: PortRange {
                min: C_SNAT_PORT,
                max: C_SNAT_PORT,
            },
            ..base
        },
    }
}

/// One service with one backend on node B (`remote`) or on this node.
pub(crate) fn service(
    id: u32,
    frontend: (IpAddr, u16),
    proto: L4Proto,
    backend: (IpAddr, u16),
    mode: ForwardingMode,
    remote: bool,
) -> ServiceSpec {
    let node = match (remote, backend.0) {
        (false, _) => None,
        (true, IpAddr::V4(_)) => Some(IpAddr::from(NODE_B)),
        (true, IpAddr::V6(_)) => Some(IpAddr::from(node_b6())),
    };
    ServiceSpec {
        id,
        frontend: frontend.into(),
        proto,
        backends: vec![BackendSpec {
            node,
            ..BackendSpec::from(std::net::SocketAddr::from(backend))
        }],
        mode,
        ..Default::default()
    }
}

/// What each node serves. Nodes A and C: a service per mode, backends on node B, and a DSR
/// NodePort on their own address. Node B: NodePorts on its own address to its local backend
/// (plain DNAT), whose flows collide with flows other nodes forward to the same backend.
pub(crate) fn services(n: Node) -> Vec<ServiceSpec> {
    use ForwardingMode::{Dsr, Hybrid, Snat, Tunnel};
    use L4Proto::{Tcp, Udp};
    let ip4 = |a: [u8; 4]| IpAddr::from(a);
    let ip6 = |a: [u8; 16]| IpAddr::from(a);
    match n {
        Node::A | Node::C => {
            let me = if n == Node::A { NODE_A } else { NODE_C };
            vec![
                service(10, (ip4(VIP_SNAT), 80), Tcp, (ip4(BE), 8080), Snat, true),
                service(11, (ip4(VIP_SNAT), 53), Udp, (ip4(BE), 5353), Snat, true),
                service(
                    12,
                    (ip6(vip6_snat()), 80),
                    Tcp,
                    (ip6(be6()), 8080),
                    Snat,
                    true,
                ),
                service(
                    13,
                    (ip6(vip6_snat()), 53),
                    Udp,
                    (ip6(be6()), 5353),
                    Snat,
                    true,
                ),
                service(20, (ip4(VIP_DSR), 80), Tcp, (ip4(BE), 8080), Dsr, true),
                service(
                    21,
                    (ip6(vip6_dsr()), 80),
                    Tcp,
                    (ip6(be6()), 8080),
                    Dsr,
                    true,
                ),
                service(22, (ip4(VIP_DSR), 53), Udp, (ip4(BE), 5353), Dsr, true),
                service(30, (ip4(VIP_TUN), 80), Tcp, (ip4(BE), 8080), Tunnel, true),
                service(31, (ip4(VIP_TUN), 53), Udp, (ip4(BE), 5353), Tunnel, true),
                service(32, (ip4(VIP_TUN), 81), Tcp, (ip4(BE), 8080), Tunnel, true),
                service(
                    33,
                    (ip6(vip6_tun()), 80),
                    Tcp,
                    (ip6(be6()), 8080),
                    Tunnel,
                    true,
                ),
                service(
                    34,
                    (ip6(vip6_tun()), 53),
                    Udp,
                    (ip6(be6()), 5353),
                    Tunnel,
                    true,
                ),
                service(40, (ip4(VIP_HYB), 80), Tcp, (ip4(BE), 8080), Hybrid, true),
                service(41, (ip4(VIP_HYB), 53), Udp, (ip4(BE), 5353), Hybrid, true),
                service(50, (ip4(me), NODEPORT_DSR), Tcp, (ip4(BE), 8080), Dsr, true),
            ]
        }
        Node::B => vec![
            service(
                60,
                (ip4(NODE_B), NODEPORT_DSR),
                Tcp,
                (ip4(BE), 8080),
                Dsr,
                false,
            ),
            service(
                61,
                (ip4(NODE_B), NODEPORT_TUN),
                Tcp,
                (ip4(BE), 8080),
                Tunnel,
                false,
            ),
        ],
    }
}

// ---------------------------------------------------------------------------------------------
// Expected frames, built without the code under test.

/// A TCP (with `flags`) or UDP frame from the `lb_api::wire::testing` builders.
pub(crate) fn frame(
    proto: L4Proto,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    match (proto, src, dst) {
        (L4Proto::Tcp, IpAddr::V4(s), IpAddr::V4(d)) => {
            tcp_v4_frame(s.octets(), sport, d.octets(), dport, flags, payload)
        }
        (L4Proto::Udp, IpAddr::V4(s), IpAddr::V4(d)) => {
            udp_v4_frame(s.octets(), sport, d.octets(), dport, payload)
        }
        (L4Proto::Tcp, IpAddr::V6(s), IpAddr::V6(d)) => {
            tcp_v6_frame(s.octets(), sport, d.octets(), dport, flags, payload)
        }
        (L4Proto::Udp, IpAddr::V6(s), IpAddr::V6(d)) => {
            udp_v6_frame(s.octets(), sport, d.octets(), dport, payload)
        }
        other => panic!("no frame builder for {other:?}"),
    }
}

/// `f` with other Ethernet addresses.
pub(crate) fn with_macs(f: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = f.to_vec();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

/// The IPv4 DSR option (Cilium's layout): type 0x9A, length 8, service port, service address.
pub(crate) fn dsr_v4_option(svc: [u8; 4], port: u16) -> [u8; 8] {
    let p = port.to_be_bytes();
    [0x9a, 8, p[0], p[1], svc[0], svc[1], svc[2], svc[3]]
}

/// An IPv4 frame (20-byte header, no VLAN) with `opt` appended to its header: IHL and total
/// length grow, the header checksum is recomputed (etherparse); the transport checksum stays
/// (options are not in the pseudo-header).
pub(crate) fn with_ipv4_option(f: &[u8], opt: &[u8]) -> Vec<u8> {
    assert_eq!(f[14], 0x45, "a 20-byte IPv4 header");
    let mut out = f[..34].to_vec();
    out.extend_from_slice(opt);
    out.extend_from_slice(&f[34..]);
    out[14] = 0x40 | (5 + (opt.len() / 4) as u8);
    let total = u16::from_be_bytes([f[16], f[17]]) + opt.len() as u16;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    out[24..26].copy_from_slice(&[0, 0]);
    let h = etherparse::Ipv4HeaderSlice::from_slice(&out[14..])
        .unwrap()
        .to_header();
    out[24..26].copy_from_slice(&h.calc_header_checksum().to_be_bytes());
    out
}

/// The IPv6 DSR destination options header (Cilium's layout, 24 bytes): one option of type
/// 0x1B and 20 data bytes (service address, port, two zero bytes).
pub(crate) fn dsr_v6_ext(next: u8, svc: [u8; 16], port: u16) -> Vec<u8> {
    let mut e = vec![next, 2, 0x1b, 20];
    e.extend_from_slice(&svc);
    e.extend_from_slice(&port.to_be_bytes());
    e.extend_from_slice(&[0, 0]);
    e
}

/// An IPv6 frame (no extension headers) with the DSR destination options header inserted.
pub(crate) fn with_ipv6_dsr(f: &[u8], svc: [u8; 16], port: u16) -> Vec<u8> {
    let ext = dsr_v6_ext(f[20], svc, port);
    let mut out = f[..54].to_vec();
    out[20] = 60;
    let plen = u16::from_be_bytes([f[18], f[19]]) + ext.len() as u16;
    out[18..20].copy_from_slice(&plen.to_be_bytes());
    out.extend_from_slice(&ext);
    out.extend_from_slice(&f[54..]);
    out
}

/// An IPv6 frame (no extension headers) with an 8-byte extension header of type `ext_type`
/// carrying one PadN option inserted after the fixed header.
pub(crate) fn with_ipv6_padn_ext(f: &[u8], ext_type: u8) -> Vec<u8> {
    let mut out = f[..54].to_vec();
    out[20] = ext_type;
    let plen = u16::from_be_bytes([f[18], f[19]]) + 8;
    out[18..20].copy_from_slice(&plen.to_be_bytes());
    out.extend_from_slice(&[f[20], 0, 1, 4, 0, 0, 0, 0]);
    out.extend_from_slice(&f[54..]);
    out
}

/// `inner` in VXLAN over IPv4, as a node sends it: outer MACs copied from the inner frame, IPv4
/// with DF and TTL 64, UDP source port `sport` to 4789 with no checksum (RFC 7348), the I flag.
pub(crate) fn vxlan_v4(src: [u8; 4], dst: [u8; 4], sport: u16, vni: u32, inner: &[u8]) -> Vec<u8> {
    let macs = (
        inner[..6].try_into().unwrap(),
        inner[6..12].try_into().unwrap(),
    );
    vxlan_v4_macs(src, dst, sport, vni, inner, macs)
}

/// [`vxlan_v4`] with the outer MACs given (destination, source).
pub(crate) fn vxlan_v4_macs(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    vni: u32,
    inner: &[u8],
    (dst_mac, src_mac): ([u8; 6], [u8; 6]),
) -> Vec<u8> {
    let udp_len = (8 + 8 + inner.len()) as u16;
    let mut ip =
        etherparse::Ipv4Header::new(udp_len, 64, etherparse::IpNumber::UDP, src, dst).unwrap();
    ip.dont_fragment = true;
    ip.header_checksum = ip.calc_header_checksum();
    let mut f = Vec::new();
    etherparse::Ethernet2Header {
        destination: dst_mac,
        source: src_mac,
        ether_type: etherparse::EtherType::IPV4,
    }
    .write(&mut f)
    .unwrap();
    ip.write(&mut f).unwrap();
    etherparse::UdpHeader {
        source_port: sport,
        destination_port: 4789,
        length: udp_len,
        checksum: 0,
    }
    .write(&mut f)
    .unwrap();
    let v = vni.to_be_bytes();
    f.extend_from_slice(&[0x08, 0, 0, 0, v[1], v[2], v[3], 0]);
    f.extend_from_slice(inner);
    f
}

/// `inner` in VXLAN over IPv6, as a node sends it: outer MACs copied from the inner frame,
/// hop limit 64, UDP source port `sport` to 4789 with the checksum over the whole datagram
/// (computed by etherparse; zero is not allowed over IPv6).
pub(crate) fn vxlan_v6(
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    vni: u32,
    inner: &[u8],
) -> Vec<u8> {
    let v = vni.to_be_bytes();
    let mut payload = vec![0x08, 0, 0, 0, v[1], v[2], v[3], 0];
    payload.extend_from_slice(inner);
    let udp_len = (8 + payload.len()) as u16;
    let ip = etherparse::Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: udp_len,
        next_header: etherparse::IpNumber::UDP,
        hop_limit: 64,
        source: src,
        destination: dst,
    };
    let udp = etherparse::UdpHeader::with_ipv6_checksum(sport, 4789, &ip, &payload).unwrap();
    let mut f = Vec::new();
    etherparse::Ethernet2Header {
        destination: inner[..6].try_into().unwrap(),
        source: inner[6..12].try_into().unwrap(),
        ether_type: etherparse::EtherType::IPV6,
    }
    .write(&mut f)
    .unwrap();
    ip.write(&mut f).unwrap();
    udp.write(&mut f).unwrap();
    f.extend_from_slice(&payload);
    f
}

/// [`vxlan_v4`] or [`vxlan_v6`]: the underlay is of the flow's family.
pub(crate) fn vxlan(src: IpAddr, dst: IpAddr, sport: u16, vni: u32, inner: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => vxlan_v4(s.octets(), d.octets(), sport, vni, inner),
        (IpAddr::V6(s), IpAddr::V6(d)) => vxlan_v6(s.octets(), d.octets(), sport, vni, inner),
        other => panic!("mixed families {other:?}"),
    }
}

/// The ICMP errors the SNAT fixtures send.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IcmpError {
    PortUnreachable,
    /// Fragmentation needed (IPv4) / packet too big (ICMPv6), with an MTU of 1400.
    TooBig,
    TimeExceeded,
}

/// The ICMP/ICMPv6 error `kind` from `from` to `to` quoting the IP datagram of the frame
/// `quoted`, whole or (`cut`) its IP header and 8 transport bytes, as a router or host sends it
/// (the `lb_api::wire::testing` builders: checksums computed from scratch).
pub(crate) fn icmp_error(
    kind: IcmpError,
    from: IpAddr,
    to: IpAddr,
    quoted: &[u8],
    cut: bool,
) -> Vec<u8> {
    let ip_header = if from.is_ipv6() { 40 } else { 20 };
    let end = if cut {
        14 + ip_header + 8
    } else {
        quoted.len()
    };
    let quote = &quoted[14..end];
    let mtu = 1400u32.to_be_bytes();
    match (from, to) {
        (IpAddr::V4(f), IpAddr::V4(t)) => {
            let (ty, code, rest) = match kind {
                IcmpError::PortUnreachable => (3, 3, [0; 4]),
                IcmpError::TooBig => (3, 4, [0, 0, mtu[2], mtu[3]]),
                IcmpError::TimeExceeded => (11, 0, [0; 4]),
            };
            icmp_v4_error_frame(f.octets(), t.octets(), ty, code, rest, quote)
        }
        (IpAddr::V6(f), IpAddr::V6(t)) => {
            let (ty, code, rest) = match kind {
                IcmpError::PortUnreachable => (1, 4, [0; 4]),
                IcmpError::TooBig => (2, 0, mtu),
                IcmpError::TimeExceeded => (3, 0, [0; 4]),
            };
            icmp_v6_error_frame(f.octets(), t.octets(), ty, code, rest, quote)
        }
        other => panic!("mixed families {other:?}"),
    }
}

/// The outer UDP source port of a VXLAN frame (no VLAN tag on the outer frame).
pub(crate) fn outer_sport(f: &[u8]) -> u16 {
    let at = if f[12..14] == [0x86, 0xdd] { 54 } else { 34 };
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// The quote of an ICMP error as the datapath sends it: `quote` with its TCP/UDP checksum field
/// (IPv4 without options, IPv6 without extension headers, field inside the quote) set to the
/// value a device completing a partial checksum leaves as it is: `F` with `!fold(D + F) = F`,
/// `D` the sum of the other quoted transport bytes (found here by trying every value: an
/// oracle independent of the datapath's closed form).
fn settled_quote(quote: &[u8]) -> Vec<u8> {
    let mut q = quote.to_vec();
    let (ip_len, proto) = match q[0] >> 4 {
        4 if q[0] & 0xf == 5 => (20, q[9]),
        6 => (40, q[6]),
        _ => return q,
    };
    let field = match proto {
        6 => ip_len + 16,
        17 => ip_len + 6,
        _ => return q,
    };
    if field + 2 > q.len() {
        return q;
    }
    q[field..field + 2].copy_from_slice(&[0, 0]);
    let d = lb_api::checksum::sum(&q[ip_len..], 0);
    let completes_to = |f: u16| match lb_api::checksum::finish(d + u32::from(f)) {
        0 => 0xffff,
        c => c,
    };
    let f = (1..=0xffffu16)
        .find(|&f| completes_to(f) == f)
        .expect("a fixed point of completion");
    q[field..field + 2].copy_from_slice(&f.to_be_bytes());
    q
}

/// What a node answers a packet too big for the carrier with: ICMP "fragmentation needed"
/// (IPv4) / ICMPv6 "packet too big", from `from` to the packet's sender, MACs swapped, quoting
/// the first 128 bytes of the IP packet as it was sent, its transport checksum field settled
/// ([`settled_quote`]).
pub(crate) fn too_big(orig: &[u8], from: IpAddr, mtu: u16) -> Vec<u8> {
    let mut f = Vec::new();
    let v6 = orig[12..14] == [0x86, 0xdd];
    etherparse::Ethernet2Header {
        destination: orig[6..12].try_into().unwrap(),
        source: orig[..6].try_into().unwrap(),
        ether_type: if v6 {
            etherparse::EtherType::IPV6
        } else {
            etherparse::EtherType::IPV4
        },
    }
    .write(&mut f)
    .unwrap();
    let quote = &settled_quote(&orig[14..orig.len().min(14 + 128)]);
    match from {
        IpAddr::V4(from) => {
            let to: [u8; 4] = orig[26..30].try_into().unwrap();
            let icmp = etherparse::Icmpv4Header::with_checksum(
                etherparse::Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                        next_hop_mtu: mtu,
                    },
                ),
                quote,
            );
            let mut ip = etherparse::Ipv4Header::new(
                (icmp.header_len() + quote.len()) as u16,
                64,
                etherparse::IpNumber::ICMP,
                from.octets(),
                to,
            )
            .unwrap();
            ip.dont_fragment = false;
            ip.header_checksum = ip.calc_header_checksum();
            ip.write(&mut f).unwrap();
            icmp.write(&mut f).unwrap();
        }
        IpAddr::V6(from) => {
            let to: [u8; 16] = orig[22..38].try_into().unwrap();
            let icmp = etherparse::Icmpv6Header::with_checksum(
                etherparse::Icmpv6Type::PacketTooBig {
                    mtu: u32::from(mtu),
                },
                from.octets(),
                to,
                quote,
            )
            .unwrap();
            etherparse::Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: (icmp.header_len() + quote.len()) as u16,
                next_header: etherparse::IpNumber::IPV6_ICMP,
                hop_limit: 64,
                source: from.octets(),
                destination: to,
            }
            .write(&mut f)
            .unwrap();
            icmp.write(&mut f).unwrap();
        }
    }
    f.extend_from_slice(quote);
    f
}

// ---------------------------------------------------------------------------------------------
// An independent reader of the frames that leave.

/// What etherparse found in a frame (after checking every checksum in it).
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// IPv4 header options.
    pub(crate) ipv4_options: Vec<u8>,
    /// The first IPv6 destination options header, whole.
    pub(crate) ipv6_dest_opts: Option<Vec<u8>>,
    /// VXLAN: the VNI and the inner frame (itself checked).
    pub(crate) vxlan: Option<(u32, Vec<u8>)>,
    /// ICMP/ICMPv6 type, code and the four bytes after the checksum.
    pub(crate) icmp: Option<(u8, u8, [u8; 4])>,
    /// ICMP/ICMPv6: what follows those four bytes (an error's quote).
    pub(crate) icmp_payload: Vec<u8>,
    /// The (outermost) IP source and destination.
    pub(crate) addrs: Option<(IpAddr, IpAddr)>,
}

/// Parses `f` with etherparse and checks the IPv4 header checksum and the TCP, UDP, ICMP and
/// ICMPv6 checksums; recurses into VXLAN.
pub(crate) fn oracle(what: &str, f: &[u8]) -> Seen {
    use etherparse::{NetSlice, TransportSlice};
    let p = etherparse::SlicedPacket::from_ethernet(f)
        .unwrap_or_else(|e| panic!("{what}: etherparse cannot parse the output: {e:?}"));
    let mut seen = Seen::default();
    let (src, dst): (IpAddr, IpAddr) = match p.net.as_ref().expect("an IP packet") {
        NetSlice::Ipv4(ip) => {
            let h = ip.header();
            assert_eq!(
                h.header_checksum(),
                h.to_header().calc_header_checksum(),
                "{what}: IPv4 header checksum"
            );
            seen.ipv4_options = h.options().to_vec();
            (h.source_addr().into(), h.destination_addr().into())
        }
        NetSlice::Ipv6(ip) => {
            for ext in ip.extensions().clone() {
                if let etherparse::Ipv6ExtensionSlice::DestinationOptions(d) = ext {
                    seen.ipv6_dest_opts
                        .get_or_insert_with(|| d.slice().to_vec());
                }
            }
            let h = ip.header();
            (h.source_addr().into(), h.destination_addr().into())
        }
    };
    match (p.transport.as_ref().expect("a transport header"), src, dst) {
        (TransportSlice::Tcp(t), IpAddr::V4(s), IpAddr::V4(d)) => assert_eq!(
            t.checksum(),
            t.calc_checksum_ipv4(s.octets(), d.octets()).unwrap(),
            "{what}: TCP checksum"
        ),
        (TransportSlice::Tcp(t), IpAddr::V6(s), IpAddr::V6(d)) => assert_eq!(
            t.checksum(),
            t.calc_checksum_ipv6(s.octets(), d.octets()).unwrap(),
            "{what}: TCP checksum"
        ),
        (TransportSlice::Udp(u), s, d) => {
            let h = u.to_header();
            let want = match (s, d) {
                (IpAddr::V4(s), IpAddr::V4(d)) => h
                    .calc_checksum_ipv4_raw(s.octets(), d.octets(), u.payload())
                    .unwrap(),
                (IpAddr::V6(s), IpAddr::V6(d)) => h
                    .calc_checksum_ipv6_raw(s.octets(), d.octets(), u.payload())
                    .unwrap(),
                _ => unreachable!(),
            };
            let ipv4_none = s.is_ipv4() && h.checksum == 0;
            assert!(ipv4_none || h.checksum == want, "{what}: UDP checksum");
            if h.destination_port == 4789 {
                let vx = u.payload();
                assert!(vx.len() >= 8 + 14, "{what}: VXLAN too short");
                assert_eq!(vx[0], 0x08, "{what}: VXLAN I flag");
                let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
                let inner = vx[8..].to_vec();
                oracle(&format!("{what} (inner)"), &inner);
                seen.vxlan = Some((vni, inner));
            }
        }
        (TransportSlice::Icmpv4(i), _, _) => {
            assert_eq!(
                i.checksum(),
                i.icmp_type().calc_checksum(i.payload()),
                "{what}: ICMP checksum"
            );
            seen.icmp = Some((i.type_u8(), i.code_u8(), i.bytes5to8()));
            seen.icmp_payload = i.payload().to_vec();
        }
        (TransportSlice::Icmpv6(i), IpAddr::V6(s), IpAddr::V6(d)) => {
            assert!(
                i.is_checksum_valid(s.octets(), d.octets()),
                "{what}: ICMPv6 checksum"
            );
            seen.icmp = Some((i.type_u8(), i.code_u8(), i.bytes5to8()));
            seen.icmp_payload = i.payload().to_vec();
        }
        (t, _, _) => panic!("{what}: unexpected transport {t:?}"),
    }
    seen.addrs = Some((src, dst));
    seen
}

/// An ICMP error as etherparse reads it: its outer addresses, and the addresses and ports of
/// the datagram it quotes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Quoted {
    pub(crate) outer: (IpAddr, IpAddr),
    pub(crate) src: (IpAddr, u16),
    pub(crate) dst: (IpAddr, u16),
}

/// Reads the quote of the ICMP/ICMPv6 error `f` with etherparse (after [`oracle`] checked the
/// outer checksums): checks the quoted IPv4 header's checksum and, when the quote holds the
/// whole datagram, its TCP/UDP checksum too; returns the quoted addresses and ports.
pub(crate) fn quote_oracle(what: &str, f: &[u8]) -> Quoted {
    let seen = oracle(what, f);
    let (ty, _, _) = seen.icmp.expect("an ICMP error");
    let q = &seen.icmp_payload;
    let what = format!("{what} (quote, ICMP type {ty})");
    let tcp_or_udp = [etherparse::IpNumber::TCP, etherparse::IpNumber::UDP];
    let (src, dst, hlen, total) = if f[12..14] == [0x86, 0xdd] {
        let h = etherparse::Ipv6HeaderSlice::from_slice(q)
            .unwrap_or_else(|e| panic!("{what}: not an IPv6 header: {e:?}"));
        assert!(tcp_or_udp.contains(&h.next_header()), "{what}: {h:?}");
        let total = 40 + usize::from(h.payload_length());
        (
            IpAddr::from(h.source_addr()),
            IpAddr::from(h.destination_addr()),
            40,
            total,
        )
    } else {
        let h = etherparse::Ipv4HeaderSlice::from_slice(q)
            .unwrap_or_else(|e| panic!("{what}: not an IPv4 header: {e:?}"));
        assert_eq!(
            h.header_checksum(),
            h.to_header().calc_header_checksum(),
            "{what}: IPv4 header checksum"
        );
        assert!(tcp_or_udp.contains(&h.protocol()), "{what}: {h:?}");
        (
            IpAddr::from(h.source_addr()),
            IpAddr::from(h.destination_addr()),
            h.slice().len(),
            usize::from(h.total_len()),
        )
    };
    assert!(q.len() >= hlen + 8, "{what}: fewer than 8 transport bytes");
    let port = |at: usize| u16::from_be_bytes([q[at], q[at + 1]]);
    if q.len() == total {
        // The whole datagram: its transport checksum can be checked, as any frame's.
        let mut eth = f[..14].to_vec();
        eth.extend_from_slice(q);
        oracle(&what, &eth);
    } else {
        assert!(q.len() < total, "{what}: quote longer than its datagram");
    }
    Quoted {
        outer: seen.addrs.expect("an IP packet"),
        src: (src, port(hlen)),
        dst: (dst, port(hlen + 2)),
    }
}
