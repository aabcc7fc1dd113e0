//! A mergeable latency sketch: logarithmic buckets (10 % wide), so a cell of the matrix keeps
//! a few bytes per bucket and time slot instead of every sample (see `window.rs`), and windows
//! merge by adding counts.

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
    /// The bucket of a duration in microseconds.
    pub fn of(micros: u64) -> Self {
        Self(bucket_of(micros))
    }

    /// The bucket's representative value, microseconds.
    pub fn micros(self) -> f64 {
        bucket_value(self.0)
    }
}

/// Quantiles (ascending `qs`) of bucket counts given in ascending bucket order; `None`s when
/// there are none.
pub fn quantiles_sorted<const N: usize>(
    counts: impl Iterator<Item = (u8, u64)> + Clone,
    qs: [f64; N],
) -> [Option<Bucket>; N] {
    let total: u64 = counts.clone().map(|(_, c)| c).sum();
    let mut out = [None; N];
    if total == 0 {
        return out;
    }
    let ranks = qs.map(|q| ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1));
    let (mut seen, mut next) = (0u64, 0usize);
    for (b, c) in counts {
        seen += c;
        while next < N && seen >= ranks[next] {
            out[next] = Some(Bucket(b));
            next += 1;
        }
        if next == N {
            break;
        }
    }
    out
}

/// A merge buffer over all buckets, for computing quantiles of a window.
#[derive(Debug, Clone)]
pub struct DenseSketch {
    counts: [u64; BUCKETS],
    /// The lowest and highest bucket added to (a window's few buckets are read, not all 200).
    used: Option<(u8, u8)>,
}

impl Default for DenseSketch {
    fn default() -> Self {
        Self { counts: [0; BUCKETS], used: None }
    }
}

impl DenseSketch {
    /// Adds `count` samples of `bucket`.
    pub fn add(&mut self, bucket: u8, count: u64) {
        let bucket = bucket.min((BUCKETS - 1) as u8);
        self.counts[usize::from(bucket)] += count;
        self.used = Some(self.used.map_or((bucket, bucket), |(lo, hi)| (lo.min(bucket), hi.max(bucket))));
    }

    /// Several quantiles (ascending `qs`) in one pass; `None`s when empty.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Option<Bucket>; N] {
        let Some((lo, hi)) = self.used else { return [None; N] };
        quantiles_sorted((lo..=hi).map(|b| (b, self.counts[usize::from(b)])).filter(|&(_, c)| c > 0), qs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_five_percent() {
        let mut d = DenseSketch::default();
        for micros in 1..=10_000u64 {
            d.add(bucket_of(micros * 10), 1);
        }
        let got = d.quantiles([0.5, 0.9, 0.99]).map(|b| b.map_or(0.0, Bucket::micros));
        for (got, exact) in got.into_iter().zip([50_000.0, 90_000.0, 99_000.0]) {
            assert!((got / exact - 1.0).abs() < 0.06, "{got} vs {exact}");
        }
        assert_eq!(DenseSketch::default().quantiles([0.5]), [None]);
        // Sparse counts in bucket order give the dense buffer's answer.
        let sparse = (0..200u8).map(|b| (b, u64::from(b % 7)));
        let mut dense = DenseSketch::default();
        sparse.clone().for_each(|(b, c)| dense.add(b, c));
        assert_eq!(quantiles_sorted(sparse, [0.1, 0.5, 0.999]), dense.quantiles([0.1, 0.5, 0.999]));
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
