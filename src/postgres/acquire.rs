//! Taking an advisory lock: a try (`pg_try_advisory_lock`, with the fence
//! write in the same statement), and a wait the server does
//! (`pg_advisory_lock` under `SET LOCAL lock_timeout` in a transaction),
//! both cancel safe.
//!
//! # Invariants
//!
//! 1. An [`Attempt`] owns its session until a [`Hold`] takes it. Dropped
//!    before that (an error, or the future cancelled) with a request in
//!    flight whose outcome is unknown, it hands the session to
//!    [`PgLocks::clean_up`]: a wait still blocked on the server is
//!    cancelled (`CancelToken`), then every advisory lock of the session
//!    is released and that is confirmed before the session is reused; if
//!    anything fails, the session is dropped, and closing its connection
//!    frees its locks. A lock is never left held by a dropped acquisition.
//! 2. A `lock_timeout` (55P03) is a timeout only once `pg_locks` shows the
//!    session was not granted the lock: the server can grant it just as
//!    the timeout fires, and a session lock survives the rollback.
//! 3. A deadlock the server found (40P01) is an error, never a timeout.
//! 4. A lock is only ever taken by the session's own backend: every
//!    statement that may take one checks `pg_backend_pid()` against the
//!    pid the session learned when it connected, in the same statement and
//!    before the lock function runs (`CASE` evaluates only the branch it
//!    takes). A statement run by another backend takes nothing and is
//!    reported as [`pooled`]: only a pooler in transaction or statement
//!    pooling moves a connection's statements to other backends, so a
//!    direct connection never sees it.

use std::time::Duration;

use tokio_postgres::types::Type;

use super::context::PgLocks;
use super::errors::{
    bad_reply, is_deadlock, is_lock_timeout, is_missing_table, map_pg, pooled, timed_out,
};
use super::hold::{Hold, key_params, params};
use super::keys::PgKey;
use super::session::Session;
use crate::error::LockError;
use crate::options::{Deadline, Mode};
use crate::stats::Acquisition;

/// What an attempt's session may be doing on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    /// Nothing that could take a lock: the session is clean.
    Nothing,
    /// A request that may have taken the lock.
    Request,
    /// A blocking wait that may still be running.
    Wait,
}

/// A session taken for one acquisition (invariant 1).
struct Attempt {
    client: PgLocks,
    session: Option<Session>,
    in_flight: InFlight,
}

impl Attempt {
    fn session(&self) -> Result<&Session, LockError> {
        self.session.as_ref().ok_or_else(|| LockError::Protocol {
            resource: String::new(),
            op: "acquire",
            detail: "the attempt's session is gone".to_owned(),
        })
    }

    /// The session, now holding the lock, into a [`Hold`].
    fn into_hold(
        mut self,
        resource: &str,
        key: PgKey,
        mode: Mode,
        fence: Option<u64>,
    ) -> Result<Hold, LockError> {
        let session = self.session.take().ok_or_else(|| LockError::Protocol {
            resource: resource.to_owned(),
            op: "acquire",
            detail: "the attempt's session is gone".to_owned(),
        })?;
        Ok(Hold::new(&self.client, resource, key, mode, fence, session))
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            match self.in_flight {
                InFlight::Nothing => self.client.put_back(session),
                InFlight::Request => self.client.clean_up(session, false),
                InFlight::Wait => self.client.clean_up(session, true),
            }
        }
    }
}

/// Takes the lock if it is free now.
///
/// # Cancel safety
///
/// See invariant 1.
pub(crate) async fn try_hold(
    client: &PgLocks,
    resource: &str,
    target: Target<'_>,
    mode: Mode,
) -> Result<Hold, LockError> {
    match try_hold_once(client, resource, target, mode).await {
        // The fence table was dropped under us: make it again, once.
        Err(e) if is_missing_table(&e) => {
            client.forget_fence_table();
            try_hold_once(client, resource, target, mode).await
        }
        other => other,
    }
}

