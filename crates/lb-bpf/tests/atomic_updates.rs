//! Atomic service updates and removed backends, in both worlds (the userspace engine and the
//! kernel programs under `BPF_PROG_TEST_RUN`, compared by [`lb_testbed::harness`]).
//!
//! The update property drives `lb_control::upsert_service` through a store that applies each
//! write to both worlds and, between writes, sends the first packet of a new flow: every such
//! flow must land on a backend of the set the service entry named at that moment (the old set
//! until the flip, the new one after), the worlds must agree on every packet and table, flows
//! to backends still in the spec must not move, and flows to backends that left must be gone.

mod common;

use std::cell::RefCell;
use std::net::SocketAddr;

use common::privileged;
use lb_api::abi::{
    BackendAddrKey, BackendKey, BackendValue, CtEntry, CtKey, CtKind, NodeKey, ServiceKey,
    ServiceValue,
};
use lb_api::counters::Counter;
use lb_api::flow::{v4_addr, L4Proto};
use lb_api::wire::testing::{tcp_v4_frame, udp_v4_frame};
use lb_api::wire::TcpFlags as F;
use lb_api::Verdict;
use lb_bpf::{KernelDatapath, LoadOptions, Program};
use lb_conntrack::ManualClock;
use lb_control::{
    default_config, upsert_service, BackendSpec, BackendState, ConfigError, Dataplane, Selection,
    ServiceSpec, ServiceStore, TableSizes,
};
use lb_datapath::engine::Engine;
use lb_testbed::harness::EngineAndKernel;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const VIP: [u8; 4] = [10, 96, 0, 10];
const NOW: u64 = 1_000_000_000_000;
/// The backends a service's sets are drawn from: 10.1.0.1-6, port 8080.
const UNIVERSE: u8 = 6;

fn backend_addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 1, 0, i + 1], 8080))
}

/// The backend a translated frame (Ethernet, IPv4 without options, TCP or UDP) goes to.
fn dst_of(frame: &[u8]) -> SocketAddr {
    let ip: [u8; 4] = frame[30..34].try_into().unwrap();
    SocketAddr::from((ip, u16::from_be_bytes([frame[36], frame[37]])))
}

/// One step of the property: each backend of the universe absent (0), active (1) or
/// terminating (2); the selection; how many writes between two probes.
#[derive(Debug, Clone)]
struct Step {
    states: Vec<u8>,
    maglev: bool,
    stride: usize,
}

fn spec_of(proto: L4Proto, step: &Step) -> ServiceSpec {
    let backends = step
        .states
        .iter()
        .enumerate()
        .filter(|(_, s)| **s != 0)
        .map(|(i, s)| BackendSpec {
            state: if *s == 2 {
                BackendState::Terminating
            } else {
                BackendState::Active
            },
            ..BackendSpec::from(backend_addr(i as u8))
        })
        .collect();
    ServiceSpec {
        id: 7,
        frontend: SocketAddr::from((VIP, 80)),
        proto,
        backends,
        selection: if step.maglev {
            Selection::Maglev { table_size: 251 }
        } else {
            Selection::Random
        },
        ..Default::default()
    }
}

/// The backends of `spec` taking new flows.
fn active(spec: &ServiceSpec) -> Vec<SocketAddr> {
    spec.backends
        .iter()
        .filter(|b| b.state == BackendState::Active)
        .map(|b| b.addr)
        .collect()
}

/// A store writing into both worlds, probing with a new flow every `stride` writes.
struct Interleaved<'h> {
    h: &'h mut EngineAndKernel,
    key: ServiceKey,
    /// Backends taking new flows in the set the service entry names now.
    current: Vec<SocketAddr>,
    /// The same for the set being written.
    next: Vec<SocketAddr>,
    stride: usize,
    writes: usize,
    client_port: u16,
    probes: usize,
}

