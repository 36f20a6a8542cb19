//! [`FileLockGuard`]: a held file lock.
//!
//! # Layering
//!
//! Uses `kernel/` (the kernel lock it shares); made by `core.rs`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard};

use super::kernel::{KernelLock, KernelSide};
use crate::error::LockError;
use crate::guard::{LockGuard, RawGuard};
use crate::options::Mode;
use crate::owner::Owner;
use crate::stats::Held;

/// This task's place in the name's in-process queue.
#[derive(Debug)]
pub(crate) enum QueuePlace {
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Exclusive(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

/// A held file lock. Dropping it releases the lock; so does
/// [`release`](Self::release), which also reports errors.
///
/// The kernel releases the lock if the process dies, so a crashed holder
/// never blocks anyone. A guard does not cross `fork()`: a forked child's
/// copy of it holds nothing, and dropping that copy leaves the parent's lock
/// held (see the [module docs](crate::file#fork)). The lock file itself stays (removing it is
/// [`FileLockManager::cleanup_stale_locks`](crate::FileLockManager::cleanup_stale_locks)'s job).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::time::Duration;
/// use lockyard::{FileLockManager, Mode};
///
/// let dir = tempfile::tempdir().unwrap();
/// let locks = FileLockManager::new(dir.path())?;
/// let guard = locks.acquire("db-migrate", Duration::from_secs(5)).await?;
/// assert_eq!(guard.name(), "db-migrate");
/// assert_eq!(guard.mode(), Mode::Exclusive);
/// assert_eq!(guard.owner().pid, std::process::id());
/// assert!(guard.path().ends_with("db-migrate.lock"));
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct FileLockGuard {
    /// Dropped before `place` (see `Drop`): the kernel lock goes first.
    kernel: Option<Arc<KernelLock>>,
    place: Option<QueuePlace>,
    /// The name's kernel side (for its path; it keeps the name's state alive).
    side: Arc<KernelSide>,
    name: Arc<str>,
    mode: Mode,
    owner: Owner,
    /// Counts the hold in the stats registry (set once acquired).
    stats: Option<Held>,
}

impl FileLockGuard {
    pub(crate) fn new(
        kernel: Arc<KernelLock>,
        place: QueuePlace,
        side: Arc<KernelSide>,
        name: Arc<str>,
        mode: Mode,
        owner: Owner,
    ) -> Self {
        Self {
            kernel: Some(kernel),
            place: Some(place),
            side,
            name,
            mode,
            owner,
            stats: None,
        }
    }

    pub(crate) fn count(&mut self, held: Held) {
        self.stats = Some(held);
    }

    /// The resource name, as given to the manager.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::FileLockManager;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let guard = locks.acquire("db/migrate", Duration::from_secs(1)).await?;
    /// assert_eq!(guard.name(), "db/migrate"); // as given, not as escaped on disk
    /// # Ok(())
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lock file.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::FileLockManager;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let guard = locks.acquire("report", Duration::from_secs(1)).await?;
    /// assert_eq!(guard.path(), dir.path().join("report.lock"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn path(&self) -> &Path {
        &self.side.path
    }

    /// How the lock is held (as asked for).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{FileLockManager, Mode};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let guard = locks.acquire_shared("cache", Duration::from_secs(1)).await?;
    /// assert_eq!(guard.mode(), Mode::Shared);
    /// # Ok(())
    /// # }
    /// ```
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The owner metadata describing this holder (this process, the time of
    /// acquisition, the mode).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::FileLockManager;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let guard = locks.acquire("report", Duration::from_secs(1)).await?;
    /// assert_eq!(guard.owner().pid, std::process::id());
    /// // The same record is in the lock file, for others to read:
    /// assert_eq!(locks.owner("report").await?.as_ref(), Some(guard.owner()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// Releases the lock now and reports an error from the kernel, if any.
    ///
    /// Shared holders of one process share one kernel lock: releasing one of
    /// them only releases the kernel lock when it is the last.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::FileLockManager;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let guard = locks.acquire("report", Duration::from_secs(1)).await?;
    /// guard.release().await?;
    /// assert!(!locks.is_locked("report").await?);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Io`] if the kernel reported an error releasing the lock (it is released regardless: the descriptor is closed).
    ///
    /// # Cancel safety
    ///
    /// The release happens before the first poll returns; there is nothing
    /// left to cancel.
    pub async fn release(mut self) -> Result<(), LockError> {
        let result = match self.kernel.take().and_then(Arc::into_inner) {
            Some(kernel) => kernel.release(),
            None => Ok(()),
        };
        self.place.take();
        result
    }
}

impl Drop for FileLockGuard {
    fn drop(&mut self) {
        // Order matters: the kernel lock, then the place in the in-process queue.
        self.kernel.take();
        self.place.take();
    }
}

impl fmt::Debug for FileLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLockGuard")
            .field("name", &self.name)
            .field("path", &self.side.path)
            .field("mode", &self.mode)
            .field("kernel_mode", &self.kernel.as_ref().map(|k| k.mode))
            .finish()
    }
}

#[async_trait]
impl RawGuard for FileLockGuard {
    fn resource(&self) -> &str {
        &self.name
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    async fn release(self: Box<Self>) -> Result<(), LockError> {
        FileLockGuard::release(*self).await
    }
}

impl From<FileLockGuard> for LockGuard {
    fn from(guard: FileLockGuard) -> Self {
        LockGuard::new(guard)
    }
}
