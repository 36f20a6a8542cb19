//! The guards of an `Arc<RwLock>`, which own a clone of the `Arc` and so
//! can move into a task or thread: read, write, and a write guard mapped to
//! a part of the data.
//!
//! Access rule for `data`: as in `guards.rs`, dereferenced only while the
//! guard holds its permits. The `Arc` is kept in a `ManuallyDrop` so that
//! `map` and `downgrade` can move it into the new guard without running the
//! old guard's `Drop` (which would release the permits); every guard drops
//! it exactly once, in its own `Drop`, after releasing its permits (the
//! semaphore lives inside the `Arc`).

use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::{MAX_READS, RwLock};

/// Shared access to the value of an `Arc<RwLock<T>>` (or, after
/// [`map`](Self::map), to a part `U` of it), which can be moved into a task
/// or thread; released on drop.
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
pub struct OwnedRwLockReadGuard<T: ?Sized, U: ?Sized = T> {
    lock: ManuallyDrop<Arc<RwLock<T>>>,
    /// Shared access only, while this guard holds its read permit.
    data: *const U,
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
    lock: ManuallyDrop<Arc<RwLock<T>>>,
}

/// Exclusive access to a part `U` of the value of an `Arc<RwLock<T>>`, made
/// by [`OwnedRwLockWriteGuard::map`]; released on drop.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::Arc;
/// use lockyard::local::{OwnedRwLockWriteGuard, RwLock};
///
/// let lock = Arc::new(RwLock::new((0, 0)));
/// let mut second = OwnedRwLockWriteGuard::map(lock.clone().write_owned().await, |p| &mut p.1);
/// tokio::spawn(async move { *second = 2 }).await.unwrap();
/// assert_eq!(*lock.read().await, (0, 2));
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct OwnedRwLockMappedWriteGuard<T: ?Sized, U: ?Sized = T> {
    lock: ManuallyDrop<Arc<RwLock<T>>>,
    /// Exclusive access, while this guard holds every permit.
    data: *mut U,
}

// SAFETY (all six): an owned guard may be the last owner of the lock and so
// drop the value `T`: moving it to another thread needs `T: Send + Sync`
// (as for `Arc<RwLock<T>>`). What it lends is `&U` (read) or `&mut U`
// (write): `U: Sync`, resp. `U: Send + Sync`, as tokio's owned guards. The
// raw pointer is what makes these impls explicit.
unsafe impl<T: ?Sized + Send + Sync, U: ?Sized + Sync> Send for OwnedRwLockReadGuard<T, U> {}
// SAFETY: see above.
unsafe impl<T: ?Sized + Send + Sync, U: ?Sized + Send + Sync> Sync for OwnedRwLockReadGuard<T, U> {}
// SAFETY: see above (no raw pointer, but `RwLock<T>` is `Sync` only if
// `T: Send + Sync`; stated for symmetry with the other guards).
unsafe impl<T: ?Sized + Send + Sync> Send for OwnedRwLockWriteGuard<T> {}
// SAFETY: see above.
unsafe impl<T: ?Sized + Send + Sync> Sync for OwnedRwLockWriteGuard<T> {}
// SAFETY: see above.
unsafe impl<T: ?Sized + Send + Sync, U: ?Sized + Send + Sync> Send
    for OwnedRwLockMappedWriteGuard<T, U>
{
}
// SAFETY: see above.
unsafe impl<T: ?Sized + Send + Sync, U: ?Sized + Send + Sync> Sync
    for OwnedRwLockMappedWriteGuard<T, U>
{
}

/// Takes the `Arc` out of a guard that is being turned into another one.
///
/// # Safety
///
/// `lock` must be the field of a guard wrapped in `ManuallyDrop` (so its
/// `Drop` never runs) that is not used again.
unsafe fn take_lock<T: ?Sized>(lock: &mut ManuallyDrop<Arc<RwLock<T>>>) -> Arc<RwLock<T>> {
    // SAFETY: the caller's guard is never dropped nor used again, so the
    // `Arc` is moved out exactly once.
    unsafe { ManuallyDrop::take(lock) }
}

