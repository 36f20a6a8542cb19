//! Mapping `redis` and `bb8` errors to [`LockError`], so that callers can
//! tell contention from outage from misconfiguration.
//!
//! | what happened                                            | `LockError`     |
//! |----------------------------------------------------------|-----------------|
//! | connection refused / reset / dropped, I/O timeout,       | `Unavailable`   |
//! | pool timeout, `LOADING`, `TRYAGAIN`, `CLUSTERDOWN`,      |                 |
//! | `MASTERDOWN`, `READONLY` (a fail-over in progress),      |                 |
//! | `MOVED`/`ASK` the Cluster client could not follow        |                 |
//! | authentication failure, `NOPERM`, script errors, other   | `Backend`       |
//! | server errors retrying will not fix                      |                 |
//! | a reply of the wrong type, `WRONGTYPE` (a key holding    | `Protocol`      |
//! | something lockyard did not write), parse errors          |                 |
//! | `WRONGKIND` (a lock's name used as a semaphore, or the   | `WrongKind`     |
//! | reverse)                                                 |                 |
//! | `PERMITS` (a semaphore in use with another count)        | `PermitsMismatch`|
//! | a TLS handshake that failed (untrusted or expired         | `Tls`           |
//! | certificate, client certificate refused, …)               |                 |

use std::io;

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::error::LockError;

/// Maps a redis error met while doing `op` on `resource`.
pub(crate) fn map_redis(err: RedisError, resource: &str, op: &'static str) -> LockError {
    // At connect time the "resource" is the server (its URL without a
    // password).
    if op == "connect"
        && let Some(e) = tls_error(&err, resource)
    {
        return e;
    }
    let resource = resource.to_owned();
    if let Some(e) = kind_refusal(&err, &resource) {
        return e;
    }
    if err.code() == Some("WRONGTYPE") {
        return LockError::Protocol {
            resource,
            op,
            detail: err.to_string(),
        };
    }
    match err.kind() {
        ErrorKind::Io
        | ErrorKind::ClusterConnectionNotFound
        | ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        ) => LockError::Unavailable {
            resource,
            op,
            source: Box::new(err),
        },
        ErrorKind::UnexpectedReturnType | ErrorKind::Parse => LockError::Protocol {
            resource,
            op,
            detail: err.to_string(),
        },
        _ if err.is_timeout() || err.is_connection_dropped() || err.is_connection_refusal() => {
            LockError::Unavailable {
                resource,
                op,
                source: Box::new(err),
            }
        }
        _ => LockError::Backend {
            resource,
            op,
            source: Box::new(err),
        },
    }
}

/// Whether `e` is a Cluster refusal that says the resource's slot is
/// changing hands (`TRYAGAIN` while its keys migrate, `CLUSTERDOWN` or
/// `MASTERDOWN` during a failover, a redirection the client gave up
/// following): nothing was applied, and the same request will succeed once
/// the slot has its new owner.
pub(crate) fn is_slot_moving(e: &LockError) -> bool {
    let LockError::Unavailable { source, .. } = e else {
        return false;
    };
    // Named by `name_slot` already.
    if source.is::<SlotChanging>() {
        return true;
    }
    source.downcast_ref::<RedisError>().is_some_and(|r| {
        matches!(
            r.kind(),
            ErrorKind::Server(
                ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            )
        )
    })
}

/// Names the hash slot in an error for which [`is_slot_moving`] holds (an
/// acquisition gave up on it): the slot is migrating, or has no master.
/// Other errors are returned as they are.
pub(crate) fn name_slot(e: LockError, slot: u16) -> LockError {
    if !is_slot_moving(&e) {
        return e;
    }
    if let LockError::Unavailable { source, .. } = &e
        && source.is::<SlotChanging>()
    {
        return e;
    }
    let LockError::Unavailable {
        resource,
        op,
        source,
    } = e
    else {
        return e;
    };
    let failover = source.downcast_ref::<RedisError>().is_some_and(|r| {
        matches!(
            r.kind(),
            ErrorKind::Server(ServerErrorKind::ClusterDown | ServerErrorKind::MasterDown)
        )
    });
    let what = if failover {
        "without a master (a failover in progress?)"
    } else {
        "migrating between Cluster masters: no lock on it is granted until its keys have moved"
    };
    LockError::Unavailable {
        resource,
        op,
        source: Box::new(SlotChanging { slot, what, source }),
    }
}

/// A Cluster hash slot changing hands, named.
#[derive(Debug, thiserror::Error)]
#[error("hash slot {slot} is {what}")]
struct SlotChanging {
    slot: u16,
    what: &'static str,
    #[source]
    source: crate::error::BoxError,
}

