//! SNAT port allocation where allocating a port and reserving it are one atomic step.
//!
//! The bug this prevents (netfilter before its fix, DESIGN.md incident 3): a port was *chosen*
//! as free, and the conntrack entry claiming it was *inserted* later; two CPUs chose the same port
//! in between, the second insert failed and the SYN was dropped. Here the only way to take a port
//! is to insert the reply-direction mapping where absent (`BPF_NOEXIST`): whoever inserts first
//! owns the port, the loser simply tries the next one.
//!
//! The schedule follows netfilter's `nf_nat_l4proto_unique_tuple`: up to 128 attempts, then
//! halve the attempts, until fewer than 16 remain (the flow's own port first when it is free);
//! each attempt draws a random port ([`Probe::Scattered`]) or walks on from a random offset
//! ([`Probe::Consecutive`], netfilter's). In the last 32 attempts a mapping whose flow is in
//! TIME_WAIT may be taken over when the new SYN's sequence number is past the old flow's last
//! one ([`may_take_over`]), as netfilter does.
//!
//! * [`config`](SnatConfig): the range and the schedule; [`SnatConfig::of_datapath`] is the one
//!   the pipeline allocates with.
//! * [`claim_port`]: the schedule itself, which knows nothing of the table: it proposes ports
//!   and a closure claims them. The datapath pipeline (`lb_datapath`) claims in the conntrack
//!   table (the reverse entry keyed by the reply tuple), in the engine and in the eBPF programs
//!   alike.
//!
//! A reference model of a NAT-pair table allocating through [`claim_port`] (the race and
//! pressure scenarios of DESIGN.md incident 3) lives beside its tests, in `tests/model` of this
//! crate.
//!
//! ```
//! use lb_nat::collision::XorShift32;
//! use lb_nat::snat::{claim_port, Claim, SnatConfig};
//!
//! let cfg = SnatConfig { min: 5000, max: 5009, ..SnatConfig::default() };
//! let mut used = [false; 10];
//! let a = claim_port(
//!     &cfg,
//!     &mut XorShift32::new(1),
//!     5003, // the flow's own port: in the range and free, so it is kept
//!     |_, c| match used.get_mut(usize::from(c.port - 5000)) {
//!         Some(u) if !*u => {
//!             *u = true;
//!             Claim::Reserved
//!         }
//!         _ => Claim::Taken,
//!     },
//!     |_| None,
//! )
//! .unwrap();
//! assert_eq!((a.port, a.attempts), (5003, 1));
//! ```

mod config;
mod schedule;

pub use config::{
    Probe, SnatConfig, DEFAULT_MAX_ATTEMPTS, DEFAULT_MIN_ATTEMPTS, MAX_ATTEMPTS, TAKE_OVER_WINDOW,
};
pub use schedule::{claim_port, may_take_over, Allocation, Candidate, Claim, SnatError};

#[cfg(test)]
mod tests;
