//! Connection rate and request latency of real TCP through each forwarding mode in the two-node
//! cluster, measured by wrk (Debian package `wrk`) running in the client's namespace.
//!
//! Per target, two wrk runs against backend-2's HTTP/1.1 responder (on node-2; the client's
//! traffic enters at node-1, so every flow crosses nodes — where the modes differ):
//! - keep-alive: request rate and latency p50/p99/p99.9 over `--connections` long connections;
//! - `Connection: close`: every request is a new TCP connection, so the rate is the connection
//!   rate (handshake, request, close, and the datapath's new-flow path).
//!
//! The `routing` row is the baseline: the client reaches backend-2's pod address by plain routing
//! via node-2, no programs attached. Run by `cargo xtask bench`; needs root.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lb_api::flow::L4Proto;
use lb_testbed::cluster::{Cluster, Family, VIP_PORT};
use lb_testbed::modes::{self, Deployment, Frontend, Mode, ServicePlan};
use lb_testbed::netns::{self, in_ns_output};
use lb_testbed::traffic::{http_get, HTTP_PORT};

#[derive(Parser)]
#[command(about = "Per-mode connection rate and latency percentiles through the two-node cluster")]
struct Args {
    /// Modes to measure (comma-separated: snat, dsr, tunnel, hybrid), besides the routing baseline.
    #[arg(long, value_delimiter = ',', default_value = "snat,dsr,tunnel,hybrid")]
    modes: Vec<Mode>,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of the `Connection: close` run. Each connection leaves two conntrack entries in
    /// TIME_WAIT (65 536 entries per node), so this run stays short.
    #[arg(long, default_value_t = 4)]
    close_seconds: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Address family: v4 or v6.
    #[arg(long, default_value = "v4")]
    family: String,
}

/// What one wrk run reported.
#[derive(Debug, Clone, Copy)]
struct WrkResult {
    requests: u64,
    seconds: f64,
    errors: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
}

impl WrkResult {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }
}

/// Prints one machine-readable line from wrk's `done()` hook: latency percentiles are exact
/// figures from wrk's histogram, not its rounded summary.
const DONE: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("LBBENCH requests=%d duration_us=%d errors=%d p50_us=%d p99_us=%d p999_us=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

struct Scripts {
    keep_alive: PathBuf,
    close: PathBuf,
}

impl Scripts {
    fn write() -> Result<Self> {
        let dir = std::env::temp_dir();
        let pid = std::process::id();
        let keep_alive = dir.join(format!("lb-mode-bench-{pid}-keepalive.lua"));
        let close = dir.join(format!("lb-mode-bench-{pid}-close.lua"));
        std::fs::write(&keep_alive, DONE)?;
        std::fs::write(
            &close,
            format!("wrk.headers[\"Connection\"] = \"close\"\n{DONE}"),
        )?;
        Ok(Scripts { keep_alive, close })
    }
}

impl Drop for Scripts {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.keep_alive);
        let _ = std::fs::remove_file(&self.close);
    }
}

fn url(target: SocketAddr) -> String {
    match target {
        SocketAddr::V4(a) => format!("http://{}:{}/", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("http://[{}]:{}/", a.ip(), a.port()),
    }
}

fn wrk(
    ns: &str,
    script: &Path,
    target: SocketAddr,
    args: &Args,
    seconds: u64,
) -> Result<WrkResult> {
    let script = script.to_string_lossy();
    let out = in_ns_output(
        ns,
        &[
            "wrk",
            "-t",
            &args.threads.to_string(),
            "-c",
            &args.connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--timeout",
            "2s",
            "-s",
            &script,
            &url(target),
        ],
    )
    .context("running wrk (Debian package wrk; `cargo xtask setup` installs it)")?;
    let line = out
        .lines()
        .find(|l| l.starts_with("LBBENCH "))
        .with_context(|| format!("wrk printed no result line:\n{out}"))?;
    let field = |name: &str| -> Result<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("{name} missing in {line:?}"))?
            .parse()
            .with_context(|| format!("{name} in {line:?}"))
    };
    Ok(WrkResult {
        requests: field("requests")?,
        seconds: field("duration_us")? as f64 / 1e6,
        errors: field("errors")?,
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
        p999_us: field("p999_us")?,
    })
}

