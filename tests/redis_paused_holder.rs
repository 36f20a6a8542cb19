//! A holder paused past its lease (a "GC pause": SIGSTOP, then SIGCONT)
//! must see the lease lost at its very first look after it resumes, however
//! late the watchdog's timer runs: `is_lost()` from a task and from a plain
//! thread, and `run_until_lost`, compare the lease's deadline with the
//! clock when they are asked.
//!
//! Each test runs a child process (this binary, re-executed) that holds one
//! kind of lease round after round; the parent stops it past the lease,
//! resumes it, and asks it what its checks said around the pause. Every
//! timestamp is `CLOCK_MONOTONIC`, one clock for both processes.
#![cfg(feature = "redis")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockyard::redis::{RedisLocks, RedisOptions, Redlock};
use lockyard::{LockError, LockGuard};
use lockyard_testkit::child::{self, monotonic_ns};
use lockyard_testkit::redis::RedisServer;

/// The child's lease; the pause is several times longer.
const TTL: Duration = Duration::from_millis(300);
const PAUSE: Duration = Duration::from_millis(800);
/// How often the checks sample.
const EVERY: Duration = Duration::from_millis(2);
/// Bound on any one answer of the child.
const ANSWER: Duration = Duration::from_secs(20);

fn options() -> RedisOptions {
    RedisOptions::default()
        .ttl(TTL)
        .connect_timeout(Duration::from_secs(2))
        .op_timeout(Duration::from_millis(60))
}

/// A check's samples: when each began and ended, and whether it said
/// lost.
type Samples = Arc<Mutex<Vec<Sample>>>;

#[derive(Clone, Copy)]
struct Sample {
    began: u64,
    ended: u64,
    lost: bool,
}

impl Sample {
    /// Takes one sample of `check`, stamped on both sides: a stop can land
    /// between the stamp and the check, and a sample stamped before the
    /// stop whose check ran after the resume is neither before nor after.
    fn of(check: impl FnOnce() -> bool) -> Self {
        let began = monotonic_ns();
        let lost = check();
        Self {
            began,
            ended: monotonic_ns(),
            lost,
        }
    }

    fn word(self) -> &'static str {
        if self.lost { "lost" } else { "held" }
    }
}

/// Holds `guard` (whose acquire call began at `began`) while a task and a
/// thread sample `is_lost()` every 2 ms and a `run_until_lost` future
/// records when it runs, until the parent's `check STOP CONT` line; answers
/// `result BEFORE TASK THREAD LATE ACQUIRE_MS FIRST_LOST_MS`: the last two
/// say how long before `held` the acquire call began and when after `held`
/// a check first said lost (`-`: never), for a failure to explain itself.
async fn hold_and_report(
    guard: LockGuard,
    began: u64,
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let guard = Arc::new(guard);
    let task_samples: Samples = Arc::default();
    let thread_samples: Samples = Arc::default();
    let work_ran: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let sampler = {
        let (guard, samples) = (guard.clone(), task_samples.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tick.tick().await;
                let sample = Sample::of(|| guard.is_lost());
                samples.lock().unwrap().push(sample);
            }
        })
    };
    let thread = {
        let (lost, samples, stop) = (guard.lost(), thread_samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sample = Sample::of(|| lost.is_lost());
                samples.lock().unwrap().push(sample);
                std::thread::sleep(EVERY);
            }
        })
    };
    let work = {
        let (guard, ran) = (guard.clone(), work_ran.clone());
        tokio::spawn(async move {
            guard
                .run_until_lost(async {
                    loop {
                        ran.lock().unwrap().push(monotonic_ns());
                        tokio::time::sleep(EVERY).await;
                    }
                })
                .await
        })
    };
    let held_at = monotonic_ns();
    println!("held");

    let line = lines.recv().await.expect("a check line");
    let mut parts = line.split_whitespace();
    assert_eq!(parts.next(), Some("check"), "{line}");
    let stopped: u64 = parts.next().unwrap().parse().unwrap();
    let resumed: u64 = parts.next().unwrap().parse().unwrap();

    // The work must have ended with `Lost` by now (the lease is long gone).
    let outcome = tokio::time::timeout(ANSWER, work)
        .await
        .expect("run_until_lost ended")
        .unwrap();
    assert!(
        matches!(outcome, Err(LockError::Lost { .. })),
        "{outcome:?}"
    );
    sampler.abort();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    thread.join().unwrap();

    // Wholly before the stop, wholly after the resume.
    let last_before = |s: &Samples| {
        s.lock()
            .unwrap()
            .iter()
            .rev()
            .find(|x| x.ended < stopped)
            .map_or("none", |x| x.word())
    };
    let first_after = |s: &Samples| {
        s.lock()
            .unwrap()
            .iter()
            .find(|x| x.began > resumed)
            .map_or("none", |x| x.word())
    };
    let late_runs = work_ran
        .lock()
        .unwrap()
        .iter()
        .filter(|&&at| at > resumed)
        .count();
    let ms = |from: u64, to: u64| format!("{:.1}", to.saturating_sub(from) as f64 / 1e6);
    let first_lost = [&task_samples, &thread_samples]
        .iter()
        .filter_map(|s| s.lock().unwrap().iter().find(|x| x.lost).map(|x| x.ended))
        .min()
        .map_or_else(|| "-".to_owned(), |at| ms(held_at, at));
    println!(
        "result {} {} {} {late_runs} {} {first_lost}",
        last_before(&task_samples),
        first_after(&task_samples),
        first_after(&thread_samples),
        ms(began, held_at),
    );
    drop(guard);
}

