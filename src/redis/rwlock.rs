//! [`RedisRwLock`]: a distributed readers/writer lock whose waiting writer
//! is not starved.
//!
//! The type's docs say how it works and what it promises.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use tokio::time::Instant;

use super::client::RedisLocks;
use super::held::{Hold, held_guard};
use super::keys::validate_name;
use super::lease::Expired;
use super::ops::{self, invoke};
use super::semaphore::{COUNT_LIVE, RENEW_MEMBER};
use super::waiting::{self, Pending, ScriptCall, WaitFor};
use crate::error::LockError;
use crate::guard::LockGuard;
use crate::lock::Lock;
use crate::options::{AcquireOptions, Deadline, Mode};

static READ: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/rwlock_read.lua")));
static WRITE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/rwlock_write.lua")));
static READ_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/rwlock_read_release.lua")));
static WRITE_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/rwlock_write_release.lua")));
static WRITE_RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/token_renew.lua")));

/// `rwlock_write.lua`'s busy reason: readers hold it and our intent is set.
const REASON_INTENT_SET: i64 = 3;

/// A distributed readers/writer lock on Redis: many readers or one writer,
/// across every process using the same name, prefix and server; a waiting
/// writer is not starved by a stream of readers.
///
/// Get one from [`RedisLocks::rwlock`]. Cloning is cheap; clones (and other
/// handles to the same name on the same client) share one in-process queue.
/// As a [`Lock`], [`Mode::Shared`] is a read lock and [`Mode::Exclusive`]
/// the write lock.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::time::Duration;
/// use lockyard::redis::RedisLocks;
///
/// let locks = RedisLocks::connect("redis://127.0.0.1:7777").await?;
/// let config = locks.rwlock("config")?;
/// {
///     let r1 = config.read(Duration::from_secs(5)).await?;
///     let r2 = config.read(Duration::from_secs(5)).await?; // readers share
///     assert!(config.try_write().await.unwrap_err().is_would_block());
/// }
/// let w = config.write(Duration::from_secs(5)).await?;
/// w.release().await?;
/// # Ok(())
/// # }
/// ```
///
/// # How it works
///
/// Three keys per resource, all under one hash tag:
/// - `{prefix}{<name>}:rw:readers`: a sorted set of reader tokens scored by
///   expiry (ms, Redis server clock), like the semaphore's permits;
/// - `{prefix}{<name>}:rw:writer`: the writer's token, `PX ttl`;
/// - `{prefix}{<name>}:rw:intent`: the token of the first *waiting* writer,
///   with a short `PX` it refreshes on every attempt while it waits.
///
/// A reader gets in when there is neither a writer nor a writer intent. A
/// writer gets in when there is no other writer, no other writer's intent,
/// and no live reader; when only readers stand in its way it sets its
/// intent, which keeps new readers out, so the readers drain and the writer
/// goes next: a stream of readers cannot starve it. Writers queue behind
/// the first waiting writer. Every acquisition `INCR`s the resource's
/// fencing counter. Releases publish on the release channel; the writer's
/// release and the last reader's release wake waiters, and a busy reply
/// says when the blocking lease ends, so waiters never poll blindly.
///
/// A crashed reader or writer comes back by itself after its TTL; a crashed
/// *waiting* writer's intent after the intent TTL (the lock TTL).
///
/// # What it does not promise
///
/// - Reader-to-writer upgrade is not supported: a task holding a read lock
///   that asks for the write lock waits for itself until its timeout. For
///   the same reason, taking a second read lock while holding one can wait
///   for a writer that itself waits for the first read lock (writers come
///   first); do not nest read locks.
/// - Fairness is FIFO among one process's tasks (readers and writers share
///   one in-process queue); across processes, writers come first once one
///   waits, and otherwise whoever asks first after a release wins.
/// - Like every lease, a holder paused past its TTL may overlap the next
///   holder: watch [`lost`](RedisWriteGuard::lost) and use fencing tokens.
#[derive(Clone)]
pub struct RedisRwLock {
    inner: Arc<RwInner>,
}

