//! Who checked us lately: distinct `KUBENURSE-NEIGHBOUR-ORIGIN` values of the last minute,
//! bounded so a flood of made-up origins cannot grow memory.

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// How long an origin counts after its last check (upstream: one minute).
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most origins remembered; far above any neighbour limit.
pub const MAX_ORIGINS: usize = 10_000;
/// Longest origin header accepted (a pod name is at most 253 bytes).
pub const MAX_ORIGIN_LEN: usize = 253;

/// Origins seen in the last `WINDOW`; sharded, so concurrent neighbour requests never queue on
/// one lock.
#[derive(Default)]
pub struct IncomingChecks {
    seen: DashMap<String, Instant>,
}

impl IncomingChecks {
    /// Notes a check from `origin`; returns false when it was refused (too long, or full).
    pub fn record(&self, origin: &str, now: Instant) -> bool {
        if origin.is_empty() || origin.len() > MAX_ORIGIN_LEN {
            return false;
        }
        if let Some(mut at) = self.seen.get_mut(origin) {
            *at = now;
            return true;
        }
        if self.seen.len() >= MAX_ORIGINS {
            self.seen.retain(|_, at| now.saturating_duration_since(*at) < WINDOW);
            if self.seen.len() >= MAX_ORIGINS {
                return false;
            }
        }
        self.seen.insert(origin.to_string(), now);
        true
    }

    /// Distinct origins of the last `WINDOW`, forgetting older ones.
    pub fn count(&self, now: Instant) -> usize {
        self.seen.retain(|_, at| now.saturating_duration_since(*at) < WINDOW);
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_distinct_recent_origins() {
        let t0 = Instant::now();
        let inc = IncomingChecks::default();
        assert!(inc.record("a", t0));
        assert!(inc.record("a", t0));
        assert!(inc.record("b", t0));
        assert!(!inc.record("", t0));
        assert!(!inc.record(&"x".repeat(300), t0));
        assert_eq!(inc.count(t0), 2);
        assert!(inc.record("b", t0 + Duration::from_secs(30)));
        assert_eq!(inc.count(t0 + Duration::from_secs(61)), 1);
    }

    #[test]
    fn bounded_under_a_flood() {
        let t0 = Instant::now();
        let inc = IncomingChecks::default();
        for i in 0..MAX_ORIGINS + 50 {
            inc.record(&format!("pod-{i}"), t0);
        }
        assert_eq!(inc.count(t0), MAX_ORIGINS);
        assert!(inc.record("late", t0 + WINDOW));
        assert_eq!(inc.count(t0 + WINDOW), 1);
    }
}
