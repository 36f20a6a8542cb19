//! What [`RedisLocks::list`] reports about semaphores and RW locks (the
//! exclusive lock's entries are built in `client.rs`).

use std::time::Duration;

use super::client::{RedisLockInfo, RedisLocks};
use super::errors::map_redis;
use super::ops::invoke_on;
use super::pool::Conn;
use super::semaphore::COUNT_LIVE;
use crate::error::LockError;

/// The kind of resource a key suffix belongs to, for the keys this module
/// knows (`None` for the others, such as the fencing counter).
pub(crate) fn kind_of(suffix: &str) -> Option<&'static str> {
    match suffix {
        "sem" => Some("semaphore"),
        "rw:readers" | "rw:writer" => Some("rwlock"),
        _ => None,
    }
}

/// The entry for semaphore or RW lock `name`, or `None` if nobody holds it
/// any more.
pub(crate) async fn info(
    client: &RedisLocks,
    conn: &mut Conn,
    name: &str,
    kind: &'static str,
) -> Result<Option<RedisLockInfo>, LockError> {
    let (set, writer) = match kind {
        "semaphore" => (client.key(name, "sem"), None),
        _ => (
            client.key(name, "rw:readers"),
            Some(client.key(name, "rw:writer")),
        ),
    };
    let live: i64 = invoke_on(conn, name, "list", &COUNT_LIVE, &[&set], &[]).await?;
    let mut pipe = redis::pipe();
    pipe.cmd("PTTL").arg(&set);
    pipe.cmd("PTTL").arg(writer.as_deref().unwrap_or(&set));
    pipe.cmd("GET").arg(client.key(name, "fence"));
    let (set_ttl, writer_ttl, fence): (i64, i64, Option<String>) = pipe
        .query_async(conn)
        .await
        .map_err(|e| map_redis(e, name, "list"))?;
    let writer_held = writer.is_some() && writer_ttl != -2;
    let holders = usize::try_from(live).unwrap_or(0) + usize::from(writer_held);
    if holders == 0 {
        return Ok(None);
    }
    let ttl = if writer_held { writer_ttl } else { set_ttl };
    Ok(Some(RedisLockInfo {
        name: name.to_owned(),
        kind,
        ttl: u64::try_from(ttl).ok().map(Duration::from_millis),
        fencing_token: fence.and_then(|f| f.parse().ok()),
        holders,
    }))
}
