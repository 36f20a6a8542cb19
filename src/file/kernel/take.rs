//! Taking a name's kernel lock, for a task that has passed the in-process
//! queue: inline when it is free, else through the name's waiter thread,
//! started here on the kernel threads.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::held::KernelLock;
use super::interrupt::ThreadCtl;
use super::side::{
    Handed, KernelSide, KernelState, MAX_REPLACED, SharedError, Wanter, replaced_too_often,
};
use super::{handoff, threads, waiter};
use crate::error::LockError;
use crate::file::disk::lockfile::LockFile;
use crate::options::Mode;

/// What a non-blocking attempt found.
#[derive(Debug)]
pub(crate) enum TryOutcome {
    Acquired(Arc<KernelLock>),
    Busy,
}

/// The result of [`KernelSide::start`].
#[derive(Debug)]
pub(crate) enum Start {
    Acquired(Arc<KernelLock>),
    Queued(Ticket),
}

impl KernelSide {
    /// Non-blocking kernel acquisition.
    pub(crate) fn try_take(&self, mode: Mode) -> Result<TryOutcome, LockError> {
        let mut st = self.state();
        if let Some(h) = join_shared(&st, mode) {
            return Ok(TryOutcome::Acquired(h));
        }
        match self.try_inline(&mut st, mode)? {
            Ok(h) => Ok(TryOutcome::Acquired(h)),
            Err(file) => {
                // Kept for the next attempt (often a waiting one right after).
                self.idle.park(file);
                Ok(TryOutcome::Busy)
            }
        }
    }

    /// Starts a kernel acquisition that may wait: either the lock is had at
    /// once, or the caller gets a [`Ticket`] to await. `name` is the
    /// resource name, for the owner record the waiter thread writes.
    pub(crate) fn start(self: &Arc<Self>, mode: Mode, name: &Arc<str>) -> Result<Start, LockError> {
        let mut st = self.state();
        if let Some(h) = join_shared(&st, mode) {
            return Ok(Start::Acquired(h));
        }
        let (tx, rx) = handoff::channel();
        // Made only once queued: dropping a ticket takes the state lock.
        let ticket = |rx| {
            Start::Queued(Ticket {
                side: self.clone(),
                rx: Some(rx),
            })
        };
        let wanter = Wanter {
            mode,
            name: name.clone(),
            tx,
        };
        let Err(wanter) = st.join(wanter) else {
            return Ok(ticket(rx));
        };
        let file = match self.try_inline(&mut st, mode)? {
            Ok(h) => return Ok(Start::Acquired(h)),
            Err(file) => file,
        };
        let ctl = ThreadCtl::new();
        st.begin_wait(ctl.clone(), wanter);
        let side = self.clone();
        // Counted before the thread exists so a reader of the counter never
        // misses a thread that is starting.
        self.waiter_threads.fetch_add(1, Ordering::AcqRel);
        let spawned = threads::execute(Box::new(move || waiter::run(side, ctl, mode, file)));
        if let Err(e) = spawned {
            self.waiter_threads.fetch_sub(1, Ordering::AcqRel);
            st.waiter = None;
            return Err(LockError::Io {
                op: "start a waiter thread for",
                path: self.path.clone(),
                source: e,
            });
        }
        Ok(ticket(rx))
    }

    /// Opens and `try_lock`s inline. `Ok(Err(file))` hands back the open
    /// file when the lock is busy.
    fn try_inline(
        &self,
        st: &mut KernelState,
        mode: Mode,
    ) -> Result<Result<Arc<KernelLock>, LockFile>, LockError> {
        for _ in 0..MAX_REPLACED {
            // A descriptor inherited across fork() shares its open file
            // description, and any lock on it, with the parent: never
            // reuse it (closing it leaves the parent's lock alone).
            let file = match self.idle.take().filter(LockFile::opened_by_this_process) {
                Some(file) => file,
                None => self.open_file()?,
            };
            if !file.try_lock(mode)? {
                return Ok(Err(file));
            }
            if file.still_at_path(&self.dir)? {
                return Ok(Ok(self.held(st, file, mode)));
            }
            tracing::debug!(path = %self.path.display(), "lock file was replaced while locking; retrying");
        }
        Err(replaced_too_often(&self.path))
    }
}

/// A registered wanter. Dropping it leaves the queue; the last one to leave
/// interrupts the waiter thread.
#[derive(Debug)]
pub(crate) struct Ticket {
    side: Arc<KernelSide>,
    rx: Option<handoff::Receiver<Result<Handed, SharedError>>>,
}

impl Ticket {
    /// Waits for the waiter thread's hand-off.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future (or `self`) leaves the queue, and a
    /// lock handed over meanwhile is released.
    pub(crate) async fn handed(&mut self) -> Result<Handed, LockError> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(LockError::Closed {
                resource: self.side.path.display().to_string(),
            });
        };
        let r = rx.await;
        self.rx = None;
        match r {
            Some(Ok(handed)) => Ok(handed),
            Some(Err(e)) => Err(e.to_lock_error()),
            None => Err(LockError::Io {
                op: "wait for",
                path: self.side.path.clone(),
                source: std::io::Error::other("the waiter thread ended without an answer"),
            }),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(rx) = self.rx.take() else { return };
        // Dropped first and outside the state lock: a lock handed to us but
        // not yet taken is released here.
        drop(rx);
        self.side.state().withdraw();
    }
}

fn join_shared(st: &KernelState, mode: Mode) -> Option<Arc<KernelLock>> {
    if mode == Mode::Shared {
        st.held.upgrade()
    } else {
        None
    }
}
