//! [`Conn`]: what every request is sent on, whichever shape the client's
//! connections have (one server's pooled multiplexed connections, a
//! Cluster's routed connection, or a direct connection to one Cluster
//! node). The bottom of the connection layer: `pool` and `cluster` build
//! on it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::redis::conn::errors::breaks_connection;
use crate::redis::conn::ticks::Health;

/// A multiplexed connection that flags itself broken when a request on it
/// fails with an I/O error. Use it with any `redis` API (`Script`,
/// `Pipeline`, `Cmd`) as a [`ConnectionLike`].
#[derive(Clone)]
pub(crate) struct Conn {
    conn: Link,
    /// Broken or not, and the ticker that bounds its requests (see
    /// `ticks`): shared with its pool entry.
    health: Arc<Health>,
    epoch: Arc<AtomicU64>,
    /// The epoch when it was handed out (see [`is_stale`](Self::is_stale)).
    born: u64,
}

/// What a [`Conn`] sends on.
#[derive(Clone)]
enum Link {
    /// One server.
    Node(MultiplexedConnection),
    /// A Cluster, routed by key (it reconnects and follows redirections by
    /// itself, so it is never flagged broken).
    Cluster(ClusterConnection),
    /// A Cluster resource's requests: sent straight to the master that
    /// serves its slot (one task hop fewer than the routed connection, as
    /// fast as one server), and a single command sent again on the routed
    /// connection when that master answers `MOVED` or `ASK` (it was not
    /// run). A pipeline is not sent again (see `req_packed_commands`).
    Slot(Box<SlotLink>),
}

#[derive(Clone)]
struct SlotLink {
    direct: MultiplexedConnection,
    routed: ClusterConnection,
    /// The Cluster's "slot map is stale" flag, set on a redirection.
    stale: Arc<AtomicBool>,
    /// Set once a request of this `Conn` went by the routed connection, so
    /// that `WAIT` asks the connection that carried the writes.
    rerouted: Arc<AtomicBool>,
}

impl SlotLink {
    fn redirected(&self) {
        self.stale.store(true, Ordering::Release);
        self.rerouted.store(true, Ordering::Release);
    }
}

/// Whether a reply says "not here": `MOVED` or `ASK`.
fn is_redirection(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::Moved | redis::ServerErrorKind::Ask)
    )
}

fn redirected_value(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if matches!(e.code(), "MOVED" | "ASK"))
}

/// Whether `cmd` is `SCRIPT LOAD`: the fallback of an `EVALSHA` answered
/// `NOSCRIPT`, which may have come from the node an `ASK` or `MOVED` sent
/// the script to, not from the slot's master.
fn is_script_load(cmd: &Cmd) -> bool {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(b) => b,
        _ => &[][..],
    });
    matches!(
        (args.next(), args.next()),
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b"SCRIPT") && b.eq_ignore_ascii_case(b"LOAD")
    )
}

impl Conn {
    /// A pooled connection sharing its pool entry's health.
    pub(crate) fn pooled(
        conn: MultiplexedConnection,
        health: Arc<Health>,
        epoch: Arc<AtomicU64>,
    ) -> Self {
        Self {
            conn: Link::Node(conn),
            health,
            born: epoch.load(Ordering::Acquire),
            epoch,
        }
    }

    /// Flags it broken (its pool entry is then discarded).
    pub(crate) fn mark_broken(&self) {
        self.health.broken.store(true, Ordering::Release);
    }

    /// A connection to one server outside the pool (a Cluster node's).
    pub(crate) fn node(conn: MultiplexedConnection, epoch: Arc<AtomicU64>) -> Self {
        Self {
            conn: Link::Node(conn),
            health: Health::untimed(),
            born: epoch.load(Ordering::Acquire),
            epoch,
        }
    }

    /// The routed connection of a Cluster.
    pub(crate) fn cluster(conn: ClusterConnection, epoch: Arc<AtomicU64>) -> Self {
        Self {
            conn: Link::Cluster(conn),
            health: Health::untimed(),
            born: epoch.load(Ordering::Acquire),
            epoch,
        }
    }

    /// A Cluster resource's connection: `direct` to the master serving its
    /// slot (sharing that node connection's `broken` flag), `routed` when it
    /// answers with a redirection.
    pub(crate) fn slot(
        direct: &Conn,
        routed: ClusterConnection,
        stale: Arc<AtomicBool>,
    ) -> Option<Self> {
        let Link::Node(conn) = &direct.conn else {
            return None;
        };
        Some(Self {
            conn: Link::Slot(Box::new(SlotLink {
                direct: conn.clone(),
                routed,
                stale,
                rerouted: Arc::new(AtomicBool::new(false)),
            })),
            health: direct.health.clone(),
            epoch: direct.epoch.clone(),
            born: direct.born,
        })
    }

