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
//! acquire+release by name: 22,609 instructions with the timer, 21,305
//! with the ticker; I1 misses (32 KB, 8-way) 743 and 566.
//!
//! The ticker's task runs on the runtime the client connected on, as the
//! watchdog's does: a client used after that runtime is gone has neither.
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
                ticker.entries().remove(slot);
            }
            return Poll::Ready(r);
        }
        let Some(ticker) = *this.ticker else {
            return Poll::Pending;
        };
        let mut entries = ticker.entries();
        match *this.slot {
            None => {
                *this.slot = Some(entries.insert(Entry {
                    deadline: Instant::now() + ticker.timeout,
                    waker: cx.waker().clone(),
                    expired: false,
                }));
            }
            Some(slot) => match entries.get_mut(slot) {
                Some(e) if e.expired => {
                    entries.remove(slot);
                    *this.slot = None;
                    return Poll::Ready(Err(timed_out()));
                }
                Some(e) => {
                    if !e.waker.will_wake(cx.waker()) {
                        e.waker = cx.waker().clone();
                    }
                }
                // Not reached: only this request removes its slot.
                None => *this.slot = None,
            },
        }
        Poll::Pending
    }
}

#[pin_project::pinned_drop]
impl<F> PinnedDrop for Bounded<'_, F> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        if let (Some(ticker), Some(slot)) = (*this.ticker, this.slot.take()) {
            ticker.entries().remove(slot);
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
        let ticker = Arc::new(Self {
            entries: Mutex::new(slab::Slab::new()),
            timeout,
        });
        let tick = (timeout / 8).max(MIN_TICK);
        tokio::spawn(run(Arc::downgrade(&ticker), tick));
        ticker
    }

    /// The request timeout it bounds requests with.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn entries(&self) -> MutexGuard<'_, slab::Slab<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One look: marks and wakes every request whose deadline passed by
    /// `now`.
    fn look(&self, now: Instant) {
        let mut entries = self.entries();
        for (_, e) in entries.iter_mut() {
            if !e.expired && e.deadline <= now {
                e.expired = true;
                e.waker.wake_by_ref();
            }
        }
        // A burst of requests leaves a large slab behind: give it back once
        // it is mostly empty.
        if entries.capacity() > KEEP_SLOTS && entries.len() < entries.capacity() / 4 {
            entries.shrink_to_fit();
        }
    }
}

/// The shortest pause between two looks.
const MIN_TICK: Duration = Duration::from_millis(1);

/// Below this many slots the slab is left as it is.
const KEEP_SLOTS: usize = 1024;

async fn run(ticker: Weak<Ticker>, tick: Duration) {
    loop {
        tokio::time::sleep(tick).await;
        let Some(ticker) = ticker.upgrade() else {
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
}
