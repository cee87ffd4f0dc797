//! Partial checksums at XDP, engine against kernel.
//!
//! A veth hands XDP its peer's packets as the peer's stack left them: with the default checksum
//! offload, a TCP/UDP packet's checksum field holds only its pseudo-header sum
//! (`CHECKSUM_PARTIAL`), and the device or the stack adds the rest when the packet leaves. XDP
//! cannot see that state; on a device the loader registered (`set_xdp_partial_checksums`), the
//! datapath takes a field that equals the pseudo-header sum for a partial checksum and moves
//! that sum with its rewrites.
//!
//! Each flow here (random addresses, ports, payloads; IPv4 and IPv6; TCP and UDP; requests and
//! replies) goes through the engine and the XDP program with `BPF_PROG_TEST_RUN` (which runs
//! on loopback, the device registered here): bytes, verdicts, conntrack and counters must be
//! identical. Then the output is completed as the device would complete it, and etherparse (an
//! independent implementation) must find the checksum right. The same packets on a device that
//! is not registered are taken as complete, in both worlds alike.

mod common;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_api::counters::Counter;
use lb_api::flow::L4Proto;
use lb_api::wire::testing::{
    complete_partial_checksum, make_checksum_partial, tcp_v4_frame, tcp_v6_frame, udp_v4_frame,
    udp_v6_frame,
};
use lb_api::wire::{parse, SlicePacket, TcpFlags};
use lb_api::Verdict;
use lb_bpf::Program;
use lb_control::default_config;
use lb_control::ServiceSpec;
use lb_testbed::harness::EngineAndKernel;

const START_NS: u64 = 1_000_000_000_000;
/// `BPF_PROG_TEST_RUN` runs XDP programs on loopback.
const LOOPBACK: u32 = 1;

fn services() -> Vec<ServiceSpec> {
    let b = |s: &str| s.parse().unwrap();
    let svc = |id, frontend: &str, proto, backends: Vec<_>| ServiceSpec {
        id,
        frontend: frontend.parse().unwrap(),
        proto,
        backends,
        ..Default::default()
    };
    vec![
        svc(
            1,
            "10.96.0.10:80",
            L4Proto::Tcp,
            vec![b("10.1.0.2:8080"), b("10.1.0.3:8080")],
        ),
        svc(2, "10.96.0.10:53", L4Proto::Udp, vec![b("10.1.0.5:5353")]),
        svc(
            6,
            "[fd96::10]:80",
            L4Proto::Tcp,
            vec![b("[fd01::2]:8080"), b("[fd01::3]:8080")],
        ),
        svc(7, "[fd96::10]:53", L4Proto::Udp, vec![b("[fd01::5]:5353")]),
    ]
}

/// A small deterministic generator (the run is reproducible from its seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.next() as u8)
    }
}

/// Whether etherparse finds `frame`'s transport checksum right.
fn checksum_ok(frame: &[u8]) -> bool {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let (found, calc) = match (&p.net, &p.transport) {
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) => {
            let h = t.to_header();
            (
                h.checksum,
                h.calc_checksum_ipv4(&ip.header().to_header(), t.payload())
                    .unwrap(),
            )
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Tcp(t))) => {
            let h = t.to_header();
            (
                h.checksum,
                h.calc_checksum_ipv6(&ip.header().to_header(), t.payload())
                    .unwrap(),
            )
        }
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(u))) => {
            let h = u.to_header();
            (
                h.checksum,
                h.calc_checksum_ipv4(&ip.header().to_header(), u.payload())
                    .unwrap(),
            )
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Udp(u))) => {
            let h = u.to_header();
            (
                h.checksum,
                h.calc_checksum_ipv6(&ip.header().to_header(), u.payload())
                    .unwrap(),
            )
        }
        other => panic!("not TCP/UDP over IP: {other:?}"),
    };
    found == calc
}

/// One request and its reply of a random flow: `(request, reply from the backend)` builders.
fn flow(rng: &mut Rng, v6: bool, udp: bool, payload: &[u8]) -> (Vec<u8>, [u8; 16], u16) {
    let sport = 1024 + (rng.next() % 60_000) as u16;
    if v6 {
        let mut client = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        client[8..].copy_from_slice(&rng.bytes::<8>());
        let vip: [u8; 16] = "fd96::10".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let f = if udp {
            udp_v6_frame(client, sport, vip, 53, payload)
        } else {
            tcp_v6_frame(client, sport, vip, 80, TcpFlags::SYN, payload)
        };
        (f, client, sport)
    } else {
        let mut client = [0u8; 16];
        client[..4].copy_from_slice(&[10, 0, rng.next() as u8, 1 + (rng.next() % 250) as u8]);
        let c4 = [client[0], client[1], client[2], client[3]];
        let f = if udp {
            udp_v4_frame(c4, sport, [10, 96, 0, 10], 53, payload)
        } else {
            tcp_v4_frame(c4, sport, [10, 96, 0, 10], 80, TcpFlags::SYN, payload)
        };
        (f, client, sport)
    }
}

