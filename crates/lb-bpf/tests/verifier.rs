//! Every program variant passes the running kernel's verifier.

mod common;

use lb_bpf::{KernelDatapath, Program};

#[test]
fn every_program_variant_passes_the_verifier() {
    if !common::privileged("every_program_variant_passes_the_verifier") {
        return;
    }
    let dp = match KernelDatapath::load() {
        Ok(dp) => dp,
        Err(e) => panic!("loading failed: {e}\n{:?}", std::error::Error::source(&e)),
    };
    // Each variant is runnable: a one-byte packet is too short for anything and must not crash.
    for p in Program::ALL {
        let out = dp
            .test_run(p, &[0u8; 14], 1)
            .unwrap_or_else(|e| panic!("{}: {e}", p.name()));
        assert_eq!(out.data.len(), 14, "{}", p.name());
        // Each program's share of the verifier's budget (a million instructions per program),
        // reported for docs/nat.md: `cargo test -p lb-bpf --test verifier -- --nocapture`.
        let walked = dp
            .verified_instructions(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.name()));
        if let Some(n) = walked {
            assert!(
                n > 0 && n <= 1_000_000,
                "{}: {n} verified instructions",
                p.name()
            );
            eprintln!("{:<20} {n:>9} verified instructions", p.name());
        }
    }
}
