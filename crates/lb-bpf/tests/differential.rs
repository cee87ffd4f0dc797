//! Differential suite: one table of packet fixtures goes through the userspace engine and through
//! the kernel programs (XDP and TC) with BPF_PROG_TEST_RUN. Output bytes, verdicts, conntrack
//! contents, counters and drop events must be identical after every packet.
//!
//! Both worlds use the same configuration, including `fixed_now_ns`, so timestamps agree too.

mod common;

use std::net::IpAddr;

use common::tagged;

use lb_api::abi::{CtEntry, CtKey, CtKind, CtState, DatapathConfig};
use lb_api::counters::{Counter, DropReason};
use lb_api::events::DropEvent;
use lb_api::flow::{v4_addr, v4_of, L4Proto};
use lb_api::wire::testing::fix_ipv4_checksum;
use lb_api::wire::testing::{
    icmp_v4_error_frame, icmp_v6_error_frame, ip_v4_frame, tcp_v4_frame, tcp_v6_frame,
    udp_v4_frame, udp_v6_frame,
};
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_bpf::{KernelDatapath, Program};
use lb_conntrack::ManualClock;
use lb_control::{default_config, ServiceSpec};
use lb_datapath::engine::Engine;
use zerocopy::IntoBytes;

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const VIP: [u8; 4] = [10, 96, 0, 10];
const VIP2: [u8; 4] = [10, 96, 0, 11];
const EMPTY_VIP: [u8; 4] = [10, 96, 0, 12];
const START_NS: u64 = 1_000_000_000_000;

fn services() -> Vec<ServiceSpec> {
    let b = |s: &str| s.parse().unwrap();
    vec![
        ServiceSpec {
            id: 1,
            frontend: "10.96.0.10:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec![b("10.1.0.2:8080"), b("10.1.0.3:8080"), b("10.1.0.4:8080")],
            ..Default::default()
        },
        ServiceSpec {
            id: 2,
            frontend: "10.96.0.10:53".parse().unwrap(),
            proto: L4Proto::Udp,
            backends: vec![b("10.1.0.5:5353"), b("10.1.0.6:5353")],
            ..Default::default()
        },
        // A second frontend whose only backend is also behind service 1: the same client port
        // through both frontends collides on the reply tuple.
        ServiceSpec {
            id: 3,
            frontend: "10.96.0.11:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec![b("10.1.0.2:8080")],
            ..Default::default()
        },
        ServiceSpec {
            id: 6,
            frontend: "[fd96::10]:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec![b("[fd01::2]:8080"), b("[fd01::3]:8080")],
            ..Default::default()
        },
        ServiceSpec {
            id: 7,
            frontend: "[fd96::10]:53".parse().unwrap(),
            proto: L4Proto::Udp,
            backends: vec![b("[fd01::5]:5353")],
            ..Default::default()
        },
        // The IPv6 twin of service 3.
        ServiceSpec {
            id: 8,
            frontend: "[fd96::11]:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec![b("[fd01::2]:8080")],
            ..Default::default()
        },
        ServiceSpec {
            id: 4,
            frontend: "10.96.0.12:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec![],
            ..Default::default()
        },
    ]
}

/// An IPv6 TCP SYN with a hop-by-hop and a destination-options header (or, with `fragment`, a
/// fragment header saying "first fragment, more follow").
fn ipv6_frame(fragment: bool) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd]);
    let mut ext = Vec::new();
    let first_next;
    if fragment {
        first_next = 44u8;
        ext.extend_from_slice(&[6, 0, 0x00, 0x01, 0, 0, 0x12, 0x34]);
    } else {
        first_next = 0u8;
        ext.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop: PadN
        ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // destination options: PadN
    }
    let tcp = [
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0,
    ];
    let payload_len = (ext.len() + tcp.len()) as u16;
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&payload_len.to_be_bytes());
    f.push(first_next);
    f.push(64);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
    f.extend_from_slice(&ext);
    f.extend_from_slice(&tcp);
    f
}

