//! SNAT port allocation where allocating a port and reserving it are one atomic step.
//!
//! The bug this prevents (netfilter before its fix, DESIGN.md incident 3): a port was *chosen*
//! as free, and the conntrack entry claiming it was *inserted* later; two CPUs chose the same port
//! in between, the second insert failed and the SYN was dropped. Here the only way to take a port
//! is [`NatTable::insert_if_absent`] of the reply-direction mapping: whoever inserts first owns
//! the port, the loser simply tries the next one. Only then is the forward mapping published, so
//! a packet never finds a forward mapping without its reverse, and a failure removes what it
//! inserted (a NAT pair is never left half-present).
//!
//! Candidate ports follow netfilter's `nf_nat_l4proto_unique_tuple`: a random start offset, up to
//! 128 consecutive attempts, then halve the attempts and re-randomize the offset, until fewer
//! than 16 remain. In the last 32 attempts a mapping whose flow is in TIME_WAIT may be taken
//! over (compare-and-swap on the exact old value), as netfilter does.

use lb_api::flow::FlowTuple;

use crate::collision::RandomSource;

/// Which half of a NAT pair a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NatDir {
    /// Keyed by the original tuple (pod → destination); the value holds the translated source.
    Forward = 0,
    /// Keyed by the reply tuple (destination → NAT address:port); the value holds the pod's
    /// original source. Owning this key is owning the port.
    Reverse = 1,
}

/// A NAT table key: a tuple and the half it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NatKey {
    /// The tuple.
    pub tuple: FlowTuple,
    /// Which half.
    pub dir: NatDir,
}

/// A NAT table value: the address and port to rewrite to, and whether the flow is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NatValue {
    /// Forward: the NAT source address. Reverse: the pod's original address.
    pub addr: [u8; 16],
    /// Forward: the NAT source port. Reverse: the pod's original port.
    pub port: u16,
    /// The flow is in TIME_WAIT: its mapping may be taken over by a new allocation.
    pub time_wait: bool,
}

/// Why an insert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatInsertError {
    /// The key is present; its current value.
    Exists(NatValue),
    /// The table is full.
    Full,
}

/// A NAT table shared by concurrent allocators (kernel map, sharded userspace table). Every
/// method is atomic with respect to the others on the same key.
pub trait NatTable {
    /// Inserts `value` under `key` only if the key is absent (`BPF_NOEXIST`).
    ///
    /// # Errors
    /// [`NatInsertError::Exists`] with the present value, or [`NatInsertError::Full`].
    fn insert_if_absent(&self, key: &NatKey, value: &NatValue) -> Result<(), NatInsertError>;
    /// Replaces the value under `key` with `new` only if it is exactly `old`; whether it did.
    fn compare_and_swap(&self, key: &NatKey, old: &NatValue, new: &NatValue) -> bool;
    /// Removes `key` only if its value is exactly `value`; whether it did.
    fn remove_if(&self, key: &NatKey, value: &NatValue) -> bool;
    /// The value under `key`.
    fn get(&self, key: &NatKey) -> Option<NatValue>;
}

/// How the ports of one round are walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `offset, offset+1, ...` (netfilter). At high utilization the used ports form clusters
    /// and a walk that starts inside one fails as a whole (measured in docs/nat.md).
    Consecutive,
    /// `offset + i * stride` with a random stride coprime to the range size: still distinct ports
    /// within a round, but spread over the range, so each attempt is nearly an independent draw.
    Scattered,
}

/// Allocator configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatConfig {
    /// First port of the range (inclusive).
    pub min: u16,
    /// Last port of the range (inclusive).
    pub max: u16,
    /// Attempts of the first round (netfilter: 128).
    pub max_attempts: u32,
    /// Stop when a round would have fewer attempts than this (netfilter: 16).
    pub min_attempts: u32,
    /// Allow taking over a mapping in TIME_WAIT during the last 32 attempts.
    pub take_over_time_wait: bool,
    /// Walk of each round.
    pub probe: Probe,
}

impl Default for SnatConfig {
    /// netfilter's schedule over the full unprivileged range 1024-65535, with take-over, and
    /// scattered probing.
    fn default() -> Self {
        Self {
            min: 1024,
            max: 65_535,
            max_attempts: 128,
            min_attempts: 16,
            take_over_time_wait: true,
            probe: Probe::Scattered,
        }
    }
}

