//! Requests bounded by one ticker per client instead of a timer each.
//!
//! redis-rs bounds every request of a connection that has a response
//! timeout with a timer of its own (a `tokio::time::timeout` around each
//! request). Arming and removing it was ~2,300 instructions and ~25 locked
//! instructions of an uncontended acquire+release (two requests), a tenth of
//! the client's instructions, and enough code to take the operation's hot
//! code past a 32 KB instruction cache (callgrind, 64 tasks;
//! `examples/redis_instructions.rs`, whose `own-untimed` floor shows the
//! same for any client).
//!
//! So one server's connections (the pool's, plain or TLS, and the primary
//! the sentinels name) are opened without one, and each request on them is
//! [`bound`](Health::bound) instead: a request still pending after its first
//! poll records its deadline and its task's waker in the client's
//! [`Ticker`]; one task per client looks every eighth of the request
//! timeout, marks the requests whose deadline has passed and wakes them; a
//! marked request whose answer is not in when it is polled fails as a
//! request redis-rs's timer ended does (`io::ErrorKind::TimedOut`). That is
//! the timer's meaning to the request (its answer, once in, wins; a request
//! is bounded by its own age, whatever else the connection reads) at a
//! lock and a slab slot instead of the timer wheel's work, with the deadline
//! kept to within an eighth of the timeout: a request that gets no answer
//! fails between one request timeout and an eighth more after it was sent
//! (and the scheduling of its task). Callgrind, 64 tasks, per uncontended
//! acquire+release by name: 22,609 instructions with the timer, ~21,750
//! with the ticker; I1 misses (32 KB, 8-way) 743 and 544.
//!
//! The ticker's task starts on the runtime the client connected on. If it
//! ends (that runtime shut down, or a waker panicked), the next request
//! that waits starts it again on its own runtime; a request already
//! waiting then is bounded from that restart on.
//!
//! (A first attempt, 5e701f3, bounded requests per connection by the bytes
//! it read; a review broke it: an answered request not polled yet counted as
//! waiting, and a server trickling bytes kept a request alive for ever.
//! `tests/redis_stall_attacks.rs` holds those attacks; the ticker passes
//! them.)

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult};
use tokio::time::Instant;

/// A connection's health, shared by every [`Conn`] of it and its pool
/// entry: whether it is broken, and the ticker that bounds its requests
/// (`None`: redis-rs's timer does).
///
/// [`Conn`]: crate::redis::conn::link::Conn
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// A request on it failed with an I/O error.
    pub(crate) broken: AtomicBool,
    ticker: Option<Arc<Ticker>>,
}

impl Health {
    /// A connection whose requests redis-rs's own timer bounds (or none).
    pub(crate) fn untimed() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn ticked(ticker: &Arc<Ticker>) -> Arc<Self> {
        Arc::new(Self {
            broken: AtomicBool::new(false),
            ticker: Some(ticker.clone()),
        })
    }

    /// Whether a request on it failed with an I/O error.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// `request`, bounded by the client's ticker if this connection has one
    /// (see the module docs).
    ///
    /// # Cancel safety
    ///
    /// As `request`'s; dropping it also gives up its slot in the ticker.
    pub(crate) fn bound<F, T>(&self, request: F) -> Bounded<'_, F>
    where
        F: Future<Output = RedisResult<T>>,
    {
        Bounded {
            request,
            ticker: self.ticker.as_deref(),
            slot: None,
        }
    }
}

/// A request bounded by a [`Ticker`] (see [`Health::bound`]).
#[pin_project::pin_project(PinnedDrop)]
pub(crate) struct Bounded<'a, F> {
    #[pin]
    request: F,
    ticker: Option<&'a Ticker>,
    /// Its slot in the ticker, once its first poll found it pending.
    slot: Option<usize>,
}

