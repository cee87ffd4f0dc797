//! The SNAT port allocator under port-range pressure, engine against kernel.
//!
//! One node (A) with a SNAT-mode service whose backend runs on another node (B) and a SNAT
//! range of only [`RANGE`] ports, so that filling it is cheap. The range is filled to 50 %, 90 %,
//! 99 % and 100 % by the first packets (TCP SYN) of distinct client flows, then at each level a
//! batch of [`PROBES`] new flows asks the allocator for a port. Every packet goes through the
//! userspace engine and through the kernel XDP program (`BPF_PROG_TEST_RUN`) under the same
//! fixed clock, so the allocator's random draws (seeded from the clock and the flow) are the
//! same in both worlds, and both must agree on every packet: verdict, output bytes and counters.
//! At the end of each level the conntrack tables and the drop events must be identical too.
//!
//! Client ports lie outside the SNAT range, so the allocator never keeps a flow's own port: every
//! allocation is netfilter's schedule of random draws (128, 64, 32, 16 attempts:
//! `lb_nat::snat::SnatConfig::of_datapath`). At a fill `u` an attempt fails with probability
//! `u` (the draws are independent, `Probe::Scattered`), so a flow finds a port with probability
//! `1 - u^240` after `1/(1-u)` attempts on average (truncated at 240). The test prints, per
//! level, the success rate and the mean attempts (bounded by the buckets of the
//! `snat_attempts_*` histogram) next to those figures, and asserts what the design guarantees:
//! at 50 % and 90 % every probe gets a port; at 99 % most do and the others are dropped as
//! `snat_ports_exhausted`; at 100 % every probe is such a drop; every probe is either translated
//! or a counted drop; an allocated port is never one in use; more fill, more attempts.
//!
//! Keeping the fill exact while probing: a successful probe holds a port, and at 99 % (ten free
//! ports) a few probes would otherwise fill the range. Each probe is therefore removed right
//! after it was translated, the way flows leave the table in production: by the conntrack GC.
//! Fill flows are created with netfilter's SYN_SENT timeout (120 s), probes with
//! [`PROBE_SYN_TIMEOUT_NS`] (the configuration changes in both worlds alike), and after each
//! translated probe one GC sweep runs in both worlds at the instant the probe expires: it must
//! delete exactly that probe's two entries. (The whole test spans seconds of the fixed clock, so
//! no fill flow expires.) A probe that found no port leaves nothing behind, which the conntrack
//! checks at the end of each level confirm.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use lb_api::abi::{CtKind, CtState, DatapathConfig};
use lb_api::counters::{Counter, CounterSnapshot, DropReason};
use lb_api::events::DropEvent;
use lb_api::flow::{v4_addr, L4Proto};
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags as F;
use lb_api::Verdict;
use lb_bpf::Program;
use lb_conntrack::{ConntrackGc, GcConfig};
use lb_control::{default_config, BackendSpec, ForwardingMode, NodeSpec, PortRange, ServiceSpec};
use lb_nat::snat::{DEFAULT_MAX_ATTEMPTS, DEFAULT_MIN_ATTEMPTS};
use lb_testbed::harness::EngineAndKernel;

const NODE_A: [u8; 4] = [192, 168, 1, 10];
const NODE_B: [u8; 4] = [192, 168, 1, 11];
const VIP: [u8; 4] = [10, 96, 0, 20];
const BE: [u8; 4] = [10, 1, 0, 2];
const VPORT: u16 = 80;
const BPORT: u16 = 8080;
/// Node A's SNAT range: [`RANGE`] ports.
const SNAT_MIN: u16 = 40_000;
const SNAT_MAX: u16 = 40_999;
const RANGE: usize = (SNAT_MAX - SNAT_MIN) as usize + 1;
/// Fill levels, in ports of the range held by fill flows while the probes run.
const LEVELS: [usize; 4] = [RANGE / 2, RANGE * 9 / 10, RANGE * 99 / 100, RANGE];
/// New flows that ask for a port at each level.
const PROBES: usize = 200;
/// Fill flows that may fail before a level counts as unreachable (a broken allocator).
const MAX_FILL_FLOWS: usize = 3 * RANGE;
/// Clock step between packets.
const STEP_NS: u64 = 1_000_000;
/// SYN_SENT timeout of the probes: a GC sweep this long after a probe removes it.
const PROBE_SYN_TIMEOUT_NS: u64 = 10_000_000;

