//! The conntrack repair paths and the production random path, in the kernel.
//!
//! * Engine against kernel (`EngineAndKernel`: bytes, verdicts, conntrack, counters compared
//!   after every packet): a reply whose service entry was deleted on its own removes the orphan
//!   (`orphan_reply_removed`); a packet whose reverse entry was deleted on its own rebuilds it
//!   (`reverse_entry_rebuilt`).
//! * The kernel alone, on its real clock (no `fixed_now_ns`), so that the collision resolver and
//!   the SNAT allocator draw from `bpf_get_prandom_u32` as in production: the differential
//!   suites replace that draw with a seeded one to compare bytes, so here the choices are
//!   checked by their properties instead — the port is in its range, the reverse entry that
//!   reserves it is present, keyed by that port, and consistent with the service entry (each is
//!   the other's partner), and the packet left with that port.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;

use lb_api::abi::{CtEntry, CtKey, CtKind, DatapathConfig, ForwardingMode};
use lb_api::counters::Counter;
use lb_api::flow::{v4_addr, L4Proto};
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_bpf::{KernelDatapath, Program};
use lb_conntrack::partner_key;
use lb_control::{default_config, BackendSpec, NodeSpec, PortRange, ServiceSpec};
use lb_testbed::harness::EngineAndKernel;

const SEC: u64 = 1_000_000_000;
const CLIENT: [u8; 4] = [10, 0, 0, 1];
const VIP: [u8; 4] = [10, 96, 0, 10];
const BACKEND: [u8; 4] = [10, 1, 0, 2];

fn service(id: u32, vip: [u8; 4], backends: Vec<BackendSpec>, mode: ForwardingMode) -> ServiceSpec {
    ServiceSpec {
        id,
        frontend: (vip, 80).into(),
        proto: L4Proto::Tcp,
        mode,
        backends,
        ..Default::default()
    }
}

fn local(addr: [u8; 4]) -> BackendSpec {
    std::net::SocketAddr::from((addr, 8080)).into()
}

/// The service key of client port `port`'s flow to VIP:80, its entry and its reverse key.
fn flow(pair: &EngineAndKernel, port: u16) -> (CtKey, CtEntry, CtKey) {
    let (k, e) = pair
        .engine_conntrack()
        .into_iter()
        .find(|(k, _)| k.kind == CtKind::Service as u8 && k.src_port == port)
        .expect("the flow's service entry");
    let rk = partner_key(&k, &e).expect("a reverse half");
    (k, e, rk)
}

#[test]
fn orphan_and_rebuild_in_both_worlds() {
    if !common::privileged("orphan_and_rebuild_in_both_worlds") {
        return;
    }
    for program in [Program::Xdp, Program::Tc] {
        let svc = service(1, VIP, vec![local(BACKEND)], ForwardingMode::Snat);
        let mut pair = EngineAndKernel::new(program, default_config(7), &[svc]).unwrap();
        let syn = tcp_v4_frame(CLIENT, 40_000, VIP, 80, TcpFlags::SYN, b"");
        let syn_ack = tcp_v4_frame(
            BACKEND,
            8080,
            CLIENT,
            40_000,
            TcpFlags::SYN | TcpFlags::ACK,
            b"",
        );
        let ack = tcp_v4_frame(CLIENT, 40_000, VIP, 80, TcpFlags::ACK, b"");
        pair.expect_same("syn", &syn, SEC);
        pair.expect_same("syn-ack", &syn_ack, SEC);

        // The reverse half deleted on its own: the next packet rebuilds it.
        let (k, _, rk) = flow(&pair, 40_000);
        assert!(pair.engine.conntrack_remove(&rk));
        assert!(pair.dp.conntrack_remove(&rk).unwrap());
        let out = pair.expect_same("ack rebuilds the reverse entry", &ack, 2 * SEC);
        assert_eq!(out.verdict, Verdict::Pass);
        assert_eq!(
            out.after.get(Counter::ReverseEntryRebuilt),
            out.before.get(Counter::ReverseEntryRebuilt) + 1
        );
        assert_eq!(pair.engine_conntrack().len(), 2, "{program:?}: whole again");
        let out = pair.expect_same("reply translated again", &syn_ack, 3 * SEC);
        assert_eq!(
            out.after.get(Counter::ReplyTranslated),
            out.before.get(Counter::ReplyTranslated) + 1
        );

        // The service half deleted on its own: the next reply removes the orphan.
        assert!(pair.engine.conntrack_remove(&k));
        assert!(pair.dp.conntrack_remove(&k).unwrap());
        let out = pair.expect_same("reply finds an orphan", &syn_ack, 4 * SEC);
        assert_eq!(out.frame, syn_ack, "{program:?}: untranslated");
        assert_eq!(
            out.after.get(Counter::OrphanReplyRemoved),
            out.before.get(Counter::OrphanReplyRemoved) + 1
        );
        assert!(pair.engine_conntrack().is_empty());
        assert!(
            !pair.dp.conntrack_remove(&rk).unwrap(),
            "gone in the kernel too"
        );
    }
}

/// The (source) port a translated frame left with.
fn src_port(frame: &[u8]) -> u16 {
    let p = etherparse::SlicedPacket::from_ethernet(frame).expect("a frame etherparse reads");
    match p.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => t.source_port(),
        other => panic!("not TCP: {other:?}"),
    }
}

