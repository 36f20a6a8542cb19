//! The Redis semaphore against private redis-servers: the bound across
//! tasks, clients and processes, crashed holders, fencing, loss, wakeups,
//! cancellation.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard::{AcquireOptions, Lock, LockError, Mode};
use lockyard_testkit::redis::{RedisServer, client};
use lockyard_testkit::{LIMIT, bounded};
use lockyard_testkit::{child, eventually_within};

#[tokio::test]
async fn basics_and_bad_input() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_secs(10)).await;
    assert!(a.semaphore("s", 0).unwrap_err().is_invalid_input());
    assert!(matches!(
        a.semaphore("a{b}", 2).unwrap_err(),
        LockError::InvalidName { .. }
    ));
    let sem = a.semaphore("s", 2).unwrap();
    assert_eq!((sem.name(), sem.permits()), ("s", 2));

    let p1 = bounded(sem.try_acquire()).await.unwrap();
    let p2 = bounded(sem.acquire(Duration::from_secs(1))).await.unwrap();
    assert!(p2.fencing_token() > p1.fencing_token());
    assert_eq!(sem.holders().await.unwrap(), 2);
    let listed = a.list().await.unwrap();
    let info = listed.iter().find(|i| i.name == "s").expect("listed");
    assert_eq!((info.kind, info.holders), ("semaphore", 2));
    assert_eq!(info.fencing_token, Some(p2.fencing_token()));
    assert!(info.ttl.is_some_and(|t| t <= Duration::from_secs(10)));
    let err = sem.try_acquire().await.unwrap_err();
    assert!(err.is_would_block(), "{err}");
    // Waiters are told who holds it (the permit that expires first).
    let holder = err.holder().expect("holder named");
    assert_eq!(holder.pid, std::process::id());
    let err = sem.acquire(Duration::from_millis(50)).await.unwrap_err();
    assert!(err.is_timeout() && err.holder().is_some(), "{err}");
    // Some(ZERO) tries once and times out.
    let err = sem
        .acquire_with(&AcquireOptions::new().timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");

    bounded(p1.release()).await.unwrap();
    assert_eq!(sem.holders().await.unwrap(), 1);
    drop(p2); // released by a background task
    eventually_within(
        "dropped permit released",
        Duration::from_secs(5),
        || async { sem.holders().await.unwrap() == 0 },
    )
    .await;
}

#[tokio::test]
async fn lock_trait_takes_one_permit_in_either_mode() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_secs(10)).await;
    let sem: Arc<dyn Lock> = Arc::new(a.semaphore("t", 2).unwrap());
    assert_eq!(sem.name(), "t");
    assert!(!sem.is_locked().await.unwrap());
    let g1 = bounded(sem.lock(&AcquireOptions::exclusive()))
        .await
        .unwrap();
    assert_eq!(g1.mode(), Mode::Exclusive);
    let g2 = bounded(sem.try_lock(Mode::Shared)).await.unwrap();
    assert_eq!(g2.mode(), Mode::Shared);
    assert!(g2.fencing_token().unwrap() > g1.fencing_token().unwrap());
    assert!(sem.is_locked().await.unwrap());
    assert!(
        sem.try_lock(Mode::Exclusive)
            .await
            .unwrap_err()
            .is_would_block()
    );
    g1.release().await.unwrap();
    g2.release().await.unwrap();
    assert!(!sem.is_locked().await.unwrap());
}

