//! [`RedisSemaphore`]: a distributed counting semaphore with expiring,
//! renewed permits.
//!
//! The type's docs say how it works and what it promises.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::LockError;
use crate::guard::LockGuard;
use crate::lease::lease_guard;
use crate::lock::Lock;
use crate::lost::Moment;
use crate::options::{AcquireOptions, Deadline, Mode};
use crate::redis::acquire::held::Hold;
use crate::redis::acquire::waiting::{self, Pending, ScriptCall, Undo, WaitFor};
use crate::redis::context::ops;
use crate::redis::context::{Context, Named};
use crate::redis::lease::Expired;
use crate::redis::protocol::scripts;
use crate::redis::protocol::token;
use crate::stats::Acquisition;

/// A distributed counting semaphore on Redis: at most `permits` holders at
/// a time across every process using the same name, prefix and server.
///
/// Get one from [`RedisLocks::semaphore`](crate::redis::RedisLocks::semaphore). Cloning is cheap and clones share
/// the in-process wait queue (so do separate handles to the same name on
/// the same client).
///
/// As a [`Lock`], both [`Mode::Exclusive`] and [`Mode::Shared`] take one
/// permit: a semaphore has no exclusive mode (use [`RedisRwLock`] for
/// readers/writer).
///
/// [`RedisRwLock`]: crate::redis::RedisRwLock
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::time::Duration;
/// use lockyard::redis::RedisLocks;
///
/// let locks = RedisLocks::connect("redis://127.0.0.1:7777").await?;
/// let gpus = locks.semaphore("gpus", 4)?;
/// let permit = gpus.acquire(Duration::from_secs(10)).await?;
/// println!("got a GPU, fencing token {}", permit.fencing_token());
/// permit.release().await?;
/// # Ok(())
/// # }
/// ```
///
/// # How it works
///
/// The permits of a semaphore are a sorted set
/// (`{prefix}{<name>}:sem`): one member per holder, its token, scored by the
/// permit's expiry in milliseconds on the *Redis server's* clock (the scripts
/// read `TIME`, so client clocks do not matter). The acquire script first
/// drops expired members — a crashed holder's permit comes back by itself
/// after its TTL — then adds ours if fewer than `permits` remain, and
/// `INCR`s the resource's fencing counter, all atomically. The client's
/// watchdog renews live permits (batched with every other lease of the
/// client); a permit found gone or expired on renewal fires the guard's
/// [`lost`](RedisPermitGuard::lost) signal at once. Release removes the
/// member and publishes on the release channel, which wakes waiters.
///
/// The permit count is stored with the semaphore (`{prefix}{<name>}:permits`,
/// living as long as the sorted set) by its first holder: a caller using
/// another count for the same name gets [`LockError::PermitsMismatch`] rather
/// than a silently wrong bound, and a name in use as a lock (exclusive or
/// shared) is refused with [`LockError::WrongKind`], as is a lock on a name in
/// use as a semaphore. A semaphore nobody holds keeps no state: the next first
/// holder sets the count again.
///
/// A busy acquire reply says when the earliest permit expires, so a waiter
/// sleeps until the first of: a release message, that expiry, its deadline.
/// Tasks of one process queue in a fair in-process FIFO in front of one
/// remote waiter per resource.
///
/// # What it does not promise
///
/// - Fairness is FIFO among the tasks of one process; across processes the
///   next permit goes to whichever waiter asks first after a release.
/// - Like every lease-based lock, a holder paused longer than its TTL (GC,
///   swap, `SIGSTOP`) may still run while another process got its permit:
///   watch [`lost`](RedisPermitGuard::lost) and use the fencing token where
///   the protected resource can check it.
/// - There is deliberately no semaphore over several independent servers
///   ([`Redlock`](crate::redis::Redlock)): counting permits needs one source of
///   truth.
#[derive(Clone)]
pub struct RedisSemaphore {
    inner: Arc<SemaphoreInner>,
}

