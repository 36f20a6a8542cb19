//! What [`RedisLocks::list`](crate::redis::RedisLocks::list) reports about each lock and semaphore, and who
//! holds them.

use std::time::Duration;

use redis::Value;

use crate::error::LockError;
use crate::owner::Owner;
use crate::redis::conn::errors::{map_redis, protocol};
use crate::redis::conn::pool::Conn;
use crate::redis::context::Context;
use crate::redis::context::ops::invoke_on;
use crate::redis::protocol::keys::{self, ResourceKeys};
use crate::redis::protocol::scripts::COUNT_LIVE;
use crate::redis::protocol::token::parse_holder;

/// What a [`RedisLocks::list`](crate::redis::RedisLocks::list) entry describes.
///
/// ```
/// # fn show(info: &lockyard::redis::RedisLockInfo) {
/// println!("{} ({}): {} holder(s), expires in {:?}", info.name, info.kind, info.holders, info.ttl);
/// for owner in &info.owners {
///     println!("  held by pid {} on {} since {:?}", owner.pid, owner.host, owner.since);
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RedisLockInfo {
    /// The resource name.
    pub name: String,
    /// `"lock"` (exclusive or shared holders: one name is one lock) or
    /// `"semaphore"`.
    pub kind: &'static str,
    /// Time left on the lease, `None` if the key has no expiry.
    pub ttl: Option<Duration>,
    /// The last fencing token issued for the resource, if any.
    pub fencing_token: Option<u64>,
    /// How many holders it has now.
    pub holders: usize,
    /// Who holds it, longest-held first: the lock's holder, a RW lock's
    /// writer or readers, a semaphore's permit holders (at most 100 of
    /// them). Holders whose value lockyard did not write (another program's
    /// key) are left out, so this may be shorter than
    /// [`holders`](Self::holders).
    pub owners: Vec<Owner>,
}

/// At most this many holders of one semaphore or RW lock are identified (the
/// count is exact whatever it is).
pub(crate) const MAX_OWNERS: usize = 100;

/// The kind of resource a key suffix belongs to, for the keys that mean
/// "held" (`None` for the others, such as the fencing counter).
pub(crate) fn kind_of(suffix: &str) -> Option<&'static str> {
    match suffix {
        keys::SEM => Some("semaphore"),
        // One name is one lock: exclusive and shared holds alike.
        keys::LOCK | keys::READERS => Some("lock"),
        _ => None,
    }
}

/// The entry for the lock (`kind` `"lock"`: exclusive or shared holds) or
/// semaphore `name`, or `None` if nobody holds it any more.
pub(crate) async fn info(
    client: &Context,
    conn: &mut Conn,
    name: &str,
    kind: &'static str,
) -> Result<Option<RedisLockInfo>, LockError> {
    let k = ResourceKeys::new(&client.options().key_prefix, name);
    let (set, writer) = match kind {
        "semaphore" => (k.sem, None),
        _ => (k.readers, Some(k.lock)),
    };
    let live: i64 = invoke_on(conn, name, "list", &COUNT_LIVE, &[&set], &[] as &[&str]).await?;
    let mut pipe = redis::pipe();
    // A key holding another program's data fails only its own command.
    pipe.ignore_errors();
    pipe.cmd("PTTL").arg(&set);
    pipe.cmd("PTTL").arg(writer.as_deref().unwrap_or(&set));
    pipe.cmd("GET").arg(&k.fence);
    pipe.cmd("TIME");
    // Latest expiry first: the live members come before any expired one.
    pipe.cmd("ZREVRANGEBYSCORE")
        .arg(&set)
        .arg("+inf")
        .arg("-inf")
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(MAX_OWNERS);
    // The writer's value (a second fence read for a semaphore keeps the
    // reply's shape).
    pipe.cmd("GET").arg(writer.as_deref().unwrap_or(&k.fence));
    /// PTTL set, PTTL writer, fence, TIME, members with scores, writer.
    type Reply = (
        redis::RedisResult<i64>,
        redis::RedisResult<i64>,
        redis::RedisResult<Option<String>>,
        redis::RedisResult<Vec<String>>,
        redis::RedisResult<Value>,
        redis::RedisResult<Option<Vec<u8>>>,
    );
    let (set_ttl, writer_ttl, fence, time, members, writer_value): Reply = pipe
        .query_async(conn)
        .await
        .map_err(|e| map_redis(e, name, "list"))?;
    let fail = |e| map_redis(e, name, "list");
    let (set_ttl, writer_ttl, time) = (
        set_ttl.map_err(fail)?,
        writer_ttl.map_err(fail)?,
        time.map_err(fail)?,
    );
    let members = members.unwrap_or(Value::Array(Vec::new()));
    let fence = fence.ok().flatten();
    let writer_value = writer_value.ok().flatten();
    // The readers' or a semaphore's mark holds the lock key without being
    // an exclusive hold.
    let writer_held =
        writer.is_some() && writer_ttl != -2 && !writer_value.as_deref().is_some_and(keys::is_mark);
    let holders = usize::try_from(live).unwrap_or(0) + usize::from(writer_held);
    if holders == 0 {
        return Ok(None);
    }
    let now_ms = server_ms(name, &time)?;
    let mut owners = Vec::new();
    if writer_held && let Some(v) = writer_value.as_deref().and_then(parse_holder) {
        owners.push(v);
    }
    owners.extend(live_members(name, &members, now_ms)?.filter_map(parse_holder));
    sort_owners(&mut owners);
    let ttl = if writer_held { writer_ttl } else { set_ttl };
    Ok(Some(RedisLockInfo {
        name: name.to_owned(),
        kind,
        ttl: u64::try_from(ttl).ok().map(Duration::from_millis),
        fencing_token: fence.and_then(|f| f.parse().ok()),
        holders,
        owners,
    }))
}

