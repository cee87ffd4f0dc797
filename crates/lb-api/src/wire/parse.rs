//! The defensive parser: Ethernet → IPv4 → TCP/UDP, through [`PacketAccess`].

use super::headers::{EthernetHeader, Ipv4Header, TcpHeader, UdpHeader};
use super::{PacketAccess, ETH_P_IPV4};
use crate::counters::{Counter, DropReason};
use crate::flow::{v4_addr, FlowTuple, IpFamily, L4Proto};

/// Where in the packet a parse stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// The Ethernet header.
    Ethernet,
    /// The IPv4 header.
    Ipv4,
    /// The TCP header.
    Tcp,
    /// The UDP header.
    Udp,
}

/// What was wrong at that layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// The packet ends before the header does: `required` bytes were needed from `offset`,
    /// `found` were there.
    Truncated,
    /// IPv4 version nibble is not 4 (`found` holds it).
    BadVersion,
    /// IPv4 IHL below 5 words (`found` holds it).
    BadHeaderLength,
    /// IPv4 total length shorter than its own header (`found` holds it, `required` the minimum).
    BadTotalLength,
    /// TCP data offset below 5 words (`found` holds it).
    BadDataOffset,
    /// The EtherType is not one the datapath translates (`found` holds it): not an error of the
    /// packet, the packet is simply not ours.
    NotIp,
    /// An IPv4 fragment: the datapath does not reassemble, it passes fragments to the stack.
    Fragment,
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
            ParseErrorKind::Fragment => Disposition::Pass(Counter::PassFragment),
            ParseErrorKind::Truncated => Disposition::Drop(DropReason::Truncated),
            ParseErrorKind::BadVersion => Disposition::Drop(DropReason::BadIpVersion),
            ParseErrorKind::BadHeaderLength => Disposition::Drop(DropReason::BadIpHeaderLength),
            ParseErrorKind::BadTotalLength => Disposition::Drop(DropReason::BadIpTotalLength),
            ParseErrorKind::BadDataOffset => Disposition::Drop(DropReason::BadTcpHeaderLength),
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

/// Offsets and identity of a parsed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// The packet's 5-tuple (ports zero for protocols without ports).
    pub tuple: FlowTuple,
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// Offset of the transport header.
    pub l4_offset: usize,
    /// TCP flags (zero for other protocols).
    pub tcp_flags: u8,
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

/// Parses Ethernet, IPv4 (options skipped via IHL) and the TCP or UDP header.
///
/// # Errors
/// A [`ParseError`] naming the layer, the problem, the offset, and what was required and found.
/// Use [`ParseError::disposition`] to decide between passing and dropping.
#[inline(always)]
pub fn parse<P: PacketAccess + ?Sized>(pkt: &P) -> Result<Parsed, ParseError> {
    let eth: EthernetHeader = pkt
        .load(0)
        .ok_or_else(|| truncated(pkt, Layer::Ethernet, 0, EthernetHeader::LEN))?;
    let ether_type = eth.ether_type.get();
    if ether_type != ETH_P_IPV4 {
        return Err(err(
            Layer::Ethernet,
            ParseErrorKind::NotIp,
            0,
            ETH_P_IPV4 as usize,
            ether_type as usize,
        ));
    }

    let l3 = EthernetHeader::LEN;
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
    if ip.is_fragment() {
        return Err(err(
            Layer::Ipv4,
            ParseErrorKind::Fragment,
            l3,
            0,
            ip.frag_off.get() as usize,
        ));
    }

    let l4 = l3 + ip_hdr_len;
    let mut tuple = FlowTuple {
        src: v4_addr(ip.src),
        dst: v4_addr(ip.dst),
        src_port: 0,
        dst_port: 0,
        proto: ip.proto,
        family: IpFamily::V4 as u8,
    };
    let mut tcp_flags = 0;
    match L4Proto::from_u8(ip.proto) {
        Some(L4Proto::Tcp) => {
            let tcp: TcpHeader = pkt
                .load(l4)
                .ok_or_else(|| truncated(pkt, Layer::Tcp, l4, TcpHeader::LEN))?;
            let doff = tcp.doff() as usize;
            if doff < 5 {
                return Err(err(Layer::Tcp, ParseErrorKind::BadDataOffset, l4, 5, doff));
            }
            if ip_hdr_len + doff * 4 > total_len {
                return Err(truncated(pkt, Layer::Tcp, l4, doff * 4));
            }
            tuple.src_port = tcp.src_port.get();
            tuple.dst_port = tcp.dst_port.get();
            tcp_flags = tcp.flags;
        }
        Some(L4Proto::Udp) => {
            let udp: UdpHeader = pkt
                .load(l4)
                .ok_or_else(|| truncated(pkt, Layer::Udp, l4, UdpHeader::LEN))?;
            if ip_hdr_len + UdpHeader::LEN > total_len {
                return Err(truncated(pkt, Layer::Udp, l4, UdpHeader::LEN));
            }
            tuple.src_port = udp.src_port.get();
            tuple.dst_port = udp.dst_port.get();
        }
        _ => {}
    }
    Ok(Parsed {
        tuple,
        l3_offset: l3,
        l4_offset: l4,
        tcp_flags,
    })
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