/// Attempts after which TIME_WAIT take-over is allowed: the last 32 of the schedule.
const TAKE_OVER_WINDOW: u32 = 32;
/// Hard cap on rounds (128, 64, 32, 16: four), for bounded loops whatever the config says.
const MAX_ROUNDS: u32 = 8;
/// Hard cap on attempts per round.
const MAX_ATTEMPTS: u32 = 1024;

/// Buckets of the attempts histogram: 1, 2-3, 4-7, ..., 128-255, 256+.
pub const ATTEMPT_BUCKETS: usize = 10;

/// A successful allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// The NAT source port.
    pub port: u16,
    /// Ports tried, this one included.
    pub attempts: u32,
    /// A TIME_WAIT mapping was taken over.
    pub took_over: bool,
    /// The flow already had a mapping (published by a concurrent allocator); it was reused.
    pub existing: bool,
}

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnatError {
    /// Every attempted port was in use.
    Exhausted {
        /// Ports tried.
        attempts: u32,
    },
    /// The table is full.
    TableFull,
    /// The configured range is empty.
    EmptyRange,
}

/// Allocation counters: an attempts histogram, failures and take-overs. Plain integers: the
/// caller keeps one per CPU or thread and sums them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnatCounters {
    /// Successful allocations by attempts needed (bucket `i` counts `2^i ..= 2^(i+1)-1`).
    pub attempts: [u64; ATTEMPT_BUCKETS],
    /// Allocations that found no port.
    pub failures: u64,
    /// Allocations that failed because the table was full.
    pub table_full: u64,
    /// TIME_WAIT mappings taken over.
    pub take_overs: u64,
}

impl SnatCounters {
    /// Records one allocation's outcome.
    pub fn record(&mut self, r: &Result<Allocation, SnatError>) {
        match r {
            Ok(a) => {
                let b = (31 - a.attempts.max(1).leading_zeros()) as usize;
                let b = if b >= ATTEMPT_BUCKETS {
                    ATTEMPT_BUCKETS - 1
                } else {
                    b
                };
                if let Some(c) = self.attempts.get_mut(b) {
                    *c += 1;
                }
                if a.took_over {
                    self.take_overs += 1;
                }
            }
            Err(SnatError::TableFull) => self.table_full += 1,
            Err(_) => self.failures += 1,
        }
    }

    /// Adds another set of counters.
    pub fn merge(&mut self, o: &Self) {
        for (a, b) in self.attempts.iter_mut().zip(o.attempts.iter()) {
            *a += b;
        }
        self.failures += o.failures;
        self.table_full += o.table_full;
        self.take_overs += o.take_overs;
    }
}

/// The two keys of a flow's NAT pair when translated to `nat_addr:port`.
#[inline(always)]
#[must_use]
pub fn nat_keys(orig: &FlowTuple, nat_addr: [u8; 16], port: u16) -> (NatKey, NatKey) {
    let fwd = NatKey {
        tuple: *orig,
        dir: NatDir::Forward,
    };
    let reply = FlowTuple {
        src: orig.dst,
        src_port: orig.dst_port,
        dst: nat_addr,
        dst_port: port,
        proto: orig.proto,
        family: orig.family,
    };
    (
        fwd,
        NatKey {
            tuple: reply,
            dir: NatDir::Reverse,
        },
    )
}