async fn try_hold_once(
    client: &PgLocks,
    resource: &str,
    target: Target<'_>,
    mode: Mode,
) -> Result<Hold, LockError> {
    let mut attempt = begin(client, resource).await?;
    match try_target(&mut attempt, resource, target, mode).await? {
        Some((key, fence)) => attempt.into_hold(resource, key, mode, fence),
        None => Err(LockError::WouldBlock {
            resource: resource.to_owned(),
            holder: None,
        }),
    }
}

/// Takes the lock, waiting until `deadline`.
///
/// # Cancel safety
///
/// See invariant 1.
pub(crate) async fn wait_hold(
    client: &PgLocks,
    resource: &str,
    target: Target<'_>,
    mode: Mode,
    deadline: &Deadline,
    stats: &Acquisition,
) -> Result<Hold, LockError> {
    match wait_hold_once(client, resource, target, mode, deadline, stats).await {
        // The fence table was dropped under us: make it again, once.
        Err(e) if is_missing_table(&e) => {
            client.forget_fence_table();
            wait_hold_once(client, resource, target, mode, deadline, stats).await
        }
        other => other,
    }
}

async fn wait_hold_once(
    client: &PgLocks,
    resource: &str,
    target: Target<'_>,
    mode: Mode,
    deadline: &Deadline,
    stats: &Acquisition,
) -> Result<Hold, LockError> {
    let mut attempt = begin(client, resource).await?;
    if let Some((key, fence)) = try_target(&mut attempt, resource, target, mode).await? {
        return attempt.into_hold(resource, key, mode, fence);
    }
    stats.contended();
    // A semaphore waits on one permit, picked at random (see PgSemaphore).
    let key = match target {
        Target::Lock(key) => key,
        Target::Permits(keys) => {
            let pick = getrandom::u64().unwrap_or(0) % (keys.len().max(1) as u64);
            let k = usize::try_from(pick)
                .ok()
                .and_then(|i| keys.get(i))
                .copied()
                .ok_or_else(|| bad_reply(resource, "acquire", "a semaphore without permits"))?;
            PgKey::Single(k)
        }
    };
    let timeout = || LockError::Timeout {
        resource: resource.to_owned(),
        waited: deadline.elapsed(),
        holder: None,
    };
    // lock_timeout counts whole milliseconds; 0 would mean for ever.
    let ms = match deadline.remaining() {
        None => 0,
        Some(left) if left.is_zero() => return Err(timeout()),
        Some(left) => left.as_millis().clamp(1, i32::MAX as u128),
    };
    // Only on the session's own backend (invariant 4); the pid it ran on
    // comes back either way, and with fencing the token too.
    let session_pid = attempt.session()?.pid;
    let (wait, fenced_inline) = client.inner.sql.wait(mode, key, session_pid, ms, resource);
    let op_timeout = client.options().op_timeout;
    attempt.in_flight = InFlight::Wait;
    let session = attempt.session()?;
    let sent = session.simple_query(&wait, op_timeout);
    let result = match deadline.remaining() {
        Some(left) => match tokio::time::timeout(left + op_timeout, sent).await {
            Ok(r) => r,
            Err(_) => return Err(timed_out(resource, "wait for the lock", left + op_timeout)),
        },
        None => sent.await,
    };
    match result {
        Ok(replies) => {
            let mut rows = replies.iter().filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
                _ => None,
            });
            let ran_on = rows.next();
            let token = rows.next();
            attempt.in_flight = InFlight::Request;
            if ran_on != Some(session_pid.to_string().as_str()) {
                return Err(pooled(resource));
            }
            if fenced_inline {
                // No token: the fence write ran on another backend.
                let token = token.ok_or_else(|| pooled(resource))?;
                let fence = token.parse::<u64>().map_err(|_| {
                    bad_reply(resource, "take a fencing token", format!("token {token:?}"))
                })?;
                return attempt.into_hold(resource, key, mode, Some(fence));
            }
        }
        Err(e) if is_lock_timeout(&e) => {
            attempt.in_flight = InFlight::Request;
            match granted_after_timeout(attempt.session()?, resource, key, op_timeout).await? {
                Granted::Yes => {}
                Granted::No => {
                    attempt.in_flight = InFlight::Nothing;
                    return Err(timeout());
                }
            }
        }
        Err(e) if is_deadlock(&e) => {
            attempt.in_flight = InFlight::Request;
            return Err(LockError::Backend {
                resource: resource.to_owned(),
                op: "wait for the lock (the server found a deadlock, 40P01)",
                source: Box::new(e),
            });
        }
        Err(e) => {
            attempt.in_flight = InFlight::Request;
            return Err(map_pg(resource, "wait for the lock", e));
        }
    }
    attempt.in_flight = InFlight::Request;
    let fence = fence_after_wait(client, attempt.session()?, resource, key).await?;
    attempt.into_hold(resource, key, mode, fence)
}

