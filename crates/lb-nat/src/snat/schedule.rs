//! The allocation schedule: the candidate ports of [`claim_port`] and what their claims mean.

use core::num::NonZeroU32;

use super::config::{Probe, SnatConfig, MAX_ATTEMPTS};
use crate::collision::RandomSource;

/// Hard cap on rounds (128, 64, 32, 16: four), for bounded loops whatever the config says.
const MAX_ROUNDS: u32 = 8;

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

/// A port [`claim_port`] proposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The port.
    pub port: u16,
    /// Which attempt this is (1 for the first): what an attempts histogram records when the
    /// claim succeeds.
    pub attempt: u32,
    /// One of the schedule's last [`TAKE_OVER_WINDOW`](super::TAKE_OVER_WINDOW) attempts, with
    /// take-over allowed: when the port is taken by a flow that may be taken over
    /// ([`may_take_over`]), the claim notes it (the first such port) for the take-over at the
    /// end of the schedule.
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
