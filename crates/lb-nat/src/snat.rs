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
//! The schedule follows netfilter's `nf_nat_l4proto_unique_tuple`: up to 128 attempts, then
//! halve the attempts, until fewer than 16 remain (the flow's own port first when it is free);
//! each attempt draws a random port ([`Probe::Scattered`]) or walks on from a random offset
//! ([`Probe::Consecutive`], netfilter's). In the last 32 attempts a mapping whose flow is in
//! TIME_WAIT may be taken over when the new SYN's sequence number is past the old flow's last
//! one ([`may_take_over`]), as netfilter does.
//!
//! The schedule is [`claim_port`], which knows nothing of the table: it proposes ports and a
//! closure claims them. [`allocate`] claims in a [`NatTable`] (the userspace table of the race
//! tests); the datapath pipeline (`lb_datapath`) claims in the conntrack table, in the engine
//! and in the eBPF programs alike, with the schedule of [`SnatConfig::of_datapath`].

use core::cell::Cell;
use core::num::NonZeroU32;

use lb_api::abi::DatapathConfig;
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
    /// With `time_wait`: the sequence number just past the flow's last byte (and FIN) in the
    /// original direction. A new SYN must be past it to take the mapping over.
    pub seq_end: u32,
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
    /// Every attempt a port drawn at random from the whole range: independent draws, so at a
    /// utilization `u` an attempt fails with probability `u` whatever ports are in use. A port
    /// may come up twice (a wasted attempt, rare below a few thousand attempts). Loop-free,
    /// which the kernel's verifier needs.
    Scattered,
}

/// Allocator configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatConfig {
    /// First port of the range (inclusive).
    pub min: u16,
    /// Last port of the range (inclusive).
    pub max: u16,
    /// Attempts of the first round (netfilter: 128; at most [`MAX_ATTEMPTS`]).
    pub max_attempts: u32,
    /// Stop when a round would have fewer attempts than this (netfilter: 16).
    pub min_attempts: u32,
    /// Allow taking over a mapping in TIME_WAIT during the last 32 attempts.
    pub take_over_time_wait: bool,
    /// Walk of each round.
    pub probe: Probe,
    /// Try the flow's own source port first when it lies in the range.
    pub keep_source_port: bool,
    /// With `take_over_time_wait`: the last this many attempts of the schedule may take a port
    /// over (netfilter: [`TAKE_OVER_WINDOW`], 32).
    pub take_over_window: u32,
}

impl Default for SnatConfig {
    /// netfilter's schedule over the full unprivileged range 1024-65535, with take-over, the
    /// source port kept when free, and scattered probing.
    fn default() -> Self {
        Self {
            min: 1024,
            max: 65_535,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            min_attempts: DEFAULT_MIN_ATTEMPTS,
            take_over_time_wait: true,
            probe: Probe::Scattered,
            keep_source_port: true,
            take_over_window: TAKE_OVER_WINDOW,
        }
    }
}

impl SnatConfig {
    /// The allocator of a datapath configuration: its SNAT range, the source port kept when
    /// free, then netfilter's schedule (128, 64, 32, 16 random attempts) with TIME_WAIT
    /// take-over in its last 32. This is what the pipeline allocates with, in the kernel and in
    /// the engine.
    ///
    /// The kernel's verifier walks every attempt of the loop: the schedule fits because the
    /// new-flow path is a program of its own (a tail call from the first stage), with its own
    /// budget of a million instructions (docs/nat.md has the figures).
    #[inline(always)]
    #[must_use]
    pub fn of_datapath(cfg: &DatapathConfig) -> Self {
        Self {
            min: cfg.snat_port_min(),
            max: cfg.snat_port_max(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            min_attempts: DEFAULT_MIN_ATTEMPTS,
            take_over_time_wait: true,
            probe: Probe::Scattered,
            keep_source_port: true,
            take_over_window: TAKE_OVER_WINDOW,
        }
    }
}

/// netfilter's first round: 128 attempts.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 128;
/// netfilter stops halving below 16 attempts.
pub const DEFAULT_MIN_ATTEMPTS: u32 = 16;

/// TIME_WAIT take-over is allowed in the last this many attempts of the schedule (netfilter's).
pub const TAKE_OVER_WINDOW: u32 = 32;
/// Hard cap on rounds (128, 64, 32, 16: four), for bounded loops whatever the config says.
const MAX_ROUNDS: u32 = 8;
/// Most attempts of a first round, whatever the config says: netfilter's 128 (a schedule then
/// has at most 255 attempts, 128 + 64 + ... + 1).
pub const MAX_ATTEMPTS: u32 = 128;

pub use lb_api::counters::{attempts_bucket, ATTEMPT_BUCKETS};

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
                if let Some(c) = self.attempts.get_mut(attempts_bucket(a.attempts)) {
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

/// A port [`claim_port`] proposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The port.
    pub port: u16,
    /// Which attempt this is (1 for the first): what an attempts histogram records when the
    /// claim succeeds.
    pub attempt: u32,
    /// One of the schedule's last [`TAKE_OVER_WINDOW`] attempts, with take-over allowed: when
    /// the port is taken by a flow that may be taken over ([`may_take_over`]), the claim notes
    /// it (the first such port) for the take-over at the end of the schedule.
    pub may_take_over: bool,
}

/// What claiming one candidate port did: the answer of [`claim_port`]'s closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The port is now this flow's: its reply mapping was inserted, atomically, where absent.
    Reserved,
    /// Another flow owns the port: try the next.
    Taken,
    /// The table is full: stop.
    Full,
}

