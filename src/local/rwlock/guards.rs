//! The guards of a borrowed [`RwLock`]: read, write, and a write guard
//! mapped to a part of the data.
//!
//! Each holds the lock's semaphore and a pointer to the (part of the) data
//! it gives access to. Access rule for `data`: dereferenced only while the
//! guard holds its permits (one for a read guard, `MAX_READS` for a write
//! guard); the permits are released in `Drop`, after which the pointer is
//! never used.

use std::fmt;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};

use super::{MAX_READS, RwLock};
use crate::local::batch::BatchSemaphore;

/// Shared access to the value of an [`RwLock`] (or, after
/// [`map`](Self::map), to a part of it); released on drop.
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
    semaphore: &'a BatchSemaphore,
    /// Shared access only, while this guard holds its read permit.
    data: *const T,
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
    semaphore: &'a BatchSemaphore,
    /// Exclusive access, while this guard holds every permit.
    data: *mut T,
    _marker: PhantomData<&'a mut T>,
}

/// Exclusive access to a part of the value of an [`RwLock`], made by
/// [`RwLockWriteGuard::map`]; released on drop.
///
/// It cannot be downgraded: readers would see the whole value while this
/// guard only knows a part of it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use lockyard::local::{RwLock, RwLockWriteGuard};
///
/// let lock = RwLock::new((0, String::new()));
/// let mut name = RwLockWriteGuard::map(lock.write().await, |pair| &mut pair.1);
/// name.push_str("lockyard");
/// drop(name);
/// assert_eq!(lock.read().await.1, "lockyard");
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct RwLockMappedWriteGuard<'a, T: ?Sized> {
    semaphore: &'a BatchSemaphore,
    /// Exclusive access, while this guard holds every permit.
    data: *mut T,
    _marker: PhantomData<&'a mut T>,
}

// SAFETY (all six): the guards stand for `&T` (read) and `&mut T` (write)
// borrowed from the lock, and hold a `&BatchSemaphore`, which is `Send +
// Sync`. A read guard may move to another thread when `&T` may (`T: Sync`);
// a write guard lends `&mut T` and may be the one through which a value is
// moved, so it asks `T: Send + Sync`, as tokio's guards do. The raw pointer
// is what makes these impls explicit.
unsafe impl<T: ?Sized + Sync> Send for RwLockReadGuard<'_, T> {}
// SAFETY: see above.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwLockReadGuard<'_, T> {}
// SAFETY: see above.
unsafe impl<T: ?Sized + Send + Sync> Send for RwLockWriteGuard<'_, T> {}
// SAFETY: see above.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwLockWriteGuard<'_, T> {}
// SAFETY: see above.
unsafe impl<T: ?Sized + Send + Sync> Send for RwLockMappedWriteGuard<'_, T> {}
// SAFETY: see above.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwLockMappedWriteGuard<'_, T> {}

impl<'a, T: ?Sized> RwLockReadGuard<'a, T> {
    /// The guard of a read permit just taken on `lock`.
    pub(super) fn new(lock: &'a RwLock<T>) -> Self {
        Self {
            semaphore: &lock.semaphore,
            data: lock.data.get(),
            _marker: PhantomData,
        }
    }

    /// Narrows the guard to a part of the data, keeping the read permit.
    ///
    /// An associated function (`RwLockReadGuard::map(guard, f)`), so as not
    /// to hide a method of the data. If `f` panics, the guard is dropped and
    /// the permit released.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use lockyard::local::{RwLock, RwLockReadGuard};
    ///
    /// let lock = RwLock::new(vec![1, 2, 3]);
    /// let first = RwLockReadGuard::map(lock.read().await, |v| &v[0]);
    /// assert_eq!(*first, 1);
    /// assert!(lock.try_write().is_err(), "the mapped guard still reads");
    /// # }
    /// ```
    pub fn map<U: ?Sized, F>(this: Self, f: F) -> RwLockReadGuard<'a, U>
    where
        F: FnOnce(&T) -> &U,
    {
        let data: *const U = f(&*this);
        let this = ManuallyDrop::new(this);
        RwLockReadGuard {
            semaphore: this.semaphore,
            data,
            _marker: PhantomData,
        }
    }

    /// Narrows the guard to a part of the data if `f` finds one; otherwise
    /// gives the guard back unchanged.
    ///
    /// # Errors
    ///
    /// The original guard, still holding its permit, when `f` returns
    /// `None`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use lockyard::local::{RwLock, RwLockReadGuard};
    ///
    /// let lock = RwLock::new(vec![1, 2, 3]);
    /// let guard = lock.read().await;
    /// let guard = RwLockReadGuard::try_map(guard, |v| v.get(7)).unwrap_err();
    /// let third = RwLockReadGuard::try_map(guard, |v| v.get(2)).unwrap();
    /// assert_eq!(*third, 3);
    /// # }
    /// ```
    pub fn try_map<U: ?Sized, F>(this: Self, f: F) -> Result<RwLockReadGuard<'a, U>, Self>
    where
        F: FnOnce(&T) -> Option<&U>,
    {
        let data: *const U = match f(&*this) {
            Some(data) => data,
            None => return Err(this),
        };
        let this = ManuallyDrop::new(this);
        Ok(RwLockReadGuard {
            semaphore: this.semaphore,
            data,
            _marker: PhantomData,
        })
    }
}

impl<'a, T: ?Sized> RwLockWriteGuard<'a, T> {
    /// The guard of all `MAX_READS` permits just taken on `lock`.
    pub(super) fn new(lock: &'a RwLock<T>) -> Self {
        Self {
            semaphore: &lock.semaphore,
            data: lock.data.get(),
            _marker: PhantomData,
        }
    }

