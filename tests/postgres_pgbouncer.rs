//! Session advisory locks through PgBouncer: transaction pooling is refused
//! with a typed error (never a lock that a pooled backend keeps for other
//! clients), a hold whose backend moves is lost, and session pooling passes
//! the conformance suite.

use std::sync::Arc;
use std::time::Duration;

use lockyard::Lock;
use lockyard::postgres::{PgLocks, PgOptions};
use lockyard_testkit::bounded;
use lockyard_testkit::conformance::Keep;
use lockyard_testkit::pgbouncer::{PgBouncer, PoolMode, assert_refused_as_pooled, start_pair};
use tokio_postgres::Client;

/// Opens a transaction on a client through the pooler, which pins one
/// server backend to it until it ends; returns that backend's pid.
async fn pin(client: &Client) -> i32 {
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

/// With a pool of two server connections: pins the backend `target` in an
/// open transaction and returns the client pinning it, so every other
/// transaction through the pooler runs on the other backend.
async fn pin_backend(bouncer: &PgBouncer, target: i32) -> Client {
    let first = bounded(bouncer.client()).await;
    let second = bounded(bouncer.client()).await;
    // Both backends of the pool are now in a transaction of ours.
    let a = bounded(pin(&first)).await;
    let b = bounded(pin(&second)).await;
    let (keep, other) = match (a == target, b == target) {
        (true, _) => (first, second),
        (_, true) => (second, first),
        _ => panic!("backend {target} is not in the pool ({a}, {b})"),
    };
    bounded(other.batch_execute("COMMIT"))
        .await
        .expect("commit");
    keep
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_that_moves_the_session_is_refused_and_takes_nothing() {
    let (server, bouncer) = start_pair(PoolMode::Transaction, 2).await;
    // One backend of the pool is in another client's transaction: lockyard
    // clients that connect now learn the other one.
    let first = bounded(bouncer.client()).await;
    let pinned_first = bounded(pin(&first)).await;
    let mut fenced = Vec::new();
    for _ in 0..4 {
        fenced.push(
            bounded(PgLocks::connect(&bouncer.url()))
                .await
                .expect("connect"),
        );
    }
    let unfenced_opts = PgOptions::default().fencing(false);
    let unfenced = bounded(PgLocks::connect_with(&bouncer.url(), unfenced_opts.clone()))
        .await
        .expect("connect");
    let prepared = bounded(PgLocks::connect_with(&bouncer.url(), unfenced_opts))
        .await
        .expect("connect");
    // `prepared` takes and releases a lock there, preparing its statements
    // on the backend its session runs on.
    let g = bounded(prepared.try_acquire("jobs"))
        .await
        .expect("its own backend: granted");
    let sessions_backend = g.backend_pid();
    assert_ne!(sessions_backend, pinned_first);
    bounded(g.release()).await.expect("release");

    // Now that backend is pinned and the first is free: every statement of
    // those sessions runs on another backend than theirs. Every way of
    // taking a lock must say so, and take nothing.
    let second = bounded(bouncer.client()).await;
    assert_eq!(bounded(pin(&second)).await, sessions_backend);
    bounded(first.batch_execute("COMMIT"))
        .await
        .expect("commit");
    let timeout = Duration::from_secs(2);
    let shared = lockyard::AcquireOptions::shared().timeout(timeout);
    assert_refused_as_pooled(bounded(fenced[0].try_acquire("jobs")).await, "try_acquire");
    assert_refused_as_pooled(bounded(fenced[1].acquire("jobs", timeout)).await, "acquire");
    assert_refused_as_pooled(
        bounded(fenced[2].acquire_with("jobs", &shared)).await,
        "shared",
    );
    let permits = fenced[3].semaphore("workers", 3).expect("semaphore");
    assert_refused_as_pooled(bounded(permits.try_acquire()).await, "semaphore");
    assert_refused_as_pooled(bounded(unfenced.try_acquire("jobs")).await, "fencing off");
    // A statement prepared on the session's backend is missing on the
    // other: the same error.
    assert_refused_as_pooled(bounded(prepared.try_acquire("jobs")).await, "prepared");
    // Nothing was taken on any backend (the pid check runs before the lock
    // function, in the same statement).
    assert_eq!(bounded(server.advisory_locks_granted()).await, 0);
    bounded(second.batch_execute("COMMIT"))
        .await
        .expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_whose_backend_the_pooler_gives_away_is_lost() {
    let (server, bouncer) = start_pair(PoolMode::Transaction, 2).await;
    let opts = PgOptions::default()
        .keepalive(Duration::from_millis(100))
        .fencing(false);
    let locks = bounded(PgLocks::connect_with(&bouncer.url(), opts))
        .await
        .expect("connect");
    let guard = bounded(locks.try_acquire("report"))
        .await
        .expect("alone: granted");
    let key = match guard.key() {
        lockyard::postgres::PgKey::Single(k) => k,
        other => panic!("a single key, not {other:?}"),
    };
    // Another client gets the backend that holds the lock, and with it the
    // lock (advisory locks are reentrant within a session): this is what
    // transaction pooling does to session locks.
    let intruder = pin_backend(&bouncer, guard.backend_pid()).await;
    let taken: bool = bounded(intruder.query_one("SELECT pg_try_advisory_lock($1)", &[&key]))
        .await
        .expect("try")
        .get(0);
    assert!(taken, "the intruder shares the holder's backend");
    // Our next probe runs on the other backend: the hold is lost.
    bounded(guard.lost()).await;
    assert!(guard.is_lost());
    bounded(intruder.batch_execute("COMMIT"))
        .await
        .expect("commit");
    drop(guard);
    drop(server);
}

/// Two clients through one PgBouncer in session pooling.
async fn session_pooled_views(name: &str) -> (Keep, Arc<dyn Lock>, Arc<dyn Lock>) {
    let (server, bouncer) = start_pair(PoolMode::Session, 40).await;
    let a = bounded(PgLocks::connect(&bouncer.url()))
        .await
        .expect("connect");
    let b = bounded(PgLocks::connect(&bouncer.url()))
        .await
        .expect("connect");
    let la: Arc<dyn Lock> = Arc::new(a.lock(name).expect("lock"));
    let lb: Arc<dyn Lock> = Arc::new(b.lock(name).expect("lock"));
    // The bouncer goes before the server.
    (Box::new((bouncer, server, a, b)), la, lb)
}

/// PgBouncer before 1.19.1 crashes when a client half-closes its cancel
/// connection as tokio-postgres does (a PgBouncer bug,
/// pgbouncer/pgbouncer#846, in Debian 12's 1.18.0; see the
/// `lockyard::postgres` docs): the cancellation storm is left out there.
fn pgbouncer_crashes_on_cancel() -> Option<String> {
    let version = PgBouncer::version();
    (version < (1, 19, 1)).then(|| {
        format!(
            "PgBouncer {version:?} crashes on tokio-postgres's cancel requests (fixed in 1.19.1)"
        )
    })
}

lockyard_testkit::conformance_tests!(
    session_pooling,
    session_pooled_views,
    cancel_unsafe = pgbouncer_crashes_on_cancel
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_pooling_is_refused_when_a_wait_is_needed() {
    let (server, bouncer) = start_pair(PoolMode::Statement, 2).await;
    // Held straight on the server: through the pooler, the try fails and
    // the wait's transaction is refused by PgBouncer itself.
    let direct = bounded(PgLocks::connect(&server.url()))
        .await
        .expect("connect");
    let held = bounded(direct.try_acquire("jobs")).await.expect("granted");
    // PgBouncer sends its refusal alone, or after the server's
    // lock_timeout error in the same reply (then the connection closes):
    // which one varies from run to run, and both must read as the refusal.
    for round in 0..8 {
        let locks = bounded(PgLocks::connect(&bouncer.url()))
            .await
            .expect("connect");
        let result = bounded(locks.acquire("jobs", Duration::from_millis(250))).await;
        assert_refused_as_pooled(
            result,
            &format!("a wait through statement pooling, round {round}"),
        );
    }
    bounded(held.release()).await.expect("release");
}
