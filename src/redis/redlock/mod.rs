//! [`Redlock`]: one lock over N independent Redis servers, held when a
//! majority granted it (the Redlock algorithm as described at
//! <https://redis.io/docs/latest/develop/use/patterns/distributed-locks/>).
//!
//! The type's docs say how it works and what it promises.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use tokio::time::Instant;

use crate::error::LockError;
use crate::guard::LockGuard;
use crate::lock::Lock;
use crate::lost::Moment;
use crate::options::{AcquireOptions, Deadline, Mode};
use crate::redis::conn::pool::Conn;
use crate::redis::context::ops::PlainLock;
use crate::redis::lease::grant_end;
use crate::redis::options::RedisOptions;
use crate::redis::protocol::keys::validate_name;
use crate::redis::protocol::token;
use crate::redis::{RedisLocks, RedisStats};
use crate::stats::{self, Acquisition, Backend};

mod guard;
mod quorum;

pub use guard::RedlockGuard;
use guard::RedlockHold;

/// Options of a [`Redlock`]: the per-server client options and the
/// algorithm's knobs.
///
/// ```
/// use std::time::Duration;
/// use lockyard::redis::{RedisOptions, RedlockOptions};
///
/// let opts = RedlockOptions::new()
///     .redis(RedisOptions::default())
///     .drift(Duration::from_millis(50))
///     .retry_delay(Duration::from_millis(100));
/// assert_eq!(opts.drift, Some(Duration::from_millis(50)));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedlockOptions {
    /// Options for each server's client (TTL, key prefix, timeouts). The
    /// TTL is the lock's TTL.
    pub redis: RedisOptions,
    /// The clock-drift allowance subtracted from the validity; `None`
    /// (default): `ttl/100 + 2 ms`, as the Redlock description suggests.
    pub drift: Option<Duration>,
    /// Mean random delay between attempts while the lock is busy (default
    /// 100 ms); each delay is uniform in `[delay/2, 3·delay/2]` so that
    /// competing clients do not retry in lockstep.
    pub retry_delay: Duration,
}

impl Default for RedlockOptions {
    fn default() -> Self {
        Self {
            redis: RedisOptions::default(),
            drift: None,
            retry_delay: Duration::from_millis(100),
        }
    }
}

impl RedlockOptions {
    /// The defaults.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::redis::RedlockOptions;
    ///
    /// let opts = RedlockOptions::new();
    /// assert_eq!((opts.drift, opts.retry_delay), (None, Duration::from_millis(100)));
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the per-server client options.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::redis::{RedisOptions, RedlockOptions};
    ///
    /// // The TTL of the per-server clients is the Redlock's TTL.
    /// let opts = RedlockOptions::new().redis(RedisOptions::new().ttl(Duration::from_secs(10)));
    /// assert_eq!(opts.redis.ttl, Duration::from_secs(10));
    /// ```
    pub fn redis(mut self, redis: RedisOptions) -> Self {
        self.redis = redis;
        self
    }

    /// Sets the clock-drift allowance.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::redis::RedlockOptions;
    ///
    /// let opts = RedlockOptions::new().drift(Duration::from_millis(20));
    /// assert_eq!(opts.drift, Some(Duration::from_millis(20)));
    /// ```
    pub fn drift(mut self, drift: Duration) -> Self {
        self.drift = Some(drift);
        self
    }

    /// Sets the mean delay between attempts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::redis::RedlockOptions;
    ///
    /// // Busy locks are retried every 25-75 ms (uniform around 50 ms).
    /// let opts = RedlockOptions::new().retry_delay(Duration::from_millis(50));
    /// assert_eq!(opts.retry_delay, Duration::from_millis(50));
    /// ```
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }
}

