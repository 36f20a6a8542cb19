//! Semaphore, RW lock and Redlock benchmarks, side by side with the
//! hand-written floor in one run, against private redis-servers on loopback.
//!
//! The floor: `SET key token NX PX ttl` + an `EVALSHA` compare-and-delete on
//! one multiplexed connection — the least a correct Redis lock can do. The
//! semaphore and RW lock do more per operation (a sorted set, `TIME`, the
//! fencing `INCR`, and the lease registration with the watchdog), so the
//! ratios say what that costs.
//!
//! Run: `cargo bench --bench redis_extras` (add `-- --quick` for a short
//! run). Prints criterion's figures for
//! - `redis_extras_uncontended/{floor,semaphore,rw_read,rw_write,redlock_3}`:
//!   sequential acquire + release (Redlock over three servers);
//! - `redis_extras_64_tasks/{floor,semaphore}`: 64 concurrent tasks, each
//!   taking and releasing a permit of its own semaphore (elements/s);
//! - `redis_extras_handoff/semaphore`: a one-permit semaphore handed from a
//!   holder on one client to a waiter on another;
//!
//! then the ratios against the floor.

use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use lockyard::redis::{RedisLocks, RedisOptions, RedisSemaphore, Redlock, RedlockOptions};
use lockyard_testkit::floor::{Floor, TOKEN, median_ns};
use lockyard_testkit::redis::RedisServer;
use tokio::runtime::Runtime;

const TTL: Duration = Duration::from_secs(30);
const TASKS: usize = 64;
const OPS_PER_TASK: usize = 20;

fn main() {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (floor, locks, other, redlock) = rt.block_on(async {
        let opts = RedisOptions::default().ttl(TTL);
        (
            Floor::connect(&urls[0], TTL).await,
            RedisLocks::connect_with(&urls[0], opts.clone())
                .await
                .unwrap(),
            RedisLocks::connect_with(&urls[0], opts.clone())
                .await
                .unwrap(),
            Redlock::connect_with(&urls, RedlockOptions::new().redis(opts))
                .await
                .unwrap(),
        )
    });
    // Defaults first, so that `--measurement-time` etc. on the command
    // line override them.
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();

    uncontended(&mut c, &rt, &floor, &locks, &redlock);
    throughput(&mut c, &rt, &floor, &locks);
    handoff(&mut c, &rt, &locks, &other);
    c.final_summary();

    println!();
    report_ratios();
    drop(servers);
}

fn uncontended(
    c: &mut Criterion,
    rt: &Runtime,
    floor: &Floor,
    locks: &RedisLocks,
    redlock: &Redlock,
) {
    let mut g = c.benchmark_group("redis_extras_uncontended");
    let floor = floor.clone();
    timed(&mut g, rt, "floor", || {
        let mut f = floor.clone();
        async move { f.acquire_release("bench:floor:seq", TOKEN).await }
    });
    let sem = locks.semaphore("bench-sem", 4).unwrap();
    timed(&mut g, rt, "semaphore", || async {
        sem.acquire(TTL).await.unwrap().release().await.unwrap();
    });
    let rw = locks.rwlock("bench-rw").unwrap();
    timed(&mut g, rt, "rw_read", || async {
        rw.read(TTL).await.unwrap().release().await.unwrap();
    });
    timed(&mut g, rt, "rw_write", || async {
        rw.write(TTL).await.unwrap().release().await.unwrap();
    });
    timed(&mut g, rt, "redlock_3", || async {
        let l = redlock.acquire("bench-redlock", TTL).await.unwrap();
        l.release().await.unwrap();
    });
    g.finish();
}

/// One criterion bench in `g`: `op` run `iters` times in a row, timed.
fn timed<F, Fut>(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, label: &str, op: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    g.bench_function(label, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let op = &op;
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    op().await;
                }
                start.elapsed()
            }
        })
    });
}

fn throughput(c: &mut Criterion, rt: &Runtime, floor: &Floor, locks: &RedisLocks) {
    let mut g = c.benchmark_group("redis_extras_64_tasks");
    g.throughput(Throughput::Elements((TASKS * OPS_PER_TASK) as u64));
    g.bench_function("floor", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let floor = floor.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    floor
                        .tasks_round(TASKS, OPS_PER_TASK, |t| format!("bench:floor:{t}"))
                        .await;
                }
                start.elapsed()
            }
        })
    });
    let sems: Vec<RedisSemaphore> = (0..TASKS)
        .map(|t| locks.semaphore(&format!("bench-sem-{t}"), 1).unwrap())
        .collect();
    g.bench_function("semaphore", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let sems = sems.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let tasks: Vec<_> = sems
                        .iter()
                        .cloned()
                        .map(|sem| {
                            tokio::spawn(async move {
                                for _ in 0..OPS_PER_TASK {
                                    let p = sem.acquire(TTL).await.unwrap();
                                    p.release().await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                }
                start.elapsed()
            }
        })
    });
    g.finish();
}

/// From the holder's `release()` call to the waiter (on another client, as
/// another process) holding the permit.
async fn one_handoff(holder: &RedisSemaphore, waiter: &RedisSemaphore) -> Duration {
    let p = holder.acquire(TTL).await.unwrap();
    let w = waiter.clone();
    let got = tokio::spawn(async move {
        let p = w.acquire(TTL).await.unwrap();
        let at = Instant::now();
        p.release().await.unwrap();
        at
    });
    // Let the waiter find it busy and subscribe.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let released = Instant::now();
    p.release().await.unwrap();
    got.await.unwrap().duration_since(released)
}

fn handoff(c: &mut Criterion, rt: &Runtime, locks: &RedisLocks, other: &RedisLocks) {
    let a = locks.semaphore("bench-handoff", 1).unwrap();
    let b = other.semaphore("bench-handoff", 1).unwrap();
    let mut g = c.benchmark_group("redis_extras_handoff");
    g.bench_function("semaphore", |bench| {
        bench.to_async(rt).iter_custom(|iters| {
            let (a, b) = (a.clone(), b.clone());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += one_handoff(&a, &b).await;
                }
                total
            }
        })
    });
    g.finish();
}

fn report_ratios() {
    let group = "redis_extras_uncontended";
    match median_ns(group, "floor") {
        Some(floor) => {
            println!("uncontended acquire+release, floor {:.1} µs:", floor / 1e3);
            for bench in ["semaphore", "rw_read", "rw_write", "redlock_3"] {
                if let Some(ours) = median_ns(group, bench) {
                    println!(
                        "  {bench:<10} {:>7.1} µs  ratio {:.3}",
                        ours / 1e3,
                        ours / floor
                    );
                }
            }
        }
        None => println!("uncontended: no criterion estimates found (filtered out?)"),
    }
    let group = "redis_extras_64_tasks";
    match (median_ns(group, "floor"), median_ns(group, "semaphore")) {
        (Some(floor), Some(ours)) => {
            let n = (TASKS * OPS_PER_TASK) as f64;
            println!(
                "64 tasks throughput: floor {:.0}/s, semaphore {:.0}/s, ratio {:.3}",
                n / (floor / 1e9),
                n / (ours / 1e9),
                floor / ours
            );
        }
        _ => println!("64 tasks: no criterion estimates found (filtered out?)"),
    }
    if let Some(h) = median_ns("redis_extras_handoff", "semaphore") {
        println!(
            "semaphore hand-off across clients: median {:.3} ms",
            h / 1e6
        );
    }
}
