//! The conntrack GC task (`KernelDatapath::spawn_conntrack_gc`) against the kernel map: entries
//! inserted with BPF_PROG_TEST_RUN under the config's fixed clock; expired flows vanish, live
//! ones stay; the task stops promptly even in the middle of a long interval.

mod common;

use std::time::{Duration, Instant};

use lb_api::abi::{CtKind, DatapathConfig};
use lb_api::flow::L4Proto;
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_bpf::conntrack_gc::GcTaskStatus;
use lb_bpf::{KernelDatapath, Program};
use lb_conntrack::GcConfig;
use lb_control::ServiceSpec;

const SEC: u64 = 1_000_000_000;
const VIP: [u8; 4] = [10, 96, 0, 10];
/// Generous bounds for a thread on a busy 2-core machine: liveness checks, not performance.
const WAIT: Duration = Duration::from_secs(10);

fn set_now(dp: &mut KernelDatapath, now: u64) {
    dp.set_config(&DatapathConfig {
        fixed_now_ns: now,
        ..lb_control::default_config(0)
    })
    .unwrap();
}

/// A new TCP flow from `client_port` (SYN_SENT: netfilter's 120 s timeout).
fn open_flow(dp: &KernelDatapath, client_port: u16) {
    let syn = tcp_v4_frame([10, 0, 0, 1], client_port, VIP, 80, TcpFlags::SYN, b"");
    assert_eq!(
        dp.test_run(Program::Xdp, &syn, 1).unwrap().verdict,
        Verdict::Pass
    );
}

/// Client ports of the service entries in the kernel map.
fn flows(dp: &KernelDatapath) -> Vec<u16> {
    let mut v: Vec<u16> = dp
        .conntrack_entries()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.kind == CtKind::Service as u8)
        .map(|(k, _)| k.src_port)
        .collect();
    v.sort_unstable();
    v
}

