//! The ACL check at connect: a Redis user (`redis://user:pass@host/`) whose
//! role lacks a command lockyard needs is told so at connect, with
//! [`LockError::NotPermitted`] naming the command, rather than by a failure
//! at its first release.
//!
//! The list is derived, not written down: every command the scripts run
//! (read from their sources, with the keys and channels of this client's
//! key prefix, so key and channel patterns are checked too), the commands
//! the client sends itself (`EVALSHA`, `SCRIPT LOAD`, `SUBSCRIBE` or
//! `SSUBSCRIBE`, `PING`, `INFO`, the listing's reads, `WAIT` when replicas
//! are awaited, `CLUSTER SLOTS` and `ASKING` on a Cluster). Each is asked
//! with `ACL DRYRUN` (Redis 7). A user that may not run `ACL DRYRUN`
//! itself, or a server older than 7, cannot be checked this way: the check
//! is skipped (logged at `debug`); the commands sent at connect anyway
//! (`INFO`, `SCRIPT LOAD`) still name themselves when refused, and any
//! other missing permission shows at first use as a [`LockError::Backend`]
//! `NOPERM`.
//!
//! # Layering
//!
//! Uses `conn`, `keys`, `scripts`; used by `client` only.

use redis::Value;

use super::conn::link::Conn;
use super::protocol::keys::key;
use super::protocol::scripts;
use crate::error::LockError;

/// What the check needs to know about the client.
pub(crate) struct Needs<'a> {
    /// The key prefix.
    pub(crate) prefix: &'a str,
    /// A Cluster client (sharded pub/sub, `CLUSTER SLOTS`, `ASKING`).
    pub(crate) cluster: bool,
    /// Whether grants and renewals are followed by `WAIT`.
    pub(crate) wait: bool,
}

/// The name the check's keys and channel carry (never locked: the check
/// only simulates).
const PROBE_NAME: &str = "lockyard-acl-check";

/// Every command lockyard may send, each with arguments of the shape it is
/// sent with: `(name shown in an error, full command)`.
pub(crate) fn needed(needs: &Needs<'_>) -> Vec<(String, Vec<String>)> {
    let k = |suffix: &str| key(needs.prefix, PROBE_NAME, suffix);
    let lock = k("lock");
    let zset = k("sem");
    let channel = k("released");
    let mut all: Vec<(String, Vec<String>)> = Vec::new();
    let mut add = |name: &str, args: Vec<String>| {
        let mut cmd: Vec<String> = name.split(' ').map(str::to_owned).collect();
        cmd.extend(args);
        all.push((name.to_owned(), cmd));
    };
    // The commands inside the scripts: Redis checks each `redis.call`.
    for called in scripts::called_commands() {
        let (name, args) = match called.as_str() {
            "SET" => (
                "SET",
                vec![
                    lock.clone(),
                    "v".into(),
                    "NX".into(),
                    "PX".into(),
                    "1000".into(),
                ],
            ),
            "PEXPIRE" => ("PEXPIRE", vec![lock.clone(), "1000".into()]),
            "PUBLISH" | "SPUBLISH" => {
                // One form runs on a client: PUBLISH on one server,
                // SPUBLISH on a Cluster.
                if (called == "SPUBLISH") != needs.cluster {
                    continue;
                }
                (called.as_str(), vec![channel.clone(), "released".into()])
            }
            "TIME" => ("TIME", vec![]),
            "ZADD" => ("ZADD", vec![zset.clone(), "1".into(), "m".into()]),
            "ZCOUNT" | "ZRANGE" | "ZREMRANGEBYSCORE" => {
                (called.as_str(), vec![zset.clone(), "0".into(), "1".into()])
            }
            "ZREM" | "ZSCORE" => (called.as_str(), vec![zset.clone(), "m".into()]),
            "ZCARD" => ("ZCARD", vec![zset.clone()]),
            // DEL, EXISTS, GET, INCR, PTTL, TYPE, and any single-key
            // command a script starts to use.
            _ => (called.as_str(), vec![lock.clone()]),
        };
        add(name, args);
    }
    let sha = scripts::RELEASE.get(needs.cluster).get_hash().to_owned();
    add(
        "EVALSHA",
        vec![sha, "1".into(), lock.clone(), "token".into()],
    );
    add("SCRIPT LOAD", vec!["return 1".into()]);
    if needs.cluster {
        add("SSUBSCRIBE", vec![channel.clone()]);
        add("SUNSUBSCRIBE", vec![channel.clone()]);
        add("CLUSTER SLOTS", vec![]);
        add("ASKING", vec![]);
    } else {
        add("SUBSCRIBE", vec![channel.clone()]);
        add("UNSUBSCRIBE", vec![channel.clone()]);
    }
    add("PING", vec![]);
    add("INFO", vec!["cluster".into()]);
    // The listing (`list`, `owner`, `is_locked`, `lockyard status`).
    add(
        "SCAN",
        vec![
            "0".into(),
            "MATCH".into(),
            "x".into(),
            "COUNT".into(),
            "10".into(),
        ],
    );
    add("ZREVRANGEBYSCORE", vec![zset, "+inf".into(), "0".into()]);
    if needs.wait {
        add("WAIT", vec!["1".into(), "1".into()]);
    }
    all
}

