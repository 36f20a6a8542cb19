//! The lost signal: [`Lost`], a future that completes when a lock is lost,
//! and [`LeaseDeadline`], when a lease ends by this process's clocks,
//! shared by a guard's `Lost` and the task that renews the lease.
//!
//! A background task that fires the lost signal at the deadline cannot be
//! trusted alone: after the process was paused (SIGSTOP, a long GC-like
//! stall, a descheduled VM), every timer is late, and a task that runs
//! before the watchdog's would still be told "held" long after the server
//! let the lease go. So every "still held?" answer reads the clock itself
//! and compares it with the deadline.
//!
//! # Invariants
//!
//! 1. Once the deadline has been seen passed (by [`LeaseDeadline::has_passed`]
//!    or by a [`LeaseDeadline::set`] that found it passed), it stays passed:
//!    `set` never moves a passed deadline, so a renewal confirmed late
//!    cannot make a lost lease look held again.
//! 2. The deadline is kept on two clocks: the monotonic one timers run on
//!    (tokio's `Instant`), and, on Linux, `CLOCK_BOOTTIME`, which keeps
//!    running while the machine is suspended, as the server's TTL does. The
//!    lease has passed when either says so.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::loom::sync::atomic::{AtomicBool, Ordering};
use crate::loom::sync::{Mutex, MutexGuard};

/// The end of a lease as this process knows it: a deadline that renewals
/// move and every "still held?" check compares with the clock at the moment
/// it is asked.
///
/// Cloning shares it. A backend's renewal task calls [`set`](Self::set) after
/// each confirmed renewal; the guard's [`Lost`] reads
/// [`has_passed`](Self::has_passed). Once passed, it stays passed.
///
/// # Clocks and suspend
///
/// The deadline is compared with the monotonic clock (`CLOCK_MONOTONIC`)
/// and, on Linux, with `CLOCK_BOOTTIME` too. The monotonic clock stops while
/// the machine sleeps; a Redis server's TTL (on another machine) does not.
/// With `CLOCK_BOOTTIME` a lease held across a suspend reads as passed as
/// soon as the machine wakes, if the suspend outlasted it. Elsewhere only
/// the monotonic clock is read, and a suspend is not seen; the lease's next
/// renewal then finds the key gone or taken and reports it lost.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use tokio::time::Instant;
/// use tokio_util::sync::CancellationToken;
/// use lockyard::{LeaseDeadline, Lost};
///
/// let deadline = LeaseDeadline::new(Instant::now() + Duration::from_millis(20));
/// let lost = Lost::with_deadline(CancellationToken::new(), deadline.clone());
/// assert!(!lost.is_lost());
/// tokio::time::sleep(Duration::from_millis(30)).await;
/// // No task had to fire anything: the check reads the clock.
/// assert!(lost.is_lost());
/// // A renewal confirmed too late does not bring it back.
/// assert!(!deadline.set(Instant::now() + Duration::from_secs(10)));
/// assert!(lost.is_lost());
/// # }
/// ```
#[derive(Clone)]
pub struct LeaseDeadline {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Declared lost by the task that renews the lease (see
    /// [`LeaseDeadline::fire`]): for good. Set under `state`'s lock (where
    /// a token is made already cancelled once it is set), read by every
    /// check of a `Lost`, and without the lock by the renewing task's
    /// passes over its leases.
    fired: AtomicBool,
    /// Woken when the lease becomes suspect.
    suspected: Notify,
}

/// What a holder knows of its lease, as of the moment it asks.
///
/// Between held and lost a lease can be *suspect*: its renewals are failing
/// (the server does not answer, or refuses) but its deadline has not passed,
/// so it is still ours for now. A careful holder checkpoints or pauses its
/// writes then, and goes on when the state is back to `Held` (ZooKeeper's
/// Curator calls these SUSPENDED and LOST). File and in-process locks are
/// always `Held`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use tokio::time::Instant;
/// use tokio_util::sync::CancellationToken;
/// use lockyard::{LeaseDeadline, LeaseState, Lost};
///
/// let deadline = LeaseDeadline::new(Instant::now() + Duration::from_secs(10));
/// let lost = Lost::with_deadline(CancellationToken::new(), deadline.clone());
/// assert_eq!(lost.state(), LeaseState::Held);
/// deadline.set_suspect(true); // a renewal failed
/// assert_eq!(lost.state(), LeaseState::Suspect);
/// deadline.set_suspect(false); // the next one got through
/// assert_eq!(lost.state(), LeaseState::Held);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeaseState {
    /// Held, and the last renewal (or the grant) was confirmed.
    Held,
    /// Still within the lease, but the last renewal failed: it may be lost
    /// at the deadline unless a renewal gets through first.
    Suspect,
    /// Lost: past the deadline, or the server said it is gone. For good.
    Lost,
}

