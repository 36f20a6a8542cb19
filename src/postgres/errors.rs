//! tokio-postgres errors as [`LockError`]s: outage ([`LockError::Unavailable`])
//! kept apart from refusal ([`LockError::Backend`]), and a pooler that
//! cannot hold session locks ([`LockError::Unsupported`], [`pooled`]).

use tokio_postgres::error::SqlState;

use crate::error::LockError;

/// `e`, met while doing `op` on `resource`, as a [`LockError`]: no answer,
/// a closed connection, a server shutting down or out of connections
/// (SQLSTATE classes 08, 53, 57P) are [`LockError::Unavailable`]; every
/// other server error (authentication, permissions, a deadlock) is
/// [`LockError::Backend`].
pub(crate) fn map_pg(resource: &str, op: &'static str, e: tokio_postgres::Error) -> LockError {
    // A prepared statement of this connection missing (26000), or one of
    // another client's already there (42P05): only a pooler handing our
    // statements to other server sessions does that.
    if is_pooler_refusal(&e)
        || e.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME)
        || e.code() == Some(&SqlState::DUPLICATE_PSTATEMENT)
    {
        return pooled(resource);
    }
    let outage = match e.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || c.starts_with("53") || c.starts_with("57P")
        }
    };
    if outage {
        LockError::Unavailable {
            resource: resource.to_owned(),
            op,
            source: Box::new(e),
        }
    } else {
        LockError::Backend {
            resource: resource.to_owned(),
            op,
            source: Box::new(e),
        }
    }
}

/// Whether `e` is PgBouncer itself refusing what its pool mode cannot do
/// ("transaction blocks not allowed in statement pooling mode", 08P01).
pub(crate) fn is_pooler_refusal(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &SqlState::PROTOCOL_VIOLATION && db.message().contains("pooling mode")
    })
}

/// What a session lock cannot be taken through.
pub(crate) const POOLED: &str = "a session advisory lock through a connection pooler in \
     transaction or statement pooling (PgBouncer `pool_mode = transaction` or `statement`: each \
     transaction may run on another server session, which keeps the lock after we move on; \
     connect to Postgres directly, or through session pooling)";

/// A statement of one of our sessions ran on another server backend than
/// the session's own: a pooler in transaction or statement pooling.
pub(crate) fn pooled(resource: &str) -> LockError {
    LockError::Unsupported {
        resource: resource.to_owned(),
        what: POOLED,
    }
}

/// A request that got no answer within `limit`.
pub(crate) fn timed_out(resource: &str, op: &'static str, limit: std::time::Duration) -> LockError {
    LockError::Unavailable {
        resource: resource.to_owned(),
        op,
        source: format!("no answer from Postgres within {limit:?}").into(),
    }
}

/// A reply we did not expect.
pub(crate) fn bad_reply(resource: &str, op: &'static str, detail: impl Into<String>) -> LockError {
    LockError::Protocol {
        resource: resource.to_owned(),
        op,
        detail: detail.into(),
    }
}

/// Whether `e` is the server's `lock_timeout` firing (55P03).
pub(crate) fn is_lock_timeout(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
}

/// Whether `e` is the server's deadlock detector choosing us (40P01).
pub(crate) fn is_deadlock(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
}

/// Whether `e` is the server saying a table does not exist (42P01): the
/// fence table was dropped under a running client.
pub(crate) fn is_missing_table(e: &LockError) -> bool {
    let source = match e {
        LockError::Backend { source, .. } => source,
        _ => return false,
    };
    source
        .downcast_ref::<tokio_postgres::Error>()
        .is_some_and(|e| e.code() == Some(&SqlState::UNDEFINED_TABLE))
}
