//! Runs the conntrack fuzz harness (fuzz/fuzz_targets/conntrack_ops.rs) on deterministic
//! pseudo-random inputs, so its invariants are exercised without cargo-fuzz.

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
    for _ in 0..3000 {
        let len = (next() % 600) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        ops::run(&data);
    }
}
