//! Malformed traffic over a real link (issue 14, part 5).
//!
//! The testbed (client → node → two backends, in namespaces of their own) with IPv6 added, the
//! kernel datapath on the node as in the end-to-end test (XDP on the client-facing `n0`, TC on
//! the backend-facing links), a TCP and a UDP service on an IPv4 and an IPv6 VIP, and the client
//! configured as a peer node so that VXLAN from it reaches the decapsulation path.
//!
//! `tests/scapy/malformed.py`, run by scapy inside the client namespace, sends about 4000 crafted
//! Ethernet frames over the client's veth, category by category: truncated IPv4/IPv6/TCP/UDP
//! headers, bogus IHL and TCP data offsets, IPv4 total and IPv6 payload lengths that disagree with
//! the frame, bad and zero TCP/UDP checksums, IPv6 extension-header chains longer than the
//! parser's bound, overlapping and tiny IPv4/IPv6 fragments, VLAN stacks, VXLAN with garbage
//! inside, to the VIPs and to addresses of no service. Each frame says what the datapath must make
//! of it. After each category (a barrier datagram proves the node has seen every frame) the test
//! compares the counters' movement with the category's expectation and drains the drop events;
//! after all of them it checks the outcome identity (every packet seen got exactly one outcome)
//! and that the conntrack table holds nothing but the flows the well-formed frames to the VIPs
//! started; then real TCP connections through both VIPs must still work.
//!
//! The tally by outcome and by category is printed (`--nocapture`). Every problem found is
//! collected and reported together at the end, with the category of the frames concerned
//! (`python3 tests/scapy/malformed.py --dry-run --show <category> ...` prints those frames).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lb_api::abi::{CtEntry, CtKey, CtKind};
use lb_api::counters::{Counter, CounterSnapshot, DropReason};
use lb_api::events::DropEvent;
use lb_api::flow::{v4_of, L4Proto};
use lb_api::wire::MAX_IPV6_EXT_HEADERS;
use lb_bpf::KernelDatapath;
use lb_control::default_config;
use lb_control::{NodeSpec, ServiceSpec};
use lb_examples::scenario;
use lb_testbed::gate::privileged_test as privileged;
use lb_testbed::matrix::counter_delta;
use lb_testbed::netns::{in_ns, in_ns_output};
use lb_testbed::replay::barrier;
use lb_testbed::testbed::{Testbed, BACKENDS, BACKEND_PORT, CLIENT, VIP, VIP_PORT};
use lb_testbed::traffic::{self, BackendSite, Conversation};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scapy/malformed.py");
/// The script's random seed: the same frames on every run.
const SEED: u64 = 14;
/// About this many frames in all.
const FRAMES: usize = 4000;
/// The whole barrage, from starting the script to its last category, at most.
const BARRAGE_DEADLINE: Duration = Duration::from_secs(240);
/// Longest wait for one line of the script (building ~4000 frames takes a few seconds).
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// The node's address on the client's link.
const NODE: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
/// A source on the client's link that is no peer node (and no host).
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 99);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, 2);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
const BACKENDS6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0x200, 2, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0xfd00, 0x200, 3, 0, 0, 0, 0, 2),
];

/// The outcome counters: every packet the programs see bumps exactly one of them.
const OUTCOMES: [Counter; 14] = Counter::OUTCOMES;

/// Counters that also move with traffic the test does not craft: the client's and node's own
/// chatter (ARP, neighbour discovery), the barrier datagrams, and the hosts' answers to crafted
/// frames (backends' SYN-ACKs and RSTs, the client's RSTs and port-unreachables). For these a
/// category must move them at least as much as its frames say; every other counter and every
/// drop reason exactly as much.
const NOISY: [Counter; 11] = [
    Counter::RxPackets,
    // The hosts' own TCP/UDP (barriers, answers) carries partial checksums, as local senders'
    // packets do with the default offload.
    Counter::ChecksumPartialAtXdp,
    Counter::PassNotIp,
    Counter::PassNotService,
    Counter::PassOtherProto,
    Counter::ServiceEstablished,
    Counter::ReplyTranslated,
    Counter::IcmpErrorTranslated,
    Counter::PassIcmpErrorNoFlow,
    Counter::OrphanReplyRemoved,
    Counter::ConntrackExpiredAtLookup,
];

