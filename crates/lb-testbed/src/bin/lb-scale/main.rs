//! Scale figures of the kernel datapath: load and programming time for many services, memory
//! per table, in-kernel cost per established packet with 1 and with many services, and
//! conntrack GC over a table of a million entries. Prints Markdown tables
//! (`docs/performance.md`, "Scale").
//!
//! Run with `sudo -E cargo xtask scale` (release build; about ten minutes on two cores), or
//! `cargo run -p lb-testbed --bin lb-scale -- --smoke` as root for tiny sizes (what
//! `cargo xtask test` runs).

mod gc;
mod packet;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use lb_api::flow::L4Proto;
use lb_api::tables;
use lb_bpf::{KernelDatapath, LoadOptions};
use lb_control::{
    default_config, table_memory_bytes, ConfigError, Selection, ServiceSpec, TableSizes,
};

#[derive(Parser)]
#[command(about = "scale figures of the kernel datapath")]
pub(crate) struct Args {
    /// Service counts to program (each row loads a fresh datapath).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    services: Vec<u32>,
    /// Backends per service.
    #[arg(long, value_delimiter = ',', default_value = "2,10,100")]
    backends: Vec<u32>,
    /// Slots of each Maglev table (a prime of `lb_control::MAGLEV_TABLE_SIZES`).
    #[arg(long, default_value_t = lb_control::MAGLEV_DEFAULT_TABLE_SIZE)]
    maglev_slots: u32,
    /// Conntrack entries for the GC measurement (filled to all but a few with real flows).
    #[arg(long, default_value_t = 1 << 20)]
    conntrack: u32,
    /// Runs per BPF_PROG_TEST_RUN measurement.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Tiny sizes, to check that the command works (what `cargo xtask test` runs).
    #[arg(long)]
    smoke: bool,
    /// Which parts to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "programming,memory,packet,gc"
    )]
    parts: Vec<Part>,
}

/// The parts of the figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Part {
    /// Load and programming time.
    Programming,
    /// Memory per table.
    Memory,
    /// ns per established packet at 1 and many services.
    Packet,
    /// Conntrack GC over a full table.
    Gc,
}

/// The table sizes of every part but the GC one: the defaults (tiny with `--smoke`).
pub(crate) fn sizes(args: &Args) -> TableSizes {
    if args.smoke {
        TableSizes {
            conntrack: 4096,
            services: 256,
            backends: 2048,
            nodes: 16,
            ..TableSizes::small()
        }
    } else {
        TableSizes::default()
    }
}

/// Service `id` (1-based) with `backends` backends: frontend 10.96.0.0/16 + id, port 80.
pub(crate) fn service(id: u32, backends: u32, selection: Selection) -> ServiceSpec {
    let [_, _, hi, lo] = id.to_be_bytes();
    ServiceSpec {
        id,
        frontend: ([10, 96, hi, lo], 80).into(),
        proto: L4Proto::Tcp,
        backends: (0..backends)
            .map(|i| {
                let [_, _, bh, bl] = i.to_be_bytes();
                std::net::SocketAddr::from(([10, 1, bh, bl], 8080)).into()
            })
            .collect(),
        selection,
        ..Default::default()
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if !lb_testbed::gate::is_privileged() {
        bail!("needs root (BPF maps, BPF_PROG_TEST_RUN): sudo -E cargo xtask scale");
    }
    if args.smoke {
        // One row per selection: each row is a load through the verifier.
        args.services = vec![50];
        args.backends = vec![3];
        args.maglev_slots = 251;
        args.conntrack = 4096;
        args.repeat = 1000;
    }
    println!("load average: {}", load_average());
    for part in args.parts.clone() {
        match part {
            Part::Programming => programming(&args)?,
            Part::Memory => memory(&args)?,
            Part::Packet => packet::established(&args)?,
            Part::Gc => gc::sweep(&args)?,
        }
    }
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Load and programming time per row; a row stops at the first `TableFull`.
fn programming(args: &Args) -> Result<()> {
    let sizes = sizes(args);
    println!(
        "\n### Load and programming ({} services, {} backend slots, conntrack {})\n",
        sizes.services, sizes.backends, sizes.conntrack
    );
    println!("| selection | backends | services asked | programmed | load (s) | programming (s) | per service (µs) | refused with |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    let maglev = Selection::Maglev {
        table_size: args.maglev_slots,
    };
    for (name, selection) in [("random", Selection::Random), ("Maglev", maglev)] {
        for &b in &args.backends {
            for &s in &args.services {
                let t0 = Instant::now();
                let mut dp = KernelDatapath::load_with(&LoadOptions::with_sizes(sizes))
                    .context("loading")?;
                let load = t0.elapsed();
                dp.set_config(&default_config(1))?;
                let t1 = Instant::now();
                let mut programmed = 0;
                let mut refused = String::from("—");
                for id in 1..=s {
                    match dp.upsert_service(&service(id, b, selection)) {
                        Ok(()) => programmed += 1,
                        Err(lb_bpf::Error::Config(e @ ConfigError::TableFull { .. })) => {
                            refused = e.to_string();
                            break;
                        }
                        Err(e) => return Err(e).context(format!("service {id}")),
                    }
                }
                let prog = t1.elapsed();
                println!(
                    "| {name} | {b} | {s} | {programmed} | {:.2} | {:.2} | {:.1} | {refused} |",
                    load.as_secs_f64(),
                    prog.as_secs_f64(),
                    per(prog, programmed)
                );
                drop(dp);
                if programmed < s {
                    // Larger counts stop at the same place.
                    break;
                }
            }
        }
    }
    Ok(())
}

fn per(d: Duration, n: u32) -> f64 {
    if n == 0 {
        0.0
    } else {
        d.as_secs_f64() * 1e6 / f64::from(n)
    }
}

/// Estimated (`TableSizes::memory_bytes`) against the kernel's `memlock` of every table.
fn memory(args: &Args) -> Result<()> {
    let sizes = sizes(args);
    let dp = KernelDatapath::load_with(&LoadOptions::with_sizes(sizes))?;
    println!("\n### Memory per table (estimate against the kernel's fdinfo `memlock`)\n");
    println!("| table | entries | estimate (MiB) | kernel memlock (MiB) |");
    println!("|---|---:|---:|---:|");
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let (mut est_sum, mut kernel_sum) = (0, 0);
    for t in tables::ALL {
        let kernel = dp.kernel_memory_bytes(t)?;
        kernel_sum += kernel;
        let (entries, estimate) = match sizes.of(&t) {
            Some((n, _)) => {
                let e = table_memory_bytes(&t, n);
                est_sum += e;
                (n.to_string(), format!("{:.1}", mib(e)))
            }
            None => (t.default_max_entries.to_string(), "—".into()),
        };
        println!(
            "| `{}` | {entries} | {estimate} | {:.1} |",
            t.name,
            mib(kernel)
        );
    }
    println!("| all | | {:.1} | {:.1} |", mib(est_sum), mib(kernel_sum));
    Ok(())
}
