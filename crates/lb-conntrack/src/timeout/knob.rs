//! The seven knobs ([`Knob`]) and a knob's setting ([`Timeout`]: a duration or `auto`), with
//! their names and parsing.

use core::fmt;
use core::str::FromStr;
use core::time::Duration;

use super::error::{ParseTimeoutError, TimeoutError};
use super::MAX_TIMEOUT;
use lb_api::abi::CtState;

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
