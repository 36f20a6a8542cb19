//! [`PgLockGuard`]: a held Postgres advisory lock.

use async_trait::async_trait;

use super::hold::Hold;
use super::keys::PgKey;
use crate::error::LockError;
use crate::guard::{LockGuard, RawGuard};
use crate::lost::{LeaseState, Lost};
use crate::options::Mode;

/// A held advisory lock, exclusive or shared, on a connection of its own.
///
/// While the guard lives, its connection is probed every
/// [`keepalive`](super::PgOptions::keepalive); dropping the guard unlocks
/// from a background task (Drop never blocks) and returns the connection
/// to the client's idle list; [`release`](Self::release) unlocks now and
/// reports errors. If the unlock cannot run (no runtime, server down), the
/// connection is closed, and the server frees the lock with its session.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::time::Duration;
/// use lockyard::postgres::PgLocks;
///
/// let locks = PgLocks::connect("postgres://app:secret@127.0.0.1/app").await?;
/// let guard = locks.acquire("migrations", Duration::from_secs(30)).await?;
/// let token = guard.fencing_token(); // pass it to the storage you write to
/// let outcome = guard.run_until_lost(async { /* work */ 42 }).await?;
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "if unused the lock will immediately unlock"]
#[clippy::has_significant_drop]
pub struct PgLockGuard {
    pub(crate) held: Hold,
}

impl PgLockGuard {
    /// The name of the lock.
    ///
    /// ```no_run
    /// # async fn demo(guard: lockyard::postgres::PgLockGuard) {
    /// tracing::info!(resource = guard.resource(), "holding");
    /// # }
    /// ```
    pub fn resource(&self) -> &str {
        self.held.resource()
    }

    /// The advisory lock key held.
    ///
    /// ```no_run
    /// # async fn demo(guard: lockyard::postgres::PgLockGuard) {
    /// println!("holding key {}", guard.key());
    /// # }
    /// ```
    pub fn key(&self) -> PgKey {
        self.held.key()
    }

    /// Exclusive or shared.
    ///
    /// ```no_run
    /// # async fn demo(guard: lockyard::postgres::PgLockGuard) {
    /// assert_eq!(guard.mode(), lockyard::Mode::Exclusive);
    /// # }
    /// ```
    pub fn mode(&self) -> Mode {
        self.held.mode()
    }

    /// The pid of the server process (backend) whose session holds the
    /// lock, as `pg_locks` and `pg_stat_activity` show it.
    ///
    /// ```no_run
    /// # async fn demo(guard: lockyard::postgres::PgLockGuard) {
    /// println!("held by backend {}", guard.backend_pid());
    /// # }
    /// ```
    pub fn backend_pid(&self) -> i32 {
        self.held.pid()
    }

    /// The fencing token: strictly increases across successive holders of
    /// this key on this database (a row of the fence table); `None` when
    /// fencing is off ([`PgOptions::fencing`](super::PgOptions::fencing)).
    ///
    /// ```no_run
    /// # async fn demo(guard: lockyard::postgres::PgLockGuard) {
    /// if let Some(token) = guard.fencing_token() {
    ///     // Storage that remembers the highest token it saw refuses a stale holder.
    ///     let update = format!("UPDATE report SET fence = {token} WHERE fence < {token}");
    ///     # let _ = update;
    /// }
    /// # }
    /// ```
    pub fn fencing_token(&self) -> Option<u64> {
        self.held.fencing_token()
    }

    /// Completes when the lock is lost: its connection ended (the server
    /// restarted, the backend was terminated, the network reset it) or a
    /// keepalive probe failed or went unanswered.
    ///
    /// ```no_run
    /// # async fn demo(guard: lockyard::postgres::PgLockGuard) {
    /// tokio::select! {
    ///     () = guard.lost() => tracing::warn!("lost {}: stopping", guard.resource()),
    ///     () = tokio::time::sleep(std::time::Duration::from_secs(60)) => { /* the work */ }
    /// }
    /// # }
    /// ```
    pub fn lost(&self) -> Lost {
        self.held.lost()
    }

    /// Whether the lock is known lost now.
    ///
    /// ```no_run
    /// # async fn demo(guard: lockyard::postgres::PgLockGuard) {
    /// if guard.is_lost() { return; }
    /// # }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.held.is_lost()
    }

    /// Held or lost, as of now (a Postgres hold is never suspect: it has
    /// no lease to run out).
    ///
    /// ```no_run
    /// # async fn demo(guard: lockyard::postgres::PgLockGuard) {
    /// assert_eq!(guard.state(), lockyard::LeaseState::Held);
    /// # }
    /// ```
    pub fn state(&self) -> LeaseState {
        self.held.lost().state()
    }

    /// Runs `fut` while held; if the lock is lost first, `fut` is dropped
    /// and [`LockError::Lost`] returned.
    ///
    /// ```no_run
    /// # async fn demo(guard: lockyard::postgres::PgLockGuard) -> Result<(), lockyard::LockError> {
    /// let rows = guard.run_until_lost(async { /* the work */ 42 }).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] if the lock is lost before `fut` completes.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future drops `fut`; the lock stays held.
    pub async fn run_until_lost<F: Future>(&self, fut: F) -> Result<F::Output, LockError> {
        let lost = self.held.lost();
        tokio::select! {
            biased;
            () = lost => Err(LockError::Lost { resource: self.resource().to_owned() }),
            out = fut => Ok(out),
        }
    }

    /// Unlocks now and reports errors.
    ///
    /// ```no_run
    /// # async fn demo(guard: lockyard::postgres::PgLockGuard) -> Result<(), lockyard::LockError> {
    /// guard.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] if the lost signal had fired;
    /// [`LockError::NotHeld`] if the server said the session did not hold
    /// it; [`LockError::Unavailable`] if the server did not answer within
    /// `op_timeout` (the connection is then closed, which frees the lock).
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before it completes, the unlock is sent
    /// again from a background task.
    pub async fn release(mut self) -> Result<(), LockError> {
        self.held.release().await
    }
}

impl std::fmt::Debug for PgLockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLockGuard")
            .field("held", &self.held)
            .finish()
    }
}

#[async_trait]
impl RawGuard for PgLockGuard {
    fn resource(&self) -> &str {
        self.held.resource()
    }

    fn mode(&self) -> Mode {
        self.held.mode()
    }

    fn fencing_token(&self) -> Option<u64> {
        self.held.fencing_token()
    }

    fn lost(&self) -> Lost {
        self.held.lost()
    }

    async fn release(mut self: Box<Self>) -> Result<(), LockError> {
        self.held.release().await
    }
}

impl From<PgLockGuard> for LockGuard {
    fn from(guard: PgLockGuard) -> Self {
        LockGuard::new(guard)
    }
}