/// Allocates a source port on `nat_addr` for the flow `orig` and publishes its NAT pair.
///
/// Reserving is the reverse insert itself ([`NatTable::insert_if_absent`]); the forward mapping
/// is inserted after it. If another allocator published a forward mapping for the same flow
/// first, ours is withdrawn and theirs returned (`existing`).
///
/// # Errors
/// [`SnatError`] when no port could be reserved; the table then holds nothing of this flow.
pub fn allocate<T, R>(
    table: &T,
    rng: &mut R,
    cfg: &SnatConfig,
    orig: &FlowTuple,
    nat_addr: [u8; 16],
) -> Result<Allocation, SnatError>
where
    T: NatTable + ?Sized,
    R: RandomSource + ?Sized,
{
    if cfg.min == 0 || cfg.min > cfg.max {
        return Err(SnatError::EmptyRange);
    }
    let span = u32::from(cfg.max - cfg.min) + 1;
    // A flow that already has its pair keeps it (a retransmitted first packet).
    if let Some(f) = table.get(&NatKey {
        tuple: *orig,
        dir: NatDir::Forward,
    }) {
        return Ok(Allocation {
            port: f.port,
            attempts: 0,
            took_over: false,
            existing: true,
        });
    }
    let back = NatValue {
        addr: orig.src,
        port: orig.src_port,
        time_wait: false,
    };
    let mut attempts_total = 0u32;
    let mut round_len = cfg.max_attempts.min(MAX_ATTEMPTS).min(span);
    // Total of the schedule, to know when the last 32 attempts begin.
    // A range smaller than the floor gets one round over all of it.
    let floor = cfg.min_attempts.max(1).min(round_len);
    let mut schedule = 0u32;
    {
        let mut n = round_len;
        let mut r = 0;
        while r < MAX_ROUNDS && n >= floor {
            schedule += n;
            n /= 2;
            r += 1;
        }
    }
    let mut round = 0;
    while round < MAX_ROUNDS && round_len >= floor {
        let offset = rng.random_u32() % span;
        let stride = match cfg.probe {
            Probe::Consecutive => 1,
            Probe::Scattered => coprime_stride(rng.random_u32(), span),
        };
        let mut i = 0;
        while i < round_len {
            // u64: `i * stride` may exceed u32 for large strides.
            let step = (u64::from(offset) + u64::from(i) * u64::from(stride)) % u64::from(span);
            let port = cfg.min + step as u16;
            attempts_total += 1;
            let (fwd, rev) = nat_keys(orig, nat_addr, port);
            let reserved = match table.insert_if_absent(&rev, &back) {
                Ok(()) => Some(false),
                Err(NatInsertError::Full) => return Err(SnatError::TableFull),
                Err(NatInsertError::Exists(old)) => {
                    let late = attempts_total + TAKE_OVER_WINDOW > schedule;
                    if cfg.take_over_time_wait
                        && late
                        && old.time_wait
                        && table.compare_and_swap(&rev, &old, &back)
                    {
                        // The old flow's forward half now points at a port it no longer owns:
                        // remove it (only if it still names this port).
                        let (old_fwd, _) = nat_keys(
                            &FlowTuple {
                                src: old.addr,
                                src_port: old.port,
                                ..*orig
                            },
                            nat_addr,
                            port,
                        );
                        let _ = table.remove_if(
                            &old_fwd,
                            &NatValue {
                                addr: nat_addr,
                                port,
                                time_wait: true,
                            },
                        );
                        let _ = table.remove_if(
                            &old_fwd,
                            &NatValue {
                                addr: nat_addr,
                                port,
                                time_wait: false,
                            },
                        );
                        Some(true)
                    } else {
                        None
                    }
                }
            };
            if let Some(took_over) = reserved {
                return publish(
                    table,
                    &fwd,
                    &rev,
                    &back,
                    nat_addr,
                    port,
                    attempts_total,
                    took_over,
                );
            }
            i += 1;
        }
        round_len /= 2;
        round += 1;
    }
    Err(SnatError::Exhausted {
        attempts: attempts_total,
    })
}

/// A stride in `1..span` coprime to `span` (so a walk visits distinct ports), from a random
/// value; 1 if the few candidates tried all share a factor with `span`.
#[inline(always)]
fn coprime_stride(random: u32, span: u32) -> u32 {
    if span <= 2 {
        return 1;
    }
    let mut s = random % (span - 1) + 1;
    let mut k = 0;
    while k < 8 {
        if gcd(s, span) == 1 {
            return s;
        }
        s = s % (span - 1) + 1;
        k += 1;
    }
    1
}

/// Euclid's algorithm; at most 47 steps for u32 (Fibonacci bound), written with a fixed cap.
#[inline(always)]
const fn gcd(mut a: u32, mut b: u32) -> u32 {
    let mut k = 0;
    while b != 0 && k < 48 {
        let t = a % b;
        a = b;
        b = t;
        k += 1;
    }
    a
}

