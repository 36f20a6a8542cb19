//! [`RedisLockGuard`]: a held Redis lock.

use crate::lease::lease_guard;
use crate::options::Mode;
use crate::redis::acquire::held::Hold;

/// A held Redis lock, exclusive or shared.
///
/// While the guard lives, the client's watchdog renews the lease (about every
/// TTL / 3, batched with every other lease of the client). Dropping the guard
/// stops the renewal at once and releases the lock from a background task
/// (Drop never blocks); [`release`](Self::release) releases now and reports
/// errors. If the release cannot run (no tokio runtime, Redis down), the lock
/// expires by its TTL.
///
/// [`lost`](Self::lost) completes when the holder can no longer be sure it
/// holds the lock: no renewal confirmed within its validity (see the lease
/// rules in the [module docs](crate::redis)), or a renewal found the key gone or
/// held by someone else. Once lost, a guard stays lost: `extend` and
/// `release` report it.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::time::Duration;
/// use lockyard::redis::RedisLocks;
///
/// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
/// let guard = locks.acquire("migrations", Duration::from_secs(30)).await?;
/// let token = guard.fencing_token(); // pass it to the storage you write to
/// let outcome = guard.run_until_lost(async { /* work */ 42 }).await?;
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct RedisLockGuard {
    pub(crate) held: Hold,
}

lease_guard!(RedisLockGuard, "redis", "lock");

impl RedisLockGuard {
    /// Exclusive or shared.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// use lockyard::{AcquireOptions, Mode, redis::RedisLocks};
    ///
    /// let locks = RedisLocks::connect("redis://127.0.0.1:6380/").await?;
    /// let guard = locks.acquire_with("catalog", &AcquireOptions::shared().timeout(Duration::from_secs(5))).await?;
    /// assert_eq!(guard.mode(), Mode::Shared);
    /// # Ok(())
    /// # }
    /// ```
    pub fn mode(&self) -> Mode {
        self.held.mode()
    }
}
