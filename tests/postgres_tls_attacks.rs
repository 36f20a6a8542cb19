//! Attacks on the Postgres backend's TLS: fake servers on loopback that
//! refuse TLS, answer it with garbage, hang up mid-handshake or trickle a
//! reply; `sslmode` spelled every way a URL or key-value string allows
//! (percent-encoded, twice, in another case, empty, after a `?` in the
//! password, inside `options`); host lists, `hostaddr` and Unix sockets
//! against the host name check; passwords in every failure's message,
//! `Debug` output and tracing events; and acquisitions dropped at awkward
//! moments on TLS connections, whose server-side waits must be cancelled
//! through the TLS connector.
//!
//! Every server is private: a fake one on a free loopback port, or a
//! [`PgServer`] of the test kit.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockyard::postgres::{PgLocks, PgOptions};
use lockyard::{LockError, TlsProblem};
use lockyard_testkit::postgres::{PASSWORD, PgServer};
use lockyard_testkit::tls::{ServerTls, TlsFiles};
use lockyard_testkit::{bounded, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The connect timeout every client here is given; each failure must come
/// within it (and a little scheduling slack).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_millis(1500);

/// A password no message may show.
const SECRET: &str = "Zq9-hunter2-secret";

/// The 8-byte SSLRequest every TLS attempt starts with.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// How a fake server answers the SSLRequest.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// `N`: no TLS here.
    Refuse,
    /// `S`, then bytes that are no TLS record.
    Garbage,
    /// `S`, reads the ClientHello, hangs up.
    HangUp,
    /// `S`, then a TLS record header announcing 16 KiB, sent a byte every
    /// 100 ms.
    Trickle,
    /// Nothing at all.
    Silence,
    /// An `ErrorResponse`, as a server too old for TLS answers.
    Error,
}

/// A fake Postgres server on loopback: what each connection sent after
/// the SSLRequest (`None` for a connection that sent no SSLRequest).
struct Fake {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
}

impl Fake {
    async fn start(answer: Answer) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let after = serve(socket, answer).await;
                    record.lock().unwrap().push(after);
                });
            }
        });
        Fake { addr, seen }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres:{SECRET}@127.0.0.1:{}/postgres?{query}",
            self.port()
        )
    }

    /// Every connection's bytes after its SSLRequest, once each has ended.
    async fn connections(&self) -> Vec<Option<Vec<u8>>> {
        // The fake's reader stops at a quiet 300 ms or the client's close.
        tokio::time::sleep(Duration::from_millis(400)).await;
        self.seen.lock().unwrap().clone()
    }
}

/// One connection to a fake server.
async fn serve(mut socket: TcpStream, answer: Answer) -> Option<Vec<u8>> {
    let mut request = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut request)).await;
    if !matches!(read, Ok(Ok(_))) || request != SSL_REQUEST {
        // A plain StartupMessage (or nothing): no TLS was asked for.
        return None;
    }
    match answer {
        Answer::Refuse => socket.write_all(b"N").await.ok()?,
        Answer::Garbage => {
            let mut junk = b"S".to_vec();
            junk.extend((0..512u32).map(|i| (i * 7 + 3) as u8));
            socket.write_all(&junk).await.ok()?;
        }
        Answer::HangUp => {
            socket.write_all(b"S").await.ok()?;
            let mut hello = [0u8; 5];
            let _ = socket.read_exact(&mut hello).await;
            return Some(hello.to_vec());
        }
        Answer::Trickle => {
            socket.write_all(b"S").await.ok()?;
            let header = [0x16u8, 0x03, 0x03, 0x40, 0x00];
            for b in header
                .iter()
                .copied()
                .chain(std::iter::repeat(0))
                .take(3000)
            {
                if socket.write_all(&[b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return Some(Vec::new());
        }
        Answer::Silence => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return Some(Vec::new());
        }
        Answer::Error => {
            let text = b"SFATAL\0C0A000\0Munsupported frontend protocol\0\0";
            let mut msg = vec![b'E'];
            msg.extend_from_slice(&(text.len() as u32 + 4).to_be_bytes());
            msg.extend_from_slice(text);
            socket.write_all(&msg).await.ok()?;
        }
    }
    // Whatever comes next: a downgraded client's plain StartupMessage.
    let mut after = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(300), socket.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        after.extend_from_slice(&buf[..n]);
    }
    Some(after)
}

