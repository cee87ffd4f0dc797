//! Frame builders for tests, examples and benchmarks (userspace only).
//!
//! They emit complete Ethernet/IPv4 and Ethernet/IPv6 frames with correct IPv4 and L4 checksums, computed from
//! scratch (not incrementally), so they serve as an independent reference for the rewrite code.

#![cfg_attr(
    not(test),
    expect(
        clippy::indexing_slicing,
        reason = "test frame builders index fixed-size buffers they just built"
    )
)]

use std::vec::Vec;

use crate::checksum;

/// MAC address the builders put in the Ethernet source field.
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// MAC address the builders put in the Ethernet destination field.
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn ipv4_frame(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + l4.len());
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + l4.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = checksum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    f
}

/// A TCP segment (no options) with a zero checksum field.
fn tcp_segment(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20 + payload.len());
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&1000u32.to_be_bytes());
    tcp.extend_from_slice(&(if flags & 0x10 != 0 { 2000u32 } else { 0 }).to_be_bytes());
    tcp.push(5 << 4);
    tcp.push(flags);
    tcp.extend_from_slice(&64240u16.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    tcp.extend_from_slice(payload);
    tcp
}

/// A UDP datagram with a zero checksum field.
fn udp_datagram(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    udp
}

/// Stores a computed UDP checksum; a computed zero is sent as `0xffff` (zero means "none").
fn set_udp_check(udp: &mut [u8], c: u16) {
    let c = if c == 0 { 0xffff } else { c };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
}

/// An Ethernet/IPv4/TCP frame (no TCP options) with valid checksums.
#[must_use]
pub fn tcp_v4_frame(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut tcp = tcp_segment(sport, dport, flags, payload);
    let c = checksum::l4_checksum_v4(src, dst, 6, &tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    ipv4_frame(src, dst, 6, &tcp)
}

/// [`tcp_v4_frame`] with sequence number `seq` (the builders use 1000).
#[must_use]
pub fn tcp_v4_frame_seq(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    flags: u8,
    seq: u32,
) -> Vec<u8> {
    let mut tcp = tcp_segment(sport, dport, flags, b"");
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    let c = checksum::l4_checksum_v4(src, dst, 6, &tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    ipv4_frame(src, dst, 6, &tcp)
}

/// An Ethernet/IPv4/UDP frame with a valid checksum.
#[must_use]
pub fn udp_v4_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = udp_datagram(sport, dport, payload);
    let c = checksum::l4_checksum_v4(src, dst, 17, &udp);
    set_udp_check(&mut udp, c);
    ipv4_frame(src, dst, 17, &udp)
}

fn ipv6_frame(src: [u8; 16], dst: [u8; 16], next_header: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + l4.len());
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.push(next_header);
    f.push(64);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(l4);
    f
}

/// An Ethernet/IPv6/TCP frame (no extension headers, no TCP options) with a valid checksum.
#[must_use]
pub fn tcp_v6_frame(
    src: [u8; 16],
    sport: u16,
    dst: [u8; 16],
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut tcp = tcp_segment(sport, dport, flags, payload);
    let c = checksum::l4_checksum_v6(&src, &dst, 6, &tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    ipv6_frame(src, dst, 6, &tcp)
}

/// An Ethernet/IPv6/UDP frame with a valid (never zero) checksum.
#[must_use]
pub fn udp_v6_frame(
    src: [u8; 16],
    sport: u16,
    dst: [u8; 16],
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut udp = udp_datagram(sport, dport, payload);
    let c = checksum::l4_checksum_v6(&src, &dst, 17, &udp);
    set_udp_check(&mut udp, c);
    ipv6_frame(src, dst, 17, &udp)
}

/// An Ethernet/IPv4 frame carrying `payload` as protocol `proto` (ICMP, GRE, ...), unchanged.
#[must_use]
pub fn ip_v4_frame(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_frame(src, dst, proto, payload)
}

/// An Ethernet/IPv4/ICMP error frame: type `ty`, code `code`, the 4 bytes after the checksum
/// (`rest`: unused, or the next-hop MTU of "fragmentation needed"), then `quote` (the offending
/// IP datagram, usually cut short), with the ICMP and IPv4 checksums computed from scratch.
#[must_use]
pub fn icmp_v4_error_frame(
    src: [u8; 4],
    dst: [u8; 4],
    ty: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(8 + quote.len());
    icmp.extend_from_slice(&[ty, code, 0, 0]);
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quote);
    let c = checksum::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4_frame(src, dst, 1, &icmp)
}

