//! Redis Sentinel: finding the primary that a set of sentinels monitors, and
//! following it through failovers.
//!
//! `redis+sentinel://[user:password@]h1:p1,h2:p2,h3:p3/<name>[/<db>]` (and
//! `rediss+sentinel://` for TLS to the sentinels and the servers alike)
//! names the sentinels and the master name they monitor; the user and
//! password are the servers' (the sentinels are asked without them).
//!
//! # Discovery
//!
//! Every connection to the primary is opened through [`Target::client`]:
//! every sentinel is asked, concurrently, for the primary's address
//! (`SENTINEL GET-MASTER-ADDR-BY-NAME`) and its configuration epoch and
//! flags (`SENTINEL MASTER`), and the address reported under the newest
//! epoch wins: the sentinel that leads a failover hands out the promoted
//! replica, under the new epoch, before the others learn of it. While that
//! sentinel has picked a replica but not yet seen it promoted (its flags
//! say `failover_in_progress` and its address is still the old primary's)
//! there is no primary to hand out: discovery fails as unavailable, and
//! waiters wait on. The new connection then asks the node itself: a node
//! that answers `ROLE` as anything but a master is refused (a stale
//! sentinel), and the pool tries again within its connect timeout.
//!
//! # Following a failover
//!
//! The old primary keeps taking writes until the sentinels demote it,
//! about ten seconds after a graceful failover: a client that went on
//! writing there would hold locks the new primary never sees. So
//! [`Sentinels::watch`] keeps one pub/sub connection to each sentinel
//! (PINGed every second), subscribed to `+selected-slave` (the leading
//! sentinel picked the replica it is about to promote: sent before the
//! promotion), `+promoted-slave` and `+switch-master`. An event for our
//! master name bumps the client's connection epoch, so every pooled
//! connection (the watchdog's too) is opened again through discovery on
//! its next use, a waiter moves off the connection its acquisition began
//! on (see `Conn::is_stale`), and the release wake-ups reconnect.
//! Independently, a request answered `READONLY` (the old primary, demoted)
//! or failing with an I/O error (a killed primary, connections the
//! sentinels closed) flags its connection broken, with the same effect
//! (see `link.rs`).
//!
//! Why not redis-rs's own Sentinel support (feature `sentinel`): it takes
//! whichever sentinel answers first, without looking at the configuration
//! epoch or at a promotion in progress (so during a failover it can name
//! the old primary), follows no events, and builds its own
//! `redis::Client`, where every lockyard connection is built from
//! [`TlsMaterial`] (the custom CA, the client certificate) and bounded by
//! the client's timeouts.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use redis::{AsyncConnectionConfig, ConnectionInfo, RedisError, RedisResult, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::LockError;
use crate::redis::conn::tls::TlsMaterial;

/// A `redis+sentinel://` URL, parsed.
#[derive(Debug, Clone)]
pub(crate) struct SentinelUrl {
    /// Each sentinel, as `redis[s]://host:port/`.
    pub(crate) sentinels: Vec<ConnectionInfo>,
    /// The master name the sentinels monitor.
    pub(crate) name: String,
    /// A data node's URL with `{addr}` standing for its `host:port`:
    /// `redis[s]://[auth@]{addr}/[db]`.
    node_template: String,
}

