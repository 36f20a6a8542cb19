//! Adversarial review of `Session::simple_query` (a wait reads its reply to
//! the end after an error, and returns a pooler refusal that follows).
//!
//! A protocol-aware man-in-the-middle between lockyard and a real Postgres
//! lets the server's own error through and then does something to the rest
//! of the wait's reply: stalls it, cuts the connection, floods it, delays
//! it, or appends PgBouncer's statement-pooling refusal. Real PgBouncer in
//! every pool mode, and a real deadlock, complete the picture.
//!
//! Not here: a wait through statement pooling that the lock's release
//! grants before its deadline ends its transaction idle, so PgBouncer lets
//! it through and the lock is granted, not refused. That is the limit the
//! `lockyard::postgres` docs give (a client alone on the pool cannot be
//! told apart), which the keepalive probe's backend check then watches.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockyard::postgres::{PgKey, PgLocks, PgOptions};
use lockyard::{AcquireOptions, LockError};
use lockyard_testkit::pgbouncer::{PoolMode, assert_refused_as_pooled, start_pair};
use lockyard_testkit::postgres::PgServer;
use lockyard_testkit::{bounded, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// The man in the middle.

/// What happens to the rest of a wait's reply after the server's first
/// error in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Nothing: byte for byte.
    Pass,
    /// Nothing more reaches the client; the connection stays open.
    Stall,
    /// The connection is closed (both sides).
    Cut,
    /// Endless CommandComplete messages, never a ReadyForQuery.
    Flood,
    /// PgBouncer's FATAL 08P01 "... statement pooling mode", then closed
    /// (the server's ReadyForQuery is not forwarded, as PgBouncer does).
    Refuse,
    /// The rest is held back this long, then forwarded.
    Delay(Duration),
}

