//! The conntrack fuzz harness, shared by the cargo-fuzz target (`conntrack.rs`) and a
//! deterministic smoke test in crates/lb-conntrack/tests/fuzz_smoke.rs that runs it on
//! pseudo-random inputs where cargo-fuzz is not installed.
//!
//! Arbitrary packet-event sequences and clock advances through the conntrack table, state
//! machines and GC (driven the way the pipeline drives them): no panic, the table never exceeds
//! its capacity, holds only whole pairs, its metrics match its contents, its refusal counter
//! matches the refusals seen, and no entry past its deadline survives a sweep. The first input
//! bytes also go through the timeout parser.

use lb_api::abi::{CtEntry, CtKey, CtKind, CtState};
use lb_api::flow::{v4_addr, FlowTuple};
use lb_conntrack::{
    initial_state, partner_key, track, tuple_reuse, ConntrackGc, ConntrackMetrics, ConntrackTable,
    Direction, GcConfig, HashConntrackTable, InsertError, InsertMode, Timeout, TimeoutPolicy,
};

const CAPACITY: usize = 24;
const SEC: u64 = 1_000_000_000;

fn tuple(id: u8, proto_sel: u8) -> FlowTuple {
    let proto = [6u8, 17, 1, 47][usize::from(proto_sel % 4)];
    FlowTuple {
        src: v4_addr([10, 0, 0, id % 16]),
        dst: v4_addr([10, 96, 0, 10]),
        src_port: 40000 + u16::from(id % 4),
        dst_port: 80,
        proto,
        family: 4,
    }
}

fn check(table: &HashConntrackTable, now: u64, refused: u64) {
    assert!(table.len() <= CAPACITY);
    let m = ConntrackMetrics::from_entries(table.iter(), CAPACITY as u64, now);
    assert_eq!(m.entries, table.len() as u64);
    assert_eq!(m.service_entries + m.reverse_entries, m.entries);
    assert_eq!(m.by_state.iter().sum::<u64>(), m.service_entries);
    let p = m.by_proto;
    assert_eq!(p.tcp + p.udp + p.icmp + p.other, m.service_entries);
    assert_eq!(m.service_entries, m.reverse_entries, "pairs are whole");
    for (k, e) in table.iter() {
        let partner = partner_key(k, e).expect("known kind");
        assert!(table.get(&partner).is_some(), "half a pair: {k:?}");
    }
    assert_eq!(table.stats().insert_failures_full, refused);
}

/// Runs one input: the policy from the first byte, then 3-byte operations.
pub fn run(data: &[u8]) {
    if let Some(s) = data
        .get(..data.len().min(8))
        .and_then(|b| std::str::from_utf8(b).ok())
    {
        let _ = s.parse::<Timeout>();
    }
    let policy = match data.first().copied().unwrap_or(0) % 3 {
        0 => TimeoutPolicy::netfilter(),
        1 => TimeoutPolicy::calico(),
        _ => TimeoutPolicy::cilium(),
    };
    let timeouts = policy.to_timeouts();
    let mut table = HashConntrackTable::with_capacity(CAPACITY);
    let mut gc = ConntrackGc::new(GcConfig::default());
    let mut now = SEC;
    let mut refused = 0u64;
    for op in data.chunks_exact(3).skip(1) {
        let (a, b, c) = (op[0], op[1], op[2]);
        let t = tuple(b, a >> 3);
        let key = CtKey::new(&t, CtKind::Service);
        match a % 5 {
            0 => {
                // First packet of a flow, if it is new: reverse entry first, then the service one.
                if table.get(&key).is_some() {
                    continue;
                }
                let _ = tuple_reuse(table.get(&key), now, 60 * SEC);
                let state = initial_state(t.proto, c);
                let e = CtEntry {
                    created_ns: now,
                    last_seen_ns: now,
                    expires_ns: now.saturating_add(timeouts.of(state as u8)),
                    state: state as u8,
                    proto: t.proto,
                    family: t.family,
                    nat_addr: v4_addr([10, 1, 0, 2 + (c & 1)]),
                    nat_port: 8080,
                    ..CtEntry::default()
                };
                let rk = partner_key(&key, &e).expect("service key");
                let re = CtEntry {
                    nat_addr: t.dst,
                    nat_port: t.dst_port,
                    ..e
                };
                match table.insert(&rk, &re, InsertMode::NoExist) {
                    Ok(()) => {}
                    Err(InsertError::Full) => {
                        refused += 1;
                        continue;
                    }
                    Err(_) => continue, // the reply tuple belongs to another flow
                }
                match table.insert(&key, &e, InsertMode::NoExist) {
                    Ok(()) => {}
                    Err(err) => {
                        if err == InsertError::Full {
                            refused += 1;
                        }
                        table.remove(&rk);
                    }
                }
            }
            1 => {
                let dir = if c & 0x80 != 0 {
                    Direction::Reply
                } else {
                    Direction::Original
                };
                let Some(e) = table.get_mut(&key) else {
                    continue;
                };
                track(e, dir, c, now, &timeouts);
                assert!(CtState::from_u8(e.state).is_some());
                let e = *e;
                if let Some(r) = partner_key(&key, &e).and_then(|rk| table.get_mut(&rk)) {
                    r.last_seen_ns = now;
                    r.expires_ns = e.expires_ns;
                }
            }
            2 => now = now.saturating_add(u64::from(c) * u64::from(b % 8 + 1) * SEC),
            3 => {
                let report = gc.run(&mut table, now).expect("infallible");
                assert!(report.deleted <= report.scanned);
                for (k, e) in table.iter() {
                    assert!(
                        e.expires_ns > now,
                        "entry past its deadline survived a sweep: {k:?}"
                    );
                }
            }
            _ => {
                if let Some(e) = table.get(&key).copied() {
                    table.remove(&key);
                    if let Some(rk) = partner_key(&key, &e) {
                        table.remove(&rk);
                    }
                }
            }
        }
        check(&table, now, refused);
    }
}
