//! [`RedisLocks`]'s public face: connecting, the plain lock's methods,
//! looking (owner, list) and stats, the RW lock's and semaphore's handles.
//! The facade: only Redlock, the layer above (a quorum of clients), imports
//! it. The client's state and the operations primitives share live below,
//! in `context/` (as [`Context`], which every primitive holds).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RedisLockGuard;
use super::acl;
use super::conn::cluster::{Cluster, is_cluster_node};
use super::conn::errors::{map_redis, tls_error};
use super::conn::pool::{Connections, Manager, PoolConn, TlsFailure, connection_config};
use super::conn::sentinel::{SentinelUrl, Sentinels, Target, check_primary};
use super::conn::ticks::{self, Health, Ticker};
use super::conn::tls::{TlsMaterial, diagnose, load as load_tls};
use super::conn::wakeups::{Source, Wakeups};
use super::context::queue::LocalQueues;
use super::context::{Context, Inner};
use super::kinds::listing::RedisLockInfo;
use super::kinds::lock::RedisLock;
use super::kinds::rwlock::RedisRwLock;
use super::kinds::semaphore::RedisSemaphore;
use super::lease::Watchdog;
use super::options::RedisOptions;
use super::protocol::keys;
use super::protocol::scripts;
use crate::error::{LockError, TlsProblem};
use crate::options::AcquireOptions;
use crate::owner::Owner;
use std::time::Duration;

/// Counters of a client's watchdog (see [`RedisLocks::stats`]).
///
/// ```no_run
/// # async fn f(locks: lockyard::redis::RedisLocks) {
/// let s = locks.stats();
/// println!("{} leases renewed in {} round trips", s.renewals, s.renewal_round_trips);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Leases the watchdog renews now (locks held through this client).
    pub held: usize,
    /// Pipelined round trips the watchdog made so far.
    pub renewal_round_trips: u64,
    /// Individual lease renewals sent so far.
    pub renewals: u64,
    /// Leases declared lost so far.
    pub lost: u64,
}

/// A client for distributed locks on one Redis server or a Redis Cluster
/// (see [`connect`](Self::connect)).
///
/// Cloning is cheap and shares everything: the connection pool, the one
/// pub/sub connection that carries release wakeups, and the one watchdog task
/// that renews every lock held through this client. The background tasks stop
/// when the last clone and the last guard are dropped.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::time::Duration;
/// use lockyard::redis::RedisLocks;
///
/// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
/// let guard = locks.acquire("nightly-report", Duration::from_secs(10)).await?;
/// println!("fencing token {}", guard.fencing_token());
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisLocks {
    pub(crate) ctx: Context,
}

impl fmt::Debug for RedisLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ctx.fmt(f)
    }
}

impl RedisLocks {
    /// Finishes the background work of this client and stops it: waits for
    /// the releases of dropped guards and cancelled acquisitions still in
    /// flight (so a service that returns from `main` right after leaves no
    /// lock held until its TTL), then stops the watchdog and the pub/sub
    /// task. A guard still alive then can no longer be renewed: its
    /// [`lost`](crate::redis::RedisLockGuard::lost) signal fires, and releasing it
    /// still works. Later acquisitions through this client (or its clones)
    /// fail with [`LockError::Closed`].
    ///
    /// The wait is bounded by `connect_timeout + op_timeout` (a release that
    /// cannot reach Redis in that time leaves its lock to expire by its
    /// TTL); the number of releases given up on is returned.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// let locks = lockyard::redis::RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let guard = locks.acquire("job", std::time::Duration::from_secs(5)).await?;
    /// drop(guard); // released in the background...
    /// locks.shutdown().await; // ...and that release is done now.
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future stops the wait; the background
    /// releases go on, and the client is stopped either way.
    pub async fn shutdown(&self) -> usize {
        self.ctx.shutdown().await
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisLocks, RedisOptions};
    ///
    /// let locks = RedisLocks::connect_lazy("redis://127.0.0.1:6380/", RedisOptions::default())?;
    /// assert!(!locks.is_shut_down());
    /// assert_eq!(locks.shutdown().await, 0); // nothing was left to release
    /// assert!(locks.clone().is_shut_down()); // clones share the client
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_shut_down(&self) -> bool {
        self.ctx.is_shut_down()
    }

