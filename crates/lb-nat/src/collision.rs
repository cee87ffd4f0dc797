//! Source-port collision resolution for source-preserving forwarding.
//!
//! A client reaching NodePorts on several nodes (or several frontends of one node) may use one
//! source port for all of them. Once each path forwards to the same backend keeping the client
//! address, the reply tuples (backend → client ip:port) collide: only one flow can own them. The
//! later flow gets its source port rewritten to a random port from a range no OS uses for
//! ephemeral ports (default 20000-29999, Calico's), with a few tries; conntrack remembers the
//! rewrite and replies get the original port back.

/// A source of random 32-bit values: `bpf_get_prandom_u32` in the kernel, a seeded PRNG in
/// userspace (deterministic tests).
pub trait RandomSource {
    /// The next random value.
    fn random_u32(&mut self) -> u32;
}

/// A small seeded PRNG (xorshift32 of a SplitMix-scrambled seed): deterministic, `no_std`, for
/// the userspace engine and tests. Not for anything security-related.
#[derive(Debug, Clone)]
pub struct XorShift32(u32);

impl XorShift32 {
    /// A generator from `seed` (any value, 0 included).
    #[must_use]
    pub const fn new(seed: u32) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9);
        z = (z ^ (z >> 16)).wrapping_mul(0x85eb_ca6b);
        z = (z ^ (z >> 13)).wrapping_mul(0xc2b2_ae35);
        z ^= z >> 16;
        Self(if z == 0 { 0x1234_5678 } else { z })
    }
}

impl RandomSource for XorShift32 {
    #[inline(always)]
    fn random_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

/// Most tries the resolver makes, whatever the configuration says (a bounded loop for the
/// verifier).
pub const MAX_SOURCE_PORT_TRIES: u32 = 32;

/// Where rewritten source ports come from, and how many tries a collision gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePortRange {
    /// First port (inclusive).
    pub min: u16,
    /// Last port (inclusive).
    pub max: u16,
    /// Random ports tried before giving up (at most [`MAX_SOURCE_PORT_TRIES`]).
    pub tries: u32,
}

impl Default for SourcePortRange {
    /// Calico's defaults: 20000-29999, 3 tries.
    fn default() -> Self {
        Self {
            min: 20_000,
            max: 29_999,
            tries: 3,
        }
    }
}

impl SourcePortRange {
    /// The range a datapath configuration asks for, the default for zero fields or an empty range.
    #[inline(always)]
    #[must_use]
    pub fn from_config(min: u16, max: u16, tries: u32) -> Self {
        let d = Self::default();
        if min == 0 || max < min {
            return Self {
                tries: if tries == 0 { d.tries } else { tries },
                ..d
            };
        }
        Self {
            min,
            max,
            tries: if tries == 0 { d.tries } else { tries },
        }
    }

    /// A port of the range for a random value.
    #[inline(always)]
    #[must_use]
    pub fn pick(&self, random: u32) -> u16 {
        let span = u32::from(self.max.saturating_sub(self.min)) + 1;
        // `random % span < span <= 65536 - min`, so the sum fits in u16.
        self.min.wrapping_add((random % span) as u16)
    }
}

/// What reserving a candidate port did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// The reply tuple with this port is now ours (inserted if absent, atomically).
    Reserved,
    /// Another flow owns this port: try another.
    Taken,
    /// The table refused for another reason (full): stop trying.
    Failed,
}

/// Tries up to `range.tries` random ports, calling `reserve(ctx, port)` for each (which must
/// insert the reply tuple with `port` only if absent). Returns the reserved port, or `None` when
/// every try collided or the table refused.
///
/// `ctx` is both the random source and whatever `reserve` writes to (the pipeline's tables), so
/// the kernel and userspace pass the same object.
#[inline(always)]
pub fn resolve_source_port<T, F>(
    range: &SourcePortRange,
    ctx: &mut T,
    mut reserve: F,
) -> Option<u16>
where
    T: RandomSource + ?Sized,
    F: FnMut(&mut T, u16) -> Reserve,
{
    let tries = if range.tries > MAX_SOURCE_PORT_TRIES {
        MAX_SOURCE_PORT_TRIES
    } else {
        range.tries
    };
    let mut i = 0;
    while i < tries {
        let port = range.pick(ctx.random_u32());
        match reserve(ctx, port) {
            Reserve::Reserved => return Some(port),
            Reserve::Taken => {}
            Reserve::Failed => return None,
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn picks_stay_in_range_and_cover_it() {
        let r = SourcePortRange {
            min: 20_000,
            max: 20_009,
            tries: 3,
        };
        let mut rng = XorShift32::new(1);
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let p = r.pick(rng.random_u32());
            assert!((20_000..=20_009).contains(&p));
            seen.insert(p);
        }
        assert_eq!(seen.len(), 10);
        let full = SourcePortRange {
            min: 1,
            max: u16::MAX,
            tries: 1,
        };
        assert_eq!(
            full.pick(u32::MAX),
            full.min.wrapping_add((u32::MAX % 65535) as u16)
        );
    }

    #[test]
    fn resolver_retries_taken_ports_and_stops_after_tries() {
        let r = SourcePortRange::default();
        let mut rng = XorShift32::new(9);
        let mut calls = 0;
        let got = resolve_source_port(&r, &mut rng, |_, _| {
            calls += 1;
            if calls < 3 {
                Reserve::Taken
            } else {
                Reserve::Reserved
            }
        });
        assert!(got.is_some_and(|p| (20_000..=29_999).contains(&p)));
        assert_eq!(calls, 3);
        calls = 0;
        assert_eq!(
            resolve_source_port(&r, &mut rng, |_, _| {
                calls += 1;
                Reserve::Taken
            }),
            None
        );
        assert_eq!(calls, 3);
        calls = 0;
        assert_eq!(
            resolve_source_port(&r, &mut rng, |_, _| {
                calls += 1;
                Reserve::Failed
            }),
            None
        );
        assert_eq!(calls, 1);
    }

    #[test]
    fn config_zero_means_default_and_tries_are_capped() {
        assert_eq!(
            SourcePortRange::from_config(0, 0, 0),
            SourcePortRange::default()
        );
        assert_eq!(
            SourcePortRange::from_config(30_000, 30_099, 2),
            SourcePortRange {
                min: 30_000,
                max: 30_099,
                tries: 2
            }
        );
        let r = SourcePortRange {
            tries: 1000,
            ..Default::default()
        };
        let mut rng = XorShift32::new(0);
        let mut calls = 0;
        let _ = resolve_source_port(&r, &mut rng, |_, _| {
            calls += 1;
            Reserve::Taken
        });
        assert_eq!(calls, MAX_SOURCE_PORT_TRIES);
    }
}