/// A lock held on a majority of N independent Redis servers.
///
/// Read on for when (not) to use it. Cloning is cheap.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::time::Duration;
/// use lockyard::redis::{RedisOptions, Redlock};
///
/// let redlock = Redlock::connect(
///     &["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"],
///     RedisOptions::default(),
/// )
/// .await?;
/// let guard = redlock.acquire("nightly-report", Duration::from_secs(5)).await?;
/// guard.run_until_lost(async { /* work */ }).await?;
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
///
/// # When to use it, and what it cannot promise
///
/// Use Redlock when the lock must survive the loss of a minority of Redis
/// servers *and* you can live with the lock being an efficiency measure
/// (avoiding duplicate work), not a correctness guarantee. Read Martin
/// Kleppmann's critique, "How to do distributed locking" (2016), and the
/// reply by Redis' author before relying on it:
///
/// - **Timing assumptions.** Redlock is safe only if processes pause, and
///   clocks drift, by much less than the TTL. A GC pause, swap or `SIGSTOP`
///   longer than the validity lets two holders overlap; [`lost`] fires as
///   soon as this client can tell, which may be after the fact.
/// - **No true fencing token.** Each server has its own counter, and the
///   majorities of two successive holders need not overlap on the server
///   with the highest counter, so the maximum over the granting servers
///   (offered as [`best_effort_fencing_token`]) can *go backwards*. A
///   storage layer that must reject stale writers needs a token from a
///   consensus system (etcd, ZooKeeper), not from Redlock. For that reason
///   the type-erased [`LockGuard`]'s `fencing_token()` is `None` here.
/// - **Restarts without persistence.** A server that restarts empty forgets
///   the lock; if that server was part of the majority, a second client can
///   get a majority. Run the servers with `appendfsync always`, or keep a
///   restarted server out for one TTL ("delayed restart").
/// - **No semaphores or RW locks.** Counting holders needs one source of
///   truth; lockyard offers [`RedisSemaphore`](crate::redis::RedisSemaphore) and
///   [`RedisRwLock`](crate::redis::RedisRwLock) on one server (or one Cluster) only.
///
/// If one Redis server (with a replica and failover) or a Redis Cluster is
/// enough for you, use a plain [`RedisLock`](crate::redis::RedisLock): it is
/// simpler, faster, and its fencing tokens do increase strictly while the
/// server keeps its data. What replication can and cannot promise there:
/// replication is asynchronous, so a master that fails right after a grant
/// can take the grant with it, and the promoted replica may grant the lock
/// again before the first holder's next renewal tells it (its [`lost`]
/// fires then). [`RedisOptions::wait_for_replicas`] (`WAIT` after every
/// grant and renewal) closes most of that window: no guard is returned for
/// a grant the replicas did not confirm; but `WAIT` does not make
/// replication synchronous (a replica that confirmed need not be the one
/// promoted). Redlock's independent servers avoid trusting replication at
/// the price of the timing assumptions above.
///
/// # The algorithm
///
/// An attempt sends the core's plain acquire script (`SET NX PX` + the
/// per-server fencing `INCR`) with one fresh token to every server at once
/// and waits for all answers (each bounded by a short per-server timeout).
/// It holds the lock when at least `N/2 + 1` servers granted it *and* the
/// validity `ttl − elapsed − drift` is still positive, where
/// `drift = ttl/100 + 2 ms` (configurable). Otherwise it releases on every
/// server (a grant whose reply was lost included) and, if the servers were
/// merely busy, retries after a random delay until the deadline
/// ([`LockError::Timeout`]). If so many servers failed that a majority is
/// out of reach, it stops at once with [`LockError::NoQuorum`], which
/// carries the servers' errors.
///
/// The guard stands on the lease core: each granting server's grant is a
/// lease of that server's client, like any lock's, renewed in its
/// watchdog's batches (one round trip per server per period for all the
/// guards of a process) under the one validity rule (counted from each
/// request's send time). The guard's validity is the majority's: the
/// latest moment until which at least `N/2 + 1` of the leases are
/// certainly valid. [`lost`] fires when that passes, or at once when too
/// many servers say the token is no longer theirs; the state is suspect
/// while fewer than a majority's renewals go through. No task per guard:
/// the watchdogs report every change to the guard's quorum. Release (and
/// drop, in the background) deletes the key on every server.
///
/// [`lost`]: RedlockGuard::lost
/// [`best_effort_fencing_token`]: RedlockGuard::best_effort_fencing_token
#[derive(Clone)]
pub struct Redlock {
    inner: Arc<RedlockInner>,
}

struct RedlockInner {
    servers: Vec<Server>,
    /// Options for connecting a server that was down at connect time.
    redis: RedisOptions,
    quorum: usize,
    ttl: Duration,
    drift: Duration,
    /// The drift the options set (`None`: [`default_drift`] of each TTL).
    drift_setting: Option<Duration>,
    retry_delay: Duration,
}

