//! The connection pool: `bb8` over `bb8-redis`, with multiplexed
//! connections that are checked out only long enough to clone them.
//!
//! Why `bb8` + `bb8-redis` rather than the redis crate's own `bb8` feature:
//! both hand out the same `MultiplexedConnection`; `bb8-redis` is the
//! long-standing, separately versioned manager, and wrapping it lets us
//! (1) set the per-request timeout on each new connection and (2) tell the
//! pool a connection is broken. Neither manager can see that a multiplexed
//! connection died (`has_broken` is always `false`), and testing every
//! checkout with a `PING` would double the cost of a lock. So [`Conn`]
//! watches the results of the requests sent through it and flags the
//! connection as broken on I/O errors; the next checkout drops flagged
//! connections and the pool opens fresh ones.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::errors::{breaks_connection, map_pool};
use crate::error::LockError;

/// The `bb8` pool type of a client.
pub(crate) type Pool = bb8::Pool<Manager>;

/// A `bb8` manager wrapping `bb8_redis::RedisConnectionManager`.
pub(crate) struct Manager {
    inner: bb8_redis::RedisConnectionManager,
    op_timeout: Duration,
}

impl Manager {
    pub(crate) fn new(inner: bb8_redis::RedisConnectionManager, op_timeout: Duration) -> Self {
        Self { inner, op_timeout }
    }
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

/// A pooled multiplexed connection plus its "broken" flag.
pub(crate) struct PoolConn {
    conn: MultiplexedConnection,
    broken: Arc<AtomicBool>,
}

impl PoolConn {
    /// Wraps a connection opened outside the pool (see `Pool::add`).
    pub(crate) fn new(conn: MultiplexedConnection) -> Self {
        Self {
            conn,
            broken: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A handle sharing this connection and its broken flag.
    pub(crate) fn conn(&self) -> Conn {
        Conn {
            conn: self.conn.clone(),
            broken: self.broken.clone(),
        }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = PoolConn;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<PoolConn, redis::RedisError> {
        let mut conn = self.inner.connect().await?;
        conn.set_response_timeout(self.op_timeout);
        Ok(PoolConn::new(conn))
    }

    async fn is_valid(&self, conn: &mut PoolConn) -> Result<(), redis::RedisError> {
        self.inner.is_valid(&mut conn.conn).await
    }

    fn has_broken(&self, conn: &mut PoolConn) -> bool {
        conn.broken.load(Ordering::Relaxed)
    }
}

/// Checks a connection out of `pool` and hands back a clone of it (the
/// pooled slot is returned at once: a multiplexed connection serves any
/// number of concurrent requests).
///
/// Connections flagged broken are dropped here, so the pool reconnects.
pub(crate) async fn checkout(
    pool: &Pool,
    resource: &str,
    op: &'static str,
) -> Result<Conn, LockError> {
    // Each broken connection is dropped from the pool; a pool of n slots can
    // hold at most n broken ones.
    let attempts = pool.state().connections as usize + 1;
    for _ in 0..attempts {
        let pooled = pool.get().await.map_err(|e| map_pool(e, resource, op))?;
        if pooled.broken.load(Ordering::Relaxed) {
            // Dropping it puts it back, where `has_broken` discards it.
            continue;
        }
        return Ok(pooled.conn());
    }
    // Every connection was broken; the pool is reconnecting. One more wait
    // gives a fresh connection or the pool's own timeout error.
    let pooled = pool.get().await.map_err(|e| map_pool(e, resource, op))?;
    Ok(pooled.conn())
}

/// A multiplexed connection that flags itself broken when a request on it
/// fails with an I/O error. Use it with any `redis` API (`Script`,
/// `Pipeline`, `Cmd`) as a [`ConnectionLike`].
#[derive(Clone)]
pub(crate) struct Conn {
    conn: MultiplexedConnection,
    broken: Arc<AtomicBool>,
}

impl Conn {
    fn note<T>(broken: &AtomicBool, r: &RedisResult<T>) {
        if let Err(e) = r
            && breaks_connection(e)
        {
            broken.store(true, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("broken", &self.broken.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = self.conn.req_packed_command(cmd).await;
            Self::note(&self.broken, &r);
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let r = self.conn.req_packed_commands(pipeline, offset, count).await;
            Self::note(&self.broken, &r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}