/// Attempts in netfilter's schedule (128 + 64 + 32 + 16), the datapath's.
fn schedule_len() -> u32 {
    let (mut n, mut total) = (DEFAULT_MAX_ATTEMPTS, 0);
    while n >= DEFAULT_MIN_ATTEMPTS {
        total += n;
        n /= 2;
    }
    total
}

/// Fill flow `i`: client 172.16.x.y, port 10000 + i (below the SNAT range).
fn fill_client(i: usize) -> ([u8; 4], u16) {
    let i16 = u16::try_from(i).unwrap();
    assert!(10_000 + i16 < SNAT_MIN);
    ([172, 16, (i >> 8) as u8, i as u8], 10_000 + i16)
}

/// Probe `k` (numbered across levels): client 172.17.x.y, port 20000 + k (below the SNAT range).
fn probe_client(k: usize) -> ([u8; 4], u16) {
    let k16 = u16::try_from(k).unwrap();
    assert!(20_000 + k16 < SNAT_MIN);
    ([172, 17, (k >> 8) as u8, k as u8], 20_000 + k16)
}

fn node_spec() -> NodeSpec {
    NodeSpec {
        address_v4: Some(Ipv4Addr::from(NODE_A)),
        peers: vec![IpAddr::from(NODE_B)],
        vni: 7,
        underlay_mtu: 1500,
        snat_ports: PortRange {
            min: SNAT_MIN,
            max: SNAT_MAX,
        },
        ..NodeSpec::default()
    }
}

/// The SNAT service: VIP:80/TCP to one backend on node B.
fn service() -> ServiceSpec {
    ServiceSpec {
        id: 10,
        frontend: (IpAddr::from(VIP), VPORT).into(),
        proto: L4Proto::Tcp,
        backends: vec![BackendSpec {
            node: Some(IpAddr::from(NODE_B)),
            ..BackendSpec::from(SocketAddr::from((BE, BPORT)))
        }],
        mode: ForwardingMode::Snat,
        ..Default::default()
    }
}

/// The counters and drop reasons that differ between two snapshots, by name.
fn moved(a: &CounterSnapshot, b: &CounterSnapshot) -> Vec<String> {
    Counter::ALL
        .iter()
        .filter(|c| a.get(**c) != b.get(**c))
        .map(|c| format!("{} {} -> {}", c.name(), a.get(*c), b.get(*c)))
        .chain(
            DropReason::ALL
                .iter()
                .filter(|r| a.drops(**r) != b.drops(**r))
                .map(|r| format!("drop {} {} -> {}", r.name(), a.drops(*r), b.drops(*r))),
        )
        .collect()
}

/// The attempts histogram (`snat_attempts_1`, `_2_3`, ..., `_512`).
fn histogram(s: &CounterSnapshot) -> [u64; 10] {
    let mut h = [0; 10];
    for (i, v) in h.iter_mut().enumerate() {
        *v = s.0[Counter::SnatAttempts1 as usize + i];
    }
    h
}

/// What one allocation did.
enum Alloc {
    /// Translated to this port of the range.
    Port(u16),
    /// Dropped as `snat_ports_exhausted`.
    Exhausted,
}

/// Node A as a pair of worlds, and what the test knows of its SNAT range.
struct Pressure {
    h: EngineAndKernel,
    /// The configuration after `set_node` (fill flows are created with it).
    base: DatapathConfig,
    /// The same with the probes' short SYN_SENT timeout.
    probe_cfg: DatapathConfig,
    now: u64,
    gc_user: ConntrackGc,
    gc_kernel: ConntrackGc,
    /// Ports held by fill flows (read from the translated packets).
    used: BTreeSet<u16>,
    fill_flows: usize,
    probes: usize,
    /// Packets compared.
    packets: usize,
}

impl Pressure {
    fn new() -> Self {
        let mut h = EngineAndKernel::new(Program::Xdp, default_config(0x5eed), &[service()])
            .unwrap_or_else(|e| panic!("engine and kernel: {e:#}"));
        h.set_node(&node_spec())
            .unwrap_or_else(|e| panic!("set_node: {e:#}"));
        let base = *h.engine.config();
        assert_eq!(
            (base.snat_port_min(), base.snat_port_max()),
            (SNAT_MIN, SNAT_MAX)
        );
        let mut probe_cfg = base;
        probe_cfg.timeouts.ns[CtState::SynSent as usize] = PROBE_SYN_TIMEOUT_NS;
        Self {
            h,
            base,
            probe_cfg,
            now: 1_000_000_000_000,
            gc_user: ConntrackGc::new(GcConfig::default()),
            gc_kernel: ConntrackGc::new(GcConfig::default()),
            used: BTreeSet::new(),
            fill_flows: 0,
            probes: 0,
            packets: 0,
        }
    }