/// One of the servers. A server that was down when the [`Redlock`] was
/// built is connected on first use (each attempt tries again), so it rejoins
/// when it comes back.
struct Server {
    url: Option<String>,
    client: tokio::sync::OnceCell<RedisLocks>,
}

impl Server {
    fn connected(client: RedisLocks) -> Self {
        Self {
            url: None,
            client: tokio::sync::OnceCell::new_with(Some(client)),
        }
    }
}

impl RedlockInner {
    /// Server `s`'s client, connecting it first if it was down so far.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled connect is retried next time.
    async fn client<'a>(&self, s: &'a Server) -> Result<&'a RedisLocks, LockError> {
        match &s.url {
            Some(url) => {
                s.client
                    .get_or_try_init(|| RedisLocks::connect_with(url, self.redis.clone()))
                    .await
            }
            None => s.client.get().ok_or_else(|| LockError::InvalidArgument {
                what: "Redlock server",
                reason: "a server without a client or URL".to_owned(),
            }),
        }
    }

    /// How many servers there are.
    fn total(&self) -> usize {
        self.servers.len()
    }

    /// The clock-drift allowance for a lease of `ttl`: the options' drift,
    /// or the description's default for that TTL.
    fn drift_for(&self, ttl: Duration) -> Duration {
        self.drift_setting.unwrap_or_else(|| default_drift(ttl))
    }
}

/// What one acquisition attempt got.
struct Outcome {
    /// Per server: `Some(fencing)` if it granted the lock.
    grants: Vec<Option<u64>>,
    /// Errors of the servers that failed (not merely busy).
    errors: Vec<LockError>,
    /// When the attempt was sent.
    started: Moment,
}

impl Redlock {
    /// Connects to every server in `urls` (at least one; three or five
    /// recommended; no URL twice), with one client per server.
    ///
    /// Fails with [`LockError::InvalidArgument`] for an empty list, a
    /// duplicate or a malformed URL, and with [`LockError::NoQuorum`] when
    /// fewer than a majority can be reached. A server that is down does not
    /// make it fail otherwise: every later attempt tries to connect it again
    /// (bounded by the per-server timeout, a tenth of the TTL), so it
    /// rejoins when it comes back.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisOptions, Redlock};
    ///
    /// let urls = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"];
    /// let redlock = Redlock::connect(&urls, RedisOptions::default()).await?;
    /// assert_eq!((redlock.servers(), redlock.quorum()), (3, 2));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidArgument`] for an empty list, a duplicate or a malformed URL; [`LockError::NoQuorum`] when fewer than a majority of the servers can be reached.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future drops the clients made so far.
    pub async fn connect<S: AsRef<str>>(
        urls: &[S],
        options: RedisOptions,
    ) -> Result<Redlock, LockError> {
        Self::connect_with(urls, RedlockOptions::new().redis(options)).await
    }

    /// As [`connect`](Self::connect), with Redlock options.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::redis::{RedisOptions, Redlock, RedlockOptions};
    ///
    /// let urls = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"];
    /// let opts = RedlockOptions::new()
    ///     .redis(RedisOptions::new().ttl(Duration::from_secs(10)))
    ///     .retry_delay(Duration::from_millis(50));
    /// let redlock = Redlock::connect_with(&urls, opts).await?;
    /// # drop(redlock);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), and [`LockError::InvalidArgument`] for options the servers' clients refuse.
    ///
    /// # Cancel safety
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with<S: AsRef<str>>(
        urls: &[S],
        options: RedlockOptions,
    ) -> Result<Redlock, LockError> {
        let mut seen = std::collections::HashSet::new();
        for url in urls {
            let url = url.as_ref().trim_end_matches('/');
            if !seen.insert(url.to_owned()) {
                return Err(LockError::InvalidArgument {
                    what: "Redlock server list",
                    reason: format!(
                        "{url} is listed twice; the servers must be independent or a \
                         majority means nothing"
                    ),
                });
            }
        }
        let connects = urls
            .iter()
            .map(|url| RedisLocks::connect_with(url.as_ref(), options.redis.clone()));
        let mut servers = Vec::with_capacity(urls.len());
        let mut errors = Vec::new();
        for (result, url) in join_all(connects).await.into_iter().zip(urls) {
            let client = tokio::sync::OnceCell::new();
            match result {
                Ok(c) => {
                    let _ = client.set(c);
                }
                Err(e) if e.is_invalid_input() => return Err(e),
                Err(e) => errors.push(e),
            }
            servers.push(Server {
                url: Some(url.as_ref().to_owned()),
                client,
            });
        }
        let total = urls.len();
        let up = total - errors.len();
        if total > 0 && up < total / 2 + 1 {
            return Err(LockError::NoQuorum {
                resource: String::new(),
                granted: up,
                needed: total / 2 + 1,
                total,
                errors,
            });
        }
        Self::build(servers, options)
    }

