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
