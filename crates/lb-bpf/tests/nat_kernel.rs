//! NAT in the kernel: the source-port collision resolver and Maglev selection run in the real
//! eBPF programs (BPF_PROG_TEST_RUN), with the same outcomes as the userspace engine.

mod common;

use lb_api::abi::CtKind;
use lb_api::counters::{Counter, DropReason};
use lb_api::flow::L4Proto;
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_bpf::{KernelDatapath, Program};
use lb_conntrack::ManualClock;
use lb_control::{default_config, BackendSpec, Selection, ServiceSpec};
use lb_datapath::engine::Engine;

const CLIENT: [u8; 4] = [172, 16, 0, 9];
const NODE_A: [u8; 4] = [192, 168, 1, 10];
const NODE_B: [u8; 4] = [192, 168, 1, 11];
const BACKEND: [u8; 4] = [10, 1, 0, 2];

fn load() -> KernelDatapath {
    let mut dp = KernelDatapath::load().unwrap_or_else(|e| panic!("load: {e}"));
    let mut cfg = default_config(42);
    cfg.fixed_now_ns = 1_000;
    dp.set_config(&cfg).unwrap();
    dp.flush_conntrack().unwrap();
    dp.reset_counters().unwrap();
    dp
}

fn ports(frame: &[u8]) -> (u16, u16) {
    let p = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
    match p.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        _ => panic!("not TCP"),
    }
}

#[test]
fn kernel_resolves_nodeport_source_port_collision() {
    if !common::privileged("kernel_resolves_nodeport_source_port_collision") {
        return;
    }
    let mut dp = load();
    for (id, node) in [(11, NODE_A), (12, NODE_B)] {
        dp.upsert_service(&ServiceSpec {
            id,
            frontend: (node, 30_080).into(),
            proto: L4Proto::Tcp,
            backends: vec![std::net::SocketAddr::from((BACKEND, 8080)).into()],
            ..Default::default()
        })
        .unwrap();
    }
    let run = |f: &[u8]| dp.test_run(Program::Xdp, f, 1).unwrap();
    let a = run(&tcp_v4_frame(
        CLIENT,
        40_000,
        NODE_A,
        30_080,
        TcpFlags::SYN,
        b"",
    ));
    assert_eq!(a.verdict, Verdict::Pass);
    assert_eq!(
        a.data,
        tcp_v4_frame(CLIENT, 40_000, BACKEND, 8080, TcpFlags::SYN, b"")
    );
    let b = run(&tcp_v4_frame(
        CLIENT,
        40_000,
        NODE_B,
        30_080,
        TcpFlags::SYN,
        b"",
    ));
    assert_eq!(b.verdict, Verdict::Pass, "collision resolved in the kernel");
    let (rewritten, _) = ports(&b.data);
    assert!((20_000..=29_999).contains(&rewritten), "{rewritten}");
    // Byte-identical to a frame built from scratch with the rewritten port (checksums too).
    assert_eq!(
        b.data,
        tcp_v4_frame(CLIENT, rewritten, BACKEND, 8080, TcpFlags::SYN, b"")
    );

    let reply = run(&tcp_v4_frame(
        BACKEND,
        8080,
        CLIENT,
        rewritten,
        TcpFlags::SYN | TcpFlags::ACK,
        b"",
    ));
    assert_eq!(reply.verdict, Verdict::Pass);
    assert_eq!(
        reply.data,
        tcp_v4_frame(
            NODE_B,
            30_080,
            CLIENT,
            40_000,
            TcpFlags::SYN | TcpFlags::ACK,
            b""
        ),
        "reply restored to the client's original port, from node B"
    );

    let ct = dp.conntrack_entries().unwrap();
    let flagged: Vec<_> = ct.iter().filter(|(_, v)| v.src_port_rewritten()).collect();
    assert_eq!(flagged.len(), 2);
    for (k, v) in flagged {
        if k.kind == CtKind::Service as u8 {
            assert_eq!(v.rewritten_src_port, rewritten);
        } else {
            assert_eq!(v.rewritten_src_port, 40_000);
        }
    }
    let c = dp.counters().unwrap();
    assert_eq!(c.get(Counter::SourcePortRewritten), 1);
    assert_eq!(c.drops(DropReason::SourcePortCollision), 0);
    assert_eq!(c.get(Counter::Dropped), 0);
    dp.flush_conntrack().unwrap();
}

#[test]
fn kernel_maglev_selection_matches_the_engine() {
    if !common::privileged("kernel_maglev_selection_matches_the_engine") {
        return;
    }
    let mut dp = load();
    let spec = ServiceSpec {
        id: 21,
        frontend: ([10, 96, 0, 21], 80).into(),
        proto: L4Proto::Tcp,
        backends: (1..=5u8)
            .map(|i| BackendSpec::from(std::net::SocketAddr::from(([10, 2, 0, i], 8080))))
            .collect(),
        selection: Selection::Maglev { table_size: 251 },
        ..Default::default()
    };
    dp.upsert_service(&spec).unwrap();
    let mut cfg = default_config(42);
    cfg.fixed_now_ns = 1_000;
    let mut engine = Engine::with_clock(1024, cfg, ManualClock::new(1_000));
    engine.upsert_service(&spec).unwrap();
    let mut seen = std::collections::HashSet::new();
    for p in 0..64u16 {
        let syn = tcp_v4_frame(CLIENT, 41_000 + p, [10, 96, 0, 21], 80, TcpFlags::SYN, b"");
        let k = dp.test_run(Program::Xdp, &syn, 1).unwrap();
        let mut u = syn.clone();
        assert_eq!(engine.process(&mut u), k.verdict);
        assert_eq!(k.data, u, "kernel and engine picked the same backend");
        seen.insert(k.data[30..34].to_vec());
    }
    assert_eq!(seen.len(), 5, "64 flows reach all 5 backends");
    dp.remove_service(&spec).unwrap();
    dp.flush_conntrack().unwrap();
}
