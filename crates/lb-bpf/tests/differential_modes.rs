//! Differential fixtures for the forwarding modes: SNAT, DSR, the VXLAN tunnel and hybrid, on the
//! node that picks the backend and on the backend's node, with the source-port collision
//! resolver and the SNAT port allocator, ICMP errors about SNAT flows (both ways, IPv4 and
//! IPv6), the MTU limit of the carriers and malformed tunnel input.
//!
//! A small cluster: node A and node C pick backends, the backends run on node B. Each node is a
//! pair of worlds (the userspace engine and a loaded copy of the kernel programs with their own
//! maps), configured alike with `set_node` and the same services; every packet goes through both
//! and the harness requires identical output bytes, verdicts, conntrack, counters and drop
//! events. On top of that each fixture says what the engine must do (verdict, exactly which
//! counters move), most give the output frame built independently (etherparse headers and the
//! `lb_api::wire::testing` builders, never the code under test), and every frame that leaves is
//! re-parsed by etherparse, which checks its checksums and reads the carriers back.
//!
//! Frames for node B are built here, not taken from node A's output: node A's output is asserted
//! equal to the same built frame, so the chain holds.
//!
//! TC: the program grows and shrinks the packet through the kernel's skb helpers
//! (`bpf_skb_adjust_room`, `bpf_skb_change_tail`), so the tunnel (both ways), the DSR carriers
//! and the ICMP "too big" errors (sent back by `bpf_redirect`, `TC_ACT_REDIRECT`) are made there
//! as at XDP, byte for byte. The harness runs the engine in the kernel's model at TC
//! (`Engine::process_tc`), so the comparison stays byte-for-byte there too. What the kernel
//! refuses at TC is a VLAN-tagged packet (its protocol is its tag's) or inner frame: the
//! fixtures with one say what TC does instead (`AtTc::Differs`: dropped with `EncapFailed`), and
//! that outcome is asserted as strictly as XDP's.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::tagged;
use lb_api::abi::{
    CtEntry, CtKey, CtKind, CtState, CT_F_BACKEND_SIDE, CT_F_DSR, CT_F_SNAT,
    CT_F_SRC_PORT_REWRITTEN, CT_F_TUNNEL,
};
use lb_api::counters::{Counter, Counters, DropReason};
use lb_api::flow::{v4_addr, L4Proto};
use lb_api::wire::testing::{
    icmp_v4_error_frame, icmp_v6_error_frame, tcp_v4_frame, tcp_v4_frame_seq, tcp_v6_frame,
    udp_v4_frame, udp_v6_frame,
};
use lb_api::wire::TcpFlags as F;
use lb_api::Verdict;
use lb_bpf::Program;
use lb_datapath::engine::default_config;
use lb_nat::control::{BackendSpec, ForwardingMode, NodeSpec, PortRange, ServiceSpec};
use lb_testbed::harness::{EngineAndKernel, Outcome};

const CLIENT: [u8; 4] = [172, 16, 0, 9];
const CLIENT2: [u8; 4] = [172, 16, 0, 10];
const NODE_A: [u8; 4] = [192, 168, 1, 10];
const NODE_B: [u8; 4] = [192, 168, 1, 11];
const NODE_C: [u8; 4] = [192, 168, 1, 12];
const STRANGER: [u8; 4] = [192, 168, 1, 99];
/// A router on the way, raising ICMP errors.
const ROUTER: [u8; 4] = [10, 9, 9, 9];
const BE: [u8; 4] = [10, 1, 0, 2];
const VIP_SNAT: [u8; 4] = [10, 96, 0, 20];
const VIP_DSR: [u8; 4] = [10, 96, 0, 21];
const VIP_TUN: [u8; 4] = [10, 96, 0, 22];
const VIP_HYB: [u8; 4] = [10, 96, 0, 23];
/// Node B's NodePorts, served by its own (local) backend.
const NODEPORT_DSR: u16 = 30080;
const NODEPORT_TUN: u16 = 30081;
const VNI: u32 = 7;
const MTU: u16 = 1500;
/// The collision resolver's default range (source-preserving modes).
const COLLISION_PORTS: std::ops::RangeInclusive<u16> = 20_000..=29_999;
/// The SNAT range of nodes A and B (the default) and of node C (one port).
const SNAT_PORTS: std::ops::RangeInclusive<u16> = 32_768..=60_999;
const C_SNAT_PORT: u16 = 40_100;

/// Outer MACs of a frame that crossed the underlay to node A or B (set by the router, unlike
/// the MACs the sending node copied from the inner frame).
const A_MAC: [u8; 6] = [2, 0, 0, 0, 0xa, 0xa];
const B_MAC: [u8; 6] = [2, 0, 0, 0, 0xb, 0xb];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0xee, 0xee];

fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

fn client6() -> [u8; 16] {
    v6("fd00:c::9")
}
fn client6_2() -> [u8; 16] {
    v6("fd00:c::10")
}
fn node_a6() -> [u8; 16] {
    v6("fd00:1::a")
}
fn node_b6() -> [u8; 16] {
    v6("fd00:1::b")
}
fn be6() -> [u8; 16] {
    v6("fd01::2")
}
fn router6() -> [u8; 16] {
    v6("fd09::9")
}
fn vip6_snat() -> [u8; 16] {
    v6("fd96::20")
}
fn vip6_dsr() -> [u8; 16] {
    v6("fd96::21")
}
fn vip6_tun() -> [u8; 16] {
    v6("fd96::22")
}

/// The nodes of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// Picks backends (IPv4 and IPv6 address).
    A,
    /// Runs the backends.
    B,
    /// Picks backends; IPv4 address only, a SNAT range of one port.
    C,
}