/// Checks one flow's pair by its properties: the port the packet left with is the one the
/// flow's entries record, in `range` when rewritten, reserved by a reverse entry keyed by it,
/// and the two entries are each other's partner.
fn check_pair(
    entries: &[(CtKey, CtEntry)],
    client: [u8; 4],
    port: u16,
    vip: [u8; 4],
    sent_with: u16,
    range: (u16, u16),
) -> u16 {
    let find = |k: &CtKey| entries.iter().find(|(x, _)| x == k).map(|(_, e)| *e);
    let fk = entries
        .iter()
        .map(|(k, _)| *k)
        .find(|k| {
            k.kind == CtKind::Service as u8
                && k.src == v4_addr(client)
                && k.src_port == port
                && k.dst == v4_addr(vip)
        })
        .expect("the flow's service entry");
    let fe = find(&fk).unwrap();
    let rk = partner_key(&fk, &fe).expect("a reverse half");
    let re = find(&rk).expect("the reverse entry reserving the port is present");
    assert_eq!(partner_key(&rk, &re), Some(fk), "the pair points both ways");
    assert_eq!(
        rk.dst_port, sent_with,
        "reserved under the port the packet left with"
    );
    if sent_with != port {
        assert!(fe.src_port_rewritten() && re.src_port_rewritten());
        assert!(
            (range.0..=range.1).contains(&sent_with),
            "port {sent_with} outside {range:?}"
        );
        assert_eq!(fe.rewritten_src_port, sent_with);
        assert_eq!(
            re.rewritten_src_port, port,
            "replies get the client's port back"
        );
    }
    assert_eq!(
        (re.expires_ns, re.state, re.flags),
        (fe.expires_ns, fe.state, fe.flags),
        "the reverse entry follows its service entry"
    );
    sent_with
}

#[test]
fn production_random_ports_have_their_properties() {
    if !common::privileged("production_random_ports_have_their_properties") {
        return;
    }
    const FLOWS: u16 = 40;
    let mut dp = KernelDatapath::load().unwrap_or_else(|e| panic!("load: {e}"));
    dp.flush_conntrack().unwrap();
    // The real clock: the random draw is the kernel's (`bpf_get_prandom_u32`).
    dp.set_config(&DatapathConfig {
        fixed_now_ns: 0,
        ..default_config(7)
    })
    .unwrap();
    let snat = PortRange {
        min: 50_000,
        max: 50_999,
    };
    dp.set_node(&NodeSpec {
        address_v4: Some([192, 168, 1, 10].into()),
        peers: vec![IpAddr::from([192, 168, 1, 11])],
        snat_ports: snat,
        ..Default::default()
    })
    .unwrap();
    let remote = BackendSpec {
        node: Some(IpAddr::from([192, 168, 1, 11])),
        ..local([10, 2, 0, 3])
    };
    // SNAT: clients of one port to a remote backend all leave from the node's address, so
    // all but one need a port of the SNAT range.
    dp.upsert_service(&service(1, VIP, vec![remote], ForwardingMode::Snat))
        .unwrap();
    // Collisions: two frontends with the same local backend; the same client address and port
    // through the second one collides with its flow through the first.
    let vip2 = [10, 96, 0, 11];
    dp.upsert_service(&service(
        2,
        [10, 96, 0, 12],
        vec![local(BACKEND)],
        ForwardingMode::Snat,
    ))
    .unwrap();
    dp.upsert_service(&service(
        3,
        vip2,
        vec![local(BACKEND)],
        ForwardingMode::Snat,
    ))
    .unwrap();

    let cfg = dp.config().unwrap();
    // The collision resolver's range as the pipeline reads it from the configuration.
    let r = lb_nat::SourcePortRange::from_config(
        cfg.src_port_min,
        cfg.src_port_max,
        cfg.src_port_tries,
    );
    let collision_range = (r.min, r.max);
    let mut snat_ports = HashSet::new();
    let mut sent = Vec::new();
    for i in 0..FLOWS {
        let client = [10, 0, 1, 1 + i as u8];
        let syn = tcp_v4_frame(client, 33_000, VIP, 80, TcpFlags::SYN, b"");
        let out = dp.test_run(Program::Xdp, &syn, 1).unwrap();
        assert_eq!(out.verdict, Verdict::Pass);
        sent.push((client, src_port(&out.data)));
    }
    let mut collided = Vec::new();
    for i in 0..FLOWS {
        let client = [10, 0, 2, 1 + i as u8];
        for vip in [[10, 96, 0, 12], vip2] {
            let syn = tcp_v4_frame(client, 34_000, vip, 80, TcpFlags::SYN, b"");
            let out = dp.test_run(Program::Xdp, &syn, 1).unwrap();
            assert_eq!(out.verdict, Verdict::Pass);
            collided.push((client, vip, src_port(&out.data)));
        }
    }
    let entries = dp.conntrack_entries().unwrap();
    assert_eq!(
        entries.len(),
        2 * 3 * usize::from(FLOWS),
        "whole pairs only"
    );
    for (client, port) in &sent {
        let p = check_pair(&entries, *client, 33_000, VIP, *port, (snat.min, snat.max));
        assert!(snat_ports.insert(p), "SNAT port {p} given twice");
    }
    assert_eq!(
        sent.iter().filter(|(_, p)| *p == 33_000).count(),
        0,
        "33000 is outside the SNAT range: every flow got a port of it"
    );
    let mut rewritten = 0;
    for (client, vip, port) in &collided {
        check_pair(&entries, *client, 34_000, *vip, *port, collision_range);
        rewritten += usize::from(*port != 34_000);
    }
    assert_eq!(
        rewritten,
        usize::from(FLOWS),
        "one of each client's two flows"
    );
    let c = dp.counters().unwrap();
    assert_eq!(c.get(Counter::SourcePortRewritten), u64::from(FLOWS));
}
