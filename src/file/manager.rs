//! [`FileLockManager`]: named cross-process locks in one directory.
//!
//! # Layering
//!
//! The facade: the type and its methods, on top of `lock.rs`, `core.rs`,
//! `guard.rs` and `disk/`. Nothing inside `file/` imports it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::core::{self, Slot, Slots};
use super::disk::dir::LockDir;
use super::disk::name;
use super::disk::scan::{self, CleanupOptions, FileLockInfo};
use super::guard::FileLockGuard;
use super::lock::FileLock;
use super::options::FileLockOptions;
use crate::error::LockError;
use crate::options::AcquireOptions;
use crate::owner::Owner;

/// Named cross-process locks, one lock file per name in one directory.
///
/// Cheap to clone (an `Arc` inside); dropping the manager never breaks a live
/// guard. Names map to files as described in the [module docs](crate::file):
/// any non-empty string is a valid name and none reaches outside the
/// directory.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::time::Duration;
/// use lockyard::FileLockManager;
///
/// let dir = tempfile::tempdir().unwrap();
/// let locks = FileLockManager::new(dir.path().join("locks"))?;
/// let guard = locks.acquire("nightly-report", Duration::from_secs(10)).await?;
/// assert!(locks.is_locked("nightly-report").await?);
/// assert!(locks.try_acquire("nightly-report").await.unwrap_err().is_would_block());
/// let owner = locks.owner("nightly-report").await?.expect("recorded");
/// assert_eq!(owner.pid, std::process::id());
/// drop(guard);
/// assert!(!locks.is_locked("nightly-report").await?);
/// # Ok(())
/// # }
/// ```
///
/// # Invariants
///
/// * Tasks of one process queue in a fair FIFO queue per name before they
///   touch the kernel lock, so they contend with each other exactly as
///   separate processes do (shared holders coexist, an exclusive holder
///   excludes everyone), and at most one thread per contended name blocks in
///   the kernel.
/// * A lock file is only ever removed by someone holding its lock, and every
///   acquisition checks afterwards that the file it locked is still the one
///   at the path (retrying if not), so removing files never breaks mutual
///   exclusion.
///
/// # Deadlock safety
///
/// Acquiring a second name while holding a first can deadlock against a
/// process (or task) that takes them in the other order, exactly as with any
/// locks: take several names in one global order (sorted), or use timeouts.
/// Acquiring a name exclusively that this task already holds waits for
/// itself; `flock` does not detect deadlocks.
#[derive(Clone)]
pub struct FileLockManager {
    inner: Arc<Inner>,
}

struct Inner {
    dir: Arc<LockDir>,
    options: FileLockOptions,
    slots: Slots,
}

