//! A private Sentinel-managed Redis for tests: a primary, its replicas and
//! three sentinels (`redis-server <config> --sentinel`, quorum 2), all on
//! free loopback ports (never 6379), killed on drop. Every wait is bounded.
//!
//! Faults: [`failover`](RedisSentinel::failover) (`SENTINEL FAILOVER`, the
//! graceful one), [`kill_primary`](RedisSentinel::kill_primary) (SIGKILL,
//! then the sentinels' own failover), and, with
//! [`start_stallable`](RedisSentinel::start_stallable), a replica whose link
//! to the primary runs through the [fault proxy](crate::proxy), so that
//! replication to the replica that will be promoted can be stalled.
//!
//! Needs `redis-server` built with Sentinel (Debian's is; the
//! `redis-sentinel` package only adds a service around the same binary).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::proxy::FaultProxy;
use crate::redis::{RedisServer, answering, command_on, free_port, ping};
use crate::tls::ServerTls;

/// The name the sentinels monitor the primary by.
pub const MASTER_NAME: &str = "lockyard-primary";

/// How long the topology may take to form (replicas synced, sentinels
/// knowing each other) and a failover to finish: a sentinel needs
/// `down-after` (2 s) to see a killed primary down, then an election, a
/// promotion and the replicas' reconfiguration, each step observed on its
/// 1 s `INFO` period; 30 s leaves room for a loaded 2-core machine.
pub const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// How long a sentinel waits without an answer before it holds the primary
/// down. Long enough that a busy CI machine does not fail over by itself.
const DOWN_AFTER_MS: u32 = 2000;

/// A primary, its replicas and three sentinels.
#[derive(Debug)]
pub struct RedisSentinel {
    /// The data nodes; the first was started as the primary.
    servers: Vec<RedisServer>,
    sentinels: Vec<SentinelNode>,
    /// The proxy on the first replica's link, for [`start_stallable`](Self::start_stallable).
    proxy: Option<FaultProxy>,
    tls: Option<ServerTls>,
}

/// One `redis-server --sentinel` process.
#[derive(Debug)]
struct SentinelNode {
    port: u16,
    child: Option<Child>,
    dir: PathBuf,
    tls: Option<ServerTls>,
}

impl RedisSentinel {
    /// A primary with `replicas` replicas, all synced, and three sentinels
    /// that know them all and each other.
    pub fn start(replicas: usize) -> Self {
        Self::build(replicas, false, None)
    }

    /// As [`start`](Self::start), every node and sentinel speaking TLS only
    /// (replication and the sentinels' links too); [`url`](Self::url) is
    /// `rediss+sentinel://`.
    pub fn start_tls(replicas: usize, tls: &ServerTls) -> Self {
        Self::build(replicas, false, Some(tls.clone()))
    }

    /// A primary and one replica whose replication link runs through a
    /// [`FaultProxy`] ([`stall_replication`](Self::stall_replication)); the
    /// replica is the only one a failover can promote.
    pub fn start_stallable() -> Self {
        Self::build(1, true, None)
    }

