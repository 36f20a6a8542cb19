//! Private Postgres servers for tests and benches.
//!
//! [`PgServer::start`] makes a cluster with `initdb` (once per machine and
//! Postgres version: later servers copy a cached template, which takes a
//! fraction of initdb's time), starts it with `pg_ctl` on a free loopback
//! port (never 5432) with its socket in its own directory, and stops it
//! (`pg_ctl stop -m immediate`, as a crash) and removes it when the value
//! is dropped. It never uses the machine's own server.
//!
//! Postgres refuses to run as root; CI runs as root, so there every
//! Postgres program runs as the `postgres` user (`runuser -u postgres --`),
//! in a directory that user owns. The binaries are looked up on `PATH`,
//! then under Debian's `/usr/lib/postgresql/<version>/bin`.
//!
//! The superuser is `postgres` with the password [`PASSWORD`]: connections
//! over TCP must give it (scram-sha-256), so a wrong password is refused.
//! [`PgServer::admin`] connects through the Unix socket (trusted), so it
//! works whatever TCP demands.
//!
//! [`PgServer::start_tls`] starts one with `ssl = on` and the certificate
//! of a [`ServerTls`] (copied into the server's directory, the key made
//! the server user's with mode 0600, as Postgres insists); a mutual one
//! also has the CA as `ssl_ca_file` and a `pg_hba.conf` that admits only
//! `hostssl` connections with a client certificate the CA signed
//! (`clientcert=verify-ca`).

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::redis::free_port;
use crate::tls::ServerTls;

/// The superuser's password.
pub const PASSWORD: &str = "lockyard-test";

/// How long a server may take to start.
const STARTUP: Duration = Duration::from_secs(30);

/// A private Postgres server on 127.0.0.1.
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    /// The scratch directory: `data/`, the socket, the log.
    dir: PathBuf,
    bin: PathBuf,
    running: bool,
    /// The TLS set-up, if any.
    tls: Option<ServerTls>,
}

impl PgServer {
    /// Starts a server on a free port (retrying on a port clash).
    ///
    /// # Panics
    ///
    /// If Postgres is not installed or will not start.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a server that speaks TLS (`ssl = on`) with `tls`'s
    /// certificate; a [`ServerTls::mutual`] one accepts only `hostssl`
    /// connections presenting a client certificate its CA signed. TCP
    /// clients without TLS are still admitted by a non-mutual one.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start), or if the files cannot be copied.
    pub fn start_tls(tls: &ServerTls) -> Self {
        Self::start_with(Some(tls.clone()))
    }

    fn start_with(tls: Option<ServerTls>) -> Self {
        let bin = bin_dir();
        let template = template(&bin);
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            if port == 5432 {
                continue;
            }
            let dir = crate::scratch_dir("pg", port);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create the server's directory");
            let data = dir.join("data");
            let copied = Command::new("cp")
                .arg("-a")
                .arg(&template)
                .arg(&data)
                .status()
                .expect("run cp");
            assert!(copied.success(), "copy the template cluster");
            if let Some(tls) = &tls {
                install_tls(&dir, tls);
            }
            give_to_postgres(&dir);
            if tls.is_some() {
                set_mode(&dir.join("server.key"), 0o600);
            }
            let mut server = PgServer {
                port,
                dir,
                bin: bin.clone(),
                running: false,
                tls: tls.clone(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start postgres: {last_err}");
    }

    /// `postgres://postgres:<PASSWORD>@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        self.url_as("postgres", PASSWORD)
    }

    /// A URL for `user` with `password` on database `postgres`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of its Unix socket (and of its data and log).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the server abruptly (`pg_ctl stop -m immediate`: every backend
    /// is killed, as in a crash). Committed data survives (commits are
    /// synchronous; only the fsync to disk is skipped, which matters for a
    /// machine crash, not a server crash).
    pub fn stop(&mut self) {
        if self.running {
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-t", "20"]);
            self.running = false;
        }
    }

    /// Stops the server (as [`stop`](Self::stop)) and starts it again on
    /// the same port and data (session advisory locks are gone, tables
    /// stay).
    ///
    /// # Panics
    ///
    /// If it does not come back within 30 s.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + STARTUP;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("could not restart postgres on {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Whether the server accepts TCP connections now.
    pub fn is_up(&self) -> bool {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port);
        TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok()
    }