    /// Sets `cfg` at the current time in both worlds.
    fn set_config(&mut self, cfg: DatapathConfig) {
        let cfg = DatapathConfig {
            fixed_now_ns: self.now,
            ..cfg
        };
        self.h.engine.set_config(cfg);
        self.h.dp.set_config(&cfg).unwrap();
    }

    /// The SYN of a new flow from `client` to the service, at the next tick, under `cfg`,
    /// through both worlds: they must agree on the verdict, the output bytes and every counter.
    /// Then checks what the engine did: a translation (with the attempts histogram) or an
    /// exhausted range, and nothing else.
    fn syn(&mut self, what: &str, (client, cport): ([u8; 4], u16), cfg: DatapathConfig) -> Alloc {
        self.now += STEP_NS;
        self.set_config(cfg);
        let frame = tcp_v4_frame(client, cport, VIP, VPORT, F::SYN, b"");
        let kernel = self
            .h
            .dp
            .test_run(Program::Xdp, &frame, 1)
            .unwrap_or_else(|e| panic!("{what}: {e}: {:?}", std::error::Error::source(&e)));
        let before = *self.h.engine.counters();
        let mut user = frame.clone();
        let verdict = self.h.engine.process(&mut user);
        let after = *self.h.engine.counters();
        assert_eq!(kernel.verdict, verdict, "{what}: verdict");
        assert_eq!(kernel.data, user, "{what}: output bytes");
        let kc = self.h.dp.counters().unwrap();
        assert_eq!(kc, after, "{what}: counters {:?}", moved(&after, &kc));
        self.packets += 1;

        let mut want = before;
        want.0[Counter::RxPackets as usize] += 1;
        match verdict {
            Verdict::Pass => {
                let port = u16::from_be_bytes([user[34], user[35]]);
                assert!(
                    (SNAT_MIN..=SNAT_MAX).contains(&port),
                    "{what}: port {port} outside the range"
                );
                assert!(
                    !self.used.contains(&port),
                    "{what}: port {port} given twice"
                );
                assert_eq!(
                    user,
                    tcp_v4_frame(NODE_A, port, BE, BPORT, F::SYN, b""),
                    "{what}: the translated SYN"
                );
                let h0 = histogram(&before);
                let h1 = histogram(&after);
                let bucket = (0..h0.len()).find(|i| h1[*i] != h0[*i]).unwrap_or_else(|| {
                    panic!("{what}: no attempts counted: {:?}", moved(&before, &after))
                });
                want.0[Counter::ServiceNewFlow as usize] += 1;
                want.0[Counter::SnatAttempts1 as usize + bucket] += 1;
                assert_eq!(
                    after,
                    want,
                    "{what}: translated; the counters that moved: {:?}",
                    moved(&before, &after)
                );
                Alloc::Port(port)
            }
            Verdict::Drop => {
                want.0[Counter::Dropped as usize] += 1;
                want.0[DropReason::SnatPortsExhausted.slot() as usize] += 1;
                assert_eq!(
                    after,
                    want,
                    "{what}: dropped; the counters that moved: {:?}",
                    moved(&before, &after)
                );
                Alloc::Exhausted
            }
            v => panic!("{what}: verdict {v:?}: {:?}", moved(&before, &after)),
        }
    }

    /// Sends fill flows until `target` ports of the range are held (fill flows that find no
    /// port are dropped like any flow and counted; they are few until the last ports).
    fn fill_to(&mut self, target: usize) -> usize {
        let mut failed = 0;
        while self.used.len() < target {
            assert!(
                self.fill_flows < MAX_FILL_FLOWS,
                "{} fill flows and only {} ports held",
                self.fill_flows,
                self.used.len()
            );
            let client = fill_client(self.fill_flows);
            let what = format!("fill flow {} ({} held)", self.fill_flows, self.used.len());
            self.fill_flows += 1;
            match self.syn(&what, client, self.base) {
                Alloc::Port(port) => {
                    self.used.insert(port);
                }
                Alloc::Exhausted => failed += 1,
            }
        }
        failed
    }

