//! The Postgres backend over TLS (`sslmode`, feature `tls`): locks and the
//! conformance suite on encrypted connections, a custom CA from a file and
//! from bytes, channel binding, mutual TLS, and each way TLS can fail,
//! typed and within the connect timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockyard::postgres::{PgLocks, PgOptions};
use lockyard::{Lock, LockError, TlsProblem};
use lockyard_testkit::bounded;
use lockyard_testkit::conformance::Keep;
use lockyard_testkit::postgres::{PASSWORD, PgServer};
use lockyard_testkit::tls::{ServerTls, TlsFiles};

/// A connect must fail well within this (the connect timeout below).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

async fn start(tls: ServerTls) -> PgServer {
    tokio::task::spawn_blocking(move || PgServer::start_tls(&tls))
        .await
        .expect("start postgres with TLS")
}

fn with_sslmode(server: &PgServer, query: &str) -> String {
    format!("{}?{query}", server.url())
}

async fn connect(url: &str, opts: PgOptions) -> Result<PgLocks, LockError> {
    bounded(PgLocks::connect_with(
        url,
        opts.connect_timeout(CONNECT_TIMEOUT),
    ))
    .await
}

/// Two clients of `url`, trusting the CA file `ca`.
async fn two_clients(url: &str, ca: &std::path::Path) -> (PgLocks, PgLocks) {
    let a = connect(url, PgOptions::default().tls_ca(ca)).await.unwrap();
    let b = connect(url, PgOptions::default().tls_ca(ca)).await.unwrap();
    (a, b)
}

/// Takes `name` at once and releases it: the connection works.
async fn take_and_release(locks: &PgLocks, name: &str) {
    let guard = bounded(locks.try_acquire(name)).await.unwrap();
    guard.release().await.unwrap();
}

/// How many of lockyard's sessions are (`true`) or are not encrypted.
async fn lockyard_sessions(server: &PgServer, ssl: bool) -> i64 {
    let admin = server.admin().await;
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE application_name = 'lockyard' AND ssl = $1",
            &[&ssl],
        )
        .await
        .expect("query pg_stat_ssl")
        .get(0)
}

