//! The guard surface every backend shares: [`LockGuard`] and the
//! [`RawGuard`] trait backends implement (the [`Lost`] signal is in
//! `lost.rs`, below).
//!
//! The contract (see the crate docs):
//! - a guard releases on drop; drop never blocks, so a backend that needs I/O
//!   to release hands it to a background task (and the lock still expires by
//!   itself if that fails);
//! - [`LockGuard::release`] releases now and reports errors;
//! - [`LockGuard::lost`] completes when the holder can no longer be sure it
//!   holds the lock (file and in-process guards never lose);
//! - [`LockGuard::fencing_token`] strictly increases across successive holders
//!   of one resource, where the backend issues tokens.

use std::any::Any;
use std::fmt;
use std::future::Future;

use async_trait::async_trait;

use crate::error::LockError;
use crate::lost::{LeaseState, Lost};
use crate::options::Mode;

/// What a backend's concrete guard implements so it can travel as a
/// type-erased [`LockGuard`].
///
/// Implementations release in their own `Drop`; [`release`](Self::release)
/// must leave nothing for that `Drop` to do.
///
/// # Writing a backend
///
/// A backend supplies a handle implementing [`Lock`](crate::Lock) and a
/// guard implementing `RawGuard`; the [`AsyncLockManager`](crate::AsyncLockManager)
/// then takes it together with every other kind (and counts it in the
/// [`stats`](crate::stats) registry as [`Backend::Custom`](crate::stats::Backend::Custom)).
/// A toy in-process lock on a `tokio::sync::Mutex`:
///
/// ```
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use lockyard::{AcquireOptions, AsyncLockManager, Lock, LockError, LockGuard, Mode, RawGuard};
///
/// #[derive(Debug)]
/// struct MutexLock { name: String, inner: Arc<tokio::sync::Mutex<()>> }
///
/// #[derive(Debug)]
/// struct MutexGuard { name: String, _held: tokio::sync::OwnedMutexGuard<()> }
///
/// #[async_trait]
/// impl RawGuard for MutexGuard {
///     fn resource(&self) -> &str { &self.name }
///     fn mode(&self) -> Mode { Mode::Exclusive }
///     // Dropping the tokio guard is the whole release.
///     async fn release(self: Box<Self>) -> Result<(), LockError> { Ok(()) }
/// }
///
/// #[async_trait]
/// impl Lock for MutexLock {
///     fn name(&self) -> &str { &self.name }
///     async fn lock(&self, options: &AcquireOptions) -> Result<LockGuard, LockError> {
///         let wait = self.inner.clone().lock_owned();
///         let held = match options.timeout {
///             Some(t) => tokio::time::timeout(t, wait).await.map_err(|_| LockError::Timeout {
///                 resource: self.name.clone(), waited: t, holder: None,
///             })?,
///             None => wait.await,
///         };
///         Ok(LockGuard::new(MutexGuard { name: self.name.clone(), _held: held }))
///     }
///     async fn try_lock(&self, _mode: Mode) -> Result<LockGuard, LockError> {
///         let held = self.inner.clone().try_lock_owned().map_err(|_| LockError::WouldBlock {
///             resource: self.name.clone(), holder: None,
///         })?;
///         Ok(LockGuard::new(MutexGuard { name: self.name.clone(), _held: held }))
///     }
///     async fn is_locked(&self) -> Result<bool, LockError> {
///         Ok(self.inner.try_lock().is_err())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), LockError> {
/// let manager = AsyncLockManager::new();
/// let lock = MutexLock { name: "toy".into(), inner: Arc::default() };
/// manager.register("toy", Arc::new(lock))?;
/// let guard = manager.acquire("toy", &AcquireOptions::exclusive()).await?;
/// assert!(manager.try_acquire("toy", Mode::Exclusive).await.unwrap_err().is_would_block());
/// // The concrete guard is still there behind the type-erased one.
/// assert!(guard.downcast_ref::<MutexGuard>().is_some());
/// drop(guard);
/// assert_eq!(manager.stats().per_lock["toy"].acquisitions, 1);
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait RawGuard: Send + Sync + fmt::Debug {
    /// The resource name.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{FileLockManager, RawGuard};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let guard = FileLockManager::new(dir.path())?.acquire("job", Duration::from_secs(1)).await?;
    /// assert_eq!(RawGuard::resource(&guard), "job");
    /// # Ok(())
    /// # }
    /// ```
    fn resource(&self) -> &str;

    /// How the lock is held.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{FileLockManager, Mode, RawGuard};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let guard = FileLockManager::new(dir.path())?.acquire("job", Duration::from_secs(1)).await?;
    /// assert_eq!(RawGuard::mode(&guard), Mode::Exclusive);
    /// # Ok(())
    /// # }
    /// ```
    fn mode(&self) -> Mode;

    /// The fencing token, if this backend issues them.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{FileLockManager, RawGuard};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let guard = FileLockManager::new(dir.path())?.acquire("job", Duration::from_secs(1)).await?;
    /// // The default: a backend without tokens leaves it as it is.
    /// assert_eq!(RawGuard::fencing_token(&guard), None);
    /// # Ok(())
    /// # }
    /// ```
    fn fencing_token(&self) -> Option<u64> {
        None
    }

    /// A future that completes when the lock is lost.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{FileLockManager, RawGuard};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let guard = FileLockManager::new(dir.path())?.acquire("job", Duration::from_secs(1)).await?;
    /// // The default, `Lost::never()`, for backends that cannot lose a lock.
    /// assert!(!RawGuard::lost(&guard).is_lost());
    /// # Ok(())
    /// # }
    /// ```
    fn lost(&self) -> Lost {
        Lost::never()
    }

    /// Releases now, reporting errors.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{FileLockManager, RawGuard};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let guard = FileLockManager::new(dir.path())?.acquire("job", Duration::from_secs(1)).await?;
    /// let boxed: Box<dyn RawGuard> = Box::new(guard);
    /// boxed.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// What the backend reports: for example [`LockError::NotHeld`] when a
    /// lease had expired, or an I/O or Redis error.
    async fn release(self: Box<Self>) -> Result<(), LockError>;

    /// The guard inside a wrapper (the manager wraps guards of custom
    /// backends to count them), for [`LockGuard::downcast_ref`]. Backends
    /// leave it as it is.
    #[doc(hidden)]
    fn inner_guard(&self) -> Option<&LockGuard> {
        None
    }
}

