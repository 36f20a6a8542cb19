//! [`Semaphore`]: a fair, weighted, async semaphore that plain threads can
//! use too.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::batch::BatchSemaphore;
use super::error::{AcquireError, AcquireTimeoutError, TryAcquireError};
use super::timeout::{tokio_timer, within};
use crate::stats::{self, Backend, Held, Site};

/// A fair counting semaphore for tasks and threads.
///
/// A semaphore holds a number of permits. [`acquire`](Self::acquire) waits
/// until one is free and returns a [`SemaphorePermit`] that gives it back
/// when dropped; [`acquire_many`](Self::acquire_many) takes several at once.
///
/// # Fairness
///
/// Permits are handed out in the order they were asked for (FIFO). A caller
/// asking for many permits holds back the callers queued behind it, even
/// those asking for fewer than are free: nobody overtakes a waiter, so a
/// large request is never starved by a stream of small ones. `try_acquire*`
/// never takes permits while anyone is queued.
///
/// # Async and blocking
///
/// The `acquire*` methods are `async`; the `acquire_*blocking` methods park
/// the calling thread instead, for code that runs outside any async runtime.
/// Both kinds wait in the same queue. The `*_timeout` methods use
/// [`tokio::time`] and so need a tokio runtime with the time driver.
///
/// Unlike tokio's semaphore, acquiring does not take part in tokio's
/// cooperative-scheduling budget: a task that acquires free permits in a
/// loop is not forced to yield (as with `async_lock` or a `std` mutex).
///
/// # Memory ordering
///
/// Releasing a permit *happens before* the acquisition that obtains it,
/// whether it is handed over through the queue or through the counter:
/// everything a holder wrote before dropping its permit is visible to the
/// next holder of that permit.
///
/// # Examples
///
/// At most two downloads at a time:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::Arc;
/// use lockyard::local::Semaphore;
///
/// let downloads = Arc::new(Semaphore::new(2));
/// let mut tasks = Vec::new();
/// for i in 0..5 {
///     let downloads = Arc::clone(&downloads);
///     tasks.push(tokio::spawn(async move {
///         let _permit = downloads.acquire().await.unwrap();
///         // ... download file `i` while holding one of the two permits ...
///         i
///     }));
/// }
/// for task in tasks {
///     task.await.unwrap();
/// }
/// assert_eq!(downloads.available_permits(), 2);
/// # }
/// ```
pub struct Semaphore {
    ll: BatchSemaphore,
    /// Where acquisitions are counted: only for a named semaphore.
    stats: Option<Site>,
}

/// A permit borrowed from a [`Semaphore`]; gives its permits back when
/// dropped, unless [`forget`](Self::forget) is called.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let semaphore = lockyard::local::Semaphore::new(3);
/// let permit = semaphore.acquire_many(2).await.unwrap();
/// assert_eq!(permit.num_permits(), 2);
/// assert_eq!(semaphore.available_permits(), 1);
/// drop(permit);
/// assert_eq!(semaphore.available_permits(), 3);
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct SemaphorePermit<'a> {
    semaphore: &'a Semaphore,
    permits: u32,
    /// Counts the hold (named semaphores only); held for its `Drop`.
    _stats: Option<Held>,
}

/// A permit of an `Arc<Semaphore>`, which can be moved into a task or
/// thread; gives its permits back when dropped, unless
/// [`forget`](Self::forget) is called.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::Arc;
/// use lockyard::local::Semaphore;
///
/// let semaphore = Arc::new(Semaphore::new(1));
/// let permit = Arc::clone(&semaphore).acquire_owned().await.unwrap();
/// tokio::spawn(async move {
///     // ... work while holding the permit ...
///     drop(permit);
/// })
/// .await
/// .unwrap();
/// assert_eq!(semaphore.available_permits(), 1);
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct OwnedSemaphorePermit {
    semaphore: Arc<Semaphore>,
    permits: u32,
    /// Counts the hold (named semaphores only); held for its `Drop`.
    _stats: Option<Held>,
}

impl Semaphore {
    /// The largest number of permits a semaphore can hold: `usize::MAX >> 3`.
    pub const MAX_PERMITS: usize = BatchSemaphore::MAX_PERMITS;

