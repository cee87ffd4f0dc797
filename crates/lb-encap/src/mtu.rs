//! MTU accounting: when a carrier would exceed the MTU ([`wire_ip_len`] says how long the
//! packet is on the wire), the packet is turned (in place) into an ICMP "fragmentation needed"
//! (IPv4, type 3 code 4) or ICMPv6 "packet too big" (type 2) back to its sender, quoting the
//! packet's start ([`icmp_too_big_parsed`], which the pipeline calls and then counts under
//! `Counter::MtuExceeded`).

use lb_api::checksum;
use lb_api::flow::L4Proto;
use lb_api::wire::{
    parse, EthernetHeader, IcmpHeader, Ipv4Header, Ipv6Header, PacketAccess, Parsed, TcpFlags,
    UdpHeader,
};
use lb_api::IpFamily;
use zerocopy::network_endian::U16;

use crate::tunnel::{AdjustHead, Room};

/// The length of the largest IP packet the packet `p` describes leaves as: its IP length, or,
/// for a GSO packet (`gso_size` non-zero, [`PacketAccess::gso_size`]), the IP length of its
/// segments: its IP and TCP/UDP headers and `gso_size` bytes of payload (all of it when it is
/// shorter). What the MTU is decided by.
#[inline(always)]
#[must_use]
pub fn wire_ip_len(p: &Parsed, gso_size: u16) -> usize {
    let ip_len = usize::from(p.ip_len);
    if gso_size == 0 {
        return ip_len;
    }
    let ip_end = p.l3_offset + ip_len;
    let payload = if p.tuple.proto == L4Proto::Tcp as u8 {
        // The parser's sequence space: the data, and one each for SYN and FIN.
        let syn_fin = u32::from(p.tcp_flags & TcpFlags::SYN != 0)
            + u32::from(p.tcp_flags & TcpFlags::FIN != 0);
        p.tcp_seq_end.wrapping_sub(p.tcp_seq).wrapping_sub(syn_fin) as usize
    } else if p.tuple.proto == L4Proto::Udp as u8 {
        ip_end.saturating_sub(p.l4_offset + UdpHeader::LEN)
    } else {
        return ip_len;
    };
    let headers = ip_len.saturating_sub(payload);
    ip_len.min(headers + usize::from(gso_size))
}

/// The length of the largest frame `pkt` leaves as: its length, or for a GSO packet its
/// first segment's ([`wire_ip_len`]; a GSO packet that does not parse counts whole).
#[must_use]
pub fn frame_on_wire<P: PacketAccess + ?Sized>(pkt: &P) -> usize {
    let gso = pkt.gso_size();
    if gso == 0 {
        return pkt.len();
    }
    match parse(pkt) {
        Ok(p) => p.l3_offset + wire_ip_len(&p, gso),
        Err(_) => pkt.len(),
    }
}

/// Longest quote of the offending packet, IPv4 and IPv6: 128 bytes. A receiver needs the IP
/// header (with options or extension headers) and the first 8 bytes of the transport header to
/// find the socket whose path MTU to lower (RFC 792; Linux reads no more). RFC 1812 and RFC 4443
/// allow up to 548 and 1232 bytes; the bound keeps the checksum loop over the quote short enough
/// for the kernel verifier at every call site, and within the bytes the kernel programs may read
/// (`MAX_HEADER_OFFSET`).
pub const QUOTE_MAX: usize = 128;
/// Longest IPv4 quote (see [`QUOTE_MAX`]).
pub const QUOTE_MAX_V4: usize = QUOTE_MAX;
/// Longest IPv6 quote (see [`QUOTE_MAX`]).
pub const QUOTE_MAX_V6: usize = QUOTE_MAX;

/// Rewrites the IP packet in `pkt` (after its L2 header, which is kept with the MACs swapped)
/// into an ICMP "fragmentation needed" / ICMPv6 "packet too big" with next-hop MTU `mtu`, from
/// `from` (this node; IPv4 in the first 4 bytes) to the packet's source.
///
/// The packet is cut to its L2 header and the quote ([`AdjustHead::truncate`]: at TC that also
/// ends a GSO packet's segmentation), then room for the IP and ICMP headers goes in front of
/// the quote ([`Room::BeforeIp`]).
///
/// Returns `None` if the packet does not parse as IP or the buffer cannot be resized; the packet
/// may then be partly rewritten and must be dropped.
pub fn icmp_too_big<P: AdjustHead + ?Sized>(pkt: &mut P, mtu: u16, from: [u8; 16]) -> Option<()> {
    let p = parse(pkt).ok()?;
    icmp_too_big_parsed(pkt, &p, mtu, &from)
}

