//! Timeout policies: per-state durations and presets from the anchors.

use lb_api::abi::{CtState, Timeouts, CT_STATES};

const NS: u64 = 1_000_000_000;

/// Per-state conntrack timeouts, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutPolicy {
    /// Seconds per [`CtState`], indexed by the state's value.
    pub secs: [u32; CT_STATES],
}

impl TimeoutPolicy {
    /// Linux netfilter's defaults (nf_conntrack_tcp_timeout_* and friends).
    #[must_use]
    #[allow(
        clippy::indexing_slicing,
        reason = "constant indexes by CtState, all < CT_STATES; checked at compile time"
    )]
    pub const fn netfilter() -> Self {
        let mut secs = [0u32; CT_STATES];
        secs[CtState::SynSent as usize] = 120;
        secs[CtState::SynRecv as usize] = 60;
        secs[CtState::Established as usize] = 432_000;
        secs[CtState::FinWait as usize] = 120;
        secs[CtState::CloseWait as usize] = 60;
        secs[CtState::LastAck as usize] = 30;
        secs[CtState::TimeWait as usize] = 120;
        secs[CtState::Close as usize] = 10;
        secs[CtState::SynSent2 as usize] = 120;
        secs[CtState::UdpUnreplied as usize] = 30;
        secs[CtState::UdpAssured as usize] = 120;
        secs[CtState::Icmp as usize] = 30;
        secs[CtState::Generic as usize] = 600;
        Self { secs }
    }

    /// The timeouts in the datapath's ABI form (nanoseconds).
    #[must_use]
    pub fn to_timeouts(&self) -> Timeouts {
        let mut ns = [0u64; CT_STATES];
        for (n, s) in ns.iter_mut().zip(self.secs.iter()) {
            *n = u64::from(*s) * NS;
        }
        Timeouts { ns }
    }
}

impl Default for TimeoutPolicy {
    fn default() -> Self {
        Self::netfilter()
    }
}
