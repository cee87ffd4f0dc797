//! The pipeline's paths, each run on its own: the tables come from the engine (which runs the
//! whole pipeline to set a flow up), the packet is a slice with headroom, and the path is called
//! as its stage calls it, so that a failure names the path and what it returned.

use core::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::vec;
use std::vec::Vec;

use lb_api::abi::{CtEntry, CtKey, CtKind, DatapathConfig, ForwardingMode};
use lb_api::counters::Counter;
use lb_api::flow::{v4_addr, FlowTuple, L4Proto};
use lb_api::wire::testing::{ip_v4_frame, tcp_v4_frame};
use lb_api::wire::{parse_into, TcpFlags};
use lb_api::Verdict;
use lb_conntrack::{partner_key, reverse_key, ConntrackTable, InsertMode, ManualClock};
use lb_control::{BackendSpec, NodeSpec, ServiceSpec};
use lb_encap::HeadroomPacket;

use super::context::{Ctx, Outcome};
use super::icmp_error::icmp_error;
use super::new_flow::{backend_side, new_flow};
use super::pair::{forget_expired_flow, refresh_reverse};
use super::tracked::{established, reply};
use super::tunnel::is_tunnel;
use super::Scratch;
use crate::engine::{Engine, UserTables, HEADROOM};
use lb_control::default_config;

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const CLIENT_PORT: u16 = 40_000;
const VIP: [u8; 4] = [10, 96, 0, 10];
const BACKEND: [u8; 4] = [10, 1, 0, 2];
const NODE: [u8; 4] = [192, 168, 1, 10];
const PEER: [u8; 4] = [192, 168, 1, 11];
const NOW: u64 = 1_000;

/// The clock of a path run: the config's fixed time is set, so it is never read.
type Clock = fn() -> u64;

/// An engine on node `NODE` with one TCP service `VIP`:80 → `BACKEND`:8080; with a `mode`, the
/// backend is on the peer node `PEER`, reached per the mode over an underlay of `mtu`.
fn engine(mode: Option<ForwardingMode>, mtu: u16) -> Engine<ManualClock> {
    let mut cfg = default_config(7);
    cfg.fixed_now_ns = NOW;
    let mut e = Engine::with_clock(1024, cfg, ManualClock::new(NOW));
    e.set_node(&NodeSpec {
        address_v4: Some(NODE.into()),
        peers: vec![IpAddr::from(PEER)],
        underlay_mtu: mtu,
        ..Default::default()
    })
    .unwrap();
    e.upsert_service(&ServiceSpec {
        id: 1,
        frontend: (VIP, 80).into(),
        proto: L4Proto::Tcp,
        mode: mode.unwrap_or_default(),
        backends: vec![BackendSpec {
            node: mode.map(|_| IpAddr::from(PEER)),
            ..SocketAddr::from((BACKEND, 8080)).into()
        }],
        ..Default::default()
    })
    .unwrap();
    e
}

/// A packet from the client to the service.
fn to_service(flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_v4_frame(CLIENT, CLIENT_PORT, VIP, 80, flags, payload)
}

/// The configuration and tables of [`engine`] once the flow's SYN went through the pipeline.
fn after_syn(mode: Option<ForwardingMode>, mtu: u16) -> (DatapathConfig, UserTables) {
    let mut e = engine(mode, mtu);
    assert_eq!(
        e.process(&mut to_service(TcpFlags::SYN, b"")),
        Verdict::Pass
    );
    (*e.config(), e.tables().clone())
}

/// The flow's service entry and its key.
fn service_entry(tables: &UserTables) -> (CtKey, CtEntry) {
    tables
        .ct
        .iter()
        .find(|(k, _)| k.kind == CtKind::Service as u8)
        .map(|(k, e)| (*k, *e))
        .expect("a service entry")
}

/// Runs `path` on `frame` alone, as its stage runs it: the packet parsed into a scratch area, a
/// context over `cfg`, the scratch entry and key as the path's working space. Returns what the
/// path returned and the packet after it.
fn run_path<R>(
    frame: &[u8],
    cfg: &DatapathConfig,
    tables: &mut UserTables,
    path: impl FnOnce(
        &mut HeadroomPacket<'_>,
        &Ctx<'_, Clock>,
        &mut UserTables,
        &mut CtEntry,
        &mut CtKey,
    ) -> R,
) -> (R, Vec<u8>) {
    let mut buf = vec![0; HEADROOM + frame.len() + 256];
    buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
    let mut pkt = HeadroomPacket::new(&mut buf, HEADROOM, frame.len()).unwrap();
    let mut scratch = Scratch::default();
    let Scratch {
        parsed,
        entry,
        key,
        peer,
        snat,
        ..
    } = &mut scratch;
    parse_into(&pkt, parsed).unwrap();
    let clock: Clock = || NOW;
    let ctx = Ctx {
        parsed,
        cfg,
        clock: &clock,
        peer,
        tunnelled: false,
        snat: Cell::from_mut(snat),
    };
    let r = path(&mut pkt, &ctx, tables, entry, key);
    (r, pkt.bytes().to_vec())
}

