//! [`KernelSide`]: one name's kernel lock as this process sees it — the
//! lock its holders share, and the waiter thread with the tasks that wait
//! for it.
//!
//! # Two levels
//!
//! Tasks of this process first queue in-process (the name's slot, in
//! `core.rs`); only a task that has passed that queue comes here:
//!
//! * fast path — open the file and `try_lock` it inline (a few syscalls, no
//!   thread hop; `take.rs`);
//! * shared holders of this process share one kernel lock (one descriptor,
//!   [`KernelLock`], reference counted);
//! * slow path — the lock is held by another process: the task registers as
//!   a *wanter* and one thread per name (the *waiter*, `waiter.rs`) blocks
//!   in `flock`. When it gets the lock it hands it to the wanters still
//!   there; if none is left, it unlocks at once. When the wanters change
//!   (the last one left, or they need another mode), the waiter is
//!   interrupted (`interrupt.rs`) and looks again.
//!
//! So at most one thread per contended name of this process blocks in the
//! kernel, whatever the number of waiting tasks, and a lock is never left
//! held with nobody to release it.
//!
//! # Invariants
//!
//! * `state.waiter` is `Some` exactly while a waiter thread runs for this
//!   name; that thread alone sets it back to `None`, in the same critical
//!   section in which it decides to exit (`waiter.rs`).
//! * A [`KernelLock`] unlocks when its last `Arc` is dropped; it is only
//!   ever created holding the kernel lock on the file currently at the path.
//! * Holders drop their `KernelLock` before their place in the in-process
//!   queue, so a task that passes that queue never finds the kernel lock
//!   still held by the previous holder of this process (if it did, it would
//!   merely wait for it).
//!
//! # Deadlock safety
//!
//! `state` is a std mutex held only for short, non-blocking sections (no
//! await, no blocking `flock`; the inline `try_lock` is non-blocking). The
//! only nested lock is the waiter's [`ThreadCtl`] inside `state`; the
//! interrupter takes `ThreadCtl` locks but never `state`.
//!
//! # Layering
//!
//! Uses `held.rs`, `interrupt.rs` and the disk side; `waiter.rs` (the
//! thread) and `take.rs` (the entry points) are above it.

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::oneshot;

use super::held::KernelLock;
use super::interrupt::ThreadCtl;
use crate::error::LockError;
use crate::file::disk::dir::LockDir;
use crate::file::disk::idle::IdleKey;
use crate::file::disk::lockfile::{Access, LockFile};
use crate::file::options::WaitStrategy;
use crate::options::Mode;

/// How many times an acquisition retries when the file it locked was
/// replaced (removed by a cleanup) before giving up.
pub(crate) const MAX_REPLACED: usize = 1000;

/// One name's kernel side in this process.
#[derive(Debug)]
pub(crate) struct KernelSide {
    /// The lock directory, opened once.
    pub(crate) dir: Arc<LockDir>,
    /// The lock file's name in `dir`.
    pub(crate) file_name: String,
    /// The lock file's path, for messages.
    pub(crate) path: PathBuf,
    file_mode: u32,
    state: Mutex<KernelState>,
    /// The manager's count of running waiter threads.
    pub(crate) waiter_threads: Arc<AtomicUsize>,
    /// How waiter threads wait.
    pub(crate) strategy: WaitStrategy,
    /// This name's key in the process-wide cache of unlocked descriptors.
    pub(crate) idle: Arc<IdleKey>,
}

#[derive(Debug, Default)]
pub(crate) struct KernelState {
    /// The kernel lock held by this process's holders, if any.
    pub(crate) held: Weak<KernelLock>,
    pub(crate) waiter: Option<Waiter>,
}

/// The waiter thread of a name, as its state sees it.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) ctl: Arc<ThreadCtl>,
    pub(crate) wanters: Vec<Wanter>,
    /// The mode the thread asks the kernel for (or is about to). When the
    /// wanters come to need another one (the last exclusive wanter left, or
    /// an exclusive one arrived behind shared ones), the thread is
    /// interrupted to ask again.
    pub(crate) asking: Mode,
}

impl Waiter {
    /// Asks the thread to re-ask the kernel if the wanters that remain
    /// need another mode than the one it asks for (or nobody is left);
    /// withdraws that request when the current wait fits again.
    pub(crate) fn refit(&mut self) {
        if self.wanters.is_empty() || needed_mode(&self.wanters) != self.asking {
            self.ctl.cancel();
        } else {
            self.ctl.revoke_cancel();
        }
    }
}

/// A task waiting for the waiter thread's hand-off.
#[derive(Debug)]
pub(crate) struct Wanter {
    pub(crate) mode: Mode,
    pub(crate) tx: oneshot::Sender<Result<Arc<KernelLock>, SharedError>>,
}

