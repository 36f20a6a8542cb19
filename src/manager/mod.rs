//! [`AsyncLockManager`]: named locks of any kind, taken together without
//! deadlock, with [`LockStats`] telemetry.
//!
//! # Invariants
//!
//! - A name is registered at most once; the lock behind it never changes
//!   while registered (unregister, then register again).
//! - [`AsyncLockManager::acquire_all`] takes locks in ascending byte order of
//!   their names, one at a time, and holds every lock it took until it either
//!   returns them all in a [`LockSet`] or gives them all back, newest first.
//! - Every successful acquisition through the manager is counted once in
//!   [`LockStat::acquisitions`], and [`LockStat::held`] falls again when its
//!   guard is released or dropped.
//!
//! # Deadlock safety
//!
//! Two callers of `acquire_all` that need overlapping sets of locks cannot
//! deadlock each other: both take the common locks in the same (sorted)
//! order, so one of them always gets the smallest contested lock first and
//! the other waits without holding anything the first still needs. This
//! holds only among acquisitions that go through `acquire_all` (or take at
//! most one lock at a time); code that takes `b` and then `a` by hand can
//! still deadlock with it. The deadline bounds any wait regardless.

mod stats;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tracing::Instrument;

use crate::error::LockError;
use crate::guard::{LockGuard, Lost, RawGuard};
use crate::lock::Lock;
use crate::options::{AcquireOptions, Deadline, Mode};

use stats::Counters;
pub use stats::{LockStat, LockStats};

/// A registry of named locks of any backend.
///
/// Cloning is cheap and clones share the registry and the statistics.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use lockyard::{AsyncLockManager, FileLockManager};
///
/// let dir = tempfile::tempdir().unwrap();
/// let files = FileLockManager::new(dir.path())?;
/// let manager = AsyncLockManager::new();
/// manager.register("b-index", Arc::new(files.lock("b-index")?))?;
/// manager.register("a-table", Arc::new(files.lock("a-table")?))?;
///
/// // Taken as a-table, then b-index, whatever order they are asked in.
/// let both = manager.acquire_all(&["b-index", "a-table"], Duration::from_secs(5)).await?;
/// assert_eq!(both.names().collect::<Vec<_>>(), ["a-table", "b-index"]);
/// drop(both);
/// assert_eq!(manager.stats().total.acquisitions, 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct AsyncLockManager {
    inner: Arc<RwLock<BTreeMap<String, Arc<Entry>>>>,
}

struct Entry {
    lock: Arc<dyn Lock>,
    counters: Arc<Counters>,
}

impl AsyncLockManager {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `lock` under `name`.
    ///
    /// Fails with [`LockError::InvalidName`] for an empty name and
    /// [`LockError::InvalidArgument`] if the name is taken.
    pub fn register(&self, name: impl Into<String>, lock: Arc<dyn Lock>) -> Result<(), LockError> {
        let name = name.into();
        if name.is_empty() {
            return Err(LockError::InvalidName {
                name,
                reason: "the name is empty",
            });
        }
        let mut map = self.write();
        if map.contains_key(&name) {
            return Err(LockError::InvalidArgument {
                what: "lock name",
                reason: format!("`{name}` is already registered"),
            });
        }
        map.insert(
            name,
            Arc::new(Entry {
                lock,
                counters: Arc::default(),
            }),
        );
        Ok(())
    }

    /// Removes a lock from the registry and returns it. Guards already taken
    /// stay valid; its statistics are dropped.
    pub fn unregister(&self, name: &str) -> Option<Arc<dyn Lock>> {
        self.write().remove(name).map(|e| Arc::clone(&e.lock))
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// The lock registered under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Lock>> {
        self.read().get(name).map(|e| Arc::clone(&e.lock))
    }

    /// Acquires one registered lock, counting it in the statistics.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves the lock as the backend's own
    /// cancel safety says (nothing held), and counts nothing.
    pub async fn acquire(
        &self,
        name: &str,
        options: &AcquireOptions,
    ) -> Result<LockGuard, LockError> {
        let entry = self.entry(name)?;
        let deadline = Deadline::after(options.timeout);
        acquire_one(name, &entry, options.mode, &deadline).await
    }

