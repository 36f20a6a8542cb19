//! lockyard's Postgres locks (fencing off) beside sqlx's `PgAdvisoryLock`,
//! in throughput of uncontended acquire + release, against one private
//! Postgres on loopback.
//!
//! Run (from the repository's root; sqlx is built only here):
//!
//! ```sh
//! cargo run --release --manifest-path benches/sqlx-compare/Cargo.toml
//! ROUNDS=30 OPS=400 TASKS=8 cargo run --release --manifest-path benches/sqlx-compare/Cargo.toml
//! ```
//!
//! Variants, each round running every one of them in turn, starting with
//! another one each round (so drift of the machine hits them alike):
//!
//! - lockyard: `PgLocks::acquire(name, timeout)` + `release()`, fencing
//!   off (its connections come from the client's idle list);
//! - sqlx from a pool: `PgPool::acquire()`, `PgAdvisoryLock::acquire(conn)`
//!   (`pg_advisory_lock`) + `PgAdvisoryLockGuard::release_now()`, the
//!   connection back to the pool: what a service holding no connection of
//!   its own writes. With the pool's defaults, which ping a connection
//!   before handing it out (`test_before_acquire`), and without the ping;
//! - sqlx on one held connection: the same without the pool (a floor for
//!   sqlx: no connection management at all).
//!
//! Each is run by one task, and by `TASKS` tasks at once on distinct names
//! (each task its own name; the pool and the idle list hold `TASKS`
//! connections). Figures: ops/s per round; the ratio lockyard / sqlx of
//! each round, then the median and interquartile range over rounds. The bar:
//! lockyard ≥ 1.0× sqlx.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockyard::postgres::{PgLocks, PgOptions};
use lockyard_testkit::postgres::PgServer;
use sqlx::Connection;
use sqlx::postgres::{PgAdvisoryLock, PgConnection, PgPool, PgPoolOptions};

const VARIANTS: [&str; 4] = [
    "lockyard",
    "sqlx pool",
    "sqlx pool, no ping",
    "sqlx held conn",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds = env_or("ROUNDS", 20);
    let ops = env_or("OPS", 300);
    let tasks = env_or("TASKS", 8);
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await
        .expect("start postgres");
    let url = server.url();
    println!("load before: {}", loadavg());
    for n in [1, tasks] {
        let bench = Bench::new(&url, n).await;
        // Warm every path (connections opened, statements prepared).
        for v in 0..VARIANTS.len() {
            bench.run(v, n * 4).await;
        }
        let mut samples: [Vec<f64>; 4] = Default::default();
        for round in 0..rounds {
            for i in 0..VARIANTS.len() {
                let v = (round + i) % VARIANTS.len();
                samples[v].push(bench.run(v, ops).await);
            }
        }
        println!(
            "uncontended acquire + release, {n} task(s) on distinct names \
             ({rounds} rounds × {ops} ops; ops/s, median over rounds):"
        );
        for (v, name) in VARIANTS.iter().enumerate() {
            println!("  {name:<19} {:>8.0}", quartiles(samples[v].clone()).1);
        }
        for sqlx in 1..VARIANTS.len() {
            let ratios: Vec<f64> = samples[0]
                .iter()
                .zip(&samples[sqlx])
                .map(|(l, s)| l / s)
                .collect();
            let (q1, med, q3) = quartiles(ratios);
            println!(
                "  lockyard / {}: {med:.2}× [IQR {q1:.2}–{q3:.2}] (per-round ratios; bar ≥ 1.0×)",
                VARIANTS[sqlx]
            );
        }
    }
    println!("load after: {}", loadavg());
}

/// The clients of one configuration (`tasks` tasks at once).
struct Bench {
    tasks: usize,
    lockyard: PgLocks,
    pool: PgPool,
    unpinged: PgPool,
    held: Vec<Arc<tokio::sync::Mutex<PgConnection>>>,
    locks: Vec<Arc<PgAdvisoryLock>>,
}

impl Bench {
    async fn new(url: &str, tasks: usize) -> Self {
        let lockyard = PgLocks::connect_with(
            url,
            PgOptions::default().fencing(false).max_idle(tasks.max(8)),
        )
        .await
        .expect("connect lockyard");
        let pool = PgPoolOptions::new()
            .max_connections(u32::try_from(tasks).expect("a small TASKS"))
            .connect(url)
            .await
            .expect("connect the sqlx pool");
        let unpinged = PgPoolOptions::new()
            .max_connections(u32::try_from(tasks).expect("a small TASKS"))
            .test_before_acquire(false)
            .connect(url)
            .await
            .expect("connect the sqlx pool");
        let mut held = Vec::new();
        for _ in 0..tasks {
            let conn = PgConnection::connect(url).await.expect("connect sqlx");
            held.push(Arc::new(tokio::sync::Mutex::new(conn)));
        }
        let locks = (0..tasks)
            .map(|t| Arc::new(PgAdvisoryLock::new(name(t))))
            .collect();
        Self {
            tasks,
            lockyard,
            pool,
            unpinged,
            held,
            locks,
        }
    }

    /// Runs `ops` acquire + release of `variant`, split over the tasks;
    /// returns ops per second.
    async fn run(&self, variant: usize, ops: usize) -> f64 {
        let per_task = ops.div_ceil(self.tasks);
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for t in 0..self.tasks {
            let lockyard = self.lockyard.clone();
            let pool = if variant == 1 {
                self.pool.clone()
            } else {
                self.unpinged.clone()
            };
            let held = self.held[t].clone();
            let lock = self.locks[t].clone();
            set.spawn(async move {
                let name = name(t);
                for _ in 0..per_task {
                    match variant {
                        0 => lockyard
                            .acquire(&name, Duration::from_secs(10))
                            .await
                            .expect("lockyard acquire")
                            .release()
                            .await
                            .expect("lockyard release"),
                        1 | 2 => {
                            let conn = pool.acquire().await.expect("a pooled connection");
                            let guard = lock.acquire(conn).await.expect("sqlx acquire");
                            drop(guard.release_now().await.expect("sqlx release"));
                        }
                        _ => {
                            let mut conn = held.lock().await;
                            let guard = lock.acquire(&mut *conn).await.expect("sqlx acquire");
                            guard.release_now().await.expect("sqlx release");
                        }
                    }
                }
            });
        }
        while let Some(done) = set.join_next().await {
            done.expect("a bench task");
        }
        (per_task * self.tasks) as f64 / start.elapsed().as_secs_f64()
    }
}

fn name(task: usize) -> String {
    format!("sqlx-compare-{task}")
}

fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// First quartile, median, third quartile.
fn quartiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}

/// The machine's load averages (the bench shares the machine).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}
