//! Differential fixtures for the forwarding modes: SNAT, DSR, the VXLAN tunnel and hybrid, on the
//! node that picks the backend and on the backend's node, with the source-port collision
//! resolver and the SNAT port allocator, ICMP errors about SNAT flows (both ways, IPv4 and
//! IPv6), the MTU limit of the carriers and malformed tunnel input.
//!
//! A small cluster: node A and node C pick backends, the backends run on node B. Each node is a
//! pair of worlds (the userspace engine and a loaded copy of the kernel programs with their own
//! maps), configured alike with `set_node` and the same services; every packet goes through both
//! and the harness requires identical output bytes, verdicts, conntrack, counters and drop
//! events. On top of that each fixture says what the engine must do (verdict, exactly which
//! counters move), most give the output frame built independently (etherparse headers and the
//! `lb_api::wire::testing` builders, never the code under test), and every frame that leaves is
//! re-parsed by etherparse, which checks its checksums and reads the carriers back.
//!
//! Frames for node B are built here, not taken from node A's output: node A's output is asserted
//! equal to the same built frame, so the chain holds.
//!
//! TC: the program grows and shrinks the packet through the kernel's skb helpers
//! (`bpf_skb_adjust_room`, `bpf_skb_change_tail`), so the tunnel (both ways), the DSR carriers
//! and the ICMP "too big" errors (sent back by `bpf_redirect`, `TC_ACT_REDIRECT`) are made there
//! as at XDP, byte for byte. The harness runs the engine in the kernel's model at TC
//! (`Engine::process_tc`), so the comparison stays byte-for-byte there too. What the kernel
//! refuses at TC is a VLAN-tagged packet (its protocol is its tag's) or inner frame: the
//! fixtures with one say what TC does instead (`AtTc::Differs`: dropped with `EncapFailed`), and
//! that outcome is asserted as strictly as XDP's.

#[path = "../common/mod.rs"]
mod common;
mod dsr_tunnel;
mod edges;
mod frames;
mod snat;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::tagged;
use lb_api::abi::{CtEntry, CtKey, CtKind, CtState};
use lb_api::counters::{Counter, Counters, DropReason};
use lb_api::flow::{v4_addr, L4Proto};
use lb_api::wire::testing::{
    icmp_v4_error_frame, icmp_v6_error_frame, tcp_v4_frame, tcp_v4_frame_seq, tcp_v6_frame,
    udp_v4_frame, udp_v6_frame,
};
use lb_api::wire::TcpFlags as F;
use lb_api::Verdict;
use lb_bpf::Program;
use lb_control::default_config;
use lb_control::{BackendSpec, ForwardingMode, NodeSpec, PortRange, ServiceSpec};
use lb_testbed::harness::{EngineAndKernel, Outcome};

const CLIENT: [u8; 4] = [172, 16, 0, 9];
const CLIENT2: [u8; 4] = [172, 16, 0, 10];
const NODE_A: [u8; 4] = [192, 168, 1, 10];
const NODE_B: [u8; 4] = [192, 168, 1, 11];
const NODE_C: [u8; 4] = [192, 168, 1, 12];
const STRANGER: [u8; 4] = [192, 168, 1, 99];
/// A router on the way, raising ICMP errors.
const ROUTER: [u8; 4] = [10, 9, 9, 9];
const BE: [u8; 4] = [10, 1, 0, 2];
const VIP_SNAT: [u8; 4] = [10, 96, 0, 20];
const VIP_DSR: [u8; 4] = [10, 96, 0, 21];
const VIP_TUN: [u8; 4] = [10, 96, 0, 22];
const VIP_HYB: [u8; 4] = [10, 96, 0, 23];
/// Node B's NodePorts, served by its own (local) backend.
const NODEPORT_DSR: u16 = 30080;
const NODEPORT_TUN: u16 = 30081;
const VNI: u32 = 7;
const MTU: u16 = 1500;
/// The collision resolver's default range (source-preserving modes).
const COLLISION_PORTS: std::ops::RangeInclusive<u16> = 20_000..=29_999;
/// The SNAT range of nodes A and B (the default) and of node C (one port).
const SNAT_PORTS: std::ops::RangeInclusive<u16> = 32_768..=60_999;
const C_SNAT_PORT: u16 = 40_100;

