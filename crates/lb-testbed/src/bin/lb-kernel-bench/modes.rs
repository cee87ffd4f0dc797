//! `lb-kernel-bench --modes`: ns per packet of each forwarding mode's hot path at XDP.
//!
//! Two datapaths are loaded side by side, each with its own maps: node A, which receives the
//! client's packets to a service, and node B, the node the backends run on. Every service is
//! configured on both, as a CNI would. The frames node B is measured with are the ones node A's
//! program produced (the DSR carrier, the VXLAN packet), and the tunnel reply node A is measured
//! with is the one node B's program encapsulated.
//!
//! Why single runs: `BPF_PROG_TEST_RUN` with `repeat` n runs the program n times on one buffer
//! without restoring it, so run k sees what run k-1 wrote (a translated, grown or decapsulated
//! packet). Only the first of the n runs takes the path under test; for an established flow the
//! other n-1 are "not a service" (the counters show it). Each measured packet is therefore one
//! `BPF_PROG_TEST_RUN` call with `repeat` 1 (the kernel copies the input anew per call), and the
//! table gives the median of the kernel's per-call times. The parse-only baseline is measured
//! the same way; its figure at a large `repeat` (valid: it does not change the packet) shows the
//! cost of measuring single runs.
//!
//! Before a time counts, its run is checked: the verdict; the output bytes equal to those of the
//! userspace engine (the reference, fed the same packets in the same order); the output decoded
//! by etherparse (an independent decoder) with valid checksums and the expected addresses,
//! ports, DSR carrier and VXLAN header; and, per row, the counters of both worlds grew by
//! exactly the row's counters, once per run, and by nothing else (no drop, no other path). The
//! first run of each row is a check-only preflight, not timed.

use std::net::{IpAddr, SocketAddr};

use anyhow::{ensure, Context, Result};
use lb_api::abi::DatapathConfig;
use lb_api::counters::Counter;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_bpf::{KernelDatapath, Program};
use lb_control::{NodeSpec, ServiceSpec};

use crate::decode::{decode, Outer, Want, VXLAN_PORT};
use crate::node::{check_snat_reservations, delta, show, summarize, Node};
use crate::plan::{frame, Family, Mode};

/// Options of the modes table.
pub struct Opts {
    /// Timed single runs per row.
    pub runs: u32,
    /// Runs of the parse-only reference at a large `repeat`.
    pub repeat: u32,
    /// Also measure IPv6 (SNAT, DSR, tunnel).
    pub v6: bool,
}

/// The SNAT allocator's histogram of attempts per new flow.
const SNAT_ATTEMPTS: [Counter; 10] = [
    Counter::SnatAttempts1,
    Counter::SnatAttempts2,
    Counter::SnatAttempts4,
    Counter::SnatAttempts8,
    Counter::SnatAttempts16,
    Counter::SnatAttempts32,
    Counter::SnatAttempts64,
    Counter::SnatAttempts128,
    Counter::SnatAttempts256,
    Counter::SnatAttempts512,
];

/// Client port of the flow the established and reply rows use.
const FLOW_PORT: u16 = 50_000;
/// First client port of the new-flow rows (one port per run).
const NEW_FLOW_PORT: u16 = 10_000;
/// Most timed runs per row: the new-flow ports stay below [`FLOW_PORT`], and a row's flows
/// (two entries each) fit the 65 536-entry conntrack map.
pub const MAX_RUNS: u32 = 30_000;
const VNI: u32 = 1;

/// A measured row.
struct Row {
    family: Family,
    node: &'static str,
    mode: Mode,
    path: &'static str,
    median: u64,
    mean: f64,
    len_in: usize,
    len_out: usize,
}

/// A row to measure on one node: run `i` sends `frames(i)` (run 0 is the untimed preflight)
/// and must come out as `want(i)`, counting `counters` (and `rx_packets`) once each.
struct Case<'a> {
    path: &'static str,
    frames: &'a dyn Fn(u32) -> Result<Vec<u8>>,
    want: &'a dyn Fn(u32) -> Want,
    counters: &'a [Counter],
    /// The output's source port is drawn at random (a SNAT port): the worlds are compared but
    /// for it, and each world's ports are checked by property after the row.
    random_port: bool,
}

