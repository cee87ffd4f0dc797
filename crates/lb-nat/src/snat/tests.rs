//! The schedule of [`claim_port`], walked with closures that stand for a table.

use super::*;
use crate::collision::XorShift32;

#[test]
fn schedule_is_netfilters_and_late_only_in_its_last_32() {
    // 128 + 64 + 32 + 16 = 240 attempts, `late` from attempt 209 on.
    let cfg = SnatConfig {
        keep_source_port: false,
        ..Default::default()
    };
    let mut rng = XorShift32::new(5);
    let mut lates = std::vec::Vec::new();
    let mut asked = 0;
    let r = claim_port(
        &cfg,
        &mut rng,
        0,
        |_, c| {
            assert!(c.port >= 1024);
            assert_eq!(c.attempt as usize, lates.len() + 1);
            lates.push(c.may_take_over);
            Claim::Taken
        },
        |_| {
            asked += 1;
            None
        },
    );
    assert_eq!(r, Err(SnatError::Exhausted { attempts: 240 }));
    assert_eq!(
        asked, 1,
        "an exhausted schedule asks for the take-over once"
    );
    assert_eq!(lates.len(), 240);
    assert!(lates[..208].iter().all(|l| !l) && lates[208..].iter().all(|l| *l));
    let no = SnatConfig {
        take_over_time_wait: false,
        ..cfg
    };
    let mut any_late = false;
    let _ = claim_port(
        &no,
        &mut rng,
        0,
        |_, c| {
            any_late |= c.may_take_over;
            Claim::Taken
        },
        |_| panic!("no take-over when the config has none"),
    );
    assert!(!any_late);
}

#[test]
fn a_free_port_in_the_window_beats_a_take_over() {
    let cfg = SnatConfig {
        keep_source_port: false,
        ..Default::default()
    };
    let mut rng = XorShift32::new(9);
    let (mut noted, mut free) = (None, 0);
    let r = claim_port(
        &cfg,
        &mut rng,
        0,
        |_, c| match c.attempt {
            // A port whose flow is in TIME_WAIT, met early in the window: noted only.
            215 => {
                assert!(c.may_take_over);
                noted = Some(c.port);
                Claim::Taken
            }
            230 => {
                free = c.port;
                Claim::Reserved
            }
            _ => Claim::Taken,
        },
        |_| panic!("a free port was found: no take-over"),
    );
    let a = r.unwrap();
    assert!(noted.is_some());
    assert_eq!((a.port, a.attempts, a.took_over), (free, 230, false));
    // The same walk with no free port ends in the take-over of the noted port.
    let mut rng = XorShift32::new(9);
    let r = claim_port(&cfg, &mut rng, 0, |_, _| Claim::Taken, |_| noted);
    let a = r.unwrap();
    assert_eq!((Some(a.port), a.attempts, a.took_over), (noted, 240, true));
}

#[test]
fn empty_range_is_refused() {
    let mut rng = XorShift32::new(3);
    let cfg = SnatConfig {
        min: 10,
        max: 9,
        ..Default::default()
    };
    let r = claim_port(
        &cfg,
        &mut rng,
        1,
        |_, _| panic!("an empty range proposes no port"),
        |_| panic!("an empty range takes nothing over"),
    );
    assert_eq!(r, Err(SnatError::EmptyRange));
    let zero = SnatConfig { min: 0, ..cfg };
    assert_eq!(
        claim_port(&zero, &mut rng, 1, |_, _| Claim::Reserved, |_| None),
        Err(SnatError::EmptyRange),
        "port 0 is not a port"
    );
}

#[test]
fn take_over_needs_time_wait_and_a_syn_past_the_old_flow() {
    assert!(may_take_over(true, 1_000_000, Some(1_000_001)));
    assert!(!may_take_over(true, 1_000_000, Some(1_000_000)));
    assert!(!may_take_over(true, 1_000_000, Some(999_999)));
    assert!(!may_take_over(true, 1_000_000, None), "not a SYN");
    // Sequence numbers wrap: a SYN just past the old end across 2^32 still advances.
    assert!(may_take_over(true, u32::MAX - 1, Some(3)));
    assert!(!may_take_over(true, 5, Some(u32::MAX)));
    assert!(!may_take_over(false, 5, Some(6)));
}
