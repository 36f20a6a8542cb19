//! Duration histograms with fixed, log-spaced buckets: recorded with one
//! atomic add, and mergeable (across locks, processes and replicas) by adding
//! bucket counts, which recent-sample percentiles are not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Finite bucket bounds: 1 µs · 2^(k/2) for k = 0..FINITE, i.e. from 1 µs to
/// about 2^37 µs (38 hours), two buckets per doubling.
const FINITE: usize = 75;
/// The finite buckets and one overflow bucket.
pub(crate) const BUCKETS: usize = FINITE + 1;

/// Upper bounds of the finite buckets, in nanoseconds (inclusive).
const BOUNDS: [u64; FINITE] = bounds();

const fn bounds() -> [u64; FINITE] {
    let mut out = [0u64; FINITE];
    let mut k = 0;
    while k < FINITE {
        let base = 1_000u64 << (k / 2);
        out[k] = if k % 2 == 0 {
            base
        } else {
            // base · √2, rounded down.
            (base as u128 * 1_414_213_562 / 1_000_000_000) as u64
        };
        k += 1;
    }
    out
}

fn bucket_of(nanos: u64) -> usize {
    BOUNDS.partition_point(|&b| b < nanos)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The live, lock-free histogram a stats entry records into.
///
/// Relaxed ordering: the fields are statistics, read as a snapshot that need
/// not be consistent across fields.
#[derive(Debug)]
pub(crate) struct AtomicHistogram {
    counts: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
    max_nanos: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
            max_nanos: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    pub(crate) fn record(&self, d: Duration) {
        let n = nanos(d);
        self.counts[bucket_of(n)].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(n, Ordering::Relaxed);
        // `fetch_max` is a compare-and-swap loop whether or not the maximum
        // moves; most records do not move it, and a plain load says so (a
        // maximum only grows, so one seen at least `n` stays so).
        if n > self.max_nanos.load(Ordering::Relaxed) {
            self.max_nanos.fetch_max(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> DurationHistogram {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        DurationHistogram {
            counts,
            sum: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)),
            max: (count > 0).then(|| Duration::from_nanos(self.max_nanos.load(Ordering::Relaxed))),
        }
    }
}

/// A snapshot of a duration histogram: counts per fixed bucket, their sum and
/// the largest value.
///
/// The buckets are the same in every process and every version of this
/// major release (1 µs · 2^(k/2), two per doubling, up to about 38 hours,
/// then one overflow bucket), so histograms of several locks, processes or
/// replicas combine exactly with [`merge`](Self::merge), and a percentile of
/// the merged histogram is a percentile of all the samples.
///
/// ```
/// use std::time::Duration;
/// use lockyard::stats::DurationHistogram;
///
/// let mut a = DurationHistogram::default();
/// a.record(Duration::from_millis(1));
/// let mut b = DurationHistogram::default();
/// for _ in 0..3 {
///     b.record(Duration::from_millis(100));
/// }
/// a.merge(&b);
/// assert_eq!(a.count(), 4);
/// let p50 = a.quantile(0.5).unwrap();
/// // An upper bound of the bucket, never above the largest sample.
/// assert!(p50 >= Duration::from_millis(100) && p50 <= a.max().unwrap());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DurationHistogram {
    /// One count per bucket ([`bucket_bounds`](Self::bucket_bounds), then
    /// the overflow bucket).
    counts: Vec<u64>,
    sum: Duration,
    max: Option<Duration>,
}

impl Default for DurationHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            sum: Duration::ZERO,
            max: None,
        }
    }
}

impl DurationHistogram {
    /// Adds one sample (for histograms built by hand, as in tests or when
    /// combining reports).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::stats::DurationHistogram;
    ///
    /// let mut h = DurationHistogram::default();
    /// h.record(Duration::from_millis(3));
    /// h.record(Duration::from_millis(5));
    /// assert_eq!((h.count(), h.sum()), (2, Duration::from_millis(8)));
    /// ```
    pub fn record(&mut self, d: Duration) {
        self.fit();
        self.counts[bucket_of(nanos(d))] += 1;
        self.sum = self.sum.saturating_add(d);
        self.max = self.max.max(Some(d));
    }

    /// Adds every sample of `other` to this histogram.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::stats::DurationHistogram;
    ///
    /// let (mut a, mut b) = (DurationHistogram::default(), DurationHistogram::default());
    /// a.record(Duration::from_millis(1));
    /// b.record(Duration::from_secs(2));
    /// a.merge(&b);
    /// assert_eq!(a.count(), 2);
    /// assert_eq!(a.max(), Some(Duration::from_secs(2)));
    /// ```
    pub fn merge(&mut self, other: &DurationHistogram) {
        self.fit();
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum = self.sum.saturating_add(other.sum);
        self.max = self.max.max(other.max);
    }

    /// How many samples it holds.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::stats::DurationHistogram;
    ///
    /// let mut h = DurationHistogram::default();
    /// assert_eq!(h.count(), 0);
    /// h.record(Duration::ZERO);
    /// assert_eq!(h.count(), 1);
    /// ```
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of all samples.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::stats::DurationHistogram;
    ///
    /// let mut h = DurationHistogram::default();
    /// for ms in [10, 20, 30] {
    ///     h.record(Duration::from_millis(ms));
    /// }
    /// assert_eq!(h.sum() / h.count() as u32, Duration::from_millis(20)); // the mean
    /// ```
    pub fn sum(&self) -> Duration {
        self.sum
    }

