//! Redis Cluster: the connection layer's second shape.
//!
//! Lock operations go through one [`ClusterConnection`] of the redis crate
//! (`cluster-async`). It is multiplexed per node and routes each request by
//! its first key's hash slot, following `MOVED` (slot migrated) and `ASK`
//! (slot migrating) redirections and refreshing its slot map; so there is no
//! `bb8` pool here: a pool of cluster connections would multiply the
//! per-node sockets and slot maps without adding concurrency. Every key of
//! one resource carries the name as its `{hash tag}`, so every script runs
//! on one slot.
//!
//! Two things the routed connection cannot do, and this module does:
//! * **Per-node batches.** A pipeline through the routed connection must
//!   stay within one slot, and one redirected reply makes it resend the
//!   whole pipeline. The watchdog instead groups its renewals by the master
//!   that owns each lease's slot ([`Cluster::group`], from our own copy of
//!   the slot map) and sends one pipeline per master on a direct connection
//!   to it ([`Cluster::node`]). A renewal answered `MOVED`/`ASK` is resent
//!   alone to the node named ([`redirect_target`]; after `ASKING` for an
//!   `ASK`), with its own `WAIT` there when replicas must confirm, and the
//!   slot map is refreshed; the rest of its pipeline is not sent again.
//! * **Every master.** `SCAN` (for `list`) must visit each master
//!   ([`Cluster::masters`]).
//! * **One hop.** A resource's requests go straight to its slot's master
//!   on that direct connection ([`Cluster::conn_for`]), and only a
//!   `MOVED`/`ASK` answer sends them again on the routed connection: the
//!   routed connection's own task would add a hop to every request.
//!
//! # Ordering (lease invariant 5 on a Cluster)
//!
//! A cancelled acquisition's undo is sent on the acquisition's own `Conn`,
//! after the attempt. On the direct connection both go down one
//! multiplexed connection, in order. An attempt answered `MOVED`/`ASK` was
//! not run there; its resend on the routed connection belongs to the
//! attempt's future, so if that future is dropped the routed connection
//! drops the request unless it already wrote it to the new owner's
//! connection, ahead of the undo that follows the same way.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};

use crate::error::LockError;
use crate::redis::conn::errors::{map_redis, protocol, timed_out};
use crate::redis::conn::link::Conn;
use crate::redis::conn::tls::TlsMaterial;

/// The number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// A cluster node's address as the cluster announces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Node {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The hash slot of `key` (the CRC16 of its `{hash tag}`, as the server
/// computes it).
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS
}

/// Our copy of the slot map: which master serves which slots.
#[derive(Debug, Default)]
struct Topology {
    /// `(first slot, last slot, master)`, sorted by first slot.
    ranges: Vec<(u16, u16, Node)>,
}

impl Topology {
    fn owner(&self, slot: u16) -> Option<&Node> {
        let i = self.ranges.partition_point(|(start, _, _)| *start <= slot);
        let (start, end, node) = self.ranges.get(i.checked_sub(1)?)?;
        (*start <= slot && slot <= *end).then_some(node)
    }

    fn masters(&self) -> Vec<Node> {
        let mut all: Vec<Node> = self.ranges.iter().map(|(_, _, n)| n.clone()).collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Parses a `CLUSTER SLOTS` reply. `asked` names the node that answered
/// (an empty host in the reply means "the address you reached me at").
fn parse_slots(reply: &Value, asked: &str) -> Result<Topology, String> {
    let Value::Array(entries) = reply else {
        return Err(format!("CLUSTER SLOTS answered {reply:?}"));
    };
    let mut ranges = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(fields) = entry else {
            return Err(format!("a CLUSTER SLOTS entry is {entry:?}"));
        };
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(n)) => u16::try_from(*n).ok().filter(|n| *n < SLOTS),
            _ => None,
        };
        let (Some(start), Some(end)) = (int(fields.first()), int(fields.get(1))) else {
            return Err(format!(
                "a CLUSTER SLOTS entry has no slot range: {entry:?}"
            ));
        };
        let Some(Value::Array(master)) = fields.get(2) else {
            return Err(format!("a CLUSTER SLOTS entry has no master: {entry:?}"));
        };
        let host = match master.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => return Err(format!("a CLUSTER SLOTS master has no host: {entry:?}")),
        };
        let host = if host.is_empty() || host == "?" {
            asked.to_owned()
        } else {
            host
        };
        let port = match master.get(1) {
            Some(Value::Int(p)) => u16::try_from(*p).ok(),
            _ => None,
        };
        let Some(port) = port.filter(|p| *p != 0) else {
            return Err(format!("a CLUSTER SLOTS master has no port: {entry:?}"));
        };
        if start > end {
            return Err(format!("CLUSTER SLOTS range {start}-{end} is reversed"));
        }
        ranges.push((start, end, Node { host, port }));
    }
    ranges.sort_by_key(|(start, _, _)| *start);
    Ok(Topology { ranges })
}

