//! Redis lock benchmarks, side by side with a hand-written floor in one run,
//! against a private redis-server on loopback.
//!
//! The floor: `SET key token NX PX ttl` + an `EVALSHA` compare-and-delete on
//! one multiplexed connection — the least a correct Redis lock can do.
//!
//! Run: `cargo bench --bench redis` (add `-- --quick` for a short run). Prints
//! criterion's figures for
//! - `redis_uncontended/{floor,lockyard}`: sequential acquire + release;
//! - `redis_64_tasks/{floor,fenced_floor,lockyard}`: 64 concurrent tasks,
//!   each taking and releasing its own lock (throughput in elements/s); the
//!   *fenced* floor does by hand the work lockyard must do (one script for
//!   `SET NX PX` + fencing `INCR`, one for compare-and-delete + `PUBLISH`),
//!   so that lockyard / fenced floor is what the client costs beyond the
//!   server's Lua;
//! - `redis_handoff/lockyard`: contended hand-off between two clients (as two
//!   processes would), from the holder's `release()` call to the waiter
//!   holding the lock;
//!
//! then the ratios against the floor, the hand-off p50/p90 over individual
//! hand-offs, the watchdog's cost for 10,000 held locks in round trips per
//! renewal period, and (with the feature `tls`: `cargo bench --bench redis
//! --features tls`) what TLS costs lockyard beyond what it costs the floor:
//! uncontended acquire + release against a TLS-only server and a plain one,
//! (lockyard / floor over TLS) / (lockyard / floor over TCP), one operation
//! of each in turn, medians.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard_testkit::floor::{Floor, TOKEN, median_ns};
use lockyard_testkit::redis::RedisServer;
use tokio::runtime::Runtime;

const TTL: Duration = Duration::from_secs(30);
const TASKS: usize = 64;
const OPS_PER_TASK: usize = 20;

fn main() {
    let server = RedisServer::start();
    let url = server.url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (floor, fenced, locks, other) = rt.block_on(async {
        let opts = RedisOptions::default()
            .ttl(TTL)
            .pool_size(std::env::var("POOL").map_or(1, |v| v.parse().unwrap()));
        (
            Floor::connect(&url, TTL).await,
            Floor::connect_fenced(&url, TTL).await,
            RedisLocks::connect_with(&url, opts.clone()).await.unwrap(),
            RedisLocks::connect_with(&url, opts).await.unwrap(),
        )
    });
    // Defaults first, so that `--measurement-time` etc. on the command
    // line override them.
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();

    uncontended(&mut c, &rt, &floor, &locks);
    throughput(&mut c, &rt, &floor, &fenced, &locks);
    handoff(&mut c, &rt, &locks, &other);
    c.final_summary();

    println!();
    report_ratios();
    report_interleaved(&rt, &floor, &locks);
    report_handoff_percentiles(&rt, &locks, &other);
    #[cfg(feature = "tls")]
    report_tls_overhead(&rt, &floor, &locks);
    report_renewal_cost(&rt, &url);
}

/// Uncontended acquire + release over TLS and over TCP, each against its
/// floor: one operation of each of the four in turn (the order rotating),
/// each timed alone, so that load from other processes falls on all four
/// alike; the ratio of medians (lockyard / floor over TLS) / (lockyard /
/// floor over TCP) is what TLS costs lockyard beyond what it costs any
/// client. Medians of single operations, not sums: a preempted operation
/// moves a sum, not a median.
#[cfg(feature = "tls")]
fn report_tls_overhead(rt: &Runtime, floor: &Floor, locks: &RedisLocks) {
    use lockyard_testkit::tls::{ServerTls, TlsFiles};
    const OPS: usize = 4000;
    const WARM_UP: usize = 200;
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&ServerTls::new(&files));
    let url = server.url();
    let (tls_floor, tls_locks) = rt.block_on(async {
        (
            Floor::connect_tls(&url, &files.ca(), TTL).await,
            RedisLocks::connect_with(&url, RedisOptions::default().ttl(TTL).tls_ca(files.ca()))
                .await
                .unwrap(),
        )
    });
    // [floor over TCP, lockyard over TCP, floor over TLS, lockyard over TLS]
    let mut times: [Vec<Duration>; 4] = Default::default();
    rt.block_on(async {
        let (mut tcp_floor, mut tls_floor) = (floor.clone(), tls_floor.clone());
        for i in 0..WARM_UP + OPS {
            for k in 0..4 {
                let which = (i + k) % 4;
                let t = Instant::now();
                match which {
                    0 => tcp_floor.acquire_release("bench:floor:tls", TOKEN).await,
                    2 => tls_floor.acquire_release("bench:floor:tls", TOKEN).await,
                    _ => {
                        let locks = if which == 1 { locks } else { &tls_locks };
                        let g = locks.acquire("bench-tls", TTL).await.unwrap();
                        g.release().await.unwrap();
                    }
                }
                if i >= WARM_UP {
                    times[which].push(t.elapsed());
                }
            }
        }
    });
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let [f_tcp, l_tcp, f_tls, l_tls] = times.each_mut().map(median);
    let (over_tcp, over_tls) = (l_tcp / f_tcp, l_tls / f_tls);
    println!(
        "TLS, uncontended, {OPS} of each interleaved (medians): floor {:.1} µs / lockyard {:.1} µs over TCP ({over_tcp:.3}), floor {:.1} µs / lockyard {:.1} µs over TLS ({over_tls:.3}); (over TLS) / (over TCP) {:.3} (bar <= 1.05)",
        f_tcp * 1e6,
        l_tcp * 1e6,
        f_tls * 1e6,
        l_tls * 1e6,
        over_tls / over_tcp
    );
}