impl SentinelUrl {
    /// Parses `url` when its scheme is `redis+sentinel` or
    /// `rediss+sentinel`; `None` for any other scheme. `what` is the URL
    /// without its password (for errors).
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidArgument`] for a malformed Sentinel URL.
    pub(crate) fn parse(url: &str, what: &str) -> Result<Option<Self>, LockError> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            ("redis", rest)
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            ("rediss", rest)
        } else {
            return Ok(None);
        };
        let bad = |reason: String| LockError::InvalidArgument {
            what: "redis URL",
            reason: format!("{what}: {reason}"),
        };
        if rest.contains('?') || rest.contains('#') {
            return Err(bad("a Sentinel URL takes no query or fragment".to_owned()));
        }
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let Some((hosts, path)) = rest.split_once('/') else {
            return Err(bad(
                "no master name: write redis+sentinel://host:port,.../<master name>".to_owned(),
            ));
        };
        let path = path.strip_suffix('/').unwrap_or(path);
        let (name, db) = match path.split_once('/') {
            Some((name, db)) => (name, Some(db)),
            None => (path, None),
        };
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(format!("{name:?} is not a master name")));
        }
        if let Some(db) = db
            && db.parse::<u16>().is_err()
        {
            return Err(bad(format!("{db:?} is not a database number")));
        }
        let mut sentinels = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err(bad("an empty sentinel address".to_owned()));
            }
            // A sentinel's port defaults to 26379, not to a server's 6379.
            let host_port = if host.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']')) {
                host.to_owned()
            } else {
                format!("{host}:26379")
            };
            let one = format!("{scheme}://{host_port}/");
            let info = redis::IntoConnectionInfo::into_connection_info(one.as_str())
                .map_err(|e| bad(format!("sentinel {host}: {e}")))?;
            sentinels.push(info);
        }
        let auth = auth.map_or(String::new(), |a| format!("{a}@"));
        let db = db.unwrap_or("");
        Ok(Some(Self {
            sentinels,
            name: name.to_owned(),
            node_template: format!("{scheme}://{auth}{{addr}}/{db}"),
        }))
    }

    /// The connection info of the data node at `host:port`.
    fn node(&self, host: &str, port: u16) -> RedisResult<ConnectionInfo> {
        let host = if host.contains(':') {
            format!("[{host}]") // IPv6
        } else {
            host.to_owned()
        };
        let url = self
            .node_template
            .replace("{addr}", &format!("{host}:{port}"));
        redis::IntoConnectionInfo::into_connection_info(url.as_str())
    }
}

/// The sentinels of one client, and what it learned from them.
pub(crate) struct Sentinels {
    url: SentinelUrl,
    tls: TlsMaterial,
    /// Per sentinel: connect, then one request.
    config: AsyncConnectionConfig,
    ask_limit: Duration,
    /// Counts the failovers seen (see [`watch`](Self::watch)).
    switches: watch::Sender<u64>,
    /// The URL without its password, for errors.
    what: String,
}

impl fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sentinels")
            .field("sentinels", &self.url.sentinels.len())
            .field("name", &self.url.name)
            .finish_non_exhaustive()
    }
}

/// One sentinel's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    /// Its configuration epoch for the master name.
    epoch: u64,
    /// The primary's address as it hands it out.
    host: String,
    port: u16,
    /// It leads a failover whose promotion is not done yet: the old
    /// primary may stop being one at any moment, the new one is not
    /// known yet.
    promoting: bool,
}

impl Sentinels {
    /// The sentinels of `url`, asked with `tls`, each within
    /// `connect_timeout` to connect and `op_timeout` to answer.
    pub(crate) fn new(
        url: SentinelUrl,
        tls: TlsMaterial,
        connect_timeout: Duration,
        op_timeout: Duration,
        what: String,
    ) -> Self {
        Self {
            url,
            tls,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(op_timeout)),
            ask_limit: connect_timeout + op_timeout,
            switches: watch::channel(0).0,
            what,
        }
    }

    /// A receiver that changes on every failover seen.
    pub(crate) fn switches(&self) -> watch::Receiver<u64> {
        self.switches.subscribe()
    }

    /// Asks every sentinel at once and returns the connection info of the
    /// primary reported with the highest configuration epoch (module docs).
    ///
    /// # Errors
    ///
    /// `MasterNameNotFoundBySentinel` when the sentinels that answered do
    /// not know the name; an I/O error (so: unavailable) when none answered.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: only questions are sent.
    pub(crate) async fn primary(&self) -> RedisResult<ConnectionInfo> {
        let asks = self.url.sentinels.iter().map(|s| self.ask(s.clone()));
        let answers = futures::future::join_all(asks).await;
        let mut views: Vec<View> = Vec::new();
        let mut unknown = 0;
        let mut last_err = None;
        for answer in answers {
            match answer {
                Ok(Some(view)) => views.push(view),
                Ok(None) => unknown += 1,
                Err(e) => last_err = Some(e),
            }
        }
        let newest = views.iter().map(|v| v.epoch).max();
        let current: Vec<&View> = views.iter().filter(|v| Some(v.epoch) == newest).collect();
        if current.iter().any(|v| v.promoting) {
            return Err(RedisError::from(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "a Sentinel failover of {:?} is promoting a replica; no primary until it is done",
                    self.url.name
                ),
            )));
        }
        match current.first() {
            Some(v) => self.url.node(&v.host, v.port),
            None if unknown > 0 => Err(RedisError::from((
                redis::ErrorKind::MasterNameNotFoundBySentinel,
                "the sentinels do not monitor this master name",
                format!("{:?} (asked through {})", self.url.name, self.what),
            ))),
            None => Err(RedisError::from(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "no sentinel of {} answered{}",
                    self.what,
                    last_err.map_or(String::new(), |e| format!(": {e}"))
                ),
            ))),
        }
    }

    /// One sentinel's view, within the ask limit; `None` when it does not
    /// know the name.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: only questions are sent, on a connection of its own.
    async fn ask(&self, sentinel: ConnectionInfo) -> RedisResult<Option<View>> {
        let ask = async {
            let client = self.tls.client(sentinel)?;
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await?;
            let (addr, master): (Value, Value) = redis::pipe()
                .cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&self.url.name)
                .cmd("SENTINEL")
                .arg("MASTER")
                .arg(&self.url.name)
                .ignore_errors()
                .query_async(&mut conn)
                .await?;
            Ok(parse_view(&addr, &master))
        };
        tokio::time::timeout(self.ask_limit, ask)
            .await
            .unwrap_or_else(|_| {
                Err(RedisError::from(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "a sentinel did not answer in time",
                )))
            })
    }

    /// Follows failovers until `shutdown`: one pub/sub connection per
    /// sentinel (module docs); an event for our master name bumps `epoch`
    /// (every pooled connection then reconnects through discovery) and
    /// [`switches`](Self::switches).
    pub(crate) fn watch(self: &Arc<Self>, epoch: Arc<AtomicU64>, shutdown: CancellationToken) {
        for sentinel in self.url.sentinels.clone() {
            let this = self.clone();
            let epoch = epoch.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = this.follow(sentinel, epoch) => {}
                }
            });
        }
    }

    /// One sentinel's event stream, reconnected with backoff for ever.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (dropped at shutdown): the pub/sub connection closes.
    async fn follow(&self, sentinel: ConnectionInfo, epoch: Arc<AtomicU64>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let subscribed = async {
                let client = self.tls.client(sentinel.clone())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&EVENTS[..]).await?;
                RedisResult::Ok(pubsub)
            };
            let pubsub = match tokio::time::timeout(self.ask_limit, subscribed).await {
                Ok(Ok(p)) => p,
                _ => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let connected_at = tokio::time::Instant::now();
            let (mut sink, mut messages) = pubsub.split();
            // A sentinel gone without closing the connection (a host down,
            // a silent network) delivers nothing and reports nothing:
            // PING it every second.
            let mut health =
                tokio::time::interval_at(tokio::time::Instant::now() + HEALTH_EVERY, HEALTH_EVERY);
            loop {
                tokio::select! {
                    msg = messages.next() => {
                        let Some(msg) = msg else { break };
                        self.on_event(&msg, &epoch);
                    }
                    _ = health.tick() => {
                        let pong = tokio::time::timeout(self.ask_limit, sink.ping::<Value>()).await;
                        if !matches!(pong, Ok(Ok(_))) {
                            break;
                        }
                    }
                }
            }
            // The connection dropped or stopped answering: back off, so a
            // sentinel that closes every connection at once is not asked
            // in a tight loop; a subscription that lasted resets it.
            if connected_at.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// An event from a sentinel: if it is about our master name, every
    /// connection is opened again through discovery.
    fn on_event(&self, msg: &redis::Msg, epoch: &AtomicU64) {
        let payload: String = msg.get_payload().unwrap_or_default();
        if names_master(msg.get_channel_name(), &payload, &self.url.name) {
            tracing::info!(
                master = %self.url.name,
                event = msg.get_channel_name(),
                %payload,
                "Sentinel failover: reconnecting to the new primary"
            );
            epoch.fetch_add(1, Ordering::AcqRel);
            self.switches.send_modify(|n| *n += 1);
        }
    }
}

/// How often an event connection to a sentinel is checked with `PING`.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// The events that say a failover is taking the primary role away:
/// `+selected-slave` (the leading sentinel picked the replica it is about
/// to promote: sent before the promotion, so clients stop writing to the
/// old primary before it is one no more), `+promoted-slave` (promotion
/// confirmed), `+switch-master` (every sentinel, once it adopts the new
/// configuration).
const EVENTS: [&str; 3] = ["+selected-slave", "+promoted-slave", "+switch-master"];

/// Whether a sentinel event is about the master `name`:
/// `+switch-master <name> <old ip> <old port> <new ip> <new port>`, or
/// `+selected-slave`/`+promoted-slave slave <ip:port> <ip> <port> @ <name>
/// <ip> <port>`.
fn names_master(channel: &str, payload: &str, name: &str) -> bool {
    let mut words = payload.split_whitespace();
    match channel {
        "+switch-master" => words.next() == Some(name),
        "+selected-slave" | "+promoted-slave" => {
            words.skip_while(|w| *w != "@").nth(1) == Some(name)
        }
        _ => false,
    }
}

/// A sentinel's answers to `GET-MASTER-ADDR-BY-NAME` and `MASTER`, `None`
/// when it does not know the name (a nil address or an error).
///
/// While a sentinel leads a failover, `MASTER` shows the flag
/// `failover_in_progress`, and `GET-MASTER-ADDR-BY-NAME` still the old
/// primary's address until the promotion is confirmed, then the promoted
/// replica's (under a new epoch): the first half is `promoting`.
fn parse_view(addr: &Value, master: &Value) -> Option<View> {
    let Value::Array(items) = addr else {
        return None;
    };
    let [host, port] = items.as_slice() else {
        return None;
    };
    let host = text(host)?;
    let port: u16 = text(port)?.parse().ok()?;
    // A sentinel that answers the address but not the epoch counts as the
    // oldest view.
    let epoch = field(master, "config-epoch")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    let in_progress =
        field(master, "flags").is_some_and(|f| f.split(',').any(|f| f == "failover_in_progress"));
    let own_addr = field(master, "ip").as_deref() == Some(host.as_str())
        && field(master, "port").and_then(|p| p.parse().ok()) == Some(port);
    Some(View {
        epoch,
        host,
        port,
        promoting: in_progress && own_addr,
    })
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A field of a flat field/value array (RESP2) or a map (RESP3).
fn field(v: &Value, name: &str) -> Option<String> {
    match v {
        Value::Array(items) => items
            .chunks(2)
            .find(|kv| kv.first().and_then(text).as_deref() == Some(name))
            .and_then(|kv| kv.get(1))
            .and_then(text),
        Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some(name))
            .and_then(|(_, v)| text(v)),
        _ => None,
    }
}

/// Checks on a fresh connection that the node is a primary (`ROLE`), as
/// discovery requires (module docs).
///
/// # Errors
///
/// An I/O error (so: unavailable, and the pool tries again) when it is not.
///
/// # Cancel safety
///
/// Cancel safe: only a question is sent.
pub(crate) async fn check_primary(conn: &mut redis::aio::MultiplexedConnection) -> RedisResult<()> {
    let role: Value = match redis::cmd("ROLE").query_async(conn).await {
        // An ACL user without `ROLE` (it is in @admin): the sentinels'
        // word and a later `READONLY` have to do.
        Err(e) if e.code() == Some("NOPERM") => {
            tracing::debug!(error = %e, "ROLE not permitted; trusting the sentinels");
            return Ok(());
        }
        r => r?,
    };
    let first = match &role {
        Value::Array(items) => items.first().and_then(text),
        _ => None,
    };
    if first.as_deref() == Some("master") {
        return Ok(());
    }
    Err(RedisError::from(io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!(
            "the node the sentinels named is not a primary (ROLE: {}); a failover is in progress",
            first.unwrap_or_else(|| "?".to_owned())
        ),
    )))
}

