//! Userspace conntrack table benchmarks: lookup hit/miss and insert at several table sizes, and
//! GC sweep throughput on a 4M-entry table. Results and the command are in the crate README.
//!
//! Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time: on a
//! shared 2-core machine other processes' time slices would otherwise be counted as ours
//! (their cache pollution still is).
#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented function"
)]

use std::cell::RefCell;
use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lb_api::abi::{CtEntry, CtKey, CtKind, CtState};
use lb_api::flow::{v4_addr, FlowTuple};
use lb_conntrack::{
    partner_key, ConntrackGc, ConntrackTable, GcConfig, HashConntrackTable, InsertMode,
};

const NOW: u64 = 1_000_000_000_000;

/// CPU time consumed by this thread so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Criterion measurement: thread CPU time.
struct ThreadCpuTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &Nanoseconds
    }
}

/// Prints values in ns (and throughput in elements/s).
struct Nanoseconds;

impl ValueFormatter for Nanoseconds {
    fn scale_values(&self, _typical: f64, _values: &mut [f64]) -> &'static str {
        "ns"
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let per = match *t {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => n,
        };
        for v in values {
            *v = per as f64 * 1e9 / *v;
        }
        "elem/s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

/// The service key of flow `i` (distinct for every `i < 2^32`).
fn service_key(i: u32) -> CtKey {
    let [a, b, c, d] = i.to_be_bytes();
    let t = FlowTuple {
        src: v4_addr([10, a, b, c]),
        dst: v4_addr([10, 96, 0, 10]),
        src_port: 1024 + u16::from(d),
        dst_port: 80,
        proto: 6,
        family: 4,
    };
    CtKey::new(&t, CtKind::Service)
}

fn entry(expires_ns: u64) -> CtEntry {
    CtEntry {
        created_ns: NOW,
        last_seen_ns: NOW,
        expires_ns,
        state: CtState::Established as u8,
        proto: 6,
        family: 4,
        nat_addr: v4_addr([10, 1, 0, 2]),
        nat_port: 8080,
        ..CtEntry::default()
    }
}

/// Inserts flow `i` as a pair (two entries).
fn insert_pair(t: &mut HashConntrackTable, i: u32, expires_ns: u64) {
    let k = service_key(i);
    let e = entry(expires_ns);
    let rk = partner_key(&k, &e).expect("service key");
    let re = CtEntry {
        nat_addr: k.dst,
        nat_port: k.dst_port,
        ..e
    };
    t.insert(&rk, &re, InsertMode::NoExist).expect("room");
    t.insert(&k, &e, InsertMode::NoExist).expect("room");
}

/// A table holding `entries` entries (`entries / 2` flows), with room for `headroom` more.
fn filled(entries: usize, headroom: usize) -> HashConntrackTable {
    let mut t = HashConntrackTable::with_capacity(entries + headroom);
    for i in 0..(entries / 2) as u32 {
        insert_pair(&mut t, i, u64::MAX);
    }
    t
}

/// A cheap scrambler so lookups do not walk keys in insertion order.
fn scramble(n: u64, i: u64) -> u32 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % n) as u32
}

