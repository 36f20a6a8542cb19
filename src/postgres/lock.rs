//! [`PgLock`]: a handle to one named advisory lock, exclusive or shared.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use tokio_postgres::types::Type;

use super::acquire::{Target, try_hold, wait_hold};
use super::context::PgLocks;
use super::errors::{map_pg, timed_out};
use super::guard::PgLockGuard;
use super::hold::Hold;
use super::keys::PgKey;
use crate::error::LockError;
use crate::guard::LockGuard;
use crate::lock::Lock;
use crate::options::{AcquireOptions, Deadline, Mode};
use crate::stats::{self, Backend};

/// A handle to one named advisory lock; see [`PgLocks::lock`]. Cheap to
/// clone; holds nothing by itself.
///
/// Exclusive holds (`pg_advisory_lock`) exclude every other hold of the
/// key; shared holds (`pg_advisory_lock_shared`, [`Mode::Shared`]) exclude
/// only exclusive ones.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use lockyard::{AcquireOptions, Lock};
/// use lockyard::postgres::PgLocks;
///
/// let locks = PgLocks::connect("postgres://app:secret@127.0.0.1/app").await?;
/// let lock: Arc<dyn Lock> = Arc::new(locks.lock("billing")?);
/// let guard = lock.lock(&AcquireOptions::exclusive().timeout(Duration::from_secs(5))).await?;
/// assert_eq!(guard.resource(), "billing");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PgLock {
    client: PgLocks,
    name: String,
    key: PgKey,
}

impl PgLock {
    pub(crate) fn new(client: &PgLocks, name: &str, key: PgKey) -> Self {
        Self {
            client: client.clone(),
            name: name.to_owned(),
            key,
        }
    }

    /// The resource name.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// assert_eq!(locks.lock("billing")?.name(), "billing");
    /// # Ok(())
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The advisory lock key the name maps to.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// println!("{}", locks.lock("billing")?.key());
    /// # Ok(())
    /// # }
    /// ```
    pub fn key(&self) -> PgKey {
        self.key
    }

    /// Acquires the lock exclusively, waiting at most `timeout`; see
    /// [`PgLocks::acquire`].
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// let guard = locks.lock("billing")?.acquire(std::time::Duration::from_secs(5)).await?;
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`PgLocks::acquire`].
    ///
    /// # Cancel safety
    ///
    /// As [`PgLocks::acquire`].
    pub async fn acquire(&self, timeout: Duration) -> Result<PgLockGuard, LockError> {
        self.acquire_with(&AcquireOptions::exclusive().timeout(timeout))
            .await
    }

    /// Acquires the lock in `options.mode`, waiting at most
    /// `options.timeout` (`None`: for ever). `options.lease` is ignored: a
    /// session lock has no lease.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// use lockyard::AcquireOptions;
    /// let opts = AcquireOptions::shared().timeout(std::time::Duration::from_secs(1));
    /// let guard = locks.lock("billing")?.acquire_with(&opts).await?;
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`PgLocks::acquire`].
    ///
    /// # Cancel safety
    ///
    /// As [`PgLocks::acquire`].
    pub async fn acquire_with(&self, options: &AcquireOptions) -> Result<PgLockGuard, LockError> {
        let deadline = Deadline::after(options.timeout);
        let attempt = stats::site(Backend::Postgres, &self.name).begin();
        let result = if deadline.remaining() == Some(Duration::ZERO) {
            // lock_timeout has no "zero": a zero wait is a try.
            try_hold(
                &self.client,
                &self.name,
                Target::Lock(self.key),
                options.mode,
            )
            .await
            .map_err(|e| match e {
                LockError::WouldBlock { resource, holder } => LockError::Timeout {
                    resource,
                    waited: deadline.elapsed(),
                    holder,
                },
                other => other,
            })
        } else {
            wait_hold(
                &self.client,
                &self.name,
                Target::Lock(self.key),
                options.mode,
                &deadline,
                &attempt,
            )
            .await
        };
        let held = attempt.record(result, Hold::count)?;
        Ok(PgLockGuard { held })
    }

    /// Acquires the lock exclusively if it is free now.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// match locks.lock("billing")?.try_acquire().await {
    ///     Ok(guard) => guard.release().await?,
    ///     Err(e) if e.is_would_block() => println!("busy"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`PgLocks::try_acquire`].
    ///
    /// # Cancel safety
    ///
    /// As [`PgLocks::acquire`].
    pub async fn try_acquire(&self) -> Result<PgLockGuard, LockError> {
        self.try_acquire_mode(Mode::Exclusive).await
    }

    /// Acquires the lock in `mode` if that is possible now.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// let lock = locks.lock("billing")?;
    /// let reader = lock.try_acquire_mode(lockyard::Mode::Shared).await?;
    /// let another = lock.try_acquire_mode(lockyard::Mode::Shared).await?;
    /// # drop((reader, another));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`PgLocks::try_acquire`].
    ///
    /// # Cancel safety
    ///
    /// As [`PgLocks::acquire`].
    pub async fn try_acquire_mode(&self, mode: Mode) -> Result<PgLockGuard, LockError> {
        let attempt = stats::site(Backend::Postgres, &self.name).begin();
        let result = try_hold(&self.client, &self.name, Target::Lock(self.key), mode).await;
        let held = attempt.record(result, Hold::count)?;
        Ok(PgLockGuard { held })
    }

    /// Whether any session of the database holds the lock now (from
    /// `pg_locks`).
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// let locked = locks.lock("billing")?.is_locked().await?;
    /// # let _ = locked;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] if the server cannot be reached;
    /// [`LockError::Backend`] if it refuses the query.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks.
    pub async fn is_locked(&self) -> Result<bool, LockError> {
        const OP: &str = "look at pg_locks";
        let session = self.client.session(&self.name).await?;
        let (classid, objid, objsubid) = self.key.pg_locks_ids();
        let limit = self.client.options().op_timeout;
        let typed = [
            (
                &classid as &(dyn tokio_postgres::types::ToSql + Sync),
                Type::INT8,
            ),
            (&objid, Type::INT8),
            (&objsubid, Type::INT2),
        ];
        let look = session.client.query_typed_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND classid::int8 = $1 AND objid::int8 = $2 AND objsubid = $3)",
            &typed,
        );
        let result = match tokio::time::timeout(limit, look).await {
            Ok(Ok(row)) => row
                .try_get::<_, bool>(0)
                .map_err(|e| map_pg(&self.name, OP, e)),
            Ok(Err(e)) => Err(map_pg(&self.name, OP, e)),
            Err(_) => return Err(timed_out(&self.name, OP, limit)),
        };
        // A query answered (or refused) leaves the session as it was.
        self.client.put_back(session);
        result
    }
}

impl fmt::Debug for PgLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLock")
            .field("name", &self.name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lock for PgLock {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    /// # Cancel safety
    ///
    /// As [`PgLocks::acquire`].
    async fn lock(&self, options: &AcquireOptions) -> Result<LockGuard, LockError> {
        Ok(self.acquire_with(options).await?.into())
    }

    /// # Cancel safety
    ///
    /// As [`PgLocks::acquire`].
    async fn try_lock(&self, mode: Mode) -> Result<LockGuard, LockError> {
        Ok(self.try_acquire_mode(mode).await?.into())
    }

    async fn is_locked(&self) -> Result<bool, LockError> {
        PgLock::is_locked(self).await
    }
}
