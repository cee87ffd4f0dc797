//! The end-to-end forwarding-mode matrix: modes × {IPv4, IPv6} × {TCP, UDP} over real traffic in
//! the two-node cluster ([`lb_testbed::cluster`]).
//!
//! Every service targets backend-2 on node-2 while the client's traffic enters at node-1, so every
//! flow crosses nodes — where the modes differ. Per cell, what a user would check:
//! - `answer`: every request is answered (UDP answers come from the service address);
//! - `client address`: the backend saw the client's address (DSR, tunnel) or node-1's (SNAT);
//! - `reply path`: the client's packet socket shows which node delivered the replies — node-2
//!   (DSR: the reply does not traverse node-1) or node-1 (SNAT, tunnel);
//! - `node-1 replies`: node-1's own counters agree — it translated no reply (DSR) or every one;
//! - `same client port`: one client port reaches the NodePort of node-1 and of node-2 at once,
//!   both to backend-2. Where the client address is kept the two tuples collide at the backend:
//!   backend-2 must see the second connection from a port of the collision resolver's range;
//! - `restart`: a connection (TCP) or flow (UDP) opened before both nodes' loaders restart keeps
//!   answering from the same backend afterwards;
//! - `path MTU` (TCP): a request of full-sized segments completes; where the mode adds bytes on
//!   the way to node-2 (DSR carrier, VXLAN), node-1 answers the first oversized segment with ICMP
//!   "fragmentation needed" / ICMPv6 "packet too big" announcing an MTU below the link's, and TCP
//!   continues with smaller segments. SNAT adds nothing, so there no such error may appear;
//! - `kernel = engine`: one exchange replayed through the userspace engine set up like node-1
//!   gives the frames node-1 put on the LAN, byte for byte, and its counters
//!   ([`lb_testbed::replay`]).
//!
//! A mode's test fails listing every failed cell and check with its evidence and what both
//! nodes' datapaths counted during the cell, after running all of them, so one run shows the
//! whole matrix.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use lb_api::counters::{Counter, CounterSnapshot};
use lb_api::flow::L4Proto;
use lb_testbed::capture::Capture;
use lb_testbed::cluster::{Cluster, Family, LAN_IF, NODE_LAN_PORTS, NODE_PORT, VIP_PORT};
use lb_testbed::matrix::{self, Check, Expectation, REQUESTS};
use lb_testbed::modes::{self, Deployment, Frontend, Mode, ServicePlan};
use lb_testbed::netns::NodeChecksums;
use lb_testbed::replay;
use lb_testbed::traffic::{
    bulk_echo, udp_exchange, Conversation, BACKEND_PORT, BULK_BYTES, BULK_PORT,
};

const TIMEOUT: Duration = Duration::from_secs(3);
const PROTOS: [L4Proto; 2] = [L4Proto::Tcp, L4Proto::Udp];

use lb_testbed::gate::privileged_test as privileged;

fn proto_name(p: L4Proto) -> &'static str {
    if p == L4Proto::Tcp {
        "TCP"
    } else {
        "UDP"
    }
}

/// Every service: the VIP and the NodePort, both families and protocols, all to backend-2.
fn plans() -> Vec<ServicePlan> {
    let mut v = Vec::new();
    for family in Family::ALL {
        for proto in PROTOS {
            for frontend in [Frontend::Vip(VIP_PORT), Frontend::NodePort(NODE_PORT)] {
                v.push(ServicePlan {
                    frontend,
                    family,
                    proto,
                    target_port: BACKEND_PORT,
                    backends: vec![1],
                });
            }
        }
        // The bulk transfers' service: the VIP's BULK_PORT to backend-2's echo.
        v.push(ServicePlan {
            frontend: Frontend::Vip(BULK_PORT),
            family,
            proto: L4Proto::Tcp,
            target_port: BULK_PORT,
            backends: vec![1],
        });
    }
    v
}

/// `bulk`: 8 MiB each way from the client through the VIP, every byte compared, with the same
/// transfer routed to backend-2's own address in the same run as the baseline.
fn bulk(cluster: &Cluster, family: Family) -> Result<String, String> {
    let vip = SocketAddr::new(family.vip(), BULK_PORT);
    let through = bulk_echo(&cluster.client, vip, BULK_BYTES, Duration::from_secs(30))
        .map_err(|e| format!("{e:#}"))?;
    let routed = SocketAddr::new(family.backend(1), BULK_PORT);
    let base = bulk_echo(&cluster.client, routed, BULK_BYTES, Duration::from_secs(30))
        .map_err(|e| format!("routed baseline: {e:#}"))?;
    Ok(format!(
        "{} MiB each way, every byte back: {:.0} Mbit/s through the VIP, {:.0} routed",
        BULK_BYTES >> 20,
        through.mbit_per_s(),
        base.mbit_per_s()
    ))
}

