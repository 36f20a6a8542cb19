//! The shared state of a [`RedisLocks`](crate::redis::RedisLocks) client and the crate-internal
//! operations every primitive builds on: connections, the retry-once rule,
//! lease registration, wakeup subscriptions and background releases.
//!
//! # Layering
//!
//! The bottom of the client: it uses the connection layer (`pool`,
//! `wakeups`), the lease core (`lease`) and its own in-process queues
//! (`queue`); every primitive uses it; it imports no primitive and not the
//! facade (`client.rs`).

pub(in crate::redis) mod ops;
pub(in crate::redis) mod queue;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use redis::{Script, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::LockError;
use crate::redis::conn::errors::{is_slot_moving, map_redis, protocol, timed_out};
use crate::redis::conn::pool::{Conn, Connections};
use crate::redis::conn::wakeups::{Subscription, Wakeups};
use crate::redis::context::queue::LocalQueues;
use crate::redis::lease::{Expired, Lease, LeaseHandle, Watchdog};
use crate::redis::options::RedisOptions;
use crate::redis::protocol::keys::{ResourceKeys, validate_name};
use crate::redis::protocol::{Args, LeaseArgs};
use crate::stats::{self, Acquisition, Backend, Site};

/// One client's shared state, cloned into every handle, hold and waiter
/// (the facade [`RedisLocks`](crate::redis::RedisLocks) wraps one).
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) inner: Arc<Inner>,
}

/// The shared state behind a [`RedisLocks`](crate::redis::RedisLocks) (crate-internal; the
/// semaphore, RW lock and Redlock build on it).
pub(crate) struct Inner {
    /// The options the client was built with (validated).
    pub(crate) opts: RedisOptions,
    /// What the options say of a lease of the client's TTL, worked out
    /// once (see [`Timing`]).
    pub(crate) timing: Timing,
    /// The connections (see [`Connections`]).
    pub(crate) conns: Arc<Connections>,
    /// Release wakeups over the shared pub/sub connection.
    pub(crate) wakeups: Wakeups,
    /// The one renewal task of this client.
    pub(crate) watchdog: Watchdog,
    /// In-process queues in front of Redis, per resource name.
    pub(crate) local: Arc<LocalQueues>,
    /// The URL with any password replaced, for `Debug`.
    pub(crate) url: String,
    /// Whether the server is the primary a set of sentinels names: an
    /// unreachable server may then be a failover in progress, which
    /// waiters wait through.
    pub(crate) follows_failovers: bool,
    pub(crate) shutdown: CancellationToken,
    /// Background releases (of dropped guards, cancelled acquisitions), so
    /// that [`RedisLocks::shutdown`](crate::redis::RedisLocks::shutdown) can wait for them.
    pub(crate) background: TaskTracker,
    /// Recently used resource names, each validated and its keys built once
    /// (see [`Named`]). Cleared when it grows past [`KEY_CACHE`] names.
    pub(crate) names: Mutex<HashMap<String, Arc<Named>, foldhash::fast::RandomState>>,
}

/// A resource name this client used, as its handles share it: validated,
/// its keys built, the name itself shared, and the stats entry its
/// acquisitions count into looked up once. `RedisLocks::acquire(name, ..)`
/// makes a handle per call: without this, every call validated the name,
/// copied it, and looked its stats entry up by hash in the registry
/// (~2k client instructions of ~26k per acquire + release, callgrind,
/// `examples/redis_instructions.rs lockyard-named` against `lockyard-acquire`).
pub(crate) struct Named {
    pub(crate) name: Arc<str>,
    pub(crate) keys: Arc<ResourceKeys>,
    /// The stats entry, looked up at the first acquisition (a handle that
    /// never acquires makes no entry: registry entries are never removed).
    /// Kept only once it is the name's own: the overflow entry a name
    /// past the stats name limit counts into is looked up again each time,
    /// so that the name gets its own once the limit is raised.
    site: OnceLock<Site>,
}

impl Named {
    /// Starts counting one acquisition of the name, in the Redis backend's
    /// stats entry of it.
    pub(crate) fn begin(&self) -> Acquisition {
        if let Some(site) = self.site.get() {
            return site.begin();
        }
        let site = stats::site(Backend::Redis, &self.name);
        let attempt = site.begin();
        if !site.is_overflow() {
            let _ = self.site.set(site);
        }
        attempt
    }
}

