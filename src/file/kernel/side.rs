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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use super::handoff;
use super::held::KernelLock;
use super::interrupt::ThreadCtl;
use crate::error::LockError;
use crate::file::disk::dir::LockDir;
use crate::file::disk::idle::IdleKey;
use crate::file::disk::lockfile::{Access, LockFile};
use crate::file::options::WaitStrategy;
use crate::loom::sync::{Mutex, MutexGuard};
use crate::options::Mode;
use crate::owner::Owner;

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

/// The state machine of one name's kernel side, under `KernelSide::state`.
/// Its transitions are the methods below; `H` is what the waiter hands
/// over (a [`Handed`] kernel lock; something simpler in the loom models).
#[derive(Debug)]
pub(crate) struct KernelState<H = Handed> {
    /// The kernel lock held by this process's holders, if any.
    pub(crate) held: Weak<KernelLock>,
    pub(crate) waiter: Option<Waiter<H>>,
}

impl<H> Default for KernelState<H> {
    fn default() -> Self {
        Self {
            held: Weak::new(),
            waiter: None,
        }
    }
}

/// The waiter thread of a name, as its state sees it.
#[derive(Debug)]
pub(crate) struct Waiter<H = Handed> {
    pub(crate) ctl: Arc<ThreadCtl>,
    pub(crate) wanters: Vec<Wanter<H>>,
    /// The mode the thread asks the kernel for (or is about to). When the
    /// wanters come to need another one (the last exclusive wanter left, or
    /// an exclusive one arrived behind shared ones), the thread is
    /// interrupted to ask again.
    pub(crate) asking: Mode,
}

impl<H> Waiter<H> {
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
pub(crate) struct Wanter<H = Handed> {
    pub(crate) mode: Mode,
    /// The resource name, for the owner record.
    pub(crate) name: Arc<str>,
    pub(crate) tx: handoff::Sender<Result<H, SharedError>>,
}

/// What the waiter thread hands a wanter: a share of the kernel lock and,
/// for the wanter whose owner record it wrote, that owner.
#[derive(Debug)]
pub(crate) struct Handed {
    pub(crate) kernel: Arc<KernelLock>,
    pub(crate) owner: Option<Owner>,
}

/// What the waiter does with a lock the kernel granted.
#[derive(Debug)]
pub(crate) enum Granted<H = Handed> {
    /// Nobody wants it any more: unlock it and exit.
    GiveBack,
    /// The wanters need another mode: unlock and ask for this one.
    AskAgain(Mode),
    /// Hand it, held in this mode, to these wanters, in order.
    HandOver(Vec<Wanter<H>>, Mode),
}

impl<H> KernelState<H> {
    /// A task joins the waiter's wanters: `Err` hands the wanter back when
    /// no waiter runs (the caller starts one with [`begin_wait`](Self::begin_wait)).
    pub(crate) fn join(&mut self, wanter: Wanter<H>) -> Result<(), Wanter<H>> {
        let Some(waiter) = self.waiter.as_mut() else {
            return Err(wanter);
        };
        waiter.wanters.push(wanter);
        waiter.refit();
        Ok(())
    }

    /// A waiter thread (`ctl`) is about to start for `wanter`.
    pub(crate) fn begin_wait(&mut self, ctl: Arc<ThreadCtl>, wanter: Wanter<H>) {
        self.waiter = Some(Waiter {
            ctl,
            asking: wanter.mode,
            wanters: vec![wanter],
        });
    }

    /// Wanters stopped waiting: forget them, and have the waiter ask again
    /// if those left need another mode (or none is left).
    pub(crate) fn withdraw(&mut self) {
        if let Some(w) = self.waiter.as_mut() {
            w.wanters.retain(|w| !w.tx.is_closed());
            w.refit();
        }
    }

    /// The waiter's kernel wait was interrupted: `None` if nobody wants the
    /// lock any more (it retires), else the mode to ask for now.
    pub(crate) fn on_interrupt(&mut self) -> Option<Mode> {
        let w = self.waiter.as_mut()?;
        w.wanters.retain(|w| !w.tx.is_closed());
        if w.wanters.is_empty() {
            return None;
        }
        w.ctl.revoke_cancel();
        w.asking = needed_mode(&w.wanters);
        Some(w.asking)
    }

    /// The kernel granted the waiter the lock in `mode`. Held exclusive for
    /// wanters that are all shared now, it is converted
    /// (`convert_to_shared`, a non-blocking `LOCK_SH`), so that other
    /// processes' readers are not kept out; held shared while an exclusive
    /// wanter arrived, it is asked for again.
    pub(crate) fn on_granted(
        &mut self,
        mode: Mode,
        convert_to_shared: impl FnOnce() -> bool,
    ) -> Granted<H> {
        let Some(w) = self.waiter.as_mut() else {
            return Granted::GiveBack; // unreachable: the state outlives its thread
        };
        w.wanters.retain(|w| !w.tx.is_closed());
        if w.wanters.is_empty() {
            return Granted::GiveBack;
        }
        let need = needed_mode(&w.wanters);
        let mut mode = mode;
        if need != mode {
            w.asking = need;
            w.ctl.revoke_cancel();
            if !(need == Mode::Shared && convert_to_shared()) {
                return Granted::AskAgain(need);
            }
            mode = Mode::Shared;
        }
        Granted::HandOver(std::mem::take(&mut w.wanters), mode)
    }

