//! A quick A/B of the bench's 64-task row: `tasks` tasks, each taking and
//! releasing its own name for `secs` seconds, on a two-worker runtime (as
//! `benches/redis.rs`), by lockyard (`acquire`) and lockyard's own protocol
//! by hand (`lockyard_testkit::floor`), alternating `rounds` times; prints
//! ops/s of each and the per-round ratio. Not the measure of record (that is
//! `cargo bench --bench redis`): a tool for trying a change in seconds.
//!
//! ```text
//! redis-server --port 7399 --save "" --daemonize yes
//! cargo build --release --example redis_throughput --features redis
//! taskset -c 0 redis-server ...; taskset -c 1 target/release/examples/redis_throughput \
//!   redis://127.0.0.1:7399/ 64 1 5 [lockyard|own|both] [current]
//! ```
//!
//! `current` runs both on a current-thread runtime instead: what tokio's
//! default runtime amounts to in a process confined to one CPU (its worker
//! count is the CPUs the process may use), where the bench's pinned rows
//! run two workers on the one CPU they pin the client to.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard_testkit::floor::{Floor, TOKEN};

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:7399/".to_owned());
    let tasks: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(64);
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(5);
    // `lockyard` or `own` to run only that one.
    let only = args.next().unwrap_or_default();
    let current = args.next().is_some_and(|f| f == "current");
    let slice = Duration::from_secs_f64(secs);
    let rt = if current {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    }
    .expect("runtime");
    rt.block_on(async {
        let ttl = Duration::from_secs(30);
        let locks = RedisLocks::connect_with(&url, RedisOptions::default().ttl(ttl))
            .await
            .expect("connect");
        let floor = Floor::connect_own(&url, ttl).await;
        let pid = std::process::id();
        for round in 0..rounds {
            let ours = if only == "own" {
                1.0
            } else {
                run(tasks, slice, |t, stop, count| {
                    let lock = locks.lock(&format!("tp:l:{pid}:{t}")).expect("name");
                    async move {
                        while !stop.load(Ordering::Relaxed) {
                            let g = lock.acquire(Duration::from_secs(5)).await.expect("free");
                            g.release().await.expect("release");
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .await
            };
            let own = if only == "lockyard" {
                1.0
            } else {
                run(tasks, slice, |t, stop, count| {
                    let mut f = floor.clone();
                    let key = format!("tp:o:{pid}:{t}");
                    async move {
                        while !stop.load(Ordering::Relaxed) {
                            f.acquire_release(&key, TOKEN).await;
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .await
            };
            println!(
                "round {round}: lockyard {ours:.0}/s, own floor {own:.0}/s, lockyard / own {:.3}",
                ours / own
            );
        }
        locks.shutdown().await;
    });
}

/// Runs `tasks` copies of `task` for `slice`; returns operations per second.
async fn run<F, Fut>(tasks: usize, slice: Duration, task: F) -> f64
where
    F: Fn(usize, Arc<AtomicBool>, Arc<AtomicU64>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..tasks)
        .map(|t| tokio::spawn(task(t, stop.clone(), count.clone())))
        .collect();
    // Warm up, then count.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start_count = count.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(slice).await;
    let done = count.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.expect("task");
    }
    done as f64 / elapsed.as_secs_f64()
}
