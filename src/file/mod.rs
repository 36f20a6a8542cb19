//! Cross-process file locks: [`FileLockManager`].
//!
//! # Advisory locks
//!
//! These locks are *advisory*: they only exclude processes that take them
//! too. They are `flock` locks, which are independent of `fcntl`/`lockf`
//! record locks (dpkg's, SQLite's): lockyard neither sees nor excludes
//! those, except that cleanup never removes a file that has one (Linux, see
//! [`FileLockManager::cleanup_with`]). Any process can still read, write or delete a lock file — or the data
//! it protects — without asking. Use them to coordinate cooperating programs
//! (several copies of a job, a cache shared by workers), not to keep out
//! hostile ones.
//!
//! They are `flock(2)` locks on Unix and `LockFileEx` on Windows, through
//! [`std::fs::File::lock`] and friends. The kernel releases a lock when its
//! holder exits or crashes, so a dead holder never blocks anyone and nothing
//! needs to expire. On network file systems `flock` may not be supported or
//! may not be shared between machines: an acquisition there fails with
//! [`LockError::UnsupportedFilesystem`](crate::LockError::UnsupportedFilesystem)
//! when the kernel says so, but silent local-only locking cannot be detected.
//!
//! # Names and files
//!
//! Each name is one file in the manager's directory. A name of
//! `[A-Za-z0-9._-]`, not starting with `.` and at most 100 bytes long, is the
//! file `<name>.lock`. Any other non-empty name (with `/`, `..`, spaces,
//! non-ASCII, NUL, or too long) is the file `~<readable prefix>-<hash>.lock`,
//! `<hash>` being the first 128 bits of its SHA-256 (collision-resistant: no
//! crafted name shares another name's file);
//! the full name is recorded inside the file so that listings show it. No
//! name can reach outside the directory; the empty name is
//! [`LockError::InvalidName`](crate::LockError::InvalidName).
//!
//! # Owner records
//!
//! A holder writes who it is into the lock file (see [`Owner`](crate::Owner):
//! pid, process start time, host, since, mode, plus the resource name), so
//! that waiters can log who they wait for, `status` can show it, and cleanup
//! can tell a dead owner from a live one. Shared holders of several
//! processes cannot coordinate writes: the record names the process that
//! took the shared lock most recently.
//!
//! # Shared directories
//!
//! The manager opens its directory once (`O_DIRECTORY | O_NOFOLLOW`),
//! checks that descriptor, and reaches every lock file through it
//! (`openat`, `fstatat`, `unlinkat`): a directory renamed or replaced by a
//! symbolic link later does not redirect it. Lock files are opened with
//! `O_NOFOLLOW` and `O_CLOEXEC`: a lock file that is a symbolic link, or
//! that has more than one hard link, is refused with
//! [`LockError::UnsafePath`](crate::LockError::UnsafePath) and its target is
//! never touched; the descriptor is not inherited by programs the holder
//! runs. The owner record is only written into a lock file that is empty or
//! already holds a lockyard record: a file with other content is locked but
//! left as it is. A directory the manager creates is `0o700` unless
//! [`FileLockOptions::dir_mode`] says otherwise. An existing directory is
//! accepted when this user owns it, or root owns it and it is sticky
//! (`/tmp`, `/run/lock`) or writable only by root; its last component may
//! be a symbolic link only if root owns the link (`/var/lock`). Anything
//! else is refused unless [`FileLockOptions::allow_foreign_dir`] is set.
//! (On Windows, where there is no `O_NOFOLLOW` nor `openat`, symbolic links
//! are not detected, the directory is used by path, and the (device, inode)
//! check after locking is skipped.)
//!
//! # `fork()`
//!
//! A lock does not cross `fork()`. A forked child shares the parent's open
//! file descriptions, and with them the parent's `flock` locks, so lockyard
//! never lets a child use them: descriptors are stamped with the process
//! that opened them, and in a child a copy of a parent's guard releases
//! nothing when dropped (only the child's descriptor is closed; the parent
//! keeps its lock), cached descriptors are not reused, and the manager
//! starts with fresh in-process state. A child takes its own locks like any
//! other process. The check relies on a `pthread_atfork` handler, so it
//! covers every `fork()` made through the C library, not a raw `clone`
//! system call. (As with any library, forking a multi-threaded process
//! and then doing more than `exec` is only safe if no other thread held an
//! internal mutex at the time of the fork.)
//!
//! # How waiting works
//!
//! Tasks of one process queue fairly in-process and only the head of the
//! queue touches the kernel lock; an uncontended acquisition is a few inline
//! syscalls (the descriptors of the 64 most recently used lock files of the
//! process stay open, unlocked, to save the `open`), and while another process holds the lock a single
//! thread per name blocks in the kernel. See the [`FileLockManager`] docs
//! for the guarantees.
//!
//! Those are a few threads of lockyard's own (parked threads
//! exit after two seconds without work). When the tasks waiting change —
//! all timed out or were cancelled, or the last exclusive one left behind
//! shared ones — the blocked thread is interrupted and asks again (the
//! kernel request always follows the mode the remaining waiters need). How
//! it is interrupted is [`FileLockOptions::wait_strategy`]:
//! [`WaitStrategy::Signal`] (the default) uses, on Linux, a real-time
//! signal, `SIGRTMAX - 3`, sent only to that thread, whose no-op handler
//! lockyard installs on first use unless the signal already has a handler;
//! before every wait and every signal it checks that the handler is still
//! its own. Where no such signal is available (other systems, the signal is
//! taken or was changed by the application) or with
//! [`WaitStrategy::Poll`], the thread polls the lock with `LOCK_NB` at
//! 1–50 ms instead of blocking. Should the kernel grant the lock to a thread
//! nobody waits for any more, it releases it at once.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lockyard::LockError> {
//! use std::time::Duration;
//! use lockyard::FileLockManager;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let locks = FileLockManager::new(dir.path())?;
//! {
//!     let _guard = locks.acquire("models/llama-7b", Duration::from_secs(30)).await?;
//!     // ... download the model; other processes asking for it wait ...
//! }
//! let infos = locks.list().await?;
//! assert_eq!(infos[0].name, "models/llama-7b");
//! assert!(!infos[0].held);
//! # Ok(())
//! # }
//! ```

// Bottom first: each file imports only files above it in this list.
mod core;
mod disk;
mod guard;
mod kernel;
mod lock;
mod manager;
mod options;

pub use disk::scan::{CleanupOptions, FileLockInfo};
pub use guard::FileLockGuard;
pub use lock::FileLock;
pub use manager::FileLockManager;
pub use options::{FileLockOptions, WaitStrategy};

/// Entry points for the fuzz targets and their corpus tests.
pub(crate) mod fuzz {
    pub(crate) use super::disk::name::check_mapping;
}