impl Interleaved<'_> {
    fn wrote(&mut self) {
        self.writes += 1;
        if self.writes.is_multiple_of(self.stride) {
            self.probe();
        }
    }

    /// The first packet of a new flow: it lands on a backend of the set in force, or, with
    /// none, is not translated.
    fn probe(&mut self) {
        self.client_port = self.client_port.wrapping_add(1).max(1024);
        let syn = tcp_v4_frame(CLIENT, self.client_port, VIP, 80, F::SYN, b"");
        let out = self.h.expect_same("a new flow during an update", &syn, NOW);
        self.probes += 1;
        if self.current.is_empty() {
            // No service yet (passed as it is), or none of its backends takes new flows
            // (rejected back to the client as kube-proxy does, or dropped).
            let untouched = dst_of(&out.frame) == SocketAddr::from((VIP, 80));
            assert!(
                matches!(out.verdict, Verdict::Drop | Verdict::Tx) || untouched,
                "no backend: no flow"
            );
            return;
        }
        let to = dst_of(&out.frame);
        assert!(
            self.current.contains(&to),
            "new flow to {to}, outside the set in force {:?}",
            self.current
        );
    }
}

impl ServiceStore for Interleaved<'_> {
    fn put_node(&mut self, key: NodeKey) -> Result<(), ConfigError> {
        let r = self.h.engine.put_node(key);
        assert_eq!(self.h.dp.put_node(key), r);
        r
    }
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), ConfigError> {
        let r = self.h.engine.put_service(key, value);
        assert_eq!(self.h.dp.put_service(key, value), r);
        if r.is_ok() && key == self.key {
            self.current = std::mem::take(&mut self.next);
        }
        self.wrote();
        r
    }
    fn put_backend(&mut self, key: BackendKey, value: BackendValue) -> Result<(), ConfigError> {
        let r = self.h.engine.put_backend(key, value);
        assert_eq!(self.h.dp.put_backend(key, value), r);
        self.wrote();
        r
    }
    fn get_service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        let v = self.h.engine.get_service(key);
        assert_eq!(self.h.dp.get_service(key), v);
        v
    }
    fn get_backend(&self, key: &BackendKey) -> Option<BackendValue> {
        let v = self.h.engine.get_backend(key);
        assert_eq!(self.h.dp.get_backend(key), v);
        v
    }
    fn remove_backend(&mut self, key: &BackendKey) {
        self.h.engine.remove_backend(key);
        self.h.dp.remove_backend(key);
        self.wrote();
    }
    fn remove_service(&mut self, key: &ServiceKey) {
        ServiceStore::remove_service(&mut self.h.engine, key);
        ServiceStore::remove_service(&mut self.h.dp, key);
        self.wrote();
    }
    fn for_each_flow(&mut self, f: &mut dyn FnMut(&CtKey, &CtEntry)) -> Result<(), ConfigError> {
        // The worlds hold the same entries (compared after every packet): either's will do.
        self.h.engine.for_each_flow(f)
    }
    fn delete_flow_entry(&mut self, key: &CtKey) -> Result<bool, ConfigError> {
        let r = self.h.engine.delete_flow_entry(key);
        assert_eq!(self.h.dp.delete_flow_entry(key), r);
        r
    }
    fn count_backend_flows_removed(&mut self, flows: u64) -> Result<(), ConfigError> {
        self.h.engine.count_backend_flows_removed(flows)?;
        self.h.dp.count_backend_flows_removed(flows)
    }
    fn put_backend_by_addr(
        &mut self,
        key: BackendAddrKey,
        value: BackendValue,
    ) -> Result<(), ConfigError> {
        let r = self.h.engine.put_backend_by_addr(key, value);
        assert_eq!(self.h.dp.put_backend_by_addr(key, value), r);
        self.wrote();
        r
    }
    fn remove_backend_by_addr(&mut self, key: &BackendAddrKey) {
        self.h.engine.remove_backend_by_addr(key);
        self.h.dp.remove_backend_by_addr(key);
        self.wrote();
    }
}

/// Both worlds' service and backend tables, equal, and the engine's conntrack.
fn assert_same_tables(h: &EngineAndKernel) {
    let t = &h.engine.tables().services;
    let mut services: Vec<_> = t.services.iter().map(|(k, v)| (*k, *v)).collect();
    services.sort_by_key(|(k, _)| (k.addr, k.port, k.proto));
    let mut kernel_services = h.dp.service_entries().unwrap();
    kernel_services.sort_by_key(|(k, _)| (k.addr, k.port, k.proto));
    assert_eq!(kernel_services, services, "service tables");
    let mut slots: Vec<_> = t.backends.iter().map(|(k, v)| (*k, *v)).collect();
    slots.sort_by_key(|(k, _)| (k.service_id, k.slot));
    let mut kernel_slots = h.dp.backend_slots().unwrap();
    kernel_slots.sort_by_key(|(k, _)| (k.service_id, k.slot));
    assert_eq!(kernel_slots, slots, "backend slot tables");
    assert_eq!(h.dp.conntrack_entries().unwrap(), h.engine_conntrack());
}

