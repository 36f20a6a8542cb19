//! The guard contract, checked the same way on every backend through
//! `Arc<dyn Lock>`: two views of one named lock (two file-lock managers on
//! one directory, two Redis clients on one server, two handles to one
//! in-process lock) must behave alike. A new backend passes this before it
//! lands: add one `conformance!` line.

mod common;

use std::sync::Arc;
use std::time::Duration;

use lockyard::{AcquireOptions, Lock, Mode};
use tokio::time::Instant;

/// Every wait in this file is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f).await.expect("bounded wait")
}

/// Retries `try_lock(Exclusive)` on `lock` until it succeeds (bounded):
/// whatever a cancelled operation left behind must go away by itself.
async fn eventually_free(lock: &dyn Lock, why: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match lock.try_lock(Mode::Exclusive).await {
            Ok(g) => {
                g.release().await.expect("release");
                return;
            }
            Err(e) if e.is_would_block() => {}
            Err(e) => panic!("{why}: {e}"),
        }
        assert!(Instant::now() < end, "{why}: still held after 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Takes `lock` exclusively, retrying (bounded) while what an earlier
/// dropped guard or cancelled acquisition left is still being released in
/// the background (Redis releases dropped guards from a task).
async fn take_soon(lock: &dyn Lock) -> lockyard::LockGuard {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match lock.try_lock(Mode::Exclusive).await {
            Ok(g) => return g,
            Err(e) if e.is_would_block() && Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("still held after 5 s: {e}"),
        }
    }
}

/// Try, timeout and would-block: contention is `WouldBlock` for a try,
/// `Timeout` for a wait (also a zero one); a released lock is free at once.
async fn try_timeout_and_would_block(a: Arc<dyn Lock>, b: Arc<dyn Lock>) {
    let g = a.try_lock(Mode::Exclusive).await.unwrap();
    assert_eq!(g.mode(), Mode::Exclusive);
    let e = b.try_lock(Mode::Exclusive).await.unwrap_err();
    assert!(e.is_would_block(), "{e}");
    let e = b.try_lock(Mode::Shared).await.unwrap_err();
    assert!(e.is_would_block(), "shared vs exclusive: {e}");
    for t in [Duration::ZERO, Duration::from_millis(100)] {
        let asked = Instant::now();
        let e = bounded(b.lock(&AcquireOptions::exclusive().timeout(t)))
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert!(asked.elapsed() >= t, "gave up before its timeout");
    }
    assert!(b.is_locked().await.unwrap());
    g.release().await.unwrap();
    b.try_lock(Mode::Exclusive)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// Shared holds share; an exclusive one excludes them.
async fn shared_holds_share(a: Arc<dyn Lock>, b: Arc<dyn Lock>) {
    let r1 = a.try_lock(Mode::Shared).await.unwrap();
    let r2 = b.try_lock(Mode::Shared).await.unwrap();
    assert!(
        b.try_lock(Mode::Exclusive)
            .await
            .unwrap_err()
            .is_would_block()
    );
    r1.release().await.unwrap();
    r2.release().await.unwrap();
    eventually_free(&*b, "after shared holds").await;
}

/// A release wakes a waiter on the other view at once (not at a TTL: the
/// Redis clients use a 30 s one).
async fn release_wakes_a_waiter(a: Arc<dyn Lock>, b: Arc<dyn Lock>) {
    let g = a.try_lock(Mode::Exclusive).await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = b
            .lock(&AcquireOptions::exclusive().timeout(Duration::from_secs(15)))
            .await;
        (g, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let released = Instant::now();
    g.release().await.unwrap();
    let (got, at) = bounded(waiter).await.unwrap();
    got.unwrap().release().await.unwrap();
    let after = at.duration_since(released);
    assert!(
        after < Duration::from_secs(3),
        "the waiter got it {after:?} after the release"
    );
}

/// Acquisitions cancelled at random moments, with and without a holder,
/// leak nothing.
async fn cancel_at_random_moments_leaks_nothing(a: Arc<dyn Lock>, b: Arc<dyn Lock>) {
    use rand::Rng;
    let mut rng = rand::rng();
    for round in 0..60 {
        let blocker = if round % 3 == 0 {
            Some(take_soon(&*a).await)
        } else {
            None
        };
        let mode = if round % 4 == 1 {
            Mode::Shared
        } else {
            Mode::Exclusive
        };
        let cancel_after = Duration::from_micros(rng.random_range(0..3000));
        let opts = AcquireOptions::exclusive()
            .mode(mode)
            .timeout(Duration::from_secs(5));
        if let Ok(Ok(g)) = tokio::time::timeout(cancel_after, b.lock(&opts)).await {
            drop(g);
        }
        if let Some(g) = blocker {
            g.release().await.unwrap();
        }
    }
    eventually_free(&*a, "after cancelled acquisitions").await;
}

/// A release whose future is dropped before it completes still releases.
async fn cancelled_release_still_releases(a: Arc<dyn Lock>, b: Arc<dyn Lock>) {
    let g = a.try_lock(Mode::Exclusive).await.unwrap();
    let release = g.release();
    // Poll it at most once, then drop it.
    let _ = futures::FutureExt::now_or_never(release);
    eventually_free(&*b, "after a cancelled release").await;
}

/// A guard that is dropped releases (in the background where that needs
/// I/O).
async fn dropped_guard_releases(a: Arc<dyn Lock>, b: Arc<dyn Lock>) {
    drop(a.try_lock(Mode::Exclusive).await.unwrap());
    eventually_free(&*b, "after a dropped guard").await;
}

macro_rules! conformance {
    ($backend:ident, $views:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn try_timeout_and_would_block() {
                let (_keep, a, b) = $views("try").await;
                super::try_timeout_and_would_block(a, b).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn shared_holds_share() {
                let (_keep, a, b) = $views("shared").await;
                super::shared_holds_share(a, b).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn release_wakes_a_waiter() {
                let (_keep, a, b) = $views("wake").await;
                super::release_wakes_a_waiter(a, b).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancel_at_random_moments_leaks_nothing() {
                let (_keep, a, b) = $views("cancel").await;
                super::cancel_at_random_moments_leaks_nothing(a, b).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancelled_release_still_releases() {
                let (_keep, a, b) = $views("cancelled-release").await;
                super::cancelled_release_still_releases(a, b).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dropped_guard_releases() {
                let (_keep, a, b) = $views("dropped").await;
                super::dropped_guard_releases(a, b).await;
            }
        }
    };
}

/// What keeps a backend's views alive (a directory, a server).
type Keep = Box<dyn std::any::Any + Send>;

async fn file_views(name: &str) -> (Keep, Arc<dyn Lock>, Arc<dyn Lock>) {
    let dir = tempfile::tempdir().unwrap();
    // Two managers contend through the kernel, as two processes do.
    let m1 = lockyard::FileLockManager::new(dir.path()).unwrap();
    let m2 = lockyard::FileLockManager::new(dir.path()).unwrap();
    let a: Arc<dyn Lock> = Arc::new(m1.lock(name).unwrap());
    let b: Arc<dyn Lock> = Arc::new(m2.lock(name).unwrap());
    (Box::new((dir, m1, m2)), a, b)
}

async fn local_views(name: &str) -> (Keep, Arc<dyn Lock>, Arc<dyn Lock>) {
    let lock: Arc<dyn Lock> = Arc::new(lockyard::NamedRwLock::new(name));
    (Box::new(()), lock.clone(), lock)
}

conformance!(file, file_views);
conformance!(local, local_views);

#[cfg(feature = "redis")]
async fn redis_views(name: &str) -> (Keep, Arc<dyn Lock>, Arc<dyn Lock>) {
    use lockyard::redis::{RedisLocks, RedisOptions};
    let server = common::redis::RedisServer::start();
    let opts = RedisOptions::default().ttl(Duration::from_secs(30));
    let c1 = RedisLocks::connect_with(&server.url(), opts.clone())
        .await
        .unwrap();
    let c2 = RedisLocks::connect_with(&server.url(), opts).await.unwrap();
    let a: Arc<dyn Lock> = Arc::new(c1.lock(name).unwrap());
    let b: Arc<dyn Lock> = Arc::new(c2.lock(name).unwrap());
    (Box::new(server), a, b)
}

#[cfg(feature = "redis")]
conformance!(redis, redis_views);

/// The same lock through two clients of a private 3-master Redis Cluster,
/// each connected through the plain constructor with one node's URL.
#[cfg(feature = "redis")]
async fn redis_cluster_views(name: &str) -> (Keep, Arc<dyn Lock>, Arc<dyn Lock>) {
    use lockyard::redis::{RedisLocks, RedisOptions};
    let cluster = tokio::task::spawn_blocking(|| common::cluster::RedisCluster::start(3, 0))
        .await
        .unwrap();
    let opts = RedisOptions::default().ttl(Duration::from_secs(30));
    let c1 = RedisLocks::connect_with(&cluster.url(), opts.clone())
        .await
        .unwrap();
    let c2 = RedisLocks::connect_with(&cluster.nodes[2].url(), opts)
        .await
        .unwrap();
    assert!(c1.is_cluster() && c2.is_cluster());
    let a: Arc<dyn Lock> = Arc::new(c1.lock(name).unwrap());
    let b: Arc<dyn Lock> = Arc::new(c2.lock(name).unwrap());
    (Box::new(cluster), a, b)
}

#[cfg(feature = "redis")]
conformance!(redis_cluster, redis_cluster_views);