struct State {
    /// The end, on both clocks.
    end: Moment,
    /// The lost token handed to the lease's [`Lost`] signals, made at the
    /// first one asked for (see [`LeaseDeadline::token`]): most leases are
    /// never awaited, and a token made and dropped per lease was ~3% of an
    /// uncontended Redis acquire+release's instruction-cache misses
    /// (callgrind).
    token: Option<CancellationToken>,
    /// Seen passed: for good (invariant 1).
    passed: bool,
    /// The last renewal failed (see [`LeaseState::Suspect`]).
    suspect: bool,
    /// How many times it became suspect: a waiter that slept through a
    /// short spell still sees one happened.
    spells: u64,
}

impl State {
    fn passed_by(&self, now: Moment) -> bool {
        self.passed || self.end.passed_by(now)
    }
}

/// A moment on both of a lease's clocks, read together: tokio's monotonic
/// [`Instant`] (which timers run on) and `CLOCK_BOOTTIME` (time since boot,
/// suspend included), where the platform has it.
///
/// A lease's end must be carried on both from the moment its request was
/// sent: converted from the monotonic clock later, after a suspend, it
/// would be placed too late on the boot clock by the suspend's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moment {
    pub(crate) at: Instant,
    pub(crate) boot: Option<Duration>,
}

impl Moment {
    /// Now, on both clocks.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn now() -> Self {
        clocks()
    }

    /// `d` later on both clocks.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn after(self, d: Duration) -> Self {
        Self {
            at: self.at + d,
            boot: self.boot.map(|b| b + d),
        }
    }

    /// The later of the two on each clock (a clock one of them lacks is
    /// not known).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn later(self, other: Self) -> Self {
        Self {
            at: self.at.max(other.at),
            boot: self.boot.zip(other.boot).map(|(a, b)| a.max(b)),
        }
    }

    /// The earlier of the two on each clock (a bound one of them lacks is
    /// the other's).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn earlier(self, other: Self) -> Self {
        Self {
            at: self.at.min(other.at),
            boot: match (self.boot, other.boot) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    /// Whether `now` is at or past this moment on either clock.
    pub(crate) fn passed_by(self, now: Moment) -> bool {
        now.at >= self.at || matches!((self.boot, now.boot), (Some(end), Some(now)) if now >= end)
    }

    /// `at` on both clocks, converted now: right unless the machine was
    /// suspended between the moment `at` was measured from and now.
    fn converted(at: Instant) -> Self {
        let now = clocks();
        Self {
            at,
            boot: now.boot.map(|b| b + at.saturating_duration_since(now.at)),
        }
    }
}

impl LeaseDeadline {
    /// A lease that ends at `at` (on tokio's clock, which is the monotonic
    /// clock outside tests with a paused clock).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use lockyard::LeaseDeadline;
    ///
    /// let deadline = LeaseDeadline::new(Instant::now() + Duration::from_secs(10));
    /// assert!(!deadline.has_passed());
    /// ```
    pub fn new(at: Instant) -> Self {
        Self::ending(Moment::converted(at))
    }

    /// A lease that ends at `end`, on both clocks.
    pub(crate) fn ending(end: Moment) -> Self {
        Self::ending_as_of(end, clocks())
    }

