//! The defensive parser: Ethernet (up to two VLAN tags) → IPv4 (options via IHL) or IPv6 (a
//! bounded walk over extension headers) → TCP, UDP, ICMPv4 or ICMPv6, through [`PacketAccess`].
//!
//! Every loop has a fixed bound and every offset is checked against [`MAX_HEADER_OFFSET`] here,
//! not only inside the kernel's `load`, so that both worlds give the same answer for the same
//! bytes and the verifier can track every variable offset.

use super::headers::{
    EthernetHeader, IcmpHeader, Ipv4Header, Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6Header,
    TcpFlags, TcpHeader, UdpHeader, VlanHeader,
};
use super::{PacketAccess, ETH_P_IPV4, ETH_P_IPV6, MAX_HEADER_OFFSET};
use crate::counters::{Counter, DropReason};
use crate::flow::{v4_addr, FlowTuple, IpFamily, L4Proto};

/// EtherType (TPID) of an 802.1Q customer VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType (TPID) of an 802.1ad service VLAN tag (the outer tag of QinQ).
pub const ETH_P_8021AD: u16 = 0x88a8;
/// How many VLAN tags the parser follows.
pub const MAX_VLAN_TAGS: usize = 2;
/// How many IPv6 extension headers the parser follows before it gives up (passes the packet).
pub const MAX_IPV6_EXT_HEADERS: usize = 4;

/// IPv6 next-header value of the hop-by-hop options header.
pub const IPV6_HOP_BY_HOP: u8 = 0;
/// IPv6 next-header value of the routing header.
pub const IPV6_ROUTING: u8 = 43;
/// IPv6 next-header value of the fragment header.
pub const IPV6_FRAGMENT: u8 = 44;
/// IPv6 next-header value of the destination options header.
pub const IPV6_DEST_OPTS: u8 = 60;

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
    /// More than [`MAX_VLAN_TAGS`] VLAN tags (`found` is the third tag's TPID).
    TooManyVlanTags,
    /// More than [`MAX_IPV6_EXT_HEADERS`] extension headers (`found` is the next header value).
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

/// Whether, and which part of, a fragmented datagram a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Fragment {
    /// Not a fragment.
    #[default]
    None = 0,
    /// The first fragment (offset 0, more to come): it carries the transport header.
    First = 1,
    /// A later fragment: no transport header, ports unknown (zero in the tuple).
    Later = 2,
}

/// ICMP details of an ICMPv4/ICMPv6 packet (all zero for other protocols).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IcmpInfo {
    /// Message type.
    pub ty: u8,
    /// Message code.
    pub code: u8,
    /// Offset of the quoted (inner) IP header of an error message, zero for other messages.
    /// [`quoted_tuple`] parses it.
    pub quote_offset: u16,
}

/// Offsets and identity of a parsed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// The packet's 5-tuple. Ports are zero for protocols without ports and for later fragments;
    /// ICMP echo requests and replies carry their identifier in both ports.
    pub tuple: FlowTuple,
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// Offset of the transport header (for a later fragment: of the fragment's payload).
    pub l4_offset: usize,
    /// TCP flags (zero for other protocols).
    pub tcp_flags: u8,
    /// TCP sequence number (zero for other protocols).
    pub tcp_seq: u32,
    /// TCP: the sequence number just past this segment (its data, SYN and FIN each count),
    /// netfilter's `td_end`. Zero for other protocols.
    pub tcp_seq_end: u32,
    /// Tag control information of the VLAN tags, outermost first (`vlan_count` are valid).
    pub vlan_tci: [u16; MAX_VLAN_TAGS],
    /// How many VLAN tags the frame carries (0..=2).
    pub vlan_count: u8,
    /// Length of the IP packet (IPv4 total length; IPv6 40 + payload length).
    pub ip_len: u16,
    /// Fragment position.
    pub fragment: Fragment,
    /// ICMP type, code and quote offset.
    pub icmp: IcmpInfo,
    /// Offset of the first IPv6 destination options header (DSR carrier), zero if none.
    pub ipv6_dest_opts: u16,
    /// The transport checksum is partial (`CHECKSUM_PARTIAL`), as the datapath found by the
    /// field where the hook cannot see the skb's state (see
    /// [`PacketAccess::partial_by_field`](super::PacketAccess::partial_by_field)). The parser
    /// leaves it `false`; rewrites pass it on to the checksum updates.
    pub checksum_partial: bool,
    /// IPv4: the header's folded one's-complement sum, its checksum included (0xffff when the
    /// checksum is right; 0 for IPv6). The parser checks it after reading it back from here:
    /// in the kernel the parse result lives in map memory, and a value read from there does
    /// not make the verifier track the header fields it came from precisely (compared where it
    /// was computed, it took the first stage past its million instructions).
    pub ipv4_header_sum: u16,
    /// The packet's GSO segment size ([`PacketAccess::gso_size`](super::PacketAccess::gso_size);
    /// zero: not a GSO packet), as the datapath noted it for its MTU decisions. The parser
    /// leaves it zero.
    pub gso_size: u16,
}