/// `inner` encapsulated by lb-encap in VXLAN (`geneve: false`) or Geneve with one option,
/// between two addresses that are not services.
fn tunnelled(inner: &[u8], geneve: bool) -> Vec<u8> {
    use lb_encap::{OuterAddrs, TunnelConfig};
    let mut buf = vec![0u8; 256 + inner.len()];
    buf[128..128 + inner.len()].copy_from_slice(inner);
    let mut pkt = lb_encap::HeadroomPacket::new(&mut buf, 128, inner.len()).unwrap();
    let mut cfg = TunnelConfig::new(
        42,
        OuterAddrs::V4 {
            src: [192, 0, 2, 1],
            dst: [192, 0, 2, 2],
        },
        [2, 0, 0, 0, 0, 0xa],
        [2, 0, 0, 0, 0, 0xb],
    );
    if geneve {
        cfg.port = 6081;
        let opt = lb_encap::geneve::GeneveOption {
            class: 0xfff0,
            ty: 1,
            data: &[1, 2, 3, 4],
        };
        lb_encap::geneve::geneve_encap(&mut pkt, &cfg, &[opt], 0x1234_5678).unwrap();
    } else {
        lb_encap::vxlan_encap(&mut pkt, &cfg, 0x1234_5678).unwrap();
    }
    pkt.bytes().to_vec()
}

/// One step of a scenario: a frame, and what the engine must do with it (so that every fixture is
/// known to exercise what its name says; the kernel must then match the engine exactly).
struct Step {
    name: String,
    frame: Vec<u8>,
    expect: Verdict,
    counter: Option<Counter>,
    drop: Option<DropReason>,
}

fn step(
    name: impl Into<String>,
    frame: Vec<u8>,
    expect: Verdict,
    counter: Option<Counter>,
    drop: Option<DropReason>,
) -> Step {
    Step {
        name: name.into(),
        frame,
        expect,
        counter,
        drop,
    }
}

/// The service entry of the flow from a client port to `vip:vport` (either family).
fn service_entry(
    engine: &Engine<ManualClock>,
    client_port: u16,
    vip: IpAddr,
    vport: u16,
) -> CtEntry {
    engine
        .conntrack()
        .iter()
        .find(|(k, _)| {
            k.kind == CtKind::Service as u8
                && k.src_port == client_port
                && k.dst == addr16(vip)
                && k.dst_port == vport
        })
        .map(|(_, e)| *e)
        .unwrap_or_else(|| panic!("no service entry for client port {client_port} to {vip}"))
}

/// The backend the engine chose for a client port (its service entry's NAT address).
fn backend_of(
    engine: &Engine<ManualClock>,
    client_port: u16,
    vip: [u8; 4],
    vport: u16,
) -> ([u8; 4], u16) {
    let e = service_entry(engine, client_port, IpAddr::from(vip), vport);
    (v4_of(&e.nat_addr), e.nat_port)
}

