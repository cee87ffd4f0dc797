#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented function"
)]
//! lb-nat benchmarks: backend selection (random, Maglev), Maglev table rebuilds, SNAT
//! allocation at 50/90/99 % of the port range in use, and SNAT allocation throughput with 1, 2
//! and 4 threads sharing one table.
//!
//! `cargo bench -p lb-nat`; figures in `docs/nat.md`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lb_api::flow::{v4_addr, FlowTuple};
use lb_control::{maglev_table, MaglevBackend, MAGLEV_DEFAULT_TABLE_SIZE};
use lb_nat::collision::XorShift32;
use lb_nat::maglev::maglev_lookup;
use lb_nat::select_slot;
use lb_nat::snat::{allocate, nat_keys, NatTable, NatValue, SnatConfig};
use lb_nat::snat_table::ShardedNatTable;

fn tuple(i: u32) -> FlowTuple {
    FlowTuple {
        src: v4_addr([10, 0, (i >> 8) as u8, i as u8]),
        dst: v4_addr([10, 96, 0, 10]),
        src_port: 30_000 + (i % 20_000) as u16,
        dst_port: 80,
        proto: 6,
        family: 4,
    }
}

fn backends(n: u32) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| {
            let a: SocketAddr = format!("10.1.{}.{}:8080", i / 250, i % 250 + 1)
                .parse()
                .unwrap();
            MaglevBackend::from_addr(a, 1)
        })
        .collect()
}

fn selection(c: &mut Criterion) {
    let mut g = c.benchmark_group("select");
    let flows: Vec<FlowTuple> = (0..1024).map(tuple).collect();
    let table = maglev_table(&backends(100), MAGLEV_DEFAULT_TABLE_SIZE);
    let mut i = 0usize;
    g.bench_function("random_hash_mod_100", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(select_slot(black_box(&flows[i]), 7, 100))
        })
    });
    g.bench_function("maglev_16381_of_100", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(maglev_lookup(&table, black_box(&flows[i]).hash(7)))
        })
    });
    g.finish();
}

fn rebuild(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev_rebuild_16381");
    g.sample_size(10);
    for n in [100u32, 1000] {
        let b = backends(n);
        g.bench_function(format!("{n}_backends"), |bn| {
            bn.iter(|| black_box(maglev_table(black_box(&b), MAGLEV_DEFAULT_TABLE_SIZE)))
        });
    }
    g.finish();
}

fn snat(c: &mut Criterion) {
    let mut g = c.benchmark_group("snat_allocate_10000_ports");
    let cfg = SnatConfig {
        min: 20_000,
        max: 29_999,
        ..SnatConfig::default()
    };
    let nat = v4_addr([192, 168, 0, 1]);
    for pct in [50u32, 90, 99] {
        // Fill the range to `pct` % through the allocator, then measure one allocation plus the
        // removal that restores the utilization.
        let t = ShardedNatTable::new(40_000);
        let used = 10_000 * pct / 100;
        let mut rng = XorShift32::new(pct);
        let mut n = 0;
        let mut k = 0u32;
        while n < used {
            let f = tuple(k);
            k += 1;
            if allocate(&t, &mut rng, &cfg, &f, nat, None).is_ok() {
                n += 1;
            }
        }
        let mut j = 0u32;
        g.bench_function(format!("{pct}pct_used"), |b| {
            b.iter_batched(
                || {
                    j = j.wrapping_add(1);
                    FlowTuple {
                        src: v4_addr([10, 200, (j >> 8) as u8, j as u8]),
                        ..tuple(0)
                    }
                },
                |f| allocate_and_release(&t, &mut rng, &cfg, &f),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// One allocation and the release that restores the table, for flow `f`.
fn allocate_and_release(
    t: &ShardedNatTable,
    rng: &mut XorShift32,
    cfg: &SnatConfig,
    f: &FlowTuple,
) {
    let nat = v4_addr([192, 168, 0, 1]);
    if let Ok(a) = allocate(t, rng, cfg, f, nat, None) {
        let (fk, rk) = nat_keys(f, nat, a.port);
        let out = NatValue {
            addr: nat,
            port: a.port,
            ..NatValue::default()
        };
        let back = NatValue {
            addr: f.src,
            port: f.src_port,
            ..NatValue::default()
        };
        t.remove_if(&fk, &out);
        t.remove_if(&rk, &back);
    }
}

/// Allocation throughput with threads sharing one table at 50 % use: each thread allocates and
/// releases its own flows (as many CPUs creating connections at once). Elements are
/// allocations; the figure is their total rate.
fn snat_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("snat_allocate_threads_50pct");
    let cfg = SnatConfig {
        min: 20_000,
        max: 29_999,
        ..SnatConfig::default()
    };
    let t = ShardedNatTable::new(40_000);
    let mut rng = XorShift32::new(7);
    let (mut n, mut k) = (0, 0u32);
    while n < 5_000 {
        let f = tuple(k);
        k += 1;
        if allocate(&t, &mut rng, &cfg, &f, v4_addr([192, 168, 0, 1]), None).is_ok() {
            n += 1;
        }
    }
    const PER_THREAD: u32 = 5_000;
    for threads in [1u32, 2, 4] {
        g.throughput(Throughput::Elements(u64::from(threads * PER_THREAD)));
        g.bench_function(format!("{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for it in 0..iters {
                    std::thread::scope(|s| {
                        for th in 0..threads {
                            let (t, cfg) = (&t, &cfg);
                            s.spawn(move || {
                                let mut rng = XorShift32::new(th * 7919 + it as u32 + 1);
                                for i in 0..PER_THREAD {
                                    let f = FlowTuple {
                                        src: v4_addr([10, 100 + th as u8, (i >> 8) as u8, i as u8]),
                                        ..tuple(0)
                                    };
                                    allocate_and_release(t, &mut rng, cfg, &f);
                                }
                            });
                        }
                    });
                }
                start.elapsed()
            });
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = selection, rebuild, snat, snat_threads
}
criterion_main!(benches);
