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

use core::fmt;
use core::str::FromStr;
use core::time::Duration;

use lb_api::abi::{CtState, Timeouts, CT_STATES};

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

/// One of the user-facing timeout knobs, each governing a group of [`CtState`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Knob {
    /// Handshake in progress: `SynSent`, `SynRecv`, `SynSent2`.
    TcpSynSent,
    /// `Established`.
    TcpEstablished,
    /// A FIN seen: `FinWait`, `CloseWait`, `LastAck`, `TimeWait`.
    TcpFinsSeen,
    /// A RST seen: `Close`.
    TcpResetSeen,
    /// UDP: `UdpUnreplied`, `UdpAssured`.
    Udp,
    /// Other protocols: `Generic`.
    Generic,
    /// ICMP echo: `Icmp`.
    Icmp,
}

/// Number of [`Knob`]s.
pub const KNOBS: usize = 7;

impl Knob {
    /// Every knob, in index order.
    pub const ALL: [Knob; KNOBS] = [
        Self::TcpSynSent,
        Self::TcpEstablished,
        Self::TcpFinsSeen,
        Self::TcpResetSeen,
        Self::Udp,
        Self::Generic,
        Self::Icmp,
    ];

    /// The knob's configuration name (Calico's spelling).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::TcpSynSent => "TCPSynSent",
            Self::TcpEstablished => "TCPEstablished",
            Self::TcpFinsSeen => "TCPFinsSeen",
            Self::TcpResetSeen => "TCPResetSeen",
            Self::Udp => "UDPTimeout",
            Self::Generic => "GenericTimeout",
            Self::Icmp => "ICMPTimeout",
        }
    }

    /// The knob governing a state.
    #[must_use]
    pub const fn of_state(state: CtState) -> Self {
        match state {
            CtState::SynSent | CtState::SynRecv | CtState::SynSent2 => Self::TcpSynSent,
            CtState::Established => Self::TcpEstablished,
            CtState::FinWait | CtState::CloseWait | CtState::LastAck | CtState::TimeWait => {
                Self::TcpFinsSeen
            }
            CtState::Close => Self::TcpResetSeen,
            CtState::UdpUnreplied | CtState::UdpAssured => Self::Udp,
            CtState::Icmp => Self::Icmp,
            CtState::Generic => Self::Generic,
        }
    }

    /// The file under `/proc/sys/net/netfilter/` that `auto` reads. TCPFinsSeen copies the
    /// kernel's TIME_WAIT value (as Calico does): the closing phase must outlive the peers'
    /// TIME_WAIT sockets.
    #[must_use]
    pub const fn sysctl(self) -> &'static str {
        match self {
            Self::TcpSynSent => "nf_conntrack_tcp_timeout_syn_sent",
            Self::TcpEstablished => "nf_conntrack_tcp_timeout_established",
            Self::TcpFinsSeen => "nf_conntrack_tcp_timeout_time_wait",
            Self::TcpResetSeen => "nf_conntrack_tcp_timeout_close",
            Self::Udp => "nf_conntrack_udp_timeout",
            Self::Generic => "nf_conntrack_generic_timeout",
            Self::Icmp => "nf_conntrack_icmp_timeout",
        }
    }

    /// The kernel's default value of [`Knob::sysctl`]: the default fallback of `auto`.
    #[must_use]
    pub const fn kernel_default(self) -> Duration {
        Duration::from_secs(match self {
            Self::TcpSynSent => 120,
            Self::TcpEstablished => 432_000,
            Self::TcpFinsSeen => 120,
            Self::TcpResetSeen => 10,
            Self::Udp => 30,
            Self::Generic => 600,
            Self::Icmp => 30,
        })
    }

    /// Index in [`Knob::ALL`].
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Knob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Knob {
    type Err = TimeoutError;

    /// Parses a knob name, case-insensitively ("TCPFinsSeen", "tcpfinsseen").
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
            .ok_or(TimeoutError::UnknownKnob)
    }
}

/// A knob's setting: a fixed duration, or the running kernel's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timeout {
    /// This long.
    Fixed(Duration),
    /// Copy the kernel's netfilter value ([`Knob::sysctl`]), or the fallback without one.
    Auto,
}

impl Timeout {
    /// A fixed timeout of `secs` seconds.
    #[must_use]
    pub const fn secs(secs: u64) -> Self {
        Self::Fixed(Duration::from_secs(secs))
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(d) => write!(f, "{}s", d.as_secs()),
        }
    }
}

