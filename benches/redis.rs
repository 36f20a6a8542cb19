//! The Redis lock against its floors and rslock, in one run, against
//! private redis-servers on loopback: the measurement of record for the
//! Redis lock's bars.
//!
//! ```text
//! cargo bench --bench redis                   # everything, ~4 minutes
//! cargo bench --bench redis -- --quick        # criterion's part short
//! cargo build --release --example redis_instructions
//! LOCKYARD_BENCH_CALLGRIND=1 cargo bench --bench redis   # + the callgrind bar
//! cargo bench --bench redis --features tls    # + what TLS costs
//! ```
//!
//! Contenders, each on one multiplexed connection (lockyard with its
//! defaults: one connection, the watchdog, the in-process queue):
//! - **lockyard**: `RedisLocks::acquire` + `release`;
//! - **own floor**: lockyard's own protocol by hand (its `.lua` scripts,
//!   keys and owner value, no lease machinery; `lockyard_testkit::floor`);
//! - **fenced floor**: one script `SET NX PX` + `INCR`, one compare-and-
//!   delete + `PUBLISH` — the least a fenced lock that wakes waiters does;
//! - **plain floor**: `SET NX PX` + a Lua compare-and-delete;
//! - **rslock** (crates.io): `LockManager::acquire` + `release`, one server.
//!
//! Own / fenced is what lockyard's protocol costs the server; lockyard / own
//! is what its client costs.
//!
//! The measure of record is interleaved rounds: 12 rounds, each contender
//! running 400 ms per round, the start order rotating by one each round;
//! ratios are taken within a round, and printed as median [inter-quartile
//! range] over the rounds. Rows: 64 and 256 tasks, each task taking and
//! releasing its own name (ops/s; ratio lockyard / contender), each pinned
//! (redis-server on CPU 0, this process on CPU 1) and unpinned; sequential
//! acquire + release by one task (time: each slice's median operation, which
//! a preemption does not move; ratio lockyard / contender). Beside the
//! record, the pinned 64-task row again on a current-thread runtime (the
//! record's runtime has two workers, which pinning puts on one CPU; tokio's
//! default runtime gives a process confined to one CPU one worker). Then
//! the contended hand-off between two processes: a waiter child process
//! (this bench re-executed in a role) blocked in `acquire` (its
//! subscription confirmed with `PUBSUB NUMSUB`), the holder stamping
//! `CLOCK_MONOTONIC` before its release, the waiter where `acquire`
//! returns; against a raw hand-off by hand (holder `DEL` + `PUBLISH`,
//! waiter woken by its subscription, then `SET NX PX`), in interleaved
//! rounds. Then the bars, PASS/MISS each; the callgrind bar (client
//! instructions per acquire + release, `examples/redis_instructions.rs`)
//! when `LOCKYARD_BENCH_CALLGRIND=1` and valgrind and the example's release
//! build are there, else how to run it; and the watchdog's cost for 10,000
//! held locks.
//!
//! Criterion's figures (sequential, 64 tasks) come first, for the record
//! of criterion's history; they run one contender after another, so on a
//! loaded machine the rounds, not they, are the ratios to quote.

use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard_testkit::bench::{allowed_cpus, load_average, median_iqr, pin_process, quartiles};
use lockyard_testkit::child::{self, monotonic_ns};
use lockyard_testkit::floor::{Floor, RawWaiter, TOKEN};
use lockyard_testkit::redis::RedisServer;
use lockyard_testkit::{LIMIT, bounded};
use tokio::runtime::Runtime;

const TTL: Duration = Duration::from_secs(30);
/// Interleaved rounds per row, and each contender's slice of a round.
const ROUNDS: usize = 12;
const SLICE: Duration = Duration::from_millis(400);
/// Unmeasured, before a row: connections warm, tasks spawned once.
const WARM_UP: Duration = Duration::from_millis(100);
/// The pinned rows: redis-server here, this process there.
const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;
/// Hand-offs: rounds, and hand-offs of each variant per round.
const HANDOFF_ROUNDS: usize = 12;
const HANDOFFS: usize = 20;
/// Criterion's 64-task iterations: each task takes its name this often.
const OPS_PER_TASK: usize = 20;

/// The role of the hand-off's waiter process, and where it connects.
const WAITER_ROLE: &str = "redis-bench-waiter";
const URL_VAR: &str = "LOCKYARD_BENCH_REDIS_URL";