/// The service entries (client port, backend) of the flows the engine holds.
fn flows(h: &EngineAndKernel) -> Vec<(u16, SocketAddr)> {
    h.engine_conntrack()
        .iter()
        .filter(|(k, _)| k.kind == CtKind::Service as u8)
        .map(|(k, e)| {
            let a = [e.nat_addr[0], e.nat_addr[1], e.nat_addr[2], e.nat_addr[3]];
            assert_eq!(v4_addr(a), e.nat_addr);
            (k.src_port, SocketAddr::from((a, e.nat_port)))
        })
        .collect()
}

fn step() -> impl Strategy<Value = Step> {
    (
        proptest::collection::vec(0u8..3, UNIVERSE as usize),
        any::<bool>(),
        1usize..6,
    )
        .prop_map(|(states, maglev, stride)| Step {
            states,
            maglev,
            stride: if maglev { stride * 60 } else { stride },
        })
}

#[test]
fn every_new_flow_lands_in_the_set_in_force_while_updates_flip_sets() {
    if !privileged("every_new_flow_lands_in_the_set_in_force_while_updates_flip_sets") {
        return;
    }
    let h = EngineAndKernel::new(Program::Xdp, default_config(3), &[]).unwrap();
    // (harness, next client port, updates, probes): the property closure is `Fn`.
    let state = RefCell::new((h, 1024u16, 0usize, 0usize));
    let mut runner = TestRunner::new(Config {
        cases: 12,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(step(), 1..6), |steps| {
            let (h, port, updates, probes) = &mut *state.borrow_mut();
            h.dp.flush_conntrack().unwrap();
            h.engine.flush_conntrack().unwrap();
            for s in &steps {
                let spec = spec_of(L4Proto::Tcp, s);
                let before = flows(h);
                let current = current_active(h);
                let mut store = Interleaved {
                    key: spec.key(),
                    current,
                    next: active(&spec),
                    h: &mut *h,
                    stride: s.stride,
                    writes: 0,
                    client_port: *port,
                    probes: 0,
                };
                upsert_service(&mut store, &spec).unwrap();
                store.probe();
                *port = store.client_port;
                *probes += store.probes;
                *updates += 1;
                assert_same_tables(h);
                // Flows to backends still in the spec stay where they were; the others are gone.
                let kept: Vec<SocketAddr> = spec.backends.iter().map(|b| b.addr).collect();
                let after = flows(h);
                for f in &before {
                    prop_assert_eq!(
                        after.contains(f),
                        kept.contains(&f.1),
                        "flow {:?}: kept exactly when its backend stays",
                        f
                    );
                }
                // An established flow's next packet goes where it went.
                for (p, to) in after.iter().filter(|f| before.contains(f)) {
                    let ack = tcp_v4_frame(CLIENT, *p, VIP, 80, F::ACK, b"x");
                    let out = h.expect_same("an established flow after an update", &ack, NOW);
                    prop_assert_eq!(dst_of(&out.frame), *to);
                }
            }
            Ok(())
        })
        .unwrap();
    let (_, _, updates, probes) = &*state.borrow();
    println!("{updates} updates, {probes} new flows probed between their writes");
}

/// The backends taking new flows of the service as the engine's tables hold it now.
fn current_active(h: &EngineAndKernel) -> Vec<SocketAddr> {
    let t = &h.engine.tables().services;
    let Some(v) = t.services.values().next() else {
        return Vec::new();
    };
    (0..v.backend_count)
        .filter_map(|s| t.backends.get(&v.slot_key(s)))
        .map(|b| SocketAddr::from(([b.addr[0], b.addr[1], b.addr[2], b.addr[3]], b.port)))
        .collect()
}

#[test]
fn flows_to_removed_backends_end_in_both_worlds_and_are_counted() {
    if !privileged("flows_to_removed_backends_end_in_both_worlds_and_are_counted") {
        return;
    }
    let all = Step {
        states: vec![1, 1, 1, 0, 0, 0],
        maglev: false,
        stride: 1,
    };
    let udp = spec_of(L4Proto::Udp, &all);
    let mut tcp = spec_of(L4Proto::Tcp, &all);
    tcp.id = 8;
    let mut h =
        EngineAndKernel::new(Program::Xdp, default_config(5), &[udp.clone(), tcp.clone()]).unwrap();
    // 60 UDP and 60 TCP flows over the three backends.
    let mut to = std::collections::HashMap::new();
    for p in 2000..2060u16 {
        let out = h.expect_same("udp", &udp_v4_frame(CLIENT, p, VIP, 80, b"q"), NOW);
        to.insert((L4Proto::Udp, p), dst_of(&out.frame));
        let out = h.expect_same("syn", &tcp_v4_frame(CLIENT, p, VIP, 80, F::SYN, b""), NOW);
        to.insert((L4Proto::Tcp, p), dst_of(&out.frame));
    }
    let gone = backend_addr(0);
    let on_gone = |proto| {
        to.iter()
            .filter(|((pr, _), b)| *pr == proto && **b == gone)
            .count()
    };
    let (udp_on_gone, tcp_on_gone) = (on_gone(L4Proto::Udp), on_gone(L4Proto::Tcp));
    assert!(udp_on_gone > 0 && tcp_on_gone > 0);

    // Backend 0 leaves the UDP service: its UDP flows go (both halves), in both worlds alike.
    let mut smaller = udp.clone();
    smaller.backends.remove(0);
    h.engine.upsert_service(&smaller).unwrap();
    h.dp.upsert_service(&smaller).unwrap();
    assert_same_tables(&h);
    let removed = h.engine.counters().get(Counter::CtBackendRemoved);
    assert_eq!(removed, udp_on_gone as u64);
    assert_eq!(
        h.dp.counters().unwrap().get(Counter::CtBackendRemoved),
        removed
    );
    assert_eq!(h.engine.conntrack().len(), 4 * 60 - 2 * udp_on_gone);
    // The next datagram of such a flow is a new flow to a live backend.
    for ((proto, p), b) in &to {
        if *proto == L4Proto::Udp && *b == gone {
            let out = h.expect_same(
                "udp after removal",
                &udp_v4_frame(CLIENT, *p, VIP, 80, b"q"),
                NOW,
            );
            assert_eq!(
                out.after.get(Counter::ServiceNewFlow),
                out.before.get(Counter::ServiceNewFlow) + 1
            );
            assert_ne!(dst_of(&out.frame), gone);
        }
    }

    // A backend draining from the TCP service keeps its flows (terminating: in the spec, taking
    // no new flows)...
    tcp.backends[0].state = BackendState::Terminating;
    h.engine.upsert_service(&tcp).unwrap();
    h.dp.upsert_service(&tcp).unwrap();
    assert_eq!(flows_to(&h, tcp.id, gone), tcp_on_gone as u64);
    // ...until it is gone without an update saying so (its pod died): the explicit call ends
    // them, counted.
    assert_eq!(
        h.engine.flush_backend_flows(gone, L4Proto::Tcp),
        tcp_on_gone as u64
    );
    assert_eq!(
        h.dp.flush_backend_flows(gone, L4Proto::Tcp).unwrap(),
        tcp_on_gone as u64
    );
    assert_same_tables(&h);
    assert_eq!(
        h.dp.counters().unwrap().get(Counter::CtBackendRemoved),
        (udp_on_gone + tcp_on_gone) as u64
    );
    // The client's next segment of such a connection is a new flow to a live backend, which
    // has no such connection and answers with a reset (the real-traffic test sees that).
    for ((proto, p), b) in &to {
        if *proto == L4Proto::Tcp && *b == gone {
            let ack = tcp_v4_frame(CLIENT, *p, VIP, 80, F::ACK, b"x");
            let out = h.expect_same("tcp after the flush", &ack, NOW);
            assert_eq!(
                out.after.get(Counter::ServiceNewFlow),
                out.before.get(Counter::ServiceNewFlow) + 1
            );
            assert_ne!(dst_of(&out.frame), gone);
        }
    }
    // Removing a service removes every flow of it, and only of it.
    let udp_flows = flows_of(&h, udp.id);
    let tcp_flows = flows_of(&h, tcp.id);
    assert_eq!(h.engine.remove_service(&tcp), tcp_flows);
    assert_eq!(h.dp.remove_service(&tcp).unwrap(), tcp_flows);
    assert_same_tables(&h);
    assert_eq!(flows_of(&h, tcp.id), 0);
    assert_eq!(flows_of(&h, udp.id), udp_flows);
    assert_eq!(
        h.dp.counters().unwrap(),
        *h.engine.counters(),
        "counters, ct_backend_removed included"
    );
}

/// The flows (service entries) of service `id` to `backend`.
fn flows_to(h: &EngineAndKernel, id: u32, backend: SocketAddr) -> u64 {
    let SocketAddr::V4(b) = backend else {
        return 0;
    };
    h.engine_conntrack()
        .iter()
        .filter(|(k, e)| {
            k.kind == CtKind::Service as u8
                && e.service_id == id
                && e.nat_addr == v4_addr(b.ip().octets())
                && e.nat_port == b.port()
        })
        .count() as u64
}

/// The flows (service entries) of service `id`.
fn flows_of(h: &EngineAndKernel, id: u32) -> u64 {
    h.engine_conntrack()
        .iter()
        .filter(|(k, e)| k.kind == CtKind::Service as u8 && e.service_id == id)
        .count() as u64
}

/// A full backend table midway through an update, in both worlds: the same typed error naming
/// the table, and the old set still whole and in force.
#[test]
fn a_full_backend_table_midway_leaves_the_old_set_in_force_in_both_worlds() {
    if !privileged("a_full_backend_table_midway_leaves_the_old_set_in_force_in_both_worlds") {
        return;
    }
    let sizes = TableSizes {
        backends: 300,
        ..TableSizes::default()
    };
    let mut engine = Engine::with_sizes(&sizes, default_config(9), ManualClock::new(1));
    let mut kernel = KernelDatapath::load_with(&LoadOptions::with_sizes(sizes)).unwrap();
    kernel.flush_conntrack().unwrap();
    Dataplane::set_config(&mut kernel, &default_config(9)).unwrap();
    let old = Step {
        states: vec![1, 1, 0, 0, 0, 0],
        maglev: true,
        stride: 1,
    };
    let new = Step {
        states: vec![0, 0, 1, 1, 1, 0],
        maglev: true,
        stride: 1,
    };
    let (a, b) = (spec_of(L4Proto::Tcp, &old), spec_of(L4Proto::Tcp, &new));
    for dp in [&mut engine as &mut dyn Dataplane, &mut kernel] {
        dp.upsert_service(&a).unwrap();
        // 251 new slots beside the 251 in use do not fit 300.
        let e = dp.upsert_service(&b).unwrap_err();
        assert_eq!(
            e.config(),
            Some(&ConfigError::TableFull {
                table: "LB_BACKENDS",
                capacity: 300,
                knob: "TableSizes::backends"
            })
        );
    }
    let slots: Vec<_> = {
        let mut v: Vec<_> = engine
            .tables()
            .services
            .backends
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        v.sort_by_key(|(k, _)| (k.service_id, k.slot));
        v
    };
    let mut kernel_slots = kernel.backend_slots().unwrap();
    kernel_slots.sort_by_key(|(k, _)| (k.service_id, k.slot));
    assert_eq!(kernel_slots, slots);
    assert_eq!(
        slots.len(),
        251,
        "the old set, whole; nothing of the new one"
    );
    // New flows still go to the old set, in both worlds alike.
    let olds = active(&a);
    for p in 3000..3050u16 {
        let syn = tcp_v4_frame(CLIENT, p, VIP, 80, F::SYN, b"");
        let k = kernel.test_run(Program::Xdp, &syn, 1).unwrap();
        let mut u = syn.clone();
        assert_eq!(engine.process(&mut u), k.verdict);
        assert_eq!(k.data, u);
        assert!(olds.contains(&dst_of(&u)), "{}", dst_of(&u));
    }
}
