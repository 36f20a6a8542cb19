//! The connection pool: `bb8` over `bb8-redis`, whose multiplexed
//! connections a client keeps checked out and shares (see [`Connections`]).
//!
//! Why `bb8` + `bb8-redis` rather than the redis crate's own `bb8` feature:
//! both hand out the same `MultiplexedConnection`; `bb8-redis` is the
//! long-standing, separately versioned manager, and wrapping it lets us
//! (1) set the per-request timeout on each new connection and (2) tell the
//! pool a connection is broken. Neither manager can see that a multiplexed
//! connection died (`has_broken` is always `false`), and testing every
//! checkout with a `PING` would double the cost of a lock. So [`Conn`]
//! watches the results of the requests sent through it and flags the
//! connection as broken on I/O errors; [`Connections`] then hands it back
//! (the pool discards it) and checks out a fresh one.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
    epoch: Arc<AtomicU64>,
}

impl Manager {
    /// `epoch` is the client-wide count of broken connections (see
    /// [`Connections`]).
    pub(crate) fn new(
        inner: bb8_redis::RedisConnectionManager,
        op_timeout: Duration,
        epoch: Arc<AtomicU64>,
    ) -> Self {
        Self {
            inner,
            op_timeout,
            epoch,
        }
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
    epoch: Arc<AtomicU64>,
    /// The epoch when it was opened.
    born: u64,
}

impl PoolConn {
    /// Wraps a connection opened outside the pool (see `Pool::add`).
    pub(crate) fn new(conn: MultiplexedConnection, epoch: Arc<AtomicU64>) -> Self {
        Self {
            conn,
            broken: Arc::new(AtomicBool::new(false)),
            born: epoch.load(Ordering::Acquire),
            epoch,
        }
    }

    /// A handle sharing this connection and its broken flag.
    pub(crate) fn conn(&self) -> Conn {
        Conn {
            conn: self.conn.clone(),
            broken: self.broken.clone(),
            epoch: self.epoch.clone(),
        }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = PoolConn;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<PoolConn, redis::RedisError> {
        let mut conn = self.inner.connect().await?;
        conn.set_response_timeout(self.op_timeout);
        Ok(PoolConn::new(conn, self.epoch.clone()))
    }

    async fn is_valid(&self, conn: &mut PoolConn) -> Result<(), redis::RedisError> {
        self.inner.is_valid(&mut conn.conn).await
    }

    fn has_broken(&self, conn: &mut PoolConn) -> bool {
        conn.broken.load(Ordering::Relaxed)
    }
}

/// The connections of one client: `slots` multiplexed connections checked
/// out of the `bb8` pool for good, handed out round-robin, plus one for the
/// watchdog (so that a large renewal pipeline does not delay lock
/// operations).
///
/// A slot whose connection was flagged broken gives it back (the pool
/// discards it) and checks out a fresh one: `bb8` does the connecting, with
/// its timeout, and bounds the number of sockets. A broken connection also
/// bumps the client-wide `epoch`, and every slot filled in an earlier epoch
/// is refreshed on its next use: when the server restarts, every connection
/// to it is dead, and one failed request is enough to learn it. A `NOSCRIPT`
/// reply (the server forgot our scripts: it restarted) bumps the epoch too,
/// since a connection opened after the restart does not fail.
pub(crate) struct Connections {
    pool: Pool,
    slots: Vec<SlotCell>,
    watchdog: SlotCell,
    next: AtomicUsize,
    epoch: Arc<AtomicU64>,
}

/// One slot: the connection (behind a std mutex, held only to clone it) and
/// an async mutex that serializes refills, so that a slot never holds more
/// than one checkout (concurrent refills could otherwise wait on each other
/// for a pool sized exactly to the slots).
#[derive(Default)]
struct SlotCell {
    current: Mutex<Option<Slot>>,
    refill: tokio::sync::Mutex<()>,
}

struct Slot {
    conn: Conn,
    /// The epoch when the slot was filled.
    epoch: u64,
    /// Kept checked out; dropping it returns (or, if broken, discards) it.
    _pooled: bb8::PooledConnection<'static, Manager>,
}

impl Connections {
    /// `slots` connections for operations; `pool` must allow `slots + 1`.
    pub(crate) fn new(pool: Pool, slots: usize, epoch: Arc<AtomicU64>) -> Self {
        Self {
            pool,
            slots: (0..slots.max(1)).map(|_| SlotCell::default()).collect(),
            watchdog: SlotCell::default(),
            next: AtomicUsize::new(0),
            epoch,
        }
    }