/// The Cluster connections of one client.
pub(crate) struct Cluster {
    /// The routed connection (follows redirections).
    routed: ClusterConnection,
    /// The first seed's settings (credentials, database, protocol), with
    /// which direct node connections are opened.
    base: ConnectionInfo,
    /// The host we reached the first seed at.
    seed_host: String,
    topology: Mutex<Arc<Topology>>,
    /// Set when a reply showed the slot map changed; the next
    /// [`group`](Self::group) or [`masters`](Self::masters) refreshes it.
    stale: Arc<AtomicBool>,
    /// Direct connections to masters, for per-node batches and scans.
    nodes: Mutex<HashMap<Node, Conn>>,
    /// One slot-map refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// One connect at a time per node (and none delayed by another node's:
    /// a master that does not answer must hold up nobody else).
    connecting: Mutex<HashMap<Node, Arc<tokio::sync::Mutex<()>>>>,
    /// Never-bumped epoch for the `Conn`s of this shape (the routed
    /// connection repairs itself; direct ones are replaced when broken).
    epoch: Arc<AtomicU64>,
    /// TLS to every node when the seeds are `rediss://`.
    tls: TlsMaterial,
    op_timeout: Duration,
    connect_timeout: Duration,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topology = self.topology();
        f.debug_struct("Cluster")
            .field("masters", &topology.masters().len())
            .finish_non_exhaustive()
    }
}

/// The redis crate's cluster client for `seeds`, with our timeouts.
pub(crate) fn client_builder(
    seeds: &[ConnectionInfo],
    tls: &TlsMaterial,
    op_timeout: Duration,
    connect_timeout: Duration,
) -> ClusterClientBuilder {
    tls.cluster(ClusterClientBuilder::new(seeds.to_vec()))
        .connection_timeout(connect_timeout)
        .response_timeout(op_timeout)
        // Redirections and reconnects within one request are bounded by the
        // request's own timeout (the caller's), not by a retry count alone.
        .retries(4)
        .min_retry_wait(10)
        .max_retry_wait(200)
}