impl FileLockManager {
    /// A manager for the lock directory `dir`, created (mode `0o700`) if
    /// missing.
    ///
    /// An existing directory is trusted when this user owns it, or root owns
    /// it and it is sticky (`/tmp`, `/run/lock`) or writable by root alone.
    /// Its last component may be a symbolic link only if root owns the link
    /// (`/var/lock -> /run/lock`); the directory it leads to is then checked
    /// as above. Links in the components before it are followed as the
    /// system follows them. [`FileLockOptions::allow_foreign_dir`] accepts
    /// any directory and any link.
    ///
    /// ```
    /// # fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::FileLockManager;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path().join("locks"))?; // created, 0o700
    /// assert!(locks.dir().is_dir());
    /// # #[cfg(unix)] {
    /// # use std::os::unix::fs::MetadataExt;
    /// // A link to it is accepted if root owns the link: here, if root runs this.
    /// let link = dir.path().join("link");
    /// std::os::unix::fs::symlink(locks.dir(), &link).unwrap();
    /// let roots = std::fs::symlink_metadata(&link).unwrap().uid() == 0;
    /// assert_eq!(FileLockManager::new(&link).is_ok(), roots);
    /// # }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::UnsafePath`] if `dir` is not a directory, is a symbolic
    /// link root does not own, or is (or leads to) a directory not trusted
    /// as above; [`LockError::PermissionDenied`] or [`LockError::Io`] if it
    /// cannot be created or inspected.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self, LockError> {
        Self::with_options(dir, FileLockOptions::default())
    }

    /// A manager with explicit [`FileLockOptions`].
    ///
    /// ```
    /// # fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{FileLockManager, FileLockOptions, WaitStrategy};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let options = FileLockOptions::default().wait_strategy(WaitStrategy::Poll);
    /// let locks = FileLockManager::with_options(dir.path(), options)?;
    /// assert_eq!(locks.options().wait_strategy, WaitStrategy::Poll);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new); a foreign or symlinked directory is accepted
    /// when [`FileLockOptions::allow_foreign_dir`] is set.
    pub fn with_options(
        dir: impl AsRef<Path>,
        options: FileLockOptions,
    ) -> Result<Self, LockError> {
        let dir = LockDir::open(dir.as_ref(), &options)?;
        Ok(Self::in_dir(dir, options))
    }

    fn in_dir(dir: LockDir, options: FileLockOptions) -> Self {
        let dir = Arc::new(dir);
        Self {
            inner: Arc::new(Inner {
                slots: Slots::new(dir.clone(), options),
                dir,
                options,
            }),
        }
    }

    /// The default lock directory of this user: one path per user and
    /// machine, the same in a login shell, under cron, systemd or `sudo -u`,
    /// because it depends on no environment variable (neither
    /// `$XDG_RUNTIME_DIR`, which only login sessions have and which logind
    /// removes at logout while holders may still run, nor `$TMPDIR`).
    ///
    /// - Linux: `/run/lock/lockyard-<uid>` when `/run/lock` is a root-owned,
    ///   sticky, world-writable directory (as on Debian, Ubuntu, Arch);
    ///   otherwise `/tmp/lockyard-<uid>`. Both are cleared at boot, when no
    ///   holder can survive anyway; `/run/lock` is not aged by
    ///   `systemd-tmpfiles`, unlike `/tmp`.
    /// - Other Unix systems: `/tmp/lockyard-<uid>`.
    /// - Windows: `lockyard` in the user's temporary directory.
    ///
    /// `<uid>` is the effective user id. The directory is only named here;
    /// [`new`](Self::new) creates it (`0o700`).
    ///
    /// ```
    /// use lockyard::FileLockManager;
    ///
    /// let dir = FileLockManager::default_dir();
    /// assert!(dir.file_name().unwrap().to_str().unwrap().starts_with("lockyard"));
    /// assert!(dir.is_absolute());
    /// ```
    pub fn default_dir() -> PathBuf {
        #[cfg(unix)]
        {
            let uid = rustix::process::geteuid().as_raw();
            let base = if cfg!(target_os = "linux") && run_lock_is_shared() {
                "/run/lock"
            } else {
                "/tmp"
            };
            Path::new(base).join(format!("lockyard-{uid}"))
        }
        #[cfg(not(unix))]
        {
            std::env::temp_dir().join("lockyard")
        }
    }

    /// The lock directory.
    ///
    /// ```
    /// # fn main() -> Result<(), lockyard::LockError> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = lockyard::FileLockManager::new(dir.path())?;
    /// assert_eq!(locks.dir(), dir.path());
    /// # Ok(())
    /// # }
    /// ```
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    /// The options the manager was made with.
    ///
    /// ```
    /// # fn main() -> Result<(), lockyard::LockError> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = lockyard::FileLockManager::new(dir.path())?;
    /// assert_eq!(locks.options().dir_mode, 0o700); // the default
    /// # Ok(())
    /// # }
    /// ```
    pub fn options(&self) -> &FileLockOptions {
        &self.inner.options
    }

    /// The lock file that stands for `name`.
    ///
    /// ```
    /// # fn main() -> Result<(), lockyard::LockError> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = lockyard::FileLockManager::new(dir.path())?;
    /// assert_eq!(locks.path_for("report")?, dir.path().join("report.lock"));
    /// assert!(locks.path_for("").unwrap_err().is_invalid_input());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for the empty name.
    pub fn path_for(&self, name: &str) -> Result<PathBuf, LockError> {
        Ok(self.inner.dir.join(&name::file_name(name)?))
    }

    /// Acquires `name` exclusively, waiting up to `timeout`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::FileLockManager;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let guard = locks.acquire("deploy", Duration::from_secs(5)).await?;
    /// // A second exclusive holder waits, here in vain:
    /// let again = locks.acquire("deploy", Duration::from_millis(20)).await;
    /// assert!(again.unwrap_err().is_timeout());
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] (with the holder, when its record could be
    /// read) if the lock stayed held; [`LockError::InvalidName`],
    /// [`LockError::UnsafePath`], [`LockError::PermissionDenied`],
    /// [`LockError::UnsupportedFilesystem`] or [`LockError::Io`] for what
    /// stops it from being taken at all.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future at any `.await` leaves nothing held
    /// and nothing queued. If this task was the last of its process waiting
    /// for `name` in the kernel, the thread blocked there is interrupted (on
    /// Linux within milliseconds); should the kernel grant the lock in that
    /// instant, the thread releases it at once.
    pub async fn acquire(&self, name: &str, timeout: Duration) -> Result<FileLockGuard, LockError> {
        self.acquire_with(name, &AcquireOptions::exclusive().timeout(timeout))
            .await
    }

    /// Acquires `name` shared, waiting up to `timeout`. Shared holders (of
    /// any process) coexist; they exclude exclusive holders.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::FileLockManager;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let a = locks.acquire_shared("cache", Duration::from_secs(1)).await?;
    /// let b = locks.acquire_shared("cache", Duration::from_secs(1)).await?; // readers share
    /// assert!(locks.try_acquire("cache").await.unwrap_err().is_would_block());
    /// # drop((a, b));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_shared(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<FileLockGuard, LockError> {
        self.acquire_with(name, &AcquireOptions::shared().timeout(timeout))
            .await
    }

    /// Acquires `name` in `options.mode`, waiting up to `options.timeout`
    /// (`None`: until it is free; `Some(ZERO)`: one attempt, failing with
    /// [`LockError::Timeout`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{AcquireOptions, FileLockManager};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let reader = locks.acquire_with("index", &AcquireOptions::shared()).await?;
    /// # drop(reader);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_with(
        &self,
        name: &str,
        options: &AcquireOptions,
    ) -> Result<FileLockGuard, LockError> {
        let slot = self.slot(name)?;
        core::acquire(name, &slot, options, false).await
    }

    /// Acquires `name` exclusively if it is free now; otherwise fails with
    /// [`LockError::WouldBlock`] naming the holder.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::FileLockManager;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let guard = locks.try_acquire("deploy").await?;
    /// let busy = locks.try_acquire("deploy").await.unwrap_err();
    /// assert!(busy.is_would_block());
    /// assert_eq!(busy.holder().map(|o| o.pid), Some(std::process::id()));
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`], or as [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it never waits.
    pub async fn try_acquire(&self, name: &str) -> Result<FileLockGuard, LockError> {
        let slot = self.slot(name)?;
        core::acquire(name, &slot, &AcquireOptions::exclusive(), true).await
    }

    /// Acquires `name` shared if no exclusive holder has it now; otherwise
    /// fails with [`LockError::WouldBlock`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::FileLockManager;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let reader = locks.try_acquire_shared("cache").await?;
    /// assert!(locks.try_acquire_shared("cache").await.is_ok());
    /// drop(reader);
    /// let writer = locks.try_acquire("cache").await?;
    /// assert!(locks.try_acquire_shared("cache").await.unwrap_err().is_would_block());
    /// # drop(writer);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it never waits.
    pub async fn try_acquire_shared(&self, name: &str) -> Result<FileLockGuard, LockError> {
        let slot = self.slot(name)?;
        core::acquire(name, &slot, &AcquireOptions::shared(), true).await
    }

    /// Whether anyone — another process, or a task of this one — holds
    /// `name` now, in either mode. The answer may be stale by the time it is
    /// read.
    ///
    /// Looking never touches: on Linux the answer comes from the kernel's
    /// table of locks (`/proc/locks`), so a concurrent acquirer is never
    /// refused because of it. Elsewhere (or where the table cannot tell,
    /// see [`list`](Self::list)) it tries the kernel lock on its own
    /// descriptor, holding a free lock for the microseconds of that probe.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::FileLockManager;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// assert!(!locks.is_locked("deploy").await?);
    /// let guard = locks.acquire("deploy", Duration::from_secs(1)).await?;
    /// assert!(locks.is_locked("deploy").await?);
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`], [`LockError::UnsafePath`] (the lock file
    /// is a symbolic link or not a regular file), or an I/O error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks.
    pub async fn is_locked(&self, name: &str) -> Result<bool, LockError> {
        scan::is_locked(&self.inner.dir, &name::file_name(name)?)
    }

    /// The owner recorded in `name`'s lock file: the current holder while
    /// the lock is held, else the last one (see [`list`](Self::list) for
    /// both at once). `None` when there is no lock file, or when its content
    /// is not a record this crate wrote (a foreign or damaged file).
    ///
    /// For a lock held shared by several processes, the record names the one
    /// that took it most recently.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::FileLockManager;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// assert!(locks.owner("deploy").await?.is_none()); // no lock file yet
    /// drop(locks.acquire("deploy", Duration::from_secs(1)).await?);
    /// // The last holder's record stays in the file.
    /// let last = locks.owner("deploy").await?.unwrap();
    /// assert_eq!(last.pid, std::process::id());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`], [`LockError::UnsafePath`], or an I/O error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn owner(&self, name: &str) -> Result<Option<Owner>, LockError> {
        scan::read_owner(&self.inner.dir, &name::file_name(name)?)
    }

    /// Every lock file in the directory, sorted by name: whether it is held
    /// (looked at as in [`is_locked`](Self::is_locked), without taking it on
    /// Linux; [`FileLockInfo::holder_pids`] names the kernel's holders), how, and the recorded
    /// owner. Files that are not lock files of this crate, symbolic links
    /// and other non-regular files are skipped.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{FileLockManager, Mode};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let guard = locks.acquire_shared("b-cache", Duration::from_secs(1)).await?;
    /// drop(locks.acquire("a-deploy", Duration::from_secs(1)).await?);
    /// let seen: Vec<(String, Option<Mode>)> =
    ///     locks.list().await?.into_iter().map(|i| (i.name, i.mode)).collect();
    /// assert_eq!(seen[0], ("a-deploy".to_owned(), None)); // free, sorted first
    /// assert_eq!(seen[1], ("b-cache".to_owned(), Some(Mode::Shared)));
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// An I/O error if the directory cannot be read.
    ///
    /// # Cancel safety
    ///
    /// The scan runs on tokio's blocking threads; dropping the future lets it
    /// finish unobserved (it changes nothing).
    pub async fn list(&self) -> Result<Vec<FileLockInfo>, LockError> {
        let dir = self.inner.dir.clone();
        blocking(move || scan::list(&dir)).await
    }

    /// What [`cleanup_stale_locks`](Self::cleanup_stale_locks) would remove,
    /// without removing anything (and, on Linux, without locking anything).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::FileLockManager;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// drop(locks.acquire("job", Duration::from_secs(1)).await?);
    /// // The last holder (this process) still runs: not stale, unless too old.
    /// assert!(locks.stale_locks(None).await?.is_empty());
    /// assert_eq!(locks.stale_locks(Some(Duration::ZERO)).await?.len(), 1);
    /// assert!(locks.path_for("job")?.exists()); // nothing was removed
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    ///
    /// # Cancel safety
    ///
    /// As [`list`](Self::list).
    pub async fn stale_locks(
        &self,
        max_age: Option<Duration>,
    ) -> Result<Vec<FileLockInfo>, LockError> {
        self.stale_locks_with(&CleanupOptions {
            max_age,
            ..CleanupOptions::default()
        })
        .await
    }

    /// What [`cleanup_with`](Self::cleanup_with) would remove, without
    /// removing anything (and, on Linux, without locking anything).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{CleanupOptions, FileLockManager};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// drop(locks.acquire("job", Duration::from_secs(1)).await?);
    /// let old = CleanupOptions::default().max_age(Duration::ZERO);
    /// let stale = locks.stale_locks_with(&old).await?;
    /// assert_eq!(stale[0].name, "job");
    /// assert!(stale[0].path.exists()); // only listed
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    ///
    /// # Cancel safety
    ///
    /// As [`list`](Self::list).
    pub async fn stale_locks_with(
        &self,
        options: &CleanupOptions,
    ) -> Result<Vec<FileLockInfo>, LockError> {
        let (dir, options) = (self.inner.dir.clone(), *options);
        blocking(move || scan::stale(&dir, &options, true)).await
    }

    /// Removes stale lock files and returns how many it removed: as
    /// [`cleanup_with`](Self::cleanup_with) with
    /// [`CleanupOptions::max_age`] set to `max_age` (`None`: only provably
    /// dead owners' files) and files without a lockyard record kept.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::FileLockManager;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// drop(locks.acquire("job", Duration::from_secs(1)).await?);
    /// let held = locks.acquire("busy", Duration::from_secs(1)).await?;
    /// // Held locks are never removed, however old.
    /// assert_eq!(locks.cleanup_stale_locks(Some(Duration::ZERO)).await?, 1);
    /// assert!(!locks.path_for("job")?.exists());
    /// # drop(held);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    ///
    /// # Cancel safety
    ///
    /// As [`cleanup_with`](Self::cleanup_with).
    pub async fn cleanup_stale_locks(&self, max_age: Option<Duration>) -> Result<usize, LockError> {
        let options = CleanupOptions {
            max_age,
            ..CleanupOptions::default()
        };
        self.cleanup_with(&options).await.map(|v| v.len())
    }

    /// Removes stale lock files and returns what it removed.
    ///
    /// A lock file is stale when nobody holds it — neither a `flock` lock
    /// (lockyard's, flock(1)'s) nor, on Linux, an `fcntl`/`lockf` record
    /// lock (which `flock` cannot see: such a file is never removed) — and
    /// - its owner is provably gone: the recorded pid does not run on this
    ///   host, or runs with another start time (a reused pid); or
    /// - it holds a damaged lockyard record; or
    /// - [`CleanupOptions::max_age`] is set and the record is older; or
    /// - it holds no lockyard record at all (empty, or another tool's
    ///   content) and [`CleanupOptions::remove_unrecorded`] is set: by
    ///   default such files are kept, since another tool may be using them
    ///   in ways lockyard cannot see.
    ///
    /// Staleness is decided by looking (on Linux without locking); only a
    /// file found stale is then locked, checked again, and removed while
    /// held, and only if it is still the file that was locked, so a
    /// concurrent acquirer is never left holding a lock on a removed file
    /// without noticing.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{CleanupOptions, FileLockManager};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// drop(locks.acquire("job", Duration::from_secs(1)).await?);
    /// let removed = locks.cleanup_with(&CleanupOptions::default().max_age(Duration::ZERO)).await?;
    /// assert_eq!(removed[0].name, "job");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list). A file that cannot be removed is skipped with
    /// a `tracing` warning.
    ///
    /// # Cancel safety
    ///
    /// The cleanup runs on tokio's blocking threads; dropping the future lets it
    /// finish (files may still be removed), unreported.
    pub async fn cleanup_with(
        &self,
        options: &CleanupOptions,
    ) -> Result<Vec<FileLockInfo>, LockError> {
        let (dir, options) = (self.inner.dir.clone(), *options);
        blocking(move || scan::stale(&dir, &options, false)).await
    }

    /// A [`FileLock`] handle for `name`, implementing [`crate::Lock`].
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
    /// assert_eq!(guard.path(), locks.path_for("report")?);
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for the empty name.
    pub fn lock(&self, name: &str) -> Result<FileLock, LockError> {
        Ok(FileLock::new(Arc::from(name), self.slot(name)?))
    }

    /// How many threads wait in the kernel for this manager's locks (and its
    /// clones'): at most one per contended name, whatever the number of
    /// waiting tasks. A thread stops counting when it gives up its post (its
    /// last microseconds of exiting are not counted). For diagnostics and
    /// tests.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::FileLockManager;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let guard = locks.acquire("job", Duration::from_secs(1)).await?;
    /// // Contention inside one process is settled in its own queue, not the kernel.
    /// assert!(locks.acquire("job", Duration::from_millis(10)).await.is_err());
    /// assert_eq!(locks.kernel_waiter_threads(), 0);
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    pub fn kernel_waiter_threads(&self) -> usize {
        self.inner.slots.waiter_threads()
    }

    /// A [`FileLock`] handle on the file `file_name` of the lock directory
    /// itself: no `.lock` is added and nothing is escaped, so it locks the
    /// very file other tools lock (`flock <dir>/<file_name> cmd`). The
    /// handle's [`name`](crate::Lock::name) is the file's full path.
    ///
    /// The file is locked as any lock file (created if missing; refused if
    /// it is a symbolic link, not a regular file, or has several hard
    /// links), and the owner record is only written into it when it is
    /// empty or already holds one: a data file locked this way is never
    /// modified. It shares its in-process queue with the resource name that
    /// maps to the same file (`x.lock` and the name `x`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{AcquireOptions, FileLockManager};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// let lock = locks.lock_file("queue.db")?;
    /// let guard = lock.acquire(&AcquireOptions::exclusive()).await?;
    /// assert_eq!(guard.path(), dir.path().join("queue.db"));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] if `file_name` is empty, `.` or `..`, or
    /// contains `/` or NUL (it must be one entry of the directory).
    pub fn lock_file(&self, file_name: &str) -> Result<FileLock, LockError> {
        name::check_exact_file_name(file_name)?;
        let slot = self.inner.slots.get(file_name.to_owned());
        let name = self.inner.dir.join(file_name).display().to_string();
        Ok(FileLock::new(Arc::from(name), slot))
    }

    /// The name's slot.
    fn slot(&self, name: &str) -> Result<Arc<Slot>, LockError> {
        Ok(self.inner.slots.get(name::file_name(name)?))
    }
}

impl fmt::Debug for FileLockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLockManager")
            .field("dir", &self.inner.dir)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LockError> + Send + 'static,
) -> Result<T, LockError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(LockError::Io {
            op: "scan",
            path: PathBuf::new(),
            source: io::Error::other(e.to_string()),
        }),
    }
}

/// Whether `/run/lock` is the usual shared lock directory: root's, sticky,
/// writable by everyone.
#[cfg(unix)]
fn run_lock_is_shared() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/run/lock")
        .is_ok_and(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o1777 == 0o1777)
}