/// The contenders, in the order of [`Contenders`].
const NAMES: [&str; 5] = [
    "lockyard",
    "own floor",
    "fenced floor",
    "plain floor",
    "rslock",
];
const LOCKYARD: usize = 0;
const OWN: usize = 1;
const FENCED: usize = 2;
const PLAIN: usize = 3;
const RSLOCK: usize = 4;

type Contenders = [Contender; 5];
/// One figure per contender (ops/s) for each round.
type Rounds = Vec<[f64; 5]>;

fn main() {
    if child::role().as_deref() == Some(WAITER_ROLE) {
        return waiter();
    }
    let load_before = load_average();
    let cpus = allowed_cpus_at_start();
    let pinning = cpus.contains(&SERVER_CPU) && cpus.contains(&CLIENT_CPU);
    let server = RedisServer::start();
    let pinned_server = pinning.then(|| RedisServer::start_on_cpu(SERVER_CPU));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = server.url();
    let free = rt.block_on(Contender::connect_all(&url));
    let pinned = pinned_server
        .as_ref()
        .map(|s| rt.block_on(Contender::connect_all(&s.url())));

    // Defaults first, so that `--measurement-time` etc. on the command
    // line override them.
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .configure_from_args();
    criterion_groups(&mut c, &rt, &free);
    c.final_summary();

    println!();
    println!(
        "interleaved rounds: {ROUNDS} rounds of {} ms per contender, start order rotating; median [IQR] over rounds",
        SLICE.as_millis()
    );
    let seq = run_row(&rt, &free, 1, None);
    print_row(
        "sequential acquire+release, 1 task (each slice's median operation)",
        &[("", &seq)],
        true,
    );
    let mut tasks_rows = Vec::new();
    for tasks in [64, 256] {
        let pinned_rounds = pinned.as_ref().map(|p| {
            let pid = pinned_server.as_ref().and_then(RedisServer::pid);
            run_row(&rt, p, tasks, pid)
        });
        let free_rounds = run_row(&rt, &free, tasks, None);
        let mut rows = Vec::new();
        if let Some(p) = &pinned_rounds {
            rows.push(("pinned", p));
        }
        rows.push(("unpinned", &free_rounds));
        print_row(&format!("{tasks} tasks, each its own name"), &rows, false);
        tasks_rows.push((tasks, pinned_rounds, free_rounds));
    }
    // Beside the record: the pinned 64-task row on a current-thread runtime
    // (the record's runtime has two workers, which the pinned rows put on
    // one CPU; tokio's default runtime in a process confined to one CPU has
    // one). Its own connections: a connection's driver task runs on the
    // runtime that opened it.
    let current = pinned_server.as_ref().map(|s| {
        let ct = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let all = ct.block_on(Contender::connect_all(&s.url()));
        let rounds = run_row(&ct, &all, 64, s.pid());
        print_row(
            "64 tasks, each its own name, on a current-thread runtime (beside the record)",
            &[("pinned", &rounds)],
            false,
        );
        rounds
    });
    let handoff = run_handoffs(&rt, &url);
    handoff.print();
    println!();
    print_bars(&seq, &tasks_rows, &handoff);
    if let Some(rounds) = &current {
        let ratio = |den: usize| median_iqr(&per_round(rounds, |r| r[LOCKYARD] / r[den]), 3);
        println!(
            "  beside:   pinned, current-thread runtime, 64 tasks: lockyard / own floor {}, lockyard / fenced floor {}, lockyard / rslock {}",
            ratio(OWN),
            ratio(FENCED),
            ratio(RSLOCK)
        );
    }
    callgrind_bar(&url);
    #[cfg(feature = "tls")]
    report_tls_overhead(&rt);
    report_renewal_cost(&rt, &url);
    println!(
        "load average (uptime): {load_before} before, {} after; {} CPUs allowed; pinned rows {}",
        load_average(),
        cpus.len(),
        if pinning {
            "run"
        } else {
            "skipped (needs CPUs 0 and 1)"
        }
    );
}

/// One contender, cheap to clone (every clone shares its connection).
#[derive(Clone)]
enum Contender {
    Lockyard(RedisLocks),
    Floor(Floor),
    Rslock(rslock::LockManager),
}