impl Parsed {
    /// A value to parse into (see [`parse_into`]).
    pub const EMPTY: Parsed = Parsed {
        tuple: FlowTuple {
            src: [0; 16],
            dst: [0; 16],
            src_port: 0,
            dst_port: 0,
            proto: 0,
            family: 0,
        },
        l3_offset: 0,
        l4_offset: 0,
        tcp_flags: 0,
        tcp_seq: 0,
        tcp_seq_end: 0,
        vlan_tci: [0; MAX_VLAN_TAGS],
        vlan_count: 0,
        ip_len: 0,
        fragment: Fragment::None,
        icmp: IcmpInfo {
            ty: 0,
            code: 0,
            quote_offset: 0,
        },
        ipv6_dest_opts: 0,
        checksum_partial: false,
        ipv4_header_sum: 0,
        gso_size: 0,
    };

    /// The address family of the packet.
    #[inline(always)]
    #[must_use]
    pub const fn family(&self) -> IpFamily {
        if self.tuple.family == IpFamily::V6 as u8 {
            IpFamily::V6
        } else {
            IpFamily::V4
        }
    }
}

#[inline(always)]
const fn err(
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
fn truncated<P: PacketAccess + ?Sized>(
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
fn too_deep(layer: Layer, offset: usize) -> ParseError {
    err(
        layer,
        ParseErrorKind::HeaderTooDeep,
        offset,
        MAX_HEADER_OFFSET,
        offset,
    )
}

#[inline(always)]
const fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD
}

/// Whether an IPv6 next-header value names an extension header the walk follows.
#[inline(always)]
#[must_use]
pub const fn is_ipv6_ext(nh: u8) -> bool {
    matches!(
        nh,
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_DEST_OPTS
    )
}

/// Result of the bounded IPv6 extension-header walk.
#[derive(Debug, Clone, Copy)]
struct V6Walk {
    next_header: u8,
    offset: usize,
    fragment: Fragment,
    dest_opts: u16,
}

/// Follows at most [`MAX_IPV6_EXT_HEADERS`] extension headers from `offset` (just after the
/// fixed header), none of them past `end` (end of the IP payload).
#[inline(always)]
fn walk_ipv6_ext<P: PacketAccess + ?Sized>(
    pkt: &P,
    w: &mut V6Walk,
    end: usize,
) -> Result<(), ParseError> {
    let mut offset = w.offset;
    let mut i = 0;
    while i < MAX_IPV6_EXT_HEADERS {
        let nh = w.next_header;
        if !is_ipv6_ext(nh) {
            return Ok(());
        }
        if offset > MAX_HEADER_OFFSET {
            return Err(too_deep(Layer::Ipv6Ext, offset));
        }
        if nh == IPV6_HOP_BY_HOP && i != 0 {
            return Err(err(
                Layer::Ipv6Ext,
                ParseErrorKind::HopByHopNotFirst,
                offset,
                0,
                i,
            ));
        }
        if nh == IPV6_FRAGMENT {
            if offset + Ipv6FragmentHeader::LEN > end {
                return Err(truncated(
                    pkt,
                    Layer::Ipv6Ext,
                    offset,
                    Ipv6FragmentHeader::LEN,
                ));
            }
            let f: Ipv6FragmentHeader = pkt
                .load(offset)
                .ok_or_else(|| truncated(pkt, Layer::Ipv6Ext, offset, Ipv6FragmentHeader::LEN))?;
            offset += Ipv6FragmentHeader::LEN;
            w.next_header = f.next_header;
            w.offset = offset;
            if f.offset() != 0 {
                // What follows is the middle of the datagram, not a header.
                w.fragment = Fragment::Later;
                return Ok(());
            }
            if f.more() {
                w.fragment = Fragment::First;
            }
        } else {
            let h: Ipv6ExtHeader = pkt
                .load(offset)
                .ok_or_else(|| truncated(pkt, Layer::Ipv6Ext, offset, 8))?;
            if offset + h.header_len() > end {
                return Err(truncated(pkt, Layer::Ipv6Ext, offset, h.header_len()));
            }
            if nh == IPV6_DEST_OPTS && w.dest_opts == 0 {
                w.dest_opts = offset as u16;
            }
            offset += h.header_len();
            w.next_header = h.next_header;
            w.offset = offset;
        }
        i += 1;
    }
    if is_ipv6_ext(w.next_header) {
        return Err(err(
            Layer::Ipv6Ext,
            ParseErrorKind::TooManyExtHeaders,
            offset,
            MAX_IPV6_EXT_HEADERS,
            w.next_header as usize,
        ));
    }
    Ok(())
}

/// ICMPv4 types that quote the offending datagram.
#[inline(always)]
const fn icmpv4_is_error(ty: u8) -> bool {
    matches!(ty, 3 | 4 | 5 | 11 | 12)
}

/// ICMPv6 types that quote the offending datagram (RFC 4443: types below 128).
#[inline(always)]
const fn icmpv6_is_error(ty: u8) -> bool {
    matches!(ty, 1..=4)
}

/// Parses Ethernet, up to two VLAN tags, IPv4 (options skipped via IHL) or IPv6 (extension
/// headers walked, at most [`MAX_IPV6_EXT_HEADERS`]), and the TCP, UDP or ICMP header.
///
/// Fragments parse: the first carries its transport header, later ones report
/// [`Fragment::Later`] with zero ports.
///
/// # Errors
/// A [`ParseError`] naming the layer, the problem, the offset, and what was required and found.
/// Use [`ParseError::disposition`] to decide between passing and dropping.
#[inline(always)]
pub fn parse<P: PacketAccess + ?Sized>(pkt: &P) -> Result<Parsed, ParseError> {
    let mut p = Parsed::EMPTY;
    parse_into(pkt, &mut p)?;
    Ok(p)
}

/// [`parse`] into a caller's [`Parsed`]: the form the pipeline uses, because returning the
/// struct by value costs the kernel program copies of it on its 512-byte stack.
/// On error `p` holds whatever was parsed before the failing layer.
///
/// # Errors
/// As [`parse`].
#[inline(never)]
pub fn parse_into<P: PacketAccess + ?Sized>(pkt: &P, p: &mut Parsed) -> Result<(), ParseError> {
    *p = Parsed::EMPTY;
    let eth: EthernetHeader = pkt
        .load(0)
        .ok_or_else(|| truncated(pkt, Layer::Ethernet, 0, EthernetHeader::LEN))?;
    let mut ether_type = eth.ether_type.get();
    let mut l3 = EthernetHeader::LEN;
    // Unrolled: at most two tags (802.1ad outer, 802.1Q inner, in practice).
    if is_vlan(ether_type) {
        let v: VlanHeader = pkt
            .load(l3)
            .ok_or_else(|| truncated(pkt, Layer::Vlan, l3, VlanHeader::LEN))?;
        p.vlan_tci[0] = v.tci.get();
        p.vlan_count = 1;
        ether_type = v.ether_type.get();
        l3 += VlanHeader::LEN;
        if is_vlan(ether_type) {
            let v: VlanHeader = pkt
                .load(l3)
                .ok_or_else(|| truncated(pkt, Layer::Vlan, l3, VlanHeader::LEN))?;
            p.vlan_tci[1] = v.tci.get();
            p.vlan_count = 2;
            ether_type = v.ether_type.get();
            l3 += VlanHeader::LEN;
            if is_vlan(ether_type) {
                return Err(err(
                    Layer::Vlan,
                    ParseErrorKind::TooManyVlanTags,
                    l3,
                    MAX_VLAN_TAGS,
                    ether_type as usize,
                ));
            }
        }
    }
    p.l3_offset = l3;

    let l3_end;
    if ether_type == ETH_P_IPV4 {
        let ip: Ipv4Header = pkt
            .load(l3)
            .ok_or_else(|| truncated(pkt, Layer::Ipv4, l3, Ipv4Header::LEN))?;
        if ip.version() != 4 {
            return Err(err(
                Layer::Ipv4,
                ParseErrorKind::BadVersion,
                l3,
                4,
                ip.version() as usize,
            ));
        }
        let ihl = ip.ihl() as usize;
        if ihl < 5 {
            return Err(err(
                Layer::Ipv4,
                ParseErrorKind::BadHeaderLength,
                l3,
                5,
                ihl,
            ));
        }
        let ip_hdr_len = ihl * 4;
        let total_len = ip.total_len.get() as usize;
        if total_len < ip_hdr_len {
            return Err(err(
                Layer::Ipv4,
                ParseErrorKind::BadTotalLength,
                l3,
                ip_hdr_len,
                total_len,
            ));
        }
        if pkt.len() < l3 + total_len {
            return Err(truncated(pkt, Layer::Ipv4, l3, total_len));
        }
        p.ipv4_header_sum = ipv4_header_sum(pkt, &ip, l3, ip_hdr_len);
        // SAFETY: a valid, aligned pointer to the field just written; volatile so that the
        // value is read back from memory (see `Parsed::ipv4_header_sum`).
        let sum = unsafe { core::ptr::read_volatile(&raw const p.ipv4_header_sum) };
        if sum != 0xffff {
            return Err(err(
                Layer::Ipv4,
                ParseErrorKind::BadChecksum,
                l3,
                0xffff,
                usize::from(sum),
            ));
        }
        let frag = ip.frag_off.get();
        if frag & Ipv4Header::OFFSET_MASK != 0 {
            p.fragment = Fragment::Later;
        } else if frag & Ipv4Header::MF != 0 {
            p.fragment = Fragment::First;
        }
        p.tuple.src = v4_addr(ip.src);
        p.tuple.dst = v4_addr(ip.dst);
        p.tuple.proto = ip.proto;
        p.tuple.family = IpFamily::V4 as u8;
        p.ip_len = total_len as u16;
        p.l4_offset = l3 + ip_hdr_len;
        l3_end = l3 + total_len;
    } else if ether_type == ETH_P_IPV6 {
        l3_end = parse_ipv6(pkt, p, l3)?;
        // parse_ipv6 checked that the whole IPv6 packet is there.
        p.tuple.src = pkt
            .load(l3 + 8)
            .ok_or_else(|| truncated(pkt, Layer::Ipv6, l3, Ipv6Header::LEN))?;
        p.tuple.dst = pkt
            .load(l3 + 24)
            .ok_or_else(|| truncated(pkt, Layer::Ipv6, l3, Ipv6Header::LEN))?;
    } else {
        return Err(err(
            Layer::Ethernet,
            ParseErrorKind::NotIp,
            l3.saturating_sub(2),
            ETH_P_IPV4 as usize,
            ether_type as usize,
        ));
    }

    if p.fragment == Fragment::Later {
        return Ok(());
    }
    let l4 = p.l4_offset;
    if l4 > MAX_HEADER_OFFSET {
        return Err(too_deep(Layer::Tcp, l4));
    }
    let avail = l3_end - l4;
    match L4Proto::from_u8(p.tuple.proto) {
        Some(L4Proto::Tcp) => {
            let tcp: TcpHeader = pkt
                .load(l4)
                .ok_or_else(|| truncated(pkt, Layer::Tcp, l4, TcpHeader::LEN))?;
            let doff = tcp.doff() as usize;
            if doff < 5 {
                return Err(err(Layer::Tcp, ParseErrorKind::BadDataOffset, l4, 5, doff));
            }
            if doff * 4 > avail {
                return Err(err(
                    Layer::Tcp,
                    ParseErrorKind::Truncated,
                    l4,
                    doff * 4,
                    avail,
                ));
            }
            p.tuple.src_port = tcp.src_port.get();
            p.tuple.dst_port = tcp.dst_port.get();
            p.tcp_flags = tcp.flags;
            p.tcp_seq = tcp.seq.get();
            // `avail` and `doff * 4` are at most 64 KiB: the sum fits.
            let data = (avail - doff * 4) as u32;
            let syn_fin = u32::from(tcp.flags & TcpFlags::SYN != 0)
                + u32::from(tcp.flags & TcpFlags::FIN != 0);
            p.tcp_seq_end = p.tcp_seq.wrapping_add(data).wrapping_add(syn_fin);
        }
        Some(L4Proto::Udp) => {
            let udp: UdpHeader = pkt
                .load(l4)
                .ok_or_else(|| truncated(pkt, Layer::Udp, l4, UdpHeader::LEN))?;
            if UdpHeader::LEN > avail {
                return Err(err(
                    Layer::Udp,
                    ParseErrorKind::Truncated,
                    l4,
                    UdpHeader::LEN,
                    avail,
                ));
            }
            let ulen = udp.len.get() as usize;
            if ulen < UdpHeader::LEN {
                return Err(err(
                    Layer::Udp,
                    ParseErrorKind::BadUdpLength,
                    l4,
                    UdpHeader::LEN,
                    ulen,
                ));
            }
            // A first fragment carries only part of the datagram the length describes.
            if ulen > avail && p.fragment == Fragment::None {
                return Err(err(Layer::Udp, ParseErrorKind::Truncated, l4, ulen, avail));
            }
            p.tuple.src_port = udp.src_port.get();
            p.tuple.dst_port = udp.dst_port.get();
        }
        Some(proto @ (L4Proto::Icmp | L4Proto::Icmpv6)) => {
            parse_icmp(pkt, p, proto == L4Proto::Icmpv6, l4, avail)?;
        }
        None => {}
    }
    Ok(())
}

/// The IPv6 part of [`parse_into`]: fixed header and extension-header walk. Returns the end of
/// the IP payload. A BPF subprogram of its own so its locals do not sit on the pipeline's frame.
#[cfg_attr(target_arch = "bpf", inline(never))]
#[cfg_attr(not(target_arch = "bpf"), inline(always))]
fn parse_ipv6<P: PacketAccess + ?Sized>(
    pkt: &P,
    p: &mut Parsed,
    l3: usize,
) -> Result<usize, ParseError> {
    // The fixed part only; the caller reads the addresses (the kernel stack is small).
    let ip: [u8; 8] = pkt
        .load(l3)
        .ok_or_else(|| truncated(pkt, Layer::Ipv6, l3, Ipv6Header::LEN))?;
    if ip[0] >> 4 != 6 {
        return Err(err(
            Layer::Ipv6,
            ParseErrorKind::BadVersion,
            l3,
            6,
            (ip[0] >> 4) as usize,
        ));
    }
    let total_len = Ipv6Header::LEN + u16::from_be_bytes([ip[4], ip[5]]) as usize;
    if pkt.len() < l3 + total_len {
        return Err(truncated(pkt, Layer::Ipv6, l3, total_len));
    }
    let l3_end = l3 + total_len;
    let mut w = V6Walk {
        next_header: ip[6],
        offset: l3 + Ipv6Header::LEN,
        fragment: Fragment::None,
        dest_opts: 0,
    };
    walk_ipv6_ext(pkt, &mut w, l3_end)?;
    p.tuple.proto = w.next_header;
    p.tuple.family = IpFamily::V6 as u8;
    p.ip_len = total_len as u16;
    p.l4_offset = w.offset;
    p.fragment = w.fragment;
    p.ipv6_dest_opts = w.dest_opts;
    Ok(l3_end)
}

/// The ICMP part of [`parse_into`] (a BPF subprogram of its own, as [`parse_ipv6`]).
#[cfg_attr(target_arch = "bpf", inline(never))]
#[cfg_attr(not(target_arch = "bpf"), inline(always))]
fn parse_icmp<P: PacketAccess + ?Sized>(
    pkt: &P,
    p: &mut Parsed,
    v6: bool,
    l4: usize,
    avail: usize,
) -> Result<(), ParseError> {
    let layer = if v6 { Layer::Icmpv6 } else { Layer::Icmpv4 };
    // ICMP belongs to its own family; ICMPv4 in IPv6 (or the reverse) is just a protocol.
    if v6 == (p.tuple.family == IpFamily::V6 as u8) {
        let icmp: IcmpHeader = pkt
            .load(l4)
            .ok_or_else(|| truncated(pkt, layer, l4, IcmpHeader::LEN))?;
        if IcmpHeader::LEN > avail {
            return Err(err(
                layer,
                ParseErrorKind::Truncated,
                l4,
                IcmpHeader::LEN,
                avail,
            ));
        }
        p.icmp.ty = icmp.ty;
        p.icmp.code = icmp.code;
        let error = if v6 {
            icmpv6_is_error(icmp.ty)
        } else {
            icmpv4_is_error(icmp.ty)
        };
        let echo = if v6 {
            matches!(icmp.ty, 128 | 129)
        } else {
            matches!(icmp.ty, 0 | 8)
        };
        if error {
            p.icmp.quote_offset = (l4 + IcmpHeader::LEN) as u16;
        } else if echo {
            let id = u16::from_be_bytes([icmp.rest[0], icmp.rest[1]]);
            p.tuple.src_port = id;
            p.tuple.dst_port = id;
        }
    }
    Ok(())
}

/// Parses the datagram an ICMP error message quotes and returns its tuple as it was sent (the
/// quoted source is the original sender, the receiver of this error).
///
/// Quotes are usually cut short: only the IP header and the first 4 transport bytes (the ports)
/// are required; for ICMP echo the identifier.
///
/// # Errors
/// A [`ParseError`] for the inner layer (offsets are into the whole packet); `Truncated` with
/// `layer` [`Layer::Icmpv4`]/[`Layer::Icmpv6`] if `parsed` is not an ICMP error at all.
#[inline(always)]
pub fn quoted_tuple<P: PacketAccess + ?Sized>(
    pkt: &P,
    parsed: &Parsed,
) -> Result<FlowTuple, ParseError> {
    let mut q = QuotedDatagram::EMPTY;
    quoted_into(pkt, parsed, &mut q)?;
    Ok(q.tuple)
}

/// The datagram an ICMP error quotes: its tuple as it was sent, and where its transport header
/// starts (what a translation of the quote needs besides [`IcmpInfo::quote_offset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotedDatagram {
    /// The quoted tuple, as [`quoted_tuple`] returns it.
    pub tuple: FlowTuple,
    /// Offset of the quoted transport header in the packet; zero when the quote is a later
    /// fragment (no transport header).
    pub l4_offset: usize,
}

