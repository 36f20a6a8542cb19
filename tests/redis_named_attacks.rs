//! Attacks on the client's cache of resource names (`Context::named`: a
//! name found there is not validated again; the stats entry is looked up
//! once per cached name) and on the boxed cold paths of an acquisition.
//! Each test tries to break one guarantee: no invalid name is accepted by
//! any entry point, in any order of calls; every acquisition of a name is
//! counted exactly once (many handles, two clients, a cleared cache), and a
//! handle never used makes no stats entry; a dropped acquisition leaves no
//! lock held (free promptly, not by its TTL); prefixes never mix; one name
//! is one lock whatever order its handles are made in.
#![cfg(feature = "redis")]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lockyard::redis::{RedisLocks, RedisOptions, Redlock};
use lockyard::stats::{self, Backend};
use lockyard::{AcquireOptions, LockError};
use lockyard_testkit::proxy::FaultProxy;
use lockyard_testkit::redis::{RedisServer, client, redlock_options};
use lockyard_testkit::{bounded, eventually_within};

/// Long enough that a lock freed by its TTL is never mistaken for one
/// freed by a release.
const TTL: Duration = Duration::from_secs(30);
/// How soon a dropped acquisition's lock must be free.
const PROMPTLY: Duration = Duration::from_secs(3);
/// More distinct names than the client's cache keeps (4096).
const CHURN: usize = 5000;

fn bad_names() -> Vec<String> {
    vec![
        String::new(),
        "a{b".into(),
        "a}b".into(),
        "{x}".into(),
        "a\nb".into(),
        "tab\there".into(),
        "x".repeat(513),
    ]
}

fn is_invalid_name(r: &Result<impl std::fmt::Debug, LockError>) -> bool {
    matches!(r, Err(LockError::InvalidName { .. }))
}

/// Every key on the server.
async fn all_keys(server: &RedisServer) -> Vec<String> {
    let raw = redis::Client::open(server.url()).unwrap();
    let mut conn = raw.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Makes (and never uses) handles of `CHURN` distinct names, so that the
/// client's cache is cleared at least once.
fn churn(locks: &RedisLocks, tag: &str) {
    for i in 0..CHURN {
        locks.lock(&format!("{tag}-churn-{i}")).unwrap();
    }
}

/// Every public entry point of `locks` refuses every bad name.
async fn refuses_every_bad_name(locks: &RedisLocks, when: &str) {
    let short = Duration::from_millis(100);
    for bad in bad_names() {
        let b = bad.as_str();
        let shown = format!("{when}: {b:?}");
        assert!(is_invalid_name(&locks.lock(b)), "lock {shown}");
        assert!(is_invalid_name(&locks.rwlock(b)), "rwlock {shown}");
        assert!(is_invalid_name(&locks.semaphore(b, 1)), "semaphore {shown}");
        assert!(
            is_invalid_name(&locks.semaphore(b, 0)),
            "semaphore(0) must refuse the name first {shown}"
        );
        assert!(
            is_invalid_name(&bounded(locks.acquire(b, short)).await),
            "acquire {shown}"
        );
        assert!(
            is_invalid_name(
                &bounded(locks.acquire_with(b, &AcquireOptions::shared().timeout(short))).await
            ),
            "acquire_with {shown}"
        );
        assert!(
            is_invalid_name(&bounded(locks.try_acquire(b)).await),
            "try_acquire {shown}"
        );
        assert!(
            is_invalid_name(&bounded(locks.is_locked(b)).await),
            "is_locked {shown}"
        );
        assert!(
            is_invalid_name(&bounded(locks.owner(b)).await),
            "owner {shown}"
        );
    }
}

/// No key on the server carries a name the client should have refused.
async fn no_key_of_a_bad_name(server: &RedisServer) {
    for key in all_keys(server).await {
        let opens = key.matches('{').count();
        let closes = key.matches('}').count();
        assert!(
            opens == 1 && closes == 1 && !key.chars().any(char::is_control),
            "a key of an invalid name reached the server: {key:?}"
        );
    }
}

#[tokio::test]
async fn no_order_of_calls_gets_an_invalid_name_past_any_entry_point() {
    let server = RedisServer::start();
    let locks = client(&server.url(), TTL).await;
    refuses_every_bad_name(&locks, "cold").await;
    // Paths that build keys without a handle (owner, then is_locked) tried
    // first, then the handle paths that trust the cache.
    for bad in bad_names() {
        let _ = locks.owner(&bad).await;
        let _ = locks.semaphore(&bad, 0);
        assert!(is_invalid_name(&locks.lock(&bad)), "{bad:?} after owner");
    }
    // Valid neighbours of the bad names in the cache.
    for good in ["a", "ab", "a b", "x", "tab here"] {
        locks
            .try_acquire(good)
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        let _ = locks.owner(good).await.unwrap();
    }
    refuses_every_bad_name(&locks, "after valid neighbours").await;
    churn(&locks, "invalid");
    refuses_every_bad_name(&locks, "after the cache was cleared").await;
    // A clone shares the cache.
    refuses_every_bad_name(&locks.clone(), "a clone").await;
    no_key_of_a_bad_name(&server).await;
}

#[tokio::test]
async fn redlock_refuses_invalid_names_before_and_after_valid_use() {
    let servers = [
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    ];
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let r = bounded(Redlock::connect_with(&urls, redlock_options(TTL)))
        .await
        .unwrap();
    let check = |when: &'static str| {
        let r = &r;
        async move {
            for bad in bad_names() {
                let b = bad.as_str();
                assert!(is_invalid_name(&r.lock(b)), "redlock lock {when} {b:?}");
                assert!(
                    is_invalid_name(&bounded(r.acquire(b, Duration::from_millis(100))).await),
                    "redlock acquire {when} {b:?}"
                );
                assert!(
                    is_invalid_name(&bounded(r.try_acquire(b)).await),
                    "redlock try_acquire {when} {b:?}"
                );
                assert!(
                    is_invalid_name(&bounded(r.is_locked(b)).await),
                    "redlock is_locked {when} {b:?}"
                );
            }
        }
    };
    check("cold").await;
    let g = bounded(r.acquire("a", Duration::from_secs(2)))
        .await
        .unwrap();
    drop(g);
    check("after a valid name").await;
    for s in &servers {
        no_key_of_a_bad_name(s).await;
    }
}

