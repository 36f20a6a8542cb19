//! [`RwLock`]: a fair reader-writer lock on the FIFO semaphore core.
//!
//! A reader takes one permit of [`MAX_READS`], a writer takes all of them;
//! the core hands permits out in FIFO order, so a queued writer holds back
//! the readers that come after it and is never starved.
//!
//! The guards (`guards.rs`, `owned_guards.rs`) hold a pointer to the data
//! rather than the lock, so that they can be mapped to a part of it; the
//! permits they hold are what makes dereferencing that pointer sound.

mod guards;
mod owned_guards;

use std::cell::UnsafeCell;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::batch::BatchSemaphore;
use super::error::{LockTimeoutError, TryLockError};
use super::timeout::{Expired, tokio_timer, within};

pub use guards::{RwLockMappedWriteGuard, RwLockReadGuard, RwLockWriteGuard};
pub use owned_guards::{OwnedRwLockMappedWriteGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard};

/// The most readers that can hold an [`RwLock`] at once (`u32::MAX >> 3`);
/// a writer takes all of these permits.
pub const MAX_READS: u32 = u32::MAX >> 3;

/// A fair reader-writer lock for tasks and threads: many readers or one
/// writer.
///
/// It guards a value of type `T`; `RwLock<()>` (the default) guards a
/// resource that is not data, such as a directory or a model on disk.
///
/// # Fairness
///
/// Readers and writers are served in the order they asked (FIFO). When a
/// writer is queued, readers that arrive after it wait behind it, even while
/// other readers hold the lock; so a writer is never starved by a stream of
/// readers, and readers are never starved by writers either. `try_read` and
/// `try_write` never jump the queue.
///
/// # Async and blocking
///
/// [`read`](Self::read) and [`write`](Self::write) are `async`;
/// [`blocking_read`](Self::blocking_read) and
/// [`blocking_write`](Self::blocking_write) park the calling thread instead,
/// for code outside any async runtime. Both wait in the same queue.
///
/// # Memory ordering
///
/// Releasing a write guard *happens before* every later acquisition of the
/// lock, and releasing a read guard happens before the next write
/// acquisition: what a writer wrote is visible to the readers and writers
/// after it.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use lockyard::local::RwLock;
///
/// let config = RwLock::new(String::from("v1"));
/// {
///     let a = config.read().await;
///     let b = config.read().await; // readers share
///     assert_eq!(*a, *b);
/// }
/// config.write().await.push_str("-patched");
/// assert_eq!(*config.read().await, "v1-patched");
/// # }
/// ```
pub struct RwLock<T: ?Sized = ()> {
    semaphore: BatchSemaphore,
    /// Access rule: shared references only while a read or write guard
    /// exists (that is, while permits are held), a mutable one only while a
    /// write guard exists (all `MAX_READS` permits held); or through
    /// `&mut self`.
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&T` to several threads at once (readers), and
// `&mut T` to one thread at a time, which may move values in and out: so
// sharing the lock needs `T: Send + Sync`, sending it needs `T: Send`. This
// is what `std::sync::RwLock` requires.
unsafe impl<T: ?Sized + Send> Send for RwLock<T> {}
// SAFETY: see above.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwLock<T> {}

impl<T> RwLock<T> {
    /// A lock guarding `value`, free.
    ///
    /// ```
    /// let lock = lockyard::local::RwLock::new(());
    /// assert!(lock.try_write().is_ok());
    /// ```
    pub fn new(value: T) -> Self {
        Self {
            semaphore: BatchSemaphore::new(MAX_READS as usize),
            data: UnsafeCell::new(value),
        }
    }