/// Whether a new flow may take over the port of a flow that holds it: only in TIME_WAIT, and
/// only for a TCP SYN (`syn_seq`, its sequence number) that is past the old flow's last
/// sequence number in the original direction (`old_seq_end`, just after its FIN). That is what
/// the destination's TIME_WAIT socket needs to accept the SYN as a new connection (RFC 1122
/// 4.2.2.13; Linux's `tcp_timewait_state_process`), and netfilter's condition too.
#[inline(always)]
#[must_use]
pub fn may_take_over(old_time_wait: bool, old_seq_end: u32, syn_seq: Option<u32>) -> bool {
    match syn_seq {
        Some(seq) => old_time_wait && (seq.wrapping_sub(old_seq_end) as i32) > 0,
        None => false,
    }
}

/// Walks the schedule of candidate ports of `cfg` and claims the first that `claim` can: the
/// allocator, whatever the table. `claim(ctx, candidate)` must reserve `candidate.port` for the
/// flow in one atomic step (insert the reply mapping only if absent) and say what it did.
///
/// With [`SnatConfig::keep_source_port`], `src_port` (the flow's own) is tried first when it
/// lies in the range, as netfilter and Cilium keep a free original port; then rounds of
/// `max_attempts`, halved each round, down to `min_attempts` (each attempt a random port, or
/// a consecutive walk from a fresh random offset per round: [`Probe`]).
///
/// TIME_WAIT take-over ([`SnatConfig::take_over_time_wait`]): in the schedule's last
/// `take_over_window` attempts ([`Candidate::may_take_over`]) `claim` notes the first taken
/// port whose flow may be taken over ([`may_take_over`]); when the schedule ends without a
/// free port, `take_over(ctx)` takes the noted port over (ends the old flow's mapping and
/// reserves the port, atomically against other allocators) and returns it, or `None`. Unlike
/// netfilter, which takes over at the first such collision, a free port later in the window
/// is preferred: a take-over ends the old flow's protection against stray segments.
///
/// `ctx` is the random source and whatever the closures write to, so the kernel and userspace
/// pass the same object.
///
/// # Errors
/// [`SnatError::EmptyRange`], [`SnatError::TableFull`] (the closure said [`Claim::Full`]) or
/// [`SnatError::Exhausted`].
#[inline(always)]
pub fn claim_port<X, F, G>(
    cfg: &SnatConfig,
    ctx: &mut X,
    src_port: u16,
    mut claim: F,
    take_over: G,
) -> Result<Allocation, SnatError>
where
    X: RandomSource + ?Sized,
    F: FnMut(&mut X, Candidate) -> Claim,
    G: FnOnce(&mut X) -> Option<u16>,
{
    if cfg.min == 0 || cfg.min > cfg.max {
        return Err(SnatError::EmptyRange);
    }
    // Non-zero by type: the remainders below cannot panic.
    let Some(span) = NonZeroU32::new(u32::from(cfg.max - cfg.min) + 1) else {
        return Err(SnatError::EmptyRange);
    };
    // A range smaller than the schedule is not a reason to shorten it: with random probing,
    // ports repeat (netfilter shortens it to the range's size; the kernel's verifier needs
    // bounds that do not depend on the range).
    let first = cfg.max_attempts.clamp(1, MAX_ATTEMPTS);
    let floor = cfg.min_attempts.max(1).min(first);
    // Total of the schedule (a constant when the config is), to know when its last 32
    // attempts begin.
    let mut schedule = 0u32;
    {
        let mut n = first;
        let mut r = 0;
        while r < MAX_ROUNDS && n >= floor {
            schedule += n;
            n /= 2;
            r += 1;
        }
    }
    let mut w = Walk {
        round_len: first,
        i: 0,
        offset: 0,
        attempts: 0,
    };
    if cfg.keep_source_port && src_port >= cfg.min && src_port <= cfg.max {
        w.attempts += 1;
        let c = w.candidate(src_port, false);
        if let Some(r) = w.outcome(claim(ctx, c), src_port) {
            return r;
        }
    }
    // Two loops over the schedule: the attempts that may not take a port over, then the last
    // `take_over_window`, which may. The kernel's verifier walks every iteration: split so,
    // with constant bounds, it walks the take-over's code only in those. (The `bpf_loop`
    // helper would spare the walk, but its callback needs BTF function info, and the kernel
    // refuses the BTF that bpf-linker emits for Rust enums.)
    let window = if cfg.take_over_time_wait {
        cfg.take_over_window
    } else {
        0
    };
    let early = schedule.saturating_sub(window);
    let mut n = 0;
    while n < early {
        n += 1;
        let port = w.next_port(cfg, ctx, span);
        let c = w.candidate(port, false);
        if let Some(r) = w.outcome(claim(ctx, c), port) {
            return r;
        }
    }
    while n < schedule {
        n += 1;
        let port = w.next_port(cfg, ctx, span);
        let c = w.candidate(port, true);
        if let Some(r) = w.outcome(claim(ctx, c), port) {
            return r;
        }
    }
    if window > 0 {
        if let Some(port) = take_over(ctx) {
            return Ok(Allocation {
                port,
                attempts: w.attempts,
                took_over: true,
                existing: false,
            });
        }
    }
    Err(SnatError::Exhausted {
        attempts: w.attempts,
    })
}

