//! The demo: real TCP requests to a service VIP, load-balanced by the eBPF datapath between
//! network namespaces; or, without privileges, the same scenario through the userspace engine.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use lb_api::abi::{CtEntry, CtKey, CtKind, CtState};
use lb_api::counters::{Counter, CounterSnapshot, DropReason};
use lb_api::flow::{v4_of, L4Proto};
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::{parse, SlicePacket, TcpFlags};
use lb_control::Dataplane;
use lb_datapath::engine::Engine;
use lb_examples::scenario;
use lb_testbed::capture::Capture;
use lb_testbed::cluster::{self, Cluster, Family, LAN_IF};
use lb_testbed::modes::{self, Frontend, Mode, ServicePlan};
use lb_testbed::netns::NodeChecksums;
use lb_testbed::testbed::{Testbed, BACKEND_PORT, CLIENT, VIP, VIP_PORT};
use lb_testbed::traffic::request;

#[derive(Parser)]
#[command(about = "lb-dataplane demo: load-balance real traffic to a service VIP")]
struct Args {
    /// Run the scenario through the userspace engine on generated packets.
    #[arg(long)]
    userspace: bool,
    /// Number of requests.
    #[arg(long, default_value_t = 10)]
    requests: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.userspace {
        return userspace(args.requests);
    }
    Testbed::remove_on_signal()?;
    println!("Topology: client 10.200.1.2 -> node (XDP on n0, TC on n1/n2) -> backend-1 10.200.2.2:8080, backend-2 10.200.3.2:8080");
    println!(
        "Services: {VIP}:{VIP_PORT}/tcp and {VIP}:{VIP_PORT}/udp -> both backends (port 8080)\n"
    );
    // The kernel's default offloads everywhere: senders hand partial checksums and TSO
    // segments to their veths, as pods do.
    let report = scenario::run_kernel("demo", args.requests, NodeChecksums::Offload)?;
    println!("XDP mode: {}\n", report.xdp_mode);
    for (i, a) in report.answers.iter().enumerate() {
        match a {
            Ok(s) => println!("request {i:>2} -> {VIP}:{VIP_PORT}: {s}"),
            Err(e) => println!("request {i:>2} -> {VIP}:{VIP_PORT}: FAILED: {e:#}"),
        }
    }
    for (i, a) in report.udp_answers.iter().enumerate() {
        match a {
            Ok(s) => println!("udp datagram {i:>2} -> {VIP}:{VIP_PORT}: {s}"),
            Err(e) => println!("udp datagram {i:>2} -> {VIP}:{VIP_PORT}: FAILED: {e:#}"),
        }
    }
    print_conntrack(&report.conntrack);
    print_counters(&report.counters);
    println!(
        "\nconnections served: backend-1 {}, backend-2 {}",
        report.served[0], report.served[1]
    );
    let mib = scenario::BULK_BYTES >> 20;
    for (what, b) in [
        ("through the VIP", &report.bulk_vip),
        ("routed to backend-1", &report.bulk_routed),
    ] {
        match b {
            Ok(b) => println!(
                "bulk {mib} MiB each way {what}: every byte back, {:.0} Mbit/s",
                b.mbit_per_s()
            ),
            Err(e) => println!("bulk {mib} MiB each way {what}: FAILED: {e:#}"),
        }
    }
    println!("namespaces removed.");
    let udp_ok = report.udp_answers.iter().filter(|a| a.is_ok()).count();
    if udp_ok != report.udp_answers.len() {
        bail!(
            "{udp_ok}/{} UDP datagrams answered",
            report.udp_answers.len()
        );
    }
    if let Err(e) = &report.bulk_vip {
        bail!("bulk transfer through the VIP: {e:#}");
    }
    let ok = report.answers.iter().filter(|a| a.is_ok()).count();
    if ok != report.answers.len() || report.served.contains(&0) {
        bail!(
            "{ok}/{} requests answered; both backends must answer",
            report.answers.len()
        );
    }
    modes_side_by_side(&[Mode::Snat, Mode::Dsr], 3)
}