/// What is wrong with a duration string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(thiserror::Error))]
pub enum ParseTimeoutError {
    /// Nothing was given.
    #[cfg_attr(
        feature = "std",
        error(
            "empty timeout: write a whole number and a unit (\"30s\", \"2m\", \"1h\") or \"auto\""
        )
    )]
    Empty,
    /// A number without a unit.
    #[cfg_attr(
        feature = "std",
        error("timeout has no unit: add s, m or h (\"30\" → \"30s\"), or write \"auto\"")
    )]
    MissingUnit,
    /// A unit other than s, m, h.
    #[cfg_attr(
        feature = "std",
        error("unknown timeout unit: use s (seconds), m (minutes) or h (hours), e.g. \"90s\"")
    )]
    UnknownUnit,
    /// The number part is not a whole decimal number.
    #[cfg_attr(
        feature = "std",
        error("timeout is not a whole number of units: write digits then a unit, e.g. \"30s\" (not \"1.5m\": use \"90s\")")
    )]
    NotANumber,
    /// The value does not fit.
    #[cfg_attr(
        feature = "std",
        error("timeout is too large: use at most 8760h (one year)")
    )]
    Overflow,
}

impl FromStr for Timeout {
    type Err = ParseTimeoutError;

    /// Parses "30s", "2m", "1h" or "auto" (surrounding spaces ignored, units case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ParseTimeoutError::Empty);
        }
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or(ParseTimeoutError::MissingUnit)?;
        let (num, unit) = s.split_at(split);
        if num.is_empty() {
            return Err(ParseTimeoutError::NotANumber);
        }
        let mult: u64 = match unit {
            u if u.eq_ignore_ascii_case("s") => 1,
            u if u.eq_ignore_ascii_case("m") => 60,
            u if u.eq_ignore_ascii_case("h") => 3600,
            u if u.starts_with(['.', ',']) => return Err(ParseTimeoutError::NotANumber),
            _ => return Err(ParseTimeoutError::UnknownUnit),
        };
        let n: u64 = num.parse().map_err(|_| ParseTimeoutError::Overflow)?;
        let secs = n.checked_mul(mult).ok_or(ParseTimeoutError::Overflow)?;
        if secs > MAX_TIMEOUT.as_secs() {
            return Err(ParseTimeoutError::Overflow);
        }
        Ok(Self::Fixed(Duration::from_secs(secs)))
    }
}

/// A policy that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(thiserror::Error))]
pub enum TimeoutError {
    /// A knob's value did not parse.
    #[cfg_attr(feature = "std", error("{knob}: {error}"))]
    Parse {
        /// Which knob.
        knob: Knob,
        /// What is wrong with the value.
        #[cfg_attr(feature = "std", source)]
        error: ParseTimeoutError,
    },
    /// A knob name that does not exist.
    #[cfg_attr(
        feature = "std",
        error("unknown timeout knob: use one of TCPSynSent, TCPEstablished, TCPFinsSeen, TCPResetSeen, UDPTimeout, GenericTimeout, ICMPTimeout")
    )]
    UnknownKnob,
    /// A zero timeout: entries would expire as they are created, and every packet would be a new flow.
    #[cfg_attr(
        feature = "std",
        error(
            "{knob} is 0: entries would expire as they are created; use at least 1s, or \"auto\""
        )
    )]
    Zero {
        /// Which knob.
        knob: Knob,
    },
    /// Longer than [`MAX_TIMEOUT`].
    #[cfg_attr(
        feature = "std",
        error("{knob} is longer than one year: use at most 8760h")
    )]
    TooLong {
        /// Which knob.
        knob: Knob,
    },
}

/// A policy that works but is likely to hurt: returned by [`TimeoutPolicy::check`] next to the
/// timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(thiserror::Error))]
pub enum TimeoutWarning {
    /// TCPFinsSeen is shorter than the hosts' TCP TIME_WAIT.
    #[cfg_attr(
        feature = "std",
        error("TCPFinsSeen is {secs}s, shorter than the hosts' 60s TCP TIME_WAIT: a closed flow's entry is reclaimed while the server still holds the tuple in TIME_WAIT, so a new connection reusing the tuple (e.g. after client-IP-preserving NAT) can be answered with RST; use 60s or more, or \"auto\"")
    )]
    FinsSeenBelowTimeWait {
        /// The effective value, in seconds.
        secs: u64,
    },
    /// TCPEstablished is shorter than Linux's default keepalive time.
    #[cfg_attr(
        feature = "std",
        error("TCPEstablished is {secs}s, shorter than Linux's default 7200s TCP keepalive: idle connections lose their entry before a keepalive refreshes it and are picked up mid-stream later (possibly on another backend after a backend change)")
    )]
    EstablishedBelowKeepalive {
        /// The effective value, in seconds.
        secs: u64,
    },
    /// An `auto` knob used its fallback because the kernel's value could not be read.
    #[cfg_attr(
        feature = "std",
        error("{knob} is auto but the kernel's value could not be read (no nf_conntrack sysctl); using the fallback {secs}s")
    )]
    AutoFallback {
        /// Which knob.
        knob: Knob,
        /// The fallback used, in seconds.
        secs: u64,
    },
}

