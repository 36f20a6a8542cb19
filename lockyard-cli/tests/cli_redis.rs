//! `lockyard exec --redis` and `status --redis` against private
//! redis-servers: renewal past the TTL, lost lock → COMMAND terminated and
//! exit 75, fencing tokens, outage → exit 69.
#![cfg(all(feature = "redis", unix))]

mod cli_support;
use std::time::{Duration, Instant};

use cli_support::*;
use lockyard_testkit::redis::RedisServer;

/// `lockyard exec --redis URL --ttl TTL NAME -- sh -c SCRIPT` in the background.
fn spawn_exec(env: &Env, url: &str, ttl: &str, script: &str) -> Holder {
    let child = env.spawn(&[
        "exec", "--redis", url, "--ttl", ttl, "job", "--", "sh", "-c", script,
    ]);
    Holder { child }
}

fn stderr_of(h: &mut Holder) -> String {
    let mut s = String::new();
    if let Some(mut e) = h.child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
    }
    s
}

#[test]
fn lease_is_renewed_while_command_runs_and_tokens_increase() {
    let server = RedisServer::start();
    let url = server.url();
    let env = Env::new();
    let (tok, ready) = (env.path("tok"), env.path("ready"));
    let script = format!(
        "echo $LOCKYARD_FENCING_TOKEN > '{}'; touch '{}'; sleep 3",
        tok.display(),
        ready.display()
    );
    let mut holder = spawn_exec(&env, &url, "1200ms", &script);
    assert!(eventually_blocking(PATIENCE, || ready.exists()));
    // Well past the 1.2 s TTL the lock must still be held (renewed).
    std::thread::sleep(Duration::from_millis(2200));
    let out = env.run(&["exec", "-n", "--redis", &url, "job", "--", "true"]);
    assert_clean_failure(&out, 1);
    assert!(
        stderr(&out).contains(&format!("held by pid {} on", holder.pid())),
        "{}",
        stderr(&out)
    );
    assert_eq!(holder.wait().code(), Some(0), "{}", stderr_of(&mut holder));
    let first: u64 = read(&tok).trim().parse().expect("fencing token");

    let out = env.run(&[
        "exec",
        "--redis",
        &url,
        "job",
        "--",
        "sh",
        "-c",
        "echo $LOCKYARD_FENCING_TOKEN",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let second: u64 = stdout(&out).trim().parse().expect("fencing token");
    assert!(second > first, "fencing tokens {first} then {second}");
}

#[test]
fn lost_lock_terminates_command_with_exit_75() {
    let server = RedisServer::start();
    let url = server.url();
    let env = Env::new();
    let (ready, got) = (env.path("ready"), env.path("got"));
    let script = format!(
        "trap 'echo term > \"{}\"; exit 0' TERM; touch '{}'; i=0; \
         while [ $i -lt 3000 ]; do i=$((i+1)); sleep 0.01; done",
        got.display(),
        ready.display()
    );
    let mut holder = spawn_exec(&env, &url, "1500ms", &script);
    assert!(eventually_blocking(PATIENCE, || ready.exists()));
    // Someone else's hand wipes the lease: the next renewal finds it gone.
    let start = Instant::now();
    assert_eq!(server.command(&["FLUSHALL"]), "+OK");
    let status = holder.wait();
    println!("lockyard ended {:?} after FLUSHALL", start.elapsed());
    let err = stderr_of(&mut holder);
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(err.contains("lost"), "{err}");
    assert_eq!(read(&got).trim(), "term", "COMMAND got no SIGTERM");
}

#[test]
fn redis_down_while_held_kills_a_stubborn_command() {
    let mut server = RedisServer::start();
    let url = server.url();
    let env = Env::new();
    let ready = env.path("ready");
    // COMMAND ignores SIGTERM: lockyard must SIGKILL it after the grace period.
    let script = format!(
        "trap '' TERM; touch '{}'; i=0; while [ $i -lt 3000 ]; do i=$((i+1)); sleep 0.01; done",
        ready.display()
    );
    let mut holder = spawn_exec(&env, &url, "1s", &script);
    assert!(eventually_blocking(PATIENCE, || ready.exists()));
    let start = Instant::now();
    server.stop();
    let status = holder.wait();
    let took = start.elapsed();
    println!("lockyard ended {took:?} after redis-server died");
    let err = stderr_of(&mut holder);
    assert_eq!(status.code(), Some(75), "{err}");
    // Lost within the TTL, then 5 s of grace before SIGKILL.
    assert!(took >= Duration::from_secs(5), "{took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
}

#[test]
fn unavailable_redis_is_69_and_bad_url_64() {
    let env = Env::new();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("redis://127.0.0.1:{port}/");
    let out = env.run(&["exec", "--redis", &url, "job", "--", "true"]);
    println!("{}", stderr(&out).trim_end());
    assert_clean_failure(&out, 69);
    let out = env.run(&["status", "--redis", &url]);
    assert_clean_failure(&out, 69);
    let out = env.run(&["exec", "--redis", "not a url", "job", "--", "true"]);
    println!("{}", stderr(&out).trim_end());
    assert_clean_failure(&out, 64);
}

#[test]
fn status_lists_held_redis_locks() {
    let server = RedisServer::start();
    let url = server.url();
    let env = Env::new();
    let ready = env.path("ready");
    let script = format!("touch '{}'; sleep 30", ready.display());
    let holder = spawn_exec(&env, &url, "5s", &script);
    assert!(eventually_blocking(PATIENCE, || ready.exists()));
    let out = env.run(&["status", "--redis", &url, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = v.as_array().expect("array");
    let row = rows
        .iter()
        .find(|r| r["name"] == "job")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(row["held"], true);
    assert_eq!(row["kind"], "lock");
    assert!(row["fencing_token"].as_u64().is_some(), "{row}");
    assert!(row["ttl_ms"].as_u64().is_some_and(|t| t <= 5000), "{row}");
    // Who holds it, as for lock files.
    assert_eq!(row["pid"], holder.pid(), "{row}");
    assert_eq!(row["mode"], "exclusive", "{row}");
    assert!(row["host"].as_str().is_some_and(|h| !h.is_empty()), "{row}");
    let since = row["since"].as_str().unwrap_or_else(|| panic!("{row}"));
    let age = humantime::parse_rfc3339(since)
        .ok()
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok());
    assert!(age.is_some_and(|a| a < PATIENCE), "{row}");
    assert_eq!(row["owners"][0]["pid"], holder.pid(), "{row}");
    let text = stdout(&env.run(&["status", "--redis", &url]));
    let header = text.lines().next().unwrap_or_default();
    assert!(header.contains("PID") && header.contains("SINCE"), "{text}");
    let line = text.lines().find(|l| l.starts_with("job"));
    assert!(
        line.is_some_and(|l| l.contains(&format!(" {} ", holder.pid()))),
        "{text}"
    );
}

#[test]
fn verbose_wait_on_redis_names_the_holder() {
    let server = RedisServer::start();
    let url = server.url();
    let env = Env::new();
    let ready = env.path("ready");
    let script = format!("touch '{}'; sleep 30", ready.display());
    let holder = spawn_exec(&env, &url, "5s", &script);
    assert!(eventually_blocking(PATIENCE, || ready.exists()));
    let out = env.run(&[
        "exec", "-v", "-w", "2.5", "--redis", &url, "job", "--", "true",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let waiting: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("waiting for lock `job`"))
        .collect();
    assert!(waiting.len() >= 2, "no periodic report: {err}");
    let who = format!("held by pid {} on ", holder.pid());
    assert!(
        waiting
            .iter()
            .all(|l| l.contains(&who) && l.contains(" since ")),
        "{err}"
    );
    assert!(
        waiting
            .iter()
            .any(|l| l.contains("waited 1.") || l.contains("waited 2.")),
        "{err}"
    );
    // The one-line conflict message names the holder too.
    assert!(err.contains(&format!("is {who}")), "{err}");
}

#[test]
fn redis_timeout_is_honoured() {
    let server = RedisServer::start();
    let url = server.url();
    let env = Env::new();
    let ready = env.path("ready");
    let script = format!("touch '{}'; sleep 30", ready.display());
    let _holder = spawn_exec(&env, &url, "5s", &script);
    assert!(eventually_blocking(PATIENCE, || ready.exists()));
    let start = Instant::now();
    let out = env.run(&["exec", "-w", "0.5", "--redis", &url, "job", "--", "true"]);
    let took = start.elapsed();
    println!("--redis -w 0.5 returned after {:.3}s", took.as_secs_f64());
    assert_clean_failure(&out, 1);
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn lost_lock_stops_command_descendants_too() {
    let server = RedisServer::start();
    let url = server.url();
    let env = Env::new();
    let (ready, pidfile) = (env.path("ready"), env.path("pid"));
    // The grandchild ignores SIGTERM: it must get SIGKILL after the grace.
    let script = format!(
        "sh -c 'trap \"\" TERM; echo $$ > \"{p}\"; exec sleep 60' </dev/null >/dev/null 2>&1 & \
         touch '{r}'; exec sleep 60",
        p = pidfile.display(),
        r = ready.display()
    );
    let mut holder = spawn_exec(&env, &url, "1500ms", &script);
    assert!(eventually_blocking(PATIENCE, || ready.exists()
        && read(&pidfile).ends_with('\n')));
    let grandchild: u32 = read(&pidfile).trim().parse().expect("grandchild pid");
    assert_eq!(server.command(&["FLUSHALL"]), "+OK");
    let status = holder.wait();
    let gone = process_gone(grandchild);
    kill(grandchild as i32, libc::SIGKILL);
    assert_eq!(status.code(), Some(75), "{}", stderr_of(&mut holder));
    assert!(
        gone,
        "grandchild {grandchild} ran on after the lock was lost"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn descendants_die_with_lockyard_on_redis() {
    let server = RedisServer::start();
    let url = server.url();
    let env = Env::new();
    let (ready, pidfile) = (env.path("ready"), env.path("pid"));
    let script = format!(
        "sleep 60 </dev/null >/dev/null 2>&1 & echo $! > '{p}'; touch '{r}'; exec sleep 60",
        p = pidfile.display(),
        r = ready.display()
    );
    let mut holder = spawn_exec(&env, &url, "5s", &script);
    assert!(eventually_blocking(PATIENCE, || ready.exists()
        && read(&pidfile).ends_with('\n')));
    let grandchild: u32 = read(&pidfile).trim().parse().expect("grandchild pid");
    holder.kill();
    let gone = eventually_blocking(Duration::from_secs(5), || process_gone(grandchild));
    kill(grandchild as i32, libc::SIGKILL);
    assert!(gone, "grandchild {grandchild} ran on after lockyard died");
}

/// `--on-suspect USR1`: when renewals stop getting through (requests to
/// Redis vanish), COMMAND gets SIGUSR1 while the lease still runs, before
/// any loss; once renewals get through again nothing more is sent.
#[test]
fn on_suspect_signals_command_when_renewals_fail() {
    use lockyard_testkit::proxy::FaultProxy;
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let env = Env::new();
    let (got, ready, go) = (env.path("got"), env.path("ready"), env.path("go"));
    let script = trap_script(&["USR1"], &got, &ready, &go);
    let mut holder = Holder {
        child: env.spawn(&[
            "exec",
            "--redis",
            &proxy.url(),
            "--ttl",
            "6s",
            "--on-suspect",
            "usr1",
            "job",
            "--",
            "sh",
            "-c",
            &script,
        ]),
    };
    assert!(eventually_blocking(PATIENCE, || ready.exists()));
    assert!(!got.exists(), "signalled while renewals got through");
    proxy.drop_requests(true);
    let blocked = Instant::now();
    assert!(
        eventually_blocking(PATIENCE, || read_or_empty(&got).contains("USR1")),
        "COMMAND never got SIGUSR1 while renewals failed"
    );
    assert!(
        blocked.elapsed() < Duration::from_secs(6),
        "signalled only after {:?}: later than the lease",
        blocked.elapsed()
    );
    proxy.drop_requests(false);
    // Renewed again: the lock is still ours, and COMMAND ends normally.
    std::thread::sleep(Duration::from_millis(1500));
    let out = env.run(&["exec", "-n", "--redis", &server.url(), "job", "--", "true"]);
    assert_clean_failure(&out, 1);
    touch(&go);
    assert_eq!(holder.wait().code(), Some(0), "{}", stderr_of(&mut holder));
}

fn read_or_empty(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