/// An Ethernet/IPv6/ICMPv6 error frame (as [`icmp_v4_error_frame`]; `rest` holds the MTU of
/// "packet too big"), with the ICMPv6 checksum over the pseudo-header computed from scratch.
#[must_use]
pub fn icmp_v6_error_frame(
    src: [u8; 16],
    dst: [u8; 16],
    ty: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(8 + quote.len());
    icmp.extend_from_slice(&[ty, code, 0, 0]);
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quote);
    let c = checksum::l4_checksum_v6(&src, &dst, 58, &icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv6_frame(src, dst, 58, &icmp)
}

/// Recomputes the IPv4 header checksum of an untagged Ethernet/IPv4 frame after a test changed
/// a header field (flags, lengths, addresses): the parser drops a header whose checksum is
/// wrong, before any other field counts.
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[24] = 0;
    frame[25] = 0;
    let c = checksum::checksum(&frame[14..14 + ihl]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

/// Where the TCP/UDP checksum of `frame` is and where its transport segment starts and ends:
/// `(l4_offset, checksum_offset, segment_end)`. `None` if the frame does not parse as TCP/UDP.
fn l4_segment(frame: &[u8]) -> Option<(usize, usize, usize)> {
    let mut copy = frame.to_vec();
    let p = super::parse(&super::SlicePacket::new(&mut copy)).ok()?;
    let check = match p.tuple.proto {
        6 => 16,
        17 => 6,
        _ => return None,
    };
    Some((
        p.l4_offset,
        p.l4_offset + check,
        p.l3_offset + usize::from(p.ip_len),
    ))
}

/// Turns the complete TCP/UDP checksum of `frame` into the seed a local sender with checksum
/// offload leaves (`CHECKSUM_PARTIAL`; Linux writes `~tcp_v4_check(len, saddr, daddr, 0)`):
/// the folded pseudo-header sum. Frames that are not TCP/UDP are left alone.
pub fn make_checksum_partial(frame: &mut [u8]) {
    let mut copy = frame.to_vec();
    let Ok(p) = super::parse(&super::SlicePacket::new(&mut copy)) else {
        return;
    };
    let Some((l4, at, end)) = l4_segment(frame) else {
        return;
    };
    let len = (end - l4) as u32;
    let pseudo = if p.tuple.family == crate::IpFamily::V6 as u8 {
        checksum::pseudo_sum_v6(&p.tuple.src, &p.tuple.dst, p.tuple.proto, len)
    } else {
        let v4 = |a: &[u8; 16]| [a[0], a[1], a[2], a[3]];
        checksum::pseudo_sum_v4(
            v4(&p.tuple.src),
            v4(&p.tuple.dst),
            p.tuple.proto,
            len as u16,
        )
    };
    let seed = !checksum::finish(pseudo);
    frame[at..at + 2].copy_from_slice(&seed.to_be_bytes());
}

/// Completes the partial TCP/UDP checksum of `frame` as a device without checksum offload (or
/// `skb_checksum_help`) does when the packet leaves: the sum of the transport segment, the seed
/// in its field included, complemented. Frames that are not TCP/UDP are left alone.
pub fn complete_partial_checksum(frame: &mut [u8]) {
    let Some((l4, at, end)) = l4_segment(frame) else {
        return;
    };
    let c = checksum::finish(checksum::sum(&frame[l4..end], 0));
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}
