//! `lockyard exec --redis` with a semaphore (`--permits`), a RW lock (`--rw`,
//! `--shared`) and Redlock (several `--redis`), on private redis-servers.
#![cfg(all(feature = "redis", unix))]

mod cli_support;
use cli_support::*;
use lockyard_testkit::redis::RedisServer;

#[test]
fn semaphore_admits_n_holders() {
    let server = RedisServer::start();
    let url = server.url();
    let env = Env::new();
    let sem = ["--redis", url.as_str(), "--permits", "2", "--ttl", "1s"];
    let mut first = env.hold("jobs", &sem);
    let _second = env.hold("jobs", &sem);
    let mut args = vec!["exec", "-n"];
    args.extend_from_slice(&sem);
    args.extend_from_slice(&["jobs", "--", "sh", "-c", "echo $LOCKYARD_FENCING_TOKEN"]);
    let out = env.run(&args);
    assert_clean_failure(&out, 1);
    // A killed holder's permit comes back by itself after its TTL.
    first.kill();
    args[1] = "-w5";
    let out = env.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let token: u64 = stdout(&out).trim().parse().expect("fencing token");
    assert!(token >= 3, "token {token}");
}

#[test]
fn rw_lock_readers_share_and_exclude_the_writer() {
    let server = RedisServer::start();
    let url = server.url();
    let env = Env::new();
    let read = ["--redis", url.as_str(), "-s", "--ttl", "2s"];
    let _r1 = env.hold("cfg", &read);
    let _r2 = env.hold("cfg", &read);
    let out = env.run(&["exec", "-n", "--redis", &url, "--rw", "cfg", "--", "true"]);
    assert_clean_failure(&out, 1);
    let out = env.run(&["exec", "-n", "--redis", &url, "-s", "cfg", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "third reader: {}", stderr(&out));
    drop((_r1, _r2));
    // Once the killed readers' leases run out, the writer gets in.
    let out = env.run(&[
        "exec", "-w", "6", "--redis", &url, "--rw", "cfg", "--", "true",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// One name is one lock on Redis, as on files: `-s NAME` and `NAME`
/// exclude each other (no `--rw` needed).
#[test]
fn shared_and_exclusive_on_one_redis_name_exclude_each_other() {
    let server = RedisServer::start();
    let url = server.url();
    let env = Env::new();
    let reader = env.hold("job", &["--redis", url.as_str(), "-s", "--ttl", "2s"]);
    let out = env.run(&["exec", "-n", "--redis", &url, "job", "--", "true"]);
    assert_clean_failure(&out, 1);
    let out = env.run(&["exec", "-n", "--redis", &url, "-s", "job", "--", "true"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "second reader: {}",
        stderr(&out)
    );
    drop(reader);
    let writer = env.hold("job2", &["--redis", url.as_str(), "--ttl", "2s"]);
    let out = env.run(&["exec", "-n", "--redis", &url, "-s", "job2", "--", "true"]);
    assert_clean_failure(&out, 1);
    drop(writer);
}

#[test]
fn redlock_over_three_servers() {
    let mut servers = [
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    ];
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let env = Env::new();
    let with = |extra: &[&str], script: &str| {
        let mut args = vec!["exec"];
        args.extend_from_slice(extra);
        for u in &urls {
            args.extend_from_slice(&["--redis", u]);
        }
        args.extend_from_slice(&["job", "--", "sh", "-c", script]);
        // An outer lockyard's token must not leak through.
        let mut cmd = env.cmd(&args);
        cmd.env("LOCKYARD_FENCING_TOKEN", "999");
        output(cmd)
    };
    // No strictly increasing token exists on Redlock: the variable is unset.
    let out = with(&[], "echo \"[${LOCKYARD_FENCING_TOKEN-unset}]\"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "[unset]");

    let mut redlock_args = vec!["--ttl", "5s"];
    for u in &urls {
        redlock_args.extend_from_slice(&["--redis", u]);
    }
    let holder = env.hold("job", &redlock_args);
    let out = with(&["-n"], "true");
    assert_clean_failure(&out, 1);
    drop(holder);

    servers[0].stop();
    let out = with(&["-w", "10"], "true");
    assert_eq!(
        out.status.code(),
        Some(0),
        "one of three down: {}",
        stderr(&out)
    );
    servers[1].stop();
    let out = with(&["-w", "2"], "true");
    println!("{}", stderr(&out).trim_end());
    assert_clean_failure(&out, 69);

    let out = env.run(&[
        "exec", "--redis", &urls[0], "--redis", &urls[1], "-s", "job", "true",
    ]);
    assert_clean_failure(&out, 64);
}

#[test]
fn status_and_verbose_name_semaphore_and_rw_holders() {
    let server = RedisServer::start();
    let url = server.url();
    let env = Env::new();
    let sem = ["--redis", url.as_str(), "--permits", "2", "--ttl", "5s"];
    let first = env.hold("jobs", &sem);
    let second = env.hold("jobs", &sem);
    let reader = env.hold("cfg", &["--redis", url.as_str(), "-s", "--ttl", "5s"]);

    let out = env.run(&["status", "--redis", &url, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let row = |name: &str| {
        v.as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing: {v}"))
    };
    let jobs = row("jobs");
    assert_eq!(jobs["holders"], 2, "{jobs}");
    let mut pids: Vec<u64> = jobs["owners"]
        .as_array()
        .expect("owners")
        .iter()
        .filter_map(|o| o["pid"].as_u64())
        .collect();
    pids.sort_unstable();
    let mut want = vec![u64::from(first.pid()), u64::from(second.pid())];
    want.sort_unstable();
    assert_eq!(pids, want, "{jobs}");
    assert_eq!(jobs["pid"], first.pid(), "longest holder first: {jobs}");
    let cfg = row("cfg");
    assert_eq!(cfg["pid"], reader.pid(), "{cfg}");
    assert_eq!(cfg["mode"], "shared", "{cfg}");

    // A waiting writer is told which reader it waits for.
    let out = env.run(&[
        "exec", "-v", "-w", "1.5", "--redis", &url, "--rw", "cfg", "--", "true",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let who = format!("held by pid {} on ", reader.pid());
    assert!(
        err.lines()
            .any(|l| l.contains("waiting for lock `cfg`") && l.contains(&who)),
        "{err}"
    );
    // A semaphore waiter: the longest holder and how many more.
    let mut args = vec!["exec", "-v", "-w", "1.5"];
    args.extend_from_slice(&sem);
    args.extend_from_slice(&["jobs", "--", "true"]);
    let out = env.run(&args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let who = format!("held by pid {} on ", first.pid());
    assert!(
        err.lines().any(|l| l.contains("waiting for lock `jobs`")
            && l.contains(&who)
            && l.contains("and 1 more")),
        "{err}"
    );
}