/// [`icmp_too_big`] of a packet already parsed into `p` (the datapath's parse result, which
/// lives off the kernel stack).
#[inline(always)]
pub fn icmp_too_big_parsed<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    p: &lb_api::wire::Parsed,
    mtu: u16,
    from: &[u8; 16],
) -> Option<()> {
    let msg = if p.family() == IpFamily::V6 {
        IcmpMessage {
            ty: 2,
            code: 0,
            rest: u32::from(mtu).to_be_bytes(),
        }
    } else {
        let m = mtu.to_be_bytes();
        IcmpMessage {
            ty: 3,
            code: 4,
            rest: [0, 0, m[0], m[1]],
        }
    };
    icmp_error_parsed(pkt, p, &msg, from)
}

/// An ICMP or ICMPv6 error message's type, code and the 4 bytes after its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpMessage {
    /// Type.
    pub ty: u8,
    /// Code.
    pub code: u8,
    /// The header's last 4 bytes (the next-hop MTU of a "too big"; zero for most others).
    pub rest: [u8; 4],
}

/// Rewrites the IP packet in `pkt`, parsed into `p`, into the ICMP (IPv4) or ICMPv6 error `msg`
/// (of the packet's family) from `from` to the packet's source, quoting the packet's first
/// [`QUOTE_MAX`] bytes; the L2 header is kept with its MACs swapped. See [`icmp_too_big`].
///
/// Returns `None` if the buffer cannot be resized; the packet may then be partly rewritten
/// and must be dropped.
///
/// Inlined into its callers: in the kernel, the "too big" path's verification cost depends on
/// the message's type and code being constants there.
#[inline(always)]
pub fn icmp_error_parsed<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    p: &lb_api::wire::Parsed,
    msg: &IcmpMessage,
    from: &[u8; 16],
) -> Option<()> {
    let l3 = p.l3_offset;
    let v6 = p.family() == IpFamily::V6;
    let (ip_len, quote_max) = if v6 {
        (Ipv6Header::LEN, QUOTE_MAX_V6)
    } else {
        (Ipv4Header::LEN, QUOTE_MAX_V4)
    };
    let grow = ip_len + IcmpHeader::LEN;
    let quote = usize::from(p.ip_len).min(quote_max);
    let eth: EthernetHeader = pkt.load(0)?;
    pkt.truncate(l3 + quote)?;
    // The L2 header (with its VLAN tags) stays in front; the addresses are swapped below.
    pkt.insert_room(l3, grow, Room::BeforeIp)?;
    pkt.store(
        0,
        &EthernetHeader {
            dst: eth.src,
            src: eth.dst,
            ether_type: eth.ether_type,
        },
    )?;
    let l4 = l3 + ip_len;
    let icmp_len = IcmpHeader::LEN + quote;
    let to = p.tuple.src;
    let header = IcmpHeader {
        ty: msg.ty,
        code: msg.code,
        check: U16::new(0),
        rest: msg.rest,
    };
    if v6 {
        pkt.store(
            l3,
            &Ipv6Header {
                vtc_flow: [0x60, 0, 0, 0],
                payload_len: U16::new(icmp_len as u16),
                next_header: 58,
                hop_limit: 64,
                src: *from,
                dst: to,
            },
        )?;
        pkt.store(l4, &header)?;
        let pseudo = checksum::pseudo_sum_v6(from, &to, 58, icmp_len as u32);
        let c = icmp_checksum(pkt, p, l4, icmp_len, pseudo)?;
        pkt.store(crate::opaque(l4 + IcmpHeader::CHECK_OFFSET), &U16::new(c))?;
    } else {
        let mut ip = Ipv4Header {
            version_ihl: 0x45,
            tos: 0,
            total_len: U16::new((ip_len + icmp_len) as u16),
            id: U16::new(0),
            frag_off: U16::new(0),
            ttl: 64,
            proto: 1,
            check: U16::new(0),
            src: [from[0], from[1], from[2], from[3]],
            dst: [to[0], to[1], to[2], to[3]],
        };
        ip.check = U16::new(checksum::ipv4_header_checksum(
            zerocopy::IntoBytes::as_bytes(&ip),
        ));
        pkt.store(l3, &ip)?;
        pkt.store(l4, &header)?;
        let c = icmp_checksum(pkt, p, l4, icmp_len, 0)?;
        pkt.store(crate::opaque(l4 + IcmpHeader::CHECK_OFFSET), &U16::new(c))?;
    }
    Some(())
}

