//! The Redis RW lock against a private redis-server: readers share, writers
//! exclude, a waiting writer is not starved, no lost updates, crashed
//! holders, cancellation.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lockyard::{AcquireOptions, Lock, LockError, Mode};
use lockyard_testkit::bounded;
use lockyard_testkit::redis::{RedisServer, client};

#[tokio::test]
async fn readers_share_and_a_writer_excludes() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_secs(10)).await;
    let b = client(&server.url(), Duration::from_secs(10)).await;
    assert!(matches!(
        a.rwlock("").unwrap_err(),
        LockError::InvalidName { .. }
    ));
    let rw_a = a.rwlock("cfg").unwrap();
    let rw_b = b.rwlock("cfg").unwrap();
    assert!(!rw_a.is_locked().await.unwrap());

    let r1 = bounded(rw_a.read(Duration::from_secs(1))).await.unwrap();
    let r2 = bounded(rw_b.try_read()).await.unwrap();
    assert!(r2.fencing_token() > r1.fencing_token());
    assert!(rw_b.is_locked().await.unwrap());
    let listed = a.list().await.unwrap();
    let info = listed.iter().find(|i| i.name == "cfg").expect("listed");
    assert_eq!((info.kind, info.holders), ("lock", 2));
    assert_eq!(info.fencing_token, Some(r2.fencing_token()));
    let err = rw_b.try_write().await.unwrap_err();
    assert!(err.is_would_block(), "{err}");
    assert_eq!(err.holder().expect("a reader named").mode, Mode::Shared);
    let err = rw_b.write(Duration::from_millis(100)).await.unwrap_err();
    assert!(err.is_timeout() && err.holder().is_some(), "{err}");
    // The timed-out writer withdrew its intent: readers still get in.
    let r3 = bounded(rw_b.try_read()).await.unwrap();
    drop(r3);
    bounded(r1.release()).await.unwrap();
    bounded(r2.release()).await.unwrap();

    let w = bounded(rw_b.write(Duration::from_secs(1))).await.unwrap();
    let err = rw_a.try_read().await.unwrap_err();
    assert!(err.is_would_block(), "{err}");
    assert_eq!(
        err.holder().expect("the writer named").mode,
        Mode::Exclusive
    );
    assert!(rw_a.try_write().await.unwrap_err().is_would_block());
    let err = rw_a.read(Duration::from_millis(100)).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let fence = w.fencing_token();
    let listed = a.list().await.unwrap();
    let info = listed.iter().find(|i| i.name == "cfg").expect("listed");
    assert_eq!((info.kind, info.holders), ("lock", 1));
    assert_eq!(listed.iter().filter(|i| i.name == "cfg").count(), 1);
    bounded(w.release()).await.unwrap();
    let r = bounded(rw_a.try_read()).await.unwrap();
    assert!(r.fencing_token() > fence);
    r.release().await.unwrap();
    assert!(!rw_a.is_locked().await.unwrap());
}

#[tokio::test]
async fn lock_trait_shared_reads_exclusive_writes() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_secs(10)).await;
    let rw: Arc<dyn Lock> = Arc::new(a.rwlock("trait").unwrap());
    let r1 = bounded(rw.lock(&AcquireOptions::shared())).await.unwrap();
    let r2 = bounded(rw.try_lock(Mode::Shared)).await.unwrap();
    assert_eq!(r1.mode(), Mode::Shared);
    assert!(
        rw.try_lock(Mode::Exclusive)
            .await
            .unwrap_err()
            .is_would_block()
    );
    drop((r1, r2));
    let w = bounded(rw.lock(&AcquireOptions::exclusive().timeout(Duration::from_secs(5))))
        .await
        .unwrap();
    assert_eq!(w.mode(), Mode::Exclusive);
    assert!(w.fencing_token().is_some());
    assert!(rw.is_locked().await.unwrap());
    w.release().await.unwrap();
}

