//! The Postgres backend: the conformance suite through `Arc<dyn Lock>`,
//! fencing, shared holds, looking, and the server waking a waiter.

use std::sync::Arc;
use std::time::Duration;

use lockyard::postgres::{PgLocks, PgOptions};
use lockyard::{AcquireOptions, Lock, Mode};
use lockyard_testkit::bounded;
use lockyard_testkit::conformance::Keep;
use lockyard_testkit::postgres::PgServer;

async fn client(server: &PgServer) -> PgLocks {
    PgLocks::connect_with(&server.url(), PgOptions::default())
        .await
        .expect("connect to the test postgres")
}

/// Two clients of one private server: two views of the lock `name`.
async fn views(name: &str) -> (Keep, Arc<dyn Lock>, Arc<dyn Lock>) {
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await
        .expect("start postgres");
    let a = client(&server).await;
    let b = client(&server).await;
    let la: Arc<dyn Lock> = Arc::new(a.lock(name).unwrap());
    let lb: Arc<dyn Lock> = Arc::new(b.lock(name).unwrap());
    (Box::new((server, a, b)), la, lb)
}

lockyard_testkit::conformance_tests!(postgres, views);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_across_holders_and_clients() {
    let server = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let a = client(&server).await;
    let b = client(&server).await;
    let mut last = 0;
    for round in 0..6 {
        let locks = if round % 2 == 0 { &a } else { &b };
        let guard = bounded(locks.acquire("fenced", Duration::from_secs(5)))
            .await
            .unwrap();
        let token = guard.fencing_token().expect("fencing is on by default");
        assert!(token > last, "token {token} after {last}");
        last = token;
        guard.release().await.unwrap();
    }
    let off = PgLocks::connect_with(&server.url(), PgOptions::default().fencing(false))
        .await
        .unwrap();
    let guard = off.try_acquire("fenced").await.unwrap();
    assert_eq!(guard.fencing_token(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_names_the_holders_and_their_backends() {
    let server = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let a = client(&server).await;
    assert!(a.list().await.unwrap().is_empty());
    let x = a.try_acquire("alpha").await.unwrap();
    let r1 = a
        .acquire_with("beta", &AcquireOptions::shared())
        .await
        .unwrap();
    let r2 = a
        .acquire_with("beta", &AcquireOptions::shared())
        .await
        .unwrap();
    let list = a.list().await.unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    let alpha: Vec<_> = list
        .iter()
        .filter(|i| i.name.as_deref() == Some("alpha"))
        .collect();
    assert_eq!(alpha.len(), 1);
    assert_eq!(alpha[0].pid, x.backend_pid());
    assert_eq!(alpha[0].mode, Mode::Exclusive);
    let beta: Vec<_> = list
        .iter()
        .filter(|i| i.name.as_deref() == Some("beta"))
        .collect();
    assert_eq!(beta.len(), 2);
    assert!(beta.iter().all(|i| i.mode == Mode::Shared));
    assert!(a.is_locked("alpha").await.unwrap());
    assert!(!a.is_locked("gamma").await.unwrap());
    drop((x, r1, r2));
    a.shutdown().await;
    assert_eq!(server.advisory_locks_granted().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_table_dropped_under_a_running_client_is_made_again() {
    let server = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let a = client(&server).await;
    a.try_acquire("job").await.unwrap().release().await.unwrap();
    server
        .admin()
        .await
        .batch_execute("DROP TABLE public.lockyard_fence")
        .await
        .unwrap();
    let g = bounded(a.acquire("job", Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(g.fencing_token(), Some(1), "counted again from a new table");
    g.release().await.unwrap();
    let g = a.try_acquire("job").await.unwrap();
    assert_eq!(g.fencing_token(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_admits_at_most_its_permits() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let server = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let a = client(&server).await;
    let sem = a.semaphore("exports", 3).unwrap();
    let p1 = sem.try_acquire().await.unwrap();
    let p2 = sem.try_acquire().await.unwrap();
    let p3 = sem.try_acquire().await.unwrap();
    let keys: std::collections::HashSet<_> = [&p1, &p2, &p3].iter().map(|p| p.key()).collect();
    assert_eq!(keys.len(), 3, "one key per permit");
    assert!(sem.try_acquire().await.unwrap_err().is_would_block());
    assert_eq!(sem.holders().await.unwrap(), 3);
    let e = bounded(sem.acquire(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    let waiter = tokio::spawn({
        let sem = sem.clone();
        async move { sem.acquire(Duration::from_secs(15)).await }
    });
    drop((p1, p2, p3));
    bounded(waiter)
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();

    // Six workers, each taking a permit eight times: never more than three
    // inside at once, on another client as well.
    let b = client(&server).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..6 {
        let sem = if w % 2 == 0 { &a } else { &b }
            .semaphore("exports", 3)
            .unwrap();
        let (inside, most) = (inside.clone(), most.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..8 {
                let p = sem.acquire(Duration::from_secs(15)).await.unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                p.release().await.unwrap();
            }
        }));
    }
    for w in workers {
        bounded(w).await.unwrap();
    }
    let most = most.load(Ordering::SeqCst);
    assert!((1..=3).contains(&most), "{most} holders at once");
    assert!(a.semaphore("exports", 0).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_lock_readers_share_and_a_waiting_writer_holds_new_readers_back() {
    let server = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let a = client(&server).await;
    let b = client(&server).await;
    let rw = a.rwlock("catalog").unwrap();
    let r1 = rw.try_read().await.unwrap();
    let r2 = b
        .rwlock("catalog")
        .unwrap()
        .read(Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(r2.mode(), Mode::Shared);
    assert!(rw.try_write().await.unwrap_err().is_would_block());
    // The lock of the same name is the same lock.
    assert!(a.try_acquire("catalog").await.unwrap_err().is_would_block());
    let writer = tokio::spawn({
        let rw = b.rwlock("catalog").unwrap();
        async move { rw.write(Duration::from_secs(15)).await }
    });
    let admin = server.admin().await;
    bounded(async {
        loop {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if n == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let e = rw.try_read().await.unwrap_err();
    assert!(
        e.is_would_block(),
        "a new reader overtook the waiting writer: {e}"
    );
    drop((r1, r2));
    let w = bounded(writer).await.unwrap().unwrap();
    assert_eq!(w.mode(), Mode::Exclusive);
    w.release().await.unwrap();
    rw.try_read().await.unwrap().release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquisitions_refusals_and_losses_are_counted_in_stats() {
    use lockyard::stats::{self, Backend};
    let server = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let a = client(&server).await;
    let name = "stats-postgres-counted";
    let g = a.try_acquire(name).await.unwrap();
    assert!(a.try_acquire(name).await.unwrap_err().is_would_block());
    let s = stats::get(Backend::Postgres, name).unwrap();
    assert_eq!((s.acquisitions, s.busy, s.held), (1, 1, 1));
    // A hold lost to a terminated backend counts as lost once dropped.
    let admin = server.admin().await;
    admin
        .query_one("SELECT pg_terminate_backend($1)", &[&g.backend_pid()])
        .await
        .unwrap();
    bounded(g.lost()).await;
    drop(g);
    let s = stats::get(Backend::Postgres, name).unwrap();
    assert_eq!((s.held, s.lost), (0, 1));
    assert_eq!(Backend::Postgres.as_str(), "postgres");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_lock_lasts_as_long_as_the_callers_transaction() {
    let server = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let a = client(&server).await;
    let other = client(&server).await;
    let mut db = server.admin().await;
    let opts = AcquireOptions::exclusive().timeout(Duration::from_millis(100));

    // Held until commit.
    let tx = db.transaction().await.unwrap();
    let held = a.lock_in_transaction(&tx, "ledger", &opts).await.unwrap();
    assert_eq!(held.mode, Mode::Exclusive);
    let first = held.fencing_token.unwrap();
    assert!(
        other
            .try_acquire("ledger")
            .await
            .unwrap_err()
            .is_would_block()
    );
    tx.commit().await.unwrap();
    let g = other.try_acquire("ledger").await.unwrap();
    assert!(g.fencing_token().unwrap() > first);

    // A wait that times out rolls back to its savepoint only: the
    // transaction goes on, with its own lock_timeout.
    let tx = db.transaction().await.unwrap();
    let e = bounded(a.lock_in_transaction(&tx, "ledger", &opts))
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    let e = a
        .lock_in_transaction(
            &tx,
            "ledger",
            &AcquireOptions::exclusive().timeout(Duration::ZERO),
        )
        .await
        .unwrap_err();
    assert!(e.is_would_block(), "{e}");
    let setting: String = tx.query_one("SHOW lock_timeout", &[]).await.unwrap().get(0);
    assert_eq!(setting, "0");
    // Woken by the server when the session lock is released.
    let waiting = async {
        a.lock_in_transaction(
            &tx,
            "ledger",
            &AcquireOptions::exclusive().timeout(Duration::from_secs(15)),
        )
        .await
    };
    let release = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        g.release().await.unwrap();
    };
    let (got, ()) = bounded(async { tokio::join!(waiting, release) }).await;
    got.unwrap();
    let setting: String = tx.query_one("SHOW lock_timeout", &[]).await.unwrap().get(0);
    assert_eq!(setting, "0", "the wait's lock_timeout was left behind");
    // Rolled back: released all the same.
    tx.rollback().await.unwrap();
    other
        .try_acquire("ledger")
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_granted_after_a_wait_takes_the_next_fencing_token_in_the_same_round_trip() {
    let server = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let a = client(&server).await;
    let b = client(&server).await;
    let admin = bounded(server.admin()).await;
    // The name is written into the wait's query text: quotes, backslashes
    // and dollar tags must stay inside it.
    for name in ["plain", "it's a \\ $ly$ name $lyx$ '); DROP TABLE x; --$"] {
        let held = bounded(a.try_acquire(name)).await.unwrap();
        let first = held.fencing_token().expect("fencing is on");
        let (b2, n) = (b.clone(), name.to_owned());
        let waiter = tokio::spawn(async move { b2.acquire(&n, Duration::from_secs(10)).await });
        lockyard_testkit::eventually("the waiter blocks in the server", || async {
            let row = admin
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    &[],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0) == 1
        })
        .await;
        bounded(held.release()).await.unwrap();
        let granted = bounded(waiter).await.unwrap().unwrap();
        assert_eq!(granted.fencing_token(), Some(first + 1), "{name:?}");
        let recorded: String = bounded(admin.query_one(
            "SELECT name FROM public.lockyard_fence WHERE key = $1",
            &[&granted.key().to_string()],
        ))
        .await
        .unwrap()
        .get(0);
        assert_eq!(recorded, name);
        bounded(granted.release()).await.unwrap();
    }
}
