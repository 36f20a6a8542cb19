//! The per-name state of one process: the in-process queue and the kernel
//! lock behind it.
//!
//! # Two levels
//!
//! Tasks of this process first queue on `local`, a fair (FIFO) tokio
//! `RwLock`: an exclusive acquirer takes it for writing, a shared one for
//! reading, so tasks contend exactly as separate processes do. Only a task
//! that has passed that queue touches the kernel lock:
//!
//! * fast path — open the file and `try_lock` it inline (a few syscalls, no
//!   thread hop);
//! * shared holders of this process share one kernel lock (one descriptor,
//!   [`HeldFd`], reference counted);
//! * slow path — the lock is held by another process: the task registers as
//!   a *wanter* and one dedicated thread per name (the *waiter*) blocks in
//!   `flock`. When it gets the lock it hands it to the wanters still there;
//!   if none is left, it unlocks at once. When the last wanter leaves, the
//!   waiter is interrupted ([`super::interrupt`]) and exits unless someone
//!   registered again meanwhile.
//!
//! So at most one thread per contended name of this process blocks in the
//! kernel, whatever the number of waiting tasks, and a lock is never left
//! held with nobody to release it.
//!
//! # Invariants
//!
//! * `state.waiter` is `Some` exactly while a waiter thread runs for this
//!   name; that thread alone sets it back to `None`, in the same critical
//!   section in which it decides to exit.
//! * A [`HeldFd`] unlocks when its last `Arc` is dropped; it is only ever
//!   created holding the kernel lock on the file currently at the path.
//! * Holders drop their `HeldFd` before their place in `local`, so a task
//!   that passes the local queue never finds the kernel lock still held by
//!   the previous local holder (if it did, it would merely wait for it).
//!
//! # Deadlock safety
//!
//! `state` is a std mutex held only for short, non-blocking sections (no
//! await, no blocking `flock`; the inline `try_lock` is non-blocking). The
//! only nested lock is the waiter's [`ThreadCtl`] inside `state`; the
//! interrupter takes `ThreadCtl` locks but never `state`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::{RwLock, oneshot};

use super::dir::LockDir;
use super::idle;
use super::interrupt::ThreadCtl;
use super::lockfile::{Access, LockFile};
use super::manager::WaitStrategy;
use super::pool;
use super::wait;
use crate::error::LockError;
use crate::options::Mode;

/// How many times an acquisition retries when the file it locked was
/// replaced (removed by a cleanup) before giving up.
const MAX_REPLACED: usize = 1000;

/// One name's state in this process.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The lock directory, opened once.
    pub(crate) dir: Arc<LockDir>,
    /// The lock file's name in `dir`.
    pub(crate) file_name: String,
    /// The lock file's path, for messages.
    pub(crate) path: PathBuf,
    pub(crate) file_mode: u32,
    /// The in-process FIFO queue.
    pub(crate) local: Arc<RwLock<()>>,
    state: Mutex<KernelState>,
    /// The manager's count of running waiter threads.
    waiter_threads: Arc<AtomicUsize>,
    /// How waiter threads wait.
    strategy: WaitStrategy,
    /// This name's key in the process-wide cache of unlocked descriptors
    /// ([`super::idle`]).
    idle_key: u64,
}

#[derive(Debug, Default)]
struct KernelState {
    /// The kernel lock held by this process's holders, if any.
    held: Weak<HeldFd>,
    waiter: Option<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    ctl: Arc<ThreadCtl>,
    wanters: Vec<Wanter>,
    /// The mode the thread asks the kernel for (or is about to). When the
    /// wanters come to need another one (the last exclusive wanter left, or
    /// an exclusive one arrived behind shared ones), the thread is
    /// interrupted to ask again.
    asking: Mode,
}

impl Waiter {
    /// Asks the thread to re-ask the kernel if the wanters that remain
    /// need another mode than the one it asks for (or nobody is left);
    /// withdraws that request when the current wait fits again.
    fn refit(&mut self) {
        if self.wanters.is_empty() || needed_mode(&self.wanters) != self.asking {
            self.ctl.cancel();
        } else {
            self.ctl.revoke_cancel();
        }
    }
}

#[derive(Debug)]
struct Wanter {
    mode: Mode,
    tx: oneshot::Sender<Result<Arc<HeldFd>, SharedError>>,
}

