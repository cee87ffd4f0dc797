//! The SNAT reference model (`model`): allocation through the datapath's schedule publishes
//! complete NAT pairs, keeps a free source port, fails cleanly when the range is exhausted and
//! takes over only a TIME_WAIT mapping, for a SYN past the old flow.

mod model;

use lb_api::flow::{v4_addr, FlowTuple};
use lb_nat::collision::XorShift32;
use lb_nat::snat::{SnatConfig, SnatError};
use model::{
    allocate, nat_keys, set_time_wait, NatDir, NatKey, NatTable, ShardedNatTable, SnatCounters,
};

fn flow(pod: u8, port: u16) -> FlowTuple {
    FlowTuple {
        src: v4_addr([10, 0, 0, pod]),
        dst: v4_addr([1, 1, 1, 1]),
        src_port: port,
        dst_port: 443,
        proto: 6,
        family: 4,
    }
}

const NAT: [u8; 16] = v4_addr([192, 168, 0, 1]);

#[test]
fn pair_is_published_and_reverse_restores_original() {
    let t = ShardedNatTable::new(1024);
    let mut rng = XorShift32::new(1);
    let cfg = SnatConfig::default();
    let f = flow(1, 5000);
    let a = allocate(&t, &mut rng, &cfg, &f, NAT, None).unwrap();
    let (fk, rk) = nat_keys(&f, NAT, a.port);
    assert_eq!(t.get(&fk).unwrap().port, a.port);
    let r = t.get(&rk).unwrap();
    assert_eq!((r.addr, r.port), (f.src, f.src_port));
    // Same flow again: its existing mapping, no second port.
    let b = allocate(&t, &mut rng, &cfg, &f, NAT, None).unwrap();
    assert!(b.existing);
    assert_eq!(b.port, a.port);
    assert_eq!(t.len(), 2);
}

#[test]
fn exhausted_range_fails_cleanly_and_counts() {
    let t = ShardedNatTable::new(1024);
    let mut rng = XorShift32::new(2);
    let cfg = SnatConfig {
        min: 2000,
        max: 2031,
        take_over_time_wait: false,
        ..Default::default()
    };
    let mut c = SnatCounters::default();
    for p in 0..32 {
        let r = allocate(&t, &mut rng, &cfg, &flow(1, 1000 + p), NAT, None);
        c.record(&r);
        assert!(r.is_ok());
    }
    let r = allocate(&t, &mut rng, &cfg, &flow(2, 1), NAT, None);
    c.record(&r);
    assert!(matches!(r, Err(SnatError::Exhausted { .. })));
    assert_eq!(c.failures, 1);
    assert_eq!(c.attempts.iter().sum::<u64>(), 32);
    assert_eq!(t.len(), 64, "the failed flow left nothing behind");
}

#[test]
fn time_wait_mapping_is_taken_over_by_a_later_syn_and_old_forward_removed() {
    let t = ShardedNatTable::new(1024);
    let mut rng = XorShift32::new(3);
    let cfg = SnatConfig {
        min: 3000,
        max: 3000,
        ..Default::default()
    };
    let old = flow(1, 1111);
    allocate(&t, &mut rng, &cfg, &old, NAT, None).unwrap();
    let new = flow(2, 2222);
    // Live: nobody takes it over.
    assert!(allocate(&t, &mut rng, &cfg, &new, NAT, Some(9)).is_err());
    // Closed, the old flow's last byte and FIN at 1_000_000.
    assert!(set_time_wait(&t, &old, true, 1_000_000));
    let mut c = SnatCounters::default();
    // Not a SYN, or a SYN not past the old flow: the server's TIME_WAIT socket would not
    // accept it, so the port stays the old flow's.
    for syn in [None, Some(999_999), Some(1_000_000)] {
        let r = allocate(&t, &mut rng, &cfg, &new, NAT, syn);
        c.record(&r);
        assert!(matches!(r, Err(SnatError::Exhausted { .. })), "{syn:?}");
    }
    let r = allocate(&t, &mut rng, &cfg, &new, NAT, Some(1_000_001));
    c.record(&r);
    let a = r.unwrap();
    assert!(a.took_over);
    assert_eq!((c.take_overs, c.failures), (1, 3));
    assert!(t
        .get(&NatKey {
            tuple: old,
            dir: NatDir::Forward
        })
        .is_none());
    let (_, rk) = nat_keys(&new, NAT, 3000);
    assert_eq!(t.get(&rk).unwrap().port, new.src_port);
    assert_eq!(t.len(), 2);
}