/// Outer MACs of a frame that crossed the underlay to node A or B (set by the router, unlike
/// the MACs the sending node copied from the inner frame).
const A_MAC: [u8; 6] = [2, 0, 0, 0, 0xa, 0xa];
const B_MAC: [u8; 6] = [2, 0, 0, 0, 0xb, 0xb];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0xee, 0xee];

use dsr_tunnel::*;
use edges::*;
use frames::*;
use snat::*;

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// What the engine must do with a packet (the kernel must then do exactly the same).
#[derive(Debug, Clone, Copy)]
struct Expect {
    verdict: Verdict,
    /// Counters that move by one, besides `RxPackets` (and `Dropped` for a drop); no other does.
    counters: &'static [Counter],
    drop: Option<DropReason>,
}

const fn pass(counters: &'static [Counter]) -> Expect {
    Expect {
        verdict: Verdict::Pass,
        counters,
        drop: None,
    }
}

const fn tx(counters: &'static [Counter]) -> Expect {
    Expect {
        verdict: Verdict::Tx,
        counters,
        drop: None,
    }
}

const fn dropped(reason: DropReason, counters: &'static [Counter]) -> Expect {
    Expect {
        verdict: Verdict::Drop,
        counters,
        drop: Some(reason),
    }
}

/// What the TC program does with a fixture.
#[derive(Debug, Clone, Copy)]
enum AtTc {
    /// What XDP does, output bytes included.
    Same,
    /// Something else, by design: the kernel does not resize the packet at TC. The comparison
    /// with the engine stays exact; the expected output bytes are XDP's and are not checked.
    Differs(Expect),
}

use AtTc::{Differs, Same};

/// At TC, a VLAN-tagged packet cannot grow (the kernel's `bpf_skb_adjust_room` takes IPv4 and
/// IPv6 packets only, and a tagged packet's protocol is its tag's): the carrier of a new flow
/// cannot be added, and the packet is dropped before the flow is recorded (no entries, no
/// collision port taken).
const TC_TAGGED_NOT_CARRIED: AtTc = Differs(dropped(DropReason::EncapFailed, &[]));
/// The same for the ICMP "too big" error a tagged packet would become.
const TC_TAGGED_TOO_BIG_NOT_SENT: AtTc = Differs(dropped(DropReason::EncapFailed, &[]));
/// A tagged inner frame is not decapsulated at TC: the packet's protocol (the outer one's) is
/// not the inner frame's, and the kernel could not set it.
const TC_TAGGED_INNER_NOT_DECAPSULATED: AtTc = Differs(dropped(DropReason::EncapFailed, &[]));

struct Fixture {
    node: Node,
    name: String,
    frame: Vec<u8>,
    expect: Expect,
    at_tc: AtTc,
    out: Option<Vec<u8>>,
}

fn fx(node: Node, name: impl Into<String>, frame: Vec<u8>, expect: Expect, at_tc: AtTc) -> Fixture {
    Fixture {
        node,
        name: name.into(),
        frame,
        expect,
        at_tc,
        out: None,
    }
}

impl Fixture {
    /// The frame that must leave (XDP, and TC when `Same`).
    fn out(mut self, f: Vec<u8>) -> Self {
        self.out = Some(f);
        self
    }
}

/// The three nodes, each a pair of worlds, for one program.
struct Cluster {
    program: Program,
    a: EngineAndKernel,
    b: EngineAndKernel,
    c: EngineAndKernel,
    now: u64,
    /// Fixtures run, and of those the ones with a TC outcome of their own.
    run: usize,
    differs: usize,
}

impl Cluster {
    fn new(program: Program) -> Self {
        let world = |n: Node| {
            let mut h = EngineAndKernel::new(program, default_config(0x5eed), &services(n))
                .unwrap_or_else(|e| panic!("engine and kernel: {e:#}"));
            h.set_node(&node_spec(n))
                .unwrap_or_else(|e| panic!("set_node: {e:#}"));
            h
        };
        Self {
            program,
            a: world(Node::A),
            b: world(Node::B),
            c: world(Node::C),
            now: 1_000_000_000_000,
            run: 0,
            differs: 0,
        }
    }

    fn node(&self, n: Node) -> &EngineAndKernel {
        match n {
            Node::A => &self.a,
            Node::B => &self.b,
            Node::C => &self.c,
        }
    }

    fn is_tc(&self) -> bool {
        self.program == Program::Tc
    }

