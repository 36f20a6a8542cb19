//! The client's cache of resource names against the stats name limit: a
//! name first counted as `(other)` gets its own entry once the limit is
//! raised. Alone in its binary: it moves the process-wide limit. (Failed
//! while the cache kept the overflow entry for the name: the adversarial
//! review of the name cache found it.)
#![cfg(feature = "redis")]

use std::time::Duration;

use lockyard::redis::RedisLocks;
use lockyard::stats::{self, Backend};
use lockyard_testkit::eventually_within;
use lockyard_testkit::redis::{RedisServer, client};

const TTL: Duration = Duration::from_secs(30);
/// How soon the semaphore's permit must be free again.
const PROMPTLY: Duration = Duration::from_secs(3);

/// A name first counted as `(other)` (the limit reached) gets its own entry
/// once the limit is raised, as `stats::set_name_limit` documents ("names
/// already seen keep their entry": this one had none).
#[tokio::test]
async fn a_name_past_the_stats_limit_gets_its_entry_once_the_limit_is_raised() {
    let server = RedisServer::start();
    let a = client(&server.url(), TTL).await;
    let named = stats::snapshot()
        .entries
        .iter()
        .filter(|e| e.backend == Backend::Redis && e.name != stats::OTHER)
        .count();
    stats::set_name_limit(named);
    let (l, s) = ("named-limit-lock", "named-limit-sem");
    take_both(&a, l, s).await;
    assert!(stats::get(Backend::Redis, l).is_none());
    assert!(stats::get(Backend::Redis, s).is_none());
    stats::set_name_limit(1_000_000);
    eventually_within("sem free", PROMPTLY, || async {
        a.semaphore(s, 1).unwrap().holders().await.unwrap() == 0
    })
    .await;
    take_both(&a, l, s).await;
    let lock_stat = stats::get(Backend::Redis, l);
    let sem_stat = stats::get(Backend::Redis, s);
    assert_eq!(
        lock_stat.map(|x| x.acquisitions),
        Some(1),
        "RedisLocks::acquire"
    );
    assert_eq!(
        sem_stat.map(|x| x.acquisitions),
        Some(1),
        "a fresh semaphore handle"
    );
}

/// Takes and releases the lock `l` (a handle per call) and a permit of the
/// semaphore `s` (a fresh handle).
async fn take_both(a: &RedisLocks, l: &str, s: &str) {
    a.acquire(l, Duration::from_secs(1))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    drop(a.semaphore(s, 1).unwrap().try_acquire().await.unwrap());
}
