//! Shared by the privileged integration tests.
#![allow(dead_code)]

/// Whether a privileged test may run. Without root it reports the skip loudly; under CI
/// (`CI=true`) a skip is a failure, so a CI run can never pass without the kernel tests.
pub fn privileged(test: &str) -> bool {
    if lb_bpf::is_privileged() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "{test}: needs root (BPF, network namespaces) but CI=true: privileged tests must not be skipped in CI");
    eprintln!(
        "SKIPPED {test}: needs root (BPF, network namespaces); run `sudo -E cargo xtask test`"
    );
    false
}

pub mod harness;
