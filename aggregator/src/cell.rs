//! One matrix cell (a source node checking a destination, or one node's own check): a sliding
//! window of time slots with latency sketches and error counts, the last result, and the
//! hysteresis that decides whether the cell is failing or slow right now.

use std::collections::VecDeque;

use crate::sketch::{DenseSketch, SparseSketch};

/// Consecutive-rounds hysteresis: turns bad after `k` bad rounds in a row, good after `k` good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    run: u32,
    run_is_bad: bool,
    /// The current verdict.
    pub bad: bool,
}

impl Streak {
    /// Feeds one round's verdict.
    pub fn observe(&mut self, bad: bool, k: u32) {
        if bad == self.run_is_bad {
            self.run = self.run.saturating_add(1);
        } else {
            self.run_is_bad = bad;
            self.run = 1;
        }
        if self.run >= k.max(1) {
            self.bad = bad;
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Slot {
    index: i64,
    count: u32,
    errors: u32,
    sketch: SparseSketch,
}

/// Window statistics of a cell.
#[derive(Debug, Clone, PartialEq)]
pub struct CellStats {
    /// Results in the window.
    pub count: u64,
    /// Failed results in the window.
    pub errors: u64,
    /// Latency quantiles of successful results, microseconds.
    pub p50_micros: Option<f64>,
    /// 90th percentile.
    pub p90_micros: Option<f64>,
    /// 99th percentile.
    pub p99_micros: Option<f64>,
}

impl CellStats {
    /// errors / count (0 when empty).
    pub fn error_ratio(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.errors as f64 / self.count as f64
        }
    }
}

/// One cell.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    slots: VecDeque<Slot>,
    /// Latency of the last result, microseconds.
    pub last_micros: u64,
    /// Whether the last result failed.
    pub last_failed: bool,
    /// Whether that failure lay in the source agent's own node (`local_…` error kind).
    pub last_local: bool,
    /// Error text of the last failure (kept after recovery, for operators).
    pub last_error: Option<String>,
    /// When the last result arrived (aggregator clock, unix µs).
    pub last_seen: i64,
    /// Failing per the hysteresis.
    pub health: Streak,
    /// Slow per the hysteresis.
    pub latency: Streak,
    /// The last sender round the hysteresis counted, and when (unix µs).
    counted: Option<(u64, i64)>,
}

impl Cell {
    /// Whether a result of sender round `round` arriving at `now` is a new round for the
    /// hysteresis: another round number than the last counted one (a restarted agent counts from
    /// 1 again; 0, from senders without round numbers, is always another) and at least `min_gap`
    /// µs after it. So the verdict moves by rounds, however fast a sender sends; the window
    /// statistics take every result.
    pub fn new_round(&mut self, round: u64, now: i64, min_gap: i64) -> bool {
        let fresh = match self.counted {
            None => true,
            Some((last, at)) => (round == 0 || round != last) && now - at >= min_gap,
        };
        if fresh {
            self.counted = Some((round, now));
        }
        fresh
    }

    /// Records a result at `at` (unix µs) into slot `at / slot_micros`, dropping slots older
    /// than `retention` slots.
    pub fn record(&mut self, at: i64, slot_micros: i64, retention: usize, micros: u64, failed: bool) {
        let index = at.div_euclid(slot_micros.max(1));
        if self.slots.back().is_none_or(|s| s.index < index) {
            self.slots.push_back(Slot { index, ..Slot::default() });
        }
        let slot = match self.slots.iter_mut().rev().find(|s| s.index <= index) {
            Some(s) if s.index == index => s,
            // A result older than every kept slot, or between slots: count it in the oldest
            // slot that is not newer (late results are rare and small).
            Some(s) => s,
            None => match self.slots.front_mut() {
                Some(s) => s,
                None => return,
            },
        };
        slot.count = slot.count.saturating_add(1);
        if failed {
            slot.errors = slot.errors.saturating_add(1);
        } else {
            slot.sketch.add(micros);
        }
        let newest = self.slots.back().map_or(index, |s| s.index);
        while self.slots.front().is_some_and(|s| s.index <= newest - retention as i64) {
            self.slots.pop_front();
        }
    }

    /// Statistics over the slots that overlap the last `window_slots` slots before `now`.
    pub fn stats(&self, now: i64, slot_micros: i64, window_slots: usize) -> CellStats {
        let current = now.div_euclid(slot_micros.max(1));
        let oldest = current - window_slots as i64 + 1;
        let (mut count, mut errors) = (0u64, 0u64);
        let mut in_window = self.slots.iter().filter(|s| s.index >= oldest).peekable();
        let first = in_window.next();
        let [p50_micros, p90_micros, p99_micros] = match (first, in_window.peek()) {
            (None, _) => [None; 3],
            // One slot (the common case for short windows): quantiles straight from it.
            (Some(s), None) => {
                count += u64::from(s.count);
                errors += u64::from(s.errors);
                s.sketch.quantiles([0.5, 0.9, 0.99])
            }
            (Some(s), Some(_)) => {
                let mut dense = DenseSketch::default();
                for s in std::iter::once(s).chain(in_window) {
                    count += u64::from(s.count);
                    errors += u64::from(s.errors);
                    s.sketch.merge_into(&mut dense);
                }
                dense.quantiles([0.5, 0.9, 0.99])
            }
        };
        CellStats { count, errors, p50_micros, p90_micros, p99_micros }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis_counts_rounds_not_results() {
        let mut c = Cell::default();
        assert!(c.new_round(1, 0, 500));
        assert!(!c.new_round(1, 1_000, 500), "same round again");
        assert!(!c.new_round(2, 100, 500), "next round too soon");
        assert!(c.new_round(2, 600, 500));
        assert!(!c.new_round(2, 5_000, 500), "the same round later");
        assert!(c.new_round(1, 5_000, 500), "a restarted sender counts from 1 again");
        assert!(c.new_round(0, 6_000, 500), "no round numbers: time alone");
        assert!(!c.new_round(0, 6_100, 500));
    }

    #[test]
    fn streak_needs_k_in_a_row() {
        let mut s = Streak::default();
        s.observe(true, 2);
        assert!(!s.bad, "one lost packet pages nobody");
        s.observe(false, 2);
        s.observe(true, 2);
        assert!(!s.bad);
        s.observe(true, 2);
        assert!(s.bad);
        s.observe(false, 2);
        assert!(s.bad, "recovery needs k good rounds too");
        s.observe(false, 2);
        assert!(!s.bad);
    }

    #[test]
    fn window_slides() {
        let slot = 30_000_000; // 30 s
        let mut c = Cell::default();
        for i in 0..20i64 {
            c.record(i * 15_000_000, slot, 10, 200 + i as u64, i % 4 == 0);
        }
        let now = 19 * 15_000_000;
        let all = c.stats(now, slot, 10);
        assert_eq!(all.count, 20);
        assert_eq!(all.errors, 5);
        let recent = c.stats(now, slot, 2);
        assert_eq!(recent.count, 4);
        // Ten slots kept, the oldest dropped as new ones arrive.
        for i in 20..40i64 {
            c.record(i * 15_000_000, slot, 10, 300, false);
        }
        assert_eq!(c.stats(39 * 15_000_000, slot, 100).count, 20);
        assert!(c.stats(now, slot, 10).p99_micros.is_some());
    }
}
