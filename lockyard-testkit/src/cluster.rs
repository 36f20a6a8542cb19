//! A private Redis Cluster for tests and benches: `masters` masters (and
//! `replicas` replicas of each) on free loopback ports, created with
//! `redis-cli --cluster create`, torn down on drop. Every wait is bounded.
//!
//! Needs `redis-server` and `redis-cli` (scripts/test-all.sh installs them).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::{RedisServer, free_port};
use crate::tls::ServerTls;

/// How long the cluster may take to agree on its slots.
const FORM: Duration = Duration::from_secs(60);

/// A private cluster.
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes; the first `masters` were created as masters.
    pub nodes: Vec<RedisServer>,
    masters: usize,
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each, `cluster_state:ok`
    /// on every node.
    pub fn start(masters: usize, replicas: usize) -> Self {
        Self::start_tls_opt(masters, replicas, None)
    }

    /// As [`start`](Self::start), every node speaking TLS only: clients,
    /// the cluster bus (`--tls-cluster yes`) and replication
    /// (`--tls-replication yes`). [`url`](Self::url) is `rediss://`,
    /// [`cluster_url`](Self::cluster_url) `rediss+cluster://`.
    pub fn start_tls(masters: usize, replicas: usize, tls: &ServerTls) -> Self {
        Self::start_tls_opt(masters, replicas, Some(tls))
    }

    fn start_tls_opt(masters: usize, replicas: usize, tls: Option<&ServerTls>) -> Self {
        let total = masters * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..total)
            .map(|_| {
                RedisServer::start_tls_with(tls.cloned(), |_, dir| {
                    let mut args: Vec<String> = if tls.is_some() {
                        vec![
                            "--tls-cluster".into(),
                            "yes".into(),
                            "--tls-replication".into(),
                            "yes".into(),
                        ]
                    } else {
                        Vec::new()
                    };
                    args.extend::<[String; 10]>([
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        dir.join("nodes.conf").display().to_string(),
                        "--cluster-node-timeout".into(),
                        "1000".into(),
                        "--cluster-port".into(),
                        free_port().to_string(),
                        // A master whose replicas all died still serves.
                        "--cluster-require-full-coverage".into(),
                        "no".into(),
                    ]);
                    args
                })
            })
            .collect();
        let mut args: Vec<String> = tls.map(ServerTls::cli_args).unwrap_or_default();
        args.extend(["--cluster".into(), "create".into()]);
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())));
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = run_bounded(
            Command::new("redis-cli").args(&args),
            Duration::from_secs(60),
        );
        assert!(out.0, "redis-cli --cluster create failed: {}", out.1);
        let cluster = Self { nodes, masters };
        cluster.wait_ok();
        cluster
    }

    /// Waits (bounded) until every live node says `cluster_state:ok` and
    /// knows every slot.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + FORM;
        loop {
            let ok = self.nodes.iter().filter(|n| n.is_up()).all(|n| {
                let info = n.command(&["CLUSTER", "INFO"]);
                let replication = n.command(&["INFO", "replication"]);
                // A replica counts once its initial sync is done.
                let synced = !replication.contains("role:slave")
                    || (replication.contains("master_link_status:up")
                        && replication.contains("master_sync_in_progress:0"));
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && synced
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not reach cluster_state:ok in {FORM:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A seed URL (the first node's).
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn cluster_url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let scheme = if self.nodes[0].tls().is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}+cluster://{}/", hosts.join(","))
    }

    /// The node whose port is `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .expect("a node of this cluster")
    }

    /// The port of the master serving `key` now (asked of a live node).
    pub fn master_of(&self, key: &str) -> u16 {
        let slot = self.slot_of(key);
        let asker = self.nodes.iter().find(|n| n.is_up()).expect("a live node");
        let nodes = asker.command(&["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for range in &f[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>())
                    && a <= slot
                    && slot <= b
                {
                    let port = f[1].split('@').next().unwrap().rsplit(':').next().unwrap();
                    return port.parse().unwrap();
                }
            }
        }
        panic!("no master serves slot {slot}:\n{nodes}");
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        let asker = self.nodes.iter().find(|n| n.is_up()).expect("a live node");
        let r = asker.command(&["CLUSTER", "KEYSLOT", key]);
        r.trim_start_matches(':').parse().expect("a slot number")
    }

    /// A replica's port for the master on `master_port`.
    ///
    /// # Panics
    ///
    /// If it has none.
    pub fn replica_of(&self, master_port: u16) -> u16 {
        match self.replicas_of(master_port).first() {
            Some(&port) => port,
            None => panic!("no replica of {master_port}"),
        }
    }

    /// The ports of every replica (up now) of the master on `master_port`.
    pub fn replicas_of(&self, master_port: u16) -> Vec<u16> {
        let id = self
            .node(master_port)
            .command(&["CLUSTER", "MYID"])
            .trim()
            .to_owned();
        let mut replicas = Vec::new();
        for n in &self.nodes {
            if n.port() == master_port || !n.is_up() {
                continue;
            }
            let role = n.command(&["ROLE"]);
            if role.starts_with("slave") || role.contains("slave") {
                let nodes = n.command(&["CLUSTER", "NODES"]);
                if nodes
                    .lines()
                    .any(|l| l.contains("myself") && l.contains(&id))
                {
                    replicas.push(n.port());
                }
            }
        }
        replicas
    }

    /// `(master ports, ...)`: the ports of the nodes that are masters now.
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_up() && n.command(&["ROLE"]).starts_with("master"))
            .map(|n| n.port())
            .collect()
    }

    /// Moves `slot` (with its keys) from the node on `from` to the node on
    /// `to`, the way `redis-cli --cluster reshard` does: IMPORTING /
    /// MIGRATING, MIGRATE of every key, then NODE on every master. With
    /// `pause_between`, sleeps after marking the slot migrating and before
    /// moving the keys (so a test can act mid-migration).
    pub fn migrate_slot(&self, slot: u16, from: u16, to: u16, pause_between: Duration) {
        self.begin_migration(slot, from, to);
        std::thread::sleep(pause_between);
        self.move_keys(slot, from, to);
        self.finish_migration(slot, to);
    }

    /// The first step of [`migrate_slot`](Self::migrate_slot): `to` imports
    /// `slot`, `from` migrates it; no key moved yet.
    pub fn begin_migration(&self, slot: u16, from: u16, to: u16) {
        let s = slot.to_string();
        let from_id = self.node(from).command(&["CLUSTER", "MYID"]);
        let to_id = self.node(to).command(&["CLUSTER", "MYID"]);
        let ok = |r: String| assert!(r.starts_with("+OK"), "migration step failed: {r}");
        ok(self
            .node(to)
            .command(&["CLUSTER", "SETSLOT", &s, "IMPORTING", from_id.trim()]));
        ok(self
            .node(from)
            .command(&["CLUSTER", "SETSLOT", &s, "MIGRATING", to_id.trim()]));
    }

    /// The second step: `MIGRATE` of every key of `slot` from `from` to
    /// `to` (bounded).
    pub fn move_keys(&self, slot: u16, from: u16, to: u16) {
        let s = slot.to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let keys = self
                .node(from)
                .command(&["CLUSTER", "GETKEYSINSLOT", &s, "100"]);
            let keys: Vec<&str> = keys
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('*'))
                .collect();
            if keys.is_empty() {
                break;
            }
            for k in keys {
                let r = self.node(from).command(&[
                    "MIGRATE",
                    "127.0.0.1",
                    &to.to_string(),
                    k,
                    "0",
                    "5000",
                    "REPLACE",
                ]);
                assert!(
                    r.starts_with("+OK") || r.starts_with("+NOKEY"),
                    "MIGRATE: {r}"
                );
            }
            assert!(Instant::now() < deadline, "migration did not finish");
        }
    }

    /// The last step: every master says `slot` is served by `to`.
    pub fn finish_migration(&self, slot: u16, to: u16) {
        let s = slot.to_string();
        let to_id = self.node(to).command(&["CLUSTER", "MYID"]);
        for n in &self.nodes {
            if n.is_up() && n.command(&["ROLE"]).starts_with("master") {
                let r = n.command(&["CLUSTER", "SETSLOT", &s, "NODE", to_id.trim()]);
                assert!(r.starts_with("+OK"), "migration step failed: {r}");
            }
        }
    }

    /// Makes the node on `port` tell clients to reach it on `announced`
    /// (a fault proxy's port, say): `CONFIG SET cluster-announce-port`, then
    /// waits (bounded) until every live node's `CLUSTER NODES` says so. The
    /// cluster bus is unaffected (its port is set apart).
    pub fn announce_port(&self, port: u16, announced: u16) {
        let r = self.node(port).command(&[
            "CONFIG",
            "SET",
            "cluster-announce-port",
            &announced.to_string(),
        ]);
        assert!(
            r.starts_with("+OK"),
            "CONFIG SET cluster-announce-port: {r}"
        );
        let deadline = Instant::now() + FORM;
        let needle = format!(":{announced}@");
        while !self
            .nodes
            .iter()
            .filter(|n| n.is_up())
            .all(|n| n.command(&["CLUSTER", "NODES"]).contains(&needle))
        {
            assert!(
                Instant::now() < deadline,
                "the cluster did not learn port {announced} for {port} in {FORM:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many masters it was created with.
    pub fn masters(&self) -> usize {
        self.masters
    }
}

/// Runs a command with a time limit: (success, stdout + stderr).
fn run_bounded(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn redis-cli (is it installed?)");
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.wait_with_output().expect("redis-cli output");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (out.status.success(), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (false, format!("timed out after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