    /// The largest sample, if any.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::stats::DurationHistogram;
    ///
    /// let mut h = DurationHistogram::default();
    /// assert_eq!(h.max(), None);
    /// h.record(Duration::from_millis(7));
    /// h.record(Duration::from_millis(2));
    /// assert_eq!(h.max(), Some(Duration::from_millis(7)));
    /// ```
    pub fn max(&self) -> Option<Duration> {
        self.max
    }

    /// The `q` quantile (`0.0..=1.0`), as the upper bound of the bucket that
    /// holds it (at most 41 % above the true value), capped at the largest
    /// sample; `None` when empty.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::stats::DurationHistogram;
    ///
    /// let mut h = DurationHistogram::default();
    /// assert_eq!(h.quantile(0.5), None);
    /// for ms in 1..=100 {
    ///     h.record(Duration::from_millis(ms));
    /// }
    /// let p99 = h.quantile(0.99).unwrap();
    /// assert!(p99 >= Duration::from_millis(99) && p99 <= Duration::from_millis(100));
    /// ```
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let bound = BOUNDS.get(i).map(|&n| Duration::from_nanos(n));
                return match (bound, self.max) {
                    (Some(b), Some(m)) => Some(b.min(m)),
                    (_, m) => m,
                };
            }
        }
        self.max
    }

    /// The buckets' inclusive upper bounds (the overflow bucket, last in the
    /// counts, has none).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::stats::DurationHistogram;
    ///
    /// let bounds: Vec<Duration> = DurationHistogram::bucket_bounds().collect();
    /// assert_eq!(bounds[0], Duration::from_micros(1));
    /// assert!(bounds.windows(2).all(|w| w[0] < w[1]));
    /// assert_eq!(DurationHistogram::default().counts().len(), bounds.len() + 1); // + overflow
    /// ```
    pub fn bucket_bounds() -> impl Iterator<Item = Duration> {
        BOUNDS.iter().map(|&n| Duration::from_nanos(n))
    }

    /// The count of each bucket, in the order of
    /// [`bucket_bounds`](Self::bucket_bounds), then the overflow bucket.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::stats::DurationHistogram;
    ///
    /// let mut h = DurationHistogram::default();
    /// h.record(Duration::from_nanos(500)); // at or below the first bound, 1 µs
    /// assert_eq!(h.counts()[0], 1);
    /// assert_eq!(h.counts().iter().sum::<u64>(), h.count());
    /// ```
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// A deserialized histogram may come with a wrong number of buckets.
    fn fit(&mut self) {
        self.counts.resize(BUCKETS, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_grow_by_root_two_from_one_microsecond() {
        assert_eq!(BOUNDS[0], 1_000);
        assert_eq!(BOUNDS[1], 1_414);
        assert_eq!(BOUNDS[2], 2_000);
        assert!(BOUNDS.windows(2).all(|w| w[0] < w[1]));
        assert!(Duration::from_nanos(BOUNDS[FINITE - 1]) > Duration::from_secs(36 * 3600));
    }

    #[test]
    fn samples_land_in_the_bucket_whose_bound_is_the_first_at_or_above() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1_000), 0);
        assert_eq!(bucket_of(1_001), 1);
        assert_eq!(bucket_of(u64::MAX), FINITE);
    }

    #[test]
    fn the_maximum_is_the_largest_sample_whatever_the_order_and_threads() {
        let live = AtomicHistogram::default();
        live.record(Duration::from_millis(5));
        live.record(Duration::from_millis(3));
        assert_eq!(live.snapshot().max(), Some(Duration::from_millis(5)));
        live.record(Duration::from_millis(8));
        assert_eq!(live.snapshot().max(), Some(Duration::from_millis(8)));
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let live = &live;
                s.spawn(move || {
                    // Each thread's samples interleave with the others':
                    // rising, falling, rising again.
                    for i in (0..2_000u64).chain((0..2_000).rev()) {
                        live.record(Duration::from_micros(10_000 + i * 4 + t));
                    }
                });
            }
        });
        let snap = live.snapshot();
        assert_eq!(
            snap.max(),
            Some(Duration::from_micros(10_000 + 1_999 * 4 + 3))
        );
        assert_eq!(snap.count(), 3 + 4 * 4_000);
    }

    #[test]
    fn quantiles_of_a_merged_histogram_are_those_of_all_samples() {
        let live = AtomicHistogram::default();
        for ms in 1..=100u64 {
            live.record(Duration::from_millis(ms));
        }
        let mut merged = live.snapshot();
        let mut other = DurationHistogram::default();
        for _ in 0..100 {
            other.record(Duration::from_secs(10));
        }
        merged.merge(&other);
        assert_eq!(merged.count(), 200);
        assert_eq!(merged.max(), Some(Duration::from_secs(10)));
        // The median is the 100th sample (100 ms): its bucket's bound.
        let p50 = merged.quantile(0.5).unwrap();
        assert!(
            p50 >= Duration::from_millis(100) && p50 < Duration::from_millis(142),
            "{p50:?}"
        );
        assert_eq!(merged.quantile(1.0), Some(Duration::from_secs(10)));
        assert_eq!(DurationHistogram::default().quantile(0.5), None);
    }
}
