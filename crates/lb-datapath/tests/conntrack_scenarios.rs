//! Conntrack incident scenarios on a deterministic clock, through the real pipeline: every
//! packet is a frame run by [`Engine::process`] (the `lb_datapath::process` the kernel programs
//! run), every sweep is the engine's GC. Nothing here re-implements a pipeline step: the tests
//! only build frames, advance the clock and read the engine's tables and counters.
//!
//! (a) Premature reclaim: a finished flow's entry must outlive the server's TIME_WAIT so that a
//!     SYN reusing the tuple is recognised as colliding with a recent flow.
//! (b) Exhaustion: a table of N entries under connection churn at several multiples of N per
//!     period loses no established flow, counts every refused insert (counter and drop event),
//!     never leaves half a pair, and (when the offered load fits) GC keeps utilization under the
//!     stated budget.
//! (c) A pair that lost a half is repaired by the next packet: a reply whose service entry is
//!     gone removes the orphan, a packet whose reverse entry is gone rebuilds it; both counted.

use lb_api::abi::{CtKey, CtKind, CtState, DatapathConfig, CT_F_REPLY_SEEN};
use lb_api::counters::{Counter, DropReason};
use lb_api::flow::{v4_addr, FlowTuple, L4Proto};
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_conntrack::{
    partner_key, tuple_reuse, ConntrackGc, GcConfig, Knob, ManualClock, ProcSysctl, Timeout,
    TimeoutPolicy, TupleReuse, HOST_TCP_TIME_WAIT,
};
use lb_control::{default_config, ServiceSpec};
use lb_datapath::engine::Engine;

const SEC: u64 = 1_000_000_000;
const S: u8 = TcpFlags::SYN;
const A: u8 = TcpFlags::ACK;
const F: u8 = TcpFlags::FIN;
const VIP: [u8; 4] = [10, 96, 0, 10];
const BACKEND: [u8; 4] = [10, 1, 0, 2];

/// Which way a packet goes: from the client to the service, or the backend's reply.
#[derive(Clone, Copy)]
enum Dir {
    Original,
    Reply,
}
use Dir::{Original as O, Reply as R};

/// Client `c`'s address and port (outside the service's and the backend's subnets).
fn client(c: u32) -> ([u8; 4], u16) {
    let [a, b, x, y] = c.to_be_bytes();
    ([172, 16 + (a & 0x0f), x, y], 1024 + u16::from(b))
}

/// The engine under test, its refusals as the test saw them.
struct Sim {
    engine: Engine<ManualClock>,
    /// First packets the pipeline dropped as `conntrack_full`.
    refused: u64,
    /// Drop events with reason `conntrack_full` drained so far.
    refused_events: u64,
}

impl Sim {
    /// An engine of `capacity` conntrack entries with `policy`'s timeouts and one TCP service
    /// VIP:80 → BACKEND:8080, its clock at `now`.
    fn new(capacity: usize, policy: &TimeoutPolicy, now: u64) -> Self {
        let cfg = DatapathConfig {
            timeouts: policy.to_timeouts(),
            ..default_config(7)
        };
        let mut engine = Engine::with_clock(capacity, cfg, ManualClock::new(now));
        engine
            .upsert_service(&ServiceSpec {
                id: 1,
                frontend: (VIP, 80).into(),
                proto: L4Proto::Tcp,
                backends: vec![std::net::SocketAddr::from((BACKEND, 8080)).into()],
                ..Default::default()
            })
            .unwrap();
        Self {
            engine,
            refused: 0,
            refused_events: 0,
        }
    }

    fn key(c: u32) -> CtKey {
        let (ip, port) = client(c);
        let t = FlowTuple {
            src: v4_addr(ip),
            dst: v4_addr(VIP),
            src_port: port,
            dst_port: 80,
            proto: L4Proto::Tcp as u8,
            family: 4,
        };
        CtKey::new(&t, CtKind::Service)
    }

    fn frame(c: u32, dir: Dir, flags: u8) -> Vec<u8> {
        let (ip, port) = client(c);
        match dir {
            O => tcp_v4_frame(ip, port, VIP, 80, flags, b""),
            R => tcp_v4_frame(BACKEND, 8080, ip, port, flags, b""),
        }
    }

    fn set_now(&self, now: u64) {
        self.engine.clock().set(now);
    }

    /// First packet of client `c`'s flow: its service key, or `None` when the pipeline refused
    /// it (it must then be a counted `conntrack_full` drop).
    fn open(&mut self, c: u32, flags: u8) -> Option<CtKey> {
        let full = self.engine.counters().drops(DropReason::ConntrackFull);
        match self.engine.process(&mut Self::frame(c, O, flags)) {
            Verdict::Pass => Some(Self::key(c)),
            v => {
                assert_eq!(v, Verdict::Drop);
                assert_eq!(
                    self.engine.counters().drops(DropReason::ConntrackFull),
                    full + 1,
                    "a refused first packet is a conntrack_full drop"
                );
                self.refused += 1;
                None
            }
        }
    }

