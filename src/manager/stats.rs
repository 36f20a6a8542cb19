//! [`LockStats`]: telemetry the [`AsyncLockManager`](super::AsyncLockManager)
//! keeps per registered lock.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many recent wait times each lock keeps for percentiles.
const WAIT_SAMPLES: usize = 1024;

/// Live counters of one lock. All counters are monotonic except `held`.
///
/// Relaxed ordering throughout: the counters are statistics, read as a
/// snapshot that need not be consistent across fields.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    acquisitions: AtomicU64,
    contended: AtomicU64,
    timeouts: AtomicU64,
    errors: AtomicU64,
    held: AtomicU64,
    waits: Mutex<WaitRing>,
}

#[derive(Debug, Default)]
struct WaitRing {
    samples: Vec<Duration>,
    next: usize,
}

impl WaitRing {
    fn push(&mut self, wait: Duration) {
        if self.samples.len() < WAIT_SAMPLES {
            self.samples.push(wait);
        } else {
            self.samples[self.next] = wait;
        }
        self.next = (self.next + 1) % WAIT_SAMPLES;
    }
}

impl Counters {
    pub(crate) fn acquired(&self, waited: Duration, contended: bool) {
        self.acquisitions.fetch_add(1, Ordering::Relaxed);
        if contended {
            self.contended.fetch_add(1, Ordering::Relaxed);
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        // A poisoned ring only means a panic elsewhere mid-push; the samples are still usable.
        self.waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(waited);
    }

    pub(crate) fn released(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn timed_out(&self) {
        self.contended.fetch_add(1, Ordering::Relaxed);
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LockStat {
        let mut waits = self
            .waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .samples
            .clone();
        waits.sort_unstable();
        let pct = |p: f64| -> Option<Duration> {
            if waits.is_empty() {
                return None;
            }
            let idx = ((waits.len() - 1) as f64 * p).round() as usize;
            waits.get(idx).copied()
        };
        LockStat {
            acquisitions: self.acquisitions.load(Ordering::Relaxed),
            contended: self.contended.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
            wait_p50: pct(0.50),
            wait_p90: pct(0.90),
            wait_p99: pct(0.99),
            wait_max: waits.last().copied(),
        }
    }
}

/// A snapshot of one lock's counters.
///
/// Wait-time percentiles are over the last 1024 successful acquisitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockStat {
    /// Successful acquisitions.
    pub acquisitions: u64,
    /// Acquisitions (or timeouts) that found the lock held and had to wait.
    pub contended: u64,
    /// Acquisitions that gave up at their deadline.
    pub timeouts: u64,
    /// Acquisitions that failed for another reason (I/O, backend down, …).
    pub errors: u64,
    /// Guards alive right now.
    pub held: u64,
    /// Median wait of recent acquisitions.
    pub wait_p50: Option<Duration>,
    /// 90th-percentile wait.
    pub wait_p90: Option<Duration>,
    /// 99th-percentile wait.
    pub wait_p99: Option<Duration>,
    /// Longest recent wait.
    pub wait_max: Option<Duration>,
}

/// A snapshot of every registered lock's counters, plus totals.
///
/// ```
/// let manager = lockyard::AsyncLockManager::new();
/// let stats = manager.stats();
/// assert_eq!(stats.total.acquisitions, 0);
/// assert!(stats.per_lock.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockStats {
    /// Per lock name.
    pub per_lock: BTreeMap<String, LockStat>,
    /// Sums over all locks (the percentiles are the worst lock's).
    pub total: LockStat,
}

impl LockStats {
    pub(crate) fn from_locks(per_lock: BTreeMap<String, LockStat>) -> Self {
        let mut total = LockStat::default();
        for s in per_lock.values() {
            total.acquisitions += s.acquisitions;
            total.contended += s.contended;
            total.timeouts += s.timeouts;
            total.errors += s.errors;
            total.held += s.held;
            total.wait_p50 = total.wait_p50.max(s.wait_p50);
            total.wait_p90 = total.wait_p90.max(s.wait_p90);
            total.wait_p99 = total.wait_p99.max(s.wait_p99);
            total.wait_max = total.wait_max.max(s.wait_max);
        }
        Self { per_lock, total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_a_bounded_ring() {
        let c = Counters::default();
        for ms in 1..=2000u64 {
            c.acquired(Duration::from_millis(ms), ms % 2 == 0);
        }
        let s = c.snapshot();
        assert_eq!(s.acquisitions, 2000);
        assert_eq!(s.contended, 1000);
        assert_eq!(s.held, 2000);
        // Only the last 1024 samples (977..=2000 ms) are kept.
        assert_eq!(s.wait_max, Some(Duration::from_millis(2000)));
        let p50 = s.wait_p50.unwrap().as_millis();
        assert!((1480..=1500).contains(&p50), "p50 {p50}");
    }
}
