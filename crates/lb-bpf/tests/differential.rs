//! Differential suite: one table of named packet fixtures goes through the userspace engine and
//! through the kernel programs (XDP and TC) with BPF_PROG_TEST_RUN, by
//! [`lb_testbed::harness`]. Output bytes, verdicts, conntrack contents, counters and drop events
//! must be identical after every packet; each fixture also says what the engine must do (verdict,
//! the counter that moves, the drop reason) and some the frame that must leave, built from
//! scratch. Every failure names its fixture; all of them are collected and reported together.
//!
//! Both worlds use the same configuration, including `fixed_now_ns`, so timestamps agree too.
//! The fixtures run in order on one pair of worlds: later ones (replies, ICMP errors) are built
//! from the flows earlier ones created ([`Flows`]).

mod common;

use std::net::IpAddr;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};

use common::tagged;

use lb_api::abi::{CtEntry, CtKind, CtState};
use lb_api::counters::{Counter, DropReason};
use lb_api::flow::{v4_addr, v4_of, L4Proto};
use lb_api::wire::testing::fix_ipv4_checksum;
use lb_api::wire::testing::{
    icmp_v4_error_frame, icmp_v6_error_frame, ip_v4_frame, tcp_v4_frame, tcp_v6_frame,
    udp_v4_frame, udp_v6_frame,
};
use lb_api::wire::TcpFlags as F;
use lb_api::Verdict;
use lb_bpf::Program;
use lb_conntrack::ManualClock;
use lb_control::default_config;
use lb_control::ServiceSpec;
use lb_datapath::engine::Engine;
use lb_testbed::harness::{Difference, EngineAndKernel, Outcome};

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const VIP: [u8; 4] = [10, 96, 0, 10];
const VIP2: [u8; 4] = [10, 96, 0, 11];
const EMPTY_VIP: [u8; 4] = [10, 96, 0, 12];
const START_NS: u64 = 1_000_000_000_000;

// ---------------------------------------------------------------------------------------------
// The table's shape and its driver.

/// The flows the fixtures before this one created, as the engine holds them (the kernel holds
/// the same: the harness compared them after every packet). Frames that depend on the engine's
/// choices (replies, ICMP errors about them) are built from it.
struct Flows<'a>(&'a Engine<ManualClock>);

impl Flows<'_> {
    /// The service entry of the flow from a client port to `vip:vport` (either family), if any.
    fn find(&self, client_port: u16, vip: IpAddr, vport: u16) -> Option<CtEntry> {
        self.0
            .conntrack()
            .iter()
            .find(|(k, _)| {
                k.kind == CtKind::Service as u8
                    && k.src_port == client_port
                    && k.dst == addr16(vip)
                    && k.dst_port == vport
            })
            .map(|(_, e)| *e)
    }

    /// [`find`](Self::find), which must succeed.
    fn service_entry(&self, client_port: u16, vip: IpAddr, vport: u16) -> CtEntry {
        self.find(client_port, vip, vport)
            .unwrap_or_else(|| panic!("no service entry for client port {client_port} to {vip}"))
    }

    /// The IPv4 backend the engine chose for a client port (its service entry's NAT address).
    fn backend_of(&self, client_port: u16, vip: [u8; 4], vport: u16) -> ([u8; 4], u16) {
        let e = self.service_entry(client_port, IpAddr::from(vip), vport);
        (v4_of(&e.nat_addr), e.nat_port)
    }

    /// The IPv6 backend the engine chose for a client port.
    fn backend6_of(&self, client_port: u16, vip: [u8; 16], vport: u16) -> ([u8; 16], u16) {
        let e = self.service_entry(client_port, IpAddr::from(vip), vport);
        (e.nat_addr, e.nat_port)
    }

    /// The first client port of `ports` whose flow to `vip:80` went to `backend:8080`.
    fn first_port_on(&self, ports: Range<u16>, vip: IpAddr, backend: IpAddr) -> Option<u16> {
        ports.into_iter().find(|p| {
            self.find(*p, vip, 80)
                .is_some_and(|e| (e.nat_addr, e.nat_port) == (addr16(backend), 8080))
        })
    }
}

/// A frame of the table, built when its fixture runs.
type Build = Box<dyn Fn(&Flows) -> Vec<u8>>;
/// Whether a fixture runs, given the flows so far.
type When = Box<dyn Fn(&Flows) -> bool>;
/// A check of the flows after a fixture ran (an error message if they are not as expected).
type After = Box<dyn Fn(&Flows) -> Result<(), String>>;

