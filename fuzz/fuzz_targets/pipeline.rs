//! Arbitrary frames at arbitrary times through the userspace engine (`Engine::process`: the
//! `lb_datapath::process` the kernel runs, no copy of its logic), with conntrack GC sweeps in
//! between: no panic, every packet is counted exactly once as passed, translated, answered or
//! dropped, every drop is one drop event, the conntrack table stays within its size. The node has
//! peers and services in every forwarding mode, with backends here and on another node, so
//! tunnel ingress, DSR carriers, SNAT and the ICMP too-big path are reachable; time steps reach
//! the timeouts (expired-at-lookup, TIME_WAIT take-over) and the sweeps.
//!
//! Input: a sequence of `[length: u16 big-endian][time step: u8][frame]`. The clock advances by
//! `step² × 100 ms` before the frame (0 to 6,502 s); a step of 250 or more also sweeps.
#![no_main]

use lb_api::abi::ForwardingMode;
use lb_api::counters::Counter;
use lb_api::flow::L4Proto;
use lb_conntrack::{ConntrackGc, GcConfig, ManualClock};
use lb_control::{default_config, BackendSpec, NodeSpec, ServiceSpec};
use lb_datapath::engine::Engine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::with_clock(64, default_config(1), ManualClock::new(1));
    engine
        .set_node(&NodeSpec {
            address_v4: Some([10, 0, 0, 1].into()),
            address_v6: Some("fd00::1".parse().unwrap()),
            peers: vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
            // The smallest an IPv6 underlay allows: frames past it reach the too-big path.
            underlay_mtu: 1280,
            ..Default::default()
        })
        .unwrap();
    let remote = |addr: &str, node: &str| BackendSpec {
        node: Some(node.parse().unwrap()),
        ..addr.parse::<std::net::SocketAddr>().unwrap().into()
    };
    let modes = [
        ForwardingMode::Snat,
        ForwardingMode::Dsr,
        ForwardingMode::Tunnel,
        ForwardingMode::Hybrid,
    ];
    for (i, mode) in modes.into_iter().enumerate() {
        for (j, proto) in [L4Proto::Tcp, L4Proto::Udp].into_iter().enumerate() {
            let id = 1 + 2 * i as u32 + j as u32;
            let port = 80 + i as u16;
            engine
                .upsert_service(&ServiceSpec {
                    id,
                    frontend: ([10, 96, 0, 10], port).into(),
                    proto,
                    mode,
                    backends: vec![
                        "10.1.0.2:8080".parse().unwrap(),
                        remote("10.2.0.3:8080", "10.0.0.2"),
                    ],
                    ..Default::default()
                })
                .unwrap();
            engine
                .upsert_service(&ServiceSpec {
                    id: id + 100,
                    frontend: format!("[fd96::10]:{port}").parse().unwrap(),
                    proto,
                    mode,
                    backends: vec![
                        "[fd01::2]:8080".parse().unwrap(),
                        remote("[fd02::3]:8080", "fd00::2"),
                    ],
                    ..Default::default()
                })
                .unwrap();
        }
    }
    let mut gc = ConntrackGc::new(GcConfig::default());
    let mut rest = data;
    let mut n = 0u64;
    let mut events = 0u64;
    while let [hi, lo, step, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let mut frame = tail[..len].to_vec();
        rest = &tail[len..];
        engine.clock().advance(u64::from(*step).pow(2) * 100_000_000);
        if *step >= 250 {
            engine.conntrack_gc(&mut gc);
        }
        engine.process(&mut frame);
        n += 1;
        events += engine.drain_drop_events().len() as u64;
        assert!(engine.conntrack().len() <= 64);
    }
    let c = engine.counters();
    let outcomes = Counter::OUTCOMES.iter().map(|k| c.get(*k)).sum::<u64>();
    assert_eq!(c.get(Counter::RxPackets), n);
    assert_eq!(outcomes, n, "every packet has exactly one outcome");
    assert_eq!(events, c.get(Counter::Dropped), "every drop is a drop event");
});
