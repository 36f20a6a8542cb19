//! tokio-postgres errors as [`LockError`]s: outage ([`LockError::Unavailable`])
//! kept apart from refusal ([`LockError::Backend`]).

use tokio_postgres::error::SqlState;

use crate::error::LockError;

/// `e`, met while doing `op` on `resource`, as a [`LockError`]: no answer,
/// a closed connection, a server shutting down or out of connections
/// (SQLSTATE classes 08, 53, 57P) are [`LockError::Unavailable`]; every
/// other server error (authentication, permissions, a deadlock) is
/// [`LockError::Backend`].
pub(crate) fn map_pg(resource: &str, op: &'static str, e: tokio_postgres::Error) -> LockError {
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
