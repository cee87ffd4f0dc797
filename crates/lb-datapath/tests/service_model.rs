//! The service model through the pipeline: terminating backends keep established flows and get
//! no new ones; `externalTrafficPolicy: Local` keeps new flows on node-local backends; Maglev
//! moves few new-flow mappings when a backend goes, random selection many.

use std::collections::HashMap;
use std::net::SocketAddr;

use lb_api::flow::L4Proto;
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_conntrack::ManualClock;
use lb_control::{
    default_config, BackendSpec, BackendState, Selection, ServiceSpec, TrafficPolicy,
};
use lb_datapath::engine::Engine;

const VIP: [u8; 4] = [10, 96, 0, 10];

fn engine() -> Engine<ManualClock> {
    let mut cfg = default_config(9);
    cfg.fixed_now_ns = 1_000;
    Engine::with_clock(1 << 16, cfg, ManualClock::new(1_000))
}

fn spec(n: u8, selection: Selection) -> ServiceSpec {
    ServiceSpec {
        id: 1,
        frontend: SocketAddr::from((VIP, 80)),
        proto: L4Proto::Tcp,
        backends: (1..=n)
            .map(|i| BackendSpec::from(SocketAddr::from(([10, 1, 0, i], 8080))))
            .collect(),
        selection,
        ..Default::default()
    }
}

/// Sends one packet of client port `p` and returns the backend's last address byte.
fn send(e: &mut Engine<ManualClock>, p: u16, flags: u8) -> u8 {
    let mut f = tcp_v4_frame(
        [172, 16, (p >> 8) as u8, p as u8],
        10_000 + p,
        VIP,
        80,
        flags,
        b"",
    );
    assert_eq!(e.process(&mut f), Verdict::Pass);
    f[33]
}

#[test]
fn terminating_backend_keeps_established_flows_and_gets_no_new_ones() {
    let mut e = engine();
    let mut s = spec(3, Selection::Random);
    e.upsert_service(&s).unwrap();
    let before: HashMap<u16, u8> = (0..300)
        .map(|p| (p, send(&mut e, p, TcpFlags::SYN)))
        .collect();
    assert!(before.values().any(|&b| b == 3), "backend 3 had flows");

    s.backends[2].state = BackendState::Terminating;
    e.upsert_service(&s).unwrap();
    for (&p, &b) in &before {
        assert_eq!(
            send(&mut e, p, TcpFlags::ACK),
            b,
            "established flow {p} kept its backend"
        );
    }
    for p in 1000..1300 {
        assert_ne!(
            send(&mut e, p, TcpFlags::SYN),
            3,
            "new flow {p} sent to a terminating backend"
        );
    }
}

#[test]
fn local_traffic_policy_sends_new_flows_to_node_local_backends_only() {
    let mut e = engine();
    let mut s = spec(4, Selection::Maglev { table_size: 251 });
    s.external_traffic_policy = TrafficPolicy::Local;
    s.backends[0].node = Some("10.250.0.2".parse().unwrap());
    s.backends[3].node = Some("10.250.0.3".parse().unwrap());
    e.upsert_service(&s).unwrap();
    let mut seen = std::collections::HashSet::new();
    for p in 0..300 {
        seen.insert(send(&mut e, p, TcpFlags::SYN));
    }
    assert_eq!(seen, [2u8, 3].into_iter().collect());
}

/// The backend each of `n` fresh flows would get, in a fresh engine (no conntrack history).
fn mapping(s: &ServiceSpec, flows: u16) -> Vec<u8> {
    let mut e = engine();
    e.upsert_service(s).unwrap();
    (0..flows).map(|p| send(&mut e, p, TcpFlags::SYN)).collect()
}

#[test]
fn maglev_moves_few_new_flow_mappings_when_a_backend_goes_random_moves_many() {
    let flows = 5000;
    for (sel, max_moved, min_moved) in [
        (Selection::Maglev { table_size: 16_381 }, 0.2, 0.05),
        (Selection::Random, 1.0, 0.5),
    ] {
        let full = spec(10, sel);
        let mut less = full.clone();
        less.backends.remove(4); // 10.1.0.5 goes
        let (a, b) = (mapping(&full, flows), mapping(&less, flows));
        let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count() as f64 / f64::from(flows);
        println!("{sel:?}: {:.1} % of new-flow mappings moved", moved * 100.0);
        assert!(moved <= max_moved && moved >= min_moved, "{sel:?}: {moved}");
        assert!(b.iter().all(|&x| x != 5));
    }
}

#[test]
fn serving_terminating_backends_take_new_flows_only_when_no_ready_one_remains() {
    let mut e = engine();
    let mut s = spec(3, Selection::Random);
    s.backends[1].state = BackendState::ServingTerminating;
    s.backends[2].state = BackendState::ServingTerminating;
    e.upsert_service(&s).unwrap();
    let only_ready: std::collections::HashSet<u8> =
        (0..50).map(|p| send(&mut e, p, TcpFlags::SYN)).collect();
    assert_eq!(only_ready, [1].into(), "a ready backend remains: only it");
    // The ready one goes: the serving-terminating ones take new flows (both of them).
    s.backends[0].state = BackendState::Terminating;
    e.upsert_service(&s).unwrap();
    let fallback: std::collections::HashSet<u8> =
        (100..150).map(|p| send(&mut e, p, TcpFlags::SYN)).collect();
    assert_eq!(fallback, [2, 3].into());
    // None serving: no endpoints, the SYN is rejected with a reset.
    s.backends[1].state = BackendState::Terminating;
    s.backends[2].state = BackendState::Terminating;
    e.upsert_service(&s).unwrap();
    let mut f = tcp_v4_frame([172, 16, 9, 9], 20_000, VIP, 80, TcpFlags::SYN, b"");
    assert_eq!(e.process(&mut f), Verdict::Tx);
    assert_eq!(
        e.counters()
            .get(lb_api::counters::Counter::RejectNoEndpoints),
        1
    );
}
