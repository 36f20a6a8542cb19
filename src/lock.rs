//! The object-safe [`Lock`] trait every backend implements.

use std::any::Any;
use std::fmt;

use async_trait::async_trait;

use crate::error::LockError;
use crate::guard::LockGuard;
use crate::options::{AcquireOptions, Mode};
use crate::stats::Backend;

/// A handle to one named lock of any backend: a file lock, a Redis lock, an
/// in-process semaphore or RW lock.
///
/// The trait is object safe, so locks of different kinds can sit side by
/// side as `Arc<dyn Lock>` (as the manager holds them); an `Arc<dyn Lock>`
/// turns back into the concrete handle with
/// [`AsyncLockManager::get_as`](crate::AsyncLockManager::get_as).
///
/// See [`RawGuard`](crate::RawGuard) for an example of writing a backend.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::sync::Arc;
/// use lockyard::{AcquireOptions, FileLockManager, Lock, Mode};
///
/// let dir = tempfile::tempdir().unwrap();
/// let files = FileLockManager::new(dir.path())?;
/// let lock: Arc<dyn Lock> = Arc::new(files.lock("nightly")?);
/// let guard = lock.lock(&AcquireOptions::exclusive()).await?;
/// assert!(lock.try_lock(Mode::Exclusive).await.unwrap_err().is_would_block());
/// drop(guard);
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait Lock: Send + Sync + fmt::Debug + Any {
    /// The resource name.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use lockyard::{FileLockManager, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock: Arc<dyn Lock> = Arc::new(FileLockManager::new(dir.path())?.lock("nightly")?);
    /// assert_eq!(lock.name(), "nightly");
    /// # Ok(())
    /// # }
    /// ```
    fn name(&self) -> &str;

    /// Which backend this is, and so where its acquisitions are counted in
    /// the [`stats`](crate::stats) registry. lockyard's own backends count
    /// every acquisition themselves; for the default,
    /// [`Backend::Custom`], the [`AsyncLockManager`](crate::AsyncLockManager)
    /// counts the acquisitions made through it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use lockyard::{FileLockManager, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock: Arc<dyn Lock> = Arc::new(FileLockManager::new(dir.path())?.lock("nightly")?);
    /// assert_eq!(lock.backend(), lockyard::stats::Backend::File);
    /// # Ok(())
    /// # }
    /// ```
    fn backend(&self) -> Backend {
        Backend::Custom
    }

    /// Acquires the lock, waiting up to `options.timeout`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::{sync::Arc, time::Duration};
    /// use lockyard::{AcquireOptions, FileLockManager, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock: Arc<dyn Lock> = Arc::new(FileLockManager::new(dir.path())?.lock("nightly")?);
    /// let guard = lock.lock(&AcquireOptions::shared().timeout(Duration::from_secs(1))).await?;
    /// assert_eq!(guard.resource(), "nightly");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] if the lock stayed held until the timeout;
    /// [`LockError::Unsupported`] for a mode the backend does not have;
    /// otherwise what the backend reports (I/O, Redis unavailable, …).
    ///
    /// # Cancel safety
    ///
    /// Implementations are cancel safe: dropping the future leaves nothing
    /// held and nothing queued (a backend may still clean up in the
    /// background, as its own docs say).
    async fn lock(&self, options: &AcquireOptions) -> Result<LockGuard, LockError>;

    /// Acquires the lock if it is free right now; otherwise fails with
    /// [`LockError::WouldBlock`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use lockyard::{FileLockManager, Lock, Mode};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock: Arc<dyn Lock> = Arc::new(FileLockManager::new(dir.path())?.lock("nightly")?);
    /// let first = lock.try_lock(Mode::Exclusive).await?;
    /// let second = lock.try_lock(Mode::Exclusive).await;
    /// assert!(second.unwrap_err().is_would_block());
    /// # drop(first);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] if held; otherwise as [`lock`](Self::lock).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`lock`](Self::lock).
    async fn try_lock(&self, mode: Mode) -> Result<LockGuard, LockError>;

    /// Whether anyone (this process included) holds the lock now. The answer
    /// may be stale by the time it is read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::sync::Arc;
    /// use lockyard::{FileLockManager, Lock, Mode};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock: Arc<dyn Lock> = Arc::new(FileLockManager::new(dir.path())?.lock("nightly")?);
    /// assert!(!lock.is_locked().await?);
    /// let guard = lock.try_lock(Mode::Shared).await?;
    /// assert!(lock.is_locked().await?);
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// What the backend reports when it cannot look (I/O, Redis unavailable).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks.
    async fn is_locked(&self) -> Result<bool, LockError>;
}
