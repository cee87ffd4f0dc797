//! Session affinity (`SessionAffinity::ClientIp`) through the pipeline: a client keeps its
//! backend across connections, across backend-set updates while the backend stays, and for
//! the timeout; a gone backend or an expired entry is replaced; the counters say which.

use std::collections::HashSet;
use std::net::SocketAddr;

use lb_api::counters::Counter;
use lb_api::flow::L4Proto;
use lb_api::wire::testing::tcp_v4_frame;
use lb_api::wire::TcpFlags;
use lb_api::Verdict;
use lb_conntrack::ManualClock;
use lb_control::{
    default_config, BackendSpec, ConfigError, Dataplane, Selection, ServiceSpec, SessionAffinity,
    TableSizes,
};
use lb_datapath::engine::Engine;

const VIP: [u8; 4] = [10, 96, 0, 10];
const SECOND: u64 = 1_000_000_000;

fn engine() -> Engine<ManualClock> {
    Engine::with_clock(1 << 16, default_config(9), ManualClock::new(SECOND))
}

fn backend(i: u8) -> BackendSpec {
    BackendSpec::from(SocketAddr::from(([10, 1, 0, i], 8080)))
}

fn spec(backends: &[u8], timeout_s: u32, selection: Selection) -> ServiceSpec {
    ServiceSpec {
        id: 1,
        frontend: SocketAddr::from((VIP, 80)),
        proto: L4Proto::Tcp,
        backends: backends.iter().map(|&i| backend(i)).collect(),
        selection,
        affinity: SessionAffinity::ClientIp { timeout_s },
        ..Default::default()
    }
}

/// A SYN from client `c` (10.0.0.c) port `p`: the backend's last address byte.
fn connect(e: &mut Engine<ManualClock>, c: u8, p: u16) -> u8 {
    let mut f = tcp_v4_frame([10, 0, 0, c], p, VIP, 80, TcpFlags::SYN, b"");
    assert_eq!(e.process(&mut f), Verdict::Pass);
    f[33]
}

#[test]
fn a_client_keeps_its_backend_across_connections_and_clients_spread() {
    for selection in [Selection::Random, Selection::Maglev { table_size: 251 }] {
        let mut e = engine();
        e.upsert_service(&spec(&[1, 2, 3, 4], 60, selection))
            .unwrap();
        let mut firsts = HashSet::new();
        for c in 1..=40 {
            let first = connect(&mut e, c, 20_000);
            for p in 20_001..20_020 {
                assert_eq!(connect(&mut e, c, p), first, "client {c}, port {p}");
            }
            firsts.insert(first);
        }
        // Without affinity, one client's ports spread (the flow hash): with it, they do not,
        // and 40 clients still reach more than one backend.
        assert!(firsts.len() > 1, "{selection:?}: {firsts:?}");
        let n = e.counters();
        assert_eq!(n.get(Counter::AffinityMiss), 40);
        assert_eq!(n.get(Counter::AffinityHit), 40 * 19);
        assert_eq!(n.get(Counter::AffinityStale), 0);
        assert_eq!(e.affinity_entries().unwrap().len(), 40);
    }
}

#[test]
fn affinity_survives_set_updates_while_the_backend_stays_and_expires() {
    let mut e = engine();
    e.upsert_service(&spec(&[1, 2, 3, 4], 60, Selection::Random))
        .unwrap();
    let mine: Vec<u8> = (1..=20).map(|c| connect(&mut e, c, 30_000)).collect();
    // A backend-set update that moves every slot (one added in front, one removed): clients
    // whose backend stays keep it.
    let removed = mine[0];
    let mut now: Vec<u8> = [1, 2, 3, 4].into_iter().filter(|&b| b != removed).collect();
    now.insert(0, 9);
    e.upsert_service(&spec(&now, 60, Selection::Random))
        .unwrap();
    let stale_before = e.counters().get(Counter::AffinityStale);
    for (i, &b) in mine.iter().enumerate() {
        let c = i as u8 + 1;
        let got = connect(&mut e, c, 30_001);
        if b == removed {
            assert_ne!(got, removed, "client {c}: its backend left the set");
            // ... and the new pick sticks.
            assert_eq!(connect(&mut e, c, 30_002), got);
        } else {
            assert_eq!(got, b, "client {c} keeps backend .{b}");
        }
    }
    let gone = mine.iter().filter(|&&b| b == removed).count() as u64;
    assert_eq!(
        e.counters().get(Counter::AffinityStale) - stale_before,
        gone
    );

    // A hit refreshes the entry: 50 s later, then 50 s later again (100 s after the first
    // use, within 60 s of the last), the client still sticks.
    let c = 1;
    let b = connect(&mut e, c, 30_003);
    e.clock().advance(50 * SECOND);
    assert_eq!(connect(&mut e, c, 30_004), b);
    e.clock().advance(50 * SECOND);
    assert_eq!(connect(&mut e, c, 30_005), b);
    // 60 s without a new connection: expired, a stale entry replaced.
    e.clock().advance(60 * SECOND);
    let stale = e.counters().get(Counter::AffinityStale);
    connect(&mut e, c, 30_006);
    assert_eq!(e.counters().get(Counter::AffinityStale), stale + 1);
    let entry = e
        .affinity_entries()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k.client[..4] == [10, 0, 0, c])
        .unwrap()
        .1;
    assert_eq!(entry.timeout_s, 60);
    assert_eq!(entry.last_used_ns, SECOND + 160 * SECOND);

    // Removing the service removes its backends by address: nothing for an entry to find.
    e.remove_service(&spec(&now, 60, Selection::Random));
    assert!(e.tables().services.backends_by_addr.is_empty());
}

#[test]
fn services_without_affinity_leave_the_table_alone() {
    let mut e = engine();
    let mut s = spec(&[1, 2, 3], 60, Selection::Random);
    s.affinity = SessionAffinity::None;
    e.upsert_service(&s).unwrap();
    let spread: HashSet<u8> = (0..50).map(|p| connect(&mut e, 1, 40_000 + p)).collect();
    assert!(spread.len() > 1, "one client's flows spread by hash");
    assert!(e.affinity_entries().unwrap().is_empty());
    let n = e.counters();
    assert_eq!(
        n.get(Counter::AffinityHit) + n.get(Counter::AffinityMiss),
        0
    );
}

#[test]
fn a_full_affinity_table_evicts_the_least_recently_used_and_sizes_are_checked() {
    let sizes = TableSizes {
        affinity: 4,
        backends_by_addr: 2,
        ..TableSizes::small()
    };
    let mut e = Engine::with_sizes(&sizes, default_config(9), ManualClock::new(SECOND));
    e.upsert_service(&spec(&[1, 2], 60, Selection::Random))
        .unwrap();
    for c in 1..=6 {
        e.clock().advance(SECOND);
        connect(&mut e, c, 50_000);
    }
    let clients: Vec<u8> = e
        .affinity_entries()
        .unwrap()
        .iter()
        .map(|(k, _)| k.client[3])
        .collect();
    assert_eq!(clients, [3, 4, 5, 6], "the two least recently used went");
    // A third active backend does not fit the backends-by-address table: refused by name.
    let err = e
        .upsert_service(&spec(&[1, 2, 3], 60, Selection::Random))
        .unwrap_err();
    assert_eq!(
        err,
        ConfigError::TableFull {
            table: "LB_BE_BY_ADDR",
            capacity: 2,
            knob: "TableSizes::backends_by_addr",
        }
    );
}
