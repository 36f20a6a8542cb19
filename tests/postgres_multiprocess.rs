//! Mutual exclusion across processes on one Postgres server: 4 processes ×
//! 50 read-modify-write increments of a counter in a plain file (no
//! atomicity of its own), each under the lock.

use std::time::Duration;

use lockyard::postgres::PgLocks;
use lockyard_testkit::counter::SharedCounter;
use lockyard_testkit::postgres::PgServer;
use lockyard_testkit::{bounded, child};

/// A worker's entry (role: `url|rounds|dir`); returns at once when run by
/// the test harness directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_worker() {
    let Some(spec) = child::role() else {
        return;
    };
    let mut parts = spec.splitn(3, '|');
    let url = parts.next().unwrap();
    let rounds: u32 = parts.next().unwrap().parse().unwrap();
    let counter = SharedCounter::at(parts.next().unwrap());
    let locks = PgLocks::connect(url).await.unwrap();
    for _ in 0..rounds {
        let g = bounded(locks.acquire("xproc", Duration::from_secs(15)))
            .await
            .unwrap();
        counter.increment(g.fencing_token()).await;
        g.release().await.unwrap();
    }
    locks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_increment_a_shared_counter_without_losing_one() {
    let server = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let counter = SharedCounter::new();
    let (procs, rounds) = (4u64, 50u64);
    let role = format!("{}|{rounds}|{}", server.url(), counter.dir().display());
    let roles = vec![role; procs as usize];
    child::run_all("child_process_worker", &roles, Duration::from_secs(60)).await;
    counter.assert_complete(procs * rounds);
    assert_eq!(server.advisory_locks_granted().await, 0);
}
