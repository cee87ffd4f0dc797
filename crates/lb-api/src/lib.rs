//! The shared vocabulary of lb-dataplane.
//!
//! Everything that crosses the kernel/user boundary lives here: zerocopy wire headers, the
//! [`PacketAccess`] trait that lets one parser run over a byte slice (userspace) and over XDP/TC
//! `data`/`data_end` (kernel), the fixed-size map ABI structs ([`abi`]), the kernel tables they
//! live in ([`tables`]), drop reasons, counters and drop events ([`events`]).
//! The crate is `#![no_std]`, allocation-free and panic-free so that it compiles into eBPF programs.
//!
//! ```
//! use lb_api::wire::{parse, SlicePacket};
//! use lb_api::flow::L4Proto;
//!
//! // A TCP SYN from 10.0.0.1:40000 to 10.96.0.10:80 (Ethernet + IPv4 + TCP).
//! let mut frame = lb_api::wire::testing::tcp_v4_frame(
//!     [10, 0, 0, 1], 40000, [10, 96, 0, 10], 80, lb_api::wire::TcpFlags::SYN, b"",
//! );
//! let pkt = SlicePacket::new(&mut frame);
//! let parsed = parse(&pkt).expect("a well-formed frame parses");
//! assert_eq!(parsed.tuple.proto, L4Proto::Tcp as u8);
//! assert_eq!(parsed.tuple.dst_port, 80);
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

pub mod abi;
pub mod checksum;
pub mod counters;
pub mod events;
pub mod flow;
pub mod tables;
pub mod wire;

pub use counters::{Counter, DropReason};
pub use flow::{FlowTuple, IpFamily, L4Proto};
pub use wire::{PacketAccess, SlicePacket};

#[doc(hidden)]
pub use zerocopy as __zerocopy;

/// What the datapath tells its hook to do with a packet.
///
/// The userspace engine returns it as is; the eBPF programs map it to `XDP_*` / `TC_ACT_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Verdict {
    /// Hand the (possibly rewritten) packet to the kernel's stack.
    Pass = 0,
    /// Drop the packet; a [`DropReason`] was counted.
    Drop = 1,
    /// Send the (rewritten) packet back out of the interface it arrived on.
    Tx = 2,
}