    fn usable(&self, slot: &Option<Slot>) -> Option<Conn> {
        match slot {
            Some(held)
                if !held.conn.is_broken() && held.epoch == self.epoch.load(Ordering::Acquire) =>
            {
                Some(held.conn.clone())
            }
            _ => None,
        }
    }

    /// A connection for an operation on `resource` (errors mapped for
    /// `op`).
    pub(crate) async fn get(&self, resource: &str, op: &'static str) -> Result<Conn, LockError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slot_conn(&self.slots[i], resource, op).await
    }

    /// The watchdog's connection.
    pub(crate) async fn watchdog(&self) -> Result<Conn, LockError> {
        self.slot_conn(&self.watchdog, "(watchdog)", "renew").await
    }

    async fn slot_conn(
        &self,
        cell: &SlotCell,
        resource: &str,
        op: &'static str,
    ) -> Result<Conn, LockError> {
        let slot = &cell.current;
        if let Some(conn) = self.usable(&slot.lock().unwrap_or_else(PoisonError::into_inner)) {
            return Ok(conn);
        }
        // One refill at a time; whoever waited here may find it done.
        let _refilling = cell.refill.lock().await;
        let stale = {
            let mut s = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(conn) = self.usable(&s) {
                return Ok(conn);
            }
            s.take()
        };
        // A connection from an earlier epoch may be dead without knowing it
        // (it was idle when the server went away): never give it back to
        // the pool as healthy.
        if let Some(stale) = stale {
            stale.conn.broken.store(true, Ordering::Release);
        }
        let mut attempts = self.pool.state().connections as usize + 1;
        let pooled = loop {
            let pooled = self
                .pool
                .get_owned()
                .await
                .map_err(|e| map_pool(e, resource, op))?;
            attempts -= 1;
            let fresh = pooled.born >= self.epoch.load(Ordering::Acquire)
                && !pooled.broken.load(Ordering::Acquire);
            if fresh || attempts == 0 {
                break pooled;
            }
            // An idle connection from before a failure: discard it.
            pooled.broken.store(true, Ordering::Release);
        };
        let epoch = self.epoch.load(Ordering::Acquire);
        let conn = pooled.conn();
        let mut s = slot.lock().unwrap_or_else(PoisonError::into_inner);
        *s = Some(Slot {
            conn: conn.clone(),
            epoch,
            _pooled: pooled,
        });
        Ok(conn)
    }

    /// Adds a connection opened outside the pool (at connect time) to the
    /// first slot.
    pub(crate) async fn seed(&self, conn: PoolConn) {
        if self.pool.add(conn).is_ok() {
            let _ = self.get("(connect)", "connect").await;
        }
    }
}

impl fmt::Debug for Connections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connections")
            .field("slots", &self.slots.len())
            .field("pool", &self.pool.state())
            .finish()
    }
}

/// A multiplexed connection that flags itself broken when a request on it
/// fails with an I/O error. Use it with any `redis` API (`Script`,
/// `Pipeline`, `Cmd`) as a [`ConnectionLike`].
#[derive(Clone)]
pub(crate) struct Conn {
    conn: MultiplexedConnection,
    broken: Arc<AtomicBool>,
    epoch: Arc<AtomicU64>,
}

impl Conn {
    /// Whether a request on this connection failed with an I/O error.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Records that the server forgot our scripts (`NOSCRIPT`): it most
    /// likely restarted, so every connection opened before may be dead
    /// without knowing it yet. Bumps the epoch, so that every slot
    /// reconnects on its next use.
    pub(crate) fn note_server_restart(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn note<T>(&self, r: &RedisResult<T>) {
        let Err(e) = r else {
            return;
        };
        if breaks_connection(e) {
            if !self.broken.swap(true, Ordering::AcqRel) {
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
        } else if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
            self.note_server_restart();
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
            self.note(&r);
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
            self.note(&r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}
