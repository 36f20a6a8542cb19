//! The waiter thread of one contended name: waits in the kernel (see
//! [`super::wait`]) for the wanters queued in its [`KernelSide`], re-asks
//! in the mode they need when they change, and hands the lock to those
//! still there (or gives it back at once when nobody is left).
//!
//! # The hand-off
//!
//! Everything the first wanter would do once woken is done here, before
//! waking it: the identity check and the owner record. The wake-up itself
//! is the one a waiting task cannot do without, and the last thing before
//! this thread goes back to sleep.
//!
//! # Invariants
//!
//! * `state.waiter` is `Some` exactly while this thread runs for the name;
//!   only this thread sets it back to `None` ([`KernelSide::retire`]), in
//!   the critical section in which it decides to exit.
//! * A lock the kernel grants is either handed to the wanters still queued
//!   (one share each) or unlocked before the thread leaves.
//!
//! # Layering
//!
//! Uses `side.rs` (the state it serves and its transitions), `handoff.rs`,
//! `held.rs`, `wait.rs`, the lock file; started by `take.rs` on the kernel
//! threads (`threads.rs`).

use std::sync::Arc;

use super::held::KernelLock;
use super::interrupt::ThreadCtl;
use super::side::{
    Granted, Handed, KernelSide, MAX_REPLACED, SharedError, Wanter, replaced_too_often,
};
use super::wait;
use crate::error::LockError;
use crate::file::disk::lockfile::LockFile;
use crate::file::options::WaitStrategy;
use crate::options::Mode;

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
            // Interrupted: exit if nobody wants the lock any more, else ask
            // again in the mode the remaining wanters need.
            let mut st = side.state();
            match st.on_interrupt() {
                Some(m) => {
                    mode = m;
                    file = Some(f);
                    continue;
                }
                None => {
                    side.retire(&mut st, &ctl);
                    return;
                }
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
        let mut st = side.state();
        // Held exclusive for wanters that are all shared now: convert, so
        // that other processes' readers are not kept out.
        match st.on_granted(mode, || matches!(f.try_lock(Mode::Shared), Ok(true))) {
            Granted::GiveBack => {
                side.retire(&mut st, &ctl);
                drop(st);
                let _ = f.unlock();
                return;
            }
            Granted::AskAgain(need) => {
                drop(st);
                let _ = f.unlock();
                mode = need;
                file = Some(f);
            }
            Granted::HandOver(wanters, mode) => {
                let held = side.held(&mut st, f, mode);
                side.retire(&mut st, &ctl);
                drop(st);
                return hand_over(held, wanters);
            }
        }
    }
}

/// One share per wanter and none kept here: the last wanter gets `held`
/// itself. Were this thread to keep a share until it returned, a holder
/// that dropped its guard at once would leave the kernel lock held for a
/// moment longer (by this thread), and a `try_acquire` right after its
/// drop could fail with `WouldBlock`.
///
/// The first wanter's owner record is written before it is woken, so that
/// the woken task returns at once.
fn hand_over(held: Arc<KernelLock>, wanters: Vec<Wanter>) {
    let Some(first) = wanters.first() else { return };
    let mut owner = Some(crate::process::owner(first.mode));
    if let Some(o) = &owner {
        held.record(o, &first.name, first.mode);
    }
    let last = wanters.len() - 1;
    let mut held = Some(held);
    for (i, w) in wanters.into_iter().enumerate() {
        let kernel = match &held {
            Some(h) if i < last => h.clone(),
            _ => held.take().expect("the last share is the lock itself"),
        };
        // A wanter that left just now drops its share with the receiver
        // (or, if the send fails, here).
        let _ = w.tx.send(Ok(Handed {
            kernel,
            owner: owner.take(),
        }));
    }
    // On the woken task's CPU, let it run now rather than after this
    // thread's way back to its park (on another CPU this costs one system
    // call off the task's path).
    std::thread::yield_now();
}

fn fail(side: &KernelSide, ctl: &ThreadCtl, e: LockError) {
    let e = SharedError(Arc::new(e));
    let mut st = side.state();
    let wanters = side
        .retire(&mut st, ctl)
        .map(|w| w.wanters)
        .unwrap_or_default();
    drop(st);
    for w in wanters {
        let _ = w.tx.send(Err(e.clone()));
    }
}
