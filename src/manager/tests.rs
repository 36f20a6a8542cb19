//! Manager tests over a small test-only lock (tokio's semaphore), so they do
//! not depend on any backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout};

use super::*;

/// An exclusive in-memory lock; `stuck` makes `lock` ignore its timeout and
/// `broken` makes every call fail, to test the manager's own deadline and
/// error accounting.
#[derive(Debug)]
struct TestLock {
    name: String,
    sem: Arc<Semaphore>,
    stuck: bool,
    broken: bool,
}

#[derive(Debug)]
struct TestGuard {
    name: String,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl RawGuard for TestGuard {
    fn resource(&self) -> &str {
        &self.name
    }
    fn mode(&self) -> Mode {
        Mode::Exclusive
    }
    async fn release(self: Box<Self>) -> Result<(), LockError> {
        Ok(())
    }
}

impl TestLock {
    /// A lock whose resource name is `name` made unique to this test run,
    /// since the stats registry is process-wide and tests run in parallel.
    fn new(name: &str) -> Arc<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Arc::new(Self {
            name: format!("{name}#manager-test-{n}"),
            sem: Arc::new(Semaphore::new(1)),
            stuck: false,
            broken: false,
        })
    }

    fn guard(&self, permit: OwnedSemaphorePermit) -> LockGuard {
        LockGuard::new(TestGuard {
            name: self.name.clone(),
            _permit: permit,
        })
    }
}

#[async_trait]
impl Lock for TestLock {
    fn name(&self) -> &str {
        &self.name
    }

    async fn lock(&self, options: &AcquireOptions) -> Result<LockGuard, LockError> {
        if self.broken {
            return Err(LockError::Closed {
                resource: self.name.clone(),
            });
        }
        if self.stuck {
            std::future::pending::<()>().await;
        }
        let acquire = Arc::clone(&self.sem).acquire_owned();
        let permit = match options.timeout {
            Some(t) => timeout(t, acquire).await.map_err(|_| LockError::Timeout {
                resource: self.name.clone(),
                waited: t,
                holder: None,
            })?,
            None => acquire.await,
        };
        let permit = permit.map_err(|_| LockError::Closed {
            resource: self.name.clone(),
        })?;
        Ok(self.guard(permit))
    }

    async fn try_lock(&self, _mode: Mode) -> Result<LockGuard, LockError> {
        if self.broken {
            return Err(LockError::Closed {
                resource: self.name.clone(),
            });
        }
        match Arc::clone(&self.sem).try_acquire_owned() {
            Ok(p) => Ok(self.guard(p)),
            Err(_) => Err(LockError::WouldBlock {
                resource: self.name.clone(),
                holder: None,
            }),
        }
    }

    async fn is_locked(&self) -> Result<bool, LockError> {
        Ok(self.sem.available_permits() == 0)
    }
}

/// The name a test lock was made with.
fn short(name: &str) -> String {
    name.split('#').next().unwrap_or(name).to_owned()
}

fn manager_with(names: &[&str]) -> (AsyncLockManager, Vec<Arc<TestLock>>) {
    let m = AsyncLockManager::new();
    let locks: Vec<_> = names.iter().map(|n| TestLock::new(n)).collect();
    for l in &locks {
        m.register(short(&l.name), Arc::clone(l) as Arc<dyn Lock>)
            .unwrap();
    }
    (m, locks)
}

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn acquire_all_sorts_and_counts() {
    let (m, locks) = manager_with(&["c", "a", "b"]);
    let set = m
        .acquire_all(&["c", "a", "b"], Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(set.names().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(set.len(), 3);
    for l in &locks {
        assert!(l.is_locked().await.unwrap());
    }
    assert_eq!(m.stats().total.held, 3);
    set.release().await.unwrap();
    for l in &locks {
        assert!(!l.is_locked().await.unwrap());
    }
    let stats = m.stats();
    assert_eq!(stats.total.acquisitions, 3);
    assert_eq!(stats.total.held, 0);
    assert_eq!(stats.total.contended, 0);
    assert_eq!(stats.per_lock["a"].acquisitions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_orders_do_not_deadlock() {
    let (m, _locks) = manager_with(&["a", "b", "c"]);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            let order: &[&str] = if i % 2 == 0 {
                &["a", "b", "c"]
            } else {
                &["c", "b", "a"]
            };
            for _ in 0..50 {
                let set = m.acquire_all(order, Duration::from_secs(5)).await?;
                tokio::task::yield_now().await;
                drop(set);
            }
            Ok::<_, LockError>(())
        }));
    }
    for t in tasks {
        timeout(LIMIT, t).await.unwrap().unwrap().unwrap();
    }
    let stats = m.stats();
    assert_eq!(stats.total.acquisitions, 8 * 50 * 3);
    assert_eq!(stats.total.timeouts, 0);
    assert_eq!(stats.total.held, 0);
}