#[tokio::test]
async fn every_acquisition_is_counted_once_across_handles_clients_and_a_cleared_cache() {
    stats::set_name_limit(1_000_000);
    let server = RedisServer::start();
    let (a, b) = (
        client(&server.url(), TTL).await,
        client(&server.url(), TTL).await,
    );
    let name = "named-stats-main";
    let wait = Duration::from_secs(2);
    // A handle made before the cache is cleared, used after.
    let early = a.lock(name).unwrap();
    let early_rw = a.rwlock(name).unwrap();
    assert!(
        stats::get(Backend::Redis, name).is_none(),
        "a handle made no entry"
    );
    let mut expected = 0;
    for _ in 0..3 {
        a.acquire(name, wait)
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        b.acquire(name, wait)
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        expected += 2;
    }
    let handles: Vec<_> = (0..10).map(|_| a.lock(name).unwrap()).collect();
    for h in &handles {
        h.acquire(wait).await.unwrap().release().await.unwrap();
        expected += 1;
    }
    churn(&a, "stats");
    churn(&b, "stats-b");
    for i in [0, 1, 4095, 4096, CHURN - 1] {
        let n = format!("stats-churn-{i}");
        assert!(
            stats::get(Backend::Redis, &n).is_none(),
            "unused {n} has an entry"
        );
    }
    early.acquire(wait).await.unwrap().release().await.unwrap();
    early_rw.write(wait).await.unwrap().release().await.unwrap();
    early_rw.read(wait).await.unwrap().release().await.unwrap();
    a.acquire(name, wait)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    b.lock(name)
        .unwrap()
        .try_acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    expected += 5;
    let got = stats::get(Backend::Redis, name).unwrap();
    assert_eq!(got.acquisitions, expected, "{got:?}");
    assert_eq!(got.held, 0, "{got:?}");
}