    /// A packet of client `c`'s tracked flow; whether the pipeline found the flow (translated
    /// it as established or as a reply).
    fn packet(&mut self, c: u32, dir: Dir, flags: u8) -> bool {
        let counter = match dir {
            O => Counter::ServiceEstablished,
            R => Counter::ReplyTranslated,
        };
        let before = self.engine.counters().get(counter);
        let v = self.engine.process(&mut Self::frame(c, dir, flags));
        v == Verdict::Pass && self.engine.counters().get(counter) == before + 1
    }

    fn state(&self, key: &CtKey) -> Option<CtState> {
        self.engine
            .conntrack()
            .get(key)
            .and_then(|e| CtState::from_u8(e.state))
    }

    /// Every entry has its partner.
    fn assert_whole_pairs(&self) {
        let ct = self.engine.conntrack();
        for (k, e) in ct.iter() {
            let p = partner_key(k, e).unwrap();
            assert!(ct.get(&p).is_some(), "half a pair left: {k:?}");
        }
    }

    /// Drains the drop events, counting the `conntrack_full` ones.
    fn drain_events(&mut self) {
        for ev in self.engine.drain_drop_events() {
            if ev.reason == DropReason::ConntrackFull {
                self.refused_events += 1;
            }
        }
    }
}

/// Handshake, then the server closes first (so the server's socket goes to TIME_WAIT), all at
/// `t0`; GC every 10 s; a SYN reusing the tuple at `t0 + 30 s`. Returns what the collision
/// resolver sees.
fn reuse_after_server_close(policy: &TimeoutPolicy) -> (TupleReuse, Option<CtState>) {
    let t0 = 100 * SEC;
    let mut sim = Sim::new(64, policy, t0);
    let key = sim.open(1, S).unwrap();
    for (d, f) in [(R, S | A), (O, A), (R, F | A), (O, A), (O, F | A), (R, A)] {
        assert!(sim.packet(1, d, f));
    }
    assert_eq!(sim.state(&key), Some(CtState::TimeWait));
    let mut gc = ConntrackGc::new(GcConfig {
        initial_interval: std::time::Duration::from_secs(10),
        ..GcConfig::default()
    });
    let syn_at = t0 + 30 * SEC;
    let mut now = t0;
    while now < syn_at {
        now += 10 * SEC;
        sim.set_now(now);
        sim.engine.conntrack_gc(&mut gc);
        sim.assert_whole_pairs();
    }
    let seen = tuple_reuse(
        sim.engine.conntrack().get(&key),
        syn_at,
        HOST_TCP_TIME_WAIT.as_nanos() as u64,
    );
    (seen, sim.state(&key))
}

