//! The stats registry: every backend counts its acquisitions wherever they
//! are made, and the manager reads what the backends recorded (issue 11).
//! Names are unique per test: the registry is process-wide.

use std::sync::Arc;
use std::time::Duration;

use lockyard::stats::{self, Backend, LockStat};
use lockyard::{
    AcquireOptions, AsyncLockManager, FileLock, FileLockGuard, FileLockManager, Lock, Mode,
    NamedRwLock, NamedSemaphore, Semaphore,
};
use lockyard_testkit::{LIMIT, bounded};

fn stat(backend: Backend, name: &str) -> LockStat {
    stats::get(backend, name).unwrap_or_else(|| panic!("no stats for {backend}/{name}"))
}

#[tokio::test]
async fn direct_file_acquisitions_are_counted_with_contention_and_hold_time() {
    let dir = tempfile::tempdir().unwrap();
    let files = FileLockManager::new(dir.path()).unwrap();
    let name = "stats-file-direct";
    let guard = bounded(files.acquire(name, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(stat(Backend::File, name).held, 1);

    // A try while held: busy (and contended); a short wait: a timeout.
    assert!(files.try_acquire(name).await.unwrap_err().is_would_block());
    let e = bounded(files.acquire(name, Duration::from_millis(30)))
        .await
        .unwrap_err();
    assert!(e.is_timeout());

    // A waiter that gets it once the holder lets go: contended, then acquired.
    let waiter = {
        let files = files.clone();
        tokio::spawn(async move { files.acquire(name, Duration::from_secs(10)).await })
    };
    while stat(Backend::File, name).waiting == 0 {
        bounded(tokio::time::sleep(Duration::from_millis(2))).await;
    }
    drop(guard);
    let second = bounded(waiter).await.unwrap().unwrap();
    drop(second);

    let s = stat(Backend::File, name);
    assert_eq!(s.acquisitions, 2);
    assert_eq!(s.busy, 1);
    assert_eq!(s.timeouts, 1);
    assert_eq!(s.contended, 3, "{s:?}");
    assert_eq!((s.held, s.waiting), (0, 0));
    assert_eq!(s.hold.count(), 2);
    assert_eq!(s.wait.count(), 2);
}

#[tokio::test]
async fn named_semaphore_acquisitions_are_counted_by_every_method() {
    let name = "stats-semaphore-direct";
    let sem = Arc::new(Semaphore::named(name, 1));
    let permit = sem.acquire().await.unwrap();
    assert!(sem.try_acquire().is_err());
    let timed_out = sem.acquire_timeout(Duration::from_millis(20)).await;
    assert!(timed_out.is_err());
    drop(permit);
    let owned = Arc::clone(&sem).try_acquire_owned().unwrap();
    drop(owned);
    let blocking = {
        let sem = Arc::clone(&sem);
        tokio::task::spawn_blocking(move || sem.acquire_blocking().map(drop).is_ok())
    };
    assert!(bounded(blocking).await.unwrap());

    let s = stat(Backend::Local, name);
    assert_eq!(s.acquisitions, 3);
    assert_eq!(s.busy, 1);
    assert_eq!(s.timeouts, 1);
    assert_eq!((s.held, s.waiting), (0, 0));

    // An anonymous semaphore records nothing anywhere.
    let before = stats::snapshot().total.acquisitions;
    let anonymous = Semaphore::new(1);
    drop(anonymous.acquire().await.unwrap());
    let after = stats::snapshot().total.acquisitions;
    // Other tests run meanwhile, so only check the named entry did not move.
    assert!(after >= before);
    assert_eq!(stat(Backend::Local, name).acquisitions, 3);
}

#[tokio::test]
async fn the_manager_reads_what_backends_recorded_and_counts_custom_locks_once() {
    let dir = tempfile::tempdir().unwrap();
    let files = FileLockManager::new(dir.path()).unwrap();
    let manager = AsyncLockManager::new();
    manager
        .register("t", Arc::new(files.lock("stats-manager-file").unwrap()))
        .unwrap();
    manager
        .register("s", Arc::new(NamedSemaphore::new("stats-manager-sem", 1)))
        .unwrap();
    manager
        .register("rw", Arc::new(NamedRwLock::new("stats-manager-rw")))
        .unwrap();

    // Directly on the backend, then through the manager: one entry, two counts.
    drop(
        bounded(files.acquire("stats-manager-file", LIMIT))
            .await
            .unwrap(),
    );
    drop(
        bounded(manager.acquire("t", &AcquireOptions::exclusive()))
            .await
            .unwrap(),
    );
    let set = bounded(manager.acquire_all(&["t", "s", "rw"], LIMIT))
        .await
        .unwrap();
    assert_eq!(manager.stats().total.held, 3);
    drop(set);

    let stats = manager.stats();
    assert_eq!(stats.per_lock["t"].acquisitions, 3);
    assert_eq!(stats.per_lock["s"].acquisitions, 1);
    assert_eq!(stats.per_lock["rw"].acquisitions, 1);
    assert_eq!(stats.total.acquisitions, 5);
    assert_eq!(stats.total.held, 0);
    assert_eq!(stats.total.wait.count(), 5);
}

#[tokio::test]
async fn try_acquire_all_refuses_with_would_block_not_a_zero_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let files = FileLockManager::new(dir.path()).unwrap();
    let manager = AsyncLockManager::new();
    for n in ["stats-try-a", "stats-try-b"] {
        manager
            .register(n, Arc::new(files.lock(n).unwrap()))
            .unwrap();
    }
    let held = bounded(files.acquire("stats-try-b", LIMIT)).await.unwrap();
    let err = bounded(manager.try_acquire_all(&["stats-try-b", "stats-try-a"]))
        .await
        .unwrap_err();
    assert!(err.is_would_block(), "{err}");
    assert_eq!(err.resource(), Some("stats-try-b"));
    // "a" (taken first, in sorted order) was given back.
    assert!(!bounded(files.is_locked("stats-try-a")).await.unwrap());
    let s = manager.stats();
    assert_eq!(s.per_lock["stats-try-b"].busy, 1);
    assert_eq!(s.per_lock["stats-try-b"].timeouts, 0);
    drop(held);

    let both = bounded(manager.try_acquire_all(&["stats-try-a", "stats-try-b"]))
        .await
        .unwrap();
    assert_eq!(both.len(), 2);
}

#[tokio::test]
async fn get_or_register_registers_once_and_typed_guards_stay_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let files = FileLockManager::new(dir.path()).unwrap();
    let manager = AsyncLockManager::new();
    let mut made = 0;
    for _ in 0..3 {
        manager
            .get_or_register("stats-tenant-7", || {
                made += 1;
                Ok(Arc::new(files.lock("stats-tenant-7")?))
            })
            .unwrap();
    }
    assert_eq!(made, 1);
    assert!(manager.get_or_register("", || unreachable!()).is_err());

    // The concrete handle and its typed guard.
    let lock: Arc<FileLock> = manager.get_as("stats-tenant-7").unwrap();
    assert!(manager.get_as::<NamedSemaphore>("stats-tenant-7").is_none());
    let typed: FileLockGuard = bounded(lock.acquire(&AcquireOptions::exclusive()))
        .await
        .unwrap();
    assert_eq!(typed.owner().pid, std::process::id());
    drop(typed);

    // A guard through the manager downcasts to the backend's guard.
    let guard = bounded(manager.acquire("stats-tenant-7", &AcquireOptions::exclusive()))
        .await
        .unwrap();
    assert!(
        guard
            .downcast_ref::<FileLockGuard>()
            .unwrap()
            .path()
            .exists()
    );
    let typed: FileLockGuard = guard.downcast().unwrap();
    assert_eq!(typed.mode(), Mode::Exclusive);
    drop(typed);
    assert_eq!(manager.stats().per_lock["stats-tenant-7"].acquisitions, 2);
    assert!(!bounded(lock.is_locked()).await.unwrap());
}