    /// A Redlock over clients you built (one per independent server; the
    /// same server twice would fake a majority). Their TTL is the lock's;
    /// `options.redis` is not used.
    ///
    /// No server is needed to build it from lazy clients:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisLocks, RedisOptions, Redlock, RedlockOptions};
    ///
    /// let clients = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"]
    ///     .into_iter()
    ///     .map(|url| RedisLocks::connect_lazy(url, RedisOptions::default()))
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// let redlock = Redlock::from_clients(clients, RedlockOptions::default())?;
    /// assert_eq!(redlock.servers(), 3);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidArgument`] for an empty list, or a drift that leaves no validity out of the TTL.
    pub fn from_clients(
        servers: Vec<RedisLocks>,
        mut options: RedlockOptions,
    ) -> Result<Redlock, LockError> {
        if let Some(first) = servers.first() {
            options.redis = first.options().clone();
        }
        Self::build(
            servers.into_iter().map(Server::connected).collect(),
            options,
        )
    }

    fn build(servers: Vec<Server>, options: RedlockOptions) -> Result<Redlock, LockError> {
        let total = servers.len();
        if total == 0 {
            return Err(LockError::InvalidArgument {
                what: "Redlock server list",
                reason: "at least one server is needed".to_owned(),
            });
        }
        let ttl = options.redis.ttl;
        let drift = options.drift.unwrap_or_else(|| default_drift(ttl));
        if drift >= ttl {
            return Err(LockError::InvalidArgument {
                what: "Redlock drift",
                reason: format!("drift {drift:?} leaves no validity out of a TTL of {ttl:?}"),
            });
        }
        Ok(Redlock {
            inner: Arc::new(RedlockInner {
                servers,
                redis: options.redis,
                quorum: total / 2 + 1,
                ttl,
                drift,
                drift_setting: options.drift,
                retry_delay: options.retry_delay,
            }),
        })
    }

    /// How many servers must grant the lock: `N/2 + 1`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisLocks, RedisOptions, Redlock, RedlockOptions};
    ///
    /// let clients = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"]
    ///     .into_iter()
    ///     .map(|url| RedisLocks::connect_lazy(url, RedisOptions::default()))
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// let redlock = Redlock::from_clients(clients, RedlockOptions::default())?;
    /// assert_eq!(redlock.quorum(), 2); // 3 / 2 + 1
    /// # Ok(())
    /// # }
    /// ```
    pub fn quorum(&self) -> usize {
        self.inner.quorum
    }

