//! Small crate-private helpers the semaphore, RW lock and Redlock use on top
//! of the client's internals: one script call with errors mapped and the
//! per-request timeout applied, owner tokens, and the plain-lock operations
//! Redlock runs on each server.

use std::time::Duration;

use redis::{FromRedisValue, Script, Value};

use crate::error::LockError;
use crate::redis::conn::errors::{map_redis, timed_out};
use crate::redis::conn::pool::Conn;
use crate::redis::context::Context;
use crate::redis::protocol::keys::ResourceKeys;
use crate::redis::protocol::scripts;

/// Runs `script` on a pooled connection, bounded by the client's
/// `op_timeout`; errors are mapped for `resource`/`op`. If the connection
/// turns out to be broken (the server restarted while it sat idle), runs it
/// once more on a fresh one, as the plain lock's operations do
/// ([`Context::retry_once`](crate::redis::context::Context::retry_once)): only for scripts that are safe to repeat
/// (reads, compare-and-delete, compare-and-expire).
///
/// # Cancel safety
///
/// If the future is dropped after the request was written, the script may
/// still run on the server.
pub(crate) async fn invoke<T: FromRedisValue>(
    client: &Context,
    resource: &str,
    op: &'static str,
    script: &Script,
    keys: &[&str],
    args: &[&str],
) -> Result<T, LockError> {
    invoke_replicated(client, resource, op, script, keys, args, None)
        .await
        .map(|(reply, _)| reply)
}

/// As [`invoke`], then, with `replicas = Some((n, wait))`, `WAIT n wait` on
/// the same connection (it covers the script's write): returns the script's
/// reply and whether `n` replicas confirmed it (always `true` without
/// `replicas`; `false` when the `WAIT` failed).
///
/// # Cancel safety
///
/// As [`invoke`]: a dropped future's script may still run.
pub(crate) async fn invoke_replicated<T: FromRedisValue>(
    client: &Context,
    resource: &str,
    op: &'static str,
    script: &Script,
    keys: &[&str],
    args: &[&str],
    replicas: Option<(u32, Duration)>,
) -> Result<(T, bool), LockError> {
    let key = keys.first().copied().unwrap_or("");
    let call = client.retry_once(resource, op, |mut conn| async move {
        let reply = eval::<T>(&mut conn, script, &evalsha(script, keys, args)).await?;
        let Some((n, wait)) = replicas else {
            return Ok((reply, true));
        };
        let confirmed = match conn.wait_replicas(key, n, wait).await {
            Ok(redis::Value::Int(c)) => c >= i64::from(n),
            _ => false,
        };
        Ok((reply, confirmed))
    });
    let limit = client.options().request_timeout() + replicas.map_or(Duration::ZERO, |(_, w)| w);
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(timed_out(resource, op)))
}

/// Runs `script` once on `conn` (requests on one connection and its clones
/// run in order: a cleanup sent after an attempt runs after it). No
/// timeout of its own: the caller bounds it.
pub(crate) async fn invoke_on<T: FromRedisValue, K: AsRef<str>, A: AsRef<str>>(
    conn: &mut Conn,
    resource: &str,
    op: &'static str,
    script: &Script,
    keys: &[K],
    args: &[A],
) -> Result<T, LockError> {
    eval(conn, script, &evalsha(script, keys, args))
        .await
        .map_err(|e| map_redis(e, resource, op))
}

/// `EVALSHA script keys... args...` as one command: its arguments written
/// straight into the command's buffer, two allocations whatever their
/// number. (`redis::ScriptInvocation` copies each key and argument into a
/// `Vec` of its own first, then again into the command: ten to twenty
/// allocations per call on the lock's paths, measured with callgrind.)
pub(crate) fn evalsha<K: AsRef<str>, A: AsRef<str>>(
    script: &Script,
    keys: &[K],
    args: &[A],
) -> redis::Cmd {
    let hash = script.get_hash();
    let len = keys.iter().map(|k| k.as_ref().len()).sum::<usize>()
        + args.iter().map(|a| a.as_ref().len()).sum::<usize>()
        + hash.len()
        + 16;
    let mut cmd = redis::Cmd::with_capacity(3 + keys.len() + args.len(), len);
    cmd.arg("EVALSHA").arg(hash).arg(keys.len());
    for k in keys {
        cmd.arg(k.as_ref());
    }
    for a in args {
        cmd.arg(a.as_ref());
    }
    cmd
}

