//! Mutual exclusion across processes on one Postgres server: 4 processes ×
//! 50 read-modify-write increments of a counter in a plain file (no
//! atomicity of its own), each under the lock.

use std::io::Write;
use std::time::Duration;

use lockyard::postgres::PgLocks;
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
    let dir = std::path::PathBuf::from(parts.next().unwrap());
    let locks = PgLocks::connect(url).await.unwrap();
    for _ in 0..rounds {
        let g = bounded(locks.acquire("xproc", Duration::from_secs(15)))
            .await
            .unwrap();
        let path = dir.join("counter");
        let v: u64 = std::fs::read_to_string(&path)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Widen the window a second writer would need.
        tokio::time::sleep(Duration::from_micros(200)).await;
        std::fs::write(&path, (v + 1).to_string()).unwrap();
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("fences"))
            .unwrap();
        writeln!(log, "{}", g.fencing_token().unwrap()).unwrap();
        drop(log);
        g.release().await.unwrap();
    }
    locks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_increment_a_shared_counter_without_losing_one() {
    let server = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("counter"), "0").unwrap();
    std::fs::write(dir.path().join("fences"), "").unwrap();
    let (procs, rounds) = (4u64, 50u64);
    let role = format!("{}|{rounds}|{}", server.url(), dir.path().display());
    let roles = vec![role; procs as usize];
    child::run_all("child_process_worker", &roles, Duration::from_secs(60)).await;
    let count: u64 = std::fs::read_to_string(dir.path().join("counter"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(count, procs * rounds, "lost updates");
    let fences: Vec<u64> = std::fs::read_to_string(dir.path().join("fences"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(fences.len() as u64, procs * rounds);
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens must strictly increase across processes: {fences:?}"
    );
    assert_eq!(server.advisory_locks_granted().await, 0);
}
