//! Source-port collisions with source-preserving forwarding (DESIGN.md incident 2): one client
//! ip:port reaches one backend through two frontends (two NodePorts). The second flow's reply
//! tuple collides with the first's; the resolver rewrites its source port, with zero drops, and
//! replies of each flow reach the right client connection. Frames are checked with etherparse,
//! an independent parser.

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_api::abi::CtKind;
use lb_api::counters::{Counter, DropReason};
use lb_api::flow::L4Proto;
use lb_api::wire::testing::{tcp_v4_frame, udp_v4_frame};
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_conntrack::ManualClock;
use lb_datapath::engine::{default_config, Engine};
use lb_nat::control::ServiceSpec;

const CLIENT: [u8; 4] = [172, 16, 0, 9];
const CLIENT_PORT: u16 = 40_000;
const NODE_A: [u8; 4] = [192, 168, 1, 10];
const NODE_B: [u8; 4] = [192, 168, 1, 11];
const NODE_PORT: u16 = 30_080;
const BACKEND: [u8; 4] = [10, 1, 0, 2];
const BACKEND_PORT: u16 = 8080;

fn engine(proto: L4Proto) -> Engine<ManualClock> {
    let mut cfg = default_config(42);
    cfg.fixed_now_ns = 1_000;
    let mut e = Engine::with_clock(1024, cfg, ManualClock::new(1_000));
    for (id, node) in [(1, NODE_A), (2, NODE_B)] {
        e.upsert_service(&ServiceSpec {
            id,
            frontend: (node, NODE_PORT).into(),
            proto,
            backends: vec![std::net::SocketAddr::from((BACKEND, BACKEND_PORT)).into()],
            ..Default::default()
        })
        .unwrap();
    }
    e
}

/// (src ip, src port, dst ip, dst port) as etherparse reads them, with checksums verified.
fn endpoints(frame: &[u8]) -> ([u8; 4], u16, [u8; 4], u16) {
    let p = SlicedPacket::from_ethernet(frame).expect("etherparse accepts the frame");
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4")
    };
    let h = ip.header();
    let (src, dst) = (h.source(), h.destination());
    assert_eq!(
        h.to_header().calc_header_checksum(),
        h.header_checksum(),
        "IPv4 checksum"
    );
    let payload = ip.payload().payload;
    match p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = t
                .to_header()
                .calc_checksum_ipv4_raw(src, dst, t.payload())
                .unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum");
            (src, t.source_port(), dst, t.destination_port())
        }
        Some(TransportSlice::Udp(u)) => {
            let want = u
                .to_header()
                .calc_checksum_ipv4_raw(src, dst, u.payload())
                .unwrap();
            assert_eq!(u.checksum(), want, "UDP checksum");
            let _ = payload;
            (src, u.source_port(), dst, u.destination_port())
        }
        _ => panic!("no transport"),
    }
}

fn frame(
    proto: L4Proto,
    s: [u8; 4],
    sp: u16,
    d: [u8; 4],
    dp: u16,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    match proto {
        L4Proto::Udp => udp_v4_frame(s, sp, d, dp, data),
        _ => tcp_v4_frame(s, sp, d, dp, flags, data),
    }
}