fn table_ops(c: &mut Criterion<ThreadCpuTime>) {
    let mut g = c.benchmark_group("conntrack_table");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    const CHUNK: usize = 65_536;
    for (label, size) in [
        ("10k", 10_000usize),
        ("100k", 100_000),
        ("1M", 1_000_000),
        ("4M", 4_000_000),
    ] {
        // Filled on first use, so a filtered run builds only the sizes it measures.
        let table = RefCell::new(None);
        let with_table = |f: &mut dyn FnMut(&mut HashConntrackTable)| {
            f(table
                .borrow_mut()
                .get_or_insert_with(|| filled(size, CHUNK)));
        };
        let flows = (size / 2) as u64;
        g.bench_function(BenchmarkId::new("lookup_hit", label), |b| {
            with_table(&mut |t| {
                let mut i = 0u64;
                b.iter(|| {
                    i += 1;
                    // Read the entry too, as the pipeline does after a hit.
                    black_box(
                        t.get_mut(&service_key(scramble(flows, i)))
                            .map(|e| e.expires_ns),
                    )
                });
            });
        });
        // The same random hits, looked up 16 at a time (`get_batch`, a burst of packets as a
        // vector datapath handles them); the time is per key.
        g.bench_function(BenchmarkId::new("lookup_hit_batch16", label), |b| {
            with_table(&mut |t| {
                let mut i = 0u64;
                b.iter_custom(|iters| {
                    // Whole bursts; the time is scaled back to `iters` keys.
                    let batches = iters.div_ceil(16).max(1);
                    let mut out = [None; 16];
                    let start = thread_cpu();
                    for _ in 0..batches {
                        let keys: [lb_api::abi::CtKey; 16] = core::array::from_fn(|_| {
                            i += 1;
                            service_key(scramble(flows, i))
                        });
                        t.get_batch(&keys, &mut out);
                        black_box(out.map(|e| e.map(|e| e.expires_ns)));
                    }
                    let spent = thread_cpu() - start;
                    spent.mul_f64(iters as f64 / (16 * batches) as f64)
                });
            });
        });
        // Hits on 1024 flows of the table (traffic where few flows carry most packets): the
        // table's own cost once the entries are cached.
        g.bench_function(BenchmarkId::new("lookup_hit_hot1024", label), |b| {
            with_table(&mut |t| {
                let mut i = 0u64;
                b.iter(|| {
                    i += 1;
                    black_box(
                        t.get_mut(&service_key(scramble(flows.min(1024), i)))
                            .map(|e| e.expires_ns),
                    )
                });
            });
        });
        g.bench_function(BenchmarkId::new("lookup_miss", label), |b| {
            with_table(&mut |t| {
                let mut i = 0u64;
                b.iter(|| {
                    i += 1;
                    let miss = service_key(u32::MAX - scramble(flows, i));
                    black_box(t.get_mut(&miss).is_some())
                });
            });
        });
        // Inserts of new flows' entries into the table at this size; removal is untimed.
        let mut next = u32::MAX / 2;
        g.bench_function(BenchmarkId::new("insert", label), |b| {
            with_table(&mut |t| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    let mut left = iters;
                    let e = entry(u64::MAX);
                    while left > 0 {
                        let n = left.min(CHUNK as u64) as u32;
                        let first = next;
                        let start = thread_cpu();
                        for k in first..first + n {
                            let _ = black_box(t.insert(&service_key(k), &e, InsertMode::NoExist));
                        }
                        spent += thread_cpu() - start;
                        for k in first..first + n {
                            t.remove(&service_key(k));
                        }
                        next = first.wrapping_add(n) % (u32::MAX / 2) + u32::MAX / 2;
                        left -= u64::from(n);
                    }
                    spent
                });
            });
        });
    }
    g.finish();
}

fn gc_sweep(c: &mut Criterion<ThreadCpuTime>) {
    let mut g = c.benchmark_group("conntrack_gc");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(3));
    const SIZE: usize = 4_000_000;
    // 10 % of the flows expired at sweep time (400k entries deleted per sweep), refilled
    // (untimed) before each sweep.
    let expired_flows = (SIZE / 2 / 10) as u32;
    let live = SIZE / 2 - expired_flows as usize;
    let mut t = HashConntrackTable::with_capacity(SIZE);
    for i in 0..live as u32 {
        insert_pair(&mut t, i, u64::MAX);
    }
    let base = live as u32;
    let mut gc = ConntrackGc::new(GcConfig::default());
    g.bench_function("sweep_4M_10pct_expired", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                for i in base..base + expired_flows {
                    insert_pair(&mut t, i, NOW);
                }
                assert_eq!(t.len(), SIZE);
                let start = thread_cpu();
                let r = gc.run(&mut t, NOW + 1).expect("infallible");
                spent += thread_cpu() - start;
                assert_eq!(r.deleted, u64::from(expired_flows) * 2);
            }
            spent
        });
    });
    for i in base..base + expired_flows {
        insert_pair(&mut t, i, u64::MAX);
    }
    g.bench_function("sweep_4M_none_expired", |b| {
        b.iter(|| black_box(gc.run(&mut t, NOW).expect("infallible")));
    });
    g.finish();
}

/// The machine's floor for a lookup that must touch memory at random: one dependent load per
/// iteration (a pointer chase through a random cycle of cache lines) over buffers the size of
/// a table's slots. A hit costs at least one such load once its table outgrows the caches.
fn random_access_floor(c: &mut Criterion<ThreadCpuTime>) {
    let mut g = c.benchmark_group("memory_floor");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for mib in [4usize, 16, 64] {
        let lines = mib << 20 >> 6;
        // A random cyclic permutation (Sattolo's algorithm), one u64 per 64-byte line.
        let mut next: Vec<[u64; 8]> = vec![[0; 8]; lines];
        let mut order: Vec<usize> = (0..lines).collect();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in (1..lines).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % i as u64) as usize);
        }
        for w in 0..lines {
            next[order[w]][0] = order[(w + 1) % lines] as u64;
        }
        g.bench_function(
            BenchmarkId::new("pointer_chase", format!("{mib}MiB")),
            |b| {
                let mut p = 0usize;
                b.iter(|| {
                    p = next[p][0] as usize;
                    black_box(p)
                });
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = table_ops, gc_sweep, random_access_floor
}
criterion_main!(benches);
