//! The end-to-end forwarding-mode matrix: modes × {IPv4, IPv6} × {TCP, UDP} over real traffic in
//! the two-node cluster ([`lb_examples::cluster`]).
//!
//! Every service targets backend-2 on node-2 while the client's traffic enters at node-1, so every
//! flow crosses nodes — where the modes differ. Per cell, what a user would check:
//! - `answer`: every request is answered (UDP answers come from the service address);
//! - `client address`: the backend saw the client's address (DSR, tunnel) or node-1's (SNAT);
//! - `reply path`: the client's packet socket shows which node delivered the replies — node-2
//!   (DSR: the reply does not traverse node-1) or node-1 (SNAT, tunnel);
//! - `same client port`: one client port reaches the NodePort of node-1 and of node-2 at once,
//!   both to backend-2 (the tuples collide at the backend when the client address is kept);
//! - `restart`: a connection (TCP) or flow (UDP) opened before both nodes' loaders restart keeps
//!   answering from the same backend afterwards;
//! - `path MTU` (TCP): a request of full-sized segments completes; where the mode adds bytes on
//!   the way to node-2 (DSR carrier, VXLAN), node-1 answers the first oversized segment with ICMP
//!   "fragmentation needed" / ICMPv6 "packet too big" announcing an MTU below the link's, and TCP
//!   continues with smaller segments. SNAT adds nothing, so there no such error may appear.
//!
//! A mode's test fails listing every failed cell and check with its evidence, after running all
//! of them, so one run shows the whole matrix.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use lb_api::flow::L4Proto;
use lb_examples::capture::{Capture, Frame};
use lb_examples::cluster::{Cluster, Family, LAN_IF, LAN_MTU, NODE_PORT, VIP_PORT};
use lb_examples::modes::{self, Deployment, Frontend, Mode, ServicePlan};
use lb_examples::traffic::{
    request, saw_prefix, udp_exchange, udp_request, Conversation, BACKEND_PORT,
};

const TIMEOUT: Duration = Duration::from_secs(3);
const REQUESTS: usize = 4;
const PROTOS: [L4Proto; 2] = [L4Proto::Tcp, L4Proto::Udp];

fn privileged(test: &str) -> bool {
    if lb_bpf::is_privileged() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{test}: needs root but CI=true: privileged tests must not be skipped in CI"
    );
    eprintln!("SKIPPED {test}: needs root");
    false
}

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
    }
    v
}

/// One exchange of `proto` with `target` from the client namespace.
fn exchange(
    cluster: &Cluster,
    proto: L4Proto,
    target: SocketAddr,
    i: usize,
) -> Result<String, String> {
    cluster
        .in_client(|| match proto {
            L4Proto::Tcp => request(target, 0, i, TIMEOUT),
            _ => udp_request(target, 0, i, TIMEOUT),
        })
        .map_err(|e| format!("{e:#}"))?
        .map_err(|e| format!("{e:#}"))
}

