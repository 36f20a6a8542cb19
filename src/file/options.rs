//! [`FileLockOptions`] and [`WaitStrategy`]: how a manager is set up.
//!
//! Below every other file of the backend: they all may read the options.

#[cfg(doc)]
use crate::error::LockError;

/// Options for a [`FileLockManager`](crate::FileLockManager).
///
/// ```
/// use lockyard::FileLockOptions;
///
/// // A cache directory shared by the members of a group.
/// let opts = FileLockOptions::default().dir_mode(0o2770).allow_foreign_dir(true);
/// assert_eq!(opts.dir_mode, 0o2770);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileLockOptions {
    /// Permissions of the lock directory when the manager creates it
    /// (default `0o700`). Lock files get the read/write bits of it
    /// (`0o600` by default). Parent directories it creates get the usual
    /// `0o777` minus the umask.
    pub dir_mode: u32,
    /// Accept a lock directory that [`FileLockManager::new`](crate::FileLockManager::new)'s rule
    /// refuses: a symbolic link root does not own, another user's
    /// directory, or root's when others may write to it and it is not
    /// sticky. Default `false`: such a directory is refused with
    /// [`LockError::UnsafePath`], because whoever controls it can swap lock
    /// files under us.
    pub allow_foreign_dir: bool,
    /// How a thread waiting in the kernel for a lock held by another process
    /// waits, and how it is stopped when nobody wants the lock any more
    /// (default [`WaitStrategy::Signal`]).
    pub wait_strategy: WaitStrategy,
}

/// How lockyard's waiter threads wait for a lock another process holds. See
/// the [module docs](crate::file#how-waiting-works).
///
/// ```
/// use lockyard::{FileLockOptions, WaitStrategy};
///
/// // An application that owns every signal: lockyard installs no handler.
/// let opts = FileLockOptions::default().wait_strategy(WaitStrategy::Poll);
/// assert_eq!(opts.wait_strategy, WaitStrategy::Poll);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WaitStrategy {
    /// Block in `flock`, and interrupt the thread with the real-time signal
    /// `SIGRTMAX - 3` when the last task waiting gives up (Linux). lockyard
    /// installs a no-op handler (without `SA_RESTART`) for that signal on
    /// first use, unless the signal already has a handler, and checks that
    /// the handler is still its own before every wait and every signal:
    /// when it is not (or on other systems), waits poll as with
    /// [`Poll`](Self::Poll).
    #[default]
    Signal,
    /// Poll with a non-blocking `flock` at a backoff from 1 ms to 50 ms.
    /// Installs no signal handler and sends no signal; a hand-over may take
    /// up to 50 ms longer.
    Poll,
}

impl Default for FileLockOptions {
    fn default() -> Self {
        Self {
            dir_mode: 0o700,
            allow_foreign_dir: false,
            wait_strategy: WaitStrategy::default(),
        }
    }
}

impl FileLockOptions {
    /// Sets [`dir_mode`](Self::dir_mode).
    ///
    /// ```
    /// # #[cfg(unix)]
    /// # fn main() -> Result<(), lockyard::LockError> {
    /// use std::os::unix::fs::PermissionsExt;
    /// use lockyard::{FileLockManager, FileLockOptions};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let opts = FileLockOptions::default().dir_mode(0o750);
    /// let locks = FileLockManager::with_options(dir.path().join("locks"), opts)?;
    /// assert_eq!(locks.dir().metadata().unwrap().permissions().mode() & 0o777, 0o750);
    /// # Ok(())
    /// # }
    /// # #[cfg(not(unix))]
    /// # fn main() {}
    /// ```
    pub fn dir_mode(mut self, mode: u32) -> Self {
        self.dir_mode = mode;
        self
    }

    /// Sets [`allow_foreign_dir`](Self::allow_foreign_dir).
    ///
    /// ```
    /// # #[cfg(unix)]
    /// # fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{FileLockManager, FileLockOptions};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let link = dir.path().join("link");
    /// std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    /// // A symbolic link is refused by default (unless root owns it):
    /// let opts = FileLockOptions::default().allow_foreign_dir(true);
    /// let locks = FileLockManager::with_options(&link, opts)?;
    /// assert!(locks.options().allow_foreign_dir);
    /// # Ok(())
    /// # }
    /// # #[cfg(not(unix))]
    /// # fn main() {}
    /// ```
    pub fn allow_foreign_dir(mut self, allow: bool) -> Self {
        self.allow_foreign_dir = allow;
        self
    }

    /// Sets [`wait_strategy`](Self::wait_strategy).
    ///
    /// ```
    /// use lockyard::{FileLockOptions, WaitStrategy};
    ///
    /// let opts = FileLockOptions::default();
    /// assert_eq!(opts.wait_strategy, WaitStrategy::Signal); // the default
    /// let opts = opts.wait_strategy(WaitStrategy::Poll);
    /// assert_eq!(opts.wait_strategy, WaitStrategy::Poll);
    /// ```
    pub fn wait_strategy(mut self, strategy: WaitStrategy) -> Self {
        self.wait_strategy = strategy;
        self
    }

    pub(super) fn file_mode(&self) -> u32 {
        self.dir_mode & 0o666
    }
}