impl<F, T> Future for Bounded<'_, F>
where
    F: Future<Output = RedisResult<T>>,
{
    type Output = RedisResult<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The answer first: once in, it wins, however late it is polled.
        if let Poll::Ready(r) = this.request.poll(cx) {
            if let (Some(ticker), Some(slot)) = (*this.ticker, this.slot.take()) {
                // (The entry, its waker with it, dropped after the lock.)
                let _entry = ticker.entries().remove(slot);
            }
            return Poll::Ready(r);
        }
        let Some(ticker) = *this.ticker else {
            return Poll::Pending;
        };
        // Wakers replaced or given back are dropped after the lock: a
        // waker's drop may run code that takes it again.
        let mut old = None;
        let expired = {
            let mut entries = ticker.entries();
            match this.slot.map(|slot| (slot, entries.get_mut(slot))) {
                Some((slot, Some(e))) if e.expired => {
                    old = Some(entries.remove(slot));
                    *this.slot = None;
                    true
                }
                Some((_, Some(e))) => {
                    if !e.waker.will_wake(cx.waker()) {
                        old = Some(Entry {
                            deadline: e.deadline,
                            waker: std::mem::replace(&mut e.waker, cx.waker().clone()),
                            expired: false,
                        });
                    }
                    false
                }
                // Its first poll (or a slot gone, not reached: only this
                // request removes its slot): a deadline from now. None for
                // a timeout too long to add to the clock: no bound, as
                // tokio's timer saturates.
                _ => {
                    *this.slot = Instant::now().checked_add(ticker.timeout).map(|deadline| {
                        entries.insert(Entry {
                            deadline,
                            waker: cx.waker().clone(),
                            expired: false,
                        })
                    });
                    false
                }
            }
        };
        drop(old);
        if expired {
            return Poll::Ready(Err(timed_out()));
        }
        // The task looking at the deadlines runs (again, if its runtime
        // is gone or a waker's panic ended it).
        ticker.ensure_running();
        Poll::Pending
    }
}

#[pin_project::pinned_drop]
impl<F> PinnedDrop for Bounded<'_, F> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        if let (Some(ticker), Some(slot)) = (*this.ticker, this.slot.take()) {
            let _entry = ticker.entries().remove(slot);
        }
    }
}

/// The error of a request that got no answer within the request timeout:
/// redis-rs's own for a request its timer ended.
fn timed_out() -> RedisError {
    io::Error::from(io::ErrorKind::TimedOut).into()
}

/// A pending request's deadline and task.
struct Entry {
    deadline: Instant,
    waker: Waker,
    /// Set by the ticker once the deadline has passed.
    expired: bool,
}

/// The pending requests of one client's connections, and the task that
/// looks at them (it ends once the client has dropped this).
pub(crate) struct Ticker {
    entries: Mutex<slab::Slab<Entry>>,
    timeout: Duration,
    /// Whether its task runs: cleared when the task ends (its runtime shut
    /// down, or a waker panicked), so that the next request starts it
    /// again on its own runtime.
    running: AtomicBool,
    me: Weak<Ticker>,
}

impl fmt::Debug for Ticker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticker")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Ticker {
    /// Starts the task (on the current runtime) for requests bounded by
    /// `timeout`.
    pub(crate) fn start(timeout: Duration) -> Arc<Self> {
        let ticker = Arc::new_cyclic(|me| Self {
            entries: Mutex::new(slab::Slab::new()),
            timeout,
            running: AtomicBool::new(false),
            me: me.clone(),
        });
        ticker.ensure_running();
        ticker
    }

    /// Starts its task on the current runtime unless it runs (nothing
    /// outside a runtime).
    fn ensure_running(&self) {
        if self.running.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // The guard is moved into the task at once: dropped with it
            // even if it never runs (a runtime shutting down).
            let guard = Running(self.me.clone());
            let tick = (self.timeout / 8).max(MIN_TICK);
            runtime.spawn(run(guard, tick));
        }
    }

    /// The request timeout it bounds requests with.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn entries(&self) -> MutexGuard<'_, slab::Slab<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One look: marks and wakes every request whose deadline passed by
    /// `now` (woken after the lock: a wake may run code that takes it; and
    /// one by one, so that a waker's panic wakes the others all the same).
    fn look(&self, now: Instant) {
        let mut due = Vec::new();
        {
            let mut entries = self.entries();
            for (_, e) in entries.iter_mut() {
                if !e.expired && e.deadline <= now {
                    e.expired = true;
                    due.push(e.waker.clone());
                }
            }
            // A burst of requests leaves a large slab behind: give it back
            // once it is mostly empty.
            if entries.capacity() > KEEP_SLOTS && entries.len() < entries.capacity() / 4 {
                entries.shrink_to_fit();
            }
        }
        for waker in due {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake()));
        }
    }
}

