//! A cell's sliding window, compact: a ring of time slots with their counters (32 bytes a
//! slot, 320 for the default ten), and one vector of every slot's latency and round-trip
//! buckets (8 bytes per bucket a slot uses). Nothing is allocated as slots come and go. A
//! vector of buckets per slot (and a box per slot's UDP data) was 1.4 KiB a full window and two
//! allocations a slot: 140 MiB over 100,000 cells.

use std::cmp::Ordering;
use std::collections::VecDeque;

use crate::sketch::{bucket_of, quantiles_sorted, Bucket, DenseSketch};

/// One time slot's counters.
#[derive(Debug, Clone, Default)]
struct Slot {
    index: i64,
    count: u32,
    errors: u32,
    syn_retransmits: u32,
    udp_sent: u32,
    udp_lost: u32,
    /// Whether UDP packets were counted in it (no UDP data is null, not 0).
    udp: bool,
}

/// One bucket's count in one slot. `slot` is the slot's index modulo 2^16: the kept slots
/// span far less than 2^15, so the wrapping difference orders them.
#[derive(Debug, Clone, Copy)]
struct Sample {
    slot: u16,
    /// UDP round trip (else an HTTP check's latency).
    udp: bool,
    bucket: u8,
    count: u32,
}

/// The tag of a slot index in [`Sample::slot`] (its low 16 bits).
fn tag(index: i64) -> u16 {
    index as u16
}

/// Slot order of two tags.
fn slot_order(a: u16, b: u16) -> Ordering {
    (a.wrapping_sub(b) as i16).cmp(&0)
}

/// What [`Window::stats`] sums over the slots in a window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Results.
    pub count: u64,
    /// Failed results.
    pub errors: u64,
    /// SYN retransmissions.
    pub syn_retransmits: u64,
    /// UDP packets sent and lost, when any slot has UDP data.
    pub udp: Option<(u64, u64)>,
}

/// Quantiles and sums of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowStats {
    /// Sums.
    pub counts: WindowCounts,
    /// p50, p90, p99 of successful checks.
    pub latency: [Option<Bucket>; 3],
    /// p50, p99 of UDP round trips.
    pub rtt: [Option<Bucket>; 2],
}

/// The window: slots in index order, samples in (slot, kind, bucket) order.
#[derive(Debug, Clone, Default)]
pub struct Window {
    slots: VecDeque<Slot>,
    samples: Vec<Sample>,
}

impl Window {
    /// Counts a result in the slot of `at` (and its latency, when it did not fail).
    pub fn record_tcp(&mut self, at: i64, slot_micros: i64, retention: usize, micros: u64, failed: bool, syn: u32) {
        let pos = self.slot_at(at, slot_micros, retention);
        let slot = &mut self.slots[pos];
        slot.count = slot.count.saturating_add(1);
        slot.syn_retransmits = slot.syn_retransmits.saturating_add(syn);
        if failed {
            slot.errors = slot.errors.saturating_add(1);
        } else {
            let t = tag(slot.index);
            self.add(t, false, micros);
        }
    }

    /// Adds a round of UDP packets (and their round trips, µs) to the slot of `at`.
    pub fn record_udp(&mut self, at: i64, slot_micros: i64, retention: usize, sent: u32, lost: u32, rtts: &[u64]) {
        let pos = self.slot_at(at, slot_micros, retention);
        let slot = &mut self.slots[pos];
        slot.udp = true;
        slot.udp_sent = slot.udp_sent.saturating_add(sent);
        slot.udp_lost = slot.udp_lost.saturating_add(lost);
        let t = tag(slot.index);
        for &rtt in rtts {
            self.add(t, true, rtt);
        }
    }

    fn add(&mut self, slot: u16, udp: bool, micros: u64) {
        let bucket = bucket_of(micros);
        let key = |s: &Sample| slot_order(s.slot, slot).then(s.udp.cmp(&udp)).then(s.bucket.cmp(&bucket));
        match self.samples.binary_search_by(key) {
            Ok(i) => self.samples[i].count = self.samples[i].count.saturating_add(1),
            Err(i) => self.samples.insert(i, Sample { slot, udp, bucket, count: 1 }),
        }
    }

    /// The position of the slot a result at `at` goes into (a new one when `at` is past the
    /// newest), after dropping slots (and their samples) older than `retention` slots.
    fn slot_at(&mut self, at: i64, slot_micros: i64, retention: usize) -> usize {
        let index = at.div_euclid(slot_micros.max(1));
        let retention = retention.max(1);
        let newest = self.slots.back().map_or(index, |s| s.index.max(index));
        while self.slots.len() > 1 && self.slots.front().is_some_and(|s| s.index <= newest - retention as i64) {
            self.pop_oldest();
        }
        if self.slots.back().is_none_or(|s| s.index < index) {
            if self.slots.len() >= retention {
                self.pop_oldest();
            }
            if self.slots.capacity() == 0 {
                self.slots.reserve_exact(retention);
            }
            self.slots.push_back(Slot { index, ..Slot::default() });
        }
        // A result older than every kept slot, or between slots: counted in the oldest slot
        // that is not newer, or the oldest kept (late results are rare and small).
        self.slots.iter().rposition(|s| s.index <= index).unwrap_or(0)
    }

    fn pop_oldest(&mut self) {
        if let Some(old) = self.slots.pop_front() {
            let t = tag(old.index);
            let n = self.samples.iter().take_while(|s| s.slot == t).count();
            self.samples.drain(..n);
        }
    }

