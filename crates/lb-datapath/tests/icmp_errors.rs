//! ICMP and ICMPv6 errors about translated flows (RFC 5508), through the engine: port
//! unreachable, fragmentation needed / packet too big and time exceeded, towards the client
//! (about a packet client → backend) and towards the backend (about a reply service → client),
//! raised by the peer itself or by a router in between, for a plain flow and for a flow whose
//! source port the collision resolver rewrote; IPv4 and IPv6.
//!
//! Each translated error must be byte-identical to the error built from scratch (full checksums)
//! around the packet as its receiver sent it, and etherparse must accept its checksums.

use etherparse::{Icmpv4Header, NetSlice, SlicedPacket, TransportSlice};
use lb_api::abi::CtKind;
use lb_api::counters::{Counter, DropReason};
use lb_api::flow::{v4_addr, v4_of, L4Proto};
use lb_api::wire::testing::{
    icmp_v4_error_frame, icmp_v6_error_frame, tcp_v4_frame, tcp_v6_frame, udp_v4_frame,
    udp_v6_frame,
};
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_conntrack::ManualClock;
use lb_datapath::engine::{default_config, Engine};
use lb_nat::control::ServiceSpec;
use std::net::{IpAddr, SocketAddr};

const CLIENT_PORT: u16 = 40_000;
const UDP_CLIENT_PORT: u16 = 53_000;

/// The addresses of one family's scenario (IPv4 ones in the first 4 bytes).
struct Net {
    v6: bool,
    client: [u8; 16],
    vip: [u8; 16],
    vip2: [u8; 16],
    backend: [u8; 16],
    udp_backend: [u8; 16],
    router: [u8; 16],
}

fn net(v6: bool) -> Net {
    let a = |s: &str| match s.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => v4_addr(a.octets()),
        IpAddr::V6(a) => a.octets(),
    };
    if v6 {
        Net {
            v6,
            client: a("fd00::1"),
            vip: a("fd96::10"),
            vip2: a("fd96::11"),
            backend: a("fd01::2"),
            udp_backend: a("fd01::5"),
            router: a("fd09::9"),
        }
    } else {
        Net {
            v6,
            client: a("10.0.0.1"),
            vip: a("10.96.0.10"),
            vip2: a("10.96.0.11"),
            backend: a("10.1.0.2"),
            udp_backend: a("10.1.0.5"),
            router: a("10.9.9.9"),
        }
    }
}

impl Net {
    fn sock(&self, a: [u8; 16], port: u16) -> SocketAddr {
        if self.v6 {
            SocketAddr::from((a, port))
        } else {
            SocketAddr::from((v4_of(&a), port))
        }
    }

    /// A frame a → b of `proto` (TCP ACK or UDP), built from scratch.
    fn frame(&self, proto: L4Proto, a: [u8; 16], ap: u16, b: [u8; 16], bp: u16) -> Vec<u8> {
        let pl = b"some payload";
        match (self.v6, proto) {
            (false, L4Proto::Tcp) => tcp_v4_frame(v4_of(&a), ap, v4_of(&b), bp, TcpFlags::ACK, pl),
            (false, _) => udp_v4_frame(v4_of(&a), ap, v4_of(&b), bp, pl),
            (true, L4Proto::Tcp) => tcp_v6_frame(a, ap, b, bp, TcpFlags::ACK, pl),
            (true, _) => udp_v6_frame(a, ap, b, bp, pl),
        }
    }

