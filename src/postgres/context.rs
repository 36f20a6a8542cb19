//! [`PgLocks`]'s state and what every part of the backend shares: the
//! parsed configuration, the idle connections, the fence table, the
//! background clean-ups. The public methods are in `client.rs`.
//!
//! # Invariants
//!
//! 1. A session in the idle list holds no advisory lock: it goes back only
//!    after an unlock that returned `true` (its one lock released) or a
//!    [`Session::scrub`] that confirmed none is held.
//! 2. A session that holds a lock, or may (an acquisition whose outcome is
//!    unknown), is owned by exactly one hold or one clean-up task.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Config;
use tokio_postgres::error::SqlState;
use tokio_util::task::TaskTracker;

use super::errors::{map_pg, timed_out};
use super::options::PgOptions;
use super::session::Session;
use super::sql::Statements;
use super::tls::PgConnector;
use crate::error::LockError;

/// A client of one Postgres database for advisory locks. Cheap to clone
/// (clones share the idle connections).
///
/// See the [module docs](super) for what it guarantees.
#[derive(Clone)]
pub struct PgLocks {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    /// What connections (and cancel requests) go through.
    pub(crate) tls: PgConnector,
    pub(crate) options: PgOptions,
    /// The server, for messages (host and port, no password).
    pub(crate) server: String,
    idle: Mutex<Vec<Session>>,
    /// The fence table was seen or made (and not since found missing).
    fence_ready: AtomicBool,
    /// Releases and clean-ups running in the background.
    pub(crate) tasks: TaskTracker,
    /// The acquisition statements.
    pub(crate) sql: Statements,
}

impl PgLocks {
    pub(crate) fn from_parts(
        config: Config,
        tls: PgConnector,
        options: PgOptions,
        server: String,
    ) -> Self {
        let table = options.fencing.then(|| options.fence_table());
        Self {
            inner: Arc::new(Inner {
                sql: Statements::new(table.as_deref()),
                config,
                tls,
                options,
                server,
                idle: Mutex::new(Vec::new()),
                fence_ready: AtomicBool::new(false),
                tasks: TaskTracker::new(),
            }),
        }
    }

    pub(crate) fn options(&self) -> &PgOptions {
        &self.inner.options
    }

    /// An idle session, or a new one.
    pub(crate) async fn session(&self, resource: &str) -> Result<Session, LockError> {
        loop {
            let idle = self.idle().pop();
            match idle {
                Some(s) if s.is_closed() => continue,
                Some(s) => return Ok(s),
                None => break,
            }
        }
        let opts = &self.inner.options;
        let inner = &self.inner;
        Session::open(
            &inner.config,
            &inner.tls,
            &inner.server,
            opts.connect_timeout,
            opts.keepalive,
        )
        .await
        .map_err(|e| with_resource(e, resource))
    }

    /// Takes back a session that holds no lock (invariant 1).
    pub(crate) fn put_back(&self, session: Session) {
        if session.is_closed() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < self.inner.options.max_idle {
            idle.push(session);
        }
    }

