//! Injectable clocks. The datapath itself takes "now" as an argument; these give it one.

#[cfg(target_has_atomic = "64")]
use core::sync::atomic::{AtomicU64, Ordering};

/// A source of the current time in nanoseconds on the kernel's `CLOCK_MONOTONIC` scale (the
/// scale of `bpf_ktime_get_ns`), so userspace and kernel timestamps compare.
pub trait Clock {
    /// Now, in ns.
    fn now_ns(&self) -> u64;
}

#[cfg(target_has_atomic = "64")]
/// A clock that moves only when told to: every timeout scenario becomes a fast, deterministic test.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

#[cfg(target_has_atomic = "64")]
impl ManualClock {
    /// A clock reading `ns`.
    #[must_use]
    pub const fn new(ns: u64) -> Self {
        Self(AtomicU64::new(ns))
    }

    /// Moves the clock forward by `ns`.
    pub fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::Relaxed);
    }

    /// Sets the clock to `ns`.
    pub fn set(&self, ns: u64) {
        self.0.store(ns, Ordering::Relaxed);
    }
}

#[cfg(target_has_atomic = "64")]
impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The real `CLOCK_MONOTONIC_COARSE`, identical to the clock the kernel programs read
/// (`bpf_ktime_get_coarse_ns`): `CLOCK_MONOTONIC` as of the last timer tick, so at most one tick
/// (1-10 ms) behind it, on the same scale. Conntrack's timeouts are seconds.
#[cfg(feature = "std")]
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

#[cfg(feature = "std")]
impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC_COARSE is always
        // available on Linux (since 2.6.32), so clock_gettime only writes into `ts`.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        (ts.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(ts.tv_nsec as u64)
    }
}