impl Inner {
    /// Closes the client: its watchdog first (every acquisition's
    /// `check_open` and every lease's registration read its flag), then the
    /// token that stops the watchdog and pub/sub tasks.
    fn close(&self) {
        self.watchdog.close();
        self.shutdown.cancel();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

impl Context {
    pub(crate) async fn shutdown(&self) -> usize {
        let i = &self.inner;
        i.background.close();
        let limit = i.opts.connect_timeout + i.opts.request_timeout();
        let _stop = StopOnDrop(i);
        if tokio::time::timeout(limit, i.background.wait())
            .await
            .is_err()
        {
            let left = i.background.len();
            tracing::warn!(
                left,
                "shutdown: background releases still unfinished; their locks expire by their TTL"
            );
            return left;
        }
        0
    }

    /// Whether [`shutdown`](Self::shutdown) closed the client: one atomic
    /// load (the token's `is_cancelled` takes a lock; this is read by every
    /// acquisition).
    pub(crate) fn is_shut_down(&self) -> bool {
        self.inner.watchdog.is_closed()
    }

    /// [`LockError::Closed`] after [`shutdown`](Self::shutdown).
    pub(crate) fn check_open(&self, resource: &str) -> Result<(), LockError> {
        if self.is_shut_down() {
            return Err(LockError::Closed {
                resource: resource.to_owned(),
            });
        }
        Ok(())
    }

    pub(crate) fn is_cluster(&self) -> bool {
        self.inner.conns.as_cluster().is_some()
    }

    pub(crate) fn options(&self) -> &RedisOptions {
        &self.inner.opts
    }

    /// The lease of one acquisition (`lease`, or the client's TTL); see
    /// [`RedisOptions::lease_for`].
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidArgument`] for a lease the options refuse.
    pub(crate) fn lease_for(&self, lease: Option<Duration>) -> Result<Duration, LockError> {
        match lease {
            // Checked when the client was built.
            None => Ok(self.inner.timing.ttl),
            Some(ttl) if ttl == self.inner.timing.ttl => Ok(ttl),
            Some(_) => self.inner.opts.lease_for(lease),
        }
    }

    /// The acquire scripts' arguments for a lease of `ttl`: the client's,
    /// built once, for its own TTL.
    pub(crate) fn lease_args(&self, ttl: Duration) -> Cow<'_, LeaseArgs> {
        let args = &self.inner.timing.args;
        if ttl == args.ttl {
            Cow::Borrowed(args)
        } else {
            Cow::Owned(LeaseArgs::new(ttl, self.inner.opts.server_ttl(ttl)))
        }
    }

    /// The client's per-request timeout.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.timing.request_timeout
    }

    /// The per-request timeout of an acquisition with a lease of `ttl`.
    pub(crate) fn request_timeout_for(&self, ttl: Duration) -> Duration {
        let t = &self.inner.timing;
        if ttl == t.ttl {
            t.request_timeout
        } else {
            self.inner.opts.request_timeout_for(ttl)
        }
    }

    /// The resource `name`, from the client's cache (a name found there was
    /// validated when it was added).
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for a name the client refuses.
    pub(crate) fn named(&self, name: &str) -> Result<Arc<Named>, LockError> {
        let mut cache = self
            .inner
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(named) = cache.get(name) {
            return Ok(named.clone());
        }
        validate_name(name)?;
        if cache.len() >= KEY_CACHE {
            cache.clear();
        }
        let named = Arc::new(Named {
            name: name.into(),
            keys: Arc::new(ResourceKeys::new(&self.inner.opts.key_prefix, name)),
            site: OnceLock::new(),
        });
        cache.insert(name.to_owned(), named.clone());
        Ok(named)
    }

    /// The keys of resource `name` (validated by the caller), from the
    /// client's cache.
    pub(crate) fn resource_keys(&self, name: &str) -> Arc<ResourceKeys> {
        match self.named(name) {
            Ok(named) => named.keys.clone(),
            // The caller validated it: not reached, but never cached.
            Err(_) => Arc::new(ResourceKeys::new(&self.inner.opts.key_prefix, name)),
        }
    }

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

    /// Registers a lease with the client's watchdog; see
    /// [`Watchdog::register`] (a grant already past its validity is refused:
    /// invariant 1).
    pub(crate) fn register_lease(&self, lease: Lease) -> Result<LeaseHandle, Expired> {
        self.inner.watchdog.register(lease)
    }

    /// A [`Lease`] for `ttl` with the client's interval and drift.
    pub(crate) fn lease(
        &self,
        resource: &Arc<str>,
        script: &'static Script,
        keys: Arc<[String]>,
        args: Args,
        ttl: Duration,
        acquired_at: crate::lost::Moment,
    ) -> Lease {
        Lease {
            resource: resource.clone(),
            script,
            keys,
            args,
            interval: self.inner.timing.interval_for(&self.inner.opts, ttl),
            drift: self.inner.timing.drift_for(&self.inner.opts, ttl),
            ttl,
            lock_delay: self.inner.opts.lock_delay.unwrap_or_default(),
            acquired_at,
            observer: None,
        }
    }

    /// Subscribes to a release `channel` on the shared pub/sub connection
    /// (see [`Wakeups::subscribe`]).
    pub(crate) async fn subscribe(&self, channel: &str) -> Subscription {
        self.inner.wakeups.subscribe(channel).await
    }

    /// Runs a release script (a compare-and-delete, safe to repeat) until
    /// Redis answers, within `limit`: on `conn` if given (requests on one
    /// connection run in order, so it runs after whatever was sent there
    /// before), else on a pooled one. Tried again on a fresh connection when
    /// that one broke (once), and while the resource's Cluster slot is
    /// changing hands (`TRYAGAIN`, `CLUSTERDOWN`, a redirection the routed
    /// connection gave up on), pausing 10 ms doubling to 200 ms: a release
    /// that returns has been applied, or failed for good, or ran out of
    /// `limit`.
    ///
    /// # Errors
    ///
    /// The last attempt's error; [`LockError::Unavailable`] when `limit`
    /// passed first.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, a request already written may still run.
    pub(crate) async fn run_release(
        &self,
        resource: &str,
        op: &'static str,
        call: (&Script, &[String], &[Arc<str>]),
        conn: Option<Conn>,
        limit: Duration,
    ) -> Result<Value, LockError> {
        let now = tokio::time::Instant::now();
        self.run_release_from(resource, op, call, conn, (now, limit))
            .await
    }

    /// As [`run_release`](Self::run_release), within `limit` of `started`
    /// (a caller's reading of the clock just now).
    ///
    /// # Errors
    ///
    /// As [`run_release`](Self::run_release).
    ///
    /// # Cancel safety
    ///
    /// As [`run_release`](Self::run_release).
    pub(crate) async fn run_release_from(
        &self,
        resource: &str,
        op: &'static str,
        call: (&Script, &[String], &[Arc<str>]),
        conn: Option<Conn>,
        (started, limit): (tokio::time::Instant, Duration),
    ) -> Result<Value, LockError> {
        let (script, keys, args) = call;
        let deadline = started + limit;
        let cmd = ops::evalsha(script, keys, args);
        let mut conn = conn;
        let mut retry = ReleaseRetry {
            reconnected: false,
            pause: Duration::from_millis(10),
            deadline,
        };
        // The common case: a connection at hand, and a limit no shorter than
        // its own response timeout (the client's request timeout), which
        // then bounds the one request: no timer of ours to arm and drop
        // (callgrind: a timer's registration, polls and removal were ~10%
        // of the client's instructions per acquire+release).
        let what = (script, &cmd, resource, op);
        if limit >= self.request_timeout()
            && let Some(mut c) = conn.take().or_else(|| self.inner.conns.ready())
            && let Some(v) = release_on(&mut c, what, &mut retry).await?
        {
            return Ok(v);
        }
        let attempts = async {
            loop {
                let mut c = match conn.take() {
                    Some(c) => c,
                    None => self.conn(resource, op).await?,
                };
                if let Some(v) = release_on(&mut c, what, &mut retry).await? {
                    return Ok(v);
                }
            }
        };
        // Boxed: the rare path (a retry, a fresh connection, a timer) would
        // otherwise make every release's future as large as itself.
        Box::pin(tokio::time::timeout_at(deadline, attempts))
            .await
            .unwrap_or_else(|_| Err(timed_out(resource, op)))
    }

    /// Runs a release script in a background task (a guard's `Drop`, an
    /// abandoned acquisition's undo) as [`run_release`](Self::run_release)
    /// does, within the client's `op_timeout`, then drops `keep` (for
    /// example a local turn that must outlive the release).
    ///
    /// Without a tokio runtime nothing is sent: the lease then expires by
    /// its TTL.
    pub(crate) fn spawn_release<K: Send + 'static>(
        &self,
        resource: Arc<str>,
        script: &'static Script,
        keys: Arc<[String]>,
        args: Args,
        conn: Option<Conn>,
        keep: K,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(
                resource = &*resource,
                "no tokio runtime to release on; the lock expires by its TTL"
            );
            return;
        };
        let this = self.clone();
        let task = self.inner.background.track_future(async move {
            let limit = this.inner.opts.request_timeout();
            let result = this
                .run_release(&resource, "release", (script, &keys, &args), conn, limit)
                .await;
            if let Err(e) = result {
                tracing::debug!(resource = &*resource, error = %e, "background release failed; the lock expires by its TTL");
            }
            drop(keep);
        });
        rt.spawn(task);
    }
}

/// What the options say of a lease of the client's TTL (the common case),
/// worked out once: these were a few hundred instructions per
/// acquire+release, each computed several times (callgrind).
#[derive(Debug)]
pub(crate) struct Timing {
    /// The client's TTL.
    pub(crate) ttl: Duration,
    /// `RedisOptions::request_timeout`.
    pub(crate) request_timeout: Duration,
    /// `RedisOptions::renew_interval_for(ttl)`.
    interval: Duration,
    /// `RedisOptions::drift_for(ttl)`.
    drift: Duration,
    /// The acquire scripts' arguments for it.
    pub(crate) args: LeaseArgs,
}

impl Timing {
    pub(crate) fn of(opts: &RedisOptions) -> Self {
        Self {
            ttl: opts.ttl,
            request_timeout: opts.request_timeout(),
            interval: opts.renew_interval_for(opts.ttl),
            drift: opts.drift_for(opts.ttl),
            args: LeaseArgs::new(opts.ttl, opts.server_ttl(opts.ttl)),
        }
    }

    fn interval_for(&self, opts: &RedisOptions, ttl: Duration) -> Duration {
        if ttl == self.ttl {
            self.interval
        } else {
            opts.renew_interval_for(ttl)
        }
    }

    fn drift_for(&self, opts: &RedisOptions, ttl: Duration) -> Duration {
        if ttl == self.ttl {
            self.drift
        } else {
            opts.drift_for(ttl)
        }
    }
}

/// Sends a release (`cmd`, an `EVALSHA` of `script`) on `c`: `Some` answer,
/// or `None` to send it again (after the pause `retry` says), or the error
/// to give up with.
async fn release_on(
    c: &mut Conn,
    (script, cmd, resource, op): (&Script, &redis::Cmd, &str, &'static str),
    retry: &mut ReleaseRetry,
) -> Result<Option<Value>, LockError> {
    let e = match ops::eval::<Value>(c, script, cmd).await {
        Ok(v) => return Ok(Some(v)),
        Err(e) => map_redis(e, resource, op),
    };
    match retry.after(&e, c, resource, op) {
        Some(nap) => {
            if !nap.is_zero() {
                // Boxed: a retry's timer stays out of every release's future.
                Box::pin(tokio::time::sleep(nap)).await;
            }
            Ok(None)
        }
        None => Err(e),
    }
}

/// When a failed release is sent again (see [`Context::run_release`]).
struct ReleaseRetry {
    /// Sent again once already because its connection broke.
    reconnected: bool,
    /// The next pause while a Cluster slot changes hands.
    pause: Duration,
    deadline: tokio::time::Instant,
}

impl ReleaseRetry {
    /// How long to pause before sending again after `e` on `conn` (on a
    /// fresh connection from the pool), or `None` to give up with `e`.
    fn after(
        &mut self,
        e: &LockError,
        conn: &Conn,
        resource: &str,
        op: &'static str,
    ) -> Option<Duration> {
        if conn.is_broken() && !self.reconnected {
            tracing::debug!(resource, op, error = %e, "connection broke; retrying once on a fresh one");
            self.reconnected = true;
            return Some(Duration::ZERO);
        }
        if !is_slot_moving(e) || tokio::time::Instant::now() + self.pause >= self.deadline {
            return None;
        }
        tracing::debug!(resource, op, error = %e, "slot changing hands; retrying");
        let nap = self.pause;
        self.pause = (self.pause * 2).min(Duration::from_millis(200));
        Some(nap)
    }
}

/// A reply of the wrong shape.
pub(crate) fn bad_reply(name: &str, op: &'static str, reply: &Value) -> LockError {
    protocol(name, op, format!("unexpected reply {reply:?}"))
}

/// How many resource names' keys a client keeps built.
const KEY_CACHE: usize = 4096;

/// Cancels the client's background tasks when dropped (so a cancelled
/// [`RedisLocks::shutdown`](crate::redis::RedisLocks::shutdown) still stops them).
struct StopOnDrop<'a>(&'a Inner);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("url", &self.inner.url)
            .field("key_prefix", &self.inner.opts.key_prefix)
            .field("ttl", &self.inner.opts.ttl)
            .field("held", &self.inner.watchdog.len())
            .finish_non_exhaustive()
    }
}