    /// Sums and quantiles over the slots from `oldest` (a slot index) on.
    pub fn stats(&self, oldest: i64) -> WindowStats {
        let first = self.slots.iter().position(|s| s.index >= oldest).unwrap_or(self.slots.len());
        let in_window = self.slots.range(first..);
        let mut counts = WindowCounts::default();
        for s in in_window.clone() {
            counts.count += u64::from(s.count);
            counts.errors += u64::from(s.errors);
            counts.syn_retransmits += u64::from(s.syn_retransmits);
            if s.udp {
                let (sent, lost) = counts.udp.get_or_insert((0, 0));
                *sent += u64::from(s.udp_sent);
                *lost += u64::from(s.udp_lost);
            }
        }
        let samples = match self.slots.get(first) {
            Some(s) => {
                let t = tag(s.index);
                &self.samples[self.samples.partition_point(|x| slot_order(x.slot, t).is_lt())..]
            }
            None => &[],
        };
        let one_slot = in_window.len() == 1;
        let latency = quantiles(samples, false, one_slot, [0.5, 0.9, 0.99]);
        let rtt = if counts.udp.is_some() { quantiles(samples, true, one_slot, [0.5, 0.99]) } else { [None; 2] };
        WindowStats { counts, latency, rtt }
    }
}

/// Quantiles of the `udp` samples: straight from one slot's (sorted by bucket), merged in a
/// dense buffer over several.
fn quantiles<const N: usize>(samples: &[Sample], udp: bool, one_slot: bool, qs: [f64; N]) -> [Option<Bucket>; N] {
    let of_kind = samples.iter().filter(move |s| s.udp == udp).map(|s| (s.bucket, u64::from(s.count)));
    if one_slot {
        return quantiles_sorted(of_kind, qs);
    }
    let mut dense = DenseSketch::default();
    for (bucket, count) in of_kind {
        dense.add(bucket, count);
    }
    dense.quantiles(qs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT: i64 = 1_000_000;

    #[test]
    fn expired_slots_take_their_samples_with_them() {
        let mut w = Window::default();
        for i in 0..30i64 {
            w.record_tcp(i * SLOT, SLOT, 10, 100 + i as u64 * 100, false, 0);
            w.record_udp(i * SLOT, SLOT, 10, 2, 1, &[50]);
        }
        assert_eq!(w.slots.len(), 10);
        assert_eq!(w.samples.len(), 20, "two samples a slot, only the kept slots'");
        assert!(w.slots.capacity() <= 10, "no slack: {}", w.slots.capacity());
        let s = w.stats(20);
        assert_eq!(s.counts, WindowCounts { count: 10, errors: 0, syn_retransmits: 0, udp: Some((20, 10)) });
        // Latencies 2,100 .. 3,000 µs: the median is about 2,500.
        let p50 = s.latency[0].map(Bucket::micros).unwrap_or_default();
        assert!((2_300.0..2_700.0).contains(&p50), "{p50}");
        assert!(s.rtt[0].is_some_and(|b| (b.micros() - 50.0).abs() < 5.0));
    }

    #[test]
    fn late_results_land_in_the_slot_they_belong_to() {
        let mut w = Window::default();
        w.record_tcp(0, SLOT, 10, 100, false, 0);
        w.record_tcp(5 * SLOT, SLOT, 10, 100, false, 0);
        // Between the two kept slots: counted in the older one, ordered before the newer.
        w.record_tcp(3 * SLOT, SLOT, 10, 900, false, 0);
        w.record_tcp(3 * SLOT, SLOT, 10, 1_000, true, 0);
        assert_eq!(w.stats(5).counts.count, 1);
        let all = w.stats(0);
        assert_eq!((all.counts.count, all.counts.errors), (4, 1));
        assert_eq!(w.stats(0).latency[2], Some(Bucket::of(900)));
        assert_eq!(w.stats(5).latency, [Some(Bucket::of(100)); 3]);
        assert!(all.counts.udp.is_none() && all.rtt == [None; 2], "no UDP data: none");
    }

    #[test]
    fn slot_tags_wrap_without_losing_order() {
        let mut w = Window::default();
        let base = (1i64 << 16) - 3; // tags 65533, 65534, 65535, 0, 1, ...
        for i in 0..8 {
            w.record_tcp((base + i) * SLOT, SLOT, 10, 100 * (i as u64 + 1), false, 0);
        }
        let s = w.stats(base + 5);
        assert_eq!(s.counts.count, 3);
        assert_eq!(s.latency[0], Some(Bucket::of(700)), "the slots past the wrap: 600, 700, 800 µs");
        for i in 8..20 {
            w.record_tcp((base + i) * SLOT, SLOT, 10, 100, false, 0);
        }
        assert_eq!(w.samples.len(), 10, "expired slots dropped across the wrap");
    }

    #[test]
    fn one_slot_and_many_give_the_same_quantiles_for_the_same_samples() {
        let (mut one, mut spread) = (Window::default(), Window::default());
        for i in 0..50u64 {
            one.record_tcp(0, SLOT, 10, 100 + i * 37, false, 0);
            spread.record_tcp((i % 5) as i64 * SLOT, SLOT, 10, 100 + i * 37, false, 0);
        }
        assert_eq!(one.stats(0).latency, spread.stats(0).latency);
    }
}