/// Asks the server, with `ACL DRYRUN`, whether `user` may run every
/// command in [`needed`].
///
/// # Errors
///
/// [`LockError::NotPermitted`] naming the first command refused;
/// [`LockError::Unavailable`] if the server did not answer.
pub(crate) async fn check(
    conn: &mut Conn,
    user: &str,
    needs: &Needs<'_>,
    what: &str,
) -> Result<(), LockError> {
    let commands = needed(needs);
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (_, cmd) in &commands {
        pipe.cmd("ACL").arg("DRYRUN").arg(user).arg(cmd);
    }
    let replies: Vec<Value> = pipe
        .query_async(conn)
        .await
        .map_err(|e| super::conn::errors::map_redis(e, what, "check ACL permissions"))?;
    if let Some(Value::ServerError(e)) = replies.first()
        && refused_dryrun(e.code(), e.details().unwrap_or(""))
    {
        tracing::debug!(
            user,
            error = ?e,
            "cannot check the user's permissions with ACL DRYRUN (Redis < 7, or the user \
             may not run it); a command the user lacks fails at first use"
        );
        return Ok(());
    }
    for ((name, _), reply) in commands.into_iter().zip(replies) {
        let reason = match reply {
            Value::Okay => continue,
            Value::SimpleString(s) if s == "OK" => continue,
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            Value::VerbatimString { text, .. } => text,
            Value::SimpleString(s) => s,
            Value::ServerError(e) => {
                // A command this server does not know (SSUBSCRIBE before
                // Redis 7): not a permission lockyard can ask for.
                tracing::debug!(command = %name, error = ?e, "ACL DRYRUN refused the command");
                continue;
            }
            other => format!("{other:?}"),
        };
        return Err(LockError::NotPermitted {
            user: user.to_owned(),
            command: name,
            reason,
        });
    }
    Ok(())
}

/// `err`, a refusal of `command` met at connect, as
/// [`LockError::NotPermitted`] when the server said `NOPERM` (so that a
/// user the `ACL DRYRUN` check could not cover still learns at connect
/// which command it lacks); any other error as it is.
pub(crate) fn refused_at_connect(err: LockError, user: &str, command: &str) -> LockError {
    let reason = match &err {
        LockError::Backend { source, .. } => source
            .downcast_ref::<redis::RedisError>()
            .filter(|e| e.code() == Some("NOPERM"))
            .map(|e| e.detail().unwrap_or("NOPERM").trim().to_owned()),
        _ => None,
    };
    match reason {
        Some(reason) => LockError::NotPermitted {
            user: user.to_owned(),
            command: command.to_owned(),
            reason,
        },
        None => err,
    }
}

/// The user a connection authenticates as: the URL's, or `default`.
pub(crate) fn user_of(info: &redis::ConnectionInfo) -> &str {
    info.redis_settings().username().unwrap_or("default")
}

/// Whether `ACL DRYRUN` itself was refused: the user may not run it
/// (`NOPERM`), or the server does not know it (before Redis 7).
fn refused_dryrun(code: &str, details: &str) -> bool {
    code == "NOPERM" || details.contains("unknown subcommand")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_command_and_the_connection_commands_are_checked() {
        let one = needed(&Needs {
            prefix: "app:",
            cluster: false,
            wait: false,
        });
        let names: Vec<&str> = one.iter().map(|(n, _)| n.as_str()).collect();
        for cmd in scripts::called_commands() {
            if cmd != "SPUBLISH" {
                assert!(
                    names.contains(&cmd.as_str()),
                    "{cmd} missing from {names:?}"
                );
            }
        }
        for cmd in ["EVALSHA", "SCRIPT LOAD", "PUBLISH", "SUBSCRIBE"] {
            assert!(names.contains(&cmd), "{cmd} missing");
        }
        assert!(!names.contains(&"WAIT") && !names.contains(&"SPUBLISH"));
        let cluster = needed(&Needs {
            prefix: "app:",
            cluster: true,
            wait: true,
        });
        let names: Vec<&str> = cluster.iter().map(|(n, _)| n.as_str()).collect();
        for cmd in ["SPUBLISH", "SSUBSCRIBE", "WAIT", "CLUSTER SLOTS"] {
            assert!(names.contains(&cmd), "{cmd} missing");
        }
        // Keys carry the prefix, so key patterns are checked too.
        let set = cluster.iter().find(|(n, _)| n == "SET").unwrap();
        assert!(set.1[1].starts_with("app:{"));
    }
}