/// The reply to `request` as translated (`translated`: client → backend), from the backend.
fn reply_to(translated: &[u8], payload: &[u8]) -> Vec<u8> {
    let p = parse(&SlicePacket::new(&mut translated.to_vec())).unwrap();
    let t = p.tuple;
    let v4 = |a: &[u8; 16]| [a[0], a[1], a[2], a[3]];
    match (t.family == 6, t.proto == L4Proto::Udp as u8) {
        (true, true) => udp_v6_frame(t.dst, t.dst_port, t.src, t.src_port, payload),
        (true, false) => tcp_v6_frame(
            t.dst,
            t.dst_port,
            t.src,
            t.src_port,
            TcpFlags::SYN | TcpFlags::ACK,
            payload,
        ),
        (false, true) => udp_v4_frame(v4(&t.dst), t.dst_port, v4(&t.src), t.src_port, payload),
        (false, false) => tcp_v4_frame(
            v4(&t.dst),
            t.dst_port,
            v4(&t.src),
            t.src_port,
            TcpFlags::SYN | TcpFlags::ACK,
            payload,
        ),
    }
}

#[test]
fn partial_checksums_at_xdp_engine_equals_kernel_and_complete_right() {
    if !common::privileged("partial_checksums_at_xdp_engine_equals_kernel_and_complete_right") {
        return;
    }
    let mut h = EngineAndKernel::new(Program::Xdp, default_config(7), &services())
        .unwrap_or_else(|e| panic!("engine and kernel: {e:#}"));
    h.dp.set_xdp_partial_checksums_ifindex(LOOPBACK, true)
        .unwrap();
    h.engine.set_xdp_virtual_device(true);
    let mut rng = Rng(0x5eed_1234_dead_beef);
    let mut now = START_NS;
    let mut partial_seen = 0;
    for i in 0..160 {
        let (v6, udp) = (i % 2 == 1, i % 4 >= 2);
        let payload: Vec<u8> = (0..rng.next() % 300).map(|_| rng.next() as u8).collect();
        let (mut req, _, _) = flow(&mut rng, v6, udp, &payload);
        make_checksum_partial(&mut req);
        now += 1_000;
        let out = h.expect_same(&format!("flow {i} request (partial)"), &req, now);
        assert_eq!(out.verdict, Verdict::Pass, "flow {i}");
        assert_eq!(
            out.after.get(Counter::ServiceNewFlow),
            out.before.get(Counter::ServiceNewFlow) + 1,
            "flow {i}: a new flow"
        );
        let found = out.after.get(Counter::ChecksumPartialAtXdp)
            - out.before.get(Counter::ChecksumPartialAtXdp);
        assert_eq!(
            found, 1,
            "flow {i}: the request's checksum taken for partial"
        );
        partial_seen += found;
        let mut done = out.frame.clone();
        complete_partial_checksum(&mut done);
        assert!(
            checksum_ok(&done),
            "flow {i}: the request completes to a right checksum"
        );

        // The backend's reply, partial too (its node sends with offload): translated back.
        let mut rep = reply_to(&out.frame, &payload[..payload.len() / 2]);
        make_checksum_partial(&mut rep);
        now += 1_000;
        let out = h.expect_same(&format!("flow {i} reply (partial)"), &rep, now);
        assert_eq!(
            out.after.get(Counter::ReplyTranslated),
            out.before.get(Counter::ReplyTranslated) + 1,
            "flow {i}: the reply translated"
        );
        let mut done = out.frame.clone();
        complete_partial_checksum(&mut done);
        assert!(
            checksum_ok(&done),
            "flow {i}: the reply completes to a right checksum"
        );
    }
    assert_eq!(partial_seen, 160);
    println!(
        "{} packets compared, engine = kernel; every partial checksum completed right",
        h.compared
    );

    // Not registered: the same kind of packet is taken as complete (its field is a checksum,
    // and a wrong one: the rewrite keeps it wrong), in both worlds alike.
    h.dp.set_xdp_partial_checksums_ifindex(LOOPBACK, false)
        .unwrap();
    h.engine.set_xdp_virtual_device(false);
    let (mut req, _, _) = flow(&mut rng, false, false, b"");
    make_checksum_partial(&mut req);
    let out = h.expect_same("request on a NIC", &req, now + 1_000);
    assert_eq!(
        out.after.get(Counter::ChecksumPartialAtXdp),
        out.before.get(Counter::ChecksumPartialAtXdp)
    );
    assert!(
        !checksum_ok(&out.frame),
        "a seed taken for a checksum stays a wrong checksum"
    );
    // And complete checksums on a registered device stay complete and right.
    h.dp.set_xdp_partial_checksums_ifindex(LOOPBACK, true)
        .unwrap();
    h.engine.set_xdp_virtual_device(true);
    for i in 0..40 {
        let (req, _, _) = flow(&mut rng, i % 2 == 1, i % 4 >= 2, b"complete");
        let out = h.expect_same(&format!("complete {i}"), &req, now + 2_000 + i as u64);
        assert_eq!(
            out.after.get(Counter::ChecksumPartialAtXdp),
            out.before.get(Counter::ChecksumPartialAtXdp)
        );
        assert!(
            checksum_ok(&out.frame),
            "complete {i}: the rewritten checksum is right"
        );
    }
}
