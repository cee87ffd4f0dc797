//! Every conntrack insert site of the pipeline failing in turn, in both worlds: tables sized to
//! a handful of entries (`EngineAndKernel::with_sizes`: the kernel's map loaded at that size,
//! the engine's bounded alike), packets compared after every one (bytes, verdicts, conntrack
//! contents, counters, drop events). For each site: the pair is never left half-present, the
//! refusal is counted under its reason and is a drop event, and a later packet repairs what a
//! failed repair left.
//!
//! Sites: the reverse entry of a new flow (first insert), its service entry (second insert,
//! after the reverse one succeeded: the reverse one is removed again), the SNAT allocator's
//! reservation, and the rebuild of a lost reverse entry.

mod common;

use std::net::{IpAddr, SocketAddr};

use lb_api::abi::{CtKind, ForwardingMode};
use lb_api::counters::{Counter, DropReason};
use lb_api::flow::L4Proto;
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_conntrack::{partner_key, ManualClock};
use lb_control::{default_config, BackendSpec, NodeSpec, ServiceSpec, TableSizes};
use lb_testbed::harness::{EngineAndKernel, Outcome};

const SEC: u64 = 1_000_000_000;
const VIP: [u8; 4] = [10, 96, 0, 10];
const SNAT_VIP: [u8; 4] = [10, 96, 0, 11];
const BACKEND: [u8; 4] = [10, 1, 0, 2];

fn pair(program: lb_bpf::Program, conntrack: u32) -> EngineAndKernel<ManualClock> {
    let sizes = TableSizes {
        conntrack,
        ..TableSizes::small()
    };
    let services = [
        ServiceSpec {
            id: 1,
            frontend: (VIP, 80).into(),
            proto: L4Proto::Tcp,
            backends: vec![SocketAddr::from((BACKEND, 8080)).into()],
            ..Default::default()
        },
        ServiceSpec {
            id: 2,
            frontend: (SNAT_VIP, 80).into(),
            proto: L4Proto::Tcp,
            mode: ForwardingMode::Snat,
            backends: vec![BackendSpec {
                node: Some(IpAddr::from([192, 168, 1, 11])),
                ..SocketAddr::from(([10, 2, 0, 3], 8080)).into()
            }],
            ..Default::default()
        },
    ];
    let mut p = EngineAndKernel::with_sizes(
        program,
        default_config(7),
        ManualClock::new(0),
        &sizes,
        &services,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    p.set_node(&NodeSpec {
        address_v4: Some([192, 168, 1, 10].into()),
        peers: vec![IpAddr::from([192, 168, 1, 11])],
        ..Default::default()
    })
    .unwrap();
    p
}

fn syn(port: u16, vip: [u8; 4]) -> Vec<u8> {
    tcp_v4_frame([10, 0, 0, 1], port, vip, 80, TcpFlags::SYN, b"")
}

/// Every entry has its partner, in both worlds (the harness compared them equal).
fn whole_pairs(p: &EngineAndKernel<ManualClock>) {
    let entries = p.engine_conntrack();
    for (k, e) in &entries {
        let partner = partner_key(k, e).unwrap();
        assert!(
            entries.iter().any(|(x, _)| *x == partner),
            "half a pair: {k:?}"
        );
    }
}

fn refused(out: &Outcome, reason: DropReason) {
    assert_eq!(out.verdict, Verdict::Drop);
    assert_eq!(out.after.drops(reason), out.before.drops(reason) + 1);
    assert_eq!(out.drop_events.len(), 1);
    assert_eq!(out.drop_events[0].reason, reason);
}

#[test]
fn each_conntrack_insert_fails_in_turn_in_both_worlds() {
    if !common::privileged("each_conntrack_insert_fails_in_turn_in_both_worlds") {
        return;
    }
    for program in [lb_bpf::Program::Xdp, lb_bpf::Program::Tc] {
        // Room for one flow: the next flow's reverse entry (its first insert) is refused.
        let mut p = pair(program, 2);
        p.expect_same("first flow", &syn(40_000, VIP), SEC);
        let out = p.expect_same("reverse insert refused", &syn(40_001, VIP), SEC);
        refused(&out, DropReason::ConntrackFull);
        assert_eq!(p.engine_conntrack().len(), 2);
        whole_pairs(&p);
        // The SNAT allocator's reservation refused for a full table: counted as full, not
        // as exhausted ports.
        let out = p.expect_same("SNAT reservation refused", &syn(40_002, SNAT_VIP), SEC);
        refused(&out, DropReason::ConntrackFull);
        assert_eq!(out.after.drops(DropReason::SnatPortsExhausted), 0);
        assert_eq!(p.engine_conntrack().len(), 2);

        // Room for one flow and a half: the reverse entry goes in, the service entry is
        // refused, and the reverse entry is removed again.
        let mut p = pair(program, 3);
        p.expect_same("first flow", &syn(40_000, VIP), SEC);
        let out = p.expect_same("service insert refused", &syn(40_001, VIP), SEC);
        refused(&out, DropReason::ConntrackFull);
        assert_eq!(
            p.engine_conntrack().len(),
            2,
            "{program:?}: no half pair left"
        );
        whole_pairs(&p);

        // The rebuild of a lost reverse entry refused: the flow goes on, counted; once there
        // is room again, its next packet rebuilds it.
        let (k, e) = p
            .engine_conntrack()
            .into_iter()
            .find(|(k, _)| k.kind == CtKind::Service as u8)
            .unwrap();
        let rk = partner_key(&k, &e).unwrap();
        assert!(p.engine.conntrack_remove(&rk));
        assert!(p.dp.conntrack_remove(&rk).unwrap());
        p.expect_same("second flow takes the room", &syn(40_003, VIP), SEC);
        let ack = tcp_v4_frame([10, 0, 0, 1], 40_000, VIP, 80, TcpFlags::ACK, b"");
        let out = p.expect_same("rebuild refused", &ack, 2 * SEC);
        assert_eq!(out.verdict, Verdict::Pass);
        let c = Counter::ReverseEntryRebuildFailed;
        assert_eq!(out.after.get(c), out.before.get(c) + 1);
        // Room again (the second flow's entries deleted): the rebuild succeeds.
        let second: Vec<_> = p
            .engine_conntrack()
            .into_iter()
            .map(|(k2, _)| k2)
            .filter(|k2| *k2 != k)
            .collect();
        for k2 in second {
            assert!(p.engine.conntrack_remove(&k2));
            assert!(p.dp.conntrack_remove(&k2).unwrap());
        }
        let out = p.expect_same("rebuild succeeds", &ack, 3 * SEC);
        let c = Counter::ReverseEntryRebuilt;
        assert_eq!(out.after.get(c), out.before.get(c) + 1);
        whole_pairs(&p);
    }
}