    /// How many servers there are (reachable or not at connect time).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisLocks, RedisOptions, Redlock, RedlockOptions};
    ///
    /// let clients = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"]
    ///     .into_iter()
    ///     .map(|url| RedisLocks::connect_lazy(url, RedisOptions::default()))
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// let redlock = Redlock::from_clients(clients, RedlockOptions::default())?;
    /// assert_eq!(redlock.servers(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn servers(&self) -> usize {
        self.inner.total()
    }

    /// The watchdog counters of every connected server's client, summed: a
    /// Redlock guard holds one lease on each granting server, renewed in
    /// that server's watchdog batches with every other lease of the
    /// client, so a thousand guards cost a round trip per server per
    /// renewal period, not a thousand.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisOptions, Redlock};
    ///
    /// let urls = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"];
    /// let redlock = Redlock::connect(&urls, RedisOptions::default()).await?;
    /// let s = redlock.stats();
    /// println!("{} renewals in {} round trips", s.renewals, s.renewal_round_trips);
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> RedisStats {
        let mut sum = RedisStats::default();
        for s in self.inner.servers.iter().filter_map(|s| s.client.get()) {
            let one = s.stats();
            sum.held += one.held;
            sum.renewal_round_trips += one.renewal_round_trips;
            sum.renewals += one.renewals;
            sum.lost += one.lost;
        }
        sum
    }

    /// A [`Lock`] handle to `name` (exclusive only:
    /// [`Mode::Shared`] fails with [`LockError::Unsupported`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::Lock;
    /// use lockyard::redis::{RedisLocks, RedisOptions, Redlock, RedlockOptions};
    ///
    /// let clients = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"]
    ///     .into_iter()
    ///     .map(|url| RedisLocks::connect_lazy(url, RedisOptions::default()))
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// let redlock = Redlock::from_clients(clients, RedlockOptions::default())?;
    /// let lock = redlock.lock("compaction")?;
    /// assert_eq!(lock.name(), "compaction");
    /// assert!(redlock.lock("").unwrap_err().is_invalid_input());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for a name the clients refuse.
    pub fn lock(&self, name: &str) -> Result<RedlockLock, LockError> {
        self.check_name(name)?;
        Ok(RedlockLock {
            redlock: self.clone(),
            name: name.to_owned(),
        })
    }

    /// Acquires `name` on a majority, retrying while it is busy until
    /// `timeout` ([`LockError::Timeout`]); [`LockError::NoQuorum`] as soon
    /// as too many servers fail for a majority to be possible.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::redis::{RedisOptions, Redlock};
    ///
    /// let urls = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"];
    /// let redlock = Redlock::connect(&urls, RedisOptions::default()).await?;
    /// let guard = redlock.acquire("compaction", Duration::from_secs(5)).await?;
    /// guard.run_until_lost(async { /* the compaction */ }).await?;
    /// guard.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] if no majority could be had before `timeout`; [`LockError::NoQuorum`] when too many servers failed to answer for a majority to be possible; [`LockError::InvalidName`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the guard-contract sense: if the future is dropped
    /// during an attempt, the attempt's `SET`s may still land on servers
    /// after the drop; a background task deletes them with the attempt's own
    /// token (and they expire after the TTL if that fails).
    pub async fn acquire(&self, name: &str, timeout: Duration) -> Result<RedlockGuard, LockError> {
        self.acquire_until(name, &Deadline::after(Some(timeout)), false)
            .await
    }

    /// Acquires `name`, waiting as `options.timeout` says (`None`: for
    /// ever). [`Mode::Shared`] fails with [`LockError::Unsupported`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{AcquireOptions, LockError};
    /// use lockyard::redis::{RedisOptions, Redlock};
    ///
    /// let urls = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"];
    /// let redlock = Redlock::connect(&urls, RedisOptions::default()).await?;
    /// let guard = redlock.acquire_with("compaction", &AcquireOptions::new().wait_forever()).await?;
    /// // No shared mode on a Redlock:
    /// let shared = redlock.acquire_with("index", &AcquireOptions::shared()).await;
    /// assert!(matches!(shared, Err(LockError::Unsupported { .. })));
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Unsupported`] for [`Mode::Shared`]; otherwise as [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_with(
        &self,
        name: &str,
        options: &AcquireOptions,
    ) -> Result<RedlockGuard, LockError> {
        if options.mode == Mode::Shared {
            return Err(LockError::Unsupported {
                resource: name.to_owned(),
                what: "a shared Redlock",
            });
        }
        self.acquire_until(name, &Deadline::after(options.timeout), false)
            .await
    }

    /// One attempt: the lock or [`LockError::WouldBlock`] (or
    /// [`LockError::NoQuorum`] when too many servers fail).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisOptions, Redlock};
    ///
    /// let urls = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"];
    /// let redlock = Redlock::connect(&urls, RedisOptions::default()).await?;
    /// match redlock.try_acquire("compaction").await {
    ///     Ok(guard) => guard.release().await?,
    ///     Err(e) if e.is_would_block() => println!("another node compacts"),
    ///     Err(e) => return Err(e), // e.g. NoQuorum: too many servers down
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] if no majority was free; [`LockError::NoQuorum`] when too many servers failed; [`LockError::InvalidName`].
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn try_acquire(&self, name: &str) -> Result<RedlockGuard, LockError> {
        self.acquire_until(name, &Deadline::after(Some(Duration::ZERO)), true)
            .await
    }

    /// Whether a majority of the servers say `name` is held. Fails with
    /// [`LockError::NoQuorum`] when too few servers answer to say.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisOptions, Redlock};
    ///
    /// let urls = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"];
    /// let redlock = Redlock::connect(&urls, RedisOptions::default()).await?;
    /// if !redlock.is_locked("compaction").await? {
    ///     println!("nobody compacts right now");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::NoQuorum`] when too few servers answer to say; [`LockError::InvalidName`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn is_locked(&self, name: &str) -> Result<bool, LockError> {
        self.check_name(name)?;
        let i = &self.inner;
        let per_server = per_server_timeout(i.ttl);
        let answers = join_all(i.servers.iter().map(|s| async move {
            tokio::time::timeout(per_server, async move {
                i.client(s).await?.is_locked(name).await
            })
            .await
            .unwrap_or_else(|_| Err(server_timeout(name, "check", per_server)))
        }))
        .await;
        let mut held = 0;
        let mut free = 0;
        let mut errors = Vec::new();
        for answer in answers {
            match answer {
                Ok(true) => held += 1,
                Ok(false) => free += 1,
                Err(e) => errors.push(e),
            }
        }
        if held >= i.quorum {
            Ok(true)
        } else if held + free >= i.quorum {
            Ok(false)
        } else {
            Err(LockError::NoQuorum {
                resource: name.to_owned(),
                granted: held + free,
                needed: i.quorum,
                total: i.total(),
                errors,
            })
        }
    }

    fn check_name(&self, name: &str) -> Result<(), LockError> {
        validate_name(name)
    }

    async fn acquire_until(
        &self,
        name: &str,
        deadline: &Deadline,
        try_once: bool,
    ) -> Result<RedlockGuard, LockError> {
        // Every Redlock acquisition is counted here.
        let attempt = stats::site(Backend::Redlock, name).begin();
        let result = self.rounds_until(name, deadline, try_once, &attempt).await;
        attempt.record(result, |g, held| g.held.stats = Some(held))
    }

    async fn rounds_until(
        &self,
        name: &str,
        deadline: &Deadline,
        try_once: bool,
        attempt: &Acquisition,
    ) -> Result<RedlockGuard, LockError> {
        self.check_name(name)?;
        let i = &self.inner;
        let total = i.total();
        let mut logged = false;
        loop {
            let token = token::fresh_value(name, Mode::Exclusive)?;
            // Armed until the attempt's outcome is known: a dropped future
            // still deletes whatever its SETs took.
            let mut cleanup = Cleanup::new(&self.inner, name, &token);
            let outcome = self.attempt(name, &token, &cleanup.conns).await;
            let granted = outcome.grants.iter().flatten().count();
            let validity = outcome.validity(i.ttl, i.drift);
            if granted >= i.quorum && !validity.is_zero() {
                let grants = outcome
                    .grants
                    .iter()
                    .zip(&i.servers)
                    .map(|(grant, server)| Some((server.client.get()?.ctx.clone(), (*grant)?)))
                    .collect();
                if let Some(held) =
                    RedlockHold::new(&self.inner, name, &token, grants, outcome.started)
                {
                    cleanup.disarm();
                    return Ok(RedlockGuard { held });
                }
                // A majority's validity ran out while the holds were being
                // registered: undone below, as a refused attempt.
            }
            // Release everywhere now, including servers whose reply was
            // lost, before deciding what to tell the caller. The cleanup
            // stays armed until that is done: if this future is dropped
            // during the release, a minority grant must not be left to its
            // TTL (the release is a compare-and-delete, so repeating it in
            // the background is harmless).
            let conns = cleanup
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            release_all(&self.inner, name, &token, conns).await;
            cleanup.disarm();
            let failed = outcome.errors.len();
            if failed > total - i.quorum {
                tracing::warn!(
                    resource = name,
                    granted,
                    failed,
                    total,
                    "Redlock: too many servers failed for a majority"
                );
                return Err(LockError::NoQuorum {
                    resource: name.to_owned(),
                    granted,
                    needed: i.quorum,
                    total,
                    errors: outcome.errors,
                });
            }
            attempt.contended();
            if try_once {
                return Err(LockError::WouldBlock {
                    resource: name.to_owned(),
                    holder: None,
                });
            }
            if deadline.expired() {
                tracing::info!(resource = name, waited = ?deadline.elapsed(), "Redlock: gave up waiting");
                return Err(LockError::Timeout {
                    resource: name.to_owned(),
                    waited: deadline.elapsed(),
                    holder: None,
                });
            }
            if !logged {
                tracing::debug!(
                    resource = name,
                    granted,
                    failed,
                    total,
                    "Redlock: busy, retrying"
                );
                logged = true;
            }
            tokio::select! {
                () = tokio::time::sleep(jitter(i.retry_delay)) => {}
                () = deadline.sleep() => {}
            }
        }
    }

    /// Sends the acquire script to every server at once.
    ///
    /// Each server's connection is recorded in `conns` before its request
    /// is sent, so that a cleanup goes over the same connection and runs
    /// after the request even if this future is dropped mid-flight.
    async fn attempt(&self, name: &str, token: &str, conns: &AttemptConns) -> Outcome {
        let i = &self.inner;
        let started = Moment::now();
        let per_server = per_server_timeout(i.ttl);
        let answers = join_all(i.servers.iter().enumerate().map(|(n, server)| async move {
            match tokio::time::timeout(per_server, async {
                let client = i.client(server).await?;
                // A client shut down renews nothing: its server is out.
                client.ctx.check_open(name)?;
                let mut conn = client.ctx.conn(name, "acquire").await?;
                conns.lock().unwrap_or_else(|e| e.into_inner())[n] = Some(conn.clone());
                PlainLock::new(&client.ctx, name, token)
                    .acquire_on(&mut conn, i.ttl)
                    .await
            })
            .await
            {
                Ok(answer) => answer,
                Err(_) => Err(server_timeout(name, "acquire", per_server)),
            }
        }))
        .await;
        let mut grants = Vec::with_capacity(answers.len());
        let mut errors = Vec::new();
        for answer in answers {
            match answer {
                Ok(grant) => grants.push(grant),
                Err(e) => {
                    grants.push(None);
                    errors.push(e);
                }
            }
        }
        Outcome {
            grants,
            errors,
            started,
        }
    }
}

