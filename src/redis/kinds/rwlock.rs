//! [`RedisRwLock`]: a distributed readers/writer lock whose waiting writer
//! is not starved.
//!
//! The type's docs say how it works and what it promises.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::LockError;
use crate::guard::LockGuard;
use crate::lease::lease_guard;
use crate::lock::Lock;
use crate::options::{AcquireOptions, Deadline, Mode};
use crate::redis::acquire::held::Hold;
use crate::redis::context::Context;
use crate::redis::kinds::resource::Resource;

/// A distributed readers/writer lock on Redis: many readers or one writer,
/// across every process using the same name, prefix and server; a waiting
/// writer is not starved by a stream of readers.
///
/// Get one from [`RedisLocks::rwlock`](crate::redis::RedisLocks::rwlock). Cloning is cheap; clones (and other
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
/// It is the same lock as [`RedisLocks::lock`](crate::redis::RedisLocks::lock) of the same name: the writer
/// is an exclusive hold, the readers are shared holds (see the `resource`
/// module for the keys and the algorithm). A reader gets in when there is
/// neither an exclusive holder nor a writer intent. A writer gets in when
/// there is no other exclusive holder, no other writer's intent, and no live
/// reader; when only readers stand in its way it sets its intent, which
/// keeps new readers out, so the readers drain and the writer goes next: a
/// stream of readers cannot starve it. Every acquisition `INCR`s the
/// resource's fencing counter; releases publish on the release channel, and
/// a busy reply says when the blocking lease ends, so waiters never poll
/// blindly.
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
    res: Resource,
}

impl RedisRwLock {
    /// See [`RedisLocks::rwlock`](crate::redis::RedisLocks).
    pub(crate) fn new(client: &Context, name: &str) -> Result<Self, LockError> {
        Ok(RedisRwLock {
            res: Resource::new(client, name)?,
        })
    }
}

impl RedisRwLock {
    /// The lock's name.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisLocks, RedisOptions};
    ///
    /// let locks = RedisLocks::connect_lazy("redis://127.0.0.1:6380/", RedisOptions::default())?;
    /// assert_eq!(locks.rwlock("catalog")?.name(), "catalog");
    /// # Ok(())
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.res.named.name
    }

    /// Takes a read lock, waiting up to `timeout` ([`LockError::Timeout`]).
    /// Waits while a writer holds the lock or waits for it.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let rw = locks.rwlock("catalog")?;
    /// let a = rw.read(Duration::from_secs(5)).await?;
    /// let b = rw.read(Duration::from_secs(5)).await?; // readers share
    /// assert!(rw.try_write().await.unwrap_err().is_would_block());
    /// # drop((a, b));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] naming a holder if a writer kept it; [`LockError::WrongKind`] if the name is a semaphore; [`LockError::Unavailable`], [`LockError::Backend`] or [`LockError::Protocol`] if Redis failed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the guard-contract sense: if the future is dropped the
    /// caller leaves the in-process queue at once, and a read lock that an
    /// in-flight script call may still take on the server is given back by
    /// a background task with the attempt's own token (and expires by its
    /// TTL anyway if that fails).
    pub async fn read(&self, timeout: Duration) -> Result<RedisReadGuard, LockError> {
        self.read_until(&Deadline::after(Some(timeout)), None).await
    }

    /// Takes the write lock, waiting up to `timeout` ([`LockError::Timeout`]).
    /// While readers hold the lock, this writer's intent keeps new readers
    /// out.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let rw = locks.rwlock("catalog")?;
    /// let writer = rw.write(Duration::from_secs(5)).await?;
    /// assert!(rw.try_read().await.unwrap_err().is_would_block());
    /// writer.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] naming a holder if readers or a writer kept it; otherwise as [`read`](Self::read).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the guard-contract sense: if the future is dropped the
    /// caller leaves the in-process queue at once, and its writer intent (or
    /// a write lock an in-flight script call may still take) is withdrawn by
    /// a background task with the attempt's own token; if that fails, the
    /// intent expires after the lock TTL.
    pub async fn write(&self, timeout: Duration) -> Result<RedisWriteGuard, LockError> {
        self.write_until(&Deadline::after(Some(timeout)), None)
            .await
    }

    /// Takes a read lock if no writer holds or waits for it, else fails with
    /// [`LockError::WouldBlock`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let rw = locks.rwlock("catalog")?;
    /// match rw.try_read().await {
    ///     Ok(reader) => reader.release().await?,
    ///     Err(e) if e.is_would_block() => println!("a writer has it or waits: {e}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] if a writer holds it or waits; otherwise as [`read`](Self::read).
    ///
    /// # Cancel safety
    ///
    /// As [`read`](Self::read).
    pub async fn try_read(&self) -> Result<RedisReadGuard, LockError> {
        let held = self.res.try_hold(Mode::Shared, None).await?;
        Ok(RedisReadGuard { held })
    }

    /// Takes the write lock if nobody holds it, else fails with
    /// [`LockError::WouldBlock`] (leaving no writer intent behind).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let rw = locks.rwlock("catalog")?;
    /// let writer = rw.try_write().await?;
    /// assert!(rw.try_write().await.unwrap_err().is_would_block());
    /// # drop(writer);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] if anyone holds it; otherwise as [`read`](Self::read).
    ///
    /// # Cancel safety
    ///
    /// As [`write`](Self::write).
    pub async fn try_write(&self) -> Result<RedisWriteGuard, LockError> {
        let held = self.res.try_hold(Mode::Exclusive, None).await?;
        Ok(RedisWriteGuard { held })
    }

    /// Whether a reader or a writer holds the lock now. The answer may be
    /// stale by the time it is read.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let rw = locks.rwlock("catalog")?;
    /// let reader = rw.read(Duration::from_secs(5)).await?;
    /// assert!(rw.is_locked().await?);
    /// reader.release().await?;
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
    pub async fn is_locked(&self) -> Result<bool, LockError> {
        self.res.is_locked().await
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
        crate::redis::kinds::listing::owners(&self.res.client, &self.res.named.name, "lock").await
    }

    async fn read_until(
        &self,
        deadline: &Deadline,
        lease: Option<std::time::Duration>,
    ) -> Result<RedisReadGuard, LockError> {
        let held: Hold = self.res.hold(Mode::Shared, deadline, lease).await?;
        Ok(RedisReadGuard { held })
    }

    async fn write_until(
        &self,
        deadline: &Deadline,
        lease: Option<std::time::Duration>,
    ) -> Result<RedisWriteGuard, LockError> {
        let held = self.res.hold(Mode::Exclusive, deadline, lease).await?;
        Ok(RedisWriteGuard { held })
    }
}

impl fmt::Debug for RedisRwLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRwLock")
            .field("name", &self.res.named.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lock for RedisRwLock {
    fn name(&self) -> &str {
        &self.res.named.name
    }

    fn backend(&self) -> crate::stats::Backend {
        crate::stats::Backend::Redis
    }

    /// [`Mode::Shared`] reads, [`Mode::Exclusive`] writes.
    async fn lock(&self, options: &AcquireOptions) -> Result<LockGuard, LockError> {
        let deadline = Deadline::after(options.timeout);
        match options.mode {
            Mode::Shared => Ok(self.read_until(&deadline, options.lease).await?.into()),
            _ => Ok(self.write_until(&deadline, options.lease).await?.into()),
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

lease_guard!(RedisReadGuard, "redis", "RW lock");

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

lease_guard!(RedisWriteGuard, "redis", "RW lock");
