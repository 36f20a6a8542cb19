//! [`RedisLock`]: a handle to one named lock, exclusive or shared.
//!
//! A thin layer over [`Resource`]: the plain lock's exclusive mode is the
//! RW lock's writer and its shared mode the RW lock's readers (one name is
//! one lock).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::LockError;
use crate::guard::LockGuard;
use crate::lock::Lock;
use crate::options::{AcquireOptions, Deadline, Mode};
use crate::owner::Owner;
use crate::redis::context::Context;
use crate::redis::kinds::guard::RedisLockGuard;
use crate::redis::kinds::resource::Resource;

/// A handle to one named lock on Redis; see [`RedisLocks::lock`](crate::redis::RedisLocks::lock). Cheap to
/// clone; holds nothing by itself.
///
/// Exclusive holds exclude every other hold of the name; shared holds
/// ([`Mode::Shared`]) exclude only exclusive ones. The same name's
/// [`RedisRwLock`](crate::redis::RedisRwLock) is the same lock: its writer is an
/// exclusive hold and its readers are shared holds. A name in use as a
/// semaphore is refused with [`LockError::WrongKind`].
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use lockyard::{AcquireOptions, Lock};
/// use lockyard::redis::RedisLocks;
///
/// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
/// let lock: Arc<dyn Lock> = Arc::new(locks.lock("billing")?);
/// let guard = lock.lock(&AcquireOptions::exclusive().timeout(Duration::from_secs(5))).await?;
/// assert_eq!(guard.resource(), "billing");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisLock {
    res: Resource,
}

impl RedisLock {
    pub(crate) fn new(client: &Context, name: &str) -> Result<Self, LockError> {
        Ok(Self {
            res: Resource::new(client, name)?,
        })
    }

    /// The resource name.
    ///
    /// No server is needed to make a handle:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::{RedisLocks, RedisOptions};
    ///
    /// let locks = RedisLocks::connect_lazy("redis://127.0.0.1:6380/", RedisOptions::default())?;
    /// assert_eq!(locks.lock("billing")?.name(), "billing");
    /// # Ok(())
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.res.named.name
    }

    /// Acquires the lock exclusively, waiting at most `timeout`; see
    /// [`RedisLocks::acquire`](crate::redis::RedisLocks::acquire).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let lock = locks.lock("billing")?;
    /// let guard = lock.acquire(Duration::from_secs(5)).await?;
    /// // The handle is cheap to keep and reuse; it holds nothing itself.
    /// assert!(lock.try_acquire().await.unwrap_err().is_would_block());
    /// guard.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`RedisLocks::acquire`](crate::redis::RedisLocks::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`RedisLocks::acquire`](crate::redis::RedisLocks::acquire).
    pub async fn acquire(&self, timeout: Duration) -> Result<RedisLockGuard, LockError> {
        self.acquire_with(&AcquireOptions::exclusive().timeout(timeout))
            .await
    }

    /// Acquires the lock in `options.mode` (exclusive or shared), waiting
    /// at most `options.timeout` (`None`: for ever), with a lease of
    /// `options.lease` (`None`: the client's TTL).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{AcquireOptions, redis::RedisLocks};
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let lock = locks.lock("billing")?;
    /// // A short lease for this acquisition only: 5 s instead of the client's TTL.
    /// let opts = AcquireOptions::exclusive().timeout(Duration::from_secs(1)).lease(Duration::from_secs(5));
    /// let guard = lock.acquire_with(&opts).await?;
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`RedisLocks::acquire`](crate::redis::RedisLocks::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`RedisLocks::acquire`](crate::redis::RedisLocks::acquire).
    pub async fn acquire_with(
        &self,
        options: &AcquireOptions,
    ) -> Result<RedisLockGuard, LockError> {
        let deadline = Deadline::after(options.timeout);
        let held = self
            .res
            .hold(options.mode, &deadline, options.lease)
            .await?;
        Ok(RedisLockGuard { held })
    }

    /// Acquires the lock exclusively if it is free now; see
    /// [`RedisLocks::try_acquire`](crate::redis::RedisLocks::try_acquire).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let lock = locks.lock("billing")?;
    /// match lock.try_acquire().await {
    ///     Ok(guard) => guard.release().await?,
    ///     Err(e) if e.is_would_block() => println!("busy: {e}"), // names the holder
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`RedisLocks::try_acquire`](crate::redis::RedisLocks::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`RedisLocks::acquire`](crate::redis::RedisLocks::acquire).
    pub async fn try_acquire(&self) -> Result<RedisLockGuard, LockError> {
        self.try_acquire_mode(Mode::Exclusive).await
    }

    /// Acquires the lock in `mode` if that is possible now.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{Mode, redis::RedisLocks};
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let lock = locks.lock("billing")?;
    /// let reader = lock.try_acquire_mode(Mode::Shared).await?;
    /// let another = lock.try_acquire_mode(Mode::Shared).await?; // readers share
    /// assert!(lock.try_acquire().await.unwrap_err().is_would_block());
    /// # drop((reader, another));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`RedisLocks::try_acquire`](crate::redis::RedisLocks::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`RedisLocks::acquire`](crate::redis::RedisLocks::acquire).
    pub async fn try_acquire_mode(&self, mode: Mode) -> Result<RedisLockGuard, LockError> {
        let held = self.res.try_hold(mode, None).await?;
        Ok(RedisLockGuard { held })
    }

    /// Whether anyone holds the lock now, exclusively or shared.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let lock = locks.lock("billing")?;
    /// let guard = lock.acquire(Duration::from_secs(5)).await?;
    /// assert!(lock.is_locked().await?);
    /// guard.release().await?;
    /// assert!(!lock.is_locked().await?);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// Redis errors ([`LockError::Unavailable`], [`LockError::Backend`],
    /// [`LockError::Protocol`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks.
    pub async fn is_locked(&self) -> Result<bool, LockError> {
        self.res.is_locked().await
    }

    /// Who holds the lock exclusively now; see [`RedisLocks::owner`](crate::redis::RedisLocks::owner).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::redis::RedisLocks;
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let lock = locks.lock("billing")?;
    /// let guard = lock.acquire(Duration::from_secs(5)).await?;
    /// let owner = lock.owner().await?.unwrap();
    /// assert_eq!(owner.pid, std::process::id());
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`RedisLocks::owner`](crate::redis::RedisLocks::owner).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks.
    pub async fn owner(&self) -> Result<Option<Owner>, LockError> {
        crate::redis::kinds::listing::owner(&self.res.client, &self.res.named.name).await
    }
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLock")
            .field("name", &self.res.named.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lock for RedisLock {
    fn name(&self) -> &str {
        &self.res.named.name
    }

    fn backend(&self) -> crate::stats::Backend {
        crate::stats::Backend::Redis
    }

    /// # Cancel safety
    ///
    /// As [`RedisLocks::acquire`](crate::redis::RedisLocks::acquire).
    async fn lock(&self, options: &AcquireOptions) -> Result<LockGuard, LockError> {
        Ok(self.acquire_with(options).await?.into())
    }

    /// # Cancel safety
    ///
    /// As [`RedisLocks::acquire`](crate::redis::RedisLocks::acquire).
    async fn try_lock(&self, mode: Mode) -> Result<LockGuard, LockError> {
        Ok(self.try_acquire_mode(mode).await?.into())
    }

    async fn is_locked(&self) -> Result<bool, LockError> {
        self.res.is_locked().await
    }
}