/// The outputs of a row's runs: the kernel's, and the engine's when they may differ from them
/// (a drawn port).
struct Outputs {
    kernel: Vec<Vec<u8>>,
    engine: Vec<Vec<u8>>,
}

/// Measures `case` on `node`; returns the row and the outputs of every run.
fn measure(
    node: &mut Node,
    family: Family,
    mode: Mode,
    runs: u32,
    case: &Case<'_>,
) -> Result<(Row, Outputs)> {
    let name = node.name;
    let ctx = || {
        format!(
            "{} {}, node {name}: {}",
            family.name(),
            mode.name(),
            case.path
        )
    };
    let (k0, e0) = (node.dp().counters()?, *node.pair.engine.counters());
    let mut times = Vec::with_capacity(runs as usize);
    let mut outs = Vec::with_capacity(runs as usize + 1);
    let mut engine_outs = Vec::new();
    let (mut len_in, mut len_out) = (0, 0);
    for i in 0..=runs {
        let input = (case.frames)(i)?;
        let (out, ns) = if case.random_port {
            let (out, engine_out, ns) = node
                .once_random_port(&input)
                .with_context(|| format!("{}, run {i}", ctx()))?;
            let view = decode(&engine_out)
                .with_context(|| format!("{}, run {i}: the engine's output", ctx()))?;
            (case.want)(i)
                .check(&view)
                .with_context(|| format!("{}, run {i}: the engine's output", ctx()))?;
            engine_outs.push(engine_out);
            (out, ns)
        } else {
            node.once(&input)
                .with_context(|| format!("{}, run {i}", ctx()))?
        };
        let view = decode(&out).with_context(|| format!("{}, run {i}: output", ctx()))?;
        (case.want)(i)
            .check(&view)
            .with_context(|| format!("{}, run {i}", ctx()))?;
        if i == 0 {
            (len_in, len_out) = (input.len(), out.len());
        } else {
            times.push(ns);
        }
        outs.push(out);
    }
    let n = u64::from(runs) + 1;
    let mut want: Vec<(usize, u64)> = std::iter::once(Counter::RxPackets)
        .chain(case.counters.iter().copied())
        .map(|c| (c.slot() as usize, n))
        .collect();
    want.sort_unstable();
    let (k1, e1) = (node.dp().counters()?, *node.pair.engine.counters());
    for (world, mut got) in [("kernel", delta(&k0, &k1)), ("engine", delta(&e0, &e1))] {
        if case.random_port {
            // How many ports each new flow tried depends on the draws: the histogram differs
            // between the worlds, but every flow counts in it once.
            let attempts: Vec<usize> = SNAT_ATTEMPTS.iter().map(|c| c.slot() as usize).collect();
            let tried: u64 = got
                .iter()
                .filter(|(s, _)| attempts.contains(s))
                .map(|(_, d)| d)
                .sum();
            ensure!(
                tried == n,
                "{}: {world}'s SNAT attempt histogram grew by {tried}, expected {n}",
                ctx()
            );
            got.retain(|(s, _)| !attempts.contains(s));
        }
        ensure!(
            got == want,
            "{}: {world} counters grew by [{}], expected [{}]",
            ctx(),
            show(&got),
            show(&want)
        );
    }
    let (median, mean) = summarize(times);
    Ok((
        Row {
            family,
            node: node.name,
            mode,
            path: case.path,
            median,
            mean,
            len_in,
            len_out,
        },
        Outputs {
            kernel: outs,
            engine: engine_outs,
        },
    ))
}

