//! `lockyard exec --redis rediss://…` against private TLS-only
//! redis-servers: processes exclude each other over TLS, the CA comes from
//! `--tls-ca` or `LOCKYARD_TLS_CA`, mutual TLS from `--tls-cert` and
//! `--tls-key`, and a wrong CA or a plain URL to a TLS port fails fast with
//! a clear error (exit 69).
#![cfg(all(feature = "redis", feature = "tls", unix))]

mod cli_support;
use std::time::{Duration, Instant};

use cli_support::*;
use lockyard_testkit::redis::RedisServer;
use lockyard_testkit::tls::{ServerTls, TlsFiles};

#[test]
fn exec_over_tls_excludes_across_processes() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files));
    let url = server.url();
    let ca = files.ca().display().to_string();
    exec_over_tls_excludes("--redis", &url, &ca, |pid| format!("held by pid {pid}"));
}

#[test]
fn a_wrong_ca_and_a_plain_url_to_a_tls_port_fail_fast_and_say_so() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files));
    let env = Env::new();
    let other = files.other_ca().display().to_string();

    let started = Instant::now();
    let out = env.run(&[
        "exec",
        "--redis",
        &server.url(),
        "--tls-ca",
        &other,
        "job",
        "--",
        "true",
    ]);
    assert_clean_failure(&out, 69);
    assert!(
        stderr(&out).contains("not signed by a CA this client trusts"),
        "{}",
        stderr(&out)
    );

    let plain = server.url().replacen("rediss://", "redis://", 1);
    let out = env.run(&["exec", "--redis", &plain, "job", "--", "true"]);
    assert_clean_failure(&out, 69);
    assert!(stderr(&out).contains("use rediss://"), "{}", stderr(&out));
    // Both well within the default connect timeout (5 s) each.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // A CA given for a plain URL is a usage error, not a silent plain
    // connection.
    let ca = files.ca().display().to_string();
    let out = env.run(&[
        "exec", "--redis", &plain, "--tls-ca", &ca, "job", "--", "true",
    ]);
    assert_clean_failure(&out, 64);
}

#[test]
fn mutual_tls_needs_tls_cert_and_tls_key() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files).mutual());
    let env = Env::new();
    let ca = files.ca().display().to_string();
    let (cert, key) = files.client();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());

    let out = env.run(&[
        "exec",
        "--redis",
        &server.url(),
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

    let out = env.run(&[
        "exec",
        "--redis",
        &server.url(),
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

    // --tls-cert without --tls-key is a usage error.
    let out = env.run(&[
        "exec",
        "--redis",
        &server.url(),
        "--tls-cert",
        &cert,
        "job",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}
