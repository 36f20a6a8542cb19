//! Postgres lock benchmarks beside hand-written floors, in one run, against
//! a private Postgres on loopback. Interleaved rounds: each round runs every
//! variant in turn, starting with another one each round, so drift of the
//! machine (other builds, CPU frequency) hits them alike; the figures are
//! medians over rounds.
//!
//! Run: `cargo bench --features postgres --bench postgres` (`ROUNDS=n`,
//! `OPS=n` to change the size). Prints
//! - uncontended acquire + release, fencing off, against the raw floor:
//!   `pg_try_advisory_lock` + `pg_advisory_unlock` with prepared statements
//!   on one held connection (bar: ≤ 1.1×);
//! - the same with fencing on, against the fenced floor: the same statement
//!   lockyard sends (the try and the fence write in one statement) and the
//!   unlock, prepared, on one held connection (bar: ≤ 1.1×);
//! - hand-off p50/p90 between two clients (two connections, as two
//!   processes would have), from the holder's unlock to the waiter holding
//!   the lock, lockyard against a raw blocking `pg_advisory_lock` hand-off
//!   (bar: ≤ 2×);
//! - the same between two processes: the waiter runs in a child process
//!   (this bench binary re-executed in a role, with the kit's child
//!   harness), blocked in the server (the parent sees its `granted = false`
//!   row in `pg_locks` before it releases); the holder stamps
//!   `CLOCK_MONOTONIC` just before sending its unlock, the waiter where its
//!   acquisition returns. Raw `pg_advisory_lock`, lockyard with fencing on
//!   (the default: the fence write follows the grant) and off, in rounds
//!   whose order rotates; p50/p90 and the p50 ratio (bar: ≤ 2×).
//!
//! The fenced floor sends the very statement lockyard sends, the
//! backend-pid check included (it refuses a pooler that moved the session);
//! the plain floor is the bare `pg_try_advisory_lock`.

use std::time::{Duration, Instant};

use lockyard::postgres::{PgLocks, PgOptions};
use lockyard_testkit::child;
use lockyard_testkit::postgres::PgServer;
use lockyard_testkit::postgres::client as raw_client;
use tokio_postgres::Client;

/// The role of the child process that waits in the cross-process hand-off.
const WAITER: &str = "postgres-handoff-waiter";
/// The environment variable that gives the waiter the server's URL.
const URL_VAR: &str = "LOCKYARD_BENCH_PG_URL";
/// The raw hand-off's key and lockyard's lock name, between processes.
const XP_KEY: i64 = 0x4a4e;
const XP_NAME: &str = "handoff-across-processes";

