//! `lockyard exec --postgres` and `status --postgres` against private
//! Postgres servers: fencing tokens, contention (exit 1 naming the
//! holder's backend), a semaphore, a lost session (COMMAND terminated, exit
//! 75), an outage (exit 69), the listing.
#![cfg(all(feature = "postgres", target_os = "linux"))]

mod cli_support;

use cli_support::*;
use lockyard_testkit::postgres::PgServer;

/// A superuser query on `server`, from a plain test thread.
fn admin_i64(server: &PgServer, sql: &str) -> Vec<i64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin = server.admin().await;
        admin
            .query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect()
    })
}

#[test]
fn exec_holds_the_lock_with_increasing_fencing_tokens() {
    let server = PgServer::start();
    let url = server.url();
    let env = Env::new();
    let token = |env: &Env| -> u64 {
        let out = env.run(&[
            "exec",
            "--postgres",
            &url,
            "job",
            "--",
            "sh",
            "-c",
            "echo $LOCKYARD_FENCING_TOKEN",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out).trim().parse().expect("fencing token")
    };
    let first = token(&env);
    let second = token(&env);
    assert!(second > first, "fencing tokens {first} then {second}");

    let mut holder = env.hold("job", &["--postgres", &url]);
    let out = env.run(&["exec", "-n", "--postgres", &url, "job", "--", "true"]);
    assert_clean_failure(&out, 1);
    assert!(
        stderr(&out).contains("postgres backend pid"),
        "{}",
        stderr(&out)
    );
    // LOCKYARD_POSTGRES works as --postgres.
    let out = output({
        let mut cmd = env.cmd(&["exec", "-w", "100ms", "job", "--", "true"]);
        cmd.env("LOCKYARD_POSTGRES", &url);
        cmd
    });
    assert_clean_failure(&out, 1);
    // A shared holder is refused too; another name is free.
    let out = env.run(&["exec", "-n", "-s", "--postgres", &url, "job", "--", "true"]);
    assert_clean_failure(&out, 1);
    let out = env.run(&["exec", "-n", "--postgres", &url, "other", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // status lists the held lock by name, with its backend's pid.
    let out = env.run(&["status", "--postgres", &url, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["name"], "job");
    assert_eq!(rows[0]["mode"], "exclusive");
    let out = env.run(&["status", "--postgres", &url]);
    assert!(stdout(&out).contains("job"), "{}", stdout(&out));
    holder.kill();
}

#[test]
fn permits_let_that_many_commands_run_at_once() {
    let server = PgServer::start();
    let url = server.url();
    let env = Env::new();
    let mut a = env.hold("pool", &["--postgres", &url, "--permits", "2"]);
    let mut b = env.hold("pool", &["--postgres", &url, "--permits", "2"]);
    let out = env.run(&[
        "exec",
        "-n",
        "--postgres",
        &url,
        "--permits",
        "2",
        "pool",
        "--",
        "true",
    ]);
    assert_clean_failure(&out, 1);
    a.kill();
    b.kill();
}

#[test]
fn a_lost_session_terminates_command_with_exit_75() {
    let server = PgServer::start();
    let url = server.url();
    let env = Env::new();
    let mut holder = env.hold("job", &["--postgres", &url]);
    let killed = admin_i64(
        &server,
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_locks \
         WHERE locktype = 'advisory' AND granted",
    );
    assert_eq!(killed, [1]);
    let status = wait_child(&mut holder.child, PATIENCE);
    assert_eq!(status.code(), Some(75));
}

#[test]
fn an_unreachable_server_exits_69() {
    let port = lockyard_testkit::redis::free_port();
    let env = Env::new();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let out = env.run(&["exec", "--postgres", &url, "job", "--", "true"]);
    assert_clean_failure(&out, 69);
    let out = env.run(&["status", "--postgres", &url]);
    assert_clean_failure(&out, 69);
}
