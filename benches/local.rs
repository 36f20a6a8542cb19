//! In-process primitives, side by side with their floors in the same run:
//! `tokio::sync::{Semaphore, RwLock}`, `async_lock::{Semaphore, RwLock}`,
//! and `std::sync::Mutex` for scale.
//!
//! ```text
//! cargo bench --bench local -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! The contended groups are wall-clock times of a whole run of tasks on a
//! multi-thread runtime, so they move with the load of the machine: compare
//! the ratio of lockyard to tokio within one run, and repeat the run.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

fn uncontended(c: &mut Criterion) {
    let rt = current_thread();
    let mut g = c.benchmark_group("semaphore_uncontended_acquire_release");

    let ours = lockyard::local::Semaphore::new(1);
    g.bench_function("lockyard", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(black_box(ours.acquire().await.unwrap())) })
    });
    let tokio_sem = tokio::sync::Semaphore::new(1);
    g.bench_function("tokio", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(black_box(tokio_sem.acquire().await.unwrap())) })
    });
    let async_lock_sem = async_lock::Semaphore::new(1);
    g.bench_function("async_lock", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(black_box(async_lock_sem.acquire().await)) })
    });
    let mutex = std::sync::Mutex::new(0u64);
    g.bench_function("std_mutex", |b| {
        b.iter(|| *black_box(&mutex).lock().unwrap() += 1)
    });
    g.bench_function("lockyard_try_acquire", |b| {
        b.iter(|| drop(black_box(ours.try_acquire().unwrap())))
    });
    g.bench_function("tokio_try_acquire", |b| {
        b.iter(|| drop(black_box(tokio_sem.try_acquire().unwrap())))
    });
    g.finish();
}

fn rwlock_uncontended(c: &mut Criterion) {
    let rt = current_thread();
    let mut g = c.benchmark_group("rwlock_uncontended");

    let ours = lockyard::local::RwLock::new(1u64);
    let theirs = tokio::sync::RwLock::new(1u64);
    g.bench_function("read/lockyard", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(*ours.read().await) })
    });
    g.bench_function("read/tokio", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(*theirs.read().await) })
    });
    g.bench_function("write/lockyard", |b| {
        b.to_async(&rt).iter(|| async { *ours.write().await += 1 })
    });
    g.bench_function("write/tokio", |b| {
        b.to_async(&rt)
            .iter(|| async { *theirs.write().await += 1 })
    });
    let async_lock_rw = async_lock::RwLock::new(1u64);
    g.bench_function("read/async_lock", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(*async_lock_rw.read().await) })
    });
    g.bench_function("write/async_lock", |b| {
        b.to_async(&rt)
            .iter(|| async { *async_lock_rw.write().await += 1 })
    });
    g.finish();
}

/// Tasks and rounds per contended measurement.
const TASKS: usize = 64;
const ROUNDS: usize = 100;
const PERMITS: usize = 2;

/// Runs `TASKS` tasks on `rt`, each acquiring and releasing `ROUNDS` times
/// through `acquire_release`; returns the wall time.
fn contended_run<S, F, Fut>(rt: &tokio::runtime::Runtime, sem: &Arc<S>, f: F) -> Duration
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let sem = Arc::clone(sem);
                tokio::spawn(async move {
                    for _ in 0..ROUNDS {
                        f(Arc::clone(&sem)).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        start.elapsed()
    })
}

/// A little work inside the critical section.
fn work() {
    let mut x = 0u64;
    for i in 0..50 {
        x = black_box(x.wrapping_add(i));
    }
    black_box(x);
}

/// A multi-thread runtime with `workers` workers.
fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .build()
        .expect("runtime")
}

/// `TASKS` tasks on `workers` workers share `PERMITS` permits.
fn semaphore_contended(c: &mut Criterion, workers: usize) {
    let rt = multi_thread(workers);
    let mut g = c.benchmark_group(format!(
        "semaphore_contended_{TASKS}_tasks_{PERMITS}_permits_{workers}_workers"
    ));
    g.sample_size(30);
    g.throughput(criterion::Throughput::Elements((TASKS * ROUNDS) as u64));

    let ours = Arc::new(lockyard::local::Semaphore::new(PERMITS));
    g.bench_function("lockyard", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    contended_run(&rt, &ours, |s| async move {
                        let _p = s.acquire().await.unwrap();
                        work();
                    })
                })
                .sum()
        })
    });
    let tokio_sem = Arc::new(tokio::sync::Semaphore::new(PERMITS));
    g.bench_function("tokio", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    contended_run(&rt, &tokio_sem, |s| async move {
                        let _p = s.acquire().await.unwrap();
                        work();
                    })
                })
                .sum()
        })
    });
    let async_lock_sem = Arc::new(async_lock::Semaphore::new(PERMITS));
    g.bench_function("async_lock", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    contended_run(&rt, &async_lock_sem, |s| async move {
                        let _p = s.acquire().await;
                        work();
                    })
                })
                .sum()
        })
    });
    g.finish();
}

/// `TASKS` tasks on `workers` workers read (with a little work inside) or,
/// one time in `one_write_in`, write.
fn rwlock_contended(c: &mut Criterion, one_write_in: u32, workers: usize) {
    let rt = multi_thread(workers);
    let mut g = c.benchmark_group(format!(
        "rwlock_contended_{TASKS}_tasks_1_in_{one_write_in}_writes_{workers}_workers"
    ));
    g.sample_size(30);
    g.throughput(criterion::Throughput::Elements((TASKS * ROUNDS) as u64));
    let write = move || rand::random_ratio(1, one_write_in);

    let ours = Arc::new(lockyard::local::RwLock::new(0u64));
    g.bench_function("lockyard", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    contended_run(&rt, &ours, move |l| async move {
                        if write() {
                            *l.write().await += 1;
                        } else {
                            black_box(*l.read().await);
                            work();
                        }
                    })
                })
                .sum()
        })
    });
    let theirs = Arc::new(tokio::sync::RwLock::new(0u64));
    g.bench_function("tokio", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    contended_run(&rt, &theirs, move |l| async move {
                        if write() {
                            *l.write().await += 1;
                        } else {
                            black_box(*l.read().await);
                            work();
                        }
                    })
                })
                .sum()
        })
    });
    let async_lock_rw = Arc::new(async_lock::RwLock::new(0u64));
    g.bench_function("async_lock", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    contended_run(&rt, &async_lock_rw, move |l| async move {
                        if write() {
                            *l.write().await += 1;
                        } else {
                            black_box(*l.read().await);
                            work();
                        }
                    })
                })
                .sum()
        })
    });
    g.finish();
}

/// The contended mixes: two workers (as many as the cores of the machine
/// the figures in the issue came from) and eight (more threads than cores);
/// one write in 8, read-mostly (1 in 32) and write-heavy (1 in 2).
fn contended(c: &mut Criterion) {
    semaphore_contended(c, 2);
    semaphore_contended(c, 8);
    rwlock_contended(c, 8, 2);
    rwlock_contended(c, 32, 2);
    rwlock_contended(c, 2, 2);
    rwlock_contended(c, 8, 8);
}

criterion_group!(benches, uncontended, rwlock_uncontended, contended);
criterion_main!(benches);