#[test]
fn is_tunnel_takes_udp_to_this_nodes_tunnel_port_only() {
    let t = |proto: L4Proto, dst: [u8; 4], port: u16| FlowTuple {
        src: v4_addr(PEER),
        dst: v4_addr(dst),
        src_port: 5555,
        dst_port: port,
        proto: proto as u8,
        family: 4,
    };
    let mut cfg = default_config(0);
    assert!(
        !is_tunnel(&t(L4Proto::Udp, NODE, 4789), &cfg),
        "no node address, no tunnel"
    );
    cfg.node_v4 = NODE;
    assert!(is_tunnel(&t(L4Proto::Udp, NODE, 4789), &cfg));
    assert!(!is_tunnel(&t(L4Proto::Tcp, NODE, 4789), &cfg));
    assert!(!is_tunnel(&t(L4Proto::Udp, NODE, 4790), &cfg));
    assert!(!is_tunnel(&t(L4Proto::Udp, PEER, 4789), &cfg));
}

#[test]
fn tracked_paths_miss_a_packet_of_no_flow() {
    let e = engine(None, 1500);
    let (cfg, mut tables) = (*e.config(), e.tables().clone());
    let syn = to_service(TcpFlags::SYN, b"");
    let (o, out) = run_path(&syn, &cfg, &mut tables, |p, c, t, e, k| {
        reply(p, c, t, e, k)
    });
    assert_eq!((o, out), (None, syn.clone()));
    let (o, out) = run_path(&syn, &cfg, &mut tables, |p, c, t, e, k| {
        established(p, c, t, e, k)
    });
    assert_eq!((o, out), (None, syn));
    assert_eq!(tables.ct.len(), 0, "a miss records nothing");
}

#[test]
fn reply_path_restores_the_service_address() {
    let (cfg, mut tables) = after_syn(None, 1500);
    let syn_ack = TcpFlags::SYN | TcpFlags::ACK;
    let from_backend = tcp_v4_frame(BACKEND, 8080, CLIENT, CLIENT_PORT, syn_ack, b"");
    let (o, out) = run_path(&from_backend, &cfg, &mut tables, |p, c, t, e, k| {
        reply(p, c, t, e, k)
    });
    assert_eq!(o, Some(Outcome::Done(Verdict::Pass)));
    assert_eq!(
        out,
        tcp_v4_frame(VIP, 80, CLIENT, CLIENT_PORT, syn_ack, b"")
    );
    assert_eq!(tables.counters.get(Counter::ReplyTranslated), 1);
}

#[test]
fn established_path_leaves_the_carrier_and_its_count_to_the_stage() {
    let (cfg, mut tables) = after_syn(Some(ForwardingMode::Dsr), 1500);
    let counted = tables.counters.get(Counter::ServiceEstablished);
    let ack = to_service(TcpFlags::ACK, b"hello");
    let (o, out) = run_path(&ack, &cfg, &mut tables, |p, c, t, e, k| {
        established(p, c, t, e, k)
    });
    assert_eq!(o, Some(Outcome::CarryEstablished));
    // Translated, but neither carried nor counted yet: `finish` does both.
    assert_eq!(
        out,
        tcp_v4_frame(CLIENT, CLIENT_PORT, BACKEND, 8080, TcpFlags::ACK, b"hello")
    );
    assert_eq!(tables.counters.get(Counter::ServiceEstablished), counted);
}

#[test]
fn established_path_refuses_a_packet_its_carrier_would_take_past_the_mtu() {
    let (cfg, mut tables) = after_syn(Some(ForwardingMode::Tunnel), 1000);
    let big = to_service(TcpFlags::ACK, &[7; 960]);
    let (o, out) = run_path(&big, &cfg, &mut tables, |p, c, t, e, k| {
        established(p, c, t, e, k)
    });
    assert_eq!(o, Some(Outcome::TooBig));
    assert_eq!(out, big, "untouched: the ICMP error quotes it as sent");
}

