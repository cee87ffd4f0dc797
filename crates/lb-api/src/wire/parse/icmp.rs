//! The ICMP part of the parser, and the datagram an ICMP error quotes ([`QuotedDatagram`]).

use super::error::{err, too_deep, truncated, Layer, ParseError, ParseErrorKind};
use super::ipv6::{walk_ipv6_ext, V6Walk};
use super::parsed::{Fragment, Parsed};
use super::{icmpv4_is_error, icmpv6_is_error};
use crate::flow::{v4_addr, FlowTuple, IpFamily, L4Proto};
use crate::wire::headers::{IcmpHeader, Ipv4Header, Ipv6Header};
use crate::wire::{PacketAccess, MAX_HEADER_OFFSET};

/// The ICMP part of [`parse_into`](super::parse_into) (a BPF subprogram of its own, as
/// [`parse_ipv6`](super::ipv6::parse_ipv6)).
#[cfg_attr(target_arch = "bpf", inline(never))]
#[cfg_attr(not(target_arch = "bpf"), inline(always))]
pub(super) fn parse_icmp<P: PacketAccess + ?Sized>(
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
/// starts (what a translation of the quote needs besides
/// [`IcmpInfo::quote_offset`](super::IcmpInfo::quote_offset)).
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