/// A counter slot by the name the script uses: a counter's name, or `drop:<reason>`.
fn slot_of(name: &str) -> Option<usize> {
    if let Some(reason) = name.strip_prefix("drop:") {
        return DropReason::ALL
            .into_iter()
            .find(|r| r.name() == reason)
            .map(|r| r.slot() as usize);
    }
    Counter::ALL
        .into_iter()
        .find(|c| c.name() == name)
        .map(|c| c.slot() as usize)
}

fn name_of(slot: usize) -> String {
    if let Some(c) = Counter::ALL.into_iter().find(|c| c.slot() as usize == slot) {
        return c.name().to_string();
    }
    DropReason::ALL
        .into_iter()
        .find(|r| r.slot() as usize == slot)
        .map_or_else(|| format!("slot{slot}"), |r| format!("drop:{}", r.name()))
}

fn delta(before: &CounterSnapshot, after: &CounterSnapshot) -> CounterSnapshot {
    let mut d = CounterSnapshot::default();
    for (i, v) in d.0.iter_mut().enumerate() {
        *v = after.0[i].saturating_sub(before.0[i]);
    }
    d
}

/// `rx_packets` against the sum of the outcome counters, and `dropped` against the sum of the
/// drop reasons: `None` when both identities hold.
fn identity_broken(c: &CounterSnapshot) -> Option<String> {
    let rx = c.get(Counter::RxPackets);
    let outcomes: u64 = OUTCOMES.iter().map(|o| c.get(*o)).sum();
    let dropped = c.get(Counter::Dropped);
    let reasons: u64 = DropReason::ALL.iter().map(|r| c.drops(*r)).sum();
    (rx != outcomes || dropped != reasons).then(|| {
        format!(
            "rx_packets {rx} but the outcome counters sum to {outcomes}; dropped {dropped} but \
             the drop reasons sum to {reasons}"
        )
    })
}