#[tokio::test]
async fn timeout_releases_what_was_taken() {
    let (m, locks) = manager_with(&["a", "b"]);
    let held_b = locks[1].try_lock(Mode::Exclusive).await.unwrap();
    let start = Instant::now();
    let err = m
        .acquire_all(&["b", "a"], Duration::from_millis(100))
        .await
        .unwrap_err();
    let waited = start.elapsed();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.resource(), Some("b"));
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert!(!locks[0].is_locked().await.unwrap(), "a was not given back");
    let stats = m.stats();
    assert_eq!(stats.per_lock["b"].timeouts, 1);
    assert_eq!(stats.per_lock["a"].acquisitions, 1);
    assert_eq!(stats.total.held, 0);
    drop(held_b);
}

#[tokio::test]
async fn cancelled_acquire_all_releases_what_was_taken() {
    let (m, locks) = manager_with(&["a", "b"]);
    let held_b = locks[1].try_lock(Mode::Exclusive).await.unwrap();
    let fut = m.acquire_all(&["a", "b"], Duration::from_secs(60));
    assert!(timeout(Duration::from_millis(50), fut).await.is_err());
    assert!(!locks[0].is_locked().await.unwrap(), "a leaked");
    assert_eq!(m.stats().total.held, 0);
    drop(held_b);
    let set = timeout(LIMIT, m.acquire_all(&["a", "b"], LIMIT))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(set.len(), 2);
}

#[tokio::test]
async fn deadline_cuts_off_a_backend_that_overruns() {
    let m = AsyncLockManager::new();
    let stuck = Arc::new(TestLock {
        name: "stuck".into(),
        sem: Arc::new(Semaphore::new(0)),
        stuck: true,
        broken: false,
    });
    m.register("stuck", stuck).unwrap();
    let start = Instant::now();
    let err = timeout(LIMIT, m.acquire_all(&["stuck"], Duration::from_millis(50)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_timeout());
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(m.stats().per_lock["stuck"].timeouts, 1);
}

#[tokio::test]
async fn backend_errors_are_counted_and_returned() {
    let m = AsyncLockManager::new();
    let (_, ok) = manager_with(&["a"]);
    m.register("a", Arc::clone(&ok[0]) as Arc<dyn Lock>)
        .unwrap();
    m.register(
        "z",
        Arc::new(TestLock {
            name: "z".into(),
            sem: Arc::new(Semaphore::new(1)),
            stuck: false,
            broken: true,
        }),
    )
    .unwrap();
    let err = m.acquire_all(&["a", "z"], LIMIT).await.unwrap_err();
    assert!(matches!(err, LockError::Closed { .. }), "{err}");
    assert!(!ok[0].is_locked().await.unwrap());
    assert_eq!(m.stats().per_lock["z"].errors, 1);
}

#[tokio::test]
async fn bad_names_are_refused() {
    let (m, _locks) = manager_with(&["a"]);
    assert!(matches!(
        m.register("", TestLock::new("x")),
        Err(LockError::InvalidName { .. })
    ));
    assert!(
        m.register("a", TestLock::new("a"))
            .unwrap_err()
            .is_invalid_input()
    );
    assert!(
        m.acquire_all(&["nope"], LIMIT)
            .await
            .unwrap_err()
            .is_invalid_input()
    );
    assert!(
        m.acquire_all(&["a", "a"], LIMIT)
            .await
            .unwrap_err()
            .is_invalid_input()
    );
    assert!(m.unregister("a").is_some());
    assert!(m.names().is_empty());
}

#[tokio::test]
async fn contended_single_acquire_is_counted() {
    let (m, locks) = manager_with(&["a"]);
    let held = locks[0].try_lock(Mode::Exclusive).await.unwrap();
    let released = Arc::new(AtomicBool::new(false));
    let r = Arc::clone(&released);
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        r.store(true, Ordering::SeqCst);
        drop(held);
    });
    let g = timeout(LIMIT, m.acquire("a", &AcquireOptions::new().timeout(LIMIT)))
        .await
        .unwrap()
        .unwrap();
    assert!(released.load(Ordering::SeqCst));
    let s = m.stats().per_lock["a"].clone();
    assert_eq!((s.acquisitions, s.contended, s.held), (1, 1, 1));
    assert!(s.wait_max.unwrap() >= Duration::from_millis(20));
    drop(g);
    assert_eq!(m.stats().total.held, 0);
    releaser.await.unwrap();
}

#[tokio::test]
async fn lock_set_lost_never_fires_for_local_locks() {
    let (m, _locks) = manager_with(&["a"]);
    let set = m.acquire_all(&["a"], LIMIT).await.unwrap();
    assert!(
        timeout(Duration::from_millis(20), set.lost())
            .await
            .is_err()
    );
    let empty = m.acquire_all::<&str>(&[], LIMIT).await.unwrap();
    assert!(empty.is_empty());
    assert!(
        timeout(Duration::from_millis(20), empty.lost())
            .await
            .is_err()
    );
}