impl Cluster {
    /// Connects to the cluster through `seeds` (at least one) and reads its
    /// slot map.
    pub(crate) async fn connect(
        seeds: Vec<ConnectionInfo>,
        tls: TlsMaterial,
        what: &str,
        op_timeout: Duration,
        connect_timeout: Duration,
        first_timeout: Duration,
    ) -> Result<Self, LockError> {
        let Some(base) = seeds.first().cloned() else {
            return Err(LockError::InvalidArgument {
                what: "redis cluster",
                reason: "no seed node given".to_owned(),
            });
        };
        let seed_host = match base.addr() {
            ConnectionAddr::Tcp(h, _) | ConnectionAddr::TcpTls { host: h, .. } => h.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let client = client_builder(&seeds, &tls, op_timeout, connect_timeout)
            .build()
            .map_err(|e| LockError::InvalidArgument {
                what: "redis cluster",
                reason: e.to_string(),
            })?;
        let routed = tokio::time::timeout(first_timeout, client.get_async_connection())
            .await
            .map_err(|_| timed_out(what, "connect"))?
            .map_err(|e| map_redis(e, what, "connect"))?;
        let this = Self {
            routed,
            base,
            seed_host,
            topology: Mutex::new(Arc::new(Topology::default())),
            stale: Arc::new(AtomicBool::new(true)),
            nodes: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
            connecting: Mutex::new(HashMap::new()),
            epoch: Arc::new(AtomicU64::new(0)),
            tls,
            op_timeout,
            connect_timeout,
        };
        this.refresh(what).await?;
        Ok(this)
    }

    /// The routed connection, as a [`Conn`].
    pub(crate) fn conn(&self) -> Conn {
        Conn::cluster(self.routed.clone(), self.epoch.clone())
    }

    /// The connection for requests on the resource `name` (whose keys all
    /// carry `{name}`, so hash to the slot of `name`): straight to the
    /// master serving that slot when it is known and reachable, falling
    /// back to the routed connection on a redirection; the routed
    /// connection otherwise.
    pub(crate) async fn conn_for(&self, name: &str) -> Conn {
        let owner = self.topology().owner(slot_of(name.as_bytes())).cloned();
        if let Some(node) = owner
            && !self.stale.load(Ordering::Acquire)
            && let Ok(direct) = self.node(&node).await
            && let Some(conn) = Conn::slot(&direct, self.routed.clone(), self.stale.clone())
        {
            return conn;
        }
        if self.stale.load(Ordering::Acquire) {
            // This request pays for the refresh (one at a time; the others
            // find it done), then goes by the routed connection, which
            // follows any redirection by itself.
            if let Err(e) = self.refresh("(slot map)").await {
                tracing::debug!(error = %e, "could not refresh the slot map");
            }
        }
        self.conn()
    }

    fn topology(&self) -> Arc<Topology> {
        self.topology
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records that a reply showed the slot map changed (`MOVED`, `ASK`, a
    /// node that failed).
    pub(crate) fn note_moved(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Reads the slot map again (with `CLUSTER SLOTS`, through the routed
    /// connection).
    async fn refresh(&self, what: &str) -> Result<(), LockError> {
        let _one = self.refreshing.lock().await;
        if !self.stale.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let mut conn = self.routed.clone();
        let reply = tokio::time::timeout(
            self.op_timeout,
            conn.req_packed_command(redis::cmd("CLUSTER").arg("SLOTS")),
        )
        .await;
        let reply = match reply {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.stale.store(true, Ordering::Release);
                return Err(map_redis(e, what, "read the slot map"));
            }
            Err(_) => {
                self.stale.store(true, Ordering::Release);
                return Err(timed_out(what, "read the slot map"));
            }
        };
        let topology = parse_slots(&reply, &self.seed_host).map_err(|detail| {
            self.stale.store(true, Ordering::Release);
            protocol(what, "read the slot map", detail)
        })?;
        if topology.ranges.is_empty() {
            self.stale.store(true, Ordering::Release);
            return Err(LockError::Unavailable {
                resource: what.to_owned(),
                op: "read the slot map",
                source: "the cluster serves no slots yet".into(),
            });
        }
        *self.topology.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(topology);
        Ok(())
    }

    async fn fresh_topology(&self, what: &str) -> Result<Arc<Topology>, LockError> {
        if self.stale.load(Ordering::Acquire) {
            self.refresh(what).await?;
        }
        Ok(self.topology())
    }

    /// The masters serving slots now.
    ///
    /// # Errors
    ///
    /// As the `CLUSTER SLOTS` request when the map must be refreshed.
    pub(crate) async fn masters(&self, what: &str) -> Result<Vec<Node>, LockError> {
        Ok(self.fresh_topology(what).await?.masters())
    }

    /// Groups items by the master serving the slot of their key: `(master,
    /// indexes into keys)`; items whose slot no known master serves come
    /// under `None` (send them through the routed connection).
    pub(crate) async fn group<'a>(
        &self,
        keys: impl Iterator<Item = &'a [u8]>,
    ) -> Vec<(Option<Node>, Vec<usize>)> {
        let topology = match self.fresh_topology("(watchdog)").await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "could not refresh the slot map; using the last one");
                self.topology()
            }
        };
        let mut groups: Vec<(Option<Node>, Vec<usize>)> = Vec::new();
        for (i, key) in keys.enumerate() {
            let owner = topology.owner(slot_of(key)).cloned();
            match groups.iter_mut().find(|(n, _)| *n == owner) {
                Some((_, items)) => items.push(i),
                None => groups.push((owner, vec![i])),
            }
        }
        groups
    }