/// A [`RawGuard`] that can also be seen as [`Any`], for downcasting. Every
/// `RawGuard + 'static` is one.
trait ErasedGuard: RawGuard + Any {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<G: RawGuard + 'static> ErasedGuard for G {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// A held lock of any backend. Releases on drop.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use lockyard::{FileLockManager, Lock, AcquireOptions};
///
/// let dir = tempfile::tempdir().unwrap();
/// let locks = FileLockManager::new(dir.path())?;
/// let lock = locks.lock("report")?;
/// let guard = lock.lock(&AcquireOptions::exclusive()).await?;
/// assert_eq!(guard.resource(), "report");
/// assert!(!guard.is_lost());
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct LockGuard {
    inner: Box<dyn ErasedGuard>,
}

impl LockGuard {
    /// Wraps a backend's guard.
    ///
    /// A backend's concrete guard converts with `From` where it has one, which
    /// is this call:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{FileLockManager, LockGuard};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let file_guard = FileLockManager::new(dir.path())?.acquire("job", Duration::from_secs(1)).await?;
    /// let guard = LockGuard::new(file_guard);
    /// assert_eq!(guard.resource(), "job");
    /// # Ok(())
    /// # }
    /// ```
    pub fn new<G: RawGuard + 'static>(guard: G) -> Self {
        Self {
            inner: Box::new(guard),
        }
    }

    /// The resource name.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{AcquireOptions, FileLockManager, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock = FileLockManager::new(dir.path())?.lock("report")?;
    /// let guard = lock.lock(&AcquireOptions::exclusive()).await?;
    /// assert_eq!(guard.resource(), "report");
    /// # Ok(())
    /// # }
    /// ```
    pub fn resource(&self) -> &str {
        self.inner.resource()
    }

