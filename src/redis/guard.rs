//! [`RedisLockGuard`]: a held Redis lock.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use redis::Value;
use tokio_util::sync::CancellationToken;

use super::client::{RedisLocks, bad_reply, ttl_ms};
use super::keys::LockKeys;
use super::lease::{LeaseHandle, Renewal};
use super::local::LocalTurn;
use super::options::validate_ttl;
use super::scripts;
use crate::error::LockError;
use crate::guard::{LockGuard, Lost, RawGuard};
use crate::options::Mode;

/// A held exclusive Redis lock.
///
/// While the guard lives, the client's watchdog renews the lease (about every
/// TTL / 3, batched with every other lease of the client). Dropping the guard
/// stops the renewal at once and releases the lock from a background task
/// (Drop never blocks); [`release`](Self::release) releases now and reports
/// errors. If the release cannot run (no tokio runtime, Redis down), the lock
/// expires by its TTL.
///
/// [`lost`](Self::lost) completes when the holder can no longer be sure it
/// holds the lock: no renewal confirmed within *TTL − drift* of the last
/// one, or a renewal found the key gone or held by someone else.
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
    name: String,
    fence: u64,
    lost: CancellationToken,
    /// `None` once released.
    held: Option<Held>,
}

/// What a guard needs to renew, extend and release.
pub(crate) struct Held {
    pub(crate) client: RedisLocks,
    pub(crate) keys: LockKeys,
    /// Our owner value (token + metadata), compared by release/extend.
    pub(crate) value: String,
    pub(crate) lease: LeaseHandle,
    /// Kept until the release reached Redis, so the next local waiter finds
    /// the lock free.
    pub(crate) turn: LocalTurn,
}

impl RedisLockGuard {
    pub(crate) fn new(name: String, fence: u64, held: Held) -> Self {
        Self {
            name,
            fence,
            lost: held.lease.lost_token().clone(),
            held: Some(held),
        }
    }

    /// The resource name.
    pub fn resource(&self) -> &str {
        &self.name
    }

    /// The fencing token: strictly greater than the token of every earlier
    /// holder of this resource, as long as the Redis server keeps its data
    /// (a server restarted without persistence starts counting again).
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// A future that completes when the lock is lost.
    pub fn lost(&self) -> Lost {
        Lost::from_token(self.lost.clone())
    }

    /// Whether the lock is already known to be lost.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Runs `fut` while the lock is held; if the lock is lost first, `fut`
    /// is dropped and [`LockError::Lost`] returned.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future drops `fut`; the lock stays held.
    pub async fn run_until_lost<F: Future>(&self, fut: F) -> Result<F::Output, LockError> {
        tokio::select! {
            biased;
            () = self.lost.cancelled() => Err(LockError::Lost { resource: self.name.clone() }),
            out = fut => Ok(out),
        }
    }

