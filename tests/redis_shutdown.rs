//! `RedisLocks::shutdown`: a service that drops its guards and returns from
//! `main` leaves no lock held until its TTL.
#![cfg(feature = "redis")]

use std::time::Duration;

use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard_testkit::redis::RedisServer;

fn opts() -> RedisOptions {
    RedisOptions::default()
        .ttl(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(2))
}

/// Twenty "services", each on its own runtime: acquire, drop the guard,
/// shut down, return (the runtime is dropped at once). Not one lock is
/// left held.
#[test]
fn dropped_guards_are_released_before_shutdown_returns() {
    let server = RedisServer::start();
    for i in 0..20 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = server.url();
        let left = rt.block_on(async move {
            let locks = RedisLocks::connect_with(&url, opts()).await.unwrap();
            let guard = locks
                .acquire(&format!("svc-{i}"), Duration::from_secs(1))
                .await
                .unwrap();
            let permit = locks
                .semaphore(&format!("sem-{i}"), 2)
                .unwrap()
                .acquire(Duration::from_secs(1))
                .await
                .unwrap();
            drop((guard, permit));
            locks.shutdown().await
        });
        drop(rt);
        assert_eq!(left, 0, "round {i}: releases given up on");
        assert_eq!(
            server.command(&["EXISTS", &format!("lockyard:{{svc-{i}}}:lock")]),
            ":0",
            "round {i}: the lock outlived the service"
        );
        assert_eq!(
            server.command(&["ZCARD", &format!("lockyard:{{sem-{i}}}:sem")]),
            ":0",
            "round {i}: the permit outlived the service"
        );
    }
}

#[tokio::test]
async fn after_shutdown_held_guards_are_lost_and_acquisitions_refused() {
    let server = RedisServer::start();
    let locks = RedisLocks::connect_with(&server.url(), opts())
        .await
        .unwrap();
    let held = locks.acquire("kept", Duration::from_secs(1)).await.unwrap();
    assert_eq!(locks.shutdown().await, 0);
    assert!(locks.is_shut_down());
    tokio::time::timeout(Duration::from_secs(5), held.lost())
        .await
        .expect("a guard that can no longer be renewed is told it is lost");
    let e = locks
        .acquire("other", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(e, lockyard::LockError::Closed { .. }), "{e}");
    let e = locks
        .semaphore("s", 1)
        .unwrap()
        .try_acquire()
        .await
        .unwrap_err();
    assert!(matches!(e, lockyard::LockError::Closed { .. }), "{e}");
    // Releasing the lost guard still deletes its key.
    let e = held.release().await.unwrap_err();
    assert!(e.is_lost(), "{e}");
    assert_eq!(server.command(&["EXISTS", "lockyard:{kept}:lock"]), ":0");
}

/// A client built with `connect_lazy` boots while Redis is down, reports
/// each call as `Unavailable` in bounded time, and works once Redis is up.
#[tokio::test]
async fn a_lazy_client_boots_while_redis_is_down() {
    let mut server = RedisServer::start();
    server.stop();
    let opts = RedisOptions::default()
        .ttl(Duration::from_secs(5))
        .connect_timeout(Duration::from_millis(300));
    let locks = RedisLocks::connect_lazy(&server.url(), opts).expect("no network needed");
    let asked = std::time::Instant::now();
    let e = locks.try_acquire("boot").await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    server.restart();
    let g = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match locks.acquire("boot", Duration::from_secs(1)).await {
                Ok(g) => return g,
                Err(e) if e.is_unavailable() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the lazy client connects once Redis is up");
    assert_eq!(server.command(&["EXISTS", "lockyard:{boot}:lock"]), ":1");
    g.release().await.unwrap();
    // Outside a runtime it refuses (it starts background tasks).
    let url = server.url();
    let e = std::thread::spawn(move || {
        RedisLocks::connect_lazy(&url, RedisOptions::default()).unwrap_err()
    })
    .join()
    .unwrap();
    assert!(e.is_invalid_input(), "{e}");
}

/// An acquisition in flight when the client shuts down: its grant, answered
/// after the watchdog stopped, is lost from the start (nobody would renew
/// it or say it ran out), not a guard that reads held for its TTL.
#[tokio::test]
async fn a_grant_answered_after_shutdown_is_lost_at_once() {
    let server = RedisServer::start();
    let locks = RedisLocks::connect_with(&server.url(), opts())
        .await
        .unwrap();
    // The connection is open and the scripts loaded.
    let warm = locks.acquire("warm", Duration::from_secs(1)).await.unwrap();
    warm.release().await.unwrap();
    server.pause(Duration::from_millis(600));
    let l = locks.clone();
    let acquiring = tokio::spawn(async move { l.acquire("late", Duration::from_secs(5)).await });
    // Sent, and unanswered while the server is paused.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stopped = tokio::time::timeout(Duration::from_secs(5), locks.shutdown()).await;
    assert_eq!(stopped, Ok(0));
    let g = tokio::time::timeout(Duration::from_secs(5), acquiring)
        .await
        .expect("answered once the pause ends")
        .unwrap()
        .expect("granted");
    assert!(g.is_lost(), "a lease nobody renews reads held");
    tokio::time::timeout(Duration::from_secs(1), g.lost())
        .await
        .expect("lost at once");
}
