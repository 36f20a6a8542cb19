//! Interrupting a thread blocked in `flock`.
//!
//! A blocking `flock` cannot be cancelled from outside, except by a signal:
//! a handler installed *without* `SA_RESTART` makes the call fail with
//! `EINTR`. On Linux we use one real-time signal for that (`SIGRTMAX - 3`):
//! lockyard installs a no-op handler for it on first use if the signal has
//! no handler yet, and sends it with `pthread_kill` to our own dedicated
//! waiter threads only — never to a thread that runs anybody else's code.
//!
//! The application may change that signal at any time after we installed
//! our handler (reset it to the default action, which kills the process;
//! ignore it; install its own, maybe with `SA_RESTART`). So the handler is
//! checked to still be ours, without `SA_RESTART`, before *every* signal we
//! send and before every blocking wait; when it is not, we send nothing and
//! waits poll instead ([`usable`] is false). A thread already blocked in
//! `flock` when the signal stopped being ours stays there until the lock is
//! free, then gives it back at once if nobody wants it any more. (A signal
//! sent just before the application changes the action is delivered with
//! the new action: an application that resets the signal at the very moment
//! a wait is abandoned can still be hit. Use [`WaitStrategy::Poll`] in one
//! that manages this signal itself.)
//!
//! Why a separate interrupter thread: between the waiter's last look at its
//! cancel flag and its entry into `flock` there is a window in which a signal
//! would be lost. The interrupter re-sends every few milliseconds until the
//! waiter has either left or been handed new work, so a lost signal costs at
//! most that delay. It parks on a condition variable when there is nothing to
//! interrupt.
//!
//! Where no signal can be used (other systems, the signal is taken, or the
//! manager's [`WaitStrategy`] is `Poll`), the waiter
//! polls with `LOCK_NB` at a short backoff: see [`super::wait`].

#![cfg_attr(not(target_os = "linux"), allow(dead_code, unused_imports))]

use crate::loom::sync::atomic::{AtomicBool, Ordering};

#[cfg(doc)]
use crate::file::options::WaitStrategy;
use std::sync::{Arc, Mutex, MutexGuard};

/// A waiter thread as seen by whoever may want to interrupt it.
///
/// # Invariant
///
/// A waiter never blocks in `flock` while `cancel` is set without having
/// been handed to the interrupter: the waiter sets `blocking` and reads
/// `cancel` in one critical section of `thread`; a canceller sets `cancel`
/// and reads `blocking` in another. Whichever comes second sees the first
/// (loom model `loom_cancel_is_never_lost_against_a_waiter_about_to_block`).
#[derive(Debug, Default)]
pub(crate) struct ThreadCtl {
    /// Set when the waiter should leave its kernel wait and look again at
    /// who still wants the lock (nobody, or waiters needing another mode);
    /// cleared when that look is no longer needed. Read by the waiter after
    /// each interruption.
    cancel: AtomicBool,
    /// Whether the waiter blocks in `flock` (and needs a signal to leave
    /// it), rather than polling.
    blocking: AtomicBool,
    /// The waiter's `pthread_t` while it runs. The interrupter signals only
    /// while holding this lock, so it never signals a thread that has exited.
    /// Also orders the `cancel`/`blocking` hand-shake (see the invariant).
    #[cfg(target_os = "linux")]
    thread: crate::loom::sync::Mutex<ThreadState>,
}

#[cfg(target_os = "linux")]
#[derive(Debug, Default)]
enum ThreadState {
    /// Spawned but not yet running: a cancel request must be kept until it
    /// can be delivered.
    #[default]
    Starting,
    Running(libc::pthread_t),
    Exited,
}

