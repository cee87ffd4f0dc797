//! Drop events: one fixed-size record per dropped packet, saying why and which flow.
//!
//! Counters say how many packets were dropped for each [`DropReason`]; a [`DropEvent`] says which
//! ones. The kernel programs write them into a ring buffer (`LB_EVENTS`), the userspace engine
//! into a bounded queue; both are read with `drain_drop_events()` (`lb_datapath::engine::Engine`,
//! `lb_bpf::KernelDatapath`). An event that does not fit (ring or queue full) is counted as
//! [`Counter::DropEventsLost`](crate::Counter::DropEventsLost): the drop itself is always counted.
//!
//! ```
//! use lb_api::events::DropEvent;
//! use lb_api::{DropReason, FlowTuple};
//! use lb_api::__zerocopy::{IntoBytes, TryFromBytes};
//!
//! let tuple = FlowTuple { src_port: 40000, dst_port: 80, proto: 6, family: 4, ..Default::default() };
//! let ev = DropEvent::new(DropReason::NoBackend, &tuple, 1_000, 3);
//! // The record's bytes are what crosses the ring buffer; a record decodes only with a known reason.
//! let back = DropEvent::try_read_from_bytes(ev.as_bytes()).unwrap();
//! assert_eq!((back.reason, back.tuple(), back.ifindex), (DropReason::NoBackend, tuple, 3));
//! ```

use zerocopy::{Immutable, IntoBytes, KnownLayout, TryFromBytes};

use crate::counters::DropReason;
use crate::flow::FlowTuple;

/// A dropped packet: why, when, where, and its flow as far as it was parsed.
///
/// `#[repr(C)]`, 56 bytes, no padding: the kernel writes it field by field into a ring-buffer
/// slot, userspace decodes the slot's bytes with `TryFromBytes` (which refuses unknown reasons).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, TryFromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct DropEvent {
    /// When the packet was dropped (ns, `CLOCK_MONOTONIC` / `bpf_ktime_get_ns`, or the config's
    /// fixed time when set, like conntrack timestamps).
    pub timestamp_ns: u64,
    /// Why.
    pub reason: DropReason,
    /// Interface the packet arrived on (XDP) or passed (TC); 0 in the userspace engine, which
    /// has no interfaces.
    pub ifindex: u32,
    /// Source address (IPv4 in the first 4 bytes); zero if parsing stopped before the IP header.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port, host order; zero if parsing stopped before the transport header.
    pub src_port: u16,
    /// Destination port, host order.
    pub dst_port: u16,
    /// IP protocol number (zero if not reached).
    pub proto: u8,
    /// Address family, 4 or 6 (zero if not reached).
    pub family: u8,
    /// Zero.
    pub pad: [u8; 2],
}

impl DropEvent {
    /// An event for a packet of `tuple` dropped for `reason`.
    #[inline(always)]
    #[must_use]
    pub const fn new(
        reason: DropReason,
        tuple: &FlowTuple,
        timestamp_ns: u64,
        ifindex: u32,
    ) -> Self {
        Self {
            timestamp_ns,
            reason,
            ifindex,
            src: tuple.src,
            dst: tuple.dst,
            src_port: tuple.src_port,
            dst_port: tuple.dst_port,
            proto: tuple.proto,
            family: tuple.family,
            pad: [0; 2],
        }
    }

    /// The packet's flow tuple as far as it was parsed.
    #[inline(always)]
    #[must_use]
    pub const fn tuple(&self) -> FlowTuple {
        FlowTuple {
            src: self.src,
            dst: self.dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto,
            family: self.family,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn layout_is_fixed() {
        // The kernel reserves ring-buffer slots of this size at 8-byte alignment.
        assert_eq!(size_of::<DropEvent>(), 56);
        assert_eq!(align_of::<DropEvent>(), 8);
    }

    #[test]
    fn unknown_reason_codes_do_not_decode() {
        let ev = DropEvent::new(DropReason::Truncated, &FlowTuple::default(), 7, 1);
        let mut bytes = [0u8; 56];
        bytes.copy_from_slice(ev.as_bytes());
        assert_eq!(DropEvent::try_read_from_bytes(&bytes[..]), Ok(ev));
        bytes[8..12].copy_from_slice(&999u32.to_ne_bytes());
        assert!(DropEvent::try_read_from_bytes(&bytes[..]).is_err());
    }
}