struct RwInner {
    client: RedisLocks,
    name: String,
    readers_key: String,
    writer_key: String,
    intent_key: String,
    fence_key: String,
    channel: String,
    /// The in-process queue's name: `{rw}<name>`, which no lock name can be.
    queue: String,
}

impl RedisLocks {
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
    pub fn rwlock(&self, name: &str) -> Result<RedisRwLock, LockError> {
        validate_name(name)?;
        Ok(RedisRwLock {
            inner: Arc::new(RwInner {
                client: self.clone(),
                name: name.to_owned(),
                readers_key: self.key(name, "rw:readers"),
                writer_key: self.key(name, "rw:writer"),
                intent_key: self.key(name, "rw:intent"),
                fence_key: self.key(name, "fence"),
                channel: self.key(name, "rw:released"),
                queue: format!("{{rw}}{name}"),
            }),
        })
    }
}

impl RedisRwLock {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Takes a read lock, waiting up to `timeout` ([`LockError::Timeout`]).
    /// Waits while a writer holds the lock or waits for it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the guard-contract sense: if the future is dropped the
    /// caller leaves the in-process queue at once, and a read lock that an
    /// in-flight script call may still take on the server is given back by
    /// a background task with the attempt's own token (and expires by its
    /// TTL anyway if that fails).
    pub async fn read(&self, timeout: Duration) -> Result<RedisReadGuard, LockError> {
        self.read_until(&Deadline::after(Some(timeout))).await
    }

    /// Takes the write lock, waiting up to `timeout` ([`LockError::Timeout`]).
    /// While readers hold the lock, this writer's intent keeps new readers
    /// out.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the guard-contract sense: if the future is dropped the
    /// caller leaves the in-process queue at once, and its writer intent (or
    /// a write lock an in-flight script call may still take) is withdrawn by
    /// a background task with the attempt's own token; if that fails, the
    /// intent expires after the lock TTL.
    pub async fn write(&self, timeout: Duration) -> Result<RedisWriteGuard, LockError> {
        self.write_until(&Deadline::after(Some(timeout))).await
    }

    /// Takes a read lock if no writer holds or waits for it, else fails with
    /// [`LockError::WouldBlock`].
    ///
    /// # Cancel safety
    ///
    /// As [`read`](Self::read).
    pub async fn try_read(&self) -> Result<RedisReadGuard, LockError> {
        let i = &self.inner;
        let token = ops::owner_value(&i.name, Mode::Shared)?;
        let mut pending = Pending::new(&i.client, &i.name, self.read_release(&token)).await?;
        let guard = waiting::try_once(
            &mut pending,
            &self.read_call(&token),
            "read lock",
            |fencing, sent_at| self.read_guard(&token, fencing, sent_at),
        )
        .await?;
        pending.done();
        Ok(guard)
    }

    /// Takes the write lock if nobody holds it, else fails with
    /// [`LockError::WouldBlock`] (leaving no writer intent behind).
    ///
    /// # Cancel safety
    ///
    /// As [`write`](Self::write).
    pub async fn try_write(&self) -> Result<RedisWriteGuard, LockError> {
        let i = &self.inner;
        let token = ops::owner_value(&i.name, Mode::Exclusive)?;
        let mut pending = Pending::new(&i.client, &i.name, self.write_release(&token)).await?;
        let guard = waiting::try_once(
            &mut pending,
            &self.write_call(&token, false),
            "write lock",
            |fencing, sent_at| self.write_guard(&token, fencing, sent_at),
        )
        .await?;
        pending.done();
        Ok(guard)
    }

