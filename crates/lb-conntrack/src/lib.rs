//! Connection tracking: the per-flow state machines, timeouts and the table abstraction that the
//! kernel (an eBPF hash map) and userspace (a bounded hashbrown table) both implement.
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

#[cfg(feature = "std")]
extern crate std;

mod state;
mod table;
mod timeout;

pub use state::{initial_state, tcp_next_state, track, Direction};
#[cfg(feature = "std")]
pub use table::HashConntrackTable;
pub use table::{ConntrackTable, InsertError, InsertMode};
pub use timeout::TimeoutPolicy;

mod clock;
pub use clock::Clock;
#[cfg(target_has_atomic = "64")]
pub use clock::ManualClock;
#[cfg(feature = "std")]
pub use clock::MonotonicClock;