#[tokio::test]
async fn acquisitions_during_cache_clears_are_each_counted_once() {
    stats::set_name_limit(1_000_000);
    let server = RedisServer::start();
    let a = client(&server.url(), TTL).await;
    let name = "named-stats-racing";
    let stop = Arc::new(AtomicBool::new(false));
    let churner = {
        let (a, stop) = (a.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..500 {
                    a.lock(&format!("racing-churn-{i}")).unwrap();
                    i += 1;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (a, done) = (a.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0..25 {
                let g = if (t + k) % 3 == 0 {
                    a.rwlock(name)
                        .unwrap()
                        .write(Duration::from_secs(10))
                        .await
                        .map(|_| ())
                } else {
                    a.acquire(name, Duration::from_secs(10)).await.map(|_| ())
                };
                g.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        bounded(t).await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    bounded(churner).await.unwrap();
    let got = stats::get(Backend::Redis, name).unwrap();
    assert_eq!(got.acquisitions, done.load(Ordering::Relaxed), "{got:?}");
}

#[tokio::test]
async fn semaphore_acquisitions_are_counted_once_per_acquisition() {
    stats::set_name_limit(1_000_000);
    let server = RedisServer::start();
    let (a, b) = (
        client(&server.url(), TTL).await,
        client(&server.url(), TTL).await,
    );
    let name = "named-stats-sem";
    let early = a.semaphore(name, 2).unwrap();
    assert!(
        stats::get(Backend::Redis, name).is_none(),
        "a handle made no entry"
    );
    let mut expected = 0;
    for c in [&a, &b, &a] {
        let s = c.semaphore(name, 2).unwrap();
        drop(s.try_acquire().await.unwrap());
        drop(s.acquire(Duration::from_secs(2)).await.unwrap());
        expected += 2;
        eventually_within("permits back", PROMPTLY, || async {
            s.holders().await.unwrap() == 0
        })
        .await;
    }
    churn(&a, "sem");
    drop(early.acquire(Duration::from_secs(2)).await.unwrap());
    drop(a.semaphore(name, 2).unwrap().try_acquire().await.unwrap());
    expected += 2;
    let got = stats::get(Backend::Redis, name).unwrap();
    assert_eq!(got.acquisitions, expected, "{got:?}");
}

#[tokio::test]
async fn handles_and_looks_that_never_acquire_make_no_stats_entry() {
    stats::set_name_limit(1_000_000);
    let server = RedisServer::start();
    let a = client(&server.url(), TTL).await;
    let (l, rw, s) = ("named-unused-l", "named-unused-rw", "named-unused-s");
    let lh = a.lock(l).unwrap();
    let rh = a.rwlock(rw).unwrap();
    let sh = a.semaphore(s, 3).unwrap();
    let _ = a.semaphore("named-unused-zero", 0);
    assert!(!lh.is_locked().await.unwrap());
    assert!(!rh.is_locked().await.unwrap());
    assert_eq!(sh.holders().await.unwrap(), 0);
    assert!(a.owner(l).await.unwrap().is_none());
    assert!(!a.is_locked(rw).await.unwrap());
    for n in [l, rw, s, "named-unused-zero"] {
        assert!(stats::get(Backend::Redis, n).is_none(), "{n} has an entry");
        assert!(
            !stats::snapshot().entries.iter().any(|e| e.name == n),
            "{n} in the snapshot"
        );
    }
}

type Attempt = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Starts `attempt()` and drops it after each of `cancel_at`; after each
/// drop, the name must be free for `probe` within [`PROMPTLY`].
async fn sweep<F, P, PF>(what: &str, cancel_at: &[Duration], attempt: F, probe: P)
where
    F: Fn() -> Attempt,
    P: Fn() -> PF,
    PF: Future<Output = bool>,
{
    let mut held_at_drop = 0;
    for &d in cancel_at {
        let _ = tokio::time::timeout(d, attempt()).await;
        if !probe().await {
            held_at_drop += 1;
        }
        eventually_within(
            &format!("{what}: free after a drop at {d:?}"),
            PROMPTLY,
            &probe,
        )
        .await;
    }
    // The sweep reached the server: some drops left a hold to clean up.
    eprintln!(
        "{what}: held right after {held_at_drop} of {} drops",
        cancel_at.len()
    );
    assert!(
        held_at_drop > 0,
        "{what}: no drop ever left anything to undo"
    );
}

fn steps(from_ms: u64, to_ms: u64, step_ms: u64) -> Vec<Duration> {
    (from_ms..=to_ms)
        .step_by(step_ms as usize)
        .map(Duration::from_millis)
        .collect()
}

/// Whether `direct` can take and release `name` exclusively now.
async fn free(direct: &RedisLocks, name: &str) -> bool {
    match direct.try_acquire(name).await {
        Ok(g) => {
            g.release().await.unwrap();
            true
        }
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_dropped_uncontended_acquisition_leaves_nothing_held() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    proxy.delay_replies(Duration::from_millis(15));
    let slow = client(&proxy.url(), TTL).await;
    let direct = client(&server.url(), TTL).await;
    for (kind, name) in [
        ("lock", "named-drop-l"),
        ("read", "named-drop-r"),
        ("sem", "named-drop-s"),
    ] {
        let attempt = || -> Attempt {
            let slow = slow.clone();
            Box::pin(async move {
                let _ = match kind {
                    "lock" => slow.acquire(name, Duration::from_secs(5)).await.map(drop),
                    "read" => slow
                        .rwlock(name)
                        .unwrap()
                        .read(Duration::from_secs(5))
                        .await
                        .map(drop),
                    _ => slow
                        .semaphore(name, 1)
                        .unwrap()
                        .acquire(Duration::from_secs(5))
                        .await
                        .map(drop),
                };
            })
        };
        let probe = || {
            let direct = direct.clone();
            async move {
                if kind == "sem" {
                    direct
                        .semaphore(name, 1)
                        .unwrap()
                        .try_acquire()
                        .await
                        .map(drop)
                        .is_ok()
                } else {
                    free(&direct, name).await
                }
            }
        };
        sweep(kind, &steps(0, 90, 2), attempt, probe).await;
    }
}

#[tokio::test]
async fn a_dropped_waiting_acquisition_leaves_nothing_held_after_the_holder_leaves() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    proxy.delay_replies(Duration::from_millis(10));
    let slow = client(&proxy.url(), TTL).await;
    let direct = client(&server.url(), TTL).await;
    let name = "named-drop-wait";
    for d in steps(0, 120, 4) {
        let holder = direct.acquire(name, Duration::from_secs(2)).await.unwrap();
        // Two waiters of one client: the second waits on the local queue.
        let first = slow.acquire(name, Duration::from_secs(20));
        let second = slow.rwlock(name).unwrap();
        let second = second.write(Duration::from_secs(20));
        let _ = tokio::time::timeout(d, async { tokio::join!(first, second) }).await;
        holder.release().await.unwrap();
        eventually_within(
            &format!("free after waiters dropped at {d:?}"),
            PROMPTLY,
            || free(&direct, name),
        )
        .await;
        // The client's own queue is not left stuck either.
        let g = bounded(slow.acquire(name, PROMPTLY)).await.unwrap();
        g.release().await.unwrap();
    }
}

#[tokio::test]
async fn a_dropped_acquisition_mid_undo_leaves_nothing_held() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let slow = client(&proxy.url(), TTL).await;
    let direct = client(&server.url(), TTL).await;
    let name = "named-drop-undo";
    // Grants come back after the 20 ms deadline: each is undone.
    proxy.delay_replies(Duration::from_millis(80));
    let attempt = || -> Attempt {
        let slow = slow.clone();
        Box::pin(async move {
            let _ = slow.acquire(name, Duration::from_millis(20)).await;
        })
    };
    sweep("undo", &steps(60, 300, 8), attempt, || free(&direct, name)).await;
}

#[tokio::test]
async fn a_dropped_acquisition_during_a_pool_refill_leaves_nothing_held() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    proxy.delay_replies(Duration::from_millis(10));
    let opts = RedisOptions::default()
        .ttl(TTL)
        .connect_timeout(Duration::from_secs(2));
    let slow = RedisLocks::connect_lazy(&proxy.url(), opts).unwrap();
    let direct = client(&server.url(), TTL).await;
    let name = "named-drop-refill";
    let attempt = || -> Attempt {
        // Every pooled connection broken: the next acquisition refills.
        proxy.cut();
        let slow = slow.clone();
        Box::pin(async move {
            let _ = slow.acquire(name, Duration::from_secs(5)).await;
        })
    };
    sweep("refill", &steps(0, 120, 3), attempt, || free(&direct, name)).await;
    // And the client still works.
    bounded(slow.acquire(name, PROMPTLY))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[tokio::test]
async fn prefixes_never_mix_through_the_name_cache() {
    let server = RedisServer::start();
    let url = server.url();
    let with = |p: &'static str| {
        RedisLocks::connect_with(&url, RedisOptions::default().ttl(TTL).key_prefix(p))
    };
    let (a, b) = (with("pa:").await.unwrap(), with("pb:").await.unwrap());
    let name = "named-prefix";
    let held = a.acquire(name, Duration::from_secs(1)).await.unwrap();
    // Same name, other prefix: another lock.
    let other = bounded(b.try_acquire(name)).await.unwrap();
    assert!(
        a.lock(name)
            .unwrap()
            .try_acquire()
            .await
            .unwrap_err()
            .is_would_block()
    );
    churn(&a, "prefix");
    churn(&b, "prefix");
    assert!(a.try_acquire(name).await.unwrap_err().is_would_block());
    let keys = all_keys(&server).await;
    assert!(keys.contains(&format!("pa:{{{name}}}:lock")), "{keys:?}");
    assert!(keys.contains(&format!("pb:{{{name}}}:lock")), "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with("pa:") || k.starts_with("pb:")),
        "{keys:?}"
    );
    assert!(b.owner(name).await.unwrap().is_some());
    held.release().await.unwrap();
    other.release().await.unwrap();
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Lock,
    Rw,
    Sem,
}

#[tokio::test]
async fn one_name_is_one_lock_whatever_order_its_handles_are_made_in() {
    use Kind::*;
    let server = RedisServer::start();
    let (a, b) = (
        client(&server.url(), TTL).await,
        client(&server.url(), TTL).await,
    );
    let orders = [
        [Lock, Rw, Sem],
        [Lock, Sem, Rw],
        [Rw, Lock, Sem],
        [Rw, Sem, Lock],
        [Sem, Lock, Rw],
        [Sem, Rw, Lock],
    ];
    for (i, order) in orders.iter().enumerate() {
        for clear_between in [false, true] {
            let name = format!("named-one-{i}-{clear_between}");
            let (mut lock, mut rw, mut sem) = (None, None, None);
            for (j, k) in order.iter().enumerate() {
                // Alternate clients; maybe clear the cache in between.
                let c = if j % 2 == 0 { &a } else { &b };
                if clear_between {
                    churn(c, &format!("{name}-{j}"));
                }
                match k {
                    Lock => lock = Some(c.lock(&name).unwrap()),
                    Rw => rw = Some(c.rwlock(&name).unwrap()),
                    Sem => sem = Some(c.semaphore(&name, 2).unwrap()),
                }
            }
            let (lock, rw, sem) = (lock.unwrap(), rw.unwrap(), sem.unwrap());
            let ctx = format!("{name} {order:?}");
            // Exclusive holder: the others are refused.
            let g = lock.try_acquire().await.unwrap();
            assert!(rw.try_read().await.unwrap_err().is_would_block(), "{ctx}");
            assert!(rw.try_write().await.unwrap_err().is_would_block(), "{ctx}");
            let e = sem.try_acquire().await.unwrap_err();
            assert!(e.is_would_block() || e.is_wrong_kind(), "{ctx}: {e}");
            g.release().await.unwrap();
            // A reader: no exclusive holder, no semaphore.
            let r = rw.try_read().await.unwrap();
            assert!(
                lock.try_acquire().await.unwrap_err().is_would_block(),
                "{ctx}"
            );
            let e = sem.try_acquire().await.unwrap_err();
            assert!(e.is_would_block() || e.is_wrong_kind(), "{ctx}: {e}");
            r.release().await.unwrap();
            // A semaphore holder: the lock kinds are refused.
            let p = sem.try_acquire().await.unwrap();
            let e = lock.try_acquire().await.unwrap_err();
            assert!(e.is_wrong_kind(), "{ctx}: {e}");
            let e = rw.try_write().await.unwrap_err();
            assert!(e.is_wrong_kind(), "{ctx}: {e}");
            drop(p);
            eventually_within(&ctx, PROMPTLY, || async {
                lock.try_acquire().await.is_ok()
            })
            .await;
        }
    }
}