/// What one mode showed: each answer per family, and which node delivered the replies.
struct ModeShow {
    lines: Vec<String>,
    failures: usize,
}

/// Two nodes: the client's requests to the VIP enter at node-1 and go to backend-2 on node-2, once
/// per mode; prints, side by side, which client address the backend saw and which node delivered
/// the replies to the client.
fn modes_side_by_side(list: &[Mode], requests: usize) -> Result<()> {
    println!("\n== Forwarding modes on two nodes ==");
    println!(
        "client {} / {} -> VIP {}:{VIP_PORT} / [{}]:{VIP_PORT} (routed to node-1 {}) -> backend-2 {} on node-2 {}",
        cluster::CLIENT_V4,
        cluster::CLIENT_V6,
        cluster::VIP_V4,
        cluster::VIP_V6,
        cluster::NODE_V4[0],
        cluster::BACKEND_V4[1],
        cluster::NODE_V4[1]
    );
    let bed = Cluster::create("demo-modes")?;
    let _servers = bed.start_backends(Duration::from_secs(120))?;
    let macs = [
        Cluster::mac(&bed.nodes[0], LAN_IF)?,
        Cluster::mac(&bed.nodes[1], LAN_IF)?,
    ];
    let mut shows = Vec::new();
    for &mode in list {
        let plans: Vec<ServicePlan> = Family::ALL
            .into_iter()
            .map(|family| ServicePlan {
                frontend: Frontend::Vip(VIP_PORT),
                family,
                proto: L4Proto::Tcp,
                target_port: BACKEND_PORT,
                backends: vec![1],
            })
            .collect();
        let d = modes::deploy(&bed, mode, &plans, &format!("demo-{mode}"))?;
        let mut show = ModeShow {
            lines: vec![format!("{mode} (XDP {})", d.xdp_modes[0])],
            failures: 0,
        };
        for family in Family::ALL {
            let vip = cluster::vip(family);
            let capture = Capture::start(&bed.client, LAN_IF, Duration::from_secs(30))?;
            for i in 0..requests {
                let a = bed.in_client(|| request(vip, 0, i, Duration::from_secs(3)))?;
                show.lines.push(match a {
                    Ok(a) => a.split(": ").next().unwrap_or("").to_string(),
                    Err(e) => {
                        show.failures += 1;
                        eprintln!("{mode}: request {i} to {vip} failed: {e:#}");
                        format!("FAILED (request {i} to {family} VIP)")
                    }
                });
            }
            let frames = capture.stop();
            let mut via: Vec<String> = frames
                .iter()
                .filter(|f| !f.outgoing && f.src == vip)
                .map(|f| match macs.iter().position(|m| *m == f.eth_src) {
                    Some(n) => format!("node-{}", n + 1),
                    None => "another host".to_string(),
                })
                .collect();
            via.sort();
            via.dedup();
            if via.is_empty() {
                via.push("nobody (no reply)".into());
            }
            show.lines
                .push(format!("{family} replies delivered by {}", via.join(", ")));
        }
        drop(d);
        shows.push(show);
    }
    let width = 46;
    let rows = shows.iter().map(|s| s.lines.len()).max().unwrap_or(0);
    println!();
    for r in 0..rows {
        let mut line = String::new();
        for s in &shows {
            let cell = s.lines.get(r).map_or("", String::as_str);
            line.push_str(&format!("{cell:<width$}  "));
        }
        println!("  {}", line.trim_end());
    }
    println!("\nSNAT: the backend sees node-1's address and replies return through node-1.");
    println!("DSR:  the backend sees the client's address and node-2 answers the client directly.");
    let failures: usize = shows.iter().map(|s| s.failures).sum();
    if failures > 0 {
        bail!("{failures} requests through the forwarding modes failed");
    }
    Ok(())
}