/// Where [`claim_port`]'s walk is.
struct Walk {
    /// Attempts of the current round.
    round_len: u32,
    /// Attempt within the round.
    i: u32,
    /// The round's random start, from `min`.
    offset: u32,
    /// Attempts made.
    attempts: u32,
}

impl Walk {
    /// The next candidate of the round (starting a new round when one ends).
    #[inline(always)]
    fn next_port<X: RandomSource + ?Sized>(
        &mut self,
        cfg: &SnatConfig,
        ctx: &mut X,
        span: NonZeroU32,
    ) -> u16 {
        self.attempts += 1;
        let step = match cfg.probe {
            Probe::Consecutive => {
                if self.i == 0 {
                    // A new round: a fresh random offset.
                    self.offset = ctx.random_u32() % span;
                }
                (self.offset + self.i) % span
            }
            Probe::Scattered => ctx.random_u32() % span,
        };
        self.i += 1;
        if self.i >= self.round_len {
            self.i = 0;
            self.round_len /= 2;
        }
        // `step < span <= 65536 - min`: the sum fits.
        cfg.min.wrapping_add(step as u16)
    }

    /// The candidate `port` at the current attempt.
    #[inline(always)]
    const fn candidate(&self, port: u16, may_take_over: bool) -> Candidate {
        Candidate {
            port,
            attempt: self.attempts,
            may_take_over,
        }
    }

    /// What a claim of `port` means for the allocation: `None` to go on.
    #[inline(always)]
    fn outcome(&self, claim: Claim, port: u16) -> Option<Result<Allocation, SnatError>> {
        match claim {
            Claim::Taken => None,
            Claim::Reserved => Some(Ok(Allocation {
                port,
                attempts: self.attempts,
                took_over: false,
                existing: false,
            })),
            Claim::Full => Some(Err(SnatError::TableFull)),
        }
    }
}