    /// Acquires every named lock exclusively, in sorted order, within one
    /// `timeout`; all or nothing.
    ///
    /// Fails with [`LockError::Timeout`] (naming the lock it was waiting for
    /// and the total time waited) if the deadline passes, with
    /// [`LockError::InvalidArgument`] for an unknown or repeated name, or with
    /// the first backend error; in every failure case the locks already taken
    /// are released, newest first, before it returns.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future releases the locks it had taken so
    /// far, newest first (backends that release by I/O do so in the
    /// background), and abandons the acquisition in progress under that
    /// backend's own cancel safety.
    pub async fn acquire_all<S: AsRef<str>>(
        &self,
        names: &[S],
        timeout: Duration,
    ) -> Result<LockSet, LockError> {
        let requests: Vec<(&str, Mode)> = names
            .iter()
            .map(|n| (n.as_ref(), Mode::Exclusive))
            .collect();
        self.acquire_all_with(&requests, Some(timeout)).await
    }

    /// As [`acquire_all`](Self::acquire_all), with a mode per lock and an
    /// optional timeout (`None` waits for ever).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire_all`](Self::acquire_all).
    pub async fn acquire_all_with(
        &self,
        requests: &[(&str, Mode)],
        timeout: Option<Duration>,
    ) -> Result<LockSet, LockError> {
        let deadline = Deadline::after(timeout);
        let mut sorted: Vec<(&str, Mode)> = requests.to_vec();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(LockError::InvalidArgument {
                what: "lock names",
                reason: format!("`{}` is asked for twice", w[0].0),
            });
        }
        // Resolve every name before taking anything.
        let entries = sorted
            .iter()
            .map(|(name, _)| self.entry(name))
            .collect::<Result<Vec<_>, _>>()?;
        let span = tracing::debug_span!("acquire_all", locks = ?sorted.iter().map(|r| r.0).collect::<Vec<_>>());
        async move {
            let mut set = LockSet { guards: Vec::with_capacity(sorted.len()) };
            for ((name, mode), entry) in sorted.iter().zip(&entries) {
                match acquire_one(name, entry, *mode, &deadline).await {
                    Ok(guard) => set.guards.push((name.to_string(), guard)),
                    Err(err) => {
                        tracing::debug!(lock = %name, error = %err, taken = set.guards.len(), "acquire_all failed; releasing what it took");
                        if let Err(release_err) = set.release().await {
                            tracing::warn!(error = %release_err, "releasing after a failed acquire_all");
                        }
                        return Err(err);
                    }
                }
            }
            Ok(set)
        }
        .instrument(span)
        .await
    }

    /// A snapshot of every registered lock's statistics.
    pub fn stats(&self) -> LockStats {
        LockStats::from_locks(
            self.read()
                .iter()
                .map(|(name, e)| (name.clone(), e.counters.snapshot()))
                .collect(),
        )
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>, LockError> {
        self.read()
            .get(name)
            .cloned()
            .ok_or_else(|| LockError::InvalidArgument {
                what: "lock name",
                reason: format!("`{name}` is not registered"),
            })
    }

    // The registry lock is only held for map operations that cannot panic,
    // so poisoning cannot leave it inconsistent: recover the guard.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for AsyncLockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncLockManager")
            .field("locks", &self.names())
            .finish()
    }
}

/// Takes one lock under `deadline`: first without waiting (to count
/// contention), then waiting under a `select!` against the deadline, so a
/// backend that overruns its own timeout is still cut off on time.
async fn acquire_one(
    name: &str,
    entry: &Entry,
    mode: Mode,
    deadline: &Deadline,
) -> Result<LockGuard, LockError> {
    let counters = &entry.counters;
    // A semaphore out of permits is contention too, reported as saturation
    // (`LockError::Saturated`) rather than as a held lock.
    let (holder, saturated) = match entry.lock.try_lock(mode).await {
        Ok(guard) => {
            counters.acquired(deadline.elapsed(), false);
            return Ok(managed(guard, counters));
        }
        Err(LockError::WouldBlock { holder, .. }) => (holder, false),
        Err(LockError::Saturated { .. }) => (None, true),
        Err(err) => {
            counters.failed();
            return Err(err);
        }
    };
    let timed_out = |holder| {
        counters.timed_out();
        if saturated {
            LockError::Saturated {
                resource: name.to_owned(),
                timed_out: true,
                waited: Some(deadline.elapsed()),
            }
        } else {
            LockError::Timeout {
                resource: name.to_owned(),
                waited: deadline.elapsed(),
                holder,
            }
        }
    };
    if deadline.expired() {
        return Err(timed_out(holder));
    }
    match &holder {
        Some(owner) => {
            tracing::debug!(lock = %name, holder = %owner, waited = ?deadline.elapsed(), "lock is held; waiting")
        }
        None => {
            tracing::debug!(lock = %name, waited = ?deadline.elapsed(), "lock is held; waiting")
        }
    }
    let options = AcquireOptions {
        mode,
        timeout: deadline.remaining(),
        ..AcquireOptions::default()
    };
    let result = tokio::select! {
        biased;
        r = entry.lock.lock(&options) => r,
        () = deadline.sleep() => return Err(timed_out(holder)),
    };
    match result {
        Ok(guard) => {
            counters.acquired(deadline.elapsed(), true);
            tracing::debug!(lock = %name, waited = ?deadline.elapsed(), "acquired after waiting");
            Ok(managed(guard, counters))
        }
        Err(LockError::Timeout { holder: last, .. }) => Err(timed_out(last.or(holder))),
        Err(LockError::Saturated {
            timed_out: true, ..
        }) => Err(timed_out(holder)),
        Err(err) => {
            counters.failed();
            Err(err)
        }
    }
}

