//! cargo-fuzz target: see `conntrack_ops.rs` for what it checks.
#![no_main]

#[path = "conntrack_ops.rs"]
mod ops;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ops::run(data);
});
