//! One Postgres connection ([`Session`]): the client, the task driving
//! it, its keepalive probe, its cancel token and its backend's pid.
//!
//! The probe runs for the session's life but only sends while the session
//! holds a lock (`holding`): a session waiting for a lock must send nothing,
//! since a probe would queue behind the wait. A probe that fails or goes
//! unanswered for one interval marks the session closed (so it is never
//! reused), which fires the lost signal of the lock it holds. So does a
//! probe answered by another backend than the session's: a pooler in
//! transaction pooling moved the connection, and the backend holding the
//! lock now serves someone else.
//!
//! A session holds at most one advisory lock at a time (see the connection
//! model in the [module docs](super)); [`Session::scrub`] makes a session
//! whose last request's outcome is unknown fit for reuse, or says it is not.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{CancelToken, Client, Config, Row, SimpleQueryMessage, Statement};
use tokio_util::sync::CancellationToken;

use super::errors::{is_pooler_refusal, map_pg, timed_out};
use super::tls::{PgConnector, problem_of};
use crate::error::LockError;

/// One connection to the server.
pub(crate) struct Session {
    pub(crate) client: Arc<Client>,
    cancel: CancelToken,
    /// What the cancel request connects through (TLS as the session).
    tls: PgConnector,
    /// Fired when the connection's task ends (closed by either side) or a
    /// keepalive probe fails.
    pub(crate) closed: CancellationToken,
    /// Whether the session holds a lock: the keepalive probe sends only
    /// then.
    holding: Arc<AtomicBool>,
    /// The backend process serving this connection.
    pub(crate) pid: i32,
    /// Statements prepared on this connection, by their text: a request
    /// sent again is one round trip with no parsing on the server.
    statements: Mutex<HashMap<String, Statement>>,
}

/// How many prepared statements a session keeps (a lock, a shared lock,
/// their unlocks, the fence write and the semaphore's try: a handful).
const STATEMENTS: usize = 32;

