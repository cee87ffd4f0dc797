//! In-kernel cost per packet of each datapath path, measured with BPF_PROG_TEST_RUN (the kernel
//! times the program over `repeat` runs), set against the parse-only program.
//!
//! Run with `sudo -E cargo xtask bench --kernel-only` (or `cargo run --release -p lb-testbed
//! --bin lb-kernel-bench` as root). `--modes` measures the forwarding modes instead (see
//! [`modes`]).

mod decode;
mod modes;
mod node;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lb_api::flow::L4Proto;
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_bpf::{KernelDatapath, Program};
use lb_control::{default_config, ServiceSpec};

#[derive(Parser)]
#[command(about = "ns/packet of the eBPF datapath via BPF_PROG_TEST_RUN")]
struct Args {
    /// Runs per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Distinct new flows for the new-flow measurement (each run once).
    #[arg(long, default_value_t = 20_000)]
    new_flows: u16,
    /// Use the config's fixed clock instead of `bpf_ktime_get_ns` (shows the clock's cost).
    #[arg(long)]
    fixed_clock: bool,
    /// Measure each forwarding mode's paths (SNAT, DSR, VXLAN tunnel; both nodes) in single
    /// checked runs, instead of the default table.
    #[arg(long)]
    modes: bool,
    /// With `--modes`: timed single runs per row.
    #[arg(long, default_value_t = 20_000)]
    runs: u32,
    /// With `--modes`: IPv4 only.
    #[arg(long)]
    no_v6: bool,
}

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const VIP: [u8; 4] = [10, 96, 0, 10];

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
    let mut dp = KernelDatapath::load().context("loading the programs")?;
    dp.set_config(&cfg)?;
    dp.upsert_service(&ServiceSpec {
        id: 1,
        frontend: "10.96.0.10:80".parse()?,
        proto: L4Proto::Tcp,
        backends: (2..10)
            .map(|i| format!("10.1.0.{i}:8080").parse())
            .collect::<Result<_, _>>()?,
        ..Default::default()
    })?;

    let syn = tcp_v4_frame(CLIENT, 40000, VIP, 80, TcpFlags::SYN, b"");
    let ack = tcp_v4_frame(CLIENT, 40000, VIP, 80, TcpFlags::ACK, b"");
    let other = tcp_v4_frame(CLIENT, 40000, [10, 2, 0, 1], 80, TcpFlags::ACK, b"");
    let first = dp.test_run(Program::Xdp, &syn, 1)?;
    if first.verdict != Verdict::Pass {
        bail!("the SYN was not translated: {:?}", first.verdict);
    }
    let entries = dp.conntrack_entries()?;
    let (_, fwd) = entries
        .iter()
        .find(|(k, _)| k.kind == 0)
        .context("no service entry")?;
    let be: [u8; 4] = [
        fwd.nat_addr[0],
        fwd.nat_addr[1],
        fwd.nat_addr[2],
        fwd.nat_addr[3],
    ];
    let reply = tcp_v4_frame(be, fwd.nat_port, CLIENT, 40000, TcpFlags::ACK, b"");

    let ns = |p: Program, f: &[u8]| -> Result<f64> {
        let out = dp.test_run(p, f, args.repeat)?;
        Ok(out.duration.as_nanos() as f64)
    };
    let parse_only = ns(Program::XdpParseOnly, &ack)?;
    let rows = [
        ("XDP parse only (baseline)", parse_only),
        (
            "XDP not a service (parse + 2 CT misses + service miss)",
            ns(Program::Xdp, &other)?,
        ),
        (
            "XDP established flow (CT hit, DNAT, checksums)",
            ns(Program::Xdp, &ack)?,
        ),
        (
            "XDP reply (reverse-NAT hit, service-entry update, SNAT back)",
            ns(Program::Xdp, &reply)?,
        ),
        ("TC established flow", ns(Program::Tc, &ack)?),
        ("TC reply", ns(Program::Tc, &reply)?),
    ];
    // New flows: every run must create entries, so each distinct flow runs once and the kernel's
    // per-run times are averaged.
    let mut total = 0f64;
    for i in 0..args.new_flows {
        let f = tcp_v4_frame(CLIENT, 10_000 + i, VIP, 80, TcpFlags::SYN, b"");
        total += dp.test_run(Program::Xdp, &f, 1)?.duration.as_nanos() as f64;
    }
    let new_flow = total / f64::from(args.new_flows);

    // Drops of a malformed packet (IPv4 IHL 4). With a consumer keeping up, every drop writes its
    // event: the ring holds 4095, so that measurement is 4000 runs on a drained ring. Without
    // one, the ring is full and the events are lost (counted).
    let mut malformed = ack.clone();
    malformed[14] = 0x44;
    dp.drain_drop_events()?;
    let drop_event = dp.test_run(Program::Xdp, &malformed, 4_000)?;
    let drop_lost = dp.test_run(Program::Xdp, &malformed, args.repeat)?;
    dp.drain_drop_events()?;

    println!(
        "BPF_PROG_TEST_RUN, repeat {} (new flow: mean of {} single runs), clock: {}\n",
        args.repeat,
        args.new_flows,
        if args.fixed_clock {
            "fixed (config)"
        } else {
            "bpf_ktime_get_ns"
        }
    );
    println!("| path | ns/packet | vs parse-only |");
    println!("|---|---:|---:|");
    for (name, v) in rows {
        println!("| {name} | {v:.1} | +{:.1} |", v - parse_only);
    }
    println!(
        "| XDP new flow (service + backend lookup, 2 CT inserts, DNAT) | {new_flow:.1} | +{:.1} |",
        new_flow - parse_only
    );
    for (name, out) in [
        ("XDP drop, malformed, event written (4000 runs)", drop_event),
        ("XDP drop, malformed, ring full (event lost)", drop_lost),
    ] {
        let v = out.duration.as_nanos() as f64;
        println!("| {name} | {v:.1} | +{:.1} |", v - parse_only);
    }
    Ok(())
}
