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
//!
//! # Interleaved contended runs
//!
//! Criterion measures one lock after the other, so a change in the
//! machine's load between two groups moves their ratio. The interleaved
//! mode runs one contended RW-lock run of lockyard, tokio and async-lock in
//! turn (the order rotating each round), so that a load shift hits all three
//! alike, and reports the median and inter-quartile range of the per-round
//! ratios:
//!
//! ```text
//! cargo bench --bench local -- interleaved            # every row, 200 rounds
//! cargo bench --bench local -- interleaved 200 drop:8:2 await:2:2
//! ```
//!
//! On a machine busy with other work, the kernel preempts the workers, and
//! a contended row measures another regime: one worker runs at a time and
//! seldom meets the other on the lock (lockyard / tokio read 0.78–0.95 on
//! the 2-worker rows at a load of 4, where an idle machine gave 0.95–1.10).
//! Run as a real-time process, each worker keeps its core whatever else
//! runs, and the 2-worker rows gave the idle machine's ratios (within
//! ±0.03) at a load of 4 to 13; rows with more workers than cores do not
//! (real-time threads are not time-sliced):
//!
//! ```text
//! chrt -f 10 target/release/deps/local-* interleaved 200 drop:8:2   # as root
//! ```
//!
//! A row is `WORKLOAD:N:WORKERS`: one write in `N`, on a runtime with
//! `WORKERS` worker threads. Workload `drop` is 64 tasks whose readers drop
//! the guard before a little work; `await` is 48 tasks whose readers hold
//! the guard across a `tokio::task::yield_now().await`, then drop it and do
//! the same work. A row `uncontended:OP` times one task doing `OP` (`sem`,
//! `try`, `read` or `write`) 10,000 times on a current-thread runtime.
//!
//! # Fairness
//!
//! `fairness [ROW...]` plays three hand-offs step by step on one thread
//! for each lock (does a later arrival get the lock first?), then counts
//! the acquisitions of each contended row that were not ready at their
//! first poll.
//!
//! # Instruction counts
//!
//! `instructions LOCK ROW RUNS` does `RUNS` runs of one lock (`lockyard`,
//! `tokio` or `async_lock`) and nothing else, for callgrind, whose
//! instruction counts repeat under any load; the difference between `RUNS`
//! and `0`, divided by the acquisitions, is the cost of one
//! acquire-and-release pair under contention (with the task's share of the
//! work and of the scheduler). callgrind runs one thread at a time, so in
//! the `drop` rows an acquisition seldom waits there; in the `await` rows
//! nearly every one does:
//!
//! ```text
//! cargo bench --bench local --no-run   # prints the binary's path
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/deps/local-* instructions lockyard drop:8:2 20
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};

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

fn main() {
    // `cargo bench` appends `--bench`; the modes below take positional
    // arguments only.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("interleaved") => interleaved::main(&args[1..]),
        Some("instructions") => interleaved::instructions(&args[1..]),
        Some("fairness") => interleaved::fairness(&args[1..]),
        _ => {
            benches();
            Criterion::default().configure_from_args().final_summary();
        }
    }
}