/// What an acquisition takes: one lock's key, or any one of a semaphore's
/// permit keys (exclusive `bigint` keys).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    Lock(PgKey),
    Permits(&'a [i64]),
}

/// One try at `target`: the key taken and its fence, if granted.
async fn try_target(
    attempt: &mut Attempt,
    resource: &str,
    target: Target<'_>,
    mode: Mode,
) -> Result<Option<(PgKey, Option<u64>)>, LockError> {
    match target {
        Target::Lock(key) => Ok(try_once(attempt, resource, key, mode)
            .await?
            .map(|fence| (key, fence))),
        Target::Permits(keys) => try_any(attempt, resource, keys).await,
    }
}

/// Tries the permit keys in turn (`pg_try_advisory_lock`, stopping at the
/// first granted: a `LIMIT 1` over the keys in order), then takes a fence.
async fn try_any(
    attempt: &mut Attempt,
    resource: &str,
    keys: &[i64],
) -> Result<Option<(PgKey, Option<u64>)>, LockError> {
    const OP: &str = "try the semaphore";
    let limit = attempt.client.options().op_timeout;
    let keys = keys.to_vec();
    attempt.in_flight = InFlight::Request;
    let session = attempt.session()?;
    let typed = [
        (
            &keys as &(dyn tokio_postgres::types::ToSql + Sync),
            Type::INT8_ARRAY,
        ),
        (&session.pid, Type::INT4),
    ];
    // Only on the session's own backend (invariant 4).
    let look = session.client.query_typed_one(
        "SELECT pg_backend_pid(), (SELECT k FROM unnest($1::int8[]) AS u(k) \
         WHERE CASE WHEN pg_backend_pid() = $2 THEN pg_try_advisory_lock(k) ELSE false END \
         LIMIT 1)",
        &typed,
    );
    let row = match tokio::time::timeout(limit, look).await {
        Ok(Ok(row)) => row,
        Ok(Err(e)) => return Err(map_pg(resource, OP, e)),
        Err(_) => return Err(timed_out(resource, OP, limit)),
    };
    let ran_on: i32 = row.try_get(0).map_err(|e| map_pg(resource, OP, e))?;
    if ran_on != session.pid {
        return Err(pooled(resource));
    }
    let taken: Option<i64> = row.try_get(1).map_err(|e| map_pg(resource, OP, e))?;
    let Some(taken) = taken else {
        attempt.in_flight = InFlight::Nothing;
        return Ok(None);
    };
    let key = PgKey::Single(taken);
    let client = attempt.client.clone();
    let fence = fence_after_wait(&client, attempt.session()?, resource, key).await?;
    Ok(Some((key, fence)))
}

/// A session for `resource`, with the fence table ready when fencing is on.
async fn begin(client: &PgLocks, resource: &str) -> Result<Attempt, LockError> {
    let session = client.session(resource).await?;
    let attempt = Attempt {
        client: client.clone(),
        session: Some(session),
        in_flight: InFlight::Nothing,
    };
    if client.options().fencing {
        client
            .ensure_fence_table(attempt.session()?, resource)
            .await?;
    }
    Ok(attempt)
}