    /// One probe: a new flow asks for a port; a translated probe is then removed by a GC sweep
    /// in both worlds at the instant it expires (exactly its two entries), so the fill stays.
    fn probe(&mut self) -> Alloc {
        let k = self.probes;
        self.probes += 1;
        let what = format!("probe {k} at {} ports held", self.used.len());
        let got = self.syn(&what, probe_client(k), self.probe_cfg);
        if let Alloc::Port(_) = got {
            self.now += PROBE_SYN_TIMEOUT_NS;
            self.set_config(self.probe_cfg);
            let user = self.h.engine.conntrack_gc(&mut self.gc_user);
            let kernel = self
                .h
                .dp
                .conntrack_gc(&mut self.gc_kernel, self.now)
                .unwrap();
            assert_eq!(
                (user.deleted, kernel.deleted),
                (2, 2),
                "{what}: GC removes the probe's two entries, nothing else"
            );
        }
        got
    }

    /// Both worlds hold the same conntrack entries and drop events; the entries are exactly the
    /// fill flows' pairs, and their reverse entries hold exactly the ports seen translated.
    fn assert_tables(&mut self, level: &str, drops: usize) {
        let kernel = self.h.dp.conntrack_entries().unwrap();
        let user = self.h.engine_conntrack();
        assert!(
            kernel == user,
            "{level}: conntrack differs between the worlds"
        );
        assert_eq!(
            user.len(),
            2 * self.used.len(),
            "{level}: one pair per held port"
        );
        let node = v4_addr(NODE_A);
        let rev: BTreeSet<u16> = user
            .iter()
            .filter(|(k, e)| {
                k.kind == CtKind::ReverseNat as u8
                    && e.is_snat()
                    && k.src == v4_addr(BE)
                    && k.src_port == BPORT
                    && k.dst == node
            })
            .map(|(k, _)| k.dst_port)
            .collect();
        assert_eq!(
            rev, self.used,
            "{level}: the reverse entries hold the ports"
        );

        let user_events = self.h.engine.drain_drop_events();
        let kernel_events: Vec<DropEvent> = self
            .h
            .dp
            .drain_drop_events()
            .unwrap()
            .into_iter()
            .map(|e| DropEvent { ifindex: 0, ..e })
            .collect();
        assert_eq!(kernel_events, user_events, "{level}: drop events");
        assert_eq!(user_events.len(), drops, "{level}: one event per drop");
        assert!(
            user_events
                .iter()
                .all(|e| e.reason == DropReason::SnatPortsExhausted),
            "{level}: {user_events:?}"
        );
        let kc = self.h.dp.counters().unwrap();
        let uc = *self.h.engine.counters();
        assert_eq!(kc, uc, "{level}: counters {:?}", moved(&uc, &kc));
    }
}

/// What the probes of one level did.
struct LevelReport {
    /// Ports held.
    fill: usize,
    /// Attempts histogram of the successes.
    buckets: [u64; 10],
}

impl LevelReport {
    /// Bounds of the mean attempts of the successes from the histogram's buckets (bucket `i`:
    /// `2^i ..= 2^(i+1) - 1` attempts).
    fn mean_attempts(&self) -> Option<(f64, f64)> {
        let n: u64 = self.buckets.iter().sum();
        if n == 0 {
            return None;
        }
        let (mut lo, mut hi) = (0.0, 0.0);
        for (i, c) in self.buckets.iter().enumerate() {
            lo += *c as f64 * f64::from(1u32 << i);
            hi += *c as f64 * f64::from((2u32 << i) - 1);
        }
        Some((lo / n as f64, hi / n as f64))
    }
}

/// Independent random draws at a fill `u` with `n` attempts: the chance of finding a port, and
/// the mean attempts of those that do (`1/(1-u) - n u^n / (1 - u^n)`).
fn theory(u: f64, n: u32) -> (f64, Option<f64>) {
    let miss = u.powi(i32::try_from(n).unwrap());
    let p = 1.0 - miss;
    let mean = (u < 1.0).then(|| 1.0 / (1.0 - u) - f64::from(n) * miss / p);
    (p, mean)
}