impl Outcome {
    /// What is left of the grant's validity (`ttl − elapsed − drift`, the
    /// lease core's rule, invariant 1), zero when nothing is.
    fn validity(&self, ttl: Duration, drift: Duration) -> Duration {
        grant_end(self.started, ttl, drift)
            .at
            .saturating_duration_since(Instant::now())
    }
}

/// The Redlock description's drift allowance: 1 % of the TTL plus 2 ms.
fn default_drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// How long one server may take to answer: a slow server must not eat the
/// validity (the description suggests a timeout much smaller than the TTL).
fn per_server_timeout(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(5))
}

fn server_timeout(name: &str, op: &'static str, after: Duration) -> LockError {
    LockError::Unavailable {
        resource: name.to_owned(),
        op,
        source: Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {after:?}"),
        )),
    }
}

/// A uniformly random delay in `[mean/2, 3·mean/2]`.
fn jitter(mean: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    // Without randomness the delay is just the mean: still correct.
    let r = match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes) as f64 / u64::MAX as f64,
        Err(_) => 0.5,
    };
    mean.mul_f64(0.5 + r)
}

/// Per server, the connection an attempt's request went over (if it got
/// that far).
type AttemptConns = std::sync::Mutex<Vec<Option<Conn>>>;

/// Deletes `token`'s key on every server (each bounded by the per-server
/// timeout), on the attempt's connection where there is one; outcomes are
/// ignored.
async fn release_all(inner: &RedlockInner, name: &str, token: &str, conns: Vec<Option<Conn>>) {
    let per_server = per_server_timeout(inner.ttl);
    join_all(inner.servers.iter().zip(conns).map(|(server, conn)| {
        tokio::time::timeout(per_server, async move {
            let client = inner.client(server).await?;
            let lock = PlainLock::new(&client.ctx, name, token);
            match conn {
                Some(mut conn) => lock.release_on(&mut conn).await,
                None => lock.release().await,
            }
        })
    }))
    .await;
}

