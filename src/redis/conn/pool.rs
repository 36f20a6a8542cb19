//! The connection pool: `bb8` over our own small manager of multiplexed
//! connections, which a client keeps checked out and shares (see
//! [`Connections`]).
//!
//! Why our own `bb8::ManageConnection` rather than `bb8-redis` or the redis
//! crate's own `bb8` support: both hand out the same
//! `MultiplexedConnection`, but ours (1) connects with a `redis::Client`
//! built with TLS material (a custom CA, a client certificate:
//! `Client::build_with_tls`), where `bb8-redis` takes only a URL, (2) sets
//! the connect timeout and bounds the requests of each new connection by
//! the client's ticker instead of redis-rs's timer per request (see
//! `ticks`), and (3)
//! tells the pool a connection is broken. No manager can see that a
//! multiplexed connection died, and testing every checkout with a `PING`
//! would double the cost of a lock. So [`Conn`] watches the results of the
//! requests sent through it and flags the connection as broken on I/O
//! errors; [`Connections`] then hands it back (the pool discards it) and
//! checks out a fresh one.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use crate::error::LockError;
use crate::redis::conn::cluster::Cluster;
use crate::redis::conn::errors::map_pool;
pub(crate) use crate::redis::conn::link::Conn;
use crate::redis::conn::sentinel::{Target, check_primary};
use crate::redis::conn::ticks::{self, Health, Ticker};
use crate::redis::conn::tls::problem_of;

/// The `bb8` pool type of a client.
pub(crate) type Pool = bb8::Pool<Manager>;

/// Opens the multiplexed connections of a client's pool.
pub(crate) struct Manager {
    /// Where to connect: one address, or the primary the sentinels name.
    target: Target,
    config: AsyncConnectionConfig,
    /// Bounds the requests of its connections (see `ticks`).
    ticker: Arc<Ticker>,
    epoch: Arc<AtomicU64>,
    /// The last connect's TLS failure, if it failed so: `bb8` retries a
    /// failed connect until its timeout and then reports only that it
    /// timed out, so [`Connections`] reads the cause here.
    tls_failure: TlsFailure,
}

/// Shared between a pool's [`Manager`] and its [`Connections`].
pub(crate) type TlsFailure = Arc<Mutex<Option<redis::RedisError>>>;

impl Manager {
    /// `target` carries the address (or the sentinels), credentials and TLS
    /// material; `epoch`
    /// is the client-wide count of broken connections (see
    /// [`Connections`]).
    pub(crate) fn new(
        target: Target,
        connect_timeout: Duration,
        ticker: Arc<Ticker>,
        epoch: Arc<AtomicU64>,
        tls_failure: TlsFailure,
    ) -> Self {
        Self {
            target,
            config: connection_config(connect_timeout, ticker.timeout()),
            ticker,
            epoch,
            tls_failure,
        }
    }
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager").finish_non_exhaustive()
    }
}

/// The config of a client's connections: a connect timeout, and
/// `request_timeout` for the requests of those redis-rs bounds (see
/// `ticks::open`).
pub(crate) fn connection_config(
    connect_timeout: Duration,
    request_timeout: Duration,
) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(request_timeout))
}

/// A pooled multiplexed connection plus its health (broken; its ticker).
pub(crate) struct PoolConn {
    conn: MultiplexedConnection,
    health: Arc<Health>,
    epoch: Arc<AtomicU64>,
    /// The epoch when it was opened.
    born: u64,
}

impl PoolConn {
    /// Wraps a connection opened outside the pool (see `Pool::add`), with
    /// the health [`ticks::open`] gave it.
    pub(crate) fn new(
        conn: MultiplexedConnection,
        health: Arc<Health>,
        epoch: Arc<AtomicU64>,
    ) -> Self {
        Self {
            conn,
            health,
            born: epoch.load(Ordering::Acquire),
            epoch,
        }
    }