/// The identity, given packets in flight a moment to finish (a counter snapshot is not atomic
/// across slots): checked up to 20 times, 100 ms apart.
fn settled_identity(dp: &KernelDatapath) -> Result<CounterSnapshot, String> {
    let mut last = String::new();
    for _ in 0..20 {
        let c = dp
            .counters()
            .map_err(|e| format!("reading counters: {e}"))?;
        match identity_broken(&c) {
            None => return Ok(c),
            Some(why) => last = why,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
}

/// A flow a frame to a service starts, as the script declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Tuple {
    proto: u8,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
}

#[derive(Debug, Clone)]
struct Declared {
    category: String,
    /// Whether a receiver accepts the frame (its checksums are right).
    real: bool,
}

fn addr_of(a: &[u8; 16], family: u8) -> Option<IpAddr> {
    match family {
        4 if a[4..] == [0; 12] => Some(IpAddr::V4(v4_of(a).into())),
        6 => Some(IpAddr::V6((*a).into())),
        _ => None,
    }
}

fn key_tuple(k: &CtKey) -> Option<Tuple> {
    Some(Tuple {
        proto: k.proto,
        src: addr_of(&k.src, k.family)?,
        sport: k.src_port,
        dst: addr_of(&k.dst, k.family)?,
        dport: k.dst_port,
    })
}

/// What the script said about one category.
#[derive(Debug)]
struct Sent {
    name: String,
    frames: u64,
    expect: Vec<(usize, u64)>,
    flows: Vec<(Tuple, bool)>,
}

fn parse_sent(line: &str) -> Result<Sent, String> {
    let bad = || format!("malformed SENT line from the script: {line:?}");
    let mut f = line.split(' ');
    let (Some("SENT"), Some(name), Some(frames), Some(expect), Some(flows), None) =
        (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return Err(bad());
    };
    let frames = frames.parse().map_err(|_| bad())?;
    let mut exp = Vec::new();
    for kv in expect.split(',') {
        let (k, v) = kv.split_once('=').ok_or_else(bad)?;
        let slot =
            slot_of(k).ok_or_else(|| format!("the script expects an unknown counter {k}"))?;
        exp.push((slot, v.parse().map_err(|_| bad())?));
    }
    let mut fl = Vec::new();
    if flows != "-" {
        for s in flows.split(';') {
            let p: Vec<&str> = s.split('|').collect();
            let [proto, src, sport, dst, dport, real] = p[..] else {
                return Err(bad());
            };
            let t = Tuple {
                proto: proto.parse().map_err(|_| bad())?,
                src: src.parse().map_err(|_| bad())?,
                sport: sport.parse().map_err(|_| bad())?,
                dst: dst.parse().map_err(|_| bad())?,
                dport: dport.parse().map_err(|_| bad())?,
            };
            fl.push((t, real == "1"));
        }
    }
    Ok(Sent {
        name: name.to_string(),
        frames,
        expect: exp,
        flows: fl,
    })
}

/// The script's process (ours): killed and reaped when dropped, whatever happened.
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Script {
    fn start(python: &str, ns: &str, args: &[String]) -> Result<Self, String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, python, SCRIPT])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {SCRIPT}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, lines) = mpsc::channel();
        // Both readers end when the script's pipes close (it exits or is killed).
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Ok(Script {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: Some(stderr),
        })
    }

    fn next_line(&self, timeout: Duration) -> Result<String, String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => Ok(l),
            Err(RecvTimeoutError::Timeout) => {
                Err(format!("no line from the script in {timeout:?}"))
            }
            Err(RecvTimeoutError::Disconnected) => Err("the script ended early".into()),
        }
    }

    fn proceed(&mut self) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        stdin
            .write_all(b"NEXT\n")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("writing to the script: {e}"))
    }

    /// Kills the script (if it still runs) and returns what it wrote to stderr.
    fn finish(&mut self) -> String {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A Python 3 with scapy (Debian's `python3-scapy`, installed by `cargo xtask setup`).
fn python_with_scapy() -> Option<&'static str> {
    ["/usr/bin/python3", "python3"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import scapy.all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// IPv6 on every link of the testbed: `fd00:200:N::1` on the node, `::2` on the client (N=1) and
/// the backends (N=2, 3), default routes through the node, forwarding on.
fn add_ipv6(bed: &Testbed) -> anyhow::Result<()> {
    let (c, n) = (bed.client.as_str(), bed.node.as_str());
    in_ns(n, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
    for (dev, net) in [("n0", 1), ("n1", 2), ("n2", 3)] {
        let a = format!("fd00:200:{net}::1/64");
        in_ns(n, &["ip", "-6", "addr", "add", &a, "dev", dev, "nodad"])?;
    }
    in_ns(
        c,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:200:1::2/64",
            "dev",
            "c0",
            "nodad",
        ],
    )?;
    in_ns(
        c,
        &[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:200:1::1",
        ],
    )?;
    for (b, net) in bed.backends.iter().zip([2, 3]) {
        let a = format!("fd00:200:{net}::2/64");
        in_ns(b, &["ip", "-6", "addr", "add", &a, "dev", "b0", "nodad"])?;
        let gw = format!("fd00:200:{net}::1");
        in_ns(b, &["ip", "-6", "route", "add", "default", "via", &gw])?;
    }
    Ok(())
}

/// No ICMP rate limit on the node (its namespace's own settings). The barrier between categories
/// is the node's ICMP port unreachable, and the node answers many crafted frames with ICMP errors
/// too: with the default limits (one per second and peer after a burst of six) a barrier's answer
/// is suppressed and the barrier waits out its timeout.
fn no_icmp_rate_limit(node: &str) -> anyhow::Result<()> {
    for knob in [
        "net.ipv4.icmp_ratelimit=0",
        "net.ipv4.icmp_msgs_per_sec=100000",
        "net.ipv6.icmp.ratelimit=0",
    ] {
        in_ns(node, &["sysctl", "-qw", knob])?;
    }
    Ok(())
}

fn v6_services() -> [ServiceSpec; 2] {
    let tcp = ServiceSpec {
        id: 3,
        frontend: SocketAddr::from((VIP6, VIP_PORT)),
        backends: BACKENDS6
            .iter()
            .map(|b| SocketAddr::from((*b, BACKEND_PORT)).into())
            .collect(),
        ..scenario::service()
    };
    let udp = ServiceSpec {
        id: 4,
        proto: L4Proto::Udp,
        ..tcp.clone()
    };
    [tcp, udp]
}

fn sys(ns: &str, dev: &str, what: &str) -> anyhow::Result<String> {
    Ok(
        in_ns_output(ns, &["cat", &format!("/sys/class/net/{dev}/{what}")])?
            .trim()
            .to_string(),
    )
}

/// Whether a drop event's flow is one the script could have sent: addresses (where parsing got
/// that far) of the test's namespaces.
fn event_plausible(ev: &DropEvent) -> bool {
    let srcs: [IpAddr; 3] = [CLIENT.into(), STRANGER.into(), CLIENT6.into()];
    let mut dsts: Vec<IpAddr> = vec![VIP.into(), NODE.into(), VIP6.into(), NODE6.into()];
    dsts.extend(BACKENDS.iter().map(|b| IpAddr::from(*b)));
    dsts.extend(BACKENDS6.iter().map(|b| IpAddr::from(*b)));
    let ok = |a: &[u8; 16], allowed: &[IpAddr]| {
        *a == [0; 16] || addr_of(a, ev.family).is_some_and(|x| allowed.contains(&x))
    };
    matches!(ev.family, 0 | 4 | 6) && ok(&ev.src, &srcs) && ok(&ev.dst, &dsts)
}

/// Per-category result, for the tally.
struct Row {
    name: String,
    frames: u64,
    expected: String,
    /// Every counter that moved, noise included.
    moved: String,
    verdict: String,
}

fn spec(expect: &[(usize, u64)]) -> String {
    expect
        .iter()
        .map(|(s, n)| format!("{}={n}", name_of(*s)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Compares one category's counter movement and drop events with what its frames say.
fn judge(
    sent: &Sent,
    d: &CounterSnapshot,
    events: &[DropEvent],
    n0: u32,
    problems: &mut Vec<String>,
) -> String {
    let mut want = CounterSnapshot::default();
    for (slot, n) in &sent.expect {
        want.0[*slot] += n;
    }
    want.0[Counter::Dropped.slot() as usize] = DropReason::ALL.iter().map(|r| want.drops(*r)).sum();
    let mut wrong = Vec::new();
    for slot in 0..want.0.len() {
        let (w, g) = (want.0[slot], d.0[slot]);
        let noisy = NOISY.iter().any(|c| c.slot() as usize == slot);
        if (noisy && g < w) || (!noisy && g != w) {
            wrong.push(format!("{} {g} (want {w})", name_of(slot)));
        }
    }
    if d.get(Counter::RxPackets) < sent.frames {
        wrong.push(format!(
            "rx_packets {} < {} frames sent",
            d.get(Counter::RxPackets),
            sent.frames
        ));
    }
    // Drop events: one per drop, with the same reasons, from n0's XDP program, naming a flow
    // the script could have sent.
    if events.len() as u64 != d.get(Counter::Dropped) {
        wrong.push(format!(
            "{} drop events for {} drops",
            events.len(),
            d.get(Counter::Dropped)
        ));
    }
    for r in DropReason::ALL {
        let n = events.iter().filter(|e| e.reason == r).count() as u64;
        if n != d.drops(r) {
            wrong.push(format!(
                "{n} events of {} for {} drops",
                r.name(),
                d.drops(r)
            ));
        }
    }
    if let Some(e) = events.iter().find(|e| e.ifindex != n0) {
        wrong.push(format!(
            "an event from ifindex {} (n0 is {n0}): {e:?}",
            e.ifindex
        ));
    }
    if let Some(e) = events.iter().find(|e| !event_plausible(e)) {
        wrong.push(format!("an event with a flow the script never sent: {e:?}"));
    }
    if wrong.is_empty() {
        "ok".into()
    } else {
        let w = wrong.join("; ");
        problems.push(format!("category {}: {w}", sent.name));
        format!("WRONG: {w}")
    }
}

/// Checks the conntrack table after the barrage: every service entry is a flow a frame to a
/// service declared, every reverse-NAT entry the partner of one, every declared flow is there.
/// Frames a receiver discards start flows only where the datapath does not verify (a wrong
/// TCP/UDP checksum: documented, as a router forwards them); a bad IPv4 header checksum or a
/// zero UDP checksum over IPv6 starts none (the script declares no flow for them, so an entry
/// of theirs is garbage).
fn judge_conntrack(
    entries: &[(CtKey, CtEntry)],
    declared: &BTreeMap<Tuple, Declared>,
    problems: &mut Vec<String>,
) -> String {
    let mut garbage = Vec::new();
    let mut discarded: BTreeMap<&str, Vec<Tuple>> = BTreeMap::new();
    let mut found: HashMap<Tuple, &CtEntry> = HashMap::new();
    for (k, e) in entries {
        let t = key_tuple(k);
        if k.kind != CtKind::Service as u8 {
            continue;
        }
        match t.and_then(|t| declared.get(&t).map(|d| (t, d))) {
            Some((t, d)) if k.origin == [0; 16] => {
                found.insert(t, e);
                if !d.real {
                    discarded.entry(d.category.as_str()).or_default().push(t);
                }
            }
            _ => garbage.push(format!("service entry {k:?} -> {e:?}")),
        }
    }
    let backends: Vec<IpAddr> = BACKENDS
        .iter()
        .map(|b| IpAddr::from(*b))
        .chain(BACKENDS6.iter().map(|b| IpAddr::from(*b)))
        .collect();
    for (t, e) in &found {
        let to_backend = addr_of(&e.nat_addr, e.family).is_some_and(|a| backends.contains(&a))
            && e.nat_port == BACKEND_PORT;
        if !to_backend {
            garbage.push(format!("service entry of {t:?} translates to {e:?}"));
        }
    }
    let mut reverse = 0;
    for (k, e) in entries {
        if k.kind == CtKind::Service as u8 {
            continue;
        }
        reverse += 1;
        let partner = k.kind == CtKind::ReverseNat as u8
            && key_tuple(k).is_some_and(|r| {
                found.iter().any(|(t, fe)| {
                    t.proto == r.proto
                        && t.src == r.dst
                        && t.sport == r.dport
                        && addr_of(&fe.nat_addr, fe.family) == Some(r.src)
                        && fe.nat_port == r.sport
                })
            });
        if !partner {
            garbage.push(format!("entry without a flow {k:?} -> {e:?}"));
        }
    }
    let missing: Vec<_> = declared
        .iter()
        .filter(|(t, _)| !found.contains_key(t))
        .map(|(t, d)| format!("{t:?} ({})", d.category))
        .collect();
    if !garbage.is_empty() {
        problems.push(format!(
            "{} garbage conntrack entries (no frame to a service started them): {}",
            garbage.len(),
            garbage
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if !missing.is_empty() {
        problems.push(format!(
            "{} flows that frames to a service started are not in conntrack: {}",
            missing.len(),
            missing
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let n_discarded: usize = discarded.values().map(Vec::len).sum();
    let unverified = |c: &str| c.ends_with("_bad_checksum") || c.ends_with("_tcp_zero_checksum");
    let wrong: Vec<String> = discarded
        .iter()
        .filter(|(c, _)| !unverified(c))
        .map(|(c, v)| format!("{c}: {} (first {:?})", v.len(), v[0]))
        .collect();
    if !wrong.is_empty() {
        problems.push(format!(
            "conntrack flows from frames the datapath should have refused: {}",
            wrong.join("; ")
        ));
    }
    format!(
        "{} service entries ({} of flows from frames a receiver discards), {reverse} other \
         entries, {} garbage, {} declared flows missing",
        found.len(),
        n_discarded,
        garbage.len(),
        missing.len()
    )
}

/// Real TCP through both VIPs after the barrage: a few requests and one conversation each, and
/// the conversation's flow in conntrack.
fn real_traffic(bed: &Testbed, dp: &KernelDatapath, problems: &mut Vec<String>) -> String {
    let mut notes = Vec::new();
    for vip in [IpAddr::V4(VIP), IpAddr::V6(VIP6)] {
        let target = SocketAddr::new(vip, VIP_PORT);
        match bed.requests(target, 4, Duration::from_secs(3)) {
            Ok(answers) => {
                let bad: Vec<String> = answers
                    .iter()
                    .filter_map(|a| match a {
                        Ok(s) if s.starts_with("backend-") => None,
                        Ok(s) => Some(format!("odd answer {s:?}")),
                        Err(e) => Some(format!("{e:#}")),
                    })
                    .collect();
                if bad.is_empty() {
                    notes.push(format!("{target}: 4 requests answered"));
                } else {
                    problems.push(format!("requests to {target} after the barrage: {bad:?}"));
                }
            }
            Err(e) => problems.push(format!("requests to {target}: {e:#}")),
        }
        let conv = Conversation::open(&bed.client, target, 0, Duration::from_secs(3));
        let mut conv = match conv {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("connection to {target} after the barrage: {e:#}"));
                continue;
            }
        };
        let mut answered = 0;
        for i in 0..3 {
            match conv.ask(&format!("after the barrage {i}")) {
                Ok(a) if a.starts_with("backend-") => answered += 1,
                Ok(a) => problems.push(format!("{target} answered {a:?}")),
                Err(e) => problems.push(format!("conversation with {target}: {e:#}")),
            }
        }
        let local = conv.local_addr().ok();
        let tracked = dp.conntrack_entries().ok().is_some_and(|es| {
            es.iter().any(|(k, e)| {
                k.kind == CtKind::Service as u8
                    && key_tuple(k).is_some_and(|t| {
                        Some(SocketAddr::new(t.src, t.sport)) == local
                            && t.dst == vip
                            && t.dport == VIP_PORT
                    })
                    && e.state == lb_api::abi::CtState::Established as u8
            })
        });
        if !tracked {
            problems.push(format!(
                "the conversation {local:?} -> {target} is not an established flow in conntrack"
            ));
        }
        notes.push(format!("{target}: a conversation of {answered}/3 lines"));
    }
    notes.join(", ")
}

#[test]
fn malformed_frames_over_a_real_link() {
    if !privileged("malformed_frames_over_a_real_link") {
        return;
    }
    let started = Instant::now();
    let python = python_with_scapy()
        .expect("needs python3 with scapy (Debian python3-scapy; `cargo xtask setup` installs it)");

    let bed = Testbed::create("mal").expect("testbed");
    add_ipv6(&bed).expect("IPv6 on the testbed");
    no_icmp_rate_limit(&bed.node).expect("ICMP rate limits off on the node");
    let mut dp = KernelDatapath::load().expect("loading the eBPF programs");
    dp.set_config(&default_config(std::process::id()))
        .expect("config");
    dp.set_node(&NodeSpec {
        address_v4: Some(NODE),
        address_v6: Some(NODE6),
        // The client is a peer node: its VXLAN reaches the decapsulation path.
        peers: vec![CLIENT.into(), CLIENT6.into()],
        ..Default::default()
    })
    .expect("node");
    let [tcp6, udp6] = v6_services();
    for s in [scenario::service(), scenario::udp_service(), tcp6, udp6] {
        dp.upsert_service(&s).expect("service");
    }
    let xdp_mode = scenario::attach(&mut dp, &bed).expect("attaching XDP and TC");
    let sites: Vec<BackendSite> = bed
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| BackendSite {
            ns: ns.clone(),
            name: format!("backend-{}", i + 1),
            addrs: vec![BACKENDS[i].into(), BACKENDS6[i].into()],
        })
        .collect();
    let servers = traffic::start_backends(&sites, Duration::from_secs(300)).expect("servers");

    let n0: u32 = sys(&bed.node, "n0", "ifindex")
        .expect("n0's ifindex")
        .parse()
        .expect("an ifindex");
    let args: Vec<String> = [
        ("--iface", "c0".to_string()),
        (
            "--src-mac",
            sys(&bed.client, "c0", "address").expect("c0 MAC"),
        ),
        (
            "--dst-mac",
            sys(&bed.node, "n0", "address").expect("n0 MAC"),
        ),
        ("--seed", SEED.to_string()),
        ("--frames", FRAMES.to_string()),
        ("--client", CLIENT.to_string()),
        ("--client6", CLIENT6.to_string()),
        ("--stranger", STRANGER.to_string()),
        ("--node", NODE.to_string()),
        ("--node6", NODE6.to_string()),
        ("--vip", VIP.to_string()),
        ("--vip6", VIP6.to_string()),
        ("--port", VIP_PORT.to_string()),
        ("--others", BACKENDS.map(|b| b.to_string()).join(",")),
        ("--others6", BACKENDS6.map(|b| b.to_string()).join(",")),
        ("--ext-bound", MAX_IPV6_EXT_HEADERS.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .collect();

    // The link works, and the client knows the node's MAC, before the barrage.
    barrier(&bed.client, NODE.into(), Duration::from_secs(5)).expect("the node answers");
    let _ = dp.drain_drop_events();

    let mut problems: Vec<String> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut declared: BTreeMap<Tuple, Declared> = BTreeMap::new();
    let mut barrage = CounterSnapshot::default();
    let mut total_frames = 0u64;
    let mut script = Script::start(python, &bed.client, &args).expect("the scapy script");
    let barrage_start = Instant::now();
    let mut before = dp.counters().expect("counters");
    let mut finished = false;
    // At most one line per category and the READY/DONE lines; 200 categories is far beyond the
    // script's.
    for _ in 0..200 {
        let left = BARRAGE_DEADLINE.saturating_sub(barrage_start.elapsed());
        let line = match script.next_line(LINE_TIMEOUT.min(left)) {
            Ok(l) => l,
            Err(e) => {
                problems.push(format!("{e}; its stderr: {}", script.finish()));
                break;
            }
        };
        if line == "DONE" {
            finished = true;
            break;
        }
        if line.starts_with("READY ") {
            continue;
        }
        let sent = match parse_sent(&line) {
            Ok(s) => s,
            Err(e) => {
                problems.push(e);
                break;
            }
        };
        // Everything the client sent before the barrier datagram has been through XDP once
        // the node's refusal of it is back.
        if let Err(e) = barrier(&bed.client, NODE.into(), Duration::from_secs(5)) {
            problems.push(format!("barrier after {}: {e:#}", sent.name));
        }
        let after = dp.counters().expect("counters");
        let events = dp.drain_drop_events().expect("drop events");
        let d = delta(&before, &after);
        before = after;
        for (slot, v) in d.0.iter().enumerate() {
            barrage.0[slot] += v;
        }
        total_frames += sent.frames;
        for (t, real) in &sent.flows {
            let prev = declared.insert(
                *t,
                Declared {
                    category: sent.name.clone(),
                    real: *real,
                },
            );
            assert!(prev.is_none(), "the script declared {t:?} twice");
        }
        let verdict = judge(&sent, &d, &events, n0, &mut problems);
        rows.push(Row {
            name: sent.name.clone(),
            frames: sent.frames,
            expected: spec(&sent.expect),
            moved: counter_delta(&CounterSnapshot::default(), &d),
            verdict,
        });
        if let Err(e) = script.proceed() {
            problems.push(e);
            break;
        }
    }
    let stderr = script.finish();
    if !finished {
        problems.push(format!("the script did not finish; its stderr: {stderr}"));
    }
    let barrage_time = barrage_start.elapsed();

    // Every packet the programs saw got exactly one outcome.
    let identity_after_barrage = match settled_identity(&dp) {
        Ok(c) => format!("holds (rx_packets {})", c.get(Counter::RxPackets)),
        Err(e) => {
            problems.push(format!("outcome identity after the barrage: {e}"));
            format!("BROKEN: {e}")
        }
    };
    let entries = dp.conntrack_entries().expect("conntrack");
    let conntrack = judge_conntrack(&entries, &declared, &mut problems);
    let drop_reasons: Vec<DropReason> = DropReason::ALL
        .into_iter()
        .filter(|r| barrage.drops(*r) > 0)
        .collect();
    for must in [
        DropReason::Truncated,
        DropReason::BadIpVersion,
        DropReason::BadIpHeaderLength,
        DropReason::BadIpTotalLength,
        DropReason::BadTcpHeaderLength,
        DropReason::BadUdpLength,
        DropReason::BadIpv6ExtHeader,
        DropReason::BadTunnelHeader,
        DropReason::TunnelFromUnknownNode,
    ] {
        if !drop_reasons.contains(&must) {
            problems.push(format!("no drop counted as {}", must.name()));
        }
    }
    let unexpected: Vec<&str> = drop_reasons
        .iter()
        .filter(|r| {
            matches!(
                r,
                DropReason::NoBackend
                    | DropReason::BackendMissing
                    | DropReason::ConntrackFull
                    | DropReason::NotConfigured
                    | DropReason::SourcePortCollision
                    | DropReason::NodeAddressMissing
                    | DropReason::EncapFailed
                    | DropReason::SnatPortsExhausted
                    | DropReason::NewFlowStageMissing
            )
        })
        .map(|r| r.name())
        .collect();
    if !unexpected.is_empty() {
        problems.push(format!(
            "drops for reasons no malformed frame has: {unexpected:?}"
        ));
    }

    // Real connections through both VIPs after the barrage.
    let real = real_traffic(&bed, &dp, &mut problems);
    let final_identity = match settled_identity(&dp) {
        Ok(c) => format!("holds (rx_packets {})", c.get(Counter::RxPackets)),
        Err(e) => {
            problems.push(format!("outcome identity at the end: {e}"));
            format!("BROKEN: {e}")
        }
    };
    let _ = servers.stop();

    // The tally.
    eprintln!(
        "\nmalformed_link: {total_frames} frames in {} categories (seed {SEED}), XDP {xdp_mode}, \
         barrage {:.1} s",
        rows.len(),
        barrage_time.as_secs_f64()
    );
    eprintln!("outcomes of the barrage (crafted frames and the hosts' own traffic):");
    for c in OUTCOMES.iter().filter(|c| **c != Counter::Dropped) {
        if barrage.get(*c) > 0 {
            eprintln!("  {:<28} {:>6}", c.name(), barrage.get(*c));
        }
    }
    eprintln!("  {:<28} {:>6}", "dropped", barrage.get(Counter::Dropped));
    for r in &drop_reasons {
        eprintln!("    {:<26} {:>6}", r.name(), barrage.drops(*r));
    }
    for c in [Counter::TunnelDecapsulated, Counter::DropEventsLost] {
        eprintln!("  ({:<26} {:>6})", c.name(), barrage.get(c));
    }
    eprintln!("by category:");
    for r in &rows {
        eprintln!(
            "  {:<34} {:>4}  {}  {}",
            r.name, r.frames, r.expected, r.verdict
        );
        if r.verdict != "ok" {
            eprintln!("  {:<34}       moved: {}", "", r.moved);
        }
    }
    eprintln!(
        "outcome identity: after the barrage {identity_after_barrage}; at the end {final_identity}"
    );
    eprintln!("conntrack after the barrage: {conntrack}");
    eprintln!("after the barrage: {real}");
    eprintln!("test time {:.1} s", started.elapsed().as_secs_f64());
    if !stderr.trim().is_empty() {
        eprintln!("script stderr: {}", stderr.trim());
    }

    assert!(
        problems.is_empty(),
        "{} problems:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}
