//! Header layouts as they are on the wire. All fields are byte arrays or network-endian integers,
//! so every type is `Unaligned` and can be read at any offset of a packet.

use zerocopy::network_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Ethernet II header (14 bytes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct EthernetHeader {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// EtherType (0x0800 IPv4, 0x86DD IPv6, 0x8100 VLAN...).
    pub ether_type: U16,
}

impl EthernetHeader {
    /// Size on the wire.
    pub const LEN: usize = 14;
}

/// IPv4 header without options (20 bytes). Options follow when `ihl() > 5`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Ipv4Header {
    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub version_ihl: u8,
    /// DSCP and ECN.
    pub tos: u8,
    /// Length of header and payload in bytes.
    pub total_len: U16,
    /// Identification, for fragment reassembly.
    pub id: U16,
    /// Flags (DF 0x4000, MF 0x2000) and fragment offset in 8-byte units (low 13 bits).
    pub frag_off: U16,
    /// Time to live.
    pub ttl: u8,
    /// Protocol of the payload.
    pub proto: u8,
    /// Header checksum.
    pub check: U16,
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
}

impl Ipv4Header {
    /// Size without options.
    pub const LEN: usize = 20;
    /// "More fragments" flag in `frag_off`.
    pub const MF: u16 = 0x2000;
    /// Mask of the fragment offset in `frag_off`.
    pub const OFFSET_MASK: u16 = 0x1fff;

    /// IP version from the first nibble.
    #[inline(always)]
    #[must_use]
    pub const fn version(&self) -> u8 {
        self.version_ihl >> 4
    }

    /// Header length in 32-bit words.
    #[inline(always)]
    #[must_use]
    pub const fn ihl(&self) -> u8 {
        self.version_ihl & 0x0f
    }

    /// Whether this is a fragment (first or later) of a larger datagram.
    #[inline(always)]
    #[must_use]
    pub fn is_fragment(&self) -> bool {
        self.frag_off.get() & (Self::MF | Self::OFFSET_MASK) != 0
    }
}

/// TCP header without options (20 bytes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct TcpHeader {
    /// Source port.
    pub src_port: U16,
    /// Destination port.
    pub dst_port: U16,
    /// Sequence number.
    pub seq: U32,
    /// Acknowledgement number.
    pub ack: U32,
    /// Data offset in 32-bit words (high nibble of the first byte).
    pub data_offset: u8,
    /// Flags (see [`TcpFlags`]).
    pub flags: u8,
    /// Receive window.
    pub window: U16,
    /// Checksum over pseudo-header, header and payload.
    pub check: U16,
    /// Urgent pointer.
    pub urgent: U16,
}

impl TcpHeader {
    /// Size without options.
    pub const LEN: usize = 20;
    /// Byte offset of the checksum field inside the header.
    pub const CHECK_OFFSET: usize = 16;

    /// Header length in 32-bit words.
    #[inline(always)]
    #[must_use]
    pub const fn doff(&self) -> u8 {
        self.data_offset >> 4
    }
}

/// TCP flag bits as found in [`TcpHeader::flags`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFlags;

impl TcpFlags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// UDP header (8 bytes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct UdpHeader {
    /// Source port.
    pub src_port: U16,
    /// Destination port.
    pub dst_port: U16,
    /// Length of header and payload.
    pub len: U16,
    /// Checksum; zero means "none" in IPv4.
    pub check: U16,
}

impl UdpHeader {
    /// Size on the wire.
    pub const LEN: usize = 8;
    /// Byte offset of the checksum field inside the header.
    pub const CHECK_OFFSET: usize = 6;
}

/// 802.1Q / 802.1ad VLAN tag as it follows the Ethernet addresses (4 bytes after the TPID):
/// the tag control information and the EtherType of what follows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct VlanHeader {
    /// Priority (3 bits), drop-eligible (1 bit) and VLAN id (12 bits).
    pub tci: U16,
    /// EtherType of the next header (another tag, IPv4, IPv6...).
    pub ether_type: U16,
}

