//! One child-process harness: a test binary re-executes itself in a named
//! role, and the two talk over pipes.
//!
//! The parent calls [`spawn`] with the name of the test that serves as the
//! child's entry (conventionally `child_process_entry`) and a role; the
//! child runs only that test, which asks [`role`] what to do (and returns
//! at once in the parent, where no role is set). The child reports with
//! [`say`] (a stdout line), the parent reads with [`Child::wait_line`] and
//! gives orders with [`Child::send`]. [`monotonic_ns`] stamps events on
//! `CLOCK_MONOTONIC`, one clock for every process of the machine.
//!
//! A binary with a `main` of its own (a bench with `harness = false`)
//! starts itself with [`spawn_role`] instead, and its `main` asks [`role`]
//! first.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The environment variable that carries the role.
const ROLE: &str = "LOCKYARD_TEST_ROLE";

/// The role this process was started in by [`spawn`], if any.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// Prints one line to the parent (flushed at once).
///
/// # Panics
///
/// If stdout is closed.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("write to the parent");
    out.flush().expect("flush to the parent");
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: comparable across processes.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000_000 + nanos
}

/// The lines the parent sends, read on a thread of its own (so a blocking
/// read never stalls the child's runtime).
pub fn orders() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A child process running one role. Killed on drop if still running.
#[derive(Debug)]
pub struct Child {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

/// Starts this test binary as a child running only the test `entry`, in
/// `role`, with `envs` set.
///
/// # Panics
///
/// If the binary cannot be started.
pub fn spawn(entry: &str, role: &str, envs: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(current_exe());
    cmd.args(test_args(entry));
    spawn_cmd(cmd, role, envs)
}

/// Starts this binary (one with a `main` of its own, not the test
/// harness) as a child in `role`, with `envs` set and no arguments.
///
/// # Panics
///
/// If the binary cannot be started.
pub fn spawn_role(role: &str, envs: &[(&str, String)]) -> Child {
    spawn_cmd(Command::new(current_exe()), role, envs)
}

/// As [`spawn`], as the user `uid` (the caller must be root), in `/`.
///
/// # Panics
///
/// If the binary cannot be started.
pub fn spawn_as(uid: u32, entry: &str, role: &str, envs: &[(&str, String)]) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(current_exe());
    cmd.uid(uid)
        .gid(uid)
        .current_dir("/")
        .args(test_args(entry));
    spawn_cmd(cmd, role, envs)
}

/// The command that starts this test binary running only the test `entry`,
/// in `role`, with `envs` set: for a test that spawns and waits for its
/// children itself (with `tokio::process::Command::from`, say).
pub fn command(entry: &str, role: &str, envs: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(current_exe());
    cmd.args(test_args(entry)).env(ROLE, role);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

fn current_exe() -> std::path::PathBuf {
    std::env::current_exe().expect("the test binary's path")
}

/// The test harness's arguments that run only the test `entry`.
fn test_args(entry: &str) -> [&str; 4] {
    [entry, "--exact", "--nocapture", "--test-threads=1"]
}

fn spawn_cmd(mut cmd: Command, role: &str, envs: &[(&str, String)]) -> Child {
    cmd.env(ROLE, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Child { child, lines }
}

impl Child {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line containing `word` (the test harness may
    /// print its own text first on the same line); returns it from `word`.
    ///
    /// # Panics
    ///
    /// If no such line comes within `timeout`.
    pub fn wait_line(&mut self, word: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(at) = line.find(word) {
                        return line[at..].to_owned();
                    }
                }
                Err(e) => panic!("child {} never printed {word:?}: {e}", self.pid()),
            }
        }
    }

    /// Sends one line to the child's stdin (ignored if it has exited).
    pub fn send(&mut self, line: &str) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    /// Tells a holding child to release (the `release` order).
    pub fn release(&mut self) {
        self.send("release");
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` to the child.
    ///
    /// # Panics
    ///
    /// If the child no longer exists.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = i32::try_from(self.pid())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .expect("a valid pid");
        rustix::process::kill_process(pid, signal).expect("signal the child");
    }

    /// Waits until the child is stopped (after SIGSTOP), bounded by 2 s.
    ///
    /// # Panics
    ///
    /// If it does not stop in time.
    pub fn wait_stopped(&self) {
        let stat = format!("/proc/{}/stat", self.pid());
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            // The state follows the parenthesised command name.
            let state = text.rsplit(')').next().unwrap_or("").trim_start();
            if state.starts_with('T') {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("child {} did not stop", self.pid());
    }

    /// Waits for the child to exit successfully.
    ///
    /// # Panics
    ///
    /// If it fails, or is still running after `timeout` (it is killed).
    pub fn wait_success(mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "child {} failed: {status}", self.pid());
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("child {} did not finish in {timeout:?}", self.pid());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs this test binary's test `entry` once per role in `roles`, all at
/// once, and waits (bounded by `limit`) until every one has exited
/// successfully.
///
/// # Panics
///
/// If one cannot be started, fails, or is still running after `limit` (the
/// rest are killed).
pub async fn run_all(entry: &str, roles: &[String], limit: Duration) {
    let mut children = Vec::new();
    for role in roles {
        let mut cmd = tokio::process::Command::from(command(entry, role, &[]));
        cmd.kill_on_drop(true);
        children.push(cmd.spawn().expect("spawn the child"));
    }
    let all = async {
        for (role, mut child) in roles.iter().zip(children) {
            let status = child.wait().await.expect("wait for the child");
            assert!(status.success(), "child {role:?} failed: {status}");
        }
    };
    crate::wait::bounded_for(limit, all).await;
}