    /// Whether connections were found broken (or the server demoted, or a
    /// Sentinel failover reported) since this one was handed out: a
    /// Sentinel client's waiter then moves to a fresh connection, since
    /// this one may lead to a primary that is one no more.
    pub(crate) fn is_stale(&self) -> bool {
        self.epoch.load(Ordering::Acquire) != self.born
    }

    /// Whether it is still one to send on: not broken, and no failover or
    /// server restart noticed since it was handed out (else take a fresh
    /// one from the pool).
    pub(crate) fn is_healthy(&self) -> bool {
        !self.is_broken() && !self.is_stale()
    }

    /// Whether a request on this connection failed with an I/O error.
    pub(crate) fn is_broken(&self) -> bool {
        self.health.is_broken()
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
        if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly) {
            self.note_demoted();
        } else if breaks_connection(e) && !matches!(self.conn, Link::Cluster(_)) {
            if !self.health.broken.swap(true, Ordering::AcqRel) {
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
        } else if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
            self.note_server_restart();
        }
    }
}

impl Conn {
    /// Records a `READONLY` answer from one server: it was the primary and
    /// is a replica now (a Sentinel failover demoted it). The connection is
    /// flagged broken and the epoch bumped, so every connection is opened
    /// again, through discovery, to the new primary. (A Cluster follows its
    /// own redirections.)
    fn note_demoted(&self) {
        if matches!(self.conn, Link::Node(_)) && !self.health.broken.swap(true, Ordering::AcqRel) {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// As [`note`](Self::note) for a pipeline's replies, where a `READONLY`
    /// comes back as one reply among others.
    fn note_replies(&self, r: &RedisResult<Vec<Value>>) {
        match r {
            Ok(values)
                if values
                    .iter()
                    .any(|v| matches!(v, Value::ServerError(e) if e.code() == "READONLY")) =>
            {
                self.note_demoted();
            }
            r => self.note(r),
        }
    }

    /// `WAIT replicas timeout` for this connection's writes so far, on the
    /// server that holds `key` (on a Cluster, routed to its slot's master:
    /// `WAIT` has no key of its own). The reply is how many replicas
    /// confirmed.
    pub(crate) async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: std::time::Duration,
    ) -> RedisResult<Value> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(
            u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        let reply = match &mut self.conn {
            Link::Node(c) => self.health.bound(c.req_packed_command(&cmd)).await,
            Link::Slot(s) if !s.rerouted.load(Ordering::Acquire) => {
                s.direct.req_packed_command(&cmd).await
            }
            Link::Slot(s) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                s.routed
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await
            }
            Link::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await
            }
        };
        self.note(&reply);
        reply
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("broken", &self.health.broken.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Sends one command, as [`ConnectionLike::req_packed_command`] does,
    /// but on one server's connection (the common case) without boxing
    /// the request's future a second time (the trait's future is boxed,
    /// and so is the one it awaits inside `redis`).
    ///
    /// # Cancel safety
    ///
    /// If dropped after the command was written, it may still run.
    pub(crate) async fn send(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        if let Link::Node(c) = &mut self.conn {
            let r = self.health.bound(c.send_packed_command(cmd)).await;
            self.note(&r);
            return r;
        }
        self.req_packed_command(cmd).await
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = match &mut self.conn {
                Link::Node(c) => self.health.bound(c.req_packed_command(cmd)).await,
                Link::Cluster(c) => c.req_packed_command(cmd).await,
                // On every node, by the routed connection: the script is
                // then there wherever the redirected EVALSHA goes again.
                Link::Slot(s) if is_script_load(cmd) => s.routed.req_packed_command(cmd).await,
                Link::Slot(s) => match s.direct.req_packed_command(cmd).await {
                    Err(e) if is_redirection(&e) => {
                        s.redirected();
                        s.routed.req_packed_command(cmd).await
                    }
                    Ok(v) if redirected_value(&v) => {
                        s.redirected();
                        s.routed.req_packed_command(cmd).await
                    }
                    r => r,
                },
            };
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
            let r = match &mut self.conn {
                Link::Node(c) => {
                    let r = c.req_packed_commands(pipeline, offset, count);
                    self.health.bound(r).await
                }
                Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count).await,
                // Never resent whole: the commands answered without a
                // redirection ran. The replies come back as they are, a
                // `MOVED`/`ASK` among them for the caller to follow per
                // command (as the watchdog does), and the slot map is
                // marked stale.
                Link::Slot(s) => {
                    let r = s.direct.req_packed_commands(pipeline, offset, count).await;
                    let redirected = match &r {
                        Err(e) => is_redirection(e),
                        Ok(values) => values.iter().any(redirected_value),
                    };
                    if redirected {
                        s.stale.store(true, Ordering::Release);
                    }
                    r
                }
            };
            self.note_replies(&r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        match &self.conn {
            Link::Node(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
            Link::Slot(s) => s.direct.get_db(),
        }
    }
}
