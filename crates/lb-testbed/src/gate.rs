//! The gate of the privileged tests: they need root (BPF, network namespaces). Without it they
//! skip loudly; under CI a skip is a failure, so a CI run can never pass without them.
//!
//! ```no_run
//! #[test]
//! fn loads_the_programs() {
//!     if !lb_testbed::gate::privileged_test("loads_the_programs") {
//!         return;
//!     }
//!     // ... lb_bpf::KernelDatapath::load() ...
//! }
//! ```

/// Whether this process can load BPF programs (effective uid 0). Privileged tests use it to
/// decide whether to run; under CI they must run.
#[must_use]
pub fn is_privileged() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the privileged test `test` may run ([`is_privileged`]). Without root it reports the
/// skip loudly (`SKIPPED <test>`); under CI (`CI=true` or `CI=1`) a skip is a failure, so a CI
/// run can never pass without the kernel tests.
///
/// # Panics
/// Without root under CI.
#[must_use]
pub fn privileged_test(test: &str) -> bool {
    if is_privileged() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{test}: needs root (BPF, network namespaces) but CI=true: privileged tests must not be \
         skipped in CI"
    );
    eprintln!(
        "SKIPPED {test}: needs root (BPF, network namespaces); run `sudo -E cargo xtask test`"
    );
    false
}
