//! `lbctl`: look into a running node's datapath through its pinned maps (`ct list`,
//! `service list`, `nat list`, `counters`) and its agent (`monitor --type drop`, `gc`), as a
//! table or JSON.

use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use lb_conntrack::Clock;
use lb_examples::agent::monitor::DropView;
use lb_examples::agent::pinned::PinnedMaps;
use lb_examples::agent::views::{self, FlowFilter};
use serde::Serialize;

#[derive(Parser)]
#[command(
    about = "Inspect a running lb-dataplane node: conntrack, services, SNAT, counters, drops"
)]
struct Cli {
    /// The agent's pin directory (`datapath.pin_dir`).
    #[arg(long, default_value = "/sys/fs/bpf/lb", global = true)]
    pin_dir: PathBuf,
    /// The agent's metrics address (`metrics.listen`), for `monitor` and `gc`.
    #[arg(long, default_value = "127.0.0.1:9967", global = true)]
    agent: SocketAddr,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Conntrack.
    Ct {
        #[command(subcommand)]
        cmd: CtCmd,
    },
    /// Services (frontends) and their backends.
    Service {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// SNAT and source-port translations of live flows.
    Nat {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Every counter and drop reason.
    Counters {
        /// Only non-zero values.
        #[arg(long)]
        nonzero: bool,
    },
    /// Live events from the agent.
    Monitor {
        /// The event type (only `drop` exists).
        #[arg(long = "type", default_value = "drop")]
        kind: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Also write each dropped packet's headers to this pcap file.
        #[arg(long)]
        pcap: Option<PathBuf>,
    },
    /// Ask the agent to sweep conntrack now.
    Gc,
}

#[derive(Subcommand)]
enum CtCmd {
    /// List flows (a flow's two conntrack entries shown as one).
    List {
        /// Only flows with this address (client, service, backend or translated).
        #[arg(long)]
        addr: Option<IpAddr>,
        /// Only flows with this port.
        #[arg(long)]
        port: Option<u16>,
        /// Only this protocol (tcp, udp).
        #[arg(long)]
        proto: Option<String>,
        /// Only this state (established, time_wait...).
        #[arg(long)]
        state: Option<String>,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum ListCmd {
    /// List.
    List,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let maps = PinnedMaps::new(&cli.pin_dir);
    match &cli.cmd {
        Cmd::Ct {
            cmd:
                CtCmd::List {
                    addr,
                    port,
                    proto,
                    state,
                },
        } => {
            let filter = FlowFilter {
                addr: *addr,
                port: *port,
                proto: proto.clone(),
                state: state.clone(),
            };
            let now =
                lb_datapath::now_ns(&maps.config()?, || lb_conntrack::MonotonicClock.now_ns());
            let flows: Vec<_> = views::flows(&maps.conntrack()?, now)
                .into_iter()
                .filter(|f| filter.matches(f))
                .collect();
            print(
                cli.output,
                &flows,
                |f| {
                    vec![
                        f.proto.to_string(),
                        f.client.to_string(),
                        f.service.to_string(),
                        f.backend.to_string(),
                        f.state.clone(),
                        format!("{}/{}", f.packets_orig, f.packets_reply),
                        format!("{}s", f.expires_in_s),
                        f.flags.join(","),
                        f.halves.to_string(),
                    ]
                },
                &[
                    "PROTO", "CLIENT", "SERVICE", "BACKEND", "STATE", "PKTS", "EXPIRES", "FLAGS",
                    "HALVES",
                ],
            )
        }
        Cmd::Service { cmd: ListCmd::List } => {
            let s = views::services(&maps.services()?, &maps.backends()?);
            print(
                cli.output,
                &s,
                |s| {
                    vec![
                        s.id.to_string(),
                        s.proto.to_string(),
                        s.frontend.to_string(),
                        s.selection.to_string(),
                        s.mode.clone(),
                        if s.local { "local" } else { "cluster" }.to_string(),
                        s.slots.to_string(),
                        s.backends
                            .iter()
                            .map(|b| format!("{}x{}", b.addr, b.slots))
                            .collect::<Vec<_>>()
                            .join(" "),
                    ]
                },
                &[
                    "ID",
                    "PROTO",
                    "FRONTEND",
                    "SELECTION",
                    "MODE",
                    "POLICY",
                    "SLOTS",
                    "BACKENDS",
                ],
            )
        }
        Cmd::Nat { cmd: ListCmd::List } => {
            let now = lb_conntrack::MonotonicClock.now_ns();
            let nat: Vec<_> = views::flows(&maps.conntrack()?, now)
                .into_iter()
                .filter(|f| f.translated_source.is_some())
                .collect();
            print(
                cli.output,
                &nat,
                |f| {
                    vec![
                        f.proto.to_string(),
                        f.client.to_string(),
                        f.translated_source
                            .map(|t| t.to_string())
                            .unwrap_or_default(),
                        f.backend.to_string(),
                        f.flags.join(","),
                    ]
                },
                &["PROTO", "CLIENT", "TRANSLATED", "BACKEND", "FLAGS"],
            )
        }
        Cmd::Counters { nonzero } => {
            let c: Vec<_> = views::counters(&maps.counters()?)
                .into_iter()
                .filter(|c| !nonzero || c.value > 0)
                .collect();
            print(
                cli.output,
                &c,
                |c| vec![c.kind.to_string(), c.name.to_string(), c.value.to_string()],
                &["KIND", "NAME", "VALUE"],
            )
        }
        Cmd::Monitor { kind, count, pcap } => {
            if kind != "drop" {
                bail!("--type {kind}: only `drop` events exist");
            }
            monitor(&cli, *count, pcap.as_deref())
        }
        Cmd::Gc => {
            let url = format!("http://{}/gc", cli.agent);
            let body = ureq::post(&url)
                .send_empty()
                .with_context(|| format!("asking the agent at {url} (is lb-agent running?)"))?
                .body_mut()
                .read_to_string()?;
            println!("{}", body.trim());
            Ok(())
        }
    }
}

fn monitor(cli: &Cli, count: Option<u64>, pcap: Option<&std::path::Path>) -> Result<()> {
    let url = format!("http://{}/v1/drops", cli.agent);
    let mut resp = ureq::get(&url)
        .call()
        .with_context(|| format!("connecting to the agent at {url} (is lb-agent running?)"))?;
    let reader = std::io::BufReader::new(resp.body_mut().as_reader());
    let mut writer = match pcap {
        Some(p) => {
            let f =
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
            let header = pcap_file::pcap::PcapHeader {
                datalink: pcap_file::DataLink::RAW,
                ..Default::default()
            };
            Some(pcap_file::pcap::PcapWriter::with_header(f, header)?)
        }
        None => None,
    };
    let mut out = std::io::stdout().lock();
    let mut seen = 0u64;
    for line in reader.lines() {
        let line = line.context("the agent's stream ended")?;
        if line.trim().is_empty() {
            continue; // keep-alive
        }
        let ev: DropView = serde_json::from_str(&line)
            .with_context(|| format!("the agent sent a line that is no drop event: {line}"))?;
        match cli.output {
            Output::Json => writeln!(out, "{line}")?,
            Output::Table => writeln!(
                out,
                "drop {:<24} if {:<3} {} {}:{} -> {}:{}",
                ev.reason, ev.ifindex, ev.proto_name, ev.src, ev.src_port, ev.dst, ev.dst_port
            )?,
        }
        out.flush()?;
        if let Some(w) = writer.as_mut() {
            let data = ev.headers();
            let ts = std::time::Duration::from_nanos(ev.timestamp_ns);
            w.write_packet(&pcap_file::pcap::PcapPacket::new(
                ts,
                data.len() as u32,
                &data,
            ))?;
        }
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}

/// Prints `rows` as JSON or as an aligned table.
fn print<T: Serialize>(
    output: Output,
    rows: &[T],
    cells: impl Fn(&T) -> Vec<String>,
    header: &[&str],
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if output == Output::Json {
        serde_json::to_writer_pretty(&mut out, rows)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_string()).collect()];
    table.extend(rows.iter().map(&cells));
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            table
                .iter()
                .map(|r| r.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in &table {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}