    /// An error of `kind` from `from` to `to` quoting the IP datagram of `quoted` (a frame),
    /// cut to its IP header and 8 transport bytes when `cut`.
    fn error(&self, kind: Kind, from: [u8; 16], to: [u8; 16], quoted: &[u8], cut: bool) -> Vec<u8> {
        let mut q = quoted[14..].to_vec();
        if cut {
            q.truncate(if self.v6 { 48 } else { 28 });
        }
        let mtu = 1400u32.to_be_bytes();
        if self.v6 {
            let (ty, code, rest) = match kind {
                Kind::PortUnreachable => (1, 4, [0; 4]),
                Kind::TooBig => (2, 0, mtu),
                Kind::TimeExceeded => (3, 0, [0; 4]),
            };
            icmp_v6_error_frame(from, to, ty, code, rest, &q)
        } else {
            let (ty, code, rest) = match kind {
                Kind::PortUnreachable => (3, 3, [0; 4]),
                Kind::TooBig => (3, 4, [0, 0, mtu[2], mtu[3]]),
                Kind::TimeExceeded => (11, 0, [0; 4]),
            };
            icmp_v4_error_frame(v4_of(&from), v4_of(&to), ty, code, rest, &q)
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    PortUnreachable,
    /// IPv4 "fragmentation needed", ICMPv6 "packet too big".
    TooBig,
    TimeExceeded,
}

/// The engine with three services: TCP on VIP:80 and VIP2:80 (both to the one backend, so the
/// same client port through both collides) and UDP on VIP:53.
fn engine(n: &Net) -> Engine<ManualClock> {
    let mut cfg = default_config(7);
    cfg.fixed_now_ns = 5_000;
    let mut e = Engine::with_clock(1024, cfg, ManualClock::new(5_000));
    let id = if n.v6 { 10 } else { 0 };
    for (id, vip, port, proto, be, be_port) in [
        (id + 1, n.vip, 80, L4Proto::Tcp, n.backend, 8080),
        (id + 2, n.vip, 53, L4Proto::Udp, n.udp_backend, 5353),
        (id + 3, n.vip2, 80, L4Proto::Tcp, n.backend, 8080),
    ] {
        e.upsert_service(&ServiceSpec {
            id,
            frontend: n.sock(vip, port),
            proto,
            backends: vec![n.sock(be, be_port).into()],
            ..Default::default()
        })
        .unwrap();
    }
    e
}

/// Asserts that etherparse accepts the error's outer (IPv4) and ICMP checksums.
fn assert_checksums_valid(frame: &[u8]) {
    let p = SlicedPacket::from_ethernet(frame).expect("etherparse accepts the frame");
    match (&p.net, &p.transport) {
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(icmp))) => {
            let h = ip.header();
            assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
            let want = Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload()).checksum;
            assert_eq!(want, icmp.checksum(), "ICMP checksum");
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) => {
            let h = ip.header();
            assert!(icmp.is_checksum_valid(h.source(), h.destination()));
        }
        other => panic!("not an ICMP error: {other:?}"),
    }
}

/// Runs `input` and checks the outcome: verdict, exactly the one counter, bytes equal to
/// `expect`, and conntrack untouched (an error does not keep a flow alive).
fn check(
    e: &mut Engine<ManualClock>,
    name: &str,
    mut input: Vec<u8>,
    expect: &[u8],
    verdict: Verdict,
    counter: Counter,
) {
    let before = *e.counters();
    let mut ct_before: Vec<_> = e.conntrack().iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(e.process(&mut input), verdict, "{name}: verdict");
    assert_eq!(
        e.counters().get(counter),
        before.get(counter) + 1,
        "{name}: {counter:?}"
    );
    assert_eq!(input, expect, "{name}: bytes");
    let mut ct_after: Vec<_> = e.conntrack().iter().map(|(k, v)| (*k, *v)).collect();
    ct_before.sort_by_key(|(k, _)| format!("{k:?}"));
    ct_after.sort_by_key(|(k, _)| format!("{k:?}"));
    assert_eq!(ct_before, ct_after, "{name}: conntrack changed");
    if verdict == Verdict::Pass {
        assert_checksums_valid(&input);
    }
}