/// `pod → service`: backend-1, a pod on node-1, reaches the VIP (served by backend-2 on
/// node-2): translated at TC on node-1's host-side veth, where the pod's partial checksums and
/// TSO packets arrive as they are. A request, then 8 MiB each way.
fn pod_to_service(cluster: &Cluster, family: Family) -> Result<String, String> {
    let pod = &cluster.backends[0];
    let vip = SocketAddr::new(family.vip(), VIP_PORT);
    let mut c = Conversation::open(pod, vip, 0, TIMEOUT).map_err(|e| format!("{e:#}"))?;
    let answer = c.ask("from a pod").map_err(|e| format!("{e:#}"))?;
    if !answer.starts_with("backend-2 saw ") {
        return Err(format!("answered by the wrong backend: {answer:?}"));
    }
    let b = bulk_echo(
        pod,
        SocketAddr::new(family.vip(), BULK_PORT),
        BULK_BYTES,
        Duration::from_secs(30),
    )
    .map_err(|e| format!("bulk: {e:#}"))?;
    Ok(format!(
        "{answer:?}; {} MiB each way, every byte back, {:.0} Mbit/s",
        BULK_BYTES >> 20,
        b.mbit_per_s()
    ))
}

/// The results of one cell's checks.
struct Cell {
    name: String,
    checks: Vec<Check>,
    /// What both nodes counted while the cell ran.
    counted: String,
}

/// Both nodes' counters now.
///
/// # Errors
/// Which node's counters cannot be read.
fn counters(d: &Deployment) -> Result<[CounterSnapshot; 2], String> {
    let read = |n: usize| match d.nodes[n].as_ref().map(lb_bpf::KernelDatapath::counters) {
        Some(Ok(c)) => Ok(c),
        Some(Err(e)) => Err(format!("node-{}'s counters: {e}", n + 1)),
        None => Err(format!("node-{} is not loaded", n + 1)),
    };
    Ok([read(0)?, read(1)?])
}

/// What moved on both nodes between two readings.
fn counted(
    start: &Result<[CounterSnapshot; 2], String>,
    end: &Result<[CounterSnapshot; 2], String>,
) -> String {
    match (start, end) {
        (Ok(s), Ok(e)) => format!(
            "node-1: {}; node-2: {}",
            matrix::counter_delta(&s[0], &e[0]),
            matrix::counter_delta(&s[1], &e[1])
        ),
        (Err(e), _) | (_, Err(e)) => e.clone(),
    }
}

fn run_cell(
    cluster: &Cluster,
    d: &Deployment,
    family: Family,
    proto: L4Proto,
    macs: &[[u8; 6]; 2],
    cell_no: u16,
) -> Cell {
    let mode = d.mode;
    let vip = SocketAddr::new(family.vip(), VIP_PORT);
    let expect = Expectation::of(mode, family, proto);
    let start = counters(d);
    let mut checks = matrix::traffic(cluster, proto, vip, expect, macs);
    // The reply path once more, as node-1's datapath saw it.
    let translated = match (&start, &counters(d)) {
        (Ok(s), Ok(e)) => Ok(e[0]
            .get(Counter::ReplyTranslated)
            .saturating_sub(s[0].get(Counter::ReplyTranslated))),
        (Err(e), _) | (_, Err(e)) => Err(e.clone()),
    };
    let node1 = match (mode.direct_return(proto), translated) {
        (_, Err(e)) => Err(e),
        (true, Ok(0)) => Ok("node-1 translated no reply".to_string()),
        (true, Ok(n)) => Err(format!(
            "node-1 translated {n} replies, but replies must not traverse it"
        )),
        (false, Ok(n)) if n >= REQUESTS as u64 => Ok(format!("node-1 translated {n} replies")),
        (false, Ok(n)) => Err(format!(
            "node-1 translated {n} replies to {REQUESTS} requests"
        )),
    };
    checks.push(("node-1 replies", node1));
    // One client port via node-1's and node-2's NodePorts at once.
    let port = 41000 + cell_no;
    let targets = [
        SocketAddr::new(family.node(0), NODE_PORT),
        SocketAddr::new(family.node(1), NODE_PORT),
    ];
    checks.push((
        "same client port",
        matrix::same_port(cluster, proto, port, targets, expect.same_port),
    ));
    if proto == L4Proto::Tcp {
        checks.push((
            "path MTU",
            matrix::path_mtu(cluster, vip, expect.adds_bytes, macs),
        ));
        checks.push(("bulk", bulk(cluster, family)));
        checks.push(("pod → service", pod_to_service(cluster, family)));
    }
    Cell {
        name: cell_name(mode, family, proto),
        checks,
        counted: counted(&start, &counters(d)),
    }
}

