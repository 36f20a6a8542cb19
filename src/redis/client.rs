//! [`RedisLocks`]: the client. One pool, one pub/sub connection, one
//! watchdog task, shared by every lock taken through it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use redis::{AsyncConnectionConfig, Script, Value};
use tokio_util::sync::CancellationToken;

use super::RedisLockGuard;
use super::errors::{map_redis, protocol};
use super::keys::{self, LockKeys, validate_name};
use super::lease::{Expired, Lease, LeaseHandle, Watchdog};
use super::local::LocalQueues;
use super::lock::{Attempt, RedisLock, parse_holder};
use super::options::RedisOptions;
use super::pool::{Conn, Connections, Manager, PoolConn};
use super::scripts;
use super::wakeups::Wakeups;
use crate::error::LockError;
use crate::options::AcquireOptions;
use crate::owner::Owner;

/// A client for distributed locks on one Redis server (or one Redis Cluster
/// node set reached through one URL: every key of a resource shares a hash
/// slot).
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
    pub(crate) inner: Arc<Inner>,
}

/// The shared state behind a [`RedisLocks`] (crate-internal; the
/// semaphore, RW lock and Redlock build on it).
pub(crate) struct Inner {
    /// The options the client was built with (validated).
    pub(crate) opts: RedisOptions,
    /// The connections (see [`Connections`]).
    pub(crate) conns: Arc<Connections>,
    /// Release wakeups over the shared pub/sub connection.
    pub(crate) wakeups: Wakeups,
    /// The one renewal task of this client.
    pub(crate) watchdog: Watchdog,
    /// In-process queues in front of Redis, per resource name.
    pub(crate) local: Arc<LocalQueues>,
    /// The URL with any password replaced, for `Debug`.
    url: String,
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stops the watchdog and pub/sub tasks.
        self.shutdown.cancel();
    }
}

/// What a [`RedisLocks::list`] entry describes.
///
/// ```
/// # fn show(info: &lockyard::redis::RedisLockInfo) {
/// println!("{} ({}): {} holder(s), expires in {:?}", info.name, info.kind, info.holders, info.ttl);
/// for owner in &info.owners {
///     println!("  held by pid {} on {} since {:?}", owner.pid, owner.host, owner.since);
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisLockInfo {
    /// The resource name.
    pub name: String,
    /// `"lock"`, `"semaphore"` or `"rwlock"`.
    pub kind: &'static str,
    /// Time left on the lease, `None` if the key has no expiry.
    pub ttl: Option<Duration>,
    /// The last fencing token issued for the resource, if any.
    pub fencing_token: Option<u64>,
    /// How many holders it has now.
    pub holders: usize,
    /// Who holds it, longest-held first: the lock's holder, a RW lock's
    /// writer or readers, a semaphore's permit holders (at most 100 of
    /// them). Holders whose value lockyard did not write (another program's
    /// key) are left out, so this may be shorter than
    /// [`holders`](Self::holders).
    pub owners: Vec<Owner>,
}