/// Readers that keep overlapping would hold the lock for ever; the waiting
/// writer's intent stops new readers, so the writer gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_writer_is_not_starved_by_a_stream_of_readers() {
    let server = RedisServer::start();
    let readers_client = client(&server.url(), Duration::from_secs(10)).await;
    let writer_client = client(&server.url(), Duration::from_secs(10)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let reads_after_writer = Arc::new(AtomicUsize::new(0));
    let writer_done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    // Four reader streams on separate clients, each always holding a read
    // lock for 40 ms and taking the next one 10 ms before letting go.
    for i in 0..4 {
        let locks = if i % 2 == 0 {
            readers_client.clone()
        } else {
            client(&server.url(), Duration::from_secs(10)).await
        };
        let rw = locks.rwlock("starve").unwrap();
        let (stop, writer_done, reads_after_writer) = (
            stop.clone(),
            writer_done.clone(),
            reads_after_writer.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut held = None;
            while !stop.load(Ordering::SeqCst) {
                let next = match rw.try_read().await {
                    Ok(g) => Some(g),
                    Err(e) if e.is_would_block() => None,
                    Err(e) => panic!("{e}"),
                };
                if next.is_some() && writer_done.load(Ordering::SeqCst) {
                    reads_after_writer.fetch_add(1, Ordering::SeqCst);
                }
                // Overlap: the previous read lock goes 10 ms after the
                // next one was taken (or was refused).
                tokio::time::sleep(Duration::from_millis(10)).await;
                held = next;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            drop(held);
        }));
    }
    // Let the readers overlap for a while: the lock is never free.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rw = writer_client.rwlock("starve").unwrap();
    assert!(rw.try_write().await.unwrap_err().is_would_block());
    let asked = Instant::now();
    let w = bounded(rw.write(Duration::from_secs(20))).await.unwrap();
    let waited = asked.elapsed();
    writer_done.store(true, Ordering::SeqCst);
    assert!(!w.is_lost());
    w.release().await.unwrap();
    // Readers carry on after the writer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        bounded(r).await.unwrap();
    }
    assert!(reads_after_writer.load(Ordering::SeqCst) > 0);
    // The readers' leases are 10 s: only the intent can explain this.
    assert!(waited < Duration::from_secs(5), "writer waited {waited:?}");
}

/// A read-modify-write of a Redis counter under the write lock from tasks
/// on three clients, with readers alongside checking they never see a
/// half-done update: no lost updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_has_no_lost_updates() {
    let server = RedisServer::start();
    let raw = redis::Client::open(server.url()).unwrap();
    let writers_per_client = 3;
    let rounds = 10;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let locks = client(&server.url(), Duration::from_secs(10)).await;
        for w in 0..writers_per_client + 1 {
            let rw = locks.rwlock("counter").unwrap();
            let raw = raw.clone();
            let is_reader = w == writers_per_client;
            tasks.push(tokio::spawn(async move {
                let mut conn = raw.get_multiplexed_async_connection().await.unwrap();
                for _ in 0..rounds {
                    if is_reader {
                        let g = rw.read(Duration::from_secs(20)).await.unwrap();
                        let (a, b): (Option<i64>, Option<i64>) = redis::pipe()
                            .get("a")
                            .get("b")
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        assert_eq!(a, b, "a reader saw a write in progress");
                        g.release().await.unwrap();
                        continue;
                    }
                    let g = rw.write(Duration::from_secs(20)).await.unwrap();
                    let a: Option<i64> = redis::cmd("GET")
                        .arg("a")
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    let a = a.unwrap_or(0);
                    let _: () = redis::cmd("SET")
                        .arg("a")
                        .arg(a + 1)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let _: () = redis::cmd("SET")
                        .arg("b")
                        .arg(a + 1)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    g.release().await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        bounded(t).await.unwrap();
    }
    assert_eq!(
        server.command(&["GET", "a"]),
        (3 * writers_per_client * rounds).to_string()
    );
}

/// A reader that stops renewing (crashed) blocks writers only until its
/// lease ends.
#[tokio::test]
async fn a_crashed_readers_lease_runs_out() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_secs(10)).await;
    let rw = a.rwlock("crash").unwrap();
    // A reader that crashed right after its last renewal: a member of the
    // readers set that nobody renews, ending 500 ms from now (server clock),
    // and its mark on the lock key.
    let time = server.command(&[
        "EVAL",
        "local t = redis.call('TIME') return t[1] * 1000 + math.floor(t[2] / 1000)",
        "0",
    ]);
    let now: u64 = time.trim_start_matches(':').parse().unwrap();
    let reply = server.command(&[
        "ZADD",
        "lockyard:{crash}:readers",
        &(now + 500).to_string(),
        "dead-reader",
    ]);
    assert_eq!(reply, ":1");
    // And the mark a reader leaves on the lock key for as long.
    let reply = server.command(&[
        "SET",
        "lockyard:{crash}:lock",
        "lockyard:readers",
        "PX",
        "500",
    ]);
    assert_eq!(reply, "+OK");
    assert!(rw.try_write().await.unwrap_err().is_would_block());
    let asked = Instant::now();
    let w = bounded(rw.write(Duration::from_secs(10))).await.unwrap();
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "writer got in after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "writer got in after {waited:?}"
    );
    w.release().await.unwrap();
}