    /// How the lock is held.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{AcquireOptions, FileLockManager, Lock, Mode};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock = FileLockManager::new(dir.path())?.lock("report")?;
    /// let guard = lock.lock(&AcquireOptions::shared()).await?;
    /// assert_eq!(guard.mode(), Mode::Shared);
    /// # Ok(())
    /// # }
    /// ```
    pub fn mode(&self) -> Mode {
        self.inner.mode()
    }

    /// The fencing token, if the backend issues them.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{AcquireOptions, FileLockManager, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock = FileLockManager::new(dir.path())?.lock("report")?;
    /// let guard = lock.lock(&AcquireOptions::exclusive()).await?;
    /// assert_eq!(guard.fencing_token(), None); // file locks issue no tokens
    /// # Ok(())
    /// # }
    /// ```
    pub fn fencing_token(&self) -> Option<u64> {
        self.inner.fencing_token()
    }

    /// A future that completes when the lock is lost.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{AcquireOptions, FileLockManager, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock = FileLockManager::new(dir.path())?.lock("report")?;
    /// let guard = lock.lock(&AcquireOptions::exclusive()).await?;
    /// // A file lock is never lost: the signal does not fire.
    /// let fired = tokio::time::timeout(Duration::from_millis(10), guard.lost()).await;
    /// assert!(fired.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn lost(&self) -> Lost {
        self.inner.lost()
    }

    /// Whether the lock is lost, as of the moment of asking.
    ///
    /// For a lease (Redis, Redlock) this compares the lease's deadline with
    /// the clock now, so it never says held after the deadline, however late
    /// the renewal task runs (after a pause of the process, say). What it
    /// cannot cover is a pause *between* this check and the write it guards:
    /// pass [`fencing_token`](Self::fencing_token) to the storage for that.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{AcquireOptions, FileLockManager, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock = FileLockManager::new(dir.path())?.lock("report")?;
    /// let guard = lock.lock(&AcquireOptions::exclusive()).await?;
    /// assert!(!guard.is_lost());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.inner.lost().is_lost()
    }

    /// Held, suspect or lost, as of now: [`LeaseState::Suspect`] while a
    /// lease's renewals are failing but its deadline has not passed. File and
    /// in-process locks are always [`LeaseState::Held`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{AcquireOptions, FileLockManager, LeaseState, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock = FileLockManager::new(dir.path())?.lock("report")?;
    /// let guard = lock.lock(&AcquireOptions::exclusive()).await?;
    /// assert_eq!(guard.state(), LeaseState::Held);
    /// # Ok(())
    /// # }
    /// ```
    pub fn state(&self) -> LeaseState {
        self.inner.lost().state()
    }

    /// A future that completes when the lock becomes suspect (a lease's
    /// renewal failed; it may still be renewed in time) or lost: the moment
    /// for a careful holder to checkpoint or pause. Never, for file and
    /// in-process locks.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{AcquireOptions, FileLockManager, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock = FileLockManager::new(dir.path())?.lock("report")?;
    /// let guard = lock.lock(&AcquireOptions::exclusive()).await?;
    /// let fired = tokio::time::timeout(Duration::from_millis(10), guard.suspect()).await;
    /// assert!(fired.is_err());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping it changes nothing; the lock stays held.
    pub fn suspect(&self) -> impl Future<Output = ()> + Send + use<> {
        self.inner.lost().suspect()
    }

    /// Runs `fut` while the lock is held; if the lock is lost first, `fut` is
    /// dropped and [`LockError::Lost`] returned. The lost signal is looked at
    /// before `fut` at every poll and, for a lease, compares its deadline
    /// with the clock, so `fut` is not polled again once the deadline has
    /// passed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{AcquireOptions, FileLockManager, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock = FileLockManager::new(dir.path())?.lock("report")?;
    /// let guard = lock.lock(&AcquireOptions::exclusive()).await?;
    /// let rows = guard.run_until_lost(async { 42 }).await?;
    /// assert_eq!(rows, 42);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] if the lock is lost before `fut` completes (`fut` is then dropped).
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future drops `fut`; the lock stays held by this
    /// guard.
    pub async fn run_until_lost<F: Future>(&self, fut: F) -> Result<F::Output, LockError> {
        let lost = self.lost();
        tokio::select! {
            biased;
            () = lost => Err(LockError::Lost { resource: self.resource().to_owned() }),
            out = fut => Ok(out),
        }
    }

    /// The backend's own guard, if it is a `G`: a [`FileLockGuard`](crate::FileLockGuard)'s
    /// path, a Redis guard's `extend`, and so on, for guards that came
    /// through the [`AsyncLockManager`](crate::AsyncLockManager) or a
    /// [`Lock`](crate::Lock) trait object.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{AcquireOptions, FileLockGuard, FileLockManager, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock = FileLockManager::new(dir.path())?.lock("report")?;
    /// let guard = lock.lock(&AcquireOptions::exclusive()).await?;
    /// let file_guard = guard.downcast_ref::<FileLockGuard>().unwrap();
    /// assert!(file_guard.path().ends_with("report.lock"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn downcast_ref<G: RawGuard + 'static>(&self) -> Option<&G> {
        match self.inner.as_any().downcast_ref::<G>() {
            Some(g) => Some(g),
            None => self.inner.inner_guard()?.downcast_ref::<G>(),
        }
    }

    /// The backend's own guard, mutably, if it is a `G` (see
    /// [`downcast_ref`](Self::downcast_ref)); only for guards that are not
    /// wrapped by the manager (every guard of a lockyard backend).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{AcquireOptions, FileLockManager, FileLockGuard, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock = FileLockManager::new(dir.path())?.lock("report")?;
    /// let mut guard = lock.lock(&AcquireOptions::exclusive()).await?;
    /// let file_guard: &mut FileLockGuard = guard.downcast_mut().unwrap();
    /// assert_eq!(file_guard.name(), "report");
    /// # Ok(())
    /// # }
    /// ```
    pub fn downcast_mut<G: RawGuard + 'static>(&mut self) -> Option<&mut G> {
        self.inner.as_any_mut().downcast_mut::<G>()
    }

    /// Turns this guard back into the backend's own guard if it is a `G`
    /// (still held); otherwise gives it back unchanged.
    ///
    /// # Errors
    ///
    /// `Err(self)` when the guard is not a `G` (or is one wrapped by the
    /// manager for a custom backend: use [`downcast_ref`](Self::downcast_ref)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{AcquireOptions, FileLockGuard, FileLockManager, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock = FileLockManager::new(dir.path())?.lock("report")?;
    /// let guard = lock.lock(&AcquireOptions::exclusive()).await?;
    /// let file_guard: FileLockGuard = guard.downcast().unwrap();
    /// assert_eq!(file_guard.name(), "report");
    /// # Ok(())
    /// # }
    /// ```
    pub fn downcast<G: RawGuard + 'static>(self) -> Result<G, Self> {
        if self.inner.as_any().is::<G>() {
            match self.inner.into_any().downcast::<G>() {
                Ok(g) => Ok(*g),
                // `is` said it is a `G`.
                Err(_) => unreachable!("type checked by `is`"),
            }
        } else {
            Err(self)
        }
    }

    /// Releases the lock now and reports errors (dropping the guard also
    /// releases, but silently).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{AcquireOptions, FileLockManager, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock = FileLockManager::new(dir.path())?.lock("report")?;
    /// let guard = lock.lock(&AcquireOptions::exclusive()).await?;
    /// guard.release().await?;
    /// assert!(!lock.is_locked().await?);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// What the backend reports: for example [`LockError::NotHeld`] when a
    /// Redis lease had expired before the release, or an I/O error.
    ///
    /// # Cancel safety
    ///
    /// If the returned future is dropped before it completes, the release
    /// still happens (in the background where I/O is needed), but its outcome
    /// is not reported.
    pub async fn release(self) -> Result<(), LockError> {
        self.inner.release().await
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}