impl Contender {
    /// Every contender, connected to `url`, in the order of [`NAMES`].
    async fn connect_all(url: &str) -> Contenders {
        let locks = RedisLocks::connect_with(url, RedisOptions::default().ttl(TTL))
            .await
            .unwrap();
        [
            Contender::Lockyard(locks),
            Contender::Floor(Floor::connect_own(url, TTL).await),
            Contender::Floor(Floor::connect_fenced(url, TTL).await),
            Contender::Floor(Floor::connect(url, TTL).await),
            Contender::Rslock(rslock::LockManager::new(vec![url.to_owned()])),
        ]
    }

    /// The name task `t` takes: each contender has names of its own.
    fn name(&self, t: usize) -> String {
        match self {
            Contender::Lockyard(_) => format!("bench-t{t}"),
            Contender::Floor(_) => format!("bench:floor:t{t}"),
            Contender::Rslock(_) => format!("bench:rslock:t{t}"),
        }
    }

    /// Takes `name` (free) and releases it.
    async fn cycle(&mut self, name: &str) {
        match self {
            Contender::Lockyard(locks) => {
                let g = locks.acquire(name, TTL).await.unwrap();
                g.release().await.unwrap();
            }
            Contender::Floor(floor) => floor.acquire_release(name, TOKEN).await,
            Contender::Rslock(manager) => {
                let g = manager.acquire(name, TTL).await.unwrap();
                g.release().await;
            }
        }
    }
}