    /// A semaphore with `permits` permits.
    ///
    /// # Panics
    ///
    /// If `permits` exceeds [`MAX_PERMITS`](Self::MAX_PERMITS).
    ///
    /// ```
    /// let semaphore = lockyard::local::Semaphore::new(4);
    /// assert_eq!(semaphore.available_permits(), 4);
    /// ```
    pub fn new(permits: usize) -> Self {
        assert!(
            permits <= Self::MAX_PERMITS,
            "a semaphore may not have more than MAX_PERMITS permits ({})",
            Self::MAX_PERMITS
        );
        Self {
            ll: BatchSemaphore::new(permits),
            stats: None,
        }
    }

    /// A semaphore with `permits` permits whose acquisitions are counted
    /// in the [`stats`] registry (and exported with the
    /// `metrics` feature) under `name`, backend `local`. An anonymous
    /// [`new`](Self::new) semaphore counts nothing and costs nothing extra.
    ///
    /// # Panics
    ///
    /// If `permits` exceeds [`MAX_PERMITS`](Self::MAX_PERMITS).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use lockyard::{Semaphore, stats::{self, Backend}};
    ///
    /// let expensive = Semaphore::named("semaphore-named-doc", 2);
    /// let permit = expensive.acquire().await.unwrap();
    /// assert_eq!(stats::get(Backend::Local, "semaphore-named-doc").unwrap().held, 1);
    /// # drop(permit);
    /// # }
    /// ```
    pub fn named(name: &str, permits: usize) -> Self {
        Self {
            stats: Some(stats::site(Backend::Local, name)),
            ..Self::new(permits)
        }
    }

    /// Takes `n` permits, waiting for ever.
    #[inline]
    async fn take(&self, n: u32) -> Result<Option<Held>, AcquireError> {
        if self.stats.is_none() {
            // Nothing to count: the core's future alone, with no state
            // machine of `take_with` around it.
            return self.ll.acquire(n as usize).await.map(|()| None);
        }
        let wait = async {
            self.ll
                .acquire(n as usize)
                .await
                .map_err(|_| AcquireTimeoutError::Closed)
        };
        self.take_with(n, wait).await.map_err(|_| AcquireError(()))
    }

    /// Takes `n` permits, waiting at most `timeout`.
    async fn take_timeout(
        &self,
        n: u32,
        timeout: Duration,
    ) -> Result<Option<Held>, AcquireTimeoutError> {
        // The one timeout rule of the in-process primitives: a timer only
        // once the acquisition has to wait.
        let wait = async {
            match within(self.ll.acquire(n as usize), tokio_timer(timeout)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(AcquireTimeoutError::Closed),
                Err(_expired) => Err(AcquireTimeoutError::Timeout),
            }
        };
        self.take_with(n, wait).await
    }

    /// Takes `n` permits through `wait` (an untimed or a timed acquisition
    /// of them): every waiting acquisition goes through here, and a named
    /// semaphore counts it. Generic rather than one future with a timer
    /// inside, so that an untimed acquisition's future carries no
    /// `tokio::time::Sleep`: the future is moved on every call, and copying
    /// the timer's bytes was 15 % of an uncontended acquire-and-release.
    async fn take_with(
        &self,
        n: u32,
        wait: impl Future<Output = Result<(), AcquireTimeoutError>>,
    ) -> Result<Option<Held>, AcquireTimeoutError> {
        let Some(site) = &self.stats else {
            return wait.await.map(|()| None);
        };
        let attempt = site.begin();
        // Free permits (and nobody queued): not contended. Otherwise the
        // wait queues exactly as an uncounted acquisition would.
        if self.ll.try_acquire(n as usize).is_ok() {
            return Ok(Some(attempt.granted()));
        }
        attempt.contended();
        match wait.await {
            Ok(()) => Ok(Some(attempt.granted())),
            Err(e) => {
                match e {
                    AcquireTimeoutError::Timeout => attempt.timed_out(),
                    AcquireTimeoutError::Closed => attempt.errored(),
                }
                Err(e)
            }
        }
    }