/// A kernel lock held by this process: unlocked when the last `Arc` goes,
/// its descriptor then parked in the slot for reuse.
///
/// It must never be dropped while the slot's state lock is held (dropping
/// takes that lock).
#[derive(Debug)]
pub(crate) struct HeldFd {
    /// `Some` until released.
    file: Option<LockFile>,
    slot: Weak<Slot>,
    /// The kernel mode (may be exclusive for shared holders that inherited an
    /// exclusive wait).
    pub(crate) mode: Mode,
    unlocked: bool,
    /// Set by the first holder that writes the owner record.
    recorded: std::sync::atomic::AtomicBool,
}

impl HeldFd {
    fn new(file: LockFile, mode: Mode, slot: &Arc<Slot>) -> Self {
        Self {
            file: Some(file),
            slot: Arc::downgrade(slot),
            mode,
            unlocked: false,
            recorded: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// `true` exactly once: for the holder that writes the owner record.
    pub(crate) fn claim_record(&self) -> bool {
        !self.recorded.swap(true, Ordering::AcqRel)
    }

    /// The locked file.
    pub(crate) fn file(&self) -> Option<&LockFile> {
        self.file.as_ref()
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

    /// Keeps an unlocked descriptor for the slot's next acquisition (in the
    /// process-wide, capped cache), unless the slot is gone.
    fn park(&self, file: LockFile) {
        if let Some(slot) = self.slot.upgrade() {
            idle::park(slot.idle_key, file);
        }
    }
}

impl Drop for HeldFd {
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

/// An error the waiter thread reports to every wanter.
#[derive(Debug, Clone)]
pub(crate) struct SharedError(Arc<LockError>);

impl SharedError {
    pub(crate) fn to_lock_error(&self) -> LockError {
        duplicate(&self.0)
    }
}

/// What a non-blocking attempt found.
#[derive(Debug)]
pub(crate) enum TryOutcome {
    Acquired(Arc<HeldFd>),
    Busy,
}

impl Slot {
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
            local: Arc::new(RwLock::new(())),
            state: Mutex::new(KernelState::default()),
            waiter_threads,
            strategy,
            idle_key: idle::new_key(),
        }
    }

    /// Opens (creating) the lock file.
    fn open_file(&self) -> Result<Option<LockFile>, LockError> {
        LockFile::open(&self.dir, &self.file_name, Access::Create, self.file_mode)
    }

    fn state(&self) -> MutexGuard<'_, KernelState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Non-blocking kernel acquisition for a task that passed the local queue.
    pub(crate) fn try_kernel(self: &Arc<Self>, mode: Mode) -> Result<TryOutcome, LockError> {
        let mut st = self.state();
        if let Some(h) = join_shared(&st, mode) {
            return Ok(TryOutcome::Acquired(h));
        }
        match self.try_inline(&mut st, mode)? {
            Ok(h) => Ok(TryOutcome::Acquired(h)),
            Err(file) => {
                // Kept for the next attempt (often a waiting one right after).
                idle::park(self.idle_key, file);
                Ok(TryOutcome::Busy)
            }
        }
    }

    /// Starts a kernel acquisition that may wait: either the lock is had at
    /// once, or the caller gets a [`KernelWait`] to await.
    pub(crate) fn start_kernel(self: &Arc<Self>, mode: Mode) -> Result<Start, LockError> {
        let mut st = self.state();
        if let Some(h) = join_shared(&st, mode) {
            return Ok(Start::Acquired(h));
        }
        if st.waiter.is_none() {
            match self.try_inline(&mut st, mode)? {
                Ok(h) => return Ok(Start::Acquired(h)),
                Err(file) => {
                    let ctl = ThreadCtl::new();
                    let (tx, rx) = oneshot::channel();
                    st.waiter = Some(Waiter {
                        ctl: ctl.clone(),
                        wanters: vec![Wanter { mode, tx }],
                        asking: mode,
                    });
                    let slot = self.clone();
                    // Counted before the thread exists so a reader of the
                    // counter never misses a thread that is starting.
                    self.waiter_threads.fetch_add(1, Ordering::AcqRel);
                    let spawned =
                        pool::execute(Box::new(move || run_waiter(slot, ctl, mode, file)));
                    if let Err(e) = spawned {
                        self.waiter_threads.fetch_sub(1, Ordering::AcqRel);
                        st.waiter = None;
                        return Err(LockError::Io {
                            op: "start a waiter thread for",
                            path: self.path.clone(),
                            source: e,
                        });
                    }
                    return Ok(Start::Wait(KernelWait {
                        slot: self.clone(),
                        rx: Some(rx),
                    }));
                }
            }
        }
        let Some(waiter) = st.waiter.as_mut() else {
            unreachable!("checked above under the same lock")
        };
        let (tx, rx) = oneshot::channel();
        waiter.wanters.push(Wanter { mode, tx });
        waiter.refit();
        Ok(Start::Wait(KernelWait {
            slot: self.clone(),
            rx: Some(rx),
        }))
    }

    /// Opens and `try_lock`s inline. `Ok(Err(file))` hands back the open
    /// file when the lock is busy.
    fn try_inline(
        self: &Arc<Self>,
        st: &mut KernelState,
        mode: Mode,
    ) -> Result<Result<Arc<HeldFd>, LockFile>, LockError> {
        for _ in 0..MAX_REPLACED {
            // A descriptor inherited across fork() shares its open file
            // description, and any lock on it, with the parent: never
            // reuse it (closing it leaves the parent's lock alone).
            let file = match idle::take(self.idle_key).filter(LockFile::opened_by_this_process) {
                Some(file) => file,
                None => match self.open_file()? {
                    Some(file) => file,
                    None => unreachable!("Access::Create never returns None"),
                },
            };
            if !file.try_lock(mode)? {
                return Ok(Err(file));
            }
            if file.still_at_path(&self.dir)? {
                let held = Arc::new(HeldFd::new(file, mode, self));
                st.held = Arc::downgrade(&held);
                return Ok(Ok(held));
            }
            tracing::debug!(path = %self.path.display(), "lock file was replaced while locking; retrying");
        }
        Err(replaced_too_often(&self.path))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        idle::forget(self.idle_key);
    }
}

/// The result of [`Slot::start_kernel`].
#[derive(Debug)]
pub(crate) enum Start {
    Acquired(Arc<HeldFd>),
    Wait(KernelWait),
}

/// A registered wanter. Dropping it leaves the queue; the last one to leave
/// interrupts the waiter thread.
#[derive(Debug)]
pub(crate) struct KernelWait {
    slot: Arc<Slot>,
    rx: Option<oneshot::Receiver<Result<Arc<HeldFd>, SharedError>>>,
}

impl KernelWait {
    /// Waits for the waiter thread's hand-off.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future (or `self`) leaves the queue, and a
    /// lock handed over meanwhile is released.
    pub(crate) async fn wait(&mut self) -> Result<Arc<HeldFd>, LockError> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(LockError::Closed {
                resource: self.slot.path.display().to_string(),
            });
        };
        let r = rx.await;
        self.rx = None;
        match r {
            Ok(Ok(held)) => Ok(held),
            Ok(Err(e)) => Err(e.to_lock_error()),
            Err(_) => Err(LockError::Io {
                op: "wait for",
                path: self.slot.path.clone(),
                source: std::io::Error::other("the waiter thread ended without an answer"),
            }),
        }
    }
}