impl<T: ?Sized> OwnedRwLockReadGuard<T> {
    /// The guard of a read permit just taken on `lock`.
    pub(super) fn new(lock: Arc<RwLock<T>>) -> Self {
        let data = lock.data.get();
        Self {
            lock: ManuallyDrop::new(lock),
            data,
        }
    }
}

impl<T: ?Sized, U: ?Sized> OwnedRwLockReadGuard<T, U> {
    /// The lock this guard reads.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use lockyard::local::{OwnedRwLockReadGuard, RwLock};
    ///
    /// let lock = Arc::new(RwLock::new(1));
    /// let guard = lock.clone().try_read_owned().unwrap();
    /// assert!(Arc::ptr_eq(OwnedRwLockReadGuard::rwlock(&guard), &lock));
    /// ```
    pub fn rwlock(this: &Self) -> &Arc<RwLock<T>> {
        &this.lock
    }

    /// Narrows the guard to a part of the data, keeping the read permit.
    ///
    /// If `f` panics, the guard is dropped and the permit released.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    /// use lockyard::local::{OwnedRwLockReadGuard, RwLock};
    ///
    /// let lock = Arc::new(RwLock::new((String::from("id"), 3)));
    /// let id = OwnedRwLockReadGuard::map(lock.clone().read_owned().await, |p| &p.0);
    /// tokio::spawn(async move { assert_eq!(*id, "id") }).await.unwrap();
    /// # }
    /// ```
    pub fn map<V: ?Sized, F>(this: Self, f: F) -> OwnedRwLockReadGuard<T, V>
    where
        F: FnOnce(&U) -> &V,
    {
        let data: *const V = f(&*this);
        let mut this = ManuallyDrop::new(this);
        // SAFETY: `this` is never dropped nor used again.
        let lock = unsafe { take_lock(&mut this.lock) };
        OwnedRwLockReadGuard {
            lock: ManuallyDrop::new(lock),
            data,
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
    /// use std::sync::Arc;
    /// use lockyard::local::{OwnedRwLockReadGuard, RwLock};
    ///
    /// let lock = Arc::new(RwLock::new(vec![4, 5]));
    /// let guard = lock.clone().read_owned().await;
    /// let guard = OwnedRwLockReadGuard::try_map(guard, |v| v.get(9)).unwrap_err();
    /// let second = OwnedRwLockReadGuard::try_map(guard, |v| v.get(1)).unwrap();
    /// assert_eq!(*second, 5);
    /// # }
    /// ```
    pub fn try_map<V: ?Sized, F>(this: Self, f: F) -> Result<OwnedRwLockReadGuard<T, V>, Self>
    where
        F: FnOnce(&U) -> Option<&V>,
    {
        let data: *const V = match f(&*this) {
            Some(data) => data,
            None => return Err(this),
        };
        let mut this = ManuallyDrop::new(this);
        // SAFETY: `this` is never dropped nor used again.
        let lock = unsafe { take_lock(&mut this.lock) };
        Ok(OwnedRwLockReadGuard {
            lock: ManuallyDrop::new(lock),
            data,
        })
    }
}

impl<T: ?Sized> OwnedRwLockWriteGuard<T> {
    /// The guard of all `MAX_READS` permits just taken on `lock`.
    pub(super) fn new(lock: Arc<RwLock<T>>) -> Self {
        Self {
            lock: ManuallyDrop::new(lock),
        }
    }

    /// The lock this guard writes.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use lockyard::local::{OwnedRwLockWriteGuard, RwLock};
    ///
    /// let lock = Arc::new(RwLock::new(1));
    /// let guard = lock.clone().try_write_owned().unwrap();
    /// assert!(Arc::ptr_eq(OwnedRwLockWriteGuard::rwlock(&guard), &lock));
    /// ```
    pub fn rwlock(this: &Self) -> &Arc<RwLock<T>> {
        &this.lock
    }

    /// Narrows the guard to a part of the data, keeping exclusive access.
    ///
    /// If `f` panics, the guard is dropped and the lock released.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    /// use lockyard::local::{OwnedRwLockWriteGuard, RwLock};
    ///
    /// let lock = Arc::new(RwLock::new([1, 2]));
    /// *OwnedRwLockWriteGuard::map(lock.clone().write_owned().await, |a| &mut a[0]) = 0;
    /// assert_eq!(*lock.read().await, [0, 2]);
    /// # }
    /// ```
    pub fn map<U: ?Sized, F>(mut this: Self, f: F) -> OwnedRwLockMappedWriteGuard<T, U>
    where
        F: FnOnce(&mut T) -> &mut U,
    {
        let data: *mut U = f(&mut *this);
        let mut this = ManuallyDrop::new(this);
        // SAFETY: `this` is never dropped nor used again.
        let lock = unsafe { take_lock(&mut this.lock) };
        OwnedRwLockMappedWriteGuard {
            lock: ManuallyDrop::new(lock),
            data,
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
    /// use std::sync::Arc;
    /// use lockyard::local::{OwnedRwLockWriteGuard, RwLock};
    ///
    /// let lock = Arc::new(RwLock::new(Some(1)));
    /// let mut inner = OwnedRwLockWriteGuard::try_map(lock.clone().write_owned().await, |o| o.as_mut())
    ///     .unwrap();
    /// *inner += 1;
    /// drop(inner);
    /// assert_eq!(*lock.read().await, Some(2));
    /// # }
    /// ```
    pub fn try_map<U: ?Sized, F>(
        mut this: Self,
        f: F,
    ) -> Result<OwnedRwLockMappedWriteGuard<T, U>, Self>
    where
        F: FnOnce(&mut T) -> Option<&mut U>,
    {
        let data: *mut U = match f(&mut *this) {
            Some(data) => data,
            None => return Err(this),
        };
        let mut this = ManuallyDrop::new(this);
        // SAFETY: `this` is never dropped nor used again.
        let lock = unsafe { take_lock(&mut this.lock) };
        Ok(OwnedRwLockMappedWriteGuard {
            lock: ManuallyDrop::new(lock),
            data,
        })
    }

    /// Turns exclusive access into shared access without letting a writer
    /// in between; the readers queued behind may then proceed. The guard
    /// stays owned: it can still move into a task or thread.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    ///
    /// let lock = Arc::new(lockyard::local::RwLock::new(1));
    /// let mut w = lock.clone().write_owned().await;
    /// *w = 2;
    /// let r = w.downgrade();
    /// assert!(lock.try_write().is_err(), "still no writer");
    /// assert_eq!(*lock.try_read().unwrap(), 2, "but readers");
    /// tokio::spawn(async move { assert_eq!(*r, 2) }).await.unwrap();
    /// assert!(lock.try_write().is_ok());
    /// # }
    /// ```
    pub fn downgrade(self) -> OwnedRwLockReadGuard<T> {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped nor used again.
        let lock = unsafe { take_lock(&mut this.lock) };
        lock.semaphore.release(MAX_READS as usize - 1);
        OwnedRwLockReadGuard::new(lock)
    }
}

impl<T: ?Sized, U: ?Sized> OwnedRwLockMappedWriteGuard<T, U> {
    /// The lock this guard writes a part of.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use lockyard::local::{OwnedRwLockMappedWriteGuard, OwnedRwLockWriteGuard, RwLock};
    ///
    /// let lock = Arc::new(RwLock::new((1, 2)));
    /// let part = OwnedRwLockWriteGuard::map(lock.clone().try_write_owned().unwrap(), |p| &mut p.0);
    /// assert!(Arc::ptr_eq(OwnedRwLockMappedWriteGuard::rwlock(&part), &lock));
    /// ```
    pub fn rwlock(this: &Self) -> &Arc<RwLock<T>> {
        &this.lock
    }

    /// Narrows the guard further, keeping exclusive access.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    /// use lockyard::local::{OwnedRwLockMappedWriteGuard, OwnedRwLockWriteGuard, RwLock};
    ///
    /// let lock = Arc::new(RwLock::new(((1, 2), 3)));
    /// let inner = OwnedRwLockWriteGuard::map(lock.clone().write_owned().await, |t| &mut t.0);
    /// *OwnedRwLockMappedWriteGuard::map(inner, |t| &mut t.0) = 10;
    /// assert_eq!(*lock.read().await, ((10, 2), 3));
    /// # }
    /// ```
    pub fn map<V: ?Sized, F>(mut this: Self, f: F) -> OwnedRwLockMappedWriteGuard<T, V>
    where
        F: FnOnce(&mut U) -> &mut V,
    {
        let data: *mut V = f(&mut *this);
        let mut this = ManuallyDrop::new(this);
        // SAFETY: `this` is never dropped nor used again.
        let lock = unsafe { take_lock(&mut this.lock) };
        OwnedRwLockMappedWriteGuard {
            lock: ManuallyDrop::new(lock),
            data,
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
    /// use std::sync::Arc;
    /// use lockyard::local::{OwnedRwLockMappedWriteGuard, OwnedRwLockWriteGuard, RwLock};
    ///
    /// let lock = Arc::new(RwLock::new((vec![1], 0)));
    /// let list = OwnedRwLockWriteGuard::map(lock.clone().write_owned().await, |t| &mut t.0);
    /// assert!(OwnedRwLockMappedWriteGuard::try_map(list, |v| v.get_mut(5)).is_err());
    /// # }
    /// ```
    pub fn try_map<V: ?Sized, F>(
        mut this: Self,
        f: F,
    ) -> Result<OwnedRwLockMappedWriteGuard<T, V>, Self>
    where
        F: FnOnce(&mut U) -> Option<&mut V>,
    {
        let data: *mut V = match f(&mut *this) {
            Some(data) => data,
            None => return Err(this),
        };
        let mut this = ManuallyDrop::new(this);
        // SAFETY: `this` is never dropped nor used again.
        let lock = unsafe { take_lock(&mut this.lock) };
        Ok(OwnedRwLockMappedWriteGuard {
            lock: ManuallyDrop::new(lock),
            data,
        })
    }
}

impl<T: ?Sized, U: ?Sized> Deref for OwnedRwLockReadGuard<T, U> {
    type Target = U;

    fn deref(&self) -> &U {
        // SAFETY: this guard holds a read permit, so no write guard exists;
        // `data` points into the lock, which this guard's `Arc` keeps alive.
        unsafe { &*self.data }
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

impl<T: ?Sized, U: ?Sized> Deref for OwnedRwLockMappedWriteGuard<T, U> {
    type Target = U;

    fn deref(&self) -> &U {
        // SAFETY: this guard holds every permit; no other guard exists.
        unsafe { &*self.data }
    }
}

impl<T: ?Sized, U: ?Sized> DerefMut for OwnedRwLockMappedWriteGuard<T, U> {
    fn deref_mut(&mut self) -> &mut U {
        // SAFETY: as for `OwnedRwLockWriteGuard`.
        unsafe { &mut *self.data }
    }
}

impl<T: ?Sized, U: ?Sized> Drop for OwnedRwLockReadGuard<T, U> {
    fn drop(&mut self) {
        self.lock.semaphore.release(1);
        // SAFETY: dropped once, here; the guard is gone after this.
        unsafe { ManuallyDrop::drop(&mut self.lock) }
    }
}

impl<T: ?Sized> Drop for OwnedRwLockWriteGuard<T> {
    fn drop(&mut self) {
        self.lock.semaphore.release(MAX_READS as usize);
        // SAFETY: dropped once, here; the guard is gone after this.
        unsafe { ManuallyDrop::drop(&mut self.lock) }
    }
}

impl<T: ?Sized, U: ?Sized> Drop for OwnedRwLockMappedWriteGuard<T, U> {
    fn drop(&mut self) {
        self.lock.semaphore.release(MAX_READS as usize);
        // SAFETY: dropped once, here; the guard is gone after this.
        unsafe { ManuallyDrop::drop(&mut self.lock) }
    }
}

impl<T: ?Sized, U: ?Sized + fmt::Debug> fmt::Debug for OwnedRwLockReadGuard<T, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for OwnedRwLockWriteGuard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized, U: ?Sized + fmt::Debug> fmt::Debug for OwnedRwLockMappedWriteGuard<T, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