/// `kernel = engine`: one exchange per family and protocol to the VIP, with node-1's bridge port
/// under capture; node-1's input is replayed through an engine set up like node-1, whose output
/// and counters must be node-1's ([`lb_testbed::replay`]). Runs first, on fresh tables in
/// both worlds.
fn differential(cluster: &Cluster, d: &Deployment) -> Vec<(String, Result<String, String>)> {
    let mut engine = match modes::engine_like(d, 0) {
        Ok(e) => e,
        Err(e) => {
            let e = format!("engine like node-1: {e:#}");
            return cell_names(d.mode).map(|n| (n, Err(e.clone()))).collect();
        }
    };
    let mut out = Vec::new();
    for family in Family::ALL {
        for proto in PROTOS {
            let vip = SocketAddr::new(family.vip(), VIP_PORT);
            let res = (|| -> Result<String, String> {
                let capture =
                    Capture::start_raw(&cluster.lan, NODE_LAN_PORTS[0], Duration::from_secs(30))
                        .map_err(|e| format!("capture: {e:#}"))?;
                let before = counters(d)?;
                let answer = matrix::exchange(cluster, proto, vip, 0);
                let synced = replay::barrier(&cluster.client, family.node(0), TIMEOUT);
                let after = counters(d)?;
                let frames = capture.stop();
                synced.map_err(|e| format!("{e:#}"))?;
                replay::compare(
                    &mut engine,
                    &frames,
                    (&before[0], &after[0]),
                    cluster.node_checksums(),
                )
                .map(|ev| format!("{ev} (the exchange: {answer:?})"))
                .map_err(|e| format!("{e}\n  (the exchange: {answer:?})"))
            })();
            out.push((cell_name(d.mode, family, proto), res));
        }
    }
    out
}

fn cell_name(mode: Mode, family: Family, proto: L4Proto) -> String {
    format!("{mode} {family} {}", proto_name(proto))
}

fn cell_names(mode: Mode) -> impl Iterator<Item = String> {
    Family::ALL
        .into_iter()
        .flat_map(move |f| PROTOS.map(|p| cell_name(mode, f, p)))
}

/// Conversations (TCP) and flows (UDP) of every family opened before both loaders restart must
/// keep answering from the same backend after.
fn restart_checks(cluster: &Cluster, d: &mut Deployment) -> Vec<(String, Result<String, String>)> {
    let mut before = Vec::new();
    for family in Family::ALL {
        let vip = SocketAddr::new(family.vip(), VIP_PORT);
        let tcp = Conversation::open(&cluster.client, vip, 0, TIMEOUT)
            .and_then(|mut c| c.ask("before restart").map(|a| (c, a)));
        let udp = cluster
            .in_client(|| -> anyhow::Result<(UdpSocket, String)> {
                let sock = UdpSocket::bind(SocketAddr::new(
                    if family == Family::V4 {
                        "0.0.0.0".parse()?
                    } else {
                        "::".parse()?
                    },
                    0,
                ))?;
                let a = udp_exchange(&sock, vip, 0, TIMEOUT)?;
                Ok((sock, a))
            })
            .and_then(|r| r);
        before.push((family, vip, tcp, udp));
    }
    let restarted = (0..2).try_for_each(|n| modes::restart_node(cluster, d, n));
    let mut out = Vec::new();
    for (family, vip, tcp, udp) in before {
        let backend = |a: &str| a.split(" saw ").next().unwrap_or("").to_string();
        let tcp_res = match (&restarted, tcp) {
            (Err(e), _) => Err(format!("restart failed: {e:#}")),
            (_, Err(e)) => Err(format!("before the restart: {e:#}")),
            (Ok(()), Ok((mut c, a))) => match c.ask("after restart") {
                Ok(b) if backend(&b) == backend(&a) => Ok(format!("before {a:?}, after {b:?}")),
                Ok(b) => Err(format!("backend changed: before {a:?}, after {b:?}")),
                Err(e) => Err(format!("after the restart: {e:#} (before: {a:?})")),
            },
        };
        out.push((format!("{} {family} TCP", d.mode), tcp_res));
        let udp_res = match (&restarted, udp) {
            (Err(e), _) => Err(format!("restart failed: {e:#}")),
            (_, Err(e)) => Err(format!("before the restart: {e:#}")),
            (Ok(()), Ok((sock, a))) => match udp_exchange(&sock, vip, 1, TIMEOUT) {
                Ok(b) if backend(&b) == backend(&a) => Ok(format!("before {a:?}, after {b:?}")),
                Ok(b) => Err(format!("backend changed: before {a:?}, after {b:?}")),
                Err(e) => Err(format!("after the restart: {e:#} (before: {a:?})")),
            },
        };
        out.push((format!("{} {family} UDP", d.mode), udp_res));
    }
    out
}

