//! [`AsyncLockManager`]: named locks of any kind, taken together without
//! deadlock, reading their [`LockStats`] from the [`stats`]
//! registry.
//!
//! # Invariants
//!
//! - A name is registered at most once; the lock behind it never changes
//!   while registered (unregister, then register again).
//! - [`AsyncLockManager::acquire_all`] takes locks in ascending byte order of
//!   their names, one at a time, and holds every lock it took until it either
//!   returns them all in a [`LockSet`] or gives them all back, newest first.
//! - Every acquisition is counted once in the [`stats`]
//!   registry, by the backend (lockyard's own, wherever the acquisition is
//!   made) or, for a [`Backend::Custom`]
//!   lock, by the manager. The manager only reads the registry;
//!   [`LockStat::held`](crate::LockStat::held) falls again when a guard is
//!   released or dropped.
//! - Guards are the backend's own, type-erased: [`LockGuard::downcast_ref`]
//!   reaches them (and [`AsyncLockManager::get_as`] the concrete handle).
//!
//! # Layering
//!
//! Uses the contract (`lock`, `guard`, `options`, `error`) and `stats`;
//! never a backend.
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

use std::collections::BTreeMap;
use std::collections::btree_map;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tracing::Instrument;

use crate::error::LockError;
use crate::guard::{LockGuard, RawGuard};
use crate::lock::Lock;
use crate::lost::Lost;
use crate::options::{AcquireOptions, Deadline, Mode};
use crate::stats::{self, Backend, Held, LockStats};

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
/// assert_eq!(manager.stats().per_lock["a-table"].acquisitions, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct AsyncLockManager {
    inner: Arc<RwLock<BTreeMap<String, Arc<dyn Lock>>>>,
}

impl AsyncLockManager {
    /// An empty registry.
    ///
    /// ```
    /// let manager = lockyard::AsyncLockManager::new();
    /// assert!(manager.names().is_empty());
    /// assert_eq!(manager.clone().names(), manager.names()); // clones share the registry
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `lock` under `name`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use lockyard::{AsyncLockManager, NamedSemaphore};
    ///
    /// let manager = AsyncLockManager::new();
    /// manager.register("gpu", Arc::new(NamedSemaphore::new("gpu", 2)))?;
    /// assert!(manager.register("gpu", Arc::new(NamedSemaphore::new("gpu", 2))).is_err());
    /// # Ok::<(), lockyard::LockError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for an empty name;
    /// [`LockError::InvalidArgument`] if the name is taken (see
    /// [`get_or_register`](Self::get_or_register)).
    pub fn register(&self, name: impl Into<String>, lock: Arc<dyn Lock>) -> Result<(), LockError> {
        let name = name.into();
        check_name(&name)?;
        match self.write().entry(name) {
            btree_map::Entry::Occupied(e) => Err(LockError::InvalidArgument {
                what: "lock name",
                reason: format!("`{}` is already registered", e.key()),
            }),
            btree_map::Entry::Vacant(e) => {
                e.insert(lock);
                Ok(())
            }
        }
    }

    /// The lock registered under `name`, registering the one `make` returns
    /// if there is none yet (`make` runs only then, under the registry's
    /// lock: keep it short and non-blocking). For per-tenant names:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use lockyard::{AcquireOptions, AsyncLockManager, FileLockManager, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let files = FileLockManager::new(dir.path())?;
    /// let manager = AsyncLockManager::new();
    /// let tenant = "tenant-42";
    /// let lock = manager.get_or_register(tenant, || Ok(Arc::new(files.lock(tenant)?)))?;
    /// let again = manager.get_or_register(tenant, || unreachable!("already registered"))?;
    /// assert!(Arc::ptr_eq(&lock, &again));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for an empty name; what `make` returns.
    pub fn get_or_register(
        &self,
        name: &str,
        make: impl FnOnce() -> Result<Arc<dyn Lock>, LockError>,
    ) -> Result<Arc<dyn Lock>, LockError> {
        if let Some(lock) = self.get(name) {
            return Ok(lock);
        }
        check_name(name)?;
        match self.write().entry(name.to_owned()) {
            btree_map::Entry::Occupied(e) => Ok(Arc::clone(e.get())),
            btree_map::Entry::Vacant(e) => Ok(Arc::clone(e.insert(make()?))),
        }
    }

