//! Connection tracking: the per-flow state machines, timeout policies, the table abstraction that
//! the kernel (an eBPF hash map) and userspace (a bounded hashbrown table) both implement, the
//! adaptive garbage collector and the metrics both worlds report.
//!
//! ```
//! use lb_api::abi::{CtEntry, CtState};
//! use lb_api::wire::TcpFlags;
//! use lb_conntrack::{track, Direction, TimeoutPolicy};
//!
//! let timeouts = TimeoutPolicy::netfilter().to_timeouts();
//! let mut e = CtEntry { state: CtState::SynSent as u8, proto: 6, ..Default::default() };
//! track(&mut e, Direction::Reply, TcpFlags::SYN | TcpFlags::ACK, 1_000, &timeouts);
//! track(&mut e, Direction::Original, TcpFlags::ACK, 2_000, &timeouts);
//! assert_eq!(e.state, CtState::Established as u8);
//! assert_eq!(e.expires_ns, 2_000 + 432_000 * 1_000_000_000);
//! ```
//!
//! Layout:
//! * [`state`](crate::track): netfilter's TCP table ([`tcp_edges`] lists its edges, for
//!   fixtures), UDP unreplied/assured, ICMP echo, generic; [`is_expired`]: past its deadline.
//! * [`TimeoutPolicy`]: seven knobs (duration or `auto`), presets, parsing, validation.
//! * [`ConntrackTable`] and [`HashConntrackTable`]: full-table behaviour is documented on the
//!   table module; the kernel map refuses (counted), the userspace table evicts expired, then
//!   closing flows, never live ones.
//! * [`ConntrackGc`]: adaptive sweeper over [`GcTable`]; [`ConntrackMetrics`]: one snapshot type.
//! * [`tuple_reuse`]: whether a new SYN collides with a recently closed flow (for the
//!   source-port-collision resolver).
#![no_std]
#![cfg_attr(
    not(test),
    deny(
        clippy::panic,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing
    )
)]

#[cfg(any(test, feature = "std"))]
extern crate std;

mod metrics;
mod pair;
mod reap;
mod reuse;
mod state;
mod table;
mod timeout;

#[cfg(feature = "std")]
mod gc;

#[cfg(feature = "std")]
pub use gc::{ConntrackGc, GcConfig, GcReport, GcTable};
pub use metrics::{ConntrackMetrics, GcStats, ProtoCounts};
pub use pair::{make_reverse, partner_key, reverse_key, reverse_key_of, service_key_of};
pub use reap::{reap, reap_decision, ReapDecision, Reaped};
pub use reuse::{tuple_reuse, TupleReuse};
pub use state::{
    icmp_echo_direction, icmp_echo_tuple, initial_state, tcp_edges, tcp_next_state, tcp_transition,
    track, Direction, TcpEdge, TcpPacketClass, TcpTransition, TrackOutcome, TCP_STATES,
};
pub use table::{
    is_expired, ConntrackTable, EvictionReason, InsertError, InsertMode, TableStats,
    EVICTION_CANDIDATES, EXPIRED_WINDOW,
};
#[cfg(feature = "std")]
pub use table::{HashConntrackTable, SweepCounts, MAX_CAPACITY};
#[cfg(feature = "std")]
pub use timeout::ProcSysctl;
pub use timeout::{
    AutoSource, CheckedTimeouts, Knob, NoAutoSource, ParseTimeoutError, Timeout, TimeoutError,
    TimeoutPolicy, TimeoutWarning, HOST_TCP_KEEPALIVE, HOST_TCP_TIME_WAIT, KNOBS, MAX_TIMEOUT,
};

mod clock;
pub use clock::Clock;
#[cfg(target_has_atomic = "64")]
pub use clock::ManualClock;
#[cfg(feature = "std")]
pub use clock::MonotonicClock;