struct Mitm {
    port: u16,
    after: Arc<Mutex<After>>,
    fired: Arc<AtomicU64>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Drop for Mitm {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Mitm {
    async fn start(target: u16, after: After) -> Mitm {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let after = Arc::new(Mutex::new(after));
        let fired = Arc::new(AtomicU64::new(0));
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (a, f, t) = (after.clone(), fired.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let h = tokio::spawn(serve(client, target, a.clone(), f.clone()));
                t.lock().unwrap().push(h.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Mitm {
            port,
            after,
            fired,
            tasks,
        }
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres",
            lockyard_testkit::postgres::PASSWORD,
            self.port
        )
    }

    fn set(&self, after: After) {
        *self.after.lock().unwrap() = after;
    }

    fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn refusal() -> Vec<u8> {
    let mut body = Vec::new();
    for (f, v) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "08P01"),
        (
            b'M',
            "transaction blocks not allowed in statement pooling mode",
        ),
    ] {
        body.push(f);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    message(b'E', &body)
}

async fn serve(client: TcpStream, target: u16, after: Arc<Mutex<After>>, fired: Arc<AtomicU64>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Set when the client sent a wait (its simple query), until its reply
    // ends (ReadyForQuery) or its first error was acted on.
    let waiting = Arc::new(AtomicBool::new(false));
    let w = waiting.clone();
    let up = async move {
        let mut buf = vec![0u8; 16384];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            if chunk.windows(22).any(|x| x == b"SET LOCAL lock_timeout") {
                w.store(true, Ordering::SeqCst);
            }
            if sw.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 16384];
        let mut first = true;
        loop {
            let n = match sr.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            // The server's answer to an SSLRequest (lockyard built with
            // `tls` asks first, sslmode=prefer) is one unframed byte: 'N',
            // this server having no TLS. Framed, it made the proxy read
            // garbage lengths and hang every connection.
            if std::mem::take(&mut first) && buf.first() == Some(&b'N') {
                if cw.write_all(&buf[..1]).await.is_err() {
                    return;
                }
                buf.drain(..1);
            }
            while buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize + 1;
                if buf.len() < len {
                    break;
                }
                let msg: Vec<u8> = buf.drain(..len).collect();
                let tag = msg[0];
                if tag == b'E' && waiting.swap(false, Ordering::SeqCst) {
                    let mode = *after.lock().unwrap();
                    if mode != After::Pass {
                        fired.fetch_add(1, Ordering::SeqCst);
                    }
                    if cw.write_all(&msg).await.is_err() {
                        return;
                    }
                    match mode {
                        After::Pass => {}
                        After::Stall => std::future::pending::<()>().await,
                        After::Cut => return,
                        After::Flood => {
                            let cc = message(b'C', b"SELECT 1\0");
                            loop {
                                if cw.write_all(&cc).await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                        After::Refuse => {
                            let _ = cw.write_all(&refusal()).await;
                            return;
                        }
                        After::Delay(d) => tokio::time::sleep(d).await,
                    }
                    continue;
                }
                if tag == b'Z' {
                    waiting.store(false, Ordering::SeqCst);
                }
                if cw.write_all(&msg).await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

// ---------------------------------------------------------------------------
// Helpers.

async fn server() -> PgServer {
    tokio::task::spawn_blocking(PgServer::start)
        .await
        .expect("start postgres")
}

const OP: Duration = Duration::from_millis(700);

fn opts() -> PgOptions {
    PgOptions::default().op_timeout(OP)
}

async fn connect(url: &str, opts: PgOptions) -> PgLocks {
    bounded(PgLocks::connect_with(url, opts))
        .await
        .expect("connect")
}

/// A client whose first session is open and whose fence table is known
/// (one try on `name`, which is held): its next acquisition's try is one
/// short round trip, so a short deadline is left for the wait itself.
async fn warm(url: &str, opts: PgOptions, name: &str) -> PgLocks {
    let locks = connect(url, opts).await;
    match bounded(locks.try_acquire(name)).await {
        Err(LockError::WouldBlock { .. }) => {}
        other => panic!("warm-up try on {name}: {other:?}"),
    }
    locks
}

/// The backend blocked on an advisory lock (the waiter's).
async fn blocked_backend(admin: &tokio_postgres::Client) -> i32 {
    bounded(async {
        loop {
            let rows = admin
                .query(
                    "SELECT pid FROM pg_stat_activity \
                     WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'",
                    &[],
                )
                .await
                .unwrap();
            if let Some(r) = rows.first() {
                return r.get::<_, i32>(0);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

async fn nothing_locked_but(server: &PgServer, expected: i64, what: &str) {
    let admin = server.admin().await;
    eventually(what, || async {
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) == expected
    })
    .await;
}

// ---------------------------------------------------------------------------
// Guarantee 1: the extra reading never hangs a wait.

/// A wait with no deadline (`wait_forever`) that the server ends with an
/// error (here an admin's `pg_cancel_backend`, 57014; a deadlock is the
/// other way): the error is in hand, then the rest of the reply stalls.
/// Before the change the error was returned at once; the extra reading
/// must not turn that into a hang (bounded at op_timeout + slack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_forever_ended_by_an_error_returns_though_the_rest_of_the_reply_stalls() {
    let server = server().await;
    let mitm = Mitm::start(server.port(), After::Stall).await;
    let direct = connect(&server.url(), opts()).await;
    let held = bounded(direct.try_acquire("forever"))
        .await
        .expect("granted");
    let locks = connect(&mitm.url(), opts()).await;
    let waiter = tokio::spawn(async move {
        let r = locks
            .acquire_with("forever", &AcquireOptions::exclusive().wait_forever())
            .await;
        (r, locks)
    });
    let admin = server.admin().await;
    let pid = blocked_backend(&admin).await;
    let started = Instant::now();
    let cancelled: bool = admin
        .query_one("SELECT pg_cancel_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(cancelled);
    let outcome = tokio::time::timeout(OP * 3 + Duration::from_secs(2), waiter).await;
    let elapsed = started.elapsed();
    assert_eq!(mitm.fired(), 1, "the fault applied to the wait's error");
    drop(mitm);
    bounded(held.release()).await.expect("release");
    match outcome {
        Ok(joined) => {
            let (r, _locks) = joined.unwrap();
            let e = r.expect_err("the server cancelled the wait");
            eprintln!("wait_forever + stall after 57014: {e:?} after {elapsed:?}");
        }
        Err(_) => panic!(
            "a wait_forever whose reply stalled after the server's error (57014) did not \
             return within {:?}: the extra reading hangs it",
            OP * 3 + Duration::from_secs(2)
        ),
    }
    nothing_locked_but(&server, 0, "nothing locked after the stalled wait").await;
}

/// The same with a deadline: the server ends the wait early with an error
/// (57014, an admin's cancel), then the rest of the reply stalls. The wait
/// must still end by deadline + op_timeout (it need not be at once; the
/// error it reports is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_ended_early_by_an_error_then_stalled_ends_by_its_deadline_plus_op_timeout() {
    let server = server().await;
    let mitm = Mitm::start(server.port(), After::Stall).await;
    let direct = connect(&server.url(), opts()).await;
    let held = bounded(direct.try_acquire("early")).await.expect("granted");
    let locks = warm(&mitm.url(), opts(), "early").await;
    let deadline = Duration::from_millis(1500);
    let started = Instant::now();
    let waiter = tokio::spawn(async move {
        let r = locks.acquire("early", deadline).await;
        (r, locks)
    });
    let admin = server.admin().await;
    let pid = blocked_backend(&admin).await;
    let cancelled_at = started.elapsed();
    let _ = admin
        .query_one("SELECT pg_cancel_backend($1)", &[&pid])
        .await
        .unwrap();
    let (r, _locks) = bounded(waiter).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(mitm.fired(), 1);
    eprintln!("cancelled at {cancelled_at:?}; ended after {elapsed:?}: {r:?}");
    assert!(r.is_err(), "{r:?}");
    assert!(
        elapsed <= deadline + OP + Duration::from_millis(1500),
        "ended after {elapsed:?}: {r:?}"
    );
    drop(mitm);
    bounded(held.release()).await.expect("release");
    nothing_locked_but(&server, 0, "nothing locked").await;
}

/// A wait with a deadline: the server's lock_timeout error comes, then the
/// rest of the reply stalls, is flooded, is delayed a little, or the
/// connection is cut. It ends within deadline + op_timeout (+ slack), and
/// nothing stays locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_ends_within_deadline_plus_op_timeout_whatever_follows_its_error() {
    let server = server().await;
    let direct = connect(&server.url(), opts()).await;
    let held = bounded(direct.try_acquire("bounded"))
        .await
        .expect("granted");
    let deadline = Duration::from_millis(300);
    let slack = Duration::from_millis(1500);
    for after in [
        After::Stall,
        After::Flood,
        After::Cut,
        After::Delay(Duration::from_millis(200)),
        After::Pass,
    ] {
        let mitm = Mitm::start(server.port(), after).await;
        let locks = warm(&mitm.url(), opts(), "bounded").await;
        let started = Instant::now();
        let r = bounded(locks.acquire("bounded", deadline)).await;
        let elapsed = started.elapsed();
        assert!(
            elapsed <= deadline + OP + slack,
            "{after:?}: the wait took {elapsed:?} (> {deadline:?} + {OP:?} + slack): {r:?}"
        );
        assert_eq!(mitm.fired(), u64::from(after != After::Pass), "{after:?}");
        match (&r, after) {
            // The stall, flood and cut leave the pg_locks check no answer.
            (Err(LockError::Unavailable { .. }), After::Stall | After::Flood | After::Cut) => {}
            (Err(LockError::Timeout { .. }), After::Delay(_) | After::Pass) => {}
            _ => panic!("{after:?}: unexpected outcome {r:?} after {elapsed:?}"),
        }
        drop(locks);
        drop(mitm);
        nothing_locked_but(&server, 1, &format!("{after:?}: only the holder's lock")).await;
    }
    bounded(held.release()).await.expect("release");
    nothing_locked_but(&server, 0, "nothing locked").await;
}

/// The fault a real PgBouncer causes only in some runs, made every time:
/// the server's lock_timeout error, then PgBouncer's FATAL refusal, then
/// the connection closed. Must read as `Unsupported` naming PgBouncer,
/// never a Timeout or an Unavailable; with and without fencing, shared and
/// exclusive, and for a semaphore's wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_the_servers_error_is_read_as_the_pooler_every_time() {
    let server = server().await;
    let direct = connect(&server.url(), opts()).await;
    let held = bounded(direct.try_acquire("refused"))
        .await
        .expect("granted");
    let sem = direct.semaphore("refused-permits", 2).expect("semaphore");
    let p1 = bounded(sem.try_acquire()).await.expect("permit");
    let p2 = bounded(sem.try_acquire()).await.expect("permit");
    let mitm = Mitm::start(server.port(), After::Refuse).await;
    for round in 0..4 {
        for fencing in [true, false] {
            let locks = warm(&mitm.url(), opts().fencing(fencing), "refused").await;
            let what = format!("round {round}, fencing {fencing}");
            let r = bounded(locks.acquire("refused", Duration::from_millis(300))).await;
            assert_refused_as_pooled(r, &format!("{what}: exclusive"));
            let shared = AcquireOptions::exclusive()
                .mode(lockyard::Mode::Shared)
                .timeout(Duration::from_millis(300));
            let locks = warm(&mitm.url(), opts().fencing(fencing), "refused").await;
            let r = bounded(locks.acquire_with("refused", &shared)).await;
            assert_refused_as_pooled(r, &format!("{what}: shared"));
            let locks = warm(&mitm.url(), opts().fencing(fencing), "refused").await;
            let s = locks.semaphore("refused-permits", 2).expect("semaphore");
            let r = bounded(s.acquire(Duration::from_millis(300))).await;
            assert_refused_as_pooled(r, &format!("{what}: semaphore"));
        }
    }
    assert_eq!(mitm.fired(), 4 * 2 * 3);
    drop(mitm);
    // The holder's lock and its two permits only.
    nothing_locked_but(&server, 3, "only the direct holds").await;
    bounded(held.release()).await.expect("release");
    bounded(p1.release()).await.expect("release");
    bounded(p2.release()).await.expect("release");
    nothing_locked_but(&server, 0, "nothing locked").await;
}

// ---------------------------------------------------------------------------
// Guarantee 2: a real Postgres, no pooler.

/// The holder releases just as the waiter's lock_timeout fires, many
/// times: each wait is either granted (on its own session) or a Timeout,
/// never another error; a Timeout leaves the waiter holding nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeout_racing_the_release_is_granted_or_a_clean_timeout() {
    let server = server().await;
    let holder = connect(&server.url(), opts()).await;
    let waiter = connect(&server.url(), opts()).await;
    let (mut granted, mut timed_out) = (0, 0);
    for round in 0..20u64 {
        let held = bounded(holder.try_acquire("race")).await.expect("granted");
        let deadline = Duration::from_millis(40);
        let release_after = Duration::from_millis(30 + (round % 8) * 3);
        let wait = tokio::spawn({
            let waiter = waiter.clone();
            async move { waiter.acquire("race", deadline).await }
        });
        tokio::time::sleep(release_after).await;
        bounded(held.release()).await.expect("release");
        match bounded(wait).await.unwrap() {
            Ok(g) => {
                granted += 1;
                bounded(g.release()).await.expect("release");
            }
            Err(LockError::Timeout { .. }) => timed_out += 1,
            Err(e) => panic!("round {round}: neither granted nor a timeout: {e:?}"),
        }
        nothing_locked_but(&server, 0, &format!("round {round}: nothing held")).await;
    }
    eprintln!("race: {granted} granted, {timed_out} timed out");
}

/// A real deadlock (40P01): the waiter's transaction holds a snapshot, the
/// holder of the lock it waits for runs CREATE INDEX CONCURRENTLY, which
/// waits for that transaction. The waiter must get a Backend error naming
/// the deadlock, not a Timeout or an Unavailable, and hold nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_deadlock_stays_a_backend_error() {
    let server = server().await;
    let admin = server.admin().await;
    admin
        .batch_execute("ALTER SYSTEM SET deadlock_timeout = '100ms'")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf(); CREATE TABLE dl (x int)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let key = PgKey::Single(424_242);
    for round in 0..3 {
        let holder = server.admin().await;
        holder
            .batch_execute("SELECT pg_advisory_lock(424242)")
            .await
            .unwrap();
        let locks = connect(&server.url(), opts()).await;
        let waiter = tokio::spawn(async move {
            let r = locks
                .lock_key("dl", key)
                .acquire(Duration::from_secs(8))
                .await;
            (r, locks)
        });
        blocked_backend(&admin).await;
        let cic = tokio::spawn(async move {
            let r = holder
                .batch_execute(&format!("CREATE INDEX CONCURRENTLY dl_{round} ON dl (x)"))
                .await;
            (r, holder)
        });
        let (r, _locks) = bounded(waiter).await.unwrap();
        match r {
            Err(e @ LockError::Backend { .. }) => {
                assert!(format!("{e:?}").contains("40P01"), "round {round}: {e:?}");
            }
            other => panic!("round {round}: expected a deadlock error, got {other:?}"),
        }
        let (r, holder) = bounded(cic).await.unwrap();
        r.expect("the index is built once the waiter gave up");
        holder
            .batch_execute("SELECT pg_advisory_unlock_all()")
            .await
            .unwrap();
        nothing_locked_but(&server, 0, &format!("round {round}: nothing held")).await;
    }
}

/// Acquisitions dropped at moments around the lock_timeout firing, with
/// the rest of the reply after the server's error held back a while (the
/// window the extra reading opened): nothing stays locked, nothing stays
/// waiting, and the client still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_dropped_while_reading_the_rest_of_the_reply_leak_nothing() {
    // Long enough that the try before the wait fits in it on a loaded
    // machine (else the deadline passes first and no wait is sent).
    const WAIT: Duration = Duration::from_millis(150);
    let server = server().await;
    let mitm = Mitm::start(server.port(), After::Delay(Duration::from_millis(40))).await;
    let direct = connect(&server.url(), opts()).await;
    let held = bounded(direct.try_acquire("drop")).await.expect("granted");
    let locks = warm(&mitm.url(), opts(), "drop").await;
    // One wait left to end by itself: it gets as far as its error, and says
    // how long a whole wait takes here and now (a loaded machine stretches
    // it), which places the drops below around that error.
    let started = Instant::now();
    let r = bounded(locks.acquire("drop", WAIT)).await;
    let whole = started.elapsed();
    assert!(matches!(r, Err(LockError::Timeout { .. })), "{r:?}");
    assert!(mitm.fired() > 0, "the whole wait got no error");
    let mut whole_plain = whole;
    for round in 0..30u32 {
        if round == 15 {
            // Then with nothing held back: the plain window.
            mitm.set(After::Pass);
            let started = Instant::now();
            let _ = bounded(locks.acquire("drop", WAIT)).await;
            whole_plain = started.elapsed();
        }
        let whole = if round < 15 { whole } else { whole_plain };
        // From half a whole wait to 1.4 of one.
        let cancel_after = whole * (5 + round % 10) / 10;
        let r = tokio::time::timeout(cancel_after, locks.acquire("drop", WAIT)).await;
        if let Ok(Ok(g)) = r {
            panic!(
                "round {round}: granted a held lock (backend {})",
                g.backend_pid()
            );
        }
    }
    // Only the holder's lock, and nobody waiting.
    nothing_locked_but(&server, 1, "only the holder's lock").await;
    bounded(held.release()).await.expect("release");
    let g = bounded(locks.acquire("drop", Duration::from_secs(5)))
        .await
        .expect("the client still works");
    bounded(g.release()).await.expect("release");
    bounded(locks.shutdown()).await;
    nothing_locked_but(&server, 0, "nothing locked").await;
}

// ---------------------------------------------------------------------------
// Guarantees 3 and 4: a real PgBouncer.

/// Statement pooling: waits of many lengths, exclusive, shared, unfenced
/// and a semaphore's, each refused as `Unsupported` (never a Timeout or an
/// Unavailable); nothing stays locked afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_pooling_refuses_every_kind_of_wait() {
    let (server, bouncer) = start_pair(PoolMode::Statement, 2).await;
    let direct = connect(&server.url(), opts()).await;
    let held = bounded(direct.try_acquire("jobs")).await.expect("granted");
    let sem = direct.semaphore("permits", 1).expect("semaphore");
    let permit = bounded(sem.try_acquire()).await.expect("permit");
    // From 100 ms: a shorter deadline can pass during the try before the
    // wait on a loaded machine (a Timeout, no wait sent).
    let waits = [100u64, 150, 250, 400];
    for (round, ms) in waits.iter().chain(waits.iter()).enumerate() {
        let d = Duration::from_millis(*ms);
        let fencing = round % 2 == 0;
        let o = || PgOptions::default().fencing(fencing);
        let locks = warm(&bouncer.url(), o(), "jobs").await;
        let what = format!("round {round}, {ms} ms, fencing {fencing}");
        let r = bounded(locks.acquire("jobs", d)).await;
        assert_refused_as_pooled(r, &format!("{what}: exclusive"));
        let locks = warm(&bouncer.url(), o(), "jobs").await;
        let shared = AcquireOptions::shared().timeout(d);
        let r = bounded(locks.acquire_with("jobs", &shared)).await;
        assert_refused_as_pooled(r, &format!("{what}: shared"));
        let locks = warm(&bouncer.url(), o(), "jobs").await;
        let s = locks.semaphore("permits", 1).expect("semaphore");
        let r = bounded(s.acquire(d)).await;
        assert_refused_as_pooled(r, &format!("{what}: semaphore"));
    }
    nothing_locked_but(&server, 2, "only the direct holds").await;
    bounded(held.release()).await.expect("release");
    bounded(permit.release()).await.expect("release");
    nothing_locked_but(&server, 0, "nothing locked").await;
}

/// Transaction pooling with one server connection (the client alone, so
/// its statements stay on its backend): a wait times out as a Timeout, and
/// one granted by a release is granted; session pooling the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_and_session_pooling_waits_are_unchanged() {
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let (server, bouncer) = start_pair(mode, 1).await;
        let direct = connect(&server.url(), opts()).await;
        let locks = connect(&bouncer.url(), opts()).await;
        for round in 0..3 {
            let held = bounded(direct.try_acquire("tx")).await.expect("granted");
            let r = bounded(locks.acquire("tx", Duration::from_millis(100))).await;
            assert!(
                matches!(r, Err(LockError::Timeout { .. })),
                "{mode:?} round {round}: {r:?}"
            );
            let wait = tokio::spawn({
                let locks = locks.clone();
                async move { locks.acquire("tx", Duration::from_secs(5)).await }
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            bounded(held.release()).await.expect("release");
            let g = bounded(wait)
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{mode:?} round {round}: {e:?}"));
            bounded(g.release()).await.expect("release");
            nothing_locked_but(&server, 0, &format!("{mode:?} round {round}")).await;
        }
        drop(locks);
        drop(bouncer);
        drop(server);
    }
}
