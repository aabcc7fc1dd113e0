//! A token bucket: the one way kubenurse-rs limits a rate (UDP echo replies per source,
//! expensive HTTP answers). Time is passed in, so the arithmetic is tested without sleeping.

use std::time::Instant;

/// A sustained rate and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Most tokens held (and taken at once after a quiet spell).
    pub burst: f64,
}

/// The tokens of one limited flow and when they were last counted.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A bucket holding a whole burst at `now`.
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self { tokens: rate.burst, at: now }
    }

    /// The tokens it would hold at `now` (refilled, capped at the burst).
    pub fn level(&self, rate: Rate, now: Instant) -> f64 {
        (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate.per_second).min(rate.burst)
    }

    /// Takes one token at `now` if there is one.
    pub fn try_take(&mut self, rate: Rate, now: Instant) -> bool {
        self.tokens = self.level(rate, now);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let rate = Rate { per_second: 10.0, burst: 3.0 };
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        assert_eq!((0..5).filter(|_| b.try_take(rate, t0)).count(), 3, "the burst, no more");
        assert!(!b.try_take(rate, t0 + Duration::from_millis(50)), "half a token after 50 ms");
        assert!(b.try_take(rate, t0 + Duration::from_millis(100)), "one after 100 ms");
        // A long quiet spell refills a burst, never more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.level(rate, later), 3.0);
        assert_eq!((0..5).filter(|_| b.try_take(rate, later)).count(), 3);
        // A clock read out of order never adds tokens.
        assert!(!b.try_take(rate, t0));
    }
}
