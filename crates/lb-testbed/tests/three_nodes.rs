//! Incident 2 with the frontends on two other nodes, over real traffic in a three-node cluster
//! ([`Cluster::with_nodes`]): one client port reaches the NodePorts of node-1 and node-3 at the
//! same time, and both nodes forward to backend-2 on node-2 keeping the client's address (DSR,
//! VXLAN tunnel). backend-2 would see the same tuple twice; node-2 must keep the flows apart (a
//! DSR flow by the tuple the client sent, which the DSR carrier names; a tunnelled flow by the
//! node it came from) and rewrite one flow's source port into the collision resolver's range.
//!
//! Per mode × family × protocol:
//! - `answers`: both TCP connections (UDP flows) are open at once and requests alternate between
//!   them; every request is answered, on its own connection, with its own line;
//! - `backend saw`: backend-2 saw the client's address on both, one from the client's port and
//!   the other from a port of the resolver's range;
//! - `reply path`: the client's packet socket shows who delivered each NodePort's replies —
//!   node-2 (DSR: straight from the backend's node) or the node the connection went to (tunnel);
//! - `node-2 counted`: node-2's datapath took both flows as new backend-side flows and rewrote a
//!   source port.
//!
//! The two-node version, where one of the two flows is node-2's own NodePort flow, is the
//! `same client port` check of `tests/modes.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Once;
use std::time::Duration;

use lb_api::counters::{Counter, CounterSnapshot};
use lb_api::flow::L4Proto;
use lb_testbed::capture::{Capture, Frame};
use lb_testbed::cluster::{node_port, Cluster, Family, LAN_IF, NODE_PORT};
use lb_testbed::matrix::{self, judge_leg, Check, Leg, SeenPort};
use lb_testbed::modes::{self, Deployment, Frontend, Mode, ServicePlan};
use lb_testbed::netns;
use lb_testbed::traffic::{udp_exchange, Conversation, BACKEND_PORT};

const TIMEOUT: Duration = Duration::from_secs(3);
const PROTOS: [L4Proto; 2] = [L4Proto::Tcp, L4Proto::Udp];
/// The nodes the client connects to (node-1, node-3); neither hosts the backend.
const FRONTENDS: [usize; 2] = [0, 2];
/// node-2, hosting backend-2.
const BACKEND_NODE: usize = 1;
/// Requests per connection, alternating between the two.
const ROUNDS: usize = 4;

static SIGNALS: Once = Once::new();

use lb_testbed::gate::privileged_test as privileged;

/// The NodePort in both families and protocols, backend-2 its only backend.
fn plans() -> Vec<ServicePlan> {
    let mut v = Vec::new();
    for family in Family::ALL {
        for proto in PROTOS {
            v.push(ServicePlan {
                frontend: Frontend::NodePort(NODE_PORT),
                family,
                proto,
                target_port: BACKEND_PORT,
                backends: vec![BACKEND_NODE],
            });
        }
    }
    v
}

/// Every node's counters now.
///
/// # Errors
/// Which node's counters cannot be read.
fn counters(d: &Deployment) -> Result<Vec<CounterSnapshot>, String> {
    d.nodes
        .iter()
        .enumerate()
        .map(
            |(n, dp)| match dp.as_ref().map(lb_bpf::KernelDatapath::counters) {
                Some(Ok(c)) => Ok(c),
                Some(Err(e)) => Err(format!("node-{}'s counters: {e}", n + 1)),
                None => Err(format!("node-{} is not loaded", n + 1)),
            },
        )
        .collect()
}

/// The request line `round` sends to the frontend on node `node`: the answer echoes it, so each
/// answer names the connection and round it belongs to.
fn line(node: usize, round: usize) -> String {
    format!("via node-{} round {round}", node + 1)
}