/// One `pg_try_advisory_lock` (with the fence write in the same statement
/// when fencing is on): `Some(fence)` if granted.
async fn try_once(
    attempt: &mut Attempt,
    resource: &str,
    key: PgKey,
    mode: Mode,
) -> Result<Option<Option<u64>>, LockError> {
    let fencing = attempt.client.options().fencing;
    let (a, b) = key_params(key);
    let mut typed = params(&a, &b);
    let key_text = key.to_string();
    let name = resource.to_owned();
    if fencing {
        typed.push((&key_text, Type::TEXT));
        typed.push((&name, Type::TEXT));
    }
    let client = attempt.client.clone();
    let sql = client.inner.sql.try_lock(mode, key);
    let limit = attempt.client.options().op_timeout;
    attempt.in_flight = InFlight::Request;
    let session = attempt.session()?;
    // Only on the session's own backend (invariant 4).
    typed.push((&session.pid, Type::INT4));
    let row = match tokio::time::timeout(limit, session.query_one(sql, &typed)).await {
        Ok(Ok(row)) => row,
        Ok(Err(e)) => return Err(map_pg(resource, "try the lock", e)),
        Err(_) => return Err(timed_out(resource, "try the lock", limit)),
    };
    let ran_on: i32 = row
        .try_get(2)
        .map_err(|e| map_pg(resource, "try the lock", e))?;
    if ran_on != session.pid {
        return Err(pooled(resource));
    }
    let granted: Option<bool> = row
        .try_get(0)
        .map_err(|e| map_pg(resource, "try the lock", e))?;
    if granted != Some(true) {
        attempt.in_flight = InFlight::Nothing;
        return Ok(None);
    }
    if !fencing {
        return Ok(Some(None));
    }
    let token: Option<i64> = row
        .try_get(1)
        .map_err(|e| map_pg(resource, "try the lock", e))?;
    match token.and_then(|t| u64::try_from(t).ok()) {
        Some(t) => Ok(Some(Some(t))),
        None => Err(bad_reply(
            resource,
            "try the lock",
            format!("fencing token {token:?}"),
        )),
    }
}

/// The fence write after a wait granted the lock.
pub(crate) async fn fence_after_wait(
    client: &PgLocks,
    session: &Session,
    resource: &str,
    key: PgKey,
) -> Result<Option<u64>, LockError> {
    if !client.options().fencing {
        return Ok(None);
    }
    let sql = &client.inner.sql.fence;
    let key_text = key.to_string();
    let name = resource.to_owned();
    let limit = client.options().op_timeout;
    let typed = [
        (
            &key_text as &(dyn tokio_postgres::types::ToSql + Sync),
            Type::TEXT,
        ),
        (&name, Type::TEXT),
    ];
    let write = session.query_one(sql, &typed);
    let row = match tokio::time::timeout(limit, write).await {
        Ok(Ok(row)) => row,
        Ok(Err(e)) => return Err(map_pg(resource, "take a fencing token", e)),
        Err(_) => return Err(timed_out(resource, "take a fencing token", limit)),
    };
    let token: i64 = row
        .try_get(0)
        .map_err(|e| map_pg(resource, "take a fencing token", e))?;
    u64::try_from(token).map(Some).map_err(|_| {
        bad_reply(
            resource,
            "take a fencing token",
            format!("fencing token {token}"),
        )
    })
}

/// Whether a wait that ended with `lock_timeout` was granted after all.
enum Granted {
    Yes,
    No,
}

/// Ends the failed transaction and asks `pg_locks` whether this session
/// holds `key` (invariant 2).
async fn granted_after_timeout(
    session: &Session,
    resource: &str,
    key: PgKey,
    limit: Duration,
) -> Result<Granted, LockError> {
    let (classid, objid, objsubid) = key.pg_locks_ids();
    let look = async {
        session.client.batch_execute("ROLLBACK").await?;
        session
            .client
            .query_typed(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND classid::int8 = $1 AND objid::int8 = $2 AND objsubid = $3",
                &[
                    (&classid, Type::INT8),
                    (&objid, Type::INT8),
                    (&objsubid, Type::INT2),
                ],
            )
            .await
    };
    let rows = match tokio::time::timeout(limit, look).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => return Err(map_pg(resource, "look at pg_locks", e)),
        Err(_) => return Err(timed_out(resource, "look at pg_locks", limit)),
    };
    for row in rows {
        let pid: Option<i32> = row
            .try_get(0)
            .map_err(|e| map_pg(resource, "look at pg_locks", e))?;
        if pid == Some(session.pid) {
            return Ok(Granted::Yes);
        }
    }
    Ok(Granted::No)
}
