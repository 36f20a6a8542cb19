//! Cancelling acquisitions at random moments leaves nothing held, nothing
//! queued, and no thread blocked in the kernel.

mod file_support;

use std::time::Duration;

use file_support::{child_main, no_kernel_waiters, spawn};
use lockyard::{AcquireOptions, FileLockManager, Mode};
use rand::Rng;

const T: Duration = Duration::from_secs(60);

#[test]
fn child_process_entry() {
    child_main();
}

/// Threads of this process, from /proc (Linux), for a cross-check of the
/// library's own counter.
fn os_threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Fires `n` acquisitions of `name`, each cancelled after a random delay
/// (by a timeout, or by aborting its task), some of them succeeding and
/// holding briefly. Checks that at most one thread per name waits in the
/// kernel throughout.
async fn storm(m: &FileLockManager, names: &[&str], n: usize) -> usize {
    let mut tasks = Vec::with_capacity(n);
    let mut max_waiters = 0;
    let mut acquired = 0;
    for i in 0..n {
        let (delay, mode, abort, name) = {
            let mut rng = rand::rng();
            (
                Duration::from_micros(rng.random_range(0..3000)),
                if rng.random_bool(0.3) {
                    Mode::Shared
                } else {
                    Mode::Exclusive
                },
                rng.random_bool(0.5),
                names[rng.random_range(0..names.len())].to_owned(),
            )
        };
        let mc = m.clone();
        let task = tokio::spawn(async move {
            let opts = AcquireOptions::new().mode(mode);
            let acquire = mc.acquire_with(&name, &opts);
            match tokio::time::timeout(delay, acquire).await {
                Ok(Ok(g)) => {
                    tokio::time::sleep(Duration::from_micros(100)).await;
                    drop(g);
                    true
                }
                Ok(Err(e)) => panic!("acquire failed: {e}"),
                Err(_) => false,
            }
        });
        if abort {
            let d = delay / 2;
            tokio::spawn({
                let h = task.abort_handle();
                async move {
                    tokio::time::sleep(d).await;
                    h.abort();
                }
            });
        }
        tasks.push(task);
        if i % 50 == 0 {
            max_waiters = max_waiters.max(m.kernel_waiter_threads());
            tokio::task::yield_now().await;
        }
    }
    for t in tasks {
        match tokio::time::timeout(T, t)
            .await
            .expect("a cancelled acquire hung")
        {
            Ok(true) => acquired += 1,
            Ok(false) => {}
            Err(e) if e.is_cancelled() => {}
            Err(e) => panic!("{e}"),
        }
        max_waiters = max_waiters.max(m.kernel_waiter_threads());
    }
    assert!(
        max_waiters <= names.len(),
        "{max_waiters} kernel waiter threads for {} names",
        names.len()
    );
    acquired
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_while_another_process_holds() {
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    let m = FileLockManager::new(&locks).unwrap();
    let mut holder = spawn(
        "hold",
        &[
            ("DIR", locks.display().to_string()),
            ("NAME", "held".to_owned()),
            ("MODE", "exclusive".to_owned()),
        ],
    );
    holder.wait_line("HELD", T);
    let threads_before = os_threads();
    let acquired = storm(&m, &["held"], 2000).await;
    assert_eq!(acquired, 0, "got a lock another process holds");
    // Everyone left: the kernel waiter is interrupted although the lock is
    // still held elsewhere.
    no_kernel_waiters(&m).await;
    if let (Some(before), Some(after)) = (threads_before, os_threads()) {
        // Only printed: other tests of this binary run threads concurrently.
        // The library's own count (checked above) is the exact measure.
        println!("OS threads: {before} before, {after} after the storm");
    }
    holder.release();
    holder.wait_line("RELEASED", T);
    let g = m.try_acquire("held").await.expect("a lock was left held");
    drop(g);
    holder.wait_success(T);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_during_hand_offs() {
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    let m = FileLockManager::new(&locks).unwrap();
    // Another process takes and releases both names in a loop, so that
    // cancellations land on every stage: local queue, kernel wait, and the
    // instant the kernel grants the lock to a thread whose waiters just left.
    let mut flappers: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| {
            let mut c = spawn(
                "flap",
                &[
                    ("DIR", locks.display().to_string()),
                    ("NAME", (*n).to_owned()),
                ],
            );
            c.wait_line("HELD", T);
            c
        })
        .collect();
    let mut acquired = 0;
    for _ in 0..3 {
        acquired += storm(&m, &["a", "b"], 1000).await;
    }
    println!("{acquired} of 3000 acquisitions succeeded before being cancelled");
    for f in &mut flappers {
        f.release();
        let line = f.wait_line("RELEASED", T);
        println!("other process: {line}");
    }
    no_kernel_waiters(&m).await;
    for name in ["a", "b"] {
        assert!(!m.is_locked(name).await.unwrap(), "{name} left held");
        drop(m.try_acquire(name).await.expect("a lock was left held"));
    }
    for f in flappers {
        f.wait_success(T);
    }
}
