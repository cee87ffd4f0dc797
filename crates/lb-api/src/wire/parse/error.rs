//! Why a packet did not parse ([`ParseError`]: layer, problem, offset, what was required and
//! found), and what the datapath does with it ([`Disposition`]).

use crate::counters::{Counter, DropReason};
use crate::wire::{PacketAccess, MAX_HEADER_OFFSET};

/// Where in the packet a parse stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// The Ethernet header.
    Ethernet,
    /// An 802.1Q / 802.1ad VLAN tag.
    Vlan,
    /// The IPv4 header.
    Ipv4,
    /// The fixed IPv6 header.
    Ipv6,
    /// An IPv6 extension header.
    Ipv6Ext,
    /// The TCP header.
    Tcp,
    /// The UDP header.
    Udp,
    /// The ICMPv4 header.
    Icmpv4,
    /// The ICMPv6 header.
    Icmpv6,
}

/// What was wrong at that layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// The packet ends before the header does: `required` bytes were needed from `offset`,
    /// `found` were there.
    Truncated,
    /// IP version nibble is not the one the EtherType announced (`required` 4 or 6, `found`).
    BadVersion,
    /// IPv4 IHL below 5 words (`found` holds it).
    BadHeaderLength,
    /// IPv4 total length shorter than its own header (`found` holds it, `required` the minimum).
    BadTotalLength,
    /// TCP data offset below 5 words (`found` holds it).
    BadDataOffset,
    /// UDP length field below 8 (`found` holds it).
    BadUdpLength,
    /// The EtherType is not one the datapath translates (`found` holds it): not an error of the
    /// packet, the packet is simply not ours.
    NotIp,
    /// More than [`MAX_VLAN_TAGS`](super::MAX_VLAN_TAGS) VLAN tags (`found` is the third tag's
    /// TPID).
    TooManyVlanTags,
    /// More than [`MAX_IPV6_EXT_HEADERS`](super::MAX_IPV6_EXT_HEADERS) extension headers
    /// (`found` is the next header value).
    TooManyExtHeaders,
    /// A header starts past [`MAX_HEADER_OFFSET`] (`found` is its offset).
    HeaderTooDeep,
    /// An IPv6 hop-by-hop options header that is not the first extension header.
    HopByHopNotFirst,
    /// The IPv4 header checksum is wrong (`found` holds the header's sum, folded; a right
    /// header sums to `required`, 0xffff). The stack would drop the packet too, before any
    /// route or conntrack.
    BadChecksum,
}

/// Why a packet could not be parsed: the layer, the problem, and the numbers that show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError {
    /// Layer at which parsing stopped.
    pub layer: Layer,
    /// What was wrong.
    pub kind: ParseErrorKind,
    /// Byte offset of that layer's header in the packet.
    pub offset: u16,
    /// What the parser required (a length, or a minimum value).
    pub required: u16,
    /// What it found instead.
    pub found: u16,
}

/// What the datapath does with a packet that did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Not ours: hand it to the stack and count it under this counter.
    Pass(Counter),
    /// Malformed: drop it and count this reason.
    Drop(DropReason),
}

impl ParseError {
    /// Pass or drop, with the counter to bump.
    #[must_use]
    pub const fn disposition(&self) -> Disposition {
        match self.kind {
            ParseErrorKind::NotIp => Disposition::Pass(Counter::PassNotIp),
            ParseErrorKind::TooManyVlanTags
            | ParseErrorKind::TooManyExtHeaders
            | ParseErrorKind::HeaderTooDeep => Disposition::Pass(Counter::PassHeadersTooDeep),
            ParseErrorKind::Truncated => Disposition::Drop(DropReason::Truncated),
            ParseErrorKind::BadVersion => Disposition::Drop(DropReason::BadIpVersion),
            ParseErrorKind::BadHeaderLength => Disposition::Drop(DropReason::BadIpHeaderLength),
            ParseErrorKind::BadTotalLength => Disposition::Drop(DropReason::BadIpTotalLength),
            ParseErrorKind::BadDataOffset => Disposition::Drop(DropReason::BadTcpHeaderLength),
            ParseErrorKind::BadUdpLength => Disposition::Drop(DropReason::BadUdpLength),
            ParseErrorKind::HopByHopNotFirst => Disposition::Drop(DropReason::BadIpv6ExtHeader),
            ParseErrorKind::BadChecksum => Disposition::Drop(DropReason::BadIpChecksum),
        }
    }
}

#[cfg(feature = "std")]
impl core::fmt::Display for ParseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:?} header at offset {}: {:?} (required {}, found {})",
            self.layer, self.offset, self.kind, self.required, self.found
        )
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ParseError {}

#[inline(always)]
pub(super) const fn err(
    layer: Layer,
    kind: ParseErrorKind,
    offset: usize,
    required: usize,
    found: usize,
) -> ParseError {
    // Offsets and lengths are bounded by MAX_HEADER_OFFSET / u16 header fields; the casts keep
    // the error small and never lose information that matters (packet lengths are < 64 KiB).
    ParseError {
        layer,
        kind,
        offset: offset as u16,
        required: required as u16,
        found: found as u16,
    }
}

#[inline(always)]
pub(super) fn truncated<P: PacketAccess + ?Sized>(
    pkt: &P,
    layer: Layer,
    offset: usize,
    need: usize,
) -> ParseError {
    err(
        layer,
        ParseErrorKind::Truncated,
        offset,
        need,
        pkt.len().saturating_sub(offset),
    )
}

#[inline(always)]
pub(super) fn too_deep(layer: Layer, offset: usize) -> ParseError {
    err(
        layer,
        ParseErrorKind::HeaderTooDeep,
        offset,
        MAX_HEADER_OFFSET,
        offset,
    )
}
