//! The conntrack incident scenarios against the kernel map, through `BPF_PROG_TEST_RUN` with
//! `DatapathConfig::fixed_now_ns` as the clock and the kernel-map GC of `lb_bpf::conntrack_gc`.

mod common;

use lb_api::abi::{CtKey, CtKind, CtState, DatapathConfig};
use lb_api::counters::DropReason;
use lb_api::flow::{v4_addr, FlowTuple, L4Proto};
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_bpf::{KernelDatapath, Program};
use lb_conntrack::{tuple_reuse, ConntrackGc, GcConfig, TimeoutPolicy, TupleReuse};
use lb_control::ServiceSpec;

const SEC: u64 = 1_000_000_000;
const VIP: [u8; 4] = [10, 96, 0, 10];
const BACKEND: [u8; 4] = [10, 1, 0, 2];
const S: u8 = TcpFlags::SYN;
const A: u8 = TcpFlags::ACK;
const F: u8 = TcpFlags::FIN;

fn setup(policy: &TimeoutPolicy, now: u64) -> KernelDatapath {
    // Small tables: a test fills conntrack (its clients are numbered in 16 bits).
    let small = lb_bpf::LoadOptions::with_sizes(lb_control::TableSizes::small());
    let mut dp = KernelDatapath::load_with(&small).unwrap_or_else(|e| panic!("load: {e}"));
    set_now(&mut dp, policy, now);
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

fn set_now(dp: &mut KernelDatapath, policy: &TimeoutPolicy, now: u64) {
    let cfg = DatapathConfig {
        timeouts: policy.to_timeouts(),
        fixed_now_ns: now,
        ..lb_control::default_config(0)
    };
    dp.set_config(&cfg).unwrap();
}

fn send(dp: &KernelDatapath, frame: &[u8]) -> Verdict {
    dp.test_run(Program::Xdp, frame, 1).unwrap().verdict
}

fn service_key(client: [u8; 4], port: u16) -> CtKey {
    CtKey::new(
        &FlowTuple {
            src: v4_addr(client),
            dst: v4_addr(VIP),
            src_port: port,
            dst_port: 80,
            proto: 6,
            family: 4,
        },
        CtKind::Service,
    )
}

/// Handshake, server-first close, GC every 10 s for 30 s, then what a SYN reusing the tuple sees.
fn reuse_after_server_close(policy: &TimeoutPolicy) -> (TupleReuse, Option<CtState>) {
    let client = [10, 0, 0, 1];
    let t0 = 100 * SEC;
    let mut dp = setup(policy, t0);
    let orig = |f| tcp_v4_frame(client, 40000, VIP, 80, f, b"");
    let reply = |f| tcp_v4_frame(BACKEND, 8080, client, 40000, f, b"");
    for frame in [
        orig(S),
        reply(S | A),
        orig(A),
        reply(F | A),
        orig(A),
        orig(F | A),
        reply(A),
    ] {
        assert_eq!(send(&dp, &frame), Verdict::Pass);
    }
    let key = service_key(client, 40000);
    let entry = |dp: &KernelDatapath| {
        dp.conntrack_entries()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, e)| e)
    };
    assert_eq!(entry(&dp).map(|e| e.state), Some(CtState::TimeWait as u8));
    let mut gc = ConntrackGc::new(GcConfig::default());
    for n in 1..=3 {
        gc.run_kernel(&mut dp, t0 + n * 10 * SEC);
    }
    let e = entry(&dp);
    let seen = tuple_reuse(e.as_ref(), t0 + 30 * SEC, 60 * SEC);
    (seen, e.and_then(|e| CtState::from_u8(e.state)))
}

trait RunKernel {
    fn run_kernel(&mut self, dp: &mut KernelDatapath, now: u64);
}

impl RunKernel for ConntrackGc {
    fn run_kernel(&mut self, dp: &mut KernelDatapath, now: u64) {
        dp.conntrack_gc(self, now)
            .unwrap_or_else(|e| panic!("gc: {e}"));
        // Whole pairs only.
        let entries = dp.conntrack_entries().unwrap();
        for (k, e) in &entries {
            let p = lb_conntrack::partner_key(k, e).unwrap();
            assert!(entries.iter().any(|(k2, _)| *k2 == p), "half a pair: {k:?}");
        }
    }
}