fn scenario(proto: L4Proto) {
    let mut e = engine(proto);

    // The same client ip:port opens a connection through node A's and node B's NodePort.
    let mut syn_a = frame(
        proto,
        CLIENT,
        CLIENT_PORT,
        NODE_A,
        NODE_PORT,
        TcpFlags::SYN,
        b"a",
    );
    assert_eq!(e.process(&mut syn_a), Verdict::Pass);
    assert_eq!(
        endpoints(&syn_a),
        (CLIENT, CLIENT_PORT, BACKEND, BACKEND_PORT),
        "first flow keeps its port"
    );

    let mut syn_b = frame(
        proto,
        CLIENT,
        CLIENT_PORT,
        NODE_B,
        NODE_PORT,
        TcpFlags::SYN,
        b"b",
    );
    assert_eq!(
        e.process(&mut syn_b),
        Verdict::Pass,
        "collision resolved, not dropped"
    );
    let (src, rewritten, dst, dport) = endpoints(&syn_b);
    assert_eq!((src, dst, dport), (CLIENT, BACKEND, BACKEND_PORT));
    assert_ne!(
        rewritten, CLIENT_PORT,
        "second flow got another source port"
    );
    assert!((20_000..=29_999).contains(&rewritten), "{rewritten}");

    // Conntrack records the rewrite on both halves of flow B.
    let rewritten_entries: Vec<_> = e
        .conntrack()
        .iter()
        .filter(|(_, v)| v.src_port_rewritten())
        .collect();
    assert_eq!(rewritten_entries.len(), 2);
    for (k, v) in &rewritten_entries {
        if k.kind == CtKind::Service as u8 {
            assert_eq!((k.src_port, v.rewritten_src_port), (CLIENT_PORT, rewritten));
        } else {
            assert_eq!((k.dst_port, v.rewritten_src_port), (rewritten, CLIENT_PORT));
        }
    }

    // Later packets of flow B get the same rewrite.
    let mut ack_b = frame(
        proto,
        CLIENT,
        CLIENT_PORT,
        NODE_B,
        NODE_PORT,
        TcpFlags::ACK,
        b"bb",
    );
    assert_eq!(e.process(&mut ack_b), Verdict::Pass);
    assert_eq!(
        endpoints(&ack_b),
        (CLIENT, rewritten, BACKEND, BACKEND_PORT)
    );

    // The backend answers both connections; each reply reaches the client's connection through
    // the node it used, on the client's original port.
    let mut reply_a = frame(
        proto,
        BACKEND,
        BACKEND_PORT,
        CLIENT,
        CLIENT_PORT,
        TcpFlags::SYN | TcpFlags::ACK,
        b"ra",
    );
    assert_eq!(e.process(&mut reply_a), Verdict::Pass);
    assert_eq!(
        endpoints(&reply_a),
        (NODE_A, NODE_PORT, CLIENT, CLIENT_PORT)
    );

    let mut reply_b = frame(
        proto,
        BACKEND,
        BACKEND_PORT,
        CLIENT,
        rewritten,
        TcpFlags::SYN | TcpFlags::ACK,
        b"rb",
    );
    assert_eq!(e.process(&mut reply_b), Verdict::Pass);
    assert_eq!(
        endpoints(&reply_b),
        (NODE_B, NODE_PORT, CLIENT, CLIENT_PORT)
    );
    // Payload untouched.
    assert_eq!(&reply_b[reply_b.len() - 2..], b"rb");

    let c = e.counters();
    assert_eq!(c.get(Counter::Dropped), 0);
    assert_eq!(c.drops(DropReason::SourcePortCollision), 0);
    assert_eq!(c.get(Counter::SourcePortRewritten), 1);
    assert_eq!(c.get(Counter::ReplyTranslated), 2);
    assert_eq!(c.get(Counter::ServiceNewFlow), 2);
}

#[test]
fn tcp_nodeport_collision_is_resolved_and_replies_reach_the_right_connection() {
    scenario(L4Proto::Tcp);
}

#[test]
fn udp_nodeport_collision_is_resolved_and_replies_reach_the_right_connection() {
    scenario(L4Proto::Udp);
}

#[test]
fn unresolvable_collision_is_dropped_and_counted() {
    // A one-port rewrite range that is already taken: every try collides.
    let mut e = engine(L4Proto::Tcp);
    let mut cfg = *e.config();
    cfg.src_port_min = 25_000;
    cfg.src_port_max = 25_000;
    e.set_config(cfg);
    // Flow 1 owns (backend -> client:25000) through node A.
    let mut f = tcp_v4_frame(CLIENT, 25_000, NODE_A, NODE_PORT, TcpFlags::SYN, b"");
    assert_eq!(e.process(&mut f), Verdict::Pass);
    // Flow 2 owns (backend -> client:40000) through node A.
    let mut f = tcp_v4_frame(CLIENT, CLIENT_PORT, NODE_A, NODE_PORT, TcpFlags::SYN, b"");
    assert_eq!(e.process(&mut f), Verdict::Pass);
    // Flow 3: client:40000 through node B collides, and its only alternative port is taken.
    let mut f = tcp_v4_frame(CLIENT, CLIENT_PORT, NODE_B, NODE_PORT, TcpFlags::SYN, b"");
    assert_eq!(e.process(&mut f), Verdict::Drop);
    let c = e.counters();
    assert_eq!(c.drops(DropReason::SourcePortCollision), 1);
    assert_eq!(c.get(Counter::SourcePortRewritten), 0);
    assert_eq!(
        e.conntrack().len(),
        4,
        "the dropped flow left no half pair behind"
    );
}

#[test]
fn many_clients_colliding_through_two_nodes_all_resolve() {
    let mut e = engine(L4Proto::Tcp);
    let n = 200u16;
    for p in 0..n {
        for node in [NODE_A, NODE_B] {
            let mut f = tcp_v4_frame(CLIENT, 40_000 + p, node, NODE_PORT, TcpFlags::SYN, b"");
            assert_eq!(e.process(&mut f), Verdict::Pass);
        }
    }
    let c = e.counters();
    assert_eq!(c.get(Counter::Dropped), 0);
    assert_eq!(c.get(Counter::SourcePortRewritten), u64::from(n));
    assert_eq!(e.conntrack().len(), 4 * usize::from(n));
}
