#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented function"
)]
//! lb-nat benchmarks: backend selection (random, Maglev), Maglev table rebuilds, and the
//! datapath's SNAT schedule ([`claim_port`]) at 50/90/99 % of the port range in use, claiming
//! in the engine's conntrack table as the pipeline does.
//!
//! `cargo bench -p lb-nat`; figures in `docs/nat.md`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use lb_api::abi::{CtEntry, CtKey, CtKind, DatapathConfig};
use lb_api::flow::{v4_addr, FlowTuple};
use lb_conntrack::{ConntrackTable, HashConntrackTable, InsertError, InsertMode};
use lb_control::{maglev_table, MaglevBackend, MAGLEV_DEFAULT_TABLE_SIZE};
use lb_nat::collision::XorShift32;
use lb_nat::maglev::maglev_lookup;
use lb_nat::select_slot;
use lb_nat::snat::{claim_port, Claim, SnatConfig};
use zerocopy::FromZeros;

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

/// The reverse conntrack key of `f` translated to `nat`: what the datapath inserts where absent
/// to claim a port (`dst_port` is the candidate).
fn reverse_key(f: &FlowTuple, nat: [u8; 16]) -> CtKey {
    let reply = FlowTuple {
        src: f.dst,
        src_port: f.dst_port,
        dst: nat,
        dst_port: 0,
        proto: f.proto,
        family: f.family,
    };
    CtKey::new(&reply, CtKind::ReverseNat)
}

/// One port for flow `f` by the datapath's schedule ([`claim_port`] with
/// [`SnatConfig::of_datapath`]'s parameters) over the engine's conntrack table, claiming a port
/// by inserting the reverse entry where absent, as the kernel map's `BPF_NOEXIST` insert does.
/// The port, if one was free.
fn claim(
    t: &mut HashConntrackTable,
    rng: &mut XorShift32,
    cfg: &SnatConfig,
    f: &FlowTuple,
) -> Option<u16> {
    let mut rk = reverse_key(f, NAT);
    let e = CtEntry::default();
    claim_port(
        cfg,
        rng,
        f.src_port,
        |_, c| {
            rk.dst_port = c.port;
            match t.insert(&rk, &e, InsertMode::NoExist) {
                Ok(()) => Claim::Reserved,
                Err(InsertError::Exists) => Claim::Taken,
                Err(_) => Claim::Full,
            }
        },
        |_| None,
    )
    .ok()
    .map(|a| a.port)
}

const NAT: [u8; 16] = v4_addr([192, 168, 0, 1]);

/// The datapath's SNAT schedule at 50/90/99 % of a 10,000-port range in use: one claim plus
/// the removal that restores the utilization.
fn snat(c: &mut Criterion) {
    let mut g = c.benchmark_group("snat_claim_port_10000_ports");
    let mut dp = DatapathConfig::new_zeroed();
    (dp.snat_port_min, dp.snat_port_max) = (20_000, 29_999);
    let cfg = SnatConfig::of_datapath(&dp);
    for pct in [50u32, 90, 99] {
        // Fill the range to `pct` % through the schedule.
        let mut t = HashConntrackTable::with_capacity(40_000);
        let used = 10_000 * pct / 100;
        let mut rng = XorShift32::new(pct);
        let mut n = 0;
        let mut k = 0u32;
        while n < used {
            if claim(&mut t, &mut rng, &cfg, &tuple(k)).is_some() {
                n += 1;
            }
            k += 1;
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
                |f| {
                    if let Some(port) = claim(&mut t, &mut rng, &cfg, &f) {
                        let mut rk = reverse_key(&f, NAT);
                        rk.dst_port = port;
                        t.remove(&rk);
                    }
                },
                BatchSize::SmallInput,
            )
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
    targets = selection, rebuild, snat
}
criterion_main!(benches);