fn uncontended(c: &mut Criterion, rt: &Runtime, floor: &Floor, locks: &RedisLocks) {
    let mut g = c.benchmark_group("redis_uncontended");
    g.bench_function("floor", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut f = floor.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    f.acquire_release("bench:floor:seq", TOKEN).await;
                }
                start.elapsed()
            }
        })
    });
    g.bench_function("lockyard", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let locks = locks.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let g = locks.acquire("bench-seq", TTL).await.unwrap();
                    g.release().await.unwrap();
                }
                start.elapsed()
            }
        })
    });
    g.finish();
}

fn throughput(c: &mut Criterion, rt: &Runtime, floor: &Floor, fenced: &Floor, locks: &RedisLocks) {
    let mut g = c.benchmark_group("redis_64_tasks");
    g.throughput(Throughput::Elements((TASKS * OPS_PER_TASK) as u64));
    for (label, floor) in [("floor", floor), ("fenced_floor", fenced)] {
        g.bench_function(label, |b| {
            b.to_async(rt).iter_custom(|iters| {
                let floor = floor.clone();
                async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        floor.tasks_round(TASKS, OPS_PER_TASK, floor_key).await;
                    }
                    start.elapsed()
                }
            })
        });
    }
    g.bench_function("lockyard", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let locks = locks.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|t| {
                            let locks = locks.clone();
                            tokio::spawn(async move {
                                let name = format!("bench-t{t}");
                                for _ in 0..OPS_PER_TASK {
                                    let g = locks.acquire(&name, TTL).await.unwrap();
                                    g.release().await.unwrap();
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

/// One hand-off: `holder` holds, `waiter` (another client, as another
/// process) waits; returns the time from the release call to the waiter
/// holding the lock.
async fn one_handoff(holder: &RedisLocks, waiter: &RedisLocks) -> Duration {
    let g = holder.acquire("bench-handoff", TTL).await.unwrap();
    let w = waiter.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let g = w.acquire("bench-handoff", TTL).await.unwrap();
        let at = Instant::now();
        let _ = tx.send(at);
        g.release().await.unwrap();
    });
    // Let the waiter reach its wait (subscribed, retried, sleeping).
    tokio::time::sleep(Duration::from_millis(3)).await;
    let released = Instant::now();
    g.release().await.unwrap();
    let acquired = rx.await.unwrap();
    task.await.unwrap();
    acquired.saturating_duration_since(released)
}

fn handoff(c: &mut Criterion, rt: &Runtime, locks: &RedisLocks, other: &RedisLocks) {
    let mut g = c.benchmark_group("redis_handoff");
    g.bench_function("lockyard", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (a, b2) = (locks.clone(), other.clone());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += one_handoff(&a, &b2).await;
                }
                total
            }
        })
    });
    g.finish();
}

/// The floor's key for task `t` of the 64-task benches.
fn floor_key(t: usize) -> String {
    format!("bench:floor:t{t}")
}

fn report_ratios() {
    let pair = |group: &str| Some((median_ns(group, "floor")?, median_ns(group, "lockyard")?));
    match pair("redis_uncontended") {
        Some((floor, ours)) => println!(
            "uncontended acquire+release: floor {:.1} µs, lockyard {:.1} µs, ratio {:.3} (bar <= 1.15)",
            floor / 1e3,
            ours / 1e3,
            ours / floor
        ),
        None => println!("uncontended: no criterion estimates found (filtered out?)"),
    }
    // Throughput against each floor: the plain one and the fenced one (the
    // work a fenced lock with wakeups must do, by hand).
    let ours = median_ns("redis_64_tasks", "lockyard");
    for (floor_bench, label, bar) in [
        ("floor", "floor", 0.8),
        ("fenced_floor", "fenced floor", 0.9),
    ] {
        match (median_ns("redis_64_tasks", floor_bench), ours) {
            (Some(floor), Some(ours)) => {
                let n = (TASKS * OPS_PER_TASK) as f64;
                println!(
                    "64 tasks throughput: {label} {:.0}/s, lockyard {:.0}/s, ratio {:.3} (bar >= {bar})",
                    n / (floor / 1e9),
                    n / (ours / 1e9),
                    floor / ours
                );
            }
            _ => println!("64 tasks vs {label}: no criterion estimates found (filtered out?)"),
        }
    }
}