/// The contended RW-lock runs, interleaved lock by lock (module docs).
mod interleaved {
    use std::future::Future;
    use std::hint::black_box;
    use std::pin::{Pin, pin};
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::Relaxed;
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, Instant};

    use super::{multi_thread, work};

    /// The rows of the bars: the mixes with readers dropping the guard before
    /// their work (two, four and eight workers), with readers holding it
    /// across an `.await`, and the uncontended paths.
    const DEFAULT_ROWS: &[&str] = &[
        "drop:8:2",
        "drop:2:2",
        "drop:32:2",
        "drop:8:8",
        "drop:8:4",
        "await:8:2",
        "await:2:2",
        "await:32:2",
        "uncontended:sem",
        "uncontended:try",
        "uncontended:read",
        "uncontended:write",
    ];
    const DEFAULT_ROUNDS: usize = 200;
    /// Acquisitions per task in one run.
    const ROUNDS_PER_TASK: usize = 100;

    /// What the tasks of a run do.
    #[derive(Clone, Copy, Debug)]
    enum Workload {
        /// 64 tasks; a reader drops the guard, then works.
        Drop,
        /// 48 tasks; a reader holds the guard across a yield, then drops it
        /// and works.
        Await,
    }

    impl Workload {
        fn tasks(self) -> usize {
            match self {
                Workload::Drop => 64,
                Workload::Await => 48,
            }
        }
    }

    /// One row: workload, one write in `n`, worker threads.
    #[derive(Clone, Copy, Debug)]
    struct Row {
        workload: Workload,
        n: u32,
        workers: usize,
    }

    impl Row {
        fn parse(s: &str) -> Row {
            let parts: Vec<&str> = s.split(':').collect();
            let bad =
                || -> ! { panic!("row {s:?} is not WORKLOAD:N:WORKERS (workload drop or await)") };
            if parts.len() != 3 {
                bad();
            }
            let workload = match parts[0] {
                "drop" => Workload::Drop,
                "await" => Workload::Await,
                _ => bad(),
            };
            let n = parts[1].parse().unwrap_or_else(|_| bad());
            let workers = parts[2].parse().unwrap_or_else(|_| bad());
            Row {
                workload,
                n,
                workers,
            }
        }
    }

    impl std::fmt::Display for Row {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let w = match self.workload {
                Workload::Drop => "drop",
                Workload::Await => "await",
            };
            write!(f, "{w}:{}:{}", self.n, self.workers)
        }
    }

    /// The three RW locks, behind one face.
    trait Rw: Send + Sync + 'static {
        fn new() -> Self;
        /// Reads; with `hold`, across a yield. With `count`, the acquisition
        /// is counted in [`WAITS`].
        fn read(&self, hold: bool, count: bool) -> impl Future<Output = ()> + Send + '_;
        fn write(&self, count: bool) -> impl Future<Output = ()> + Send + '_;
    }

    macro_rules! rw {
        ($ty:ty) => {
            impl Rw for $ty {
                fn new() -> Self {
                    <$ty>::new(0)
                }

                async fn read(&self, hold: bool, count: bool) {
                    let guard = if count {
                        first_poll(<$ty>::read(self)).await
                    } else {
                        <$ty>::read(self).await
                    };
                    black_box(*guard);
                    if hold {
                        tokio::task::yield_now().await;
                    }
                }

                async fn write(&self, count: bool) {
                    let mut guard = if count {
                        first_poll(<$ty>::write(self)).await
                    } else {
                        <$ty>::write(self).await
                    };
                    *guard += 1;
                }
            }
        };
    }
    rw!(lockyard::local::RwLock<u64>);
    rw!(tokio::sync::RwLock<u64>);
    rw!(async_lock::RwLock<u64>);

    /// One run: every task acquires `ROUNDS_PER_TASK` times.
    fn run<L: Rw>(rt: &tokio::runtime::Runtime, lock: &Arc<L>, row: Row) -> Duration {
        run_counting::<L, false>(rt, lock, row)
    }

    /// [`run`], also counting in [`WAITS`] the acquisitions that were not
    /// ready at their first poll if `COUNT`.
    fn run_counting<L: Rw, const COUNT: bool>(
        rt: &tokio::runtime::Runtime,
        lock: &Arc<L>,
        row: Row,
    ) -> Duration {
        let hold = matches!(row.workload, Workload::Await);
        rt.block_on(async {
            let start = Instant::now();
            let tasks: Vec<_> = (0..row.workload.tasks())
                .map(|task| {
                    let lock = Arc::clone(lock);
                    let mut mix = Mix::new(task);
                    tokio::spawn(async move {
                        for _ in 0..ROUNDS_PER_TASK {
                            if mix.write(row.n) {
                                lock.write(COUNT).await;
                            } else {
                                lock.read(hold, COUNT).await;
                                work();
                            }
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

    /// Which acquisitions of a task write: one in `n`, pseudo-randomly, the
    /// same sequence in every run and for every lock (a xorshift seeded by
    /// the task's index), so that the locks compared do the same work and
    /// instruction counts repeat.
    struct Mix(u64);

    impl Mix {
        fn new(task: usize) -> Mix {
            Mix((task as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        }

        fn write(&mut self, n: u32) -> bool {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0.is_multiple_of(u64::from(n))
        }
    }

    /// Acquisitions seen by [`FirstPoll`], and those that had to wait.
    static WAITS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

    /// Counts its future in `WAITS`, as waiting if its first poll is
    /// pending.
    struct FirstPoll<F> {
        future: Pin<Box<F>>,
        polled: bool,
    }

    fn first_poll<F: Future>(future: F) -> FirstPoll<F> {
        FirstPoll {
            future: Box::pin(future),
            polled: false,
        }
    }

    impl<F: Future> Future for FirstPoll<F> {
        type Output = F::Output;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            let first = !std::mem::replace(&mut self.polled, true);
            let poll = self.future.as_mut().poll(cx);
            if first {
                WAITS[0].fetch_add(1, Relaxed);
                if poll.is_pending() {
                    WAITS[1].fetch_add(1, Relaxed);
                }
            }
            poll
        }
    }

    /// Sorts `v` and returns its quartiles.
    fn quartiles(v: &mut [f64]) -> [f64; 3] {
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        [at(0.25), at(0.5), at(0.75)]
    }

    fn load_average() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "?".into())
    }

    pub(super) fn main(args: &[String]) {
        let mut args = args.iter().peekable();
        let rounds = match args.peek().and_then(|a| a.parse().ok()) {
            Some(r) => {
                args.next();
                r
            }
            None => DEFAULT_ROUNDS,
        };
        let mut rows: Vec<&str> = args.map(String::as_str).collect();
        if rows.is_empty() {
            rows = DEFAULT_ROWS.to_vec();
        }
        println!(
            "{rounds} interleaved rounds per row; ratios: median [inter-quartile range] of per-round ratios"
        );
        println!(
            "| row | lockyard / tokio | lockyard / async-lock | lockyard µs | tokio µs | async-lock µs | load before → after |"
        );
        println!("|---|---|---|---|---|---|---|");
        for row in rows {
            match row.strip_prefix("uncontended:") {
                Some(op) => uncontended(op, rounds),
                None => contended(Row::parse(row), rounds),
            }
        }
    }

    fn contended(row: Row, rounds: usize) {
        let rt = multi_thread(row.workers);
        let ours = Arc::new(<lockyard::local::RwLock<u64> as Rw>::new());
        let theirs = Arc::new(<tokio::sync::RwLock<u64> as Rw>::new());
        let al = Arc::new(<async_lock::RwLock<u64> as Rw>::new());
        interleave(&row.to_string(), rounds, |which| match which {
            0 => run(&rt, &ours, row),
            1 => run(&rt, &theirs, row),
            _ => run(&rt, &al, row),
        });
    }

    /// Operations per uncontended run.
    const UNCONTENDED_OPS: usize = 10_000;

    /// `uncontended:OP`: one task on a current-thread runtime does `OP`
    /// (`sem`: acquire and release one permit of a semaphore of one;
    /// `try`: the same with `try_acquire`; `read`, `write`: of an RW lock)
    /// `UNCONTENDED_OPS` times.
    fn uncontended(op: &str, rounds: usize) {
        let rt = super::current_thread();
        let (s0, s1, s2) = (
            lockyard::local::Semaphore::new(1),
            tokio::sync::Semaphore::new(1),
            async_lock::Semaphore::new(1),
        );
        let (l0, l1, l2) = (
            lockyard::local::RwLock::new(0u64),
            tokio::sync::RwLock::new(0u64),
            async_lock::RwLock::new(0u64),
        );
        macro_rules! time {
            ($body:expr) => {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..UNCONTENDED_OPS {
                        $body;
                    }
                    start.elapsed()
                })
            };
        }
        interleave(&format!("uncontended:{op}"), rounds, |which| {
            match (op, which) {
                ("sem", 0) => time!(drop(black_box(s0.acquire().await))),
                ("sem", 1) => time!(drop(black_box(s1.acquire().await))),
                ("sem", _) => time!(drop(black_box(s2.acquire().await))),
                ("try", 0) => time!(drop(black_box(s0.try_acquire()))),
                ("try", 1) => time!(drop(black_box(s1.try_acquire()))),
                ("try", _) => time!(drop(black_box(s2.try_acquire()))),
                ("read", 0) => time!(black_box(*l0.read().await)),
                ("read", 1) => time!(black_box(*l1.read().await)),
                ("read", _) => time!(black_box(*l2.read().await)),
                ("write", 0) => time!(*l0.write().await += 1),
                ("write", 1) => time!(*l1.write().await += 1),
                ("write", _) => time!(*l2.write().await += 1),
                _ => panic!("uncontended:{op}: OP is sem, try, read or write"),
            }
        });
    }

    /// Runs `run_one(0)` (lockyard), `run_one(1)` (tokio) and `run_one(2)`
    /// (async-lock) `rounds` times, the order rotating, and prints a row.
    fn interleave(label: &str, rounds: usize, mut run_one: impl FnMut(usize) -> Duration) {
        let load_before = load_average();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let mut times = [0.0; 3];
            for k in 0..3 {
                let which = (round + k) % 3;
                times[which] = us(run_one(which));
            }
            a.push(times[0]);
            b.push(times[1]);
            c.push(times[2]);
        }
        let mut r_tokio: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
        let mut r_al: Vec<f64> = a.iter().zip(&c).map(|(x, y)| x / y).collect();
        let [t1, t2, t3] = quartiles(&mut r_tokio);
        let [a1, a2, a3] = quartiles(&mut r_al);
        println!(
            "| {label} | {t2:.2} [{t1:.2}–{t3:.2}] | {a2:.2} [{a1:.2}–{a3:.2}] | {:.0} | {:.0} | {:.0} | {load_before} → {} |",
            quartiles(&mut a)[1],
            quartiles(&mut b)[1],
            quartiles(&mut c)[1],
            load_average(),
        );
    }

    /// Polls `future` once, with a waker that does nothing.
    fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    /// Who overtakes whom: three hand-offs played step by step on one
    /// thread, polling with a no-op waker, for each lock; `true` where the
    /// later arrival gets the lock first.
    macro_rules! overtakes {
        ($ty:ty, $ok:ident) => {{
            let lock = <$ty>::new(0u64);
            // A newcomer's try_write, right after the holder released to a
            // writer that was queued.
            let newcomer = {
                let Poll::Ready(held) = poll_once(pin!(lock.write())) else {
                    unreachable!()
                };
                let mut queued = pin!(lock.write());
                assert!(poll_once(queued.as_mut()).is_pending());
                drop(held);
                let taken = lock.try_write().$ok();
                taken
            };
            // A reader queued after a writer, both waiting for a writer;
            // the reader happens to run first after the release.
            let reader = {
                let Poll::Ready(held) = poll_once(pin!(lock.write())) else {
                    unreachable!()
                };
                let mut writer = pin!(lock.write());
                assert!(poll_once(writer.as_mut()).is_pending());
                let mut reader = pin!(lock.read());
                assert!(poll_once(reader.as_mut()).is_pending());
                drop(held);
                poll_once(reader.as_mut()).is_ready()
            };
            // The same with a second writer in place of the reader.
            let writer = {
                let Poll::Ready(held) = poll_once(pin!(lock.write())) else {
                    unreachable!()
                };
                let mut first = pin!(lock.write());
                assert!(poll_once(first.as_mut()).is_pending());
                let mut second = pin!(lock.write());
                assert!(poll_once(second.as_mut()).is_pending());
                drop(held);
                poll_once(second.as_mut()).is_ready()
            };
            [newcomer, reader, writer]
        }};
    }

    /// `fairness [ROW...]`: who overtakes whom, and how many acquisitions
    /// wait, per lock.
    pub(super) fn fairness(args: &[String]) {
        let rows: Vec<Row> = if args.is_empty() {
            ["drop:8:2", "drop:2:2", "await:8:2"]
                .iter()
                .map(|r| Row::parse(r))
                .collect()
        } else {
            args.iter().map(|a| Row::parse(a)).collect()
        };
        let locks: [(&str, [bool; 3]); 3] = [
            ("lockyard", overtakes!(lockyard::local::RwLock<u64>, is_ok)),
            ("tokio", overtakes!(tokio::sync::RwLock<u64>, is_ok)),
            ("async-lock", overtakes!(async_lock::RwLock<u64>, is_some)),
        ];
        println!("| a later arrival gets the lock first | lockyard | tokio | async-lock |");
        println!("|---|---|---|---|");
        let cases = [
            "a newcomer's `try_write` right after a release to a queued writer",
            "a reader queued behind a waiting writer, run first after the release",
            "a writer queued behind a waiting writer, run first after the release",
        ];
        for (i, case) in cases.iter().enumerate() {
            let cell = |overtook: bool| if overtook { "overtakes" } else { "waits" };
            println!(
                "| {case} | {} | {} | {} |",
                cell(locks[0].1[i]),
                cell(locks[1].1[i]),
                cell(locks[2].1[i])
            );
        }
        println!();
        println!(
            "| row | acquisitions that waited (mean µs per run): lockyard | tokio | async-lock | load |"
        );
        println!("|---|---|---|---|---|");
        // Interleaved as the timed rows are, so that all three locks see
        // the same load: whether the workers really run at once decides how
        // often anybody waits.
        const RUNS: usize = 60;
        for row in rows {
            let rt = multi_thread(row.workers);
            let l0 = Arc::new(<lockyard::local::RwLock<u64> as Rw>::new());
            let l1 = Arc::new(<tokio::sync::RwLock<u64> as Rw>::new());
            let l2 = Arc::new(<async_lock::RwLock<u64> as Rw>::new());
            // Per lock: acquisitions, those that waited, µs.
            let mut totals = [(0usize, 0usize, 0.0f64); 3];
            for round in 0..RUNS {
                for k in 0..3 {
                    let which = (round + k) % 3;
                    WAITS[0].store(0, Relaxed);
                    WAITS[1].store(0, Relaxed);
                    let took = match which {
                        0 => run_counting::<_, true>(&rt, &l0, row),
                        1 => run_counting::<_, true>(&rt, &l1, row),
                        _ => run_counting::<_, true>(&rt, &l2, row),
                    };
                    let t = &mut totals[which];
                    t.0 += WAITS[0].load(Relaxed);
                    t.1 += WAITS[1].load(Relaxed);
                    t.2 += took.as_secs_f64() * 1e6;
                }
            }
            let cell = |(seen, waited, us): (usize, usize, f64)| {
                format!(
                    "{:.1} % ({:.0} µs)",
                    waited as f64 * 100.0 / seen as f64,
                    us / RUNS as f64
                )
            };
            println!(
                "| {row} | {} | {} | {} | {} |",
                cell(totals[0]),
                cell(totals[1]),
                cell(totals[2]),
                load_average()
            );
        }
    }

    /// `instructions LOCK ROW RUNS`: runs of one lock only (module docs).
    pub(super) fn instructions(args: &[String]) {
        let usage = "instructions lockyard|tokio|async_lock WORKLOAD:N:WORKERS RUNS";
        let [lock, row, runs] = args else {
            panic!("usage: {usage}");
        };
        let row = Row::parse(row);
        let runs: usize = runs.parse().expect(usage);
        let rt = multi_thread(row.workers);
        fn go<L: Rw>(rt: &tokio::runtime::Runtime, row: Row, runs: usize) {
            let lock = Arc::new(L::new());
            for _ in 0..runs {
                run(rt, &lock, row);
            }
        }
        match lock.as_str() {
            "lockyard" => go::<lockyard::local::RwLock<u64>>(&rt, row, runs),
            "tokio" => go::<tokio::sync::RwLock<u64>>(&rt, row, runs),
            "async_lock" => go::<async_lock::RwLock<u64>>(&rt, row, runs),
            _ => panic!("usage: {usage}"),
        }
        println!(
            "{} acquisitions",
            runs * row.workload.tasks() * ROUNDS_PER_TASK
        );
    }
}
