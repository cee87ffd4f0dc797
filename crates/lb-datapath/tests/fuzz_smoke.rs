//! Runs the conntrack fuzz harness (fuzz/fuzz_targets/conntrack_ops.rs: the real pipeline
//! through the engine) on deterministic pseudo-random inputs, so its invariants are exercised
//! without cargo-fuzz.

use lb_api::counters::{Counter, CounterSnapshot, DropReason};

#[path = "../../../fuzz/fuzz_targets/conntrack_ops.rs"]
mod ops;

#[test]
fn fuzz_harness_holds_on_pseudo_random_inputs() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut reached = CounterSnapshot::default();
    for _ in 0..3000 {
        let len = (next() % 600) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let c = ops::run(&data);
        for (sum, n) in reached.0.iter_mut().zip(c.0) {
            *sum += n;
        }
    }
    // The inputs reach the paths the harness is there for.
    for c in [
        Counter::OrphanReplyRemoved,
        Counter::ReverseEntryRebuilt,
        Counter::ConntrackExpiredAtLookup,
        Counter::ReplyTranslated,
        Counter::ServiceEstablished,
    ] {
        assert!(reached.get(c) > 0, "{c:?} never reached");
    }
    assert!(reached.drops(DropReason::ConntrackFull) > 0);
    eprintln!(
        "reached: orphan {} rebuilt {} rebuild failed {} full {} snat exhausted {} take-overs {}",
        reached.get(Counter::OrphanReplyRemoved),
        reached.get(Counter::ReverseEntryRebuilt),
        reached.get(Counter::ReverseEntryRebuildFailed),
        reached.drops(DropReason::ConntrackFull),
        reached.drops(DropReason::SnatPortsExhausted),
        reached.get(Counter::SnatTakeOvers),
    );
}
