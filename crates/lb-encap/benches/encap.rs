//! ns per VXLAN encapsulation and decapsulation of a 64-byte inner frame.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use lb_encap::{vxlan_decap, vxlan_encap, HeadroomPacket, OuterAddrs, VxlanConfig};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let inner = lb_api::wire::testing::tcp_v4_frame(
        [10, 0, 0, 1],
        40000,
        [10, 96, 0, 10],
        80,
        0x10,
        &[0; 10],
    );
    for (name, outer) in [
        (
            "ipv4_outer",
            OuterAddrs::V4 {
                src: [192, 168, 1, 1],
                dst: [192, 168, 1, 2],
            },
        ),
        (
            "ipv6_outer",
            OuterAddrs::V6 {
                src: [0xfd; 16],
                dst: [0xfe; 16],
            },
        ),
    ] {
        let cfg = VxlanConfig::new(42, outer, [2; 6], [4; 6]);
        let mut g = c.benchmark_group(format!("vxlan_{name}"));
        let mut buf = vec![0u8; 128 + inner.len()];
        g.bench_function("encap", |b| {
            b.iter(|| {
                buf[128..].copy_from_slice(&inner);
                let mut p = HeadroomPacket::new(&mut buf, 128, inner.len()).unwrap();
                vxlan_encap(&mut p, black_box(&cfg), 7).unwrap();
            });
        });
        let mut p = HeadroomPacket::new(&mut buf, 128, inner.len()).unwrap();
        vxlan_encap(&mut p, &cfg, 7).unwrap();
        let encapped = p.bytes().to_vec();
        let mut work = encapped.clone();
        g.bench_function("decap", |b| {
            b.iter(|| {
                work.copy_from_slice(&encapped);
                let n = work.len();
                let mut p = HeadroomPacket::new(&mut work, 0, n).unwrap();
                black_box(vxlan_decap(&mut p, 4789, Some(42))).unwrap();
            });
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