    /// Runs one fixture through both worlds of its node and checks it.
    fn run(&mut self, f: Fixture) -> Outcome {
        // 1 ms apart: every flow's entries stay well within their timeouts.
        self.now += 1_000_000;
        let what = format!("{:?}: {}", f.node, f.name);
        let h = match f.node {
            Node::A => &mut self.a,
            Node::B => &mut self.b,
            Node::C => &mut self.c,
        };
        let o = h.expect_same(&what, &f.frame, self.now);
        let (expect, out) = match (self.program, f.at_tc) {
            (Program::Tc, Differs(e)) => {
                self.differs += 1;
                (e, None)
            }
            _ => (f.expect, f.out),
        };
        assert_eq!(o.verdict, expect.verdict, "{what}: verdict");
        let mut want = o.before;
        want.bump(Counter::RxPackets.slot());
        for c in expect.counters {
            want.bump(c.slot());
        }
        if let Some(r) = expect.drop {
            want.bump(Counter::Dropped.slot());
            want.bump(r.slot());
        }
        let moved = |s: &lb_api::counters::CounterSnapshot| -> Vec<String> {
            Counter::ALL
                .iter()
                .filter(|c| s.get(**c) != o.before.get(**c))
                .map(|c| format!("{c:?}"))
                .chain(
                    DropReason::ALL
                        .iter()
                        .filter(|r| s.drops(**r) != o.before.drops(**r))
                        .map(|r| format!("drop {r:?}")),
                )
                .collect()
        };
        assert_eq!(
            moved(&o.after),
            moved(&want),
            "{what}: the counters that moved"
        );
        assert_eq!(o.after, want, "{what}: counters");
        self.assert_pairs(f.node, &what);
        if let Some(out) = out {
            assert_eq!(o.frame, out, "{what}: output frame");
        }
        if o.verdict != Verdict::Drop {
            oracle(&what, &o.frame);
        }
        self.run += 1;
        o
    }

    /// The engine's conntrack entry under `key` on node `n` (the kernel holds the same: the harness
    /// compared them after the last packet).
    fn entry(&self, n: Node, key: CtKey) -> CtEntry {
        self.node(n)
            .engine
            .conntrack()
            .iter()
            .find(|(k, _)| **k == key)
            .map(|(_, e)| *e)
            .unwrap_or_else(|| panic!("{n:?}: no conntrack entry {key:?}"))
    }

    /// Every entry on node `n` has its partner (`lb_conntrack::partner_key`, which GC and
    /// expiry use to delete flows as pairs) in the table, and the partner's partner is the entry
    /// itself; only the service entry of a DSR flow on the forwarding node has none. (The kernel
    /// holds the same entries: the harness compares them after each packet.)
    fn assert_pairs(&self, n: Node, what: &str) {
        let ct = self.node(n).engine.conntrack();
        for (k, e) in ct.iter() {
            let Some(p) = lb_conntrack::partner_key(k, e) else {
                assert!(
                    k.kind == CtKind::Service as u8 && e.is_dsr() && !e.is_backend_side(),
                    "{what}: {n:?}: no partner key for {k:?} {e:?}"
                );
                continue;
            };
            let pe = ct
                .get(&p)
                .unwrap_or_else(|| panic!("{what}: {n:?}: partner {p:?} of {k:?} missing"));
            assert_eq!(
                lb_conntrack::partner_key(&p, pe),
                Some(*k),
                "{what}: {n:?}: partner of the partner of {k:?}"
            );
        }
    }

    fn has_entry(&self, n: Node, key: CtKey) -> bool {
        self.node(n)
            .engine
            .conntrack()
            .iter()
            .any(|(k, _)| *k == key)
    }
}

