//! What a UDP tunnel writes in front of a frame, and why an encapsulation or a
//! decapsulation was refused.

use lb_api::wire::{EthernetHeader, Ipv4Header, Ipv6Header, ParseError, UdpHeader};

use crate::{VxlanHeader, VXLAN_PORT};

/// Outer addresses of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OuterAddrs {
    /// IPv4 outer header.
    V4 {
        /// This node.
        src: [u8; 4],
        /// The remote tunnel endpoint.
        dst: [u8; 4],
    },
    /// IPv6 outer header.
    V6 {
        /// This node.
        src: [u8; 16],
        /// The remote tunnel endpoint.
        dst: [u8; 16],
    },
}

/// What a UDP tunnel (VXLAN, Geneve) writes in front of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Virtual network identifier (24 bits).
    pub vni: u32,
    /// Outer UDP destination port (4789 for VXLAN, 6081 for Geneve by default).
    pub port: u16,
    /// Outer Ethernet source.
    pub src_mac: [u8; 6],
    /// Outer Ethernet destination (next hop).
    pub dst_mac: [u8; 6],
    /// Outer IP addresses.
    pub outer: OuterAddrs,
    /// MTU of the underlay: the largest outer IP packet.
    pub mtu: u16,
}

/// The VXLAN configuration is a [`TunnelConfig`] with port 4789 by default.
pub type VxlanConfig = TunnelConfig;

impl TunnelConfig {
    /// Defaults: VXLAN port 4789, MTU 1500.
    #[must_use]
    pub const fn new(vni: u32, outer: OuterAddrs, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Self {
        Self {
            vni,
            port: VXLAN_PORT,
            src_mac,
            dst_mac,
            outer,
            mtu: 1500,
        }
    }

    /// Outer Ethernet, IP and UDP header bytes.
    #[must_use]
    pub const fn outer_len(&self) -> usize {
        let ip = match self.outer {
            OuterAddrs::V4 { .. } => Ipv4Header::LEN,
            OuterAddrs::V6 { .. } => Ipv6Header::LEN,
        };
        EthernetHeader::LEN + ip + UdpHeader::LEN
    }

    /// Bytes a VXLAN encapsulation adds in front of the inner frame.
    #[must_use]
    pub const fn overhead(&self) -> usize {
        self.outer_len() + VxlanHeader::LEN
    }
}

/// Why an encapsulation was not done (the packet is unchanged, but for
/// [`EncapError::Malformed`] after the packet grew: see the functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncapError {
    /// The outer packet would be `needed` bytes, more than the MTU; `inner_mtu` is the largest
    /// inner IP packet that fits (the value for ICMP "fragmentation needed" / "packet too big").
    MtuExceeded {
        /// Outer IP packet length that was needed.
        needed: u16,
        /// Largest inner IP packet that fits.
        inner_mtu: u16,
    },
    /// The packet could not grow (no headroom; at TC the kernel refuses packets that are not
    /// plain IPv4/IPv6 after their Ethernet header, such as VLAN-tagged ones, and GSO packets
    /// it could not segment any more).
    NoHeadroom,
    /// The packet is too long to checksum or does not parse.
    Malformed,
}

/// Why a decapsulation was refused (the packet is unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecapError {
    /// The outer headers did not parse.
    Parse(ParseError),
    /// Not UDP to the tunnel port (or a fragment).
    NotTunnel,
    /// VXLAN header without the I flag.
    BadFlags,
    /// An IPv6 outer UDP checksum of zero (invalid in IPv6).
    ZeroUdpChecksumV6,
    /// A valid tunnel packet that could not shrink (at TC the kernel refuses packets that are
    /// not plain IPv4/IPv6 after their Ethernet header, such as VLAN-tagged ones).
    CannotShrink,
    /// The VNI is not the one expected (`found` holds it).
    VniMismatch {
        /// VNI carried by the packet.
        found: u32,
    },
}