impl QuotedDatagram {
    /// A value to parse into (see [`quoted_into`]).
    pub const EMPTY: QuotedDatagram = QuotedDatagram {
        tuple: Parsed::EMPTY.tuple,
        l4_offset: 0,
    };
}

/// [`quoted_tuple`] into a caller's [`QuotedDatagram`], with the quoted transport header's
/// offset. A BPF subprogram of its own, so that its locals stay off its caller's frame.
///
/// # Errors
/// As [`quoted_tuple`].
#[cfg_attr(target_arch = "bpf", inline(never))]
#[cfg_attr(not(target_arch = "bpf"), inline(always))]
pub fn quoted_into<P: PacketAccess + ?Sized>(
    pkt: &P,
    parsed: &Parsed,
    out: &mut QuotedDatagram,
) -> Result<(), ParseError> {
    *out = QuotedDatagram::EMPTY;
    let q = parsed.icmp.quote_offset as usize;
    let v6 = parsed.family() == IpFamily::V6;
    if q == 0 {
        let layer = if v6 { Layer::Icmpv6 } else { Layer::Icmpv4 };
        return Err(err(
            layer,
            ParseErrorKind::Truncated,
            parsed.l4_offset,
            1,
            0,
        ));
    }
    if q > MAX_HEADER_OFFSET {
        return Err(too_deep(Layer::Ipv4, q));
    }
    let t = &mut out.tuple;
    let l4;
    if v6 {
        let ip: Ipv6Header = pkt
            .load(q)
            .ok_or_else(|| truncated(pkt, Layer::Ipv6, q, Ipv6Header::LEN))?;
        if ip.version() != 6 {
            return Err(err(
                Layer::Ipv6,
                ParseErrorKind::BadVersion,
                q,
                6,
                ip.version() as usize,
            ));
        }
        let mut w = V6Walk {
            next_header: ip.next_header,
            offset: q + Ipv6Header::LEN,
            fragment: Fragment::None,
            dest_opts: 0,
        };
        walk_ipv6_ext(pkt, &mut w, pkt.len())?;
        t.src = ip.src;
        t.dst = ip.dst;
        t.proto = w.next_header;
        t.family = IpFamily::V6 as u8;
        if w.fragment == Fragment::Later {
            return Ok(());
        }
        l4 = w.offset;
    } else {
        let ip: Ipv4Header = pkt
            .load(q)
            .ok_or_else(|| truncated(pkt, Layer::Ipv4, q, Ipv4Header::LEN))?;
        if ip.version() != 4 {
            return Err(err(
                Layer::Ipv4,
                ParseErrorKind::BadVersion,
                q,
                4,
                ip.version() as usize,
            ));
        }
        let ihl = ip.ihl() as usize;
        if ihl < 5 {
            return Err(err(Layer::Ipv4, ParseErrorKind::BadHeaderLength, q, 5, ihl));
        }
        t.src = v4_addr(ip.src);
        t.dst = v4_addr(ip.dst);
        t.proto = ip.proto;
        t.family = IpFamily::V4 as u8;
        if ip.frag_off.get() & Ipv4Header::OFFSET_MASK != 0 {
            return Ok(());
        }
        l4 = q + ihl * 4;
    }
    if l4 > MAX_HEADER_OFFSET {
        return Err(too_deep(Layer::Tcp, l4));
    }
    match L4Proto::from_u8(t.proto) {
        Some(proto @ (L4Proto::Tcp | L4Proto::Udp)) => {
            let layer = if proto == L4Proto::Tcp {
                Layer::Tcp
            } else {
                Layer::Udp
            };
            let ports: [u8; 4] = pkt.load(l4).ok_or_else(|| truncated(pkt, layer, l4, 4))?;
            t.src_port = u16::from_be_bytes([ports[0], ports[1]]);
            t.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
        }
        Some(proto @ (L4Proto::Icmp | L4Proto::Icmpv6)) => {
            let layer = if proto == L4Proto::Icmpv6 {
                Layer::Icmpv6
            } else {
                Layer::Icmpv4
            };
            let h: [u8; 6] = pkt.load(l4).ok_or_else(|| truncated(pkt, layer, l4, 6))?;
            if matches!(h[0], 0 | 8 | 128 | 129) {
                let id = u16::from_be_bytes([h[4], h[5]]);
                t.src_port = id;
                t.dst_port = id;
            }
        }
        None => {}
    }
    out.l4_offset = l4;
    Ok(())
}

