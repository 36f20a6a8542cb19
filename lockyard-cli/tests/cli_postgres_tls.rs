//! `lockyard exec --postgres 'postgres://…?sslmode=verify-full'` against
//! private TLS Postgres servers: processes exclude each other over TLS,
//! the CA comes from `--tls-ca` or `LOCKYARD_TLS_CA`, mutual TLS from
//! `--tls-cert` and `--tls-key`, and a wrong CA fails fast with a clear
//! error (exit 69).
#![cfg(all(feature = "postgres", feature = "tls", target_os = "linux"))]

mod cli_support;
use std::time::{Duration, Instant};

use cli_support::*;
use lockyard_testkit::postgres::{PASSWORD, PgServer};
use lockyard_testkit::tls::{ServerTls, TlsFiles};

fn verify_full(server: &PgServer) -> String {
    format!("{}?sslmode=verify-full", server.url())
}

/// `lockyard exec [-n] --postgres URL FLAGS... job -- true`.
fn exec_true(env: &Env, url: &str, flags: &[&str]) -> std::process::Output {
    let mut args = vec!["exec", "--postgres", url];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["job", "--", "true"]);
    env.run(&args)
}

#[test]
fn exec_over_tls_excludes_across_processes() {
    let files = TlsFiles::generate();
    let server = PgServer::start_tls(&ServerTls::new(&files));
    let url = verify_full(&server);
    let ca = files.ca().display().to_string();
    exec_over_tls_excludes("--postgres", &url, &ca, |_| {
        "postgres backend pid".to_owned()
    });
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
    let out = exec_true(
        &env,
        &url,
        &["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = exec_true(&env, &url, &["--tls-ca", &ca]);
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
    let out = exec_true(&env, &verify_full(&server), &["--tls-ca", &other]);
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
    let out = exec_true(&env, &plain, &["--tls-ca", &other]);
    assert_clean_failure(&out, 64);
}
