//! The snapshot types: [`LockStat`] for one lock, [`LockStats`] for the
//! manager's registered locks, [`Snapshot`] for the whole registry.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Backend;
use super::histogram::DurationHistogram;

/// A snapshot of one lock's counters (see the [module docs](super) for what
/// each counts).
///
/// Snapshots of the same lock on several replicas combine with
/// [`merge`](Self::merge): counters add up and the histograms merge, so the
/// percentiles of the result are those of all samples.
///
/// ```
/// use std::time::Duration;
/// use lockyard::stats::LockStat;
///
/// let mut a = LockStat::default();
/// a.acquisitions = 3;
/// a.wait.record(Duration::from_millis(2));
/// let mut b = LockStat::default();
/// b.acquisitions = 4;
/// b.wait.record(Duration::from_millis(8));
/// a.merge(&b);
/// assert_eq!(a.acquisitions, 7);
/// assert_eq!(a.wait_max, Some(Duration::from_millis(8)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct LockStat {
    /// Successful acquisitions.
    pub acquisitions: u64,
    /// Acquisitions (or timeouts, or refused tries) that found the lock held.
    pub contended: u64,
    /// `try_` acquisitions refused because the lock was held.
    pub busy: u64,
    /// Acquisitions that gave up at their deadline.
    pub timeouts: u64,
    /// Acquisitions that failed for another reason (I/O, backend down, …).
    pub errors: u64,
    /// Guards whose lock was lost while held.
    pub lost: u64,
    /// Guards alive right now.
    pub held: u64,
    /// Callers waiting right now.
    pub waiting: u64,
    /// Median wait of successful acquisitions (from [`wait`](Self::wait)).
    pub wait_p50: Option<Duration>,
    /// 90th-percentile wait.
    pub wait_p90: Option<Duration>,
    /// 99th-percentile wait.
    pub wait_p99: Option<Duration>,
    /// Longest wait.
    pub wait_max: Option<Duration>,
    /// How long successful acquisitions waited (all of them, since start).
    pub wait: DurationHistogram,
    /// How long guards were held (those released so far).
    pub hold: DurationHistogram,
}

impl LockStat {
    /// Adds `other`'s counts, gauges and histograms to this one, and
    /// recomputes the percentiles from the merged wait histogram.
    ///
    /// Combining two replicas' reports:
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::stats::LockStat;
    ///
    /// let (mut east, mut west) = (LockStat::default(), LockStat::default());
    /// east.timeouts = 1;
    /// west.wait.record(Duration::from_millis(40));
    /// east.merge(&west);
    /// assert_eq!(east.timeouts, 1);
    /// assert_eq!(east.wait_p50, Some(Duration::from_millis(40)));
    /// ```
    pub fn merge(&mut self, other: &LockStat) {
        self.acquisitions += other.acquisitions;
        self.contended += other.contended;
        self.busy += other.busy;
        self.timeouts += other.timeouts;
        self.errors += other.errors;
        self.lost += other.lost;
        self.held += other.held;
        self.waiting += other.waiting;
        self.wait.merge(&other.wait);
        self.hold.merge(&other.hold);
        self.wait_p50 = self.wait.quantile(0.50);
        self.wait_p90 = self.wait.quantile(0.90);
        self.wait_p99 = self.wait.quantile(0.99);
        self.wait_max = self.wait.max();
    }
}

/// A snapshot of every lock registered with an
/// [`AsyncLockManager`](crate::AsyncLockManager), plus totals.
///
/// The counts are those of the backend's registry entry, so they include
/// acquisitions made directly on the backend, not only through the manager.
///
/// ```
/// let manager = lockyard::AsyncLockManager::new();
/// let stats = manager.stats();
/// assert_eq!(stats.total.acquisitions, 0);
/// assert!(stats.per_lock.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct LockStats {
    /// Per registered name.
    pub per_lock: BTreeMap<String, LockStat>,
    /// All of them merged ([`LockStat::merge`]): the percentiles are those
    /// of every sample, not the worst lock's.
    pub total: LockStat,
}

impl LockStats {
    pub(crate) fn from_locks(per_lock: BTreeMap<String, LockStat>) -> Self {
        let mut total = LockStat::default();
        for s in per_lock.values() {
            total.merge(s);
        }
        Self { per_lock, total }
    }
}

/// Every entry of the registry ([`snapshot`](super::snapshot)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::time::Duration;
/// use lockyard::{FileLockManager, stats::{self, Backend}};
///
/// let dir = tempfile::tempdir().unwrap();
/// let locks = FileLockManager::new(dir.path())?;
/// drop(locks.acquire("snapshot-doc", Duration::from_secs(1)).await?);
/// let snap = stats::snapshot();
/// let entry = snap.entries.iter().find(|e| e.name == "snapshot-doc").unwrap();
/// assert_eq!((entry.backend, entry.stats.acquisitions), (Backend::File, 1));
/// assert!(snap.total.acquisitions >= 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Snapshot {
    /// Sorted by backend, then name.
    pub entries: Vec<SnapshotEntry>,
    /// Every entry merged.
    pub total: LockStat,
}

/// One (backend, name) of a [`Snapshot`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use lockyard::{NamedSemaphore, stats::{self, Backend}};
///
/// let pool = NamedSemaphore::new("snapshot-entry-doc", 2);
/// let permit = pool.semaphore().acquire().await.unwrap();
/// let snap = stats::snapshot();
/// let entry = snap.entries.iter().find(|e| e.name == "snapshot-entry-doc").unwrap();
/// assert_eq!(entry.backend, Backend::Local);
/// assert_eq!(entry.stats.held, 1);
/// # drop(permit);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct SnapshotEntry {
    /// The backend.
    pub backend: Backend,
    /// The lock name (or [`OTHER`](super::OTHER)).
    pub name: String,
    /// Its counters.
    pub stats: LockStat,
}