/// Allocates a source port on `nat_addr` for the flow `orig` in `table` and publishes its NAT
/// pair, by [`claim_port`].
///
/// Reserving is the reverse insert itself ([`NatTable::insert_if_absent`]); the forward mapping
/// is inserted after it. If another allocator published a forward mapping for the same flow
/// first, ours is withdrawn and theirs returned (`existing`). `syn_seq`: the sequence number of
/// the flow's first packet when it is a TCP SYN, which may then take over a TIME_WAIT mapping
/// ([`may_take_over`]); `None` for anything else.
///
/// # Errors
/// [`SnatError`] when no port could be reserved; the table then holds nothing of this flow.
pub fn allocate<T, R>(
    table: &T,
    rng: &mut R,
    cfg: &SnatConfig,
    orig: &FlowTuple,
    nat_addr: [u8; 16],
    syn_seq: Option<u32>,
) -> Result<Allocation, SnatError>
where
    T: NatTable + ?Sized,
    R: RandomSource + ?Sized,
{
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
        ..NatValue::default()
    };
    // The first taken port of the take-over window whose mapping may be taken over, and that
    // mapping as it was seen.
    let noted: Cell<Option<(u16, NatValue)>> = Cell::new(None);
    let a = claim_port(
        cfg,
        rng,
        orig.src_port,
        |_, c| {
            let (_, rev) = nat_keys(orig, nat_addr, c.port);
            match table.insert_if_absent(&rev, &back) {
                Ok(()) => Claim::Reserved,
                Err(NatInsertError::Full) => Claim::Full,
                Err(NatInsertError::Exists(old)) => {
                    if c.may_take_over
                        && noted.get().is_none()
                        && may_take_over(old.time_wait, old.seq_end, syn_seq)
                    {
                        noted.set(Some((c.port, old)));
                    }
                    Claim::Taken
                }
            }
        },
        |_| {
            let (port, old) = noted.get()?;
            let (_, rev) = nat_keys(orig, nat_addr, port);
            // Atomic: only if the mapping is still the one seen in TIME_WAIT (another
            // allocator may have taken it over meanwhile).
            if !table.compare_and_swap(&rev, &old, &back) {
                return None;
            }
            // The old flow's forward half now names a port it no longer owns: remove it (only
            // if it still names this port).
            let old_flow = FlowTuple {
                src: old.addr,
                src_port: old.port,
                ..*orig
            };
            let (old_fwd, _) = nat_keys(&old_flow, nat_addr, port);
            if let Some(v) = table.get(&old_fwd) {
                if v.addr == nat_addr && v.port == port {
                    let _ = table.remove_if(&old_fwd, &v);
                }
            }
            Some(port)
        },
    )?;
    publish(table, orig, &back, nat_addr, a)
}

/// Publishes the forward half of the pair reserved by `a`, or withdraws the reverse half if
/// the flow already has a forward mapping.
fn publish<T: NatTable + ?Sized>(
    table: &T,
    orig: &FlowTuple,
    back: &NatValue,
    nat_addr: [u8; 16],
    a: Allocation,
) -> Result<Allocation, SnatError> {
    let (fwd, rev) = nat_keys(orig, nat_addr, a.port);
    let out = NatValue {
        addr: nat_addr,
        port: a.port,
        ..NatValue::default()
    };
    match table.insert_if_absent(&fwd, &out) {
        Ok(()) => Ok(a),
        Err(NatInsertError::Exists(theirs)) => {
            let _ = table.remove_if(&rev, back);
            Ok(Allocation {
                port: theirs.port,
                took_over: false,
                existing: true,
                ..a
            })
        }
        Err(NatInsertError::Full) => {
            let _ = table.remove_if(&rev, back);
            Err(SnatError::TableFull)
        }
    }
}

/// Marks a flow's NAT pair as TIME_WAIT (its port may then be taken over by a SYN past
/// `seq_end`, the sequence number after the flow's last byte and FIN from the original side),
/// or not. Whether both halves were updated.
pub fn set_time_wait<T: NatTable + ?Sized>(
    table: &T,
    orig: &FlowTuple,
    time_wait: bool,
    seq_end: u32,
) -> bool {
    let fkey = NatKey {
        tuple: *orig,
        dir: NatDir::Forward,
    };
    let Some(f) = table.get(&fkey) else {
        return false;
    };
    let (_, rkey) = nat_keys(orig, f.addr, f.port);
    let nf = NatValue {
        time_wait,
        seq_end,
        ..f
    };
    let ok_f = table.compare_and_swap(&fkey, &f, &nf);
    let ok_r = match table.get(&rkey) {
        Some(r) if r.addr == orig.src && r.port == orig.src_port => table.compare_and_swap(
            &rkey,
            &r,
            &NatValue {
                time_wait,
                seq_end,
                ..r
            },
        ),
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
        // Sequence numbers wrap: a SYN just past the old end across 2^32 still advances.
        assert!(may_take_over(true, u32::MAX - 1, Some(3)));
        assert!(!may_take_over(true, 5, Some(u32::MAX)));
        assert!(!may_take_over(false, 5, Some(6)));
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
}
