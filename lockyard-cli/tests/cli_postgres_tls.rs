//! `lockyard exec --postgres 'postgres://…?sslmode=verify-full'` against
//! private TLS Postgres servers: processes exclude each other over TLS,
//! the CA comes from `--tls-ca` or `LOCKYARD_TLS_CA`, mutual TLS from
//! `--tls-cert` and `--tls-key`, and a wrong CA fails fast with a clear
//! error (exit 69).
#![cfg(all(feature = "postgres", feature = "tls", target_os = "linux"))]

mod cli_support;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cli_support::*;
use lockyard_testkit::postgres::{PASSWORD, PgServer};
use lockyard_testkit::tls::{ServerTls, TlsFiles};

fn verify_full(server: &PgServer) -> String {
    format!("{}?sslmode=verify-full", server.url())
}

#[test]
fn exec_over_tls_excludes_across_processes() {
    let files = TlsFiles::generate();
    let server = PgServer::start_tls(&ServerTls::new(&files));
    let url = verify_full(&server);
    let ca = files.ca().display().to_string();
    let env = Env::new();
    let (ready, go) = (env.path("ready"), env.path("go"));
    // The holder runs until the test lets it go.
    let script = format!(
        "touch '{}'; while [ ! -e '{}' ]; do sleep 0.02; done",
        ready.display(),
        go.display()
    );
    let mut holder = Holder {
        child: env
            .cmd(&[
                "exec",
                "--postgres",
                &url,
                "--tls-ca",
                &ca,
                "job",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn lockyard"),
    };
    assert!(eventually_blocking(PATIENCE, || ready.exists()));

    // Another process, the CA from the flag: the lock is held.
    let out = env.run(&[
        "exec",
        "-n",
        "--postgres",
        &url,
        "--tls-ca",
        &ca,
        "job",
        "--",
        "true",
    ]);
    assert_clean_failure(&out, 1);
    assert!(
        stderr(&out).contains("postgres backend pid"),
        "{}",
        stderr(&out)
    );
    // `status` over TLS lists it.
    let out = env.run(&["status", "--postgres", &url, "--tls-ca", &ca]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("job"), "{}", stdout(&out));

    // A third, the CA from LOCKYARD_TLS_CA, waits and gets it once the
    // holder is let go.
    let mut waiter = env.cmd(&["exec", "-w", "15s", "--postgres", &url, "job", "--", "true"]);
    waiter.env("LOCKYARD_TLS_CA", &ca);
    let waiter = std::thread::spawn(move || output(waiter));
    std::thread::sleep(Duration::from_millis(200));
    touch(&go);
    assert_eq!(holder.wait().code(), Some(0));
    let out = waiter.join().expect("waiter thread");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn mutual_tls_takes_the_client_certificate_from_the_flags() {
    let files = TlsFiles::generate();
    let server = PgServer::start_tls(&ServerTls::new(&files).mutual());
    let url = verify_full(&server);
    let ca = files.ca().display().to_string();
    let (cert, key) = files.client();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let env = Env::new();
    let out = env.run(&[
        "exec",
        "--postgres",
        &url,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "job",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env.run(&[
        "exec",
        "--postgres",
        &url,
        "--tls-ca",
        &ca,
        "job",
        "--",
        "true",
    ]);
    assert_clean_failure(&out, 69);
    assert!(
        stderr(&out).contains("client certificate"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_wrong_ca_exits_69_fast_and_says_so() {
    let files = TlsFiles::generate();
    let server = PgServer::start_tls(&ServerTls::new(&files));
    let env = Env::new();
    let other = files.other_ca().display().to_string();
    let started = Instant::now();
    let out = env.run(&[
        "exec",
        "--postgres",
        &verify_full(&server),
        "--tls-ca",
        &other,
        "job",
        "--",
        "true",
    ]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_clean_failure(&out, 69);
    let err = stderr(&out);
    assert!(
        err.contains("not signed by a CA this client trusts"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
    // A CA with sslmode=disable is a usage error, not silently unused.
    let plain = format!("{}?sslmode=disable", server.url());
    let out = env.run(&[
        "exec",
        "--postgres",
        &plain,
        "--tls-ca",
        &other,
        "job",
        "--",
        "true",
    ]);
    assert_clean_failure(&out, 64);
}
