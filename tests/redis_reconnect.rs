//! A client whose connections died unnoticed (the server restarted while
//! the client was idle) reconnects on its first request, whatever that
//! request is: the semaphore, the RW lock and Redlock keep the promise the
//! module docs make ("a client's first request after a restart reconnects
//! and reloads its scripts"), as the plain lock does.
#![cfg(feature = "redis")]

use std::time::Duration;

use lockyard::LockError;
use lockyard::redis::{RedisLocks, RedisOptions, Redlock, RedlockOptions};
use lockyard_testkit::bounded;
use lockyard_testkit::redis::RedisServer;

/// Long enough that the watchdog (renewing at about TTL / 3) never notices
/// the restart before the request under test does.
const TTL: Duration = Duration::from_secs(30);

fn opts() -> RedisOptions {
    RedisOptions::default().ttl(TTL)
}

#[tokio::test]
async fn semaphore_and_rwlock_reconnect_on_their_first_request() {
    let mut server = RedisServer::start();
    let a = RedisLocks::connect_with(&server.url(), opts())
        .await
        .expect("connect");
    let sem = a.semaphore("s", 2).unwrap();
    let rw = a.rwlock("rw").unwrap();

    // A read.
    assert_eq!(bounded(sem.holders()).await.unwrap(), 0);
    server.restart();
    assert_eq!(bounded(sem.holders()).await.unwrap(), 0);
    server.restart();
    assert!(!bounded(rw.is_locked()).await.unwrap());

    // A holder's extend and release: the server restarted empty, so the
    // permit is gone (`NotHeld`), not unreachable (`Unavailable`).
    let p = bounded(sem.try_acquire()).await.unwrap();
    server.restart();
    let err = bounded(p.extend(TTL)).await.unwrap_err();
    assert!(matches!(err, LockError::NotHeld { .. }), "{err}");
    let p = bounded(sem.try_acquire()).await.unwrap();
    server.restart();
    let err = bounded(p.release()).await.unwrap_err();
    assert!(matches!(err, LockError::NotHeld { .. }), "{err}");
    let w = bounded(rw.try_write()).await.unwrap();
    server.restart();
    let err = bounded(w.release()).await.unwrap_err();
    assert!(matches!(err, LockError::NotHeld { .. }), "{err}");
}

#[tokio::test]
async fn redlock_reconnects_on_its_first_request() {
    let mut s: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let urls: Vec<String> = s.iter().map(RedisServer::url).collect();
    let r = bounded(Redlock::connect_with(
        &urls,
        RedlockOptions::new().redis(opts()),
    ))
    .await
    .expect("connect");
    let g = bounded(r.try_acquire("x")).await.unwrap();
    // Two of three restarted empty: the release reaches all three and
    // finds the lock gone on a majority (`NotHeld`), rather than failing on
    // two dead connections (`NoQuorum`).
    s[1].restart();
    s[2].restart();
    let err = bounded(g.release()).await.unwrap_err();
    assert!(matches!(err, LockError::NotHeld { .. }), "{err}");
}

/// The plain lock: an uncontended acquisition's first attempt goes on a
/// connection at hand, and the hold keeps that connection for its release.
/// When that connection died, the acquisition starts again on a fresh one,
/// and the release (now, or in the background from `Drop`) reconnects.
#[tokio::test]
async fn the_lock_reconnects_on_its_first_attempt_and_on_its_release() {
    let mut server = RedisServer::start();
    let a = RedisLocks::connect_with(&server.url(), opts())
        .await
        .expect("connect");
    let g = bounded(a.acquire("l", TTL)).await.unwrap();
    bounded(g.release()).await.unwrap();

    // The first attempt's connection died (the server restarted empty).
    server.restart();
    let g = bounded(a.acquire("l", TTL)).await.unwrap();
    assert!(bounded(a.is_locked("l")).await.unwrap());
    server.restart();
    let t = bounded(a.try_acquire("t")).await.unwrap();
    // Held across a restart: the release finds the lock gone.
    server.restart();
    let err = bounded(t.release()).await.unwrap_err();
    assert!(matches!(err, LockError::NotHeld { .. }), "{err}");
    drop(g);

    // The hold's connection killed, the data kept: the release goes again
    // on a fresh connection and frees the lock.
    let kill = || server.command(&["CLIENT", "KILL", "TYPE", "normal"]);
    let g = bounded(a.acquire("k", TTL)).await.unwrap();
    kill();
    bounded(g.release())
        .await
        .expect("released after a reconnect");
    assert!(!bounded(a.is_locked("k")).await.unwrap());
    // The same from `Drop`, in the background.
    let g = bounded(a.acquire("k", TTL)).await.unwrap();
    kill();
    drop(g);
    let start = std::time::Instant::now();
    while bounded(a.is_locked("k")).await.unwrap() {
        assert!(start.elapsed() < Duration::from_secs(5), "still held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And the name is free for the next acquisition at once.
    let g = bounded(a.try_acquire("k")).await.unwrap();
    bounded(g.release()).await.unwrap();
}
