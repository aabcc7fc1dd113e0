//! One jittered exponential backoff for every retry loop (agent uplink, watches, kit clients),
//! so thousands of agents never retry in lockstep after an outage.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Share of a delay the jitter may add or remove (±25 %).
pub const JITTER: f64 = 0.25;

/// Delays that start at `initial`, double on every failure up to `max`, and each carry ±25 %
/// jitter; `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff from `initial` doubling to at most `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial), next: initial }
    }

    /// The delay to wait now (jittered); the one after it is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        jittered(base)
    }

    /// The un-jittered delay the next call will be based on.
    pub fn current(&self) -> Duration {
        self.next
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// 64 unpredictable bits (SipHash under the standard library's per-process random keys): for
/// jitter and for nonces an off-path sender cannot guess; not a cryptographic key.
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    h.finish()
}

/// A uniformly random factor in [0, 1).
pub fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `base` ± up to [`JITTER`].
pub fn jittered(base: Duration) -> Duration {
    base.mul_f64(1.0 - JITTER + 2.0 * JITTER * random_unit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut bases = Vec::new();
        for _ in 0..6 {
            let base = b.current();
            let d = b.next_delay();
            assert!(d >= base.mul_f64(0.75) && d <= base.mul_f64(1.25), "{d:?} vs {base:?}");
            bases.push(base.as_millis());
        }
        assert_eq!(bases, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.current(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads() {
        let delays: std::collections::BTreeSet<u128> =
            (0..50).map(|_| jittered(Duration::from_secs(10)).as_millis()).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }
}
