//! The checks of the forwarding-mode matrix, one function per thing a user would verify, each
//! returning its evidence (`Ok`) or what went wrong (`Err`). `tests/modes.rs` runs them for every
//! mode × family × protocol; `tests/cluster.rs` runs them where the answer is known (plain
//! routing that behaves like DSR), so a verdict is about the datapath, not the harness.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use lb_api::counters::{Counter, CounterSnapshot, DropReason};
use lb_api::flow::L4Proto;
use lb_nat::collision::SourcePortRange;

use crate::capture::{Capture, Frame};
use crate::cluster::{Cluster, Family, LAN_IF, LAN_MTU};
use crate::modes::Mode;
use crate::traffic::{request, saw_prefix, udp_exchange, udp_request, Conversation};

/// Requests per batch.
pub const REQUESTS: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(3);

/// One check's name and its evidence (`Ok`) or failure (`Err`).
pub type Check = (&'static str, Result<String, String>);

/// What a user expects to see for a flow through node-1 to backend-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expectation {
    /// The client address backend-2 sees.
    pub seen: IpAddr,
    /// The node (0: node-1) whose MAC delivers the replies to the client.
    pub reply_via: usize,
    /// Whether forwarding adds bytes on the way to node-2 (so full-sized segments need an ICMP
    /// too-big from node-1).
    pub adds_bytes: bool,
    /// What backend-2 sees of the two connections of the same-client-port check (via node-1,
    /// via node-2).
    pub same_port: [Leg; 2],
}

/// What a backend sees of one connection: the client address and what became of its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    /// The source address the backend sees.
    pub addr: IpAddr,
    /// The source port the backend sees.
    pub port: SeenPort,
}

/// What became of a client's source port on the way to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeenPort {
    /// The client's own port.
    Kept,
    /// Whatever SNAT's port allocator gave (it may keep the port when free).
    Allocated,
    /// A port of the source-port-collision resolver's range, not the client's: the tuple the
    /// backend would have seen was taken by the other connection.
    Resolved,
}

impl Expectation {
    /// What `mode` promises for a `proto` flow in `family`.
    #[must_use]
    pub fn of(mode: Mode, family: Family, proto: L4Proto) -> Self {
        let keeps = mode.keeps_client_address(proto);
        let via_node1 = if keeps {
            Leg {
                addr: family.client(),
                port: SeenPort::Kept,
            }
        } else {
            Leg {
                addr: family.node(0),
                port: SeenPort::Allocated,
            }
        };
        // Via node-2 the backend is local: plain DNAT, which collides with the first connection
        // exactly when that one kept the client's address and port.
        let via_node2 = Leg {
            addr: family.client(),
            port: if keeps {
                SeenPort::Resolved
            } else {
                SeenPort::Kept
            },
        };
        Expectation {
            seen: via_node1.addr,
            reply_via: usize::from(mode.direct_return(proto)),
            adds_bytes: mode.effective(proto) != Mode::Snat,
            same_port: [via_node1, via_node2],
        }
    }
}