fn scenario(v6: bool) {
    let n = &net(v6);
    let mut e = engine(n);
    let (tcp, udp) = (L4Proto::Tcp, L4Proto::Udp);
    let (c, cp, ucp) = (n.client, CLIENT_PORT, UDP_CLIENT_PORT);

    // Three flows: TCP to VIP:80 and UDP to VIP:53, then TCP to VIP2:80 from the same client
    // port as the first, which collides on the reply tuple and gets its source port rewritten.
    for f in [
        n.frame(tcp, c, cp, n.vip, 80),
        n.frame(udp, c, ucp, n.vip, 53),
        n.frame(tcp, c, cp, n.vip2, 80),
    ] {
        let mut f = f;
        assert_eq!(e.process(&mut f), Verdict::Pass);
    }
    assert_eq!(e.counters().get(Counter::SourcePortRewritten), 1);
    let rewritten = e
        .conntrack()
        .iter()
        .find(|(k, v)| k.kind == CtKind::Service as u8 && k.dst == n.vip2 && v.src_port_rewritten())
        .map(|(_, v)| v.rewritten_src_port)
        .expect("the colliding flow's service entry records its new port");
    assert_ne!(rewritten, cp);

    let (be, ube, r) = (n.backend, n.udp_backend, n.router);
    let ok = Counter::IcmpErrorTranslated;
    // Towards the client, about a packet client → backend (as the backend got it).
    for (name, kind, from, to_from, quoted, fresh, cut) in [
        (
            "udp port unreachable from the backend",
            Kind::PortUnreachable,
            ube,
            n.vip,
            n.frame(udp, c, ucp, ube, 5353),
            n.frame(udp, c, ucp, n.vip, 53),
            false,
        ),
        (
            "tcp too big from a router, short quote",
            Kind::TooBig,
            r,
            r,
            n.frame(tcp, c, cp, be, 8080),
            n.frame(tcp, c, cp, n.vip, 80),
            true,
        ),
        (
            "tcp time exceeded from a router, rewritten port",
            Kind::TimeExceeded,
            r,
            r,
            n.frame(tcp, c, rewritten, be, 8080),
            n.frame(tcp, c, cp, n.vip2, 80),
            false,
        ),
        (
            "tcp port unreachable from the backend, rewritten port",
            Kind::PortUnreachable,
            be,
            n.vip2,
            n.frame(tcp, c, rewritten, be, 8080),
            n.frame(tcp, c, cp, n.vip2, 80),
            true,
        ),
    ] {
        let input = n.error(kind, from, c, &quoted, cut);
        let expect = n.error(kind, to_from, c, &fresh, cut);
        check(&mut e, name, input, &expect, Verdict::Pass, ok);
    }
    // Towards the backend, about a reply service → client (as the client got it).
    for (name, kind, from, quoted, to, fresh, cut) in [
        (
            "udp port unreachable from the client",
            Kind::PortUnreachable,
            c,
            n.frame(udp, n.vip, 53, c, ucp),
            ube,
            n.frame(udp, ube, 5353, c, ucp),
            false,
        ),
        (
            "tcp time exceeded from a router",
            Kind::TimeExceeded,
            r,
            n.frame(tcp, n.vip, 80, c, cp),
            be,
            n.frame(tcp, be, 8080, c, cp),
            true,
        ),
        (
            "tcp too big from the client, rewritten port",
            Kind::TooBig,
            c,
            n.frame(tcp, n.vip2, 80, c, cp),
            be,
            n.frame(tcp, be, 8080, c, rewritten),
            false,
        ),
    ] {
        let input = n.error(kind, from, n.vip_of(&quoted), &quoted, cut);
        let expect = n.error(kind, from, to, &fresh, cut);
        check(&mut e, name, input, &expect, Verdict::Pass, ok);
    }

    // Not about a tracked flow: passes untouched.
    let other = n.frame(tcp, c, 41_111, n.vip, 80);
    let unknown = n.error(Kind::PortUnreachable, r, c, &other, true);
    let pass = Counter::PassIcmpErrorNoFlow;
    check(
        &mut e,
        "error about no flow",
        unknown.clone(),
        &unknown,
        Verdict::Pass,
        pass,
    );
    // About a tracked flow, but not sent back to the quoted packet's sender.
    let quoted = n.frame(udp, c, ucp, ube, 5353);
    let astray = n.error(Kind::PortUnreachable, ube, r, &quoted, false);
    check(
        &mut e,
        "error not to the quote's sender",
        astray.clone(),
        &astray,
        Verdict::Pass,
        pass,
    );
    // A quote cut inside its IP header cannot be matched to anything: malformed, dropped.
    let mut short = n.error(Kind::PortUnreachable, ube, c, &quoted, false);
    short.truncate(14 + if v6 { 40 + 8 + 30 } else { 20 + 8 + 12 });
    let fixed = fix_lengths(n, short);
    check(
        &mut e,
        "quote cut in its IP header",
        fixed.clone(),
        &fixed,
        Verdict::Drop,
        Counter::Dropped,
    );
    assert_eq!(e.counters().drops(DropReason::Truncated), 1);
}

impl Net {
    /// The destination a quoted reply's error goes back to: the reply's source (the VIP).
    fn vip_of(&self, quoted: &[u8]) -> [u8; 16] {
        if self.v6 {
            quoted[22..38].try_into().unwrap()
        } else {
            v4_addr(quoted[26..30].try_into().unwrap())
        }
    }
}

/// `frame` (cut short) with its outer IP length and ICMP checksum made consistent again, so that
/// only the quote is malformed.
fn fix_lengths(n: &Net, frame: Vec<u8>) -> Vec<u8> {
    let l4 = if n.v6 { 54 } else { 34 };
    let (from, to, quote) = if n.v6 {
        let (s, d): ([u8; 16], [u8; 16]) = (
            frame[22..38].try_into().unwrap(),
            frame[38..54].try_into().unwrap(),
        );
        (s, d, &frame[l4 + 8..])
    } else {
        (
            v4_addr(frame[26..30].try_into().unwrap()),
            v4_addr(frame[30..34].try_into().unwrap()),
            &frame[l4 + 8..],
        )
    };
    let rest: [u8; 4] = frame[l4 + 4..l4 + 8].try_into().unwrap();
    if n.v6 {
        icmp_v6_error_frame(from, to, frame[l4], frame[l4 + 1], rest, quote)
    } else {
        icmp_v4_error_frame(
            v4_of(&from),
            v4_of(&to),
            frame[l4],
            frame[l4 + 1],
            rest,
            quote,
        )
    }
}

