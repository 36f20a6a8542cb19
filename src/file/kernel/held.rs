//! [`KernelLock`]: a kernel lock this process holds, shared by its holders.

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::LockError;
use crate::file::disk::idle::IdleKey;
use crate::file::disk::lockfile::LockFile;
use crate::options::Mode;
use crate::owner::Owner;

/// A kernel lock held by this process: unlocked when the last `Arc` goes,
/// its descriptor then parked in the process-wide cache under its name's
/// key (unless the name's state is gone).
///
/// It must never be dropped while its name's state lock is held (dropping
/// it may take the descriptor cache's lock, and a holder may drop it at any
/// time).
#[derive(Debug)]
pub(crate) struct KernelLock {
    /// `Some` until released.
    file: Option<LockFile>,
    idle: Weak<IdleKey>,
    /// The kernel mode (may be exclusive for shared holders that inherited an
    /// exclusive wait).
    pub(crate) mode: Mode,
    unlocked: bool,
    /// Set by the first holder that writes the owner record.
    recorded: AtomicBool,
}

impl KernelLock {
    pub(crate) fn new(file: LockFile, mode: Mode, idle: Weak<IdleKey>) -> Self {
        Self {
            file: Some(file),
            idle,
            mode,
            unlocked: false,
            recorded: AtomicBool::new(false),
        }
    }

    /// Writes the owner record, once per kernel acquisition (the first
    /// holder's). A failure to write it does not fail the acquisition (the
    /// lock is held; the record is only informational): it is logged.
    pub(crate) fn record(&self, owner: &Owner, name: &str, mode: Mode) {
        if self.recorded.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(file) = self.file.as_ref() else {
            return;
        };
        match file.write_record(owner, name, mode) {
            Ok(true) => {}
            Ok(false) if file.writable => tracing::debug!(
                resource = name,
                path = %file.path.display(),
                "the lock file holds something other than a lockyard record: no record written"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                resource = name,
                path = %file.path.display(),
                error = %e,
                "could not write the owner record into the lock file"
            ),
        }
    }

    /// Unlocks now, reporting errors.
    pub(crate) fn release(mut self) -> Result<(), LockError> {
        self.unlocked = true;
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        if !file.opened_by_this_process() {
            return Ok(()); // see `Drop`
        }
        match file.unlock() {
            Ok(()) => {
                self.park(file);
                Ok(())
            }
            // Closing the descriptor (dropping `file`) releases it anyway.
            Err(e) => Err(LockError::from_io("unlock", &file.path, e)),
        }
    }

    /// Keeps an unlocked descriptor for the name's next acquisition (in the
    /// process-wide, capped cache), unless the name's state is gone.
    fn park(&self, file: LockFile) {
        if let Some(idle) = self.idle.upgrade() {
            idle.park(file);
        }
    }
}

impl Drop for KernelLock {
    fn drop(&mut self) {
        // A copy of a guard in a forked child: the open file description
        // (and its lock) is the parent's. Only close our descriptor, which
        // leaves the parent's lock held; never unlock it or reuse it.
        if self
            .file
            .as_ref()
            .is_some_and(|f| !f.opened_by_this_process())
        {
            return;
        }
        // If unlocking fails, closing the descriptor releases the lock.
        if let Some(file) = self.file.take()
            && (self.unlocked || file.unlock().is_ok())
        {
            self.park(file);
        }
    }
}