/// Polls the task until `done` holds, at most [`WAIT`].
fn wait_for(
    task: &lb_bpf::conntrack_gc::ConntrackGcTask,
    done: impl Fn(&GcTaskStatus) -> bool,
) -> GcTaskStatus {
    let start = Instant::now();
    loop {
        let s = task.status();
        if done(&s) {
            return s;
        }
        assert!(start.elapsed() < WAIT, "GC task did not get there: {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn setup(now: u64) -> KernelDatapath {
    let mut dp = KernelDatapath::load().unwrap_or_else(|e| panic!("load: {e}"));
    set_now(&mut dp, now);
    dp.upsert_service(&ServiceSpec {
        id: 1,
        frontend: "10.96.0.10:80".parse().unwrap(),
        proto: L4Proto::Tcp,
        backends: vec!["10.1.0.2:8080".parse().unwrap()],
        ..Default::default()
    })
    .unwrap();
    dp
}

/// Intervals long enough that only the start sweep and `sweep_now` sweep during the test.
fn hour_long_intervals() -> GcConfig {
    GcConfig {
        initial_interval: Duration::from_secs(3600),
        min_interval: Duration::from_secs(3600),
        max_interval: Duration::from_secs(7200),
    }
}

#[test]
fn gc_task_removes_expired_flows_and_keeps_live_ones() {
    if !common::privileged("gc_task_removes_expired_flows_and_keeps_live_ones") {
        return;
    }
    let t0 = 1_000 * SEC;
    let mut dp = setup(t0);
    open_flow(&dp, 40000); // expires at t0 + 120 s
    set_now(&mut dp, t0 + 100 * SEC);
    open_flow(&dp, 40001); // expires at t0 + 220 s
    assert_eq!(flows(&dp), [40000, 40001]);

    // At t0 + 110 s nothing has expired: the start sweep deletes nothing.
    set_now(&mut dp, t0 + 110 * SEC);
    let task = dp.spawn_conntrack_gc(hour_long_intervals()).unwrap();
    let s = wait_for(&task, |s| s.sweeps >= 1);
    assert_eq!(s.last_error, None);
    assert_eq!(
        s.last_now_ns,
        t0 + 110 * SEC,
        "the task reads the datapath's clock"
    );
    let r = s.last_report.unwrap();
    assert_eq!((r.scanned, r.deleted), (4, 0));
    assert_eq!(flows(&dp), [40000, 40001]);

    // At t0 + 150 s the first flow (both its entries) has expired, the second has not.
    set_now(&mut dp, t0 + 150 * SEC);
    task.sweep_now();
    let s = wait_for(&task, |s| s.sweeps >= 2);
    assert_eq!(s.last_error, None);
    let r = s.last_report.unwrap();
    assert_eq!((r.scanned, r.deleted), (4, 2));
    assert_eq!(flows(&dp), [40001]);
    assert_eq!(dp.conntrack_entries().unwrap().len(), 2);
    assert_eq!((s.stats.runs, s.stats.total_deleted), (2, 2));

    // The datapath stays usable beside the task: a new flow is tracked, then collected.
    open_flow(&dp, 40002);
    set_now(&mut dp, t0 + 1_000 * SEC);
    task.sweep_now();
    let s = wait_for(&task, |s| s.sweeps >= 3);
    assert_eq!(s.last_report.unwrap().deleted, 4);
    assert!(dp.conntrack_entries().unwrap().is_empty());
    let last = task.stop();
    assert_eq!(last.stats.total_deleted, 6);
}

#[test]
fn gc_task_stops_promptly_in_the_middle_of_an_interval() {
    if !common::privileged("gc_task_stops_promptly_in_the_middle_of_an_interval") {
        return;
    }
    let dp = setup(1_000 * SEC);
    // Stopped explicitly.
    let task = dp.spawn_conntrack_gc(hour_long_intervals()).unwrap();
    wait_for(&task, |s| s.sweeps >= 1); // now waiting out an hour
    let start = Instant::now();
    let s = task.stop();
    assert!(start.elapsed() < WAIT, "stop waited {:?}", start.elapsed());
    assert_eq!(s.sweeps, 1, "no sweep after stop");

    // Dropped: the same.
    let task = dp.spawn_conntrack_gc(hour_long_intervals()).unwrap();
    wait_for(&task, |s| s.sweeps >= 1);
    let start = Instant::now();
    drop(task);
    assert!(start.elapsed() < WAIT, "drop waited {:?}", start.elapsed());
}

/// A table that refuses a new flow wakes the task at once (within `PRESSURE_POLL`), not at the
/// end of its hour-long interval; the sweep makes room and the next new flow is taken.
#[test]
fn table_pressure_wakes_the_gc_task() {
    if !common::privileged("table_pressure_wakes_the_gc_task") {
        return;
    }
    let t0 = 1_000 * SEC;
    let sizes = lb_control::TableSizes {
        conntrack: 4,
        ..lb_control::TableSizes::small()
    };
    let mut dp = KernelDatapath::load_with(&lb_bpf::LoadOptions::with_sizes(sizes))
        .unwrap_or_else(|e| panic!("load: {e}"));
    set_now(&mut dp, t0);
    dp.upsert_service(&ServiceSpec {
        id: 1,
        frontend: "10.96.0.10:80".parse().unwrap(),
        proto: L4Proto::Tcp,
        backends: vec!["10.1.0.2:8080".parse().unwrap()],
        ..Default::default()
    })
    .unwrap();
    let task = dp.spawn_conntrack_gc(hour_long_intervals()).unwrap();
    wait_for(&task, |s| s.sweeps >= 1);
    open_flow(&dp, 40000);
    open_flow(&dp, 40001);
    // Both flows have expired (SYN_SENT: 120 s), but the map still holds them: full.
    set_now(&mut dp, t0 + 200 * SEC);
    let syn = tcp_v4_frame([10, 0, 0, 1], 40002, VIP, 80, TcpFlags::SYN, b"");
    assert_eq!(
        dp.test_run(Program::Xdp, &syn, 1).unwrap().verdict,
        Verdict::Drop
    );
    let s = wait_for(&task, |s| s.sweeps >= 2);
    assert_eq!(s.pressure_wakes, 1, "{s:?}");
    assert_eq!(s.last_report.unwrap().deleted, 4);
    open_flow(&dp, 40002);
    assert_eq!(flows(&dp), [40002]);
    let s = task.stop();
    assert_eq!(
        (s.sweeps, s.pressure_wakes),
        (2, 1),
        "no wake without new refusals"
    );
}
