//! Redis Cluster beside one server, in one run: a private 3-master cluster
//! and a private redis-server on loopback, the same lockyard workloads on
//! each.
//!
//! Run: `cargo bench --bench redis_cluster` (add `-- --quick` for a short
//! run). Prints criterion's figures for
//! - `cluster_uncontended/{single,cluster}`: sequential acquire + release of
//!   one name;
//! - `cluster_64_tasks/{single,cluster}`: 64 concurrent tasks, each taking
//!   and releasing its own name (the names spread over the three masters),
//!   throughput in elements/s;
//!
//! then the ratios, and the same ratios from interleaved rounds (single and
//! cluster alternating, so that load from other processes hits both alike).
//!
//! On this 2-core machine the three masters share the cores the client runs
//! on, so the cluster cannot be faster than one server: the bar is that it
//! costs little (throughput ≥ 0.8× single, uncontended ≤ 1.2×). On real
//! nodes each master has its own CPU and the 64-task throughput scales with
//! the number of masters, until the client's own CPU is the limit.

// The tests' launchers; `cluster.rs` reaches `redis.rs` as `super::redis`.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard_testkit::cluster::RedisCluster;
use lockyard_testkit::floor::median_ns;
use lockyard_testkit::redis::RedisServer;
use tokio::runtime::Runtime;

const TTL: Duration = Duration::from_secs(30);
const TASKS: usize = 64;
const OPS_PER_TASK: usize = 20;

fn main() {
    let server = RedisServer::start();
    let cluster = RedisCluster::start(3, 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (single, clustered) = rt.block_on(async {
        let opts = RedisOptions::default().ttl(TTL);
        (
            RedisLocks::connect_with(&server.url(), opts.clone())
                .await
                .unwrap(),
            RedisLocks::connect_with(&cluster.url(), opts)
                .await
                .unwrap(),
        )
    });
    assert!(clustered.is_cluster() && !single.is_cluster());
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();

    let both = [("single", &single), ("cluster", &clustered)];
    bench_both(&mut c, &rt, "cluster_uncontended", None, both, seq_once);
    let per_round = Some(Throughput::Elements((TASKS * OPS_PER_TASK) as u64));
    bench_both(
        &mut c,
        &rt,
        "cluster_64_tasks",
        per_round,
        both,
        tasks_round,
    );
    c.final_summary();

    println!();
    report_ratios();
    report_interleaved(&rt, &single, &clustered);
}

/// One criterion group: `work` on each client, timed over `iters` runs.
fn bench_both<F, Fut>(
    c: &mut Criterion,
    rt: &Runtime,
    group: &str,
    throughput: Option<Throughput>,
    both: [(&str, &RedisLocks); 2],
    work: F,
) where
    F: Fn(RedisLocks) -> Fut + Copy,
    Fut: std::future::Future<Output = ()>,
{
    let mut g = c.benchmark_group(group);
    if let Some(t) = throughput {
        g.throughput(t);
    }
    for (label, locks) in both {
        g.bench_function(label, |b| {
            b.to_async(rt).iter_custom(|iters| {
                let locks = locks.clone();
                async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        work(locks.clone()).await;
                    }
                    start.elapsed()
                }
            })
        });
    }
    g.finish();
}

async fn seq_once(locks: RedisLocks) {
    let g = locks.acquire("bench-seq", TTL).await.unwrap();
    g.release().await.unwrap();
}

/// 64 tasks, each acquiring and releasing its own name 20 times.
async fn tasks_round(locks: RedisLocks) {
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

fn report_ratios() {
    match (
        median_ns("cluster_uncontended", "single"),
        median_ns("cluster_uncontended", "cluster"),
    ) {
        (Some(s), Some(c)) => println!(
            "uncontended acquire+release: single {:.1} µs, cluster {:.1} µs, ratio {:.3} (bar <= 1.2)",
            s / 1e3,
            c / 1e3,
            c / s
        ),
        _ => println!("uncontended: no criterion estimates found (filtered out?)"),
    }
    match (
        median_ns("cluster_64_tasks", "single"),
        median_ns("cluster_64_tasks", "cluster"),
    ) {
        (Some(s), Some(c)) => {
            let n = (TASKS * OPS_PER_TASK) as f64;
            println!(
                "64 tasks throughput: single {:.0}/s, cluster {:.0}/s, ratio {:.3} (bar >= 0.8)",
                n / (s / 1e9),
                n / (c / 1e9),
                s / c
            );
        }
        _ => println!("64 tasks: no criterion estimates found (filtered out?)"),
    }
}

fn report_interleaved(rt: &Runtime, single: &RedisLocks, clustered: &RedisLocks) {
    const ROUNDS: usize = 9;
    const SEQ: usize = 500;
    const PAR: usize = 5;
    let (mut seq, mut par) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..ROUNDS {
            let mut times = [Duration::ZERO; 4];
            for (i, locks) in [single, clustered].into_iter().enumerate() {
                let t = Instant::now();
                for _ in 0..SEQ {
                    seq_once(locks.clone()).await;
                }
                times[i] = t.elapsed();
                let t = Instant::now();
                for _ in 0..PAR {
                    tasks_round(locks.clone()).await;
                }
                times[2 + i] = t.elapsed();
            }
            seq.push(times[1].as_secs_f64() / times[0].as_secs_f64());
            par.push(times[2].as_secs_f64() / times[3].as_secs_f64());
        }
    });
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "interleaved over {ROUNDS} rounds (median): uncontended cluster/single {:.3} (bar <= 1.2), 64-task throughput cluster/single {:.3} (bar >= 0.8)",
        median(&mut seq),
        median(&mut par)
    );
}
