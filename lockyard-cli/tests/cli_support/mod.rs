//! Helpers for the `lockyard` CLI tests: run the binary with a private lock
//! directory, with every wait bounded.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for anything a test waits for: the kit's one limit.
pub const PATIENCE: Duration = lockyard_testkit::LIMIT;

pub use lockyard_testkit::eventually_blocking;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lockyard")
}

/// A private lock directory plus a scratch directory for markers.
pub struct Env {
    pub tmp: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("locks")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `lockyard ARGS` with `LOCKYARD_DIR` set to the private directory,
    /// starting with every signal at its default (see [`default_signals`]).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        default_signals(&mut cmd);
        cmd.args(args)
            .env("LOCKYARD_DIR", self.dir())
            .env_remove("RUST_BACKTRACE")
            .env_remove("LOCKYARD_REDIS")
            .env_remove("LOCKYARD_POSTGRES")
            .env_remove("LOCKYARD_TLS_CA")
            .env_remove("LOCKYARD_TLS_CERT")
            .env_remove("LOCKYARD_TLS_KEY")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `lockyard ARGS` to completion (bounded).
    pub fn run(&self, args: &[&str]) -> Output {
        output(self.cmd(args))
    }

    /// Starts `lockyard ARGS` in the background: stdout discarded, stderr
    /// piped (read it once the child has exited).
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lockyard")
    }

    /// Starts `lockyard exec [EXTRA...] NAME -- sh -c …` whose COMMAND runs
    /// until the file returned is created, and waits until COMMAND runs,
    /// i.e. the lock is held.
    #[allow(dead_code)]
    pub fn hold_until_go(&self, name: &str, extra: &[&str]) -> (Holder, PathBuf) {
        let ready = self.path(&format!("ready-{name}-{}", unique()));
        let go = self.path(&format!("go-{name}-{}", unique()));
        let script = format!(
            "touch '{}'; while [ ! -e '{}' ]; do sleep 0.02; done",
            ready.display(),
            go.display()
        );
        (self.hold_with(name, extra, &script, &ready), go)
    }

    /// Starts `lockyard exec [EXTRA...] NAME -- sh -c 'touch READY; exec sleep 30'`
    /// and waits until COMMAND runs, i.e. the lock is held.
    pub fn hold(&self, name: &str, extra: &[&str]) -> Holder {
        let ready = self.path(&format!("ready-{name}-{}", unique()));
        let script = format!("touch '{}'; exec sleep 30", ready.display());
        self.hold_with(name, extra, &script, &ready)
    }

    /// `lockyard exec [EXTRA...] NAME -- sh -c SCRIPT`, once SCRIPT made
    /// `ready`.
    fn hold_with(&self, name: &str, extra: &[&str], script: &str, ready: &Path) -> Holder {
        let mut args = vec!["exec"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[name, "--", "sh", "-c", script]);
        let child = self
            .cmd(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn lockyard");
        let mut holder = Holder { child };
        if !eventually_blocking(PATIENCE, || ready.exists()) {
            holder.kill();
            panic!("holder of {name} never started COMMAND");
        }
        holder
    }
}

