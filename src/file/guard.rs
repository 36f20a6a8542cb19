//! [`FileLockGuard`] and the [`FileLock`] handle.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard};

use super::manager::FileLockManager;
use super::options::FileLockOptions;
use super::slot::{HeldFd, Slot};
use crate::error::LockError;
use crate::guard::{LockGuard, RawGuard};
use crate::lock::Lock;
use crate::options::{AcquireOptions, Mode};
use crate::owner::Owner;
use crate::stats::{Backend, Held};
use crate::text::Escaped;

/// This task's place in the in-process queue.
#[derive(Debug)]
pub(crate) enum LocalGuard {
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
/// [`FileLockManager::cleanup_stale_locks`]'s job).
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
    /// Dropped before `local` (see `Drop`): the kernel lock goes first.
    held: Option<Arc<HeldFd>>,
    local: Option<LocalGuard>,
    slot: Arc<Slot>,
    name: Arc<str>,
    mode: Mode,
    owner: Owner,
    /// Counts the hold in the stats registry (set once acquired).
    stats: Option<Held>,
}

impl FileLockGuard {
    pub(crate) fn new(
        held: Arc<HeldFd>,
        local: LocalGuard,
        slot: Arc<Slot>,
        name: Arc<str>,
        mode: Mode,
        owner: Owner,
    ) -> Self {
        Self {
            held: Some(held),
            local: Some(local),
            slot,
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
        &self.slot.path
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
        let result = match self.held.take().and_then(Arc::into_inner) {
            Some(held) => held.release(),
            None => Ok(()),
        };
        self.local.take();
        result
    }
}

impl Drop for FileLockGuard {
    fn drop(&mut self) {
        // Order matters: the kernel lock, then the place in the local queue.
        self.held.take();
        self.local.take();
    }
}

impl fmt::Debug for FileLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLockGuard")
            .field("name", &self.name)
            .field("path", &self.slot.path)
            .field("mode", &self.mode)
            .field("kernel_mode", &self.held.as_ref().map(|h| h.mode))
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

/// A handle to one named file lock, implementing [`Lock`] so it can sit
/// beside other backends as `Arc<dyn Lock>`. Made by
/// [`FileLockManager::lock`].
///
/// It keeps the name's in-process state alive, so repeated acquisitions
/// through one handle skip the manager's name lookup.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use lockyard::{AcquireOptions, FileLockManager, Lock, Mode};
///
/// let dir = tempfile::tempdir().unwrap();
/// let lock = FileLockManager::new(dir.path())?.lock("cache")?;
/// let a = lock.lock(&AcquireOptions::shared()).await?;
/// let b = lock.try_lock(Mode::Shared).await?; // shared holders coexist
/// assert!(lock.try_lock(Mode::Exclusive).await.unwrap_err().is_would_block());
/// drop((a, b));
/// assert!(!lock.is_locked().await?);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FileLock {
    manager: FileLockManager,
    name: Arc<str>,
    slot: Arc<Slot>,
}

impl FileLock {
    pub(crate) fn new(manager: FileLockManager, name: Arc<str>, slot: Arc<Slot>) -> Self {
        Self {
            manager,
            name,
            slot,
        }
    }

    /// A handle on the exact file `path`, as flock(1) takes it (`flock
    /// /var/lock/x.lock cmd`): the file itself, with no `.lock` added and
    /// nothing escaped, in a manager for its parent directory made with
    /// `options`. See [`FileLockManager::lock_file`] for what is checked and
    /// written. The parent directory is checked as any lock directory
    /// ([`FileLockManager::with_options`]; root's sticky `/tmp` and
    /// `/run/lock` are accepted) and must exist: as flock(1), this creates
    /// no directory.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{FileLock, FileLockOptions, Mode};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("x.lock");
    /// let lock = FileLock::at_path(&path, FileLockOptions::default())?;
    /// let guard = lock.try_acquire(Mode::Exclusive).await?;
    /// assert_eq!(guard.path(), path);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// - [`LockError::InvalidName`] if `path` has no file name or it is not
    ///   UTF-8.
    /// - [`LockError::Io`] (op `"create lock file"`, the path) if the parent
    ///   directory does not exist.
    /// - As [`FileLockManager::with_options`] for the parent directory.
    pub fn at_path(path: impl AsRef<Path>, options: FileLockOptions) -> Result<Self, LockError> {
        let path = path.as_ref();
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|_| !path.as_os_str().as_encoded_bytes().ends_with(b"/"))
            .ok_or_else(|| LockError::InvalidName {
                name: path.display().to_string(),
                reason: "the path must end in a UTF-8 file name",
            })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        match FileLockManager::with_existing_dir(dir, options)? {
            Some(manager) => manager.lock_file(file_name),
            None => Err(LockError::Io {
                op: "create lock file",
                path: path.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("its directory {} does not exist", Escaped(dir.display())),
                ),
            }),
        }
    }

    /// The lock file.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::FileLockManager;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let lock = locks.lock("report")?;
    /// assert_eq!(lock.path(), locks.path_for("report")?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn path(&self) -> &Path {
        &self.slot.path
    }

    /// Takes the lock in `mode` if it is free now; otherwise fails with
    /// [`LockError::WouldBlock`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{FileLockManager, Mode};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let lock = locks.lock("report")?;
    /// let guard = lock.try_acquire(Mode::Exclusive).await?;
    /// assert!(lock.try_acquire(Mode::Shared).await.unwrap_err().is_would_block());
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`FileLockManager::try_acquire`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it never waits.
    pub async fn try_acquire(&self, mode: Mode) -> Result<FileLockGuard, LockError> {
        self.manager
            .acquire_slot(
                &self.name,
                self.slot.clone(),
                &AcquireOptions::new().mode(mode),
                true,
            )
            .await
    }

    /// Acquires as [`FileLockManager::acquire_with`] does, returning the
    /// concrete guard.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{AcquireOptions, FileLockManager};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let lock = locks.lock("report")?;
    /// let opts = AcquireOptions::shared().timeout(Duration::from_secs(1));
    /// let guard = lock.acquire(&opts).await?;
    /// assert_eq!(guard.path(), lock.path()); // the concrete FileLockGuard
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`FileLockManager::acquire`].
    ///
    /// # Cancel safety
    ///
    /// As [`FileLockManager::acquire_with`].
    pub async fn acquire(&self, options: &AcquireOptions) -> Result<FileLockGuard, LockError> {
        self.manager
            .acquire_slot(&self.name, self.slot.clone(), options, false)
            .await
    }
}

#[async_trait]
impl Lock for FileLock {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> Backend {
        Backend::File
    }

    async fn lock(&self, options: &AcquireOptions) -> Result<LockGuard, LockError> {
        self.acquire(options).await.map(LockGuard::from)
    }

    async fn try_lock(&self, mode: Mode) -> Result<LockGuard, LockError> {
        self.try_acquire(mode).await.map(LockGuard::from)
    }

    async fn is_locked(&self) -> Result<bool, LockError> {
        self.manager.is_locked_file(&self.slot.file_name)
    }
}
