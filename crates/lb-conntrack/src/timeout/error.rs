//! What is wrong with a duration string, a policy that cannot be used, and a policy that works
//! but is likely to hurt.

use super::knob::Knob;

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
    /// Longer than [`MAX_TIMEOUT`](super::MAX_TIMEOUT).
    #[cfg_attr(
        feature = "std",
        error("{knob} is longer than one year: use at most 8760h")
    )]
    TooLong {
        /// Which knob.
        knob: Knob,
    },
}

/// A policy that works but is likely to hurt: returned by
/// [`TimeoutPolicy::check`](super::TimeoutPolicy::check) next to the timeouts.
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