/// Releases an attempt's token everywhere in the background if dropped
/// armed.
struct Cleanup {
    inner: Option<Arc<RedlockInner>>,
    name: String,
    token: String,
    conns: AttemptConns,
}

impl Cleanup {
    fn new(inner: &Arc<RedlockInner>, name: &str, token: &str) -> Self {
        Self {
            conns: std::sync::Mutex::new(vec![None; inner.total()]),
            inner: Some(inner.clone()),
            name: name.to_owned(),
            token: token.to_owned(),
        }
    }

    fn disarm(&mut self) {
        self.inner = None;
    }

    fn take_conns(&mut self) -> Vec<Option<Conn>> {
        std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let conns = self.take_conns();
            spawn_release_all(
                inner,
                std::mem::take(&mut self.name),
                std::mem::take(&mut self.token),
                conns,
            );
        }
    }
}

/// Background release on every connected server, each through its client's
/// background releases (so that [`RedisLocks::shutdown`] waits for it), on
/// the attempt's connection where there is one; without a runtime the keys
/// expire by their TTL.
fn spawn_release_all(
    inner: Arc<RedlockInner>,
    name: String,
    token: String,
    conns: Vec<Option<Conn>>,
) {
    let mut conns = conns.into_iter();
    let token: Arc<str> = token.into();
    let name: Arc<str> = name.into();
    for server in &inner.servers {
        let conn = conns.next().flatten();
        // A server never connected was sent nothing.
        let Some(client) = server.client.get() else {
            continue;
        };
        let keys = client.ctx.resource_keys(&name);
        client.ctx.spawn_release(
            name.clone(),
            crate::redis::protocol::scripts::RELEASE.get(client.is_cluster()),
            Arc::from(vec![keys.lock.clone()]),
            Arc::new([token.clone(), keys.channel.clone()]),
            conn,
            (),
        );
    }
}

