//! In-kernel cost of an established packet (BPF_PROG_TEST_RUN with `repeat` runs), with 1
//! service and with the largest service count.
//!
//! `BPF_PROG_TEST_RUN` runs the program `repeat` times on one buffer without restoring it, so
//! a translated packet is another packet from the second run on (docs/performance.md, "How it
//! is measured"). The measured service therefore has itself as its only backend: its DNAT
//! rewrites the destination to the bytes it already has, and every run is the established path
//! (conntrack hit, rewrite, checksum update, counters). The `service_established` counter is
//! checked to have grown by exactly `repeat`.

use anyhow::{bail, Result};
use lb_api::counters::Counter;
use lb_api::flow::L4Proto;
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_bpf::{KernelDatapath, LoadOptions, Program};
use lb_control::{default_config, Selection, ServiceSpec};

use crate::{service, sizes, Args};

/// The measured service's frontend (and only backend), outside the fillers' 10.96.0.0/16.
pub(crate) const MEASURED: [u8; 4] = [10, 97, 0, 1];
/// The measured flow's client.
pub(crate) const CLIENT: [u8; 4] = [10, 0, 0, 1];

/// The measured service, `id`.
pub(crate) fn measured_service(id: u32) -> ServiceSpec {
    ServiceSpec {
        id,
        frontend: (MEASURED, 80).into(),
        proto: L4Proto::Tcp,
        backends: vec![std::net::SocketAddr::from((MEASURED, 80)).into()],
        ..Default::default()
    }
}

/// Starts the measured flow (its SYN) and returns its ACK.
pub(crate) fn start_flow(dp: &KernelDatapath) -> Result<Vec<u8>> {
    let syn = tcp_v4_frame(CLIENT, 40_000, MEASURED, 80, TcpFlags::SYN, b"");
    let out = dp.test_run(Program::Xdp, &syn, 1)?;
    if out.verdict != Verdict::Pass {
        bail!("the measured flow's SYN got {:?}", out.verdict);
    }
    Ok(tcp_v4_frame(
        CLIENT,
        40_000,
        MEASURED,
        80,
        TcpFlags::ACK,
        b"",
    ))
}

/// ns per run of `repeat` established-path runs of `ack`, checked by the counter.
pub(crate) fn established_ns(dp: &KernelDatapath, ack: &[u8], repeat: u32) -> Result<f64> {
    let before = dp.counters()?.get(Counter::ServiceEstablished);
    let out = dp.test_run(Program::Xdp, ack, repeat)?;
    let runs = dp.counters()?.get(Counter::ServiceEstablished) - before;
    if runs != u64::from(repeat) {
        bail!("{runs} of {repeat} runs took the established path: the measurement is not of it");
    }
    Ok(out.duration.as_nanos() as f64)
}

/// Runs per configuration, alternating between them (this VM's run-to-run spread is larger
/// than the difference looked for).
const ROUNDS: usize = 5;

/// The table: ns per established packet with 1 service and with the largest count, both
/// datapaths loaded side by side and measured in alternation.
pub(crate) fn established(args: &Args) -> Result<()> {
    let most = args.services.iter().copied().max().unwrap_or(1);
    let mut rows = Vec::new();
    for count in [1, most] {
        let mut dp = KernelDatapath::load_with(&LoadOptions::with_sizes(sizes(args)))?;
        dp.set_config(&default_config(1))?;
        for id in 1..count {
            dp.upsert_service(&service(id, 2, Selection::Random))?;
        }
        dp.upsert_service(&measured_service(count))?;
        let ack = start_flow(&dp)?;
        rows.push((count, dp, ack, Vec::new(), Vec::new()));
    }
    for _ in 0..ROUNDS {
        for (_, dp, ack, parse, est) in &mut rows {
            let p = dp.test_run(Program::XdpParseOnly, ack, args.repeat)?;
            parse.push(p.duration.as_nanos() as f64);
            est.push(established_ns(dp, ack, args.repeat)?);
        }
    }
    println!(
        "\n### Established packet, in kernel (BPF_PROG_TEST_RUN, repeat {}; median and range of {ROUNDS} alternating runs)\n",
        args.repeat
    );
    println!("| services | XDP parse only (ns) | XDP established (ns) |");
    println!("|---:|---:|---:|");
    for (count, _, _, parse, est) in &mut rows {
        println!("| {count} | {} | {} |", spread(parse), spread(est));
    }
    Ok(())
}

/// "median (min-max)".
fn spread(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    let at = |i: usize| v.get(i).copied().unwrap_or(f64::NAN);
    format!(
        "{:.0} ({:.0}-{:.0})",
        at(v.len() / 2),
        at(0),
        at(v.len().saturating_sub(1))
    )
}
