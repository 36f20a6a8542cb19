//! Lock-delay (`RedisOptions::lock_delay`): after a holder lost its lease
//! (its renewals cut off through the fault proxy), nobody is granted the
//! name for the delay, then it is granted; a release frees the name at
//! once; without a delay, the lost holder's name is granted as soon as its
//! lease has ended.
#![cfg(feature = "redis")]

use std::time::Duration;

use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard_testkit::proxy::FaultProxy;
use lockyard_testkit::redis::RedisServer;
use lockyard_testkit::{bounded, bounded_for};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(2);
const DELAY: Duration = Duration::from_secs(3);

fn options(delay: Option<Duration>) -> RedisOptions {
    let opts = RedisOptions::default()
        .ttl(TTL)
        .connect_timeout(Duration::from_secs(2))
        .op_timeout(Duration::from_millis(500));
    match delay {
        Some(d) => opts.lock_delay(d),
        None => opts,
    }
}

/// A holder (through a proxy, so that its renewals can be cut off) and
/// another client, both with `delay`; the holder holds `job` and has just
/// lost it. Returns when `lost` fired.
async fn lost_holder(delay: Option<Duration>) -> (RedisServer, FaultProxy, RedisLocks, Instant) {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let holder = RedisLocks::connect_with(&proxy.url(), options(delay))
        .await
        .unwrap();
    let other = RedisLocks::connect_with(&server.url(), options(delay))
        .await
        .unwrap();
    let g = bounded(holder.acquire("job", Duration::from_secs(1)))
        .await
        .unwrap();
    proxy.drop_requests(true);
    bounded(g.lost()).await;
    let lost_at = Instant::now();
    // Its release cannot reach the server either: the lease ran out.
    drop(g);
    (server, proxy, other, lost_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_holders_name_is_refused_for_the_delay_then_granted() {
    let (_server, _proxy, other, lost_at) = lost_holder(Some(DELAY)).await;
    // The lease has ended (lost fired no later than that); the delay has
    // not: refused for a whole second more.
    let e = bounded(other.acquire("job", Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(bounded(other.is_locked("job")).await.unwrap());
    let g = bounded_for(
        DELAY + Duration::from_secs(10),
        other.acquire("job", DELAY + Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let granted_at = Instant::now();
    // The key lived a delay past the lease, and the lease ended no earlier
    // than `lost` fired.
    assert!(
        granted_at >= lost_at + DELAY,
        "granted {:?} after lost fired, within the delay",
        granted_at - lost_at
    );
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_delay_the_lost_holders_name_is_granted_when_its_lease_ends() {
    let (_server, _proxy, other, _lost_at) = lost_holder(None).await;
    // The key expires at the lease's end: the drift (and at most one
    // request's delay) after `lost`.
    let g = bounded(other.acquire("job", TTL)).await.unwrap();
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_frees_the_name_at_once_whatever_the_delay() {
    let server = RedisServer::start();
    let a = RedisLocks::connect_with(&server.url(), options(Some(DELAY)))
        .await
        .unwrap();
    let b = RedisLocks::connect_with(&server.url(), options(Some(DELAY)))
        .await
        .unwrap();
    let g = bounded(a.acquire("job", Duration::from_secs(1)))
        .await
        .unwrap();
    // Held with the delay added on the server, renewed as usual.
    let pttl: i64 = server
        .command(&["PTTL", "lockyard:{job}:lock"])
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!(
        pttl > TTL.as_millis() as i64,
        "the key's expiry has no delay: {pttl} ms"
    );
    g.release().await.unwrap();
    bounded(b.try_acquire("job"))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_semaphore_permit_is_refused_for_the_delay() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let holder = RedisLocks::connect_with(&proxy.url(), options(Some(DELAY)))
        .await
        .unwrap();
    let other = RedisLocks::connect_with(&server.url(), options(Some(DELAY)))
        .await
        .unwrap();
    let p = bounded(
        holder
            .semaphore("pool", 1)
            .unwrap()
            .acquire(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    proxy.drop_requests(true);
    bounded(p.lost()).await;
    let lost_at = Instant::now();
    drop(p);
    let sem = other.semaphore("pool", 1).unwrap();
    let e = bounded(sem.acquire(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    let q = bounded_for(
        DELAY + Duration::from_secs(10),
        sem.acquire(DELAY + Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert!(Instant::now() >= lost_at + DELAY);
    q.release().await.unwrap();
}
