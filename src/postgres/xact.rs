//! Transaction-scoped advisory locks on the caller's own transaction
//! ([`PgLocks::lock_in_transaction`]): `pg_advisory_xact_lock`, which the
//! server releases when the transaction ends, however it ends, so it
//! cannot leak.

use tokio_postgres::{SimpleQueryMessage, Transaction};

use super::acquire::fence_after_wait;
use super::context::PgLocks;
use super::errors::{is_deadlock, is_lock_timeout, map_pg};
use super::keys::PgKey;
use crate::error::LockError;
use crate::options::{AcquireOptions, Deadline, Mode};

/// A transaction-scoped lock taken with
/// [`PgLocks::lock_in_transaction`]: held until the transaction commits or
/// rolls back (there is no early release).
///
/// ```no_run
/// # async fn demo(locks: lockyard::postgres::PgLocks, mut db: tokio_postgres::Client) -> Result<(), lockyard::LockError> {
/// let tx = db.transaction().await.expect("begin");
/// let held = locks.lock_in_transaction(&tx, "ledger", &lockyard::AcquireOptions::exclusive()).await?;
/// println!("key {}, token {:?}", held.key, held.fencing_token);
/// tx.commit().await.expect("commit"); // releases it
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgXactLock {
    /// The key held.
    pub key: PgKey,
    /// Exclusive or shared.
    pub mode: Mode,
    /// The fencing token, taken and committed on a connection of the
    /// client's own (so a rolled-back transaction never hands its token to
    /// the next holder); `None` when fencing is off.
    pub fencing_token: Option<u64>,
}

impl PgLocks {
    /// Takes `name` (mapped as [`lock`](Self::lock) maps it) in
    /// `options.mode` for the rest of the transaction `tx`, waiting at most
    /// `options.timeout` (`None`: for ever).
    ///
    /// A try first (`pg_try_advisory_xact_lock`); then the server's wait,
    /// in a savepoint under `SET LOCAL lock_timeout` (the transaction's own
    /// `lock_timeout` is restored after it). A timeout or a deadlock rolls
    /// back to the savepoint only: the transaction goes on.
    ///
    /// ```no_run
    /// # async fn demo(locks: lockyard::postgres::PgLocks, mut db: tokio_postgres::Client) -> Result<(), lockyard::LockError> {
    /// use std::time::Duration;
    /// let tx = db.transaction().await.expect("begin");
    /// let opts = lockyard::AcquireOptions::exclusive().timeout(Duration::from_secs(5));
    /// locks.lock_in_transaction(&tx, "ledger", &opts).await?;
    /// // ... the transaction's work, under the lock ...
    /// tx.commit().await.expect("commit");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] (or [`LockError::WouldBlock`] for a zero
    /// timeout) if the lock stayed held; [`LockError::Backend`] for a
    /// deadlock the server found (40P01: the caller's transaction may hold
    /// other locks) or a refused request; [`LockError::Unavailable`] if the
    /// connection failed; [`LockError::InvalidName`] for a name the key
    /// mode refuses.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while the server waits cancels the wait
    /// (`CancelToken`, in the background); the transaction is then in an
    /// error state, and must be rolled back, which ends any lock it took.
    /// Nothing outlives the transaction.
    pub async fn lock_in_transaction(
        &self,
        tx: &Transaction<'_>,
        name: &str,
        options: &AcquireOptions,
    ) -> Result<PgXactLock, LockError> {
        let key = self.lock(name)?.key();
        let mode = options.mode;
        let deadline = Deadline::after(options.timeout);
        let suffix = if mode == Mode::Shared { "_shared" } else { "" };
        let args = key.sql_args();
        let tried = tx
            .simple_query(&format!("SELECT pg_try_advisory_xact_lock{suffix}({args})"))
            .await
            .map_err(|e| map_pg(name, "try the lock", e))?;
        if first_value(&tried).as_deref() != Some("t") {
            let ms = match deadline.remaining() {
                None => 0,
                Some(left) if left.is_zero() => {
                    return Err(LockError::WouldBlock {
                        resource: name.to_owned(),
                        holder: None,
                    });
                }
                Some(left) => left.as_millis().clamp(1, i32::MAX as u128),
            };
            let wait = format!(
                "SAVEPOINT lockyard_wait; SELECT current_setting('lock_timeout'); \
                 SELECT set_config('lock_timeout', '{ms}', true); \
                 SELECT pg_advisory_xact_lock{suffix}({args})"
            );
            let cancel = CancelOnDrop(Some((tx.cancel_token(), self.clone())));
            let waited = tx.simple_query(&wait).await;
            drop(cancel.disarm());
            match waited {
                Ok(rows) => {
                    let old = first_value(&rows).unwrap_or_else(|| "0".to_owned());
                    let restore = format!(
                        "SELECT set_config('lock_timeout', '{}', true); \
                         RELEASE SAVEPOINT lockyard_wait",
                        old.replace('\'', "''")
                    );
                    tx.batch_execute(&restore)
                        .await
                        .map_err(|e| map_pg(name, "restore lock_timeout", e))?;
                }
                Err(e) => {
                    // Back to the savepoint: the wait's lock request (and
                    // its lock_timeout) go, the transaction goes on.
                    tx.batch_execute(
                        "ROLLBACK TO SAVEPOINT lockyard_wait; RELEASE SAVEPOINT lockyard_wait",
                    )
                    .await
                    .map_err(|e| map_pg(name, "roll back to the savepoint", e))?;
                    return Err(if is_lock_timeout(&e) {
                        LockError::Timeout {
                            resource: name.to_owned(),
                            waited: deadline.elapsed(),
                            holder: None,
                        }
                    } else if is_deadlock(&e) {
                        LockError::Backend {
                            resource: name.to_owned(),
                            op: "wait for the lock (the server found a deadlock, 40P01)",
                            source: Box::new(e),
                        }
                    } else {
                        map_pg(name, "wait for the lock", e)
                    });
                }
            }
        }
        let fencing_token = if self.options().fencing {
            let session = self.session(name).await?;
            self.ensure_fence_table(&session, name).await?;
            let token = fence_after_wait(self, &session, name, key).await?;
            self.put_back(session);
            token
        } else {
            None
        };
        Ok(PgXactLock {
            key,
            mode,
            fencing_token,
        })
    }
}

/// The first column of the first row of a simple query's replies.
fn first_value(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
}

/// Cancels the server-side wait of a dropped future, in the background.
struct CancelOnDrop(Option<(tokio_postgres::CancelToken, PgLocks)>);

impl CancelOnDrop {
    /// The wait ended by itself: nothing to cancel.
    fn disarm(mut self) -> Self {
        self.0 = None;
        self
    }
}

// Without the feature `tls` the connector is `NoTls`, which is `Copy`.
#[cfg_attr(not(feature = "tls"), allow(clippy::clone_on_copy))]
impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some((token, client)) = self.0.take() {
            let limit = client.options().op_timeout;
            // The caller's client may use TLS: cancel through ours, set up
            // for the same server as a rule (a client without TLS ignores it).
            let tls = client.inner.tls.clone();
            client.spawn(async move {
                let _ = tokio::time::timeout(limit, token.cancel_query(tls)).await;
            });
        }
    }
}