fn run_mode(mode: Mode, checksums: NodeChecksums) {
    let software = checksums == NodeChecksums::Software;
    let test = format!("mode_{mode}{}", if software { "_sw" } else { "" });
    if !privileged(&test) {
        return;
    }
    let tag = format!("{}{}", mode.name(), if software { "-sw" } else { "" });
    let cluster = Cluster::create(&tag).expect("cluster");
    if software {
        cluster
            .complete_checksums_in_software()
            .expect("software checksums on the nodes");
    }
    let _servers = cluster
        .start_backends(Duration::from_secs(120))
        .expect("backend servers");
    let mut d = modes::deploy(&cluster, mode, &plans(), &tag).expect("deploy both nodes");
    let macs = [
        Cluster::mac(&cluster.nodes[0], LAN_IF).unwrap(),
        Cluster::mac(&cluster.nodes[1], LAN_IF).unwrap(),
    ];

    let replayed = differential(&cluster, &d);
    let mut cells = Vec::new();
    let mut n = 0u16;
    for family in Family::ALL {
        for proto in PROTOS {
            cells.push(run_cell(&cluster, &d, family, proto, &macs, n));
            n += 1;
        }
    }
    for (name, res) in replayed {
        if let Some(cell) = cells.iter_mut().find(|c| c.name == name) {
            cell.checks.push(("kernel = engine", res));
        }
    }
    let restart = restart_checks(&cluster, &mut d);
    for (name, res) in restart {
        if let Some(cell) = cells.iter_mut().find(|c| c.name == name) {
            cell.checks.push(("restart", res));
        }
    }

    let mut failures = Vec::new();
    for cell in &cells {
        let mut failed = false;
        for (check, res) in &cell.checks {
            match res {
                Ok(ev) => eprintln!("PASS {:<18} {check:<16} {ev}", cell.name),
                Err(ev) => {
                    eprintln!("FAIL {:<18} {check:<16} {ev}", cell.name);
                    failures.push(format!("{} / {check}: {ev}", cell.name));
                    failed = true;
                }
            }
        }
        if failed {
            eprintln!("     {:<18} counted: {}", cell.name, cell.counted);
            failures.push(format!("  counted during {}: {}", cell.name, cell.counted));
        }
    }
    eprintln!("{mode} ({checksums:?} on the nodes): XDP {:?}", d.xdp_modes);
    let failed_checks = failures.iter().filter(|f| !f.starts_with("  ")).count();
    assert!(
        failures.is_empty(),
        "{failed_checks} failed checks in mode {mode} ({checksums:?} on the nodes):\n{}",
        failures.join("\n"),
    );
}

// Each mode twice: with the kernel's default offloads everywhere, and with the nodes' own
// devices completing checksums in software, so that a wrong partial seed fails a connection
// instead of passing unchecked between veths.

#[test]
fn mode_snat() {
    run_mode(Mode::Snat, NodeChecksums::Offload);
}

#[test]
fn mode_snat_sw() {
    run_mode(Mode::Snat, NodeChecksums::Software);
}

#[test]
fn mode_dsr() {
    run_mode(Mode::Dsr, NodeChecksums::Offload);
}

#[test]
fn mode_dsr_sw() {
    run_mode(Mode::Dsr, NodeChecksums::Software);
}

#[test]
fn mode_tunnel() {
    run_mode(Mode::Tunnel, NodeChecksums::Offload);
}

#[test]
fn mode_tunnel_sw() {
    run_mode(Mode::Tunnel, NodeChecksums::Software);
}

#[test]
fn mode_hybrid() {
    run_mode(Mode::Hybrid, NodeChecksums::Offload);
}

#[test]
fn mode_hybrid_sw() {
    run_mode(Mode::Hybrid, NodeChecksums::Software);
}