    /// Takes `n` permits if free now; counted for a named semaphore.
    #[inline]
    fn try_take(&self, n: u32) -> Result<Option<Held>, TryAcquireError> {
        let result = self.ll.try_acquire(n as usize);
        let Some(site) = &self.stats else {
            return result.map(|()| None);
        };
        let attempt = site.begin();
        match result {
            Ok(()) => Ok(Some(attempt.granted())),
            Err(e) => {
                if e.is_closed() {
                    attempt.errored();
                } else {
                    attempt.busy();
                }
                Err(e)
            }
        }
    }

    /// Counts a timeout decided by a caller that dropped a waiting
    /// acquisition at its own deadline (the `Lock` adapter).
    pub(crate) fn count_timeout(&self) {
        if let Some(site) = &self.stats {
            site.timed_out();
        }
    }

    /// Permits that nobody holds or has been assigned. While anyone is
    /// queued this is zero.
    ///
    /// ```
    /// let semaphore = lockyard::local::Semaphore::new(2);
    /// let _permit = semaphore.try_acquire().unwrap();
    /// assert_eq!(semaphore.available_permits(), 1);
    /// ```
    pub fn available_permits(&self) -> usize {
        self.ll.available_permits()
    }

    /// Adds `n` permits, serving queued waiters first (in order).
    ///
    /// # Panics
    ///
    /// If the semaphore would then hold more than
    /// [`MAX_PERMITS`](Self::MAX_PERMITS).
    ///
    /// ```
    /// let semaphore = lockyard::local::Semaphore::new(0);
    /// semaphore.add_permits(2);
    /// assert_eq!(semaphore.available_permits(), 2);
    /// ```
    pub fn add_permits(&self, n: usize) {
        self.ll.release(n);
    }

    /// Removes up to `n` available permits for good, and returns how many
    /// were removed. Held permits are not affected.
    ///
    /// ```
    /// let semaphore = lockyard::local::Semaphore::new(3);
    /// assert_eq!(semaphore.forget_permits(5), 3);
    /// assert_eq!(semaphore.available_permits(), 0);
    /// ```
    pub fn forget_permits(&self, n: usize) -> usize {
        self.ll.forget_permits(n)
    }

    /// Closes the semaphore: every queued acquirer wakes with an
    /// [`AcquireError`], and later acquisitions fail at once. Permits
    /// already held stay valid.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    /// use lockyard::local::Semaphore;
    ///
    /// let semaphore = Arc::new(Semaphore::new(0));
    /// let waiter = tokio::spawn({
    ///     let semaphore = Arc::clone(&semaphore);
    ///     async move { semaphore.acquire().await.is_err() }
    /// });
    /// tokio::task::yield_now().await;
    /// semaphore.close();
    /// assert!(waiter.await.unwrap());
    /// assert!(semaphore.is_closed());
    /// # }
    /// ```
    pub fn close(&self) {
        self.ll.close();
    }

