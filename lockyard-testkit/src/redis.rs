//! Private `redis-server` processes for tests and benches.
//!
//! [`RedisServer::start`] picks a free loopback port (never 6379), starts
//! `redis-server` on it without persistence, and waits (bounded) until it
//! answers `PING`. The server is killed when the value is dropped. Faults:
//! [`stop`](RedisServer::stop) / [`restart`](RedisServer::restart) on the
//! same port, [`pause`](RedisServer::pause) (`CLIENT PAUSE`), and raw
//! commands with [`command`](RedisServer::command) (e.g. `DEBUG SLEEP`).
//! [`start_on_cpu`](RedisServer::start_on_cpu) runs it under `taskset -c`,
//! for benches that keep the server and the client on CPUs of their own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::ServerTls;

/// How long a server may take to answer its first `PING`.
const STARTUP: Duration = Duration::from_secs(10);

/// A private redis-server on 127.0.0.1.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// Extra arguments (a Cluster node's), kept for restarts.
    extra: Vec<String>,
    /// TLS only, on `port` (see [`start_tls`](Self::start_tls)).
    tls: Option<ServerTls>,
    /// The one CPU it runs on (`taskset -c`), kept for restarts.
    cpu: Option<usize>,
}

impl RedisServer {
    /// Starts a server on a free port (retrying on a port clash).
    pub fn start() -> Self {
        Self::start_with(|_, _| Vec::new())
    }

    /// Starts a server on a free port with extra arguments, made from its
    /// port and scratch directory.
    pub fn start_with(extra: impl Fn(u16, &std::path::Path) -> Vec<String>) -> Self {
        Self::start_tls_with(None, extra)
    }

    /// Starts a server that speaks TLS only (`--port 0 --tls-port P`), set
    /// up as `tls` says; its [`url`](Self::url) is `rediss://`.
    /// [`command`](Self::command) and readiness go through `redis-cli
    /// --tls`.
    pub fn start_tls(tls: &ServerTls) -> Self {
        Self::start_tls_with(Some(tls.clone()), |_, _| Vec::new())
    }

    /// [`start_tls`](Self::start_tls) (or plain, for `None`) with extra
    /// arguments.
    pub fn start_tls_with(
        tls: Option<ServerTls>,
        extra: impl Fn(u16, &std::path::Path) -> Vec<String>,
    ) -> Self {
        Self::launch(tls, None, extra)
    }

    /// Starts a plain server pinned to the CPU `cpu` (started under
    /// `taskset -c <cpu>`, so every thread it makes stays there).
    pub fn start_on_cpu(cpu: usize) -> Self {
        Self::launch(None, Some(cpu), |_, _| Vec::new())
    }

