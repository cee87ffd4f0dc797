//! The SNAT range and the allocation schedule's parameters.

use lb_api::abi::DatapathConfig;

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
/// Most attempts of a first round, whatever the config says: netfilter's 128 (a schedule then
/// has at most 255 attempts, 128 + 64 + ... + 1).
pub const MAX_ATTEMPTS: u32 = 128;
