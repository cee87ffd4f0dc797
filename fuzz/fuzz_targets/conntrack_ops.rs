//! The conntrack fuzz harness, shared by the cargo-fuzz target (`conntrack.rs`) and a
//! deterministic smoke test in crates/lb-datapath/tests/fuzz_smoke.rs that runs it on
//! pseudo-random inputs where cargo-fuzz is not installed.
//!
//! Arbitrary sequences of packets (clients' packets to three services — TCP, UDP, and SNAT to
//! a backend on another node — and backends' replies), clock steps, GC sweeps and deletions of
//! one half of a pair, through the real pipeline: every packet is a frame run by
//! `Engine::process` (`lb_datapath::process`), every sweep is the engine's GC. The harness only
//! builds frames and reads the engine's tables; it re-implements no pipeline step.
//!
//! Checked after every operation: no panic; every packet has exactly one outcome; the table
//! never exceeds its capacity and its metrics match its contents; pairs are whole except where
//! the harness itself deleted a half (and then the pipeline repairs them: an orphan reply
//! removed, a reverse entry rebuilt, both counted); every `conntrack_full` drop is a drop
//! event; past its deadline, only a reverse entry whose service entry is alive survives a
//! sweep. The first input bytes also go through the timeout parser.

use std::collections::HashSet;
use std::net::SocketAddr;

use lb_api::abi::{CtKey, CtKind, DatapathConfig, ForwardingMode};
use lb_api::counters::{Counter, CounterSnapshot, DropReason};
use lb_api::flow::{v4_addr, v4_of, FlowTuple, L4Proto};
use lb_api::wire::testing::{tcp_v4_frame, udp_v4_frame};
use lb_conntrack::{
    partner_key, Clock as _, ConntrackGc, GcConfig, ManualClock, Timeout, TimeoutPolicy,
};
use lb_control::{default_config, BackendSpec, NodeSpec, PortRange, ServiceSpec};
use lb_datapath::engine::Engine;

const CAPACITY: usize = 24;
const SEC: u64 = 1_000_000_000;
const NODE: [u8; 4] = [10, 0, 0, 1];
const PEER: [u8; 4] = [10, 0, 0, 2];

/// The three services: (frontend, protocol, backend port).
const SERVICES: [([u8; 4], u16, L4Proto, u16); 3] = [
    ([10, 96, 0, 10], 80, L4Proto::Tcp, 8080),
    ([10, 96, 0, 10], 53, L4Proto::Udp, 5353),
    ([10, 96, 0, 11], 80, L4Proto::Tcp, 8080),
];

fn engine(policy: &TimeoutPolicy) -> Engine<ManualClock> {
    let cfg = DatapathConfig {
        timeouts: policy.to_timeouts(),
        ..default_config(3)
    };
    let mut e = Engine::with_clock(CAPACITY, cfg, ManualClock::new(SEC));
    e.set_node(&NodeSpec {
        address_v4: Some(NODE.into()),
        peers: vec![PEER.into()],
        // A handful of SNAT ports: exhaustion and TIME_WAIT take-over are reachable.
        snat_ports: PortRange {
            min: 40_000,
            max: 40_003,
        },
        ..Default::default()
    })
    .expect("valid node");
    for (i, (vip, port, proto, bport)) in SERVICES.into_iter().enumerate() {
        let backends = if i == 2 {
            vec![BackendSpec {
                node: Some(PEER.into()),
                ..SocketAddr::from(([10, 2, 0, 3], bport)).into()
            }]
        } else {
            vec![
                SocketAddr::from(([10, 1, 0, 2], bport)).into(),
                SocketAddr::from(([10, 1, 0, 3], bport)).into(),
            ]
        };
        e.upsert_service(&ServiceSpec {
            id: 1 + i as u32,
            frontend: (vip, port).into(),
            proto,
            mode: if i == 2 {
                ForwardingMode::Snat
            } else {
                ForwardingMode::default()
            },
            backends,
            ..Default::default()
        })
        .expect("valid service");
    }
    e
}

/// The tuple client `id` sends to service `svc` with.
fn client_tuple(id: u8, svc: u8) -> FlowTuple {
    let (vip, port, proto, _) = SERVICES[usize::from(svc % 3)];
    FlowTuple {
        src: v4_addr([172, 16, 0, id % 8]),
        dst: v4_addr(vip),
        src_port: 40_000 + u16::from(id >> 3 & 3),
        dst_port: port,
        proto: proto as u8,
        family: 4,
    }
}

/// A frame of tuple `t` with TCP flags `flags` (ignored for UDP).
fn frame(t: &FlowTuple, flags: u8) -> Vec<u8> {
    let (src, dst) = (v4_of(&t.src), v4_of(&t.dst));
    if t.proto == L4Proto::Udp as u8 {
        udp_v4_frame(src, t.src_port, dst, t.dst_port, b"q")
    } else {
        tcp_v4_frame(src, t.src_port, dst, t.dst_port, flags, b"")
    }
}

