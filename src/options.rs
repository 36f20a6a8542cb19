//! Acquisition options: [`Mode`], [`AcquireOptions`] and the crate-private
//! [`Deadline`] every backend waits under.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// How a lock is held.
///
/// `Exclusive` holders exclude everyone; `Shared` holders exclude only
/// exclusive holders (readers/writer). Backends that have no shared mode
/// return [`LockError::Unsupported`](crate::LockError::Unsupported) when asked for one.
///
/// ```
/// use lockyard::Mode;
///
/// assert_eq!(Mode::default(), Mode::Exclusive);
/// assert_eq!("shared".parse::<Mode>()?, Mode::Shared);
/// assert_eq!(Mode::Shared.to_string(), "shared");
/// # Ok::<(), lockyard::LockError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[non_exhaustive]
pub enum Mode {
    /// One holder at a time (a writer).
    #[default]
    Exclusive,
    /// Many holders at a time, none of them exclusive (readers).
    Shared,
}

impl Mode {
    /// The lower-case name used in lock files, logs and `status --json`.
    ///
    /// ```
    /// assert_eq!(lockyard::Mode::Shared.as_str(), "shared");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Shared => "shared",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options for one acquisition: the [`Mode`] and how long to wait.
///
/// A `timeout` of `None` waits until the lock is free; `Some(Duration::ZERO)`
/// tries once (like `flock -n`) and fails with [`LockError::Timeout`](crate::LockError::Timeout).
///
/// ```
/// use std::time::Duration;
/// use lockyard::{AcquireOptions, Mode};
///
/// let opts = AcquireOptions::shared().timeout(Duration::from_millis(500));
/// assert_eq!(opts.mode, Mode::Shared);
/// assert_eq!(opts.timeout, Some(Duration::from_millis(500)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AcquireOptions {
    /// Exclusive or shared.
    pub mode: Mode,
    /// How long to wait; `None` waits for ever.
    pub timeout: Option<Duration>,
    /// The lease of this acquisition on a lease-based backend (Redis):
    /// how long the lock outlives a holder that stops renewing it. `None`
    /// uses the client's TTL. File and in-process locks have no lease and
    /// ignore it (the kernel or the process releases them).
    pub lease: Option<Duration>,
}

impl AcquireOptions {
    /// Exclusive, waiting for ever.
    ///
    /// ```
    /// use lockyard::{AcquireOptions, Mode};
    ///
    /// let opts = AcquireOptions::new();
    /// assert_eq!((opts.mode, opts.timeout), (Mode::Exclusive, None));
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Exclusive, waiting for ever.
    ///
    /// ```
    /// use lockyard::{AcquireOptions, Mode};
    ///
    /// assert_eq!(AcquireOptions::exclusive().mode, Mode::Exclusive);
    /// ```
    pub fn exclusive() -> Self {
        Self::default()
    }

    /// Shared, waiting for ever.
    ///
    /// ```
    /// use lockyard::{AcquireOptions, Mode};
    ///
    /// let opts = AcquireOptions::shared();
    /// assert_eq!((opts.mode, opts.timeout), (Mode::Shared, None));
    /// ```
    pub fn shared() -> Self {
        Self {
            mode: Mode::Shared,
            ..Self::default()
        }
    }

    /// Sets the mode.
    ///
    /// ```
    /// use lockyard::{AcquireOptions, Mode};
    ///
    /// let read = true;
    /// let opts = AcquireOptions::new().mode(if read { Mode::Shared } else { Mode::Exclusive });
    /// assert_eq!(opts.mode, Mode::Shared);
    /// ```
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets how long to wait before failing with [`LockError::Timeout`](crate::LockError::Timeout).
    ///
    /// `Duration::ZERO` tries once:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{AcquireOptions, FileLockManager, Lock};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let lock = FileLockManager::new(dir.path())?.lock("job")?;
    /// let _held = lock.lock(&AcquireOptions::exclusive()).await?;
    /// let once = AcquireOptions::exclusive().timeout(Duration::ZERO);
    /// assert!(lock.lock(&once).await.unwrap_err().is_timeout());
    /// # Ok(())
    /// # }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Waits for ever (the default).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::AcquireOptions;
    ///
    /// let opts = AcquireOptions::new().timeout(Duration::from_secs(1)).wait_forever();
    /// assert_eq!(opts.timeout, None);
    /// ```
    pub fn wait_forever(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// Sets this acquisition's lease (Redis; as Redisson's
    /// `lock(leaseTime)`): renewed while the guard lives, and how long the
    /// lock outlives a holder that stops renewing it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::AcquireOptions;
    ///
    /// let opts = AcquireOptions::exclusive()
    ///     .timeout(Duration::from_secs(1))
    ///     .lease(Duration::from_secs(5));
    /// assert_eq!(opts.lease, Some(Duration::from_secs(5)));
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }
}

/// A start instant plus an optional deadline on tokio's monotonic clock.
///
/// Every backend waits under one of these so that a multi-step acquisition
/// (local queue, then kernel or Redis) honours a single timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    start: Instant,
    at: Option<Instant>,
}

impl Deadline {
    /// A deadline `timeout` from now (`None`: never).
    pub(crate) fn after(timeout: Option<Duration>) -> Self {
        let start = Instant::now();
        // An absurd timeout (Duration::MAX) saturates to "never".
        let at = timeout.and_then(|t| start.checked_add(t));
        Self { start, at }
    }

    /// Time since the deadline was created.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The instant at which it expires, if any.
    pub(crate) fn instant(&self) -> Option<Instant> {
        self.at
    }

    /// Time left; `None` when there is no deadline, `Some(ZERO)` once expired.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadline has passed.
    pub(crate) fn expired(&self) -> bool {
        self.at.is_some_and(|at| Instant::now() >= at)
    }

    /// Sleeps until the deadline; never completes when there is none.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only sleeps.
    pub(crate) async fn sleep(&self) {
        match self.at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_round_trips() {
        for m in [Mode::Exclusive, Mode::Shared] {
            assert_eq!(m.as_str().parse::<Mode>().unwrap(), m);
        }
        assert!("writer".parse::<Mode>().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_expires() {
        let d = Deadline::after(Some(Duration::from_millis(10)));
        assert!(!d.expired());
        d.sleep().await;
        assert!(d.expired());
        assert_eq!(d.remaining(), Some(Duration::ZERO));
        let never = Deadline::after(Some(Duration::MAX));
        assert_eq!(never.instant(), None);
        assert!(!never.expired());
    }
}