    /// A direct connection to `node` (opened on first use, replaced once
    /// broken). Requests on it are not redirected: a reply may be `MOVED`.
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] when the node cannot be reached in the
    /// connect timeout.
    pub(crate) async fn node(&self, node: &Node) -> Result<Conn, LockError> {
        if let Some(c) = self.cached(node) {
            return Ok(c);
        }
        let gate = self
            .connecting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(node.clone())
            .or_default()
            .clone();
        let _one = gate.lock().await;
        if let Some(c) = self.cached(node) {
            return Ok(c);
        }
        let what = node.to_string();
        let info = self
            .base
            .clone()
            .set_addr(self.tls.node_addr(node.host.clone(), node.port))
            .into_connection_info()
            .map_err(|e| map_redis(e, &what, "connect"))?;
        let client = self
            .tls
            .client(info)
            .map_err(|e| map_redis(e, &what, "connect"))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.op_timeout));
        let conn = tokio::time::timeout(
            self.connect_timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| timed_out(&what, "connect"))?
        .map_err(|e| {
            self.note_moved();
            map_redis(e, &what, "connect")
        })?;
        let conn = Conn::node(conn, Arc::new(AtomicU64::new(0)));
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node.clone(), conn.clone());
        Ok(conn)
    }

    fn cached(&self, node: &Node) -> Option<Conn> {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        match nodes.get(node) {
            Some(c) if !c.is_broken() => Some(c.clone()),
            Some(_) => {
                nodes.remove(node);
                self.note_moved();
                None
            }
            None => None,
        }
    }
}

/// Whether a reply is a redirection (`MOVED`, `ASK`) or a refusal that
/// says the slot is changing hands (`TRYAGAIN`, `CLUSTERDOWN`).
pub(crate) fn is_redirect(v: &Value) -> bool {
    matches!(v, Value::ServerError(e)
        if matches!(e.code(), "MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN"))
}

/// Where a `MOVED` or `ASK` reply sends the request: the node, and whether
/// it must be preceded by `ASKING` (the slot is migrating to that node and
/// not yet its own). `None` for any other reply, or one without an address.
pub(crate) fn redirect_target(v: &Value) -> Option<(Node, bool)> {
    let Value::ServerError(e) = v else {
        return None;
    };
    let asking = match e.code() {
        "ASK" => true,
        "MOVED" => false,
        _ => return None,
    };
    // `<slot> <host>:<port>`
    let addr = e.details()?.split_whitespace().nth(1)?;
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok().filter(|p| *p != 0)?;
    if host.is_empty() {
        return None;
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Some((Node { host, port }, asking))
}

/// Whether a server answers as a Cluster node (`cluster_enabled:1` in
/// `INFO cluster`), asked on `conn`.
pub(crate) async fn is_cluster_node(conn: &mut Conn, what: &str) -> Result<bool, LockError> {
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(conn)
        .await
        .map_err(|e| map_redis(e, what, "connect"))?;
    Ok(info.lines().any(|l| l.trim() == "cluster_enabled:1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_server() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"lockyard:{foo}:lock"), 12182);
        assert_eq!(slot_of(b"{}x"), slot_of(b"{}x"));
        assert_eq!(slot_of(b"123456789"), 12739);
    }

    #[test]
    fn redirections_name_their_node() {
        let reply = |text: &str| redis::parse_redis_value(text.as_bytes()).unwrap();
        let node = |port| Node {
            host: "127.0.0.1".to_owned(),
            port,
        };
        assert_eq!(
            redirect_target(&reply("-ASK 15627 127.0.0.1:7001\r\n")),
            Some((node(7001), true))
        );
        assert_eq!(
            redirect_target(&reply("-MOVED 1 127.0.0.1:7002\r\n")),
            Some((node(7002), false))
        );
        for other in [
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            "-ASK 15627\r\n",
            "-ASK 15627 :7001\r\n",
            "-MOVED 1 host:0\r\n",
            ":1\r\n",
        ] {
            assert_eq!(redirect_target(&reply(other)), None, "{other}");
        }
    }

    #[test]
    fn parses_slot_maps_and_refuses_garbage() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node("", 7001)]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
            ]),
        ]);
        let t = parse_slots(&reply, "seed").unwrap();
        assert_eq!(t.owner(0).unwrap().port, 7000);
        assert_eq!(t.owner(5461).unwrap().host, "seed");
        assert_eq!(t.owner(10922).unwrap().port, 7001);
        assert!(t.owner(10923).is_none());
        assert_eq!(t.masters().len(), 2);

        for bad in [
            Value::Int(1),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(9),
                Value::Int(1),
                node("h", 1),
            ])]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(99999),
                node("h", 1),
            ])]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(1),
                node("h", 0),
            ])]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(1),
                Value::Nil,
            ])]),
        ] {
            assert!(parse_slots(&bad, "seed").is_err(), "{bad:?}");
        }
    }
}