    /// Consumes the lock and returns the value.
    ///
    /// ```
    /// let lock = lockyard::local::RwLock::new(3);
    /// assert_eq!(lock.into_inner(), 3);
    /// ```
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: Default> Default for RwLock<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: ?Sized> RwLock<T> {
    /// Waits for shared access.
    ///
    /// Waits behind any writer queued or holding the lock.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. Dropping the future leaves the queue; if access had
    /// already been granted, it is handed on. The caller loses only its place
    /// in the queue.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lock = lockyard::local::RwLock::new(1);
    /// let (a, b) = (lock.read().await, lock.read().await);
    /// assert_eq!(*a + *b, 2);
    /// # }
    /// ```
    pub async fn read(&self) -> RwLockReadGuard<'_, T> {
        acquired(self.semaphore.acquire(1).await);
        RwLockReadGuard::new(self)
    }

    /// Waits for exclusive access.
    ///
    /// While it waits at the front of the queue, the readers already in
    /// finish, and no reader after it starts.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. Dropping the future leaves the queue and hands back the
    /// reader slots already set aside for it, so the readers queued behind
    /// it proceed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lock = lockyard::local::RwLock::new(1);
    /// *lock.write().await = 2;
    /// assert_eq!(*lock.read().await, 2);
    /// # }
    /// ```
    pub async fn write(&self) -> RwLockWriteGuard<'_, T> {
        acquired(self.semaphore.acquire(MAX_READS as usize).await);
        RwLockWriteGuard::new(self)
    }

    /// Waits for shared access, up to `timeout`.
    ///
    /// Free access is taken even with a zero timeout; the timer starts only
    /// if the caller has to wait, so it needs a tokio runtime with the time
    /// driver only then.
    ///
    /// # Errors
    ///
    /// [`LockTimeoutError`] if a writer held the lock, or was queued ahead,
    /// for the whole `timeout`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`read`](Self::read). On timeout the caller has left
    /// the queue and holds nothing.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    ///
    /// let lock = lockyard::local::RwLock::new(1);
    /// assert_eq!(*lock.read_timeout(Duration::ZERO).await.unwrap(), 1);
    /// let w = lock.write().await;
    /// assert!(lock.read_timeout(Duration::from_millis(5)).await.is_err());
    /// drop(w);
    /// # }
    /// ```
    pub async fn read_timeout(
        &self,
        timeout: Duration,
    ) -> Result<RwLockReadGuard<'_, T>, LockTimeoutError> {
        timed(self.read(), timeout).await
    }

    /// Waits for exclusive access, up to `timeout`.
    ///
    /// # Errors
    ///
    /// [`LockTimeoutError`] if anyone held the lock, or was queued ahead,
    /// for the whole `timeout`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`write`](Self::write): on timeout or cancellation
    /// the reader slots already set aside for it are handed on, so the
    /// readers queued behind it proceed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    ///
    /// let lock = lockyard::local::RwLock::new(1);
    /// let r = lock.read().await;
    /// assert!(lock.write_timeout(Duration::from_millis(5)).await.is_err());
    /// drop(r);
    /// *lock.write_timeout(Duration::from_secs(1)).await.unwrap() = 2;
    /// # }
    /// ```
    pub async fn write_timeout(
        &self,
        timeout: Duration,
    ) -> Result<RwLockWriteGuard<'_, T>, LockTimeoutError> {
        timed(self.write(), timeout).await
    }

    /// Shared access if it is free now and no writer is queued.
    ///
    /// ```
    /// let lock = lockyard::local::RwLock::new(1);
    /// let w = lock.try_write().unwrap();
    /// assert!(lock.try_read().is_err());
    /// drop(w);
    /// assert!(lock.try_read().is_ok());
    /// ```
    ///
    /// # Errors
    ///
    /// [`TryLockError`] if a writer holds the lock or is queued.
    pub fn try_read(&self) -> Result<RwLockReadGuard<'_, T>, TryLockError> {
        match self.semaphore.try_acquire(1) {
            Ok(()) => Ok(RwLockReadGuard::new(self)),
            Err(_) => Err(TryLockError(())),
        }
    }

    /// Exclusive access if nobody holds or waits for the lock.
    ///
    /// ```
    /// let lock = lockyard::local::RwLock::new(1);
    /// let r = lock.try_read().unwrap();
    /// assert!(lock.try_write().is_err());
    /// drop(r);
    /// assert!(lock.try_write().is_ok());
    /// ```
    ///
    /// # Errors
    ///
    /// [`TryLockError`] if anyone holds the lock or is queued.
    pub fn try_write(&self) -> Result<RwLockWriteGuard<'_, T>, TryLockError> {
        match self.semaphore.try_acquire(MAX_READS as usize) {
            Ok(()) => Ok(RwLockWriteGuard::new(self)),
            Err(_) => Err(TryLockError(())),
        }
    }

    /// Blocks the current thread until it has shared access.
    ///
    /// Waits in the same FIFO queue as the async callers. Do not call it
    /// from async code: it blocks the executor thread.
    ///
    /// ```
    /// let lock = lockyard::local::RwLock::new(4);
    /// std::thread::scope(|s| {
    ///     s.spawn(|| assert_eq!(*lock.blocking_read(), 4));
    /// });
    /// ```
    pub fn blocking_read(&self) -> RwLockReadGuard<'_, T> {
        crate::loom::block_on(self.read())
    }

    /// Blocks the current thread until it has exclusive access.
    ///
    /// ```
    /// let lock = lockyard::local::RwLock::new(4);
    /// std::thread::scope(|s| {
    ///     s.spawn(|| *lock.blocking_write() += 1);
    /// });
    /// assert_eq!(lock.into_inner(), 5);
    /// ```
    pub fn blocking_write(&self) -> RwLockWriteGuard<'_, T> {
        crate::loom::block_on(self.write())
    }

    /// Waits for shared access to an `Arc<RwLock>`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`read`](Self::read).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    ///
    /// let lock = Arc::new(lockyard::local::RwLock::new(1));
    /// let guard = lock.clone().read_owned().await;
    /// assert_eq!(*guard, 1);
    /// # }
    /// ```
    pub async fn read_owned(self: Arc<Self>) -> OwnedRwLockReadGuard<T> {
        acquired(self.semaphore.acquire(1).await);
        OwnedRwLockReadGuard::new(self)
    }

    /// Waits for exclusive access to an `Arc<RwLock>`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`write`](Self::write).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    ///
    /// let lock = Arc::new(lockyard::local::RwLock::new(1));
    /// *lock.clone().write_owned().await = 2;
    /// assert_eq!(*lock.read().await, 2);
    /// # }
    /// ```
    pub async fn write_owned(self: Arc<Self>) -> OwnedRwLockWriteGuard<T> {
        acquired(self.semaphore.acquire(MAX_READS as usize).await);
        OwnedRwLockWriteGuard::new(self)
    }

    /// Waits for shared access to an `Arc<RwLock>`, up to `timeout`.
    ///
    /// # Errors
    ///
    /// [`LockTimeoutError`], as [`read_timeout`](Self::read_timeout).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`read`](Self::read).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// let lock = Arc::new(lockyard::local::RwLock::new(1));
    /// let guard = lock.clone().read_owned_timeout(Duration::from_secs(1)).await.unwrap();
    /// assert_eq!(*guard, 1);
    /// # }
    /// ```
    pub async fn read_owned_timeout(
        self: Arc<Self>,
        timeout: Duration,
    ) -> Result<OwnedRwLockReadGuard<T>, LockTimeoutError> {
        timed(self.read_owned(), timeout).await
    }

    /// Waits for exclusive access to an `Arc<RwLock>`, up to `timeout`.
    ///
    /// # Errors
    ///
    /// [`LockTimeoutError`], as [`write_timeout`](Self::write_timeout).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`write`](Self::write).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// let lock = Arc::new(lockyard::local::RwLock::new(1));
    /// let _r = lock.clone().read_owned().await;
    /// let err = lock.clone().write_owned_timeout(Duration::from_millis(5)).await.unwrap_err();
    /// assert_eq!(err.waited(), Duration::from_millis(5));
    /// # }
    /// ```
    pub async fn write_owned_timeout(
        self: Arc<Self>,
        timeout: Duration,
    ) -> Result<OwnedRwLockWriteGuard<T>, LockTimeoutError> {
        timed(self.write_owned(), timeout).await
    }

    /// Shared access to an `Arc<RwLock>` if it is free now and no writer is
    /// queued.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let lock = Arc::new(lockyard::local::RwLock::new(1));
    /// assert!(lock.clone().try_read_owned().is_ok());
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_read`](Self::try_read).
    pub fn try_read_owned(self: Arc<Self>) -> Result<OwnedRwLockReadGuard<T>, TryLockError> {
        match self.semaphore.try_acquire(1) {
            Ok(()) => Ok(OwnedRwLockReadGuard::new(self)),
            Err(_) => Err(TryLockError(())),
        }
    }

    /// Exclusive access to an `Arc<RwLock>` if nobody holds or waits for it.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let lock = Arc::new(lockyard::local::RwLock::new(1));
    /// let guard = lock.clone().try_write_owned().unwrap();
    /// assert!(lock.clone().try_write_owned().is_err());
    /// drop(guard);
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_write`](Self::try_write).
    pub fn try_write_owned(self: Arc<Self>) -> Result<OwnedRwLockWriteGuard<T>, TryLockError> {
        match self.semaphore.try_acquire(MAX_READS as usize) {
            Ok(()) => Ok(OwnedRwLockWriteGuard::new(self)),
            Err(_) => Err(TryLockError(())),
        }
    }

    /// Blocks the current thread until it has shared access to an
    /// `Arc<RwLock>`.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let lock = Arc::new(lockyard::local::RwLock::new(1));
    /// let guard = lock.clone().blocking_read_owned();
    /// std::thread::spawn(move || assert_eq!(*guard, 1)).join().unwrap();
    /// ```
    pub fn blocking_read_owned(self: Arc<Self>) -> OwnedRwLockReadGuard<T> {
        crate::loom::block_on(self.read_owned())
    }

    /// Blocks the current thread until it has exclusive access to an
    /// `Arc<RwLock>`.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let lock = Arc::new(lockyard::local::RwLock::new(1));
    /// let mut guard = lock.clone().blocking_write_owned();
    /// std::thread::spawn(move || *guard = 2).join().unwrap();
    /// assert_eq!(*lock.blocking_read(), 2);
    /// ```
    pub fn blocking_write_owned(self: Arc<Self>) -> OwnedRwLockWriteGuard<T> {
        crate::loom::block_on(self.write_owned())
    }

    /// Whether anyone holds the lock, or a writer has started collecting it.
    /// Stale as soon as it returns.
    ///
    /// ```
    /// let lock = lockyard::local::RwLock::new(());
    /// assert!(!lock.is_locked());
    /// let _r = lock.try_read().unwrap();
    /// assert!(lock.is_locked());
    /// ```
    pub fn is_locked(&self) -> bool {
        self.semaphore.available_permits() < MAX_READS as usize
    }

    /// Mutable access without locking: `&mut self` proves nobody else can
    /// hold it.
    ///
    /// ```
    /// let mut lock = lockyard::local::RwLock::new(1);
    /// *lock.get_mut() = 2;
    /// assert_eq!(lock.into_inner(), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

/// Unwraps the result of an acquisition on the RW lock's semaphore, which
/// is never closed.
fn acquired(result: Result<(), super::AcquireError>) {
    if result.is_err() {
        unreachable!("the semaphore of an RwLock is never closed");
    }
}

/// Runs an acquisition of the lock under `timeout`.
async fn timed<G>(
    acquire: impl std::future::Future<Output = G>,
    timeout: Duration,
) -> Result<G, LockTimeoutError> {
    within(acquire, tokio_timer(timeout))
        .await
        .map_err(|Expired| LockTimeoutError { waited: timeout })
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RwLock");
        match self.try_read() {
            Ok(guard) => d.field("data", &&*guard),
            Err(_) => d.field("data", &format_args!("<locked>")),
        };
        d.finish()
    }
}