    /// Whether [`close`](Self::close) was called.
    ///
    /// ```
    /// let semaphore = lockyard::local::Semaphore::new(1);
    /// assert!(!semaphore.is_closed());
    /// semaphore.close();
    /// assert!(semaphore.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.ll.is_closed()
    }

    /// Waits for one permit.
    ///
    /// Fails only if the semaphore is closed (before or while waiting).
    ///
    /// # Errors
    ///
    /// [`AcquireError`] if the semaphore is closed (before or while waiting).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. Dropping the future leaves the queue; if the permit had
    /// already been assigned to it, the permit is handed to the next waiter
    /// (or back to the semaphore). The caller loses only its place in the
    /// queue.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let semaphore = lockyard::local::Semaphore::new(1);
    /// let permit = semaphore.acquire().await.unwrap();
    /// assert_eq!(semaphore.available_permits(), 0);
    /// drop(permit);
    /// # }
    /// ```
    #[inline]
    pub async fn acquire(&self) -> Result<SemaphorePermit<'_>, AcquireError> {
        // Not `acquire_many(1)` nor `take`: no state machine to poll
        // through between the caller's and the core's when nothing is
        // counted.
        let stats = if self.stats.is_none() {
            self.ll.acquire(1).await.map_err(|_| AcquireError(()))?;
            None
        } else {
            self.take(1).await?
        };
        Ok(SemaphorePermit {
            semaphore: self,
            permits: 1,
            _stats: stats,
        })
    }

    /// Waits for `n` permits, taken together.
    ///
    /// While it waits at the front of the queue, permits are set aside for
    /// it as they are released, and nobody behind it is served. So a request
    /// for more permits than the semaphore will ever hold waits until the
    /// semaphore is closed or the future dropped, and holds back everyone
    /// queued after it meanwhile.
    ///
    /// # Errors
    ///
    /// [`AcquireError`] if the semaphore is closed (before or while waiting).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. Dropping the future leaves the queue and hands the
    /// permits already set aside for it to the next waiters (or back to the
    /// semaphore).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let semaphore = lockyard::local::Semaphore::new(5);
    /// let permit = semaphore.acquire_many(3).await.unwrap();
    /// assert_eq!(permit.num_permits(), 3);
    /// # }
    /// ```
    #[inline]
    pub async fn acquire_many(&self, n: u32) -> Result<SemaphorePermit<'_>, AcquireError> {
        // As `acquire`: the core's future directly when nothing is counted.
        let stats = if self.stats.is_none() {
            self.ll
                .acquire(n as usize)
                .await
                .map_err(|_| AcquireError(()))?;
            None
        } else {
            self.take(n).await?
        };
        Ok(SemaphorePermit {
            semaphore: self,
            permits: n,
            _stats: stats,
        })
    }

    /// Takes one permit if one is free and nobody is queued.
    ///
    /// ```
    /// use lockyard::local::{Semaphore, TryAcquireError};
    ///
    /// let semaphore = Semaphore::new(1);
    /// let permit = semaphore.try_acquire().unwrap();
    /// assert_eq!(semaphore.try_acquire().unwrap_err(), TryAcquireError::NoPermits);
    /// drop(permit);
    /// ```
    ///
    /// # Errors
    ///
    /// [`TryAcquireError::NoPermits`] if not enough permits are free or anyone is queued; [`TryAcquireError::Closed`] if the semaphore is closed.
    #[inline]
    pub fn try_acquire(&self) -> Result<SemaphorePermit<'_>, TryAcquireError> {
        self.try_acquire_many(1)
    }

    /// Takes `n` permits if they are free and nobody is queued.
    ///
    /// ```
    /// let semaphore = lockyard::local::Semaphore::new(2);
    /// assert!(semaphore.try_acquire_many(3).is_err());
    /// assert_eq!(semaphore.try_acquire_many(2).unwrap().num_permits(), 2);
    /// ```
    ///
    /// # Errors
    ///
    /// [`TryAcquireError::NoPermits`] if not enough permits are free or anyone is queued; [`TryAcquireError::Closed`] if the semaphore is closed.
    #[inline]
    pub fn try_acquire_many(&self, n: u32) -> Result<SemaphorePermit<'_>, TryAcquireError> {
        let stats = self.try_take(n)?;
        Ok(SemaphorePermit {
            semaphore: self,
            permits: n,
            _stats: stats,
        })
    }

    /// Waits for one permit, up to `timeout`.
    ///
    /// A free permit is taken even with a zero timeout. Needs a tokio runtime
    /// with the time driver enabled.
    ///
    /// # Errors
    ///
    /// [`AcquireTimeoutError::Timeout`] if the permits were not free within `timeout`; [`AcquireTimeoutError::Closed`] if the semaphore is closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire`](Self::acquire). On timeout the caller has
    /// left the queue and holds nothing.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    ///
    /// let semaphore = lockyard::local::Semaphore::new(1);
    /// let held = semaphore.acquire_timeout(Duration::from_secs(1)).await.unwrap();
    /// let err = semaphore.acquire_timeout(Duration::from_millis(10)).await.unwrap_err();
    /// assert!(err.is_timeout());
    /// drop(held);
    /// # }
    /// ```
    pub async fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<SemaphorePermit<'_>, AcquireTimeoutError> {
        self.acquire_many_timeout(1, timeout).await
    }

    /// Waits for `n` permits, up to `timeout`.
    ///
    /// # Errors
    ///
    /// [`AcquireTimeoutError::Timeout`] if the permits were not free within `timeout`; [`AcquireTimeoutError::Closed`] if the semaphore is closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire_many`](Self::acquire_many).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    ///
    /// let semaphore = lockyard::local::Semaphore::new(2);
    /// let err = semaphore.acquire_many_timeout(3, Duration::from_millis(10)).await.unwrap_err();
    /// assert!(err.is_timeout());
    /// // The timed-out waiter gave back what had been set aside for it.
    /// assert_eq!(semaphore.available_permits(), 2);
    /// # }
    /// ```
    pub async fn acquire_many_timeout(
        &self,
        n: u32,
        timeout: Duration,
    ) -> Result<SemaphorePermit<'_>, AcquireTimeoutError> {
        let stats = self.take_timeout(n, timeout).await?;
        Ok(SemaphorePermit {
            semaphore: self,
            permits: n,
            _stats: stats,
        })
    }

    /// Blocks the current thread until one permit is free.
    ///
    /// Waits in the same FIFO queue as the async acquirers. Do not call it
    /// from async code: it blocks the executor thread (and, on a
    /// single-threaded runtime, can deadlock).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use lockyard::local::Semaphore;
    ///
    /// let semaphore = Arc::new(Semaphore::new(1));
    /// let worker = std::thread::spawn({
    ///     let semaphore = Arc::clone(&semaphore);
    ///     move || {
    ///         let _permit = semaphore.acquire_blocking().unwrap();
    ///     }
    /// });
    /// worker.join().unwrap();
    /// assert_eq!(semaphore.available_permits(), 1);
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireError`] if the semaphore is closed (before or while waiting).
    pub fn acquire_blocking(&self) -> Result<SemaphorePermit<'_>, AcquireError> {
        self.acquire_many_blocking(1)
    }

    /// Blocks the current thread until `n` permits are free.
    ///
    /// ```
    /// let semaphore = lockyard::local::Semaphore::new(3);
    /// let permit = semaphore.acquire_many_blocking(3).unwrap();
    /// assert_eq!(semaphore.available_permits(), 0);
    /// drop(permit);
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireError`] if the semaphore is closed (before or while waiting).
    pub fn acquire_many_blocking(&self, n: u32) -> Result<SemaphorePermit<'_>, AcquireError> {
        crate::loom::block_on(self.acquire_many(n))
    }

    /// Waits for one permit of an `Arc<Semaphore>`.
    ///
    /// # Errors
    ///
    /// [`AcquireError`] if the semaphore is closed (before or while waiting).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire`](Self::acquire).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    ///
    /// let semaphore = Arc::new(lockyard::local::Semaphore::new(1));
    /// let permit = semaphore.clone().acquire_owned().await.unwrap();
    /// assert!(Arc::ptr_eq(permit.semaphore(), &semaphore));
    /// # }
    /// ```
    pub async fn acquire_owned(self: Arc<Self>) -> Result<OwnedSemaphorePermit, AcquireError> {
        self.acquire_many_owned(1).await
    }

    /// Waits for `n` permits of an `Arc<Semaphore>`.
    ///
    /// # Errors
    ///
    /// [`AcquireError`] if the semaphore is closed (before or while waiting).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire_many`](Self::acquire_many).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    ///
    /// let semaphore = Arc::new(lockyard::local::Semaphore::new(4));
    /// let permit = semaphore.clone().acquire_many_owned(4).await.unwrap();
    /// assert_eq!(permit.num_permits(), 4);
    /// # }
    /// ```
    pub async fn acquire_many_owned(
        self: Arc<Self>,
        n: u32,
    ) -> Result<OwnedSemaphorePermit, AcquireError> {
        let stats = self.take(n).await?;
        Ok(OwnedSemaphorePermit {
            semaphore: self,
            permits: n,
            _stats: stats,
        })
    }

    /// Takes one permit of an `Arc<Semaphore>` if one is free and nobody is
    /// queued.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let semaphore = Arc::new(lockyard::local::Semaphore::new(1));
    /// let permit = semaphore.clone().try_acquire_owned().unwrap();
    /// assert!(semaphore.clone().try_acquire_owned().is_err());
    /// drop(permit);
    /// ```
    ///
    /// # Errors
    ///
    /// [`TryAcquireError::NoPermits`] if not enough permits are free or anyone is queued; [`TryAcquireError::Closed`] if the semaphore is closed.
    pub fn try_acquire_owned(self: Arc<Self>) -> Result<OwnedSemaphorePermit, TryAcquireError> {
        self.try_acquire_many_owned(1)
    }

    /// Takes `n` permits of an `Arc<Semaphore>` if they are free and nobody
    /// is queued.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let semaphore = Arc::new(lockyard::local::Semaphore::new(2));
    /// assert_eq!(semaphore.clone().try_acquire_many_owned(2).unwrap().num_permits(), 2);
    /// ```
    ///
    /// # Errors
    ///
    /// [`TryAcquireError::NoPermits`] if not enough permits are free or anyone is queued; [`TryAcquireError::Closed`] if the semaphore is closed.
    pub fn try_acquire_many_owned(
        self: Arc<Self>,
        n: u32,
    ) -> Result<OwnedSemaphorePermit, TryAcquireError> {
        let stats = self.try_take(n)?;
        Ok(OwnedSemaphorePermit {
            semaphore: self,
            permits: n,
            _stats: stats,
        })
    }

    /// Waits for `n` permits of an `Arc<Semaphore>`, up to `timeout`.
    ///
    /// # Errors
    ///
    /// [`AcquireTimeoutError::Timeout`] if the permits were not free within `timeout`; [`AcquireTimeoutError::Closed`] if the semaphore is closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire_many`](Self::acquire_many).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// let semaphore = Arc::new(lockyard::local::Semaphore::new(1));
    /// let permit = semaphore.clone().acquire_many_owned_timeout(1, Duration::ZERO).await.unwrap();
    /// assert_eq!(permit.num_permits(), 1);
    /// # }
    /// ```
    pub async fn acquire_many_owned_timeout(
        self: Arc<Self>,
        n: u32,
        timeout: Duration,
    ) -> Result<OwnedSemaphorePermit, AcquireTimeoutError> {
        let stats = self.take_timeout(n, timeout).await?;
        Ok(OwnedSemaphorePermit {
            semaphore: self,
            permits: n,
            _stats: stats,
        })
    }

    /// Blocks the current thread until `n` permits of an `Arc<Semaphore>`
    /// are free; the permit can then move to another thread.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let semaphore = Arc::new(lockyard::local::Semaphore::new(1));
    /// let permit = semaphore.clone().acquire_many_owned_blocking(1).unwrap();
    /// std::thread::spawn(move || drop(permit)).join().unwrap();
    /// assert_eq!(semaphore.available_permits(), 1);
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireError`] if the semaphore is closed (before or while waiting).
    pub fn acquire_many_owned_blocking(
        self: Arc<Self>,
        n: u32,
    ) -> Result<OwnedSemaphorePermit, AcquireError> {
        crate::loom::block_on(self.acquire_many_owned(n))
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("permits", &self.ll.available_permits())
            .field("closed", &self.ll.is_closed())
            .finish()
    }
}

impl<'a> SemaphorePermit<'a> {
    /// Keeps the permits out of the semaphore for good: dropping this permit
    /// no longer returns them.
    ///
    /// ```
    /// let semaphore = lockyard::local::Semaphore::new(2);
    /// semaphore.try_acquire().unwrap().forget();
    /// assert_eq!(semaphore.available_permits(), 1);
    /// ```
    pub fn forget(mut self) {
        self.permits = 0;
    }

    /// How many permits this holds.
    ///
    /// ```
    /// let semaphore = lockyard::local::Semaphore::new(2);
    /// assert_eq!(semaphore.try_acquire_many(2).unwrap().num_permits(), 2);
    /// ```
    pub fn num_permits(&self) -> usize {
        self.permits as usize
    }

    /// Moves the permits of `other` into this one.
    ///
    /// # Panics
    ///
    /// If the two permits come from different semaphores, or the sum
    /// overflows a `u32`.
    ///
    /// ```
    /// let semaphore = lockyard::local::Semaphore::new(3);
    /// let mut a = semaphore.try_acquire().unwrap();
    /// a.merge(semaphore.try_acquire_many(2).unwrap());
    /// assert_eq!(a.num_permits(), 3);
    /// ```
    pub fn merge(&mut self, mut other: Self) {
        assert!(
            std::ptr::eq(self.semaphore, other.semaphore),
            "merging permits from different semaphores"
        );
        self.permits = self
            .permits
            .checked_add(other.permits)
            .expect("number of permits overflows a u32");
        other.permits = 0;
    }

    /// Splits `n` permits off into a new permit, or returns `None` if this
    /// holds fewer than `n`.
    ///
    /// ```
    /// let semaphore = lockyard::local::Semaphore::new(3);
    /// let mut a = semaphore.try_acquire_many(3).unwrap();
    /// let b = a.split(1).unwrap();
    /// assert_eq!((a.num_permits(), b.num_permits()), (2, 1));
    /// ```
    pub fn split(&mut self, n: usize) -> Option<Self> {
        let n = u32::try_from(n).ok()?;
        self.permits = self.permits.checked_sub(n)?;
        Some(Self {
            semaphore: self.semaphore,
            permits: n,
            // The split-off part is not counted as a guard of its own.
            _stats: None,
        })
    }
}