#[tokio::test]
async fn lock_stats_merge_across_replicas_into_true_percentiles() {
    let mut a = LockStat::default();
    let mut b = LockStat::default();
    for _ in 0..99 {
        a.wait.record(Duration::from_micros(10));
    }
    b.wait.record(Duration::from_secs(2));
    a.acquisitions = 99;
    b.acquisitions = 1;
    a.merge(&b);
    assert_eq!(a.acquisitions, 100);
    // p50 is a fast wait, p99 still fast (99 of 100), max the slow one.
    assert!(a.wait_p50.unwrap() < Duration::from_micros(20));
    assert!(a.wait_p99.unwrap() < Duration::from_micros(20));
    assert_eq!(a.wait_max, Some(Duration::from_secs(2)));
}

#[cfg(feature = "serde")]
#[tokio::test]
async fn stats_and_owners_round_trip_through_serde() {
    let name = "stats-serde";
    let sem = Semaphore::named(name, 1);
    drop(sem.acquire().await.unwrap());
    let snapshot = stats::snapshot();
    let json = serde_json::to_string(&snapshot).unwrap();
    let back: stats::Snapshot = serde_json::from_str(&json).unwrap();
    let entry = back.entries.iter().find(|e| e.name == name).unwrap();
    assert_eq!(entry.backend, Backend::Local);
    assert_eq!(entry.stats.acquisitions, 1);
    assert!(json.contains(r#""backend":"local""#));

    let owner = lockyard::Owner::current(Mode::Shared);
    let json = serde_json::to_string(&owner).unwrap();
    assert!(json.contains(r#""mode":"shared""#), "{json}");
    let back: lockyard::Owner = serde_json::from_str(&json).unwrap();
    assert_eq!(back, owner);

    let dir = tempfile::tempdir().unwrap();
    let files = FileLockManager::new(dir.path()).unwrap();
    let _g = bounded(files.acquire("listed", LIMIT)).await.unwrap();
    let listed = serde_json::to_value(bounded(files.list()).await.unwrap()).unwrap();
    assert_eq!(listed[0]["name"], "listed");
    assert_eq!(listed[0]["held"], true);
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use lockyard::redis::{RedisLocks, RedisOptions};
    use lockyard_testkit::redis::RedisServer;

    async fn client(server: &RedisServer) -> RedisLocks {
        let opts = RedisOptions::default().ttl(Duration::from_secs(2));
        bounded(RedisLocks::connect_with(&server.url(), opts))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn direct_redis_acquisitions_move_the_registered_locks_stats() {
        let server = RedisServer::start();
        let redis = client(&server).await;
        let manager = AsyncLockManager::new();
        manager
            .register(
                "deploy",
                Arc::new(redis.lock("stats-redis-deploy").unwrap()),
            )
            .unwrap();

        let guard = bounded(redis.acquire("stats-redis-deploy", Duration::from_secs(1)))
            .await
            .unwrap();
        assert_eq!(manager.stats().per_lock["deploy"].held, 1);
        assert!(
            bounded(redis.try_acquire("stats-redis-deploy"))
                .await
                .unwrap_err()
                .is_would_block()
        );
        let e = bounded(redis.acquire("stats-redis-deploy", Duration::from_millis(50)))
            .await
            .unwrap_err();
        assert!(e.is_timeout());
        bounded(guard.release()).await.unwrap();

        let permits = redis.semaphore("stats-redis-renders", 1).unwrap();
        let p = bounded(permits.acquire(Duration::from_secs(1)))
            .await
            .unwrap();
        assert!(
            bounded(permits.try_acquire())
                .await
                .unwrap_err()
                .is_would_block()
        );
        drop(p);

        let s = manager.stats().per_lock["deploy"].clone();
        assert_eq!(
            (s.acquisitions, s.busy, s.timeouts, s.held),
            (1, 1, 1, 0),
            "{s:?}"
        );
        assert_eq!(s.contended, 2);
        let s = stat(Backend::Redis, "stats-redis-renders");
        assert_eq!((s.acquisitions, s.busy), (1, 1));

        // Through the manager: the typed Redis guard is reachable.
        let g = bounded(manager.acquire("deploy", &AcquireOptions::exclusive()))
            .await
            .unwrap();
        let typed = g.downcast_ref::<lockyard::RedisLockGuard>().unwrap();
        assert!(typed.fencing_token() > 0);
        drop(g);
        assert_eq!(manager.stats().per_lock["deploy"].acquisitions, 2);
        redis.shutdown().await;
    }

    #[tokio::test]
    async fn a_lock_lost_while_held_is_counted_once() {
        let server = RedisServer::start();
        let redis = client(&server).await;
        let g = bounded(redis.acquire("stats-redis-lost", Duration::from_secs(1)))
            .await
            .unwrap();
        server.command(&[
            "SET",
            "lockyard:{stats-redis-lost}:lock",
            "thief",
            "PX",
            "60000",
        ]);
        bounded(g.lost()).await;
        assert!(redis.stats().lost >= 1);
        drop(g);
        let s = stat(Backend::Redis, "stats-redis-lost");
        assert_eq!((s.lost, s.held, s.acquisitions), (1, 0, 1));
        redis.shutdown().await;
    }
}
