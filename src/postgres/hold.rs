//! A held advisory lock ([`Hold`]): its session and its release, run
//! exactly once.
//!
//! # Invariants
//!
//! 1. The session is owned by the hold from the grant until an unlock
//!    confirmed it (then it goes back to the idle list) or the session is
//!    dropped (closing the connection, which frees the lock on the server).
//! 2. The session's keepalive probe runs while the hold has it, and stops
//!    before the unlock is sent.
//! 3. `lost` fires when the connection's task ends or a probe fails or
//!    goes unanswered for one `keepalive` interval (the session's `closed`
//!    token, of which the lost token is a child); once fired it stays.
//! 4. The unlock runs at most once to completion: in `release`, or from
//!    `Drop` in the background. A `release` future dropped mid-flight
//!    leaves the session in place, so `Drop` unlocks again (an unlock of a
//!    lock the session no longer holds changes nothing).

use std::fmt;

use tokio_postgres::types::{ToSql, Type};

use super::context::PgLocks;
use super::errors::{map_pg, timed_out};
use super::keys::PgKey;
use super::session::Session;
use crate::error::LockError;
use crate::lost::Lost;
use crate::options::Mode;
use crate::stats::Held;

/// A held lock.
pub(crate) struct Hold {
    client: PgLocks,
    resource: String,
    key: PgKey,
    mode: Mode,
    fence: Option<u64>,
    /// `None` once released (invariant 1).
    session: Option<Session>,
    pid: i32,
    lost: Lost,
    stats: Option<Held>,
}

impl Hold {
    /// Takes over `session`, which holds `key` in `mode`, and turns its
    /// keepalive probe on (invariant 2).
    pub(crate) fn new(
        client: &PgLocks,
        resource: &str,
        key: PgKey,
        mode: Mode,
        fence: Option<u64>,
        session: Session,
    ) -> Self {
        let lost_token = session.closed.child_token();
        session.set_holding(true);
        Self {
            client: client.clone(),
            resource: resource.to_owned(),
            key,
            mode,
            fence,
            pid: session.pid,
            session: Some(session),
            lost: Lost::from_token(lost_token),
            stats: None,
        }
    }

    /// Counts this hold in the stats registry until it ends.
    pub(crate) fn count(&mut self, held: Held) {
        self.stats = Some(held);
    }

    pub(crate) fn resource(&self) -> &str {
        &self.resource
    }

    pub(crate) fn key(&self) -> PgKey {
        self.key
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    pub(crate) fn fencing_token(&self) -> Option<u64> {
        self.fence
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    pub(crate) fn lost(&self) -> Lost {
        self.lost.clone()
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.is_lost()
    }

    /// Unlocks now (invariant 4).
    ///
    /// `Ok` when the server confirmed the unlock; [`LockError::Lost`] if
    /// the lost signal had fired (the session is dropped, which frees the
    /// lock if the server still had it); [`LockError::NotHeld`] if the
    /// server said the session did not hold it.
    pub(crate) async fn release(&mut self) -> Result<(), LockError> {
        let Some(session) = &self.session else {
            return Ok(());
        };
        session.set_holding(false);
        let limit = self.client.options().op_timeout;
        let unlock = unlock_sql(self.key, self.mode);
        let (a, b) = key_params(self.key);
        let params = params(&a, &b);
        let sent = tokio::time::timeout(limit, session.query_one(&unlock, &params));
        let result = sent.await;
        let session = self.session.take();
        let lost = self.lost.is_lost();
        match result {
            Ok(Ok(row)) => match row.try_get::<_, bool>(0) {
                Ok(true) if !lost => {
                    if let Some(s) = session {
                        self.client.put_back(s);
                    }
                    Ok(())
                }
                _ if lost => Err(self.lost_error()),
                Ok(_) => Err(LockError::NotHeld {
                    resource: self.resource.clone(),
                }),
                Err(e) => Err(map_pg(&self.resource, "release", e)),
            },
            _ if lost => Err(self.lost_error()),
            Ok(Err(e)) => Err(map_pg(&self.resource, "release", e)),
            Err(_) => Err(timed_out(&self.resource, "release", limit)),
        }
    }

    fn lost_error(&self) -> LockError {
        LockError::Lost {
            resource: self.resource.clone(),
        }
    }
}

/// The unlock for `key` held in `mode`, its parameters numbered as
/// [`key_params`] gives them.
pub(crate) fn unlock_sql(key: PgKey, mode: Mode) -> String {
    let suffix = if mode == Mode::Shared { "_shared" } else { "" };
    match key {
        PgKey::Single(_) => format!("SELECT pg_advisory_unlock{suffix}($1)"),
        PgKey::Pair(..) => format!("SELECT pg_advisory_unlock{suffix}($1, $2)"),
    }
}

/// A key's SQL parameters: one `bigint`, or two `integer`s.
pub(crate) enum KeyParam {
    Big(i64),
    Int(i32),
    None,
}

/// `key` as parameters `$1` (and `$2`).
pub(crate) fn key_params(key: PgKey) -> (KeyParam, KeyParam) {
    match key {
        PgKey::Single(k) => (KeyParam::Big(k), KeyParam::None),
        PgKey::Pair(a, b) => (KeyParam::Int(a), KeyParam::Int(b)),
    }
}

/// The typed parameter list of [`key_params`].
pub(crate) fn params<'a>(a: &'a KeyParam, b: &'a KeyParam) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    let mut out: Vec<(&'a (dyn ToSql + Sync), Type)> = Vec::with_capacity(2);
    for p in [a, b] {
        match p {
            KeyParam::Big(v) => out.push((v, Type::INT8)),
            KeyParam::Int(v) => out.push((v, Type::INT4)),
            KeyParam::None => {}
        }
    }
    out
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(stats) = &mut self.stats
            && self.lost.is_lost()
        {
            stats.lost();
        }
        let Some(session) = self.session.take() else {
            return;
        };
        session.set_holding(false);
        let client = self.client.clone();
        let key = self.key;
        let mode = self.mode;
        let limit = client.options().op_timeout;
        let keep = !self.lost.is_lost();
        self.client.spawn(async move {
            let unlock = unlock_sql(key, mode);
            let (a, b) = key_params(key);
            let params = params(&a, &b);
            let done = tokio::time::timeout(limit, session.query_one(&unlock, &params)).await;
            if keep && matches!(done, Ok(Ok(ref row)) if row.try_get::<_, bool>(0).unwrap_or(false))
            {
                client.put_back(session);
            }
            // Otherwise the session is dropped here: closing the connection
            // frees whatever it still held.
        });
    }
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("resource", &self.resource)
            .field("key", &self.key)
            .field("mode", &self.mode)
            .field("fencing_token", &self.fence)
            .field("pid", &self.pid)
            .field("lost", &self.is_lost())
            .finish()
    }
}
