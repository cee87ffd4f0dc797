//! Timeout policies: the seven knobs CNIs expose (TCPSynSent, TCPEstablished, TCPFinsSeen,
//! TCPResetSeen, UDPTimeout, GenericTimeout, ICMPTimeout), each a duration or `auto`, presets
//! from netfilter, Calico and Cilium, parsing, validation and conversion to the ABI [`Timeouts`].
//!
//! `auto` copies the running kernel's value from `/proc/sys/net/netfilter/nf_conntrack_*`
//! (see [`Knob::sysctl`]) through an [`AutoSource`]; when the file is absent (no netfilter
//! conntrack, a container without /proc/sys) the knob's fallback is used: the kernel's own
//! default for that sysctl unless the policy sets another one ([`TimeoutPolicy::with_auto_fallback`]).
//!
//! ```
//! use lb_conntrack::{Knob, Timeout, TimeoutPolicy, NoAutoSource};
//! use lb_api::abi::CtState;
//!
//! let mut p = TimeoutPolicy::calico();
//! p.set(Knob::TcpFinsSeen, "2m".parse::<Timeout>().unwrap());
//! let checked = p.check(&NoAutoSource).unwrap();
//! assert_eq!(checked.timeouts.of(CtState::TimeWait as u8), 120_000_000_000);
//! ```

use core::time::Duration;

use lb_api::abi::{CtState, Timeouts, CT_STATES};

mod auto;
mod error;
mod knob;

#[cfg(feature = "std")]
pub use auto::ProcSysctl;
pub use auto::{AutoSource, NoAutoSource};
pub use error::{ParseTimeoutError, TimeoutError, TimeoutWarning};
pub use knob::{Knob, Timeout, KNOBS};

const NS: u64 = 1_000_000_000;

/// Linux's own TCP TIME_WAIT socket lifetime (`TCP_TIMEWAIT_LEN`, not tunable): a conntrack entry
/// of a closed flow reclaimed earlier lets a reused tuple hit the server's TIME_WAIT socket.
pub const HOST_TCP_TIME_WAIT: Duration = Duration::from_secs(60);

/// Linux's default `net.ipv4.tcp_keepalive_time`: an established timeout below it reclaims idle
/// connections whose keepalives have not fired yet.
pub const HOST_TCP_KEEPALIVE: Duration = Duration::from_secs(7200);

/// The longest timeout accepted (one year): beyond it a typo ("5000h" for "500h") is likelier
/// than intent.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The result of [`TimeoutPolicy::check`]: ABI timeouts and the warnings that apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedTimeouts {
    /// Per-state timeouts for the datapath.
    pub timeouts: Timeouts,
    /// Warnings, in order; `None` slots are unused.
    pub warnings: [Option<TimeoutWarning>; KNOBS + 2],
}

impl CheckedTimeouts {
    /// The warnings that apply.
    pub fn warnings(&self) -> impl Iterator<Item = &TimeoutWarning> {
        self.warnings.iter().flatten()
    }
}

/// Per-state conntrack timeouts as seven knobs, with optional per-state refinements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutPolicy {
    knobs: [Timeout; KNOBS],
    fallback: [Duration; KNOBS],
    state_overrides: [Option<Duration>; CT_STATES],
}

impl TimeoutPolicy {
    fn from_secs(k: [u64; KNOBS]) -> Self {
        Self {
            knobs: k.map(Timeout::secs),
            fallback: Knob::ALL.map(Knob::kernel_default),
            state_overrides: [None; CT_STATES],
        }
    }

    /// Linux netfilter's defaults (nf_conntrack_tcp_timeout_* and friends), state for state:
    /// SYN_SENT 120 s, SYN_RECV 60 s, ESTABLISHED 5 days, FIN_WAIT 120 s, CLOSE_WAIT 60 s,
    /// LAST_ACK 30 s, TIME_WAIT 120 s, CLOSE 10 s, SYN_SENT2 120 s, UDP 30 s unreplied / 120 s
    /// assured, ICMP 30 s, generic 600 s.
    #[must_use]
    pub fn netfilter() -> Self {
        Self::from_secs([120, 432_000, 120, 10, 30, 600, 30])
            .with_state_override(CtState::SynRecv, Some(Duration::from_secs(60)))
            .with_state_override(CtState::CloseWait, Some(Duration::from_secs(60)))
            .with_state_override(CtState::LastAck, Some(Duration::from_secs(30)))
            .with_state_override(CtState::UdpAssured, Some(Duration::from_secs(120)))
    }

    /// Calico eBPF's defaults: TCPSynSent 20 s, TCPEstablished 3600 s, TCPFinsSeen auto (kernel
    /// TIME_WAIT, fallback 30 s), TCPResetSeen 40 s, UDP 60 s, generic 600 s, ICMP 5 s.
    #[must_use]
    pub fn calico() -> Self {
        Self::from_secs([20, 3600, 30, 40, 60, 600, 5])
            .with(Knob::TcpFinsSeen, Timeout::Auto)
            .with_auto_fallback(Knob::TcpFinsSeen, Duration::from_secs(30))
    }

    /// Cilium's defaults: TCP SYN 60 s, established 21600 s, FIN/close 10 s, non-TCP 60 s.
    #[must_use]
    pub fn cilium() -> Self {
        Self::from_secs([60, 21_600, 10, 10, 60, 60, 60])
    }

    /// A knob's setting.
    #[must_use]
    pub fn get(&self, knob: Knob) -> Timeout {
        self.knobs
            .get(knob.index())
            .copied()
            .unwrap_or(Timeout::Auto)
    }