/// An address as the 16-byte field of conntrack keys and entries (IPv4 in the first 4 bytes).
fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => v4_addr(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

fn sorted_engine_ct(engine: &Engine<ManualClock>) -> Vec<(CtKey, CtEntry)> {
    let mut v: Vec<_> = engine.conntrack().iter().map(|(k, e)| (*k, *e)).collect();
    v.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    v
}

/// Runs the scenario through the engine and through `program`, comparing after every step.
/// Steps whose frames depend on the engine's choices (replies) are produced lazily.
fn run_scenario(dp: &mut KernelDatapath, program: Program) -> usize {
    dp.flush_conntrack().unwrap();
    dp.reset_counters().unwrap();
    for s in services() {
        dp.upsert_service(&s).unwrap();
    }
    let mut engine = Engine::with_clock(4096, default_config(0x5eed), ManualClock::new(0));
    for s in services() {
        engine.upsert_service(&s).unwrap();
    }

    let mut now = START_NS;
    let mut compared = 0;
    // Runs one step in both worlds and compares them; returns the frame as it left (`None` if
    // the step was skipped).
    let mut check = |engine: &mut Engine<ManualClock>, dp: &mut KernelDatapath, s: Step| {
        now += 1_000_000_000;
        let cfg = DatapathConfig {
            fixed_now_ns: now,
            ..default_config(0x5eed)
        };
        engine.set_config(cfg);
        dp.set_config(&cfg).unwrap();

        // The kernel's skb test harness (TC) refuses, with EINVAL, IPv4 frames shorter than an
        // IPv4 header; such frames never reach the program through BPF_PROG_TEST_RUN, so the step
        // is skipped in both worlds to keep them in step (XDP runs it).
        let kernel = match dp.test_run(program, &s.frame, 1) {
            Ok(k) => k,
            Err(e) if program == Program::Tc && s.frame.len() < 34 => {
                eprintln!(
                    "{} (lb_tc): skipped, the skb test harness refuses it: {e}",
                    s.name
                );
                return None;
            }
            Err(e) => panic!("{}: {e}: {:?}", s.name, std::error::Error::source(&e)),
        };
        let before = *engine.counters();
        let mut user = s.frame.clone();
        let user_verdict = engine.process(&mut user);

        // The fixture does what it says in the engine...
        assert_eq!(user_verdict, s.expect, "{}: engine verdict", s.name);
        if let Some(c) = s.counter {
            assert_eq!(
                engine.counters().get(c),
                before.get(c) + 1,
                "{}: engine counter {:?}",
                s.name,
                c
            );
        }
        if let Some(r) = s.drop {
            assert_eq!(
                engine.counters().drops(r),
                before.drops(r) + 1,
                "{}: engine drop reason {:?}",
                s.name,
                r
            );
        }
        // ...and the kernel does exactly the same.
        assert_eq!(
            kernel.verdict,
            user_verdict,
            "{} ({}): verdict",
            s.name,
            program.name()
        );
        assert_eq!(
            kernel.data,
            user,
            "{} ({}): output bytes",
            s.name,
            program.name()
        );
        assert_eq!(
            dp.conntrack_entries().unwrap(),
            sorted_engine_ct(engine),
            "{} ({}): conntrack",
            s.name,
            program.name()
        );
        assert_eq!(
            dp.counters().unwrap(),
            *engine.counters(),
            "{} ({}): counters",
            s.name,
            program.name()
        );
        // One drop event per dropped packet, with the same reason, flow and time in both
        // worlds (the interface differs: the test runner's loopback vs none in the engine).
        let user_events = engine.drain_drop_events();
        assert_eq!(
            user_events.len(),
            usize::from(user_verdict == Verdict::Drop),
            "{}: engine drop events {user_events:?}",
            s.name
        );
        if let (Some(r), Some(e)) = (s.drop, user_events.first()) {
            assert_eq!(e.reason, r, "{}: engine drop event reason", s.name);
        }
        let no_ifindex = |v: Vec<DropEvent>| -> Vec<DropEvent> {
            v.into_iter()
                .map(|e| DropEvent { ifindex: 0, ..e })
                .collect()
        };
        assert_eq!(
            no_ifindex(dp.drain_drop_events().unwrap()),
            user_events,
            "{} ({}): drop events",
            s.name,
            program.name()
        );
        compared += 1;
        Some(user)
    };

    use TcpFlags as F;
    let tcp = |sport: u16, dst: [u8; 4], dport: u16, flags: u8| {
        tcp_v4_frame(CLIENT, sport, dst, dport, flags, b"")
    };
    let p = Some;

    // A TCP connection through its whole life: handshake, data, active close, TIME_WAIT.
    check(
        &mut engine,
        dp,
        step(
            "tcp SYN to service (new flow)",
            tcp(40000, VIP, 80, F::SYN),
            Verdict::Pass,
            p(Counter::ServiceNewFlow),
            None,
        ),
    );
    let (be, be_port) = backend_of(&engine, 40000, VIP, 80);
    let reply =
        |flags: u8, payload: &[u8]| tcp_v4_frame(be, be_port, CLIENT, 40000, flags, payload);
    check(
        &mut engine,
        dp,
        step(
            "tcp SYN retransmitted",
            tcp(40000, VIP, 80, F::SYN),
            Verdict::Pass,
            p(Counter::ServiceEstablished),
            None,
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "tcp SYN+ACK from backend",
            reply(F::SYN | F::ACK, b""),
            Verdict::Pass,
            p(Counter::ReplyTranslated),
            None,
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "tcp ACK (established)",
            tcp(40000, VIP, 80, F::ACK),
            Verdict::Pass,
            p(Counter::ServiceEstablished),
            None,
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "tcp data to service",
            tcp_v4_frame(
                CLIENT,
                40000,
                VIP,
                80,
                F::ACK | F::PSH,
                b"GET / HTTP/1.0\r\n\r\n",
            ),
            Verdict::Pass,
            p(Counter::ServiceEstablished),
            None,
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "tcp data from backend",
            reply(F::ACK | F::PSH, b"HTTP/1.0 200 OK\r\n\r\nhello"),
            Verdict::Pass,
            p(Counter::ReplyTranslated),
            None,
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "tcp FIN from client",
            tcp(40000, VIP, 80, F::FIN | F::ACK),
            Verdict::Pass,
            p(Counter::ServiceEstablished),
            None,
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "tcp FIN from backend",
            reply(F::FIN | F::ACK, b""),
            Verdict::Pass,
            p(Counter::ReplyTranslated),
            None,
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "tcp last ACK",
            tcp(40000, VIP, 80, F::ACK),
            Verdict::Pass,
            p(Counter::ServiceEstablished),
            None,
        ),
    );
    let st = engine
        .conntrack()
        .iter()
        .find(|(k, _)| k.kind == 0 && k.src_port == 40000)
        .unwrap()
        .1
        .state;
    assert_eq!(
        st,
        CtState::TimeWait as u8,
        "the close sequence ends in TIME_WAIT"
    );
    check(
        &mut engine,
        dp,
        step(
            "tcp SYN reusing the tuple",
            tcp(40000, VIP, 80, F::SYN),
            Verdict::Pass,
            p(Counter::ServiceEstablished),
            None,
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "tcp RST from backend",
            reply(F::RST, b""),
            Verdict::Pass,
            p(Counter::ReplyTranslated),
            None,
        ),
    );

    // Many flows: spread over backends identically in both worlds.
    for port in 41000..41012 {
        check(
            &mut engine,
            dp,
            step(
                "tcp SYN, more flows",
                tcp(port, VIP, 80, F::SYN),
                Verdict::Pass,
                p(Counter::ServiceNewFlow),
                None,
            ),
        );
    }
    check(
        &mut engine,
        dp,
        step(
            "tcp mid-stream pickup (ACK, no entry)",
            tcp(42000, VIP, 80, F::ACK),
            Verdict::Pass,
            p(Counter::ServiceNewFlow),
            None,
        ),
    );

    // UDP: unreplied, then assured.
    check(
        &mut engine,
        dp,
        step(
            "udp query to service",
            udp_v4_frame(CLIENT, 53000, VIP, 53, b"query"),
            Verdict::Pass,
            p(Counter::ServiceNewFlow),
            None,
        ),
    );
    let (ube, ube_port) = backend_of(&engine, 53000, VIP, 53);
    check(
        &mut engine,
        dp,
        step(
            "udp answer from backend",
            udp_v4_frame(ube, ube_port, CLIENT, 53000, b"answer"),
            Verdict::Pass,
            p(Counter::ReplyTranslated),
            None,
        ),
    );
    let mut no_csum = udp_v4_frame(CLIENT, 53001, VIP, 53, b"q");
    no_csum[40] = 0;
    no_csum[41] = 0;
    check(
        &mut engine,
        dp,
        step(
            "udp without checksum",
            no_csum,
            Verdict::Pass,
            p(Counter::ServiceNewFlow),
            None,
        ),
    );

    // Not for us.
    check(
        &mut engine,
        dp,
        step(
            "tcp to a non-service address",
            tcp(40001, [10, 2, 0, 1], 80, F::SYN),
            Verdict::Pass,
            p(Counter::PassNotService),
            None,
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "tcp to the VIP on another port",
            tcp(40002, VIP, 81, F::SYN),
            Verdict::Pass,
            p(Counter::PassNotService),
            None,
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "icmp echo to the VIP",
            ip_v4_frame(CLIENT, VIP, 1, &[8, 0, 0xf7, 0xff, 0, 0, 0, 0]),
            Verdict::Pass,
            p(Counter::PassOtherProto),
            None,
        ),
    );
    let mut arp = tcp(1, VIP, 80, 0);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    check(
        &mut engine,
        dp,
        step("arp", arp, Verdict::Pass, p(Counter::PassNotIp), None),
    );
    let mut frag = tcp(40003, VIP, 80, F::SYN);
    frag[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
    fix_ipv4_checksum(&mut frag);
    check(
        &mut engine,
        dp,
        step(
            "ipv4 first fragment",
            frag,
            Verdict::Pass,
            p(Counter::PassFragment),
            None,
        ),
    );

    // Other wire formats: parsed identically in both worlds (VLAN-tagged IPv4 is translated; the
    // rest passes, each under its counter).
    check(
        &mut engine,
        dp,
        step(
            "802.1Q-tagged tcp SYN to the service",
            tagged(&tcp(44000, VIP, 80, F::SYN), 0x8100, 7),
            Verdict::Pass,
            p(Counter::ServiceNewFlow),
            None,
        ),
    );
    let qinq = tagged(
        &tagged(&tcp(44001, VIP, 80, F::SYN), 0x8100, 7),
        0x88a8,
        100,
    );
    check(
        &mut engine,
        dp,
        step(
            "802.1ad+802.1Q tcp SYN to the service",
            qinq.clone(),
            Verdict::Pass,
            p(Counter::ServiceNewFlow),
            None,
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "three VLAN tags",
            tagged(&qinq, 0x8100, 9),
            Verdict::Pass,
            p(Counter::PassHeadersTooDeep),
            None,
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "ipv6 tcp with hop-by-hop and destination options (not a service)",
            ipv6_frame(false),
            Verdict::Pass,
            p(Counter::PassNotService),
            None,
        ),
    );
    // IPv6 services: a TCP connection's first packets both ways, and UDP.
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
    let (client6, vip6) = (v6("fd00::1"), v6("fd96::10"));
    check(
        &mut engine,
        dp,
        step(
            "ipv6 tcp SYN to service (new flow)",
            tcp_v6_frame(client6, 41000, vip6, 80, F::SYN, b""),
            Verdict::Pass,
            p(Counter::ServiceNewFlow),
            None,
        ),
    );
    let be6 = engine
        .conntrack()
        .iter()
        .find(|(k, _)| k.kind == CtKind::Service as u8 && k.dst == vip6 && k.src_port == 41000)
        .map(|(_, e)| (e.nat_addr, e.nat_port))
        .expect("the IPv6 flow's service entry");
    for (name, frame, counter) in [
        (
            "ipv6 tcp SYN+ACK from backend",
            tcp_v6_frame(be6.0, be6.1, client6, 41000, F::SYN | F::ACK, b""),
            Counter::ReplyTranslated,
        ),
        (
            "ipv6 tcp ACK with data (established)",
            tcp_v6_frame(client6, 41000, vip6, 80, F::ACK | F::PSH, b"GET /"),
            Counter::ServiceEstablished,
        ),
        (
            "ipv6 udp to service (new flow)",
            udp_v6_frame(client6, 41001, vip6, 53, b"query"),
            Counter::ServiceNewFlow,
        ),
        (
            "ipv6 udp reply from backend",
            udp_v6_frame(v6("fd01::5"), 5353, client6, 41001, b"answer"),
            Counter::ReplyTranslated,
        ),
    ] {
        check(
            &mut engine,
            dp,
            step(name, frame, Verdict::Pass, p(counter), None),
        );
    }
    // UDP over IPv6 may not carry a zero checksum: no flow for such a datagram.
    let mut zero = udp_v6_frame(client6, 41002, vip6, 53, b"query");
    let l4 = zero.len() - 8 - 5;
    zero[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
    check(
        &mut engine,
        dp,
        step(
            "ipv6 udp to service with a zero checksum",
            zero,
            Verdict::Drop,
            p(Counter::Dropped),
            Some(DropReason::ZeroUdpChecksumV6),
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "ipv6 first fragment",
            ipv6_frame(true),
            Verdict::Pass,
            p(Counter::PassFragment),
            None,
        ),
    );
    let quoted = udp_v4_frame(VIP, 53, CLIENT, 53000, b"answer");
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted[14..14 + 28]);
    check(
        &mut engine,
        dp,
        step(
            "icmp port unreachable from the client about a udp reply (translated)",
            ip_v4_frame(CLIENT, VIP, 1, &icmp),
            Verdict::Pass,
            p(Counter::IcmpErrorTranslated),
            None,
        ),
    );
    // ICMP errors about translated flows (RFC 5508), towards the client and towards the
    // backend, from the peer or from a router; IPv4 and IPv6. Quotes whole or cut to 8
    // transport bytes.
    let router = [10, 9, 9, 9];
    let (tbe, tbe_port) = backend_of(&engine, 41001, VIP, 80);
    let sent = |f: Vec<u8>, cut: Option<usize>| f[14..cut.map_or(f.len(), |c| 14 + c)].to_vec();
    let v6_quote = |f: Vec<u8>| f[14..].to_vec();
    for (name, frame, counter) in [
        (
            "icmp port unreachable from a udp backend to the client",
            icmp_v4_error_frame(
                ube,
                CLIENT,
                3,
                3,
                [0; 4],
                &sent(udp_v4_frame(CLIENT, 53000, ube, ube_port, b"query"), None),
            ),
            Counter::IcmpErrorTranslated,
        ),
        (
            "icmp fragmentation needed from a router to the client",
            icmp_v4_error_frame(
                router,
                CLIENT,
                3,
                4,
                [0, 0, 5, 0x78],
                &sent(tcp(41001, tbe, tbe_port, F::ACK), Some(28)),
            ),
            Counter::IcmpErrorTranslated,
        ),
        (
            "icmp time exceeded from a router about a reply (to the backend)",
            icmp_v4_error_frame(
                router,
                VIP,
                11,
                0,
                [0; 4],
                &sent(tcp_v4_frame(VIP, 80, CLIENT, 41002, F::ACK, b"data"), None),
            ),
            Counter::IcmpErrorTranslated,
        ),
        (
            "icmp port unreachable about no tracked flow",
            icmp_v4_error_frame(
                router,
                CLIENT,
                3,
                3,
                [0; 4],
                &sent(tcp(40999, VIP, 80, F::SYN), Some(28)),
            ),
            Counter::PassIcmpErrorNoFlow,
        ),
        (
            "icmpv6 port unreachable from a udp backend to the client",
            icmp_v6_error_frame(
                v6("fd01::5"),
                client6,
                1,
                4,
                [0; 4],
                &v6_quote(udp_v6_frame(client6, 41001, v6("fd01::5"), 5353, b"query")),
            ),
            Counter::IcmpErrorTranslated,
        ),
        (
            "icmpv6 packet too big from a router to the client",
            icmp_v6_error_frame(
                v6("fd09::9"),
                client6,
                2,
                0,
                [0, 0, 5, 0],
                &v6_quote(tcp_v6_frame(client6, 41000, be6.0, be6.1, F::ACK, b"GET /")),
            ),
            Counter::IcmpErrorTranslated,
        ),
        (
            "icmpv6 time exceeded from the client about a reply (to the backend)",
            icmp_v6_error_frame(
                client6,
                vip6,
                3,
                0,
                [0; 4],
                &v6_quote(tcp_v6_frame(vip6, 80, client6, 41000, F::ACK, b"ok"))[..48],
            ),
            Counter::IcmpErrorTranslated,
        ),
    ] {
        check(
            &mut engine,
            dp,
            step(name, frame, Verdict::Pass, p(counter), None),
        );
    }
    let inner = tcp(45000, VIP, 80, F::SYN);
    check(
        &mut engine,
        dp,
        step(
            "vxlan-encapsulated frame between nodes",
            tunnelled(&inner, false),
            Verdict::Pass,
            p(Counter::PassNotService),
            None,
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "geneve-encapsulated frame with an option",
            tunnelled(&inner, true),
            Verdict::Pass,
            p(Counter::PassNotService),
            None,
        ),
    );

    // Malformed and truncated: dropped, each under its reason.
    let full = tcp(40004, VIP, 80, F::SYN);
    check(
        &mut engine,
        dp,
        step(
            "truncated ipv4 header",
            full[..30].to_vec(),
            Verdict::Drop,
            p(Counter::Dropped),
            Some(DropReason::Truncated),
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "truncated tcp header",
            full[..40].to_vec(),
            Verdict::Drop,
            p(Counter::Dropped),
            Some(DropReason::Truncated),
        ),
    );
    check(
        &mut engine,
        dp,
        step(
            "ethernet header only",
            full[..14].to_vec(),
            Verdict::Drop,
            p(Counter::Dropped),
            Some(DropReason::Truncated),
        ),
    );
    let mut bad = full.clone();
    bad[24] ^= 0x40;
    check(
        &mut engine,
        dp,
        step(
            "ipv4 header checksum wrong (to a service: no flow)",
            bad,
            Verdict::Drop,
            p(Counter::Dropped),
            Some(DropReason::BadIpChecksum),
        ),
    );
    let mut bad = full.clone();
    bad[14] = 0x44;
    check(
        &mut engine,
        dp,
        step(
            "ipv4 ihl 4",
            bad,
            Verdict::Drop,
            p(Counter::Dropped),
            Some(DropReason::BadIpHeaderLength),
        ),
    );
    let mut bad = full.clone();
    bad[14] = 0x65;
    check(
        &mut engine,
        dp,
        step(
            "ipv6 version in an ipv4 ethertype",
            bad,
            Verdict::Drop,
            p(Counter::Dropped),
            Some(DropReason::BadIpVersion),
        ),
    );
    let mut bad = full.clone();
    bad[16..18].copy_from_slice(&10u16.to_be_bytes());
    check(
        &mut engine,
        dp,
        step(
            "ipv4 total length below header",
            bad,
            Verdict::Drop,
            p(Counter::Dropped),
            Some(DropReason::BadIpTotalLength),
        ),
    );
    let mut bad = full.clone();
    bad[46] = 0x30;
    check(
        &mut engine,
        dp,
        step(
            "tcp data offset 3",
            bad,
            Verdict::Drop,
            p(Counter::Dropped),
            Some(DropReason::BadTcpHeaderLength),
        ),
    );
    let mut bad = full.clone();
    bad[16..18].copy_from_slice(&200u16.to_be_bytes());
    check(
        &mut engine,
        dp,
        step(
            "ipv4 total length past the frame",
            bad,
            Verdict::Drop,
            p(Counter::Dropped),
            Some(DropReason::Truncated),
        ),
    );

    // Service problems.
    check(
        &mut engine,
        dp,
        step(
            "service without backends",
            tcp(40005, EMPTY_VIP, 80, F::SYN),
            Verdict::Drop,
            p(Counter::Dropped),
            Some(DropReason::NoBackend),
        ),
    );
    collision_scenario(&Family::v4(), &mut engine, dp, &mut check);
    collision_scenario(&Family::v6(), &mut engine, dp, &mut check);
    compared
}

/// One family's addresses for the NodePort source-port-collision scenario.
struct Family {
    v6: bool,
    client: IpAddr,
    /// A frontend with several backends, `backend` among them (service 1 / 6).
    vip: IpAddr,
    /// A second frontend whose only backend is `backend` (service 3 / 8).
    vip2: IpAddr,
    backend: IpAddr,
    router: IpAddr,
}

impl Family {
    fn v4() -> Self {
        Family {
            v6: false,
            client: IpAddr::from(CLIENT),
            vip: IpAddr::from(VIP),
            vip2: IpAddr::from(VIP2),
            backend: IpAddr::from([10, 1, 0, 2]),
            router: IpAddr::from([10, 9, 9, 9]),
        }
    }

    fn v6() -> Self {
        let a = |s: &str| IpAddr::V6(s.parse().unwrap());
        Family {
            v6: true,
            client: a("fd00::1"),
            vip: a("fd96::10"),
            vip2: a("fd96::11"),
            backend: a("fd01::2"),
            router: a("fd09::9"),
        }
    }

    /// A fixture name, marked with the family for IPv6.
    fn name(&self, s: &str) -> String {
        if self.v6 {
            format!("ipv6: {s}")
        } else {
            s.to_string()
        }
    }

    /// A TCP frame without payload, built from scratch.
    fn tcp(&self, src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Vec<u8> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                tcp_v4_frame(s.octets(), sport, d.octets(), dport, flags, b"")
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                tcp_v6_frame(s.octets(), sport, d.octets(), dport, flags, b"")
            }
            other => panic!("mixed families {other:?}"),
        }
    }

    /// An ICMP (type, code) or ICMPv6 (type, code) error from `from` to `to` quoting the IP
    /// datagram of the frame `quoted`, whole or cut to its IP header and 8 transport bytes.
    fn error(
        &self,
        (v4, v6): ((u8, u8), (u8, u8)),
        from: IpAddr,
        to: IpAddr,
        quoted: &[u8],
        cut: bool,
    ) -> Vec<u8> {
        let ip_header = if self.v6 { 40 } else { 20 };
        let q = &quoted[14..if cut {
            14 + ip_header + 8
        } else {
            quoted.len()
        }];
        match (from, to) {
            (IpAddr::V4(f), IpAddr::V4(t)) => {
                icmp_v4_error_frame(f.octets(), t.octets(), v4.0, v4.1, [0; 4], q)
            }
            (IpAddr::V6(f), IpAddr::V6(t)) => {
                icmp_v6_error_frame(f.octets(), t.octets(), v6.0, v6.1, [0; 4], q)
            }
            other => panic!("mixed families {other:?}"),
        }
    }
}