/// `answers`: both connections (flows) from client port `port` open at once, [`ROUNDS`] requests
/// on each, alternating; each connection's backend peer must not change between rounds. Returns
/// each connection's last answer, for `backend saw`.
fn exchange(
    cluster: &Cluster,
    family: Family,
    proto: L4Proto,
    port: u16,
) -> Result<[String; 2], String> {
    let targets = FRONTENDS.map(|n| node_port(family, n));
    let mut last: [String; 2] = Default::default();
    let mut check = |k: usize, round: usize, answer: String| -> Result<(), String> {
        let want = match proto {
            L4Proto::Tcp => line(FRONTENDS[k], round),
            _ => format!("datagram {}", round * 2 + k),
        };
        if !answer.ends_with(&format!(": {want}")) {
            return Err(format!(
                "{} answered {answer:?} to {want:?}: not its own answer",
                targets[k]
            ));
        }
        if round > 0 && answer.split(": ").next() != last[k].split(": ").next() {
            return Err(format!(
                "{}: the backend saw another peer in round {round}: {answer:?} after {:?}",
                targets[k], last[k]
            ));
        }
        last[k] = answer;
        Ok(())
    };
    if proto == L4Proto::Tcp {
        // SO_REUSEADDR lets both connections bind `port` (see `traffic::connect`). In DSR mode
        // node-2 sends the SYN-ACKs, and a connection completes only if its SYN-ACK carries the
        // NodePort address its SYN went to as source: both handshakes completing shows that
        // node-2 answered each from the right address (`reply path` shows that node-2 sent them).
        let mut conns = Vec::new();
        for t in targets {
            let c = Conversation::open(&cluster.client, t, port, TIMEOUT)
                .map_err(|e| format!("{e:#}"))?;
            let local = c.local_addr().map_err(|e| format!("{e:#}"))?;
            if local.port() != port {
                return Err(format!(
                    "connection to {t} is bound to {local}, not port {port}"
                ));
            }
            conns.push(c);
        }
        for round in 0..ROUNDS {
            for (k, c) in conns.iter_mut().enumerate() {
                let answer = c
                    .ask(&line(FRONTENDS[k], round))
                    .map_err(|e| format!("{} round {round}: {e:#}", targets[k]))?;
                check(k, round, answer)?;
            }
        }
    } else {
        let any: IpAddr = match family {
            Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
            Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
        };
        cluster
            .in_client(|| -> Result<(), String> {
                // One socket: every datagram leaves from `port`. `udp_exchange` also requires
                // the answer to come from the NodePort address it was sent to.
                let sock = UdpSocket::bind(SocketAddr::new(any, port))
                    .map_err(|e| format!("bind: {e}"))?;
                for round in 0..ROUNDS {
                    for (k, &t) in targets.iter().enumerate() {
                        let answer = udp_exchange(&sock, t, round * 2 + k, TIMEOUT)
                            .map_err(|e| format!("{t} round {round}: {e:#}"))?;
                        check(k, round, answer)?;
                    }
                }
                Ok(())
            })
            .map_err(|e| format!("{e:#}"))??;
    }
    Ok(last)
}

/// `backend saw`: the client's address on both; one connection from `port`, the other from the
/// resolver's range (whichever reached node-2 second).
fn backend_saw(family: Family, port: u16, answers: &[String; 2]) -> Result<String, String> {
    let leg = |port| Leg {
        addr: family.client(),
        port,
    };
    let as_kept_resolved = |kept: usize| -> Result<(), String> {
        judge_leg(&answers[kept], port, leg(SeenPort::Kept))?;
        judge_leg(&answers[1 - kept], port, leg(SeenPort::Resolved))
    };
    match (as_kept_resolved(0), as_kept_resolved(1)) {
        (Ok(()), _) | (_, Ok(())) => Ok(format!("port {port}: {answers:?}")),
        (Err(a), Err(b)) => Err(format!(
            "port {port}: expected one connection from {port} and one from the collision range; \
             via node-1 kept: {a}; via node-3 kept: {b}"
        )),
    }
}

/// `reply path`: the replies from each NodePort reached the client from node-2's MAC (DSR) or
/// from that NodePort's node (tunnel).
fn reply_path(
    frames: &[Frame],
    family: Family,
    proto: L4Proto,
    mode: Mode,
    macs: &[[u8; 6]],
) -> Result<String, String> {
    let mut out = Vec::new();
    for n in FRONTENDS {
        let via = if mode.direct_return(proto) {
            BACKEND_NODE
        } else {
            n
        };
        out.push(matrix::reply_path(
            frames,
            node_port(family, n),
            proto,
            macs,
            via,
        )?);
    }
    Ok(format!("via node-1: {}; via node-3: {}", out[0], out[1]))
}