    /// Whether this client talks to a Redis Cluster (see
    /// [`connect`](Self::connect)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisLocks, RedisOptions};
    ///
    /// // A lazy client is always one server's.
    /// let locks = RedisLocks::connect_lazy("redis://127.0.0.1:6380/", RedisOptions::default())?;
    /// assert!(!locks.is_cluster());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_cluster(&self) -> bool {
        self.ctx.is_cluster()
    }

    /// The options the client was built with.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisLocks, RedisOptions};
    ///
    /// let opts = RedisOptions::default().key_prefix("billing:");
    /// let locks = RedisLocks::connect_lazy("redis://127.0.0.1:6380/", opts)?;
    /// assert_eq!(locks.options().key_prefix, "billing:");
    /// # Ok(())
    /// # }
    /// ```
    pub fn options(&self) -> &RedisOptions {
        self.ctx.options()
    }

    /// A handle to the readers/writer lock `name`.
    ///
    /// Fails with [`LockError::InvalidName`] for a name the client refuses.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// let locks = lockyard::redis::RedisLocks::connect("redis://127.0.0.1:7777").await?;
    /// let rw = locks.rwlock("catalog")?;
    /// assert_eq!(rw.name(), "catalog");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for a name the client refuses.
    pub fn rwlock(&self, name: &str) -> Result<RedisRwLock, LockError> {
        RedisRwLock::new(&self.ctx, name)
    }

    /// A handle to the semaphore `name` with `permits` permits.
    ///
    /// Every process must use the same `permits` for one name. Fails with
    /// [`LockError::InvalidArgument`] for zero permits and
    /// [`LockError::InvalidName`] for a name the client refuses.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// let locks = lockyard::redis::RedisLocks::connect("redis://127.0.0.1:7777").await?;
    /// let sem = locks.semaphore("downloads", 3)?;
    /// assert_eq!(sem.permits(), 3);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for a name the client refuses; [`LockError::InvalidArgument`] for zero permits.
    pub fn semaphore(&self, name: &str, permits: u32) -> Result<RedisSemaphore, LockError> {
        RedisSemaphore::new(&self.ctx, name, permits)
    }

    /// Connects with default [`RedisOptions`].
    ///
    /// `url` is one server (`redis://[user:password@]host:port/[db]`) or a
    /// Redis Cluster: either any one node's URL (a server that answers
    /// `cluster_enabled:1` to `INFO cluster` is taken as a Cluster node, and
    /// the rest of the cluster is discovered from it), or several seed nodes
    /// at once as `redis+cluster://[user:password@]host1:port1,host2:port2/`
    /// (any of them reachable suffices). On a Cluster every name works on
    /// every slot: requests follow `MOVED`/`ASK`, release wakeups use
    /// sharded pub/sub, and the watchdog batches renewals per master. A
    /// Sentinel-managed primary is
    /// `redis+sentinel://[user:password@]h1:26379,h2:26379/<master name>[/db]`
    /// (`rediss+sentinel://` for TLS): the primary is found through the
    /// sentinels and followed through failovers (see the README's "Redis
    /// Cluster and replicas" for what that promises).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::RedisLocks;
    ///
    /// let one = RedisLocks::connect("redis://:secret@127.0.0.1:6380/2").await?; // db 2
    /// let cluster = RedisLocks::connect("redis+cluster://10.0.0.1:7000,10.0.0.2:7000/").await?;
    /// let sentinel = RedisLocks::connect("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/main").await?;
    /// # drop((one, cluster, sentinel));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidArgument`] for a malformed URL,
    /// [`LockError::Unavailable`] when the server cannot be reached (or no
    /// sentinel answers, or they name no primary within the connect
    /// timeout), [`LockError::Backend`] when it refuses us (authentication,
    /// ACL) or the sentinels do not monitor the master name.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is left behind but a closed connection.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// Connects with the given options: checks them, opens one connection
    /// (bounded by `connect_timeout`), loads the scripts, and starts the
    /// watchdog and pub/sub tasks (the pub/sub connection opens on the first
    /// wait).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::redis::{RedisLocks, RedisOptions};
    ///
    /// let opts = RedisOptions::default().key_prefix("app:").ttl(Duration::from_secs(5));
    /// let locks = RedisLocks::connect_with("redis://127.0.0.1:6380/", opts).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), and [`LockError::InvalidArgument`] for
    /// options out of range.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn connect_with(url: &str, opts: RedisOptions) -> Result<Self, LockError> {
        Self::build(url, opts, true).await
    }

    /// Builds a client without talking to Redis: the options and the URL
    /// are checked now, the first operation connects. A service can then
    /// boot while Redis is down and get [`LockError::Unavailable`] per call
    /// (within `connect_timeout`) until it is back; scripts are loaded on
    /// first use. One server only: a lazy client cannot ask whether the URL
    /// is a Cluster node (a `redis+cluster://` URL is refused; on a Cluster
    /// node's plain URL, names of other nodes' slots fail with
    /// [`LockError::Unavailable`]): use [`connect_with`](Self::connect_with)
    /// for a Cluster.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::redis::{RedisLocks, RedisOptions};
    ///
    /// let locks = RedisLocks::connect_lazy("redis://127.0.0.1:6380/", RedisOptions::default())?;
    /// match locks.try_acquire("job").await {
    ///     Err(e) if e.is_unavailable() => println!("Redis is down: {e}"),
    ///     other => { other?; }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidArgument`] for a malformed URL or options out of
    /// range. Must be called within a tokio runtime (it starts the
    /// watchdog and pub/sub tasks); outside one it fails with
    /// [`LockError::InvalidArgument`].
    pub fn connect_lazy(url: &str, opts: RedisOptions) -> Result<Self, LockError> {
        if cluster_seeds(url)?.is_some() {
            return Err(LockError::InvalidArgument {
                what: "redis URL",
                reason: "a Cluster client reads the slot map when it connects: use \
                         RedisLocks::connect_with for redis+cluster:// URLs"
                    .to_owned(),
            });
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(LockError::InvalidArgument {
                what: "runtime",
                reason: "RedisLocks::connect_lazy must be called within a tokio runtime".to_owned(),
            });
        }
        // Connecting eagerly is the only await of `build`: without it the
        // future completes on its first poll.
        futures::FutureExt::now_or_never(Self::build(url, opts, false)).unwrap_or_else(|| {
            Err(LockError::InvalidArgument {
                what: "redis URL",
                reason: "a lazy client could not be built without waiting".to_owned(),
            })
        })
    }

    /// Checks the options and the URL, opens the first connection, checks
    /// the user's permissions and loads the scripts when `eager`, and
    /// starts the background tasks.
    async fn build(url: &str, opts: RedisOptions, eager: bool) -> Result<Self, LockError> {
        opts.validate()?;
        let what = redact(url);
        let tls = load_tls(&opts.tls, url, &what)?;
        if let Some(seeds) = cluster_seeds(url)? {
            return Self::build_cluster(seeds, tls, what, opts).await;
        }
        if let Some(sentinel) = SentinelUrl::parse(url, &what)? {
            return Self::build_sentinel(sentinel, tls, what, opts, eager).await;
        }
        let bad_url = |e: redis::RedisError| LockError::InvalidArgument {
            what: "redis URL",
            reason: format!("{what}: {e}"),
        };
        let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(bad_url)?;
        let client = tls.client(info.clone()).map_err(bad_url)?;

        let epoch = Arc::new(AtomicU64::new(0));
        let ticker = Ticker::start(opts.request_timeout());
        let first = if eager {
            // One connection now, so that a server that is down or refuses
            // us is reported with its real cause rather than a pool timeout.
            let (first, health) =
                first_connection(&client, &info, &tls, &opts, &what, &ticker).await?;
            let first = PoolConn::new(first, health, epoch.clone());
            let mut conn = first.conn();
            let user = acl::user_of(&info);
            if is_cluster_node(&mut conn, &what)
                .await
                .map_err(|e| acl::refused_at_connect(e, user, "INFO"))?
            {
                return Self::build_cluster(vec![info], tls, what, opts).await;
            }
            check_permissions(&mut conn, &info, &opts, false, &what).await?;
            load_scripts(&mut conn, user, &what).await?;
            Some(first)
        } else {
            None
        };

        let target = Target::Fixed(client.clone());
        let conns = node_connections(target, &opts, epoch, &what, first, ticker).await;
        Ok(Self::assemble(
            opts,
            conns,
            Source::Node(Target::Fixed(client)),
            what,
        ))
    }

    /// Connects to the primary the sentinels of `url` name (see
    /// `conn/sentinel.rs`): as [`build`](Self::build) does for one server,
    /// with every connection opened through discovery, and a task per
    /// sentinel following failovers.
    async fn build_sentinel(
        url: SentinelUrl,
        tls: TlsMaterial,
        what: String,
        opts: RedisOptions,
        eager: bool,
    ) -> Result<Self, LockError> {
        let sentinels = Arc::new(Sentinels::new(
            url,
            tls.clone(),
            opts.connect_timeout,
            opts.request_timeout(),
            what.clone(),
        ));
        let epoch = Arc::new(AtomicU64::new(0));
        let ticker = Ticker::start(opts.request_timeout());
        let first = if eager {
            // Within the connect timeout, wait through a failover's
            // promotion (no primary to hand out) or sentinels that do not
            // answer yet.
            let deadline = Instant::now() + opts.connect_timeout;
            let pause = Duration::from_millis(50);
            let info = loop {
                match sentinels.primary().await {
                    Ok(info) => break info,
                    Err(e)
                        if e.kind() == redis::ErrorKind::Io
                            && Instant::now() + pause < deadline =>
                    {
                        tracing::debug!(error = %e, "no primary yet; asking the sentinels again");
                        tokio::time::sleep(pause).await;
                    }
                    Err(e) => return Err(map_redis(e, &what, "connect")),
                }
            };
            let client = tls
                .client(info.clone())
                .map_err(|e| map_redis(e, &what, "connect"))?;
            let (mut first, health) =
                first_connection(&client, &info, &tls, &opts, &what, &ticker).await?;
            ticks::within(&ticker, check_primary(&mut first))
                .await
                .map_err(|e| map_redis(e, &what, "connect"))?;
            let first = PoolConn::new(first, health, epoch.clone());
            let mut conn = first.conn();
            check_permissions(&mut conn, &info, &opts, false, &what).await?;
            load_scripts(&mut conn, acl::user_of(&info), &what).await?;
            Some(first)
        } else {
            None
        };
        let target = Target::Sentinel(sentinels.clone());
        let conns =
            node_connections(target.clone(), &opts, epoch.clone(), &what, first, ticker).await;
        let locks = Self::assemble(opts, conns, Source::Node(target), what);
        sentinels.watch(epoch, locks.ctx.inner.shutdown.clone());
        Ok(locks)
    }

    /// Connects to a Cluster through `seeds`, checks the user's permissions
    /// and loads the scripts on every node.
    async fn build_cluster(
        seeds: Vec<redis::ConnectionInfo>,
        tls: TlsMaterial,
        what: String,
        opts: RedisOptions,
    ) -> Result<Self, LockError> {
        let reserve = diagnosis_reserve(opts.connect_timeout);
        let cluster = match Cluster::connect(
            seeds.clone(),
            tls.clone(),
            &what,
            opts.request_timeout(),
            opts.connect_timeout,
            opts.connect_timeout - reserve,
        )
        .await
        {
            Ok(cluster) => cluster,
            Err(e @ (LockError::Tls { .. } | LockError::InvalidArgument { .. })) => return Err(e),
            Err(e) => {
                // The Cluster client keeps only a summary of why no seed
                // answered: ask the first seed alone what went wrong.
                let Some(seed) = seeds.first() else {
                    return Err(e);
                };
                return Err(match tls.client(seed.clone()) {
                    Ok(client) => {
                        // A diagnosis only: an untimed connection, dropped.
                        let first = first_connection_within(
                            &client, seed, &tls, &opts, &what, reserve, None,
                        );
                        match first.await {
                            Err(tls @ LockError::Tls { .. }) => tls,
                            _ => e,
                        }
                    }
                    Err(_) => e,
                });
            }
        };
        let mut conn = cluster.conn();
        if let Some(seed) = seeds.first() {
            check_permissions(&mut conn, seed, &opts, true, &what).await?;
        }
        // `SCRIPT LOAD` goes to every node; a node that joins later gets
        // them on its first `NOSCRIPT`.
        let user = seeds.first().map_or("default", acl::user_of);
        load_scripts(&mut conn, user, &what).await?;
        let conns = Arc::new(Connections::cluster(cluster));
        Ok(Self::assemble(
            opts,
            conns,
            Source::Cluster(seeds, tls),
            what,
        ))
    }

    /// Starts the background tasks of a client on `conns`.
    fn assemble(opts: RedisOptions, conns: Arc<Connections>, source: Source, what: String) -> Self {
        let shutdown = CancellationToken::new();
        let follows_failovers = matches!(&source, Source::Node(t) if t.sentinels().is_some());
        let wakeups = Wakeups::start(
            source,
            opts.request_timeout(),
            opts.connect_timeout,
            shutdown.clone(),
        );
        let watchdog = Watchdog::start(
            conns.clone(),
            opts.request_timeout(),
            opts.wait_for_replicas,
            first_due(&opts),
            shutdown.clone(),
        );
        Self {
            ctx: Context {
                inner: Arc::new(Inner {
                    timing: crate::redis::context::Timing::of(&opts),
                    opts,
                    conns,
                    wakeups,
                    watchdog,
                    local: Arc::new(LocalQueues::default()),
                    url: what,
                    follows_failovers,
                    shutdown,
                    background: tokio_util::task::TaskTracker::new(),
                    names: std::sync::Mutex::default(),
                }),
            },
        }
    }

    /// A handle to the lock `name` (nothing is sent to Redis). The handle
    /// implements [`Lock`](crate::Lock), so it can sit beside file locks as
    /// `Arc<dyn Lock>`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisLocks, RedisOptions};
    ///
    /// let locks = RedisLocks::connect_lazy("redis://127.0.0.1:6380/", RedisOptions::default())?;
    /// let lock = locks.lock("invoice-42")?; // sends nothing
    /// assert_eq!(lock.name(), "invoice-42");
    /// assert!(locks.lock("{tag}").unwrap_err().is_invalid_input());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for an empty name, one over 512 bytes, or
    /// one containing `{`, `}` or control characters.
    pub fn lock(&self, name: &str) -> Result<RedisLock, LockError> {
        RedisLock::new(&self.ctx, name)
    }

    /// Acquires the lock `name`, waiting at most `timeout`.
    ///
    /// Waiting costs no polling: the waiter subscribes to the lock's release
    /// channel and also wakes when the holder's lease runs out. Tasks of this
    /// process waiting for the same name queue here, in FIFO order, behind a
    /// single waiter on Redis.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let guard = locks.acquire("invoice-42", Duration::from_secs(5)).await?;
    /// let again = locks.acquire("invoice-42", Duration::from_millis(50)).await;
    /// assert!(again.unwrap_err().is_timeout());
    /// guard.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] (naming the holder when known) if it stayed
    /// held; [`LockError::Unavailable`], [`LockError::Backend`] or
    /// [`LockError::Protocol`] if Redis failed; [`LockError::InvalidName`].
    /// On a Cluster, no lock is granted while its hash slot migrates (even a
    /// name never used before): the acquisition waits on within `timeout`,
    /// and then fails with [`LockError::Unavailable`] naming the slot
    /// (`hash slot N is migrating ...`).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped acquisition leaves the local queue at once. If
    /// it was dropped while its acquire script was in flight, the script may
    /// still run on the server; a background task then deletes the key if
    /// (and only if) it holds this acquisition's token, sent on the same
    /// connection so it runs after the script. Without a runtime to run that
    /// task, or if Redis is unreachable, the key expires after its TTL.
    pub async fn acquire(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<RedisLockGuard, LockError> {
        self.acquire_with(name, &AcquireOptions::exclusive().timeout(timeout))
            .await
    }

    /// Acquires the lock `name` under `options`: exclusive, or shared with
    /// other shared holders ([`Mode::Shared`](crate::Mode::Shared), the same
    /// as a read lock of [`rwlock`](Self::rwlock)`(name)`). `timeout: None`
    /// waits for ever, `Some(ZERO)` tries once and fails with
    /// [`LockError::Timeout`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{AcquireOptions, Mode, redis::RedisLocks};
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let opts = AcquireOptions::shared().timeout(Duration::from_secs(5));
    /// let reader = locks.acquire_with("catalog", &opts).await?;
    /// let other = locks.acquire_with("catalog", &opts).await?; // shared holders coexist
    /// assert_eq!(other.mode(), Mode::Shared);
    /// # drop((reader, other));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_with(
        &self,
        name: &str,
        options: &AcquireOptions,
    ) -> Result<RedisLockGuard, LockError> {
        self.lock(name)?.acquire_with(options).await
    }

    /// Acquires the lock `name` if it is free now.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let Ok(guard) = locks.try_acquire("nightly-report").await else {
    ///     return Ok(()); // another machine runs it tonight
    /// };
    /// guard.run_until_lost(async { /* the report */ }).await?;
    /// guard.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] (naming the holder when known) if it is
    /// held, here or elsewhere; otherwise as [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn try_acquire(&self, name: &str) -> Result<RedisLockGuard, LockError> {
        self.lock(name)?.try_acquire().await
    }

    /// Whether anyone holds the lock `name` now (the answer may be stale by
    /// the time it is read).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// if locks.is_locked("migrations").await? {
    ///     println!("a migration is running");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`]; [`LockError::Unavailable`], [`LockError::Backend`] or [`LockError::Protocol`] if Redis failed or answered garbage.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks.
    pub async fn is_locked(&self, name: &str) -> Result<bool, LockError> {
        self.lock(name)?.is_locked().await
    }

    /// Who holds the lock `name` now (pid, start time, host, since when):
    /// `None` if it is free, or if the value at its key was not written by
    /// lockyard (another program's key; logged at `debug`). The answer may be
    /// stale by the time it is read.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// let locks = lockyard::redis::RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// match locks.owner("nightly-report").await? {
    ///     Some(owner) => println!("held by pid {} on {}", owner.pid, owner.host),
    ///     None => println!("free"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`]; [`LockError::Protocol`] if the key holds
    /// something other than a string (another program's data);
    /// [`LockError::Unavailable`] or [`LockError::Backend`] if Redis failed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks.
    pub async fn owner(&self, name: &str) -> Result<Option<Owner>, LockError> {
        super::kinds::listing::owner(&self.ctx, name).await
    }

    /// Lists the locks under this client's key prefix (with `SCAN`, so it is
    /// safe on a large database, and not a consistent snapshot; on a
    /// Cluster, of every master). Used by `lockyard status --redis`.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// for info in locks.list().await? {
    ///     println!("{} ({}): {} holder(s)", info.name, info.kind, info.holders);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`], [`LockError::Backend`] or [`LockError::Protocol`] if Redis failed or answered garbage while scanning.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks.
    pub async fn list(&self) -> Result<Vec<RedisLockInfo>, LockError> {
        let prefix = &self.ctx.inner.opts.key_prefix;
        let what = format!("{prefix}*");
        let pattern = keys::scan_pattern(prefix);
        let mut found = Vec::new();
        // One server, or every master of a Cluster (each scanned whole).
        for mut target in self.ctx.inner.conns.scan_targets(&what).await? {
            self.scan_into(&mut target, &pattern, &what, &mut found)
                .await?;
        }
        found.sort();
        found.dedup();
        let mut out = Vec::with_capacity(found.len());
        for (name, kind) in found {
            // On a Cluster, the connection to that name's master.
            let mut conn = self.ctx.conn(&name, "list").await?;
            out.extend(super::kinds::listing::info(&self.ctx, &mut conn, &name, kind).await?);
        }
        Ok(out)
    }

    /// `SCAN`s one server for the keys matching `pattern`, adding the
    /// (name, kind) of each lock or semaphore key to `found`.
    async fn scan_into(
        &self,
        conn: &mut super::conn::pool::Conn,
        pattern: &str,
        what: &str,
        found: &mut Vec<(String, &'static str)>,
    ) -> Result<(), LockError> {
        let prefix = &self.ctx.inner.opts.key_prefix;
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await
                .map_err(|e| map_redis(e, what, "list"))?;
            for key in batch {
                if let Some((name, suffix)) = keys::parse_key(prefix, &key) {
                    let Some(kind) = super::kinds::listing::kind_of(suffix) else {
                        continue;
                    };
                    found.push((name.to_owned(), kind));
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Watchdog counters: how many leases this client renews now and how
    /// many round trips renewing has cost so far.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisLocks, RedisOptions};
    ///
    /// let locks = RedisLocks::connect_lazy("redis://127.0.0.1:6380/", RedisOptions::default())?;
    /// let s = locks.stats();
    /// assert_eq!((s.held, s.renewals, s.lost), (0, 0, 0)); // nothing held yet
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> RedisStats {
        let c = self.ctx.inner.watchdog.counters();
        use std::sync::atomic::Ordering::Relaxed;
        RedisStats {
            held: self.ctx.inner.watchdog.len(),
            renewal_round_trips: c.round_trips.load(Relaxed),
            renewals: c.renewals.load(Relaxed),
            lost: c.lost.load(Relaxed),
        }
    }
}

/// How long after its acquisition a lease of the client's TTL is first
/// renewed, as the watchdog schedules it: the renewal interval, at most half
/// the validity.
fn first_due(opts: &RedisOptions) -> Duration {
    let ttl = opts.ttl;
    opts.renew_interval_for(ttl)
        .min(ttl.saturating_sub(opts.drift_for(ttl)) / 2)
}

/// The connections of a client on one server (`target`: fixed, or the
/// primary the sentinels name): `pool_size` for operations and one for the
/// watchdog, seeded with `first` (the connection that checked the user's
/// permissions and loaded the scripts) when there is one.
async fn node_connections(
    target: Target,
    opts: &RedisOptions,
    epoch: Arc<AtomicU64>,
    what: &str,
    first: Option<PoolConn>,
    ticker: Arc<Ticker>,
) -> Arc<Connections> {
    let tls_failure = TlsFailure::default();
    let pool = bb8::Pool::builder()
        .max_size(opts.pool_size + 1)
        .test_on_check_out(false)
        .connection_timeout(opts.connect_timeout)
        .build_unchecked(Manager::new(
            target,
            opts.connect_timeout,
            ticker,
            epoch.clone(),
            tls_failure.clone(),
        ));
    let conns = Arc::new(Connections::new(
        pool,
        opts.pool_size as usize,
        epoch,
        what.to_owned(),
        tls_failure,
    ));
    if let Some(first) = first {
        conns.seed(first).await;
    }
    conns
}

/// How much of the connect timeout is kept for finding out why a first
/// connection failed (see [`first_connection`]).
fn diagnosis_reserve(connect_timeout: Duration) -> Duration {
    (connect_timeout / 5).min(Duration::from_secs(1))
}

/// The first connection of a client, within `connect_timeout`. If it fails
/// without saying why (the connection was closed, or nothing came back),
/// the rest of the time asks the server which protocol it speaks, so that
/// a `redis://` URL to a TLS-only port and a `rediss://` URL to a plain
/// one are reported as such ([`LockError::Tls`]), not as a timeout.
async fn first_connection(
    client: &redis::Client,
    info: &redis::ConnectionInfo,
    tls: &TlsMaterial,
    opts: &RedisOptions,
    what: &str,
    ticker: &Arc<Ticker>,
) -> Result<(MultiplexedConnection, Arc<Health>), LockError> {
    let budget = opts.connect_timeout;
    first_connection_within(client, info, tls, opts, what, budget, Some(ticker)).await
}

async fn first_connection_within(
    client: &redis::Client,
    info: &redis::ConnectionInfo,
    tls: &TlsMaterial,
    opts: &RedisOptions,
    what: &str,
    budget: Duration,
    ticker: Option<&Arc<Ticker>>,
) -> Result<(MultiplexedConnection, Arc<Health>), LockError> {
    let started = Instant::now();
    let attempt = budget - diagnosis_reserve(budget);
    let config = connection_config(attempt, opts.request_timeout().min(attempt));
    let err = match tokio::time::timeout(attempt, ticks::open(client, &config, ticker)).await {
        Ok(Ok(conn)) => return Ok(conn),
        Ok(Err(e)) => Some(e),
        Err(_) => None,
    };
    let known = err.as_ref().and_then(|e| tls_error(e, what));
    let vague = match &known {
        Some(LockError::Tls { problem, .. }) => {
            matches!(problem, TlsProblem::ServerIsPlain | TlsProblem::Handshake)
        }
        _ => true,
    };
    let refused = err
        .as_ref()
        .is_some_and(redis::RedisError::is_connection_refusal);
    if vague
        && !refused
        && let redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } = info.addr()
    {
        let (host, port, is_tls) = (host.clone(), *port, tls.is_tls());
        let left = budget.saturating_sub(started.elapsed());
        // Bounded here too: the probe's name lookup is not.
        let probe = tokio::task::spawn_blocking(move || diagnose(&host, port, is_tls, left));
        let found = tokio::time::timeout(left, probe)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        if let Some(problem) = found {
            return Err(LockError::Tls {
                server: what.to_owned(),
                problem,
                source: err.map(|e| Box::new(e) as crate::error::BoxError),
            });
        }
    }
    Err(match (known, err) {
        (Some(tls), _) => tls,
        (None, Some(e)) => map_redis(e, what, "connect"),
        (None, None) => super::conn::errors::timed_out(what, "connect"),
    })
}

/// Loads every script on `conn` at connect (`SCRIPT LOAD`), so that the
/// first acquisition sends no script body; a refusal names `user`'s missing
/// right.
async fn load_scripts(
    conn: &mut super::conn::pool::Conn,
    user: &str,
    what: &str,
) -> Result<(), LockError> {
    for script in scripts::all() {
        script.load_async(conn).await.map_err(|e| {
            acl::refused_at_connect(map_redis(e, what, "load scripts"), user, "SCRIPT LOAD")
        })?;
    }
    Ok(())
}

/// Checks with `ACL DRYRUN` that the client's user may run every command
/// lockyard needs (see [`super::acl`]).
async fn check_permissions(
    conn: &mut super::conn::pool::Conn,
    info: &redis::ConnectionInfo,
    opts: &RedisOptions,
    cluster: bool,
    what: &str,
) -> Result<(), LockError> {
    let user = acl::user_of(info);
    let needs = acl::Needs {
        prefix: &opts.key_prefix,
        cluster,
        wait: opts.wait_for_replicas.is_some(),
    };
    acl::check(conn, user, &needs, what).await
}

/// The seed nodes of a `redis+cluster://[auth@]h1:p1,h2:p2/` URL (each as
/// `redis://[auth@]hN:pN/`), or of a `rediss+cluster://` one (each as
/// `rediss://…`), `None` for any other scheme.
fn cluster_seeds(url: &str) -> Result<Option<Vec<redis::ConnectionInfo>>, LockError> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return Ok(None);
    };
    let bad = |reason: String| LockError::InvalidArgument {
        what: "redis URL",
        reason: format!("{}: {reason}", redact(url)),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (Some(auth), hosts),
        None => (None, rest),
    };
    if hosts.contains('/') || hosts.contains('?') {
        return Err(bad(
            "a Cluster has one database: no path or query".to_owned()
        ));
    }
    let mut seeds = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err(bad("an empty seed node".to_owned()));
        }
        let one = match auth {
            Some(a) => format!("{scheme}://{a}@{host}/"),
            None => format!("{scheme}://{host}/"),
        };
        let info = redis::IntoConnectionInfo::into_connection_info(one.as_str())
            .map_err(|e| bad(format!("seed {host}: {e}")))?;
        seeds.push(info);
    }
    Ok(Some(seeds))
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lost::Moment;
    use crate::redis::lease::Lease;

    /// An acquire+release loop of leases of the client's TTL wakes the
    /// watchdog task once, not once per lease: the release empties its map
    /// before the task runs, and an idle task used to sleep until notified,
    /// so the next registration woke it (a pass per pair, seen with
    /// callgrind: 3,001 passes for 3,000 pairs). No server: nothing comes
    /// due within the test, so no connection is opened.
    #[tokio::test(flavor = "current_thread")]
    async fn leases_of_the_clients_ttl_do_not_wake_an_idle_watchdog() {
        let opts = RedisOptions::default();
        let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
        let epoch = Arc::new(AtomicU64::new(0));
        let ticker = Ticker::start(opts.request_timeout());
        let target = Target::Fixed(client);
        let conns = node_connections(target, &opts, epoch, "test", None, ticker).await;
        let shutdown = CancellationToken::new();
        let watchdog = Watchdog::start(
            conns,
            opts.request_timeout(),
            None,
            first_due(&opts),
            shutdown.clone(),
        );
        let _stop = shutdown.clone().drop_guard();
        // The task's first pass, with nothing to renew.
        tokio::task::yield_now().await;
        let before = watchdog.passes();
        for i in 0..100 {
            let sent = Moment::now();
            // The acquire's round trip.
            tokio::task::yield_now().await;
            let lease = Lease {
                resource: format!("r{i}").into(),
                script: &scripts::EXTEND,
                keys: Arc::from(vec![format!("lockyard:{{r{i}}}:lock")]),
                args: Arc::new(["value".into()]),
                ttl: opts.ttl,
                lock_delay: Duration::ZERO,
                interval: opts.renew_interval_for(opts.ttl),
                drift: opts.drift_for(opts.ttl),
                acquired_at: sent,
                observer: None,
            };
            let handle = watchdog.register(lease).unwrap();
            drop(handle);
            // The release's round trip: the task runs if it was woken.
            tokio::task::yield_now().await;
        }
        let passes = watchdog.passes() - before;
        assert!(passes <= 1, "100 leases woke the watchdog {passes} times");
    }

    #[test]
    fn cluster_urls() {
        assert!(cluster_seeds("redis://h:1/").unwrap().is_none());
        let seeds = cluster_seeds("redis+cluster://u:pw@a:7000,b:7001/")
            .unwrap()
            .unwrap();
        assert_eq!(seeds.len(), 2);
        assert_eq!(seeds[1].addr().to_string(), "b:7001");
        assert_eq!(seeds[0].redis_settings().password(), Some("pw"));
        let tls = cluster_seeds("rediss+cluster://a:7000,b:7001/")
            .unwrap()
            .unwrap();
        assert!(matches!(
            tls[1].addr(),
            redis::ConnectionAddr::TcpTls { host, port: 7001, .. } if host == "b"
        ));
        for bad in [
            "redis+cluster://",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:1/3",
            "redis+cluster://a:notaport",
        ] {
            assert!(cluster_seeds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