/// Many tasks over several clients (as several processes would): never more
/// than `permits` inside at once, and all permits do get used together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_never_exceeded_across_tasks_and_clients() {
    let server = RedisServer::start();
    let permits = 3;
    let inside = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..3 {
        let locks = client(&server.url(), Duration::from_secs(10)).await;
        for _ in 0..6 {
            let sem = locks.semaphore("bound", permits).unwrap();
            let (inside, max_seen) = (inside.clone(), max_seen.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..8 {
                    let p = sem.acquire(Duration::from_secs(20)).await.unwrap();
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    max_seen.fetch_max(now, Ordering::SeqCst);
                    assert!(
                        now <= permits as usize,
                        "{now} holders of {permits} permits"
                    );
                    tokio::time::sleep(Duration::from_millis(2 + (i + c) % 3)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    p.release().await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        bounded(t).await.unwrap();
    }
    let max = max_seen.load(Ordering::SeqCst);
    assert!(max <= permits as usize);
    assert!(max > 1, "permits were never used concurrently (max {max})");
}

/// Child roles (does nothing when run by the test harness directly):
/// `bound|URL|rounds` counts holders in a Redis key and fails on excess;
/// `hold|URL` takes a permit, says so, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_role() {
    let Some(spec) = child::role() else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    match parts[0] {
        "bound" => {
            let (url, rounds): (&str, u32) = (parts[1], parts[2].parse().unwrap());
            let locks = client(url, Duration::from_secs(5)).await;
            let redis = redis::Client::open(url).unwrap();
            let mut tasks = Vec::new();
            for _ in 0..3 {
                let sem = locks.semaphore("xproc", 2).unwrap();
                let redis = redis.clone();
                tasks.push(tokio::spawn(async move {
                    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
                    for _ in 0..rounds {
                        let p = bounded(sem.acquire(Duration::from_secs(20))).await.unwrap();
                        let n: i64 = redis::cmd("INCR")
                            .arg("inside")
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        assert!(n <= 2, "{n} holders of 2 permits across processes");
                        let _: i64 = redis::cmd("INCR")
                            .arg("total")
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        let _: i64 = redis::cmd("RPUSH")
                            .arg("fences")
                            .arg(p.fencing_token())
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let _: i64 = redis::cmd("DECR")
                            .arg("inside")
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        p.release().await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
        "hold" => {
            let locks = client(parts[1], Duration::from_millis(600)).await;
            let sem = locks.semaphore("crash", 1).unwrap();
            let permit = bounded(sem.acquire(Duration::from_secs(10))).await.unwrap();
            println!("HOLDING {}", permit.fencing_token());
            // Renewed by the watchdog until the parent kills us.
            tokio::time::sleep(LIMIT).await;
            drop(permit);
        }
        other => panic!("unknown role {other}"),
    }
}

fn child(spec: String) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::from(child::command("child_process_role", &spec, &[]));
    cmd.kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn bound_never_exceeded_across_processes() {
    let server = RedisServer::start();
    let rounds = 15;
    // A child fails if it saw the bound exceeded.
    let roles = vec![format!("bound|{}|{rounds}", server.url()); 3];
    child::run_all("child_process_role", &roles, Duration::from_secs(60)).await;
    assert_eq!(
        server.command(&["GET", "total"]),
        (3 * 3 * rounds).to_string()
    );
    assert_eq!(server.command(&["GET", "inside"]), "0");
    // Every holder across the processes got its own fencing token (one
    // `INCR` per acquisition): no two holders share one.
    let raw = redis::Client::open(server.url()).unwrap();
    let mut conn = raw.get_multiplexed_async_connection().await.unwrap();
    let fences: Vec<u64> = redis::cmd("LRANGE")
        .arg("fences")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut unique = fences.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(fences.len(), 3 * 3 * rounds as usize);
    assert_eq!(
        unique.len(),
        fences.len(),
        "a fencing token was issued twice"
    );
}

/// A holder killed with SIGKILL cannot release or renew: its permit comes
/// back by itself once its TTL (600 ms) has passed, and not before.
#[tokio::test]
async fn crashed_holders_permit_comes_back_after_its_ttl() {
    use tokio::io::AsyncBufReadExt;
    let server = RedisServer::start();
    let mut holder = child(format!("hold|{}", server.url()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(holder.stdout.take().unwrap()).lines();
    let fence: u64 = loop {
        let line = bounded(lines.next_line())
            .await
            .unwrap()
            .expect("child output");
        // The harness prints `test child_process_role ... ` before it.
        if let Some((_, f)) = line.split_once("HOLDING ") {
            break f.trim().parse().unwrap();
        }
    };
    // The watchdog keeps it alive well past one TTL while the child lives.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let locks = client(&server.url(), Duration::from_secs(5)).await;
    let sem = locks.semaphore("crash", 1).unwrap();
    assert!(sem.try_acquire().await.unwrap_err().is_would_block());

    holder.start_kill().unwrap();
    holder.wait().await.unwrap();
    let killed = Instant::now();
    // Its last renewal was at most a third of the TTL ago: still held.
    assert!(sem.try_acquire().await.unwrap_err().is_would_block());
    let p = bounded(sem.acquire(Duration::from_secs(10))).await.unwrap();
    let took = killed.elapsed();
    assert!(p.fencing_token() > fence);
    // Not before the lease could have run out (it was renewed at most a
    // TTL ago), and not much after: the waiter woke at the lease's end.
    assert!(took <= Duration::from_secs(3), "took {took:?}");
}

/// With a 30 s lease, a waiter only gets the permit quickly if the release
/// message woke it.
#[tokio::test]
async fn release_wakes_a_waiter_on_another_client() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_secs(30)).await;
    let b = client(&server.url(), Duration::from_secs(30)).await;
    let held = a.semaphore("wake", 1).unwrap().try_acquire().await.unwrap();
    let sem_b = b.semaphore("wake", 1).unwrap();
    let waiter = tokio::spawn(async move {
        let p = sem_b.acquire(Duration::from_secs(25)).await.unwrap();
        (Instant::now(), p.fencing_token())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    held.release().await.unwrap();
    let (got, _) = bounded(waiter).await.unwrap();
    let lag = got.duration_since(released);
    assert!(
        lag < Duration::from_secs(2),
        "woken {lag:?} after the release"
    );
}

#[tokio::test]
async fn lost_fires_when_the_permit_is_taken_away() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_millis(600)).await;
    let sem = a.semaphore("lose", 1).unwrap();
    let p = bounded(sem.try_acquire()).await.unwrap();
    assert!(!p.is_lost());
    assert_eq!(p.run_until_lost(async { 7 }).await.unwrap(), 7);
    // extend: a longer lease now, renewed with it from then on.
    assert!(
        p.extend(Duration::from_millis(1))
            .await
            .unwrap_err()
            .is_invalid_input()
    );
    bounded(p.extend(Duration::from_secs(2))).await.unwrap();
    let pttl: i64 = server
        .command(&["PTTL", "lockyard:{lose}:sem"])
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!(pttl > 1_000, "extend did not lengthen the lease: {pttl} ms");
    assert!(!p.is_lost());
    // Someone removes our permit (as an expiry and takeover would).
    assert_eq!(server.command(&["DEL", "lockyard:{lose}:sem"]), ":1");
    // Work under the permit is cut short when it is lost.
    let err = bounded(p.run_until_lost(std::future::pending::<()>()))
        .await
        .unwrap_err();
    assert!(err.is_lost(), "{err}");
    // Once lost, extend refuses (the lease core's invariant 3).
    let err = p.extend(Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, LockError::Lost { .. }), "{err}");
    assert!(p.is_lost());
    let err = p.release().await.unwrap_err();
    assert!(matches!(err, LockError::NotHeld { .. }), "{err}");
}

#[tokio::test]
async fn lost_fires_when_redis_goes_away_and_release_reports_it() {
    let mut server = RedisServer::start();
    // A drift margin of TTL / 4 rather than the default 8 ms: the check
    // below is "before the TTL", and a timer on a loaded 2-core CI box can
    // fire tens of ms late (the margin exists to absorb that).
    let ttl = Duration::from_millis(600);
    // Short connect/op timeouts: the outage is reported within them (the
    // defaults, 5 s and 2 s, made this the slowest test of the binary). The
    // op timeout must leave the lease's validity room (at most half of it).
    let a = RedisLocks::connect_with(
        &server.url(),
        RedisOptions::default()
            .ttl(ttl)
            .drift(ttl / 4)
            .connect_timeout(Duration::from_secs(1))
            .op_timeout(Duration::from_millis(200)),
    )
    .await
    .expect("connect");
    let sem = a.semaphore("down", 2).unwrap();
    let p = bounded(sem.try_acquire()).await.unwrap();
    server.stop();
    let stopped = Instant::now();
    bounded(p.lost()).await;
    assert!(
        stopped.elapsed() < Duration::from_millis(600),
        "lost fired after the TTL"
    );
    let err = bounded(p.release()).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let err = bounded(sem.try_acquire()).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

/// Local waiters queue in-process: one client, many tasks, one permit; all
/// get it in turn.
#[tokio::test]
async fn local_waiters_all_get_a_turn() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_secs(10)).await;
    let sem = a.semaphore("local", 1).unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (sem, inside) = (sem.clone(), inside.clone());
        tasks.push(tokio::spawn(async move {
            let p = sem.acquire(Duration::from_secs(20)).await.unwrap();
            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
            tokio::time::sleep(Duration::from_millis(1)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            p.release().await.unwrap();
        }));
    }
    for t in tasks {
        bounded(t).await.unwrap();
    }
}

/// Acquisitions cancelled at random moments (queued locally, in flight on
/// Redis, waiting for a release) leave no permit behind: the holder count is
/// back to zero long before the 10 s TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_at_random_moments_leaks_no_permit() {
    use rand::Rng;
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_secs(10)).await;
    let b = client(&server.url(), Duration::from_secs(10)).await;
    let sem = a.semaphore("cancel", 2).unwrap();
    let other = b.semaphore("cancel", 2).unwrap();
    let mut rng = rand::rng();
    let mut got = 0;
    for round in 0..60 {
        // Every third round the permits are all taken by another client, so
        // the cancelled acquisition is waiting rather than in flight.
        let blockers = if round % 3 == 0 {
            // (Background releases of the last round may still be on
            // their way: wait for them.)
            vec![
                bounded(other.acquire(Duration::from_secs(5)))
                    .await
                    .unwrap(),
                bounded(other.acquire(Duration::from_secs(5)))
                    .await
                    .unwrap(),
            ]
        } else {
            Vec::new()
        };
        let cancel_after = Duration::from_micros(rng.random_range(0..1500));
        let attempts: Vec<_> = (0..3)
            .map(|_| {
                let sem = sem.clone();
                tokio::spawn(async move {
                    tokio::time::timeout(cancel_after, sem.acquire(Duration::from_secs(5))).await
                })
            })
            .collect();
        for t in attempts {
            if let Ok(Ok(p)) = bounded(t).await.unwrap() {
                got += 1;
                drop(p);
            }
        }
        drop(blockers);
    }
    eventually_within("no permit left behind", Duration::from_secs(5), || async {
        sem.holders().await.unwrap() == 0
    })
    .await;
    // And the semaphore is fully usable.
    let p1 = bounded(sem.try_acquire()).await.unwrap();
    let p2 = bounded(sem.try_acquire()).await.unwrap();
    drop((p1, p2));
    // Some attempts completed and some were cancelled, or the test shows
    // nothing.
    assert!(got < 180, "no acquisition was ever cancelled");
}

/// A Redis restarted empty forgets every permit: holders learn it at the
/// next renewal, and nobody keeps believing it holds one.
#[tokio::test]
async fn restarted_redis_makes_holders_lost() {
    let mut server = RedisServer::start();
    let a = client(&server.url(), Duration::from_millis(900)).await;
    let sem = a.semaphore("restart", 2).unwrap();
    let p = bounded(sem.try_acquire()).await.unwrap();
    let rw = a.rwlock("restart-rw").unwrap();
    let r = bounded(rw.try_read()).await.unwrap();
    server.restart();
    bounded(p.lost()).await;
    bounded(r.lost()).await;
    // The server works again for new holders.
    let p2 = bounded(sem.acquire(Duration::from_secs(5))).await.unwrap();
    assert!(!p2.is_lost());
    p2.release().await.unwrap();
}

/// A `release()` dropped before it completes still releases (in the
/// background), wherever it was cut short.
#[tokio::test]
async fn cancelled_release_still_releases() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_secs(10)).await;
    let sem = a.semaphore("cancel-release", 1).unwrap();
    for i in 0..20u64 {
        let p = bounded(sem.acquire(Duration::from_secs(5))).await.unwrap();
        let cut = Duration::from_micros(i * 50);
        let _ = tokio::time::timeout(cut, p.release()).await;
        eventually_within(
            "released after a cancelled release",
            Duration::from_secs(5),
            || async { sem.holders().await.unwrap() == 0 },
        )
        .await;
    }
}
