//! Conntrack GC racing packets that refresh the flows it sweeps, in the kernel: lost flows
//! counted, for the sweep whose delete step runs in the kernel (`lb_ct_sweep`, the production
//! sweep) and for the sweep by syscalls it replaced (`conntrack_gc_by_syscalls`).
//!
//! Two loaders share the maps (pinned): one sends packets (`BPF_PROG_TEST_RUN`), the other
//! sweeps, each on its own thread. Every round opens `FLOWS` flows at `T0` (SYN_SENT: 120 s),
//! then sweeps at `T0 + 120 s` — every entry the scan sees is expired — while packets at
//! `T0 + 60 s` refresh the flows (to `T0 + 180 s`), pass after pass until the sweep ends. A
//! flow a packet has been seen to hold (its entry looked up after the packet) is alive at the
//! sweep's time: if its entry later disappears or is replaced by a new flow's, the sweep deleted
//! a live flow — a lost flow. Deleting a flow before any packet of the round reached it is the
//! sweep's job, not a loss (the next packet opens it again).
//!
//! The figures (`cargo test -p lb-bpf --test gc_race -- --nocapture`) are in
//! `crates/lb-conntrack/README.md`. The in-kernel sweep must lose none; the syscall sweep's
//! losses depend on scheduling and are reported, not asserted.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lb_api::abi::{CtEntry, CtKey, CtKind, DatapathConfig};
use lb_api::flow::{v4_addr, L4Proto};
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_bpf::{KernelDatapath, Program};
use lb_conntrack::{ConntrackGc, GcConfig};
use lb_control::ServiceSpec;

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_000 * SEC;
const FLOWS: u16 = 16;
const ROUNDS: usize = 300;
const CLIENT: [u8; 4] = [10, 0, 0, 1];
const VIP: [u8; 4] = [10, 96, 0, 10];
/// Bounds on a round's packet passes (the sweep normally ends long before).
const MAX_PASSES: usize = 10_000;
const MAX_ROUND: Duration = Duration::from_secs(20);

/// The pin directory, uninstalled on every exit path.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = KernelDatapath::uninstall(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn key(port: u16) -> CtKey {
    let t = lb_api::flow::FlowTuple {
        src: v4_addr(CLIENT),
        dst: v4_addr(VIP),
        src_port: port,
        dst_port: 80,
        proto: L4Proto::Tcp as u8,
        family: 4,
    };
    CtKey::new(&t, CtKind::Service)
}

fn set_now(dp: &mut KernelDatapath, now: u64) {
    dp.set_config(&DatapathConfig {
        fixed_now_ns: now,
        ..lb_control::default_config(0)
    })
    .unwrap();
}

fn syn(dp: &KernelDatapath, port: u16) {
    let f = tcp_v4_frame(CLIENT, port, VIP, 80, TcpFlags::SYN, b"");
    assert_eq!(
        dp.test_run(Program::Xdp, &f, 1).unwrap().verdict,
        Verdict::Pass
    );
}

/// What the rounds of one sweep kind came to.
#[derive(Debug, Default)]
struct Race {
    lost: u64,
    deleted: u64,
    refreshed: u64,
    packets: u64,
}