impl Drop for SemaphorePermit<'_> {
    #[inline]
    fn drop(&mut self) {
        self.semaphore.ll.release(self.permits as usize);
    }
}

impl fmt::Debug for SemaphorePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphorePermit")
            .field("permits", &self.permits)
            .finish_non_exhaustive()
    }
}

impl OwnedSemaphorePermit {
    /// Keeps the permits out of the semaphore for good: dropping this permit
    /// no longer returns them.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let semaphore = Arc::new(lockyard::local::Semaphore::new(2));
    /// semaphore.clone().try_acquire_owned().unwrap().forget();
    /// assert_eq!(semaphore.available_permits(), 1);
    /// ```
    pub fn forget(mut self) {
        self.permits = 0;
    }

    /// How many permits this holds.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let semaphore = Arc::new(lockyard::local::Semaphore::new(2));
    /// assert_eq!(semaphore.try_acquire_many_owned(2).unwrap().num_permits(), 2);
    /// ```
    pub fn num_permits(&self) -> usize {
        self.permits as usize
    }

    /// The semaphore the permits belong to.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let semaphore = Arc::new(lockyard::local::Semaphore::new(1));
    /// let permit = semaphore.clone().try_acquire_owned().unwrap();
    /// assert!(Arc::ptr_eq(permit.semaphore(), &semaphore));
    /// ```
    pub fn semaphore(&self) -> &Arc<Semaphore> {
        &self.semaphore
    }

