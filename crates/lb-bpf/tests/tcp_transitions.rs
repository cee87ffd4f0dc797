//! Every cell of netfilter's TCP state table, through the userspace engine and the XDP program
//! (`BPF_PROG_TEST_RUN`), compared packet by packet: bytes, verdicts, conntrack contents and
//! counters (see `lb_testbed::harness`).
//!
//! The fixtures are generated from lb-conntrack's own table (`tcp_edges`, `tcp_transition`), so a
//! new edge gets a fixture: each one drives a fresh flow from its first SYN to the edge's source
//! state along the shortest path of table edges, then sends the edge's packet. The set of edges
//! the engine was seen to take must equal the set of edges of the table. Cells that are not edges
//! (ignored or invalid packets) must leave state and timer alone in both worlds, and flows past
//! their deadline must count as absent in both.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};

use lb_api::abi::{CtEntry, CtKind, CtState, DatapathConfig};
use lb_api::counters::Counter;
use lb_api::flow::{v4_of, L4Proto};
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_bpf::Program;
use lb_conntrack::{
    initial_state, tcp_edges, tcp_transition, Direction, TcpEdge, TcpPacketClass, TcpTransition,
    TCP_STATES,
};
use lb_control::default_config;
use lb_control::ServiceSpec;
use lb_testbed::harness::EngineAndKernel;

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const VIP: [u8; 4] = [10, 96, 0, 10];
const BACKEND: [u8; 4] = [10, 1, 0, 2];
const BACKEND_PORT: u16 = 8080;
const SEC: u64 = 1_000_000_000;
const START_NS: u64 = 1_000 * SEC;

fn config() -> DatapathConfig {
    default_config(0x5eed)
}

fn both_worlds() -> EngineAndKernel {
    let service = ServiceSpec {
        id: 1,
        frontend: "10.96.0.10:80".parse().unwrap(),
        proto: L4Proto::Tcp,
        backends: vec!["10.1.0.2:8080".parse().unwrap()],
        ..Default::default()
    };
    EngineAndKernel::new(Program::Xdp, config(), &[service])
        .unwrap_or_else(|e| panic!("engine and kernel: {e:#}"))
}

/// A packet of the flow from client port `port`, in `dir`.
fn frame(dir: Direction, port: u16, flags: u8) -> Vec<u8> {
    match dir {
        Direction::Original => tcp_v4_frame(CLIENT, port, VIP, 80, flags, b""),
        Direction::Reply => tcp_v4_frame(BACKEND, BACKEND_PORT, CLIENT, port, flags, b""),
    }
}

/// The engine's service entry of the flow from client port `port` (the kernel's is identical:
/// the harness compares them after every packet).
fn service_entry(h: &EngineAndKernel, port: u16) -> Option<CtEntry> {
    h.engine
        .conntrack()
        .iter()
        .find(|(k, _)| {
            k.kind == CtKind::Service as u8 && k.src_port == port && v4_of(&k.dst) == VIP
        })
        .map(|(_, e)| *e)
}

/// One packet of a path and the state it leads to.
type Hop = (Direction, TcpPacketClass, CtState);

/// The shortest path of table edges from a new flow's SYN to every TCP state (breadth-first).
fn paths() -> HashMap<CtState, Vec<Hop>> {
    let first = initial_state(6, TcpPacketClass::Syn.flags());
    let mut paths = HashMap::from([(
        first,
        vec![(Direction::Original, TcpPacketClass::Syn, first)],
    )]);
    let mut queue = VecDeque::from([first]);
    while let Some(s) = queue.pop_front() {
        for e in tcp_edges().filter(|e| e.from == s) {
            if !paths.contains_key(&e.to) {
                let mut p = paths[&s].clone();
                p.push((e.dir, e.class, e.to));
                paths.insert(e.to, p);
                queue.push_back(e.to);
            }
        }
    }
    for s in TCP_STATES {
        assert!(paths.contains_key(&s), "{s:?} unreachable from a SYN");
    }
    paths
}