    /// Removes a lock from the registry and returns it. Guards already taken
    /// stay valid; its statistics stay in the [`stats`]
    /// registry.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use lockyard::{AsyncLockManager, NamedSemaphore};
    ///
    /// let manager = AsyncLockManager::new();
    /// manager.register("gpu", Arc::new(NamedSemaphore::new("gpu", 2)))?;
    /// assert!(manager.unregister("gpu").is_some());
    /// assert!(manager.names().is_empty());
    /// # Ok::<(), lockyard::LockError>(())
    /// ```
    pub fn unregister(&self, name: &str) -> Option<Arc<dyn Lock>> {
        self.write().remove(name)
    }

    /// The registered names, sorted.
    ///
    /// ```
    /// let manager = lockyard::AsyncLockManager::new();
    /// assert!(manager.names().is_empty());
    /// ```
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// The lock registered under `name`.
    ///
    /// ```
    /// let manager = lockyard::AsyncLockManager::new();
    /// assert!(manager.get("nothing").is_none());
    /// ```
    pub fn get(&self, name: &str) -> Option<Arc<dyn Lock>> {
        self.read().get(name).cloned()
    }

    /// The lock registered under `name` as its concrete type `L`, with its
    /// own methods and typed guards (a [`FileLock`](crate::FileLock)'s
    /// [`FileLockGuard`](crate::FileLockGuard), a Redis lock's guard with
    /// `extend` and a plain fencing token). Acquisitions made on it are
    /// counted in the same statistics. `None` if the name is not registered
    /// or the lock is not an `L`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use lockyard::{AcquireOptions, AsyncLockManager, FileLock, FileLockManager};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let files = FileLockManager::new(dir.path())?;
    /// let manager = AsyncLockManager::new();
    /// manager.register("manager-get-as", Arc::new(files.lock("manager-get-as")?))?;
    /// let lock: Arc<FileLock> = manager.get_as("manager-get-as").unwrap();
    /// let guard = lock.acquire(&AcquireOptions::exclusive()).await?;
    /// assert!(guard.path().exists());
    /// drop(guard);
    /// assert_eq!(manager.stats().per_lock["manager-get-as"].acquisitions, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_as<L: Lock>(&self, name: &str) -> Option<Arc<L>> {
        let lock: Arc<dyn std::any::Any + Send + Sync> = self.get(name)?;
        lock.downcast::<L>().ok()
    }

    /// Acquires one registered lock (see [`get_as`](Self::get_as) for its
    /// typed guard, and [`LockGuard::downcast_ref`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use lockyard::{AcquireOptions, AsyncLockManager, NamedSemaphore};
    ///
    /// let manager = AsyncLockManager::new();
    /// manager.register("gpu", Arc::new(NamedSemaphore::new("manager-acquire-gpu", 1)))?;
    /// let guard = manager.acquire("gpu", &AcquireOptions::exclusive()).await?;
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidArgument`] for a name that is not registered;
    /// [`LockError::Timeout`] (naming the holder when known) if the lock
    /// stayed held for `options.timeout`; otherwise the backend's error.
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
        let lock = self.entry(name)?;
        let deadline = Deadline::after(options.timeout);
        acquire_one(name, &lock, options.mode, &deadline).await
    }

    /// Acquires one registered lock in `mode` if it is free now.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use lockyard::{AsyncLockManager, Mode, NamedSemaphore};
    ///
    /// let manager = AsyncLockManager::new();
    /// manager.register("gpu", Arc::new(NamedSemaphore::new("manager-try-gpu", 1)))?;
    /// let held = manager.try_acquire("gpu", Mode::Exclusive).await?;
    /// let busy = manager.try_acquire("gpu", Mode::Exclusive).await.unwrap_err();
    /// assert!(busy.is_would_block());
    /// # drop(held);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] if it is held; [`LockError::InvalidArgument`]
    /// for a name that is not registered; otherwise the backend's error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as the backend's `try_lock`.
    pub async fn try_acquire(&self, name: &str, mode: Mode) -> Result<LockGuard, LockError> {
        let lock = self.entry(name)?;
        try_one(&lock, mode).await
    }

    /// Acquires every named lock exclusively, in sorted order, within one
    /// `timeout`; all or nothing.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use lockyard::{AsyncLockManager, NamedRwLock, NamedSemaphore};
    ///
    /// let manager = AsyncLockManager::new();
    /// manager.register("table", Arc::new(NamedRwLock::new("acquire-all-table")))?;
    /// manager.register("index", Arc::new(NamedSemaphore::new("acquire-all-index", 1)))?;
    /// let set = manager.acquire_all(&["table", "index"], Duration::from_secs(1)).await?;
    /// assert_eq!(set.len(), 2);
    /// // All or nothing: with "index" held, nothing else is taken either.
    /// let err = manager.acquire_all(&["table", "index"], Duration::from_millis(20)).await;
    /// assert!(err.unwrap_err().is_timeout());
    /// drop(set);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] (naming the lock it was waiting for and the
    /// total time waited) if the deadline passes,
    /// [`LockError::InvalidArgument`] for an unknown or repeated name, or
    /// the first backend error; in every failure case the locks already
    /// taken are released, newest first, before it returns.
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
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use lockyard::{AsyncLockManager, FileLockManager, Mode};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let files = FileLockManager::new(dir.path())?;
    /// let manager = AsyncLockManager::new();
    /// manager.register("catalog", Arc::new(files.lock("catalog")?))?;
    /// manager.register("orders", Arc::new(files.lock("orders")?))?;
    /// let set = manager
    ///     .acquire_all_with(&[("catalog", Mode::Shared), ("orders", Mode::Exclusive)], None)
    ///     .await?;
    /// assert_eq!(set.get("catalog").unwrap().mode(), Mode::Shared);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire_all`](Self::acquire_all).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire_all`](Self::acquire_all).
    pub async fn acquire_all_with(
        &self,
        requests: &[(&str, Mode)],
        timeout: Option<Duration>,
    ) -> Result<LockSet, LockError> {
        self.take_all(requests, Some(Deadline::after(timeout)))
            .await
    }

    /// Acquires every named lock exclusively if each is free now, in sorted
    /// order; all or nothing. Unlike `acquire_all` with a zero timeout, a
    /// held lock is a [`LockError::WouldBlock`] (counted as `busy`, not as a
    /// timeout).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use lockyard::{AsyncLockManager, FileLockManager};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let files = FileLockManager::new(dir.path())?;
    /// let manager = AsyncLockManager::new();
    /// manager.register("a", Arc::new(files.lock("a")?))?;
    /// manager.register("b", Arc::new(files.lock("b")?))?;
    /// let b = files.acquire("b", std::time::Duration::from_secs(1)).await?;
    /// let err = manager.try_acquire_all(&["a", "b"]).await.unwrap_err();
    /// assert!(err.is_would_block());
    /// // "a" was given back.
    /// assert!(!files.is_locked("a").await?);
    /// # drop(b);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] naming the first lock found held,
    /// [`LockError::InvalidArgument`] for an unknown or repeated name, or the
    /// first backend error; the locks already taken are released first.
    ///
    /// # Cancel safety
    ///
    /// As [`acquire_all`](Self::acquire_all).
    pub async fn try_acquire_all<S: AsRef<str>>(&self, names: &[S]) -> Result<LockSet, LockError> {
        let requests: Vec<(&str, Mode)> = names
            .iter()
            .map(|n| (n.as_ref(), Mode::Exclusive))
            .collect();
        self.try_acquire_all_with(&requests).await
    }

    /// As [`try_acquire_all`](Self::try_acquire_all), with a mode per lock.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use lockyard::{AsyncLockManager, Mode, NamedRwLock};
    ///
    /// let manager = AsyncLockManager::new();
    /// manager.register("config", Arc::new(NamedRwLock::new("config")))?;
    /// let r1 = manager.try_acquire_all_with(&[("config", Mode::Shared)]).await?;
    /// let r2 = manager.try_acquire_all_with(&[("config", Mode::Shared)]).await?;
    /// assert!(manager.try_acquire_all_with(&[("config", Mode::Exclusive)]).await.is_err());
    /// # drop((r1, r2));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_acquire_all`](Self::try_acquire_all).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire_all`](Self::acquire_all).
    pub async fn try_acquire_all_with(
        &self,
        requests: &[(&str, Mode)],
    ) -> Result<LockSet, LockError> {
        self.take_all(requests, None).await
    }

    /// Takes `requests` in sorted order: waiting under `deadline`, or only
    /// trying when it is `None`.
    async fn take_all(
        &self,
        requests: &[(&str, Mode)],
        deadline: Option<Deadline>,
    ) -> Result<LockSet, LockError> {
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
        let span = tracing::debug_span!("acquire_all", locks = ?sorted.iter().map(|r| r.0).collect::<Vec<_>>(), try_only = deadline.is_none());
        async move {
            let mut set = LockSet { guards: Vec::with_capacity(sorted.len()) };
            for ((name, mode), entry) in sorted.iter().zip(&entries) {
                let taken = match &deadline {
                    Some(deadline) => acquire_one(name, entry, *mode, deadline).await,
                    None => try_one(entry, *mode).await,
                };
                match taken {
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

    /// A snapshot of every registered lock's statistics: those of the
    /// backend's [`stats`] entry for the lock, so they count
    /// acquisitions made directly on the backend too.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::{sync::Arc, time::Duration};
    /// use lockyard::{AsyncLockManager, FileLockManager};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let files = FileLockManager::new(dir.path())?;
    /// let manager = AsyncLockManager::new();
    /// manager.register("manager-stats-doc", Arc::new(files.lock("manager-stats-doc")?))?;
    /// // Taken directly, not through the manager: counted all the same.
    /// drop(files.acquire("manager-stats-doc", Duration::from_secs(1)).await?);
    /// assert_eq!(manager.stats().per_lock["manager-stats-doc"].acquisitions, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> LockStats {
        LockStats::from_locks(
            self.read()
                .iter()
                .map(|(name, lock)| {
                    let stat = stats::lookup(lock.backend(), lock.name())
                        .map(|site| site.snapshot())
                        .unwrap_or_default();
                    (name.clone(), stat)
                })
                .collect(),
        )
    }

    fn entry(&self, name: &str) -> Result<Arc<dyn Lock>, LockError> {
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
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<dyn Lock>>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<dyn Lock>>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn check_name(name: &str) -> Result<(), LockError> {
    if name.is_empty() {
        return Err(LockError::InvalidName {
            name: name.to_owned(),
            reason: "the name is empty",
        });
    }
    Ok(())
}

impl fmt::Debug for AsyncLockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncLockManager")
            .field("locks", &self.names())
            .finish()
    }
}

/// Takes one lock under `deadline`. lockyard's backends count the
/// acquisition themselves; the `select!` against the deadline cuts off a
/// backend that overruns its own timeout (counted here as a timeout). A
/// custom backend is counted here: first a try (to see contention), then
/// the wait.
async fn acquire_one(
    name: &str,
    lock: &Arc<dyn Lock>,
    mode: Mode,
    deadline: &Deadline,
) -> Result<LockGuard, LockError> {
    let backend = lock.backend();
    if backend != Backend::Custom {
        return wait_one(name, lock, mode, deadline, None).await;
    }
    let attempt = stats::site(backend, lock.name()).begin();
    let holder = match lock.try_lock(mode).await {
        Err(LockError::WouldBlock { holder, .. }) => holder,
        other => return finish(attempt, other),
    };
    attempt.contended();
    if deadline.expired() {
        let timeout = LockError::Timeout {
            resource: name.to_owned(),
            waited: deadline.elapsed(),
            holder,
        };
        return finish(attempt, Err(timeout));
    }
    match &holder {
        Some(owner) => {
            tracing::debug!(lock = %name, holder = %owner, waited = ?deadline.elapsed(), "lock is held; waiting")
        }
        None => {
            tracing::debug!(lock = %name, waited = ?deadline.elapsed(), "lock is held; waiting")
        }
    }
    let result = wait_one(name, lock, mode, deadline, holder).await;
    finish(attempt, result)
}

/// Waits for one lock, cut off at `deadline`; `holder` is the holder seen
/// so far, for the timeout error.
async fn wait_one(
    name: &str,
    lock: &Arc<dyn Lock>,
    mode: Mode,
    deadline: &Deadline,
    holder: Option<Box<crate::Owner>>,
) -> Result<LockGuard, LockError> {
    let options = AcquireOptions {
        mode,
        timeout: deadline.remaining(),
        ..AcquireOptions::default()
    };
    let timed_out = |holder| LockError::Timeout {
        resource: name.to_owned(),
        waited: deadline.elapsed(),
        holder,
    };
    tokio::select! {
        biased;
        r = lock.lock(&options) => match r {
            Err(LockError::Timeout { holder: last, .. }) => Err(timed_out(last.or(holder))),
            other => other,
        },
        () = deadline.sleep() => {
            // The backend's attempt was dropped (and so counted nothing).
            if lock.backend() != Backend::Custom
                && let Some(site) = stats::lookup(lock.backend(), lock.name())
            {
                site.timed_out();
            }
            Err(timed_out(holder))
        }
    }
}

/// Tries one lock (counted here for a custom backend).
async fn try_one(lock: &Arc<dyn Lock>, mode: Mode) -> Result<LockGuard, LockError> {
    let backend = lock.backend();
    if backend != Backend::Custom {
        return lock.try_lock(mode).await;
    }
    let attempt = stats::site(backend, lock.name()).begin();
    finish(attempt, lock.try_lock(mode).await)
}

/// Records a custom backend's outcome; a success is wrapped so that its
/// hold is counted.
fn finish(
    attempt: stats::Acquisition,
    result: Result<LockGuard, LockError>,
) -> Result<LockGuard, LockError> {
    match result {
        Ok(guard) => Ok(LockGuard::new(ManagedGuard {
            inner: Some(guard),
            _held: attempt.granted(),
        })),
        Err(err) => {
            attempt.failed(&err);
            Err(err)
        }
    }
}

/// A custom backend's guard, counted: keeps [`LockStat::held`](crate::LockStat::held) honest.
#[derive(Debug)]
struct ManagedGuard {
    /// `Some` until released; the `Option` lets `release` move it out.
    inner: Option<LockGuard>,
    /// Counts the hold; dropped after `inner` (see `Drop`).
    _held: Held,
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
        // Release the backend first; `_held` (a field) then counts it.
        drop(self.inner.take());
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

    fn inner_guard(&self) -> Option<&LockGuard> {
        self.inner.as_ref()
    }
}

/// Locks taken together by [`AsyncLockManager::acquire_all`], in sorted
/// order. Dropping it releases them newest first.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use lockyard::{AsyncLockManager, NamedRwLock, NamedSemaphore};
///
/// let manager = AsyncLockManager::new();
/// manager.register("orders", Arc::new(NamedRwLock::new("lockset-type-orders")))?;
/// manager.register("catalog", Arc::new(NamedSemaphore::new("lockset-type-catalog", 1)))?;
/// let set = manager.acquire_all(&["orders", "catalog"], Duration::from_secs(1)).await?;
/// assert_eq!(set.names().collect::<Vec<_>>(), ["catalog", "orders"]); // sorted
/// drop(set); // releases orders, then catalog
/// assert!(!manager.get("catalog").unwrap().is_locked().await?);
/// # Ok(())
/// # }
/// ```
#[must_use = "if unused the locks will immediately unlock"]
#[clippy::has_significant_drop]
#[derive(Debug)]
pub struct LockSet {
    guards: Vec<(String, LockGuard)>,
}