struct SemaphoreInner {
    client: Context,
    /// The name, its keys and stats entry: the client's, shared by every
    /// handle of the name.
    named: Arc<Named>,
    permits: u32,
}

impl RedisSemaphore {
    /// See [`RedisLocks::semaphore`](crate::redis::RedisLocks).
    pub(crate) fn new(client: &Context, name: &str, permits: u32) -> Result<Self, LockError> {
        let named = client.named(name)?;
        if permits == 0 {
            return Err(LockError::InvalidArgument {
                what: "permits",
                reason: "a semaphore needs at least one permit".to_owned(),
            });
        }
        Ok(RedisSemaphore {
            inner: Arc::new(SemaphoreInner {
                client: client.clone(),
                named,
                permits,
            }),
        })
    }
}

impl RedisSemaphore {
    /// The semaphore's name.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisLocks, RedisOptions};
    ///
    /// let locks = RedisLocks::connect_lazy("redis://127.0.0.1:6380/", RedisOptions::default())?;
    /// let downloads = locks.semaphore("downloads", 2)?;
    /// assert_eq!(downloads.name(), "downloads");
    /// # Ok(())
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.inner.named.name
    }

    /// How many permits it has.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisLocks, RedisOptions};
    ///
    /// let locks = RedisLocks::connect_lazy("redis://127.0.0.1:6380/", RedisOptions::default())?;
    /// let downloads = locks.semaphore("downloads", 2)?;
    /// assert_eq!(downloads.permits(), 2);
    /// assert!(locks.semaphore("uploads", 0).unwrap_err().is_invalid_input());
    /// # Ok(())
    /// # }
    /// ```
    pub fn permits(&self) -> u32 {
        self.inner.permits
    }

    /// Takes a permit, waiting up to `timeout` ([`LockError::Timeout`]).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let downloads = locks.semaphore("downloads", 2)?;
    /// let a = downloads.acquire(Duration::from_secs(5)).await?;
    /// let b = downloads.acquire(Duration::from_secs(5)).await?;
    /// let third = downloads.acquire(Duration::from_millis(50)).await;
    /// assert!(third.unwrap_err().is_timeout()); // both permits are taken
    /// # drop((a, b));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// - [`LockError::Timeout`] if every permit stayed held; `holder()` names one holder.
    /// - [`LockError::PermitsMismatch`] if the name is stored with another permit count.
    /// - [`LockError::WrongKind`] if the name is already used as a lock.
    /// - [`LockError::Unavailable`], [`LockError::Backend`] or [`LockError::Protocol`] if Redis failed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the guard-contract sense: if the future is dropped,
    /// no permit stays taken beyond a moment. The caller leaves the
    /// in-process queue at once; if an acquire script call was in flight, it
    /// may still run on the server after the drop and take a permit, which
    /// a background task then gives back with the attempt's own token (and
    /// which expires by its TTL anyway if that fails).
    pub async fn acquire(&self, timeout: Duration) -> Result<RedisPermitGuard, LockError> {
        self.acquire_until(&Deadline::after(Some(timeout)), Mode::Shared, None)
            .await
    }

    /// Takes a permit, waiting as `options.timeout` says (`None`: for
    /// ever). `options.mode` is ignored: every permit is alike.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{AcquireOptions, redis::RedisLocks};
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let downloads = locks.semaphore("downloads", 2)?;
    /// // Wait for ever, and keep the permit 2 minutes should this process stall.
    /// let opts = AcquireOptions::new().wait_forever().lease(Duration::from_secs(120));
    /// let permit = downloads.acquire_with(&opts).await?;
    /// permit.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire); [`LockError::InvalidArgument`] for a lease the client refuses.
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_with(
        &self,
        options: &AcquireOptions,
    ) -> Result<RedisPermitGuard, LockError> {
        self.acquire_until(
            &Deadline::after(options.timeout),
            options.mode,
            options.lease,
        )
        .await
    }

    /// Takes a permit if one is free right now, else fails with
    /// [`LockError::WouldBlock`]. It does not wait for this process's other
    /// waiters either.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let downloads = locks.semaphore("downloads", 2)?;
    /// let Ok(permit) = downloads.try_acquire().await else {
    ///     return Ok(()); // busy: try again on the next tick
    /// };
    /// permit.run_until_lost(async { /* the download */ }).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] if no permit is free; otherwise as [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn try_acquire(&self) -> Result<RedisPermitGuard, LockError> {
        self.try_acquire_mode(Mode::Shared).await
    }

    async fn try_acquire_mode(&self, mode: Mode) -> Result<RedisPermitGuard, LockError> {
        // Every try of a permit is counted here.
        let attempt = self.inner.named.begin();
        let result = self.try_once(mode).await;
        attempt.record(result, |g, held| g.held.count(held))
    }

    async fn try_once(&self, mode: Mode) -> Result<RedisPermitGuard, LockError> {
        let i = &self.inner;
        let ttl = i.client.options().lease_for(None)?;
        let token = token::fresh_value(&i.named.name, mode)?;
        let mut pending = Pending::new(
            &i.client,
            &i.named.name,
            Undo::release(self.release_call(&token)),
            ttl,
        )
        .await?;
        let guard = waiting::try_once(
            &mut pending,
            &self.acquire_call(&token, ttl),
            "acquire permit",
            |fencing, sent_at| self.guard(&token, fencing, sent_at, mode, ttl),
        )
        .await?;
        pending.done();
        Ok(guard)
    }

    /// How many permits are held now (expired ones not counted). The answer
    /// may be stale by the time it is read.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let downloads = locks.semaphore("downloads", 2)?;
    /// let permit = downloads.acquire(Duration::from_secs(5)).await?;
    /// assert!(downloads.holders().await? >= 1);
    /// # drop(permit);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`], [`LockError::Backend`] or [`LockError::Protocol`] if Redis failed or answered garbage.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn holders(&self) -> Result<u32, LockError> {
        let i = &self.inner;
        let n =
            ops::count_live(&i.client, &i.named.name, "count permits", &i.named.keys.sem).await?;
        u32::try_from(n).map_err(|_| LockError::Protocol {
            resource: i.named.name.to_string(),
            op: "count permits",
            detail: format!("count {n} out of range"),
        })
    }

    /// Who holds permits now, longest-held first (at most 100 of them;
    /// holders whose value lockyard did not write are left out). The answer
    /// may be stale by the time it is read.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// # let locks = lockyard::redis::RedisLocks::connect("redis://127.0.0.1:7777").await?;
    /// for owner in locks.semaphore("gpus", 4)?.owners().await? {
    ///     println!("pid {} on {} since {:?}", owner.pid, owner.host, owner.since);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`], [`LockError::Backend`] or
    /// [`LockError::Protocol`] if Redis failed or answered garbage.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn owners(&self) -> Result<Vec<crate::Owner>, LockError> {
        crate::redis::kinds::listing::owners(
            &self.inner.client,
            &self.inner.named.name,
            "semaphore",
        )
        .await
    }

    async fn acquire_until(
        &self,
        deadline: &Deadline,
        mode: Mode,
        lease: Option<Duration>,
    ) -> Result<RedisPermitGuard, LockError> {
        // Every wait for a permit is counted here.
        let attempt = self.inner.named.begin();
        let result = self.wait_until(deadline, mode, lease, &attempt).await;
        attempt.record(result, |g, held| g.held.count(held))
    }

    async fn wait_until(
        &self,
        deadline: &Deadline,
        mode: Mode,
        lease: Option<Duration>,
        attempt: &Acquisition,
    ) -> Result<RedisPermitGuard, LockError> {
        let i = &self.inner;
        let ttl = i.client.options().lease_for(lease)?;
        let turn =
            waiting::local_turn(&i.client, &i.named.name, &i.named.name, deadline, attempt).await?;
        let token = token::fresh_value(&i.named.name, mode)?;
        let undo = Undo::release(self.release_call(&token));
        let mut pending =
            Pending::new_within(&i.client, &i.named.name, undo, ttl, deadline).await?;
        let wait = WaitFor {
            client: &i.client,
            resource: &i.named.name,
            channel: &i.named.keys.channel,
            what: "semaphore permit",
            max_nap: ttl,
            turn: Some(&turn),
            stats: attempt,
            after_claim: None,
        };
        let guard = waiting::wait_until_granted(
            wait,
            deadline,
            &mut pending,
            &self.acquire_call(&token, ttl),
            |_| false,
            |fencing, sent_at| self.guard(&token, fencing, sent_at, mode, ttl),
        )
        .await?;
        pending.done();
        drop(turn);
        Ok(guard)
    }

    fn acquire_call(&self, token: &Arc<str>, ttl: Duration) -> ScriptCall {
        let i = &self.inner;
        ScriptCall {
            script: &scripts::SEMAPHORE_ACQUIRE,
            keys: i.named.keys.sets.sem_acquire.clone(),
            args: Arc::new([
                token.clone(),
                i.client.lease_args(ttl).server_ms.clone(),
                i.permits.to_string().into(),
            ]),
        }
    }

    fn release_call(&self, token: &Arc<str>) -> ScriptCall {
        let i = &self.inner;
        ScriptCall {
            script: scripts::SEMAPHORE_RELEASE.get(i.client.is_cluster()),
            keys: i.named.keys.sets.sem_release.clone(),
            args: Arc::new([token.clone(), i.named.keys.channel.clone()]),
        }
    }

    fn guard(
        &self,
        token: &Arc<str>,
        fencing: u64,
        sent_at: Moment,
        mode: Mode,
        ttl: Duration,
    ) -> Result<RedisPermitGuard, Expired> {
        let i = &self.inner;
        let release = self.release_call(token);
        // The release's arguments (see `semaphore_renew.lua`).
        let renew = ScriptCall {
            script: &scripts::RENEW_MEMBER,
            keys: i.named.keys.sets.sem_renew.clone(),
            args: release.args.clone(),
        };
        Ok(RedisPermitGuard {
            held: Hold::new(
                &i.client,
                &i.named.name,
                mode,
                fencing,
                sent_at,
                ttl,
                renew,
                release,
            )?,
        })
    }
}