    /// As [`ending`](Self::ending), with the clocks read at `now` (just
    /// before) rather than again.
    pub(crate) fn ending_as_of(end: Moment, now: Moment) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    end,
                    passed: end.passed_by(now),
                    token: None,
                    suspect: false,
                    spells: 0,
                }),
                fired: AtomicBool::new(false),
                suspected: Notify::new(),
            }),
        }
    }

    /// Marks the lease suspect (a renewal failed) or not (one was
    /// confirmed); see [`LeaseState::Suspect`]. Wakes the holders waiting in
    /// [`Lost::suspect`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use lockyard::LeaseDeadline;
    ///
    /// let deadline = LeaseDeadline::new(Instant::now() + Duration::from_secs(10));
    /// deadline.set_suspect(true);
    /// assert!(deadline.is_suspect());
    /// ```
    pub fn set_suspect(&self, suspect: bool) {
        let became = {
            let mut st = self.lock();
            let became = suspect && !st.suspect;
            st.suspect = suspect;
            if became {
                st.spells += 1;
            }
            became
        };
        if became {
            self.inner.suspected.notify_waiters();
        }
    }

    /// How many times the lease has become suspect.
    fn spells(&self) -> u64 {
        self.lock().spells
    }

    /// Whether the last renewal failed (the deadline may still be ahead).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use lockyard::LeaseDeadline;
    ///
    /// assert!(!LeaseDeadline::new(Instant::now() + Duration::from_secs(1)).is_suspect());
    /// ```
    pub fn is_suspect(&self) -> bool {
        self.lock().suspect
    }

    /// Moves the deadline to `at` (later after a renewal, or earlier), unless
    /// it has already passed: a passed lease stays passed. Returns whether it
    /// moved.
    ///
    /// `at` is placed on `CLOCK_BOOTTIME` as of now: if the machine was
    /// suspended since the moment `at` was measured from (a renewal's
    /// send), that end lands too late there by the suspend's length. The
    /// crate's own backends carry their deadlines on both clocks from the
    /// send instead.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use lockyard::LeaseDeadline;
    ///
    /// let deadline = LeaseDeadline::new(Instant::now() + Duration::from_secs(1));
    /// let later = Instant::now() + Duration::from_secs(5);
    /// assert!(deadline.set(later));
    /// assert_eq!(deadline.at(), later);
    /// ```
    pub fn set(&self, at: Instant) -> bool {
        self.set_end(Moment::converted(at))
    }

    /// [`set`](Self::set) with the end on both clocks.
    pub(crate) fn set_end(&self, end: Moment) -> bool {
        let now = clocks();
        let mut st = self.lock();
        if st.passed_by(now) {
            st.passed = true;
            return false;
        }
        st.end = end;
        st.passed = end.passed_by(now);
        true
    }

    /// Whether the lease has ended by the clocks now (and for good, once
    /// true).
    ///
    /// ```
    /// use tokio::time::Instant;
    /// use lockyard::LeaseDeadline;
    ///
    /// let deadline = LeaseDeadline::new(Instant::now());
    /// assert!(deadline.has_passed());
    /// ```
    pub fn has_passed(&self) -> bool {
        self.has_passed_at(clocks())
    }

    /// As [`has_passed`](Self::has_passed), by the clocks read at `now`
    /// (a caller that reads them anyway).
    pub(crate) fn has_passed_at(&self, now: Moment) -> bool {
        let mut st = self.lock();
        if st.passed {
            return true;
        }
        if st.passed_by(now) {
            st.passed = true;
        }
        st.passed
    }

    /// The deadline on the monotonic clock (for a timer). It may lie in the
    /// future while [`has_passed`](Self::has_passed) already says `true`
    /// (after a suspend); a timer set for it must check that again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use lockyard::LeaseDeadline;
    ///
    /// let at = Instant::now() + Duration::from_secs(3);
    /// assert_eq!(LeaseDeadline::new(at).at(), at);
    /// ```
    pub fn at(&self) -> Instant {
        self.lock().end.at
    }

    /// The deadline on both clocks.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn end(&self) -> Moment {
        self.lock().end
    }

    /// How long until the deadline (zero once passed).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use lockyard::LeaseDeadline;
    ///
    /// let deadline = LeaseDeadline::new(Instant::now() + Duration::from_secs(3));
    /// assert!(deadline.remaining() <= Duration::from_secs(3));
    /// ```
    pub fn remaining(&self) -> Duration {
        if self.has_passed() {
            return Duration::ZERO;
        }
        self.at().saturating_duration_since(clocks().at)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock()
    }

    /// Declares the lease lost for good (the renewing task found it gone,
    /// or can no longer renew it): cancels the token of every [`Lost`]
    /// made from [`token`](Self::token), and every later one is made
    /// cancelled.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn fire(&self) {
        let token = {
            let st = self.lock();
            self.inner.fired.store(true, Ordering::Release);
            st.token.clone()
        };
        // Cancelled after the lock is let go: cancelling wakes the token's
        // waiters, and nothing that a wake-up runs may find this lock held.
        // Until then no `Lost` of the deadline reads "held": every check
        // reads "fired" too (`is_lost`).
        if let Some(token) = token {
            token.cancel();
        }
    }

    /// Whether [`fire`](Self::fire) was called.
    pub(crate) fn is_fired(&self) -> bool {
        self.inner.fired.load(Ordering::Acquire)
    }

    /// Whether the lease is lost: fired, or its deadline has passed by the
    /// clocks now (for good, once true). What every [`Lost`] of the
    /// deadline reads.
    pub(crate) fn is_lost(&self) -> bool {
        self.is_fired() || self.has_passed()
    }

    /// As [`is_lost`](Self::is_lost), by the clocks read at `now`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn is_lost_at(&self, now: Moment) -> bool {
        self.is_fired() || self.has_passed_at(now)
    }

    /// The lease's lost token, made at the first call (cancelled already
    /// if the lease was [`fire`](Self::fire)d): what a [`Lost`] of the
    /// lease waits on. Made and checked under the lock `fire` takes, so no
    /// firing is missed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn token(&self) -> CancellationToken {
        let mut st = self.lock();
        let fired = self.is_fired();
        st.token
            .get_or_insert_with(|| {
                let token = CancellationToken::new();
                if fired {
                    token.cancel();
                }
                token
            })
            .clone()
    }
}

