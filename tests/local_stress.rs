//! Stress outside loom: thousands of tasks on a multi-thread runtime acquire
//! with random weights, random timeouts, and random drops (tasks aborted,
//! futures raced against short sleeps). The number of permits held at once
//! never exceeds the semaphore's, writers never overlap anyone, and every
//! permit comes back. The RW lock's timeouts, mapped guards and owned
//! downgrades go through the same mill.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lockyard::local::{
    OwnedRwLockMappedWriteGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock,
    RwLockReadGuard, RwLockWriteGuard, Semaphore,
};
use rand::Rng;

const PERMITS: usize = 4;
const TASKS: usize = 10_000;

/// Tracks the permits held right now and the most ever held.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    /// Counts `n` permits in until the returned token drops (also when the
    /// task holding it is aborted).
    fn enter(&self, n: usize) -> Inside<'_> {
        let now = self.now.fetch_add(n, Ordering::SeqCst) + n;
        self.max.fetch_max(now, Ordering::SeqCst);
        Inside(&self.now, n)
    }
}

/// Decrements its counter on drop.
struct Inside<'a>(&'a AtomicUsize, usize);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::SeqCst);
    }
}

async fn hold_briefly(rng_yields: u32) {
    for _ in 0..rng_yields {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn semaphore_random_timeouts_and_drops() {
    let semaphore = Arc::new(Semaphore::new(PERMITS));
    let gauge = Arc::new(Gauge::default());
    let acquired = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let (semaphore, gauge, acquired) = (
            Arc::clone(&semaphore),
            Arc::clone(&gauge),
            Arc::clone(&acquired),
        );
        let (n, kind, wait_us, yields) = {
            let mut rng = rand::rng();
            (
                rng.random_range(1..=3u32),
                rng.random_range(0..4u8),
                rng.random_range(0..300u64),
                rng.random_range(0..4u32),
            )
        };
        tasks.push(tokio::spawn(async move {
            let permit = match kind {
                // Plain wait.
                0 => Some(semaphore.acquire_many(n).await.unwrap()),
                // Timeout (may expire while queued or partly served).
                1 => semaphore
                    .acquire_many_timeout(n, Duration::from_micros(wait_us))
                    .await
                    .ok(),
                // Raced against a sleep: the loser is dropped.
                2 => tokio::select! {
                    p = semaphore.acquire_many(n) => Some(p.unwrap()),
                    () = tokio::time::sleep(Duration::from_micros(wait_us)) => None,
                },
                // Owned, then moved around.
                _ => {
                    let owned = Arc::clone(&semaphore).acquire_many_owned(n).await.unwrap();
                    let inside = gauge.enter(n as usize);
                    acquired.fetch_add(1, Ordering::Relaxed);
                    hold_briefly(yields).await;
                    drop(inside);
                    drop(owned);
                    return;
                }
            };
            if let Some(permit) = permit {
                assert_eq!(permit.num_permits(), n as usize);
                let inside = gauge.enter(n as usize);
                acquired.fetch_add(1, Ordering::Relaxed);
                hold_briefly(yields).await;
                drop(inside);
                drop(permit);
            }
        }));
        // Abort some tasks at whatever point they have reached.
        if i % 7 == 3 {
            let victim = tasks.swap_remove(tasks.len() / 2);
            victim.abort();
            let _ = victim.await;
        }
    }
    let all = async {
        for t in tasks {
            // Aborted tasks end with a JoinError; any other failure is a bug.
            if let Err(e) = t.await {
                assert!(e.is_cancelled(), "task failed: {e}");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("stress test hung");

    let max = gauge.max.load(Ordering::SeqCst);
    eprintln!(
        "acquired {} of {TASKS}, at most {max} permits held at once",
        acquired.load(Ordering::Relaxed)
    );
    assert!(max <= PERMITS, "{max} permits held at once of {PERMITS}");
    assert!(max > 0);
    assert_eq!(gauge.now.load(Ordering::SeqCst), 0);
    assert!(acquired.load(Ordering::Relaxed) > TASKS / 10);
    assert_eq!(semaphore.available_permits(), PERMITS, "a permit was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rwlock_random_timeouts_and_drops() {
    let lock = Arc::new(RwLock::new(0u64));
    let readers = Arc::new(AtomicUsize::new(0));
    let writers = Arc::new(AtomicUsize::new(0));
    let wrote = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let (lock, readers, writers, wrote) = (
            Arc::clone(&lock),
            Arc::clone(&readers),
            Arc::clone(&writers),
            Arc::clone(&wrote),
        );
        let (write, race, wait_us, yields) = {
            let mut rng = rand::rng();
            (
                rng.random_bool(0.2),
                rng.random_bool(0.5),
                rng.random_range(0..300u64),
                rng.random_range(0..3u32),
            )
        };
        tasks.push(tokio::spawn(async move {
            let sleep = tokio::time::sleep(Duration::from_micros(if race {
                wait_us
            } else {
                60_000_000
            }));
            if write {
                let guard = tokio::select! {
                    g = lock.clone().write_owned() => Some(g),
                    () = sleep => None,
                };
                if let Some(mut guard) = guard {
                    assert_eq!(writers.fetch_add(1, Ordering::SeqCst), 0, "two writers");
                    let _inside = Inside(&writers, 1);
                    assert_eq!(readers.load(Ordering::SeqCst), 0, "writer with readers");
                    *guard += 1;
                    wrote.fetch_add(1, Ordering::SeqCst);
                    hold_briefly(yields).await;
                }
            } else {
                let guard = tokio::select! {
                    g = lock.read() => Some(g),
                    () = sleep => None,
                };
                if let Some(guard) = guard {
                    readers.fetch_add(1, Ordering::SeqCst);
                    let _inside = Inside(&readers, 1);
                    assert_eq!(writers.load(Ordering::SeqCst), 0, "reader with a writer");
                    let _ = *guard;
                    hold_briefly(yields).await;
                }
            }
        }));
        if i % 11 == 5 {
            let victim = tasks.swap_remove(tasks.len() / 2);
            victim.abort();
            let _ = victim.await;
        }
    }
    let all = async {
        for t in tasks {
            if let Err(e) = t.await {
                assert!(e.is_cancelled(), "task failed: {e}");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("stress test hung");
    assert!(!lock.is_locked(), "a guard or a share was lost");
    let value = *lock.try_read().unwrap();
    assert_eq!(value as usize, wrote.load(Ordering::SeqCst));
}

#[test]
fn semaphore_threads_and_tasks_together() {
    let semaphore = Arc::new(Semaphore::new(2));
    let gauge = Arc::new(Gauge::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    std::thread::scope(|scope| {
        for _ in 0..3 {
            let (semaphore, gauge) = (&semaphore, &gauge);
            scope.spawn(move || {
                for _ in 0..300 {
                    let p = semaphore.acquire_blocking().unwrap();
                    drop(gauge.enter(1));
                    drop(p);
                }
            });
        }
        rt.block_on(async {
            let tasks: Vec<_> = (0..50)
                .map(|_| {
                    let (semaphore, gauge) = (Arc::clone(&semaphore), Arc::clone(&gauge));
                    tokio::spawn(async move {
                        for _ in 0..20 {
                            let p = semaphore.acquire_timeout(Duration::from_micros(50)).await;
                            if let Ok(p) = p {
                                let inside = gauge.enter(1);
                                tokio::task::yield_now().await;
                                drop(inside);
                                drop(p);
                            }
                        }
                    })
                })
                .collect();
            tokio::time::timeout(Duration::from_secs(60), async {
                for t in tasks {
                    t.await.unwrap();
                }
            })
            .await
            .expect("hung");
        });
    });
    assert!(gauge.max.load(Ordering::SeqCst) <= 2);
    assert_eq!(semaphore.available_permits(), 2);
}

/// Counts a reader in (until the token drops), checking no writer is in.
fn enter_read<'a>(readers: &'a AtomicUsize, writers: &AtomicUsize) -> Inside<'a> {
    readers.fetch_add(1, Ordering::SeqCst);
    let inside = Inside(readers, 1);
    assert_eq!(writers.load(Ordering::SeqCst), 0, "reader with a writer");
    inside
}

/// Every way of holding the RW lock added with issue 12 (timeouts, mapped
/// guards borrowed and owned, owned downgrades), under random timeouts,
/// races against sleeps and aborted tasks: writers never overlap anyone,
/// every write lands once, and nothing stays held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rwlock_timeouts_maps_and_downgrades_with_cancellation() {
    let lock = Arc::new(RwLock::new(0u64));
    let readers = Arc::new(AtomicUsize::new(0));
    let writers = Arc::new(AtomicUsize::new(0));
    let wrote = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let (lock, readers, writers, wrote) = (
            Arc::clone(&lock),
            Arc::clone(&readers),
            Arc::clone(&writers),
            Arc::clone(&wrote),
        );
        let (kind, wait_us, yields) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..6u8),
                rng.random_range(0..300u64),
                rng.random_range(0..3u32),
            )
        };
        let timeout = Duration::from_micros(wait_us);
        // What a writer does while it holds the lock (mapped or not).
        let write = {
            let (readers, writers, wrote) = (
                Arc::clone(&readers),
                Arc::clone(&writers),
                Arc::clone(&wrote),
            );
            move |value: &mut u64| {
                assert_eq!(writers.fetch_add(1, Ordering::SeqCst), 0, "two writers");
                let inside = Inside(&writers, 1);
                assert_eq!(readers.load(Ordering::SeqCst), 0, "writer with readers");
                *value += 1;
                wrote.fetch_add(1, Ordering::SeqCst);
                drop(inside);
            }
        };
        tasks.push(tokio::spawn(async move {
            match kind {
                0 => {
                    if let Ok(guard) = lock.write_timeout(timeout).await {
                        let mut value = RwLockWriteGuard::map(guard, |v| v);
                        write(&mut value);
                        hold_briefly(yields).await;
                    }
                }
                1 => {
                    if let Ok(guard) = lock.read_timeout(timeout).await {
                        let value = RwLockReadGuard::map(guard, |v| v);
                        let _inside = enter_read(&readers, &writers);
                        let _ = *value;
                        hold_briefly(yields).await;
                    }
                }
                2 => {
                    if let Ok(guard) = Arc::clone(&lock).write_owned_timeout(timeout).await {
                        let guard = OwnedRwLockWriteGuard::map(guard, |v| v);
                        let mut value =
                            OwnedRwLockMappedWriteGuard::try_map(guard, |v| Some(&mut *v))
                                .unwrap_or_else(|_| unreachable!());
                        // Moved into another task while held.
                        tokio::spawn(async move {
                            write(&mut value);
                            hold_briefly(yields).await;
                        })
                        .await
                        .unwrap();
                    }
                }
                3 => {
                    if let Ok(guard) = Arc::clone(&lock).read_owned_timeout(timeout).await {
                        let value = OwnedRwLockReadGuard::map(guard, |v| v);
                        let _inside = enter_read(&readers, &writers);
                        let _ = *value;
                        hold_briefly(yields).await;
                    }
                }
                4 => {
                    // Raced against a sleep; a winner writes, then
                    // downgrades and keeps reading.
                    let guard = tokio::select! {
                        g = Arc::clone(&lock).write_owned() => Some(g),
                        () = tokio::time::sleep(timeout) => None,
                    };
                    if let Some(mut guard) = guard {
                        write(&mut guard);
                        let guard = guard.downgrade();
                        let _inside = enter_read(&readers, &writers);
                        let _ = *guard;
                        hold_briefly(yields).await;
                    }
                }
                _ => {
                    // A long timeout that only an abort cuts short.
                    let guard = lock.read_timeout(Duration::from_secs(60)).await.unwrap();
                    let _inside = enter_read(&readers, &writers);
                    let _ = *guard;
                    hold_briefly(yields).await;
                }
            }
        }));
        if i % 9 == 4 {
            let victim = tasks.swap_remove(tasks.len() / 2);
            victim.abort();
            let _ = victim.await;
        }
    }
    let all = async {
        for t in tasks {
            if let Err(e) = t.await {
                assert!(e.is_cancelled(), "task failed: {e}");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("stress test hung");
    assert!(!lock.is_locked(), "a guard or a share was lost");
    assert_eq!(
        *lock.try_read().unwrap() as usize,
        wrote.load(Ordering::SeqCst)
    );
}
