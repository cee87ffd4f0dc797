//! ns per carrier operation the datapath pipeline runs, on a 64-byte-class inner frame:
//! VXLAN encapsulation with the outer checksum derived from the inner one
//! ([`vxlan_encap_offloaded`]) and decapsulation of an already parsed packet
//! ([`vxlan_decap_parsed`]), over IPv4 and IPv6 underlays (the flow's family, as the pipeline
//! chooses it); the DSR carriers' insertion and extraction.
#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented function"
)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use lb_api::checksum;
use lb_api::wire::testing::{tcp_v4_frame, tcp_v6_frame};
use lb_api::wire::{parse, Parsed, SlicePacket};
use lb_encap::dsr::{dsr_extract, dsr_v4_insert, dsr_v6_insert, DsrTarget};
use lb_encap::{
    vxlan_decap_parsed, vxlan_encap_offloaded, HeadroomPacket, InnerChecksum, OuterAddrs,
    VxlanConfig, VXLAN_PORT,
};

const HEADROOM: usize = 128;
const V6_CLIENT: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_BACKEND: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2];

fn parsed(frame: &[u8]) -> Parsed {
    parse(&SlicePacket::new(&mut frame.to_vec())).unwrap()
}

/// What the pipeline hands [`vxlan_encap_offloaded`]: where the inner transport segment is,
/// and the sum of its pseudo-header.
fn inner_checksum(frame: &[u8], p: &Parsed) -> InnerChecksum {
    let ip_end = p.l3_offset + usize::from(p.ip_len);
    let len = (ip_end - p.l4_offset) as u32;
    let t = &p.tuple;
    let pseudo = if t.family == 6 {
        checksum::pseudo_sum_v6(&t.src, &t.dst, t.proto, len)
    } else {
        let (s, d) = (&frame[p.l3_offset + 12..], &frame[p.l3_offset + 16..]);
        checksum::pseudo_sum_v4(
            [s[0], s[1], s[2], s[3]],
            [d[0], d[1], d[2], d[3]],
            t.proto,
            len as u16,
        )
    };
    InnerChecksum::new(p.l4_offset, ip_end, pseudo)
}

fn vxlan(c: &mut Criterion) {
    let payload = [0u8; 10];
    for (name, inner, outer) in [
        (
            "ipv4_outer",
            tcp_v4_frame([10, 0, 0, 1], 40000, [10, 96, 0, 10], 80, 0x10, &payload),
            OuterAddrs::V4 {
                src: [192, 168, 1, 1],
                dst: [192, 168, 1, 2],
            },
        ),
        (
            "ipv6_outer",
            tcp_v6_frame(V6_CLIENT, 40000, V6_BACKEND, 80, 0x10, &payload),
            OuterAddrs::V6 {
                src: [0xfd; 16],
                dst: [0xfe; 16],
            },
        ),
    ] {
        let cfg = VxlanConfig::new(42, outer, [2; 6], [4; 6]);
        let ck = inner_checksum(&inner, &parsed(&inner));
        let mut g = c.benchmark_group(format!("vxlan_{name}"));
        let mut buf = vec![0u8; HEADROOM + inner.len()];
        g.bench_function("encap_offloaded", |b| {
            b.iter(|| {
                buf[HEADROOM..].copy_from_slice(&inner);
                let mut p = HeadroomPacket::new(&mut buf, HEADROOM, inner.len()).unwrap();
                vxlan_encap_offloaded(&mut p, black_box(&cfg), 7, black_box(&ck)).unwrap();
            });
        });
        buf[HEADROOM..].copy_from_slice(&inner);
        let mut p = HeadroomPacket::new(&mut buf, HEADROOM, inner.len()).unwrap();
        vxlan_encap_offloaded(&mut p, &cfg, 7, &ck).unwrap();
        let encapped = p.bytes().to_vec();
        // The pipeline parses a packet once, before any path: decapsulation gets the result.
        let outer = parsed(&encapped);
        let mut work = encapped.clone();
        g.bench_function("decap_parsed", |b| {
            b.iter(|| {
                work.copy_from_slice(&encapped);
                let n = work.len();
                let mut p = HeadroomPacket::new(&mut work, 0, n).unwrap();
                black_box(vxlan_decap_parsed(
                    &mut p,
                    black_box(&outer),
                    VXLAN_PORT,
                    Some(42),
                ))
                .unwrap();
            });
        });
        let mut check = encapped.clone();
        let n = check.len();
        let mut p = HeadroomPacket::new(&mut check, 0, n).unwrap();
        vxlan_decap_parsed(&mut p, &outer, VXLAN_PORT, Some(42)).unwrap();
        assert_eq!(
            p.bytes(),
            &inner[..],
            "decapsulation restores the inner frame"
        );
        g.finish();
    }
}

fn dsr(c: &mut Criterion) {
    let payload = [0u8; 10];
    let mut g = c.benchmark_group("dsr");
    for (name, frame, target) in [
        (
            "ipv4",
            tcp_v4_frame([10, 0, 0, 1], 40000, [10, 1, 0, 2], 8080, 0x10, &payload),
            DsrTarget::v4([10, 96, 0, 10], 80),
        ),
        (
            "ipv6",
            tcp_v6_frame(V6_CLIENT, 40000, V6_BACKEND, 8080, 0x10, &payload),
            DsrTarget::v6([0xfd; 16], 80),
        ),
    ] {
        let p0 = parsed(&frame);
        let insert = |p: &mut HeadroomPacket<'_>| {
            if target.family == lb_api::IpFamily::V6 {
                dsr_v6_insert(p, black_box(&p0), black_box(&target), 1500)
            } else {
                dsr_v4_insert(p, black_box(&p0), black_box(&target), 1500)
            }
        };
        let mut buf = vec![0u8; HEADROOM + frame.len()];
        g.bench_function(format!("{name}_insert"), |b| {
            b.iter(|| {
                buf[HEADROOM..].copy_from_slice(&frame);
                let mut p = HeadroomPacket::new(&mut buf, HEADROOM, frame.len()).unwrap();
                insert(&mut p).unwrap();
            });
        });
        buf[HEADROOM..].copy_from_slice(&frame);
        let mut p = HeadroomPacket::new(&mut buf, HEADROOM, frame.len()).unwrap();
        insert(&mut p).unwrap();
        let carried = p.bytes().to_vec();
        let on_backend = parsed(&carried);
        let mut work = carried.clone();
        let pkt = SlicePacket::new(&mut work);
        assert_eq!(dsr_extract(&pkt, &on_backend), Some(target));
        g.bench_function(format!("{name}_extract"), |b| {
            b.iter(|| black_box(dsr_extract(black_box(&pkt), black_box(&on_backend))));
        });
    }
    g.finish();
}

criterion_group!(benches, vxlan, dsr);
criterion_main!(benches);
