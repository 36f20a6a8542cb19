//! flock(1) idioms `lockyard exec` accepts: `-c 'shell command'`, `-x`/`-e`,
//! `-o`/`--close`, a silent `-n -E 0`, and `$LOCKYARD_REDIS` beside
//! `--redis`.
#![cfg(all(feature = "redis", target_os = "linux"))]

mod cli_support;
use std::time::{Duration, Instant};

use cli_support::*;
use lockyard_testkit::redis::RedisServer;

#[test]
fn dash_c_runs_a_shell_command() {
    let env = Env::new();
    let out = env.run(&["exec", "job", "-c", "echo $((1+2)); exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(stdout(&out), "3\n");
    // flock(1) order: options, the lock, -c.
    let out = env.run(&["exec", "-n", "job", "--command", "test -n \"$0\""]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // -c and a COMMAND are one too many.
    let out = env.run(&["exec", "job", "-c", "true", "--", "true"]);
    assert_clean_failure(&out, 64);
}

#[test]
fn dash_x_and_dash_e_mean_exclusive() {
    let env = Env::new();
    let _holder = env.hold("job", &["-x"]);
    for flag in ["-x", "-e", "--exclusive"] {
        let out = env.run(&["exec", flag, "-n", "job", "--", "true"]);
        assert_eq!(out.status.code(), Some(1), "{flag}: {}", stderr(&out));
        let out = env.run(&["exec", "-n", "-s", "job", "--", "true"]);
        assert_eq!(out.status.code(), Some(1), "a reader got in beside {flag}");
    }
    let out = env.run(&["exec", "-x", "-s", "other", "--", "true"]);
    assert_clean_failure(&out, 64);
}

#[test]
fn dash_o_releases_the_lock_when_command_exits_leaving_its_children() {
    let env = Env::new();
    let start = Instant::now();
    let out = env.run(&[
        "exec",
        "-o",
        "job",
        "--",
        "sh",
        "-c",
        "sleep 20 >/dev/null 2>&1 </dev/null & echo $!",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let grandchild: u32 = stdout(&out).trim().parse().expect("grandchild pid");
    let alive = !process_gone(grandchild);
    let free = env.run(&["exec", "-n", "job", "--", "true"]).status.code();
    kill(grandchild as i32, libc::SIGKILL);
    assert!(alive, "-o stopped the grandchild");
    assert!(start.elapsed() < Duration::from_secs(4), "-o waited for it");
    assert_eq!(free, Some(0), "the lock stayed held after COMMAND exited");
    let out = env.run(&["exec", "--close", "job", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn nonblock_with_exit_code_0_is_silent_unless_verbose() {
    let env = Env::new();
    let _holder = env.hold("job", &[]);
    let out = env.run(&["exec", "-n", "-E", "0", "job", "--", "true"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stderr(&out), "", "cron would mail this");
    // A failing exit code keeps its one line; -v always explains.
    let out = env.run(&["exec", "-n", "-E", "3", "job", "--", "true"]);
    assert_clean_failure(&out, 3);
    let out = env.run(&["exec", "-v", "-n", "-E", "0", "job", "--", "true"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("held by pid"), "{}", stderr(&out));
}

#[test]
fn lockyard_redis_environment_names_the_servers() {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let env = Env::new();
    // One URL: a plain Redis lock, with its fencing token.
    let mut cmd = env.cmd(&[
        "exec",
        "job",
        "--",
        "sh",
        "-c",
        "echo $LOCKYARD_FENCING_TOKEN",
    ]);
    cmd.env("LOCKYARD_REDIS", &urls[0]);
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).trim().parse::<u64>().is_ok(),
        "no token: {}",
        stdout(&out)
    );
    // Several, comma-separated: Redlock; a holder there excludes a second.
    let all = urls.join(",");
    let ready = env.path("ready");
    let mut holder = env.cmd(&[
        "exec",
        "job",
        "--",
        "sh",
        "-c",
        &format!("touch '{}'; exec sleep 30", ready.display()),
    ]);
    holder.env("LOCKYARD_REDIS", &all);
    let holder = Holder {
        child: holder.spawn().unwrap(),
    };
    assert!(
        eventually_blocking(PATIENCE, || ready.exists()),
        "Redlock holder never ran"
    );
    let mut second = env.cmd(&["exec", "-n", "job", "--", "true"]);
    second.env("LOCKYARD_REDIS", &all);
    assert_clean_failure(&output(second), 1);
    // The flag wins over the variable, and takes the same comma list.
    let mut flag = env.cmd(&["exec", "-n", "--redis", &all, "job", "--", "true"]);
    flag.env("LOCKYARD_REDIS", "redis://127.0.0.1:1/");
    assert_clean_failure(&output(flag), 1);
    drop(holder);
}

#[test]
fn empty_lockyard_redis_means_file_locks() {
    let env = Env::new();
    let mut cmd = env.cmd(&["exec", "job", "--", "true"]);
    cmd.env("LOCKYARD_REDIS", "");
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
