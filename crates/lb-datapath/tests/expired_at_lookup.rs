//! A conntrack entry past its deadline that GC has not collected yet counts as absent: a new SYN
//! on its tuple starts a new flow in its place, and a reply to it is not translated. Each case is
//! counted as `conntrack_expired_at_lookup`. (The kernel programs run the same pipeline; the
//! TCP-transition differential suite in lb-bpf compares both worlds on these cases.)

use lb_api::abi::{CtKind, CtState, DatapathConfig};
use lb_api::counters::Counter;
use lb_api::flow::L4Proto;
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_conntrack::ManualClock;
use lb_control::{default_config, ServiceSpec};
use lb_datapath::engine::Engine;

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const VIP: [u8; 4] = [10, 96, 0, 10];
const BACKEND: [u8; 4] = [10, 1, 0, 2];
const T0: u64 = 1_000_000_000_000;

fn engine() -> Engine<ManualClock> {
    let mut e = Engine::with_clock(64, at(T0), ManualClock::new(0));
    e.upsert_service(&ServiceSpec {
        id: 1,
        frontend: "10.96.0.10:80".parse().unwrap(),
        proto: L4Proto::Tcp,
        backends: vec!["10.1.0.2:8080".parse().unwrap()],
        ..Default::default()
    })
    .unwrap();
    e
}

fn at(now: u64) -> DatapathConfig {
    DatapathConfig {
        fixed_now_ns: now,
        ..default_config(7)
    }
}

fn syn() -> Vec<u8> {
    tcp_v4_frame(CLIENT, 40000, VIP, 80, TcpFlags::SYN, b"")
}

fn syn_ack() -> Vec<u8> {
    tcp_v4_frame(
        BACKEND,
        8080,
        CLIENT,
        40000,
        TcpFlags::SYN | TcpFlags::ACK,
        b"",
    )
}

/// The deadline of the flow's service entry, and when it was created.
fn service_entry(e: &Engine<ManualClock>) -> (u64, u64) {
    let (_, s) = e
        .conntrack()
        .iter()
        .find(|(k, _)| k.kind == CtKind::Service as u8)
        .expect("a service entry");
    (s.expires_ns, s.created_ns)
}

#[test]
fn a_syn_to_an_expired_flow_starts_a_new_one() {
    let mut e = engine();
    assert_eq!(e.process(&mut syn()), Verdict::Pass);
    let (deadline, created) = service_entry(&e);
    assert_eq!(created, T0);

    // One ns before the deadline the entry is alive: a retransmitted SYN is the same flow.
    e.set_config(at(deadline - 1));
    e.process(&mut syn());
    assert_eq!(e.counters().get(Counter::ServiceEstablished), 1);
    assert_eq!(e.counters().get(Counter::ConntrackExpiredAtLookup), 0);

    // At its deadline (the retransmission refreshed it) it counts as gone.
    let (deadline, _) = service_entry(&e);
    e.set_config(at(deadline));
    let mut frame = syn();
    assert_eq!(e.process(&mut frame), Verdict::Pass);
    let c = e.counters();
    assert_eq!(c.get(Counter::ConntrackExpiredAtLookup), 1);
    assert_eq!(c.get(Counter::ServiceNewFlow), 2, "a new flow replaced it");
    assert_eq!(c.get(Counter::ServiceEstablished), 1);
    assert_eq!(
        c.get(Counter::SourcePortRewritten),
        0,
        "no collision with its own ghost"
    );
    assert_eq!(e.conntrack().len(), 2, "one pair, the new one");
    let (_, created) = service_entry(&e);
    assert_eq!(created, deadline, "the entry is the new flow's");
    let (_, s) = e
        .conntrack()
        .iter()
        .find(|(k, _)| k.kind == CtKind::Service as u8)
        .unwrap();
    assert_eq!(s.state, CtState::SynSent as u8);
}

#[test]
fn a_reply_to_an_expired_flow_is_not_translated() {
    let mut e = engine();
    e.process(&mut syn());
    let (deadline, _) = service_entry(&e);

    e.set_config(at(deadline));
    let sent = syn_ack();
    let mut frame = sent.clone();
    assert_eq!(e.process(&mut frame), Verdict::Pass);
    assert_eq!(frame, sent, "not translated");
    let c = e.counters();
    assert_eq!(c.get(Counter::ConntrackExpiredAtLookup), 1);
    assert_eq!(c.get(Counter::PassNotService), 1);
    assert_eq!(c.get(Counter::ReplyTranslated), 0);
    assert!(e.conntrack().is_empty(), "both halves are gone");

    // Before the deadline the same reply is translated.
    let mut e = engine();
    e.process(&mut syn());
    e.set_config(at(deadline - 1));
    let mut frame = syn_ack();
    e.process(&mut frame);
    assert_ne!(frame, sent);
    assert_eq!(e.counters().get(Counter::ReplyTranslated), 1);
    assert_eq!(e.counters().get(Counter::ConntrackExpiredAtLookup), 0);
}
