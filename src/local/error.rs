//! The small error types of the in-process primitives.
//!
//! They carry no context on purpose (a semaphore has no name); the
//! [`Lock`](crate::Lock) adapters translate them into [`LockError`](crate::LockError).

/// Why [`Semaphore::try_acquire`](super::Semaphore::try_acquire) and friends
/// returned without a permit.
///
/// ```
/// use lockyard::local::{Semaphore, TryAcquireError};
///
/// let semaphore = Semaphore::new(0);
/// assert_eq!(semaphore.try_acquire().unwrap_err(), TryAcquireError::NoPermits);
/// semaphore.close();
/// assert_eq!(semaphore.try_acquire().unwrap_err(), TryAcquireError::Closed);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryAcquireError {
    /// The semaphore has been closed and issues no more permits.
    #[error("semaphore closed")]
    Closed,
    /// Not enough permits are available right now.
    #[error("no permits available")]
    NoPermits,
}

impl TryAcquireError {
    /// Whether the semaphore was closed.
    ///
    /// ```
    /// assert!(lockyard::local::TryAcquireError::Closed.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        matches!(self, TryAcquireError::Closed)
    }

    /// Whether there were not enough permits.
    ///
    /// ```
    /// assert!(lockyard::local::TryAcquireError::NoPermits.is_no_permits());
    /// ```
    pub fn is_no_permits(&self) -> bool {
        matches!(self, TryAcquireError::NoPermits)
    }
}

/// An acquisition that waits can only fail because the semaphore was
/// [closed](super::Semaphore::close).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use lockyard::local::Semaphore;
///
/// let semaphore = Semaphore::new(1);
/// semaphore.close();
/// let err = semaphore.acquire().await.unwrap_err();
/// assert_eq!(err.to_string(), "semaphore closed");
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("semaphore closed")]
pub struct AcquireError(pub(crate) ());

/// Why [`Semaphore::acquire_timeout`](super::Semaphore::acquire_timeout) and
/// friends returned without a permit.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use lockyard::local::{AcquireTimeoutError, Semaphore};
///
/// let semaphore = Semaphore::new(0);
/// let err = semaphore.acquire_timeout(Duration::from_millis(1)).await.unwrap_err();
/// assert_eq!(err, AcquireTimeoutError::Timeout);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcquireTimeoutError {
    /// The semaphore has been closed and issues no more permits.
    #[error("semaphore closed")]
    Closed,
    /// The permits did not become available in time.
    #[error("timed out waiting for permits")]
    Timeout,
}

impl AcquireTimeoutError {
    /// Whether the semaphore was closed.
    ///
    /// ```
    /// assert!(lockyard::local::AcquireTimeoutError::Closed.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        matches!(self, AcquireTimeoutError::Closed)
    }

    /// Whether the wait timed out.
    ///
    /// ```
    /// assert!(lockyard::local::AcquireTimeoutError::Timeout.is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self, AcquireTimeoutError::Timeout)
    }
}

/// A [`RwLock::try_read`](super::RwLock::try_read) or
/// [`try_write`](super::RwLock::try_write) found the lock held in a
/// conflicting mode (or a writer waiting).
///
/// ```
/// use lockyard::local::RwLock;
///
/// let lock = RwLock::new(0);
/// let _w = lock.try_write().unwrap();
/// assert_eq!(lock.try_read().unwrap_err().to_string(), "operation would block");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("operation would block")]
pub struct TryLockError(pub(crate) ());
