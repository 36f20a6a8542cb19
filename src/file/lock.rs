//! [`FileLock`]: a handle to one named file lock.
//!
//! # Layering
//!
//! Holds the name's slot and acquires through `core.rs`, never through the
//! facade (`manager.rs`), which makes handles.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use super::core::{self, Slot};
use super::disk::dir::LockDir;
use super::disk::{name, scan};
use super::guard::FileLockGuard;
use super::options::FileLockOptions;
use crate::error::LockError;
use crate::guard::LockGuard;
use crate::lock::Lock;
use crate::options::{AcquireOptions, Mode};
use crate::stats::Backend;
use crate::text::Escaped;

/// A handle to one named file lock, implementing [`Lock`] so it can sit
/// beside other backends as `Arc<dyn Lock>`. Made by
/// [`FileLockManager::lock`](crate::FileLockManager::lock),
/// [`FileLockManager::lock_file`](crate::FileLockManager::lock_file) and
/// [`FileLock::at_path`].
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
    name: Arc<str>,
    slot: Arc<Slot>,
}

impl FileLock {
    pub(crate) fn new(name: Arc<str>, slot: Arc<Slot>) -> Self {
        Self { name, slot }
    }

    /// A handle on the exact file `path`, as flock(1) takes it (`flock
    /// /var/lock/x.lock cmd`): the file itself, with no `.lock` added and
    /// nothing escaped, in a manager for its parent directory made with
    /// `options`. See [`FileLockManager::lock_file`](crate::FileLockManager::lock_file)
    /// for what is checked and written. The parent directory is checked as any lock directory
    /// ([`FileLockManager::with_options`](crate::FileLockManager::with_options); root's sticky `/tmp` and
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
    /// - As [`FileLockManager::with_options`](crate::FileLockManager::with_options)
    ///   for the parent directory.
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
        match LockDir::open_if_exists(dir, &options)? {
            Some(dir) => {
                name::check_exact_file_name(file_name)?;
                let name = Arc::from(dir.join(file_name).display().to_string());
                Ok(Self::new(
                    name,
                    Slot::standalone(dir, file_name.to_owned(), &options),
                ))
            }
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
        &self.slot.kernel.path
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
    /// As [`FileLockManager::try_acquire`](crate::FileLockManager::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it never waits.
    pub async fn try_acquire(&self, mode: Mode) -> Result<FileLockGuard, LockError> {
        core::acquire(
            &self.name,
            &self.slot,
            &AcquireOptions::new().mode(mode),
            true,
        )
        .await
    }

    /// Acquires as [`FileLockManager::acquire_with`](crate::FileLockManager::acquire_with) does, returning the
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
    /// As [`FileLockManager::acquire`](crate::FileLockManager::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`FileLockManager::acquire_with`](crate::FileLockManager::acquire_with).
    pub async fn acquire(&self, options: &AcquireOptions) -> Result<FileLockGuard, LockError> {
        core::acquire(&self.name, &self.slot, options, false).await
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
        scan::is_locked(&self.slot.kernel.dir, &self.slot.kernel.file_name)
    }
}