#[test]
fn snat_allocator_under_port_range_pressure() {
    if !common::privileged("snat_allocator_under_port_range_pressure") {
        return;
    }
    let started = Instant::now();
    let attempts = schedule_len();
    assert_eq!(attempts, 240, "netfilter's schedule");
    let mut p = Pressure::new();
    let mut reports: Vec<LevelReport> = Vec::new();
    for target in LEVELS {
        let level = format!("{}/{RANGE} ports held", target);
        let fill_failed = p.fill_to(target);
        assert_eq!(p.used.len(), target);
        let before = *p.h.engine.counters();
        let (mut successes, mut exhausted) = (0, 0);
        for _ in 0..PROBES {
            match p.probe() {
                Alloc::Port(_) => successes += 1,
                Alloc::Exhausted => exhausted += 1,
            }
        }
        let after = *p.h.engine.counters();
        p.assert_tables(&level, fill_failed + exhausted);

        // Every probe is either translated (one histogram count) or a counted drop.
        let delta = |c: Counter| after.get(c) - before.get(c);
        let h0 = histogram(&before);
        let mut buckets = histogram(&after);
        for (b, a) in buckets.iter_mut().zip(h0) {
            *b -= a;
        }
        let exhausted_counted = after.drops(DropReason::SnatPortsExhausted)
            - before.drops(DropReason::SnatPortsExhausted);
        assert_eq!(delta(Counter::ServiceNewFlow), successes as u64, "{level}");
        assert_eq!(buckets.iter().sum::<u64>(), successes as u64, "{level}");
        assert_eq!(exhausted_counted, exhausted as u64, "{level}");
        assert_eq!(delta(Counter::Dropped), exhausted as u64, "{level}");
        assert_eq!(successes + exhausted, PROBES, "{level}");

        let r = LevelReport {
            fill: target,
            buckets,
        };
        let u = target as f64 / RANGE as f64;
        let (p_ok, mean_ok) = theory(u, attempts);
        let mean = r.mean_attempts();
        eprintln!(
            "fill {:5.1} % ({target}/{RANGE}, {fill_failed} fill flows dropped): {successes}/{PROBES} \
             probes translated ({:.1} %), {exhausted} dropped as snat_ports_exhausted; mean \
             attempts {} (histogram {:?}); independent draws: {:.1} % translated, {} attempts",
            100.0 * u,
            100.0 * successes as f64 / PROBES as f64,
            mean.map_or("-".into(), |(lo, hi)| format!("{lo:.1}..{hi:.1}")),
            r.buckets,
            100.0 * p_ok,
            mean_ok.map_or("-".into(), |m| format!("{m:.1}")),
        );

        // What the allocator's design guarantees at each fill.
        match target * 100 / RANGE {
            // At most 90 % used, 240 independent draws all miss with probability 0.9^240 <
            // 1e-10: every probe gets a port.
            50 | 90 => assert_eq!(successes, PROBES, "{level}: every probe gets a port"),
            // Ten free ports: most probes find one (91 % expected), not all.
            99 => {
                assert!(
                    successes > 0 && exhausted > 0,
                    "{level}: some probes translated, some dropped"
                );
                // Within five standard deviations of the binomial.
                let sd = (PROBES as f64 * p_ok * (1.0 - p_ok)).sqrt();
                let expected = PROBES as f64 * p_ok;
                assert!(
                    (successes as f64 - expected).abs() <= 5.0 * sd,
                    "{level}: {successes} translated, {expected:.0} ± {sd:.1} expected \
                     from a schedule of {attempts} independent draws"
                );
            }
            // Full: no port anywhere; nothing is left behind (checked above).
            100 => assert_eq!(exhausted, PROBES, "{level}: every probe dropped"),
            other => unreachable!("{other}"),
        }
        // The mean attempts of the translated probes is that of independent draws: the
        // theoretical value lies within the histogram's bounds (with a margin for the sample).
        if let (Some((lo, hi)), Some(m)) = (mean, mean_ok) {
            assert!(
                lo / 1.25 <= m && m <= hi * 1.25,
                "{level}: mean attempts {lo:.1}..{hi:.1}, independent draws {m:.1}"
            );
        }
        reports.push(r);
    }
    // More fill, more attempts: the bounds of successive levels do not even overlap.
    let means: Vec<(usize, (f64, f64))> = reports
        .iter()
        .filter_map(|r| r.mean_attempts().map(|m| (r.fill, m)))
        .collect();
    for w in means.windows(2) {
        let ((f0, (_, hi0)), (f1, (lo1, _))) = (w[0], w[1]);
        assert!(
            lo1 > hi0,
            "mean attempts at {f1} ports held ({lo1:.1}..) not above those at {f0} (..{hi0:.1})"
        );
    }
    eprintln!(
        "XDP: {} packets identical between engine and kernel ({} fill flows, {} probes) in {:.1?}",
        p.packets,
        p.fill_flows,
        p.probes,
        started.elapsed()
    );
}