/// The TLS exclusion every backend's CLI test runs: `lockyard exec
/// BACKEND URL --tls-ca CA` holds `job`; another process, the CA from the
/// flag, is refused (its message containing `held_by(holder's pid)`);
/// `status` lists it over TLS; a third, the CA from `LOCKYARD_TLS_CA`,
/// waits and gets it once the holder is let go.
#[allow(dead_code)]
pub fn exec_over_tls_excludes(backend: &str, url: &str, ca: &str, held_by: fn(u32) -> String) {
    let env = Env::new();
    let (mut holder, go) = env.hold_until_go("job", &[backend, url, "--tls-ca", ca]);

    let out = env.run(&[
        "exec", "-n", backend, url, "--tls-ca", ca, "job", "--", "true",
    ]);
    assert_clean_failure(&out, 1);
    let expected = held_by(holder.pid());
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
    let out = env.run(&["status", backend, url, "--tls-ca", ca]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("job"), "{}", stdout(&out));

    let mut waiter = env.cmd(&["exec", "-w", "15s", backend, url, "job", "--", "true"]);
    waiter.env("LOCKYARD_TLS_CA", ca);
    let waiter = std::thread::spawn(move || output(waiter));
    std::thread::sleep(Duration::from_millis(200));
    touch(&go);
    assert_eq!(holder.wait().code(), Some(0));
    let out = waiter.join().expect("waiter thread");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Makes `cmd` start with every signal at its default disposition, however
/// the test suite itself was started.
///
/// A signal ignored on entry (`nohup` ignores HUP; a non-interactive shell
/// ignores INT and QUIT in its background jobs) stays ignored across
/// `exec`: lockyard then keeps it ignored and does not forward it (as
/// documented), and `sh` cannot trap it, so every test that sends signals
/// would depend on how `cargo test` was started. A handler cannot cross
/// `exec`; only "ignored" can, and this undoes it. (std already empties the
/// signal mask in the child.)
pub fn default_signals(cmd: &mut Command) -> &mut Command {
    #[cfg(target_os = "linux")]
    let last = libc::SIGRTMAX();
    #[cfg(not(target_os = "linux"))]
    let last = 31;
    // SAFETY: the closure runs in the child between fork and exec; it only
    // calls signal(2), which is async-signal-safe, and allocates nothing.
    // signal(2) refuses SIGKILL, SIGSTOP and the C library's reserved
    // real-time signals with EINVAL, which changes nothing: ignored.
    unsafe {
        cmd.pre_exec(move || {
            for sig in 1..=last {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    cmd
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A background `lockyard exec` holding a lock; killed on drop.
pub struct Holder {
    pub child: Child,
}

impl Holder {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs lockyard (its COMMAND dies by the parent-death signal) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `sig` to lockyard.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill only reads its integer arguments; the child is not reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// Waits (bounded) for lockyard to exit.
    pub fn wait(&mut self) -> ExitStatus {
        wait_child(&mut self.child, PATIENCE)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Waits for `child` at most `limit`; kills it and panics on overrun.
pub fn wait_child(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lockyard did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `cmd` with captured output, bounded by [`PATIENCE`].
pub fn output(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lockyard");
    // Drain the pipes on threads so a chatty child cannot block.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let status = wait_child(&mut child, PATIENCE);
    Output {
        status,
        stdout: out_t.join().expect("stdout thread"),
        stderr: err_t.join().expect("stderr thread"),
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a failure printed exactly one line on stderr, no panic, and
/// exited with `code`.
pub fn assert_clean_failure(out: &Output, code: i32) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("lockyard: "), "{err}");
}

/// Whether process `pid` is gone (or a zombie waiting to be reaped).
#[cfg(target_os = "linux")]
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Sends `sig` to process `pid` (a negative `pid` names a process group, as
/// `kill -- -PGID`).
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill only reads its integer arguments.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The state letter of process `pid` from `/proc/PID/stat` (`R`, `S`, `T`,
/// `Z`...), `None` once it is gone.
#[cfg(target_os = "linux")]
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A COMMAND for signal tests: traps each of `signals` (shell names, `TERM`)
/// and appends its name to `got` on every delivery, touches `ready`, then
/// runs until `go` exists (at most ~10 s) and exits 0.
///
/// It sleeps with `sleep & wait`, which a trapped signal interrupts at once,
/// so two deliveries a few milliseconds apart are counted as two.
pub fn trap_script(signals: &[&str], got: &Path, ready: &Path, go: &Path) -> String {
    let mut script = String::new();
    for sig in signals {
        script.push_str(&format!(
            "trap 'echo {sig} >> \"{}\"' {sig}; ",
            got.display()
        ));
    }
    script.push_str(&format!(
        "touch '{ready}'; i=0; while [ ! -e '{go}' ] && [ $i -lt 1000 ]; do \
         i=$((i+1)); sleep 0.01 & wait $!; done; exit 0",
        ready = ready.display(),
        go = go.display()
    ));
    script
}

/// Touches `path`.
pub fn touch(path: &Path) {
    std::fs::write(path, b"").expect("touch");
}

/// Runs the shell `line` on a pseudo-terminal (util-linux `script`), with
/// the test's lock directory and a piped stdin to type into, and waits
/// (bounded) until `ready` exists (COMMAND started).
pub fn at_terminal(env: &Env, line: &str, ready: &Path) -> Holder {
    let child = default_signals(&mut Command::new("script"))
        .args(["-qfec", line, "/dev/null"])
        .env("LOCKYARD_DIR", env.dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("util-linux `script` is needed for this test");
    let h = Holder { child };
    assert!(
        eventually_blocking(PATIENCE, || ready.exists()),
        "COMMAND never started"
    );
    h
}