/// Sends `cmd` (an [`evalsha`] of `script`) on `conn`; if the server does
/// not have the script (`NOSCRIPT`: restarted, or `SCRIPT FLUSH`), loads it
/// and sends `cmd` once more, as `redis::ScriptInvocation::invoke_async`
/// does.
///
/// # Cancel safety
///
/// If the future is dropped after the request was written, the script may
/// still run on the server.
pub(crate) async fn eval<T: FromRedisValue>(
    conn: &mut Conn,
    script: &Script,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    let reply = match conn.send(cmd).await.and_then(Value::extract_error) {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            // Boxed: the rare reload stays out of every call's future.
            Box::pin(async {
                script.load_async(conn).await?;
                conn.send(cmd).await?.extract_error()
            })
            .await?
        }
        r => r?,
    };
    Ok(redis::from_redis_value(reply)?)
}

/// How many members of the ZSET of holders `set` are unexpired
/// (`count_live.lua`).
///
/// # Cancel safety
///
/// Cancel safe: it only reads.
pub(crate) async fn count_live(
    client: &Context,
    resource: &str,
    op: &'static str,
    set: &str,
) -> Result<i64, LockError> {
    invoke(client, resource, op, &scripts::COUNT_LIVE, &[set], &[]).await
}

pub(crate) use crate::redis::protocol::ms;

/// One Redlock participant's view of a plain exclusive lock: the core's
/// acquire and release scripts on one server (its lease is a Hold, renewed by the watchdog), with the same owner
/// value on every server.
pub(crate) struct PlainLock<'a> {
    pub(crate) server: &'a Context,
    pub(crate) name: &'a str,
    pub(crate) keys: ResourceKeys,
    pub(crate) value: &'a str,
}

impl<'a> PlainLock<'a> {
    pub(crate) fn new(server: &'a Context, name: &'a str, value: &'a str) -> Self {
        Self {
            keys: ResourceKeys::new(&server.options().key_prefix, name),
            server,
            name,
            value,
        }
    }

    /// `SET NX PX` + `INCR fence`: `Some(fence)` when granted, `None` when
    /// someone else holds it.
    /// (On `conn`, so that a cleanup sent later on it runs after.)
    pub(crate) async fn acquire_on(
        &self,
        conn: &mut Conn,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError> {
        let ttl = ms(self.server.options().server_ttl(ttl));
        let (keys, args) = ([&*self.keys.lock, &*self.keys.fence], [self.value, &*ttl]);
        let call = invoke_on::<redis::Value, _, _>(
            conn,
            self.name,
            "acquire",
            &scripts::ACQUIRE,
            &keys,
            &args,
        );
        let reply = match tokio::time::timeout(self.server.options().request_timeout(), call).await
        {
            Ok(reply) => reply?,
            Err(_) => return Err(timed_out(self.name, "acquire")),
        };
        // `{1, fence}` when granted, `{0, pttl, holder}` when held.
        if let redis::Value::Array(items) = &reply {
            match items.as_slice() {
                [redis::Value::Int(1), redis::Value::Int(fence)] if *fence > 0 => {
                    return Ok(Some(fence.unsigned_abs()));
                }
                [redis::Value::Int(0), ..] => return Ok(None),
                _ => {}
            }
        }
        Err(crate::redis::context::bad_reply(
            self.name, "acquire", &reply,
        ))
    }

    /// As [`release`](Self::release), on `conn` (after whatever was sent on
    /// it before), bounded by the client's `op_timeout`.
    pub(crate) async fn release_on(&self, conn: &mut Conn) -> Result<bool, LockError> {
        let (keys, args) = ([self.keys.lock.as_str()], [self.value, &*self.keys.channel]);
        let script = scripts::RELEASE.get(self.server.is_cluster());
        let call = invoke_on::<i64, _, _>(conn, self.name, "release", script, &keys, &args);
        match tokio::time::timeout(self.server.options().request_timeout(), call).await {
            Ok(n) => Ok(n? == 1),
            Err(_) => Err(timed_out(self.name, "release")),
        }
    }

    /// Compare-and-delete + `PUBLISH`: `true` when it was ours.
    pub(crate) async fn release(&self) -> Result<bool, LockError> {
        let n: i64 = invoke(
            self.server,
            self.name,
            "release",
            scripts::RELEASE.get(self.server.is_cluster()),
            &[&self.keys.lock],
            &[self.value, &*self.keys.channel],
        )
        .await?;
        Ok(n == 1)
    }
}