/// Every row of one family and mode: the flow under test is created by an untimed, checked SYN;
/// then its established packets and replies on each node, then new flows on node A and their
/// first packets on node B.
fn bench_mode(a: &mut Node, b: &mut Node, fam: Family, mode: Mode, runs: u32) -> Result<Vec<Row>> {
    a.reset()?;
    b.reset()?;
    let mut rows = Vec::new();
    let client = fam.client();
    let vip = fam.vip(mode);
    let backends = fam.backends(mode);
    let (node_a, node_b) = (fam.node(false), fam.node(true));
    let client_at = |port| SocketAddr::new(client, port);
    // What node A counts besides the translation when it carries a packet to node B.
    let carrier = match mode {
        Mode::Dsr => Some(Counter::DsrCarrierAdded),
        Mode::Tunnel => Some(Counter::TunnelEncapsulated),
        Mode::Local | Mode::Snat => None,
    };
    // The forward packet of client port `port` as it leaves node A, to `dst`.
    // Under SNAT, a client port outside the node's SNAT range is replaced by one drawn from it
    // (at random: the kernel's `bpf_get_prandom_u32`, the engine's own generator); a port inside
    // it is kept when free.
    let snat_range = (
        a.pair.config().snat_port_min(),
        a.pair.config().snat_port_max(),
    );
    let drawn = |port: u16| mode == Mode::Snat && !(snat_range.0..=snat_range.1).contains(&port);
    let fwd_want = |port: u16, dst: Vec<SocketAddr>| Want {
        src: if mode == Mode::Snat {
            SocketAddr::new(node_a, port)
        } else {
            client_at(port)
        },
        src_ports: drawn(port).then_some(snat_range),
        dst,
        dsr: (mode == Mode::Dsr).then_some(vip),
        outer: (mode == Mode::Tunnel).then_some(Outer {
            src: node_a,
            dst: node_b,
            dst_port: VXLAN_PORT,
            vni: VNI,
        }),
    };

    // The flow under test.
    let syn = frame(client_at(FLOW_PORT), vip, TcpFlags::SYN)?;
    let (syn_out, _) = a.once(&syn).context("the flow's SYN on node A")?;
    let syn_view = decode(&syn_out)?;
    fwd_want(FLOW_PORT, backends.clone()).check(&syn_view)?;
    let backend = syn_view.dst;
    let ack = frame(client_at(FLOW_PORT), vip, TcpFlags::ACK)?;

    let counters: Vec<Counter> = std::iter::once(Counter::ServiceEstablished)
        .chain(carrier)
        .collect();
    let (row, outs) = measure(
        a,
        fam,
        mode,
        runs,
        &Case {
            path: "established",
            frames: &|_| Ok(ack.clone()),
            want: &|_| fwd_want(FLOW_PORT, vec![backend]),
            counters: &counters,
            random_port: false,
        },
    )?;
    rows.push(row);
    let ack_out = outs.kernel.into_iter().next().context("no output")?;

    // Where the backend's replies go: the flow's source as the backend sees it.
    let seen_src = fwd_want(FLOW_PORT, vec![]).src;
    let reply = frame(backend, seen_src, TcpFlags::ACK)?;
    let mut reply_to_a = reply.clone();
    if mode.carried() {
        // The backend's node learns the flow from its first packet, as node A sent it.
        let (first, _) = b.once(&syn_out).context("the flow's SYN on node B")?;
        let mut want_b = fwd_want(FLOW_PORT, vec![backend]);
        want_b.outer = None;
        want_b.check(&decode(&first)?)?;
        let counters: Vec<Counter> = (mode == Mode::Tunnel)
            .then_some(Counter::TunnelDecapsulated)
            .into_iter()
            .chain([Counter::ServiceEstablished])
            .collect();
        let (row, _) = measure(
            b,
            fam,
            mode,
            runs,
            &Case {
                path: "established",
                frames: &|_| Ok(ack_out.clone()),
                want: &|_| Want {
                    outer: None,
                    ..fwd_want(FLOW_PORT, vec![backend])
                },
                counters: &counters,
                random_port: false,
            },
        )?;
        rows.push(row);

        // DSR: straight to the client from the service address; tunnel: back to node A.
        let counters: Vec<Counter> = std::iter::once(Counter::ReplyTranslated)
            .chain((mode == Mode::Tunnel).then_some(Counter::TunnelEncapsulated))
            .collect();
        let reply_want = || {
            if mode == Mode::Dsr {
                Want {
                    src: vip,
                    src_ports: None,
                    dst: vec![client_at(FLOW_PORT)],
                    dsr: None,
                    outer: None,
                }
            } else {
                Want {
                    src: backend,
                    src_ports: None,
                    dst: vec![client_at(FLOW_PORT)],
                    dsr: None,
                    outer: Some(Outer {
                        src: node_b,
                        dst: node_a,
                        dst_port: VXLAN_PORT,
                        vni: VNI,
                    }),
                }
            }
        };
        let (row, outs) = measure(
            b,
            fam,
            mode,
            runs,
            &Case {
                path: "reply",
                frames: &|_| Ok(reply.clone()),
                want: &|_| reply_want(),
                counters: &counters,
                random_port: false,
            },
        )?;
        rows.push(row);
        reply_to_a = outs.kernel.into_iter().next().context("no output")?;
    }

    // Under DSR the replies do not come back through node A.
    if mode != Mode::Dsr {
        let counters: Vec<Counter> = (mode == Mode::Tunnel)
            .then_some(Counter::TunnelDecapsulated)
            .into_iter()
            .chain([Counter::ReplyTranslated])
            .collect();
        let (row, _) = measure(
            a,
            fam,
            mode,
            runs,
            &Case {
                path: "reply",
                frames: &|_| Ok(reply_to_a.clone()),
                want: &|_| Want {
                    src: vip,
                    src_ports: None,
                    dst: vec![client_at(FLOW_PORT)],
                    dsr: None,
                    outer: None,
                },
                counters: &counters,
                random_port: false,
            },
        )?;
        rows.push(row);
    }

    // New flows: a distinct client port per run.
    let port = |i: u32| NEW_FLOW_PORT + i as u16;
    let counters: Vec<Counter> = std::iter::once(Counter::ServiceNewFlow)
        .chain(carrier)
        .collect();
    let (row, new) = measure(
        a,
        fam,
        mode,
        runs,
        &Case {
            path: "new flow",
            frames: &|i| frame(client_at(port(i)), vip, TcpFlags::SYN),
            want: &|i| fwd_want(port(i), backends.clone()),
            counters: &counters,
            random_port: drawn(port(1)),
        },
    )?;
    rows.push(row);
    if drawn(port(1)) {
        let clients: Vec<SocketAddr> = (0..=runs).map(|i| client_at(port(i))).collect();
        check_snat_reservations(
            "kernel",
            &a.dp().conntrack_entries()?,
            &clients,
            vip,
            &new.kernel,
        )
        .with_context(|| format!("{} {}: new flows", fam.name(), mode.name()))?;
        check_snat_reservations(
            "engine",
            &a.pair.engine_conntrack(),
            &clients,
            vip,
            &new.engine,
        )
        .with_context(|| format!("{} {}: new flows", fam.name(), mode.name()))?;
    }
    let new_outs = new.kernel;

    if mode.carried() {
        let counters: Vec<Counter> = (mode == Mode::Tunnel)
            .then_some(Counter::TunnelDecapsulated)
            .into_iter()
            .chain([Counter::BackendSideNewFlow])
            .collect();
        let (row, _) = measure(
            b,
            fam,
            mode,
            runs,
            &Case {
                path: "first packet (backend-side flow creation)",
                frames: &|i| {
                    new_outs
                        .get(i as usize)
                        .cloned()
                        .context("node A's output for this run")
                },
                want: &|i| Want {
                    outer: None,
                    ..fwd_want(port(i), backends.clone())
                },
                counters: &counters,
                random_port: false,
            },
        )?;
        rows.push(row);
    }
    Ok(rows)
}

