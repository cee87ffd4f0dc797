//! The IPv6 part of the parser: the fixed header and the bounded extension-header walk.

use super::error::{err, too_deep, truncated, Layer, ParseError, ParseErrorKind};
use super::parsed::{Fragment, Parsed};
use super::{is_ipv6_ext, IPV6_DEST_OPTS, IPV6_FRAGMENT, IPV6_HOP_BY_HOP, MAX_IPV6_EXT_HEADERS};
use crate::flow::IpFamily;
use crate::wire::headers::{Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6Header};
use crate::wire::{PacketAccess, MAX_HEADER_OFFSET};

/// Result of the bounded IPv6 extension-header walk.
#[derive(Debug, Clone, Copy)]
pub(super) struct V6Walk {
    pub(super) next_header: u8,
    pub(super) offset: usize,
    pub(super) fragment: Fragment,
    pub(super) dest_opts: u16,
}

/// Follows at most [`MAX_IPV6_EXT_HEADERS`] extension headers from `offset` (just after the
/// fixed header), none of them past `end` (end of the IP payload).
#[inline(always)]
pub(super) fn walk_ipv6_ext<P: PacketAccess + ?Sized>(
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

/// The IPv6 part of [`parse_into`](super::parse_into): fixed header and extension-header walk.
/// Returns the end of the IP payload. A BPF subprogram of its own so its locals do not sit on
/// the pipeline's frame.
#[cfg_attr(target_arch = "bpf", inline(never))]
#[cfg_attr(not(target_arch = "bpf"), inline(always))]
pub(super) fn parse_ipv6<P: PacketAccess + ?Sized>(
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
