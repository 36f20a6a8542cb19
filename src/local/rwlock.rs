//! [`RwLock`]: a fair reader-writer lock on the FIFO semaphore core.
//!
//! A reader takes one permit of [`MAX_READS`], a writer takes all of them;
//! the core hands permits out in FIFO order, so a queued writer holds back
//! the readers that come after it and is never starved.

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::batch::BatchSemaphore;
use super::error::TryLockError;

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

/// Shared access to the value of an [`RwLock`]; released on drop.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let lock = lockyard::local::RwLock::new(5);
/// let guard = lock.read().await;
/// assert_eq!(*guard, 5);
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct RwLockReadGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
    /// Not `Send` unless `T: Sync`: the guard hands out `&T`.
    _marker: PhantomData<&'a T>,
}

/// Exclusive access to the value of an [`RwLock`]; released on drop.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let lock = lockyard::local::RwLock::new(5);
/// *lock.write().await += 1;
/// assert_eq!(*lock.read().await, 6);
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct RwLockWriteGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
    _marker: PhantomData<&'a mut T>,
}

/// Shared access to the value of an `Arc<RwLock>`, which can be moved into
/// a task or thread; released on drop.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::Arc;
///
/// let lock = Arc::new(lockyard::local::RwLock::new(vec![1, 2]));
/// let guard = lock.clone().read_owned().await;
/// tokio::spawn(async move { assert_eq!(guard.len(), 2) }).await.unwrap();
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct OwnedRwLockReadGuard<T: ?Sized> {
    lock: Arc<RwLock<T>>,
}

/// Exclusive access to the value of an `Arc<RwLock>`, which can be moved
/// into a task or thread; released on drop.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::Arc;
///
/// let lock = Arc::new(lockyard::local::RwLock::new(0));
/// let mut guard = lock.clone().write_owned().await;
/// tokio::spawn(async move { *guard = 7 }).await.unwrap();
/// assert_eq!(*lock.read().await, 7);
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct OwnedRwLockWriteGuard<T: ?Sized> {
    lock: Arc<RwLock<T>>,
}

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
        RwLockReadGuard {
            lock: self,
            _marker: PhantomData,
        }
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
        RwLockWriteGuard {
            lock: self,
            _marker: PhantomData,
        }
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
            Ok(()) => Ok(RwLockReadGuard {
                lock: self,
                _marker: PhantomData,
            }),
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
            Ok(()) => Ok(RwLockWriteGuard {
                lock: self,
                _marker: PhantomData,
            }),
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
        OwnedRwLockReadGuard { lock: self }
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
        OwnedRwLockWriteGuard { lock: self }
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
            Ok(()) => Ok(OwnedRwLockReadGuard { lock: self }),
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
            Ok(()) => Ok(OwnedRwLockWriteGuard { lock: self }),
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

impl<'a, T: ?Sized> RwLockWriteGuard<'a, T> {
    /// Turns exclusive access into shared access without letting a writer
    /// in between; the readers queued behind may then proceed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lock = lockyard::local::RwLock::new(1);
    /// let mut w = lock.write().await;
    /// *w = 2;
    /// let r = w.downgrade();
    /// assert_eq!(*r, 2);
    /// assert!(lock.try_read().is_ok());
    /// # }
    /// ```
    pub fn downgrade(self) -> RwLockReadGuard<'a, T> {
        let this = ManuallyDrop::new(self);
        let lock = this.lock;
        lock.semaphore.release(MAX_READS as usize - 1);
        RwLockReadGuard {
            lock,
            _marker: PhantomData,
        }
    }
}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this guard holds a read permit, so no write guard exists
        // (access rule on `RwLock::data`).
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this guard holds every permit; no other guard exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this guard holds every permit; no other guard exists, and
        // `&mut self` keeps this one from lending another reference.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized> Deref for OwnedRwLockReadGuard<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this guard holds a read permit, so no write guard exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> Deref for OwnedRwLockWriteGuard<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this guard holds every permit; no other guard exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> DerefMut for OwnedRwLockWriteGuard<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this guard holds every permit; no other guard exists, and
        // `&mut self` keeps this one from lending another reference.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for RwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.semaphore.release(1);
    }
}

impl<T: ?Sized> Drop for RwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.semaphore.release(MAX_READS as usize);
    }
}

impl<T: ?Sized> Drop for OwnedRwLockReadGuard<T> {
    fn drop(&mut self) {
        self.lock.semaphore.release(1);
    }
}

impl<T: ?Sized> Drop for OwnedRwLockWriteGuard<T> {
    fn drop(&mut self) {
        self.lock.semaphore.release(MAX_READS as usize);
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLockReadGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLockWriteGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for OwnedRwLockReadGuard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for OwnedRwLockWriteGuard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