/// The invariants that hold after every operation.
fn check(e: &Engine<ManualClock>, damaged: &mut HashSet<CtKey>, refused_events: u64) {
    let ct = e.conntrack();
    assert!(ct.len() <= CAPACITY);
    let m = e.conntrack_metrics(None);
    assert_eq!(m.entries, ct.len() as u64);
    assert_eq!(m.service_entries + m.reverse_entries, m.entries);
    assert_eq!(m.by_state.iter().sum::<u64>(), m.service_entries);
    let p = m.by_proto;
    assert_eq!(p.tcp + p.udp + p.icmp + p.other, m.service_entries);
    // Half pairs only where the harness deleted a half and no packet has repaired it yet.
    let mut half = HashSet::new();
    for (k, en) in ct.iter() {
        let partner = partner_key(k, en).expect("known kind");
        if ct.get(&partner).is_none() {
            assert!(
                damaged.contains(k) || damaged.contains(&partner),
                "half a pair the pipeline left: {k:?}"
            );
            half.insert(*k);
            half.insert(partner);
        }
    }
    // A damaged flow stays so while either half is around: another flow may take the reply
    // tuple of a deleted reverse entry, and leave the service entry alone when it ends.
    damaged.retain(|k| half.contains(k) || ct.get(k).is_some());
    let c = e.counters();
    let outcomes: u64 = Counter::OUTCOMES.iter().map(|o| c.get(*o)).sum();
    assert_eq!(
        outcomes,
        c.get(Counter::RxPackets),
        "one outcome per packet"
    );
    assert_eq!(c.drops(DropReason::ConntrackFull), refused_events);
    assert_eq!(c.get(Counter::DropEventsLost), 0);
}

/// Runs one input: the policy from the first byte, then 3-byte operations. The engine's
/// counters at the end (the smoke test checks that the repair paths were reached).
pub fn run(data: &[u8]) -> CounterSnapshot {
    if let Some(s) = data
        .get(..data.len().min(8))
        .and_then(|b| std::str::from_utf8(b).ok())
    {
        let _ = s.parse::<Timeout>();
    }
    let policy = match data.first().copied().unwrap_or(0) % 3 {
        0 => TimeoutPolicy::netfilter(),
        1 => TimeoutPolicy::calico(),
        _ => TimeoutPolicy::cilium(),
    };
    let mut e = engine(&policy);
    let mut gc = ConntrackGc::new(GcConfig::default());
    let mut damaged = HashSet::new();
    let mut refused_events = 0u64;
    for op in data.chunks_exact(3).skip(1) {
        let (a, b, c) = (op[0], op[1], op[2]);
        let t = client_tuple(b, a >> 3);
        match a % 5 {
            // A client's packet (first or further) to a service.
            0 => {
                e.process(&mut frame(&t, c));
            }
            // The backend's reply to the flow, addressed as the flow's entries say (or, with no
            // flow, to the client as if it had not been translated).
            1 => {
                let key = CtKey::new(&t, CtKind::Service);
                let reply = match e.conntrack().get(&key).and_then(|en| partner_key(&key, en)) {
                    Some(rk) => rk.tuple(),
                    None => FlowTuple {
                        src: v4_addr([10, 1, 0, 2 + (c & 1)]),
                        src_port: SERVICES[usize::from((a >> 3) % 3)].3,
                        dst: t.src,
                        dst_port: t.src_port,
                        ..t
                    },
                };
                e.process(&mut frame(&reply, c));
            }
            2 => e.clock().advance(u64::from(c) * u64::from(b % 8 + 1) * SEC),
            3 => {
                let report = e.conntrack_gc(&mut gc);
                assert!(report.deleted <= report.scanned);
                // Past its deadline, only a reverse entry whose service entry is alive stays
                // (the service entry owns the pair's fate).
                let now = e.clock().now_ns();
                let ct = e.conntrack();
                for (k, en) in ct.iter() {
                    let owner_alive = k.kind == CtKind::ReverseNat as u8
                        && partner_key(k, en)
                            .and_then(|p| ct.get(&p))
                            .is_some_and(|p| p.expires_ns > now);
                    assert!(
                        en.expires_ns > now || owner_alive,
                        "entry past its deadline survived a sweep: {k:?}"
                    );
                }
            }
            // One half of a pair deleted on its own (an operator's flush, a GC in two steps).
            _ => {
                let victim = e
                    .conntrack()
                    .iter()
                    .map(|(k, _)| *k)
                    .nth(usize::from(c) % CAPACITY);
                if let Some(k) = victim {
                    if let Some(p) = e.conntrack().get(&k).and_then(|en| partner_key(&k, en)) {
                        damaged.insert(p);
                    }
                    assert!(e.conntrack_remove(&k));
                    damaged.insert(k);
                }
            }
        }
        refused_events += e
            .drain_drop_events()
            .iter()
            .filter(|ev| ev.reason == DropReason::ConntrackFull)
            .count() as u64;
        check(&e, &mut damaged, refused_events);
    }
    *e.counters()
}