fn ip4(a: &[u8; 16]) -> Ipv4Addr {
    Ipv4Addr::from(v4_of(a))
}

fn print_conntrack(entries: &[(CtKey, CtEntry)]) {
    println!("\nconntrack ({} entries; service entries own the state, reverse-NAT entries restore the VIP on replies):", entries.len());
    for (k, e) in entries {
        let kind = if k.kind == CtKind::Service as u8 {
            "service"
        } else {
            "rev-nat"
        };
        // The flow's state lives on its service entry; the reverse-NAT entry only maps back.
        let state = if k.kind == CtKind::Service as u8 {
            CtState::from_u8(e.state).map_or_else(|| "?".to_string(), |s| format!("{s:?}"))
        } else {
            "-".to_string()
        };
        println!(
            "  {kind:<7} {}:{:<5} -> {}:{:<5} proto {:<2}  nat {}:{:<5} state {:<12} pkts {}/{}",
            ip4(&k.src),
            k.src_port,
            ip4(&k.dst),
            k.dst_port,
            k.proto,
            ip4(&e.nat_addr),
            e.nat_port,
            state,
            e.packets_orig,
            e.packets_reply
        );
    }
}

fn print_counters(c: &CounterSnapshot) {
    println!("\ncounters:");
    for k in Counter::ALL {
        if c.get(k) > 0 {
            println!("  {:<22} {}", k.name(), c.get(k));
        }
    }
    for r in DropReason::ALL {
        if c.drops(r) > 0 {
            println!("  drop:{:<17} {}", r.name(), c.drops(r));
        }
    }
}

/// The same scenario through the userspace engine: generated SYNs from the client, the chosen
/// backend's SYN+ACK back through the engine.
fn userspace(requests: usize) -> Result<()> {
    println!("Userspace engine (no eBPF, no namespaces): the same pipeline on generated packets.");
    println!(
        "Service:  {VIP}:{VIP_PORT}/tcp -> backend-1 10.200.2.2:8080, backend-2 10.200.3.2:8080\n"
    );
    let mut engine = Engine::new(4096);
    // The kernel run's control plane, on the engine (seed 0: `Engine::new`'s).
    scenario::program(&mut engine, 0)?;
    let mut per_backend = [0usize; 2];
    for i in 0..requests {
        let port = 40000 + i as u16;
        let mut syn = tcp_v4_frame(
            CLIENT.octets(),
            port,
            VIP.octets(),
            VIP_PORT,
            TcpFlags::SYN,
            b"",
        );
        let v = engine.process(&mut syn);
        let p = parse(&SlicePacket::new(&mut syn)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let be = v4_of(&p.tuple.dst);
        let which = usize::from(be != lb_testbed::testbed::BACKENDS[0].octets());
        per_backend[which] += 1;
        let mut reply = tcp_v4_frame(
            be,
            p.tuple.dst_port,
            CLIENT.octets(),
            port,
            TcpFlags::SYN | TcpFlags::ACK,
            b"",
        );
        let rv = engine.process(&mut reply);
        let r = parse(&SlicePacket::new(&mut reply)).map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "request {i:>2}: SYN {CLIENT}:{port} -> {VIP}:{VIP_PORT} {v:?}, rewritten to backend-{} {}:{}; reply source restored to {}:{} ({rv:?})",
            which + 1,
            Ipv4Addr::from(be),
            p.tuple.dst_port,
            Ipv4Addr::from(v4_of(&r.tuple.src)),
            r.tuple.src_port
        );
    }
    let observed: &dyn Dataplane = &engine;
    let mut entries = observed.conntrack_entries()?;
    entries.sort_by_key(|(k, _)| (k.kind, k.src_port, k.dst_port));
    print_conntrack(&entries);
    print_counters(&observed.counters()?);
    println!(
        "\nflows per backend: backend-1 {}, backend-2 {}",
        per_backend[0], per_backend[1]
    );
    Ok(())
}
