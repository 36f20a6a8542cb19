//! The waiter thread of one contended name: waits in the kernel (see
//! [`super::wait`]) for the wanters queued in its [`KernelSide`], re-asks in the
//! mode they need when they change, and hands the lock to those still there
//! (or gives it back at once when nobody is left).
//!
//! # Invariants
//!
//! * `state.waiter` is `Some` exactly while this thread runs for the name;
//!   only this thread sets it back to `None` ([`retire`]), in the critical
//!   section in which it decides to exit.
//! * A lock the kernel grants is either handed to the wanters still queued
//!   (one share each) or unlocked before the thread leaves.
//!
//! # Layering
//!
//! Uses `side.rs` (the state it serves), `held.rs`, `wait.rs`, the lock
//! file; started by `take.rs` on the kernel threads (`threads.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::interrupt::ThreadCtl;
use super::side::{
    KernelSide, KernelState, MAX_REPLACED, SharedError, Waiter, needed_mode, replaced_too_often,
};
use super::wait;
use crate::error::LockError;
use crate::file::disk::lockfile::LockFile;
use crate::file::options::WaitStrategy;
use crate::options::Mode;

/// The waiter thread leaves its post: called under the state lock, in the
/// critical section that decides it, so a new waiter thread can only be
/// started (and counted) after this one stopped counting.
fn retire(side: &KernelSide, st: &mut KernelState, ctl: &ThreadCtl) -> Option<Waiter> {
    side.waiter_threads.fetch_sub(1, Ordering::AcqRel);
    ctl.unbind();
    st.waiter.take()
}

/// What the waiter decides after an interruption or an acquisition.
enum Next {
    Continue(Mode, Option<LockFile>),
    Exit,
}

/// The body of the dedicated waiter thread of one name.
pub(crate) fn run(side: Arc<KernelSide>, ctl: Arc<ThreadCtl>, mut mode: Mode, first: LockFile) {
    ctl.bind_current_thread(side.strategy == WaitStrategy::Signal);
    let mut file = Some(first);
    let mut replaced = 0;
    loop {
        let f = match file.take() {
            Some(f) => f,
            None => match side.open_file() {
                Ok(f) => f,
                Err(e) => return fail(&side, &ctl, e),
            },
        };
        let locked = match wait::wait_once(&f, mode, &ctl, side.strategy) {
            Ok(locked) => locked,
            Err(e) => return fail(&side, &ctl, e),
        };
        if !locked {
            match after_interrupt(&side, &ctl) {
                Next::Continue(m, _) => {
                    mode = m;
                    file = Some(f);
                    continue;
                }
                Next::Exit => return,
            }
        }
        match f.still_at_path(&side.dir) {
            Ok(true) => {}
            Ok(false) => {
                replaced += 1;
                if replaced >= MAX_REPLACED {
                    return fail(&side, &ctl, replaced_too_often(&side.path));
                }
                tracing::debug!(path = %side.path.display(), "lock file was replaced while waiting; retrying");
                continue; // drops `f`, which unlocks it
            }
            Err(e) => return fail(&side, &ctl, e),
        }
        match deliver(&side, &ctl, mode, f) {
            Next::Continue(m, f) => {
                mode = m;
                file = f;
            }
            Next::Exit => return,
        }
    }
}

/// After an interruption: exit if nobody wants the lock any more, else ask
/// again in the mode the remaining wanters need.
fn after_interrupt(side: &KernelSide, ctl: &ThreadCtl) -> Next {
    let mut st = side.state();
    let Some(w) = st.waiter.as_mut() else {
        return Next::Exit; // unreachable: the state lives as long as its thread
    };
    w.wanters.retain(|w| !w.tx.is_closed());
    if w.wanters.is_empty() {
        retire(side, &mut st, ctl);
        return Next::Exit;
    }
    ctl.revoke_cancel();
    w.asking = needed_mode(&w.wanters);
    Next::Continue(w.asking, None)
}

/// Holding the lock: hand it to the wanters still there, or give it back.
fn deliver(side: &KernelSide, ctl: &ThreadCtl, mode: Mode, f: LockFile) -> Next {
    let mut st = side.state();
    let Some(w) = st.waiter.as_mut() else {
        // Unreachable (the state lives as long as its thread); be safe.
        drop(st);
        let _ = f.unlock();
        return Next::Exit;
    };
    w.wanters.retain(|w| !w.tx.is_closed());
    if w.wanters.is_empty() {
        retire(side, &mut st, ctl);
        drop(st);
        // Nobody wants it any more: give it back at once.
        let _ = f.unlock();
        return Next::Exit;
    }
    let need = needed_mode(&w.wanters);
    let mut mode = mode;
    if need != mode {
        w.asking = need;
        ctl.revoke_cancel();
        // Held exclusive for wanters that are all shared now: convert, so
        // that other processes' readers are not kept out. Held shared, but
        // an exclusive wanter arrived: start over exclusive.
        let converted = need == Mode::Shared && matches!(f.try_lock(Mode::Shared), Ok(true));
        if !converted {
            drop(st);
            let _ = f.unlock();
            return Next::Continue(need, Some(f));
        }
        mode = Mode::Shared;
    }
    let wanters = std::mem::take(&mut w.wanters);
    let held = side.held(&mut st, f, mode);
    retire(side, &mut st, ctl);
    drop(st);
    // One share per wanter and none kept here: the last wanter gets `held`
    // itself. Were this thread to keep a share until it returned, a holder
    // that dropped its guard at once would leave the kernel lock held for
    // a moment longer (by this thread), and a `try_acquire` right after its
    // drop could fail with `WouldBlock`.
    let mut shares: Vec<Arc<super::held::KernelLock>> =
        (1..wanters.len()).map(|_| held.clone()).collect();
    shares.push(held);
    for (w, share) in wanters.into_iter().zip(shares) {
        // A wanter that left just now drops its share with the receiver
        // (or, if the send fails, here).
        let _ = w.tx.send(Ok(share));
    }
    Next::Exit
}

fn fail(side: &KernelSide, ctl: &ThreadCtl, e: LockError) {
    let e = SharedError(Arc::new(e));
    let mut st = side.state();
    let wanters = retire(side, &mut st, ctl)
        .map(|w| w.wanters)
        .unwrap_or_default();
    drop(st);
    for w in wanters {
        let _ = w.tx.send(Err(e.clone()));
    }
}