#[test]
fn a_free_source_port_in_the_range_is_kept() {
    let t = ShardedNatTable::new(1024);
    let mut rng = XorShift32::new(4);
    let cfg = SnatConfig {
        min: 4000,
        max: 4999,
        ..Default::default()
    };
    let a = allocate(&t, &mut rng, &cfg, &flow(1, 4321), NAT, None).unwrap();
    assert_eq!((a.port, a.attempts), (4321, 1));
    // Taken now: another pod with that port gets another one, after the kept try.
    let b = allocate(&t, &mut rng, &cfg, &flow(2, 4321), NAT, None).unwrap();
    assert!(b.port != 4321 && (4000..=4999).contains(&b.port) && b.attempts >= 2);
    // Outside the range it is never tried.
    let c = allocate(&t, &mut rng, &cfg, &flow(3, 5000), NAT, None).unwrap();
    assert!((4000..=4999).contains(&c.port));
    let off = SnatConfig {
        keep_source_port: false,
        ..cfg
    };
    let mut hits = 0;
    for p in 0..50 {
        let f = flow(4, 4500 + p);
        if allocate(&t, &mut rng, &off, &f, NAT, None).unwrap().port == f.src_port {
            hits += 1;
        }
    }
    assert!(
        hits < 5,
        "without keep_source_port the port is drawn: {hits} kept"
    );
}
#[test]
fn empty_range_is_refused() {
    let t = ShardedNatTable::new(16);
    let mut rng = XorShift32::new(3);
    let cfg = SnatConfig {
        min: 10,
        max: 9,
        ..Default::default()
    };
    assert_eq!(
        allocate(&t, &mut rng, &cfg, &flow(1, 1), NAT, None),
        Err(SnatError::EmptyRange)
    );
}

proptest::proptest! {
    /// Whatever sequence of allocations and TIME_WAIT marks (small range, so exhaustion and
    /// take-overs happen), the table holds only complete pairs: every forward mapping has its
    /// reverse, which names the forward's flow, and no port is owned twice.
    #[test]
    fn table_only_ever_holds_complete_pairs(ops in proptest::collection::vec((0u8..6, 0u16..8, proptest::bool::ANY), 1..120), seed in proptest::num::u32::ANY) {
        let t = ShardedNatTable::new(1024);
        let mut rng = XorShift32::new(seed);
        let cfg = SnatConfig { min: 5000, max: 5007, ..Default::default() };
        for (pod, port, tw) in ops {
            let f = flow(pod, 1000 + port);
            if tw {
                let _ = set_time_wait(&t, &f, true, 1000);
            } else {
                match allocate(&t, &mut rng, &cfg, &f, NAT, Some(5000)) {
                    Ok(a) => proptest::prop_assert!((5000..=5007).contains(&a.port)),
                    Err(SnatError::Exhausted { .. }) => {}
                    Err(e) => proptest::prop_assert!(false, "{:?}", e),
                }
            }
            let entries = t.entries();
            let mut fwd = 0;
            for (k, v) in &entries {
                if k.dir == NatDir::Forward {
                    fwd += 1;
                    let (_, rk) = nat_keys(&k.tuple, v.addr, v.port);
                    let r = t.get(&rk);
                    proptest::prop_assert!(r.is_some_and(|r| r.addr == k.tuple.src && r.port == k.tuple.src_port),
                        "forward {:?} without its reverse", k);
                }
            }
            proptest::prop_assert_eq!(entries.len(), 2 * fwd, "every reverse has its forward");
        }
    }
}