impl fmt::Debug for LeaseDeadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("LeaseDeadline")
            .field("at", &st.end.at)
            .field("passed", &st.passed)
            .field("suspect", &st.suspect)
            .finish()
    }
}

/// Both clocks, now.
#[cfg(not(test))]
fn clocks() -> Moment {
    Moment {
        at: Instant::now(),
        boot: boot_time(),
    }
}

/// Both clocks, now: a test's [`model_clock`] where one is installed.
#[cfg(test)]
fn clocks() -> Moment {
    model_clock::now().unwrap_or_else(|| Moment {
        at: Instant::now(),
        boot: boot_time(),
    })
}

/// A clock a test moves by hand, on this thread (loom runs a model's
/// threads on one): time passing on both clocks, or a suspend that only
/// the boot clock sees. Its readings are loom atomics in a loom model, so
/// loom orders them against the lease's other steps.
#[cfg(test)]
pub(crate) mod model_clock {
    use std::cell::RefCell;
    use std::time::Duration;

    use tokio::time::Instant;

    use std::sync::Arc;

    use super::Moment;
    use crate::loom::sync::atomic::{AtomicU64, Ordering};

    struct Clock {
        base: Instant,
        /// Milliseconds on the monotonic clock (high half) and those the
        /// machine slept (low half), in one atomic: one loom step a read.
        ms: AtomicU64,
    }

    const MONO: u64 = 1 << 32;

    fn split(ms: u64) -> (u64, u64) {
        (ms >> 32, ms & (MONO - 1))
    }

    thread_local! {
        static CLOCK: RefCell<Option<Arc<Clock>>> = const { RefCell::new(None) };
    }

    /// The installed clock; removed when dropped.
    pub(crate) struct Installed(Arc<Clock>);

    /// Installs a clock at 0 ms on both clocks for this thread.
    pub(crate) fn install() -> Installed {
        let clock = Arc::new(Clock {
            base: Instant::now(),
            ms: AtomicU64::new(0),
        });
        CLOCK.with(|c| *c.borrow_mut() = Some(clock.clone()));
        Installed(clock)
    }

    impl Installed {
        /// `ms` pass on both clocks.
        pub(crate) fn advance(&self, ms: u64) {
            self.0.ms.fetch_add(ms * MONO, Ordering::SeqCst);
        }

        /// The machine sleeps `ms`: only the boot clock moves.
        pub(crate) fn suspend(&self, ms: u64) {
            self.0.ms.fetch_add(ms, Ordering::SeqCst);
        }

