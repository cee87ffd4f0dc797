//! Shared by the privileged integration tests.
#![allow(
    dead_code,
    reason = "each test crate uses a different subset of these helpers"
)]

/// Whether a privileged test may run: [`lb_testbed::gate::privileged_test`].
pub fn privileged(test: &str) -> bool {
    lb_testbed::gate::privileged_test(test)
}

/// `frame` with an 802.1Q (or, outermost, 802.1ad) tag inserted after the MACs.
pub fn tagged(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}