/// One named fixture: a frame, what the engine must do with it (so that every fixture is known
/// to exercise what its name says; the kernel must then match the engine exactly), and
/// optionally the frame that must leave and a check of the flows afterwards.
struct Fixture {
    name: String,
    frame: Build,
    verdict: Verdict,
    /// The counter that moves by one.
    counter: Counter,
    drop: Option<DropReason>,
    out: Option<Build>,
    /// Runs only when this holds for the flows so far (a search that stops when it finds).
    when: Option<When>,
    after: Option<After>,
}

/// A fixture the engine passes, moving `counter`.
fn pass(
    name: impl Into<String>,
    counter: Counter,
    frame: impl Fn(&Flows) -> Vec<u8> + 'static,
) -> Fixture {
    Fixture {
        name: name.into(),
        frame: Box::new(frame),
        verdict: Verdict::Pass,
        counter,
        drop: None,
        out: None,
        when: None,
        after: None,
    }
}

/// A fixture the engine drops under `reason`.
fn dropped(name: impl Into<String>, reason: DropReason, frame: Vec<u8>) -> Fixture {
    Fixture {
        verdict: Verdict::Drop,
        drop: Some(reason),
        ..pass(name, Counter::Dropped, move |_| frame.clone())
    }
}

/// A frame that depends on nothing before it.
fn fixed(frame: Vec<u8>) -> impl Fn(&Flows) -> Vec<u8> + 'static {
    move |_| frame.clone()
}

impl Fixture {
    /// The frame that must leave.
    fn out(mut self, f: impl Fn(&Flows) -> Vec<u8> + 'static) -> Self {
        self.out = Some(Box::new(f));
        self
    }

    fn when(mut self, f: impl Fn(&Flows) -> bool + 'static) -> Self {
        self.when = Some(Box::new(f));
        self
    }

    fn after(mut self, f: impl Fn(&Flows) -> Result<(), String> + 'static) -> Self {
        self.after = Some(Box::new(f));
        self
    }

    /// Whether the engine did what the fixture says (the harness already compared it with the
    /// kernel).
    fn judge(&self, o: &Outcome, flows: &Flows) -> Result<(), String> {
        if o.verdict != self.verdict {
            return Err(format!(
                "engine verdict {:?}, expected {:?}",
                o.verdict, self.verdict
            ));
        }
        let c = self.counter;
        if o.after.get(c) != o.before.get(c) + 1 {
            return Err(format!("engine counter {c:?} did not move by one"));
        }
        if let Some(r) = self.drop {
            if o.after.drops(r) != o.before.drops(r) + 1 {
                return Err(format!("engine drop reason {r:?} did not move by one"));
            }
            let reasons: Vec<_> = o.drop_events.iter().map(|e| e.reason).collect();
            if reasons != [r] {
                return Err(format!("engine drop events {reasons:?}, expected [{r:?}]"));
            }
        }
        if let Some(out) = &self.out {
            let want = out(flows);
            if o.frame != want {
                return Err(format!(
                    "output frame\n  got  {:02x?}\n  want {want:02x?}",
                    o.frame
                ));
            }
        }
        self.after.as_ref().map_or(Ok(()), |a| a(flows))
    }
}

/// A panic's message.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_default()
}

/// Runs the table in order through the engine and through `program`; returns how many fixtures
/// were compared and the failures, each naming its fixture.
fn run_table(program: Program, table: &[Fixture]) -> (usize, Vec<String>) {
    let mut pair = EngineAndKernel::new(program, default_config(0x5eed), &services())
        .unwrap_or_else(|e| panic!("engine and kernel: {e:#}"));
    let mut now = START_NS;
    let mut failures = Vec::new();
    let name = program.name();
    for fx in table {
        if fx.when.as_ref().is_some_and(|w| !w(&Flows(&pair.engine))) {
            continue;
        }
        now += 1_000_000_000;
        let frame = match catch_unwind(AssertUnwindSafe(|| (fx.frame)(&Flows(&pair.engine)))) {
            Ok(f) => f,
            Err(p) => {
                failures.push(format!(
                    "{} ({name}): building the frame: {}",
                    fx.name,
                    panic_text(&*p)
                ));
                continue;
            }
        };
        let o = match pair.send(&frame, Some(now)) {
            Ok(o) => o,
            // The kernel's skb test harness (TC) refuses, with EINVAL, IPv4 frames shorter
            // than an IPv4 header; such frames never reach the program through
            // BPF_PROG_TEST_RUN, and neither world runs them (XDP does).
            Err(Difference::KernelRun(e)) if program == Program::Tc && frame.len() < 34 => {
                eprintln!(
                    "{} ({name}): skipped, the skb test harness refuses it: {e}",
                    fx.name
                );
                continue;
            }
            Err(e) => {
                failures.push(format!("{} ({name}): {e}", fx.name));
                continue;
            }
        };
        let judged = catch_unwind(AssertUnwindSafe(|| fx.judge(&o, &Flows(&pair.engine))))
            .unwrap_or_else(|p| Err(panic_text(&*p)));
        if let Err(e) = judged {
            failures.push(format!("{} ({name}): {e}", fx.name));
        }
    }
    (pair.compared, failures)
}