    /// Sets a knob (and drops per-state refinements of its states, which it now governs).
    pub fn set(&mut self, knob: Knob, value: Timeout) -> &mut Self {
        if let Some(k) = self.knobs.get_mut(knob.index()) {
            *k = value;
        }
        for (i, o) in self.state_overrides.iter_mut().enumerate() {
            let governed = u8::try_from(i)
                .ok()
                .and_then(CtState::from_u8)
                .is_some_and(|s| Knob::of_state(s) == knob);
            if governed {
                *o = None;
            }
        }
        self
    }

    /// Sets a knob from its name and a string value, as read from a config file or flag.
    ///
    /// # Errors
    /// [`TimeoutError::UnknownKnob`] or [`TimeoutError::Parse`] naming the knob.
    pub fn set_str(&mut self, knob: &str, value: &str) -> Result<&mut Self, TimeoutError> {
        let knob: Knob = knob.parse()?;
        let value = value
            .parse()
            .map_err(|error| TimeoutError::Parse { knob, error })?;
        Ok(self.set(knob, value))
    }

    /// The policy with a knob set.
    #[must_use]
    pub fn with(mut self, knob: Knob, value: Timeout) -> Self {
        self.set(knob, value);
        self
    }

    /// The policy with another fallback for an `auto` knob whose kernel value cannot be read.
    #[must_use]
    pub fn with_auto_fallback(mut self, knob: Knob, fallback: Duration) -> Self {
        if let Some(f) = self.fallback.get_mut(knob.index()) {
            *f = fallback;
        }
        self
    }

    /// The policy with one state's timeout fixed regardless of its knob (netfilter's finer
    /// per-state values); `None` returns the state to its knob.
    #[must_use]
    pub fn with_state_override(mut self, state: CtState, value: Option<Duration>) -> Self {
        if let Some(o) = self.state_overrides.get_mut(state as usize) {
            *o = value;
        }
        self
    }

    /// Resolves every knob (reading `auto` ones from `auto`), validates and converts to the ABI
    /// form, with the warnings that apply.
    ///
    /// # Errors
    /// [`TimeoutError::Zero`] or [`TimeoutError::TooLong`] naming the knob.
    pub fn check(&self, auto: &dyn AutoSource) -> Result<CheckedTimeouts, TimeoutError> {
        let mut warnings = [None; KNOBS + 2];
        let mut nw = 0usize;
        let mut push = |w: TimeoutWarning| {
            if let Some(slot) = warnings.get_mut(nw) {
                *slot = Some(w);
                nw += 1;
            }
        };
        let mut knob_secs = [0u64; KNOBS];
        for (knob, out) in Knob::ALL.iter().zip(knob_secs.iter_mut()) {
            let d = match self.get(*knob) {
                Timeout::Fixed(d) => d,
                Timeout::Auto => match auto.read_secs(knob.sysctl()) {
                    Some(s) => Duration::from_secs(s),
                    None => {
                        let f = self.fallback.get(knob.index()).copied().unwrap_or_default();
                        push(TimeoutWarning::AutoFallback {
                            knob: *knob,
                            secs: f.as_secs(),
                        });
                        f
                    }
                },
            };
            if d.is_zero() {
                return Err(TimeoutError::Zero { knob: *knob });
            }
            if d > MAX_TIMEOUT {
                return Err(TimeoutError::TooLong { knob: *knob });
            }
            *out = d.as_secs();
        }
        let fins = knob_secs
            .get(Knob::TcpFinsSeen.index())
            .copied()
            .unwrap_or(0);
        if fins < HOST_TCP_TIME_WAIT.as_secs() {
            push(TimeoutWarning::FinsSeenBelowTimeWait { secs: fins });
        }
        let est = knob_secs
            .get(Knob::TcpEstablished.index())
            .copied()
            .unwrap_or(0);
        if est < HOST_TCP_KEEPALIVE.as_secs() {
            push(TimeoutWarning::EstablishedBelowKeepalive { secs: est });
        }
        let mut ns = [0u64; CT_STATES];
        for (i, n) in ns.iter_mut().enumerate() {
            let Some(state) = u8::try_from(i).ok().and_then(CtState::from_u8) else {
                continue;
            };
            let secs = match self.state_overrides.get(i).copied().flatten() {
                Some(d) => d.as_secs().max(1),
                None => knob_secs
                    .get(Knob::of_state(state).index())
                    .copied()
                    .unwrap_or(0),
            };
            *n = secs.saturating_mul(NS);
        }
        Ok(CheckedTimeouts {
            timeouts: Timeouts { ns },
            warnings,
        })
    }

    /// The timeouts in the datapath's ABI form (nanoseconds), without reading the kernel: `auto`
    /// knobs take their fallback, and invalid values (zero) become one second. Use
    /// [`TimeoutPolicy::check`] to read `auto` values and see errors and warnings.
    #[must_use]
    pub fn to_timeouts(&self) -> Timeouts {
        let mut fixed = *self;
        for (k, f) in fixed.knobs.iter_mut().zip(self.fallback.iter()) {
            let d = match *k {
                Timeout::Fixed(d) => d,
                Timeout::Auto => *f,
            };
            *k = Timeout::Fixed(d.clamp(Duration::from_secs(1), MAX_TIMEOUT));
        }
        match fixed.check(&NoAutoSource) {
            Ok(c) => c.timeouts,
            Err(_) => Timeouts {
                ns: [NS; CT_STATES],
            },
        }
    }
}

impl Default for TimeoutPolicy {
    fn default() -> Self {
        Self::netfilter()
    }
}

#[cfg(test)]
mod tests;