/// The shortest pause between two looks.
const MIN_TICK: Duration = Duration::from_millis(1);

/// Below this many slots the slab is left as it is.
const KEEP_SLOTS: usize = 1024;

/// Marks its ticker's task as not running once dropped.
struct Running(Weak<Ticker>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(ticker) = self.0.upgrade() {
            ticker.running.store(false, Ordering::Release);
        }
    }
}

async fn run(running: Running, tick: Duration) {
    loop {
        tokio::time::sleep(tick).await;
        let Some(ticker) = running.0.upgrade() else {
            return;
        };
        ticker.look(Instant::now());
    }
}

/// Opens a multiplexed connection with `config` through `client`: without
/// a response timeout and bounded by `ticker` when given, otherwise with
/// redis-rs's timer per request.
///
/// # Errors
///
/// The connect's or the handshake's (within the config's connection
/// timeout).
///
/// # Cancel safety
///
/// Dropped, it leaves no connection behind.
pub(crate) async fn open(
    client: &redis::Client,
    config: &AsyncConnectionConfig,
    ticker: Option<&Arc<Ticker>>,
) -> RedisResult<(MultiplexedConnection, Arc<Health>)> {
    match ticker {
        Some(ticker) => {
            let config = config.clone().set_response_timeout(None);
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            Ok((conn, Health::ticked(ticker)))
        }
        None => {
            let conn = client
                .get_multiplexed_async_connection_with_config(config)
                .await?;
            Ok((conn, Health::untimed()))
        }
    }
}

