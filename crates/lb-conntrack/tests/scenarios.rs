//! Incident scenarios on a deterministic clock.
//!
//! (a) Premature reclaim: a finished flow's entry must outlive the server's TIME_WAIT so that a
//!     SYN reusing the tuple is recognised as colliding with a recent flow.
//! (b) Exhaustion: a table of N entries under connection churn at several multiples of N per
//!     period loses no established flow, counts every refused insert, never leaves half a pair,
//!     and (when the offered load fits) GC keeps utilization under the stated budget.
//!
//! The flows are driven the way the pipeline drives them (`lb_datapath::process`): reverse-NAT
//! entry first with no-overwrite, then the service entry; `track` on the service entry; the
//! reverse entry's deadline kept in step.

use lb_api::abi::{CtEntry, CtKey, CtKind, CtState, Timeouts};
use lb_api::flow::{v4_addr, FlowTuple};
use lb_api::wire::TcpFlags;
use lb_conntrack::{
    initial_state, partner_key, track, tuple_reuse, ConntrackGc, ConntrackMetrics, ConntrackTable,
    Direction, GcConfig, HashConntrackTable, InsertError, InsertMode, Knob, ProcSysctl, Timeout,
    TimeoutPolicy, TupleReuse, HOST_TCP_TIME_WAIT,
};

const SEC: u64 = 1_000_000_000;
const S: u8 = TcpFlags::SYN;
const A: u8 = TcpFlags::ACK;
const F: u8 = TcpFlags::FIN;

/// The conntrack side of the datapath over a userspace table.
struct Sim {
    table: HashConntrackTable,
    timeouts: Timeouts,
    /// Insert calls the table refused as full (counted here independently of the table).
    refused: u64,
}

fn client_tuple(client: u32) -> FlowTuple {
    let [a, b, c, d] = client.to_be_bytes();
    FlowTuple {
        src: v4_addr([10, a.max(1), c, d]),
        dst: v4_addr([10, 96, 0, 10]),
        src_port: 1024 + u16::from(b),
        dst_port: 80,
        proto: 6,
        family: 4,
    }
}

impl Sim {
    fn new(capacity: usize, policy: &TimeoutPolicy) -> Self {
        Self {
            table: HashConntrackTable::with_capacity(capacity),
            timeouts: policy.to_timeouts(),
            refused: 0,
        }
    }

    /// First packet of a flow: creates its pair, or `None` when the table refuses.
    fn open(&mut self, t: &FlowTuple, flags: u8, now: u64) -> Option<CtKey> {
        let state = initial_state(t.proto, flags);
        let e = CtEntry {
            created_ns: now,
            last_seen_ns: now,
            expires_ns: now + self.timeouts.of(state as u8),
            state: state as u8,
            proto: t.proto,
            family: t.family,
            nat_addr: v4_addr([10, 1, 0, 2]),
            nat_port: 8080,
            packets_orig: 1,
            ..CtEntry::default()
        };
        let key = CtKey::new(t, CtKind::Service);
        let rk = partner_key(&key, &e).unwrap();
        let mut re = e;
        re.nat_addr = t.dst;
        re.nat_port = t.dst_port;
        match self.table.insert(&rk, &re, InsertMode::NoExist) {
            Ok(()) => {}
            Err(InsertError::Full) => {
                self.refused += 1;
                return None;
            }
            Err(e) => panic!("reverse insert: {e:?}"),
        }
        match self.table.insert(&key, &e, InsertMode::NoExist) {
            Ok(()) => Some(key),
            Err(InsertError::Full) => {
                self.refused += 1;
                assert!(self.table.remove(&rk), "never leave half a pair");
                None
            }
            Err(err) => panic!("service insert: {err:?}"),
        }
    }

    /// A packet of a known flow; whether its entries were there.
    fn packet(&mut self, key: &CtKey, dir: Direction, flags: u8, now: u64) -> bool {
        let Some(e) = self.table.get_mut(key) else {
            return false;
        };
        track(e, dir, flags, now, &self.timeouts);
        let e = *e;
        let rk = partner_key(key, &e).unwrap();
        match self.table.get_mut(&rk) {
            Some(r) => {
                r.last_seen_ns = now;
                r.expires_ns = e.expires_ns;
                true
            }
            None => false,
        }
    }