fn node_spec(n: Node) -> NodeSpec {
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
fn service(
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
fn services(n: Node) -> Vec<ServiceSpec> {
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
fn frame(
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
fn with_macs(f: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = f.to_vec();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

/// The IPv4 DSR option (Cilium's layout): type 0x9A, length 8, service port, service address.
fn dsr_v4_option(svc: [u8; 4], port: u16) -> [u8; 8] {
    let p = port.to_be_bytes();
    [0x9a, 8, p[0], p[1], svc[0], svc[1], svc[2], svc[3]]
}

/// An IPv4 frame (20-byte header, no VLAN) with `opt` appended to its header: IHL and total
/// length grow, the header checksum is recomputed (etherparse); the transport checksum stays
/// (options are not in the pseudo-header).
fn with_ipv4_option(f: &[u8], opt: &[u8]) -> Vec<u8> {
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
fn dsr_v6_ext(next: u8, svc: [u8; 16], port: u16) -> Vec<u8> {
    let mut e = vec![next, 2, 0x1b, 20];
    e.extend_from_slice(&svc);
    e.extend_from_slice(&port.to_be_bytes());
    e.extend_from_slice(&[0, 0]);
    e
}

/// An IPv6 frame (no extension headers) with the DSR destination options header inserted.
fn with_ipv6_dsr(f: &[u8], svc: [u8; 16], port: u16) -> Vec<u8> {
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
fn with_ipv6_padn_ext(f: &[u8], ext_type: u8) -> Vec<u8> {
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
fn vxlan_v4(src: [u8; 4], dst: [u8; 4], sport: u16, vni: u32, inner: &[u8]) -> Vec<u8> {
    let macs = (
        inner[..6].try_into().unwrap(),
        inner[6..12].try_into().unwrap(),
    );
    vxlan_v4_macs(src, dst, sport, vni, inner, macs)
}

/// [`vxlan_v4`] with the outer MACs given (destination, source).
fn vxlan_v4_macs(
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
fn vxlan_v6(src: [u8; 16], dst: [u8; 16], sport: u16, vni: u32, inner: &[u8]) -> Vec<u8> {
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
fn vxlan(src: IpAddr, dst: IpAddr, sport: u16, vni: u32, inner: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => vxlan_v4(s.octets(), d.octets(), sport, vni, inner),
        (IpAddr::V6(s), IpAddr::V6(d)) => vxlan_v6(s.octets(), d.octets(), sport, vni, inner),
        other => panic!("mixed families {other:?}"),
    }
}

/// The ICMP errors the SNAT fixtures send.
#[derive(Debug, Clone, Copy)]
enum IcmpError {
    PortUnreachable,
    /// Fragmentation needed (IPv4) / packet too big (ICMPv6), with an MTU of 1400.
    TooBig,
    TimeExceeded,
}

/// The ICMP/ICMPv6 error `kind` from `from` to `to` quoting the IP datagram of the frame
/// `quoted`, whole or (`cut`) its IP header and 8 transport bytes, as a router or host sends it
/// (the `lb_api::wire::testing` builders: checksums computed from scratch).
fn icmp_error(kind: IcmpError, from: IpAddr, to: IpAddr, quoted: &[u8], cut: bool) -> Vec<u8> {
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
fn outer_sport(f: &[u8]) -> u16 {
    let at = if f[12..14] == [0x86, 0xdd] { 54 } else { 34 };
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// What a node answers a packet too big for the carrier with: ICMP "fragmentation needed"
/// (IPv4) / ICMPv6 "packet too big", from `from` to the packet's sender, MACs swapped, quoting
/// the first 128 bytes of the IP packet as it was sent.
fn too_big(orig: &[u8], from: IpAddr, mtu: u16) -> Vec<u8> {
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
    let quote = &orig[14..orig.len().min(14 + 128)];
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
struct Seen {
    /// IPv4 header options.
    ipv4_options: Vec<u8>,
    /// The first IPv6 destination options header, whole.
    ipv6_dest_opts: Option<Vec<u8>>,
    /// VXLAN: the VNI and the inner frame (itself checked).
    vxlan: Option<(u32, Vec<u8>)>,
    /// ICMP/ICMPv6 type, code and the four bytes after the checksum.
    icmp: Option<(u8, u8, [u8; 4])>,
    /// ICMP/ICMPv6: what follows those four bytes (an error's quote).
    icmp_payload: Vec<u8>,
    /// The (outermost) IP source and destination.
    addrs: Option<(IpAddr, IpAddr)>,
}

/// Parses `f` with etherparse and checks the IPv4 header checksum and the TCP, UDP, ICMP and
/// ICMPv6 checksums; recurses into VXLAN.
fn oracle(what: &str, f: &[u8]) -> Seen {
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
struct Quoted {
    outer: (IpAddr, IpAddr),
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
}

/// Reads the quote of the ICMP/ICMPv6 error `f` with etherparse (after [`oracle`] checked the
/// outer checksums): checks the quoted IPv4 header's checksum and, when the quote holds the
/// whole datagram, its TCP/UDP checksum too; returns the quoted addresses and ports.
fn quote_oracle(what: &str, f: &[u8]) -> Quoted {
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

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// What the engine must do with a packet (the kernel must then do exactly the same).
#[derive(Debug, Clone, Copy)]
struct Expect {
    verdict: Verdict,
    /// Counters that move by one, besides `RxPackets` (and `Dropped` for a drop); no other does.
    counters: &'static [Counter],
    drop: Option<DropReason>,
}

const fn pass(counters: &'static [Counter]) -> Expect {
    Expect {
        verdict: Verdict::Pass,
        counters,
        drop: None,
    }
}

const fn tx(counters: &'static [Counter]) -> Expect {
    Expect {
        verdict: Verdict::Tx,
        counters,
        drop: None,
    }
}

const fn dropped(reason: DropReason, counters: &'static [Counter]) -> Expect {
    Expect {
        verdict: Verdict::Drop,
        counters,
        drop: Some(reason),
    }
}

/// What the TC program does with a fixture.
#[derive(Debug, Clone, Copy)]
enum AtTc {
    /// What XDP does, output bytes included.
    Same,
    /// Something else, by design: the kernel does not resize the packet at TC. The comparison
    /// with the engine stays exact; the expected output bytes are XDP's and are not checked.
    Differs(Expect),
}

use AtTc::{Differs, Same};

/// At TC, a VLAN-tagged packet cannot grow (the kernel's `bpf_skb_adjust_room` takes IPv4 and
/// IPv6 packets only, and a tagged packet's protocol is its tag's): the carrier of a new flow
/// cannot be added, and the packet is dropped before the flow is recorded (no entries, no
/// collision port taken).
const TC_TAGGED_NOT_CARRIED: AtTc = Differs(dropped(DropReason::EncapFailed, &[]));
/// The same for the ICMP "too big" error a tagged packet would become.
const TC_TAGGED_TOO_BIG_NOT_SENT: AtTc = Differs(dropped(DropReason::EncapFailed, &[]));
/// A tagged inner frame is not decapsulated at TC: the packet's protocol (the outer one's) is
/// not the inner frame's, and the kernel could not set it.
const TC_TAGGED_INNER_NOT_DECAPSULATED: AtTc = Differs(dropped(DropReason::EncapFailed, &[]));

struct Fixture {
    node: Node,
    name: String,
    frame: Vec<u8>,
    expect: Expect,
    at_tc: AtTc,
    out: Option<Vec<u8>>,
}

fn fx(node: Node, name: impl Into<String>, frame: Vec<u8>, expect: Expect, at_tc: AtTc) -> Fixture {
    Fixture {
        node,
        name: name.into(),
        frame,
        expect,
        at_tc,
        out: None,
    }
}

impl Fixture {
    /// The frame that must leave (XDP, and TC when `Same`).
    fn out(mut self, f: Vec<u8>) -> Self {
        self.out = Some(f);
        self
    }
}

/// The three nodes, each a pair of worlds, for one program.
struct Cluster {
    program: Program,
    a: EngineAndKernel,
    b: EngineAndKernel,
    c: EngineAndKernel,
    now: u64,
    /// Fixtures run, and of those the ones with a TC outcome of their own.
    run: usize,
    differs: usize,
}

impl Cluster {
    fn new(program: Program) -> Self {
        let world = |n: Node| {
            let mut h = EngineAndKernel::new(program, default_config(0x5eed), &services(n))
                .unwrap_or_else(|e| panic!("engine and kernel: {e:#}"));
            h.set_node(&node_spec(n))
                .unwrap_or_else(|e| panic!("set_node: {e:#}"));
            h
        };
        Self {
            program,
            a: world(Node::A),
            b: world(Node::B),
            c: world(Node::C),
            now: 1_000_000_000_000,
            run: 0,
            differs: 0,
        }
    }

    fn node(&self, n: Node) -> &EngineAndKernel {
        match n {
            Node::A => &self.a,
            Node::B => &self.b,
            Node::C => &self.c,
        }
    }

    fn is_tc(&self) -> bool {
        self.program == Program::Tc
    }

    /// Runs one fixture through both worlds of its node and checks it.
    fn run(&mut self, f: Fixture) -> Outcome {
        // 1 ms apart: every flow's entries stay well within their timeouts.
        self.now += 1_000_000;
        let what = format!("{:?}: {}", f.node, f.name);
        let h = match f.node {
            Node::A => &mut self.a,
            Node::B => &mut self.b,
            Node::C => &mut self.c,
        };
        let o = h.expect_same(&what, &f.frame, self.now);
        let (expect, out) = match (self.program, f.at_tc) {
            (Program::Tc, Differs(e)) => {
                self.differs += 1;
                (e, None)
            }
            _ => (f.expect, f.out),
        };
        assert_eq!(o.verdict, expect.verdict, "{what}: verdict");
        let mut want = o.before;
        want.bump(Counter::RxPackets.slot());
        for c in expect.counters {
            want.bump(c.slot());
        }
        if let Some(r) = expect.drop {
            want.bump(Counter::Dropped.slot());
            want.bump(r.slot());
        }
        let moved = |s: &lb_api::counters::CounterSnapshot| -> Vec<String> {
            Counter::ALL
                .iter()
                .filter(|c| s.get(**c) != o.before.get(**c))
                .map(|c| format!("{c:?}"))
                .chain(
                    DropReason::ALL
                        .iter()
                        .filter(|r| s.drops(**r) != o.before.drops(**r))
                        .map(|r| format!("drop {r:?}")),
                )
                .collect()
        };
        assert_eq!(
            moved(&o.after),
            moved(&want),
            "{what}: the counters that moved"
        );
        assert_eq!(o.after, want, "{what}: counters");
        self.assert_pairs(f.node, &what);
        if let Some(out) = out {
            assert_eq!(o.frame, out, "{what}: output frame");
        }
        if o.verdict != Verdict::Drop {
            oracle(&what, &o.frame);
        }
        self.run += 1;
        o
    }

    /// The engine's conntrack entry under `key` on node `n` (the kernel holds the same: the harness
    /// compared them after the last packet).
    fn entry(&self, n: Node, key: CtKey) -> CtEntry {
        self.node(n)
            .engine
            .conntrack()
            .iter()
            .find(|(k, _)| **k == key)
            .map(|(_, e)| *e)
            .unwrap_or_else(|| panic!("{n:?}: no conntrack entry {key:?}"))
    }

    /// Every entry on node `n` has its partner (`lb_conntrack::partner_key`, which GC and
    /// expiry use to delete flows as pairs) in the table, and the partner's partner is the entry
    /// itself; only the service entry of a DSR flow on the forwarding node has none. (The kernel
    /// holds the same entries: the harness compares them after each packet.)
    fn assert_pairs(&self, n: Node, what: &str) {
        let ct = self.node(n).engine.conntrack();
        for (k, e) in ct.iter() {
            let Some(p) = lb_conntrack::partner_key(k, e) else {
                assert!(
                    k.kind == CtKind::Service as u8
                        && e.flags & (CT_F_DSR | CT_F_BACKEND_SIDE) == CT_F_DSR,
                    "{what}: {n:?}: no partner key for {k:?} {e:?}"
                );
                continue;
            };
            let pe = ct
                .get(&p)
                .unwrap_or_else(|| panic!("{what}: {n:?}: partner {p:?} of {k:?} missing"));
            assert_eq!(
                lb_conntrack::partner_key(&p, pe),
                Some(*k),
                "{what}: {n:?}: partner of the partner of {k:?}"
            );
        }
    }

    fn has_entry(&self, n: Node, key: CtKey) -> bool {
        self.node(n)
            .engine
            .conntrack()
            .iter()
            .any(|(k, _)| *k == key)
    }
}

/// A conntrack key from addresses and ports.
fn key(kind: CtKind, proto: L4Proto, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> CtKey {
    CtKey {
        src: addr16(src),
        dst: addr16(dst),
        src_port: sport,
        dst_port: dport,
        proto: proto as u8,
        family: if src.is_ipv4() { 4 } else { 6 },
        kind: kind as u8,
        pad: 0,
        origin: [0; 16],
    }
}

/// [`key`] of a service entry on the backend's node of a flow that came through the tunnel
/// from node `origin`.
fn key_from(
    origin: IpAddr,
    proto: L4Proto,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
) -> CtKey {
    CtKey {
        origin: addr16(origin),
        ..key(CtKind::Service, proto, src, sport, dst, dport)
    }
}

/// An address as the 16-byte field of conntrack keys and entries (IPv4 in the first 4 bytes).
fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => v4_addr(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

fn ip6(a: [u8; 16]) -> IpAddr {
    IpAddr::from(a)
}

// ---------------------------------------------------------------------------------------------
// The scenes.

/// SNAT on node A for one family and protocol: a new flow leaves from node A's address (the
/// client's port kept, it is free), the next packet is established, the backend's reply goes
/// back to the client from the service; a second client with the same source port would take
/// the same (node, port): it gets a port of the SNAT range, and its reply goes back to it.
fn snat_scene(
    cl: &mut Cluster,
    proto: L4Proto,
    (client, client2, vip, node, be): (IpAddr, IpAddr, IpAddr, IpAddr, IpAddr),
    cport: u16,
) {
    let (vport, bport) = if proto == L4Proto::Tcp {
        (80, 8080)
    } else {
        (53, 5353)
    };
    let name = |s: &str| {
        format!(
            "snat {proto:?} {}: {s}",
            if vip.is_ipv4() { "v4" } else { "v6" }
        )
    };
    let f = |src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8| {
        frame(proto, src, sport, dst, dport, flags, b"query")
    };
    let r = |src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8| {
        frame(proto, src, sport, dst, dport, flags, b"answer")
    };

    cl.run(
        fx(
            Node::A,
            name("new flow leaves from the node address"),
            f(client, cport, vip, vport, F::SYN),
            pass(&[Counter::ServiceNewFlow, Counter::SnatAttempts1]),
            Same,
        )
        .out(f(node, cport, be, bport, F::SYN)),
    );
    let fwd = cl.entry(
        Node::A,
        key(CtKind::Service, proto, client, cport, vip, vport),
    );
    assert_eq!(fwd.flags & CT_F_SNAT, CT_F_SNAT, "{fwd:?}");
    let rev = cl.entry(
        Node::A,
        key(CtKind::ReverseNat, proto, be, bport, node, cport),
    );
    assert_eq!(rev.flags & CT_F_SNAT, CT_F_SNAT, "{rev:?}");
    cl.run(
        fx(
            Node::A,
            name("established"),
            f(client, cport, vip, vport, F::ACK),
            pass(&[Counter::ServiceEstablished]),
            Same,
        )
        .out(f(node, cport, be, bport, F::ACK)),
    );
    cl.run(
        fx(
            Node::A,
            name("reply goes back to the client from the service"),
            r(be, bport, node, cport, F::SYN | F::ACK),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(r(vip, vport, client, cport, F::SYN | F::ACK)),
    );
    // The second client's (node, port) is taken: the allocator reserves another port of the
    // SNAT range together with the reverse entry.
    let second = cl.run(fx(
        Node::A,
        name("second client, same port: a port of the SNAT range"),
        f(client2, cport, vip, vport, F::SYN),
        // The client's port (taken), then one random port of the range: 2 attempts.
        pass(&[Counter::ServiceNewFlow, Counter::SnatAttempts2]),
        Same,
    ));
    let e = cl.entry(
        Node::A,
        key(CtKind::Service, proto, client2, cport, vip, vport),
    );
    let port = e.rewritten_src_port;
    assert_eq!(
        e.flags & (CT_F_SNAT | CT_F_SRC_PORT_REWRITTEN),
        CT_F_SNAT | CT_F_SRC_PORT_REWRITTEN
    );
    assert!(SNAT_PORTS.contains(&port) && port != cport, "{port}");
    assert_eq!(second.frame, f(node, port, be, bport, F::SYN));
    let rev2 = cl.entry(
        Node::A,
        key(CtKind::ReverseNat, proto, be, bport, node, port),
    );
    assert_eq!(
        rev2.rewritten_src_port, cport,
        "the reply gets the port back"
    );
    cl.run(
        fx(
            Node::A,
            name("reply to the second client's port"),
            r(be, bport, node, port, F::SYN | F::ACK),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(r(vip, vport, client2, cport, F::SYN | F::ACK)),
    );
    cl.run(
        fx(
            Node::A,
            name("the first client keeps its port"),
            f(client, cport, vip, vport, F::ACK | F::PSH),
            pass(&[Counter::ServiceEstablished]),
            Same,
        )
        .out(f(node, cport, be, bport, F::ACK | F::PSH)),
    );
    cl.run(
        fx(
            Node::A,
            name("the second client's next packet"),
            f(client2, cport, vip, vport, F::ACK),
            pass(&[Counter::ServiceEstablished]),
            Same,
        )
        .out(f(node, port, be, bport, F::ACK)),
    );
}

/// ICMP errors about the SNAT flows of [`snat_scene`] (same arguments, run after it), on node
/// A. Towards the client, about a packet node A sent to the backend from its address and SNAT
/// port (the first client's port kept, the second client's a port of the SNAT range): the
/// quote and the outer destination become the client's again, and the outer source the service
/// when the backend itself answered. Towards the backend, about a reply the client got from
/// the service: the quote becomes backend → node A's address and SNAT port, the outer
/// destination the backend, and the outer source node A when the client itself answered. A
/// router in between keeps its own address. Quotes are whole or cut to 8 transport bytes.
///
/// Besides the two worlds agreeing and the output frame being the one built from scratch,
/// etherparse reads each translated error: valid outer and quoted checksums, and the client's
/// address and port in the quote, never node A's.
fn snat_icmp_scene(
    cl: &mut Cluster,
    proto: L4Proto,
    (client, client2, vip, node, be): (IpAddr, IpAddr, IpAddr, IpAddr, IpAddr),
    cport: u16,
) {
    use IcmpError::{PortUnreachable, TimeExceeded, TooBig};
    let (vport, bport) = if proto == L4Proto::Tcp {
        (80, 8080)
    } else {
        (53, 5353)
    };
    let name = |s: &str| {
        format!(
            "snat {proto:?} {}: {s}",
            if vip.is_ipv4() { "v4" } else { "v6" }
        )
    };
    let router = if vip.is_ipv4() {
        ip(ROUTER)
    } else {
        ip6(router6())
    };
    // The second client's port of the SNAT range (the first client kept its own).
    let port = cl
        .entry(
            Node::A,
            key(CtKind::Service, proto, client2, cport, vip, vport),
        )
        .rewritten_src_port;
    assert!(SNAT_PORTS.contains(&port) && port != cport, "{port}");
    // What the backend (TCP: too big, UDP: port unreachable) and a router (TCP: too big, UDP:
    // time exceeded) answer a packet from node A with.
    let (from_peer, from_router) = if proto == L4Proto::Tcp {
        (TooBig, TooBig)
    } else {
        (PortUnreachable, TimeExceeded)
    };
    // An error as it arrives and as it must leave: source, destination and the quoted
    // datagram's addresses and ports.
    struct Side {
        from: IpAddr,
        to: IpAddr,
        quoted: ((IpAddr, u16), (IpAddr, u16)),
    }
    let side = |from, to, src, dst| Side {
        from,
        to,
        quoted: (src, dst),
    };
    let cases = [
        (
            "error from the backend about the first client's flow (to the client)",
            from_peer,
            false,
            side(be, node, (node, cport), (be, bport)),
            side(vip, client, (client, cport), (vip, vport)),
        ),
        (
            "error from a router about the second client's flow, SNAT port (to the client)",
            from_router,
            true,
            side(router, node, (node, port), (be, bport)),
            side(router, client2, (client2, cport), (vip, vport)),
        ),
        (
            "port unreachable from the first client about a reply (to the backend)",
            PortUnreachable,
            false,
            side(client, vip, (vip, vport), (client, cport)),
            side(node, be, (be, bport), (node, cport)),
        ),
        (
            "time exceeded from a router about a reply to the second client (to the backend)",
            TimeExceeded,
            true,
            side(router, vip, (vip, vport), (client2, cport)),
            side(router, be, (be, bport), (node, port)),
        ),
    ];
    let error = |kind, s: &Side, cut| {
        let ((src, sport), (dst, dport)) = s.quoted;
        let quoted = frame(proto, src, sport, dst, dport, F::ACK, b"data");
        icmp_error(kind, s.from, s.to, &quoted, cut)
    };
    for (what, kind, cut, arrives, leaves) in cases {
        let what = name(what);
        let ct = cl.a.engine_conntrack();
        let o = cl.run(
            fx(
                Node::A,
                &what,
                error(kind, &arrives, cut),
                pass(&[Counter::IcmpErrorTranslated]),
                Same,
            )
            .out(error(kind, &leaves, cut)),
        );
        // Read back independently: valid checksums, and the quote names the flow as its
        // receiver knows it (the client's address and port towards the client, node A's
        // towards the backend).
        let seen = quote_oracle(&what, &o.frame);
        assert_eq!(
            seen,
            Quoted {
                outer: (leaves.from, leaves.to),
                src: leaves.quoted.0,
                dst: leaves.quoted.1,
            },
            "{what}: the translated error as etherparse reads it"
        );
        // An error does not keep a flow alive (and the kernel's table is the engine's).
        assert_eq!(cl.a.engine_conntrack(), ct, "{what}: conntrack changed");
        if leaves.to == be {
            assert_eq!(seen.dst.0, node, "{what}: quoted destination");
        } else {
            assert!(
                seen.src.0 != node && seen.src.0 == seen.outer.1,
                "{what}: the quote must come from the client the error goes to"
            );
        }
    }
}

fn snat(cl: &mut Cluster) {
    let v4 = (ip(CLIENT), ip(CLIENT2), ip(VIP_SNAT), ip(NODE_A), ip(BE));
    let v6 = (
        ip6(client6()),
        ip6(client6_2()),
        ip6(vip6_snat()),
        ip6(node_a6()),
        ip6(be6()),
    );
    for (proto, addrs, cport) in [
        (L4Proto::Tcp, v4, 40_000),
        (L4Proto::Udp, v4, 40_001),
        (L4Proto::Tcp, v6, 40_002),
        (L4Proto::Udp, v6, 40_003),
    ] {
        snat_scene(cl, proto, addrs, cport);
        snat_icmp_scene(cl, proto, addrs, cport);
    }
    // An error about a port of node A's SNAT range that no flow holds is not about a packet
    // node A translated: it passes untouched, counted as such.
    let unowned = *SNAT_PORTS.end();
    for (fam, node, be, router) in [
        ("v4", ip(NODE_A), ip(BE), ip(ROUTER)),
        ("v6", ip6(node_a6()), ip6(be6()), ip6(router6())),
    ] {
        for (proto, bport, from, kind, cut) in [
            (L4Proto::Udp, 5353, be, IcmpError::PortUnreachable, false),
            (L4Proto::Tcp, 8080, router, IcmpError::TooBig, true),
        ] {
            for kind_of in [CtKind::ReverseNat, CtKind::Service] {
                assert!(
                    !cl.has_entry(Node::A, key(kind_of, proto, be, bport, node, unowned)),
                    "port {unowned} is held"
                );
            }
            let quoted = frame(proto, node, unowned, be, bport, F::ACK, b"data");
            let e = icmp_error(kind, from, node, &quoted, cut);
            cl.run(
                fx(
                    Node::A,
                    format!("snat {proto:?} {fam}: {kind:?} about a SNAT port no flow holds"),
                    e.clone(),
                    pass(&[Counter::PassIcmpErrorNoFlow]),
                    Same,
                )
                .out(e),
            );
        }
    }

    // On the backend's node a SNAT flow is an ordinary packet between two addresses.
    cl.run(
        fx(
            Node::B,
            "snat flow arriving at the backend's node passes untouched",
            tcp_v4_frame(NODE_A, 40_000, BE, 8080, F::SYN, b""),
            pass(&[Counter::PassNotService]),
            Same,
        )
        .out(tcp_v4_frame(NODE_A, 40_000, BE, 8080, F::SYN, b"")),
    );

    // Node C's SNAT range is one port: once a flow holds it (and the client's own port), a
    // colliding flow finds no free port after the bounded tries and is dropped, leaving no
    // half of a pair behind.
    let syn = |c: [u8; 4]| tcp_v4_frame(c, C_SNAT_PORT, VIP_SNAT, 80, F::SYN, b"");
    cl.run(
        fx(
            Node::C,
            "snat: the client's port is node C's only SNAT port",
            syn(CLIENT),
            pass(&[Counter::ServiceNewFlow, Counter::SnatAttempts1]),
            Same,
        )
        .out(tcp_v4_frame(NODE_C, C_SNAT_PORT, BE, 8080, F::SYN, b"")),
    );
    cl.run(fx(
        Node::C,
        "snat: SNAT range exhausted (drop, nothing left behind)",
        syn(CLIENT2),
        dropped(DropReason::SnatPortsExhausted, &[]),
        Same,
    ));
    assert_eq!(
        cl.c.engine.conntrack().len(),
        2,
        "only the first flow's pair"
    );
    snat_take_over_scene(cl);
}

/// Node C's only SNAT port, held by a flow that closes: through TIME_WAIT the port stays its
/// own for anything but a SYN past its FIN (what the backend's TIME_WAIT socket accepts as a
/// new connection); such a SYN takes it over once the allocator's schedule found no free port.
fn snat_take_over_scene(cl: &mut Cluster) {
    let (client, vip, node, be) = (ip(CLIENT), ip(VIP_SNAT), ip(NODE_C), ip(BE));
    let from_client = |f| tcp_v4_frame(CLIENT, C_SNAT_PORT, VIP_SNAT, 80, f, b"");
    // Replies of both flows: the same tuple, to node C's port.
    let from_be = |f| tcp_v4_frame(BE, 8080, NODE_C, C_SNAT_PORT, f, b"");
    let steps: [(&str, Vec<u8>, Counter); 5] = [
        (
            "syn-ack",
            from_be(F::SYN | F::ACK),
            Counter::ReplyTranslated,
        ),
        ("ack", from_client(F::ACK), Counter::ServiceEstablished),
        (
            "client fin",
            from_client(F::FIN | F::ACK),
            Counter::ServiceEstablished,
        ),
        (
            "backend fin",
            from_be(F::FIN | F::ACK),
            Counter::ReplyTranslated,
        ),
        ("last ack", from_client(F::ACK), Counter::ServiceEstablished),
    ];
    for (name, frame, c) in steps {
        let expect = match c {
            Counter::ReplyTranslated => pass(&[Counter::ReplyTranslated]),
            _ => pass(&[Counter::ServiceEstablished]),
        };
        cl.run(fx(
            Node::C,
            format!("snat take-over: {name}"),
            frame,
            expect,
            Same,
        ));
    }
    let old = key(CtKind::Service, L4Proto::Tcp, client, C_SNAT_PORT, vip, 80);
    let e = cl.entry(Node::C, old);
    assert_eq!(
        e.state,
        CtState::TimeWait as u8,
        "the old flow is in TIME_WAIT"
    );
    assert_eq!(e.fin_seq_end, 1001, "just past the client's FIN (seq 1000)");

    let syn2 = |seq| tcp_v4_frame_seq(CLIENT2, C_SNAT_PORT, VIP_SNAT, 80, F::SYN, seq);
    // Not past the old flow's FIN: the backend would take it for an old segment.
    cl.run(fx(
        Node::C,
        "snat take-over: a SYN not past the old flow's FIN gets no port",
        syn2(1000),
        dropped(DropReason::SnatPortsExhausted, &[]),
        Same,
    ));
    // Not a SYN: only a new connection may take a port over.
    cl.run(fx(
        Node::C,
        "snat take-over: an ACK gets no port",
        tcp_v4_frame(CLIENT2, C_SNAT_PORT, VIP_SNAT, 80, F::ACK, b""),
        dropped(DropReason::SnatPortsExhausted, &[]),
        Same,
    ));
    // Past it: the port is taken over after the whole schedule (its own port, then 240).
    cl.run(
        fx(
            Node::C,
            "snat take-over: a SYN past the old flow's FIN takes the port over",
            syn2(5000),
            pass(&[
                Counter::ServiceNewFlow,
                Counter::SnatAttempts128,
                Counter::SnatTakeOvers,
            ]),
            Same,
        )
        .out(tcp_v4_frame_seq(
            NODE_C,
            C_SNAT_PORT,
            BE,
            8080,
            F::SYN,
            5000,
        )),
    );
    assert!(
        !cl.has_entry(Node::C, old),
        "the old flow's service entry is gone"
    );
    let rev = key(
        CtKind::ReverseNat,
        L4Proto::Tcp,
        be,
        8080,
        node,
        C_SNAT_PORT,
    );
    assert_eq!(
        cl.entry(Node::C, rev).snat_addr,
        addr16(ip(CLIENT2)),
        "the port is the new flow's"
    );
    assert_eq!(cl.c.engine.conntrack().len(), 2, "one pair: the new flow's");
    // Its replies reach the new client.
    cl.run(
        fx(
            Node::C,
            "snat take-over: the reply reaches the new client",
            from_be(F::SYN | F::ACK),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(tcp_v4_frame(
            VIP_SNAT,
            80,
            CLIENT2,
            C_SNAT_PORT,
            F::SYN | F::ACK,
            b"",
        )),
    );
}

/// DSR for one family: node A's packets carry the service address to node B; node A keeps no
/// reverse half; node B records the flow from the carrier, and the backend's reply leaves node
/// B from the service address.
fn dsr_scene(cl: &mut Cluster, v6: bool, cport: u16) {
    let (client, vip, be) = if v6 {
        (ip6(client6()), ip6(vip6_dsr()), ip6(be6()))
    } else {
        (ip(CLIENT), ip(VIP_DSR), ip(BE))
    };
    let fam = if v6 { "v6" } else { "v4" };
    let t = |src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8| {
        frame(L4Proto::Tcp, src, sport, dst, dport, flags, b"")
    };
    let carried = |flags| {
        let f = t(client, cport, be, 8080, flags);
        match vip {
            IpAddr::V4(s) => with_ipv4_option(&f, &dsr_v4_option(s.octets(), 80)),
            IpAddr::V6(s) => with_ipv6_dsr(&f, s.octets(), 80),
        }
    };
    let o = cl.run(
        fx(
            Node::A,
            format!("dsr {fam}: new flow gets the carrier"),
            t(client, cport, vip, 80, F::SYN),
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            Same,
        )
        .out(carried(F::SYN)),
    );
    let seen = oracle("dsr carrier", &o.frame);
    match vip {
        IpAddr::V4(s) => assert_eq!(seen.ipv4_options, dsr_v4_option(s.octets(), 80)),
        IpAddr::V6(s) => {
            let opts = seen.ipv6_dest_opts.expect("a destination options header");
            assert_eq!(opts[2..4], [0x1b, 20], "option type and length");
            assert_eq!(opts[4..20], s.octets(), "service address");
            assert_eq!(opts[20..22], 80u16.to_be_bytes(), "service port");
        }
    }
    let fwd = cl.entry(
        Node::A,
        key(CtKind::Service, L4Proto::Tcp, client, cport, vip, 80),
    );
    assert_eq!(fwd.flags & (CT_F_DSR | CT_F_BACKEND_SIDE), CT_F_DSR);
    assert!(
        !cl.has_entry(
            Node::A,
            key(CtKind::ReverseNat, L4Proto::Tcp, be, 8080, client, cport)
        ),
        "DSR replies do not come back to node A: no reverse half"
    );
    cl.run(
        fx(
            Node::A,
            format!("dsr {fam}: established packet gets the carrier too"),
            t(client, cport, vip, 80, F::ACK),
            pass(&[Counter::ServiceEstablished, Counter::DsrCarrierAdded]),
            Same,
        )
        .out(carried(F::ACK)),
    );

    // Node B: the carrier creates the backend-side entry; the packet goes on unchanged.
    cl.run(
        fx(
            Node::B,
            format!("dsr {fam}: backend's node records the flow from the carrier"),
            carried(F::SYN),
            pass(&[Counter::BackendSideNewFlow]),
            Same,
        )
        .out(carried(F::SYN)),
    );
    let rev = cl.entry(
        Node::B,
        key(CtKind::ReverseNat, L4Proto::Tcp, be, 8080, client, cport),
    );
    assert_eq!(
        rev.flags & (CT_F_DSR | CT_F_BACKEND_SIDE),
        CT_F_DSR | CT_F_BACKEND_SIDE
    );
    assert_eq!(
        (rev.nat_addr, rev.nat_port),
        (addr16(vip), 80),
        "the service address came with the carrier"
    );
    // The service half is keyed by the tuple the client sent (the carrier names the service),
    // and holds the backend.
    let fwd = cl.entry(
        Node::B,
        key(CtKind::Service, L4Proto::Tcp, client, cport, vip, 80),
    );
    assert_eq!((fwd.nat_addr, fwd.nat_port), (addr16(be), 8080));
    cl.run(
        fx(
            Node::B,
            format!("dsr {fam}: established at the backend's node"),
            carried(F::ACK),
            pass(&[Counter::ServiceEstablished]),
            Same,
        )
        .out(carried(F::ACK)),
    );
    cl.run(
        fx(
            Node::B,
            format!("dsr {fam}: backend's reply leaves from the service address"),
            t(be, 8080, client, cport, F::SYN | F::ACK),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(t(vip, 80, client, cport, F::SYN | F::ACK)),
    );
}

fn dsr(cl: &mut Cluster) {
    dsr_scene(cl, false, 41_000);
    dsr_scene(cl, true, 41_001);
    // UDP in DSR mode too.
    cl.run(
        fx(
            Node::A,
            "dsr v4 udp: new flow gets the carrier",
            udp_v4_frame(CLIENT, 41_002, VIP_DSR, 53, b"query"),
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            Same,
        )
        .out(with_ipv4_option(
            &udp_v4_frame(CLIENT, 41_002, BE, 5353, b"query"),
            &dsr_v4_option(VIP_DSR, 53),
        )),
    );
    cl.run(fx(
        Node::B,
        "dsr v4 udp: backend's node records the flow",
        with_ipv4_option(
            &udp_v4_frame(CLIENT, 41_002, BE, 5353, b"query"),
            &dsr_v4_option(VIP_DSR, 53),
        ),
        pass(&[Counter::BackendSideNewFlow]),
        Same,
    ));
    cl.run(
        fx(
            Node::B,
            "dsr v4 udp: reply leaves from the service address",
            udp_v4_frame(BE, 5353, CLIENT, 41_002, b"answer"),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(udp_v4_frame(VIP_DSR, 53, CLIENT, 41_002, b"answer")),
    );
}

/// The tunnel over IPv4: node A encapsulates to node B; node B decapsulates (from a configured
/// peer), records the flow, and sends the backend's reply back through the tunnel; node A
/// decapsulates the reply and translates it back to the client.
fn tunnel(cl: &mut Cluster) {
    let v4 = (ip(CLIENT), ip(BE), ip(VIP_TUN), ip(NODE_A), ip(NODE_B));
    let v6 = (
        ip6(client6()),
        ip6(be6()),
        ip6(vip6_tun()),
        ip6(node_a6()),
        ip6(node_b6()),
    );
    for (proto, cport, vport, bport, (client, be, vip, node_a, node_b)) in [
        (L4Proto::Tcp, 43_000, 80, 8080, v4),
        (L4Proto::Udp, 43_001, 53, 5353, v4),
        (L4Proto::Tcp, 43_002, 80, 8080, v6),
        (L4Proto::Udp, 43_003, 53, 5353, v6),
    ] {
        let fam = if client.is_ipv4() { "v4" } else { "v6" };
        let p = format!("tunnel {fam} {proto:?}");
        let t = |src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8| {
            frame(proto, src, sport, dst, dport, flags, b"data")
        };
        let inner = |flags| t(client, cport, be, bport, flags);
        let mut sport = None;
        const NEW: &[Counter] = &[Counter::ServiceNewFlow, Counter::TunnelEncapsulated];
        const EST: &[Counter] = &[Counter::ServiceEstablished, Counter::TunnelEncapsulated];
        for (what, flags, counters, at_tc) in [
            (
                "new flow encapsulated to the backend's node",
                F::SYN,
                NEW,
                Same,
            ),
            ("established, encapsulated", F::ACK, EST, Same),
        ] {
            let o = cl.run(fx(
                Node::A,
                format!("{p}: {what}"),
                t(client, cport, vip, vport, flags),
                pass(counters),
                at_tc,
            ));
            // The outer source port comes from the flow hash: in the dynamic range, the
            // same for every packet of the flow.
            let s = outer_sport(&o.frame);
            assert!(s >= 49_152, "{s}");
            assert_eq!(*sport.get_or_insert(s), s, "one outer source port per flow");
            assert_eq!(o.frame, vxlan(node_a, node_b, s, VNI, &inner(flags)));
            let seen = oracle(&p, &o.frame);
            assert_eq!(seen.vxlan.map(|v| v.0), Some(VNI));
        }
        assert!(cl.has_entry(
            Node::A,
            key(CtKind::ReverseNat, proto, be, bport, client, cport)
        ));

        // Node B: the outer frame as the router delivers it.
        let from_a = |flags| {
            with_macs(
                &vxlan(node_a, node_b, 50_000, VNI, &inner(flags)),
                B_MAC,
                ROUTER_MAC,
            )
        };
        cl.run(
            fx(
                Node::B,
                format!("{p}: decapsulated from a peer, backend-side flow recorded"),
                from_a(F::SYN),
                pass(&[Counter::TunnelDecapsulated, Counter::BackendSideNewFlow]),
                Same,
            )
            .out(with_macs(&inner(F::SYN), B_MAC, ROUTER_MAC)),
        );
        let rev = cl.entry(
            Node::B,
            key(CtKind::ReverseNat, proto, be, bport, client, cport),
        );
        assert_eq!(
            rev.flags & (CT_F_TUNNEL | CT_F_BACKEND_SIDE),
            CT_F_TUNNEL | CT_F_BACKEND_SIDE
        );
        assert_eq!(
            rev.tunnel_peer,
            addr16(node_a),
            "the reply goes back to node A"
        );
        // The service half is keyed by the tuple and the node the flow came from.
        let fwd = cl.entry(Node::B, key_from(node_a, proto, client, cport, be, bport));
        assert_eq!(fwd.tunnel_peer, addr16(node_a));
        assert!(!cl.has_entry(
            Node::B,
            key(CtKind::Service, proto, client, cport, be, bport)
        ));
        cl.run(
            fx(
                Node::B,
                format!("{p}: established, decapsulated"),
                from_a(F::ACK),
                pass(&[Counter::TunnelDecapsulated, Counter::ServiceEstablished]),
                Same,
            )
            .out(with_macs(&inner(F::ACK), B_MAC, ROUTER_MAC)),
        );
        let reply = t(be, bport, client, cport, F::SYN | F::ACK);
        let o = cl.run(fx(
            Node::B,
            format!("{p}: backend's reply goes back through the tunnel"),
            reply.clone(),
            pass(&[Counter::ReplyTranslated, Counter::TunnelEncapsulated]),
            Same,
        ));
        let s = outer_sport(&o.frame);
        assert!(s >= 49_152, "{s}");
        assert_eq!(o.frame, vxlan(node_b, node_a, s, VNI, &reply));
        // Node A: the tunnelled reply, decapsulated and translated back to the client.
        cl.run(
            fx(
                Node::A,
                format!("{p}: tunnelled reply decapsulated and translated to the client"),
                with_macs(
                    &vxlan(node_b, node_a, 50_001, VNI, &reply),
                    A_MAC,
                    ROUTER_MAC,
                ),
                pass(&[Counter::TunnelDecapsulated, Counter::ReplyTranslated]),
                Same,
            )
            .out(with_macs(
                &t(vip, vport, client, cport, F::SYN | F::ACK),
                A_MAC,
                ROUTER_MAC,
            )),
        );
    }
}

/// Hybrid: TCP takes DSR, UDP takes SNAT.
fn hybrid(cl: &mut Cluster) {
    cl.run(
        fx(
            Node::A,
            "hybrid tcp: DSR carrier",
            tcp_v4_frame(CLIENT, 44_000, VIP_HYB, 80, F::SYN, b""),
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            Same,
        )
        .out(with_ipv4_option(
            &tcp_v4_frame(CLIENT, 44_000, BE, 8080, F::SYN, b""),
            &dsr_v4_option(VIP_HYB, 80),
        )),
    );
    let e = cl.entry(
        Node::A,
        key(
            CtKind::Service,
            L4Proto::Tcp,
            ip(CLIENT),
            44_000,
            ip(VIP_HYB),
            80,
        ),
    );
    assert_eq!(e.flags & (CT_F_DSR | CT_F_SNAT), CT_F_DSR);
    cl.run(
        fx(
            Node::A,
            "hybrid udp: SNAT",
            udp_v4_frame(CLIENT, 44_001, VIP_HYB, 53, b"query"),
            pass(&[Counter::ServiceNewFlow, Counter::SnatAttempts1]),
            Same,
        )
        .out(udp_v4_frame(NODE_A, 44_001, BE, 5353, b"query")),
    );
    let e = cl.entry(
        Node::A,
        key(
            CtKind::Service,
            L4Proto::Udp,
            ip(CLIENT),
            44_001,
            ip(VIP_HYB),
            53,
        ),
    );
    assert_eq!(e.flags & (CT_F_DSR | CT_F_SNAT), CT_F_SNAT);
    cl.run(
        fx(
            Node::A,
            "hybrid udp: reply back to the client",
            udp_v4_frame(BE, 5353, NODE_A, 44_001, b"answer"),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(udp_v4_frame(VIP_HYB, 53, CLIENT, 44_001, b"answer")),
    );
}

/// The collision resolver on the backend's node: a client reaches the backend through node B's
/// own NodePort (plain DNAT on node B) and, with the same source port, through node A (DSR or
/// tunnel, keeping the client's address). The reply tuples collide; the flow node A forwarded
/// gets another source port on node B, and its replies get the original one back.
fn backend_side_collisions(cl: &mut Cluster) {
    // DSR.
    let cport = 42_000;
    cl.run(
        fx(
            Node::B,
            "collision (dsr): local NodePort flow",
            tcp_v4_frame(CLIENT, cport, NODE_B, NODEPORT_DSR, F::SYN, b""),
            pass(&[Counter::ServiceNewFlow]),
            Same,
        )
        .out(tcp_v4_frame(CLIENT, cport, BE, 8080, F::SYN, b"")),
    );
    let opt = dsr_v4_option(NODE_A, NODEPORT_DSR);
    let carried =
        |port, flags| with_ipv4_option(&tcp_v4_frame(CLIENT, port, BE, 8080, flags, b""), &opt);
    let o = cl.run(fx(
        Node::B,
        "collision (dsr): the same client port through node A: source port rewritten",
        carried(cport, F::SYN),
        pass(&[Counter::BackendSideNewFlow, Counter::SourcePortRewritten]),
        Same,
    ));
    // Keyed by the tuple the client sent, to node A's NodePort (the carrier names it).
    let e = cl.entry(
        Node::B,
        key(
            CtKind::Service,
            L4Proto::Tcp,
            ip(CLIENT),
            cport,
            ip(NODE_A),
            NODEPORT_DSR,
        ),
    );
    assert_eq!((e.nat_addr, e.nat_port), (addr16(ip(BE)), 8080));
    let port = e.rewritten_src_port;
    assert_eq!(
        e.flags & (CT_F_SRC_PORT_REWRITTEN | CT_F_DSR | CT_F_BACKEND_SIDE),
        CT_F_SRC_PORT_REWRITTEN | CT_F_DSR | CT_F_BACKEND_SIDE
    );
    assert!(COLLISION_PORTS.contains(&port), "{port}");
    assert_eq!(
        o.frame,
        carried(port, F::SYN),
        "the rewritten port, the carrier kept"
    );
    cl.run(
        fx(
            Node::B,
            "collision (dsr): next packet, port rewritten again",
            carried(cport, F::ACK),
            pass(&[Counter::ServiceEstablished]),
            Same,
        )
        .out(carried(port, F::ACK)),
    );
    cl.run(
        fx(
            Node::B,
            "collision (dsr): reply to the rewritten port: node A's service, the client's port",
            tcp_v4_frame(BE, 8080, CLIENT, port, F::SYN | F::ACK, b""),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(tcp_v4_frame(
            NODE_A,
            NODEPORT_DSR,
            CLIENT,
            cport,
            F::SYN | F::ACK,
            b"",
        )),
    );
    cl.run(
        fx(
            Node::B,
            "collision (dsr): reply of the local flow, untouched by the other",
            tcp_v4_frame(BE, 8080, CLIENT, cport, F::SYN | F::ACK, b""),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(tcp_v4_frame(
            NODE_B,
            NODEPORT_DSR,
            CLIENT,
            cport,
            F::SYN | F::ACK,
            b"",
        )),
    );

    // Tunnel.
    let cport = 42_001;
    cl.run(
        fx(
            Node::B,
            "collision (tunnel): local NodePort flow",
            tcp_v4_frame(CLIENT, cport, NODE_B, NODEPORT_TUN, F::SYN, b""),
            pass(&[Counter::ServiceNewFlow]),
            Same,
        )
        .out(tcp_v4_frame(CLIENT, cport, BE, 8080, F::SYN, b"")),
    );
    let inner = |port, flags| tcp_v4_frame(CLIENT, port, BE, 8080, flags, b"");
    let o = cl.run(fx(
        Node::B,
        "collision (tunnel): the same client port from node A: source port rewritten",
        with_macs(
            &vxlan_v4(NODE_A, NODE_B, 50_002, VNI, &inner(cport, F::SYN)),
            B_MAC,
            ROUTER_MAC,
        ),
        pass(&[
            Counter::TunnelDecapsulated,
            Counter::BackendSideNewFlow,
            Counter::SourcePortRewritten,
        ]),
        Same,
    ));
    let reply = |port| tcp_v4_frame(BE, 8080, CLIENT, port, F::SYN | F::ACK, b"");
    let e = cl.entry(
        Node::B,
        key_from(ip(NODE_A), L4Proto::Tcp, ip(CLIENT), cport, ip(BE), 8080),
    );
    let port = e.rewritten_src_port;
    assert!(COLLISION_PORTS.contains(&port), "{port}");
    assert_eq!(o.frame, with_macs(&inner(port, F::SYN), B_MAC, ROUTER_MAC));
    let o = cl.run(fx(
        Node::B,
        "collision (tunnel): reply to the rewritten port goes back through the tunnel, port restored",
        reply(port),
        pass(&[Counter::ReplyTranslated, Counter::TunnelEncapsulated]),
        Same,
    ));
    let s = u16::from_be_bytes([o.frame[34], o.frame[35]]);
    assert_eq!(o.frame, vxlan_v4(NODE_B, NODE_A, s, VNI, &reply(cport)));
    cl.run(
        fx(
            Node::B,
            "collision (tunnel): reply of the local flow",
            reply(cport),
            pass(&[Counter::ReplyTranslated]),
            Same,
        )
        .out(tcp_v4_frame(
            NODE_B,
            NODEPORT_TUN,
            CLIENT,
            cport,
            F::SYN | F::ACK,
            b"",
        )),
    );

    // Two frontends of node A, tunnel mode: node A holds both flows' reverse halves, so it
    // resolves the collision itself before encapsulating.
    let cport = 42_002;
    let first: &'static [Counter] = &[Counter::ServiceNewFlow, Counter::TunnelEncapsulated];
    let second: &'static [Counter] = &[
        Counter::ServiceNewFlow,
        Counter::SourcePortRewritten,
        Counter::TunnelEncapsulated,
    ];
    for (vport, expect, at_tc, name) in [
        (80, pass(first), Same, "first frontend"),
        (
            81,
            pass(second),
            Same,
            "second frontend, same client port: rewritten before encapsulation",
        ),
    ] {
        let o = cl.run(fx(
            Node::A,
            format!("collision (tunnel, node A): {name}"),
            tcp_v4_frame(CLIENT, cport, VIP_TUN, vport, F::SYN, b""),
            expect,
            at_tc,
        ));
        let e = cl.entry(
            Node::A,
            key(
                CtKind::Service,
                L4Proto::Tcp,
                ip(CLIENT),
                cport,
                ip(VIP_TUN),
                vport,
            ),
        );
        let port = if vport == 80 {
            cport
        } else {
            assert!(COLLISION_PORTS.contains(&e.rewritten_src_port), "{e:?}");
            e.rewritten_src_port
        };
        let s = u16::from_be_bytes([o.frame[34], o.frame[35]]);
        assert_eq!(
            o.frame,
            vxlan_v4(NODE_A, NODE_B, s, VNI, &inner(port, F::SYN))
        );
    }
}

/// Bad input and limits.
fn bad_input(cl: &mut Cluster) {
    let inner = tcp_v4_frame(CLIENT, 46_000, BE, 8080, F::SYN, b"");
    let vx = |src: [u8; 4], vni: u32, inner: &[u8]| {
        with_macs(
            &vxlan_v4(src, NODE_B, 50_003, vni, inner),
            B_MAC,
            ROUTER_MAC,
        )
    };
    cl.run(fx(
        Node::B,
        "vxlan from an address that is not a configured node",
        vx(STRANGER, VNI, &inner),
        dropped(DropReason::TunnelFromUnknownNode, &[]),
        Same,
    ));
    let mut no_i_flag = vx(NODE_A, VNI, &inner);
    no_i_flag[42] = 0;
    cl.run(fx(
        Node::B,
        "vxlan header without the I flag",
        no_i_flag,
        dropped(DropReason::BadTunnelHeader, &[]),
        Same,
    ));
    cl.run(fx(
        Node::B,
        "vxlan with another VNI",
        vx(NODE_A, VNI + 1, &inner),
        dropped(DropReason::BadTunnelHeader, &[]),
        Same,
    ));
    // UDP to the tunnel port carrying 4 bytes: a VXLAN header cut short (the UDP and IP lengths
    // agree with the frame, so it parses).
    let mut cut = udp_v4_frame(NODE_A, 50_004, NODE_B, 4789, &[0x08, 0, 0, 0]);
    cut = with_macs(&cut, B_MAC, ROUTER_MAC);
    cl.run(fx(
        Node::B,
        "vxlan header truncated",
        cut,
        dropped(DropReason::BadTunnelHeader, &[]),
        Same,
    ));
    cl.run(fx(
        Node::B,
        "vxlan with an inner frame shorter than Ethernet",
        vxlan_v4_macs(
            NODE_A,
            NODE_B,
            50_003,
            VNI,
            &inner[..10],
            (B_MAC, ROUTER_MAC),
        ),
        dropped(DropReason::BadTunnelHeader, &[]),
        Same,
    ));

    // The MTU: a packet that fits with the carrier goes; one byte more and the sender gets the
    // ICMP error with the MTU that leaves room for the carrier.
    let payload = |ip_len: usize, header: usize| vec![0x5a; ip_len - header];
    let fits = tcp_v4_frame(CLIENT, 45_000, VIP_DSR, 80, F::ACK, &payload(1492, 40));
    cl.run(
        fx(
            Node::A,
            "dsr v4: 1492 bytes + 8 of carrier fit the 1500 MTU",
            fits,
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            Same,
        )
        .out(with_ipv4_option(
            &tcp_v4_frame(CLIENT, 45_000, BE, 8080, F::ACK, &payload(1492, 40)),
            &dsr_v4_option(VIP_DSR, 80),
        )),
    );
    for (name, sent, from, mtu) in [
        (
            "dsr v4: 1493 bytes do not fit with the option",
            tcp_v4_frame(CLIENT, 45_001, VIP_DSR, 80, F::ACK, &payload(1493, 40)),
            ip(NODE_A),
            1492,
        ),
        (
            "dsr v4, established flow: too big",
            tcp_v4_frame(CLIENT, 45_000, VIP_DSR, 80, F::ACK, &payload(1500, 40)),
            ip(NODE_A),
            1492,
        ),
        (
            "tunnel v4: 1451 bytes do not fit with 50 of VXLAN",
            tcp_v4_frame(CLIENT, 45_002, VIP_TUN, 80, F::ACK, &payload(1451, 40)),
            ip(NODE_A),
            1450,
        ),
        (
            "tunnel v6: 1431 bytes do not fit with 70 of VXLAN over IPv6",
            tcp_v6_frame(
                client6(),
                45_004,
                vip6_tun(),
                80,
                F::ACK,
                &payload(1431, 60),
            ),
            ip6(node_a6()),
            1430,
        ),
        (
            "dsr v6: 1477 bytes do not fit with the 24-byte option",
            tcp_v6_frame(
                client6(),
                45_003,
                vip6_dsr(),
                80,
                F::ACK,
                &payload(1477, 60),
            ),
            ip6(node_a6()),
            1476,
        ),
    ] {
        let o = cl.run(
            fx(
                Node::A,
                name,
                sent.clone(),
                tx(&[Counter::MtuExceeded]),
                Same,
            )
            .out(too_big(&sent, from, mtu)),
        );
        let seen = oracle(name, &o.frame);
        let (ty, code, rest) = seen.icmp.expect("an ICMP error");
        if from.is_ipv4() {
            assert_eq!((ty, code), (3, 4), "fragmentation needed");
            assert_eq!(u16::from_be_bytes([rest[2], rest[3]]), mtu);
        } else {
            assert_eq!((ty, code), (2, 0), "packet too big");
            assert_eq!(u32::from_be_bytes(rest), u32::from(mtu));
        }
    }
    // No flow was created for the packets turned into errors.
    assert!(!cl.has_entry(
        Node::A,
        key(
            CtKind::Service,
            L4Proto::Tcp,
            ip(CLIENT),
            45_001,
            ip(VIP_DSR),
            80
        )
    ));

    // Node C has no IPv6 address: SNAT or the tunnel for an IPv6 flow cannot happen, nor can an
    // ICMPv6 error be sent from it.
    cl.run(fx(
        Node::C,
        "snat v6 on a node without an IPv6 address",
        tcp_v6_frame(client6(), 47_000, vip6_snat(), 80, F::SYN, b""),
        dropped(DropReason::NodeAddressMissing, &[]),
        Same,
    ));
    cl.run(fx(
        Node::C,
        "tunnel v6 on a node without an IPv6 address (no outer source)",
        tcp_v6_frame(client6(), 47_002, vip6_tun(), 80, F::SYN, b""),
        dropped(DropReason::NodeAddressMissing, &[]),
        Same,
    ));
    cl.run(fx(
        Node::C,
        "dsr v6 too big on a node without an IPv6 address (no ICMPv6 source)",
        tcp_v6_frame(
            client6(),
            47_001,
            vip6_dsr(),
            80,
            F::ACK,
            &payload(1477, 60),
        ),
        dropped(DropReason::NodeAddressMissing, &[]),
        Same,
    ));
    assert!(
        !cl.c.engine.conntrack().iter().any(|(k, _)| k.family == 6),
        "no IPv6 flow on node C"
    );
}

/// The carriers where the headers in front of them vary: VLAN tags, IPv4 options, IPv6
/// extension headers.
fn carrier_edge_cases(cl: &mut Cluster) {
    let q = |f: &[u8]| tagged(f, 0x8100, 7);
    let syn = |port, dst, dport| tcp_v4_frame(CLIENT, port, dst, dport, F::SYN, b"");
    let opt = dsr_v4_option(VIP_DSR, 80);

    let carried = q(&with_ipv4_option(&syn(48_000, BE, 8080), &opt));
    cl.run(
        fx(
            Node::A,
            "802.1Q-tagged dsr v4: carrier after the tag and the IPv4 header",
            q(&syn(48_000, VIP_DSR, 80)),
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            TC_TAGGED_NOT_CARRIED,
        )
        .out(carried.clone()),
    );
    cl.run(
        fx(
            Node::B,
            "802.1Q-tagged dsr v4 at the backend's node",
            carried.clone(),
            pass(&[Counter::BackendSideNewFlow]),
            Same,
        )
        .out(carried),
    );

    let inner = q(&syn(48_001, BE, 8080));
    let o = cl.run(fx(
        Node::A,
        "802.1Q-tagged tunnel v4: the tagged frame is the inner frame",
        q(&syn(48_001, VIP_TUN, 80)),
        pass(&[Counter::ServiceNewFlow, Counter::TunnelEncapsulated]),
        TC_TAGGED_NOT_CARRIED,
    ));
    if !cl.is_tc() {
        // (At TC the tagged frame was not carried.)
        let s = u16::from_be_bytes([o.frame[34], o.frame[35]]);
        assert_eq!(o.frame, vxlan_v4(NODE_A, NODE_B, s, VNI, &inner));
    }
    cl.run(
        fx(
            Node::B,
            "802.1Q-tagged inner frame decapsulated at the backend's node",
            with_macs(
                &vxlan_v4(NODE_A, NODE_B, 50_010, VNI, &inner),
                B_MAC,
                ROUTER_MAC,
            ),
            pass(&[Counter::TunnelDecapsulated, Counter::BackendSideNewFlow]),
            TC_TAGGED_INNER_NOT_DECAPSULATED,
        )
        .out(with_macs(&inner, B_MAC, ROUTER_MAC)),
    );

    let big = tcp_v4_frame(CLIENT, 48_002, VIP_DSR, 80, F::ACK, &[0x5a; 1493 - 40]);
    cl.run(
        fx(
            Node::A,
            "802.1Q-tagged dsr v4 too big: the ICMP error keeps the tag",
            q(&big),
            tx(&[Counter::MtuExceeded]),
            TC_TAGGED_TOO_BIG_NOT_SENT,
        )
        .out(q(&too_big(&big, ip(NODE_A), 1492))),
    );

    // IPv4 options already there: the carrier goes first, before them (an End-of-Option-List
    // among them would hide anything after it), while the header has room.
    let nops = [1u8; 4];
    let mut both = opt.to_vec();
    both.extend_from_slice(&nops);
    let carried = with_ipv4_option(&syn(48_003, BE, 8080), &both);
    cl.run(
        fx(
            Node::A,
            "dsr v4 with 4 bytes of IPv4 options: carrier added",
            with_ipv4_option(&syn(48_003, VIP_DSR, 80), &nops),
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            Same,
        )
        .out(carried.clone()),
    );
    cl.run(
        fx(
            Node::B,
            "dsr v4 with IPv4 options at the backend's node: the carrier is found",
            carried.clone(),
            pass(&[Counter::BackendSideNewFlow]),
            Same,
        )
        .out(carried),
    );
    // 36 bytes of options: 8 more do not fit the 60-byte IPv4 header. The flow exists, its
    // packet cannot be carried: dropped, at XDP as at TC.
    cl.run(fx(
        Node::A,
        "dsr v4 with 36 bytes of IPv4 options: no room for the carrier",
        with_ipv4_option(&syn(48_004, VIP_DSR, 80), &[1u8; 36]),
        // The flow is created and the packet translated before the carrier fails; it counts
        // as dropped only.
        dropped(DropReason::EncapFailed, &[]),
        Same,
    ));

    // IPv6: a hop-by-hop header must stay first, so the DSR header cannot go in front of it;
    // another destination options header stays, after the DSR one.
    let syn6 = |port, dst, dport| tcp_v6_frame(client6(), port, dst, dport, F::SYN, b"");
    cl.run(fx(
        Node::A,
        "dsr v6 behind a hop-by-hop header: no room for the carrier",
        with_ipv6_padn_ext(&syn6(48_005, vip6_dsr(), 80), 0),
        // The flow is created and the packet translated before the carrier fails; it counts
        // as dropped only.
        dropped(DropReason::EncapFailed, &[]),
        Same,
    ));
    let carried = with_ipv6_dsr(
        &with_ipv6_padn_ext(&syn6(48_006, be6(), 8080), 60),
        vip6_dsr(),
        80,
    );
    cl.run(
        fx(
            Node::A,
            "dsr v6 with a destination options header already: the carrier goes first",
            with_ipv6_padn_ext(&syn6(48_006, vip6_dsr(), 80), 60),
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            Same,
        )
        .out(carried.clone()),
    );
    cl.run(
        fx(
            Node::B,
            "dsr v6 with two destination options headers at the backend's node",
            carried.clone(),
            pass(&[Counter::BackendSideNewFlow]),
            Same,
        )
        .out(carried),
    );
}

/// TC only: GSO packets (a local sender's TCP data with segmentation offload, as one large
/// packet with its segment size in the skb). The MTU decision goes by the segments: the same
/// 3000-byte packet gets the ICMP error when its segments with the carrier exceed the MTU, and
/// is carried when they fit. (The kernel's test runner gives a GSO size no GSO type, and the
/// kernel resizes no such packet: there the carrier fails, in both worlds alike. With a TCP GSO
/// type it is added: the engine's tests show it.)
fn gso_at_tc(cl: &mut Cluster) {
    let payload = vec![0x5a; 2960];
    let big = |port, dst: IpAddr| frame(L4Proto::Tcp, ip(CLIENT), port, dst, 80, F::ACK, &payload);
    for (name, port, vip, gso, expect, out) in [
        (
            "dsr v4 gso: segments of 1460 bytes with 8 of carrier exceed the MTU",
            45_100,
            VIP_DSR,
            1460,
            tx(&[Counter::MtuExceeded]),
            Some(1492),
        ),
        (
            "dsr v4 gso: segments of 1400 bytes fit with the carrier (the runner's GSO packet \
             cannot grow)",
            45_101,
            VIP_DSR,
            1400,
            dropped(DropReason::EncapFailed, &[]),
            None,
        ),
        (
            "tunnel v4 gso: segments of 1420 bytes with 50 of VXLAN exceed the MTU",
            45_102,
            VIP_TUN,
            1420,
            tx(&[Counter::MtuExceeded]),
            Some(1450),
        ),
        (
            "tunnel v4 gso: segments of 1400 bytes fit with VXLAN (the runner's GSO packet \
             cannot grow)",
            45_103,
            VIP_TUN,
            1400,
            dropped(DropReason::EncapFailed, &[]),
            None,
        ),
    ] {
        let sent = big(port, ip(vip));
        cl.a.skb.gso_size = gso;
        let mut f = fx(Node::A, name, sent.clone(), expect, Same);
        if let Some(mtu) = out {
            f = f.out(too_big(&sent, ip(NODE_A), mtu));
        }
        cl.run(f);
        cl.a.skb.gso_size = 0;
    }
}

fn run_modes(program: Program) -> Cluster {
    let mut cl = Cluster::new(program);
    snat(&mut cl);
    dsr(&mut cl);
    tunnel(&mut cl);
    hybrid(&mut cl);
    backend_side_collisions(&mut cl);
    carrier_edge_cases(&mut cl);
    bad_input(&mut cl);
    if cl.is_tc() {
        gso_at_tc(&mut cl);
    }
    cl
}

#[test]
fn engine_and_kernel_agree_on_forwarding_modes() {
    if !common::privileged("engine_and_kernel_agree_on_forwarding_modes") {
        return;
    }
    for program in [Program::Xdp, Program::Tc] {
        let cl = run_modes(program);
        let compared = cl.a.compared + cl.b.compared + cl.c.compared;
        assert_eq!(compared, cl.run, "every fixture went through both worlds");
        assert!(cl.run > 70, "{}: only {} fixtures", program.name(), cl.run);
        if program == Program::Tc {
            assert!(cl.differs > 0);
        } else {
            assert_eq!(cl.differs, 0);
        }
        eprintln!(
            "{}: {} forwarding-mode fixtures identical between engine and kernel ({} with the \
             TC outcome of a VLAN-tagged packet, which the kernel does not resize)",
            program.name(),
            cl.run,
            cl.differs
        );
    }
}

/// Incident 2 with the frontends on two other nodes: a client reaches node A's and node C's
/// NodePorts from one source port, and both nodes pick the same backend on node B, keeping the
/// client's address (DSR, then the tunnel). Both flows reach node B with one tuple, client ->
/// backend. Node B keeps them apart by the service entry's key: under DSR the tuple the client
/// sent (the carrier names the NodePort), through the tunnel the tuple and the node it came
/// from. The second flow's first packet is a new flow, its reply tuple collides with the
/// first's, so it gets another source port; each flow's replies go back the way it came. Every
/// packet runs through the engine and the kernel (XDP and TC), compared.
#[test]
fn backend_side_resolves_flows_forwarded_by_two_nodes() {
    if !common::privileged("backend_side_resolves_flows_forwarded_by_two_nodes") {
        return;
    }
    for program in [Program::Xdp, Program::Tc] {
        let mut cl = Cluster::new(program);
        let reply = |port| tcp_v4_frame(BE, 8080, CLIENT, port, F::SYN | F::ACK, b"");

        // DSR.
        let cport = 49_000;
        let via = |node: [u8; 4], port, flags| {
            with_ipv4_option(
                &tcp_v4_frame(CLIENT, port, BE, 8080, flags, b""),
                &dsr_v4_option(node, NODEPORT_DSR),
            )
        };
        cl.run(
            fx(
                Node::B,
                "dsr via node A",
                via(NODE_A, cport, F::SYN),
                pass(&[Counter::BackendSideNewFlow]),
                Same,
            )
            .out(via(NODE_A, cport, F::SYN)),
        );
        let o = cl.run(fx(
            Node::B,
            "dsr via node C, same client port: a new flow, source port rewritten",
            via(NODE_C, cport, F::SYN),
            pass(&[Counter::BackendSideNewFlow, Counter::SourcePortRewritten]),
            Same,
        ));
        let second = |node: [u8; 4]| {
            key(
                CtKind::Service,
                L4Proto::Tcp,
                ip(CLIENT),
                cport,
                ip(node),
                NODEPORT_DSR,
            )
        };
        let port = cl.entry(Node::B, second(NODE_C)).rewritten_src_port;
        assert!(COLLISION_PORTS.contains(&port), "{port}");
        assert_eq!(o.frame, via(NODE_C, port, F::SYN));
        assert_eq!(
            cl.entry(Node::B, second(NODE_A)).flags & CT_F_SRC_PORT_REWRITTEN,
            0,
            "the first flow keeps its port"
        );
        for (name, node, port) in [("A", NODE_A, cport), ("C", NODE_C, port)] {
            cl.run(
                fx(
                    Node::B,
                    format!("dsr: node {name}'s flow, established, its own port"),
                    via(node, cport, F::ACK),
                    pass(&[Counter::ServiceEstablished]),
                    Same,
                )
                .out(via(node, port, F::ACK)),
            );
            cl.run(
                fx(
                    Node::B,
                    format!("dsr: reply to node {name}'s flow leaves from its NodePort"),
                    reply(port),
                    pass(&[Counter::ReplyTranslated]),
                    Same,
                )
                .out(tcp_v4_frame(
                    node,
                    NODEPORT_DSR,
                    CLIENT,
                    cport,
                    F::SYN | F::ACK,
                    b"",
                )),
            );
        }

        // Tunnel.
        let cport = 49_001;
        let from = |node: [u8; 4], flags| {
            with_macs(
                &vxlan_v4(
                    node,
                    NODE_B,
                    50_010,
                    VNI,
                    &tcp_v4_frame(CLIENT, cport, BE, 8080, flags, b""),
                ),
                B_MAC,
                ROUTER_MAC,
            )
        };
        let delivered = |port, flags| {
            with_macs(
                &tcp_v4_frame(CLIENT, port, BE, 8080, flags, b""),
                B_MAC,
                ROUTER_MAC,
            )
        };
        cl.run(
            fx(
                Node::B,
                "tunnel from node A",
                from(NODE_A, F::SYN),
                pass(&[Counter::TunnelDecapsulated, Counter::BackendSideNewFlow]),
                Same,
            )
            .out(delivered(cport, F::SYN)),
        );
        let o = cl.run(fx(
            Node::B,
            "tunnel from node C, same client port: a new flow, source port rewritten",
            from(NODE_C, F::SYN),
            pass(&[
                Counter::TunnelDecapsulated,
                Counter::BackendSideNewFlow,
                Counter::SourcePortRewritten,
            ]),
            Same,
        ));
        let origin =
            |node: [u8; 4]| key_from(ip(node), L4Proto::Tcp, ip(CLIENT), cport, ip(BE), 8080);
        let port = cl.entry(Node::B, origin(NODE_C)).rewritten_src_port;
        assert!(COLLISION_PORTS.contains(&port), "{port}");
        assert_eq!(o.frame, delivered(port, F::SYN));
        for (name, node, port) in [("A", NODE_A, cport), ("C", NODE_C, port)] {
            cl.run(
                fx(
                    Node::B,
                    format!("tunnel: node {name}'s flow, established, its own port"),
                    from(node, F::ACK),
                    pass(&[Counter::TunnelDecapsulated, Counter::ServiceEstablished]),
                    Same,
                )
                .out(delivered(port, F::ACK)),
            );
            let o = cl.run(fx(
                Node::B,
                format!("tunnel: reply to node {name}'s flow goes back to node {name}"),
                reply(port),
                pass(&[Counter::ReplyTranslated, Counter::TunnelEncapsulated]),
                Same,
            ));
            let s = u16::from_be_bytes([o.frame[34], o.frame[35]]);
            assert_eq!(o.frame, vxlan_v4(NODE_B, node, s, VNI, &reply(cport)));
        }
    }
}

/// Finding (both worlds agree): the IPv4 DSR option is appended after the options a packet
/// already has. After an End-of-Option-List option (type 0, legal before the end of the
/// header) receivers stop reading, the backend's node among them (`dsr_extract` returns at
/// type 0; Linux even overwrites what follows with EOL), so the flow is not recognised there
/// and its replies leave from the backend's address. Proposed fix, local to
/// `lb_encap::dsr::dsr_v4_insert`: put the option first, right after the fixed 20-byte header
/// (move `l3 + 20` bytes instead of `l4`, store at `l3 + 20`).
#[test]
fn dsr_option_is_read_after_an_end_of_options_list() {
    if !common::privileged("dsr_option_is_read_after_an_end_of_options_list") {
        return;
    }
    for program in [Program::Xdp, Program::Tc] {
        let mut cl = Cluster::new(program);
        let eol = [0u8; 4];
        let o = cl.run(fx(
            Node::A,
            "dsr v4 with an End-of-Option-List option",
            with_ipv4_option(
                &tcp_v4_frame(CLIENT, 49_001, VIP_DSR, 80, F::SYN, b""),
                &eol,
            ),
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            Same,
        ));
        cl.run(fx(
            Node::B,
            "the backend's node finds the carrier",
            o.frame,
            pass(&[Counter::BackendSideNewFlow]),
            Same,
        ));
    }
}