fn main() {
    if child::role().as_deref() == Some(WAITER) {
        waiter_process();
        return;
    }
    let rounds: usize = env_or("ROUNDS", 15);
    let ops: usize = env_or("OPS", 200);
    // ONLY=n runs variant n alone (0 floor, 1 lockyard, 2 fenced floor,
    // 3 fenced lockyard), to profile it; then no ratios are printed.
    let only: Option<usize> = std::env::var("ONLY").ok().and_then(|v| v.parse().ok());
    let server = PgServer::start();
    let url = server.url();
    let rt = runtime();
    rt.block_on(async {
        let raw = raw_client(&url).await;
        let plain = PgLocks::connect_with(&url, PgOptions::default().fencing(false))
            .await
            .unwrap();
        let fenced = PgLocks::connect_with(&url, PgOptions::default())
            .await
            .unwrap();
        // Makes the fence table before the floor uses it.
        let pid: i32 = raw
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        fenced
            .try_acquire("bench")
            .await
            .unwrap()
            .release()
            .await
            .unwrap();

        let try_lock = raw
            .prepare("SELECT pg_try_advisory_lock($1)")
            .await
            .unwrap();
        let unlock = raw.prepare("SELECT pg_advisory_unlock($1)").await.unwrap();
        let fenced_try = raw
            .prepare(
                "WITH g AS (SELECT CASE WHEN pg_backend_pid() = $4 \
                                   THEN pg_try_advisory_lock($1) END AS ok), \
                 f AS (INSERT INTO public.lockyard_fence AS t (key, name, token) \
                       SELECT $2, $3, 1 FROM g WHERE g.ok \
                       ON CONFLICT (key) DO UPDATE SET token = t.token + 1, name = EXCLUDED.name \
                       RETURNING t.token) \
                 SELECT g.ok, (SELECT token FROM f), pg_backend_pid() FROM g",
            )
            .await
            .unwrap();
        let key: i64 = 0x5eed;
        let key_text = key.to_string();
        let name = "floor".to_owned();

        let mut samples: [Vec<f64>; 4] = Default::default();
        for round in 0..rounds {
            // Each round starts with another variant, so that none always
            // runs first (or right after a given other one).
            for i in 0..4 {
                let variant = (round + i) % 4;
                if only.is_some_and(|o| o != variant) {
                    continue;
                }
                let t = Instant::now();
                for _ in 0..ops {
                    match variant {
                        0 => {
                            let ok: bool = raw.query_one(&try_lock, &[&key]).await.unwrap().get(0);
                            assert!(ok);
                            let _: bool = raw.query_one(&unlock, &[&key]).await.unwrap().get(0);
                        }
                        1 => plain
                            .try_acquire("bench")
                            .await
                            .unwrap()
                            .release()
                            .await
                            .unwrap(),
                        2 => {
                            let row = raw
                                .query_one(&fenced_try, &[&key, &key_text, &name, &pid])
                                .await
                                .unwrap();
                            assert!(row.get::<_, bool>(0));
                            let _: bool = raw.query_one(&unlock, &[&key]).await.unwrap().get(0);
                        }
                        _ => fenced
                            .try_acquire("bench")
                            .await
                            .unwrap()
                            .release()
                            .await
                            .unwrap(),
                    }
                }
                samples[variant].push(per_op(t, ops));
            }
        }
        if only.is_some() {
            println!("per op: {:?} µs", samples.map(median_or_nan));
            return;
        }
        // The ratio of each round (its variants ran next to each other), then
        // the median over rounds: drift between rounds cancels out.
        let ratio =
            |num: &[f64], den: &[f64]| median(num.iter().zip(den).map(|(n, d)| n / d).collect());
        let plain_ratio = ratio(&samples[1], &samples[0]);
        let fenced_ratio = ratio(&samples[3], &samples[2]);
        let [floor, lock, fenced_floor, fenced_lock] = samples.map(median);
        println!("uncontended acquire + release ({rounds} rounds × {ops}; medians):");
        println!(
            "  fencing off: floor {floor:.1} µs, lockyard {lock:.1} µs: \
             {plain_ratio:.2}× (median of per-round ratios; bar ≤ 1.1×)"
        );
        println!(
            "  fencing on:  floor {fenced_floor:.1} µs, lockyard {fenced_lock:.1} µs: \
             {fenced_ratio:.2}× (median of per-round ratios; bar ≤ 1.1×)"
        );

        let (raw_p50, raw_p90) = raw_handoff(&url, rounds * 4).await;
        let (ly_p50, ly_p90) = lockyard_handoff(&url, rounds * 4).await;
        println!("hand-off between two clients ({} each):", rounds * 4);
        println!("  raw pg_advisory_lock: p50 {raw_p50:.0} µs, p90 {raw_p90:.0} µs");
        println!(
            "  lockyard:             p50 {ly_p50:.0} µs, p90 {ly_p90:.0} µs: p50 {:.2}× (bar ≤ 2×)",
            ly_p50 / raw_p50
        );

        let per_round = 4;
        let [raw, on, off] = cross_process_handoff(&url, rounds, per_round).await;
        let n = rounds * per_round;
        println!(
            "hand-off between two processes ({n} each; waiter in a child process, blocked in \
             the server; CLOCK_MONOTONIC from the holder's unlock to the waiter's grant):"
        );
        let (raw_p50, raw_p90) = percentiles(raw);
        println!("  raw pg_advisory_lock:   p50 {raw_p50:.0} µs, p90 {raw_p90:.0} µs");
        for (label, v) in [
            ("lockyard, fencing on: ", on),
            ("lockyard, fencing off:", off),
        ] {
            let (p50, p90) = percentiles(v);
            println!(
                "  {label} p50 {p50:.0} µs, p90 {p90:.0} µs: p50 {:.2}× (bar ≤ 2×)",
                p50 / raw_p50
            );
        }
    });
}

/// What the waiter process is told to do, one round at a time.
const ORDERS: [&str; 3] = ["raw", "fenced", "plain"];

/// Hand-offs from this process (the holder) to a child process (the
/// waiter): per round, `per_round` of each variant, the variants in a
/// rotating order. Samples in µs, by [`ORDERS`].
async fn cross_process_handoff(url: &str, rounds: usize, per_round: usize) -> [Vec<f64>; 3] {
    let mut waiter = child::spawn("", WAITER, &[(URL_VAR, url.to_owned())]);
    let startup = Duration::from_secs(30);
    waiter.wait_line("ready", startup);
    let holder = raw_client(url).await;
    let lock = holder.prepare("SELECT pg_advisory_lock($1)").await.unwrap();
    let unlock = holder
        .prepare("SELECT pg_advisory_unlock($1)")
        .await
        .unwrap();
    let locks = PgLocks::connect(url).await.unwrap();
    let admin = raw_client(url).await;
    let limit = Duration::from_secs(10);
    let mut out: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        for i in 0..3 {
            let variant = (round + i) % 3;
            for _ in 0..per_round {
                let guard = if variant == 0 {
                    holder.query_one(&lock, &[&XP_KEY]).await.unwrap();
                    None
                } else {
                    Some(locks.try_acquire(XP_NAME).await.unwrap())
                };
                waiter.send(ORDERS[variant]);
                wait_until_blocked(&admin).await;
                let released = child::monotonic_ns();
                match guard {
                    None => {
                        let _: bool = holder.query_one(&unlock, &[&XP_KEY]).await.unwrap().get(0);
                    }
                    Some(g) => g.release().await.unwrap(),
                }
                let got: u64 = waiter
                    .wait_line("got ", limit)
                    .trim_start_matches("got ")
                    .trim()
                    .parse()
                    .expect("the waiter's stamp");
                waiter.wait_line("released", limit);
                out[variant].push(got.saturating_sub(released) as f64 / 1e3);
            }
        }
    }
    waiter.send("quit");
    waiter.wait_success(limit);
    out
}