    /// A superuser connection for a test's own queries, through the Unix
    /// socket (its connection task is spawned on the current runtime).
    ///
    /// # Panics
    ///
    /// If it cannot connect.
    pub async fn admin(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect to the test postgres");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// How many advisory locks are granted now (any key, any session).
    ///
    /// # Panics
    ///
    /// If the query fails.
    pub async fn advisory_locks_granted(&self) -> i64 {
        let admin = self.admin().await;
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
                &[],
            )
            .await
            .expect("query pg_locks");
        row.get(0)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=off -c full_page_writes=off \
             -c max_connections=200 -c shared_buffers=16MB",
            self.port,
            self.dir.display()
        );
        if let Some(tls) = &self.tls {
            let dir = self.dir.display();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key"
            ));
            if tls.mutual {
                options.push_str(&format!(
                    " -c ssl_ca_file={dir}/ca.crt -c hba_file={dir}/pg_hba.conf"
                ));
            }
        }
        let log = self.dir.join("log");
        let log = log.to_string_lossy().into_owned();
        let out = self.pg_ctl(&["start", "-w", "-t", "30", "-l", &log, "-o", &options])?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            return Err(format!(
                "pg_ctl start on {}: {}{}",
                self.port,
                String::from_utf8_lossy(&out.stderr),
                log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            ));
        }
        self.running = true;
        let deadline = Instant::now() + STARTUP;
        while !self.is_up() {
            if Instant::now() > deadline {
                return Err("postgres did not accept connections in time".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output, String> {
        let data = self.dir.join("data");
        let mut all = vec!["-D".to_owned(), data.to_string_lossy().into_owned()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        as_postgres(&self.bin.join("pg_ctl"), &all)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run pg_ctl: {e}"))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain tokio-postgres client of `url` (no TLS), its connection task
/// spawned on the current runtime: for a test's or a bench's own queries.
///
/// # Panics
///
/// If it cannot connect.
pub async fn client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The directory holding `initdb` and `pg_ctl`: the one of `initdb` on
/// `PATH`, else the newest `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("initdb"))
            .find(|p| p.is_file())
    });
    if let Some(initdb) = on_path {
        let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        if let Some(dir) = real.parent() {
            return dir.to_owned();
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "initdb not found on PATH or under /usr/lib/postgresql/*/bin: install postgresql \
             (scripts/test-all.sh does)"
        ),
    }
}

/// A cluster made once with `initdb` per Postgres binary directory and
/// user, kept in the temporary directory and copied for every server. One
/// thread of a process makes it; the others wait for it.
fn template(bin: &Path) -> PathBuf {
    static TEMPLATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TEMPLATE.get_or_init(|| make_template(bin)).clone()
}

fn make_template(bin: &Path) -> PathBuf {
    let tag: String = bin
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let uid = rustix::process::getuid().as_raw();
    let dir = std::env::temp_dir().join(format!("lockyard-pg-template-{uid}{tag}"));
    if dir.join("PG_VERSION").is_file() {
        return dir;
    }
    // Made aside and renamed into place, so that test binaries starting
    // together never copy a half-made template.
    let work = std::env::temp_dir().join(format!(
        "lockyard-pg-template-{uid}{tag}.{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("create the template directory");
    let pwfile = work.join("pwfile");
    std::fs::write(&pwfile, PASSWORD).expect("write the password file");
    give_to_postgres(&work);
    let data = work.join("data");
    let out = as_postgres(
        &bin.join("initdb"),
        &[
            "-D".to_owned(),
            data.to_string_lossy().into_owned(),
            "-U".to_owned(),
            "postgres".to_owned(),
            "--auth-local=trust".to_owned(),
            "--auth-host=scram-sha-256".to_owned(),
            format!("--pwfile={}", pwfile.display()),
            "--no-sync".to_owned(),
            "--encoding=UTF8".to_owned(),
            "--locale=C".to_owned(),
        ],
    )
    .stdin(Stdio::null())
    .output()
    .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if std::fs::rename(&data, &dir).is_err() {
        // Another process made it first.
        assert!(dir.join("PG_VERSION").is_file(), "template cluster missing");
    }
    let _ = std::fs::remove_dir_all(&work);
    dir
}

/// `program args`, as the `postgres` user when this process is root.
pub(crate) fn as_postgres(program: &Path, args: &[String]) -> Command {
    if rustix::process::getuid().is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program).args(args);
        cmd
    } else {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    }
}

/// Copies `tls`'s certificate, key and CA into `dir` (where the server
/// user may read them) and, for a mutual server, writes its `pg_hba.conf`.
fn install_tls(dir: &Path, tls: &ServerTls) {
    let copy = |from: &Path, to: &str| {
        std::fs::copy(from, dir.join(to)).expect("copy a TLS file for postgres");
    };
    copy(&tls.cert.0, "server.crt");
    copy(&tls.cert.1, "server.key");
    copy(&tls.ca, "ca.crt");
    if tls.mutual {
        std::fs::write(
            dir.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n",
        )
        .expect("write pg_hba.conf");
    }
}

/// `chmod mode path`.
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .expect("chmod the server's key");
}

/// Makes `dir` (and what is in it) the `postgres` user's when this process
/// is root.
pub(crate) fn give_to_postgres(dir: &Path) {
    if !rustix::process::getuid().is_root() {
        return;
    }
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .expect("run chown");
    assert!(
        status.success(),
        "chown {} to postgres (does the user exist?)",
        dir.display()
    );
}
