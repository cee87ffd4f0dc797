//! One control-plane sequence through both datapaths, written against `&mut dyn Dataplane`
//! only: the userspace engine and the kernel's maps must answer every call alike (the same
//! configuration, the same refusals, the same service table, the same conntrack entries,
//! counters and drop events after the same packets).

use lb_api::abi::{DatapathConfig, ServiceKey, ServiceValue};
use lb_api::counters::CounterSnapshot;
use lb_api::events::DropEvent;
use lb_api::flow::L4Proto;
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_bpf::{KernelDatapath, Program};
use lb_conntrack::ManualClock;
use lb_control::{
    default_config, BackendSpec, Dataplane, NodeSpec, Selection, ServiceSpec, ServiceStore,
};
use lb_datapath::engine::Engine;

const NOW: u64 = 5_000_000_000_000;

fn config() -> DatapathConfig {
    DatapathConfig {
        fixed_now_ns: NOW,
        ..default_config(0x5eed)
    }
}

fn web() -> ServiceSpec {
    ServiceSpec {
        id: 1,
        frontend: "10.96.0.10:80".parse().unwrap(),
        proto: L4Proto::Tcp,
        backends: vec![
            "10.1.0.2:8080".parse().unwrap(),
            "10.1.0.3:8080".parse().unwrap(),
        ],
        ..Default::default()
    }
}

fn maglev() -> ServiceSpec {
    let mut heavy: BackendSpec = "10.1.0.5:53".parse().unwrap();
    heavy.weight = 3;
    ServiceSpec {
        id: 2,
        frontend: "10.96.0.11:53".parse().unwrap(),
        proto: L4Proto::Udp,
        backends: vec!["10.1.0.4:53".parse().unwrap(), heavy],
        selection: Selection::Maglev { table_size: 251 },
        ..Default::default()
    }
}

fn empty() -> ServiceSpec {
    ServiceSpec {
        id: 3,
        frontend: "10.96.0.12:80".parse().unwrap(),
        proto: L4Proto::Tcp,
        backends: vec![],
        ..Default::default()
    }
}

/// The control plane: every call's result, as text (errors by their message, which names the
/// field).
fn program(dp: &mut dyn Dataplane) -> Vec<String> {
    let mut log = Vec::new();
    let mut note = |what: &str, r: String| log.push(format!("{what}: {r}"));
    note("set_config", format!("{:?}", dp.set_config(&config())));
    note("config", format!("{:?}", dp.config().map(|c| c.hash_seed)));
    let r = dp.set_node(&NodeSpec::default());
    note(
        "set_node(no address)",
        format!("{:?}", r.map_err(|e| e.to_string())),
    );
    let node = NodeSpec {
        address_v4: Some([192, 168, 1, 10].into()),
        peers: vec![[192, 168, 1, 11].into()],
        ..NodeSpec::default()
    };
    note("set_node", format!("{:?}", dp.set_node(&node)));
    note("config after set_node", format!("{:?}", dp.config()));
    for spec in [web(), maglev(), empty()] {
        note("upsert", format!("{:?}", dp.upsert_service(&spec)));
    }
    let mut bad = web();
    bad.backends.push("[fd00::1]:80".parse().unwrap());
    let r = dp.upsert_service(&bad);
    note(
        "upsert(mixed families)",
        format!("{:?}", r.map_err(|e| e.to_string())),
    );
    // Shrink the Maglev service to a random one of one backend, and remove one never added.
    let mut shrunk = maglev();
    shrunk.selection = Selection::Random;
    shrunk.backends.truncate(1);
    note(
        "upsert(shrunk)",
        format!("{:?}", dp.upsert_service(&shrunk)),
    );
    let mut absent = web();
    absent.id = 9;
    absent.frontend = "10.96.0.99:80".parse().unwrap();
    note(
        "remove(absent)",
        format!("{:?}", dp.remove_service(&absent)),
    );
    note("reset_counters", format!("{:?}", dp.reset_counters()));
    note(
        "drain (fresh)",
        format!("{:?}", dp.drain_drop_events().map(|v| v.len())),
    );
    log
}