fn opts() -> PgOptions {
    PgOptions::default().connect_timeout(CONNECT_TIMEOUT)
}

/// Connects, expecting a failure within the connect timeout that names no
/// password (in its message, `Debug` output or sources).
async fn must_fail(url: &str, opts: PgOptions) -> LockError {
    let started = Instant::now();
    let err = bounded(PgLocks::connect_with(url, opts))
        .await
        .expect_err("the connect must fail");
    let took = started.elapsed();
    assert!(took < CONNECT_TIMEOUT + SLACK, "took {took:?}: {err}");
    assert_no_secret(&err);
    err
}

fn assert_no_secret(err: &LockError) {
    let mut text = format!("{err} {err:?}");
    let mut next = std::error::Error::source(err);
    while let Some(e) = next {
        text.push_str(&format!(" {e} {e:?}"));
        next = e.source();
    }
    assert_text_has_no_secret(&text);
}

fn assert_text_has_no_secret(text: &str) {
    // The kit's directories are named lockyard-test-…, like its password.
    let text = text
        .replace("lockyard-test-pg", "<dir>")
        .replace("lockyard-test-tls", "<dir>");
    for secret in [SECRET, PASSWORD, "hunter2"] {
        assert!(!text.contains(secret), "{secret:?} shown in: {text}");
    }
}

fn tls_problem(err: &LockError) -> Option<TlsProblem> {
    match err {
        LockError::Tls { problem, .. } => Some(*problem),
        _ => None,
    }
}

/// The CA files of a test CA (a fake server's client needs one for
/// `verify-ca`).
fn ca_opts(files: &TlsFiles) -> PgOptions {
    opts().tls_ca(files.ca())
}

/// Asserts that no connection to `fake` went on in plain text: each
/// asked for TLS first and sent nothing after a refusal.
async fn assert_never_plain(fake: &Fake, what: &str) {
    let seen = fake.connections().await;
    for conn in &seen {
        match conn {
            None => panic!("{what}: a connection started in plain text"),
            Some(after) => assert!(
                // TLS records (handshake, alert) only; a StartupMessage
                // starts with its length's high byte, 0.
                after.first().is_none_or(|b| (0x14..=0x17).contains(b)),
                "{what}: after the TLS refusal the client sent {} plain bytes: {:?}",
                after.len(),
                String::from_utf8_lossy(after)
            ),
        }
    }
}