    fn build(replicas: usize, proxied: bool, tls: Option<ServerTls>) -> Self {
        let primary = RedisServer::start_tls_with(tls.clone(), |_, _| Vec::new());
        let proxy = proxied.then(|| FaultProxy::start(primary.port()));
        let upstream = proxy.as_ref().map_or(primary.port(), FaultProxy::port);
        let mut servers = vec![primary];
        for _ in 0..replicas {
            let replica = RedisServer::start_tls_with(tls.clone(), |_, _| {
                let mut args = vec![
                    "--replicaof".to_owned(),
                    "127.0.0.1".to_owned(),
                    upstream.to_string(),
                ];
                if tls.is_some() {
                    args.extend(["--tls-replication".to_owned(), "yes".to_owned()]);
                }
                args
            });
            servers.push(replica);
        }
        let primary_port = servers[0].port();
        // A sentinel "fixes" a replica that replicates through another
        // address than the primary's (the proxy) after `failover-timeout`;
        // otherwise keep it short: a failed election is retried only after
        // twice that.
        let failover_timeout_ms = if proxied { 60_000 } else { 5_000 };
        let sentinels = (0..3)
            .map(|_| SentinelNode::start(primary_port, tls.as_ref(), failover_timeout_ms))
            .collect();
        let topology = Self {
            servers,
            sentinels,
            proxy,
            tls,
        };
        topology.wait_formed(primary_port, replicas);
        topology
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/<name>`
    /// (`rediss+sentinel://` for TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("{scheme}+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The primary's port as the live sentinels agree on it now (the one
    /// with the highest configuration epoch).
    ///
    /// # Panics
    ///
    /// If no sentinel answers.
    pub fn primary_port(&self) -> u16 {
        self.sentinel_views()
            .into_iter()
            .max_by_key(|&(epoch, _)| epoch)
            .map(|(_, port)| port)
            .expect("a sentinel answers")
    }

    /// The data node on `port`.
    ///
    /// # Panics
    ///
    /// If none of this topology's nodes is on `port`.
    pub fn server(&self, port: u16) -> &RedisServer {
        self.servers
            .iter()
            .find(|s| s.port() == port)
            .expect("a node of this topology")
    }

    /// The primary now (see [`primary_port`](Self::primary_port)).
    pub fn primary(&self) -> &RedisServer {
        self.server(self.primary_port())
    }

    /// Every data node but the primary, that is up.
    pub fn replicas(&self) -> Vec<&RedisServer> {
        let primary = self.primary_port();
        self.servers
            .iter()
            .filter(|s| s.port() != primary && s.is_up())
            .collect()
    }

    /// The fault proxy on the first replica's replication link (only with
    /// [`start_stallable`](Self::start_stallable)).
    ///
    /// # Panics
    ///
    /// If the topology was not started stallable.
    pub fn proxy(&self) -> &FaultProxy {
        self.proxy.as_ref().expect("started with start_stallable")
    }

    /// Holds back everything the primary sends the proxied replica for
    /// `for_how_long` from now (the replica's link stays up: it just
    /// receives nothing new), or releases it with `Duration::ZERO`.
    pub fn stall_replication(&self, for_how_long: Duration) {
        self.proxy().delay_replies(for_how_long);
    }

    /// `SENTINEL FAILOVER`, asked of a live sentinel, then waits (bounded
    /// by [`FAILOVER_LIMIT`]) until every sentinel names another primary
    /// that says it is one and serves the other replicas; returns the new
    /// primary's port. The old primary still takes writes for a while: the
    /// sentinels turn it into a replica only some seconds later (see
    /// [`wait_replicas`](Self::wait_replicas)).
    ///
    /// # Panics
    ///
    /// If the failover is refused or does not finish in time.
    pub fn failover(&self) -> u16 {
        let old = self.primary_port();
        let end = Instant::now() + FAILOVER_LIMIT;
        loop {
            let reply = self.ask_sentinel(&["SENTINEL", "FAILOVER", MASTER_NAME]);
            if reply.contains("OK") {
                break;
            }
            // -INPROG: an earlier failover is still being wrapped up;
            // -NOGOOD: no replica is fit yet (its INFO is not fresh).
            assert!(Instant::now() < end, "SENTINEL FAILOVER refused: {reply}");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_new_primary(old, self.servers.len() - 2)
    }

    /// Waits (bounded by [`FAILOVER_LIMIT`]) until the node on `port` has
    /// `replicas` replicas online.
    ///
    /// # Panics
    ///
    /// If it does not in time.
    pub fn wait_replicas(&self, port: u16, replicas: usize) {
        let end = Instant::now() + FAILOVER_LIMIT;
        let node = self.server(port);
        while online_replicas(node) < replicas {
            assert!(
                Instant::now() < end,
                "{port} has not {replicas} replicas online after {FAILOVER_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the primary (SIGKILL, as a crash) and returns its port. The
    /// sentinels fail over by themselves: see
    /// [`wait_new_primary`](Self::wait_new_primary).
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary_port();
        if let Some(s) = self.servers.iter_mut().find(|s| s.port() == port) {
            s.stop();
        }
        port
    }

    /// Waits (bounded by [`FAILOVER_LIMIT`]) until every live sentinel names
    /// a primary other than `old`, that node answers `ROLE` as a master and
    /// has `replicas` replicas online; returns its port.
    ///
    /// # Panics
    ///
    /// If that does not happen in time.
    pub fn wait_new_primary(&self, old: u16, replicas: usize) -> u16 {
        let end = Instant::now() + FAILOVER_LIMIT;
        loop {
            let views = self.sentinel_views();
            let agreed = views.first().map(|&(_, p)| p);
            if let Some(port) = agreed
                && port != old
                && views.len() == self.sentinels.len()
                && views.iter().all(|&(_, p)| p == port)
                && let Some(node) = self.servers.iter().find(|s| s.port() == port)
                && node.command(&["ROLE"]).starts_with("master")
                && online_replicas(node) >= replicas
            {
                return port;
            }
            assert!(
                Instant::now() < end,
                "no new primary after {FAILOVER_LIMIT:?}: sentinels say {views:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `args` to the first sentinel that answers.
    ///
    /// # Panics
    ///
    /// If none answers.
    pub fn ask_sentinel(&self, args: &[&str]) -> String {
        for s in &self.sentinels {
            if s.is_up() {
                return s.command(args);
            }
        }
        panic!("no sentinel answers")
    }

    /// `(config epoch, primary port)` from each live sentinel.
    fn sentinel_views(&self) -> Vec<(u64, u16)> {
        self.sentinels
            .iter()
            .filter(|s| s.is_up())
            .filter_map(|s| {
                let fields = s.command(&["SENTINEL", "MASTER", MASTER_NAME]);
                let addr = s.command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME]);
                let epoch = field(&fields, "config-epoch")?.parse().ok()?;
                let port = addr.lines().nth(1)?.trim().parse().ok()?;
                Some((epoch, port))
            })
            .collect()
    }

    /// Waits until the replicas are synced and every sentinel knows the
    /// primary, its replicas and the two other sentinels.
    fn wait_formed(&self, primary: u16, replicas: usize) {
        let end = Instant::now() + FAILOVER_LIMIT;
        let primary = self.server(primary);
        for replica in &self.servers[1..] {
            while !primary.replicates_to(replica) {
                assert!(
                    Instant::now() < end,
                    "replica {} did not sync with {}",
                    replica.port(),
                    primary.port()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        loop {
            let formed = self.sentinels.iter().all(|s| {
                let fields = s.command(&["SENTINEL", "MASTER", MASTER_NAME]);
                field(&fields, "num-slaves").and_then(|n| n.parse::<usize>().ok()) == Some(replicas)
                    && field(&fields, "num-other-sentinels").and_then(|n| n.parse().ok())
                        == Some(self.sentinels.len() - 1)
                    && field(&fields, "flags") == Some("master".to_owned())
            });
            if formed {
                return;
            }
            assert!(
                Instant::now() < end,
                "the sentinels did not find each other and the replicas in {FAILOVER_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The value after `name` in a flat field/value reply (one per line).
fn field(reply: &str, name: &str) -> Option<String> {
    let mut lines = reply.lines();
    while let Some(l) = lines.next() {
        if l == name {
            return lines.next().map(str::to_owned);
        }
    }
    None
}

/// How many replicas `node`'s `INFO replication` lists as online.
fn online_replicas(node: &RedisServer) -> usize {
    node.command(&["INFO", "replication"])
        .lines()
        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
        .count()
}

impl SentinelNode {
    fn start(primary: u16, tls: Option<&ServerTls>, failover_timeout_ms: u32) -> Self {
        let mut last_err = String::new();
        for _ in 0..10 {
            let port = free_port();
            let dir = crate::scratch_dir("sentinel", port);
            let mut node = Self {
                port,
                child: None,
                dir,
                tls: tls.cloned(),
            };
            match node.spawn(primary, failover_timeout_ms) {
                Ok(()) => return node,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start a sentinel: {last_err}");
    }

    fn spawn(&mut self, primary: u16, failover_timeout_ms: u32) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let mut conf = vec![
            "bind 127.0.0.1".to_owned(),
            format!("dir {}", self.dir.display()),
        ];
        match &self.tls {
            Some(tls) => {
                // `--name value` pairs as config lines.
                let args = tls.server_args(self.port);
                for pair in args.chunks(2) {
                    if let [k, v] = pair {
                        conf.push(format!("{} {v}", k.trim_start_matches("--")));
                    }
                }
                conf.push("tls-replication yes".to_owned());
            }
            None => conf.push(format!("port {}", self.port)),
        }
        conf.extend([
            format!("sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2"),
            format!("sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}"),
            format!("sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}"),
            format!("sentinel parallel-syncs {MASTER_NAME} 4"),
        ]);
        let path = self.dir.join("sentinel.conf");
        std::fs::write(&path, conf.join("\n") + "\n").map_err(|e| e.to_string())?;
        let child = Command::new("redis-server")
            .arg(&path)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server --sentinel (is it installed?): {e}"))?;
        self.child = Some(answering(
            child,
            "the sentinel",
            self.port,
            Duration::from_secs(10),
            || self.is_up(),
        )?);
        Ok(())
    }

    fn is_up(&self) -> bool {
        match &self.tls {
            Some(_) => self.command(&["PING"]) == "PONG",
            None => ping(self.port),
        }
    }

    fn command(&self, args: &[&str]) -> String {
        command_on(self.port, self.tls.as_ref(), args)
    }
}

impl Drop for SentinelNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