    /// Moves the permits of `other` into this one.
    ///
    /// # Panics
    ///
    /// If the two permits come from different semaphores, or the sum
    /// overflows a `u32`.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let semaphore = Arc::new(lockyard::local::Semaphore::new(2));
    /// let mut a = semaphore.clone().try_acquire_owned().unwrap();
    /// a.merge(semaphore.clone().try_acquire_owned().unwrap());
    /// assert_eq!(a.num_permits(), 2);
    /// ```
    pub fn merge(&mut self, mut other: Self) {
        assert!(
            Arc::ptr_eq(&self.semaphore, &other.semaphore),
            "merging permits from different semaphores"
        );
        self.permits = self
            .permits
            .checked_add(other.permits)
            .expect("number of permits overflows a u32");
        other.permits = 0;
    }

    /// Splits `n` permits off into a new permit, or returns `None` if this
    /// holds fewer than `n`.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let semaphore = Arc::new(lockyard::local::Semaphore::new(2));
    /// let mut a = semaphore.try_acquire_many_owned(2).unwrap();
    /// assert_eq!(a.split(1).unwrap().num_permits(), 1);
    /// assert!(a.split(5).is_none());
    /// ```
    pub fn split(&mut self, n: usize) -> Option<Self> {
        let n = u32::try_from(n).ok()?;
        self.permits = self.permits.checked_sub(n)?;
        Some(Self {
            semaphore: Arc::clone(&self.semaphore),
            permits: n,
            // The split-off part is not counted as a guard of its own.
            _stats: None,
        })
    }
}

impl Drop for OwnedSemaphorePermit {
    #[inline]
    fn drop(&mut self) {
        self.semaphore.ll.release(self.permits as usize);
    }
}

impl fmt::Debug for OwnedSemaphorePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedSemaphorePermit")
            .field("permits", &self.permits)
            .finish_non_exhaustive()
    }
}