/// ICMP time exceeded in transit, ICMPv6 time exceeded (hop limit).
const TIME_EXCEEDED: ((u8, u8), (u8, u8)) = ((11, 0), (3, 0));
/// ICMP and ICMPv6 port unreachable.
const PORT_UNREACHABLE: ((u8, u8), (u8, u8)) = ((3, 3), (1, 4));

/// The source-port collision of a NodePort-like setup (incident 2 of the design brief) for one
/// family: the same client address and port reach `backend` through two frontends, so the
/// second flow's reply tuple is taken and the resolver gives it a source port of 20000-29999;
/// the reply gets the client's port back, the next packet is established, and ICMP errors about
/// the rewritten flow are translated both ways (the client's port in the quote towards the
/// client, the rewritten one towards the backend). Besides the engine = kernel comparison of
/// `check`, every frame that leaves is compared with one built from scratch.
fn collision_scenario(
    n: &Family,
    engine: &mut Engine<ManualClock>,
    dp: &mut KernelDatapath,
    check: &mut impl FnMut(&mut Engine<ManualClock>, &mut KernelDatapath, Step) -> Option<Vec<u8>>,
) {
    use TcpFlags as F;
    let p = Some;
    let (client, be) = (n.client, n.backend);
    // Find a client port whose flow through the first frontend lands on the backend, then use
    // the same port towards the second frontend (whose only backend it is): the reply tuples
    // collide.
    let mut colliding = None;
    for port in 43000..43100 {
        check(
            engine,
            dp,
            step(
                n.name(&format!("tcp SYN, searching a flow on {be}")),
                n.tcp(client, port, n.vip, 80, F::SYN),
                Verdict::Pass,
                p(Counter::ServiceNewFlow),
                None,
            ),
        );
        let e = service_entry(engine, port, n.vip, 80);
        if (e.nat_addr, e.nat_port) == (addr16(be), 8080) {
            colliding = Some(port);
            break;
        }
    }
    let port = colliding.unwrap_or_else(|| panic!("some flow hashes to {be}"));
    // The same client port through the second frontend: the reply tuple is taken, so the
    // resolver gives the flow another source port (not a drop, not an overwrite). Which one
    // is only known afterwards.
    let name = n.name("tcp SYN colliding on the reply tuple (source port rewritten)");
    let out = check(
        engine,
        dp,
        step(
            name.clone(),
            n.tcp(client, port, n.vip2, 80, F::SYN),
            Verdict::Pass,
            p(Counter::SourcePortRewritten),
            None,
        ),
    );
    let e = service_entry(engine, port, n.vip2, 80);
    let rewritten = e.rewritten_src_port;
    assert!(
        rewritten != port && (20_000..=29_999).contains(&rewritten),
        "{name}: a new source port of the collision range was recorded: {e:?}"
    );
    assert_eq!(
        out,
        Some(n.tcp(client, rewritten, be, 8080, F::SYN)),
        "{name}: output frame"
    );
    // A step that passes under `counter` and must leave as `want`.
    let mut run = |engine: &mut Engine<ManualClock>,
                   dp: &mut KernelDatapath,
                   name: &str,
                   frame: Vec<u8>,
                   counter: Counter,
                   want: Vec<u8>| {
        let name = n.name(name);
        let out = check(
            engine,
            dp,
            step(name.clone(), frame, Verdict::Pass, p(counter), None),
        );
        assert_eq!(out, Some(want), "{name}: output frame");
    };
    run(
        engine,
        dp,
        "reply to the rewritten port (original port restored)",
        n.tcp(be, 8080, client, rewritten, F::SYN | F::ACK),
        Counter::ReplyTranslated,
        n.tcp(n.vip2, 80, client, port, F::SYN | F::ACK),
    );
    run(
        engine,
        dp,
        "rewritten flow, next packet",
        n.tcp(client, port, n.vip2, 80, F::ACK),
        Counter::ServiceEstablished,
        n.tcp(client, rewritten, be, 8080, F::ACK),
    );
    // ICMP errors about the rewritten flow: the client's original port comes back in the
    // quote towards the client, the rewritten one towards the backend.
    let (sent, as_client_sent) = (
        n.tcp(client, rewritten, be, 8080, F::ACK),
        n.tcp(client, port, n.vip2, 80, F::ACK),
    );
    run(
        engine,
        dp,
        "icmp time exceeded about a rewritten-port flow (to the client)",
        n.error(TIME_EXCEEDED, n.router, client, &sent, false),
        Counter::IcmpErrorTranslated,
        // Still from the router; the quote as the client sent it.
        n.error(TIME_EXCEEDED, n.router, client, &as_client_sent, false),
    );
    let (reply, as_backend_sent) = (
        n.tcp(n.vip2, 80, client, port, F::ACK),
        n.tcp(be, 8080, client, rewritten, F::ACK),
    );
    run(
        engine,
        dp,
        "icmp port unreachable about a rewritten-port reply (to the backend)",
        n.error(PORT_UNREACHABLE, client, n.vip2, &reply, true),
        Counter::IcmpErrorTranslated,
        // To the backend; the quote as the backend sent it.
        n.error(PORT_UNREACHABLE, client, be, &as_backend_sent, true),
    );
}

#[test]
fn engine_and_kernel_agree_on_every_fixture() {
    if !common::privileged("engine_and_kernel_agree_on_every_fixture") {
        return;
    }
    let mut dp = KernelDatapath::load().unwrap_or_else(|e| panic!("{e}"));
    for program in [Program::Xdp, Program::Tc] {
        let n = run_scenario(&mut dp, program);
        assert!(n > 40, "{}: only {n} fixtures compared", program.name());
        eprintln!(
            "{}: {n} fixtures byte-identical between engine and kernel",
            program.name()
        );
    }
}
