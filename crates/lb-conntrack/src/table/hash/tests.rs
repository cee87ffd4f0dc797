//! The userspace table against its contract and against a model map.

use super::*;
use lb_api::abi::{CtKind, CtState};
use std::prelude::rust_2021::*;

fn key(p: u16) -> CtKey {
    CtKey {
        src_port: p,
        proto: 6,
        family: 4,
        ..Default::default()
    }
}

fn flow(t: &mut HashConntrackTable, port: u16, state: CtState, expires: u64) -> CtKey {
    let k = CtKey {
        dst_port: 80,
        ..key(port)
    };
    let e = CtEntry {
        state: state as u8,
        proto: 6,
        expires_ns: expires,
        nat_port: 8080,
        ..Default::default()
    };
    let rk = partner_key(&k, &e).unwrap();
    let re = CtEntry { nat_port: 80, ..e };
    t.insert(&rk, &re, InsertMode::NoExist).unwrap();
    t.insert(&k, &e, InsertMode::NoExist).unwrap();
    k
}

fn new_entry(now: u64) -> CtEntry {
    CtEntry {
        state: CtState::SynSent as u8,
        last_seen_ns: now,
        expires_ns: now + 100,
        ..Default::default()
    }
}

#[test]
fn a_batch_lookup_finds_what_single_lookups_find() {
    let mut t = HashConntrackTable::with_capacity(4096);
    for p in 0..1000u16 {
        let e = CtEntry {
            nat_port: p,
            ..new_entry(u64::from(p))
        };
        t.insert(&key(p), &e, InsertMode::NoExist).unwrap();
    }
    // Hits, misses and a key twice, in one burst.
    let keys: [CtKey; 8] = [0, 999, 1000, 5, 65535, 5, 500, 2000].map(key);
    let mut out = [None; 8];
    t.get_batch(&keys, &mut out);
    for (k, got) in keys.iter().zip(out) {
        assert_eq!(got.map(|e| e.nat_port), t.get(k).map(|e| e.nat_port));
    }
    assert_eq!(out.iter().filter(|o| o.is_some()).count(), 5);
}

#[test]
fn capacity_is_enforced_and_noexist_is_honoured() {
    let mut t = HashConntrackTable::with_capacity(2);
    let e = CtEntry::default();
    t.insert(&key(1), &e, InsertMode::NoExist).unwrap();
    assert_eq!(
        t.insert(&key(1), &e, InsertMode::NoExist),
        Err(InsertError::Exists)
    );
    t.insert(&key(1), &e, InsertMode::Any).unwrap();
    t.insert(&key(2), &e, InsertMode::NoExist).unwrap();
    assert_eq!(
        t.insert(&key(3), &e, InsertMode::Any),
        Err(InsertError::Full)
    );
    assert!(t.remove(&key(2)));
    t.insert(&key(3), &e, InsertMode::Any).unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(
        t.stats(),
        TableStats {
            insert_failures_full: 1,
            insert_failures_exists: 1,
            ..Default::default()
        }
    );
}

#[test]
fn full_table_evicts_expired_then_closing_never_established() {
    let mut t = HashConntrackTable::with_capacity(6);
    let est = flow(&mut t, 1, CtState::Established, 1_000);
    let closing = flow(&mut t, 2, CtState::TimeWait, 1_000);
    let expired = flow(&mut t, 3, CtState::Established, 10);
    for k in [est, closing, expired] {
        t.offer_candidate(&k);
    }
    // At 50 the expired flow goes first, although the closing one was offered earlier.
    t.insert(&key(100), &new_entry(50), InsertMode::NoExist)
        .unwrap();
    assert!(t.get(&expired).is_none());
    assert_eq!(t.len(), 5, "both halves of the evicted flow are gone");
    t.insert(&key(101), &new_entry(50), InsertMode::NoExist)
        .unwrap();
    t.insert(&key(102), &new_entry(50), InsertMode::NoExist)
        .unwrap();
    assert!(t.get(&closing).is_none());
    t.insert(&key(103), &new_entry(50), InsertMode::NoExist)
        .unwrap();
    assert_eq!(
        t.insert(&key(104), &new_entry(50), InsertMode::NoExist),
        Err(InsertError::Full)
    );
    assert!(
        t.get(&est).is_some(),
        "an established flow is never evicted"
    );
    let s = t.stats();
    assert_eq!(
        (
            s.evictions_expired,
            s.evictions_closing,
            s.insert_failures_full
        ),
        (1, 1, 1)
    );
    assert_eq!(
        t.candidates(),
        0,
        "the live established candidate was dropped"
    );
}

