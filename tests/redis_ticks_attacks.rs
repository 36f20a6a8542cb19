//! Adversarial tests of the ticker that bounds requests
//! (`src/redis/conn/ticks.rs`), from a review of commit 9692417.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard_testkit::redis::RedisServer;

fn opts(request: Duration) -> RedisOptions {
    RedisOptions::default()
        .ttl(Duration::from_secs(5))
        .connect_timeout(Duration::from_millis(800))
        .op_timeout(request)
        .pool_size(1)
}

/// Guarantee 2: a client connected on a runtime that has since shut down
/// (its ticker task died with it), then used on another runtime: a request
/// to a paused server must still fail within its bound (redis-rs's timer
/// ran on the polling runtime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_outliving_its_runtime_still_bounds_requests() {
    let server = RedisServer::start();
    let t = Duration::from_millis(300);
    let url = server.url();
    let locks = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let l = rt
            .block_on(RedisLocks::connect_with(&url, opts(t)))
            .unwrap();
        drop(rt);
        l
    })
    .join()
    .unwrap();
    // The first connection's driver died with its runtime: let the client
    // replace it on this one.
    let mut ok = false;
    for _ in 0..10 {
        if tokio::time::timeout(Duration::from_secs(2), locks.is_locked("warm"))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the client never worked on the new runtime");
    server.pause(Duration::from_millis(2500));
    let at = Instant::now();
    let r = tokio::time::timeout(Duration::from_millis(1500), locks.is_locked("x")).await;
    assert!(
        r.is_ok(),
        "is_locked hung past {:?} (T = {t:?})",
        at.elapsed()
    );
    let r = tokio::time::timeout(Duration::from_millis(1500), locks.try_acquire("y")).await;
    assert!(r.is_ok(), "try_acquire hung (T = {t:?})");
}

/// Guarantee 4: a huge op timeout (a lease of "for ever", `ttl(u64::MAX
/// s)`, and an op timeout of a quarter of that) must not panic a request.
/// Passes: `connect_with` refuses a TTL over u32::MAX ms, so the op timeout
/// stays under ~25 days (the overflow is reached only by the unit attack).
#[tokio::test]
async fn huge_op_timeout_does_not_panic() {
    let server = RedisServer::start();
    let url = server.url();
    let h = tokio::spawn(async move {
        let o = RedisOptions::default()
            .ttl(Duration::from_secs(u64::MAX))
            .op_timeout(Duration::from_secs(u64::MAX / 4))
            .pool_size(1);
        let Ok(l) = RedisLocks::connect_with(&url, o)
            .await
            .map_err(|e| eprintln!("refused: {e:?}"))
        else {
            return Ok(());
        };
        l.is_locked("x").await.map(|_| ())
    });
    let r = tokio::time::timeout(Duration::from_secs(5), h)
        .await
        .expect("hung");
    if let Err(e) = &r {
        assert!(!e.is_panic(), "panicked: {e:?}");
    }
}

/// Guarantee 1: 32 requests on one connection into a paused server, on a
/// multi-thread runtime: each fails with a timeout between T and 1.125 T
/// (+ slack) after it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_each_fail_within_an_eighth() {
    let server = RedisServer::start();
    let t = Duration::from_millis(400);
    let locks = RedisLocks::connect_with(&server.url(), opts(t))
        .await
        .unwrap();
    assert!(!locks.is_locked("warm").await.unwrap());
    server.pause(Duration::from_millis(2000));
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let l = locks.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(u64::from(i) * 7)).await;
            let at = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(3), l.is_locked("stall")).await;
            (at.elapsed(), r)
        }));
    }
    for (i, h) in tasks.into_iter().enumerate() {
        let (took, r) = h.await.unwrap();
        let r = r.unwrap_or_else(|_| panic!("request {i} hung"));
        let e = r.expect_err("answered during the pause");
        assert!(e.is_unavailable(), "{e:?}");
        assert!(
            took >= t && took < t * 9 / 8 + Duration::from_millis(150),
            "request {i}: {took:?}"
        );
    }
}
