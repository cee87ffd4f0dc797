//! Encapsulation carriers that bring a client's packet (or the service address) from the node
//! that received it to the node of the backend: VXLAN (RFC 7348) and Geneve (RFC 8926) over IPv4
//! or IPv6 outers, the DSR carriers (IPv4 option 0x9A, IPv6 destination option 0x1B, a Geneve
//! option), and MTU accounting (ICMP "fragmentation needed" / ICMPv6 "packet too big").
//!
//! What the datapath pipeline runs: [`vxlan_encap_offloaded`] and [`vxlan_decap_parsed`] (the
//! node-to-node tunnel), [`dsr::dsr_v4_insert`], [`dsr::dsr_v6_insert`] and
//! [`dsr::dsr_extract`] (DSR), [`mtu::icmp_too_big_parsed`] and [`mtu::wire_ip_len`] (MTU),
//! and the room operations of [`AdjustHead`]. [`vxlan_encap`] (the IPv6 outer checksum summed
//! over the whole packet) and [`vxlan_decap`] (which parses first) share their code with those
//! for callers without the pipeline's inner checksum or parse result: tests, fixtures, fuzzing.
//! [`geneve`] is a carrier the pipeline does not run yet (see its module docs).
//!
//! Everything is generic over [`lb_api::PacketAccess`] + [`AdjustHead`], whose room operations
//! ([`AdjustHead::insert_room`], [`AdjustHead::remove_room`], [`AdjustHead::truncate`]) mean the
//! same in every world, so the eBPF programs run the same functions: at XDP over
//! `bpf_xdp_adjust_head`, at TC over `bpf_skb_adjust_room` and `bpf_skb_change_tail`.
//!
//! ```
//! use lb_encap::{vxlan_source_port, VxlanHeader};
//! let h = VxlanHeader::new(42);
//! assert_eq!(h.vni(), 42);
//! assert!(h.is_valid());
//! // The outer UDP source port comes from the inner flow hash, in the ephemeral range.
//! assert!(vxlan_source_port(0xdead_beef) >= 49152);
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

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub mod dsr;
pub mod geneve;
pub mod mtu;
pub mod reject;
mod tunnel;
pub use tunnel::{
    insert_room_at_head, remove_room_at_head, truncate_at_tail, vxlan_decap, vxlan_decap_parsed,
    vxlan_encap, vxlan_encap_offloaded, AdjustHead, DecapError, EncapError, HeadroomPacket,
    InnerChecksum, OuterAddrs, Room, TunnelConfig, VxlanConfig, MAX_LINK_PADDING,
    MAX_OFFLOADED_HEADERS, MAX_ROOM_AT,
};

/// An offset the optimizer cannot reason about. A checksum is stored after a loop over the
/// packet; LLVM would reuse a bounds check made before the loop for that store, a proof the BPF
/// verifier does not follow (it rejects the store). Opaque, the store keeps its own check.
#[inline(always)]
pub(crate) fn opaque(offset: usize) -> usize {
    core::hint::black_box(offset)
}

/// IANA UDP port of VXLAN.
pub const VXLAN_PORT: u16 = 4789;

/// VXLAN header (RFC 7348): flags with the I bit, 24-bit VNI, reserved bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct VxlanHeader {
    /// Flags; 0x08 (I) marks a valid VNI.
    pub flags: u8,
    /// Reserved, zero.
    pub reserved1: [u8; 3],
    /// VNI (24 bits) followed by a reserved byte.
    pub vni_reserved: [u8; 4],
}

impl VxlanHeader {
    /// Size on the wire.
    pub const LEN: usize = 8;
    /// The I flag: the VNI field is valid.
    pub const FLAG_I: u8 = 0x08;

    /// A header carrying `vni` (its low 24 bits).
    #[must_use]
    pub const fn new(vni: u32) -> Self {
        let b = vni.to_be_bytes();
        Self {
            flags: Self::FLAG_I,
            reserved1: [0; 3],
            vni_reserved: [b[1], b[2], b[3], 0],
        }
    }

    /// The 24-bit VNI.
    #[must_use]
    pub const fn vni(&self) -> u32 {
        u32::from_be_bytes([
            0,
            self.vni_reserved[0],
            self.vni_reserved[1],
            self.vni_reserved[2],
        ])
    }

    /// Whether the I flag is set (a receiver must drop headers without it).
    #[must_use]
    pub const fn is_valid(&self) -> bool {
        self.flags & Self::FLAG_I != 0
    }
}

/// Outer UDP source port for a tunnelled packet: derived from the inner flow hash so that ECMP
/// spreads flows, and kept in 49152..=65535 (RFC 7348 recommends the dynamic range).
#[inline(always)]
#[must_use]
pub const fn vxlan_source_port(flow_hash: u32) -> u16 {
    let folded = (flow_hash ^ (flow_hash >> 16)) as u16;
    49152 | (folded & 0x3fff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vni_roundtrips_24_bits() {
        for vni in [0, 1, 0x00ab_cdef, 0x00ff_ffff] {
            assert_eq!(VxlanHeader::new(vni).vni(), vni);
        }
        assert_eq!(
            VxlanHeader::new(0x0100_0001).vni(),
            1,
            "bits above 24 are dropped"
        );
        assert_eq!(VxlanHeader::new(5).as_bytes(), &[0x08, 0, 0, 0, 0, 0, 5, 0]);
    }

    #[test]
    fn source_ports_spread_and_stay_in_range() {
        let mut seen = [false; 16];
        for h in 0..1000u32 {
            let p = vxlan_source_port(h.wrapping_mul(0x9e37_79b9));
            assert!(p >= 49152);
            seen[(p & 0xf) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