impl Drop for KernelWait {
    fn drop(&mut self) {
        let Some(rx) = self.rx.take() else { return };
        // Dropped first and outside the state lock: a lock handed to us but
        // not yet taken is released here.
        drop(rx);
        let mut st = self.slot.state();
        if let Some(w) = st.waiter.as_mut() {
            w.wanters.retain(|w| !w.tx.is_closed());
            w.refit();
        }
    }
}

fn join_shared(st: &KernelState, mode: Mode) -> Option<Arc<HeldFd>> {
    if mode == Mode::Shared {
        st.held.upgrade()
    } else {
        None
    }
}

/// The waiter thread leaves its post: called under the state lock, in the
/// critical section that decides it, so a new waiter thread can only be
/// started (and counted) after this one stopped counting.
fn retire(slot: &Slot, st: &mut KernelState, ctl: &ThreadCtl) -> Option<Waiter> {
    slot.waiter_threads.fetch_sub(1, Ordering::AcqRel);
    ctl.unbind();
    st.waiter.take()
}

/// What the waiter decides after an interruption or an acquisition.
enum Next {
    Continue(Mode, Option<LockFile>),
    Exit,
}

/// The body of the dedicated waiter thread of one name.
fn run_waiter(slot: Arc<Slot>, ctl: Arc<ThreadCtl>, mut mode: Mode, first: LockFile) {
    ctl.bind_current_thread(slot.strategy == WaitStrategy::Signal);
    let mut file = Some(first);
    let mut replaced = 0;
    loop {
        let f = match file.take() {
            Some(f) => f,
            None => match slot.open_file() {
                Ok(Some(f)) => f,
                Ok(None) => unreachable!("Access::Create never returns None"),
                Err(e) => return fail(&slot, &ctl, e),
            },
        };
        let locked = match wait::wait_once(&f, mode, &ctl, slot.strategy) {
            Ok(locked) => locked,
            Err(e) => return fail(&slot, &ctl, e),
        };
        if !locked {
            match after_interrupt(&slot, &ctl) {
                Next::Continue(m, _) => {
                    mode = m;
                    file = Some(f);
                    continue;
                }
                Next::Exit => return,
            }
        }
        match f.still_at_path(&slot.dir) {
            Ok(true) => {}
            Ok(false) => {
                replaced += 1;
                if replaced >= MAX_REPLACED {
                    return fail(&slot, &ctl, replaced_too_often(&slot.path));
                }
                tracing::debug!(path = %slot.path.display(), "lock file was replaced while waiting; retrying");
                continue; // drops `f`, which unlocks it
            }
            Err(e) => return fail(&slot, &ctl, e),
        }
        match deliver(&slot, &ctl, mode, f) {
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
fn after_interrupt(slot: &Slot, ctl: &ThreadCtl) -> Next {
    let mut st = slot.state();
    let Some(w) = st.waiter.as_mut() else {
        return Next::Exit; // unreachable: the state lives as long as its thread
    };
    w.wanters.retain(|w| !w.tx.is_closed());
    if w.wanters.is_empty() {
        retire(slot, &mut st, ctl);
        return Next::Exit;
    }
    ctl.revoke_cancel();
    w.asking = needed_mode(&w.wanters);
    Next::Continue(w.asking, None)
}

/// Holding the lock: hand it to the wanters still there, or give it back.
fn deliver(slot: &Arc<Slot>, ctl: &ThreadCtl, mode: Mode, f: LockFile) -> Next {
    let mut st = slot.state();
    let Some(w) = st.waiter.as_mut() else {
        // Unreachable (the state lives as long as its thread); be safe.
        drop(st);
        let _ = f.unlock();
        return Next::Exit;
    };
    w.wanters.retain(|w| !w.tx.is_closed());
    if w.wanters.is_empty() {
        retire(slot, &mut st, ctl);
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
    let held = Arc::new(HeldFd::new(f, mode, slot));
    st.held = Arc::downgrade(&held);
    retire(slot, &mut st, ctl);
    drop(st);
    // One share per wanter and none kept here: the last wanter gets `held`
    // itself. Were this thread to keep a share until it returned, a holder
    // that dropped its guard at once would leave the kernel lock held for
    // a moment longer (by this thread), and a `try_acquire` right after its
    // drop could fail with `WouldBlock`.
    let mut shares: Vec<Arc<HeldFd>> = (1..wanters.len()).map(|_| held.clone()).collect();
    shares.push(held);
    for (w, share) in wanters.into_iter().zip(shares) {
        // A wanter that left just now drops its share with the receiver
        // (or, if the send fails, here).
        let _ = w.tx.send(Ok(share));
    }
    Next::Exit
}

fn fail(slot: &Slot, ctl: &ThreadCtl, e: LockError) {
    let e = SharedError(Arc::new(e));
    let mut st = slot.state();
    let wanters = retire(slot, &mut st, ctl)
        .map(|w| w.wanters)
        .unwrap_or_default();
    drop(st);
    for w in wanters {
        let _ = w.tx.send(Err(e.clone()));
    }
}

/// The kernel mode the wanters need: exclusive if any of them wants it.
fn needed_mode(wanters: &[Wanter]) -> Mode {
    if wanters.iter().any(|w| w.mode == Mode::Exclusive) {
        Mode::Exclusive
    } else {
        Mode::Shared
    }
}

fn replaced_too_often(path: &std::path::Path) -> LockError {
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