/// What a control plane reads back.
#[derive(Debug, PartialEq)]
struct Observed {
    conntrack: Vec<(lb_api::abi::CtKey, lb_api::abi::CtEntry)>,
    counters: CounterSnapshot,
    /// Drop events without the interface (the kernel's test runs name loopback, the engine none).
    drops: Vec<DropEvent>,
}

fn observe(dp: &mut dyn Dataplane) -> Observed {
    Observed {
        conntrack: dp.conntrack_entries().unwrap(),
        counters: dp.counters().unwrap(),
        drops: dp
            .drain_drop_events()
            .unwrap()
            .into_iter()
            .map(|e| DropEvent { ifindex: 0, ..e })
            .collect(),
    }
}

/// The service table as the store holds it, for every frontend the sequence touched.
fn services<S: ServiceStore + ?Sized>(s: &S) -> Vec<Option<ServiceValue>> {
    let keys: Vec<ServiceKey> = [web(), maglev(), empty()]
        .iter()
        .map(ServiceSpec::key)
        .collect();
    keys.iter().map(|k| s.get_service(k)).collect()
}

fn frames() -> Vec<Vec<u8>> {
    let syn = |dst, port| tcp_v4_frame([10, 0, 0, 1], port, dst, 80, TcpFlags::SYN, b"");
    vec![
        syn([10, 96, 0, 10], 40_000),
        syn([10, 96, 0, 10], 40_001),
        // To the service without backends: a reset is dropped, a SYN is answered with one.
        tcp_v4_frame(
            [10, 0, 0, 1],
            40_002,
            [10, 96, 0, 12],
            80,
            TcpFlags::RST,
            b"",
        ),
        syn([10, 96, 0, 12], 40_003),
    ]
}

#[test]
fn engine_and_kernel_answer_one_control_plane_sequence_alike() {
    if !lb_testbed::gate::privileged_test(
        "engine_and_kernel_answer_one_control_plane_sequence_alike",
    ) {
        return;
    }
    let mut engine = Engine::with_clock(1024, default_config(0), ManualClock::new(0));
    let mut kernel = KernelDatapath::load().unwrap_or_else(|e| panic!("{e}"));

    let engine_log = program(&mut engine);
    let kernel_log = program(&mut kernel);
    assert_eq!(engine_log, kernel_log);
    // The refusals carry the field, from both alike.
    assert!(engine_log[2].contains("address_v4"), "{}", engine_log[2]);
    assert!(engine_log[8].contains("backends"), "{}", engine_log[8]);
    assert_eq!(services(&engine), services(&kernel));
    assert_eq!(services(&engine)[1].map(|v| v.backend_count), Some(1));

    let mut verdicts = (Vec::new(), Vec::new());
    for f in frames() {
        let mut e = f.clone();
        verdicts.0.push(engine.process(&mut e));
        let k = kernel.test_run(Program::Xdp, &f, 1).unwrap();
        verdicts.1.push(k.verdict);
        assert_eq!(e, k.data, "the same frame out of both");
    }
    assert_eq!(verdicts.0, verdicts.1);
    assert_eq!(
        verdicts.0,
        [Verdict::Pass, Verdict::Pass, Verdict::Drop, Verdict::Tx]
    );

    let (e, k) = (observe(&mut engine), observe(&mut kernel));
    assert_eq!(e.conntrack.len(), 4, "two flows, two entries each");
    assert_eq!(e.drops.len(), 1);
    assert_eq!(e, k);

    // Removing, flushing and resetting through the trait leaves both empty alike.
    for dp in [&mut engine as &mut dyn Dataplane, &mut kernel] {
        for spec in [web(), maglev(), empty()] {
            dp.remove_service(&spec).unwrap();
        }
        dp.flush_conntrack().unwrap();
        dp.reset_counters().unwrap();
    }
    let (e, k) = (observe(&mut engine), observe(&mut kernel));
    assert_eq!(e, k);
    assert!(e.conntrack.is_empty() && e.drops.is_empty());
    assert_eq!(e.counters, CounterSnapshot::default());
    assert_eq!(services(&engine), vec![None, None, None]);
    assert_eq!(services(&engine), services(&kernel));
}