    /// A handle sharing this connection and its health.
    pub(crate) fn conn(&self) -> Conn {
        Conn::pooled(self.conn.clone(), self.health.clone(), self.epoch.clone())
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = PoolConn;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<PoolConn, redis::RedisError> {
        let conn = async {
            let client = self.target.client().await?;
            let (mut conn, health) = ticks::open(&client, &self.config, Some(&self.ticker)).await?;
            if self.target.sentinels().is_some() {
                ticks::within(&self.ticker, check_primary(&mut conn)).await?;
            }
            Ok((conn, health))
        }
        .await;
        let mut failure = self
            .tls_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match conn {
            Ok((conn, health)) => {
                *failure = None;
                Ok(PoolConn::new(conn, health, self.epoch.clone()))
            }
            Err(e) => {
                *failure = problem_of(&e).is_some().then(|| e.clone());
                Err(e)
            }
        }
    }

    async fn is_valid(&self, conn: &mut PoolConn) -> Result<(), redis::RedisError> {
        // Bounded here: the connection has no timer per request.
        let ping = redis::cmd("PING");
        ticks::within(&self.ticker, ping.query_async::<()>(&mut conn.conn)).await
    }

    fn has_broken(&self, conn: &mut PoolConn) -> bool {
        conn.health.is_broken()
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
    shape: Shape,
    epoch: Arc<AtomicU64>,
    /// The server's URL without its password (named by TLS errors).
    server: String,
    /// The pool's last TLS failure (see [`Manager`]).
    tls_failure: TlsFailure,
}

/// One server (pooled connections) or a Cluster (one routed connection;
/// see [`crate::redis::conn::cluster`]).
// One per client, never moved after connect: the variants' sizes do not
// matter.
#[allow(clippy::large_enum_variant)]
enum Shape {
    Node {
        pool: Pool,
        slots: Vec<SlotCell>,
        watchdog: SlotCell,
        next: AtomicUsize,
    },
    Cluster(Cluster),
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
    pub(crate) fn new(
        pool: Pool,
        slots: usize,
        epoch: Arc<AtomicU64>,
        server: String,
        tls_failure: TlsFailure,
    ) -> Self {
        Self {
            server,
            tls_failure,
            shape: Shape::Node {
                pool,
                slots: (0..slots.max(1)).map(|_| SlotCell::default()).collect(),
                watchdog: SlotCell::default(),
                next: AtomicUsize::new(0),
            },
            epoch,
        }
    }

    /// The connections of a Cluster client.
    pub(crate) fn cluster(cluster: Cluster) -> Self {
        Self {
            shape: Shape::Cluster(cluster),
            epoch: Arc::new(AtomicU64::new(0)),
            server: String::new(),
            tls_failure: TlsFailure::default(),
        }
    }

    /// The Cluster, when this client talks to one.
    pub(crate) fn as_cluster(&self) -> Option<&Cluster> {
        match &self.shape {
            Shape::Cluster(c) => Some(c),
            Shape::Node { .. } => None,
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

    /// A healthy connection at hand without waiting, if there is one (one
    /// server's slots; `None` on a Cluster, whose connections are found by
    /// slot).
    pub(crate) fn ready(&self) -> Option<Conn> {
        self.next_ready().ok()
    }

    /// The next slot's connection if it is healthy, else that slot's index
    /// (`Err(0)` on a Cluster, which has no slots here). Not inlined: every
    /// acquisition and release runs this one copy (fewer distinct
    /// instructions per lock cycle).
    #[inline(never)]
    fn next_ready(&self) -> Result<Conn, usize> {
        match &self.shape {
            Shape::Node { slots, next, .. } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % slots.len();
                self.usable(
                    &slots[i]
                        .current
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner),
                )
                .ok_or(i)
            }
            Shape::Cluster(_) => Err(0),
        }
    }

    /// A connection for an operation on `resource` (errors mapped for
    /// `op`).
    pub(crate) async fn get(&self, resource: &str, op: &'static str) -> Result<Conn, LockError> {
        match &self.shape {
            Shape::Node { pool, slots, .. } => match self.next_ready() {
                Ok(conn) => Ok(conn),
                // Boxed, as the Cluster's lookup: a refill's future (~2.6
                // KB) would otherwise sit in the future of every
                // acquisition that takes a connection (see
                // `kinds/resource.rs`).
                Err(i) => Box::pin(self.slot_conn(pool, &slots[i], resource, op)).await,
            },
            Shape::Cluster(c) => Ok(Box::pin(c.conn_for(resource)).await),
        }
    }

    /// A connection to each server that holds keys: the one server, or
    /// every master of a Cluster (direct, so a `SCAN` stays on it).
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get), or a master that cannot be reached.
    pub(crate) async fn scan_targets(&self, what: &str) -> Result<Vec<Conn>, LockError> {
        match &self.shape {
            Shape::Node { .. } => Ok(vec![self.get(what, "list").await?]),
            Shape::Cluster(c) => {
                let mut all = Vec::new();
                for node in c.masters(what).await? {
                    all.push(c.node(&node).await?);
                }
                Ok(all)
            }
        }
    }

    /// The watchdog's connection (on a Cluster, the routed one: the
    /// watchdog sends its per-node batches on [`Cluster::node`]).
    pub(crate) async fn watchdog(&self) -> Result<Conn, LockError> {
        match &self.shape {
            Shape::Node { pool, watchdog, .. } => {
                self.slot_conn(pool, watchdog, "(watchdog)", "renew").await
            }
            Shape::Cluster(c) => Ok(c.conn()),
        }
    }

    async fn slot_conn(
        &self,
        pool: &Pool,
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
            stale.conn.mark_broken();
        }
        let mut attempts = pool.state().connections as usize + 1;
        let pooled = loop {
            let pooled = pool.get_owned().await.map_err(|e| {
                let e = match e {
                    // Retried until the timeout: say why it failed.
                    bb8::RunError::TimedOut => self
                        .tls_failure
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone()
                        .map_or(bb8::RunError::TimedOut, bb8::RunError::User),
                    e => e,
                };
                map_pool(e, resource, op, &self.server)
            })?;
            attempts -= 1;
            let fresh =
                pooled.born >= self.epoch.load(Ordering::Acquire) && !pooled.health.is_broken();
            if fresh || attempts == 0 {
                break pooled;
            }
            // An idle connection from before a failure: discard it.
            pooled.health.broken.store(true, Ordering::Release);
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
        if let Shape::Node { pool, .. } = &self.shape
            && pool.add(conn).is_ok()
        {
            let _ = self.get("(connect)", "connect").await;
        }
    }
}

impl fmt::Debug for Connections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.shape {
            Shape::Node { pool, slots, .. } => f
                .debug_struct("Connections")
                .field("slots", &slots.len())
                .field("pool", &pool.state())
                .finish(),
            Shape::Cluster(c) => f.debug_tuple("Connections").field(c).finish(),
        }
    }
}