// ---- fake servers: no plain text, no hang, typed errors ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_tls_gets_no_plain_startup_in_any_tls_mode() {
    let files = TlsFiles::generate();
    let fake = Fake::start(Answer::Refuse).await;
    for mode in ["require", "verify-ca", "verify-full"] {
        let err = must_fail(&fake.url(&format!("sslmode={mode}")), ca_opts(&files)).await;
        assert_eq!(
            tls_problem(&err),
            Some(TlsProblem::ServerIsPlain),
            "{mode}: {err}"
        );
    }
    assert_never_plain(&fake, "sslmode=require/verify-*").await;
    assert_eq!(fake.connections().await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_tls_with_garbage_or_an_error_fails_typed_and_fast() {
    let files = TlsFiles::generate();
    for answer in [Answer::Garbage, Answer::Error, Answer::HangUp] {
        let fake = Fake::start(answer).await;
        for mode in ["require", "verify-full"] {
            let err = must_fail(&fake.url(&format!("sslmode={mode}")), ca_opts(&files)).await;
            assert!(
                matches!(err, LockError::Tls { .. } | LockError::Unavailable { .. }),
                "{answer:?} {mode}: {err:?}"
            );
        }
        assert_never_plain(&fake, &format!("{answer:?}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_or_silent_server_is_cut_off_at_the_connect_timeout() {
    let files = TlsFiles::generate();
    for answer in [Answer::Trickle, Answer::Silence] {
        let fake = Fake::start(answer).await;
        let started = Instant::now();
        let err = must_fail(&fake.url("sslmode=verify-full"), ca_opts(&files)).await;
        assert!(
            started.elapsed() >= CONNECT_TIMEOUT - Duration::from_millis(100),
            "{answer:?}: gave up early: {err}"
        );
        assert!(
            matches!(err, LockError::Unavailable { .. }),
            "{answer:?}: {err:?}"
        );
    }
}

// ---- sslmode spelled every way ----

/// Connects to a TLS-refusing fake with `query` (after the URL's `?`):
/// either refused before connecting or failed as plain, never a plain
/// StartupMessage.
async fn refused_or_tls_only(query: &str) {
    let fake = Fake::start(Answer::Refuse).await;
    let url = fake.url(query);
    let err = must_fail(&url, opts()).await;
    assert!(
        matches!(err, LockError::InvalidArgument { .. })
            || tls_problem(&err) == Some(TlsProblem::ServerIsPlain),
        "{query}: {err:?}"
    );
    assert_never_plain(&fake, query).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_in_odd_spellings_is_read_or_refused_never_ignored() {
    for query in [
        "SSLMODE=require",
        "sslmode=REQUIRE",
        "sslmode=Verify-Full",
        "sslmode=",
        "sslmode",
        "sslmode=require%00",
        "sslmode=%72equire",
        "sslmode=require&options=-c%20sslmode%3Ddisable",
        "options=-c%20sslmode%3Ddisable&sslmode=require",
        "application_name=a%26sslmode%3Ddisable&sslmode=require",
    ] {
        refused_or_tls_only(query).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percent_encoded_sslmode_key_is_not_downgraded_to_prefer() {
    // tokio-postgres decodes keys: `ssl%6dode` is `sslmode` to it.
    refused_or_tls_only("ssl%6dode=require").await;
    refused_or_tls_only("%73slmode=require").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_after_leading_whitespace_keeps_its_sslmode() {
    // Found by the fuzz target pg_url: with leading whitespace the string
    // is key-value to both parsers, whose one key is `postgres://…?sslmode`;
    // rebuilt without the whitespace it became a URL with sslmode=require,
    // which the default `prefer` overrode.
    let fake = Fake::start(Answer::Refuse).await;
    for lead in [" ", "\t", "\u{c}"] {
        let url = format!("{lead}{}", fake.url("sslmode=require"));
        let err = must_fail(&url, opts()).await;
        assert!(
            matches!(err, LockError::InvalidArgument { .. })
                || tls_problem(&err) == Some(TlsProblem::ServerIsPlain),
            "{url:?}: {err:?}"
        );
    }
    assert_never_plain(&fake, "a URL after whitespace").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_mark_in_the_password_does_not_hide_sslmode() {
    // tokio-postgres takes the credentials up to the first `@`, so the
    // query starts at the `?` after the host: sslmode=require is its.
    let fake = Fake::start(Answer::Refuse).await;
    let url = format!(
        "postgres://postgres:pa?ss{SECRET}@127.0.0.1:{}/postgres?sslmode=require",
        fake.port()
    );
    let err = must_fail(&url, opts()).await;
    assert!(
        matches!(err, LockError::InvalidArgument { .. })
            || tls_problem(&err) == Some(TlsProblem::ServerIsPlain),
        "{err:?}"
    );
    assert_never_plain(&fake, "a ? in the password").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_sslmode_given_twice_with_disable_is_refused() {
    // Last wins in libpq; here a URL that both asks for verification and
    // turns TLS off is ambiguous and refused, in both orders and forms.
    let fake = Fake::start(Answer::Refuse).await;
    for query in [
        "sslmode=verify-full&sslmode=disable",
        "sslmode=require&application_name=x&sslmode=disable",
        "sslmode=disable&sslmode=require",
    ] {
        let err = must_fail(&fake.url(query), opts()).await;
        assert!(
            matches!(err, LockError::InvalidArgument { .. }),
            "{query}: {err:?}"
        );
    }
    let kv = format!(
        "host=127.0.0.1 port={} user=postgres password={SECRET} sslmode=verify-full \
         sslmode=disable",
        fake.port()
    );
    let err = must_fail(&kv, opts()).await;
    assert!(matches!(err, LockError::InvalidArgument { .. }), "{err:?}");
    assert_never_plain(&fake, "sslmode twice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_sslmode_with_quotes_spaces_and_escapes_is_honoured() {
    let fake = Fake::start(Answer::Refuse).await;
    let p = fake.port();
    for kv in [
        format!("host=127.0.0.1 port={p} user=postgres password={SECRET} sslmode='require'"),
        format!("host=127.0.0.1 port={p} user=postgres sslmode = require password='{SECRET}'"),
        format!("host=127.0.0.1 port={p} password='a\\' sslmode=disable' sslmode=require"),
        format!("host=127.0.0.1 port={p} options='-c sslmode=disable' sslmode=require"),
        format!("host=127.0.0.1 port={p} password=a\\ b sslmode=require"),
        format!("sslmode=require\thost=127.0.0.1\nport={p} user=postgres"),
    ] {
        let err = must_fail(&kv, opts()).await;
        assert!(
            matches!(err, LockError::InvalidArgument { .. })
                || tls_problem(&err) == Some(TlsProblem::ServerIsPlain),
            "{kv}: {err:?}"
        );
    }
    assert_never_plain(&fake, "key-value sslmode").await;
}

// ---- host lists, hostaddr, Unix sockets: which name is checked ----

async fn start(tls: ServerTls) -> PgServer {
    tokio::task::spawn_blocking(move || PgServer::start_tls(&tls))
        .await
        .expect("start postgres with TLS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_hosts_the_name_checked_is_the_host_connected_to() {
    let files = TlsFiles::generate();
    let server = start(ServerTls::new(&files)).await;
    let p = server.port();
    // 127.0.0.2 refuses (the server listens on 127.0.0.1 only); the
    // certificate is for 127.0.0.1: verify-full passes only if the second
    // host's name is the one checked.
    let kv = format!(
        "host=127.0.0.2,127.0.0.1 port={p},{p} user=postgres password={PASSWORD} \
         dbname=postgres sslmode=verify-full"
    );
    let locks = bounded(PgLocks::connect_with(&kv, ca_opts(&files)))
        .await
        .unwrap();
    let guard = bounded(locks.try_acquire("two-hosts")).await.unwrap();
    guard.release().await.unwrap();

    // And the other way round: a certificate for another name, reached as
    // the second host, is refused.
    let wrong = start(ServerTls::new(&files).wrong_name(&files)).await;
    let w = wrong.port();
    let kv = format!(
        "host=127.0.0.2,127.0.0.1 port={w},{w} user=postgres password={PASSWORD} \
         dbname=postgres sslmode=verify-full"
    );
    let err = must_fail(&kv, ca_opts(&files)).await;
    assert_eq!(
        tls_problem(&err),
        Some(TlsProblem::WrongHostName),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hostaddr_the_name_checked_is_host_not_the_address() {
    let files = TlsFiles::generate();
    // The certificate is valid for 127.0.0.1; connecting to that address
    // under another name must not pass verify-full.
    let server = start(ServerTls::new(&files)).await;
    let kv = format!(
        "host=elsewhere.invalid hostaddr=127.0.0.1 port={} user=postgres \
         password={PASSWORD} dbname=postgres sslmode=verify-full",
        server.port()
    );
    let err = must_fail(&kv, ca_opts(&files)).await;
    assert_eq!(
        tls_problem(&err),
        Some(TlsProblem::WrongHostName),
        "{err:?}"
    );
    // And a certificate for elsewhere.invalid passes under that name.
    let elsewhere = start(ServerTls::new(&files).wrong_name(&files)).await;
    let kv = format!(
        "host=elsewhere.invalid hostaddr=127.0.0.1 port={} user=postgres \
         password={PASSWORD} dbname=postgres sslmode=verify-full",
        elsewhere.port()
    );
    let locks = bounded(PgLocks::connect_with(&kv, ca_opts(&files)))
        .await
        .unwrap();
    let guard = bounded(locks.try_acquire("hostaddr")).await.unwrap();
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_over_a_unix_socket_fails_rather_than_going_plain() {
    let files = TlsFiles::generate();
    let server = start(ServerTls::new(&files)).await;
    // The kit's socket directory (see `PgServer`).
    let dir = server.socket_dir().to_owned();
    assert!(dir.is_dir(), "{}", dir.display());
    for mode in ["require", "verify-full"] {
        let kv = format!(
            "host={} port={} user=postgres dbname=postgres sslmode={mode}",
            dir.display(),
            server.port()
        );
        let err = must_fail(&kv, ca_opts(&files)).await;
        assert!(
            matches!(err, LockError::Tls { .. }),
            "{mode} over a Unix socket: {err:?}"
        );
    }
    // prefer goes plain there, as libpq does.
    let kv = format!(
        "host={} port={} user=postgres dbname=postgres sslmode=prefer",
        dir.display(),
        server.port()
    );
    let locks = bounded(PgLocks::connect_with(&kv, ca_opts(&files)))
        .await
        .unwrap();
    let guard = bounded(locks.try_acquire("unix")).await.unwrap();
    guard.release().await.unwrap();
}

// ---- passwords ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failure_before_connecting_shows_the_password() {
    let files = TlsFiles::generate();
    let unreachable = "127.0.0.1:9";
    for url in [
        // A forgotten value: the password becomes sslmode's value.
        format!("host=127.0.0.1 port=9 sslmode= password={SECRET}"),
        format!("host=127.0.0.1 port=9 sslmode password={SECRET}"),
        format!("postgres://u:{SECRET}@{unreachable}/db?sslmode=verify-full"),
        format!("postgres://u:{SECRET}@{unreachable}/db?sslmode=bogus"),
        format!("postgres://u:{SECRET}@127.0.0.1:notaport/db?sslmode=require"),
        format!("postgres://u:{SECRET}@{unreachable}/db?sslmode=require&bogus_key=1"),
        format!("postgres://u:{SECRET}%ZZ@{unreachable}/db?sslmode=require"),
        format!("postgres://u:Zq9%2Dhunter2%2Dsecret@{unreachable}/db?sslmode=require"),
        format!("postgres://u:{SECRET}@{unreachable}/db?sslmode={SECRET}"),
        format!("postgres://u:pw?sslmode={SECRET}@{unreachable}/db"),
        format!("host=127.0.0.1 port=9 password={SECRET} sslmode=nope"),
        format!("host=127.0.0.1 port=9 password='{SECRET} \\' x' sslmode=verify-full"),
        format!("host=127.0.0.1 port=9 password='{SECRET}"),
        format!("host=127.0.0.1 port=notaport password={SECRET} sslmode=require"),
    ] {
        for o in [
            opts(),
            opts().tls_ca("/nonexistent/ca.pem"),
            opts().tls_ca(files.ca()),
            opts().tls_ca_pem(b"not PEM".to_vec()),
            opts()
                .tls_ca(files.ca())
                .tls_client_cert("/nonexistent/c.pem", "/nonexistent/k.pem"),
        ] {
            let err = must_fail(&url, o).await;
            assert_no_secret(&err);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_handshake_failure_shows_the_password() {
    let files = TlsFiles::generate();
    let mutual = start(ServerTls::new(&files).mutual()).await;
    let url = format!("{}?sslmode=verify-full", mutual.url());
    // A refused client certificate, a wrong CA, a foreign client cert.
    let err = must_fail(&url, ca_opts(&files)).await;
    assert_eq!(
        tls_problem(&err),
        Some(TlsProblem::ClientCertificateRefused)
    );
    must_fail(&url, opts().tls_ca(files.other_ca())).await;
    let other = TlsFiles::generate();
    let (cert, key) = other.client();
    must_fail(&url, ca_opts(&files).tls_client_cert(cert, key)).await;
    // A wrong password over TLS, in the URL and percent-encoded.
    let (cert, key) = files.client();
    let good = ca_opts(&files).tls_client_cert(&cert, &key);
    let wrong = format!("{}?sslmode=verify-full", mutual.url_as("postgres", SECRET));
    let err = must_fail(&wrong, good.clone()).await;
    assert!(matches!(err, LockError::Backend { .. }), "{err:?}");
    // And a client that connected: its Debug output.
    let locks = bounded(PgLocks::connect_with(&url, good)).await.unwrap();
    assert_text_has_no_secret(&format!("{locks:?}"));
}

/// Collects every tracing event as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn no_tracing_event_shows_the_password() {
    // See tests/redis_owner.rs: a second live Dispatch, so that callsites
    // first hit on another thread are not cached as never interesting.
    let _second_dispatch = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let files = TlsFiles::generate();
        let server = start(ServerTls::new(&files)).await;
        let url = format!("{}?sslmode=verify-full", server.url());
        must_fail(&url, opts().tls_ca(files.other_ca())).await;
        must_fail(
            &format!("{}?sslmode=verify-full", server.url_as("postgres", SECRET)),
            ca_opts(&files),
        )
        .await;
        let fake = Fake::start(Answer::Refuse).await;
        must_fail(&fake.url("sslmode=require"), opts()).await;
        // A working client: a lock taken, waited for, dropped, lost.
        let locks = bounded(PgLocks::connect_with(&url, ca_opts(&files)))
            .await
            .unwrap();
        let other = bounded(PgLocks::connect_with(&url, ca_opts(&files)))
            .await
            .unwrap();
        let guard = bounded(locks.acquire("traced", Duration::from_secs(1)))
            .await
            .unwrap();
        let err = bounded(other.acquire("traced", Duration::from_millis(300)))
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        drop(guard);
        bounded(locks.shutdown()).await;
    });
    assert_text_has_no_secret(&String::from_utf8_lossy(&out.0.lock().unwrap()));
}

// ---- the cancel path over TLS ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_waits_on_tls_connections_are_cancelled_on_the_server() {
    let files = TlsFiles::generate();
    let server = start(ServerTls::new(&files)).await;
    let url = format!("{}?sslmode=verify-full", server.url());
    let holder = bounded(PgLocks::connect_with(&url, ca_opts(&files)))
        .await
        .unwrap();
    // A cleanup whose cancel did not reach the server would wait for its
    // scrub's op_timeout (longer than `bounded`'s 20 s) and fail the test.
    let waiter = bounded(PgLocks::connect_with(
        &url,
        ca_opts(&files).op_timeout(Duration::from_secs(60)),
    ))
    .await
    .unwrap();
    let guard = bounded(holder.acquire("contended", Duration::from_secs(5)))
        .await
        .unwrap();
    let mut rng_state = 0x9e37_79b9u32;
    for i in 0..40u32 {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 17;
        rng_state ^= rng_state << 5;
        let waiter = waiter.clone();
        let task = tokio::spawn(async move {
            waiter
                .acquire("contended", Duration::from_secs(120))
                .await
                .map(drop)
        });
        // Awkward moments: before the first poll, mid-connect, mid-wait.
        match i % 4 {
            0 => {}
            1 => tokio::task::yield_now().await,
            _ => tokio::time::sleep(Duration::from_micros(u64::from(rng_state % 40_000))).await,
        }
        task.abort();
        let _ = task.await;
    }
    bounded(waiter.shutdown()).await;
    // Every wait is gone from the server: only the holder's lock is left.
    let admin = server.admin().await;
    let advisory = |granted: bool| {
        let admin = &admin;
        async move {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                     AND granted = $1",
                    &[&granted],
                )
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    assert_eq!(advisory(false).await, 0, "a dropped wait is still queued");
    assert_eq!(advisory(true).await, 1);
    // The waiter's connections were reused, not closed for a failed scrub:
    // the lock, once free, is taken through them at once.
    guard.release().await.unwrap();
    let got = bounded(waiter.acquire("contended", Duration::from_secs(5)))
        .await
        .unwrap();
    got.release().await.unwrap();
    bounded(waiter.shutdown()).await;
    bounded(holder.shutdown()).await;
    eventually("every advisory lock freed", || async {
        server.advisory_locks_granted().await == 0
    })
    .await;
}