/// `request` (a raw request on a ticked connection, outside any `Conn`)
/// bounded by `ticker`'s timeout with a timer of its own: for the rare
/// requests of connecting (a primary's `ROLE`, a pool's `PING`).
///
/// # Errors
///
/// `request`'s, or timed out as above.
pub(crate) async fn within<T>(
    ticker: &Ticker,
    request: impl Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    tokio::time::timeout(ticker.timeout, request)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that has no answer until told (and wakes nobody: only
    /// the ticker does).
    struct Never(Arc<AtomicBool>);

    impl Future for Never {
        type Output = RedisResult<u8>;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            if self.0.load(Ordering::SeqCst) {
                Poll::Ready(Ok(7))
            } else {
                Poll::Pending
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_without_an_answer_times_out_within_an_eighth_more() {
        let timeout = Duration::from_millis(400);
        let ticker = Ticker::start(timeout);
        let health = Health::ticked(&ticker);
        let started = Instant::now();
        let r = health.bound(Never(Arc::default())).await;
        let took = started.elapsed();
        assert!(r.is_err_and(|e| e.is_timeout()));
        assert!(took >= timeout && took <= timeout * 9 / 8, "{took:?}");
        assert_eq!(ticker.entries().len(), 0, "its slot is given back");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_wins_however_late_it_is_polled() {
        let timeout = Duration::from_millis(400);
        let ticker = Ticker::start(timeout);
        let health = Health::ticked(&ticker);
        let answered = Arc::new(AtomicBool::new(false));
        let mut request = std::pin::pin!(health.bound(Never(answered.clone())));
        assert!(futures::poll!(request.as_mut()).is_pending());
        // The answer comes in; the request is polled only long after its
        // deadline (and after the ticker marked it).
        answered.store(true, Ordering::SeqCst);
        tokio::time::sleep(timeout * 3).await;
        assert_eq!(request.await.ok(), Some(7));
        assert_eq!(ticker.entries().len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_request_gives_its_slot_back_and_untimed_ones_take_none() {
        let ticker = Ticker::start(Duration::from_millis(400));
        let health = Health::ticked(&ticker);
        let mut request = Box::pin(health.bound(Never(Arc::default())));
        assert!(futures::poll!(request.as_mut()).is_pending());
        assert_eq!(ticker.entries().len(), 1);
        drop(request);
        assert_eq!(ticker.entries().len(), 0);
        let untimed = Health::untimed();
        let mut request = Box::pin(untimed.bound(Never(Arc::default())));
        assert!(futures::poll!(request.as_mut()).is_pending());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(futures::poll!(request.as_mut()).is_pending());
    }

    // Attacks from the review of 9692417 (the first three failed on it).

    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Guarantee 4: a request timeout of `Duration::MAX` (a user's "no
    /// timeout") must not panic; redis-rs's timer (`tokio::time::timeout`)
    /// saturated. `Instant::now() + ticker.timeout` in `Bounded::poll`
    /// overflows.
    #[tokio::test]
    async fn attack_huge_timeout_does_not_panic() {
        let ticker = Ticker::start(Duration::MAX);
        let health = Health::ticked(&ticker);
        let r = std::panic::AssertUnwindSafe(async {
            let mut request = Box::pin(health.bound(Never(Arc::default())));
            futures::poll!(request.as_mut()).is_pending()
        });
        let r = futures::FutureExt::catch_unwind(r).await;
        assert!(
            r.is_ok(),
            "Bounded::poll panicked with a Duration::MAX timeout"
        );
    }

    /// Guarantee 2: the waker changes between polls (the future moved to
    /// another task): the ticker wakes the latest waker.
    #[tokio::test(start_paused = true)]
    async fn attack_latest_waker_is_woken() {
        let timeout = Duration::from_millis(400);
        let ticker = Ticker::start(timeout);
        let health = Health::ticked(&ticker);
        let mut request = Box::pin(health.bound(Never(Arc::default())));
        let a = Arc::new(Count(AtomicUsize::new(0)));
        let b = Arc::new(Count(AtomicUsize::new(0)));
        let wa = Waker::from(a.clone());
        let wb = Waker::from(b.clone());
        assert!(
            request
                .as_mut()
                .poll(&mut Context::from_waker(&wa))
                .is_pending()
        );
        assert!(
            request
                .as_mut()
                .poll(&mut Context::from_waker(&wb))
                .is_pending()
        );
        tokio::time::sleep(timeout * 9 / 8 + Duration::from_millis(2)).await;
        assert_eq!(b.0.load(Ordering::SeqCst), 1, "latest waker not woken");
        let r = request.as_mut().poll(&mut Context::from_waker(&wb));
        assert!(matches!(r, Poll::Ready(Err(ref e)) if e.is_timeout()));
        assert_eq!(ticker.entries().len(), 0);
    }

    /// Guarantee 2/3: slots reused after removal: requests dropped, others
    /// take their slots, each still times out on its own deadline and the
    /// slab ends empty.
    #[tokio::test(start_paused = true)]
    async fn attack_slot_reuse_keeps_each_deadline() {
        let timeout = Duration::from_millis(400);
        let ticker = Ticker::start(timeout);
        let health = Health::ticked(&ticker);
        let mut v: Vec<_> = (0..64)
            .map(|_| Box::pin(health.bound(Never(Arc::default()))))
            .collect();
        for r in &mut v {
            assert!(futures::poll!(r.as_mut()).is_pending());
        }
        tokio::time::sleep(timeout / 2).await;
        // Drop every other one; new ones take their slots.
        let mut i = 0;
        v.retain(|_| {
            i += 1;
            i % 2 == 0
        });
        let mut late: Vec<_> = (0..32)
            .map(|_| Box::pin(health.bound(Never(Arc::default()))))
            .collect();
        for r in &mut late {
            assert!(futures::poll!(r.as_mut()).is_pending());
        }
        let started = Instant::now();
        for r in v {
            assert!(r.await.is_err_and(|e| e.is_timeout()));
        }
        assert!(started.elapsed() <= timeout / 2 + timeout / 8 + Duration::from_millis(2));
        // The late ones are not expired early.
        for r in &mut late {
            assert!(
                futures::poll!(r.as_mut()).is_pending(),
                "a reused slot expired early"
            );
        }
        for r in late {
            assert!(r.await.is_err_and(|e| e.is_timeout()));
        }
        assert_eq!(ticker.entries().len(), 0);
    }

    /// Guarantee 2: the client's ticker was started on a runtime that has
    /// since shut down; a request polled on another runtime never times out
    /// (redis-rs's timer ran on the polling runtime).
    #[test]
    fn attack_ticker_runtime_gone() {
        let rt_a = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ticker = rt_a.block_on(async { Ticker::start(Duration::from_millis(100)) });
        drop(rt_a);
        let rt_b = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let health = Health::ticked(&ticker);
        let r = rt_b.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), health.bound(Never(Arc::default()))).await
        });
        assert!(
            r.is_ok(),
            "the request hung: no ticker once its runtime is gone"
        );
    }

    /// Guarantee 2: one waker that panics on wake (a user's bug) kills the
    /// ticker task: every later request then never times out.
    #[tokio::test]
    async fn attack_panicking_waker_kills_ticker() {
        struct Panics;
        impl Wake for Panics {
            fn wake(self: Arc<Self>) {
                panic!("waker panics");
            }
        }
        let timeout = Duration::from_millis(80);
        let ticker = Ticker::start(timeout);
        let health = Health::ticked(&ticker);
        let mut bad = Box::pin(health.bound(Never(Arc::default())));
        let w = Waker::from(Arc::new(Panics));
        assert!(bad.as_mut().poll(&mut Context::from_waker(&w)).is_pending());
        tokio::time::sleep(timeout * 2).await;
        drop(bad);
        let r = tokio::time::timeout(timeout * 5, health.bound(Never(Arc::default()))).await;
        assert!(r.is_ok(), "a later request hung: the ticker task died");
    }

    /// Guarantee 4: the ticker wakes under its lock; a waker whose wake runs
    /// code inline that touches the ticker (drops another bounded request)
    /// self-deadlocks on the std Mutex.
    #[test]
    fn attack_inline_wake_deadlocks() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let timeout = Duration::from_millis(80);
                let ticker = Ticker::start(timeout);
                let health: &'static Arc<Health> = Box::leak(Box::new(Health::ticked(&ticker)));
                type Slot = Mutex<Option<Pin<Box<dyn Future<Output = RedisResult<u8>> + Send>>>>;
                struct DropOther(Slot);
                impl Wake for DropOther {
                    fn wake(self: Arc<Self>) {
                        self.wake_by_ref()
                    }
                    fn wake_by_ref(self: &Arc<Self>) {
                        drop(self.0.lock().unwrap().take());
                    }
                }
                let mut other: Pin<Box<dyn Future<Output = RedisResult<u8>> + Send>> =
                    Box::pin(health.bound(Never(Arc::default())));
                assert!(futures::poll!(other.as_mut()).is_pending());
                let w = Arc::new(DropOther(Mutex::new(Some(other))));
                let mut me = Box::pin(health.bound(Never(Arc::default())));
                let waker = Waker::from(w.clone());
                assert!(
                    me.as_mut()
                        .poll(&mut Context::from_waker(&waker))
                        .is_pending()
                );
                tokio::time::sleep(timeout * 3).await;
                let _ = tx.send(());
            });
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(3)).is_ok(),
            "deadlocked: woken under the ticker's lock"
        );
    }
}