impl LockSet {
    /// The names held, in the order they were taken.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use lockyard::{AsyncLockManager, NamedRwLock, NamedSemaphore};
    ///
    /// let manager = AsyncLockManager::new();
    /// manager.register("orders", Arc::new(NamedRwLock::new("lockset-names-orders")))?;
    /// manager.register("catalog", Arc::new(NamedSemaphore::new("lockset-names-catalog", 1)))?;
    /// let set = manager.acquire_all(&["orders", "catalog"], Duration::from_secs(1)).await?;
    /// let taken: Vec<&str> = set.names().collect();
    /// assert_eq!(taken, ["catalog", "orders"]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.guards.iter().map(|(n, _)| n.as_str())
    }

    /// The guard of one name.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use lockyard::{AsyncLockManager, NamedRwLock, NamedSemaphore};
    ///
    /// let manager = AsyncLockManager::new();
    /// manager.register("orders", Arc::new(NamedRwLock::new("lockset-get-orders")))?;
    /// manager.register("catalog", Arc::new(NamedSemaphore::new("lockset-get-catalog", 1)))?;
    /// let set = manager.acquire_all(&["orders", "catalog"], Duration::from_secs(1)).await?;
    /// assert_eq!(set.get("orders").unwrap().resource(), "lockset-get-orders");
    /// assert!(set.get("users").is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn get(&self, name: &str) -> Option<&LockGuard> {
        self.guards.iter().find(|(n, _)| n == name).map(|(_, g)| g)
    }

    /// How many locks are held.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use lockyard::{AsyncLockManager, NamedRwLock, NamedSemaphore};
    ///
    /// let manager = AsyncLockManager::new();
    /// manager.register("orders", Arc::new(NamedRwLock::new("lockset-len-orders")))?;
    /// manager.register("catalog", Arc::new(NamedSemaphore::new("lockset-len-catalog", 1)))?;
    /// let set = manager.acquire_all(&["orders", "catalog"], Duration::from_secs(1)).await?;
    /// assert_eq!(set.len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn len(&self) -> usize {
        self.guards.len()
    }

    /// Whether no lock is held.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::AsyncLockManager;
    ///
    /// let manager = AsyncLockManager::new();
    /// let none: [&str; 0] = [];
    /// let set = manager.acquire_all(&none, Duration::from_secs(1)).await?;
    /// assert!(set.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.guards.is_empty()
    }

    /// Completes when any of the locks is lost (never, for an empty set or
    /// backends that cannot lose).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use lockyard::{AsyncLockManager, NamedRwLock, NamedSemaphore};
    ///
    /// let manager = AsyncLockManager::new();
    /// manager.register("orders", Arc::new(NamedRwLock::new("lockset-lost-orders")))?;
    /// manager.register("catalog", Arc::new(NamedSemaphore::new("lockset-lost-catalog", 1)))?;
    /// let set = manager.acquire_all(&["orders", "catalog"], Duration::from_secs(1)).await?;
    /// // In-process locks are never lost, so neither is the set.
    /// let lost = tokio::time::timeout(Duration::from_millis(10), set.lost()).await;
    /// assert!(lost.is_err());
    /// # Ok(())
    /// # }
    /// ```
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
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use lockyard::{AsyncLockManager, NamedRwLock, NamedSemaphore};
    ///
    /// let manager = AsyncLockManager::new();
    /// manager.register("orders", Arc::new(NamedRwLock::new("lockset-release-orders")))?;
    /// manager.register("catalog", Arc::new(NamedSemaphore::new("lockset-release-catalog", 1)))?;
    /// let set = manager.acquire_all(&["orders", "catalog"], Duration::from_secs(1)).await?;
    /// set.release().await?;
    /// assert!(!manager.get("orders").unwrap().is_locked().await?);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The first error a backend reported (every lock is released regardless).
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
