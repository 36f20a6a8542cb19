//! Lock statistics: one process-wide registry that every backend records
//! into, wherever an acquisition is made, and that the
//! [`AsyncLockManager`](crate::AsyncLockManager), [`snapshot`] and the
//! `metrics` export read.
//!
//! Each (backend, lock name) pair has one entry, created when it is first
//! used and kept for the life of the process, so its counters only grow: a
//! `FileLockManager::acquire("a")`, an `AsyncLockManager::acquire("a")` of the
//! same file lock, and a `FileLock` handle for `"a"` all count in the same
//! entry. In-process semaphores and RW locks record when they have a name
//! ([`Semaphore::named`](crate::Semaphore::named),
//! [`NamedSemaphore`](crate::NamedSemaphore)); an anonymous
//! `Semaphore::new` records nothing.
//!
//! # What is counted
//!
//! - `acquisitions`: successful acquisitions (any method: waiting, `try_`,
//!   blocking, owned), with the time each waited in [`LockStat::wait`];
//! - `contended`: acquisitions that found the lock held (whether they then
//!   got it, timed out, or were `try_` calls refused);
//! - `busy`: `try_` calls refused because the lock was held
//!   ([`LockError::WouldBlock`](crate::LockError::WouldBlock));
//! - `timeouts`: waits that gave up at their deadline;
//! - `errors`: acquisitions that failed for any other reason;
//! - `lost`: guards whose lock was lost while held (Redis), counted once
//!   per guard when the guard ends;
//! - `held` and `waiting`: guards alive and callers waiting right now;
//!   [`LockStat::hold`] has the time each guard was held.
//!
//! A cancelled acquisition (its future dropped) counts nothing.
//!
//! # Cardinality
//!
//! Lock names often carry an id (`tenant-42`). Each backend keeps at most
//! [`set_name_limit`] names (default 256); acquisitions of further names
//! are counted under the name [`OTHER`], so neither memory nor the number of
//! exported label values grows without bound.
//!
//! # Export
//!
//! With the `serde` feature every snapshot type serializes; with the
//! `metrics` feature every event is also sent to the
//! [`metrics`](https://docs.rs/metrics) facade as it happens, so an
//! installed exporter (e.g. `metrics-exporter-prometheus`) serves them.
//! The names are listed in `stats::metric` (with the feature); every one has a `backend` label
//! (`file`, `redis`, `redlock`, `local`, `custom`), and all but the Redis
//! watchdog's a `lock` label (the lock name, or [`OTHER`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lockyard::LockError> {
//! use std::time::Duration;
//! use lockyard::{FileLockManager, stats::{self, Backend}};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let locks = FileLockManager::new(dir.path())?;
//! drop(locks.acquire("stats-doc-report", Duration::from_secs(1)).await?);
//!
//! let s = stats::get(Backend::File, "stats-doc-report").unwrap();
//! assert_eq!(s.acquisitions, 1);
//! assert_eq!(s.held, 0);
//! assert_eq!(s.hold.count(), 1);
//! # Ok(())
//! # }
//! ```

mod histogram;
mod registry;
mod stat;

#[cfg(feature = "metrics")]
mod export;

pub use histogram::DurationHistogram;
pub use stat::{LockStat, LockStats, Snapshot, SnapshotEntry};

pub(crate) use registry::{Acquisition, Held, Site};

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use export::{describe_metrics, metric};

#[cfg(feature = "redis")]
mod counter;
#[cfg(feature = "redis")]
pub(crate) use counter::Counter;

/// What the live counters are: the registry counts them, the metrics export
/// names them (here, below both, so that neither imports the other).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Metric {
    Acquisitions,
    Contended,
    Busy,
    Timeouts,
    Errors,
    // Only backends that can lose a lock (Redis) count it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Lost,
}

/// The name under which a backend counts locks beyond its
/// [`set_name_limit`].
pub const OTHER: &str = "(other)";

/// Which backend an entry belongs to (the `backend` label of the export).
///
/// ```
/// use lockyard::stats::Backend;
///
/// assert_eq!(Backend::Redlock.as_str(), "redlock");
/// assert!(Backend::File < Backend::Custom); // ordered as listed, for sorted exports
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[non_exhaustive]
pub enum Backend {
    /// File locks ([`FileLockManager`](crate::FileLockManager),
    /// [`FileLock`](crate::FileLock)).
    File,
    /// Redis locks, RW locks and semaphores on one server.
    Redis,
    /// Redlock over several servers.
    Redlock,
    /// Postgres advisory locks.
    Postgres,
    /// Named in-process semaphores and RW locks.
    Local,
    /// A [`Lock`](crate::Lock) implemented outside lockyard, counted by
    /// the [`AsyncLockManager`](crate::AsyncLockManager).
    Custom,
}

impl Backend {
    /// The label value: `file`, `redis`, `redlock`, `postgres`, `local` or
    /// `custom`.
    ///
    /// ```
    /// assert_eq!(lockyard::stats::Backend::Redis.as_str(), "redis");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::File => "file",
            Backend::Redis => "redis",
            Backend::Redlock => "redlock",
            Backend::Postgres => "postgres",
            Backend::Local => "local",
            Backend::Custom => "custom",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sets how many lock names each backend keeps its own statistics for;
/// further names are counted under [`OTHER`]. Names already seen keep their
/// entry. Call it at start-up, before locks are taken.
///
/// ```
/// lockyard::stats::set_name_limit(1000);
/// # lockyard::stats::set_name_limit(256);
/// ```
pub fn set_name_limit(limit: usize) {
    registry::set_name_limit(limit);
}

/// The statistics of one lock name of one backend, if it has recorded
/// anything (a name past the limit has none of its own: see [`OTHER`]).
///
/// ```
/// use lockyard::stats::{self, Backend};
///
/// assert!(stats::get(Backend::Redis, "never-used-anywhere").is_none());
/// ```
pub fn get(backend: Backend, name: &str) -> Option<LockStat> {
    registry::lookup(backend, name).map(|s| s.snapshot())
}

/// Every entry of the registry, sorted by backend and name, with totals.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use lockyard::{Semaphore, stats::{self, Backend}};
///
/// let renders = Semaphore::named("stats-doc-renders", 2);
/// let _permit = renders.acquire().await.unwrap();
/// let snapshot = stats::snapshot();
/// let entry = snapshot
///     .entries
///     .iter()
///     .find(|e| e.backend == Backend::Local && e.name == "stats-doc-renders")
///     .unwrap();
/// assert_eq!(entry.stats.held, 1);
/// assert!(snapshot.total.acquisitions >= 1);
/// # }
/// ```
pub fn snapshot() -> Snapshot {
    let mut entries: Vec<SnapshotEntry> = registry::all()
        .into_iter()
        .map(|site| SnapshotEntry {
            backend: site.entry().backend,
            name: site.entry().name.to_string(),
            stats: site.snapshot(),
        })
        .collect();
    entries.sort_by(|a, b| (a.backend, &a.name).cmp(&(b.backend, &b.name)));
    let mut total = LockStat::default();
    for e in &entries {
        total.merge(&e.stats);
    }
    Snapshot { entries, total }
}

/// The entry `name` of `backend` records into.
pub(crate) fn site(backend: Backend, name: &str) -> Site {
    registry::site(backend, name)
}

/// The entry `name` of `backend` records into, if any.
pub(crate) fn lookup(backend: Backend, name: &str) -> Option<Site> {
    registry::lookup(backend, name)
}