#[test]
fn time_wait_kept_long_enough_flags_the_reused_tuple() {
    // netfilter: TIME_WAIT 120 s ≥ the server's 60 s.
    let (seen, state) = reuse_after_server_close(&TimeoutPolicy::netfilter());
    assert_eq!(state, Some(CtState::TimeWait));
    assert_eq!(
        seen,
        TupleReuse::RecentlyClosed {
            closed_ns_ago: 30 * SEC,
            time_wait_left_ns: 30 * SEC
        },
        "the resolver is told to pick another source port"
    );
    // `auto` copying a kernel TIME_WAIT of 120 s behaves the same.
    let dir = std::env::temp_dir().join(format!("lb-ct-scenario-{}", std::process::id()));
    let nf = dir.join("sys/net/netfilter");
    std::fs::create_dir_all(&nf).unwrap();
    std::fs::write(nf.join("nf_conntrack_tcp_timeout_time_wait"), "120\n").unwrap();
    let auto = TimeoutPolicy::calico().with(Knob::TcpFinsSeen, Timeout::Auto);
    let checked = auto.check(&ProcSysctl::at(&dir)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mut p = TimeoutPolicy::calico();
    p.set(
        Knob::TcpFinsSeen,
        Timeout::secs(checked.timeouts.of(CtState::TimeWait as u8) / SEC),
    );
    let (seen, _) = reuse_after_server_close(&p);
    assert!(
        matches!(seen, TupleReuse::RecentlyClosed { .. }),
        "{seen:?}"
    );
}

#[test]
fn early_reclaim_reproduces_the_incident() {
    // Cilium's 10 s close timeout (and Calico's 30 s fallback) reclaim the entry while the
    // server still holds the tuple in TIME_WAIT: the SYN looks fresh and goes to that socket.
    let policy = TimeoutPolicy::cilium();
    let warned = policy.check(&lb_conntrack::NoAutoSource).unwrap();
    assert!(warned.warnings().any(|w| matches!(
        w,
        lb_conntrack::TimeoutWarning::FinsSeenBelowTimeWait { secs: 10 }
    )));
    let (seen, state) = reuse_after_server_close(&policy);
    assert_eq!(state, None, "the entry is gone");
    assert_eq!(seen, TupleReuse::Fresh, "nothing tells the resolver to act");
    let (seen, state) = reuse_after_server_close(&TimeoutPolicy::calico());
    assert_eq!((seen, state), (TupleReuse::Fresh, None));
}

struct ChurnResult {
    refused: u64,
    evicted_expired: u64,
    evicted_closing: u64,
    max_util_after_gc_permille: u64,
    gc_runs: u64,
}

/// `capacity` entries; `long_lived` established flows for the whole run; churn of
/// `multiple × capacity` flows per `PERIOD` (each: handshake, 2 s established, close from the
/// client; every 50th never answered, left in SYN_SENT); GC at its adaptive interval.
fn churn(capacity: usize, long_lived: u32, multiple: u64) -> ChurnResult {
    const PERIOD: u64 = 60 * SEC; // Cilium's SYN and non-TCP timeout
    const STEP: u64 = SEC / 10;
    const RUN: u64 = 600 * SEC;
    let mut now = SEC;
    let mut sim = Sim::new(capacity, &TimeoutPolicy::cilium(), now);
    let mut gc = ConntrackGc::new(GcConfig {
        initial_interval: std::time::Duration::from_secs(10),
        ..GcConfig::default()
    });

    for c in 0..long_lived {
        sim.open(c, S).expect("room for long-lived flows");
        assert!(sim.packet(c, R, S | A) && sim.packet(c, O, A));
    }
    let per_step = multiple * capacity as u64 * STEP / PERIOD;
    let mut next_client = 1_000_000u32;
    let mut open: std::collections::VecDeque<(u64, u32)> = Default::default();
    let mut next_gc = now + gc.interval().as_nanos() as u64;
    let mut max_util = 0;
    let mut warm = 0;
    while now < RUN {
        now += STEP;
        sim.set_now(now);
        for _ in 0..per_step {
            next_client += 1;
            let c = next_client;
            if sim.open(c, S).is_none() {
                continue;
            }
            if c.is_multiple_of(50) {
                continue; // abandoned SYN
            }
            assert!(sim.packet(c, R, S | A) && sim.packet(c, O, A));
            open.push_back((now + 2 * SEC, c));
        }
        while open.front().is_some_and(|(at, _)| *at <= now) {
            let (_, c) = open.pop_front().unwrap();
            let k = Sim::key(c);
            assert_eq!(
                sim.state(&k),
                Some(CtState::Established),
                "an established flow was lost"
            );
            for (d, f) in [(O, F | A), (R, A), (R, F | A), (O, A)] {
                assert!(sim.packet(c, d, f));
            }
            assert_eq!(sim.state(&k), Some(CtState::TimeWait));
        }
        sim.drain_events();
        if now >= next_gc {
            sim.engine.conntrack_gc(&mut gc);
            next_gc = now + gc.interval().as_nanos() as u64;
            sim.assert_whole_pairs();
            for c in 0..long_lived {
                assert_eq!(
                    sim.state(&Sim::key(c)),
                    Some(CtState::Established),
                    "long-lived flow lost"
                );
            }
            warm += 1;
            if warm > 3 {
                max_util = max_util.max(sim.engine.conntrack_metrics(None).utilization_permille());
            }
        }
    }
    let stats = sim.engine.conntrack().stats();
    let counted = sim.engine.counters().drops(DropReason::ConntrackFull);
    assert_eq!(counted, sim.refused, "every refused insert is counted");
    assert_eq!(
        sim.refused_events, sim.refused,
        "every refused insert is a drop event"
    );
    assert_eq!(stats.insert_failures_full, sim.refused);
    assert_eq!(sim.engine.counters().get(Counter::DropEventsLost), 0);
    assert!(sim.engine.conntrack().len() <= capacity);
    for c in 0..long_lived {
        assert_eq!(sim.state(&Sim::key(c)), Some(CtState::Established));
    }
    ChurnResult {
        refused: sim.refused,
        evicted_expired: stats.evictions_expired,
        evicted_closing: stats.evictions_closing,
        max_util_after_gc_permille: max_util,
        gc_runs: gc.stats().runs,
    }
}

/// Stated budget: when the offered load fits (1 × N flows per 60 s: about 56 % of the table
/// live at any time), every sweep leaves the table at most 75 % full and no insert is refused.
const BUDGET_PERMILLE: u64 = 750;

#[test]
fn exhaustion_under_churn_degrades_predictably() {
    const N: usize = 2048;
    for multiple in [1, 2, 4, 8] {
        let r = churn(N, 128, multiple);
        eprintln!(
            "churn {multiple}×N/60s: refused {}, evicted expired {} closing {}, max utilization after GC {}‰, {} sweeps",
            r.refused, r.evicted_expired, r.evicted_closing, r.max_util_after_gc_permille, r.gc_runs
        );
        assert!(r.gc_runs >= 20, "GC ran at its adapted interval");
        if multiple == 1 {
            assert_eq!(r.refused, 0);
            assert!(
                r.max_util_after_gc_permille <= BUDGET_PERMILLE,
                "utilization {}‰ over the budget",
                r.max_util_after_gc_permille
            );
        } else {
            // Overload: the table fills; closing flows make room before anything is refused.
            assert!(r.evicted_closing + r.evicted_expired > 0);
        }
    }
}

/// A reply whose flow's service entry is gone (deleted on its own) finds an orphan: it is
/// removed, counted, and the reply passes untranslated.
#[test]
fn a_reply_to_a_flow_without_its_service_entry_removes_the_orphan() {
    let mut sim = Sim::new(64, &TimeoutPolicy::netfilter(), SEC);
    let key = sim.open(1, S).unwrap();
    assert!(sim.packet(1, R, S | A));
    let e = *sim.engine.conntrack().get(&key).unwrap();
    let rk = partner_key(&key, &e).unwrap();
    assert!(sim.engine.conntrack_remove(&key));
    let mut reply = Sim::frame(1, R, A);
    let sent = reply.clone();
    assert_eq!(sim.engine.process(&mut reply), Verdict::Pass);
    assert_eq!(reply, sent, "untranslated");
    let c = sim.engine.counters();
    assert_eq!(c.get(Counter::OrphanReplyRemoved), 1);
    assert_eq!(c.get(Counter::PassNotService), 1);
    assert!(sim.engine.conntrack().get(&rk).is_none(), "orphan removed");
    assert!(sim.engine.conntrack().is_empty());
}

/// A packet of a flow whose reverse entry is gone rebuilds it (counted), and the flow's
/// replies are translated again; when the table is full the rebuild fails, counted too, and
/// the pair is then left as it was (the service entry alone), never overwriting another flow.
#[test]
fn a_packet_of_a_flow_without_its_reverse_entry_rebuilds_it() {
    let mut sim = Sim::new(64, &TimeoutPolicy::netfilter(), SEC);
    let key = sim.open(1, S).unwrap();
    assert!(sim.packet(1, R, S | A));
    let e = *sim.engine.conntrack().get(&key).unwrap();
    let rk = partner_key(&key, &e).unwrap();
    let rev = *sim.engine.conntrack().get(&rk).unwrap();
    assert!(sim.engine.conntrack_remove(&rk));
    // Until a packet of the flow comes, its reply finds nothing to translate.
    sim.set_now(2 * SEC);
    assert!(sim.packet(1, O, A), "the flow is still tracked");
    assert_eq!(sim.engine.counters().get(Counter::ReverseEntryRebuilt), 1);
    let rebuilt = *sim.engine.conntrack().get(&rk).expect("rebuilt");
    // The same entry but for the reply-seen flag, which the rebuild copies from the service
    // entry (the reverse entry was made before the first reply).
    assert_eq!(
        (
            rebuilt.nat_addr,
            rebuilt.nat_port,
            rebuilt.flags & !CT_F_REPLY_SEEN
        ),
        (rev.nat_addr, rev.nat_port, rev.flags)
    );
    assert!(sim.packet(1, R, A), "replies are translated again");
    sim.assert_whole_pairs();

    // A table of three entries: once the reverse entry is gone, a second flow takes the room
    // (two entries), and the first flow's rebuild is refused.
    let mut sim = Sim::new(3, &TimeoutPolicy::netfilter(), SEC);
    let key = sim.open(1, S).unwrap();
    let e = *sim.engine.conntrack().get(&key).unwrap();
    let rk = partner_key(&key, &e).unwrap();
    assert!(sim.engine.conntrack_remove(&rk));
    assert!(sim.open(2, S).is_some(), "the freed slot takes a new flow");
    assert_eq!(sim.engine.conntrack().len(), 3);
    assert!(sim.packet(1, O, A), "the flow goes on");
    let c = sim.engine.counters();
    assert_eq!(c.get(Counter::ReverseEntryRebuildFailed), 1);
    assert_eq!(c.get(Counter::ReverseEntryRebuilt), 0);
    assert!(sim.engine.conntrack().get(&rk).is_none());
    assert_eq!(sim.engine.conntrack().len(), 3);
}
