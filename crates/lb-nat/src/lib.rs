//! Service load balancing: service and backend tables, backend selection, and the address/port
//! rewrites (DNAT of requests, reverse translation of replies) with incremental checksums.
//!
//! * [`select_slot`] / [`maglev`]: backend selection (flow hash over slots; Maglev tables, built
//!   by the control plane in `lb-control`, are written into the slots, so the kernel's lookup is
//!   unchanged).
//! * [`snat`]: SNAT port allocation where reserving the port *is* the atomic insert of the
//!   reverse mapping: the schedule ([`snat::claim_port`]) the pipeline claims ports with (a
//!   reference model of a NAT-pair table over it lives beside its tests, `tests/model`).
//! * [`collision`]: source-port collision resolution, used by the shared pipeline.
//!
//! The typed service model (weights, terminating backends, selection, session affinity, traffic
//! policy), its validation and the hitless table writes live in the `lb-control` crate.
//!
//! Figures (disruption, balance, race and pressure tests, benchmarks): `docs/nat.md`.
//!
//! ```
//! use lb_api::wire::{parse, testing::tcp_v4_frame, SlicePacket, TcpFlags};
//! use lb_nat::{rewrite_v4, Field};
//!
//! let mut frame = tcp_v4_frame([10, 0, 0, 1], 40000, [10, 96, 0, 10], 80, TcpFlags::SYN, b"");
//! let mut pkt = SlicePacket::new(&mut frame);
//! let parsed = parse(&pkt).unwrap();
//! rewrite_v4(&mut pkt, &parsed, Field::Destination, [10, 1, 0, 2], 8080).unwrap();
//! // Same bytes as a frame built from scratch for the backend: checksums included.
//! assert_eq!(frame, tcp_v4_frame([10, 0, 0, 1], 40000, [10, 1, 0, 2], 8080, TcpFlags::SYN, b""));
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

#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod collision;
pub mod icmp_error;
pub mod maglev;
mod rewrite;
mod select;
mod table;

pub mod snat;

pub use collision::{resolve_source_port, RandomSource, SourcePortRange};
pub use icmp_error::translate_icmp_error;
pub use maglev::maglev_lookup;
pub use rewrite::{rewrite, rewrite_v4, rewrite_v6, Field};
pub use select::select_slot;
#[cfg(feature = "std")]
pub use table::HashServiceTable;
pub use table::ServiceTable;