/// Drives a new flow from client port `port` to `state` along its path, checking every hop.
fn drive(
    h: &mut EngineAndKernel,
    paths: &HashMap<CtState, Vec<Hop>>,
    port: u16,
    state: CtState,
    now: &mut u64,
) {
    for (i, &(dir, class, to)) in paths[&state].iter().enumerate() {
        *now += SEC;
        let what = format!("port {port} to {state:?}, hop {i}: {class:?} {dir:?}");
        let out = h.expect_same(&what, &frame(dir, port, class.flags()), *now);
        assert_eq!(out.verdict, Verdict::Pass, "{what}");
        let e = service_entry(h, port).unwrap_or_else(|| panic!("{what}: no entry"));
        assert_eq!(CtState::from_u8(e.state), Some(to), "{what}");
    }
}

/// The counter a translated packet of `dir` bumps.
fn translated(dir: Direction) -> Counter {
    match dir {
        Direction::Original => Counter::ServiceEstablished,
        Direction::Reply => Counter::ReplyTranslated,
    }
}

#[test]
fn every_edge_of_the_tcp_table_in_both_worlds() {
    if !common::privileged("every_edge_of_the_tcp_table_in_both_worlds") {
        return;
    }
    let mut h = both_worlds();
    let paths = paths();
    let timeouts = config().timeouts;
    let edges: Vec<TcpEdge> = tcp_edges().collect();
    let mut covered = HashSet::new();
    let mut now = START_NS;
    for (i, edge) in edges.iter().enumerate() {
        let port = 20_000 + i as u16;
        drive(&mut h, &paths, port, edge.from, &mut now);
        let before = service_entry(&h, port).unwrap();
        now += SEC;
        let what = format!("edge {edge:?}");
        let out = h.expect_same(&what, &frame(edge.dir, port, edge.class.flags()), now);
        assert_eq!(out.verdict, Verdict::Pass, "{what}");
        let c = translated(edge.dir);
        assert_eq!(out.after.get(c), out.before.get(c) + 1, "{what}: {c:?}");
        let after = service_entry(&h, port).unwrap();
        let to = CtState::from_u8(after.state).unwrap();
        assert_eq!(to, edge.to, "{what}");
        assert_eq!(
            after.expires_ns,
            now + timeouts.of(after.state),
            "{what}: timer restarted"
        );
        // A SYN reusing the tuple of a finished flow restarts it as a new flow.
        if edge.dir == Direction::Original
            && edge.class == TcpPacketClass::Syn
            && matches!(edge.from, CtState::TimeWait | CtState::Close)
        {
            assert_eq!(after.created_ns, now, "{what}: restarted");
            assert_eq!(after.created_ns, now);
            assert_ne!(before.created_ns, now);
        }
        covered.insert(TcpEdge {
            from: CtState::from_u8(before.state).unwrap(),
            dir: edge.dir,
            class: edge.class,
            to,
        });
    }
    let all: HashSet<TcpEdge> = edges.iter().copied().collect();
    assert_eq!(covered, all, "covered edges differ from the table's");
    eprintln!(
        "{} edges of the TCP table covered; {} packets byte-identical between engine and {}",
        covered.len(),
        h.compared,
        h.program.name()
    );
}

