//! FileLockManager within one process: modes, try, timeouts, handles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lockyard::{AcquireOptions, FileLockManager, Lock, LockError, LockGuard, Mode};

const T: Duration = Duration::from_secs(10);

fn manager() -> (tempfile::TempDir, FileLockManager) {
    let dir = tempfile::tempdir().unwrap();
    let m = FileLockManager::new(dir.path().join("locks")).unwrap();
    (dir, m)
}

#[tokio::test]
async fn acquire_release_and_inspect() {
    let (_d, m) = manager();
    assert!(!m.is_locked("job").await.unwrap());
    assert_eq!(m.owner("job").await.unwrap(), None);
    let g = m.acquire("job", T).await.unwrap();
    assert_eq!(g.name(), "job");
    assert_eq!(g.path(), m.dir().join("job.lock"));
    assert!(m.is_locked("job").await.unwrap());
    let owner = m.owner("job").await.unwrap().unwrap();
    assert_eq!(owner.pid, std::process::id());
    assert_eq!(owner.mode, Mode::Exclusive);
    let err = m.try_acquire("job").await.unwrap_err();
    assert!(err.is_would_block(), "{err}");
    assert_eq!(err.holder().unwrap().pid, std::process::id());
    assert!(
        m.try_acquire_shared("job")
            .await
            .unwrap_err()
            .is_would_block()
    );
    g.release().await.unwrap();
    assert!(!m.is_locked("job").await.unwrap());
    let g = m.try_acquire("job").await.unwrap();
    drop(g);
    assert!(!m.is_locked("job").await.unwrap());
}

#[tokio::test]
async fn dir_is_created_private() {
    let (_d, m) = manager();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(m.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let _g = m.acquire("x", T).await.unwrap();
        let fmode = std::fs::metadata(m.dir().join("x.lock"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(fmode & 0o077, 0, "lock file mode {fmode:o}");
    }
}

#[tokio::test]
async fn shared_holders_coexist_and_exclude_writers() {
    let (_d, m) = manager();
    let a = m.acquire_shared("idx", T).await.unwrap();
    let b = m.try_acquire_shared("idx").await.unwrap();
    assert_eq!(b.mode(), Mode::Shared);
    assert!(m.try_acquire("idx").await.unwrap_err().is_would_block());
    let info = m.list().await.unwrap();
    assert_eq!(info.len(), 1);
    assert!(info[0].held);
    assert_eq!(info[0].mode, Some(Mode::Shared));
    drop(a);
    assert!(m.try_acquire("idx").await.unwrap_err().is_would_block());
    b.release().await.unwrap();
    drop(m.try_acquire("idx").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_exclude_each_other() {
    let (_d, m) = manager();
    let inside = Arc::new(AtomicUsize::new(0));
    let count = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (m, inside, count) = (m.clone(), inside.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let g = m.acquire("counter", T).await.unwrap();
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "overlap");
                tokio::task::yield_now().await;
                count.fetch_add(1, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
                drop(g);
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(count.load(Ordering::SeqCst), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_overlap_writers_exclude() {
    let (_d, m) = manager();
    let readers = Arc::new(AtomicUsize::new(0));
    let writers = Arc::new(AtomicUsize::new(0));
    let max_readers = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (m, readers, writers, max_readers) = (
            m.clone(),
            readers.clone(),
            writers.clone(),
            max_readers.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..30 {
                if i % 4 == 0 {
                    let _g = m.acquire("rw", T).await.unwrap();
                    assert_eq!(writers.fetch_add(1, Ordering::SeqCst), 0);
                    assert_eq!(readers.load(Ordering::SeqCst), 0);
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    writers.fetch_sub(1, Ordering::SeqCst);
                } else {
                    let _g = m.acquire_shared("rw", T).await.unwrap();
                    let now = readers.fetch_add(1, Ordering::SeqCst) + 1;
                    max_readers.fetch_max(now, Ordering::SeqCst);
                    assert_eq!(writers.load(Ordering::SeqCst), 0);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    readers.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert!(
        max_readers.load(Ordering::SeqCst) > 1,
        "readers never overlapped"
    );
}

#[tokio::test]
async fn timeout_is_honoured_against_a_local_holder() {
    let (_d, m) = manager();
    let _g = m.acquire("slow", T).await.unwrap();
    let start = Instant::now();
    let err = m
        .acquire("slow", Duration::from_millis(500))
        .await
        .unwrap_err();
    let took = start.elapsed();
    println!("local timeout of 0.5 s returned after {took:?}");
    assert!(err.is_timeout(), "{err}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let LockError::Timeout { waited, holder, .. } = err else {
        unreachable!()
    };
    assert!(waited >= Duration::from_millis(500));
    assert_eq!(holder.unwrap().pid, std::process::id());
    // Some(ZERO) tries once and reports a timeout.
    let err = m
        .acquire_with("slow", &AcquireOptions::exclusive().timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(err.is_timeout());
}

#[tokio::test]
async fn empty_name_is_invalid() {
    let (_d, m) = manager();
    assert!(matches!(
        m.acquire("", T).await,
        Err(LockError::InvalidName { .. })
    ));
    assert!(m.try_acquire("").await.unwrap_err().is_invalid_input());
    assert!(m.is_locked("").await.unwrap_err().is_invalid_input());
    assert!(m.owner("").await.unwrap_err().is_invalid_input());
    assert!(m.lock("").unwrap_err().is_invalid_input());
}

#[tokio::test]
async fn guard_outlives_manager() {
    let (d, m) = manager();
    let g = m.acquire("keep", T).await.unwrap();
    drop(m);
    let m2 = FileLockManager::new(d.path().join("locks")).unwrap();
    assert!(m2.is_locked("keep").await.unwrap());
    assert!(m2.try_acquire("keep").await.unwrap_err().is_would_block());
    drop(g);
    assert!(!m2.is_locked("keep").await.unwrap());
}

#[tokio::test]
async fn lock_trait_handle() {
    let (_d, m) = manager();
    let lock: Arc<dyn Lock> = Arc::new(m.lock("h").unwrap());
    assert_eq!(lock.name(), "h");
    let g: LockGuard = lock.lock(&AcquireOptions::exclusive()).await.unwrap();
    assert_eq!(g.resource(), "h");
    assert_eq!(g.mode(), Mode::Exclusive);
    assert!(lock.is_locked().await.unwrap());
    assert!(
        lock.try_lock(Mode::Shared)
            .await
            .unwrap_err()
            .is_would_block()
    );
    g.release().await.unwrap();
    assert!(!lock.is_locked().await.unwrap());
    let g = lock.try_lock(Mode::Shared).await.unwrap();
    assert_eq!(g.mode(), Mode::Shared);
}

#[tokio::test]
async fn two_managers_on_one_dir_contend() {
    let (d, m) = manager();
    let m2 = FileLockManager::new(d.path().join("locks")).unwrap();
    let g = m.acquire("x", T).await.unwrap();
    assert!(m2.try_acquire("x").await.unwrap_err().is_would_block());
    let waiter = tokio::spawn(async move { m2.acquire("x", T).await.map(|g| g.owner().pid) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(g);
    let pid = tokio::time::timeout(T, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pid, std::process::id());
}