    /// Runs `task` in the background (tracked for `shutdown`); without a
    /// runtime it is dropped, and with it whatever session it owned, which
    /// closes the connection and so frees its locks.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.inner.tasks.spawn_on(task, &rt);
        }
    }

    /// After a request whose outcome is unknown: cancels a wait still
    /// running (when `waiting`), then scrubs the session and keeps it if
    /// that is confirmed (invariant 1), in the background.
    pub(crate) fn clean_up(&self, session: Session, waiting: bool) {
        let client = self.clone();
        let limit = self.inner.options.op_timeout;
        self.spawn(async move {
            if waiting {
                session.cancel_running(limit).await;
            }
            if let Some(session) = session.scrub(limit).await {
                client.put_back(session);
            }
        });
    }

    /// Makes sure the fence table exists: looks first (a role that may
    /// use the table need not be allowed to create it), creates it if not.
    pub(crate) async fn ensure_fence_table(
        &self,
        session: &Session,
        resource: &str,
    ) -> Result<(), LockError> {
        // Racing clients may both look and create: the duplicate arm of
        // `make_fence_table` makes that harmless.
        if self.inner.fence_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        self.make_fence_table(session, resource).await?;
        self.inner.fence_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// The fence table was found missing (dropped, or a database restored
    /// without it): the next acquisition looks again and makes it.
    pub(crate) fn forget_fence_table(&self) {
        self.inner.fence_ready.store(false, Ordering::Release);
    }

    async fn make_fence_table(&self, session: &Session, resource: &str) -> Result<(), LockError> {
        let table = self.inner.options.fence_table();
        let limit = self.inner.options.op_timeout;
        if fence_table_exists(session, &table, resource, limit).await? {
            return Ok(());
        }
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} (key text PRIMARY KEY, name text NOT NULL, \
                     token bigint NOT NULL)"
        );
        match tokio::time::timeout(limit, session.client.batch_execute(&create)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e))
                if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
                    || e.code() == Some(&SqlState::INVALID_SCHEMA_NAME) =>
            {
                Err(LockError::Backend {
                    resource: resource.to_owned(),
                    op: "create the fence table (the role may not: create it as the \
                                 postgres module docs show, or turn fencing off)",
                    source: Box::new(e),
                })
            }
            // Racing creators: `IF NOT EXISTS` does not make two at once
            // safe. The loser fails on whichever catalog entry it meets
            // made first: the table or its key's index (42P07), its row
            // type (42710), a catalog row (23505). The table is then there
            // (made by the other client): looked up again to be sure.
            // (tests/postgres_faults.rs, clients_racing_to_make_the_fence_table_all_get_their_lock.)
            Ok(Err(e))
                if [
                    SqlState::DUPLICATE_TABLE,
                    SqlState::DUPLICATE_OBJECT,
                    SqlState::UNIQUE_VIOLATION,
                ]
                .iter()
                .any(|c| e.code() == Some(c)) =>
            {
                if fence_table_exists(session, &table, resource, limit).await? {
                    Ok(())
                } else {
                    Err(map_pg(resource, "create the fence table", e))
                }
            }
            Ok(Err(e)) => Err(map_pg(resource, "create the fence table", e)),
            Err(_) => Err(timed_out(resource, "create the fence table", limit)),
        }
    }

    /// Closes every idle connection.
    pub(crate) fn close_idle(&self) {
        let idle = std::mem::take(&mut *self.idle());
        drop(idle);
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Session>> {
        // A panic while the list was locked cannot leave it inconsistent
        // (push and pop only).
        self.inner
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `e` (from opening a connection) with the resource it was for.
pub(crate) fn with_resource(e: LockError, resource: &str) -> LockError {
    match e {
        LockError::Unavailable { op, source, .. } => LockError::Unavailable {
            resource: resource.to_owned(),
            op,
            source,
        },
        LockError::Backend { op, source, .. } => LockError::Backend {
            resource: resource.to_owned(),
            op,
            source,
        },
        other => other,
    }
}

impl fmt::Debug for PgLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLocks")
            .field("server", &self.inner.server)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// Whether `table` (quoted) exists, as `session` sees it.
async fn fence_table_exists(
    session: &Session,
    table: &str,
    resource: &str,
    limit: Duration,
) -> Result<bool, LockError> {
    let typed = [(
        &table as &(dyn tokio_postgres::types::ToSql + Sync),
        tokio_postgres::types::Type::TEXT,
    )];
    let look = session
        .client
        .query_typed_one("SELECT to_regclass($1) IS NOT NULL", &typed);
    match tokio::time::timeout(limit, look).await {
        Ok(Ok(row)) => row
            .try_get(0)
            .map_err(|e| map_pg(resource, "look for the fence table", e)),
        Ok(Err(e)) => Err(map_pg(resource, "look for the fence table", e)),
        Err(_) => Err(timed_out(resource, "look for the fence table", limit)),
    }
}