    fn launch(
        tls: Option<ServerTls>,
        cpu: Option<usize>,
        extra: impl Fn(u16, &std::path::Path) -> Vec<String>,
    ) -> Self {
        let mut last_err = String::new();
        for _ in 0..10 {
            let port = free_port();
            let dir = crate::scratch_dir("redis", port);
            let mut server = RedisServer {
                port,
                child: None,
                extra: extra(port, &dir),
                dir,
                tls: tls.clone(),
                cpu,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    /// `redis://127.0.0.1:<port>/` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// How the server speaks TLS, if it does.
    pub fn tls(&self) -> Option<&ServerTls> {
        self.tls.as_ref()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (abruptly: SIGKILL, as a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh, empty server on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + STARTUP;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("could not restart redis-server on {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// `CLIENT PAUSE <ms> ALL`: the server answers nobody for `pause`.
    pub fn pause(&self, pause: Duration) {
        let reply = self.command(&["CLIENT", "PAUSE", &pause.as_millis().to_string(), "ALL"]);
        assert_eq!(reply, "+OK", "CLIENT PAUSE failed: {reply}");
    }

    /// Sends one command and returns the reply as text: integers `:n`,
    /// simple strings `+OK`, errors `-ERR ...`, bulk strings their payload
    /// (`$-1` for nil), flat arrays their elements (rendered as above) one
    /// per line.
    ///
    /// On a TLS server, the reply as `redis-cli` prints it (simple strings
    /// and errors without their `+`/`-`, but `OK` is given as `+OK`).
    pub fn command(&self, args: &[&str]) -> String {
        command_on(self.port, self.tls.as_ref(), args)
    }

    /// Sends `commands` in order on one connection (a `WAIT` among them
    /// counts the writes before it) and returns their replies, each as
    /// [`command`](Self::command) renders it (flat replies only).
    ///
    /// On a TLS server, `redis-cli --tls` reads them from its input: its
    /// output lines, one per flat reply, as it prints them.
    pub fn commands(&self, commands: &[&[&str]]) -> Vec<String> {
        if let Some(tls) = &self.tls {
            let input: String = commands.iter().map(|c| c.join(" ") + "\n").collect();
            return cli_lines(self.port, tls, &input);
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to test redis");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = String::new();
        for args in commands {
            req.push_str(&format!("*{}\r\n", args.len()));
            for a in *args {
                req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
        }
        s.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        (0..commands.len())
            .map(|_| {
                let line = read_line(&mut r);
                read_value(&mut r, line)
            })
            .collect()
    }

    /// Sends `READONLY` and then `args` on one connection (a Cluster
    /// replica answers reads only after `READONLY`); returns the reply to
    /// `args` as [`command`](Self::command) does (flat replies only).
    pub fn readonly_command(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to test redis");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = String::from("*1\r\n$8\r\nREADONLY\r\n");
        req.push_str(&format!("*{}\r\n", args.len()));
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let ok = read_line(&mut r);
        assert!(ok.starts_with("+OK"), "READONLY: {ok}");
        let line = read_line(&mut r);
        read_value(&mut r, line)
    }

    /// Whether this server (a master) streams its writes to `replica` now,
    /// so that a `WAIT` counts it: the replica has loaded the master's
    /// snapshot (its link is up), and then a write made on the master is
    /// confirmed by `WAIT 1` within 300 ms. Poll it until it says so.
    ///
    /// Neither the replica's view nor the master's `INFO` tells: a master
    /// holds a replica's stream back until the replica's first
    /// acknowledgement after the snapshot, and sets aside one that arrives
    /// before it reaped the snapshot's child (it reaps on its cron tick);
    /// the stream then waits for the replica's next (once a second), while
    /// the replica shows its link up at the snapshot's offset and the
    /// master shows it `state=online`. Seen in CI: a `WAIT` right after
    /// then timed out. Only a write made after the replica loaded the
    /// snapshot, and confirmed, proves the stream flows.
    pub fn replicates_to(&self, replica: &RedisServer) -> bool {
        let loaded = replica.command(&["INFO", "replication"]);
        if !loaded.contains("master_link_status:up") {
            return false;
        }
        let replies = self.commands(&[
            &["INCR", "lockyard-testkit:replication-probe"],
            &["WAIT", "1", "300"],
        ]);
        replies
            .last()
            .is_some_and(|n| n.trim_start_matches(':').trim() == "1")
    }

    /// Whether the server answers `PING` now.
    pub fn is_up(&self) -> bool {
        match &self.tls {
            Some(tls) => cli_command(self.port, tls, &["PING"]) == "PONG",
            None => ping(self.port),
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let listen = match &self.tls {
            Some(tls) => tls.server_args(self.port),
            None => vec!["--port".into(), self.port.to_string()],
        };
        // taskset sets the affinity and execs redis-server: same pid.
        let mut cmd = match self.cpu {
            Some(cpu) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", &cpu.to_string(), "redis-server"]);
                cmd
            }
            None => Command::new("redis-server"),
        };
        let child = cmd
            .args(&listen)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server (is it installed?): {e}"))?;
        self.child = Some(answering(
            child,
            "redis-server",
            self.port,
            STARTUP,
            || self.is_up(),
        )?);
        Ok(())
    }
}

/// Waits until a just-spawned server `what` on `port` answers (`is_up`),
/// within `limit`; kills it if it does not, and says why.
pub(crate) fn answering(
    mut child: Child,
    what: &str,
    port: u16,
    limit: Duration,
    is_up: impl Fn() -> bool,
) -> Result<Child, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited early ({status}); port {port} taken?"
            ));
        }
        if is_up() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not answer PING in time"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One command to the server on `port` (through `redis-cli --tls` for a TLS
/// one), its reply rendered as [`RedisServer::command`] says.
pub(crate) fn command_on(port: u16, tls: Option<&ServerTls>, args: &[&str]) -> String {
    if let Some(tls) = tls {
        return cli_command(port, tls, args);
    }
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to test redis");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let line = read_line(&mut r);
    if let Some(n) = line.strip_prefix('*') {
        let n: usize = n.parse().unwrap_or(0);
        let items: Vec<String> = (0..n)
            .map(|_| {
                let l = read_line(&mut r);
                read_value(&mut r, l)
            })
            .collect();
        return items.join("\n");
    }
    read_value(&mut r, line)
}

/// `redis-cli --tls` for the server on `port`, bounded by `timeout(1)`.
fn redis_cli(port: u16, tls: &ServerTls) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "10",
        "redis-cli",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ])
    .args(tls.cli_args());
    cmd
}

/// One command through `redis-cli --tls`.
fn cli_command(port: u16, tls: &ServerTls, args: &[&str]) -> String {
    let out = redis_cli(port, tls)
        .args(args)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
            if text == "OK" { "+OK".to_owned() } else { text }
        }
        Err(e) => format!("-ERR redis-cli: {e}"),
    }
}

