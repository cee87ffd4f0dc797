//! Differential fixtures for session affinity (`SessionAffinity::ClientIp`): the same SYNs go
//! through the engine and the kernel programs (XDP and TC), and after every packet the harness
//! requires identical bytes, verdicts, conntrack, affinity entries, counters and drop events.
//! On top, each step says what must happen: a client's connections stick to one backend, across
//! a backend-set update that moves every slot while the backend stays, until the timeout; a
//! gone backend or an expired entry is replaced (counted as stale).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use lb_api::counters::Counter;
use lb_api::flow::L4Proto;
use lb_api::wire::testing::{tcp_v4_frame, tcp_v6_frame, udp_v4_frame};
use lb_api::wire::TcpFlags as F;
use lb_api::Verdict;
use lb_bpf::Program;
use lb_control::{default_config, BackendSpec, Selection, ServiceSpec, SessionAffinity};
use lb_testbed::gate::privileged_test;
use lb_testbed::harness::EngineAndKernel;

const VIP: [u8; 4] = [10, 96, 0, 10];
const VIP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const START_NS: u64 = 1_000_000_000_000;
const SECOND: u64 = 1_000_000_000;
const TIMEOUT_S: u32 = 30;

fn service(id: u32, backends: &[u8], proto: L4Proto, selection: Selection) -> ServiceSpec {
    ServiceSpec {
        id,
        frontend: SocketAddr::from((VIP, if proto == L4Proto::Tcp { 80 } else { 53 })),
        proto,
        backends: backends
            .iter()
            .map(|&i| BackendSpec::from(SocketAddr::from(([10, 1, 0, i], 8080))))
            .collect(),
        selection,
        affinity: SessionAffinity::ClientIp {
            timeout_s: TIMEOUT_S,
        },
        ..Default::default()
    }
}

fn service6(backends: &[u8]) -> ServiceSpec {
    let mut b6 = VIP6;
    ServiceSpec {
        id: 3,
        frontend: SocketAddr::from((VIP6, 80)),
        proto: L4Proto::Tcp,
        backends: backends
            .iter()
            .map(|&i| {
                b6[15] = i;
                BackendSpec::from(SocketAddr::from((b6, 8080)))
            })
            .collect(),
        affinity: SessionAffinity::ClientIp {
            timeout_s: TIMEOUT_S,
        },
        ..Default::default()
    }
}

/// Sends a SYN of client `c` port `p` at `now`; returns the backend's last address byte and
/// checks which affinity counter moved.
fn syn(w: &mut EngineAndKernel, c: u8, p: u16, now: u64, want: Counter) -> u8 {
    let f = tcp_v4_frame([10, 0, 0, c], p, VIP, 80, F::SYN, b"");
    let o = w.expect_same(&format!("SYN of client {c} port {p}"), &f, now);
    assert_eq!(o.verdict, Verdict::Pass);
    for k in [
        Counter::AffinityHit,
        Counter::AffinityMiss,
        Counter::AffinityStale,
    ] {
        let moved = o.after.get(k) - o.before.get(k);
        assert_eq!(moved, u64::from(k == want), "client {c} port {p}: {k:?}");
    }
    o.frame[33]
}

fn run(program: Program, selection: Selection) {
    let mut cfg = default_config(5);
    cfg.fixed_now_ns = START_NS;
    let mut w = EngineAndKernel::new(
        program,
        cfg,
        &[
            service(1, &[1, 2, 3, 4], L4Proto::Tcp, selection),
            service(2, &[5, 6], L4Proto::Udp, Selection::Random),
            service6(&[1, 2, 3]),
        ],
    )
    .unwrap();
    let mut now = START_NS;
    // Eight clients, four connections each: each sticks to its first backend.
    let mut first = Vec::new();
    for c in 1..=8u8 {
        let b = syn(&mut w, c, 40_000, now, Counter::AffinityMiss);
        for p in 40_001..40_004 {
            assert_eq!(syn(&mut w, c, p, now, Counter::AffinityHit), b);
        }
        first.push(b);
    }
    assert!(
        first.iter().collect::<BTreeSet<_>>().len() > 1,
        "clients spread: {first:?}"
    );
    // UDP and IPv6 services keep entries of their own.
    for p in 0..3 {
        let f = udp_v4_frame([10, 0, 0, 1], 50_000 + p, VIP, 53, b"q");
        let o = w.expect_same("UDP datagram", &f, now);
        assert_eq!(o.verdict, Verdict::Pass);
        let mut client6 = VIP6;
        client6[0] = 0xfe;
        let f = tcp_v6_frame(client6, 50_000 + p, VIP6, 80, F::SYN, b"");
        let o = w.expect_same("IPv6 SYN", &f, now);
        assert_eq!(o.verdict, Verdict::Pass);
    }
    assert_eq!(w.dp.affinity_entries().unwrap().len(), 8 + 1 + 1);

    // A set update that moves every slot: a backend in front, client 1's backend removed.
    let removed = first[0];
    let mut now_set: Vec<u8> = [1, 2, 3, 4].into_iter().filter(|&b| b != removed).collect();
    now_set.insert(0, 9);
    let s = service(1, &now_set, L4Proto::Tcp, selection);
    w.engine.upsert_service(&s).unwrap();
    w.dp.upsert_service(&s).unwrap();
    now += SECOND;
    for (i, &b) in first.iter().enumerate() {
        let c = i as u8 + 1;
        if b == removed {
            let got = syn(&mut w, c, 41_000, now, Counter::AffinityStale);
            assert_ne!(got, removed);
        } else {
            assert_eq!(syn(&mut w, c, 41_000, now, Counter::AffinityHit), b);
        }
    }
    // Past the timeout since the last connection: stale, replaced, then sticky again.
    now += u64::from(TIMEOUT_S) * SECOND;
    let b = syn(&mut w, 2, 42_000, now, Counter::AffinityStale);
    assert_eq!(
        syn(&mut w, 2, 42_001, now + SECOND, Counter::AffinityHit),
        b
    );
}

#[test]
fn engine_and_kernel_agree_on_session_affinity() {
    if !privileged_test("engine_and_kernel_agree_on_session_affinity") {
        return;
    }
    for program in [Program::Xdp, Program::Tc] {
        run(program, Selection::Random);
        run(program, Selection::Maglev { table_size: 251 });
    }
}