/// Where `auto` knobs read the kernel's values from.
pub trait AutoSource {
    /// The value of `/proc/sys/net/netfilter/<sysctl>` in seconds, if it can be read.
    fn read_secs(&self, sysctl: &str) -> Option<u64>;
}

/// An [`AutoSource`] that never has a value: every `auto` knob uses its fallback.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAutoSource;

impl AutoSource for NoAutoSource {
    fn read_secs(&self, _sysctl: &str) -> Option<u64> {
        None
    }
}

/// An [`AutoSource`] reading `<root>/sys/net/netfilter/<sysctl>`: `/proc` on a host, a fixture
/// directory in tests.
#[cfg(feature = "std")]
#[derive(Debug, Clone)]
pub struct ProcSysctl {
    root: std::path::PathBuf,
}

#[cfg(feature = "std")]
impl ProcSysctl {
    /// The running kernel's values (`/proc`).
    #[must_use]
    pub fn system() -> Self {
        Self::at("/proc")
    }

    /// Values under another proc root (tests, a host's /proc mounted elsewhere).
    pub fn at(root: impl Into<std::path::PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

#[cfg(feature = "std")]
impl AutoSource for ProcSysctl {
    fn read_secs(&self, sysctl: &str) -> Option<u64> {
        let path = self.root.join("sys/net/netfilter").join(sysctl);
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

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
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use std::{format, prelude::rust_2021::*, vec};
    use CtState::*;

    fn secs(t: &Timeouts, s: CtState) -> u64 {
        t.of(s as u8) / NS
    }

    #[test]
    fn netfilter_preset_matches_the_kernel_defaults() {
        let t = TimeoutPolicy::netfilter().to_timeouts();
        let want = [
            (SynSent, 120),
            (SynRecv, 60),
            (Established, 432_000),
            (FinWait, 120),
            (CloseWait, 60),
            (LastAck, 30),
            (TimeWait, 120),
            (Close, 10),
            (SynSent2, 120),
            (UdpUnreplied, 30),
            (UdpAssured, 120),
            (Icmp, 30),
            (Generic, 600),
        ];
        for (s, v) in want {
            assert_eq!(secs(&t, s), v, "{s:?}");
        }
    }

    #[test]
    fn calico_and_cilium_presets() {
        let c = TimeoutPolicy::calico().check(&NoAutoSource).unwrap();
        let t = c.timeouts;
        assert_eq!(
            [
                SynSent,
                Established,
                TimeWait,
                Close,
                UdpUnreplied,
                Generic,
                Icmp
            ]
            .map(|s| secs(&t, s)),
            [20, 3600, 30, 40, 60, 600, 5]
        );
        let w: Vec<_> = c.warnings().copied().collect();
        assert!(w.contains(&TimeoutWarning::AutoFallback {
            knob: Knob::TcpFinsSeen,
            secs: 30
        }));
        assert!(w.contains(&TimeoutWarning::FinsSeenBelowTimeWait { secs: 30 }));
        let t = TimeoutPolicy::cilium().to_timeouts();
        assert_eq!(
            [
                SynSent,
                Established,
                FinWait,
                Close,
                UdpAssured,
                Generic,
                Icmp
            ]
            .map(|s| secs(&t, s)),
            [60, 21_600, 10, 10, 60, 60, 60]
        );
    }

    #[test]
    fn parses_durations() {
        assert_eq!("30s".parse(), Ok(Timeout::secs(30)));
        assert_eq!(" 2m ".parse(), Ok(Timeout::secs(120)));
        assert_eq!("1H".parse(), Ok(Timeout::secs(3600)));
        assert_eq!("auto".parse(), Ok(Timeout::Auto));
        assert_eq!("AUTO".parse(), Ok(Timeout::Auto));
        assert_eq!("".parse::<Timeout>(), Err(ParseTimeoutError::Empty));
        assert_eq!("30".parse::<Timeout>(), Err(ParseTimeoutError::MissingUnit));
        assert_eq!(
            "30d".parse::<Timeout>(),
            Err(ParseTimeoutError::UnknownUnit)
        );
        assert_eq!(
            "30ms".parse::<Timeout>(),
            Err(ParseTimeoutError::UnknownUnit)
        );
        assert_eq!("s".parse::<Timeout>(), Err(ParseTimeoutError::NotANumber));
        assert_eq!("-5s".parse::<Timeout>(), Err(ParseTimeoutError::NotANumber));
        assert_eq!(
            "1.5m".parse::<Timeout>(),
            Err(ParseTimeoutError::NotANumber)
        );
        assert_eq!("9000h".parse::<Timeout>(), Err(ParseTimeoutError::Overflow));
        assert_eq!(
            "99999999999999999999999s".parse::<Timeout>(),
            Err(ParseTimeoutError::Overflow)
        );
    }

    #[test]
    fn errors_say_what_and_how() {
        let mut p = TimeoutPolicy::cilium();
        let e = p.set_str("TCPFinsSeen", "30").unwrap_err();
        assert_eq!(
            e,
            TimeoutError::Parse {
                knob: Knob::TcpFinsSeen,
                error: ParseTimeoutError::MissingUnit
            }
        );
        let msg = e.to_string();
        assert!(msg.starts_with("TCPFinsSeen: "), "{msg}");
        assert!(msg.contains("\"30s\""), "{msg}");
        assert_eq!(
            p.set_str("TCPFinSeen", "30s").unwrap_err(),
            TimeoutError::UnknownKnob
        );
        p.set_str("tcpestablished", "0s").unwrap();
        let e = p.check(&NoAutoSource).unwrap_err();
        assert_eq!(
            e,
            TimeoutError::Zero {
                knob: Knob::TcpEstablished
            }
        );
        assert!(e.to_string().contains("at least 1s"));
    }

    #[test]
    fn short_fins_seen_is_accepted_with_a_warning() {
        let p = TimeoutPolicy::netfilter().with(Knob::TcpFinsSeen, Timeout::secs(10));
        let c = p.check(&NoAutoSource).unwrap();
        assert_eq!(secs(&c.timeouts, TimeWait), 10);
        assert_eq!(
            secs(&c.timeouts, CloseWait),
            10,
            "set() takes over refined states"
        );
        let w: Vec<_> = c.warnings().copied().collect();
        assert_eq!(w, vec![TimeoutWarning::FinsSeenBelowTimeWait { secs: 10 }]);
        assert!(w[0].to_string().contains("TIME_WAIT"));
        let ok = TimeoutPolicy::netfilter().check(&NoAutoSource).unwrap();
        assert_eq!(ok.warnings().count(), 0);
    }

    #[test]
    fn auto_reads_an_injected_proc_root() {
        let dir = std::env::temp_dir().join(format!("lb-ct-proc-{}", std::process::id()));
        let nf = dir.join("sys/net/netfilter");
        std::fs::create_dir_all(&nf).unwrap();
        std::fs::write(nf.join("nf_conntrack_tcp_timeout_time_wait"), "75\n").unwrap();
        std::fs::write(nf.join("nf_conntrack_icmp_timeout"), "garbage").unwrap();
        let p = TimeoutPolicy::calico().with(Knob::Icmp, Timeout::Auto);
        let c = p.check(&ProcSysctl::at(&dir)).unwrap();
        assert_eq!(secs(&c.timeouts, TimeWait), 75);
        assert_eq!(
            secs(&c.timeouts, Icmp),
            30,
            "unreadable → kernel default fallback"
        );
        let w: Vec<_> = c.warnings().copied().collect();
        assert_eq!(
            w,
            vec![
                TimeoutWarning::AutoFallback {
                    knob: Knob::Icmp,
                    secs: 30
                },
                TimeoutWarning::EstablishedBelowKeepalive { secs: 3600 }
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn knobs_cover_every_state() {
        for v in 0..CT_STATES as u8 {
            let s = CtState::from_u8(v).unwrap();
            let k = Knob::of_state(s);
            assert_eq!(Knob::ALL[k.index()], k);
            assert_eq!(k.name().parse::<Knob>().unwrap(), k);
        }
    }
}