#[test]
fn every_other_cell_leaves_state_and_timer_alone_in_both_worlds() {
    if !common::privileged("every_other_cell_leaves_state_and_timer_alone_in_both_worlds") {
        return;
    }
    let mut h = both_worlds();
    let paths = paths();
    let mut now = START_NS;
    let mut cells = 0;
    for from in TCP_STATES {
        for dir in Direction::BOTH {
            for class in TcpPacketClass::ALL {
                if matches!(tcp_transition(from, dir, class), TcpTransition::To(_)) {
                    continue;
                }
                let port = 40_000 + cells;
                cells += 1;
                drive(&mut h, &paths, port, from, &mut now);
                let before = service_entry(&h, port).unwrap();
                now += SEC;
                let what = format!("{class:?} {dir:?} in {from:?}");
                let out = h.expect_same(&what, &frame(dir, port, class.flags()), now);
                assert_eq!(out.verdict, Verdict::Pass, "{what}");
                let c = translated(dir);
                assert_eq!(out.after.get(c), out.before.get(c) + 1, "{what}: {c:?}");
                let after = service_entry(&h, port).unwrap();
                // lb-conntrack's one documented deviation: a client ACK in SYN_SENT on a flow
                // that never saw a reply establishes it (one-sided flows, DSR).
                if (from, dir, class)
                    == (CtState::SynSent, Direction::Original, TcpPacketClass::Ack)
                {
                    assert_eq!(after.state, CtState::Established as u8, "{what}");
                    continue;
                }
                assert_eq!(after.state, before.state, "{what}: state");
                assert_eq!(after.expires_ns, before.expires_ns, "{what}: timer");
            }
        }
    }
    assert_eq!(
        cells as usize + tcp_edges().count(),
        TCP_STATES.len() * 2 * TcpPacketClass::ALL.len()
    );
    eprintln!("{cells} non-edge cells; {} packets compared", h.compared);
}

#[test]
fn expired_flows_count_as_absent_in_both_worlds() {
    if !common::privileged("expired_flows_count_as_absent_in_both_worlds") {
        return;
    }
    let mut h = both_worlds();
    let paths = paths();
    let mut now = START_NS;

    // A SYN reusing the tuple of a TIME_WAIT flow past its deadline: a new flow replaces it.
    let port = 30_000;
    drive(&mut h, &paths, port, CtState::TimeWait, &mut now);
    now = service_entry(&h, port).unwrap().expires_ns;
    let out = h.expect_same(
        "SYN at the deadline of a TIME_WAIT flow",
        &frame(Direction::Original, port, TcpFlags::SYN),
        now,
    );
    assert_eq!(out.verdict, Verdict::Pass);
    for (c, n) in [
        (Counter::ConntrackExpiredAtLookup, 1),
        (Counter::ServiceNewFlow, 1),
        (Counter::ServiceEstablished, 0),
        (Counter::SourcePortRewritten, 0),
    ] {
        assert_eq!(out.after.get(c) - out.before.get(c), n, "{c:?}");
    }
    let e = service_entry(&h, port).unwrap();
    assert_eq!((e.state, e.created_ns), (CtState::SynSent as u8, now));

    // A reply to an ESTABLISHED flow past its deadline is not translated; both halves go.
    let port = 30_001;
    drive(&mut h, &paths, port, CtState::Established, &mut now);
    now = service_entry(&h, port).unwrap().expires_ns;
    let sent = frame(Direction::Reply, port, TcpFlags::ACK);
    let out = h.expect_same("reply at the deadline of an ESTABLISHED flow", &sent, now);
    assert_eq!(
        (out.verdict, &out.frame),
        (Verdict::Pass, &sent),
        "untranslated"
    );
    for (c, n) in [
        (Counter::ConntrackExpiredAtLookup, 1),
        (Counter::PassNotService, 1),
        (Counter::ReplyTranslated, 0),
    ] {
        assert_eq!(out.after.get(c) - out.before.get(c), n, "{c:?}");
    }
    assert!(service_entry(&h, port).is_none());
    assert!(
        h.engine_conntrack()
            .iter()
            .all(|(k, _)| k.dst_port != port && k.src_port != port),
        "no half of the expired flow is left"
    );

    // One ns earlier the same reply is translated.
    let port = 30_002;
    drive(&mut h, &paths, port, CtState::Established, &mut now);
    now = service_entry(&h, port).unwrap().expires_ns - 1;
    let sent = frame(Direction::Reply, port, TcpFlags::ACK);
    let out = h.expect_same("reply 1 ns before the deadline", &sent, now);
    assert_ne!(out.frame, sent);
    assert_eq!(
        out.after.get(Counter::ReplyTranslated),
        out.before.get(Counter::ReplyTranslated) + 1
    );
}