fn managed(guard: LockGuard, counters: &Arc<Counters>) -> LockGuard {
    LockGuard::new(ManagedGuard {
        inner: Some(guard),
        counters: Arc::clone(counters),
    })
}

/// A guard that keeps [`LockStat::held`] honest.
#[derive(Debug)]
struct ManagedGuard {
    /// `Some` until released; the `Option` lets `release` move it out.
    inner: Option<LockGuard>,
    counters: Arc<Counters>,
}

impl ManagedGuard {
    fn guard(&self) -> &LockGuard {
        // Only `release` takes it, and `release` consumes `self`.
        self.inner
            .as_ref()
            .expect("ManagedGuard used after release")
    }
}

impl Drop for ManagedGuard {
    fn drop(&mut self) {
        // Release the backend first, then count it.
        drop(self.inner.take());
        self.counters.released();
    }
}

#[async_trait]
impl RawGuard for ManagedGuard {
    fn resource(&self) -> &str {
        self.guard().resource()
    }

    fn mode(&self) -> Mode {
        self.guard().mode()
    }

    fn fencing_token(&self) -> Option<u64> {
        self.guard().fencing_token()
    }

    fn lost(&self) -> Lost {
        self.guard().lost()
    }

    async fn release(mut self: Box<Self>) -> Result<(), LockError> {
        match self.inner.take() {
            // `self` drops (and counts the release) after the backend is done.
            Some(inner) => inner.release().await,
            None => Ok(()),
        }
    }
}

/// Locks taken together by [`AsyncLockManager::acquire_all`], in sorted
/// order. Dropping it releases them newest first.
#[must_use = "if unused the locks will immediately unlock"]
#[clippy::has_significant_drop]
#[derive(Debug)]
pub struct LockSet {
    guards: Vec<(String, LockGuard)>,
}

impl LockSet {
    /// The names held, in the order they were taken.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.guards.iter().map(|(n, _)| n.as_str())
    }

    /// The guard of one name.
    pub fn get(&self, name: &str) -> Option<&LockGuard> {
        self.guards.iter().find(|(n, _)| n == name).map(|(_, g)| g)
    }

    /// How many locks are held.
    pub fn len(&self) -> usize {
        self.guards.len()
    }

    /// Whether no lock is held.
    pub fn is_empty(&self) -> bool {
        self.guards.is_empty()
    }

    /// Completes when any of the locks is lost (never, for an empty set or
    /// backends that cannot lose).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let all: Vec<Lost> = self.guards.iter().map(|(_, g)| g.lost()).collect();
        async move {
            if all.is_empty() {
                std::future::pending::<()>().await;
            }
            futures::future::select_all(all.into_iter().map(Box::pin)).await;
        }
    }

    /// Releases every lock, newest first, and reports the first error (all
    /// are released regardless).
    ///
    /// # Cancel safety
    ///
    /// If dropped part-way, the locks not yet released are released by the
    /// set's `Drop`, newest first.
    pub async fn release(mut self) -> Result<(), LockError> {
        let mut first_err = None;
        while let Some((_, guard)) = self.guards.pop() {
            if let Err(e) = guard.release().await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for LockSet {
    fn drop(&mut self) {
        while let Some(guard) = self.guards.pop() {
            drop(guard);
        }
    }
}

#[cfg(test)]
mod tests;
