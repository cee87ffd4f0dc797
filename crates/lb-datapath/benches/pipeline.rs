//! ns per packet of the userspace engine on each pipeline path, beside etherparse's
//! `SlicedPacket` on the same frame (the cost of merely parsing with a mainstream parser).
//!
//! `cargo bench -p lb-datapath --bench pipeline`

#![expect(missing_docs, reason = "criterion_group! generates undocumented items")]

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use lb_api::flow::L4Proto;
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::{parse, SlicePacket, TcpFlags};
use lb_control::ServiceSpec;
use lb_datapath::engine::Engine;

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const VIP: [u8; 4] = [10, 96, 0, 10];

fn engine(flows: u16) -> Engine {
    let mut e = Engine::new(1 << 20);
    e.upsert_service(&ServiceSpec {
        id: 1,
        frontend: "10.96.0.10:80".parse().unwrap(),
        proto: L4Proto::Tcp,
        backends: (2..10)
            .map(|i| format!("10.1.0.{i}:8080").parse().unwrap())
            .collect(),
        ..Default::default()
    })
    .unwrap();
    // Background flows so lookups hit a populated table.
    for p in 0..flows {
        let mut f = tcp_v4_frame(
            [10, 0, 1, (p % 250) as u8],
            1024 + p,
            VIP,
            80,
            TcpFlags::SYN,
            b"",
        );
        e.process(&mut f);
    }
    e
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    let ack = tcp_v4_frame(CLIENT, 40000, VIP, 80, TcpFlags::ACK, b"");

    g.bench_function("etherparse SlicedPacket (parse only, reference)", |b| {
        b.iter(|| black_box(etherparse::SlicedPacket::from_ethernet(black_box(&ack)).is_ok()));
    });
    g.bench_function("lb parse only", |b| {
        let mut f = ack.clone();
        b.iter(|| black_box(parse(&SlicePacket::new(black_box(&mut f))).is_ok()));
    });

    let mut e = engine(10_000);
    let mut syn = tcp_v4_frame(CLIENT, 40000, VIP, 80, TcpFlags::SYN, b"");
    e.process(&mut syn);
    g.bench_function("established flow (10k flows in table)", |b| {
        b.iter_batched_ref(
            || ack.clone(),
            |f| black_box(e.process(f)),
            BatchSize::SmallInput,
        );
    });
    let be = {
        let mut f = ack.clone();
        e.process(&mut f);
        [f[30], f[31], f[32], f[33]]
    };
    let reply = tcp_v4_frame(be, 8080, CLIENT, 40000, TcpFlags::ACK, b"");
    g.bench_function("reply (10k flows in table)", |b| {
        b.iter_batched_ref(
            || reply.clone(),
            |f| black_box(e.process(f)),
            BatchSize::SmallInput,
        );
    });
    let other = tcp_v4_frame(CLIENT, 40000, [10, 2, 0, 1], 80, TcpFlags::ACK, b"");
    g.bench_function("not a service", |b| {
        b.iter_batched_ref(
            || other.clone(),
            |f| black_box(e.process(f)),
            BatchSize::SmallInput,
        );
    });
    let mut port = 0u16;
    let mut e2 = engine(0);
    g.bench_function("new flow", |b| {
        b.iter_batched_ref(
            || {
                port = port.wrapping_add(1);
                tcp_v4_frame(
                    [10, 9, (port >> 8) as u8, port as u8],
                    5000,
                    VIP,
                    80,
                    TcpFlags::SYN,
                    b"",
                )
            },
            |f| black_box(e2.process(f)),
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