#[tokio::test]
async fn lost_fires_when_the_write_lock_is_taken_away() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_millis(600)).await;
    let rw = a.rwlock("lose").unwrap();
    let w = bounded(rw.try_write()).await.unwrap();
    let r_lock = a.rwlock("lose2").unwrap();
    let r = bounded(r_lock.try_read()).await.unwrap();
    // Renewal keeps both past their TTL.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!w.is_lost() && !r.is_lost());
    bounded(w.extend(Duration::from_secs(2))).await.unwrap();
    bounded(r.extend(Duration::from_secs(2))).await.unwrap();
    let pttl: i64 = server
        .command(&["PTTL", "lockyard:{lose}:lock"])
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!(
        pttl > 1_000,
        "extend did not lengthen the write lease: {pttl} ms"
    );
    assert_eq!(
        server.command(&["SET", "lockyard:{lose}:lock", "someone-else"]),
        "+OK"
    );
    assert_eq!(server.command(&["DEL", "lockyard:{lose2}:readers"]), ":1");
    bounded(w.lost()).await;
    bounded(r.lost()).await;
    assert!(matches!(
        w.release().await.unwrap_err(),
        LockError::NotHeld { .. }
    ));
    assert!(matches!(
        r.release().await.unwrap_err(),
        LockError::NotHeld { .. }
    ));
}

/// Write acquisitions cancelled at random moments (queued, in flight, or
/// waiting with their intent set) leave no intent or lock behind: readers
/// and writers get in at once afterwards, long before the 10 s TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_at_random_moments_leaks_nothing() {
    use rand::Rng;
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_secs(10)).await;
    let b = client(&server.url(), Duration::from_secs(10)).await;
    let rw = a.rwlock("cancel").unwrap();
    let other = b.rwlock("cancel").unwrap();
    let mut rng = rand::rng();
    for round in 0..60 {
        // Every other round a reader on another client holds it, so the
        // cancelled writer is waiting with its intent set.
        let reader = if round % 2 == 0 {
            Some(bounded(other.read(Duration::from_secs(5))).await.unwrap())
        } else {
            None
        };
        let cancel_after = Duration::from_micros(rng.random_range(0..3000));
        let read_too = round % 3 == 0;
        let rw2 = rw.clone();
        let t = tokio::spawn(async move {
            let w = tokio::time::timeout(cancel_after, rw2.write(Duration::from_secs(5))).await;
            let r = if read_too {
                tokio::time::timeout(cancel_after, rw2.read(Duration::from_secs(5)))
                    .await
                    .ok()
                    .map(|r| r.is_ok())
            } else {
                None
            };
            (w.ok().map(|w| w.is_ok()), r)
        });
        let _ = bounded(t).await.unwrap();
        drop(reader);
    }
    // Background cleanups are quick; then everything is free.
    let start = Instant::now();
    loop {
        let intent = server.command(&["EXISTS", "lockyard:{cancel}:intent"]);
        let writer = server.command(&["EXISTS", "lockyard:{cancel}:lock"]);
        let readers = server.command(&["ZCARD", "lockyard:{cancel}:readers"]);
        if (intent.as_str(), writer.as_str(), readers.as_str()) == (":0", ":0", ":0") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "left behind: intent {intent} writer {writer} readers {readers}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let w = bounded(other.try_write()).await.unwrap();
    w.release().await.unwrap();
}

/// A writer that queued behind readers (its intent kept new readers out)
/// withdraws the intent with its grant, wherever the grant happens: once it
/// has released, a reader gets in at once instead of waiting for the intent
/// to expire. (The free-name path is SET NX alone; an intent left there
/// would block readers for the intent's whole TTL.)
#[tokio::test]
async fn a_queued_writers_intent_goes_with_its_grant() {
    let server = RedisServer::start();
    let ttl = Duration::from_secs(10);
    let a = client(&server.url(), ttl).await;
    let b = client(&server.url(), ttl).await;
    let reader = bounded(a.rwlock("queued").unwrap().read(Duration::from_secs(1)))
        .await
        .unwrap();
    let rw = b.rwlock("queued").unwrap();
    let writer = tokio::spawn(async move { rw.write(Duration::from_secs(5)).await });
    // The writer has met the reader and set its intent.
    bounded(async {
        while server.command(&["EXISTS", "lockyard:{queued}:intent"]) != ":1" {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    bounded(reader.release()).await.unwrap();
    let w = bounded(writer).await.unwrap().unwrap();
    assert_eq!(
        server.command(&["EXISTS", "lockyard:{queued}:intent"]),
        ":0",
        "the granted writer's intent is gone"
    );
    bounded(w.release()).await.unwrap();
    let r = bounded(a.rwlock("queued").unwrap().try_read())
        .await
        .unwrap();
    bounded(r.release()).await.unwrap();
}