impl ThreadCtl {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }

    /// Asks the waiter to leave its kernel wait and re-check who wants the
    /// lock. Idempotent.
    pub(crate) fn cancel(self: &Arc<Self>) {
        if self.mark_cancelled() {
            request(self);
        }
    }

    /// Sets `cancel`; `true` when this call set it and the waiter may be
    /// blocked (or about to start) and so needs the interrupter.
    fn mark_cancelled(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            let thread = self.thread.lock();
            let first = !self.cancel.swap(true, Ordering::AcqRel);
            first
                && (self.blocking.load(Ordering::Acquire)
                    || matches!(*thread, ThreadState::Starting))
        }
        #[cfg(not(target_os = "linux"))]
        {
            self.cancel.store(true, Ordering::Release);
            false
        }
    }

    /// The current kernel wait is right again: keep waiting.
    pub(crate) fn revoke_cancel(&self) {
        self.cancel.store(false, Ordering::Release);
    }

    /// Called by the waiter just before a blocking, signal-interruptible
    /// `flock`: `false` if a cancel came first (then it must not block).
    pub(crate) fn enter_blocking(&self) -> bool {
        #[cfg(target_os = "linux")]
        let _thread = self.thread.lock();
        self.blocking.store(true, Ordering::Release);
        !self.cancel.load(Ordering::Acquire)
    }

    /// Called by the waiter after a blocking wait.
    pub(crate) fn leave_blocking(&self) {
        self.blocking.store(false, Ordering::Release);
    }

    /// Called by the waiter thread itself when it starts: records its handle
    /// and, if it will block with signals (`signals`), sets up the interrupt
    /// signal and makes sure it is not blocked in this thread.
    pub(crate) fn bind_current_thread(&self, signals: bool) {
        #[cfg(target_os = "linux")]
        {
            if signals && let Some(sig) = signal() {
                // SAFETY: sigemptyset / sigaddset initialise the local set we
                // pass by pointer, and pthread_sigmask only reads it; all
                // pointers are valid for the duration of the calls.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, sig);
                    libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                }
            }
            // SAFETY: pthread_self has no preconditions.
            *self.thread.lock() = ThreadState::Running(unsafe { libc::pthread_self() });
        }
        #[cfg(not(target_os = "linux"))]
        let _ = signals;
    }

    /// Called by the waiter thread just before it exits.
    pub(crate) fn unbind(&self) {
        #[cfg(target_os = "linux")]
        {
            *self.thread.lock() = ThreadState::Exited;
        }
    }

    /// Signals the waiter if it runs. `false` once it has exited (nothing
    /// more to do); `true` while it may still need interrupting.
    #[cfg(target_os = "linux")]
    fn interrupt(&self) -> bool {
        let guard = self.thread.lock();
        match *guard {
            ThreadState::Starting => true,
            // Polling (or about to block, then it re-checks the flag first):
            // it sees the flag by itself.
            ThreadState::Running(_) if !self.blocking.load(Ordering::Acquire) => true,
            ThreadState::Running(t) => {
                let Some(sig) = signal() else { return false };
                // The signal is not ours any more: sending it could kill the
                // process or run the application's handler. The waiter stays
                // blocked until the lock frees (and then gives it back).
                if !handler_is_ours(sig) {
                    tracing::debug!(
                        signal = sig,
                        "the file-lock interrupt signal has another handler now; not sending it"
                    );
                    return false;
                }
                // SAFETY: `t` is the pthread_t of a live thread: the state
                // becomes Exited (under this lock) before that thread exits,
                // and we hold the lock while signalling.
                unsafe { libc::pthread_kill(t, sig) };
                true
            }
            ThreadState::Exited => false,
        }
    }
}

/// Whether a blocking wait can be interrupted now: the interrupt signal is
/// installed (installing it on first use) and its handler is still ours
/// (checked at every call).
pub(crate) fn usable() -> bool {
    #[cfg(target_os = "linux")]
    {
        signal().is_some_and(handler_is_ours)
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(target_os = "linux")]
fn signal() -> Option<libc::c_int> {
    use std::sync::OnceLock;
    static SIGNAL: OnceLock<Option<libc::c_int>> = OnceLock::new();
    *SIGNAL.get_or_init(install_handler)
}

#[cfg(target_os = "linux")]
extern "C" fn on_interrupt(_: libc::c_int) {}

#[cfg(target_os = "linux")]
fn our_handler() -> libc::sighandler_t {
    on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t
}

/// Whether `sig`'s handler is (still) ours, without `SA_RESTART`.
#[cfg(target_os = "linux")]
fn handler_is_ours(sig: libc::c_int) -> bool {
    // SAFETY: queries the current action into a zeroed struct that lives
    // across the call; a null `act` changes nothing.
    unsafe {
        let mut cur: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut cur) == 0
            && cur.sa_sigaction == our_handler()
            && cur.sa_flags & libc::SA_RESTART == 0
    }
}

#[cfg(target_os = "linux")]
fn install_handler() -> Option<libc::c_int> {
    let sig = libc::SIGRTMAX() - 3;
    // SAFETY: sigaction is called with a valid signal number and pointers to
    // properly initialised (zeroed, then filled) sigaction structs that live
    // across the calls. The handler does nothing, so it is async-signal-safe.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
            return None;
        }
        let ours = our_handler();
        if old.sa_sigaction == ours {
            return Some(sig);
        }
        if old.sa_sigaction != libc::SIG_DFL {
            tracing::debug!(
                signal = sig,
                "interrupt signal already in use; blocked file-lock waits will poll"
            );
            return None;
        }
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction = ours;
        new.sa_flags = 0; // no SA_RESTART: flock must fail with EINTR
        libc::sigemptyset(&mut new.sa_mask);
        if libc::sigaction(sig, &new, std::ptr::null_mut()) != 0 {
            return None;
        }
    }
    Some(sig)
}