/// Who holds semaphore or RW lock `name` now (at most [`MAX_OWNERS`], the
/// longest-held first; holders whose value lockyard did not write are left
/// out).
pub(crate) async fn owners(
    client: &Context,
    name: &str,
    kind: &'static str,
) -> Result<Vec<Owner>, LockError> {
    let op_timeout = client.options().request_timeout();
    let look = async {
        let mut conn = client.conn(name, "read owners").await?;
        info(client, &mut conn, name, kind).await
    };
    let info = tokio::time::timeout(op_timeout * 2, look)
        .await
        .unwrap_or_else(|_| Err(crate::redis::conn::errors::timed_out(name, "read owners")))?;
    Ok(info.map(|i| i.owners).unwrap_or_default())
}

/// Longest-held first.
pub(crate) fn sort_owners(owners: &mut [Owner]) {
    owners.sort_by_key(|o| o.since);
}

/// The server's `TIME` reply in milliseconds.
fn server_ms(name: &str, time: &[String]) -> Result<f64, LockError> {
    let bad = || protocol(name, "list", format!("bad TIME reply {time:?}"));
    let [secs, micros] = time else {
        return Err(bad());
    };
    let secs: u64 = secs.parse().map_err(|_| bad())?;
    let micros: u64 = micros.parse().map_err(|_| bad())?;
    Ok(secs as f64 * 1000.0 + (micros / 1000) as f64)
}

/// The members of a `... WITHSCORES` reply (flat RESP2 pairs or RESP3
/// `[member, score]` arrays) whose score (expiry, ms) is after `now_ms`.
fn live_members<'a>(
    name: &str,
    reply: &'a Value,
    now_ms: f64,
) -> Result<impl Iterator<Item = &'a [u8]>, LockError> {
    let bad = || {
        protocol(
            name,
            "list",
            format!("bad ZREVRANGEBYSCORE reply {reply:?}"),
        )
    };
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    let mut pairs: Vec<(&[u8], f64)> = Vec::with_capacity(items.len() / 2);
    let score = |v: &Value| -> Option<f64> {
        match v {
            Value::BulkString(s) => std::str::from_utf8(s).ok()?.parse().ok(),
            Value::Double(d) => Some(*d),
            Value::Int(n) => Some(*n as f64),
            _ => None,
        }
    };
    if items.iter().all(|i| matches!(i, Value::Array(_))) {
        for item in items {
            match item {
                Value::Array(p) => match p.as_slice() {
                    [Value::BulkString(m), s] => pairs.push((m, score(s).ok_or_else(bad)?)),
                    _ => return Err(bad()),
                },
                _ => return Err(bad()),
            }
        }
    } else {
        for chunk in items.chunks(2) {
            match chunk {
                [Value::BulkString(m), s] => pairs.push((m, score(s).ok_or_else(bad)?)),
                _ => return Err(bad()),
            }
        }
    }
    Ok(pairs
        .into_iter()
        .filter(move |(_, expiry)| *expiry > now_ms)
        .map(|(m, _)| m))
}

/// The holder of `name`'s exclusive lock (see
/// [`RedisLocks::owner`](crate::redis::RedisLocks::owner)).
pub(crate) async fn owner(ctx: &Context, name: &str) -> Result<Option<Owner>, LockError> {
    // Validated by the client's name cache.
    let key = ctx.named(name)?.keys.lock.clone();
    let value: Option<Vec<u8>> = ctx
        .retry_once(name, "read owner", |mut conn| {
            let key = &key;
            async move { redis::cmd("GET").arg(key).query_async(&mut conn).await }
        })
        .await?;
    // No exclusive holder: free, or held shared, or a semaphore's.
    let Some(value) = value.filter(|v| !keys::is_mark(v)) else {
        return Ok(None);
    };
    let owner = parse_holder(&value);
    if owner.is_none() {
        tracing::debug!(
            resource = name,
            value = %String::from_utf8_lossy(&value[..value.len().min(64)]),
            "the lock's value was not written by lockyard; owner unknown"
        );
    }
    Ok(owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn live_members_of_both_reply_shapes() {
        let flat = Value::Array(vec![bulk("a"), bulk("200"), bulk("b"), bulk("50")]);
        let live: Vec<&[u8]> = live_members("r", &flat, 100.0).unwrap().collect();
        assert_eq!(live, [b"a".as_slice()]);
        let resp3 = Value::Array(vec![
            Value::Array(vec![bulk("a"), Value::Double(200.0)]),
            Value::Array(vec![bulk("b"), Value::Double(300.0)]),
        ]);
        assert_eq!(live_members("r", &resp3, 100.0).unwrap().count(), 2);
        for bad in [
            Value::Nil,
            Value::Array(vec![bulk("a")]),
            Value::Array(vec![bulk("a"), bulk("x")]),
            Value::Array(vec![Value::Int(1), bulk("1")]),
        ] {
            assert!(matches!(
                live_members("r", &bad, 0.0).map(|i| i.count()),
                Err(LockError::Protocol { .. })
            ));
        }
    }

    #[test]
    fn server_time() {
        let t = ["1700000000".to_owned(), "123456".to_owned()];
        assert_eq!(server_ms("r", &t).unwrap(), 1_700_000_000_123.0);
        assert!(server_ms("r", &["x".to_owned()]).is_err());
        assert!(server_ms("r", &["1".to_owned(), "y".to_owned()]).is_err());
    }
}
