//! The parser on hand-built frames: truncation, IHL, non-IP.

use super::*;
use crate::counters::{Counter, DropReason};
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