/// Publishes the forward half of a reserved pair, or withdraws the reverse half if the flow
/// already has a forward mapping.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn publish<T: NatTable + ?Sized>(
    table: &T,
    fwd: &NatKey,
    rev: &NatKey,
    back: &NatValue,
    nat_addr: [u8; 16],
    port: u16,
    attempts: u32,
    took_over: bool,
) -> Result<Allocation, SnatError> {
    let out = NatValue {
        addr: nat_addr,
        port,
        time_wait: false,
    };
    match table.insert_if_absent(fwd, &out) {
        Ok(()) => Ok(Allocation {
            port,
            attempts,
            took_over,
            existing: false,
        }),
        Err(NatInsertError::Exists(theirs)) => {
            let _ = table.remove_if(rev, back);
            Ok(Allocation {
                port: theirs.port,
                attempts,
                took_over: false,
                existing: true,
            })
        }
        Err(NatInsertError::Full) => {
            let _ = table.remove_if(rev, back);
            Err(SnatError::TableFull)
        }
    }
}

/// Marks a flow's NAT pair as TIME_WAIT (its ports may then be taken over), or not.
pub fn set_time_wait<T: NatTable + ?Sized>(table: &T, orig: &FlowTuple, time_wait: bool) -> bool {
    let fkey = NatKey {
        tuple: *orig,
        dir: NatDir::Forward,
    };
    let Some(f) = table.get(&fkey) else {
        return false;
    };
    let (_, rkey) = nat_keys(orig, f.addr, f.port);
    let nf = NatValue { time_wait, ..f };
    let ok_f = table.compare_and_swap(&fkey, &f, &nf);
    let ok_r = match table.get(&rkey) {
        Some(r) if r.addr == orig.src && r.port == orig.src_port => {
            table.compare_and_swap(&rkey, &r, &NatValue { time_wait, ..r })
        }
        _ => false,
    };
    ok_f && ok_r
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::collision::XorShift32;
    use crate::snat_table::ShardedNatTable;
    use lb_api::flow::v4_addr;

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
        let a = allocate(&t, &mut rng, &cfg, &f, NAT).unwrap();
        let (fk, rk) = nat_keys(&f, NAT, a.port);
        assert_eq!(t.get(&fk).unwrap().port, a.port);
        let r = t.get(&rk).unwrap();
        assert_eq!((r.addr, r.port), (f.src, f.src_port));
        // Same flow again: its existing mapping, no second port.
        let b = allocate(&t, &mut rng, &cfg, &f, NAT).unwrap();
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
            let r = allocate(&t, &mut rng, &cfg, &flow(1, 1000 + p), NAT);
            c.record(&r);
            assert!(r.is_ok());
        }
        let r = allocate(&t, &mut rng, &cfg, &flow(2, 1), NAT);
        c.record(&r);
        assert!(matches!(r, Err(SnatError::Exhausted { .. })));
        assert_eq!(c.failures, 1);
        assert_eq!(c.attempts.iter().sum::<u64>(), 32);
        assert_eq!(t.len(), 64, "the failed flow left nothing behind");
    }

    #[test]
    fn time_wait_mapping_is_taken_over_and_old_forward_removed() {
        let t = ShardedNatTable::new(1024);
        let mut rng = XorShift32::new(3);
        let cfg = SnatConfig {
            min: 3000,
            max: 3000,
            ..Default::default()
        };
        let old = flow(1, 1111);
        allocate(&t, &mut rng, &cfg, &old, NAT).unwrap();
        assert!(allocate(&t, &mut rng, &cfg, &flow(2, 2222), NAT).is_err());
        assert!(set_time_wait(&t, &old, true));
        let mut c = SnatCounters::default();
        let r = allocate(&t, &mut rng, &cfg, &flow(2, 2222), NAT);
        c.record(&r);
        let a = r.unwrap();
        assert!(a.took_over);
        assert_eq!(c.take_overs, 1);
        assert!(t
            .get(&NatKey {
                tuple: old,
                dir: NatDir::Forward
            })
            .is_none());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn scattered_rounds_visit_distinct_ports() {
        for span in [1u32, 2, 3, 10, 10_000, 64_512] {
            for r in [0u32, 1, 7, 12_345, u32::MAX] {
                let s = coprime_stride(r, span);
                assert!(s >= 1 && (span <= 1 || s < span));
                assert_eq!(gcd(s, span), 1, "span {span} stride {s}");
            }
        }
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
            allocate(&t, &mut rng, &cfg, &flow(1, 1), NAT),
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
                    let _ = set_time_wait(&t, &f, true);
                } else {
                    match allocate(&t, &mut rng, &cfg, &f, NAT) {
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
}