    fn state(&self, key: &CtKey) -> Option<CtState> {
        self.table.get(key).and_then(|e| CtState::from_u8(e.state))
    }

    /// Every entry has its partner.
    fn assert_whole_pairs(&self) {
        for (k, e) in self.table.iter() {
            let p = partner_key(k, e).unwrap();
            assert!(self.table.get(&p).is_some(), "half a pair left: {k:?}");
        }
    }
}

/// Handshake, then the server closes first (so the server's socket goes to TIME_WAIT), all at
/// `t0`; GC every 10 s; a SYN reusing the tuple at `t0 + 30 s`. Returns what the collision
/// resolver sees.
fn reuse_after_server_close(policy: &TimeoutPolicy) -> (TupleReuse, Option<CtState>) {
    let mut sim = Sim::new(64, policy);
    let t = client_tuple(1);
    let t0 = 100 * SEC;
    let key = sim.open(&t, S, t0).unwrap();
    use Direction::{Original as O, Reply as R};
    for (d, f) in [(R, S | A), (O, A), (R, F | A), (O, A), (O, F | A), (R, A)] {
        assert!(sim.packet(&key, d, f, t0));
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
        gc.run(&mut sim.table, now).unwrap();
        sim.assert_whole_pairs();
    }
    let seen = tuple_reuse(
        sim.table.get(&key),
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
    let policy = TimeoutPolicy::cilium();
    let mut sim = Sim::new(capacity, &policy);
    let mut gc = ConntrackGc::new(GcConfig {
        initial_interval: std::time::Duration::from_secs(10),
        ..GcConfig::default()
    });
    use Direction::{Original as O, Reply as R};

    let mut now = SEC;
    let mut long = Vec::new();
    for c in 0..long_lived {
        let k = sim
            .open(&client_tuple(c), S, now)
            .expect("room for long-lived flows");
        assert!(sim.packet(&k, R, S | A, now) && sim.packet(&k, O, A, now));
        long.push(k);
    }
    let per_step = multiple * capacity as u64 * STEP / PERIOD;
    let mut next_client = 1_000_000u32;
    let mut open: std::collections::VecDeque<(u64, CtKey)> = Default::default();
    let mut next_gc = now + gc.interval().as_nanos() as u64;
    let mut max_util = 0;
    let mut warm = 0;
    while now < RUN {
        now += STEP;
        for _ in 0..per_step {
            next_client += 1;
            let t = client_tuple(next_client);
            let Some(k) = sim.open(&t, S, now) else {
                continue;
            };
            if next_client.is_multiple_of(50) {
                continue; // abandoned SYN
            }
            assert!(sim.packet(&k, R, S | A, now) && sim.packet(&k, O, A, now));
            open.push_back((now + 2 * SEC, k));
        }
        while open.front().is_some_and(|(at, _)| *at <= now) {
            let (_, k) = open.pop_front().unwrap();
            assert_eq!(
                sim.state(&k),
                Some(CtState::Established),
                "an established flow was lost"
            );
            for (d, f) in [(O, F | A), (R, A), (R, F | A), (O, A)] {
                assert!(sim.packet(&k, d, f, now));
            }
            assert_eq!(sim.state(&k), Some(CtState::TimeWait));
        }
        if now >= next_gc {
            gc.run(&mut sim.table, now).unwrap();
            next_gc = now + gc.interval().as_nanos() as u64;
            sim.assert_whole_pairs();
            for k in &long {
                assert_eq!(
                    sim.state(k),
                    Some(CtState::Established),
                    "long-lived flow lost"
                );
            }
            warm += 1;
            if warm > 3 {
                let m = ConntrackMetrics::from_entries(sim.table.iter(), capacity as u64, now);
                max_util = max_util.max(m.utilization_permille());
            }
        }
    }
    let stats = sim.table.stats();
    assert_eq!(
        stats.insert_failures_full, sim.refused,
        "every refused insert is counted"
    );
    assert!(sim.table.len() <= capacity);
    for k in &long {
        assert_eq!(sim.state(k), Some(CtState::Established));
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
    const N: usize = 4096;
    for multiple in [1, 2, 4, 8] {
        let r = churn(N, 256, multiple);
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
