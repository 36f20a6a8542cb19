//! A lock handed over by the waiter thread is free again the moment its
//! guard is dropped: the waiter thread keeps no share of it after the
//! hand-over (it once did, for a moment, so that a `try_acquire` right after
//! `drop(guard)` could find the lock still held, by this very process).

use std::time::{Duration, Instant};

use lockyard::FileLockManager;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_handed_over_guard_frees_the_lock_at_once() {
    let d = tempfile::tempdir().unwrap();
    // Two managers hold separate descriptors, so they contend in the kernel
    // as two processes would.
    let holder = FileLockManager::new(d.path()).unwrap();
    let waiter = FileLockManager::new(d.path()).unwrap();
    for i in 0..300 {
        let h = holder.try_acquire("h").await.unwrap();
        let task = {
            let waiter = waiter.clone();
            tokio::spawn(async move { waiter.acquire("h", T).await })
        };
        // Bounded wait until the waiter thread blocks in the kernel.
        let start = Instant::now();
        while waiter.kernel_waiter_threads() != 1 {
            assert!(start.elapsed() < T, "no kernel waiter");
            tokio::task::yield_now().await;
        }
        drop(h);
        let g = tokio::time::timeout(T, task)
            .await
            .expect("bounded wait")
            .unwrap()
            .unwrap();
        drop(g);
        let again = waiter.try_acquire("h").await;
        assert!(again.is_ok(), "round {i}: still held after drop: {again:?}");
    }
}

/// The waiter thread writes the owner record of a lock it hands over before
/// it wakes the task: `owner()` right after `acquire` returns names the new
/// holder (its guard's owner), never the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_lock_is_recorded_before_acquire_returns() {
    let d = tempfile::tempdir().unwrap();
    let holder = FileLockManager::new(d.path()).unwrap();
    let waiter = FileLockManager::new(d.path()).unwrap();
    for i in 0..100 {
        let h = holder.try_acquire("r").await.unwrap();
        let task = {
            let waiter = waiter.clone();
            tokio::spawn(async move { waiter.acquire("r", T).await })
        };
        let start = Instant::now();
        while waiter.kernel_waiter_threads() != 1 {
            assert!(start.elapsed() < T, "no kernel waiter");
            tokio::task::yield_now().await;
        }
        let before = h.owner().clone();
        drop(h);
        let g = tokio::time::timeout(T, task)
            .await
            .expect("bounded wait")
            .unwrap()
            .unwrap();
        let recorded = waiter.owner("r").await.unwrap().expect("a record");
        assert_ne!(recorded, before, "round {i}: the previous holder's record");
        assert_eq!(&recorded, g.owner(), "round {i}");
    }
}
