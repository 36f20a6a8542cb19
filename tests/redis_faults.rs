//! The Redis lock under faults: a killed, restarted or paused server, a
//! server that is down at connect, garbage in the keys, and cancellation at
//! random moments.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use lockyard::LockError;
use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard_testkit::bounded;
use lockyard_testkit::redis::RedisServer;

fn opts(ttl: Duration) -> RedisOptions {
    RedisOptions::default()
        .ttl(ttl)
        .connect_timeout(Duration::from_millis(500))
        .op_timeout(Duration::from_millis(300))
}

#[tokio::test]
async fn killed_server_fires_lost_before_the_ttl_ends() {
    let mut server = RedisServer::start();
    let ttl = Duration::from_millis(1200);
    // A drift margin of TTL / 4 rather than the default 14 ms: the check
    // below is "before the lease ends", and a timer on a loaded 2-core CI
    // box can fire tens of ms late (the margin exists to absorb that).
    let locks = RedisLocks::connect_with(&server.url(), opts(ttl).drift(ttl / 4))
        .await
        .unwrap();
    let g = locks.acquire("k", Duration::from_secs(1)).await.unwrap();
    // Let a renewal or two happen.
    tokio::time::sleep(ttl / 2).await;
    assert!(!g.is_lost());
    let killed = Instant::now();
    server.stop();
    bounded(g.lost()).await;
    let after = killed.elapsed();
    // The last renewal was sent before the kill, so validity (TTL − drift
    // from that send) ends less than a TTL after the kill.
    assert!(
        after < ttl,
        "lost fired {after:?} after the kill (ttl {ttl:?})"
    );
    assert!(g.is_lost());
    assert_eq!(locks.stats().lost, 1);
    // Operations report an outage, not contention.
    let e = locks
        .acquire("other", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    let e = g.release().await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
}

#[tokio::test]
async fn restarted_server_leaves_no_stale_holder() {
    let mut server = RedisServer::start();
    let ttl = Duration::from_millis(1500);
    let locks = RedisLocks::connect_with(&server.url(), opts(ttl))
        .await
        .unwrap();
    let g = locks.acquire("r", Duration::from_secs(1)).await.unwrap();
    let idle = RedisLocks::connect_with(&server.url(), opts(ttl))
        .await
        .unwrap();
    server.restart(); // empty: the key and the scripts are gone
    // A client whose connection died unnoticed reconnects on its first
    // request (and reloads the scripts).
    let g0 = bounded(idle.acquire("r0", Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(idle.is_locked("r0").await.unwrap());
    g0.release().await.unwrap();
    // The next renewal reconnects, reloads its script, finds the key gone
    // and fires at once (well before the TTL would).
    let start = Instant::now();
    bounded(g.lost()).await;
    assert!(start.elapsed() < ttl, "{:?}", start.elapsed());
    // After the restart, the lock is free for others and the client works.
    let other = RedisLocks::connect_with(&server.url(), opts(ttl))
        .await
        .unwrap();
    let g2 = bounded(other.acquire("r", Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(!g2.is_lost());
    // The stale guard's release cannot hurt the new holder.
    let e = bounded(g.release()).await.unwrap_err();
    assert!(matches!(e, LockError::NotHeld { .. }), "{e}");
    assert!(other.is_locked("r").await.unwrap());
    let g3 = bounded(locks.acquire("r2", Duration::from_secs(5)))
        .await
        .unwrap();
    drop((g2, g3));
}

/// A pause shorter than the validity: renewals are delayed, then catch up;
/// nothing is lost. A pause longer than the validity: `lost` fires while the
/// server is still paused.
#[tokio::test]
async fn paused_server() {
    let server = RedisServer::start();
    let ttl = Duration::from_millis(1500);
    let locks = RedisLocks::connect_with(
        &server.url(),
        opts(ttl).op_timeout(Duration::from_millis(700)),
    )
    .await
    .unwrap();
    let g = locks.acquire("p", Duration::from_secs(1)).await.unwrap();
    server.pause(Duration::from_millis(400));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(!g.is_lost(), "a short pause must not lose the lock");
    assert!(locks.is_locked("p").await.unwrap());

    let paused_at = Instant::now();
    server.pause(Duration::from_millis(4000));
    bounded(g.lost()).await;
    // Validity runs from the last renewal confirmed before the pause, so the
    // signal comes at most a TTL after the pause began (plus scheduling
    // slack), long before the pause ends.
    let after = paused_at.elapsed();
    assert!(after < ttl + Duration::from_millis(300), "{after:?}");
    drop(g);
}

#[tokio::test]
async fn down_at_connect_is_unavailable() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.stop();
    let start = Instant::now();
    let e = RedisLocks::connect_with(&url, opts(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(start.elapsed() < Duration::from_secs(5));
    let e = RedisLocks::connect("redis://127.0.0.1:1/")
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
}

#[tokio::test]
async fn garbage_in_the_keys_is_a_typed_error() {
    let server = RedisServer::start();
    let locks = RedisLocks::connect_with(&server.url(), opts(Duration::from_secs(2)))
        .await
        .unwrap();
    // A lock key of the wrong type.
    server.command(&["LPUSH", "lockyard:{list}:lock", "x"]);
    let e = locks
        .acquire("list", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(e, LockError::Protocol { .. }), "{e}");
    // A fencing counter of the wrong type: refused, and no lock left behind.
    server.command(&["LPUSH", "lockyard:{fence}:fence", "x"]);
    let e = locks.try_acquire("fence").await.unwrap_err();
    assert!(matches!(e, LockError::Protocol { .. }), "{e}");
    assert!(!locks.is_locked("fence").await.unwrap());
    // A fencing counter that is not a number.
    server.command(&["SET", "lockyard:{nan}:fence", "abc"]);
    let e = locks.try_acquire("nan").await.unwrap_err();
    assert!(matches!(e, LockError::Backend { .. }), "{e}");
    assert!(!locks.is_locked("nan").await.unwrap());
    // A foreign string without expiry: held, by an unknown owner.
    server.command(&["SET", "lockyard:{foreign}:lock", "not ours"]);
    let e = locks.try_acquire("foreign").await.unwrap_err();
    assert!(e.is_would_block() && e.holder().is_none(), "{e}");
    // Listing skips what it does not understand.
    locks.list().await.unwrap();
}

/// Cancel acquisitions at random moments (in the local queue, with the
/// script in flight, while waiting on Redis). Afterwards nothing is held and
/// nothing is queued: the lock is free right away for another client, and
/// no key outlives its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_at_random_moments_leaks_nothing() {
    use rand::Rng;
    let server = RedisServer::start();
    let ttl = Duration::from_millis(1000);
    let locks = RedisLocks::connect_with(&server.url(), opts(ttl))
        .await
        .unwrap();
    let mut rng = rand::rng();
    for round in 0..150 {
        let name = format!("c{}", round % 3);
        // Sometimes someone holds it, so that waiters are cancelled too.
        let holder = if round % 4 == 0 {
            Some(locks.acquire(&name, Duration::from_secs(1)).await.unwrap())
        } else {
            None
        };
        let mut futs = Vec::new();
        for _ in 0..3 {
            let l = locks.clone();
            let n = name.clone();
            let cancel_after = Duration::from_micros(rng.random_range(0..1500));
            futs.push(tokio::spawn(async move {
                tokio::time::timeout(cancel_after, l.acquire(&n, Duration::from_secs(5)))
                    .await
                    .ok()
                    .map(|r| r.unwrap())
            }));
        }
        drop(holder);
        for f in futs {
            // A guard that was acquired is dropped here.
            let _ = bounded(f).await.unwrap();
        }
    }
    // Background cleanups run on the same connections: everything is
    // released promptly, long before the TTL.
    let other = RedisLocks::connect_with(&server.url(), opts(ttl))
        .await
        .unwrap();
    let start = Instant::now();
    for n in ["c0", "c1", "c2"] {
        let g = bounded(other.acquire(n, Duration::from_secs(5)))
            .await
            .unwrap();
        g.release().await.unwrap();
    }
    assert!(
        start.elapsed() < ttl,
        "a cancelled acquisition leaked a lock: {:?}",
        start.elapsed()
    );
    assert_eq!(locks.stats().held, 0);
    // And this client's local queues are empty: try_acquire works at once.
    for n in ["c0", "c1", "c2"] {
        locks.try_acquire(n).await.unwrap().release().await.unwrap();
    }
}

/// Dropping `release()` at random moments: the release is finished in the
/// background, so the lock is free again right away, not after its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_release_still_releases() {
    use rand::Rng;
    let server = RedisServer::start();
    let ttl = Duration::from_secs(30);
    let locks = RedisLocks::connect_with(&server.url(), opts(ttl))
        .await
        .unwrap();
    let other = RedisLocks::connect_with(&server.url(), opts(ttl))
        .await
        .unwrap();
    let mut rng = rand::rng();
    for _ in 0..40 {
        let g = locks.acquire("rel", Duration::from_secs(5)).await.unwrap();
        let cancel_after = Duration::from_micros(rng.random_range(0..400));
        let _ = tokio::time::timeout(cancel_after, g.release()).await;
        // Another client gets it long before the 30 s lease would end.
        let g2 = bounded(other.acquire("rel", Duration::from_secs(5)))
            .await
            .unwrap();
        g2.release().await.unwrap();
    }
    assert_eq!(locks.stats().held, 0);
}

/// Pub/sub down (the server's pub/sub connection killed): waiters fall back
/// to polling bounded by the holder's TTL and still get the lock.
#[tokio::test]
async fn waiters_survive_pubsub_loss() {
    let server = RedisServer::start();
    let a = RedisLocks::connect_with(&server.url(), opts(Duration::from_secs(10)))
        .await
        .unwrap();
    let b = RedisLocks::connect_with(&server.url(), opts(Duration::from_secs(10)))
        .await
        .unwrap();
    let g = a.acquire("ps", Duration::from_secs(1)).await.unwrap();
    let w = tokio::spawn(async move { b.acquire("ps", Duration::from_secs(15)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Kill every pub/sub connection (CLIENT KILL TYPE pubsub).
    let killed = server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(killed.starts_with(':'), "{killed}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    g.release().await.unwrap();
    let g2 = bounded(w).await.unwrap().unwrap();
    drop(g2);
}

/// A request to a server that stops answering fails within its bound (the
/// request timeout and at most an eighth more: the client's ticker looks
/// every eighth of it, `conn/ticks.rs`; the test allows a quarter), never
/// before the request timeout; once the server answers again, the client
/// works at once.
#[tokio::test]
async fn a_request_to_a_server_that_stops_answering_fails_within_its_bound() {
    let server = RedisServer::start();
    let request = Duration::from_millis(400);
    let locks = RedisLocks::connect_with(
        &server.url(),
        opts(Duration::from_secs(5)).op_timeout(request),
    )
    .await
    .unwrap();
    // Warm: the pool's connection is open and used.
    locks
        .try_acquire("warm")
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    for round in 0..3 {
        let pause = Duration::from_millis(2500);
        server.pause(pause);
        let started = Instant::now();
        let e = bounded(locks.is_locked("stall")).await.unwrap_err();
        let took = started.elapsed();
        assert!(e.is_unavailable(), "round {round}: {e}");
        assert!(took >= request, "round {round}: failed after {took:?}");
        // A quarter more, and scheduling slack for a loaded machine (still
        // well before the pause ends, when the request would succeed).
        assert!(
            took < request * 5 / 4 + Duration::from_secs(1),
            "round {round}: failed after {took:?}"
        );
        // The server answers again: a fresh connection serves at once.
        tokio::time::sleep(pause.saturating_sub(took) + Duration::from_millis(100)).await;
        let g = bounded(locks.try_acquire("after")).await.unwrap();
        g.release().await.unwrap();
        assert!(!locks.is_locked("stall").await.unwrap());
    }
}
