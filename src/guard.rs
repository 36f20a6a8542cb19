//! The guard surface every backend shares: [`LockGuard`], the [`RawGuard`]
//! trait backends implement, and the [`Lost`] signal.
//!
//! The contract (see the crate docs):
//! - a guard releases on drop; drop never blocks, so a backend that needs I/O
//!   to release hands it to a background task (and the lock still expires by
//!   itself if that fails);
//! - [`LockGuard::release`] releases now and reports errors;
//! - [`LockGuard::lost`] completes when the holder can no longer be sure it
//!   holds the lock (file and in-process guards never lose);
//! - [`LockGuard::fencing_token`] strictly increases across successive holders
//!   of one resource, where the backend issues tokens.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::error::LockError;
use crate::options::Mode;

/// What a backend's concrete guard implements so it can travel as a
/// type-erased [`LockGuard`].
///
/// Implementations release in their own `Drop`; [`release`](Self::release)
/// must leave nothing for that `Drop` to do.
#[async_trait]
pub trait RawGuard: Send + Sync + fmt::Debug {
    /// The resource name.
    fn resource(&self) -> &str;

    /// How the lock is held.
    fn mode(&self) -> Mode;

    /// The fencing token, if this backend issues them.
    fn fencing_token(&self) -> Option<u64> {
        None
    }

    /// A future that completes when the lock is lost.
    fn lost(&self) -> Lost {
        Lost::never()
    }

    /// Releases now, reporting errors.
    async fn release(self: Box<Self>) -> Result<(), LockError>;
}

/// A held lock of any backend. Releases on drop.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use lockyard::{FileLockManager, Lock, AcquireOptions};
///
/// let dir = tempfile::tempdir().unwrap();
/// let locks = FileLockManager::new(dir.path())?;
/// let lock = locks.lock("report")?;
/// let guard = lock.lock(&AcquireOptions::exclusive()).await?;
/// assert_eq!(guard.resource(), "report");
/// assert!(!guard.is_lost());
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct LockGuard {
    inner: Box<dyn RawGuard>,
}

impl LockGuard {
    /// Wraps a backend's guard.
    pub fn new<G: RawGuard + 'static>(guard: G) -> Self {
        Self {
            inner: Box::new(guard),
        }
    }

    /// The resource name.
    pub fn resource(&self) -> &str {
        self.inner.resource()
    }

    /// How the lock is held.
    pub fn mode(&self) -> Mode {
        self.inner.mode()
    }

    /// The fencing token, if the backend issues them.
    pub fn fencing_token(&self) -> Option<u64> {
        self.inner.fencing_token()
    }

    /// A future that completes when the lock is lost.
    pub fn lost(&self) -> Lost {
        self.inner.lost()
    }

    /// Whether the lock is already known to be lost.
    pub fn is_lost(&self) -> bool {
        self.inner.lost().is_lost()
    }

    /// Runs `fut` while the lock is held; if the lock is lost first, `fut` is
    /// dropped and [`LockError::Lost`] returned.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future drops `fut`; the lock stays held by this
    /// guard.
    pub async fn run_until_lost<F: Future>(&self, fut: F) -> Result<F::Output, LockError> {
        let lost = self.lost();
        tokio::select! {
            biased;
            () = lost => Err(LockError::Lost { resource: self.resource().to_owned() }),
            out = fut => Ok(out),
        }
    }

    /// Releases the lock now and reports errors (dropping the guard also
    /// releases, but silently).
    ///
    /// # Cancel safety
    ///
    /// If the returned future is dropped before it completes, the release
    /// still happens (in the background where I/O is needed), but its outcome
    /// is not reported.
    pub async fn release(self) -> Result<(), LockError> {
        self.inner.release().await
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

/// A future that completes when a lock is lost; [`Lost::never`] never does.
///
/// Cloning is cheap; every clone completes together.
#[must_use = "futures do nothing unless polled"]
#[pin_project::pin_project]
pub struct Lost {
    token: Option<CancellationToken>,
    #[pin]
    wait: Option<WaitForCancellationFutureOwned>,
}

impl Lost {
    /// A signal that never fires (file and in-process locks).
    pub fn never() -> Self {
        Self {
            token: None,
            wait: None,
        }
    }

    /// A signal that fires when `token` is cancelled.
    pub fn from_token(token: CancellationToken) -> Self {
        Self {
            wait: Some(token.clone().cancelled_owned()),
            token: Some(token),
        }
    }

    /// Whether the lock is already lost.
    pub fn is_lost(&self) -> bool {
        self.token.as_ref().is_some_and(|t| t.is_cancelled())
    }
}

impl Clone for Lost {
    fn clone(&self) -> Self {
        match &self.token {
            Some(t) => Self::from_token(t.clone()),
            None => Self::never(),
        }
    }
}

impl fmt::Debug for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lost")
            .field("can_fire", &self.token.is_some())
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Future for Lost {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project().wait.as_pin_mut() {
            Some(wait) => wait.poll(cx),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn lost_fires_with_token() {
        let token = CancellationToken::new();
        let lost = Lost::from_token(token.clone());
        let copy = lost.clone();
        assert!(!lost.is_lost());
        token.cancel();
        assert!(copy.is_lost());
        tokio::time::timeout(Duration::from_secs(5), lost)
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn never_never_fires() {
        let r = tokio::time::timeout(Duration::from_secs(3600), Lost::never()).await;
        assert!(r.is_err());
    }
}