#[test]
fn engine_and_kernel_agree_on_every_fixture() {
    if !common::privileged("engine_and_kernel_agree_on_every_fixture") {
        return;
    }
    let table = fixtures();
    let mut failures = Vec::new();
    for program in [Program::Xdp, Program::Tc] {
        let (n, failed) = run_table(program, &table);
        failures.extend(failed);
        if n <= 40 {
            failures.push(format!("{}: only {n} fixtures compared", program.name()));
        }
        eprintln!(
            "{}: {n} fixtures byte-identical between engine and kernel",
            program.name()
        );
    }
    assert!(
        failures.is_empty(),
        "{} fixture failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// An address as the 16-byte field of conntrack keys and entries (IPv4 in the first 4 bytes).
fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => v4_addr(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

// ---------------------------------------------------------------------------------------------
// The table.

/// A TCP frame without payload from the client.
fn tcp(sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
    tcp_v4_frame(CLIENT, sport, dst, dport, flags, b"")
}

/// A TCP frame from the backend of the client's flow from port 40000 to the VIP, to the client.
fn reply(flags: u8, payload: &'static [u8]) -> impl Fn(&Flows) -> Vec<u8> + 'static {
    move |f| {
        let (be, be_port) = f.backend_of(40000, VIP, 80);
        tcp_v4_frame(be, be_port, CLIENT, 40000, flags, payload)
    }
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// Every fixture, in the order they run.
fn fixtures() -> Vec<Fixture> {
    let mut t = Vec::new();
    t.extend(tcp_lifecycle());
    t.extend(other_traffic());
    t.extend(ipv6_and_icmp());
    t.extend(malformed());
    t.extend(collision(Family::v4()));
    t.extend(collision(Family::v6()));
    t
}

/// A TCP connection through its whole life (handshake, data, active close, TIME_WAIT, reuse),
/// then many flows spread over the backends.
fn tcp_lifecycle() -> Vec<Fixture> {
    use Counter::{ReplyTranslated as Reply, ServiceEstablished as Est, ServiceNewFlow as New};
    let mut t = vec![
        pass(
            "tcp SYN to service (new flow)",
            New,
            fixed(tcp(40000, VIP, 80, F::SYN)),
        ),
        pass(
            "tcp SYN retransmitted",
            Est,
            fixed(tcp(40000, VIP, 80, F::SYN)),
        ),
        pass(
            "tcp SYN+ACK from backend",
            Reply,
            reply(F::SYN | F::ACK, b""),
        ),
        pass(
            "tcp ACK (established)",
            Est,
            fixed(tcp(40000, VIP, 80, F::ACK)),
        ),
        pass(
            "tcp data to service",
            Est,
            fixed(tcp_v4_frame(
                CLIENT,
                40000,
                VIP,
                80,
                F::ACK | F::PSH,
                b"GET / HTTP/1.0\r\n\r\n",
            )),
        ),
        pass(
            "tcp data from backend",
            Reply,
            reply(F::ACK | F::PSH, b"HTTP/1.0 200 OK\r\n\r\nhello"),
        ),
        pass(
            "tcp FIN from client",
            Est,
            fixed(tcp(40000, VIP, 80, F::FIN | F::ACK)),
        ),
        pass("tcp FIN from backend", Reply, reply(F::FIN | F::ACK, b"")),
        pass("tcp last ACK", Est, fixed(tcp(40000, VIP, 80, F::ACK))).after(|f| {
            let st =
                f.0.conntrack()
                    .iter()
                    .find(|(k, _)| k.kind == 0 && k.src_port == 40000)
                    .map(|(_, e)| e.state);
            if st == Some(CtState::TimeWait as u8) {
                Ok(())
            } else {
                Err(format!(
                    "the close sequence ends in TIME_WAIT, not state {st:?}"
                ))
            }
        }),
        pass(
            "tcp SYN reusing the tuple",
            Est,
            fixed(tcp(40000, VIP, 80, F::SYN)),
        ),
        pass("tcp RST from backend", Reply, reply(F::RST, b"")),
    ];
    // Many flows: spread over backends identically in both worlds.
    for port in 41000..41012 {
        t.push(pass(
            "tcp SYN, more flows",
            New,
            fixed(tcp(port, VIP, 80, F::SYN)),
        ));
    }
    t.push(pass(
        "tcp mid-stream pickup (ACK, no entry)",
        New,
        fixed(tcp(42000, VIP, 80, F::ACK)),
    ));
    t
}

/// UDP, traffic that is not for a service, and the other wire formats.
fn other_traffic() -> Vec<Fixture> {
    use Counter::*;
    let mut no_csum = udp_v4_frame(CLIENT, 53001, VIP, 53, b"q");
    no_csum[40] = 0;
    no_csum[41] = 0;
    let mut arp = tcp(1, VIP, 80, 0);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let mut frag = tcp(40003, VIP, 80, F::SYN);
    frag[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
    fix_ipv4_checksum(&mut frag);
    let qinq = tagged(
        &tagged(&tcp(44001, VIP, 80, F::SYN), 0x8100, 7),
        0x88a8,
        100,
    );
    vec![
        // UDP: unreplied, then assured.
        pass(
            "udp query to service",
            ServiceNewFlow,
            fixed(udp_v4_frame(CLIENT, 53000, VIP, 53, b"query")),
        ),
        pass("udp answer from backend", ReplyTranslated, |f| {
            let (ube, ube_port) = f.backend_of(53000, VIP, 53);
            udp_v4_frame(ube, ube_port, CLIENT, 53000, b"answer")
        }),
        pass("udp without checksum", ServiceNewFlow, fixed(no_csum)),
        // Not for us.
        pass(
            "tcp to a non-service address",
            PassNotService,
            fixed(tcp(40001, [10, 2, 0, 1], 80, F::SYN)),
        ),
        pass(
            "tcp to the VIP on another port",
            PassNotService,
            fixed(tcp(40002, VIP, 81, F::SYN)),
        ),
        pass(
            "icmp echo to the VIP",
            PassOtherProto,
            fixed(ip_v4_frame(CLIENT, VIP, 1, &[8, 0, 0xf7, 0xff, 0, 0, 0, 0])),
        ),
        pass("arp", PassNotIp, fixed(arp)),
        pass("ipv4 first fragment", PassFragment, fixed(frag)),
        // Other wire formats: parsed identically in both worlds (VLAN-tagged IPv4 is
        // translated; the rest passes, each under its counter).
        pass(
            "802.1Q-tagged tcp SYN to the service",
            ServiceNewFlow,
            fixed(tagged(&tcp(44000, VIP, 80, F::SYN), 0x8100, 7)),
        ),
        pass(
            "802.1ad+802.1Q tcp SYN to the service",
            ServiceNewFlow,
            fixed(qinq.clone()),
        ),
        pass(
            "three VLAN tags",
            PassHeadersTooDeep,
            fixed(tagged(&qinq, 0x8100, 9)),
        ),
        pass(
            "ipv6 tcp with hop-by-hop and destination options (not a service)",
            PassNotService,
            fixed(ipv6_frame(false)),
        ),
    ]
}

/// IPv6 services (a TCP connection's first packets both ways, and UDP), ICMP errors about
/// translated flows (RFC 5508) towards the client and towards the backend, from the peer or
/// from a router, IPv4 and IPv6, quotes whole or cut to 8 transport bytes; tunnelled frames
/// between nodes.
fn ipv6_and_icmp() -> Vec<Fixture> {
    use Counter::*;
    let (client6, vip6) = (v6("fd00::1"), v6("fd96::10"));
    let be6 = move |f: &Flows| f.backend6_of(41000, vip6, 80);
    // UDP over IPv6 may not carry a zero checksum: no flow for such a datagram.
    let mut zero = udp_v6_frame(client6, 41002, vip6, 53, b"query");
    let l4 = zero.len() - 8 - 5;
    zero[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
    let quoted = udp_v4_frame(VIP, 53, CLIENT, 53000, b"answer");
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted[14..14 + 28]);
    let router = [10, 9, 9, 9];
    let sent = |f: Vec<u8>, cut: Option<usize>| f[14..cut.map_or(f.len(), |c| 14 + c)].to_vec();
    let v6_quote = |f: Vec<u8>| f[14..].to_vec();
    let inner = tcp(45000, VIP, 80, F::SYN);
    vec![
        pass(
            "ipv6 tcp SYN to service (new flow)",
            ServiceNewFlow,
            fixed(tcp_v6_frame(client6, 41000, vip6, 80, F::SYN, b"")),
        ),
        pass("ipv6 tcp SYN+ACK from backend", ReplyTranslated, move |f| {
            let (be, port) = be6(f);
            tcp_v6_frame(be, port, client6, 41000, F::SYN | F::ACK, b"")
        }),
        pass(
            "ipv6 tcp ACK with data (established)",
            ServiceEstablished,
            fixed(tcp_v6_frame(
                client6,
                41000,
                vip6,
                80,
                F::ACK | F::PSH,
                b"GET /",
            )),
        ),
        pass(
            "ipv6 udp to service (new flow)",
            ServiceNewFlow,
            fixed(udp_v6_frame(client6, 41001, vip6, 53, b"query")),
        ),
        pass(
            "ipv6 udp reply from backend",
            ReplyTranslated,
            fixed(udp_v6_frame(v6("fd01::5"), 5353, client6, 41001, b"answer")),
        ),
        dropped(
            "ipv6 udp to service with a zero checksum",
            DropReason::ZeroUdpChecksumV6,
            zero,
        ),
        pass("ipv6 first fragment", PassFragment, fixed(ipv6_frame(true))),
        pass(
            "icmp port unreachable from the client about a udp reply (translated)",
            IcmpErrorTranslated,
            fixed(ip_v4_frame(CLIENT, VIP, 1, &icmp)),
        ),
        pass(
            "icmp port unreachable from a udp backend to the client",
            IcmpErrorTranslated,
            move |f| {
                let (ube, ube_port) = f.backend_of(53000, VIP, 53);
                let q = sent(udp_v4_frame(CLIENT, 53000, ube, ube_port, b"query"), None);
                icmp_v4_error_frame(ube, CLIENT, 3, 3, [0; 4], &q)
            },
        ),
        pass(
            "icmp fragmentation needed from a router to the client",
            IcmpErrorTranslated,
            move |f| {
                let (tbe, tbe_port) = f.backend_of(41001, VIP, 80);
                let q = sent(tcp(41001, tbe, tbe_port, F::ACK), Some(28));
                icmp_v4_error_frame(router, CLIENT, 3, 4, [0, 0, 5, 0x78], &q)
            },
        ),
        pass(
            "icmp time exceeded from a router about a reply (to the backend)",
            IcmpErrorTranslated,
            fixed(icmp_v4_error_frame(
                router,
                VIP,
                11,
                0,
                [0; 4],
                &sent(tcp_v4_frame(VIP, 80, CLIENT, 41002, F::ACK, b"data"), None),
            )),
        ),
        pass(
            "icmp port unreachable about no tracked flow",
            PassIcmpErrorNoFlow,
            fixed(icmp_v4_error_frame(
                router,
                CLIENT,
                3,
                3,
                [0; 4],
                &sent(tcp(40999, VIP, 80, F::SYN), Some(28)),
            )),
        ),
        pass(
            "icmpv6 port unreachable from a udp backend to the client",
            IcmpErrorTranslated,
            fixed(icmp_v6_error_frame(
                v6("fd01::5"),
                client6,
                1,
                4,
                [0; 4],
                &v6_quote(udp_v6_frame(client6, 41001, v6("fd01::5"), 5353, b"query")),
            )),
        ),
        pass(
            "icmpv6 packet too big from a router to the client",
            IcmpErrorTranslated,
            move |f| {
                let (be, port) = be6(f);
                let q = v6_quote(tcp_v6_frame(client6, 41000, be, port, F::ACK, b"GET /"));
                icmp_v6_error_frame(v6("fd09::9"), client6, 2, 0, [0, 0, 5, 0], &q)
            },
        ),
        pass(
            "icmpv6 time exceeded from the client about a reply (to the backend)",
            IcmpErrorTranslated,
            fixed(icmp_v6_error_frame(
                client6,
                vip6,
                3,
                0,
                [0; 4],
                &v6_quote(tcp_v6_frame(vip6, 80, client6, 41000, F::ACK, b"ok"))[..48],
            )),
        ),
        pass(
            "vxlan-encapsulated frame between nodes",
            PassNotService,
            fixed(tunnelled(&inner, false)),
        ),
        pass(
            "geneve-encapsulated frame with an option",
            PassNotService,
            fixed(tunnelled(&inner, true)),
        ),
    ]
}

/// Malformed and truncated frames, dropped each under its reason; a service without backends.
fn malformed() -> Vec<Fixture> {
    use DropReason::*;
    let full = tcp(40004, VIP, 80, F::SYN);
    let bad = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut f = full.clone();
        edit(&mut f);
        f
    };
    vec![
        dropped("truncated ipv4 header", Truncated, full[..30].to_vec()),
        dropped("truncated tcp header", Truncated, full[..40].to_vec()),
        dropped("ethernet header only", Truncated, full[..14].to_vec()),
        dropped(
            "ipv4 header checksum wrong (to a service: no flow)",
            BadIpChecksum,
            bad(&|f| f[24] ^= 0x40),
        ),
        dropped("ipv4 ihl 4", BadIpHeaderLength, bad(&|f| f[14] = 0x44)),
        dropped(
            "ipv6 version in an ipv4 ethertype",
            BadIpVersion,
            bad(&|f| f[14] = 0x65),
        ),
        dropped(
            "ipv4 total length below header",
            BadIpTotalLength,
            bad(&|f| f[16..18].copy_from_slice(&10u16.to_be_bytes())),
        ),
        dropped(
            "tcp data offset 3",
            BadTcpHeaderLength,
            bad(&|f| f[46] = 0x30),
        ),
        dropped(
            "ipv4 total length past the frame",
            Truncated,
            bad(&|f| f[16..18].copy_from_slice(&200u16.to_be_bytes())),
        ),
        dropped(
            "reset to a service without backends (not answered)",
            NoBackend,
            tcp(40005, EMPTY_VIP, 80, F::RST),
        ),
        rejected(
            "SYN to a service without backends: reset",
            tcp(40006, EMPTY_VIP, 80, F::SYN),
        ),
        rejected(
            "data to a service without backends: reset",
            tcp(40007, EMPTY_VIP, 80, F::ACK | F::PSH),
        ),
        rejected(
            "UDP to a service without backends: port unreachable",
            udp_v4_frame(CLIENT, 40008, EMPTY_VIP, 53, b"query"),
        ),
        rejected(
            "IPv6 SYN to a service without backends: reset",
            tcp_v6_frame(v6("fd00::1"), 40009, v6("fd96::12"), 80, F::SYN, b""),
        ),
        rejected(
            "IPv6 UDP to a service without backends: port unreachable",
            udp_v6_frame(v6("fd00::1"), 40010, v6("fd96::12"), 53, b"query"),
        ),
    ]
}

/// A fixture the engine rejects (a reset or a port unreachable back to the client).
fn rejected(name: impl Into<String>, frame: Vec<u8>) -> Fixture {
    Fixture {
        verdict: Verdict::Tx,
        ..pass(name, Counter::RejectNoEndpoints, fixed(frame))
    }
}

/// ICMP time exceeded in transit, ICMPv6 time exceeded (hop limit).
const TIME_EXCEEDED: ((u8, u8), (u8, u8)) = ((11, 0), (3, 0));
/// ICMP and ICMPv6 port unreachable.
const PORT_UNREACHABLE: ((u8, u8), (u8, u8)) = ((3, 3), (1, 4));
/// The client ports the collision scenario searches for a flow on its backend.
const SEARCH: Range<u16> = 43000..43100;

/// The source-port collision of a NodePort-like setup (incident 2 of the design brief) for one
/// family: the same client address and port reach `backend` through two frontends, so the
/// second flow's reply tuple is taken and the resolver gives it a source port of 20000-29999;
/// the reply gets the client's port back, the next packet is established, and ICMP errors about
/// the rewritten flow are translated both ways (the client's port in the quote towards the
/// client, the rewritten one towards the backend). Every frame that leaves is also compared
/// with one built from scratch.
fn collision(n: Family) -> Vec<Fixture> {
    use Counter::*;
    let (client, be) = (n.client, n.backend);
    // The client port whose flow through the first frontend landed on the backend, and the
    // source port the resolver gave the same client port through the second frontend (which
    // is only known afterwards).
    let port = move |f: &Flows| {
        f.first_port_on(SEARCH, n.vip, be)
            .unwrap_or_else(|| panic!("some flow hashes to {be}"))
    };
    let rewritten = move |f: &Flows| f.service_entry(port(f), n.vip2, 80).rewritten_src_port;
    // Find a client port whose flow through the first frontend lands on the backend (a SYN per
    // port until one does), then use the same port towards the second frontend (whose only
    // backend it is): the reply tuples collide.
    let mut t: Vec<Fixture> = SEARCH
        .map(|p| {
            pass(
                n.name(&format!("tcp SYN, searching a flow on {be}")),
                ServiceNewFlow,
                fixed(n.tcp(client, p, n.vip, 80, F::SYN)),
            )
            .when(move |f| f.first_port_on(SEARCH.start..p, n.vip, be).is_none())
        })
        .collect();
    // The same client port through the second frontend: the reply tuple is taken, so the
    // resolver gives the flow another source port (not a drop, not an overwrite).
    t.push(
        pass(
            n.name("tcp SYN colliding on the reply tuple (source port rewritten)"),
            SourcePortRewritten,
            move |f| n.tcp(client, port(f), n.vip2, 80, F::SYN),
        )
        .after(move |f| {
            let (p, r) = (port(f), rewritten(f));
            if r != p && (20_000..=29_999).contains(&r) {
                Ok(())
            } else {
                Err(format!(
                    "no new source port of the collision range recorded: {r}"
                ))
            }
        })
        .out(move |f| n.tcp(client, rewritten(f), be, 8080, F::SYN)),
    );
    t.push(
        pass(
            n.name("reply to the rewritten port (original port restored)"),
            ReplyTranslated,
            move |f| n.tcp(be, 8080, client, rewritten(f), F::SYN | F::ACK),
        )
        .out(move |f| n.tcp(n.vip2, 80, client, port(f), F::SYN | F::ACK)),
    );
    t.push(
        pass(
            n.name("rewritten flow, next packet"),
            ServiceEstablished,
            move |f| n.tcp(client, port(f), n.vip2, 80, F::ACK),
        )
        .out(move |f| n.tcp(client, rewritten(f), be, 8080, F::ACK)),
    );
    // ICMP errors about the rewritten flow: the client's original port comes back in the
    // quote towards the client, the rewritten one towards the backend.
    t.push(
        pass(
            n.name("icmp time exceeded about a rewritten-port flow (to the client)"),
            IcmpErrorTranslated,
            move |f| {
                let sent = n.tcp(client, rewritten(f), be, 8080, F::ACK);
                n.error(TIME_EXCEEDED, n.router, client, &sent, false)
            },
        )
        // Still from the router; the quote as the client sent it.
        .out(move |f| {
            let as_client_sent = n.tcp(client, port(f), n.vip2, 80, F::ACK);
            n.error(TIME_EXCEEDED, n.router, client, &as_client_sent, false)
        }),
    );
    t.push(
        pass(
            n.name("icmp port unreachable about a rewritten-port reply (to the backend)"),
            IcmpErrorTranslated,
            move |f| {
                let reply = n.tcp(n.vip2, 80, client, port(f), F::ACK);
                n.error(PORT_UNREACHABLE, client, n.vip2, &reply, true)
            },
        )
        // To the backend; the quote as the backend sent it.
        .out(move |f| {
            let as_backend_sent = n.tcp(be, 8080, client, rewritten(f), F::ACK);
            n.error(PORT_UNREACHABLE, client, be, &as_backend_sent, true)
        }),
    );
    t
}

// ---------------------------------------------------------------------------------------------
// Services and frame builders.

fn services() -> Vec<ServiceSpec> {
    let b = |s: &str| s.parse().unwrap();
    vec![
        ServiceSpec {
            id: 1,
            frontend: "10.96.0.10:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec![b("10.1.0.2:8080"), b("10.1.0.3:8080"), b("10.1.0.4:8080")],
            ..Default::default()
        },
        ServiceSpec {
            id: 2,
            frontend: "10.96.0.10:53".parse().unwrap(),
            proto: L4Proto::Udp,
            backends: vec![b("10.1.0.5:5353"), b("10.1.0.6:5353")],
            ..Default::default()
        },
        // A second frontend whose only backend is also behind service 1: the same client port
        // through both frontends collides on the reply tuple.
        ServiceSpec {
            id: 3,
            frontend: "10.96.0.11:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec![b("10.1.0.2:8080")],
            ..Default::default()
        },
        ServiceSpec {
            id: 6,
            frontend: "[fd96::10]:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec![b("[fd01::2]:8080"), b("[fd01::3]:8080")],
            ..Default::default()
        },
        ServiceSpec {
            id: 7,
            frontend: "[fd96::10]:53".parse().unwrap(),
            proto: L4Proto::Udp,
            backends: vec![b("[fd01::5]:5353")],
            ..Default::default()
        },
        // The IPv6 twin of service 3.
        ServiceSpec {
            id: 8,
            frontend: "[fd96::11]:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec![b("[fd01::2]:8080")],
            ..Default::default()
        },
        ServiceSpec {
            id: 4,
            frontend: "10.96.0.12:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec![],
            ..Default::default()
        },
        ServiceSpec {
            id: 5,
            frontend: "10.96.0.12:53".parse().unwrap(),
            proto: L4Proto::Udp,
            backends: vec![],
            ..Default::default()
        },
        ServiceSpec {
            id: 9,
            frontend: "[fd96::12]:80".parse().unwrap(),
            proto: L4Proto::Tcp,
            backends: vec![],
            ..Default::default()
        },
        ServiceSpec {
            id: 10,
            frontend: "[fd96::12]:53".parse().unwrap(),
            proto: L4Proto::Udp,
            backends: vec![],
            ..Default::default()
        },
    ]
}

/// An IPv6 TCP SYN with a hop-by-hop and a destination-options header (or, with `fragment`, a
/// fragment header saying "first fragment, more follow").
fn ipv6_frame(fragment: bool) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd]);
    let mut ext = Vec::new();
    let first_next;
    if fragment {
        first_next = 44u8;
        ext.extend_from_slice(&[6, 0, 0x00, 0x01, 0, 0, 0x12, 0x34]);
    } else {
        first_next = 0u8;
        ext.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop: PadN
        ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // destination options: PadN
    }
    let tcp = [
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0,
    ];
    let payload_len = (ext.len() + tcp.len()) as u16;
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&payload_len.to_be_bytes());
    f.push(first_next);
    f.push(64);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
    f.extend_from_slice(&ext);
    f.extend_from_slice(&tcp);
    f
}

/// `inner` encapsulated by lb-encap in VXLAN (`geneve: false`) or Geneve with one option,
/// between two addresses that are not services.
fn tunnelled(inner: &[u8], geneve: bool) -> Vec<u8> {
    use lb_encap::{OuterAddrs, TunnelConfig};
    let mut buf = vec![0u8; 256 + inner.len()];
    buf[128..128 + inner.len()].copy_from_slice(inner);
    let mut pkt = lb_encap::HeadroomPacket::new(&mut buf, 128, inner.len()).unwrap();
    let mut cfg = TunnelConfig::new(
        42,
        OuterAddrs::V4 {
            src: [192, 0, 2, 1],
            dst: [192, 0, 2, 2],
        },
        [2, 0, 0, 0, 0, 0xa],
        [2, 0, 0, 0, 0, 0xb],
    );
    if geneve {
        cfg.port = 6081;
        let opt = lb_encap::geneve::GeneveOption {
            class: 0xfff0,
            ty: 1,
            data: &[1, 2, 3, 4],
        };
        lb_encap::geneve::geneve_encap(&mut pkt, &cfg, &[opt], 0x1234_5678).unwrap();
    } else {
        lb_encap::vxlan_encap(&mut pkt, &cfg, 0x1234_5678).unwrap();
    }
    pkt.bytes().to_vec()
}

/// One family's addresses for the NodePort source-port-collision scenario.
#[derive(Clone, Copy)]
struct Family {
    v6: bool,
    client: IpAddr,
    /// A frontend with several backends, `backend` among them (service 1 / 6).
    vip: IpAddr,
    /// A second frontend whose only backend is `backend` (service 3 / 8).
    vip2: IpAddr,
    backend: IpAddr,
    router: IpAddr,
}

impl Family {
    fn v4() -> Self {
        Family {
            v6: false,
            client: IpAddr::from(CLIENT),
            vip: IpAddr::from(VIP),
            vip2: IpAddr::from(VIP2),
            backend: IpAddr::from([10, 1, 0, 2]),
            router: IpAddr::from([10, 9, 9, 9]),
        }
    }

    fn v6() -> Self {
        let a = |s: &str| IpAddr::V6(s.parse().unwrap());
        Family {
            v6: true,
            client: a("fd00::1"),
            vip: a("fd96::10"),
            vip2: a("fd96::11"),
            backend: a("fd01::2"),
            router: a("fd09::9"),
        }
    }

    /// A fixture name, marked with the family for IPv6.
    fn name(&self, s: &str) -> String {
        if self.v6 {
            format!("ipv6: {s}")
        } else {
            s.to_string()
        }
    }

    /// A TCP frame without payload, built from scratch.
    fn tcp(&self, src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Vec<u8> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                tcp_v4_frame(s.octets(), sport, d.octets(), dport, flags, b"")
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                tcp_v6_frame(s.octets(), sport, d.octets(), dport, flags, b"")
            }
            other => panic!("mixed families {other:?}"),
        }
    }

    /// An ICMP (type, code) or ICMPv6 (type, code) error from `from` to `to` quoting the IP
    /// datagram of the frame `quoted`, whole or cut to its IP header and 8 transport bytes.
    fn error(
        &self,
        (v4, v6): ((u8, u8), (u8, u8)),
        from: IpAddr,
        to: IpAddr,
        quoted: &[u8],
        cut: bool,
    ) -> Vec<u8> {
        let ip_header = if self.v6 { 40 } else { 20 };
        let q = &quoted[14..if cut {
            14 + ip_header + 8
        } else {
            quoted.len()
        }];
        match (from, to) {
            (IpAddr::V4(f), IpAddr::V4(t)) => {
                icmp_v4_error_frame(f.octets(), t.octets(), v4.0, v4.1, [0; 4], q)
            }
            (IpAddr::V6(f), IpAddr::V6(t)) => {
                icmp_v6_error_frame(f.octets(), t.octets(), v6.0, v6.1, [0; 4], q)
            }
            other => panic!("mixed families {other:?}"),
        }
    }
}
