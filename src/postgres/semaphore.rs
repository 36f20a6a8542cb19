//! [`PgSemaphore`]: up to `permits` holders of one name at once, on
//! advisory locks.
//!
//! # Design
//!
//! Postgres has no counting advisory lock, so a semaphore of `permits` is
//! `permits` exclusive advisory locks whose keys are derived from the name
//! (see [`PgSemaphore::permit_keys`]). Taking a permit tries the keys in
//! order with `pg_try_advisory_lock`, in one statement that stops at the
//! first one granted. When every permit is taken, the waiter blocks on
//! *one* permit's key, picked at random, with the server's own wait (as a
//! lock does), and is woken when that permit's holder releases.
//!
//! # Fairness
//!
//! Waiters of one permit are served by the server's lock queue, first come
//! first served. Across permits there is no queue: a waiter blocked on
//! permit 2 keeps waiting while permit 0 frees (a newcomer's try takes
//! that one). With `permits` = 1 it is a lock. Use it where throughput
//! matters more than order; a waiter still ends at its timeout.
//!
//! Every user of one semaphore must pass the same `permits`: the count is
//! not stored, and a client asking for more permits has more keys.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use tokio_postgres::types::Type;

use super::acquire::{Target, try_hold, wait_hold};
use super::context::PgLocks;
use super::errors::{map_pg, timed_out};
use super::guard::PgLockGuard;
use super::hold::Hold;
use super::keys::permit_keys;
use crate::error::LockError;
use crate::guard::LockGuard;
use crate::lock::Lock;
use crate::options::{AcquireOptions, Deadline, Mode};
use crate::stats::{self, Backend};

/// The most permits a semaphore may have (each is a key tried in turn).
const MAX_PERMITS: u32 = 4096;

/// A semaphore on Postgres advisory locks; see [`PgLocks::semaphore`].
/// advisory locks.
///
/// # Design
///
/// Postgres has no counting advisory lock, so a semaphore of `permits` is
/// `permits` exclusive advisory locks whose keys are derived from the name
/// (see [`PgSemaphore::permit_keys`]). Taking a permit tries the keys in
/// order with `pg_try_advisory_lock`, in one statement that stops at the
/// first one granted. When every permit is taken, the waiter blocks on
/// *one* permit's key, picked at random, with the server's own wait (as a
/// lock does), and is woken when that permit's holder releases.
///
/// # Fairness
///
/// Waiters of one permit are served by the server's lock queue, first come
/// first served. Across permits there is no queue: a waiter blocked on
/// permit 2 keeps waiting while permit 0 frees (a newcomer's try takes
/// that one). With `permits` = 1 it is a lock. Use it where throughput
/// matters more than order; a waiter still ends at its timeout.
///
/// Every user of one semaphore must pass the same `permits`: the count is
/// not stored, and a client asking for more permits has more keys.
///
/// ```no_run
/// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
/// let sem = locks.semaphore("exports", 3)?;
/// let permit = sem.acquire(std::time::Duration::from_secs(10)).await?;
/// // at most 3 holders run here at once
/// permit.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PgSemaphore {
    client: PgLocks,
    name: String,
    keys: Vec<i64>,
}

impl PgLocks {
    /// A semaphore of `permits` named `name`.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// let sem = locks.semaphore("exports", 3)?;
    /// assert_eq!(sem.permits(), 3);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidArgument`] for 0 permits or more than 4096.
    pub fn semaphore(&self, name: &str, permits: u32) -> Result<PgSemaphore, LockError> {
        if permits == 0 || permits > MAX_PERMITS {
            return Err(LockError::InvalidArgument {
                what: "permits",
                reason: format!("{permits}: a semaphore has 1 to {MAX_PERMITS} permits"),
            });
        }
        Ok(PgSemaphore {
            client: self.clone(),
            name: name.to_owned(),
            keys: permit_keys(name, permits),
        })
    }
}