/// A conntrack key from addresses and ports.
fn key(kind: CtKind, proto: L4Proto, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> CtKey {
    CtKey {
        src: addr16(src),
        dst: addr16(dst),
        src_port: sport,
        dst_port: dport,
        proto: proto as u8,
        family: if src.is_ipv4() { 4 } else { 6 },
        kind: kind as u8,
        pad: 0,
        origin: [0; 16],
    }
}

/// [`key`] of a service entry on the backend's node of a flow that came through the tunnel
/// from node `origin`.
fn key_from(
    origin: IpAddr,
    proto: L4Proto,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
) -> CtKey {
    CtKey {
        origin: addr16(origin),
        ..key(CtKind::Service, proto, src, sport, dst, dport)
    }
}

/// An address as the 16-byte field of conntrack keys and entries (IPv4 in the first 4 bytes).
fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => v4_addr(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

fn ip6(a: [u8; 16]) -> IpAddr {
    IpAddr::from(a)
}

// ---------------------------------------------------------------------------------------------
// The scenes (in `snat`, `dsr_tunnel` and `edges`), in the order they run.

fn run_modes(program: Program) -> Cluster {
    let mut cl = Cluster::new(program);
    snat(&mut cl);
    dsr(&mut cl);
    tunnel(&mut cl);
    hybrid(&mut cl);
    backend_side_collisions(&mut cl);
    carrier_edge_cases(&mut cl);
    bad_input(&mut cl);
    if cl.is_tc() {
        gso_at_tc(&mut cl);
    }
    cl
}

#[test]
fn engine_and_kernel_agree_on_forwarding_modes() {
    if !common::privileged("engine_and_kernel_agree_on_forwarding_modes") {
        return;
    }
    for program in [Program::Xdp, Program::Tc] {
        let cl = run_modes(program);
        let compared = cl.a.compared + cl.b.compared + cl.c.compared;
        assert_eq!(compared, cl.run, "every fixture went through both worlds");
        assert!(cl.run > 70, "{}: only {} fixtures", program.name(), cl.run);
        if program == Program::Tc {
            assert!(cl.differs > 0);
        } else {
            assert_eq!(cl.differs, 0);
        }
        eprintln!(
            "{}: {} forwarding-mode fixtures identical between engine and kernel ({} with the \
             TC outcome of a VLAN-tagged packet, which the kernel does not resize)",
            program.name(),
            cl.run,
            cl.differs
        );
    }
}

/// Incident 2 with the frontends on two other nodes: a client reaches node A's and node C's
/// NodePorts from one source port, and both nodes pick the same backend on node B, keeping the
/// client's address (DSR, then the tunnel). Both flows reach node B with one tuple, client ->
/// backend. Node B keeps them apart by the service entry's key: under DSR the tuple the client
/// sent (the carrier names the NodePort), through the tunnel the tuple and the node it came
/// from. The second flow's first packet is a new flow, its reply tuple collides with the
/// first's, so it gets another source port; each flow's replies go back the way it came. Every
/// packet runs through the engine and the kernel (XDP and TC), compared.
#[test]
fn backend_side_resolves_flows_forwarded_by_two_nodes() {
    if !common::privileged("backend_side_resolves_flows_forwarded_by_two_nodes") {
        return;
    }
    for program in [Program::Xdp, Program::Tc] {
        let mut cl = Cluster::new(program);
        let reply = |port| tcp_v4_frame(BE, 8080, CLIENT, port, F::SYN | F::ACK, b"");

        // DSR.
        let cport = 49_000;
        let via = |node: [u8; 4], port, flags| {
            with_ipv4_option(
                &tcp_v4_frame(CLIENT, port, BE, 8080, flags, b""),
                &dsr_v4_option(node, NODEPORT_DSR),
            )
        };
        cl.run(
            fx(
                Node::B,
                "dsr via node A",
                via(NODE_A, cport, F::SYN),
                pass(&[Counter::BackendSideNewFlow]),
                Same,
            )
            .out(via(NODE_A, cport, F::SYN)),
        );
        let o = cl.run(fx(
            Node::B,
            "dsr via node C, same client port: a new flow, source port rewritten",
            via(NODE_C, cport, F::SYN),
            pass(&[Counter::BackendSideNewFlow, Counter::SourcePortRewritten]),
            Same,
        ));
        let second = |node: [u8; 4]| {
            key(
                CtKind::Service,
                L4Proto::Tcp,
                ip(CLIENT),
                cport,
                ip(node),
                NODEPORT_DSR,
            )
        };
        let port = cl.entry(Node::B, second(NODE_C)).rewritten_src_port;
        assert!(COLLISION_PORTS.contains(&port), "{port}");
        assert_eq!(o.frame, via(NODE_C, port, F::SYN));
        assert!(
            !cl.entry(Node::B, second(NODE_A)).src_port_rewritten(),
            "the first flow keeps its port"
        );
        for (name, node, port) in [("A", NODE_A, cport), ("C", NODE_C, port)] {
            cl.run(
                fx(
                    Node::B,
                    format!("dsr: node {name}'s flow, established, its own port"),
                    via(node, cport, F::ACK),
                    pass(&[Counter::ServiceEstablished]),
                    Same,
                )
                .out(via(node, port, F::ACK)),
            );
            cl.run(
                fx(
                    Node::B,
                    format!("dsr: reply to node {name}'s flow leaves from its NodePort"),
                    reply(port),
                    pass(&[Counter::ReplyTranslated]),
                    Same,
                )
                .out(tcp_v4_frame(
                    node,
                    NODEPORT_DSR,
                    CLIENT,
                    cport,
                    F::SYN | F::ACK,
                    b"",
                )),
            );
        }

        // Tunnel.
        let cport = 49_001;
        let from = |node: [u8; 4], flags| {
            with_macs(
                &vxlan_v4(
                    node,
                    NODE_B,
                    50_010,
                    VNI,
                    &tcp_v4_frame(CLIENT, cport, BE, 8080, flags, b""),
                ),
                B_MAC,
                ROUTER_MAC,
            )
        };
        let delivered = |port, flags| {
            with_macs(
                &tcp_v4_frame(CLIENT, port, BE, 8080, flags, b""),
                B_MAC,
                ROUTER_MAC,
            )
        };
        cl.run(
            fx(
                Node::B,
                "tunnel from node A",
                from(NODE_A, F::SYN),
                pass(&[Counter::TunnelDecapsulated, Counter::BackendSideNewFlow]),
                Same,
            )
            .out(delivered(cport, F::SYN)),
        );
        let o = cl.run(fx(
            Node::B,
            "tunnel from node C, same client port: a new flow, source port rewritten",
            from(NODE_C, F::SYN),
            pass(&[
                Counter::TunnelDecapsulated,
                Counter::BackendSideNewFlow,
                Counter::SourcePortRewritten,
            ]),
            Same,
        ));
        let origin =
            |node: [u8; 4]| key_from(ip(node), L4Proto::Tcp, ip(CLIENT), cport, ip(BE), 8080);
        let port = cl.entry(Node::B, origin(NODE_C)).rewritten_src_port;
        assert!(COLLISION_PORTS.contains(&port), "{port}");
        assert_eq!(o.frame, delivered(port, F::SYN));
        for (name, node, port) in [("A", NODE_A, cport), ("C", NODE_C, port)] {
            cl.run(
                fx(
                    Node::B,
                    format!("tunnel: node {name}'s flow, established, its own port"),
                    from(node, F::ACK),
                    pass(&[Counter::TunnelDecapsulated, Counter::ServiceEstablished]),
                    Same,
                )
                .out(delivered(port, F::ACK)),
            );
            let o = cl.run(fx(
                Node::B,
                format!("tunnel: reply to node {name}'s flow goes back to node {name}"),
                reply(port),
                pass(&[Counter::ReplyTranslated, Counter::TunnelEncapsulated]),
                Same,
            ));
            let s = u16::from_be_bytes([o.frame[34], o.frame[35]]);
            assert_eq!(o.frame, vxlan_v4(NODE_B, node, s, VNI, &reply(cport)));
        }
    }
}

/// Finding (both worlds agree): the IPv4 DSR option is appended after the options a packet
/// already has. After an End-of-Option-List option (type 0, legal before the end of the
/// header) receivers stop reading, the backend's node among them (`dsr_extract` returns at
/// type 0; Linux even overwrites what follows with EOL), so the flow is not recognised there
/// and its replies leave from the backend's address. Proposed fix, local to
/// `lb_encap::dsr::dsr_v4_insert`: put the option first, right after the fixed 20-byte header
/// (move `l3 + 20` bytes instead of `l4`, store at `l3 + 20`).
#[test]
fn dsr_option_is_read_after_an_end_of_options_list() {
    if !common::privileged("dsr_option_is_read_after_an_end_of_options_list") {
        return;
    }
    for program in [Program::Xdp, Program::Tc] {
        let mut cl = Cluster::new(program);
        let eol = [0u8; 4];
        let o = cl.run(fx(
            Node::A,
            "dsr v4 with an End-of-Option-List option",
            with_ipv4_option(
                &tcp_v4_frame(CLIENT, 49_001, VIP_DSR, 80, F::SYN, b""),
                &eol,
            ),
            pass(&[Counter::ServiceNewFlow, Counter::DsrCarrierAdded]),
            Same,
        ));
        cl.run(fx(
            Node::B,
            "the backend's node finds the carrier",
            o.frame,
            pass(&[Counter::BackendSideNewFlow]),
            Same,
        ));
    }
}