/// An error the waiter thread reports to every wanter.
#[derive(Debug, Clone)]
pub(crate) struct SharedError(pub(crate) Arc<LockError>);

impl SharedError {
    pub(crate) fn to_lock_error(&self) -> LockError {
        duplicate(&self.0)
    }
}

impl KernelSide {
    pub(crate) fn new(
        dir: Arc<LockDir>,
        file_name: String,
        file_mode: u32,
        waiter_threads: Arc<AtomicUsize>,
        strategy: WaitStrategy,
    ) -> Self {
        Self {
            path: dir.join(&file_name),
            dir,
            file_name,
            file_mode,
            state: Mutex::new(KernelState::default()),
            waiter_threads,
            strategy,
            idle: Arc::new(IdleKey::new()),
        }
    }

    /// Opens (creating) the lock file.
    pub(crate) fn open_file(&self) -> Result<LockFile, LockError> {
        match LockFile::open(&self.dir, &self.file_name, Access::Create, self.file_mode)? {
            Some(file) => Ok(file),
            None => unreachable!("Access::Create never returns None"),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, KernelState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A kernel lock on `file`, which holds it in `mode`, recorded as this
    /// process's.
    pub(crate) fn held(&self, st: &mut KernelState, file: LockFile, mode: Mode) -> Arc<KernelLock> {
        let held = Arc::new(KernelLock::new(file, mode, Arc::downgrade(&self.idle)));
        st.held = Arc::downgrade(&held);
        held
    }
}

/// The kernel mode the wanters need: exclusive if any of them wants it.
pub(crate) fn needed_mode(wanters: &[Wanter]) -> Mode {
    if wanters.iter().any(|w| w.mode == Mode::Exclusive) {
        Mode::Exclusive
    } else {
        Mode::Shared
    }
}

pub(crate) fn replaced_too_often(path: &std::path::Path) -> LockError {
    LockError::Io {
        op: "lock",
        path: path.to_owned(),
        source: std::io::Error::other("the lock file keeps being replaced"),
    }
}

/// A copy of an error for each of several wanters (`LockError` is not
/// `Clone` because `io::Error` is not).
fn duplicate(e: &LockError) -> LockError {
    fn io(e: &std::io::Error) -> std::io::Error {
        match e.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(e.kind(), e.to_string()),
        }
    }
    match e {
        LockError::UnsafePath { path, reason } => LockError::UnsafePath {
            path: path.clone(),
            reason: reason.clone(),
        },
        LockError::PermissionDenied { op, path, source } => LockError::PermissionDenied {
            op,
            path: path.clone(),
            source: io(source),
        },
        LockError::UnsupportedFilesystem { path, source } => LockError::UnsupportedFilesystem {
            path: path.clone(),
            source: io(source),
        },
        LockError::Io { op, path, source } => LockError::Io {
            op,
            path: path.clone(),
            source: io(source),
        },
        other => LockError::Io {
            op: "lock",
            path: PathBuf::new(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}

#[cfg(all(test, not(lockyard_loom)))]
mod tests {
    use super::*;

    fn waiter(asking: Mode, modes: &[Mode]) -> Waiter {
        Waiter {
            ctl: ThreadCtl::new(),
            wanters: modes
                .iter()
                .map(|&mode| Wanter {
                    mode,
                    tx: oneshot::channel().0,
                })
                .collect(),
            asking,
        }
    }

    #[test]
    fn the_kernel_request_follows_the_remaining_wanters() {
        use Mode::{Exclusive as X, Shared as S};
        for (asking, modes, re_ask) in [
            // The wait fits: keep waiting.
            (X, &[X][..], false),
            (S, &[S, S][..], false),
            // The last exclusive wanter left behind shared ones: ask again
            // (shared), do not keep asking for LOCK_EX.
            (X, &[S][..], true),
            (X, &[S, S][..], true),
            // An exclusive wanter arrived behind a shared wait.
            (S, &[S, X][..], true),
            // Nobody is left.
            (X, &[][..], true),
            (S, &[][..], true),
        ] {
            let mut w = waiter(asking, modes);
            w.refit();
            assert_eq!(
                w.ctl.is_cancelled(),
                re_ask,
                "asking {asking:?} for {modes:?}"
            );
            if !modes.is_empty() {
                let need = needed_mode(&w.wanters);
                assert_eq!(need, if modes.contains(&X) { X } else { S });
            }
            w.ctl.unbind(); // the interrupter forgets it
        }
        // A fitting wanter arriving after a mismatch withdraws the re-ask.
        let mut w = waiter(X, &[S]);
        w.refit();
        assert!(w.ctl.is_cancelled());
        w.wanters.push(Wanter {
            mode: X,
            tx: oneshot::channel().0,
        });
        w.refit();
        assert!(!w.ctl.is_cancelled());
        w.ctl.unbind();
    }
}