    /// The waiter thread leaves its post: called under the state lock, in
    /// the critical section that decides it, so that a new waiter thread
    /// can only be started (and counted) after this one stopped counting.
    pub(crate) fn retire(&mut self, threads: &AtomicUsize, ctl: &ThreadCtl) -> Option<Waiter<H>> {
        let w = self.waiter.take();
        if w.is_some() {
            threads.fetch_sub(1, Ordering::AcqRel);
        }
        ctl.unbind();
        w
    }
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
        self.state.lock()
    }

    /// See [`KernelState::retire`].
    pub(crate) fn retire(&self, st: &mut KernelState, ctl: &ThreadCtl) -> Option<Waiter> {
        st.retire(&self.waiter_threads, ctl)
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
pub(crate) fn needed_mode<H>(wanters: &[Wanter<H>]) -> Mode {
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
                    name: Arc::from("x"),
                    tx: handoff::channel().0,
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
            name: Arc::from("x"),
            tx: handoff::channel().0,
        });
        w.refit();
        assert!(!w.ctl.is_cancelled());
        w.ctl.unbind();
    }
}

#[cfg(all(test, lockyard_loom, target_os = "linux"))]
mod loom_models {
    //! A name's kernel state machine under loom: tasks join, leave and wait
    //! while the waiter thread waits, is interrupted and hands over, through
    //! the real transitions ([`KernelState`]) and the real hand-off channel.
    //! The kernel is a model of one `flock` that another process holds until
    //! a releaser thread lets it go; the waiter polls it (as with
    //! `WaitStrategy::Poll`: signals are not modelled), and its loop follows
    //! `waiter::run` step for step. Each model checks that no task waits
    //! forever, that the lock ends up free with nobody left to free it, and
    //! that the waiter left its post.

    use std::sync::atomic::AtomicUsize;

    use loom::thread;

    use super::*;
    use crate::loom::sync::{Arc as LArc, Mutex as LMutex};

    /// One `flock` as the kernel keeps it.
    #[derive(Debug, Default)]
    struct Flock {
        /// Another process holds it (exclusive).
        other: bool,
        /// This process holds it, in this mode.
        ours: Option<Mode>,
    }

    impl Flock {
        fn try_lock(&mut self, mode: Mode) -> bool {
            if self.other || self.ours.is_some() {
                return false;
            }
            self.ours = Some(mode);
            true
        }
    }

    /// A share of the lock this process holds: the last one unlocks.
    #[derive(Debug)]
    struct Share(LArc<LMutex<Flock>>);

    impl Drop for Share {
        fn drop(&mut self) {
            self.0.lock().ours = None;
        }
    }

    type Hold = LArc<Share>;
    type Rx = handoff::Receiver<Result<Hold, SharedError>>;

    #[derive(Clone)]
    struct Name {
        state: LArc<LMutex<KernelState<Hold>>>,
        flock: LArc<LMutex<Flock>>,
        threads: Arc<AtomicUsize>,
        waiter: LArc<LMutex<Option<thread::JoinHandle<()>>>>,
    }

    impl Name {
        fn held_by_another_process() -> Self {
            Self {
                state: LArc::new(LMutex::new(KernelState::default())),
                flock: LArc::new(LMutex::new(Flock {
                    other: true,
                    ours: None,
                })),
                threads: Arc::new(AtomicUsize::new(0)),
                waiter: LArc::new(LMutex::new(None)),
            }
        }

        /// The other process lets go, on a thread of its own.
        fn release_elsewhere(&self) -> thread::JoinHandle<()> {
            let flock = self.flock.clone();
            thread::spawn(move || flock.lock().other = false)
        }

        /// `KernelSide::start`: the lock at once, or a receiver to wait on.
        fn start(&self, mode: Mode) -> Result<Hold, Rx> {
            let mut st = self.state.lock();
            let (tx, rx) = handoff::channel();
            let wanter = Wanter {
                mode,
                name: Arc::from("model"),
                tx,
            };
            let Err(wanter) = st.join(wanter) else {
                return Err(rx);
            };
            if self.flock.lock().try_lock(mode) {
                return Ok(LArc::new(Share(self.flock.clone())));
            }
            let ctl = ThreadCtl::polling();
            st.begin_wait(ctl.clone(), wanter);
            self.threads.fetch_add(1, Ordering::AcqRel);
            let name = self.clone();
            *self.waiter.lock() = Some(thread::spawn(move || name.run(ctl, mode)));
            Err(rx)
        }