/// The folded one's-complement sum of the IPv4 header `ip` (its fixed 20 bytes, already read)
/// and of its options (`len` - 20 bytes at `l3` + 20), its checksum included: 0xffff for a
/// right header. The fixed part is summed from the copy, without touching the packet again;
/// the options, rare, in [`ipv4_options_sum`]. 0 if the options are not all there (the caller
/// checked that they are).
#[inline(always)]
fn ipv4_header_sum<P: PacketAccess + ?Sized>(
    pkt: &P,
    ip: &Ipv4Header,
    l3: usize,
    len: usize,
) -> u16 {
    let h = ip.version_ihl;
    let mut sum = u32::from(u16::from_be_bytes([h, ip.tos]))
        + u32::from(ip.total_len.get())
        + u32::from(ip.id.get())
        + u32::from(ip.frag_off.get())
        + u32::from(u16::from_be_bytes([ip.ttl, ip.proto]))
        + u32::from(ip.check.get())
        + u32::from(u16::from_be_bytes([ip.src[0], ip.src[1]]))
        + u32::from(u16::from_be_bytes([ip.src[2], ip.src[3]]))
        + u32::from(u16::from_be_bytes([ip.dst[0], ip.dst[1]]))
        + u32::from(u16::from_be_bytes([ip.dst[2], ip.dst[3]]));
    if len > Ipv4Header::LEN {
        match ipv4_options_sum(pkt, l3 + Ipv4Header::LEN, len - Ipv4Header::LEN) {
            Some(o) => sum += o,
            None => return 0,
        }
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The sum of `len` bytes of IPv4 options (at most 40, a multiple of 4) at `at`, four bytes a
/// step. Not inlined: a BPF subprogram of its own, so that the kernel's verifier walks its loop
/// once per call, not through the rest of the parser.
#[inline(never)]
fn ipv4_options_sum<P: PacketAccess + ?Sized>(pkt: &P, at: usize, len: usize) -> Option<u32> {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 10 && i * 4 < len {
        let [a, b, c, d] = pkt.load::<[u8; 4]>(at + i * 4)?;
        sum += u32::from(u16::from_be_bytes([a, b])) + u32::from(u16::from_be_bytes([c, d]));
        i += 1;
    }
    Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{tcp_v4_frame, udp_v4_frame};
    use crate::wire::{SlicePacket, TcpFlags};

    #[test]
    fn parses_tcp_and_udp() {
        let mut f = tcp_v4_frame([1, 2, 3, 4], 1000, [5, 6, 7, 8], 80, TcpFlags::SYN, b"hi");
        let p = parse(&SlicePacket::new(&mut f)).unwrap();
        assert_eq!(
            (p.tuple.src_port, p.tuple.dst_port, p.tcp_flags),
            (1000, 80, TcpFlags::SYN)
        );
        assert_eq!(p.l4_offset, 34);
        let mut f = udp_v4_frame([1, 2, 3, 4], 53000, [5, 6, 7, 8], 53, b"q");
        let p = parse(&SlicePacket::new(&mut f)).unwrap();
        assert_eq!((p.tuple.proto, p.tuple.dst_port), (17, 53));
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let full = tcp_v4_frame([1, 2, 3, 4], 1000, [5, 6, 7, 8], 80, TcpFlags::ACK, b"");
        for cut in 0..full.len() {
            let mut f = full[..cut].to_vec();
            let e = parse(&SlicePacket::new(&mut f)).unwrap_err();
            assert_eq!(e.kind, ParseErrorKind::Truncated, "cut at {cut}: {e:?}");
            assert_eq!(e.disposition(), Disposition::Drop(DropReason::Truncated));
        }
    }

    #[test]
    fn ihl_is_honoured_and_bad_values_named() {
        let mut f = tcp_v4_frame([1, 2, 3, 4], 1, [5, 6, 7, 8], 2, 0, b"");
        f[14] = 0x44;
        let e = parse(&SlicePacket::new(&mut f)).unwrap_err();
        assert_eq!(
            (e.layer, e.kind, e.found, e.required),
            (Layer::Ipv4, ParseErrorKind::BadHeaderLength, 4, 5)
        );
        f[14] = 0x65;
        assert_eq!(
            parse(&SlicePacket::new(&mut f)).unwrap_err().kind,
            ParseErrorKind::BadVersion
        );
    }

    #[test]
    fn non_ip_passes() {
        let mut f = tcp_v4_frame([1, 2, 3, 4], 1, [5, 6, 7, 8], 2, 0, b"");
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let e = parse(&SlicePacket::new(&mut f)).unwrap_err();
        assert_eq!(e.disposition(), Disposition::Pass(Counter::PassNotIp));
    }
}