/// The child process: waits for the lock each time it is told to, stamps
/// `CLOCK_MONOTONIC` where the wait returns, says so, and releases.
fn waiter_process() {
    let url = std::env::var(URL_VAR).expect("the server's URL");
    let rt = runtime();
    rt.block_on(async {
        let raw = raw_client(&url).await;
        let lock = raw.prepare("SELECT pg_advisory_lock($1)").await.unwrap();
        let unlock = raw.prepare("SELECT pg_advisory_unlock($1)").await.unwrap();
        let fenced = PgLocks::connect(&url).await.unwrap();
        let plain = PgLocks::connect_with(&url, PgOptions::default().fencing(false))
            .await
            .unwrap();
        let timeout = Duration::from_secs(10);
        let mut orders = child::orders();
        child::say("ready");
        while let Some(order) = orders.recv().await {
            match order.as_str() {
                "raw" => {
                    raw.query_one(&lock, &[&XP_KEY]).await.unwrap();
                    child::say(&format!("got {}", child::monotonic_ns()));
                    let _: bool = raw.query_one(&unlock, &[&XP_KEY]).await.unwrap().get(0);
                }
                "fenced" | "plain" => {
                    let locks = if order == "fenced" { &fenced } else { &plain };
                    let g = locks.acquire(XP_NAME, timeout).await.unwrap();
                    child::say(&format!("got {}", child::monotonic_ns()));
                    g.release().await.unwrap();
                }
                _ => break,
            }
            child::say("released");
        }
    });
}

fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The runtime of the bench and of its child process.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn per_op(start: Instant, ops: usize) -> f64 {
    start.elapsed().as_secs_f64() * 1e6 / ops as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_or_nan(v: Vec<f64>) -> f64 {
    if v.is_empty() { f64::NAN } else { median(v) }
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() * 9 / 10])
}

/// The waiter blocks in `pg_advisory_lock` on its own connection; the time
/// from the holder's unlock being sent to the waiter's grant arriving.
async fn raw_handoff(url: &str, n: usize) -> (f64, f64) {
    let holder = raw_client(url).await;
    let waiter = std::sync::Arc::new(raw_client(url).await);
    let admin = raw_client(url).await;
    let key: i64 = 0x4a4d;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        holder
            .query_one("SELECT pg_advisory_lock($1)", &[&key])
            .await
            .unwrap();
        let w = waiter.clone();
        let wait = tokio::spawn(async move {
            w.query_one("SELECT pg_advisory_lock($1)", &[&key])
                .await
                .unwrap();
            Instant::now()
        });
        wait_until_blocked(&admin).await;
        let released = Instant::now();
        holder
            .query_one("SELECT pg_advisory_unlock($1)", &[&key])
            .await
            .unwrap();
        let got = wait.await.unwrap();
        out.push(got.duration_since(released).as_secs_f64() * 1e6);
        waiter
            .query_one("SELECT pg_advisory_unlock($1)", &[&key])
            .await
            .unwrap();
    }
    percentiles(out)
}

/// The same hand-off through two lockyard clients (fencing on, as by
/// default).
async fn lockyard_handoff(url: &str, n: usize) -> (f64, f64) {
    let a = PgLocks::connect(url).await.unwrap();
    let b = PgLocks::connect(url).await.unwrap();
    let admin = raw_client(url).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let g = a.try_acquire("handoff").await.unwrap();
        let b2 = b.clone();
        let wait = tokio::spawn(async move {
            let g = b2
                .acquire("handoff", Duration::from_secs(10))
                .await
                .unwrap();
            (Instant::now(), g)
        });
        wait_until_blocked(&admin).await;
        let released = Instant::now();
        g.release().await.unwrap();
        let (got, g) = wait.await.unwrap();
        out.push(got.duration_since(released).as_secs_f64() * 1e6);
        g.release().await.unwrap();
    }
    percentiles(out)
}

/// Until some session waits on an advisory lock.
async fn wait_until_blocked(admin: &Client) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(Instant::now() < end, "the waiter never blocked");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
