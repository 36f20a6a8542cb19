//! A request's wait bounded per connection instead of per request.
//!
//! redis-rs bounds every request of a connection that has a response
//! timeout with a timer of its own (a `tokio::time::timeout` around each
//! request). Arming and removing it was ~2,300 instructions and ~25 locked
//! instructions of an uncontended acquire+release (two requests), a tenth of
//! the client's instructions, and enough code to take the operation's hot
//! code past a 32 KB instruction cache: I1 misses per acquire+release went
//! from ~1,000 to ~290 without it (callgrind, 64 tasks, fully associative
//! 32 KB; `examples/redis_instructions.rs`).
//!
//! So a connection to one server over plain TCP is opened without one
//! ([`open`]: lockyard makes the socket and runs the connection's driver
//! task itself) and *watched* instead ([`Watched`]):
//!
//! - each request counts itself waiting while it waits for its answer (two
//!   atomic adds; a dropped request stops waiting);
//! - the socket counts the reads that brought bytes (only the driver task
//!   reads: no locked instruction);
//! - one task per client looks at its connections every eighth of the
//!   request timeout. A connection that had requests waiting and read
//!   nothing, at every look, for a whole request timeout is stalled: the
//!   task aborts its driver, which fails every request waiting on it at
//!   once, and its pool slot opens a fresh one. The requests fail as a
//!   timed-out request of redis-rs does (`io::ErrorKind::TimedOut`), and as
//!   before they are not retried as on a broken connection.
//!
//! A request on a server that stops answering therefore fails between one
//! request timeout and a quarter more after it was sent (two looks' delay).
//! Connections over TLS or a Unix socket, and a Cluster's, keep redis-rs's
//! timer. The task wakes eight times per request timeout, idle or not.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, RedisError, RedisResult};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A connection's health: whether it is broken, and, for a watched one,
/// what the stall detector reads. Shared by every [`Conn`] of the
/// connection and its pool entry.
///
/// [`Conn`]: crate::redis::conn::link::Conn
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// A request on it failed with an I/O error, or it stalled.
    pub(crate) broken: AtomicBool,
    watch: Option<Watch>,
}

#[derive(Debug, Default)]
struct Watch {
    /// Requests sent and not answered yet (a dropped one leaves too).
    waiting: AtomicU32,
    /// Reads of the socket that brought bytes (the driver task's only; its
    /// socket shares this counter, not the health, so that the health drops
    /// with the last handle of the connection).
    reads: Arc<AtomicU64>,
    /// Set by the detector before it aborts the driver.
    stalled: AtomicBool,
    /// The connection's driver task: aborted on a stall, and once the last
    /// handle of the connection is gone (as redis-rs's own connections do).
    driver: OnceLock<tokio::task::AbortHandle>,
    /// Since the detector's look that first found requests waiting with
    /// this many reads: the reads, and when (`None` while nothing waits;
    /// the detector's only).
    mark: Mutex<Option<(u64, Instant)>>,
}

impl Health {
    /// A connection nobody watches (redis-rs bounds its requests).
    pub(crate) fn unwatched() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn watched() -> Arc<Self> {
        Arc::new(Self {
            broken: AtomicBool::new(false),
            watch: Some(Watch::default()),
        })
    }

