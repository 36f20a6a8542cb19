//! The small error types of the in-process primitives.
//!
//! They carry no context on purpose (a semaphore has no name). Each
//! converts into [`LockError`] with `From` (so `?` works in code that
//! returns `LockError`), with an empty resource name ([`LockError::resource`]
//! is then `None`); the [`Lock`](crate::Lock) adapters build the same
//! variants with their name:
//!
//! | local error | `LockError` |
//! |---|---|
//! | [`AcquireError`], `*::Closed` | [`Closed`](LockError::Closed) |
//! | [`TryAcquireError::NoPermits`] | [`Saturated`](LockError::Saturated), not timed out |
//! | [`AcquireTimeoutError::Timeout`] | [`Saturated`](LockError::Saturated), timed out |
//! | [`TryLockError`] (RW lock) | [`WouldBlock`](LockError::WouldBlock) |
//! | [`LockTimeoutError`] (RW lock) | [`Timeout`](LockError::Timeout) |
//!
//! So a semaphore out of permits ([`LockError::is_saturated`]) stays
//! distinguishable from a lock held by someone.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::Duration;
//! use lockyard::LockError;
//! use lockyard::local::{RwLock, Semaphore};
//!
//! async fn admit(slots: &Semaphore, table: &RwLock<u32>) -> Result<u32, LockError> {
//!     let _slot = slots.acquire_timeout(Duration::from_millis(5)).await?;
//!     let row = table.read_timeout(Duration::from_millis(5)).await?;
//!     Ok(*row)
//! }
//!
//! let (slots, table) = (Semaphore::new(1), RwLock::new(7));
//! assert_eq!(admit(&slots, &table).await.unwrap(), 7);
//! let held = slots.acquire().await.unwrap();
//! let err = admit(&slots, &table).await.unwrap_err();
//! assert!(err.is_saturated() && err.is_timeout() && err.resource().is_none());
//! drop(held);
//! let writer = table.write().await;
//! let err = admit(&slots, &table).await.unwrap_err();
//! assert!(err.is_timeout() && !err.is_saturated());
//! drop(writer);
//! # }
//! ```

use crate::error::LockError;

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

/// A [`RwLock::read_timeout`](super::RwLock::read_timeout) or
/// [`write_timeout`](super::RwLock::write_timeout) (or an owned twin) gave
/// up: the lock stayed held in a conflicting mode for the whole timeout.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use lockyard::local::RwLock;
///
/// let lock = RwLock::new(0);
/// let _w = lock.write().await;
/// let err = lock.read_timeout(Duration::from_millis(5)).await.unwrap_err();
/// assert_eq!(err.waited(), Duration::from_millis(5));
/// assert_eq!(err.to_string(), "timed out after 5ms waiting for the lock");
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {waited:?} waiting for the lock")]
pub struct LockTimeoutError {
    pub(crate) waited: std::time::Duration,
}

impl LockTimeoutError {
    /// The timeout that passed (how long the caller waited).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    ///
    /// let lock = lockyard::local::RwLock::new(());
    /// let _r = lock.read().await;
    /// let err = lock.write_timeout(Duration::ZERO).await.unwrap_err();
    /// assert_eq!(err.waited(), Duration::ZERO);
    /// # }
    /// ```
    pub fn waited(&self) -> std::time::Duration {
        self.waited
    }
}

impl From<AcquireError> for LockError {
    fn from(AcquireError(()): AcquireError) -> Self {
        LockError::Closed {
            resource: String::new(),
        }
    }
}

impl From<TryAcquireError> for LockError {
    fn from(err: TryAcquireError) -> Self {
        match err {
            TryAcquireError::Closed => AcquireError(()).into(),
            TryAcquireError::NoPermits => LockError::Saturated {
                resource: String::new(),
                timed_out: false,
                waited: None,
            },
        }
    }
}

impl From<AcquireTimeoutError> for LockError {
    fn from(err: AcquireTimeoutError) -> Self {
        match err {
            AcquireTimeoutError::Closed => AcquireError(()).into(),
            AcquireTimeoutError::Timeout => LockError::Saturated {
                resource: String::new(),
                timed_out: true,
                waited: None,
            },
        }
    }
}

impl From<TryLockError> for LockError {
    fn from(TryLockError(()): TryLockError) -> Self {
        LockError::WouldBlock {
            resource: String::new(),
            holder: None,
        }
    }
}

impl From<LockTimeoutError> for LockError {
    fn from(err: LockTimeoutError) -> Self {
        LockError::Timeout {
            resource: String::new(),
            waited: err.waited,
            holder: None,
        }
    }
}
