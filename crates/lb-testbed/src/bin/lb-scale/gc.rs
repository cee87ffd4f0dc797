//! Conntrack GC over a full table: the kernel map sized to `--conntrack` entries and filled with
//! real flows (SYNs through the XDP program), then
//! - a sweep that deletes nothing (every flow is young: the scan alone), run by the GC task
//!   while the main thread measures the established packet as [`crate::packet`] does;
//! - a sweep an hour later (the clock is the configuration's fixed time), when every
//!   half-open flow has expired: the deletes.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_bpf::{KernelDatapath, LoadOptions, Program};
use lb_conntrack::{ConntrackGc, GcConfig};
use lb_control::{default_config, Selection, TableSizes};

use crate::packet::{established_ns, measured_service, start_flow};
use crate::{service, sizes, Args};

const NOW_NS: u64 = 1_000_000_000;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The GC table.
pub(crate) fn sweep(args: &Args) -> Result<()> {
    let sizes = TableSizes {
        conntrack: args.conntrack,
        ..sizes(args)
    };
    let mut dp = KernelDatapath::load_with(&LoadOptions::with_sizes(sizes))?;
    let mut cfg = default_config(1);
    cfg.fixed_now_ns = NOW_NS;
    dp.set_config(&cfg)?;
    dp.upsert_service(&service(1, 2, Selection::Random))?;
    dp.upsert_service(&measured_service(2))?;

    // Two entries per flow; room left for the measured flow.
    let flows = args.conntrack / 2 - 8;
    let t0 = Instant::now();
    for i in 0..flows {
        let [_, a, b, c] = i.to_be_bytes();
        let syn = tcp_v4_frame(
            [172, 16 + a, b, c],
            40_000,
            [10, 96, 0, 1],
            80,
            TcpFlags::SYN,
            b"",
        );
        dp.test_run(Program::Xdp, &syn, 1)?;
    }
    let fill = t0.elapsed();
    let ack = start_flow(&dp)?;
    let entries = dp.conntrack_entries()?.len();
    if entries < (flows as usize) * 2 {
        bail!("only {entries} conntrack entries after {flows} new flows");
    }
    let repeat = (args.repeat / 10).max(1000);
    let mut idle: Vec<f64> = (0..10)
        .map(|_| established_ns(&dp, &ack, repeat))
        .collect::<Result<_>>()?;

    // The scan: nothing expires at the fixed clock.
    let task = dp.spawn_conntrack_gc(GcConfig::default())?;
    let mut during = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while task.status().sweeps == 0 && Instant::now() < deadline {
        during.push(established_ns(&dp, &ack, repeat)?);
    }
    let status = task.stop();
    let Some(scan) = status.last_report else {
        bail!("the GC task's sweep failed: {:?}", status.last_error);
    };

    // The deletes: an hour later every half-open flow (SYN_SENT: 120 s) has expired.
    cfg.fixed_now_ns = NOW_NS + 3_600_000_000_000;
    dp.set_config(&cfg)?;
    let mut gc = ConntrackGc::new(GcConfig::default());
    let expire = dp.conntrack_gc(&mut gc, cfg.fixed_now_ns)?;

    println!(
        "\n### Conntrack GC over {} entries ({flows} flows; filled in {:.1} s through XDP)\n",
        entries,
        fill.as_secs_f64()
    );
    println!("| sweep | scanned | deleted | duration (s) |");
    println!("|---|---:|---:|---:|");
    for (name, r) in [
        ("nothing expired (scan)", scan),
        ("all expired (deletes)", expire),
    ] {
        println!(
            "| {name} | {} | {} | {:.2} |",
            r.scanned,
            r.deleted,
            r.duration.as_secs_f64()
        );
    }
    let samples = during.len();
    println!(
        "\nEstablished packet (repeat {repeat}, median): {:.1} ns without GC, {:.1} ns while the \
         scan runs ({samples} samples)",
        median(&mut idle),
        median(&mut during)
    );
    Ok(())
}