    /// Counts a request as waiting for its answer until the returned guard
    /// drops (nothing for an unwatched connection).
    pub(crate) fn waiting(&self) -> Waiting<'_> {
        if let Some(w) = &self.watch {
            w.waiting.fetch_add(1, Ordering::AcqRel);
        }
        Waiting(self.watch.as_ref())
    }

    /// A request's outcome as its caller sees it: a request that failed
    /// because the detector stopped its stalled connection timed out, as
    /// one that redis-rs's own timer bounds does.
    pub(crate) fn outcome<T>(&self, r: RedisResult<T>) -> RedisResult<T> {
        match r {
            Err(e)
                if (e.is_connection_dropped() || e.kind() == redis::ErrorKind::Io)
                    && self.is_stalled() =>
            {
                Err(timed_out())
            }
            r => r,
        }
    }

    /// Whether it is no connection to send on any more: broken, or stalled
    /// (its driver stopped). A stall is not "broken": the request that
    /// waited on it timed out, as with redis-rs's own timer, and the error
    /// paths that retry on a fresh connection when one broke do not retry
    /// it; but the pool replaces it.
    pub(crate) fn is_dead(&self) -> bool {
        self.broken.load(Ordering::Relaxed) || self.is_stalled()
    }

    fn is_stalled(&self) -> bool {
        self.watch
            .as_ref()
            .is_some_and(|w| w.stalled.load(Ordering::Acquire))
    }

    /// The detector's look at this connection at `now`: stalls it if it has
    /// had requests waiting and read nothing at every look for `timeout`.
    fn look(&self, now: Instant, timeout: Duration) {
        let Some(w) = &self.watch else {
            return;
        };
        if w.stalled.load(Ordering::Acquire) {
            return;
        }
        let reads = w.reads.load(Ordering::Acquire);
        let waiting = w.waiting.load(Ordering::Acquire) > 0;
        let mut mark = w.mark.lock().unwrap_or_else(PoisonError::into_inner);
        match *mark {
            _ if !waiting => *mark = None,
            // Waiting since an earlier look, and nothing read since.
            Some((seen, since)) if seen == reads => {
                if now.saturating_duration_since(since) >= timeout {
                    drop(mark);
                    self.stall(timeout);
                }
            }
            // The first look that finds it waiting (so after the request
            // was sent), or one after a read.
            _ => *mark = Some((reads, now)),
        }
    }

    fn stall(&self, timeout: Duration) {
        let Some(w) = &self.watch else {
            return;
        };
        tracing::warn!(
            ?timeout,
            "a Redis connection answered nothing for the request timeout; closing it (its requests time out)"
        );
        w.stalled.store(true, Ordering::Release);
        if let Some(driver) = w.driver.get() {
            driver.abort();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(driver) = self.driver.get() {
            driver.abort();
        }
    }
}

/// A request waiting for its answer (see [`Health::waiting`]).
pub(crate) struct Waiting<'a>(Option<&'a Watch>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.0 {
            w.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The error of a request whose connection stalled: redis-rs's own for a
/// request its timer ended.
fn timed_out() -> RedisError {
    io::Error::from(io::ErrorKind::TimedOut).into()
}

/// The watched connections of one client, and the task that looks at them
/// (it ends once the client has dropped this).
pub(crate) struct Watched {
    conns: Mutex<Vec<Weak<Health>>>,
    timeout: Duration,
}

impl fmt::Debug for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Watched {
    /// Starts watching (a task on the current runtime) with requests
    /// bounded by `timeout`.
    pub(crate) fn start(timeout: Duration) -> Arc<Self> {
        let watched = Arc::new(Self {
            conns: Mutex::new(Vec::new()),
            timeout,
        });
        tokio::spawn(detect(
            Arc::downgrade(&watched),
            (timeout / 8).max(MIN_TICK),
        ));
        watched
    }

    /// The request timeout it bounds requests with.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn add(&self, health: &Arc<Health>) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|h| h.strong_count() > 0);
        conns.push(Arc::downgrade(health));
    }

    /// One look at every connection.
    fn look(&self) {
        let now = Instant::now();
        let conns: Vec<Arc<Health>> = {
            let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            conns.retain(|h| h.strong_count() > 0);
            conns.iter().filter_map(Weak::upgrade).collect()
        };
        for health in conns {
            health.look(now, self.timeout);
        }
    }
}

/// The shortest pause between two looks.
const MIN_TICK: Duration = Duration::from_millis(1);

async fn detect(watched: Weak<Watched>, tick: Duration) {
    loop {
        tokio::time::sleep(tick).await;
        let Some(watched) = watched.upgrade() else {
            return;
        };
        watched.look();
    }
}