        /// `Ticket`'s drop: the task stops waiting.
        fn leave(&self, rx: Rx) {
            drop(rx);
            self.state.lock().withdraw();
        }

        /// `waiter::run`, against the model kernel.
        fn run(self, ctl: Arc<ThreadCtl>, mut mode: Mode) {
            loop {
                // `wait::wait_once`, polling.
                let locked = loop {
                    if ctl.is_cancelled() {
                        break false;
                    }
                    if self.flock.lock().try_lock(mode) {
                        break true;
                    }
                    thread::yield_now();
                };
                let mut st = self.state.lock();
                if !locked {
                    match st.on_interrupt() {
                        Some(m) => {
                            mode = m;
                            continue;
                        }
                        None => {
                            st.retire(&self.threads, &ctl);
                            return;
                        }
                    }
                }
                let granted = st.on_granted(mode, || {
                    self.flock.lock().ours = Some(Mode::Shared);
                    true
                });
                match granted {
                    Granted::GiveBack => {
                        st.retire(&self.threads, &ctl);
                        drop(st);
                        self.flock.lock().ours = None;
                        return;
                    }
                    Granted::AskAgain(need) => {
                        drop(st);
                        self.flock.lock().ours = None;
                        mode = need;
                    }
                    Granted::HandOver(wanters, _) => {
                        st.retire(&self.threads, &ctl);
                        drop(st);
                        let last = wanters.len() - 1;
                        let mut hold = Some(LArc::new(Share(self.flock.clone())));
                        for (i, w) in wanters.into_iter().enumerate() {
                            let share = match &hold {
                                Some(h) if i < last => h.clone(),
                                _ => hold.take().expect("the last share"),
                            };
                            let _ = w.tx.send(Ok(share));
                        }
                        return;
                    }
                }
            }
        }

        /// Takes the lock in `mode`, waiting for the hand-off if needed.
        fn acquire(&self, mode: Mode) -> Hold {
            match self.start(mode) {
                Ok(hold) => hold,
                Err(rx) => crate::loom::block_on(rx)
                    .expect("the waiter answered")
                    .expect("no error"),
            }
        }

        /// A task that joins in `mode` and leaves again without the lock.
        fn join_and_leave(&self, mode: Mode) -> thread::JoinHandle<()> {
            let name = self.clone();
            thread::spawn(move || match name.start(mode) {
                Ok(hold) => drop(hold),
                Err(rx) => name.leave(rx),
            })
        }

        /// Once every task is done: nothing held, no waiter left.
        fn assert_settled(&self) {
            if let Some(waiter) = self.waiter.lock().take() {
                waiter.join().unwrap();
            }
            let flock = self.flock.lock();
            assert!(!flock.other);
            assert_eq!(
                flock.ours, None,
                "the lock stayed held with nobody to free it"
            );
            assert!(
                self.state.lock().waiter.is_none(),
                "the waiter never left its post"
            );
            assert_eq!(self.threads.load(Ordering::Acquire), 0);
        }
    }

    #[test]
    fn loom_the_last_wanter_leaving_never_leaves_the_lock_held() {
        loom::model(|| {
            let name = Name::held_by_another_process();
            let release = name.release_elsewhere();
            match name.start(Mode::Exclusive) {
                Ok(hold) => drop(hold),
                Err(rx) => name.leave(rx),
            }
            release.join().unwrap();
            name.assert_settled();
        });
    }

    /// The two models below run four threads, one of them polling: at
    /// three preemptions (CI's bound) each explored for 11 minutes on a
    /// 2-core machine, half of CI's loom step; at two, 33 seconds. They run
    /// at `LOOM_MAX_PREEMPTIONS` when it is lower than two, else at two.
    fn model_four_threads(f: impl Fn() + Send + Sync + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(builder.preemption_bound.map_or(2, |b| b.min(2)));
        builder.check(f);
    }

    #[test]
    fn loom_a_wanter_gets_the_lock_while_another_leaves() {
        model_four_threads(|| {
            let name = Name::held_by_another_process();
            let release = name.release_elsewhere();
            let other = name.join_and_leave(Mode::Exclusive);
            let hold = name.acquire(Mode::Exclusive);
            other.join().unwrap();
            release.join().unwrap();
            drop(hold);
            name.assert_settled();
        });
    }

    #[test]
    fn loom_a_shared_wanter_left_behind_by_an_exclusive_one_gets_the_lock() {
        model_four_threads(|| {
            let name = Name::held_by_another_process();
            let release = name.release_elsewhere();
            let other = name.join_and_leave(Mode::Exclusive);
            let hold = name.acquire(Mode::Shared);
            other.join().unwrap();
            release.join().unwrap();
            drop(hold);
            name.assert_settled();
        });
    }
}
