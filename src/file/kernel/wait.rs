//! One kernel wait of a waiter thread: the platform switch between a
//! blocking `flock` that a signal interrupts and the polling fallback.
//!
//! With [`WaitStrategy::Signal`] and an interrupt signal that is still ours
//! ([`interrupt::usable`], checked before every wait), the thread blocks in
//! `flock` and is interrupted with `EINTR` when its wanters change.
//! Otherwise (other systems, the signal taken or changed by the
//! application, or [`WaitStrategy::Poll`]) it polls with `LOCK_NB` at a
//! backoff from 1 ms to 50 ms, looking at the cancel flag between polls.

use std::time::Duration;

use super::interrupt::{self, ThreadCtl};
use crate::error::LockError;
use crate::file::disk::lockfile::LockFile;
use crate::file::options::WaitStrategy;
use crate::options::Mode;

/// Waits once for the kernel lock on `f` in `mode`: `Ok(true)` when it is
/// held, `Ok(false)` when the wait was cancelled (the caller re-checks who
/// still wants the lock).
pub(crate) fn wait_once(
    f: &LockFile,
    mode: Mode,
    ctl: &ThreadCtl,
    strategy: WaitStrategy,
) -> Result<bool, LockError> {
    if strategy == WaitStrategy::Signal && interrupt::usable() {
        if !ctl.enter_blocking() {
            ctl.leave_blocking();
            return Ok(false); // the wanters changed before we blocked
        }
        let r = f.lock_blocking(mode);
        ctl.leave_blocking();
        return match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(false),
            Err(e) => Err(LockError::from_io("lock", &f.path, e)),
        };
    }
    if ctl.is_cancelled() {
        return Ok(false); // the wanters changed before we polled
    }
    poll(f, mode, ctl)
}

/// The fallback where a blocked `flock` cannot be interrupted: poll with
/// `LOCK_NB` at a backoff from 1 ms to 50 ms. `Ok(false)` when cancelled.
fn poll(f: &LockFile, mode: Mode, ctl: &ThreadCtl) -> Result<bool, LockError> {
    let mut pause = Duration::from_millis(1);
    loop {
        if f.try_lock(mode)? {
            return Ok(true);
        }
        if ctl.is_cancelled() {
            return Ok(false);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