/// Opens a multiplexed connection with `config` through `client`: over
/// plain TCP without a response timeout, watched by `watched` (when given);
/// otherwise as redis-rs opens it, its requests bounded by its own timer.
///
/// # Errors
///
/// The connect's or the handshake's; a connect that takes longer than the
/// config's connection timeout fails as redis-rs's does (timed out).
///
/// # Cancel safety
///
/// Dropped, it leaves no connection behind (a driver task starts only with
/// the connection it drives).
pub(crate) async fn open(
    client: &redis::Client,
    config: &AsyncConnectionConfig,
    connect_timeout: Option<Duration>,
    watched: Option<&Arc<Watched>>,
) -> RedisResult<(MultiplexedConnection, Arc<Health>)> {
    let info = client.get_connection_info();
    let (Some(watched), ConnectionAddr::Tcp(host, port)) = (watched, info.addr()) else {
        let conn = client
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        return Ok((conn, Health::unwatched()));
    };
    let connect = async {
        let stream = TcpStream::connect((host.as_str(), *port)).await?;
        stream.set_nodelay(info.tcp_settings().nodelay())?;
        let health = Health::watched();
        let stream = Metered {
            inner: stream,
            reads: health
                .watch
                .as_ref()
                .map_or_else(Arc::default, |w| w.reads.clone()),
        };
        let config = config.clone().set_response_timeout(None);
        let (conn, driver) =
            MultiplexedConnection::new_with_config(info.redis_settings(), stream, config).await?;
        let driver = tokio::spawn(driver);
        if let Some(w) = &health.watch {
            let _ = w.driver.set(driver.abort_handle());
        }
        watched.add(&health);
        Ok((conn, health))
    };
    match connect_timeout {
        Some(limit) => tokio::time::timeout(limit, connect)
            .await
            .unwrap_or_else(|_| Err(timed_out())),
        None => connect.await,
    }
}

/// A socket that counts its reads for the stall detector.
struct Metered {
    inner: TcpStream,
    reads: Arc<AtomicU64>,
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            // Only the driver task reads: a plain increment.
            let reads = &self.reads;
            reads.store(reads.load(Ordering::Relaxed) + 1, Ordering::Release);
        }
        r
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_stalls_only_after_waiting_a_whole_timeout_without_reading() {
        let timeout = Duration::from_millis(400);
        let h = Health::watched();
        let look = |h: &Health| h.look(Instant::now(), timeout);
        // Idle: never stalled, however long.
        look(&h);
        tokio::time::advance(timeout * 3).await;
        look(&h);
        assert!(!h.is_stalled());
        // A request waits; reads keep coming: not stalled.
        let waiting = h.waiting();
        for _ in 0..6 {
            tokio::time::advance(timeout / 2).await;
            if let Some(w) = &h.watch {
                w.reads.fetch_add(1, Ordering::Relaxed);
            }
            look(&h);
        }
        assert!(!h.is_stalled());
        // No read any more: stalled once a whole timeout has passed.
        tokio::time::advance(timeout / 2).await;
        look(&h);
        assert!(!h.is_stalled(), "stalled after half the timeout");
        tokio::time::advance(timeout / 2).await;
        look(&h);
        assert!(h.is_stalled() && h.is_dead());
        assert!(!h.broken.load(Ordering::Acquire), "a stall is a timeout");
        drop(waiting);
        // The requests that fail there time out.
        let r: RedisResult<()> = h.outcome(Err(io::Error::from(io::ErrorKind::BrokenPipe).into()));
        assert!(r.is_err_and(|e| e.is_timeout()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_request_stops_waiting() {
        let timeout = Duration::from_millis(400);
        let h = Health::watched();
        drop(h.waiting());
        h.look(Instant::now(), timeout);
        tokio::time::advance(timeout * 2).await;
        h.look(Instant::now(), timeout);
        assert!(!h.is_stalled());
        // An unwatched connection never stalls and counts nothing.
        let u = Health::unwatched();
        let _w = u.waiting();
        u.look(Instant::now(), timeout);
        tokio::time::advance(timeout * 2).await;
        u.look(Instant::now(), timeout);
        assert!(!u.is_stalled());
    }
}
