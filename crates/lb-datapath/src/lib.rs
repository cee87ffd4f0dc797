//! The packet pipeline of lb-dataplane, and (with the `std` feature) the userspace engine that
//! runs it over hashbrown tables.
//!
//! [`process`] is the one function both worlds run: the eBPF programs call it over XDP/TC packet
//! memory and kernel maps, the `engine::Engine` (feature `std`) over a byte slice and hash tables.
//!
//! ```
//! use lb_api::{Verdict, flow::L4Proto};
//! use lb_api::wire::{testing::tcp_v4_frame, TcpFlags};
//! use lb_datapath::engine::Engine;
//! use lb_control::ServiceSpec;
//!
//! let mut engine = Engine::new(1024);
//! engine.upsert_service(&ServiceSpec {
//!     id: 1,
//!     frontend: "10.96.0.10:80".parse().unwrap(),
//!     proto: L4Proto::Tcp,
//!     backends: vec!["10.1.0.2:8080".parse().unwrap()],
//!     ..Default::default()
//! }).unwrap();
//!
//! let mut syn = tcp_v4_frame([10, 0, 0, 1], 40000, [10, 96, 0, 10], 80, TcpFlags::SYN, b"");
//! assert_eq!(engine.process(&mut syn), Verdict::Pass);
//! // Destination rewritten to the backend, checksums updated.
//! assert_eq!(syn, tcp_v4_frame([10, 0, 0, 1], 40000, [10, 1, 0, 2], 8080, TcpFlags::SYN, b""));
//! assert_eq!(engine.conntrack().len(), 2); // service entry + reverse-NAT entry
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

mod pipeline;

#[cfg(feature = "std")]
pub mod engine;

pub use pipeline::{
    count_drop, now_ns, process, process_new, process_tracked, Scratch, SnatScratch, Step,
};