impl PgSemaphore {
    /// The name.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// assert_eq!(locks.semaphore("exports", 3)?.name(), "exports");
    /// # Ok(())
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of permits.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// assert_eq!(locks.semaphore("exports", 3)?.permits(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn permits(&self) -> u32 {
        u32::try_from(self.keys.len()).unwrap_or(u32::MAX)
    }

    /// The permits' advisory lock keys (`bigint`s), in the order they are
    /// tried: permit `i`'s is the first 8 bytes, big-endian, of the SHA-256
    /// of `lockyard-semaphore-v1`, a NUL byte, the name, a NUL byte, and
    /// `i` in decimal.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// assert_eq!(locks.semaphore("exports", 3)?.permit_keys().len(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn permit_keys(&self) -> &[i64] {
        &self.keys
    }

    /// Takes a permit, waiting at most `timeout`.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// let permit = locks.semaphore("exports", 3)?.acquire(std::time::Duration::from_secs(5)).await?;
    /// # drop(permit);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] if every permit stayed taken (as far as the
    /// permit waited on shows); otherwise as [`PgLocks::acquire`].
    ///
    /// # Cancel safety
    ///
    /// As [`PgLocks::acquire`]: a dropped acquisition never keeps a permit.
    pub async fn acquire(&self, timeout: Duration) -> Result<PgLockGuard, LockError> {
        self.acquire_with(&AcquireOptions::exclusive().timeout(timeout))
            .await
    }

    /// Takes a permit, waiting at most `options.timeout` (`None`: for
    /// ever). A permit is always exclusive: `options.mode` is ignored.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// let permit = locks.semaphore("exports", 3)?.acquire_with(&lockyard::AcquireOptions::new()).await?;
    /// # drop(permit);
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
    pub async fn acquire_with(&self, options: &AcquireOptions) -> Result<PgLockGuard, LockError> {
        let deadline = Deadline::after(options.timeout);
        let attempt = stats::site(Backend::Postgres, &self.name).begin();
        let target = Target::Permits(&self.keys);
        let result = if deadline.remaining() == Some(Duration::ZERO) {
            try_hold(&self.client, &self.name, target, Mode::Exclusive)
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
                target,
                Mode::Exclusive,
                &deadline,
                &attempt,
            )
            .await
        };
        let held = attempt.record(result, Hold::count)?;
        Ok(PgLockGuard { held })
    }

    /// Takes a permit if one is free now.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// let sem = locks.semaphore("exports", 1)?;
    /// let permit = sem.try_acquire().await?;
    /// assert!(sem.try_acquire().await.unwrap_err().is_would_block());
    /// # drop(permit);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] if every permit is taken; otherwise as
    /// [`PgLocks::acquire`].
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn try_acquire(&self) -> Result<PgLockGuard, LockError> {
        let attempt = stats::site(Backend::Postgres, &self.name).begin();
        let target = Target::Permits(&self.keys);
        let result = try_hold(&self.client, &self.name, target, Mode::Exclusive).await;
        let held = attempt.record(result, Hold::count)?;
        Ok(PgLockGuard { held })
    }

    /// How many permits are taken now (any session of the database).
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// println!("{} taken", locks.semaphore("exports", 3)?.holders().await?);
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
    pub async fn holders(&self) -> Result<u32, LockError> {
        const OP: &str = "look at pg_locks";
        let session = self.client.session(&self.name).await?;
        let typed = [(
            &self.keys as &(dyn tokio_postgres::types::ToSql + Sync),
            Type::INT8_ARRAY,
        )];
        // A bigint key's bits are classid << 32 | objid (shifts wrap).
        let look = session.client.query_typed_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND objsubid = 1 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND ((classid::int8 << 32) | objid::int8) = ANY($1)",
            &typed,
        );
        let limit = self.client.options().op_timeout;
        let result = match tokio::time::timeout(limit, look).await {
            Ok(Ok(row)) => row
                .try_get::<_, i64>(0)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                .map_err(|e| map_pg(&self.name, OP, e)),
            Ok(Err(e)) => Err(map_pg(&self.name, OP, e)),
            Err(_) => return Err(timed_out(&self.name, OP, limit)),
        };
        self.client.put_back(session);
        result
    }
}

impl fmt::Debug for PgSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSemaphore")
            .field("name", &self.name)
            .field("permits", &self.keys.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lock for PgSemaphore {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    /// Takes a permit (any mode).
    ///
    /// # Cancel safety
    ///
    /// As [`PgLocks::acquire`].
    async fn lock(&self, options: &AcquireOptions) -> Result<LockGuard, LockError> {
        Ok(self.acquire_with(options).await?.into())
    }

    /// # Cancel safety
    ///
    /// As [`PgLocks::acquire`].
    async fn try_lock(&self, _mode: Mode) -> Result<LockGuard, LockError> {
        Ok(self.try_acquire().await?.into())
    }

    /// Whether any permit is taken.
    async fn is_locked(&self) -> Result<bool, LockError> {
        Ok(self.holders().await? > 0)
    }
}