impl VlanHeader {
    /// Size on the wire.
    pub const LEN: usize = 4;

    /// The 12-bit VLAN id.
    #[inline(always)]
    #[must_use]
    pub fn vid(&self) -> u16 {
        self.tci.get() & 0x0fff
    }
}

/// Fixed IPv6 header (40 bytes). Extension headers follow when `next_header` names one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Ipv6Header {
    /// Version (4 bits), traffic class (8 bits), flow label (20 bits).
    pub vtc_flow: [u8; 4],
    /// Length of everything after this fixed header.
    pub payload_len: U16,
    /// Protocol or extension header that follows.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
}

impl Ipv6Header {
    /// Size of the fixed header.
    pub const LEN: usize = 40;

    /// IP version from the first nibble.
    #[inline(always)]
    #[must_use]
    pub const fn version(&self) -> u8 {
        self.vtc_flow[0] >> 4
    }
}

/// The two bytes every IPv6 extension header (except the fragment header) starts with.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Ipv6ExtHeader {
    /// Protocol or extension header that follows.
    pub next_header: u8,
    /// Length in 8-byte units, not counting the first 8 bytes.
    pub hdr_ext_len: u8,
}

impl Ipv6ExtHeader {
    /// Length of the whole extension header in bytes.
    #[inline(always)]
    #[must_use]
    pub const fn header_len(&self) -> usize {
        (self.hdr_ext_len as usize + 1) * 8
    }
}

/// IPv6 fragment extension header (8 bytes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Ipv6FragmentHeader {
    /// Protocol or extension header that follows.
    pub next_header: u8,
    /// Reserved, zero.
    pub reserved: u8,
    /// Fragment offset in 8-byte units (high 13 bits) and the M flag (bit 0).
    pub frag_off: U16,
    /// Identification, for reassembly.
    pub id: U32,
}

impl Ipv6FragmentHeader {
    /// Size on the wire.
    pub const LEN: usize = 8;

    /// Fragment offset in 8-byte units.
    #[inline(always)]
    #[must_use]
    pub fn offset(&self) -> u16 {
        self.frag_off.get() >> 3
    }

    /// Whether more fragments follow.
    #[inline(always)]
    #[must_use]
    pub fn more(&self) -> bool {
        self.frag_off.get() & 1 != 0
    }
}

/// ICMPv4 / ICMPv6 header (8 bytes): type, code, checksum and the 4 type-specific bytes
/// (echo id and sequence, next-hop MTU, pointer...).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct IcmpHeader {
    /// Message type.
    pub ty: u8,
    /// Message code.
    pub code: u8,
    /// Checksum (ICMPv6: over the IPv6 pseudo-header too).
    pub check: U16,
    /// Type-specific 4 bytes.
    pub rest: [u8; 4],
}

impl IcmpHeader {
    /// Size on the wire.
    pub const LEN: usize = 8;
    /// Byte offset of the checksum field inside the header.
    pub const CHECK_OFFSET: usize = 2;
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn sizes_match_the_wire() {
        assert_eq!(size_of::<EthernetHeader>(), EthernetHeader::LEN);
        assert_eq!(size_of::<Ipv4Header>(), Ipv4Header::LEN);
        assert_eq!(size_of::<TcpHeader>(), TcpHeader::LEN);
        assert_eq!(size_of::<UdpHeader>(), UdpHeader::LEN);
        assert_eq!(size_of::<VlanHeader>(), VlanHeader::LEN);
        assert_eq!(size_of::<Ipv6Header>(), Ipv6Header::LEN);
        assert_eq!(size_of::<Ipv6FragmentHeader>(), Ipv6FragmentHeader::LEN);
        assert_eq!(size_of::<IcmpHeader>(), IcmpHeader::LEN);
    }
}