/// The results of one cell's checks.
struct Cell {
    name: String,
    checks: Vec<(&'static str, Result<String, String>)>,
}

fn run_cell(
    cluster: &Cluster,
    mode: Mode,
    family: Family,
    proto: L4Proto,
    macs: &[[u8; 6]; 2],
    cell_no: u16,
) -> Cell {
    let mut checks = Vec::new();
    let vip = SocketAddr::new(family.vip(), VIP_PORT);

    // answer + client address + reply path, from one batch of requests under capture.
    let capture = Capture::start(&cluster.client, LAN_IF, Duration::from_secs(30));
    let answers: Vec<Result<String, String>> = (0..REQUESTS)
        .map(|i| exchange(cluster, proto, vip, i))
        .collect();
    let frames = capture.map(Capture::stop);
    let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    checks.push((
        "answer",
        if failed.is_empty() {
            Ok(format!("{REQUESTS}/{REQUESTS} answered"))
        } else {
            Err(format!("{} of {REQUESTS} failed: {failed:?}", failed.len()))
        },
    ));
    let expected_seen = if mode.keeps_client_address(proto) {
        family.client()
    } else {
        family.node(0)
    };
    let want = saw_prefix("backend-2", expected_seen);
    let ok: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    checks.push((
        "client address",
        if !ok.is_empty() && ok.iter().all(|a| a.starts_with(&want)) {
            Ok(format!("backend-2 saw {expected_seen}"))
        } else {
            Err(format!("expected answers starting {want:?}, got {ok:?}"))
        },
    ));
    let via = usize::from(mode.direct_return(proto));
    checks.push((
        "reply path",
        match frames {
            Err(e) => Err(format!("capture: {e:#}")),
            Ok(frames) => reply_path(&frames, vip, proto, macs, via),
        },
    ));

    // same client port via node-1 and node-2.
    let port = 41000 + cell_no;
    let targets = [
        SocketAddr::new(family.node(0), NODE_PORT),
        SocketAddr::new(family.node(1), NODE_PORT),
    ];
    checks.push((
        "same client port",
        same_port(cluster, proto, port, targets, family),
    ));
    if proto == L4Proto::Tcp {
        checks.push(("path MTU", path_mtu(cluster, mode, family, macs)));
    }
    Cell {
        name: format!("{mode} {family} {}", proto_name(proto)),
        checks,
    }
}

/// Every reply from `vip` that reached the client came from node `via`'s MAC, and there was one.
fn reply_path(
    frames: &[Frame],
    vip: SocketAddr,
    proto: L4Proto,
    macs: &[[u8; 6]; 2],
    via: usize,
) -> Result<String, String> {
    let want = if proto == L4Proto::Tcp { 6 } else { 17 };
    let replies: Vec<&Frame> = frames
        .iter()
        .filter(|f| !f.outgoing && f.src == vip && f.proto == want)
        .collect();
    if replies.is_empty() {
        return Err(format!(
            "no reply from {vip} seen at the client ({} frames captured)",
            frames.len()
        ));
    }
    let from = |m: [u8; 6]| match macs.iter().position(|x| *x == m) {
        Some(n) => format!("node-{}", n + 1),
        None => format!("{m:02x?}"),
    };
    let wrong: Vec<String> = replies
        .iter()
        .filter(|f| f.eth_src != macs[via])
        .map(|f| from(f.eth_src))
        .collect();
    if wrong.is_empty() {
        Ok(format!(
            "{} replies, all from node-{}",
            replies.len(),
            via + 1
        ))
    } else {
        Err(format!(
            "{} of {} replies came from {wrong:?}, expected node-{}",
            wrong.len(),
            replies.len(),
            via + 1
        ))
    }
}

/// Sends a request of several full-sized segments to the VIP and checks the answer and the ICMP
/// errors the client received (see the module docs).
fn path_mtu(
    cluster: &Cluster,
    mode: Mode,
    family: Family,
    macs: &[[u8; 6]; 2],
) -> Result<String, String> {
    let vip = SocketAddr::new(family.vip(), VIP_PORT);
    let payload = "x".repeat(4000);
    let capture = Capture::start(&cluster.client, LAN_IF, Duration::from_secs(30))
        .map_err(|e| format!("capture: {e:#}"))?;
    // Retransmissions after the ICMP error take a round trip or two; 10 s bounds it.
    let answer = Conversation::open(&cluster.client, vip, 0, Duration::from_secs(10))
        .and_then(|mut c| c.ask(&payload));
    let frames = capture.stop();
    let v6 = family == Family::V6;
    let too_big: Vec<(u32, bool)> = frames
        .iter()
        .filter(|f| !f.outgoing)
        .filter_map(|f| {
            f.icmp
                .filter(|i| i.is_too_big(v6))
                .map(|i| (i.mtu, f.eth_src == macs[0]))
        })
        .collect();
    let answer = answer.map_err(|e| format!("the large request did not complete: {e:#}; ICMP too-big seen (mtu, from node-1): {too_big:?}"))?;
    if !(answer.starts_with("backend-2 saw ") && answer.ends_with(&payload)) {
        return Err(format!(
            "answer cut or wrong ({} bytes): {:?}",
            answer.len(),
            answer.get(..80)
        ));
    }
    let adds_bytes = mode.effective(L4Proto::Tcp) != Mode::Snat;
    match (adds_bytes, too_big.as_slice()) {
        (false, []) => Ok("completed, no ICMP error (nothing added)".into()),
        (false, seen) => Err(format!("SNAT adds no bytes, yet ICMP too-big arrived: {seen:?}")),
        (true, []) => Err(format!(
            "completed, but no ICMP too-big reached the client although {mode} adds bytes on the way to node-2"
        )),
        (true, seen) => {
            if seen
                .iter()
                .all(|&(mtu, from_node1)| from_node1 && mtu > 0 && mtu < u32::from(LAN_MTU))
            {
                Ok(format!("completed after ICMP too-big from node-1 announcing {seen:?}"))
            } else {
                Err(format!(
                    "ICMP too-big must come from node-1 with an MTU below {LAN_MTU}: {seen:?}"
                ))
            }
        }
    }
}

/// Opens a TCP connection (or a UDP flow) from `port` to both targets at once; both must answer
/// from backend-2.
fn same_port(
    cluster: &Cluster,
    proto: L4Proto,
    port: u16,
    targets: [SocketAddr; 2],
    family: Family,
) -> Result<String, String> {
    let res = if proto == L4Proto::Tcp {
        (|| -> anyhow::Result<Vec<String>> {
            let mut a = Conversation::open(&cluster.client, targets[0], port, TIMEOUT)?;
            let mut b = Conversation::open(&cluster.client, targets[1], port, TIMEOUT)?;
            Ok(vec![a.ask("via node-1")?, b.ask("via node-2")?])
        })()
    } else {
        cluster
            .in_client(|| -> anyhow::Result<Vec<String>> {
                let any: IpAddr = if family == Family::V4 {
                    "0.0.0.0".parse()?
                } else {
                    "::".parse()?
                };
                let sock = UdpSocket::bind(SocketAddr::new(any, port))?;
                Ok(vec![
                    udp_exchange(&sock, targets[0], 0, TIMEOUT)?,
                    udp_exchange(&sock, targets[1], 1, TIMEOUT)?,
                ])
            })
            .and_then(|r| r)
    };
    match res {
        Ok(answers) if answers.iter().all(|a| a.starts_with("backend-2 saw ")) => {
            Ok(format!("port {port}: {answers:?}"))
        }
        Ok(answers) => Err(format!("port {port}: unexpected answers {answers:?}")),
        Err(e) => Err(format!("port {port}: {e:#}")),
    }
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

fn run_mode(mode: Mode) {
    let test = format!("mode_{mode}");
    if !privileged(&test) {
        return;
    }
    let cluster = Cluster::create(mode.name()).expect("cluster");
    let _servers = cluster
        .start_backends(Duration::from_secs(120))
        .expect("backend servers");
    let mut d = modes::deploy(&cluster, mode, &plans(), mode.name()).expect("deploy both nodes");
    let macs = [
        Cluster::mac(&cluster.nodes[0], LAN_IF).unwrap(),
        Cluster::mac(&cluster.nodes[1], LAN_IF).unwrap(),
    ];

    let mut cells = Vec::new();
    let mut n = 0u16;
    for family in Family::ALL {
        for proto in PROTOS {
            cells.push(run_cell(&cluster, mode, family, proto, &macs, n));
            n += 1;
        }
    }
    let restart = restart_checks(&cluster, &mut d);
    for (name, res) in restart {
        if let Some(cell) = cells.iter_mut().find(|c| c.name == name) {
            cell.checks.push(("restart", res));
        }
    }

    let counters: Vec<String> = d
        .nodes
        .iter()
        .enumerate()
        .map(
            |(i, dp)| match dp.as_ref().map(lb_bpf::KernelDatapath::counters) {
                Some(Ok(c)) => format!("node-{} counters: {c:?}", i + 1),
                Some(Err(e)) => format!("node-{} counters: {e}", i + 1),
                None => format!("node-{}: not loaded", i + 1),
            },
        )
        .collect();
    let mut failures = Vec::new();
    for cell in &cells {
        for (check, res) in &cell.checks {
            match res {
                Ok(ev) => eprintln!("PASS {:<18} {check:<16} {ev}", cell.name),
                Err(ev) => {
                    eprintln!("FAIL {:<18} {check:<16} {ev}", cell.name);
                    failures.push(format!("{} / {check}: {ev}", cell.name));
                }
            }
        }
    }
    eprintln!("{mode}: XDP {:?}", d.xdp_modes);
    assert!(
        failures.is_empty(),
        "{} failed checks in mode {mode}:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        counters.join("\n")
    );
}

#[test]
fn mode_snat() {
    run_mode(Mode::Snat);
}

#[test]
fn mode_dsr() {
    run_mode(Mode::Dsr);
}

#[test]
fn mode_tunnel() {
    run_mode(Mode::Tunnel);
}

#[test]
fn mode_hybrid() {
    run_mode(Mode::Hybrid);
}
