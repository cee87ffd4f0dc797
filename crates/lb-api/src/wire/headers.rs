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
    }
}
