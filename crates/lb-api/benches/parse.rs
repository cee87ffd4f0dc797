//! ns per packet: our parser vs etherparse's SlicedPacket on the same bytes.
#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented function"
)]

use criterion::{criterion_group, criterion_main, Criterion};
use etherparse::{
    IpHeaders, Ipv6Extensions, Ipv6Header, Ipv6RawExtHeader, PacketBuilder, SlicedPacket,
};
use lb_api::wire::{parse, SlicePacket};
use std::hint::black_box;

fn tcp_v4() -> Vec<u8> {
    // 64-byte frame: 14 + 20 + 20 + 10 bytes of payload.
    lb_api::wire::testing::tcp_v4_frame([10, 0, 0, 1], 40000, [10, 96, 0, 10], 80, 0x10, &[0; 10])
}

fn tcp_v6_ext() -> Vec<u8> {
    let ext = Ipv6Extensions {
        hop_by_hop_options: Some(Ipv6RawExtHeader::new_raw(0.into(), &[1, 4, 0, 0, 0, 0]).unwrap()),
        destination_options: Some(
            Ipv6RawExtHeader::new_raw(0.into(), &[1, 4, 0, 0, 0, 0]).unwrap(),
        ),
        ..Default::default()
    };
    let ip = IpHeaders::Ipv6(
        Ipv6Header {
            hop_limit: 64,
            source: [0xfd; 16],
            destination: [0xfe; 16],
            ..Default::default()
        },
        ext,
    );
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ip(ip)
        .tcp(40000, 80, 1, 1000)
        .write(&mut f, &[0; 10])
        .unwrap();
    f
}

fn vxlan() -> Vec<u8> {
    let inner = tcp_v4();
    let mut f = Vec::new();
    let mut payload = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
    payload.extend_from_slice(&inner);
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([192, 168, 1, 1], [192, 168, 1, 2], 64)
        .udp(50000, 4789)
        .write(&mut f, &payload)
        .unwrap();
    f
}

fn bench(c: &mut Criterion) {
    for (name, frame) in [
        ("tcp_ipv4_64B", tcp_v4()),
        ("tcp_ipv6_hbh_dstopts", tcp_v6_ext()),
        ("vxlan_outer", vxlan()),
    ] {
        let mut g = c.benchmark_group(name);
        let mut buf = frame.clone();
        g.bench_function("lb_api::parse", |b| {
            let pkt = SlicePacket::new(&mut buf);
            b.iter(|| black_box(parse(black_box(&pkt))).is_ok());
        });
        g.bench_function("etherparse::SlicedPacket", |b| {
            b.iter(|| black_box(SlicedPacket::from_ethernet(black_box(&frame))).is_ok());
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