/// The same comparisons, alternating floor and lockyard in short rounds so
/// that load from other processes hits both alike; median of the per-round
/// ratios.
fn report_interleaved(rt: &Runtime, floor: &Floor, locks: &RedisLocks) {
    const ROUNDS: usize = 9;
    const SEQ: usize = 1000;
    const PAR: usize = 10;
    let (mut seq, mut par) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..ROUNDS {
            let mut f = floor.clone();
            let t = Instant::now();
            for _ in 0..SEQ {
                f.acquire_release("bench:floor:seq", TOKEN).await;
            }
            let floor_seq = t.elapsed();
            let t = Instant::now();
            for _ in 0..SEQ {
                locks
                    .acquire("bench-seq", TTL)
                    .await
                    .unwrap()
                    .release()
                    .await
                    .unwrap();
            }
            seq.push(t.elapsed().as_secs_f64() / floor_seq.as_secs_f64());

            let t = Instant::now();
            for _ in 0..PAR {
                floor.tasks_round(TASKS, OPS_PER_TASK, floor_key).await;
            }
            let floor_par = t.elapsed();
            let t = Instant::now();
            for _ in 0..PAR {
                let tasks: Vec<_> = (0..TASKS)
                    .map(|i| {
                        let locks = locks.clone();
                        tokio::spawn(async move {
                            let name = format!("bench-t{i}");
                            for _ in 0..OPS_PER_TASK {
                                locks
                                    .acquire(&name, TTL)
                                    .await
                                    .unwrap()
                                    .release()
                                    .await
                                    .unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            }
            // Throughput ratio: floor time / our time.
            par.push(floor_par.as_secs_f64() / t.elapsed().as_secs_f64());
        }
    });
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "interleaved over {ROUNDS} rounds (median): uncontended latency ratio {:.3} (bar <= 1.25), 64-task throughput ratio {:.3} (bar >= 0.8)",
        median(&mut seq),
        median(&mut par)
    );
}

fn report_handoff_percentiles(rt: &Runtime, a: &RedisLocks, b: &RedisLocks) {
    let mut samples: Vec<Duration> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..300 {
            v.push(one_handoff(a, b).await);
        }
        v
    });
    samples.sort();
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "contended hand-off over {} hand-offs: p50 {:?}, p90 {:?}, max {:?} (bar p50 <= 0.5 ms)",
        samples.len(),
        p(0.5),
        p(0.9),
        samples[samples.len() - 1]
    );
}

fn report_renewal_cost(rt: &Runtime, url: &str) {
    const HELD: usize = 10_000;
    let ttl = Duration::from_secs(3);
    rt.block_on(async {
        let locks = RedisLocks::connect_with(url, RedisOptions::default().ttl(ttl))
            .await
            .unwrap();
        let mut guards = Vec::with_capacity(HELD);
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let locks = locks.clone();
                tokio::spawn(async move {
                    let mut v = Vec::new();
                    for i in (t..HELD).step_by(64) {
                        v.push(locks.acquire(&format!("held-{i}"), ttl).await.unwrap());
                    }
                    v
                })
            })
            .collect();
        for t in tasks {
            guards.extend(t.await.unwrap());
        }
        // One period to align the schedules, then measure three.
        let period = ttl / 3;
        tokio::time::sleep(period + period / 2).await;
        let before = locks.stats();
        let t0 = Instant::now();
        tokio::time::sleep(period * 3).await;
        let after = locks.stats();
        let periods = t0.elapsed().as_secs_f64() / period.as_secs_f64();
        let trips = (after.renewal_round_trips - before.renewal_round_trips) as f64;
        let renewals = (after.renewals - before.renewals) as f64;
        println!(
            "renewal of {HELD} held locks (ttl {ttl:?}, period {period:?}): {:.2} round trips and {:.0} renewals per period, lost {}",
            trips / periods,
            renewals / periods,
            after.lost
        );
        assert!(guards.iter().all(|g| !g.is_lost()));
        for g in guards {
            drop(g);
        }
    });
}