/// Connects to `url` expecting a TLS failure: its problem, after checking
/// it came within the connect timeout and names no password.
async fn tls_failure(url: &str, opts: PgOptions) -> TlsProblem {
    let started = Instant::now();
    let err = connect(url, opts).await.expect_err("the connect must fail");
    assert!(
        started.elapsed() < CONNECT_TIMEOUT,
        "took {:?}: {err}",
        started.elapsed()
    );
    assert!(
        !format!("{err} {err:?}").contains(PASSWORD),
        "a password in {err:?}"
    );
    match err {
        LockError::Tls { problem, .. } => problem,
        other => panic!("not a TLS error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_a_ca_file_locks_and_excludes_over_tls() {
    let files = TlsFiles::generate();
    let server = start(ServerTls::new(&files)).await;
    let url = with_sslmode(&server, "sslmode=verify-full");
    let (a, b) = two_clients(&url, &files.ca()).await;
    let guard = bounded(a.acquire("job", Duration::from_secs(5)))
        .await
        .unwrap();
    let err = bounded(b.try_acquire("job")).await.unwrap_err();
    assert!(err.is_would_block(), "{err}");
    assert!(lockyard_sessions(&server, true).await >= 2);
    assert_eq!(lockyard_sessions(&server, false).await, 0);
    guard.release().await.unwrap();
    take_and_release(&b, "job").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_given_as_bytes_works_and_scram_binds_the_channel() {
    let files = TlsFiles::generate();
    let server = start(ServerTls::new(&files)).await;
    let pem = std::fs::read(files.ca()).unwrap();
    // channel_binding=require fails unless the connector hands
    // tokio-postgres the tls-server-end-point data (SCRAM-SHA-256-PLUS).
    let url = with_sslmode(&server, "sslmode=require&channel_binding=require");
    let locks = connect(&url, PgOptions::default().tls_ca_pem(pem))
        .await
        .unwrap();
    let guard = bounded(locks.try_acquire("bytes")).await.unwrap();
    assert!(guard.fencing_token().is_some());
    assert!(lockyard_sessions(&server, true).await >= 1);
    guard.release().await.unwrap();
}

/// Two clients of one private TLS server (`verify-full`): two views.
async fn views(name: &str) -> (Keep, Arc<dyn Lock>, Arc<dyn Lock>) {
    let files = TlsFiles::generate();
    let server = start(ServerTls::new(&files)).await;
    let url = with_sslmode(&server, "sslmode=verify-full");
    let (a, b) = two_clients(&url, &files.ca()).await;
    let la: Arc<dyn Lock> = Arc::new(a.lock(name).unwrap());
    let lb: Arc<dyn Lock> = Arc::new(b.lock(name).unwrap());
    (Box::new((files, server, a, b)), la, lb)
}

lockyard_testkit::conformance_tests!(postgres_over_tls, views);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let files = TlsFiles::generate();
    let server = start(ServerTls::new(&files).mutual()).await;
    let url = with_sslmode(&server, "sslmode=verify-full");
    let (cert, key) = files.client();
    let locks = connect(
        &url,
        PgOptions::default()
            .tls_ca(files.ca())
            .tls_client_cert(&cert, &key),
    )
    .await
    .unwrap();
    take_and_release(&locks, "mutual").await;
    let from_bytes = PgOptions::default()
        .tls_ca(files.ca())
        .tls_client_cert_pem(std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
    connect(&url, from_bytes).await.unwrap();

    let without = tls_failure(&url, PgOptions::default().tls_ca(files.ca())).await;
    assert_eq!(without, TlsProblem::ClientCertificateRefused);
    // A client certificate another CA signed is refused too.
    let other = TlsFiles::generate();
    let (cert, key) = other.client();
    let foreign = tls_failure(
        &url,
        PgOptions::default()
            .tls_ca(files.ca())
            .tls_client_cert(cert, key),
    )
    .await;
    assert_eq!(foreign, TlsProblem::ClientCertificateRefused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_an_untrusted_certificate_in_every_tls_mode() {
    let files = TlsFiles::generate();
    let server = start(ServerTls::new(&files)).await;
    for query in [
        "sslmode=verify-full",
        "sslmode=verify-ca",
        "sslmode=require",
        "sslmode=prefer",
    ] {
        let url = with_sslmode(&server, query);
        let problem = tls_failure(&url, PgOptions::default().tls_ca(files.other_ca())).await;
        assert_eq!(problem, TlsProblem::UntrustedCertificate, "{query}");
    }
    // No sslmode is `prefer`, and the platform's roots do not know the
    // test CA: verified, so refused (no silent fall back to plain text).
    let problem = tls_failure(&server.url(), PgOptions::default()).await;
    assert_eq!(problem, TlsProblem::UntrustedCertificate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let files = TlsFiles::generate();
    let server = start(ServerTls::new(&files).expired(&files)).await;
    let url = with_sslmode(&server, "sslmode=verify-full");
    let problem = tls_failure(&url, PgOptions::default().tls_ca(files.ca())).await;
    assert_eq!(problem, TlsProblem::ExpiredCertificate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_passes_verify_ca_only() {
    let files = TlsFiles::generate();
    let server = start(ServerTls::new(&files).wrong_name(&files)).await;
    for query in ["sslmode=verify-full", "sslmode=require", "sslmode=prefer"] {
        let url = with_sslmode(&server, query);
        let problem = tls_failure(&url, PgOptions::default().tls_ca(files.ca())).await;
        assert_eq!(problem, TlsProblem::WrongHostName, "{query}");
    }
    let url = with_sslmode(&server, "sslmode=verify-ca");
    let locks = connect(&url, PgOptions::default().tls_ca(files.ca()))
        .await
        .unwrap();
    take_and_release(&locks, "any-name").await;
    assert!(lockyard_sessions(&server, true).await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_to_a_server_without_tls_is_typed_and_prefer_goes_plain() {
    let server = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    for query in ["sslmode=require", "sslmode=verify-full"] {
        let problem = tls_failure(&with_sslmode(&server, query), PgOptions::default()).await;
        assert_eq!(problem, TlsProblem::ServerIsPlain, "{query}");
    }
    let locks = connect(
        &with_sslmode(&server, "sslmode=prefer"),
        PgOptions::default(),
    )
    .await
    .unwrap();
    take_and_release(&locks, "plain").await;
    assert_eq!(lockyard_sessions(&server, true).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_to_a_server_that_requires_tls_is_typed() {
    let files = TlsFiles::generate();
    let server = start(ServerTls::new(&files).mutual()).await;
    let problem = tls_failure(
        &with_sslmode(&server, "sslmode=disable"),
        PgOptions::default(),
    )
    .await;
    assert_eq!(problem, TlsProblem::ServerRequiresTls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_would_weaken_or_ignore_tls_are_refused_before_connecting() {
    // Nothing listens there: each refusal comes before any connect.
    let url = "postgres://u:secret@127.0.0.1:9/db";
    let err = connect(&format!("{url}?sslmode=verify-ca"), PgOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, LockError::InvalidArgument { .. }) && err.to_string().contains("verify-ca"),
        "{err}"
    );
    let err = connect(
        &format!("{url}?sslmode=disable"),
        PgOptions::default().tls_ca("/nonexistent/ca.pem"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, LockError::InvalidArgument { .. }) && err.to_string().contains("disable"),
        "{err}"
    );
    let err = connect(&format!("{url}?sslmode=allow"), PgOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::InvalidArgument { .. }), "{err}");
    let err = connect(
        &format!("{url}?sslmode=verify-full"),
        PgOptions::default().tls_ca_pem(b"not PEM".to_vec()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, LockError::InvalidArgument { .. }) && !err.to_string().contains("secret"),
        "{err}"
    );
}