    /// Whether a reader or a writer holds the lock now. The answer may be
    /// stale by the time it is read.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn is_locked(&self) -> Result<bool, LockError> {
        let i = &self.inner;
        let readers: i64 = invoke(
            &i.client,
            &i.name,
            "count readers",
            &COUNT_LIVE,
            &[&i.readers_key],
            &[],
        )
        .await?;
        if readers > 0 {
            return Ok(true);
        }
        let writer: i64 = invoke(
            &i.client,
            &i.name,
            "check writer",
            &EXISTS,
            &[&i.writer_key],
            &[],
        )
        .await?;
        Ok(writer > 0)
    }

    /// Who holds the lock now: the writer, or the readers longest-held first
    /// (at most 100 of them; holders whose value lockyard did not write are
    /// left out). Each [`Owner`](crate::Owner)'s `mode` says which. The
    /// answer may be stale by the time it is read.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// # let locks = lockyard::redis::RedisLocks::connect("redis://127.0.0.1:7777").await?;
    /// for owner in locks.rwlock("config")?.owners().await? {
    ///     println!("{} by pid {} on {}", owner.mode, owner.pid, owner.host);
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
        super::listing::owners(&self.inner.client, &self.inner.name, "rwlock").await
    }

    async fn read_until(&self, deadline: &Deadline) -> Result<RedisReadGuard, LockError> {
        let i = &self.inner;
        let turn = waiting::local_turn(&i.client, &i.queue, &i.name, deadline).await?;
        let token = ops::owner_value(&i.name, Mode::Shared)?;
        let mut pending = Pending::new(&i.client, &i.name, self.read_release(&token)).await?;
        let wait = WaitFor {
            client: &i.client,
            resource: &i.name,
            channel: &i.channel,
            what: "read lock",
            max_nap: i.client.options().ttl,
        };
        let guard = waiting::wait_until_granted(
            wait,
            deadline,
            &mut pending,
            &self.read_call(&token),
            |_| false,
            |fencing, sent_at| self.read_guard(&token, fencing, sent_at),
        )
        .await?;
        pending.done();
        drop(turn);
        Ok(guard)
    }

    async fn write_until(&self, deadline: &Deadline) -> Result<RedisWriteGuard, LockError> {
        let i = &self.inner;
        let turn = waiting::local_turn(&i.client, &i.queue, &i.name, deadline).await?;
        let token = ops::owner_value(&i.name, Mode::Exclusive)?;
        let mut pending = Pending::new(&i.client, &i.name, self.write_release(&token)).await?;
        let wait = WaitFor {
            client: &i.client,
            resource: &i.name,
            channel: &i.channel,
            what: "write lock",
            // Refresh the intent well before it expires.
            max_nap: intent_ttl(i.client.options().ttl) / 3,
        };
        let result = waiting::wait_until_granted(
            wait,
            deadline,
            &mut pending,
            &self.write_call(&token, true),
            |reason| reason == REASON_INTENT_SET,
            |fencing, sent_at| self.write_guard(&token, fencing, sent_at),
        )
        .await;
        match result {
            Ok(guard) => {
                pending.done();
                drop(turn);
                Ok(guard)
            }
            Err(e) => {
                // Withdraw our intent now rather than in the background, so
                // the readers it blocks go on at once.
                if e.is_timeout() {
                    pending.undo_now().await;
                }
                Err(e)
            }
        }
    }

    fn read_call(&self, token: &str) -> ScriptCall {
        let i = &self.inner;
        ScriptCall {
            script: &READ,
            keys: vec![
                i.readers_key.clone(),
                i.writer_key.clone(),
                i.intent_key.clone(),
                i.fence_key.clone(),
            ],
            args: vec![token.to_owned(), ops::ms(i.client.options().ttl)],
        }
    }

    fn write_call(&self, token: &str, queue: bool) -> ScriptCall {
        let i = &self.inner;
        let ttl = i.client.options().ttl;
        let intent = if queue {
            ops::ms(intent_ttl(ttl))
        } else {
            "0".to_owned()
        };
        ScriptCall {
            script: &WRITE,
            keys: vec![
                i.readers_key.clone(),
                i.writer_key.clone(),
                i.intent_key.clone(),
                i.fence_key.clone(),
            ],
            args: vec![token.to_owned(), ops::ms(ttl), intent],
        }
    }

    fn read_release(&self, token: &str) -> ScriptCall {
        let i = &self.inner;
        ScriptCall {
            script: &READ_RELEASE,
            keys: vec![i.readers_key.clone(), i.channel.clone()],
            args: vec![token.to_owned()],
        }
    }

    fn write_release(&self, token: &str) -> ScriptCall {
        let i = &self.inner;
        ScriptCall {
            script: &WRITE_RELEASE,
            keys: vec![
                i.writer_key.clone(),
                i.intent_key.clone(),
                i.channel.clone(),
            ],
            args: vec![token.to_owned()],
        }
    }

    fn read_guard(
        &self,
        token: &str,
        fencing: u64,
        sent_at: Instant,
    ) -> Result<RedisReadGuard, Expired> {
        let i = &self.inner;
        Ok(RedisReadGuard {
            held: Hold::new(
                &i.client,
                &i.name,
                Mode::Shared,
                fencing,
                sent_at,
                ScriptCall {
                    script: &RENEW_MEMBER,
                    keys: vec![i.readers_key.clone()],
                    args: vec![token.to_owned()],
                },
                self.read_release(token),
            )?,
        })
    }

    fn write_guard(
        &self,
        token: &str,
        fencing: u64,
        sent_at: Instant,
    ) -> Result<RedisWriteGuard, Expired> {
        let i = &self.inner;
        Ok(RedisWriteGuard {
            held: Hold::new(
                &i.client,
                &i.name,
                Mode::Exclusive,
                fencing,
                sent_at,
                ScriptCall {
                    script: &WRITE_RENEW,
                    keys: vec![i.writer_key.clone()],
                    args: vec![token.to_owned()],
                },
                self.write_release(token),
            )?,
        })
    }
}