/// Counters of a client's watchdog (see [`RedisLocks::stats`]).
///
/// ```no_run
/// # async fn f(locks: lockyard::redis::RedisLocks) {
/// let s = locks.stats();
/// println!("{} leases renewed in {} round trips", s.renewals, s.renewal_round_trips);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl RedisLocks {
    /// Connects with default [`RedisOptions`].
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidArgument`] for a malformed URL,
    /// [`LockError::Unavailable`] when the server cannot be reached,
    /// [`LockError::Backend`] when it refuses us (authentication, ACL).
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
        opts.validate()?;
        let bad_url = |e: redis::RedisError| LockError::InvalidArgument {
            what: "redis URL",
            reason: format!("{}: {e}", redact(url)),
        };
        let client = redis::Client::open(url).map_err(bad_url)?;
        let manager = bb8_redis::RedisConnectionManager::new(url).map_err(bad_url)?;
        let what = redact(url);

        // One connection now, so that a server that is down or refuses us
        // is reported with its real cause rather than a pool timeout.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            .set_response_timeout(Some(opts.request_timeout()));
        let first = tokio::time::timeout(
            opts.connect_timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| super::errors::timed_out(&what, "connect"))?
        .map_err(|e| map_redis(e, &what, "connect"))?;
        let epoch = Arc::new(AtomicU64::new(0));
        let first = PoolConn::new(first, epoch.clone());
        let mut conn = first.conn();
        for script in scripts::all() {
            script
                .load_async(&mut conn)
                .await
                .map_err(|e| map_redis(e, &what, "load scripts"))?;
        }

        // `pool_size` connections for operations, one for the watchdog.
        let pool = bb8::Pool::builder()
            .max_size(opts.pool_size + 1)
            .test_on_check_out(false)
            .connection_timeout(opts.connect_timeout)
            .build_unchecked(Manager::new(manager, opts.request_timeout(), epoch.clone()));
        let conns = Arc::new(Connections::new(pool, opts.pool_size as usize, epoch));
        conns.seed(first).await;

        let shutdown = CancellationToken::new();
        let wakeups = Wakeups::start(client, opts.request_timeout(), shutdown.clone());
        let watchdog = Watchdog::start(conns.clone(), opts.request_timeout(), shutdown.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                opts,
                conns,
                wakeups,
                watchdog,
                local: Arc::new(LocalQueues::default()),
                url: what,
                shutdown,
            }),
        })
    }

    /// A handle to the lock `name` (nothing is sent to Redis). The handle
    /// implements [`Lock`](crate::Lock), so it can sit beside file locks as
    /// `Arc<dyn Lock>`.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for an empty name, one over 512 bytes, or
    /// one containing `{`, `}` or control characters.
    pub fn lock(&self, name: &str) -> Result<RedisLock, LockError> {
        validate_name(name)?;
        Ok(RedisLock::new(self.clone(), name))
    }

    /// Acquires the lock `name`, waiting at most `timeout`.
    ///
    /// Waiting costs no polling: the waiter subscribes to the lock's release
    /// channel and also wakes when the holder's lease runs out. Tasks of this
    /// process waiting for the same name queue here, in FIFO order, behind a
    /// single waiter on Redis.
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] (naming the holder when known) if it stayed
    /// held; [`LockError::Unavailable`], [`LockError::Backend`] or
    /// [`LockError::Protocol`] if Redis failed; [`LockError::InvalidName`].
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

    /// Acquires the lock `name` under `options` (`timeout: None` waits for
    /// ever, `Some(ZERO)` tries once and fails with [`LockError::Timeout`]).
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire), and [`LockError::Unsupported`] for
    /// [`Mode::Shared`](crate::Mode::Shared) (use the RW lock).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_with(
        &self,
        name: &str,
        options: &AcquireOptions,
    ) -> Result<RedisLockGuard, LockError> {
        super::lock::acquire(self, name, options, false).await
    }

    /// Acquires the lock `name` if it is free now.
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
        super::lock::acquire(
            self,
            name,
            &AcquireOptions::exclusive().timeout(Duration::ZERO),
            true,
        )
        .await
    }

    /// Whether anyone holds the lock `name` now (the answer may be stale by
    /// the time it is read).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks.
    pub async fn is_locked(&self, name: &str) -> Result<bool, LockError> {
        validate_name(name)?;
        let key = self.key(name, "lock");
        let n: i64 = self
            .retry_once(name, "check", |mut conn| {
                let key = &key;
                async move { redis::cmd("EXISTS").arg(key).query_async(&mut conn).await }
            })
            .await?;
        Ok(n > 0)
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
        validate_name(name)?;
        let key = self.key(name, "lock");
        let value: Option<Vec<u8>> = self
            .retry_once(name, "read owner", |mut conn| {
                let key = &key;
                async move { redis::cmd("GET").arg(key).query_async(&mut conn).await }
            })
            .await?;
        let Some(value) = value else {
            return Ok(None);
        };
        let owner = parse_holder(&value);
        if owner.is_none() {
            tracing::debug!(
                resource = name,
                value = %String::from_utf8_lossy(&value[..value.len().min(64)]),
                "the lock's value was not written by lockyard; owner unknown"
            );
        }
        Ok(owner)
    }

    /// Lists the locks under this client's key prefix (with `SCAN`, so it is
    /// safe on a large database, and not a consistent snapshot). Used by
    /// `lockyard status --redis`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks.
    pub async fn list(&self) -> Result<Vec<RedisLockInfo>, LockError> {
        let prefix = &self.inner.opts.key_prefix;
        let what = format!("{prefix}*");
        let mut conn = self.conn(&what, "list").await?;
        let pattern = keys::scan_pattern(prefix);
        let mut cursor: u64 = 0;
        let mut found = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| map_redis(e, &what, "list"))?;
            for key in batch {
                if let Some((name, suffix)) = keys::parse_key(prefix, &key) {
                    let kind = match suffix {
                        "lock" => "lock",
                        // Semaphores and RW locks: see `super::listing`.
                        other => match super::listing::kind_of(other) {
                            Some(kind) => kind,
                            None => continue,
                        },
                    };
                    found.push((name.to_owned(), kind));
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        found.sort();
        found.dedup();
        let mut out = Vec::with_capacity(found.len());
        for (name, kind) in found {
            if kind != "lock" {
                out.extend(super::listing::info(self, &mut conn, &name, kind).await?);
                continue;
            }
            let k = LockKeys::new(prefix, &name);
            // A key holding another program's data (not a string) fails
            // only its own GET: its owner is then unknown.
            type Reply = (
                redis::RedisResult<i64>,
                redis::RedisResult<Option<String>>,
                redis::RedisResult<Option<Vec<u8>>>,
            );
            let (pttl, fence, value): Reply = redis::pipe()
                .ignore_errors()
                .cmd("PTTL")
                .arg(&k.lock)
                .cmd("GET")
                .arg(&k.fence)
                .cmd("GET")
                .arg(&k.lock)
                .query_async(&mut conn)
                .await
                .map_err(|e| map_redis(e, &name, "list"))?;
            let pttl = pttl.map_err(|e| map_redis(e, &name, "list"))?;
            let fence = fence.ok().flatten();
            let value = value.ok().flatten();
            if pttl == -2 {
                continue; // released meanwhile
            }
            out.push(RedisLockInfo {
                fencing_token: fence.and_then(|f| f.parse().ok()),
                ttl: u64::try_from(pttl).ok().map(Duration::from_millis),
                kind: "lock",
                holders: 1,
                owners: value
                    .as_deref()
                    .and_then(parse_holder)
                    .into_iter()
                    .collect(),
                name,
            });
        }
        Ok(out)
    }

    /// Watchdog counters: how many leases this client renews now and how
    /// many round trips renewing has cost so far.
    pub fn stats(&self) -> RedisStats {
        let c = self.inner.watchdog.counters();
        use std::sync::atomic::Ordering::Relaxed;
        RedisStats {
            held: self.inner.watchdog.len(),
            renewal_round_trips: c.round_trips.load(Relaxed),
            renewals: c.renewals.load(Relaxed),
            lost: c.lost.load(Relaxed),
        }
    }

    /// The options the client was built with.
    pub fn options(&self) -> &RedisOptions {
        &self.inner.opts
    }
}

/// Crate-internal helpers the other Redis primitives build on.
impl RedisLocks {
    /// A multiplexed connection from the pool, errors mapped for
    /// `resource`/`op`. Clone-cheap; requests on it may run concurrently, and
    /// requests sent on one `Conn` (or its clones) run in order.
    pub(crate) async fn conn(&self, resource: &str, op: &'static str) -> Result<Conn, LockError> {
        self.inner.conns.get(resource, op).await
    }

    /// Runs `f` on a connection; if it fails because that connection broke
    /// (the server restarted, say), runs it once more on a fresh one. Only
    /// for requests that are safe to repeat (compare-and-delete,
    /// compare-and-expire, reads).
    pub(crate) async fn retry_once<T, F, Fut>(
        &self,
        resource: &str,
        op: &'static str,
        mut f: F,
    ) -> Result<T, LockError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut retried = false;
        loop {
            let conn = self.conn(resource, op).await?;
            let probe = conn.clone();
            match f(conn).await {
                Ok(v) => return Ok(v),
                Err(e) if !retried && probe.is_broken() => {
                    tracing::debug!(resource, op, error = %e, "connection broke; retrying once on a fresh one");
                    retried = true;
                }
                Err(e) => return Err(map_redis(e, resource, op)),
            }
        }
    }

    /// `{prefix}{<name>}:<suffix>` (validate `name` first).
    pub(crate) fn key(&self, name: &str, suffix: &str) -> String {
        keys::key(&self.inner.opts.key_prefix, name, suffix)
    }

    /// Registers a lease with the client's watchdog; see
    /// [`Watchdog::register`] (a grant already past its validity is refused:
    /// invariant 1).
    pub(crate) fn register_lease(&self, lease: Lease) -> Result<LeaseHandle, Expired> {
        self.inner.watchdog.register(lease)
    }

    /// A [`Lease`] for `ttl` with the client's interval and drift.
    pub(crate) fn lease(
        &self,
        resource: &str,
        script: &'static Script,
        keys: Vec<String>,
        args: Vec<String>,
        ttl: Duration,
        acquired_at: tokio::time::Instant,
    ) -> Lease {
        Lease {
            resource: resource.to_owned(),
            script,
            keys,
            args,
            interval: self.inner.opts.renew_interval_for(ttl),
            drift: self.inner.opts.drift_for(ttl),
            ttl,
            acquired_at,
        }
    }

    /// Subscribes to a release `channel` on the shared pub/sub connection
    /// (see [`Wakeups::subscribe`]).
    pub(crate) async fn subscribe(&self, channel: &str) -> super::wakeups::Subscription {
        self.inner.wakeups.subscribe(channel).await
    }

    /// Runs `script` in a background task (a guard's `Drop`), then drops
    /// `keep` (for example a local turn that must outlive the release).
    ///
    /// Uses `conn` if given (requests on one connection run in order), else
    /// a pooled one. Without a tokio runtime nothing is sent: the lease then
    /// expires by its TTL.
    pub(crate) fn spawn_release<K: Send + 'static>(
        &self,
        resource: String,
        script: &'static Script,
        keys: Vec<String>,
        args: Vec<String>,
        conn: Option<Conn>,
        keep: K,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(
                resource,
                "no tokio runtime to release on; the lock expires by its TTL"
            );
            return;
        };
        let this = self.clone();
        rt.spawn(async move {
            let conn = match conn {
                Some(c) => Ok(c),
                None => this.conn(&resource, "release").await,
            };
            let result = match conn {
                Ok(mut conn) => {
                    let mut inv = script.prepare_invoke();
                    for k in &keys {
                        inv.key(k);
                    }
                    for a in &args {
                        inv.arg(a);
                    }
                    inv.invoke_async::<Value>(&mut conn)
                        .await
                        .map_err(|e| map_redis(e, &resource, "release"))
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::debug!(resource, error = %e, "background release failed; the lock expires by its TTL");
            }
            drop(keep);
        });
    }

    /// Runs the acquire script once; see `scripts/acquire.lua`.
    pub(crate) async fn acquire_once(
        &self,
        conn: &mut Conn,
        name: &str,
        keys: &LockKeys,
        value: &str,
        ttl: Duration,
    ) -> Result<Attempt, LockError> {
        let reply: Value = scripts::ACQUIRE
            .key(&keys.lock)
            .key(&keys.fence)
            .arg(value)
            .arg(ttl_ms(ttl))
            .invoke_async(conn)
            .await
            .map_err(|e| map_redis(e, name, "acquire"))?;
        Attempt::from_reply(name, reply)
    }
}

/// A TTL as the whole milliseconds scripts take (validated ≤ `u32::MAX`).
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
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

impl fmt::Debug for RedisLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLocks")
            .field("url", &self.inner.url)
            .field("key_prefix", &self.inner.opts.key_prefix)
            .field("ttl", &self.inner.opts.ttl)
            .field("held", &self.inner.watchdog.len())
            .finish_non_exhaustive()
    }
}

/// A reply of the wrong shape.
pub(crate) fn bad_reply(name: &str, op: &'static str, reply: &Value) -> LockError {
    protocol(name, op, format!("unexpected reply {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