    /// Narrows the guard to a part of the data, keeping exclusive access.
    ///
    /// If `f` panics, the guard is dropped and the lock released.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use lockyard::local::{RwLock, RwLockWriteGuard};
    ///
    /// let lock = RwLock::new([0u8; 4]);
    /// *RwLockWriteGuard::map(lock.write().await, |a| &mut a[2]) = 7;
    /// assert_eq!(*lock.read().await, [0, 0, 7, 0]);
    /// # }
    /// ```
    pub fn map<U: ?Sized, F>(mut this: Self, f: F) -> RwLockMappedWriteGuard<'a, U>
    where
        F: FnOnce(&mut T) -> &mut U,
    {
        let data: *mut U = f(&mut *this);
        let this = ManuallyDrop::new(this);
        RwLockMappedWriteGuard {
            semaphore: this.semaphore,
            data,
            _marker: PhantomData,
        }
    }

    /// Narrows the guard to a part of the data if `f` finds one; otherwise
    /// gives the guard back unchanged.
    ///
    /// # Errors
    ///
    /// The original guard, still exclusive, when `f` returns `None`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use lockyard::local::{RwLock, RwLockWriteGuard};
    ///
    /// let lock = RwLock::new(vec![1]);
    /// let guard = RwLockWriteGuard::try_map(lock.write().await, |v| v.get_mut(3));
    /// let mut guard = guard.unwrap_err();
    /// guard.push(2);
    /// # }
    /// ```
    pub fn try_map<U: ?Sized, F>(
        mut this: Self,
        f: F,
    ) -> Result<RwLockMappedWriteGuard<'a, U>, Self>
    where
        F: FnOnce(&mut T) -> Option<&mut U>,
    {
        let data: *mut U = match f(&mut *this) {
            Some(data) => data,
            None => return Err(this),
        };
        let this = ManuallyDrop::new(this);
        Ok(RwLockMappedWriteGuard {
            semaphore: this.semaphore,
            data,
            _marker: PhantomData,
        })
    }

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
        this.semaphore.release(MAX_READS as usize - 1);
        RwLockReadGuard {
            semaphore: this.semaphore,
            data: this.data,
            _marker: PhantomData,
        }
    }
}

impl<'a, T: ?Sized> RwLockMappedWriteGuard<'a, T> {
    /// Narrows the guard further, keeping exclusive access.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use lockyard::local::{RwLock, RwLockMappedWriteGuard, RwLockWriteGuard};
    ///
    /// let lock = RwLock::new(((1, 2), 3));
    /// let inner = RwLockWriteGuard::map(lock.write().await, |t| &mut t.0);
    /// *RwLockMappedWriteGuard::map(inner, |t| &mut t.1) = 20;
    /// assert_eq!(*lock.read().await, ((1, 20), 3));
    /// # }
    /// ```
    pub fn map<U: ?Sized, F>(mut this: Self, f: F) -> RwLockMappedWriteGuard<'a, U>
    where
        F: FnOnce(&mut T) -> &mut U,
    {
        let data: *mut U = f(&mut *this);
        let this = ManuallyDrop::new(this);
        RwLockMappedWriteGuard {
            semaphore: this.semaphore,
            data,
            _marker: PhantomData,
        }
    }

    /// Narrows the guard further if `f` finds a part; otherwise gives it
    /// back unchanged.
    ///
    /// # Errors
    ///
    /// The original guard, still exclusive, when `f` returns `None`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use lockyard::local::{RwLock, RwLockMappedWriteGuard, RwLockWriteGuard};
    ///
    /// let lock = RwLock::new((vec![1, 2], 0));
    /// let list = RwLockWriteGuard::map(lock.write().await, |t| &mut t.0);
    /// let mut last = RwLockMappedWriteGuard::try_map(list, |v| v.last_mut()).unwrap();
    /// *last = 9;
    /// drop(last);
    /// assert_eq!(lock.read().await.0, [1, 9]);
    /// # }
    /// ```
    pub fn try_map<U: ?Sized, F>(
        mut this: Self,
        f: F,
    ) -> Result<RwLockMappedWriteGuard<'a, U>, Self>
    where
        F: FnOnce(&mut T) -> Option<&mut U>,
    {
        let data: *mut U = match f(&mut *this) {
            Some(data) => data,
            None => return Err(this),
        };
        let this = ManuallyDrop::new(this);
        Ok(RwLockMappedWriteGuard {
            semaphore: this.semaphore,
            data,
            _marker: PhantomData,
        })
    }
}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this guard holds a read permit, so no write guard exists
        // (access rule above); `data` points into the lock, which outlives
        // `'a`.
        unsafe { &*self.data }
    }
}

impl<T: ?Sized> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this guard holds every permit; no other guard exists.
        unsafe { &*self.data }
    }
}

impl<T: ?Sized> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this guard holds every permit; no other guard exists, and
        // `&mut self` keeps this one from lending another reference.
        unsafe { &mut *self.data }
    }
}

impl<T: ?Sized> Deref for RwLockMappedWriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this guard holds every permit; no other guard exists.
        unsafe { &*self.data }
    }
}

impl<T: ?Sized> DerefMut for RwLockMappedWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `RwLockWriteGuard`.
        unsafe { &mut *self.data }
    }
}

impl<T: ?Sized> Drop for RwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        self.semaphore.release(1);
    }
}

impl<T: ?Sized> Drop for RwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        self.semaphore.release(MAX_READS as usize);
    }
}

impl<T: ?Sized> Drop for RwLockMappedWriteGuard<'_, T> {
    fn drop(&mut self) {
        self.semaphore.release(MAX_READS as usize);
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

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLockMappedWriteGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
