//! Arbitrary frames through the userspace engine (the same pipeline the kernel runs): no panic,
//! every packet is counted exactly once as passed, translated or dropped, and the conntrack table
//! only ever holds complete pairs.
#![no_main]

use lb_api::counters::Counter;
use lb_api::flow::L4Proto;
use lb_conntrack::ManualClock;
use lb_datapath::engine::{default_config, Engine};
use lb_nat::control::ServiceSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::with_clock(64, default_config(1), ManualClock::new(1));
    for (id, proto) in [(1, L4Proto::Tcp), (2, L4Proto::Udp)] {
        engine
            .upsert_service(&ServiceSpec {
                id,
                frontend: "10.96.0.10:80".parse().unwrap(),
                proto,
                backends: vec!["10.1.0.2:8080".parse().unwrap(), "10.1.0.3:8080".parse().unwrap()],
                ..Default::default()
            })
            .unwrap();
    }
    // The input is a sequence of frames, each prefixed by a one-byte length.
    let mut rest = data;
    let mut n = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len());
        let mut frame = tail[..len].to_vec();
        rest = &tail[len..];
        engine.process(&mut frame);
        engine.clock().advance(1_000_000_000);
        n += 1;
    }
    let c = engine.counters();
    let outcomes = [
        Counter::ServiceNewFlow,
        Counter::ServiceEstablished,
        Counter::ReplyTranslated,
        Counter::PassNotIp,
        Counter::PassNotService,
        Counter::PassFragment,
        Counter::PassOtherProto,
        Counter::PassHeadersTooDeep,
        Counter::IcmpErrorTranslated,
        Counter::PassIcmpErrorNoFlow,
        Counter::Dropped,
    ]
    .iter()
    .map(|k| c.get(*k))
    .sum::<u64>();
    assert_eq!(c.get(Counter::RxPackets), n);
    assert_eq!(outcomes, n, "every packet has exactly one outcome");
});