// Without the feature `tls` the connector is `NoTls`, which is `Copy`.
#[cfg_attr(not(feature = "tls"), allow(clippy::clone_on_copy))]
impl Session {
    /// Opens a connection through `tls`, bounded by `limit`, and asks its
    /// backend's pid. A failure that TLS explains is [`LockError::Tls`]
    /// naming `server`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the half-open connection.
    pub(crate) async fn open(
        config: &Config,
        tls: &PgConnector,
        server: &str,
        limit: Duration,
        keepalive: Duration,
    ) -> Result<Self, LockError> {
        const OP: &str = "connect to";
        let connect = async {
            let (client, conn) = config.connect(tls.clone()).await?;
            let closed = CancellationToken::new();
            let fired = closed.clone();
            tokio::spawn(async move {
                let _ = conn.await;
                fired.cancel();
            });
            let pid: i32 = client
                .query_typed_one("SELECT pg_backend_pid()", &[])
                .await?
                .try_get(0)?;
            let client = Arc::new(client);
            let holding = Arc::new(AtomicBool::new(false));
            tokio::spawn(probe(
                Arc::downgrade(&client),
                pid,
                keepalive,
                holding.clone(),
                closed.clone(),
            ));
            Ok::<_, tokio_postgres::Error>(Session {
                cancel: client.cancel_token(),
                tls: tls.clone(),
                client,
                closed,
                holding,
                pid,
                statements: Mutex::new(HashMap::new()),
            })
        };
        match tokio::time::timeout(limit, connect).await {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(e)) => match problem_of(&e) {
                Some(problem) => Err(LockError::Tls {
                    server: server.to_owned(),
                    problem,
                    source: Some(Box::new(e)),
                }),
                None => Err(map_pg("", OP, e)),
            },
            Err(_) => Err(timed_out("", OP, limit)),
        }
    }

    /// Runs `sql` with `params` (each with its type), expecting one row,
    /// as a statement prepared on this connection once and reused.
    ///
    /// # Cancel safety
    ///
    /// As tokio-postgres's: a dropped request may still run on the server.
    pub(crate) async fn query_one(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Row, tokio_postgres::Error> {
        let cached = self.cache().get(sql).cloned();
        let statement = match cached {
            Some(s) => s,
            None => {
                let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
                let s = self.client.prepare_typed(sql, &types).await?;
                let mut cache = self.cache();
                if cache.len() >= STATEMENTS {
                    cache.clear();
                }
                cache.insert(sql.to_owned(), s.clone());
                s
            }
        };
        let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(p, _)| *p).collect();
        self.client.query_one(&statement, &values).await
    }

    /// Runs `sql` (statements separated by semicolons) with the simple
    /// query protocol and returns its messages, as
    /// [`Client::simple_query`], except that when it fails it reads on to
    /// the end of the reply, for at most `drain`: a pooler's refusal that
    /// follows the server's own error in the same reply is the error
    /// returned. A reply whose rest does not come within `drain` (a stalled
    /// network) ends with the server's error: the read after it never
    /// makes a request wait longer than `drain` beyond its answer.
    ///
    /// PgBouncer in statement pooling lets a wait's transaction run, then
    /// closes the connection it left open: the client gets the server's
    /// `lock_timeout` error, then, when PgBouncer forwarded that one, its
    /// FATAL "transaction blocks not allowed" (08P01). Stopping at the
    /// first would take the refusal for a timeout and the closed
    /// connection after it for an outage.
    ///
    /// # Cancel safety
    ///
    /// As tokio-postgres's: a dropped request may still run on the server.
    pub(crate) async fn simple_query(
        &self,
        sql: &str,
        drain: Duration,
    ) -> Result<Vec<SimpleQueryMessage>, tokio_postgres::Error> {
        let mut stream = std::pin::pin!(self.client.simple_query_raw(sql).await?);
        let mut messages = Vec::new();
        let first = loop {
            match stream.next().await {
                Some(Ok(m)) => messages.push(m),
                Some(Err(e)) => break e,
                None => return Ok(messages),
            }
        };
        // The reply goes on to the server's ReadyForQuery (the end), or
        // to what the pooler sent after it; each message is read once.
        let rest = async {
            loop {
                match stream.next().await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) if is_pooler_refusal(&e) => return Some(e),
                    Some(Err(_)) | None => return None,
                }
            }
        };
        match tokio::time::timeout(drain, rest).await {
            Ok(Some(refusal)) => Err(refusal),
            Ok(None) | Err(_) => Err(first),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Statement>> {
        // Insert and clear only: a panic cannot leave the map inconsistent.
        self.statements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Says whether the session holds a lock (the keepalive probe sends
    /// only while it does).
    pub(crate) fn set_holding(&self, holding: bool) {
        self.holding.store(holding, Ordering::Release);
    }

    /// Whether the connection is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled() || self.client.is_closed()
    }

    /// Asks the server to cancel what this session's backend runs now (a
    /// blocked `pg_advisory_lock`), over a connection of its own, bounded
    /// by `limit`. When it returns, the backend has been signalled.
    pub(crate) async fn cancel_running(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.cancel.cancel_query(self.tls.clone())).await;
    }

    /// After a request whose outcome is unknown (a dropped acquisition, a
    /// timed-out one): ends any transaction, releases every advisory lock
    /// of the session, and checks that it holds none. `Some(self)` only if
    /// all of that was confirmed within `limit`.
    ///
    /// A cancel sent before this may still be delivered while it runs; it
    /// then fails one of these requests, and the session is not reused.
    pub(crate) async fn scrub(self, limit: Duration) -> Option<Self> {
        let check = async {
            self.client
                .batch_execute("ROLLBACK; SELECT pg_advisory_unlock_all()")
                .await?;
            let held: i64 = self
                .client
                .query_typed_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                     AND pid = pg_backend_pid()",
                    &[],
                )
                .await?
                .try_get(0)?;
            Ok::<_, tokio_postgres::Error>(held == 0)
        };
        match tokio::time::timeout(limit, check).await {
            Ok(Ok(true)) => Some(self),
            _ => None,
        }
    }
}

/// The keepalive probe of one session: every `every`, while the session
/// holds a lock, `SELECT pg_backend_pid()` bounded by `every`; a failure,
/// or an answer from another backend than `pid`, marks the session closed.
/// Ends with the session (its client dropped) or the connection.
async fn probe(
    client: Weak<Client>,
    pid: i32,
    every: Duration,
    holding: Arc<AtomicBool>,
    closed: CancellationToken,
) {
    loop {
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if !holding.load(Ordering::Acquire) {
            if client.strong_count() == 0 {
                return;
            }
            continue;
        }
        let Some(client) = client.upgrade() else {
            return;
        };
        let answer = tokio::time::timeout(every, client.simple_query("SELECT pg_backend_pid()"));
        let ran_on = match answer.await {
            Ok(Ok(replies)) => replies.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).and_then(|p| p.parse::<i32>().ok()),
                _ => None,
            }),
            _ => None,
        };
        if ran_on != Some(pid) && holding.load(Ordering::Acquire) {
            match ran_on {
                Some(other) => tracing::warn!(
                    "postgres connection holding a lock (backend {pid}) had its keepalive probe \
                     answered by backend {other}: a pooler in transaction pooling; lost"
                ),
                None => tracing::warn!(
                    "postgres connection holding a lock failed its keepalive probe: lost"
                ),
            }
            closed.cancel();
            return;
        }
    }
}