/// A xorshift generator: deterministic, so a failure replays.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Random inserts, overwrites and removals over a small key space on small tables (long
/// probe runs, wrap-around, slot reuse) agree with a std `HashMap` after every step.
#[test]
fn agrees_with_a_model_map() {
    for capacity in [1usize, 3, 8, 64] {
        let mut seed = 0x9E37_79B9_7F4A_7C15 ^ capacity as u64;
        let mut t = HashConntrackTable::with_capacity(capacity);
        let mut model = std::collections::HashMap::new();
        for step in 0..20_000u64 {
            let r = next(&mut seed);
            let k = key((r % (3 * capacity as u64 + 2)) as u16);
            let e = CtEntry {
                expires_ns: step,
                ..Default::default()
            };
            match (r >> 32) % 3 {
                0 => {
                    let mode = if r >> 40 & 1 == 0 {
                        InsertMode::NoExist
                    } else {
                        InsertMode::Any
                    };
                    let want = match (model.contains_key(&k), mode) {
                        (true, InsertMode::NoExist) => Err(InsertError::Exists),
                        (false, _) if model.len() >= capacity => Err(InsertError::Full),
                        _ => Ok(()),
                    };
                    assert_eq!(t.insert(&k, &e, mode), want, "step {step}");
                    if want.is_ok() {
                        model.insert(k, e);
                    }
                }
                1 => assert_eq!(t.remove(&k), model.remove(&k).is_some(), "step {step}"),
                _ => assert_eq!(t.get(&k), model.get(&k), "step {step}"),
            }
            assert_eq!(t.len(), model.len());
        }
        let mut all: Vec<_> = t.iter().map(|(k, e)| (*k, *e)).collect();
        all.sort_by_key(|(k, _)| k.src_port);
        let mut want: Vec<_> = model.into_iter().collect();
        want.sort_by_key(|(k, _)| k.src_port);
        assert_eq!(all, want);
    }
}

#[test]
fn a_clone_keeps_the_capacity_and_the_entries() {
    let mut t = HashConntrackTable::with_capacity(100);
    for p in 0..10 {
        t.insert(&key(p), &CtEntry::default(), InsertMode::NoExist)
            .unwrap();
    }
    t.remove(&key(3));
    let mut c = t.clone();
    assert_eq!((c.len(), c.capacity()), (9, 100));
    assert!(c.slots.capacity() >= 100 && c.free.capacity() >= 100);
    for p in 0..10 {
        assert_eq!(c.get(&key(p)).is_some(), p != 3, "port {p}");
    }
    c.insert(&key(50), &CtEntry::default(), InsertMode::NoExist)
        .unwrap();
    assert!(t.get(&key(50)).is_none(), "the original is untouched");
}

#[test]
fn capacity_is_clamped() {
    let t = HashConntrackTable::with_capacity(0);
    assert_eq!((t.capacity(), t.len()), (0, 0));
    assert!(MAX_CAPACITY < u32::MAX as usize / 2);
}

#[test]
fn remove_pair_if_expired_rechecks() {
    let mut t = HashConntrackTable::with_capacity(8);
    let k = flow(&mut t, 1, CtState::Established, 100);
    assert!(t.remove_pair_if_expired(&k, 99).is_none());
    t.get_mut(&k).unwrap().expires_ns = 500; // a packet refreshed it
    assert!(t.remove_pair_if_expired(&k, 200).is_none());
    assert!(t.remove_pair_if_expired(&k, 500).is_some());
    assert!(t.is_empty());
    let _ = CtKind::Service;
}