#[test]
fn icmp_errors_about_ipv4_flows_are_translated_both_ways() {
    scenario(false);
}

#[test]
fn icmpv6_errors_about_ipv6_flows_are_translated_both_ways() {
    scenario(true);
}

/// A SNAT flow (the backend on another node, so this node masquerades): errors towards the
/// client get the client's address and port back in the quote and as outer destination;
/// errors towards the backend get this node's address and SNAT port, and the outer source
/// becomes this node when the client itself answered. An expired flow is not translated.
fn snat_scenario(v6: bool) {
    use lb_api::abi::ForwardingMode;
    use lb_nat::control::{BackendSpec, NodeSpec};
    let n = &net(v6);
    let a = |s: &str| match s.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => v4_addr(a.octets()),
        IpAddr::V6(a) => a.octets(),
    };
    let (node, peer) = if v6 {
        (a("fd00::fe"), a("fd02::1"))
    } else {
        (a("10.0.0.254"), a("10.2.0.1"))
    };
    let mut e = engine(n);
    e.set_node(&NodeSpec {
        address_v4: (!v6).then(|| std::net::Ipv4Addr::from(v4_of(&node))),
        address_v6: v6.then(|| std::net::Ipv6Addr::from(node)),
        peers: vec![n.sock(peer, 0).ip()],
        ..Default::default()
    })
    .unwrap();
    e.upsert_service(&ServiceSpec {
        id: 40 + u32::from(v6),
        frontend: n.sock(n.vip, 8443),
        proto: L4Proto::Tcp,
        mode: ForwardingMode::Snat,
        backends: vec![BackendSpec {
            node: Some(n.sock(peer, 0).ip()),
            ..n.sock(n.backend, 8443).into()
        }],
        ..Default::default()
    })
    .unwrap();
    let (tcp, c, cp, be, r) = (L4Proto::Tcp, n.client, CLIENT_PORT, n.backend, n.router);
    let mut first = n.frame(tcp, c, cp, n.vip, 8443);
    assert_eq!(e.process(&mut first), Verdict::Pass);
    // The packet as the backend got it: from this node, from the SNAT port.
    let l4 = if v6 { 54 } else { 34 };
    let sp = u16::from_be_bytes([first[l4], first[l4 + 1]]);
    assert_eq!(first, n.frame(tcp, node, sp, be, 8443), "masqueraded");

    let ok = Counter::IcmpErrorTranslated;
    let to_node = n.frame(tcp, node, sp, be, 8443);
    let as_sent = n.frame(tcp, c, cp, n.vip, 8443);
    check(
        &mut e,
        "snat: port unreachable from the backend to this node",
        n.error(Kind::PortUnreachable, be, node, &to_node, false),
        &n.error(Kind::PortUnreachable, n.vip, c, &as_sent, false),
        Verdict::Pass,
        ok,
    );
    check(
        &mut e,
        "snat: too big from a router to this node",
        n.error(Kind::TooBig, r, node, &to_node, true),
        &n.error(Kind::TooBig, r, c, &as_sent, true),
        Verdict::Pass,
        ok,
    );
    let reply = n.frame(tcp, n.vip, 8443, c, cp);
    let from_backend = n.frame(tcp, be, 8443, node, sp);
    check(
        &mut e,
        "snat: port unreachable from the client about a reply",
        n.error(Kind::PortUnreachable, c, n.vip, &reply, false),
        &n.error(Kind::PortUnreachable, node, be, &from_backend, false),
        Verdict::Pass,
        ok,
    );
    check(
        &mut e,
        "snat: time exceeded from a router about a reply",
        n.error(Kind::TimeExceeded, r, n.vip, &reply, true),
        &n.error(Kind::TimeExceeded, r, be, &from_backend, true),
        Verdict::Pass,
        ok,
    );
    // Past the flow's deadline the entries count as absent, before GC collects them.
    let mut late = *e.config();
    late.fixed_now_ns = 5_000 + 10 * 24 * 3600 * 1_000_000_000;
    e.set_config(late);
    let stale = n.error(Kind::PortUnreachable, be, node, &to_node, false);
    check(
        &mut e,
        "snat: error about an expired flow",
        stale.clone(),
        &stale,
        Verdict::Pass,
        Counter::PassIcmpErrorNoFlow,
    );
}

#[test]
fn icmp_errors_about_snat_flows_are_translated_both_ways() {
    snat_scenario(false);
    snat_scenario(true);
}