        /// Real time (what a server's TTL counts) in ms: the boot clock.
        pub(crate) fn real_ms(&self) -> u64 {
            let (mono, slept) = split(self.0.ms.load(Ordering::SeqCst));
            mono + slept
        }
    }

    impl Drop for Installed {
        fn drop(&mut self) {
            CLOCK.with(|c| *c.borrow_mut() = None);
        }
    }

    pub(super) fn now() -> Option<Moment> {
        CLOCK.with(|c| {
            let c = c.borrow();
            let clock = c.as_ref()?;
            let (mono, slept) = split(clock.ms.load(Ordering::SeqCst));
            Some(Moment {
                at: clock.base + Duration::from_millis(mono),
                boot: Some(Duration::from_millis(mono + slept)),
            })
        })
    }
}

/// Time since boot, suspend included (`CLOCK_BOOTTIME`).
///
/// Read through libc, not rustix: rustix finds the vDSO itself, which
/// crashes a process run under valgrind (rustix#1559; seen here, a Redis
/// acquisition under callgrind died with SIGSEGV in rustix's auxv parser),
/// while glibc's `clock_gettime` is one valgrind knows.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn boot_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

/// No suspend-aware clock is read on this platform (see [`LeaseDeadline`]).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn boot_time() -> Option<Duration> {
    None
}

/// A future that completes when a lock is lost; [`Lost::never`] never does.
///
/// Cloning is cheap; every clone completes together.
///
/// A lease's signal ([`Lost::with_deadline`]) is lost when its token is
/// cancelled (the server said the lease is gone, or renewal gave up) *or*
/// when its [`LeaseDeadline`] has passed by the clock at the moment it is
/// asked: [`is_lost`](Self::is_lost) and every poll read the clock, so a
/// process resumed after a pause past its lease is told "lost" by its first
/// check, even before the renewal task's timer has run.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tokio_util::sync::CancellationToken;
/// use lockyard::Lost;
///
/// let token = CancellationToken::new();
/// let lost = Lost::from_token(token.clone());
/// let watcher = tokio::spawn(lost.clone()); // every clone fires together
/// token.cancel();
/// watcher.await.unwrap();
/// assert!(lost.is_lost());
/// # }
/// ```
#[must_use = "futures do nothing unless polled"]
#[pin_project::pin_project]
pub struct Lost {
    token: Option<CancellationToken>,
    /// A lease's end: past it the lock is lost, whether or not the task
    /// that cancels `token` has run yet.
    deadline: Option<LeaseDeadline>,
    #[pin]
    wait: Option<WaitForCancellationFutureOwned>,
}

impl Lost {
    /// A signal that never fires (file and in-process locks).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use lockyard::Lost;
    ///
    /// let never = Lost::never();
    /// assert!(!never.is_lost());
    /// assert!(tokio::time::timeout(Duration::from_millis(10), never).await.is_err());
    /// # }
    /// ```
    pub fn never() -> Self {
        Self {
            token: None,
            deadline: None,
            wait: None,
        }
    }

    /// A signal that fires when `token` is cancelled.
    ///
    /// ```
    /// use tokio_util::sync::CancellationToken;
    /// use lockyard::Lost;
    ///
    /// let token = CancellationToken::new();
    /// let lost = Lost::from_token(token.clone());
    /// token.cancel();
    /// assert!(lost.is_lost());
    /// ```
    pub fn from_token(token: CancellationToken) -> Self {
        Self {
            // Made at the first poll: most signals are never awaited, and
            // making one clones the token (callgrind: a signal made and
            // dropped was ~2% of an uncontended Redis acquire+release).
            wait: None,
            token: Some(token),
            deadline: None,
        }
    }

    /// A lease's signal: fires when `token` is cancelled, and reads as lost
    /// once `deadline` has passed, by the clock at the moment it is asked
    /// (see [`LeaseDeadline`]). The task renewing the lease moves the
    /// deadline and cancels `token` when it gives up or finds the lease gone.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use tokio_util::sync::CancellationToken;
    /// use lockyard::{LeaseDeadline, Lost};
    ///
    /// let deadline = LeaseDeadline::new(Instant::now() + Duration::from_secs(10));
    /// let token = CancellationToken::new();
    /// let lost = Lost::with_deadline(token.clone(), deadline);
    /// assert!(!lost.is_lost());
    /// token.cancel();
    /// assert!(lost.is_lost());
    /// ```
    pub fn with_deadline(token: CancellationToken, deadline: LeaseDeadline) -> Self {
        Self {
            deadline: Some(deadline),
            ..Self::from_token(token)
        }
    }