#[test]
fn kernel_time_wait_kept_or_reclaimed_by_policy() {
    if !common::privileged("kernel_time_wait_kept_or_reclaimed_by_policy") {
        return;
    }
    let (seen, state) = reuse_after_server_close(&TimeoutPolicy::netfilter());
    assert_eq!(state, Some(CtState::TimeWait));
    assert_eq!(
        seen,
        TupleReuse::RecentlyClosed {
            closed_ns_ago: 30 * SEC,
            time_wait_left_ns: 30 * SEC
        }
    );
    let (seen, state) = reuse_after_server_close(&TimeoutPolicy::cilium());
    assert_eq!(
        (seen, state),
        (TupleReuse::Fresh, None),
        "premature reclaim reproduced"
    );
}

#[test]
fn kernel_full_map_refuses_counts_and_keeps_established_flows() {
    if !common::privileged("kernel_full_map_refuses_counts_and_keeps_established_flows") {
        return;
    }
    let policy = TimeoutPolicy::netfilter();
    let t0 = 10 * SEC;
    let mut dp = setup(&policy, t0);
    let capacity = dp.conntrack_capacity().unwrap();
    let flows = capacity / 2;
    let client = |i: u64| [10, 2, (i >> 8) as u8, i as u8];
    // One established flow first, then SYNs until the map is exactly full.
    let est = client(0);
    for f in [
        tcp_v4_frame(est, 40000, VIP, 80, S, b""),
        tcp_v4_frame(BACKEND, 8080, est, 40000, S | A, b""),
        tcp_v4_frame(est, 40000, VIP, 80, A, b""),
    ] {
        assert_eq!(send(&dp, &f), Verdict::Pass);
    }
    for i in 1..flows {
        let f = tcp_v4_frame(client(i), 40000, VIP, 80, S, b"");
        assert_eq!(send(&dp, &f), Verdict::Pass, "flow {i}");
    }
    let m = dp.conntrack_metrics(t0, None).unwrap();
    assert_eq!(m.entries, capacity, "the map is exactly full");
    assert_eq!(m.utilization_permille(), 1000);
    // Every refused flow is dropped and counted, exactly.
    let refused = 25;
    for i in 0..refused {
        let f = tcp_v4_frame([10, 3, 0, i as u8], 40000, VIP, 80, S, b"");
        assert_eq!(send(&dp, &f), Verdict::Drop);
    }
    let c = dp.counters().unwrap();
    assert_eq!(c.drops(DropReason::ConntrackFull), refused);
    let m = dp.conntrack_metrics(t0, None).unwrap();
    assert_eq!(m.table.insert_failures_full, refused);
    assert_eq!(m.in_state(CtState::Established), 1);
    assert_eq!(m.in_state(CtState::SynSent), flows - 1);
    // The established flow is untouched and keeps working.
    let data = tcp_v4_frame(est, 40000, VIP, 80, A, b"x");
    assert_eq!(send(&dp, &data), Verdict::Pass);
    // SYN_SENT flows expire after 120 s; a sweep then brings the map back under budget.
    let later = t0 + 121 * SEC;
    set_now(&mut dp, &policy, later);
    let mut gc = ConntrackGc::new(GcConfig::default());
    let r = dp.conntrack_gc(&mut gc, later).unwrap();
    assert_eq!(r.scanned, capacity);
    assert_eq!(r.deleted, capacity - 2);
    let m = dp.conntrack_metrics(later, Some(&gc)).unwrap();
    assert_eq!(m.entries, 2, "only the established pair is left");
    assert_eq!(m.gc.runs, 1);
    let f = tcp_v4_frame([10, 3, 0, 0], 40000, VIP, 80, S, b"");
    assert_eq!(send(&dp, &f), Verdict::Pass, "room again after GC");
}
