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