/// Hands `ctl` to the interrupter thread (started on first use).
fn request(ctl: &Arc<ThreadCtl>) {
    #[cfg(target_os = "linux")]
    {
        let it = interrupter();
        lock(&it.pending).push(ctl.clone());
        it.wake.notify_one();
    }
    #[cfg(not(target_os = "linux"))]
    let _ = ctl;
}

#[cfg(target_os = "linux")]
struct Interrupter {
    pending: Mutex<Vec<Arc<ThreadCtl>>>,
    wake: std::sync::Condvar,
}

/// The interrupter of this process: started on first use, and again in a
/// forked child (threads do not survive fork).
#[cfg(target_os = "linux")]
fn interrupter() -> &'static Interrupter {
    static IT: Mutex<Option<(u32, &'static Interrupter)>> = Mutex::new(None);
    let mut it = lock(&IT);
    let pid = crate::process::id();
    match *it {
        Some((owner, found)) if owner == pid => found,
        _ => {
            let started = start_interrupter();
            *it = Some((pid, started));
            started
        }
    }
}

#[cfg(target_os = "linux")]
fn start_interrupter() -> &'static Interrupter {
    {
        let it: &'static Interrupter = Box::leak(Box::new(Interrupter {
            pending: Mutex::new(Vec::new()),
            wake: std::sync::Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("lockyard-interrupt".into())
            .spawn(move || run_interrupter(it));
        if let Err(e) = spawned {
            // Waiters then stay blocked until the lock frees (they give it
            // back at once when nobody wants it): degraded, not wrong.
            tracing::warn!(error = %e, "could not start the file-lock interrupter thread");
        }
        it
    }
}

#[cfg(target_os = "linux")]
fn run_interrupter(it: &'static Interrupter) {
    use std::time::Duration;
    let mut pending = lock(&it.pending);
    loop {
        pending.retain(|c| c.is_cancelled() && c.interrupt());
        pending = if pending.is_empty() {
            it.wake.wait(pending).unwrap_or_else(|p| p.into_inner())
        } else {
            // Re-send until the waiter has left or been revoked: the first
            // signal may land just before the waiter enters flock.
            it.wake
                .wait_timeout(pending, Duration::from_millis(2))
                .unwrap_or_else(|p| p.into_inner())
                .0
        };
    }
}

/// A control block for a waiter that polls (it never blocks in `flock`,
/// so cancelling it needs no signal): what the loom models of a name's
/// kernel state use.
#[cfg(all(test, lockyard_loom, target_os = "linux"))]
impl ThreadCtl {
    pub(crate) fn polling() -> Arc<Self> {
        let ctl = Arc::new(Self::default());
        *ctl.thread.lock() = ThreadState::Running(0 as libc::pthread_t);
        ctl
    }
}

#[cfg(all(test, lockyard_loom, target_os = "linux"))]
mod loom_models {
    use super::*;

    fn running() -> Arc<ThreadCtl> {
        let ctl = Arc::new(ThreadCtl::default());
        *ctl.thread.lock() = ThreadState::Running(0 as libc::pthread_t);
        ctl
    }

    /// The waiter is about to block in `flock` while the last wanter leaves:
    /// in every interleaving, either the waiter does not block, or the
    /// cancel is handed to the interrupter (which then signals it).
    #[test]
    fn loom_cancel_is_never_lost_against_a_waiter_about_to_block() {
        loom::model(|| {
            let ctl = running();
            let canceller = {
                let ctl = ctl.clone();
                loom::thread::spawn(move || ctl.mark_cancelled())
            };
            let blocks = ctl.enter_blocking();
            let handed = canceller.join().unwrap();
            assert!(!blocks || handed, "blocked with nobody to interrupt it");
        });
    }

    /// A wanter arrives (revoke) while the last one leaves (cancel) and the
    /// waiter is about to block: if it ends up blocked with the cancel flag
    /// set, the interrupter was told.
    #[test]
    fn loom_cancel_and_revoke_race_leaves_no_unhandled_cancel() {
        loom::model(|| {
            let ctl = running();
            let canceller = {
                let ctl = ctl.clone();
                loom::thread::spawn(move || ctl.mark_cancelled())
            };
            let reviver = {
                let ctl = ctl.clone();
                loom::thread::spawn(move || ctl.revoke_cancel())
            };
            let blocks = ctl.enter_blocking();
            let handed = canceller.join().unwrap();
            reviver.join().unwrap();
            if blocks && ctl.is_cancelled() {
                assert!(handed, "cancelled, blocked, and never interrupted");
            }
        });
    }
}
