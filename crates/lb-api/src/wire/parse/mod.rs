//! The defensive parser: Ethernet (up to two VLAN tags) → IPv4 (options via IHL) or IPv6 (a
//! bounded walk over extension headers) → TCP, UDP, ICMPv4 or ICMPv6, through [`PacketAccess`].
//!
//! Every loop has a fixed bound and every offset is checked against [`MAX_HEADER_OFFSET`] here,
//! not only inside the kernel's `load`, so that both worlds give the same answer for the same
//! bytes and the verifier can track every variable offset.

use super::headers::{
    EthernetHeader, Ipv4Header, Ipv6Header, TcpFlags, TcpHeader, UdpHeader, VlanHeader,
};
use super::{PacketAccess, ETH_P_IPV4, ETH_P_IPV6, MAX_HEADER_OFFSET};
use crate::flow::{v4_addr, IpFamily, L4Proto};
use error::err;
use error::too_deep;
use error::truncated;
use icmp::parse_icmp;
use ipv4::ipv4_header_sum;
use ipv6::parse_ipv6;

mod error;
mod icmp;
mod ipv4;
mod ipv6;
mod parsed;

pub use error::{Disposition, Layer, ParseError, ParseErrorKind};
pub use icmp::{quoted_into, quoted_tuple, QuotedDatagram};
pub use parsed::{Fragment, IcmpInfo, Parsed};

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

#[cfg(test)]
mod tests;
