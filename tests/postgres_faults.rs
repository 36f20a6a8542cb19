//! Attacks on the Postgres backend: the holder's backend terminated, the
//! server restarted mid-hold, a storm of cancelled acquisitions, a waiter
//! that must be woken by the server (not by polling), a frozen backend
//! only the keepalive probe can notice, and bad input.

use std::time::Duration;

use lockyard::postgres::{PgKey, PgKeyMode, PgLocks, PgOptions};
use lockyard::{AcquireOptions, LockError};
use lockyard_testkit::postgres::PgServer;
use lockyard_testkit::{bounded, eventually};

async fn server() -> PgServer {
    tokio::task::spawn_blocking(PgServer::start)
        .await
        .expect("start postgres")
}

fn options() -> PgOptions {
    PgOptions::default().keepalive(Duration::from_millis(200))
}

async fn client(server: &PgServer) -> PgLocks {
    PgLocks::connect_with(&server.url(), options())
        .await
        .expect("connect to the test postgres")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_holder_backend_fires_lost_and_frees_the_lock() {
    let server = server().await;
    let a = client(&server).await;
    let b = client(&server).await;
    let guard = a.try_acquire("victim").await.unwrap();
    assert!(!guard.is_lost());
    let admin = server.admin().await;
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&guard.backend_pid()])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    bounded(guard.lost()).await;
    assert!(guard.is_lost());
    let next = bounded(b.acquire("victim", Duration::from_secs(10)))
        .await
        .unwrap();
    let e = guard.release().await.unwrap_err();
    assert!(e.is_lost(), "{e}");
    next.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_hold_fires_lost_and_the_client_recovers() {
    let mut server = server().await;
    let a = client(&server).await;
    let guard = a.try_acquire("restart").await.unwrap();
    let token = guard.fencing_token().unwrap();
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    bounded(guard.lost()).await;
    // The same client takes it again on a fresh connection; the fence
    // table survived the restart, so tokens still increase.
    let again = bounded(a.acquire("restart", Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(again.fencing_token().unwrap() > token);
    assert!(!again.is_lost());
    again.release().await.unwrap();
    drop(guard);
    a.shutdown().await;
    assert_eq!(server.advisory_locks_granted().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_cancelled_acquisitions_leave_pg_locks_empty() {
    let server = server().await;
    let holder = client(&server).await;
    let a = client(&server).await;
    let lock = a.lock("storm").unwrap();
    let mut blocker = None;
    for round in 0..2000u32 {
        // A third of the rounds wait behind a holder (the cancel must stop
        // a wait blocked on the server); the others race a free lock.
        if round % 3 == 0 {
            if blocker.is_none() {
                // The clean-up of the previous round's cancelled attempt
                // may still hold it for a moment.
                let lock = holder.lock("storm").unwrap();
                blocker = Some(lockyard_testkit::conformance::take_soon(&lock).await);
            }
        } else if let Some(g) = blocker.take() {
            g.release().await.unwrap();
        }
        let cancel_after = Duration::from_micros(u64::from(round % 7) * 300);
        let opts = AcquireOptions::exclusive().timeout(Duration::from_secs(5));
        if let Ok(got) = tokio::time::timeout(cancel_after, lock.acquire_with(&opts)).await {
            drop(got);
        }
    }
    drop(blocker);
    holder.shutdown().await;
    a.shutdown().await;
    eventually("pg_locks holds no advisory lock", || async {
        server.advisory_locks_granted().await == 0
    })
    .await;
    let admin = server.admin().await;
    let waiting: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(waiting, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_waiter_is_woken_by_the_server_not_by_polling() {
    let server = server().await;
    let a = client(&server).await;
    let b = client(&server).await;
    let guard = a.try_acquire("wake").await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = b.acquire("wake", Duration::from_secs(30)).await;
        (g, b)
    });
    let admin = server.admin().await;
    // The waiter's backend: blocked on an advisory lock.
    let (pid, query_start, xact_start) = bounded(async {
        loop {
            let rows = admin
                .query(
                    "SELECT pid, query_start::text, xact_start::text FROM pg_stat_activity \
                     WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'",
                    &[],
                )
                .await
                .unwrap();
            if let Some(r) = rows.first() {
                break (
                    r.get::<_, i32>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2),
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // Count what the waiter's session sent while it waited: its statement
    // and its transaction began once and are still the same ones.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let row = admin
            .query_one(
                "SELECT query_start::text, xact_start::text, wait_event FROM pg_stat_activity \
                 WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, String>(0),
            query_start,
            "the waiter sent another query"
        );
        assert_eq!(
            row.get::<_, String>(1),
            xact_start,
            "the waiter began another transaction"
        );
        assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("advisory"));
    }
    guard.release().await.unwrap();
    let (got, _b) = bounded(waiter).await.unwrap();
    let got = got.unwrap();
    assert_eq!(got.backend_pid(), pid, "granted on the session that waited");
    got.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_lock_names_take_the_keys_dotnet_takes() {
    let server = server().await;
    let locks = PgLocks::connect_with(
        &server.url(),
        options().key_mode(PgKeyMode::distributed_lock()),
    )
    .await
    .unwrap();
    let admin = server.admin().await;
    // "a": 0x61, a 0 bit, 56 one bits; as DistributedLock does, the pair.
    let bits: u64 = (0x61 << 57) | ((1 << 56) - 1);
    let (hi, lo) = ((bits >> 32) as u32 as i32, bits as u32 as i32);
    let guard = locks.try_acquire("a").await.unwrap();
    assert_eq!(guard.key(), PgKey::Pair(hi, lo));
    let free: bool = admin
        .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&hi, &lo])
        .await
        .unwrap()
        .get(0);
    assert!(!free, "a .NET client asking for the same pair is refused");
    guard.release().await.unwrap();
    // The 16-hex-digit form is that bigint.
    let guard = locks.try_acquire("000000000000002a").await.unwrap();
    let free: bool = admin
        .query_one("SELECT pg_try_advisory_lock($1::int8)", &[&42i64])
        .await
        .unwrap()
        .get(0);
    assert!(!free);
    guard.release().await.unwrap();
    let e = locks.lock("a name too long for ascii").unwrap_err();
    assert!(matches!(e, LockError::InvalidName { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_error_never_a_panic() {
    let server = server().await;
    // A malformed URL.
    for url in [
        "postgres://[::1",
        "host=x port=notaport",
        "postgres://u@h/db?sslmode=bogus",
    ] {
        let e = PgLocks::connect(url).await.unwrap_err();
        assert!(matches!(e, LockError::InvalidArgument { .. }), "{url}: {e}");
    }
    // An unreachable server: nothing listens on the port (a black-holed
    // address would also end within connect_timeout).
    let port = lockyard_testkit::redis::free_port();
    let limit = Duration::from_millis(500);
    let e = bounded(PgLocks::connect_with(
        &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        options().connect_timeout(limit),
    ))
    .await
    .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    // A wrong password: refused, not an outage.
    let e = PgLocks::connect(&server.url_as("postgres", "wrong"))
        .await
        .unwrap_err();
    assert!(matches!(e, LockError::Backend { .. }), "{e}");
    assert!(!e.is_unavailable());
    // Bad options.
    let e = PgLocks::connect_with(&server.url(), PgOptions::default().fence_schema(""))
        .await
        .unwrap_err();
    assert!(matches!(e, LockError::InvalidArgument { .. }), "{e}");
    // TLS is refused in so many words, not attempted.
    let e = PgLocks::connect(&format!("{}?sslmode=require", server.url()))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("TLS") || format!("{e:?}").contains("TLS"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_not_create_the_fence_table_is_told_so() {
    let server = server().await;
    let admin = server.admin().await;
    admin
        .batch_execute(
            "CREATE ROLE plain LOGIN PASSWORD 'plain'; \
             CREATE SCHEMA locks; GRANT USAGE ON SCHEMA locks TO plain",
        )
        .await
        .unwrap();
    let url = server.url_as("plain", "plain");
    let locks = PgLocks::connect_with(&url, options().fence_schema("locks"))
        .await
        .unwrap();
    let e = locks.try_acquire("job").await.unwrap_err();
    assert!(matches!(e, LockError::Backend { .. }), "{e}");
    assert!(e.to_string().contains("fence table"), "{e}");
    // Nothing was left held by the refused attempt.
    assert_eq!(server.advisory_locks_granted().await, 0);
    // Without fencing the same role locks fine.
    let unfenced = PgLocks::connect_with(&url, options().fencing(false))
        .await
        .unwrap();
    let g = unfenced.try_acquire("job").await.unwrap();
    assert_eq!(g.fencing_token(), None);
    g.release().await.unwrap();
    // Once an owner made the table and granted it, the role uses it.
    admin
        .batch_execute(
            "CREATE TABLE locks.lockyard_fence (key text PRIMARY KEY, name text NOT NULL, \
             token bigint NOT NULL); GRANT SELECT, INSERT, UPDATE ON locks.lockyard_fence TO plain",
        )
        .await
        .unwrap();
    let locks = PgLocks::connect_with(&url, options().fence_schema("locks"))
        .await
        .unwrap();
    let g = locks.try_acquire("job").await.unwrap();
    assert_eq!(g.fencing_token(), Some(1));
    g.release().await.unwrap();
}

/// A stopped process, continued on drop (also when the test fails, so the
/// server can be stopped).
struct Frozen(rustix::process::Pid);

impl Frozen {
    fn new(pid: rustix::process::Pid) -> Self {
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.0, rustix::process::Signal::CONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_backend_stops_answering_is_told_lost_by_the_probe() {
    let server = server().await;
    let a = client(&server).await;
    let guard = a.try_acquire("frozen").await.unwrap();
    let backend = rustix::process::Pid::from_raw(guard.backend_pid()).unwrap();
    // The backend freezes with its connection open: only the keepalive
    // probe (every 200 ms here) can tell.
    let frozen = Frozen::new(backend);
    bounded(guard.lost()).await;
    drop(frozen);
    assert!(guard.is_lost());
    let e = guard.release().await.unwrap_err();
    assert!(e.is_lost(), "{e}");
    // The frozen session was not put back: a new acquisition works.
    let again = bounded(a.acquire("frozen", Duration::from_secs(10)))
        .await
        .unwrap();
    assert_ne!(again.backend_pid(), backend.as_raw_nonzero().get());
    again.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_longer_than_many_keepalive_intervals_is_not_cut_short() {
    let server = server().await;
    let opts = PgOptions::default().keepalive(Duration::from_millis(50));
    let a = PgLocks::connect_with(&server.url(), opts.clone())
        .await
        .unwrap();
    let b = PgLocks::connect_with(&server.url(), opts).await.unwrap();
    let guard = a.try_acquire("long").await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = b.acquire("long", Duration::from_secs(15)).await;
        (g, b)
    });
    // Ten probe intervals pass while the waiter waits on the server.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!guard.is_lost());
    guard.release().await.unwrap();
    let (got, _b) = bounded(waiter).await.unwrap();
    let got = got.unwrap();
    assert!(!got.is_lost());
    got.release().await.unwrap();
}

/// Clients that take their first fenced lock at the same moment on a
/// database without the fence table all get it: their racing `CREATE TABLE
/// IF NOT EXISTS` may fail with a duplicate relation (42P07, the table or
/// its primary key's index) or a duplicate row in the catalog (23505), and
/// both mean another client made the table. (Seen once in CI as a first
/// acquisition failing with "relation \"lockyard_fence\" already exists":
/// tests/postgres_multiprocess.rs.) Each round a fresh schema, so that the
/// table is missing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_racing_to_make_the_fence_table_all_get_their_lock() {
    const ROUNDS: usize = 12;
    const CLIENTS: usize = 8;
    let server = server().await;
    let admin = server.admin().await;
    for round in 0..ROUNDS {
        let schema = format!("race{round}");
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let opts = options().fence_schema(schema.as_str());
            clients.push(PgLocks::connect_with(&server.url(), opts).await.unwrap());
        }
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS));
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, locks)| {
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    let g = locks.try_acquire(&format!("race-{i}")).await?;
                    g.release().await?;
                    locks.shutdown().await;
                    Ok::<(), LockError>(())
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let r = bounded(t).await.unwrap();
            assert!(r.is_ok(), "round {round}, client {i}: {r:?}");
        }
    }
}