impl fmt::Debug for RedisSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSemaphore")
            .field("name", &self.inner.named.name)
            .field("permits", &self.inner.permits)
            .field("key", &self.inner.named.keys.sem)
            .finish()
    }
}

#[async_trait]
impl Lock for RedisSemaphore {
    fn name(&self) -> &str {
        &self.inner.named.name
    }

    fn backend(&self) -> crate::stats::Backend {
        crate::stats::Backend::Redis
    }

    /// Takes one permit, whatever the mode.
    async fn lock(&self, options: &AcquireOptions) -> Result<LockGuard, LockError> {
        Ok(self.acquire_with(options).await?.into())
    }

    /// Takes one permit if one is free, whatever the mode.
    async fn try_lock(&self, mode: Mode) -> Result<LockGuard, LockError> {
        Ok(self.try_acquire_mode(mode).await?.into())
    }

    /// Whether any permit is held.
    async fn is_locked(&self) -> Result<bool, LockError> {
        Ok(self.holders().await? > 0)
    }
}

/// One permit of a [`RedisSemaphore`]. Renewed in the background while it
/// lives; given back when dropped (in a background task) or by
/// [`release`](Self::release).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// # let locks = lockyard::redis::RedisLocks::connect("redis://127.0.0.1:7777").await?;
/// let permit = locks.semaphore("jobs", 2)?.try_acquire().await?;
/// // Stop the work if the permit cannot be renewed any more.
/// let out = tokio::select! {
///     () = permit.lost() => None,
///     out = async { 42 } => Some(out),
/// };
/// assert_eq!(out, Some(42));
/// # Ok(())
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct RedisPermitGuard {
    held: Hold,
}

lease_guard!(RedisPermitGuard, "redis", "semaphore");