    /// Whether the lock is already lost.
    ///
    /// ```
    /// use tokio_util::sync::CancellationToken;
    /// use lockyard::Lost;
    ///
    /// let token = CancellationToken::new();
    /// let lost = Lost::from_token(token.clone());
    /// assert!(!lost.is_lost());
    /// token.cancel();
    /// assert!(lost.is_lost());
    /// ```
    pub fn is_lost(&self) -> bool {
        self.token
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
            || self.deadline.as_ref().is_some_and(LeaseDeadline::is_lost)
    }

    /// Held, suspect or lost, as of now (see [`LeaseState`]).
    ///
    /// ```
    /// use lockyard::{LeaseState, Lost};
    ///
    /// assert_eq!(Lost::never().state(), LeaseState::Held);
    /// ```
    pub fn state(&self) -> LeaseState {
        if self.is_lost() {
            LeaseState::Lost
        } else if self
            .deadline
            .as_ref()
            .is_some_and(LeaseDeadline::is_suspect)
        {
            LeaseState::Suspect
        } else {
            LeaseState::Held
        }
    }

    /// A future that completes when the lease is suspect or lost (at once if
    /// it is already); never for a signal without a lease.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use tokio_util::sync::CancellationToken;
    /// use lockyard::{LeaseDeadline, Lost};
    ///
    /// let deadline = LeaseDeadline::new(Instant::now() + Duration::from_secs(10));
    /// let lost = Lost::with_deadline(CancellationToken::new(), deadline.clone());
    /// let watcher = tokio::spawn(lost.suspect());
    /// deadline.set_suspect(true);
    /// watcher.await.unwrap();
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping it changes nothing; a new one sees the state as it is then.
    pub fn suspect(&self) -> impl Future<Output = ()> + Send + use<> {
        let lost = self.clone();
        // Counted now, not at the first poll: a spell between the two counts.
        let spells = self.deadline.as_ref().map(LeaseDeadline::spells);
        async move {
            let (Some(deadline), Some(spells)) = (lost.deadline.clone(), spells) else {
                return lost.await;
            };
            loop {
                let notified = deadline.inner.suspected.notified();
                tokio::pin!(notified);
                // Registered before the state is read, so a change between
                // the two is not missed; a spell that began and ended while
                // this slept is seen by its count.
                notified.as_mut().enable();
                if lost.state() != LeaseState::Held || deadline.spells() != spells {
                    return;
                }
                tokio::select! {
                    () = notified => {}
                    () = lost.clone() => return,
                }
            }
        }
    }
}

impl Clone for Lost {
    fn clone(&self) -> Self {
        match (&self.token, &self.deadline) {
            (Some(t), Some(d)) => Self::with_deadline(t.clone(), d.clone()),
            (Some(t), None) => Self::from_token(t.clone()),
            (None, _) => Self::never(),
        }
    }
}

impl fmt::Debug for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lost")
            .field("can_fire", &self.token.is_some())
            .field("state", &self.state())
            .finish()
    }
}