/// Where a client's connections to one server go: a fixed address, or
/// wherever the sentinels say the primary is now.
// One per client (shared by its pool and pub/sub task), never moved after
// connect: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum Target {
    /// One server.
    Fixed(redis::Client),
    /// The primary the sentinels name (discovered for each connection).
    Sentinel(Arc<Sentinels>),
}

impl Target {
    /// The client to open the next connection with.
    ///
    /// # Errors
    ///
    /// As [`Sentinels::primary`], or a node address redis cannot use.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn client(&self) -> RedisResult<redis::Client> {
        match self {
            Self::Fixed(client) => Ok(client.clone()),
            Self::Sentinel(s) => s.tls.client(s.primary().await?),
        }
    }

    /// The sentinels, when there are.
    pub(crate) fn sentinels(&self) -> Option<&Arc<Sentinels>> {
        match self {
            Self::Fixed(_) => None,
            Self::Sentinel(s) => Some(s),
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(_) => f.write_str("Target::Fixed"),
            Self::Sentinel(s) => f.debug_tuple("Target::Sentinel").field(s).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        assert!(SentinelUrl::parse("redis://h:1/", "x").unwrap().is_none());
        let u = SentinelUrl::parse("redis+sentinel://:pw@a:1,b,c:3/main/2", "x")
            .unwrap()
            .unwrap();
        assert_eq!(u.name, "main");
        assert_eq!(u.sentinels.len(), 3);
        assert_eq!(u.sentinels[1].addr().to_string(), "b:26379");
        assert_eq!(u.sentinels[0].redis_settings().password(), None);
        let node = u.node("10.0.0.9", 6380).unwrap();
        assert_eq!(node.addr().to_string(), "10.0.0.9:6380");
        assert_eq!(node.redis_settings().password(), Some("pw"));
        assert_eq!(node.redis_settings().db(), 2);
        let tls = SentinelUrl::parse("rediss+sentinel://a:1/m", "x")
            .unwrap()
            .unwrap();
        assert!(matches!(
            tls.node("h", 7).unwrap().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        ));
        for bad in [
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/",
            "redis+sentinel://a:1,,b:2/m",
            "redis+sentinel://a:1/m/notadb",
            "redis+sentinel://a:notaport/m",
            "redis+sentinel://a:1/m?x=1",
        ] {
            let e = SentinelUrl::parse(bad, bad).unwrap_err();
            assert!(e.is_invalid_input(), "{bad}: {e}");
        }
    }

    #[test]
    fn events_name_their_master() {
        assert!(names_master(
            "+switch-master",
            "main 127.0.0.1 1 127.0.0.1 2",
            "main"
        ));
        assert!(!names_master(
            "+switch-master",
            "other 127.0.0.1 1 127.0.0.1 2",
            "main"
        ));
        assert!(names_master(
            "+promoted-slave",
            "slave 127.0.0.1:2 127.0.0.1 2 @ main 127.0.0.1 1",
            "main"
        ));
        assert!(names_master(
            "+selected-slave",
            "slave 127.0.0.1:2 127.0.0.1 2 @ main 127.0.0.1 1",
            "main"
        ));
        assert!(!names_master("+sdown", "master main 127.0.0.1 1", "main"));
    }

    #[test]
    fn views_take_the_epoch() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let addr = Value::Array(vec![bulk("10.0.0.2"), bulk("6380")]);
        let master = Value::Array(vec![
            bulk("name"),
            bulk("m"),
            bulk("config-epoch"),
            bulk("7"),
        ]);
        let view = parse_view(&addr, &master).unwrap();
        assert_eq!((view.epoch, view.port, view.promoting), (7, 6380, false));
        assert_eq!(view.host, "10.0.0.2");
        assert_eq!(parse_view(&Value::Nil, &master), None);
        // Leading a failover, the promotion not confirmed: still its own
        // address.
        let leading = |ip: &str| {
            Value::Array(
                [
                    ("ip", ip),
                    ("port", "6380"),
                    ("flags", "master,failover_in_progress"),
                    ("config-epoch", "7"),
                ]
                .iter()
                .flat_map(|(k, v)| [bulk(k), bulk(v)])
                .collect(),
            )
        };
        assert!(parse_view(&addr, &leading("10.0.0.2")).unwrap().promoting);
        assert!(!parse_view(&addr, &leading("10.0.0.1")).unwrap().promoting);
    }
}