/// The parse-only baseline of a family: single runs (the method of every row) and the
/// program's figure at a large `repeat`.
fn baseline(dp: &KernelDatapath, fam: Family, opts: &Opts) -> Result<(u64, f64, u64)> {
    let f = frame(
        SocketAddr::new(fam.client(), FLOW_PORT),
        fam.vip(Mode::Local),
        TcpFlags::SYN,
    )?;
    let mut times = Vec::with_capacity(opts.runs as usize);
    for i in 0..=opts.runs {
        let out = dp.test_run(Program::XdpParseOnly, &f, 1)?;
        ensure!(
            out.verdict == Verdict::Pass && out.data == f,
            "parse-only: {:?}, output {} B (expected Pass and the input unchanged)",
            out.verdict,
            out.data.len()
        );
        if i > 0 {
            times.push(out.duration.as_nanos() as u64);
        }
    }
    let (median, mean) = summarize(times);
    let many = dp.test_run(Program::XdpParseOnly, &f, opts.repeat)?;
    ensure!(
        many.verdict == Verdict::Pass && many.data == f,
        "parse-only"
    );
    Ok((median, mean, many.duration.as_nanos() as u64))
}

/// What a large `repeat` does to a packet-changing path: an established flow's ACK run 1000
/// times in one call, at XDP and at TC, and the counters it moved (the reason for single runs).
fn repeat_effect(node: &mut Node) -> Result<String> {
    node.reset()?;
    let (client, vip) = (
        SocketAddr::new(Family::V4.client(), FLOW_PORT),
        Family::V4.vip(Mode::Local),
    );
    let syn = node
        .dp()
        .test_run(Program::Xdp, &frame(client, vip, TcpFlags::SYN)?, 1)?;
    ensure!(syn.verdict == Verdict::Pass, "the SYN: {:?}", syn.verdict);
    let ack = frame(client, vip, TcpFlags::ACK)?;
    let mut said = Vec::new();
    for p in [Program::Xdp, Program::Tc] {
        let before = node.dp().counters()?;
        node.dp().test_run(p, &ack, 1000)?;
        let d = delta(&before, &node.dp().counters()?);
        said.push(format!("{}: {}", p.name(), show(&d)));
    }
    // The engine never saw these packets: start both worlds afresh.
    node.reset()?;
    Ok(said.join("; "))
}