/// One row: a keep-alive run and a connection-per-request run against `target`.
fn measure(
    cluster: &Cluster,
    target: SocketAddr,
    args: &Args,
    scripts: &Scripts,
    d: Option<&mut Deployment>,
) -> Result<(WrkResult, WrkResult)> {
    // One request first: a target that does not answer fails here, not as a table of errors.
    let probe = cluster
        .in_client(|| http_get(target, Duration::from_secs(3)))?
        .with_context(|| format!("probing {target}"))?;
    let body = probe.rsplit("\r\n\r\n").next().unwrap_or("").trim();
    eprintln!("  {target}: {body}");
    let keep = wrk(
        &cluster.client,
        &scripts.keep_alive,
        target,
        args,
        args.seconds,
    )?;
    if let Some(d) = d {
        // The close run starts from an empty table, so it measures new flows, not a full table.
        for dp in d.nodes.iter_mut().flatten() {
            dp.flush_conntrack()?;
        }
    }
    let close = wrk(
        &cluster.client,
        &scripts.close,
        target,
        args,
        args.close_seconds,
    )?;
    Ok((keep, close))
}

fn row(name: &str, xdp: &str, keep: &WrkResult, close: &WrkResult) {
    println!(
        "| {name:<8} | {xdp:<15} | {:>9.0} | {:>7} | {:>7} | {:>7} | {:>9.0} | {:>6} |",
        keep.rate(),
        keep.p50_us,
        keep.p99_us,
        keep.p999_us,
        close.rate(),
        keep.errors + close.errors
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !lb_testbed::gate::is_privileged() {
        bail!("needs root (BPF, network namespaces): sudo -E cargo xtask bench");
    }
    netns::remove_on_signal()?;
    let family = match args.family.as_str() {
        "v4" => Family::V4,
        "v6" => Family::V6,
        other => bail!("--family {other}: use v4 or v6"),
    };
    let scripts = Scripts::write()?;
    println!(
        "wrk -t{} -c{} -d{}s (keep-alive) and -d{}s with `Connection: close`; {family}; backend-2 on node-2, client enters at node-1\n",
        args.threads, args.connections, args.seconds, args.close_seconds
    );
    println!("| target   | XDP             |   req/s   | p50 µs  | p99 µs  | p99.9 µs| conn/s    | errors |");
    println!("|----------|-----------------|----------:|--------:|--------:|--------:|----------:|-------:|");

    // Baseline: plain routing to the pod, no datapath.
    {
        let cluster = Cluster::create("bench-route")?;
        let _servers = cluster.start_backends(Duration::from_secs(args.seconds * 4 + 60))?;
        let target = SocketAddr::new(family.backend(1), HTTP_PORT);
        let (keep, close) = measure(&cluster, target, &args, &scripts, None)?;
        row("routing", "-", &keep, &close);
    }
    let mut failed = Vec::new();
    for mode in &args.modes {
        let res = (|| -> Result<()> {
            let cluster = Cluster::create(&format!("bench-{mode}"))?;
            let _servers = cluster.start_backends(Duration::from_secs(args.seconds * 4 + 60))?;
            let plan = ServicePlan {
                frontend: Frontend::Vip(VIP_PORT),
                family,
                proto: L4Proto::Tcp,
                target_port: HTTP_PORT,
                backends: vec![1],
            };
            let mut d = modes::deploy(&cluster, *mode, &[plan], &format!("bench-{mode}"))?;
            let target = SocketAddr::new(family.vip(), VIP_PORT);
            let xdp = d.xdp_modes[0];
            let (keep, close) = measure(&cluster, target, &args, &scripts, Some(&mut d))?;
            row(mode.name(), xdp, &keep, &close);
            for (i, dp) in d.nodes.iter().enumerate() {
                if let Some(dp) = dp {
                    let c = dp.counters()?;
                    let dropped = c.get(lb_api::counters::Counter::Dropped);
                    if dropped > 0 {
                        eprintln!("  {mode}: node-{} dropped {dropped} packets: {c:?}", i + 1);
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = res {
            println!("| {:<8} | not measured: {e:#}", mode.name());
            failed.push(mode.name());
        }
    }
    if !failed.is_empty() {
        bail!("not measured: {}", failed.join(", "));
    }
    Ok(())
}