    /// Sets the lease to `ttl` from now (if we still hold the lock); the
    /// watchdog renews with `ttl` from then on.
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] if the lost signal had fired, or fires while the
    /// extend runs (a lost lock is never extended back to held);
    /// [`LockError::NotHeld`] (and the lost signal fires) if the server says
    /// the lock is no longer ours; [`LockError::InvalidArgument`] for a TTL
    /// under 10 ms; Redis errors as for acquisition.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped the extension may or may not have reached
    /// Redis; the watchdog keeps renewing with the TTL it had, and the lease
    /// is judged by the shorter of the two TTLs until a renewal settles it.
    pub async fn extend(&self, ttl: Duration) -> Result<(), LockError> {
        validate_ttl(ttl)?;
        let held = self.held()?;
        let opts = held.client.options();
        let send = || async {
            let reply: Value = held
                .client
                .retry_once(&self.name, "extend", |mut conn| async move {
                    scripts::EXTEND
                        .key(&held.keys.lock)
                        .arg(&held.value)
                        .arg(ttl_ms(ttl))
                        .invoke_async(&mut conn)
                        .await
                })
                .await?;
            match reply {
                Value::Int(1) => Ok(Renewal::Renewed),
                Value::Int(0) => Ok(Renewal::NotOwner),
                other => Err(bad_reply(&self.name, "extend", &other)),
            }
        };
        held.lease
            .extend(ttl, opts.renew_interval_for(ttl), opts.drift_for(ttl), send)
            .await
    }

    /// Releases the lock now: stops renewal, deletes the key if it is still
    /// ours and wakes waiters.
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] if the lost signal had fired but the server
    /// still had our token (the key is deleted all the same);
    /// [`LockError::NotHeld`] if the key had expired or was taken over;
    /// Redis errors as for acquisition (the lock then expires
    /// by its TTL).
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before Redis answered, the release is
    /// finished by a background task (its outcome is not reported).
    pub async fn release(mut self) -> Result<(), LockError> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        let Held {
            client,
            keys,
            value,
            lease,
            turn,
        } = held;
        // Stop renewing before the release is sent (invariant 4).
        let lost = lease.is_lost().then(|| lease.lost_error());
        drop(lease);
        let mut pending = PendingRelease {
            name: &self.name,
            client: &client,
            keys: &keys,
            value: &value,
            turn: Some(turn),
        };
        let result = pending.run().await;
        drop(pending.turn.take());
        // A lost lock stays lost (invariant 3): never `Ok`, even if the
        // server still had our token and the key was deleted now.
        match (result, lost) {
            (Ok(()), Some(e)) => Err(e),
            (result, _) => result,
        }
    }

    fn held(&self) -> Result<&Held, LockError> {
        self.held.as_ref().ok_or_else(|| self.not_held())
    }

    fn not_held(&self) -> LockError {
        LockError::NotHeld {
            resource: self.name.clone(),
        }
    }
}

/// A release in progress; if dropped unfinished, a background task
/// finishes it.
struct PendingRelease<'a> {
    name: &'a str,
    client: &'a RedisLocks,
    keys: &'a LockKeys,
    value: &'a str,
    /// `Some` until Redis answered.
    turn: Option<LocalTurn>,
}

impl PendingRelease<'_> {
    async fn run(&mut self) -> Result<(), LockError> {
        let (keys, value) = (self.keys, self.value);
        let reply = self
            .client
            .retry_once(self.name, "release", |mut conn| async move {
                scripts::RELEASE
                    .key(&keys.lock)
                    .arg(value)
                    .arg(&keys.channel)
                    .invoke_async::<Value>(&mut conn)
                    .await
            })
            .await;
        // Answered (or failed for good): nothing left for Drop to do.
        drop(self.turn.take());
        match reply? {
            Value::Int(1) => Ok(()),
            Value::Int(0) => Err(LockError::NotHeld {
                resource: self.name.to_owned(),
            }),
            other => Err(bad_reply(self.name, "release", &other)),
        }
    }
}

impl Drop for PendingRelease<'_> {
    fn drop(&mut self) {
        if let Some(turn) = self.turn.take() {
            self.client.spawn_release(
                self.name.to_owned(),
                &scripts::RELEASE,
                vec![self.keys.lock.clone()],
                vec![self.value.to_owned(), self.keys.channel.clone()],
                None,
                turn,
            );
        }
    }
}

impl Drop for RedisLockGuard {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let Held {
            client,
            keys,
            value,
            lease,
            turn,
        } = held;
        // Stop renewing first.
        drop(lease);
        let LockKeys { lock, channel, .. } = keys;
        client.spawn_release(
            std::mem::take(&mut self.name),
            &scripts::RELEASE,
            vec![lock],
            vec![value, channel],
            None,
            turn,
        );
    }
}

impl fmt::Debug for RedisLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLockGuard")
            .field("resource", &self.name)
            .field("fencing_token", &self.fence)
            .field("lost", &self.is_lost())
            .field("released", &self.held.is_none())
            .finish()
    }
}

#[async_trait]
impl RawGuard for RedisLockGuard {
    fn resource(&self) -> &str {
        &self.name
    }

    fn mode(&self) -> Mode {
        Mode::Exclusive
    }

    fn fencing_token(&self) -> Option<u64> {
        Some(self.fence)
    }

    fn lost(&self) -> Lost {
        RedisLockGuard::lost(self)
    }

    async fn release(self: Box<Self>) -> Result<(), LockError> {
        (*self).release().await
    }
}

impl From<RedisLockGuard> for LockGuard {
    fn from(guard: RedisLockGuard) -> Self {
        LockGuard::new(guard)
    }
}