/// The child: holds leases of one kind, round after round.
#[tokio::test]
async fn child_process_entry() {
    // The role is `KIND|ROUNDS|URL[,URL...]`.
    let Some(spec) = child::role() else {
        return;
    };
    // The watchdog's warnings (why a lease was lost) and debug lines (a
    // renewal that failed) go to the test's output with the parent's.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("lockyard=debug")
        .try_init();
    let mut it = spec.split('|');
    let kind = it.next().unwrap().to_owned();
    let rounds: u32 = it.next().unwrap().parse().unwrap();
    let urls: Vec<String> = it.next().unwrap().split(',').map(str::to_owned).collect();
    let mut lines = child::orders();
    let timeout = Duration::from_secs(5);
    if kind == "redlock" {
        let (redlock, _) = outage_retried(|| Redlock::connect(&urls, options())).await;
        for round in 0..rounds {
            let name = format!("p{round}");
            let (g, began) = outage_retried(|| redlock.acquire(&name, timeout)).await;
            hold_and_report(g.into(), began, &mut lines).await;
        }
        return;
    }
    let (client, _) = outage_retried(|| RedisLocks::connect_with(&urls[0], options())).await;
    for round in 0..rounds {
        let name = format!("p{round}");
        let (g, began): (LockGuard, u64) = match kind.as_str() {
            "lock" => {
                let (g, began) = outage_retried(|| client.acquire(&name, timeout)).await;
                (g.into(), began)
            }
            "semaphore" => {
                let sem = client.semaphore(&name, 2).unwrap();
                let (g, began) = outage_retried(|| sem.acquire(timeout)).await;
                (g.into(), began)
            }
            "read" => {
                let rw = client.rwlock(&name).unwrap();
                let (g, began) = outage_retried(|| rw.read(timeout)).await;
                (g.into(), began)
            }
            other => panic!("unknown kind {other}"),
        };
        hold_and_report(g, began, &mut lines).await;
    }
}

/// Runs `op` until it does not fail for an outage (an answer later than
/// the child's 60 ms op timeout, a Redlock server's 30 ms), at most 50
/// times, and returns its result with when the attempt that succeeded
/// began (`monotonic_ns`): on a loaded 2-core machine a setup step can
/// miss those timeouts (seen: every Redlock server "timed out" for one
/// acquisition, and "load scripts timed out" at connect), and what this
/// test checks comes after.
async fn outage_retried<T, F, Fut>(mut op: F) -> (T, u64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LockError>>,
{
    for attempt in 1.. {
        let began = monotonic_ns();
        match op().await {
            Ok(v) => return (v, began),
            Err(e)
                if attempt < 50
                    && (e.is_unavailable() || matches!(e, LockError::NoQuorum { .. })) =>
            {
                eprintln!("child: attempt {attempt} failed for an outage ({e}); again");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("child: {e:?}"),
        }
    }
    unreachable!("the loop returns or panics")
}

/// Runs `rounds` pauses of a `kind` holder; every round's first checks
/// after the resume must say lost, and the work under `run_until_lost` must
/// not run again.
fn pause_rounds(kind: &str, rounds: u32, urls: &[String]) {
    let mut holder = child::spawn(
        "child_process_entry",
        &format!("{kind}|{rounds}|{}", urls.join(",")),
        &[],
    );
    let mut failures = Vec::new();
    for round in 0..rounds {
        holder.wait_line("held", ANSWER);
        // Some samples that say held first.
        std::thread::sleep(Duration::from_millis(30));
        holder.signal(rustix::process::Signal::STOP);
        holder.wait_stopped();
        let stopped = monotonic_ns();
        std::thread::sleep(PAUSE);
        let resumed = monotonic_ns();
        holder.signal(rustix::process::Signal::CONT);
        // Let the checks run after the resume.
        std::thread::sleep(Duration::from_millis(50));
        holder.send(&format!("check {stopped} {resumed}"));
        let result = holder.wait_line("result", ANSWER);
        let fields: Vec<&str> = result.split_whitespace().collect();
        let (before, task, thread, late) = (fields[1], fields[2], fields[3], fields[4]);
        // (fields[5], fields[6]: the acquire's duration and the first lost
        // check, in ms around `held`, shown in the messages below.)
        assert_eq!(
            before, "held",
            "round {round}: the lease was not held before the pause: {result}"
        );
        // The work may show one run after the resume: the one whose poll a
        // stop interrupted after `run_until_lost` had looked (a poll cannot
        // be preempted). A second would be a poll begun after the deadline.
        let late: u32 = late.parse().unwrap();
        if task != "lost" || thread != "lost" || late > 1 {
            failures.push(format!(
                "round {round}: first task check {task}, first thread check {thread}, \
                 work ran {late} times after the resume ({result})"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{kind}: a holder resumed past its lease believed it held it in {} of {rounds} rounds:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn resumed_lock_holder_sees_lost_at_its_first_check() {
    let server = RedisServer::start();
    pause_rounds("lock", 20, &[server.url()]);
}

#[test]
fn resumed_permit_holder_sees_lost_at_its_first_check() {
    let server = RedisServer::start();
    pause_rounds("semaphore", 20, &[server.url()]);
}

#[test]
fn resumed_reader_sees_lost_at_its_first_check() {
    let server = RedisServer::start();
    pause_rounds("read", 5, &[server.url()]);
}

#[test]
fn resumed_redlock_holder_sees_lost_at_its_first_check() {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    pause_rounds("redlock", 5, &urls);
}

#[test]
fn resumed_cluster_lock_holder_sees_lost_at_its_first_check() {
    let cluster = lockyard_testkit::cluster::RedisCluster::start(3, 0);
    pause_rounds("lock", 5, &[cluster.url()]);
}