/// The scripts' one-name-one-lock refusals: `WRONGKIND <kind in use>` and
/// `PERMITS <stored> <asked>`.
fn kind_refusal(err: &RedisError, resource: &str) -> Option<LockError> {
    let detail = err.detail().unwrap_or("");
    match err.code()? {
        "WRONGKIND" => {
            let (in_use_as, requested) = match detail.trim() {
                "semaphore" => ("semaphore", "lock"),
                _ => ("lock", "semaphore"),
            };
            Some(LockError::WrongKind {
                resource: resource.to_owned(),
                in_use_as,
                requested,
            })
        }
        "PERMITS" => {
            let mut it = detail.split_whitespace().map(str::parse::<u32>);
            match (it.next(), it.next()) {
                (Some(Ok(stored)), Some(Ok(requested))) => Some(LockError::PermitsMismatch {
                    resource: resource.to_owned(),
                    stored,
                    requested,
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A TLS failure in `err`, as [`LockError::Tls`] naming `server`.
pub(crate) fn tls_error(err: &RedisError, server: &str) -> Option<LockError> {
    let problem = crate::redis::conn::tls::problem_of(err)?;
    Some(LockError::Tls {
        server: server.to_owned(),
        problem,
        source: Some(Box::new(err.clone())),
    })
}

/// Maps a pool error (`bb8` timed out, or the connect to `server` itself
/// failed).
pub(crate) fn map_pool(
    err: bb8::RunError<RedisError>,
    resource: &str,
    op: &'static str,
    server: &str,
) -> LockError {
    match err {
        bb8::RunError::User(e) => match tls_error(&e, server) {
            Some(tls) => tls,
            None => map_redis(e, resource, op),
        },
        bb8::RunError::TimedOut => LockError::Unavailable {
            resource: resource.to_owned(),
            op,
            source: Box::new(io::Error::new(
                io::ErrorKind::TimedOut,
                "timed out waiting for a Redis connection from the pool",
            )),
        },
    }
}

/// A reply that does not have the shape a script promises.
pub(crate) fn protocol(resource: &str, op: &'static str, detail: impl Into<String>) -> LockError {
    LockError::Protocol {
        resource: resource.to_owned(),
        op,
        detail: detail.into(),
    }
}

/// An operation that did not answer within the client's `op_timeout`.
pub(crate) fn timed_out(resource: &str, op: &'static str) -> LockError {
    LockError::Unavailable {
        resource: resource.to_owned(),
        op,
        source: Box::new(io::Error::new(
            io::ErrorKind::TimedOut,
            "Redis did not answer in time",
        )),
    }
}

/// Whether an error means the connection it came from is unusable and must
/// be replaced (as opposed to a server error on a healthy connection).
pub(crate) fn breaks_connection(err: &RedisError) -> bool {
    err.is_connection_dropped()
        || err.is_unrecoverable_error()
        || (err.kind() == ErrorKind::Io && !err.is_timeout())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let refused = RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(map_redis(refused, "r", "acquire").is_unavailable());
        let reset = RedisError::from(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(breaks_connection(&reset));
        assert!(map_redis(reset, "r", "acquire").is_unavailable());
        let auth = RedisError::from((ErrorKind::AuthenticationFailed, "bad password"));
        assert!(matches!(
            map_redis(auth, "r", "acquire"),
            LockError::Backend { .. }
        ));
        let ty = RedisError::from((ErrorKind::UnexpectedReturnType, "not an int"));
        assert!(matches!(
            map_redis(ty, "r", "acquire"),
            LockError::Protocol { .. }
        ));
        assert!(map_pool(bb8::RunError::TimedOut, "r", "acquire", "redis://h:1/").is_unavailable());
    }

    /// A slot error named once (a first attempt's, say) is still one the
    /// wait rides out, and naming it again changes nothing. (The first
    /// attempt of an uncontended acquire names it; the wait that follows
    /// decided from the named error, and gave up at once on a migrating
    /// slot: `tests/redis_cluster.rs`'s first-use-while-migrating test.)
    #[test]
    fn a_named_slot_error_is_still_a_moving_slot() {
        let tryagain = RedisError::from((
            ErrorKind::Server(ServerErrorKind::TryAgain),
            "multiple keys request during rehashing of slot",
        ));
        let e = map_redis(tryagain, "r", "acquire");
        assert!(is_slot_moving(&e));
        let named = name_slot(e, 7);
        assert!(is_slot_moving(&named), "{named}");
        let text = |e: &LockError| {
            let mut out = e.to_string();
            let mut cur = std::error::Error::source(e);
            while let Some(s) = cur {
                out.push_str(": ");
                out.push_str(&s.to_string());
                cur = s.source();
            }
            out
        };
        let once = text(&named);
        assert!(once.contains("hash slot 7 is migrating"), "{once}");
        let twice = text(&name_slot(named, 7));
        assert_eq!(once, twice);
    }
}