fn race(in_kernel: bool) -> Race {
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/lb-gc-race-{}-{in_kernel}",
        std::process::id()
    )));
    let mut packets = KernelDatapath::load_pinned(&pins.0).unwrap_or_else(|e| panic!("{e}"));
    let mut sweeper = KernelDatapath::load_pinned(&pins.0).unwrap_or_else(|e| panic!("{e}"));
    packets
        .upsert_service(&ServiceSpec {
            id: 1,
            frontend: "10.96.0.10:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec!["10.1.0.2:8080".parse().unwrap()],
            ..Default::default()
        })
        .unwrap();
    let mut total = Race::default();
    for _ in 0..ROUNDS {
        packets.flush_conntrack().unwrap();
        set_now(&mut packets, T0);
        for i in 0..FLOWS {
            syn(&packets, 40_000 + i);
        }
        set_now(&mut packets, T0 + 60 * SEC);
        // Let the scan get ahead of the packets (about what a dump of the map takes), so that
        // it finds flows expired that packets then refresh during the delete step.
        let started = Instant::now();
        let _ = packets.conntrack_entries().unwrap();
        let head_start = started.elapsed();
        let done = AtomicBool::new(false);
        let (report, (lost, sent)) = std::thread::scope(|s| {
            let sweep = s.spawn(|| {
                let mut gc = ConntrackGc::new(GcConfig::default());
                let r = if in_kernel {
                    sweeper.conntrack_gc(&mut gc, T0 + 120 * SEC)
                } else {
                    sweeper.conntrack_gc_by_syscalls(&mut gc, T0 + 120 * SEC)
                };
                done.store(true, Ordering::SeqCst);
                r.unwrap()
            });
            std::thread::sleep(head_start);
            // The entry each flow was seen to hold after one of this round's packets.
            let mut held: Vec<Option<CtEntry>> = vec![None; usize::from(FLOWS)];
            let mut lost = vec![false; usize::from(FLOWS)];
            let mut sent = 0u64;
            let start = Instant::now();
            // Compares what a flow holds `now` with what a packet was seen to leave it; after a
            // packet (`after_packet`), notes what it holds from then on.
            let mut check = |i: usize,
                             now: Option<CtEntry>,
                             after_packet: bool,
                             held: &mut Vec<Option<CtEntry>>| {
                if let Some(h) = held[i] {
                    if now.is_none_or(|e| e.created_ns != h.created_ns) {
                        lost[i] = true;
                    }
                }
                if after_packet && (held[i].is_none() || lost[i]) {
                    held[i] = now;
                }
            };
            for _ in 0..MAX_PASSES {
                for i in 0..FLOWS {
                    syn(&packets, 40_000 + i);
                    sent += 1;
                    let after = packets.conntrack_entry(&key(40_000 + i)).unwrap();
                    check(usize::from(i), after, true, &mut held);
                }
                if done.load(Ordering::SeqCst) || start.elapsed() > MAX_ROUND {
                    break;
                }
            }
            let report = sweep.join().unwrap();
            // After the sweep: every flow held must still be there, unchanged.
            for i in 0..FLOWS {
                let now = packets.conntrack_entry(&key(40_000 + i)).unwrap();
                check(usize::from(i), now, false, &mut held);
            }
            (report, (lost.iter().filter(|l| **l).count() as u64, sent))
        });
        total.lost += lost;
        total.deleted += report.deleted;
        total.refreshed += report.refreshed;
        total.packets += sent;
    }
    drop(pins);
    total
}

#[test]
fn the_in_kernel_sweep_loses_no_refreshed_flow() {
    if !common::privileged("the_in_kernel_sweep_loses_no_refreshed_flow") {
        return;
    }
    let by_syscalls = race(false);
    eprintln!(
        "by syscalls: {} flows lost in {ROUNDS} rounds of {FLOWS} flows ({} entries deleted, {} kept as refreshed, {} packets)",
        by_syscalls.lost, by_syscalls.deleted, by_syscalls.refreshed, by_syscalls.packets
    );
    let in_kernel = race(true);
    eprintln!(
        "in the kernel: {} flows lost in {ROUNDS} rounds of {FLOWS} flows ({} entries deleted, {} kept as refreshed, {} packets)",
        in_kernel.lost, in_kernel.deleted, in_kernel.refreshed, in_kernel.packets
    );
    assert!(
        in_kernel.refreshed > 0 && in_kernel.deleted > 0,
        "the packets raced the sweep: {in_kernel:?}"
    );
    assert_eq!(in_kernel.lost, 0, "{in_kernel:?}");
}