/// `tasks` tasks, each taking and releasing its own name until `len` has
/// passed (or `ops` times, if given): operations per second.
///
/// One task (the sequential row) is timed operation by operation and gives
/// 1 / its median operation's time: a preemption by another process on
/// this shared machine moves a mean by whole milliseconds, a median not.
async fn slice(c: &Contender, tasks: usize, len: Duration, ops: Option<usize>) -> f64 {
    let start = Instant::now();
    let end = start + len;
    if tasks == 1 && ops.is_none() {
        let mut c = c.clone();
        let times = tokio::spawn(async move {
            let name = c.name(0);
            let mut times = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                c.cycle(&name).await;
                times.push(t.elapsed().as_secs_f64());
            }
            times
        });
        return 1.0 / quartiles(&mut times.await.unwrap())[1];
    }
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let name = c.name(t);
                let mut done = 0;
                while ops.map_or(Instant::now() < end, |ops| done < ops) {
                    c.cycle(&name).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for h in handles {
        done += h.await.unwrap();
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn criterion_groups(c: &mut Criterion, rt: &Runtime, all: &Contenders) {
    for (group, tasks, ops) in [
        ("redis_uncontended", 1, 1),
        ("redis_64_tasks", 64, OPS_PER_TASK),
    ] {
        let mut g = c.benchmark_group(group);
        if tasks > 1 {
            g.throughput(Throughput::Elements((tasks * ops) as u64));
        }
        for (label, contender) in NAMES.iter().zip(all) {
            g.bench_function(label.replace(' ', "_"), |b| {
                b.to_async(rt).iter_custom(|iters| {
                    let mut c = contender.clone();
                    async move {
                        let name = c.name(0);
                        let start = Instant::now();
                        for _ in 0..iters {
                            if tasks == 1 {
                                c.cycle(&name).await;
                            } else {
                                slice(&c, tasks, Duration::ZERO, Some(ops)).await;
                            }
                        }
                        start.elapsed()
                    }
                })
            });
        }
        g.finish();
    }
}

/// One row: [`ROUNDS`] rounds, each contender running `tasks` tasks for
/// [`SLICE`], the start order rotating. With `server`'s pid, pinned: the
/// server on [`SERVER_CPU`] (where it was started) and every thread of this
/// process on [`CLIENT_CPU`] for the row.
fn run_row(rt: &Runtime, all: &Contenders, tasks: usize, server: Option<u32>) -> Rounds {
    if let Some(pid) = server {
        pin_process(Some(pid), &[SERVER_CPU]).expect("pin redis-server");
        pin_process(None, &[CLIENT_CPU]).expect("pin the client");
    }
    let rounds = rt.block_on(async {
        for c in all {
            slice(c, tasks, WARM_UP, None).await;
        }
        let mut rounds = Vec::with_capacity(ROUNDS);
        for r in 0..ROUNDS {
            let mut ops = [0.0; 5];
            for k in 0..NAMES.len() {
                let i = (r + k) % NAMES.len();
                ops[i] = slice(&all[i], tasks, SLICE, None).await;
            }
            rounds.push(ops);
        }
        rounds
    });
    if server.is_some() {
        pin_process(None, &allowed_cpus_at_start()).expect("unpin the client");
    }
    rounds
}

/// The CPUs this process was allowed at start (first called before any
/// pinning): what a pinned row widens the client back to.
fn allowed_cpus_at_start() -> Vec<usize> {
    static AT_START: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    AT_START.get_or_init(allowed_cpus).clone()
}

/// Per round, `f(round)`.
fn per_round(rounds: &Rounds, f: impl Fn(&[f64; 5]) -> f64) -> Vec<f64> {
    rounds.iter().map(f).collect()
}

/// Throughput ratio lockyard / contender `i`, per round (for the
/// sequential row, the time ratio lockyard / contender: the inverse).
fn lockyard_over(rounds: &Rounds, i: usize, time: bool) -> Vec<f64> {
    per_round(rounds, |r| {
        if time {
            r[i] / r[LOCKYARD]
        } else {
            r[LOCKYARD] / r[i]
        }
    })
}

/// A row's figures: per contender ops/s (or with `time`, µs per
/// operation) and the ratio lockyard / it, pinned (if run) and unpinned.
fn print_row(title: &str, rows: &[(&str, &Rounds)], time: bool) {
    println!("\n{title}");
    let what = if time {
        "µs per acquire+release     lockyard time / it"
    } else {
        "ops/s                      lockyard / it (throughput)"
    };
    for &(label, rounds) in rows {
        if time {
            println!("  {what}");
        } else {
            println!("  {label} {what}");
        }
        for (i, name) in NAMES.iter().enumerate() {
            let figure = if time {
                median_iqr(&per_round(rounds, |r| 1e6 / r[i]), 1)
            } else {
                median_iqr(&per_round(rounds, |r| r[i]), 0)
            };
            let ratio = if i == LOCKYARD {
                String::new()
            } else {
                median_iqr(&lockyard_over(rounds, i, time), 3)
            };
            println!("    {name:<13} {figure:<26} {ratio}");
        }
    }
}

/// The contended hand-offs between two processes, in nanoseconds.
struct Handoffs {
    lockyard: Vec<f64>,
    raw: Vec<f64>,
    /// Per round: lockyard's p50 / raw p50.
    ratios: Vec<f64>,
}

impl Handoffs {
    fn p(v: &[f64], q: f64) -> f64 {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    fn p50_ratio(&self) -> f64 {
        Self::p(&self.lockyard, 0.5) / Self::p(&self.raw, 0.5)
    }

    fn print(&self) {
        println!(
            "\ncontended hand-off between two processes ({HANDOFF_ROUNDS} rounds x {HANDOFFS} of each, interleaved; holder's stamp before release -> waiter's where acquire returns):"
        );
        for (name, v) in [("lockyard", &self.lockyard), ("raw", &self.raw)] {
            println!(
                "  {name:<9} p50 {:>7.1} µs  p90 {:>7.1} µs",
                Self::p(v, 0.5) / 1e3,
                Self::p(v, 0.9) / 1e3
            );
        }
        println!(
            "  lockyard p50 / raw p50: {:.3} over all; per round {}",
            self.p50_ratio(),
            median_iqr(&self.ratios, 3)
        );
    }
}

/// Hand-offs to a waiter process, lockyard's and raw ones by turns.
fn run_handoffs(rt: &Runtime, url: &str) -> Handoffs {
    let mut waiter = child::spawn_role(WAITER_ROLE, &[(URL_VAR, url.to_owned())]);
    waiter.wait_line("ready", LIMIT);
    let handoffs = rt.block_on(async {
        let holder = lockyard_testkit::redis::client(url, TTL).await;
        let mut raw_holder = Floor::connect(url, TTL).await;
        let mut probe = Floor::connect(url, TTL).await;
        let mut out = Handoffs {
            lockyard: Vec::new(),
            raw: Vec::new(),
            ratios: Vec::new(),
        };
        let mut n = 0;
        for r in 0..HANDOFF_ROUNDS {
            let (mut ours, mut raw) = (Vec::new(), Vec::new());
            for variant in [r % 2, 1 - r % 2] {
                for _ in 0..HANDOFFS {
                    n += 1;
                    let name = format!("bench-handoff-{n}");
                    if variant == 0 {
                        let channel = format!("lockyard:{{{name}}}:released");
                        let g = holder.acquire(&name, TTL).await.unwrap();
                        waiter.send(&format!("lockyard {name}"));
                        let released = blocked_then(&mut probe, &channel, async {
                            let at = monotonic_ns();
                            g.release().await.unwrap();
                            at
                        })
                        .await;
                        ours.push(acquired_at(&mut waiter).saturating_sub(released) as f64);
                    } else {
                        let channel = format!("{name}:released");
                        assert!(raw_holder.take(&name).await);
                        waiter.send(&format!("raw {name}"));
                        waiter.wait_line("waiting", LIMIT);
                        let released = blocked_then(&mut probe, &channel, async {
                            let at = monotonic_ns();
                            raw_holder.del_publish(&name, &channel).await;
                            at
                        })
                        .await;
                        raw.push(acquired_at(&mut waiter).saturating_sub(released) as f64);
                    }
                }
            }
            out.ratios
                .push(Handoffs::p(&ours, 0.5) / Handoffs::p(&raw, 0.5));
            out.lockyard.extend(ours);
            out.raw.extend(raw);
        }
        holder.shutdown().await;
        out
    });
    waiter.send("exit");
    handoffs
}

/// Once the waiter is subscribed to `channel` (its first attempt refused),
/// and 2 ms more for its retry after subscribing to be refused too, runs
/// `release` (which stamps and releases).
async fn blocked_then(
    probe: &mut Floor,
    channel: &str,
    release: impl std::future::Future<Output = u64>,
) -> u64 {
    let subscribed = async {
        while probe.subscribers(channel).await < 1 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    };
    bounded(subscribed).await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    release.await
}

/// The waiter's `acquired <ns>` line: its `CLOCK_MONOTONIC` stamp.
fn acquired_at(waiter: &mut child::Child) -> u64 {
    let line = waiter.wait_line("acquired ", LIMIT);
    line["acquired ".len()..].trim().parse().unwrap()
}

/// The waiter process: takes orders `lockyard NAME` and `raw NAME`, waits
/// for the lock, and answers `acquired <CLOCK_MONOTONIC ns>` stamped where
/// its acquisition returned; `raw` says `waiting` after its first refusal.
fn waiter() {
    let url = std::env::var(URL_VAR).expect("the server's URL");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let locks = lockyard_testkit::redis::client(&url, TTL).await;
        let mut raw = RawWaiter::connect(&url, TTL).await;
        let mut orders = child::orders();
        child::say("ready");
        while let Some(order) = orders.recv().await {
            let Some((kind, name)) = order.split_once(' ') else {
                break;
            };
            let at = if kind == "lockyard" {
                let g = locks.acquire(name, LIMIT).await.unwrap();
                let at = monotonic_ns();
                g.release().await.unwrap();
                at
            } else {
                let channel = format!("{name}:released");
                assert!(!raw.subscribe_and_take(name, &channel).await, "{name} free");
                child::say("waiting");
                raw.wait_take(name, &channel, LIMIT).await;
                let at = monotonic_ns();
                raw.give_back(name, &channel).await;
                at
            };
            child::say(&format!("acquired {at}"));
        }
        locks.shutdown().await;
    });
}

/// A bar's verdict.
fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn print_bars(seq: &Rounds, tasks_rows: &[(usize, Option<Rounds>, Rounds)], handoff: &Handoffs) {
    println!(
        "bars (medians of per-round ratios [IQR]; the pinned figure is the record, unpinned beside):"
    );
    let median = |v: Vec<f64>| quartiles(&mut v.clone())[1];
    // (label, contender, at least (throughput) or at most (time), bar)
    let throughput_bar = |what: &str, tasks: usize, num: usize, den: usize, bar: f64| {
        let Some((_, pinned, free)) = tasks_rows.iter().find(|r| r.0 == tasks) else {
            return;
        };
        let ratio = |rounds: &Rounds| per_round(rounds, |r| r[num] / r[den]);
        let record = pinned.as_ref().unwrap_or(free);
        let m = median(ratio(record));
        println!(
            "  {what:<9} {} >= {bar}x {} at {tasks} tasks: {} {}{}",
            NAMES[num],
            NAMES[den],
            median_iqr(&ratio(record), 3),
            verdict(m >= bar),
            if pinned.is_some() {
                format!(" (unpinned {})", median_iqr(&ratio(free), 3))
            } else {
                " (unpinned: no pinned row)".to_owned()
            }
        );
    };
    let time_bar = |what: &str, den: usize, bar: f64| {
        let v = lockyard_over(seq, den, true);
        let m = median(v.clone());
        println!(
            "  {what:<9} sequential lockyard <= {bar}x {}'s time: {} {}",
            NAMES[den],
            median_iqr(&v, 3),
            verdict(m <= bar)
        );
    };
    throughput_bar("client:", 64, LOCKYARD, OWN, 0.95);
    throughput_bar("client:", 256, LOCKYARD, OWN, 0.95);
    time_bar("client:", OWN, 1.05);
    throughput_bar("protocol:", 64, OWN, FENCED, 0.9);
    throughput_bar("together:", 64, LOCKYARD, FENCED, 0.85);
    time_bar("together:", PLAIN, 1.10);
    println!(
        "  hand-off: lockyard p50 <= 1.5x raw p50: {:.3} {} (per round {})",
        handoff.p50_ratio(),
        verdict(handoff.p50_ratio() <= 1.5),
        median_iqr(&handoff.ratios, 3)
    );
    let beside = |rounds: &Rounds, time: bool| median_iqr(&lockyard_over(rounds, RSLOCK, time), 3);
    let mut line = format!(
        "  beside:   lockyard / rslock: sequential time {}",
        beside(seq, true)
    );
    for (tasks, pinned, free) in tasks_rows {
        line.push_str(&format!(
            ", {tasks} tasks throughput {}",
            beside(pinned.as_ref().unwrap_or(free), false)
        ));
    }
    println!("{line}");
}

/// The callgrind bar: client instructions per acquire + release, lockyard
/// against the fenced floor (`examples/redis_instructions.rs`), run when
/// `LOCKYARD_BENCH_CALLGRIND=1` and valgrind and the example's release
/// build are there.
fn callgrind_bar(url: &str) {
    const BAR: f64 = 1.2;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let example = target.join("release/examples/redis_instructions");
    let how = "cargo build --release --example redis_instructions && LOCKYARD_BENCH_CALLGRIND=1 cargo bench --bench redis (or by hand: the example's docs)";
    let asked = std::env::var("LOCKYARD_BENCH_CALLGRIND").is_ok_and(|v| v == "1");
    let valgrind = Command::new("valgrind").arg("--version").output().is_ok();
    if !asked || !valgrind || !example.exists() {
        println!(
            "  callgrind: client instructions per acquire+release <= {BAR}x the fenced floor's: not run ({}); run: {how}",
            if !asked {
                "LOCKYARD_BENCH_CALLGRIND=1 not set"
            } else if !valgrind {
                "no valgrind"
            } else {
                "no release build of the example"
            }
        );
        return;
    }
    // One count from callgrind's summary (`I   refs:`, `I1  misses:`) of
    // `n` acquire+release pairs by `who` on `tasks` tasks, with `extra`
    // valgrind arguments.
    let count = |who: &str, n: u64, tasks: u64, extra: &[&str], what: &str| -> f64 {
        let out = Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .args(extra)
            .arg(&example)
            .args([url, who, &n.to_string(), &tasks.to_string()])
            .output()
            .expect("run valgrind");
        let text = String::from_utf8_lossy(&out.stderr);
        let line = text
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no `{what}` in callgrind's output:\n{text}"));
        let digits: String = line
            .split(what)
            .nth(1)
            .unwrap_or("")
            .split('(')
            .next()
            .unwrap_or("")
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        digits.parse().expect("a count")
    };
    // Connecting and warming up cancel out in the difference.
    let per_op = |who: &str| {
        (count(who, 3000, 1, &[], "refs:") - count(who, 1000, 1, &[], "refs:")) / 2000.0
    };
    let (floor, own, ours) = (per_op("floor"), per_op("own"), per_op("lockyard"));
    let blocking = per_op("lockyard-acquire");
    let untimed = per_op("own-untimed");
    println!(
        "  callgrind: client instructions per acquire+release: fenced floor {floor:.0}, own floor {own:.0}, lockyard {ours:.0}; lockyard / fenced floor {:.3} (bar <= {BAR}) {}, lockyard / own floor {:.3}",
        ours / floor,
        verdict(ours / floor <= BAR),
        ours / own
    );
    println!(
        "  callgrind: the same with a blocking acquire (a deadline, the in-process queue's check): lockyard {blocking:.0}, / fenced floor {:.3}, / own floor {:.3}",
        blocking / floor,
        blocking / own
    );
    println!(
        "  callgrind: the own floor without redis-rs's timer per request (what that timer costs any client): {untimed:.0}; lockyard / it {:.3}",
        ours / untimed
    );
    // Where the client's time goes beyond its instructions: instruction
    // cache misses, the 64-task row's load on one thread (each task its own
    // name, as the bench's contender makes its handles), with a simulated
    // 32 KB L1i: 8-way, as common hardware has (a code layout change moves
    // it by tens of misses either way), and fully associative, which counts
    // the distinct code lines an operation touches whatever the layout.
    // The client's CPU time per operation above the floor's is close to the
    // extra misses times an L2 hit (~14 cycles); see the README.
    let misses = |who: &str, ways: u32| {
        let cache = format!("--I1=32768,{ways},64");
        let extra = ["--cache-sim=yes", cache.as_str()];
        (count(who, 3072, 64, &extra, "I1  misses:") - count(who, 1024, 64, &extra, "I1  misses:"))
            / 2048.0
    };
    for (ways, how) in [(8, "8-way"), (512, "fully associative")] {
        let (own, ours) = (misses("own", ways), misses("lockyard-named", ways));
        println!(
            "  callgrind: I1 misses per acquire+release, 64 tasks, 32 KB L1i {how}: own floor {own:.0}, lockyard {ours:.0} ({:.2}x)",
            ours / own.max(1.0)
        );
    }
}

/// Uncontended acquire + release over TLS and over TCP, each against its
/// floor: one operation of each of the four in turn (the order rotating),
/// each timed alone, so that load from other processes falls on all four
/// alike; the ratio of medians (lockyard / floor over TLS) / (lockyard /
/// floor over TCP) is what TLS costs lockyard beyond what it costs any
/// client. Medians of single operations, not sums: a preempted operation
/// moves a sum, not a median.
#[cfg(feature = "tls")]
fn report_tls_overhead(rt: &Runtime) {
    use lockyard_testkit::tls::{ServerTls, TlsFiles};
    const OPS: usize = 4000;
    const WARM_UP: usize = 200;
    let files = TlsFiles::generate();
    let tls_server = RedisServer::start_tls(&ServerTls::new(&files));
    let tcp_server = RedisServer::start();
    let (tls_url, tcp_url) = (tls_server.url(), tcp_server.url());
    let (mut floors, lockss) = rt.block_on(async {
        let tls_locks = RedisLocks::connect_with(
            &tls_url,
            RedisOptions::default().ttl(TTL).tls_ca(files.ca()),
        )
        .await
        .unwrap();
        (
            [
                Floor::connect(&tcp_url, TTL).await,
                Floor::connect_tls(&tls_url, &files.ca(), TTL).await,
            ],
            [
                lockyard_testkit::redis::client(&tcp_url, TTL).await,
                tls_locks,
            ],
        )
    });
    // [floor over TCP, lockyard over TCP, floor over TLS, lockyard over TLS]
    let mut times: [Vec<f64>; 4] = Default::default();
    rt.block_on(async {
        for i in 0..WARM_UP + OPS {
            for k in 0..4 {
                let which = (i + k) % 4;
                let t = Instant::now();
                if which % 2 == 0 {
                    floors[which / 2]
                        .acquire_release("bench:floor:tls", TOKEN)
                        .await;
                } else {
                    let g = lockss[which / 2].acquire("bench-tls", TTL).await.unwrap();
                    g.release().await.unwrap();
                }
                if i >= WARM_UP {
                    times[which].push(t.elapsed().as_secs_f64());
                }
            }
        }
    });
    let [f_tcp, l_tcp, f_tls, l_tls] = times.each_mut().map(|v| quartiles(v)[1]);
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

/// The watchdog's cost: round trips per renewal period for 10,000 held
/// locks.
fn report_renewal_cost(rt: &Runtime, url: &str) {
    const HELD: usize = 10_000;
    let ttl = Duration::from_secs(3);
    rt.block_on(async {
        let locks = lockyard_testkit::redis::client(url, ttl).await;
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
        drop(guards);
    });
}