/// `node-2 counted`: both flows were new backend-side flows at node-2, one with its source port
/// rewritten.
fn node2_counted(before: &[CounterSnapshot], after: &[CounterSnapshot]) -> Result<String, String> {
    let moved = |c: Counter| {
        after[BACKEND_NODE]
            .get(c)
            .saturating_sub(before[BACKEND_NODE].get(c))
    };
    let (new, rewritten) = (
        moved(Counter::BackendSideNewFlow),
        moved(Counter::SourcePortRewritten),
    );
    let text = format!("backend_side_new_flow +{new}, source_port_rewritten +{rewritten}");
    if new >= 2 && rewritten >= 1 {
        Ok(text)
    } else {
        Err(format!("{text}; expected at least +2 and +1"))
    }
}

fn run_case(
    cluster: &Cluster,
    d: &Deployment,
    family: Family,
    proto: L4Proto,
    port: u16,
    macs: &[[u8; 6]],
) -> (Vec<Check>, String) {
    let before = counters(d);
    let capture = Capture::start(&cluster.client, LAN_IF, Duration::from_secs(30));
    let answers = exchange(cluster, family, proto, port);
    let frames = capture.map(Capture::stop);
    let after = counters(d);
    let mut checks: Vec<Check> = vec![(
        "answers",
        answers
            .as_ref()
            .map(|_| format!("{ROUNDS} rounds on both, each its own answer"))
            .map_err(Clone::clone),
    )];
    if let Ok(answers) = &answers {
        checks.push(("backend saw", backend_saw(family, port, answers)));
    }
    checks.push((
        "reply path",
        frames
            .map_err(|e| format!("capture: {e:#}"))
            .and_then(|f| reply_path(&f, family, proto, d.mode, macs)),
    ));
    let (counted, node2) = match (&before, &after) {
        (Ok(b), Ok(a)) => (
            b.iter()
                .zip(a)
                .enumerate()
                .map(|(n, (b, a))| format!("node-{}: {}", n + 1, matrix::counter_delta(b, a)))
                .collect::<Vec<_>>()
                .join("; "),
            node2_counted(b, a),
        ),
        (Err(e), _) | (_, Err(e)) => (e.clone(), Err(e.clone())),
    };
    checks.push(("node-2 counted", node2));
    (checks, counted)
}

fn run_mode(mode: Mode) {
    let test = format!("three_nodes_{mode}");
    if !privileged(&test) {
        return;
    }
    // Ctrl-C or SIGTERM during the run removes the namespaces too (a panic unwinds through the
    // cluster's drop). One handler per process: the other mode's test may have installed it.
    SIGNALS.call_once(|| {
        let _ = netns::remove_on_signal();
    });
    let tag = format!("3{mode}");
    let cluster = Cluster::with_nodes(&tag, 3).expect("three-node cluster");
    let _servers = cluster
        .start_backends(Duration::from_secs(60))
        .expect("backend servers");
    let d = modes::deploy(&cluster, mode, &plans(), &tag).expect("deploy on every node");
    let macs: Vec<[u8; 6]> = cluster
        .nodes
        .iter()
        .map(|ns| Cluster::mac(ns, LAN_IF).expect("node MAC"))
        .collect();

    let mut failures = Vec::new();
    let mut port = 43000;
    for family in Family::ALL {
        for proto in PROTOS {
            let name = format!(
                "{mode} {family} {}",
                if proto == L4Proto::Tcp { "TCP" } else { "UDP" }
            );
            let (checks, counted) = run_case(&cluster, &d, family, proto, port, &macs);
            port += 1;
            let mut failed = false;
            for (check, res) in &checks {
                match res {
                    Ok(ev) => eprintln!("PASS {name:<16} {check:<14} {ev}"),
                    Err(ev) => {
                        eprintln!("FAIL {name:<16} {check:<14} {ev}");
                        failures.push(format!("{name} / {check}: {ev}"));
                        failed = true;
                    }
                }
            }
            if failed {
                eprintln!("     {name:<16} counted: {counted}");
                failures.push(format!("  counted during {name}: {counted}"));
            }
        }
    }
    eprintln!("{mode}: XDP {:?}", d.xdp_modes);
    let failed_checks = failures.iter().filter(|f| !f.starts_with("  ")).count();
    assert!(
        failures.is_empty(),
        "{failed_checks} failed checks in mode {mode} with three nodes:\n{}",
        failures.join("\n"),
    );
}

#[test]
fn three_nodes_dsr() {
    run_mode(Mode::Dsr);
}

#[test]
fn three_nodes_tunnel() {
    run_mode(Mode::Tunnel);
}