impl Future for Lost {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // Past the deadline (or fired) it is lost, however late the task
        // that cancels the token runs (a process resumed after a pause polls
        // this first).
        if this.deadline.as_ref().is_some_and(LeaseDeadline::is_lost) {
            return Poll::Ready(());
        }
        if this.wait.is_none()
            && let Some(token) = this.token
        {
            this.wait.set(Some(token.clone().cancelled_owned()));
        }
        match this.wait.as_pin_mut() {
            Some(wait) => wait.poll(cx),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passed_on_the_boot_clock_is_passed() {
        // As after a suspend: the monotonic deadline is ahead, the one on
        // the boot clock is behind.
        let d = LeaseDeadline::new(Instant::now() + Duration::from_secs(60));
        if boot_time().is_none() {
            return;
        }
        d.lock().end.boot = Some(Duration::ZERO);
        assert!(d.has_passed());
        assert!(!d.set(Instant::now() + Duration::from_secs(60)));
        assert!(d.has_passed());
        assert_eq!(d.remaining(), Duration::ZERO);
    }

    #[test]
    fn a_set_before_the_deadline_moves_it_both_ways() {
        let d = LeaseDeadline::new(Instant::now() + Duration::from_secs(60));
        let earlier = Instant::now() + Duration::from_secs(30);
        assert!(d.set(earlier));
        assert_eq!(d.at(), earlier);
        assert!(!d.has_passed());
        let past = Instant::now();
        assert!(d.set(past));
        assert!(d.has_passed());
        assert!(!d.set(Instant::now() + Duration::from_secs(60)));
    }

    #[tokio::test]
    async fn lost_fires_with_token() {
        let token = CancellationToken::new();
        let lost = Lost::from_token(token.clone());
        let copy = lost.clone();
        assert!(!lost.is_lost());
        token.cancel();
        assert!(copy.is_lost());
        tokio::time::timeout(Duration::from_secs(5), lost)
            .await
            .unwrap();
    }

    /// A wake-up that checks the lease at once, before it returns (a waker
    /// may run code, and a task polled in place would ask `is_lost`), finds
    /// the deadline's lock free: `fire` cancels the token after letting it
    /// go, and the check says lost.
    #[test]
    fn a_wake_up_that_checks_at_once_does_not_deadlock_the_fire() {
        struct CheckOnWake {
            deadline: LeaseDeadline,
            saw: std::sync::mpsc::Sender<bool>,
        }
        impl std::task::Wake for CheckOnWake {
            fn wake(self: Arc<Self>) {
                self.wake_by_ref();
            }
            fn wake_by_ref(self: &Arc<Self>) {
                let _ = self.saw.send(self.deadline.is_lost());
            }
        }
        let d = LeaseDeadline::new(Instant::now() + Duration::from_secs(60));
        let (saw, seen) = std::sync::mpsc::channel();
        let waker = std::task::Waker::from(Arc::new(CheckOnWake {
            deadline: d.clone(),
            saw,
        }));
        let mut waiting = Box::pin(Lost::with_deadline(d.token(), d.clone()));
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        let fire = {
            let d = d.clone();
            std::thread::spawn(move || d.fire())
        };
        // Bounded: a fire that deadlocked never sends.
        assert_eq!(seen.recv_timeout(Duration::from_secs(10)), Ok(true));
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !fire.is_finished() {
            assert!(std::time::Instant::now() < until, "the fire did not return");
            std::thread::sleep(Duration::from_millis(1));
        }
        fire.join().unwrap();
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
    }

    /// The token is made only when a `Lost` asks; a fire reaches the
    /// tokens made before it and every one made after it, and a `Lost` of
    /// the deadline never reads "held" once the deadline read "lost".
    #[tokio::test]
    async fn a_fire_reaches_every_lost_made_before_or_after_it() {
        let d = LeaseDeadline::new(Instant::now() + Duration::from_secs(60));
        assert!(d.lock().token.is_none());
        let before = Lost::with_deadline(d.token(), d.clone());
        assert!(!before.is_lost() && !d.is_lost() && !d.is_fired());
        let fired = {
            let d = d.clone();
            std::thread::spawn(move || d.fire())
        };
        // Racing the fire on another thread: "lost" is for good.
        let mut seen_lost = false;
        for _ in 0..100_000 {
            let lost = d.is_lost();
            let after = Lost::with_deadline(d.token(), d.clone());
            if seen_lost || lost {
                assert!(after.is_lost() && before.is_lost());
            }
            seen_lost |= lost;
            if seen_lost && fired.is_finished() {
                break;
            }
        }
        fired.join().unwrap();
        assert!(d.is_fired() && d.is_lost());
        let after = Lost::with_deadline(d.token(), d.clone());
        assert!(after.is_lost());
        tokio::time::timeout(Duration::from_secs(5), before)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), after)
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn never_never_fires() {
        let r = tokio::time::timeout(Duration::from_secs(3600), Lost::never()).await;
        assert!(r.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn passes_with_the_clock_and_stays_passed() {
        let d = LeaseDeadline::new(Instant::now() + Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(!d.has_passed());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(d.has_passed());
        assert!(!d.set(Instant::now() + Duration::from_secs(1)));
    }
}