/// Commands read by `redis-cli --tls` from `input`, one per line: its
/// output lines.
fn cli_lines(port: u16, tls: &ServerTls, input: &str) -> Vec<String> {
    let child = redis_cli(port, tls)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let out = child.and_then(|mut child| {
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes())?;
        }
        child.wait_with_output()
    });
    match out {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
        Err(e) => vec![format!("-ERR redis-cli: {e}")],
    }
}

fn read_line(r: &mut impl BufRead) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

/// The value whose first line is `line`: the payload of a bulk string, else
/// the line itself.
fn read_value(r: &mut impl BufRead, line: String) -> String {
    if let Some(len) = line.strip_prefix('$') {
        let Ok(len) = len.parse::<usize>() else {
            return line; // $-1: nil
        };
        let mut buf = vec![0; len + 2];
        r.read_exact(&mut buf).unwrap();
        return String::from_utf8_lossy(&buf[..len]).into_owned();
    }
    line
}

pub(crate) fn ping(port: u16) -> bool {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let Ok(mut s) = TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A loopback port that was free a moment ago (never 6379).
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        if port != 6379 {
            return port;
        }
    }
}

/// A client of the server at `url` with leases of `ttl` (the other options
/// at their defaults).
///
/// # Panics
///
/// If it cannot connect.
pub async fn client(url: &str, ttl: Duration) -> lockyard::RedisLocks {
    let options = lockyard::redis::RedisOptions::default().ttl(ttl);
    lockyard::RedisLocks::connect_with(url, options)
        .await
        .expect("connect to the test redis-server")
}

/// Redlock options for tests: leases of `ttl`, quick connect and request
/// timeouts (500 ms, 250 ms) and a short retry delay (20 ms).
pub fn redlock_options(ttl: Duration) -> lockyard::redis::RedlockOptions {
    lockyard::redis::RedlockOptions::new()
        .redis(
            lockyard::redis::RedisOptions::default()
                .ttl(ttl)
                .connect_timeout(Duration::from_millis(500))
                .op_timeout(Duration::from_millis(250)),
        )
        .retry_delay(Duration::from_millis(20))
}
