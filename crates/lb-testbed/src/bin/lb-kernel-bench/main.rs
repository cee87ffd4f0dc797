//! In-kernel cost per packet of each datapath path, measured with BPF_PROG_TEST_RUN, set
//! against the parse-only program in the same run. Every row is checked by the counters to
//! have taken the path it names ([`paths`]).
//!
//! Run with `sudo -E cargo xtask bench --kernel-only` (or `cargo run --release -p lb-testbed
//! --bin lb-kernel-bench` as root). `--modes` measures the forwarding modes instead (see
//! [`modes`]).

mod decode;
mod modes;
mod node;
mod paths;
mod plan;

use anyhow::{bail, Result};
use clap::Parser;
use lb_control::default_config;

#[derive(Parser)]
#[command(about = "ns/packet of the eBPF datapath via BPF_PROG_TEST_RUN")]
struct Args {
    /// Runs per repeated measurement.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Calls (at repeat 1, each on another packet) per single-run row: new flows and flows
    /// spread over the full table.
    #[arg(long, default_value_t = 20_000)]
    singles: u32,
    /// Conntrack entries for the "full" rows (the table is sized for them and filled by the
    /// flows' SYNs, half IPv4 and half IPv6).
    #[arg(long, default_value_t = 1_000_000)]
    ct_fill: u32,
    /// Use the config's fixed clock instead of `bpf_ktime_get_coarse_ns` (shows the clock's
    /// cost).
    #[arg(long)]
    fixed_clock: bool,
    /// Measure each forwarding mode's paths (SNAT, DSR, VXLAN tunnel; both nodes) in single
    /// checked runs, instead of the default table.
    #[arg(long)]
    modes: bool,
    /// With `--modes`: timed single runs per row.
    #[arg(long, default_value_t = 20_000)]
    runs: u32,
    /// IPv4 only.
    #[arg(long)]
    no_v6: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !lb_testbed::gate::is_privileged() {
        bail!("needs root (BPF_PROG_TEST_RUN): sudo -E cargo xtask bench --kernel-only");
    }
    let mut cfg = default_config(7);
    if args.fixed_clock {
        cfg.fixed_now_ns = 1_000_000_000;
    }
    if args.modes {
        return modes::run(
            cfg,
            &modes::Opts {
                runs: args.runs,
                repeat: args.repeat,
                v6: !args.no_v6,
            },
        );
    }
    if args.singles == 0 || args.repeat == 0 {
        bail!("--singles and --repeat must be at least 1");
    }
    paths::run(
        cfg,
        paths::Opts {
            repeat: args.repeat,
            singles: args.singles,
            ct_fill: args.ct_fill,
            v6: !args.no_v6,
        },
    )
}
