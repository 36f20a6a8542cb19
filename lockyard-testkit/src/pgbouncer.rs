//! A private PgBouncer in front of a [`PgServer`], for the tests that show
//! what a pooler does to session advisory locks.
//!
//! [`PgBouncer::start`] writes a configuration into a directory of its own
//! (`auth_type = any`: every client is logged in to the server as the
//! superuser, with the password in the configuration), runs `pgbouncer` in
//! the foreground on a free loopback port (never 5432 or 6432), and kills
//! it and removes the directory when the value is dropped. PgBouncer
//! refuses to run as root: under root it runs as the `postgres` user, as
//! the kit's Postgres programs do. The binary is `pgbouncer` on `PATH`,
//! else Debian's `/usr/sbin/pgbouncer` (`scripts/test-all.sh` installs the
//! package when it is missing).

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postgres::{PASSWORD, PgServer, give_to_postgres};
use crate::redis::free_port;

/// How long PgBouncer may take to listen.
const STARTUP: Duration = Duration::from_secs(10);

/// PgBouncer's `pool_mode`: when a server connection goes back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// When the client disconnects: a client keeps one server session.
    Session,
    /// After each transaction (a statement outside one is a transaction).
    Transaction,
    /// After each statement; multi-statement transactions are refused.
    Statement,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

/// A private PgBouncer on 127.0.0.1, its one database `postgres` pointing at
/// a [`PgServer`].
#[derive(Debug)]
pub struct PgBouncer {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl PgBouncer {
    /// Starts PgBouncer in `mode` with 20 server connections per pool.
    ///
    /// # Panics
    ///
    /// If PgBouncer is not installed or does not listen within 10 s.
    pub fn start(server: &PgServer, mode: PoolMode) -> Self {
        Self::start_sized(server, mode, 20)
    }

    /// Starts PgBouncer in `mode` with at most `pool_size` server
    /// connections (`default_pool_size`), retrying on a port clash.
    ///
    /// # Panics
    ///
    /// If PgBouncer is not installed or does not listen within 10 s.
    pub fn start_sized(server: &PgServer, mode: PoolMode, pool_size: usize) -> Self {
        let bin = binary();
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            if port == 5432 || port == 6432 {
                continue;
            }
            let dir = crate::scratch_dir("pgbouncer", port);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create PgBouncer's directory");
            let config = dir.join("pgbouncer.ini");
            std::fs::write(
                &config,
                config_text(server.port(), port, mode, pool_size, &dir),
            )
            .expect("write pgbouncer.ini");
            give_to_postgres(&dir);
            match spawn(&bin, &config, port) {
                Ok(child) => return PgBouncer { port, dir, child },
                Err(e) => {
                    let log =
                        std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
                    last_err = format!(
                        "{e}; log: {}",
                        log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                    );
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        panic!("could not start pgbouncer: {last_err}");
    }

    /// The installed PgBouncer's version (`pgbouncer --version`), as
    /// `(major, minor, patch)`.
    ///
    /// # Panics
    ///
    /// If PgBouncer is not installed or does not say its version.
    pub fn version() -> (u32, u32, u32) {
        let out = Command::new(binary())
            .arg("--version")
            .output()
            .expect("run pgbouncer --version");
        let text = String::from_utf8_lossy(&out.stdout);
        // "PgBouncer 1.18.0" on the first line.
        let numbers: Vec<u32> = text
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .split('.')
            .map(|n| n.parse().unwrap_or(0))
            .collect();
        match numbers[..] {
            [major, minor, patch, ..] => (major, minor, patch),
            [major, minor] => (major, minor, 0),
            _ => panic!("pgbouncer --version said {text:?}"),
        }
    }

    /// `postgres://postgres:<PASSWORD>@127.0.0.1:<port>/postgres` (the
    /// password is not asked for; the server's is in the configuration).
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A plain client through the pooler (its connection task spawned on
    /// the current runtime), for a test's own traffic.
    ///
    /// # Panics
    ///
    /// If it cannot connect.
    pub async fn client(&self) -> tokio_postgres::Client {
        crate::postgres::client(&self.url()).await
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What PgBouncer saw, for the failing test's output.
            let log = std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("pgbouncer log (last lines):");
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config_text(
    server_port: u16,
    port: u16,
    mode: PoolMode,
    pool_size: usize,
    dir: &Path,
) -> String {
    format!(
        "[databases]\n\
         postgres = host=127.0.0.1 port={server_port} dbname=postgres user=postgres \
         password={PASSWORD}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = any\n\
         pool_mode = {mode}\n\
         default_pool_size = {pool_size}\n\
         max_client_conn = 500\n\
         logfile = {log}\n\
         ignore_startup_parameters = extra_float_digits\n",
        mode = mode.as_str(),
        log = dir.join("pgbouncer.log").display(),
    )
}

/// Runs PgBouncer in the foreground (as `postgres` under root) and waits,
/// bounded by [`STARTUP`], until it accepts connections.
fn spawn(bin: &Path, config: &Path, port: u16) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin);
    cmd.arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if rustix::process::getuid().is_root() {
        // Not through runuser: it would stay as the parent, and killing
        // it would leave PgBouncer running.
        let (uid, gid) = postgres_ids()?;
        cmd.uid(uid).gid(gid).current_dir("/");
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("run {}: {e}", bin.display()))?;
    let deadline = Instant::now() + STARTUP;
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("pgbouncer exited: {status}"));
        }
        if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "pgbouncer did not listen on {port} within {STARTUP:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `postgres` user's uid and gid, from `/etc/passwd`.
fn postgres_ids() -> Result<(u32, u32), String> {
    let passwd =
        std::fs::read_to_string("/etc/passwd").map_err(|e| format!("read /etc/passwd: {e}"))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres"))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .ok_or_else(|| "no postgres user in /etc/passwd (install postgresql)".to_owned())
}

/// `pgbouncer` on `PATH`, else `/usr/sbin/pgbouncer`.
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("pgbouncer"))
            .find(|p| p.is_file())
    });
    let fallback = PathBuf::from("/usr/sbin/pgbouncer");
    match on_path {
        Some(p) => p,
        None if fallback.is_file() => fallback,
        None => panic!(
            "pgbouncer not found on PATH or in /usr/sbin: install it (Debian package pgbouncer; \
             scripts/test-all.sh does)"
        ),
    }
}

/// A private Postgres and a PgBouncer in `mode` with `pool_size` server
/// connections in front of it, started on a blocking thread (starting
/// them waits for their ports).
pub async fn start_pair(mode: PoolMode, pool_size: usize) -> (PgServer, PgBouncer) {
    tokio::task::spawn_blocking(move || {
        let server = PgServer::start();
        let bouncer = PgBouncer::start_sized(&server, mode, pool_size);
        (server, bouncer)
    })
    .await
    .expect("start postgres and pgbouncer")
}

/// Asserts that `result` is lockyard's refusal of a pooler that cannot
/// hold session locks: [`lockyard::LockError::Unsupported`], naming
/// PgBouncer and session pooling; `what` names the attempt in the panic.
pub fn assert_refused_as_pooled<T: std::fmt::Debug>(
    result: Result<T, lockyard::LockError>,
    what: &str,
) {
    match result {
        Err(e @ lockyard::LockError::Unsupported { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("PgBouncer") && text.contains("session pooling"),
                "{what}: {text}"
            );
        }
        other => panic!("{what}: expected the pooler to be refused, got {other:?}"),
    }
}