/// Measures and prints the modes table.
///
/// # Errors
/// Loading or a run failing, or any run not taking the intended path (with what it did).
pub fn run(cfg: DatapathConfig, opts: &Opts) -> Result<()> {
    ensure!(
        (1..=MAX_RUNS).contains(&opts.runs),
        "--runs must be 1..={MAX_RUNS}"
    );
    let families: &[Family] = if opts.v6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    let services: Vec<ServiceSpec> = families
        .iter()
        .flat_map(|f| Mode::ALL.map(|m| f.service(m)))
        .collect();
    let node_spec = |b: bool| NodeSpec {
        address_v4: match Family::V4.node(b) {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        },
        address_v6: match Family::V6.node(b) {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        },
        peers: vec![Family::V4.node(!b), Family::V6.node(!b)],
        vni: VNI,
        tunnel_port: VXLAN_PORT,
        ..NodeSpec::default()
    };
    let mut a = Node::load("A", cfg, node_spec(false), services.clone())?;
    let mut b = Node::load("B", cfg, node_spec(true), services)?;

    let repeat_note = repeat_effect(&mut a)?;
    let mut rows = Vec::new();
    let mut bases = Vec::new();
    for &fam in families {
        bases.push((fam, baseline(a.dp(), fam, opts)?));
        for mode in Mode::ALL {
            if fam == Family::V6 && mode == Mode::Local {
                continue;
            }
            rows.extend(bench_mode(&mut a, &mut b, fam, mode, opts.runs)?);
        }
    }

    // Per mode: node A's paths, then node B's, each in the order a flow meets them.
    let order = |r: &Row| {
        let path = ["new flow", "first packet", "established", "reply"]
            .iter()
            .position(|p| r.path.starts_with(p));
        (r.family as u8, r.mode as u8, r.node, path)
    };
    rows.sort_by_key(order);
    println!(
        "BPF_PROG_TEST_RUN at XDP, single runs: median (and mean) of {} runs per row, each \
         checked; node A = the node the client's packets reach, node B = the backends' node; \
         clock: {}\n",
        opts.runs,
        if cfg.fixed_now_ns != 0 {
            "fixed (config)"
        } else {
            "bpf_ktime_get_coarse_ns"
        }
    );
    println!(
        "Why single runs: one established ACK at repeat 1000 moved the counters by {repeat_note}"
    );
    for (fam, (median, mean, many)) in &bases {
        println!(
            "{} parse-only baseline: {median} ns median (mean {mean:.0}) in single runs; \
             {many} ns at repeat {}",
            fam.name(),
            opts.repeat
        );
    }
    println!();
    println!(
        "| family | mode | node | path | bytes in→out | ns median | vs parse-only | ns mean |"
    );
    println!("|---|---|---|---|---:|---:|---:|---:|");
    for r in &rows {
        let base = bases
            .iter()
            .find(|(f, _)| *f == r.family)
            .map_or(0, |(_, (m, _, _))| *m);
        println!(
            "| {} | {} | {} | {} | {}→{} | {} | {:+} | {:.0} |",
            r.family.name(),
            r.mode.name(),
            r.node,
            r.path,
            r.len_in,
            r.len_out,
            r.median,
            r.median as i64 - base as i64,
            r.mean
        );
    }
    Ok(())
}
