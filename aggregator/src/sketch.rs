//! A mergeable latency sketch: logarithmic buckets (10 % wide), stored sparsely, so a cell of
//! the matrix keeps a few bytes per time slot instead of every sample, and windows merge by
//! adding counts.

/// Bucket growth factor: quantiles are exact to within ±5 %.
const GROWTH: f64 = 1.1;
/// Buckets cover 1 µs .. ~190 s; longer durations land in the last bucket.
pub const BUCKETS: usize = 200;

use std::sync::LazyLock;

/// Lower bounds (µs) of every bucket: bucket i holds [GROWTH^i, GROWTH^(i+1)).
static LOWER: LazyLock<[f64; BUCKETS]> = LazyLock::new(|| std::array::from_fn(|i| GROWTH.powi(i as i32)));
/// Representative values (geometric middles), computed once instead of per quantile.
static MIDDLE: LazyLock<[f64; BUCKETS]> = LazyLock::new(|| std::array::from_fn(|i| GROWTH.powf(i as f64 + 0.5)));

/// The bucket of a duration in microseconds (a binary search, no logarithm on the hot path).
pub fn bucket_of(micros: u64) -> u8 {
    if micros <= 1 {
        return 0;
    }
    let v = micros as f64;
    let idx = LOWER.partition_point(|&lower| lower <= v).saturating_sub(1);
    idx.min(BUCKETS - 1) as u8
}

/// A representative value of a bucket (its geometric middle), microseconds.
pub fn bucket_value(bucket: u8) -> f64 {
    MIDDLE[usize::from(bucket).min(BUCKETS - 1)]
}

/// A quantile as the sketch knows it: one bucket. One byte, so a snapshot of 100,000 cells
/// keeps five quantiles a cell in 10 bytes instead of 80; [`Bucket::micros`] is the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bucket(u8);

impl Bucket {
    /// The bucket's representative value, microseconds.
    pub fn micros(self) -> f64 {
        bucket_value(self.0)
    }
}

/// Sparse bucket counts of one time slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseSketch {
    counts: Vec<(u8, u32)>,
}

impl SparseSketch {
    /// Adds one sample.
    pub fn add(&mut self, micros: u64) {
        let b = bucket_of(micros);
        match self.counts.binary_search_by_key(&b, |(k, _)| *k) {
            Ok(i) => self.counts[i].1 = self.counts[i].1.saturating_add(1),
            Err(i) => self.counts.insert(i, (b, 1)),
        }
    }

    /// Quantiles of this slot alone (ascending `qs`).
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Option<Bucket>; N] {
        let total: u64 = self.counts.iter().map(|&(_, c)| u64::from(c)).sum();
        let mut out = [None; N];
        if total == 0 {
            return out;
        }
        let ranks = qs.map(|q| ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1));
        let (mut seen, mut next) = (0u64, 0usize);
        for &(b, c) in &self.counts {
            seen += u64::from(c);
            while next < N && seen >= ranks[next] {
                out[next] = Some(Bucket(b));
                next += 1;
            }
        }
        out
    }

    /// Adds these counts into a dense merge buffer.
    pub fn merge_into(&self, dense: &mut DenseSketch) {
        for &(b, c) in &self.counts {
            dense.counts[usize::from(b)] += u64::from(c);
            dense.total += u64::from(c);
        }
    }
}

/// A merge buffer over all buckets, for computing quantiles of a window.
#[derive(Debug, Clone)]
pub struct DenseSketch {
    counts: [u64; BUCKETS],
    total: u64,
}

impl Default for DenseSketch {
    fn default() -> Self {
        Self { counts: [0; BUCKETS], total: 0 }
    }
}

impl DenseSketch {
    /// Samples merged so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Several quantiles (ascending `qs`) in one pass; `None`s when empty.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Option<Bucket>; N] {
        let mut out = [None; N];
        if self.total == 0 {
            return out;
        }
        let ranks = qs.map(|q| ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1));
        let (mut seen, mut next) = (0u64, 0usize);
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            while next < N && seen >= ranks[next] {
                out[next] = Some(Bucket(b as u8));
                next += 1;
            }
            if next == N {
                break;
            }
        }
        out
    }

    /// The `q` quantile (0..=1) in microseconds; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_value(b as u8));
            }
        }
        Some(bucket_value((BUCKETS - 1) as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_five_percent() {
        let mut s = SparseSketch::default();
        for micros in 1..=10_000u64 {
            s.add(micros * 10);
        }
        let mut d = DenseSketch::default();
        s.merge_into(&mut d);
        assert_eq!(s.quantiles([0.5, 0.9, 0.99]), d.quantiles([0.5, 0.9, 0.99]));
        for (q, exact) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0)] {
            let got = d.quantile(q).unwrap();
            assert!((got / exact - 1.0).abs() < 0.06, "q{q}: {got} vs {exact}");
        }
        assert_eq!(DenseSketch::default().quantile(0.5), None);
    }

    #[test]
    fn sub_millisecond_resolution() {
        // Loopback checks take 100-500 µs: they must not collapse into one bucket.
        assert_ne!(bucket_of(150), bucket_of(300));
        let v = bucket_value(bucket_of(250));
        assert!((v / 250.0 - 1.0).abs() < 0.06, "{v}");
        assert_eq!(bucket_of(u64::MAX), (BUCKETS - 1) as u8);
    }
}