impl fmt::Debug for Redlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redlock")
            .field("servers", &self.inner.total())
            .field("quorum", &self.inner.quorum)
            .field("ttl", &self.inner.ttl)
            .field("drift", &self.inner.drift)
            .finish()
    }
}

/// A [`Lock`] handle to one name on a [`Redlock`]; from [`Redlock::lock`].
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::sync::Arc;
/// use lockyard::{AcquireOptions, AsyncLockManager};
/// use lockyard::redis::{RedisOptions, Redlock};
///
/// let urls = ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"];
/// let redlock = Redlock::connect(&urls, RedisOptions::default()).await?;
/// let manager = AsyncLockManager::new();
/// manager.register("compaction", Arc::new(redlock.lock("compaction")?))?;
/// let guard = manager.acquire("compaction", &AcquireOptions::exclusive()).await?;
/// # drop(guard);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RedlockLock {
    redlock: Redlock,
    name: String,
}

#[async_trait]
impl Lock for RedlockLock {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> crate::stats::Backend {
        crate::stats::Backend::Redlock
    }

    async fn lock(&self, options: &AcquireOptions) -> Result<LockGuard, LockError> {
        Ok(self.redlock.acquire_with(&self.name, options).await?.into())
    }

    async fn try_lock(&self, mode: Mode) -> Result<LockGuard, LockError> {
        if mode == Mode::Shared {
            return Err(LockError::Unsupported {
                resource: self.name.clone(),
                what: "a shared Redlock",
            });
        }
        Ok(self.redlock.try_acquire(&self.name).await?.into())
    }

    async fn is_locked(&self) -> Result<bool, LockError> {
        self.redlock.is_locked(&self.name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_follows_the_description() {
        assert_eq!(
            default_drift(Duration::from_secs(10)),
            Duration::from_millis(102)
        );
    }

    #[test]
    fn jitter_stays_in_range() {
        let mean = Duration::from_millis(100);
        for _ in 0..1000 {
            let d = jitter(mean);
            assert!(d >= mean / 2 && d <= mean * 3 / 2, "{d:?}");
        }
    }

    #[test]
    fn validity_subtracts_elapsed_and_drift() {
        let outcome = Outcome {
            grants: vec![Some(1)],
            errors: vec![],
            started: Moment {
                at: Instant::now() - Duration::from_millis(300),
                boot: None,
            },
        };
        let v = outcome.validity(Duration::from_secs(1), Duration::from_millis(12));
        assert!(v <= Duration::from_millis(688), "{v:?}");
        assert!(v > Duration::from_millis(500), "{v:?}");
        assert_eq!(
            outcome.validity(Duration::from_millis(200), Duration::ZERO),
            Duration::ZERO
        );
    }
}
