//! [`PgRwLock`]: readers and a writer of one name, on one advisory key.
//!
//! A thin view of [`PgLock`]: reading is a shared hold
//! (`pg_advisory_lock_shared`), writing an exclusive one, of the same key,
//! so the RW lock of a name *is* the lock of that name.
//!
//! # Fairness
//!
//! The server's lock queue decides: a request that conflicts with one
//! already waiting waits behind it, so a waiting writer is not starved by
//! a stream of new readers (their tries fail, and their waits queue behind
//! the writer), and waiters are served in order.

use std::time::Duration;

use super::context::PgLocks;
use super::guard::PgLockGuard;
use super::lock::PgLock;
use crate::error::LockError;
use crate::options::{AcquireOptions, Mode};

/// A readers-writer lock on Postgres; see [`PgLocks::rwlock`].
///
/// A thin view of [`PgLock`]: reading is a shared hold
/// (`pg_advisory_lock_shared`), writing an exclusive one, of the same key,
/// so the RW lock of a name *is* the lock of that name.
///
/// # Fairness
///
/// The server's lock queue decides: a request that conflicts with one
/// already waiting waits behind it, so a waiting writer is not starved by
/// a stream of new readers (their tries fail, and their waits queue behind
/// the writer), and waiters are served in order.
///
/// ```no_run
/// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
/// use std::time::Duration;
/// let rw = locks.rwlock("catalog")?;
/// let r1 = rw.read(Duration::from_secs(5)).await?;
/// let r2 = rw.read(Duration::from_secs(5)).await?; // readers share
/// assert!(rw.try_write().await.unwrap_err().is_would_block());
/// # drop((r1, r2));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct PgRwLock {
    lock: PgLock,
}

impl PgLocks {
    /// The readers-writer lock `name` (the same key as [`lock`](Self::lock)).
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// let rw = locks.rwlock("catalog")?;
    /// # drop(rw);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for a name the key mode refuses.
    pub fn rwlock(&self, name: &str) -> Result<PgRwLock, LockError> {
        Ok(PgRwLock {
            lock: self.lock(name)?,
        })
    }
}

impl PgRwLock {
    /// The name.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// assert_eq!(locks.rwlock("catalog")?.name(), "catalog");
    /// # Ok(())
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        self.lock.name()
    }

    /// Reads (a shared hold), waiting at most `timeout`.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// let r = locks.rwlock("catalog")?.read(std::time::Duration::from_secs(5)).await?;
    /// # drop(r);
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
    pub async fn read(&self, timeout: Duration) -> Result<PgLockGuard, LockError> {
        self.lock
            .acquire_with(&AcquireOptions::shared().timeout(timeout))
            .await
    }

    /// Writes (an exclusive hold), waiting at most `timeout`.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// let w = locks.rwlock("catalog")?.write(std::time::Duration::from_secs(5)).await?;
    /// # drop(w);
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
    pub async fn write(&self, timeout: Duration) -> Result<PgLockGuard, LockError> {
        self.lock.acquire(timeout).await
    }

    /// Reads if no writer holds it (or waits for it) now.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// let r = locks.rwlock("catalog")?.try_read().await?;
    /// # drop(r);
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
    pub async fn try_read(&self) -> Result<PgLockGuard, LockError> {
        self.lock.try_acquire_mode(Mode::Shared).await
    }

    /// Writes if nobody holds it now.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// let w = locks.rwlock("catalog")?.try_write().await?;
    /// # drop(w);
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
    pub async fn try_write(&self) -> Result<PgLockGuard, LockError> {
        self.lock.try_acquire().await
    }

    /// Whether a reader or the writer holds it now.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks) -> Result<(), lockyard::LockError> {
    /// println!("{}", locks.rwlock("catalog")?.is_locked().await?);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`PgLock::is_locked`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks.
    pub async fn is_locked(&self) -> Result<bool, LockError> {
        self.lock.is_locked().await
    }
}
