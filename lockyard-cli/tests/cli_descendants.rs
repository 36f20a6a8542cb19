//! The lock covers COMMAND's whole process tree: no descendant of COMMAND
//! runs on once lockyard lets the lock go, whether COMMAND exited, lockyard
//! was killed, or (see `cli_redis.rs`) the Redis lease was lost.
#![cfg(target_os = "linux")]

mod cli_support;

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use cli_support::*;

/// Reads the pids COMMAND wrote, one a line, once `count` are there.
fn pids(path: &std::path::Path, count: usize) -> Vec<u32> {
    assert!(
        eventually_blocking(PATIENCE, || read(path).lines().count() >= count),
        "COMMAND did not write {count} pids"
    );
    read(path)
        .lines()
        .map(|l| l.trim().parse().expect("pid"))
        .collect()
}

/// Kills what a failed test leaves behind.
struct Reap(Vec<u32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for &pid in &self.0 {
            kill(pid as i32, libc::SIGKILL);
        }
    }
}

#[test]
fn commands_group_is_led_by_the_group_keeper_which_runs_only_under_exec() {
    let env = Env::new();
    let pidfile = env.path("pids");
    let script = format!("echo $$ >> '{p}'; exec sleep 30", p = pidfile.display());
    let mut h = Holder {
        child: env.spawn(&["exec", "job", "--", "sh", "-c", &script]),
    };
    let command = pids(&pidfile, 1)[0];
    let _reap = Reap(vec![command]);
    // Field 5 of /proc/PID/stat (after the parenthesised name) is the group.
    let stat = read(std::path::Path::new(&format!("/proc/{command}/stat")));
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let group: u32 = after_name
        .split_whitespace()
        .nth(2)
        .and_then(|g| g.parse().ok())
        .expect("a process group in /proc/PID/stat");
    assert_ne!(group, command, "COMMAND must not lead its own group");
    let cmdline = std::fs::read(format!("/proc/{group}/cmdline")).expect("the group leader");
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    assert_eq!(args.get(1), Some(&&b"__group-keeper"[..]), "{cmdline:?}");
    h.kill();

    // Started by hand (not a group leader reading a pipe), it refuses.
    let out = env.run(&["__group-keeper"]);
    assert_clean_failure(&out, 64);
    assert!(
        stderr(&out).contains("internal to `lockyard exec`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn background_grandchildren_are_stopped_when_command_exits() {
    let env = Env::new();
    let pidfile = env.path("pids");
    // One grandchild in COMMAND's process group, one that left it (setsid)
    // and ignores SIGTERM: both must be gone when lockyard returns.
    let script = format!(
        "sleep 30 </dev/null >/dev/null 2>&1 & echo $! >> '{p}'; \
         setsid sh -c 'trap \"\" TERM; echo $$ >> \"{p}\"; exec sleep 30' </dev/null >/dev/null 2>&1 & \
         while [ $(wc -l < '{p}') -lt 2 ]; do sleep 0.01; done; exit 7",
        p = pidfile.display()
    );
    let out = env.run(&["exec", "job", "--", "sh", "-c", &script]);
    let grandchildren = pids(&pidfile, 2);
    let _reap = Reap(grandchildren.clone());
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    for pid in grandchildren {
        assert!(process_gone(pid), "grandchild {pid} outlived lockyard exec");
    }
}

#[test]
fn the_lock_is_held_until_the_last_descendant_is_gone() {
    let env = Env::new();
    let (pidfile, log) = (env.path("pids"), env.path("log"));
    // The grandchild ignores SIGTERM and keeps ticking: while it ticks, a
    // second holder must not run.
    let script = format!(
        "sh -c 'trap \"\" TERM; echo $$ >> \"{p}\"; while :; do echo tick >> \"{l}\"; sleep 0.05; done' \
         </dev/null >/dev/null 2>&1 & sleep 0.2; exit 0",
        p = pidfile.display(),
        l = log.display()
    );
    let first = env
        .cmd(&["exec", "job", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let grandchild = pids(&pidfile, 1)[0];
    let _reap = Reap(vec![grandchild]);
    let mut first = Holder { child: first };
    let second = env.run(&[
        "exec",
        "-w",
        "15",
        "job",
        "--",
        "sh",
        "-c",
        &format!("echo second >> '{}'", log.display()),
    ]);
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    first.wait();
    let lines: Vec<String> = read(&log).lines().map(str::to_owned).collect();
    let at = lines
        .iter()
        .position(|l| l == "second")
        .expect("second ran");
    assert!(
        !lines[at + 1..].iter().any(|l| l == "tick"),
        "the grandchild ran on beside the next holder: {lines:?}"
    );
    assert!(process_gone(grandchild), "grandchild {grandchild} survived");
}

#[test]
fn descendants_die_with_lockyard() {
    let env = Env::new();
    let pidfile = env.path("pids");
    let script = format!(
        "sleep 30 </dev/null >/dev/null 2>&1 & echo $! >> '{p}'; echo $$ >> '{p}'; exec sleep 30",
        p = pidfile.display()
    );
    let child = env
        .cmd(&["exec", "job", "--", "sh", "-c", &script])
        .process_group(0)
        .spawn()
        .unwrap();
    let mut h = Holder { child };
    let tree = pids(&pidfile, 2);
    let _reap = Reap(tree.clone());
    h.kill(); // SIGKILL: lockyard gets no chance to clean up itself
    for pid in tree {
        assert!(
            eventually_blocking(Duration::from_secs(5), || process_gone(pid)),
            "descendant {pid} survived lockyard's death"
        );
    }
    assert_eq!(
        env.run(&["exec", "-n", "job", "--", "true"]).status.code(),
        Some(0)
    );
}
