//! TLS to Redis (feature `tls`): `rediss://` to private TLS-only servers
//! with a CA the test makes, mutual TLS, ACL users, Redlock over TLS, and
//! every way a connection can be wrong (the wrong CA, an expired
//! certificate, one for another host, a plain URL to a TLS port, a TLS URL
//! to a plain port, a missing client certificate), each a typed error
//! within the connect timeout.
#![cfg(all(feature = "redis", feature = "tls"))]

use std::time::{Duration, Instant};

use lockyard::redis::{RedisLocks, RedisOptions, Redlock};
use lockyard::{LockError, TlsProblem};
use lockyard_testkit::redis::RedisServer;
use lockyard_testkit::tls::{ServerTls, TlsFiles};
use lockyard_testkit::{bounded, eventually};

/// The connect timeout of the failing connects: every one must fail within
/// it, not hang.
const CONNECT: Duration = Duration::from_secs(2);

fn opts(files: &TlsFiles) -> RedisOptions {
    RedisOptions::default()
        .ttl(Duration::from_secs(10))
        .connect_timeout(CONNECT)
        .tls_ca(files.ca())
}

/// Connects, expecting a TLS error; checks it came within the connect
/// timeout and returns its problem and its message (with the chain).
async fn tls_failure(url: &str, opts: RedisOptions) -> (TlsProblem, String) {
    let started = Instant::now();
    let err = bounded(RedisLocks::connect_with(url, opts))
        .await
        .expect_err("the connect must fail");
    let took = started.elapsed();
    assert!(
        took <= CONNECT + Duration::from_millis(300),
        "took {took:?}, more than the connect timeout: {err}"
    );
    let message = chain(&err);
    match err {
        LockError::Tls { problem, .. } => (problem, message),
        other => panic!("expected LockError::Tls, got {other:?}"),
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_servers_ca_locks_and_excludes_another_client() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files));
    assert!(server.url().starts_with("rediss://"));
    let a = bounded(RedisLocks::connect_with(&server.url(), opts(&files)))
        .await
        .unwrap();
    let b = bounded(RedisLocks::connect_with(&server.url(), opts(&files)))
        .await
        .unwrap();
    let held = bounded(a.try_acquire("job")).await.unwrap();
    let refused = bounded(b.try_acquire("job")).await.unwrap_err();
    assert!(refused.is_would_block(), "{refused}");
    // A waiter over TLS is woken by the release (pub/sub over TLS too).
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let g = b.acquire("job", Duration::from_secs(8)).await;
        (g.map(|_| ()), started.elapsed())
    });
    // The waiter subscribed to the release channel over TLS.
    eventually("the waiter subscribes over TLS", || async {
        let reply = server.command(&["PUBSUB", "NUMSUB", "lockyard:{job}:released"]);
        reply.lines().last() == Some("1")
    })
    .await;
    bounded(held.release()).await.unwrap();
    let (got, waited) = bounded(waiter).await.unwrap();
    got.unwrap();
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_can_be_given_as_pem_bytes() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files));
    let pem = std::fs::read(files.ca()).unwrap();
    let o = RedisOptions::default().tls_ca_pem(pem);
    let locks = bounded(RedisLocks::connect_with(&server.url(), o))
        .await
        .unwrap();
    let held = bounded(locks.try_acquire("bytes")).await.unwrap();
    bounded(held.release()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_an_untrusted_certificate() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files));
    let o = opts(&files).tls_ca(files.other_ca());
    let (problem, msg) = tls_failure(&server.url(), o).await;
    assert_eq!(problem, TlsProblem::UntrustedCertificate, "{msg}");
    assert!(
        msg.contains("not signed by a CA this client trusts"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_roots_do_not_trust_a_private_ca() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files));
    let o = RedisOptions::default().connect_timeout(CONNECT);
    let (problem, msg) = tls_failure(&server.url(), o).await;
    assert_eq!(problem, TlsProblem::UntrustedCertificate, "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_server_certificate_is_reported_as_expired() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files).expired(&files));
    let (problem, msg) = tls_failure(&server.url(), opts(&files)).await;
    assert_eq!(problem, TlsProblem::ExpiredCertificate, "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_is_reported_as_the_wrong_host_name() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files).wrong_name(&files));
    let (problem, msg) = tls_failure(&server.url(), opts(&files)).await;
    assert_eq!(problem, TlsProblem::WrongHostName, "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_url_to_a_tls_port_says_the_server_requires_tls() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files));
    let plain = server.url().replacen("rediss://", "redis://", 1);
    let o = RedisOptions::default().connect_timeout(CONNECT);
    let (problem, msg) = tls_failure(&plain, o).await;
    assert_eq!(problem, TlsProblem::ServerRequiresTls, "{msg}");
    assert!(msg.contains("use rediss://"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rediss_url_to_a_plain_port_says_the_server_is_plain() {
    let files = TlsFiles::generate();
    let server = RedisServer::start();
    let tls_url = server.url().replacen("redis://", "rediss://", 1);
    let (problem, msg) = tls_failure(&tls_url, opts(&files)).await;
    assert_eq!(problem, TlsProblem::ServerIsPlain, "{msg}");
    assert!(msg.contains("use redis://"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_its_certificate_and_admits_one_with_it() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files).mutual());
    let (problem, msg) = tls_failure(&server.url(), opts(&files)).await;
    assert_eq!(problem, TlsProblem::ClientCertificateRefused, "{msg}");

    let (cert, key) = files.client();
    let with = opts(&files).tls_client_cert(&cert, &key);
    let locks = bounded(RedisLocks::connect_with(&server.url(), with))
        .await
        .unwrap();
    let g = bounded(locks.try_acquire("mutual")).await.unwrap();
    bounded(g.release()).await.unwrap();

    // The same, from PEM bytes.
    let pem = RedisOptions::default()
        .tls_ca(files.ca())
        .tls_client_cert_pem(std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
    let locks = bounded(RedisLocks::connect_with(&server.url(), pem))
        .await
        .unwrap();
    let held = bounded(locks.try_acquire("mutual")).await.unwrap();
    bounded(held.release()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_that_are_missing_or_not_pem_or_for_a_plain_url_are_refused() {
    let files = TlsFiles::generate();
    let url = "rediss://127.0.0.1:1/";
    let missing = RedisOptions::default().tls_ca(files.dir().join("nope.pem"));
    let err = RedisLocks::connect_with(url, missing).await.unwrap_err();
    assert!(
        err.is_invalid_input() && err.to_string().contains("nope.pem"),
        "{err}"
    );
    let not_pem = RedisOptions::default().tls_ca_pem(b"not a certificate".to_vec());
    let err = RedisLocks::connect_with(url, not_pem).await.unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    let (cert, _) = files.client();
    let key_is_a_cert = RedisOptions::default().tls_client_cert(&cert, &cert);
    let err = RedisLocks::connect_with(url, key_is_a_cert)
        .await
        .unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    // A CA given with a plain URL: refused, so TLS is never silently off.
    let err = RedisLocks::connect_with("redis://127.0.0.1:1/", opts(&files))
        .await
        .unwrap_err();
    assert!(
        err.is_invalid_input() && err.to_string().contains("rediss://"),
        "{err}"
    );
    // Certificate checks cannot be switched off from the URL.
    let err = RedisLocks::connect_with("rediss://127.0.0.1:1/#insecure", RedisOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_never_appears_in_an_error() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files));
    assert_eq!(
        server.command(&["CONFIG", "SET", "requirepass", "right-pw-1"]),
        "+OK"
    );
    let secret = "wrong-pw-7f3a";
    let url = format!("rediss://:{secret}@127.0.0.1:{}/", server.port());
    let err = bounded(RedisLocks::connect_with(&url, opts(&files)))
        .await
        .unwrap_err();
    let shown = format!("{} / {err:?} / {}", chain(&err), chain(&err));
    assert!(!shown.contains(secret), "{shown}");
    assert!(matches!(err, LockError::Backend { .. }), "{err:?}");
    // And with a CA that does not match: the TLS error names the server
    // without the password.
    let o = opts(&files).tls_ca(files.other_ca());
    let (_, msg) = tls_failure(&url, o).await;
    assert!(
        !msg.contains(secret) && msg.contains("***@127.0.0.1"),
        "{msg}"
    );
}

/// An ACL user with `ACL DRYRUN` and everything but `PUBLISH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_missing_a_command_is_refused_at_connect_naming_it() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files));
    let r = server.command(&[
        "ACL",
        "SETUSER",
        "locker",
        "on",
        ">pw-locker",
        "~lockyard:*",
        "&lockyard:*",
        "+@all",
        "-publish",
    ]);
    assert_eq!(r, "+OK");
    let url = format!("rediss://locker:pw-locker@127.0.0.1:{}/", server.port());
    let err = bounded(RedisLocks::connect_with(&url, opts(&files)))
        .await
        .unwrap_err();
    match &err {
        LockError::NotPermitted { user, command, .. } => {
            assert_eq!((user.as_str(), command.as_str()), ("locker", "PUBLISH"));
        }
        other => panic!("expected NotPermitted, got {other:?}"),
    }
    assert!(!chain(&err).contains("pw-locker"));

    // Keys outside the prefix the user may touch: refused too, naming the
    // first command whose key is out of reach.
    let r = server.command(&[
        "ACL",
        "SETUSER",
        "other",
        "on",
        ">pw-other",
        "~other:*",
        "&*",
        "+@all",
    ]);
    assert_eq!(r, "+OK");
    let url = format!("rediss://other:pw-other@127.0.0.1:{}/", server.port());
    let err = bounded(RedisLocks::connect_with(&url, opts(&files)))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::NotPermitted { .. }), "{err:?}");

    // A user with what lockyard needs (and no admin rights, not even ACL
    // DRYRUN: the check is skipped) connects and locks.
    let r = server.command(&[
        "ACL",
        "SETUSER",
        "worker",
        "on",
        ">pw-worker",
        "~lockyard:*",
        "&lockyard:*",
        "+@all",
        "-@admin",
        "-@dangerous",
        "+info",
    ]);
    assert_eq!(r, "+OK");
    let url = format!("rediss://worker:pw-worker@127.0.0.1:{}/", server.port());
    let locks = bounded(RedisLocks::connect_with(&url, opts(&files)))
        .await
        .unwrap();
    let g = bounded(locks.try_acquire("acl")).await.unwrap();
    bounded(g.release()).await.unwrap();
}

/// A user that may not run `ACL DRYRUN` (so the check is skipped) still
/// learns at connect which command it lacks, if connecting needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_acl_dryrun_learns_of_a_missing_script_load_at_connect() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files));
    let r = server.command(&[
        "ACL",
        "SETUSER",
        "noload",
        "on",
        ">pw-noload",
        "~lockyard:*",
        "&lockyard:*",
        "+@all",
        "-@admin",
        "-@dangerous",
        "+info",
        "-script|load",
    ]);
    assert_eq!(r, "+OK");
    let url = format!("rediss://noload:pw-noload@127.0.0.1:{}/", server.port());
    let err = bounded(RedisLocks::connect_with(&url, opts(&files)))
        .await
        .unwrap_err();
    match &err {
        LockError::NotPermitted { user, command, .. } => {
            assert_eq!((user.as_str(), command.as_str()), ("noload", "SCRIPT LOAD"));
        }
        other => panic!("expected NotPermitted, got {other:?}"),
    }
}

/// A client built without connecting (`connect_lazy`) reports TLS
/// failures at its first operation, typed the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_client_reports_a_wrong_ca_at_first_use() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files));
    let o = opts(&files).tls_ca(files.other_ca());
    let locks = RedisLocks::connect_lazy(&server.url(), o).unwrap();
    let err = bounded(locks.try_acquire("lazy")).await.unwrap_err();
    match &err {
        LockError::Tls {
            server: s, problem, ..
        } => {
            assert_eq!(*problem, TlsProblem::UntrustedCertificate);
            assert_eq!(s, &server.url());
        }
        other => panic!("expected LockError::Tls, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_with_every_needed_command_passes_the_check() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files));
    let r = server.command(&[
        "ACL",
        "SETUSER",
        "full",
        "on",
        ">pw-full",
        "~lockyard:*",
        "&lockyard:*",
        "+@all",
    ]);
    assert_eq!(r, "+OK");
    let url = format!("rediss://full:pw-full@127.0.0.1:{}/", server.port());
    let locks = bounded(RedisLocks::connect_with(&url, opts(&files)))
        .await
        .unwrap();
    let g = bounded(locks.try_acquire("full")).await.unwrap();
    bounded(g.release()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_over_three_tls_servers_excludes() {
    let files = TlsFiles::generate();
    let tls = ServerTls::new(&files);
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_tls(&tls)).collect();
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let a = bounded(Redlock::connect(&urls, opts(&files)))
        .await
        .unwrap();
    let b = bounded(Redlock::connect(&urls, opts(&files)))
        .await
        .unwrap();
    let held = bounded(a.try_acquire("quorum")).await.unwrap();
    assert!(bounded(b.try_acquire("quorum")).await.is_err());
    bounded(held.release()).await.unwrap();
    let held = bounded(b.try_acquire("quorum")).await.unwrap();
    bounded(held.release()).await.unwrap();
    // A wrong CA on a Redlock server is the same typed error, per server.
    let wrong = opts(&files).tls_ca(files.other_ca());
    let err = bounded(Redlock::connect(&urls, wrong)).await.unwrap_err();
    match &err {
        LockError::NoQuorum { errors, .. } => {
            assert!(!errors.is_empty(), "{err:?}");
            for e in errors {
                assert!(
                    matches!(
                        e,
                        LockError::Tls {
                            problem: TlsProblem::UntrustedCertificate,
                            ..
                        }
                    ),
                    "{e:?}"
                );
            }
        }
        other => panic!("expected NoQuorum of TLS errors, got {other:?}"),
    }
}
