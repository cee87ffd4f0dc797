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

    /// Whether the hook cannot see the state of the packet's transport checksum although it may
    /// be partial: XDP on a device that hands up local senders' packets as they are (a veth,
    /// whose peer sends with the default checksum offload). The kernel keeps that state in the
    /// skb (`CHECKSUM_PARTIAL`: the field holds the pseudo-header sum, the device or the stack
    /// adds the rest when the packet leaves), and nothing shows it to an XDP program. The
    /// datapath then decides by the field ([`crate::checksum::looks_partial`]) and notes the
    /// result in [`Parsed::checksum_partial`], from where its checksum updates carry it
    /// ([`crate::checksum::l4_flags::FOUND_PARTIAL`]). TC sees the state (the kernel's
    /// checksum helpers read it), and a NIC never hands up a partial checksum: `false` there.
    fn partial_by_field(&self) -> bool {
        false
    }

    /// Whether [`Self::partial_by_field`] can ever say yes for this kind of packet (XDP); known
    /// at compile time, so that hooks that see the checksum state (TC) skip the field check.
    const MAY_HIDE_PARTIAL: bool = false;

    /// Whether the packet's transport checksum is partial: packet metadata, as the kernel keeps
    /// it in the skb (the engine's model of TC). Used by the default [`Self::l4_csum_replace`].
    fn checksum_partial(&self) -> bool {
        false
    }

    /// The packet's GSO segment size (`skb_shinfo(skb)->gso_size`; zero: not a GSO packet):
    /// packet metadata, as the kernel keeps it in the skb. TCP segmentation offload hands TC
    /// a local sender's data as one large packet that the device (or the stack) cuts into
    /// segments of this many payload bytes; the MTU a packet must fit is its segments'.
    /// XDP sees no GSO packets: zero there.
    fn gso_size(&self) -> u16 {
        0
    }

    /// Updates the transport checksum field at `at` for a covered field changing from `from`
    /// to `to` (its size and kind in `flags`, [`crate::checksum::l4_flags`]), as the kernel's
    /// `bpf_l4_csum_replace` does: per [`Self::checksum_partial`] or, where the datapath found
    /// it by the field, [`crate::checksum::l4_flags::FOUND_PARTIAL`]
    /// ([`crate::checksum::l4_replace`]). The TC program calls the helper itself, which also
    /// keeps a `CHECKSUM_COMPLETE` skb's sum right. `None` if the field is outside the packet.
    fn l4_csum_replace(&mut self, at: usize, from: u32, to: u32, flags: u64) -> Option<()> {
        let check: zerocopy::network_endian::U16 = self.load(at)?;
        let partial =
            self.checksum_partial() || flags & crate::checksum::l4_flags::FOUND_PARTIAL != 0;
        let c = crate::checksum::l4_replace(check.get(), partial, from, to, flags);
        self.store(at, &zerocopy::network_endian::U16::new(c))
    }
}

/// [`PacketAccess`] over a mutable byte slice: the userspace implementation.
#[derive(Debug)]
pub struct SlicePacket<'a> {
    bytes: &'a mut [u8],
    partial: bool,
}

impl<'a> SlicePacket<'a> {
    /// Wraps a frame that starts with its Ethernet header, with complete checksums.
    pub fn new(bytes: &'a mut [u8]) -> Self {
        Self {
            bytes,
            partial: false,
        }
    }

    /// Wraps a frame whose transport checksum is partial (`partial`: the skb's
    /// `CHECKSUM_PARTIAL`), see [`PacketAccess::checksum_partial`].
    pub fn with_partial_checksum(bytes: &'a mut [u8], partial: bool) -> Self {
        Self { bytes, partial }
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

    fn checksum_partial(&self) -> bool {
        self.partial
    }
}