#[test]
fn refresh_reverse_rebuilds_a_lost_reverse_half() {
    let (_, mut tables) = after_syn(None, 1500);
    let (fkey, mut e) = service_entry(&tables);
    let rk = partner_key(&fkey, &e).unwrap();
    let rev = *tables.ct.get(&rk).unwrap();
    assert!(tables.ct.remove(&rk));
    assert_eq!(
        refresh_reverse(&mut tables, &fkey, &mut e, NOW + 5),
        Some(())
    );
    let rebuilt = tables.ct.get(&rk).expect("the reverse half is back");
    assert_eq!(
        (rebuilt.nat_addr, rebuilt.nat_port, rebuilt.flags),
        (rev.nat_addr, rev.nat_port, rev.flags)
    );
    assert_eq!(tables.counters.get(Counter::ReverseEntryRebuilt), 1);
    assert_eq!(tables.counters.get(Counter::ReverseEntryRebuildFailed), 0);
}

#[test]
fn forget_expired_flow_removes_both_halves() {
    let (_, mut tables) = after_syn(None, 1500);
    assert_eq!(tables.ct.len(), 2);
    let (fkey, _) = service_entry(&tables);
    forget_expired_flow(&mut tables, &fkey);
    assert_eq!(tables.ct.len(), 0);
    assert_eq!(tables.counters.get(Counter::ConntrackExpiredAtLookup), 1);
}

#[test]
fn a_packet_to_no_service_is_neither_a_new_flow_nor_a_backend_sides() {
    let e = engine(None, 1500);
    let (cfg, mut tables) = (*e.config(), e.tables().clone());
    let other = tcp_v4_frame(CLIENT, CLIENT_PORT, [10, 96, 0, 99], 80, TcpFlags::SYN, b"");
    let (o, _) = run_path(&other, &cfg, &mut tables, |p, c, t, e, k| {
        new_flow(p, c, t, e, k)
    });
    assert_eq!(o, None);
    let (v, out) = run_path(&other, &cfg, &mut tables, |p, c, t, e, k| {
        backend_side(p, c, t, e, k)
    });
    assert_eq!((v, out), (Verdict::Pass, other));
    assert_eq!(tables.counters.get(Counter::PassNotService), 1);
    assert_eq!(tables.ct.len(), 0);
}

#[test]
fn new_flow_path_takes_another_source_port_when_the_reply_tuple_is_owned() {
    let e = engine(None, 1500);
    let (cfg, mut tables) = (*e.config(), e.tables().clone());
    let syn = to_service(TcpFlags::SYN, b"");
    // Another flow owns the reply BACKEND:8080 → CLIENT:40000 (the same client port reaching
    // the backend another way).
    let t = FlowTuple {
        src: v4_addr(CLIENT),
        dst: v4_addr(VIP),
        src_port: CLIENT_PORT,
        dst_port: 80,
        proto: L4Proto::Tcp as u8,
        family: 4,
    };
    let owned = reverse_key(&t, &t.src, CLIENT_PORT, &v4_addr(BACKEND), 8080);
    let owner = CtEntry {
        service_id: 99,
        ..CtEntry::default()
    };
    tables.insert(&owned, &owner, InsertMode::NoExist).unwrap();
    let (o, out) = run_path(&syn, &cfg, &mut tables, |p, c, t, e, k| {
        new_flow(p, c, t, e, k)
    });
    assert_eq!(o, Some(Outcome::Done(Verdict::Pass)));
    let port = u16::from_be_bytes([out[34], out[35]]);
    assert!((20_000..=29_999).contains(&port), "port {port}");
    assert_eq!(
        out,
        tcp_v4_frame(CLIENT, port, BACKEND, 8080, TcpFlags::SYN, b"")
    );
    assert_eq!(tables.counters.get(Counter::SourcePortRewritten), 1);
    assert_eq!(
        tables.ct.get(&owned),
        Some(&owner),
        "the owner keeps its reply"
    );
    let (_, e) = service_entry(&tables);
    assert!(e.src_port_rewritten());
    assert_eq!(e.rewritten_src_port, port);
}

#[test]
fn icmp_path_passes_an_echo() {
    let e = engine(None, 1500);
    let (cfg, mut tables) = (*e.config(), e.tables().clone());
    let echo = ip_v4_frame(CLIENT, VIP, 1, &[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
    let (v, out) = run_path(&echo, &cfg, &mut tables, |p, c, t, _, _| {
        icmp_error(p, c.parsed, t, NOW)
    });
    assert_eq!((v, out), (Verdict::Pass, echo));
    assert_eq!(tables.counters.get(Counter::PassOtherProto), 1);
}
