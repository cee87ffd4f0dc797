//! Wire formats: zerocopy header types, the [`PacketAccess`] trait and the defensive parser
//! (Ethernet with up to two VLAN tags, IPv4 with options, IPv6 with a bounded extension-header
//! walk, TCP, UDP, ICMPv4/ICMPv6 with the quoted datagram of error messages, fragments).
//!
//! # Contract
//! Every read goes through [`PacketAccess::load`], which returns `None` instead of reading past the
//! packet's end, so no input can make the parser panic or read out of bounds. In the kernel the
//! same calls compile to a pointer comparison against `data_end`, which is what the verifier needs
//! before it allows a packet read.

mod headers;
mod parse;
#[cfg(any(test, feature = "std"))]
pub mod testing;

pub use headers::{EthernetHeader, Ipv4Header, TcpFlags, TcpHeader, UdpHeader};
pub use headers::{IcmpHeader, Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6Header, VlanHeader};
pub use parse::QuotedDatagram;
pub use parse::{
    is_ipv6_ext, parse, parse_into, quoted_into, quoted_tuple, Disposition, Fragment, IcmpInfo,
    Layer, ParseError, ParseErrorKind, Parsed, ETH_P_8021AD, ETH_P_8021Q, IPV6_DEST_OPTS,
    IPV6_FRAGMENT, IPV6_HOP_BY_HOP, IPV6_ROUTING, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS,
};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// EtherType of IPv4.
pub const ETH_P_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;

/// Largest offset the datapath ever reads at. Implementations may reject larger offsets
/// up front; in the kernel this bound is what lets the verifier track variable offsets.
pub const MAX_HEADER_OFFSET: usize = 512;

/// Bounds-checked access to the bytes of one packet.
///
/// One implementation works over a byte slice ([`SlicePacket`]: userspace engine, tests, fuzzing);
/// the eBPF programs implement it over XDP/TC `data`/`data_end`. Parsing and rewriting code is
/// generic over this trait, so both worlds run the same functions.
pub trait PacketAccess {
    /// Length of the packet in bytes (from the first byte of the Ethernet header).
    fn len(&self) -> usize;

    /// Whether the packet has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the `T` stored at `offset`, or `None` if the packet ends before `offset + size_of::<T>()`.
    fn load<T: FromBytes + KnownLayout + Immutable + Copy>(&self, offset: usize) -> Option<T>;

    /// Overwrites the bytes at `offset` with `value`, or returns `None` (writing nothing) if the
    /// packet ends before `offset + size_of::<T>()`.
    fn store<T: IntoBytes + Immutable>(&mut self, offset: usize, value: &T) -> Option<()>;
}

/// [`PacketAccess`] over a mutable byte slice: the userspace implementation.
#[derive(Debug)]
pub struct SlicePacket<'a> {
    bytes: &'a mut [u8],
}

impl<'a> SlicePacket<'a> {
    /// Wraps a frame that starts with its Ethernet header.
    pub fn new(bytes: &'a mut [u8]) -> Self {
        Self { bytes }
    }

    /// The frame's bytes, as rewritten so far.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }
}

impl PacketAccess for SlicePacket<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.bytes.len()
    }

    #[inline(always)]
    fn load<T: FromBytes + KnownLayout + Immutable + Copy>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        let src = self.bytes.get(offset..end)?;
        T::read_from_bytes(src).ok()
    }

    #[inline(always)]
    fn store<T: IntoBytes + Immutable>(&mut self, offset: usize, value: &T) -> Option<()> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        let dst = self.bytes.get_mut(offset..end)?;
        dst.copy_from_slice(value.as_bytes());
        Some(())
    }
}
