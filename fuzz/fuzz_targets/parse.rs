//! The parser never panics, and where it and etherparse both accept a frame they agree on the
//! addresses, ports and transport offset.
#![no_main]

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_api::wire::{parse, quoted_tuple, Fragment, SlicePacket};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let pkt = SlicePacket::new(&mut buf);
    let Ok(ours) = parse(&pkt) else { return };
    let _ = quoted_tuple(&pkt, &ours);
    let Ok(theirs) = SlicedPacket::from_ethernet(data) else { return };
    // Only TCP/UDP that is not a fragment is compared (etherparse also walks AH, which we
    // report as the protocol).
    if ours.fragment != Fragment::None || !matches!(ours.tuple.proto, 6 | 17) {
        return;
    }
    match &theirs.net {
        Some(NetSlice::Ipv4(ip)) => {
            assert_eq!(&ours.tuple.src[..4], &ip.header().source()[..]);
            assert_eq!(&ours.tuple.dst[..4], &ip.header().destination()[..]);
        }
        Some(NetSlice::Ipv6(ip)) => {
            assert_eq!(ours.tuple.src, ip.header().source());
            assert_eq!(ours.tuple.dst, ip.header().destination());
        }
        _ => return,
    }
    let (sp, dp, start) = match &theirs.transport {
        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port(), t.slice().as_ptr()),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port(), u.slice().as_ptr()),
        _ => return,
    };
    assert_eq!((ours.tuple.src_port, ours.tuple.dst_port), (sp, dp));
    assert_eq!(ours.l4_offset, start as usize - data.as_ptr() as usize);
});