/// The checksum of the ICMP message at `l4` (`icmp_len` bytes, its checksum field zero;
/// `pseudo`: the IPv6 pseudo-header sum, 0 for ICMPv4), after setting the quoted TCP/UDP
/// checksum field to the one value that checksum completion leaves as it is.
///
/// Why: a packet whose checksum is partial (a local sender's, with checksum offload: the
/// skb's `CHECKSUM_PARTIAL`, which TC keeps and cannot clear) stays marked so when it is turned
/// into the error, and the mark still points at its transport header, now inside the quote. A
/// device that completes checksums (a NIC without offload, a veth with `tx off`) then sums the
/// quoted transport bytes and writes the result into the quoted field after this node computed
/// the error's checksum: the error would arrive with a wrong checksum, its receiver would drop
/// it, and the sender would never learn its path MTU. Completion writes `!fold(D + F)`, `D` the
/// sum of the other quoted transport bytes and `F` the field; `F = ror1(!fold(D))`
/// (one's-complement halving) is its fixed point, since then `fold(D + 2F) = 0xffff` (a zero
/// result is written as `0xffff`, so `F` is never `0`). The quoted checksum is not one a
/// receiver can check in any case: the quote is cut short of the datagram ([`QUOTE_MAX`]), and
/// receivers match their socket by addresses and ports.
///
/// `D` comes out of the one sum over the message, less the ICMP header and the quoted IP
/// header, which are summed apart as fixed-size headers: no second loop over the quote (the
/// kernel verifier walks every loop at every call site). So the field is set where the quoted
/// IP header has no options or extension headers (IHL 5, IPv6 next header TCP/UDP), the common
/// case; otherwise, and where the quote is too short to hold the field, it is left as it is.
#[inline(always)]
fn icmp_checksum<P: AdjustHead + ?Sized>(
    pkt: &mut P,
    p: &lb_api::wire::Parsed,
    l4: usize,
    icmp_len: usize,
    pseudo: u32,
) -> Option<u16> {
    // The one loop first, with the quoted field as it is: a branch before a loop would make
    // the kernel verifier walk the loop once per branch.
    let all = checksum::sum_packet(pkt, l4, icmp_len, pseudo)?;
    let quote_at = l4 + IcmpHeader::LEN;
    let Some(f) = quoted_checksum_field(p, icmp_len - IcmpHeader::LEN) else {
        return Some(checksum::finish(all));
    };
    let at = crate::opaque(quote_at + f);
    let was: U16 = pkt.load(at)?;
    // The headers in front of the quoted transport bytes (fixed sizes, see above), and the
    // field: what is not `D`.
    let icmp: IcmpHeader = pkt.load(l4)?;
    let mut not_d = checksum::sum(zerocopy::IntoBytes::as_bytes(&icmp), pseudo);
    if p.family() == IpFamily::V6 {
        let ip: Ipv6Header = pkt.load(quote_at)?;
        not_d = checksum::sum(zerocopy::IntoBytes::as_bytes(&ip), not_d);
    } else {
        let ip: Ipv4Header = pkt.load(quote_at)?;
        not_d = checksum::sum(zerocopy::IntoBytes::as_bytes(&ip), not_d);
    }
    not_d += u32::from(was.get());
    // D = all - not_d, in one's-complement arithmetic.
    let d = checksum::finish(u32::from(checksum::finish(all)) + not_d);
    let fixed = match (!d).rotate_right(1) {
        0 => 0xffff,
        f => f,
    };
    pkt.store(at, &U16::new(fixed))?;
    // The message's sum (folded) with `fixed` in place of `was`.
    let folded = !checksum::finish(all);
    Some(checksum::finish(
        u32::from(folded) + u32::from(!was.get()) + u32::from(fixed),
    ))
}

/// Where the quoted TCP/UDP checksum field is, from the quote's start, when
/// [`icmp_checksum`] sets it: the quoted IP header without options or extension headers, and
/// a quote of `quote` bytes that holds the field.
#[inline(always)]
fn quoted_checksum_field(p: &lb_api::wire::Parsed, quote: usize) -> Option<usize> {
    let field = if p.tuple.proto == L4Proto::Tcp as u8 {
        16
    } else if p.tuple.proto == L4Proto::Udp as u8 {
        6
    } else {
        return None;
    };
    let ip_len = if p.family() == IpFamily::V6 {
        Ipv6Header::LEN
    } else {
        Ipv4Header::LEN
    };
    (p.l4_offset == p.l3_offset + ip_len && ip_len + field + 2 <= quote).then_some(ip_len + field)
}