/// One exchange of `proto` with `target` from the client namespace.
///
/// # Errors
/// The failure, as text.
pub fn exchange(
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

/// `answer`, `client address` and `reply path`: [`REQUESTS`] exchanges with `target` under
/// capture at the client; every one answered, each by backend-2 seeing `expect.seen`, every reply
/// delivered by node `expect.reply_via`.
#[must_use]
pub fn traffic(
    cluster: &Cluster,
    proto: L4Proto,
    target: SocketAddr,
    expect: Expectation,
    macs: &[[u8; 6]; 2],
) -> Vec<Check> {
    let capture = Capture::start(&cluster.client, LAN_IF, Duration::from_secs(30));
    let answers: Vec<Result<String, String>> = (0..REQUESTS)
        .map(|i| exchange(cluster, proto, target, i))
        .collect();
    let frames = capture.map(Capture::stop);
    let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    let answer = if failed.is_empty() {
        Ok(format!("{REQUESTS}/{REQUESTS} answered"))
    } else {
        Err(format!("{} of {REQUESTS} failed: {failed:?}", failed.len()))
    };
    let want = saw_prefix("backend-2", expect.seen);
    let ok: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    let seen = if !ok.is_empty() && ok.iter().all(|a| a.starts_with(&want)) {
        Ok(format!("backend-2 saw {}", expect.seen))
    } else {
        Err(format!("expected answers starting {want:?}, got {ok:?}"))
    };
    let path = match frames {
        Err(e) => Err(format!("capture: {e:#}")),
        Ok(frames) => reply_path(&frames, target, proto, macs, expect.reply_via),
    };
    vec![
        ("answer", answer),
        ("client address", seen),
        ("reply path", path),
    ]
}

/// Every reply from `vip` that reached the client came from node `via`'s MAC, and there was one.
/// `macs` are the nodes' MACs, node-1's first.
///
/// # Errors
/// Which replies came from elsewhere, or that none came.
pub fn reply_path(
    frames: &[Frame],
    vip: SocketAddr,
    proto: L4Proto,
    macs: &[[u8; 6]],
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

/// `path MTU`: a request of several full-sized segments to `target` must complete. When
/// forwarding adds bytes, node-1 must have answered the oversized segments with ICMP
/// "fragmentation needed" / ICMPv6 "packet too big" announcing an MTU below the link's; when it
/// adds none, no such error may reach the client.
///
/// # Errors
/// What failed, with the ICMP errors seen.
pub fn path_mtu(
    cluster: &Cluster,
    target: SocketAddr,
    adds_bytes: bool,
    macs: &[[u8; 6]; 2],
) -> Result<String, String> {
    let payload = "x".repeat(4000);
    let capture = Capture::start(&cluster.client, LAN_IF, Duration::from_secs(30))
        .map_err(|e| format!("capture: {e:#}"))?;
    // Retransmissions after the ICMP error take a round trip or two; 10 s bounds it.
    let answer = Conversation::open(&cluster.client, target, 0, Duration::from_secs(10))
        .and_then(|mut c| c.ask(&payload));
    let frames = capture.stop();
    let v6 = target.is_ipv6();
    let too_big: Vec<(u32, bool)> = frames
        .iter()
        .filter(|f| !f.outgoing)
        .filter_map(|f| {
            f.icmp
                .filter(|i| i.is_too_big(v6))
                .map(|i| (i.mtu, f.eth_src == macs[0]))
        })
        .collect();
    let answer = answer.map_err(|e| {
        format!(
            "the large request did not complete: {e:#}; ICMP too-big seen (mtu, from node-1): {too_big:?}"
        )
    })?;
    if !(answer.starts_with("backend-2 saw ") && answer.ends_with(&payload)) {
        return Err(format!(
            "answer cut or wrong ({} bytes): {:?}",
            answer.len(),
            answer.get(..80)
        ));
    }
    match (adds_bytes, too_big.as_slice()) {
        (false, []) => Ok("completed, no ICMP error (nothing added)".into()),
        (false, seen) => Err(format!(
            "nothing is added on the way, yet ICMP too-big arrived: {seen:?}"
        )),
        (true, []) => Err(
            "completed, but no ICMP too-big reached the client although bytes are added on the way to node-2"
                .into(),
        ),
        (true, seen) => {
            if seen
                .iter()
                .all(|&(mtu, from_node1)| from_node1 && mtu > 0 && mtu < u32::from(LAN_MTU))
            {
                Ok(format!(
                    "completed after ICMP too-big from node-1 announcing {seen:?}"
                ))
            } else {
                Err(format!(
                    "ICMP too-big must come from node-1 with an MTU below {LAN_MTU}: {seen:?}"
                ))
            }
        }
    }
}

/// Opens a TCP connection (or a UDP flow) from `port` to both targets at once; both must answer
/// from backend-2, which must see each as `legs` says (a [`SeenPort::Resolved`] port shows the
/// collision resolver at work).
///
/// # Errors
/// The failure, with the port.
pub fn same_port(
    cluster: &Cluster,
    proto: L4Proto,
    port: u16,
    targets: [SocketAddr; 2],
    legs: [Leg; 2],
) -> Result<String, String> {
    let family_any: IpAddr = if targets[0].is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let res = if proto == L4Proto::Tcp {
        (|| -> anyhow::Result<Vec<String>> {
            let mut a = Conversation::open(&cluster.client, targets[0], port, TIMEOUT)?;
            let mut b = Conversation::open(&cluster.client, targets[1], port, TIMEOUT)?;
            Ok(vec![a.ask("via node-1")?, b.ask("via node-2")?])
        })()
    } else {
        cluster
            .in_client(|| -> anyhow::Result<Vec<String>> {
                let sock = UdpSocket::bind(SocketAddr::new(family_any, port))?;
                Ok(vec![
                    udp_exchange(&sock, targets[0], 0, TIMEOUT)?,
                    udp_exchange(&sock, targets[1], 1, TIMEOUT)?,
                ])
            })
            .and_then(|r| r)
    };
    let answers = res.map_err(|e| format!("port {port}: {e:#}"))?;
    let wrong: Vec<String> = answers
        .iter()
        .zip(legs)
        .filter_map(|(a, leg)| judge_leg(a, port, leg).err())
        .collect();
    if wrong.is_empty() {
        Ok(format!("port {port}: {answers:?}"))
    } else {
        Err(format!("port {port}: {}", wrong.join("; ")))
    }
}

/// Whether `answer` ("backend-2 saw <addr:port>: ...") shows what `leg` expects of a connection
/// from client port `port`.
///
/// # Errors
/// What the backend saw instead.
pub fn judge_leg(answer: &str, port: u16, leg: Leg) -> Result<(), String> {
    let seen: Option<SocketAddr> = answer
        .strip_prefix("backend-2 saw ")
        .and_then(|rest| rest.split(": ").next())
        .and_then(|a| a.parse().ok());
    let Some(seen) = seen else {
        return Err(format!("not an answer of backend-2: {answer:?}"));
    };
    let range = SourcePortRange::default();
    let port_ok = match leg.port {
        SeenPort::Kept => seen.port() == port,
        SeenPort::Allocated => true,
        SeenPort::Resolved => seen.port() != port && (range.min..=range.max).contains(&seen.port()),
    };
    if seen.ip() == leg.addr && port_ok {
        return Ok(());
    }
    let want_port = match leg.port {
        SeenPort::Kept => format!("{port}"),
        SeenPort::Allocated => "any port".into(),
        SeenPort::Resolved => format!(
            "a port of the collision range {}-{} (not {port})",
            range.min, range.max
        ),
    };
    Err(format!(
        "backend-2 saw {seen}, expected {} with {want_port}",
        leg.addr
    ))
}

/// The counters that moved from `before` to `after`, by name (`service_new_flow +2,
/// drop:encap_failed +8`), or `nothing counted`.
#[must_use]
pub fn counter_delta(before: &CounterSnapshot, after: &CounterSnapshot) -> String {
    let mut moved: Vec<String> = Counter::ALL
        .into_iter()
        .filter(|&c| c != Counter::RxPackets)
        .filter_map(|c| {
            let d = after.get(c).saturating_sub(before.get(c));
            (d > 0).then(|| format!("{} +{d}", c.name()))
        })
        .collect();
    moved.extend(DropReason::ALL.into_iter().filter_map(|r| {
        let d = after.drops(r).saturating_sub(before.drops(r));
        (d > 0).then(|| format!("drop:{} +{d}", r.name()))
    }));
    if moved.is_empty() {
        "nothing counted".into()
    } else {
        moved.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_api::counters::Counters;

    const CLIENT: &str = "10.210.0.10";

    fn leg(addr: &str, port: SeenPort) -> Leg {
        Leg {
            addr: addr.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn a_leg_is_judged_by_the_address_and_port_the_backend_saw() {
        let kept = leg(CLIENT, SeenPort::Kept);
        assert!(judge_leg("backend-2 saw 10.210.0.10:41000: via node-1", 41000, kept).is_ok());
        let e = judge_leg("backend-2 saw 10.210.0.10:41001: x", 41000, kept).unwrap_err();
        assert!(e.contains("41001") && e.contains("41000"), "{e}");
        // 10.210.0.1 is a prefix of 10.210.0.10 as text, not as an address.
        assert!(judge_leg("backend-2 saw 10.210.0.1:41000: x", 41000, kept).is_err());
        assert!(judge_leg("backend-1 saw 10.210.0.10:41000: x", 41000, kept).is_err());

        let resolved = leg("fd00:210::10", SeenPort::Resolved);
        assert!(judge_leg("backend-2 saw [fd00:210::10]:22457: y", 41002, resolved).is_ok());
        // The client's own port, or one outside the resolver's range, is no resolution.
        assert!(judge_leg("backend-2 saw [fd00:210::10]:41002: y", 41002, resolved).is_err());
        assert!(judge_leg("backend-2 saw [fd00:210::10]:30000: y", 41002, resolved).is_err());

        let snat = leg("10.210.0.1", SeenPort::Allocated);
        assert!(judge_leg("backend-2 saw 10.210.0.1:33000: z", 41000, snat).is_ok());
        assert!(judge_leg("backend-2 saw 10.210.0.10:41000: z", 41000, snat).is_err());
    }

    #[test]
    fn the_same_port_legs_follow_the_mode() {
        let e = Expectation::of(Mode::Dsr, Family::V4, L4Proto::Udp);
        assert_eq!(e.same_port[0], leg(CLIENT, SeenPort::Kept));
        assert_eq!(e.same_port[1], leg(CLIENT, SeenPort::Resolved));
        let e = Expectation::of(Mode::Hybrid, Family::V4, L4Proto::Udp);
        assert_eq!(e.same_port[0], leg("10.210.0.1", SeenPort::Allocated));
        assert_eq!(e.same_port[1], leg(CLIENT, SeenPort::Kept));
    }

    #[test]
    fn counter_deltas_name_what_moved() {
        let before = CounterSnapshot::default();
        let mut after = before;
        assert_eq!(counter_delta(&before, &after), "nothing counted");
        after.bump(Counter::RxPackets.slot());
        after.bump(Counter::MtuExceeded.slot());
        after.bump(DropReason::EncapFailed.slot());
        after.bump(DropReason::EncapFailed.slot());
        assert_eq!(
            counter_delta(&before, &after),
            "mtu_exceeded +1, drop:encap_failed +2"
        );
    }
}
