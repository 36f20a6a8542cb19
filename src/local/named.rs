//! [`NamedSemaphore`] and [`NamedRwLock`]: the in-process primitives under a
//! name, behind the crate's [`Lock`] trait, so they can sit beside file and
//! Redis locks.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use async_trait::async_trait;

use super::error::AcquireError;
use super::rwlock::{MAX_READS, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use super::semaphore::{OwnedSemaphorePermit, Semaphore};
use crate::error::LockError;
use crate::guard::{LockGuard, RawGuard};
use crate::lock::Lock;
use crate::options::{AcquireOptions, Deadline, Mode};
use crate::stats::{self, Acquisition, Backend};

/// A [`Semaphore`] with a name, usable as a [`Lock`].
///
/// Through the trait, each acquisition takes **one permit**, in either
/// [`Mode`]: with `n` permits, `n` holders at a time, exclusive or shared
/// alike. [`is_locked`](Lock::is_locked) answers whether no permit is free.
/// When none is, `try_lock` and a timed-out `lock` fail with
/// [`LockError::Saturated`] (`is_saturated()`, and `is_would_block()`
/// resp. `is_timeout()`), so a caller can tell a full semaphore from a
/// held lock.
/// The semaphore itself stays reachable through
/// [`semaphore`](Self::semaphore) for weighted use.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::sync::Arc;
/// use lockyard::{AcquireOptions, Lock, Mode};
/// use lockyard::local::NamedSemaphore;
///
/// let gpu: Arc<dyn Lock> = Arc::new(NamedSemaphore::new("gpu", 1));
/// let guard = gpu.lock(&AcquireOptions::exclusive()).await?;
/// assert_eq!(guard.resource(), "gpu");
/// let busy = gpu.try_lock(Mode::Exclusive).await.unwrap_err();
/// assert!(busy.is_would_block() && busy.is_saturated());
/// guard.release().await?;
/// assert!(!gpu.is_locked().await?);
/// # Ok(())
/// # }
/// ```
pub struct NamedSemaphore {
    name: Arc<str>,
    semaphore: Arc<Semaphore>,
}

/// An [`RwLock`] with a name, usable as a [`Lock`]: [`Mode::Exclusive`]
/// writes, [`Mode::Shared`] reads.
///
/// [`is_locked`](Lock::is_locked) answers whether anyone reads or writes
/// (or a writer has started collecting the lock).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use lockyard::{AcquireOptions, Lock, Mode};
/// use lockyard::local::NamedRwLock;
///
/// let index = NamedRwLock::new("index");
/// let r1 = index.lock(&AcquireOptions::shared()).await?;
/// let r2 = index.try_lock(Mode::Shared).await?;
/// assert!(index.try_lock(Mode::Exclusive).await.unwrap_err().is_would_block());
/// drop((r1, r2));
/// let w = index.try_lock(Mode::Exclusive).await?;
/// assert_eq!(w.mode(), Mode::Exclusive);
/// # Ok(())
/// # }
/// ```
pub struct NamedRwLock {
    name: Arc<str>,
    lock: Arc<RwLock>,
}

/// The guard both adapters hand out inside a [`LockGuard`].
#[clippy::has_significant_drop]
struct LocalLockGuard {
    resource: Arc<str>,
    held: Held,
    /// Counts the hold of a RW lock (a permit counts itself).
    stats: Option<stats::Held>,
}

/// What a [`LocalLockGuard`] holds; released by its `Drop`.
#[allow(dead_code, reason = "the guards are held for their Drop")]
enum Held {
    Permit(OwnedSemaphorePermit),
    Read(OwnedRwLockReadGuard<()>),
    Write(OwnedRwLockWriteGuard<()>),
}

impl NamedSemaphore {
    /// A new semaphore of `permits` permits, named `name`.
    ///
    /// # Panics
    ///
    /// If `permits` exceeds [`Semaphore::MAX_PERMITS`].
    ///
    /// ```
    /// let s = lockyard::local::NamedSemaphore::new("downloads", 4);
    /// assert_eq!(s.semaphore().available_permits(), 4);
    /// ```
    pub fn new(name: impl Into<String>, permits: usize) -> Self {
        let name = name.into();
        let semaphore = Arc::new(Semaphore::named(&name, permits));
        Self::from_arc(name, semaphore)
    }

    /// Names an existing semaphore (which other code may keep using).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use lockyard::local::{NamedSemaphore, Semaphore};
    ///
    /// let shared = Arc::new(Semaphore::new(2));
    /// let named = NamedSemaphore::from_arc("pool", Arc::clone(&shared));
    /// assert!(Arc::ptr_eq(named.semaphore(), &shared));
    /// ```
    pub fn from_arc(name: impl Into<String>, semaphore: Arc<Semaphore>) -> Self {
        Self {
            name: Arc::from(name.into()),
            semaphore,
        }
    }

    /// The semaphore.
    ///
    /// ```
    /// let s = lockyard::local::NamedSemaphore::new("x", 1);
    /// assert!(!s.semaphore().is_closed());
    /// ```
    pub fn semaphore(&self) -> &Arc<Semaphore> {
        &self.semaphore
    }
}

impl NamedRwLock {
    /// A new, free lock named `name`.
    ///
    /// ```
    /// let lock = lockyard::local::NamedRwLock::new("models");
    /// assert!(!lock.rwlock().is_locked());
    /// ```
    pub fn new(name: impl Into<String>) -> Self {
        Self::from_arc(name, Arc::new(RwLock::new(())))
    }

    /// Names an existing lock (which other code may keep using).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use lockyard::local::{NamedRwLock, RwLock};
    ///
    /// let shared = Arc::new(RwLock::new(()));
    /// let named = NamedRwLock::from_arc("cache", Arc::clone(&shared));
    /// assert!(Arc::ptr_eq(named.rwlock(), &shared));
    /// ```
    pub fn from_arc(name: impl Into<String>, lock: Arc<RwLock>) -> Self {
        Self {
            name: Arc::from(name.into()),
            lock,
        }
    }

    /// The lock.
    ///
    /// ```
    /// let lock = lockyard::local::NamedRwLock::new("x");
    /// assert!(lock.rwlock().try_read().is_ok());
    /// ```
    pub fn rwlock(&self) -> &Arc<RwLock> {
        &self.lock
    }
}

/// Waits for `acquire` under `options.timeout`, logging the wait, and turns
/// the outcome into a [`LockError`]; `attempt` (when the caller counts) is
/// told when the lock was found held.
async fn wait<G>(
    resource: &Arc<str>,
    mode: Mode,
    timeout: Option<std::time::Duration>,
    acquire: impl Future<Output = Result<G, AcquireError>>,
    attempt: Option<&Acquisition>,
) -> Result<G, LockError> {
    let deadline = Deadline::after(timeout);
    let mut acquire = pin!(acquire);
    let closed = || LockError::Closed {
        resource: resource.to_string(),
    };
    // One poll first: an uncontended lock costs no timer and no log line.
    if let Poll::Ready(result) = futures::poll!(acquire.as_mut()) {
        return result.map_err(|_| closed());
    }
    if let Some(attempt) = attempt {
        attempt.contended();
    }
    tracing::debug!(
        resource = &**resource,
        %mode,
        holder_pid = std::process::id(),
        "waiting for an in-process lock held within this process"
    );
    let outcome = tokio::select! {
        biased;
        result = &mut acquire => Some(result),
        () = deadline.sleep() => None,
    };
    let waited = deadline.elapsed();
    match outcome {
        Some(Ok(held)) => {
            tracing::debug!(resource = &**resource, %mode, ?waited, "acquired in-process lock");
            Ok(held)
        }
        Some(Err(_)) => Err(closed()),
        None => {
            tracing::debug!(resource = &**resource, %mode, ?waited, "timed out waiting for in-process lock");
            Err(LockError::Timeout {
                resource: resource.to_string(),
                waited,
                holder: None,
            })
        }
    }
}

/// A semaphore that timed out is saturated, not held by someone
/// ([`LockError::Saturated`], told apart by `is_saturated`).
fn saturated(err: LockError) -> LockError {
    match err {
        LockError::Timeout {
            resource, waited, ..
        } => LockError::Saturated {
            resource,
            timed_out: true,
            waited: Some(waited),
        },
        other => other,
    }
}

#[async_trait]
impl Lock for NamedSemaphore {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> Backend {
        Backend::Local
    }

    /// Takes one permit, in either mode.
    async fn lock(&self, options: &AcquireOptions) -> Result<LockGuard, LockError> {
        // The semaphore counts the acquisition; a timeout here drops its
        // wait, so it is counted here.
        let acquire = Arc::clone(&self.semaphore).acquire_many_owned(1);
        let permit = wait(&self.name, options.mode, options.timeout, acquire, None)
            .await
            .inspect_err(|e| {
                if e.is_timeout() {
                    self.semaphore.count_timeout();
                }
            })
            .map_err(saturated)?;
        Ok(LockGuard::new(LocalLockGuard {
            resource: Arc::clone(&self.name),
            held: Held::Permit(permit),
            // The permit counts itself.
            stats: None,
        }))
    }

    async fn try_lock(&self, _mode: Mode) -> Result<LockGuard, LockError> {
        match Arc::clone(&self.semaphore).try_acquire_owned() {
            Ok(permit) => Ok(LockGuard::new(LocalLockGuard {
                resource: Arc::clone(&self.name),
                held: Held::Permit(permit),
                stats: None,
            })),
            Err(e) if e.is_closed() => Err(LockError::Closed {
                resource: self.name.to_string(),
            }),
            Err(_) => Err(LockError::Saturated {
                resource: self.name.to_string(),
                timed_out: false,
                waited: None,
            }),
        }
    }

    /// Whether no permit is free (a `try_lock` would fail).
    async fn is_locked(&self) -> Result<bool, LockError> {
        Ok(self.semaphore.available_permits() == 0)
    }
}

#[async_trait]
impl Lock for NamedRwLock {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> Backend {
        Backend::Local
    }

    /// Writes for [`Mode::Exclusive`], reads for [`Mode::Shared`]; counted
    /// here (the RW lock itself has no name).
    async fn lock(&self, options: &AcquireOptions) -> Result<LockGuard, LockError> {
        let attempt = stats::site(Backend::Local, &self.name).begin();
        let lock = Arc::clone(&self.lock);
        let held = match options.mode {
            Mode::Shared => {
                let acquire = async move { Ok(Held::Read(lock.read_owned().await)) };
                wait(
                    &self.name,
                    options.mode,
                    options.timeout,
                    acquire,
                    Some(&attempt),
                )
                .await
            }
            Mode::Exclusive => {
                let acquire = async move { Ok(Held::Write(lock.write_owned().await)) };
                wait(
                    &self.name,
                    options.mode,
                    options.timeout,
                    acquire,
                    Some(&attempt),
                )
                .await
            }
        };
        let guard = held.map(|held| LocalLockGuard {
            resource: Arc::clone(&self.name),
            held,
            stats: None,
        });
        attempt
            .record(guard, |g, counted| g.stats = Some(counted))
            .map(LockGuard::new)
    }

    /// Counted here, as [`lock`](Lock::lock).
    async fn try_lock(&self, mode: Mode) -> Result<LockGuard, LockError> {
        let attempt = stats::site(Backend::Local, &self.name).begin();
        let lock = Arc::clone(&self.lock);
        let held = match mode {
            Mode::Shared => lock.try_read_owned().map(Held::Read),
            Mode::Exclusive => lock.try_write_owned().map(Held::Write),
        };
        let guard = match held {
            Ok(held) => Ok(LocalLockGuard {
                resource: Arc::clone(&self.name),
                held,
                stats: None,
            }),
            Err(_) => Err(LockError::WouldBlock {
                resource: self.name.to_string(),
                holder: None,
            }),
        };
        attempt
            .record(guard, |g, counted| g.stats = Some(counted))
            .map(LockGuard::new)
    }

    /// Whether anyone reads or writes.
    async fn is_locked(&self) -> Result<bool, LockError> {
        Ok(self.lock.is_locked())
    }
}

#[async_trait]
impl RawGuard for LocalLockGuard {
    fn resource(&self) -> &str {
        &self.resource
    }

    fn mode(&self) -> Mode {
        match self.held {
            Held::Read(_) => Mode::Shared,
            Held::Permit(_) | Held::Write(_) => Mode::Exclusive,
        }
    }

    /// Releasing in-process cannot fail.
    async fn release(self: Box<Self>) -> Result<(), LockError> {
        drop(self);
        Ok(())
    }
}

impl fmt::Debug for NamedSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedSemaphore")
            .field("name", &self.name)
            .field("semaphore", &self.semaphore)
            .finish()
    }
}

impl fmt::Debug for NamedRwLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedRwLock")
            .field("name", &self.name)
            .field("locked", &self.lock.is_locked())
            .finish()
    }
}

impl fmt::Debug for LocalLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, permits) = match &self.held {
            Held::Permit(p) => ("permit", p.num_permits()),
            Held::Read(_) => ("read", 1),
            Held::Write(_) => ("write", MAX_READS as usize),
        };
        f.debug_struct("LocalLockGuard")
            .field("resource", &self.resource)
            .field("held", &kind)
            .field("permits", &permits)
            .finish()
    }
}