static EXISTS: LazyLock<Script> =
    LazyLock::new(|| Script::new("return redis.call('EXISTS', KEYS[1])"));

/// How long a waiting writer's intent lives without a refresh: the lock TTL,
/// so a crashed waiting writer blocks readers no longer than a crashed
/// holder would.
fn intent_ttl(ttl: Duration) -> Duration {
    ttl.max(Duration::from_millis(3))
}

impl fmt::Debug for RedisRwLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRwLock")
            .field("name", &self.inner.name)
            .field("writer_key", &self.inner.writer_key)
            .finish()
    }
}

#[async_trait]
impl Lock for RedisRwLock {
    fn name(&self) -> &str {
        &self.inner.name
    }

    /// [`Mode::Shared`] reads, [`Mode::Exclusive`] writes.
    async fn lock(&self, options: &AcquireOptions) -> Result<LockGuard, LockError> {
        let deadline = Deadline::after(options.timeout);
        match options.mode {
            Mode::Shared => Ok(self.read_until(&deadline).await?.into()),
            _ => Ok(self.write_until(&deadline).await?.into()),
        }
    }

    async fn try_lock(&self, mode: Mode) -> Result<LockGuard, LockError> {
        match mode {
            Mode::Shared => Ok(self.try_read().await?.into()),
            _ => Ok(self.try_write().await?.into()),
        }
    }

    async fn is_locked(&self) -> Result<bool, LockError> {
        RedisRwLock::is_locked(self).await
    }
}

/// A read lock on a [`RedisRwLock`]. Renewed in the background while it
/// lives; given back when dropped (in a background task) or by
/// [`release`](Self::release).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// # let locks = lockyard::redis::RedisLocks::connect("redis://127.0.0.1:7777").await?;
/// let guard = locks.rwlock("config")?.try_read().await?;
/// assert!(!guard.is_lost());
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct RedisReadGuard {
    held: Hold,
}

held_guard!(RedisReadGuard, "RW lock");

/// The write lock on a [`RedisRwLock`]. Renewed in the background while it
/// lives; given back when dropped (in a background task) or by
/// [`release`](Self::release).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// # let locks = lockyard::redis::RedisLocks::connect("redis://127.0.0.1:7777").await?;
/// let guard = locks.rwlock("config")?.try_write().await?;
/// println!("writing with fencing token {}", guard.fencing_token());
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct RedisWriteGuard {
    held: Hold,
}

held_guard!(RedisWriteGuard, "RW lock");
