//! Redlock over three private redis-servers: quorum, servers down (one:
//! works; two: a clear `NoQuorum`), contention vs outage, loss, renewal,
//! mutual exclusion, cancellation.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lockyard::redis::{RedisOptions, Redlock, RedlockOptions};
use lockyard::{AcquireOptions, Lock, LockError, Mode};
use lockyard_testkit::bounded;
use lockyard_testkit::redis::{RedisServer, redlock_options};

fn servers(n: usize) -> Vec<RedisServer> {
    (0..n).map(|_| RedisServer::start()).collect()
}

fn urls(servers: &[RedisServer]) -> Vec<String> {
    servers.iter().map(RedisServer::url).collect()
}

async fn redlock(servers: &[RedisServer], ttl: Duration) -> Redlock {
    let opts = redlock_options(ttl);
    bounded(Redlock::connect_with(&urls(servers), opts))
        .await
        .expect("connect")
}

/// How many servers hold the lock key of `name`.
fn holders(servers: &[RedisServer], name: &str) -> usize {
    servers
        .iter()
        .filter(|s| {
            s.is_up() && s.command(&["EXISTS", &format!("lockyard:{{{name}}}:lock")]) == ":1"
        })
        .count()
}

#[tokio::test]
async fn acquire_contend_release_on_three_servers() {
    let s = servers(3);
    let a = redlock(&s, Duration::from_secs(10)).await;
    let b = redlock(&s, Duration::from_secs(10)).await;
    assert_eq!((a.servers(), a.quorum()), (3, 2));

    let g = bounded(a.acquire("job", Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(g.resource(), "job");
    assert!(!g.is_lost());
    assert!(g.validity() <= Duration::from_secs(10) - Duration::from_millis(102));
    assert!(g.validity() > Duration::from_secs(5));
    assert_eq!(holders(&s, "job"), 3);
    assert!(b.is_locked("job").await.unwrap());

    // Contention is not an outage.
    let err = b.try_acquire("job").await.unwrap_err();
    assert!(err.is_would_block(), "{err}");
    let err = b
        .acquire("job", Duration::from_millis(150))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // A failed attempt leaves nothing of the loser behind.
    assert_eq!(holders(&s, "job"), 3);

    let first = g.best_effort_fencing_token();
    bounded(g.release()).await.unwrap();
    assert_eq!(holders(&s, "job"), 0);
    assert!(!b.is_locked("job").await.unwrap());
    let g2 = bounded(b.try_acquire("job")).await.unwrap();
    assert!(g2.best_effort_fencing_token() > first);
    drop(g2);
    let start = Instant::now();
    while holders(&s, "job") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "drop did not release"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn bad_input_and_the_lock_trait() {
    let s = servers(3);
    let u = urls(&s);
    let dup = [u[0].clone(), u[1].clone(), u[0].clone()];
    let err = Redlock::connect(&dup, RedisOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    let none: [&str; 0] = [];
    assert!(
        Redlock::connect(&none, RedisOptions::default())
            .await
            .unwrap_err()
            .is_invalid_input()
    );
    let err = Redlock::connect(&["not a url"], RedisOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_invalid_input(), "{err}");

    let r = redlock(&s, Duration::from_secs(10)).await;
    assert!(
        r.acquire("a{b}", Duration::ZERO)
            .await
            .unwrap_err()
            .is_invalid_input()
    );
    let lock: Arc<dyn Lock> = Arc::new(r.lock("trait").unwrap());
    assert!(matches!(
        lock.try_lock(Mode::Shared).await.unwrap_err(),
        LockError::Unsupported { .. }
    ));
    let g = bounded(lock.lock(&AcquireOptions::exclusive().timeout(Duration::from_secs(2))))
        .await
        .unwrap();
    // No true fencing token through the generic guard.
    assert_eq!(g.fencing_token(), None);
    assert!(lock.is_locked().await.unwrap());
    assert!(
        lock.try_lock(Mode::Exclusive)
            .await
            .unwrap_err()
            .is_would_block()
    );
    g.release().await.unwrap();
    assert!(!lock.is_locked().await.unwrap());
}

#[tokio::test]
async fn one_server_down_still_works() {
    let mut s = servers(3);
    let r = redlock(&s, Duration::from_secs(5)).await;
    s[2].stop();
    let g = bounded(r.acquire("one-down", Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(holders(&s, "one-down"), 2);
    assert!(
        r.try_acquire("one-down")
            .await
            .unwrap_err()
            .is_would_block()
    );
    bounded(g.release()).await.unwrap();
    assert_eq!(holders(&s, "one-down"), 0);

    // A server that is down at connect time counts as one of the three.
    let r2 = redlock(&s, Duration::from_secs(5)).await;
    assert_eq!((r2.servers(), r2.quorum()), (3, 2));
    let g = bounded(r2.acquire("one-down", Duration::from_secs(5)))
        .await
        .unwrap();
    g.release().await.unwrap();
    // ... and rejoins once it is back.
    s[2].restart();
    let g = bounded(r2.acquire("one-down", Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(holders(&s, "one-down"), 3);
    g.release().await.unwrap();
    assert_eq!(holders(&s, "one-down"), 0);
}

#[tokio::test]
async fn two_servers_down_is_a_clear_no_quorum_error() {
    let mut s = servers(3);
    let r = redlock(&s, Duration::from_secs(5)).await;
    s[0].stop();
    s[1].stop();
    let asked = Instant::now();
    let err = bounded(r.acquire("two-down", Duration::from_secs(20)))
        .await
        .unwrap_err();
    // At once, not after the 20 s timeout: waiting cannot help.
    assert!(asked.elapsed() < Duration::from_secs(5));
    match &err {
        LockError::NoQuorum {
            resource,
            granted,
            needed,
            total,
            errors,
        } => {
            assert_eq!(resource, "two-down");
            assert_eq!((*granted, *needed, *total), (1, 2, 3));
            assert_eq!(errors.len(), 2);
            assert!(errors.iter().all(LockError::is_unavailable), "{errors:?}");
        }
        other => panic!("expected NoQuorum, got {other:?}"),
    }
    assert!(!err.is_contended());
    // The one grant was given back.
    assert_eq!(holders(&s, "two-down"), 0);
    assert!(matches!(
        r.try_acquire("two-down").await.unwrap_err(),
        LockError::NoQuorum { .. }
    ));
    assert!(matches!(
        r.is_locked("two-down").await.unwrap_err(),
        LockError::NoQuorum { .. }
    ));
    // Two of three down at connect time: refused up front.
    let err = Redlock::connect(
        &urls(&s),
        RedisOptions::default().connect_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, LockError::NoQuorum { .. }), "{err}");
}

/// Renewal keeps the lock past its TTL; restarting two servers empty makes
/// the lock lost (too few servers still hold our key).
#[tokio::test]
async fn renewal_and_loss() {
    let mut s = servers(3);
    let r = redlock(&s, Duration::from_millis(600)).await;
    let g = bounded(r.acquire("renew", Duration::from_secs(2)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!g.is_lost());
    assert_eq!(holders(&s, "renew"), 3);
    assert!(g.validity() > Duration::ZERO);

    s[0].restart();
    s[1].restart();
    bounded(g.lost()).await;
    assert!(g.is_lost());
    let err = bounded(g.release()).await.unwrap_err();
    assert!(matches!(err, LockError::NotHeld { .. }), "{err}");
}

/// Redlock stands on the lease core: each granting server's lease rides
/// that server's watchdog batches, so 1,000 guards renew in a few round
/// trips per period, not one per guard per server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_ride_the_servers_watchdog_batches() {
    let s = servers(3);
    let r = redlock(&s, Duration::from_millis(1500)).await;
    let mut guards = Vec::new();
    for chunk in 0..10 {
        let r = &r;
        let batch = futures::future::join_all((0..100).map(|i| async move {
            r.acquire(&format!("b{chunk}-{i}"), Duration::from_secs(5))
                .await
        }));
        for g in bounded(batch).await {
            guards.push(g.expect("acquire"));
        }
    }
    let before = r.stats();
    assert_eq!(before.held, 3000, "one lease per guard per server");
    // Two renewal periods (TTL / 3 each).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = r.stats();
    let (renewals, trips) = (
        after.renewals - before.renewals,
        after.renewal_round_trips - before.renewal_round_trips,
    );
    assert!(
        renewals >= 3000,
        "every lease renewed: {after:?} after {before:?}"
    );
    assert!(
        renewals >= 50 * trips,
        "{renewals} renewals in {trips} round trips: fewer than 50 a trip"
    );
    assert!(guards.iter().all(|g| !g.is_lost()));
    assert_eq!(after.lost, 0);
    drop(guards);
}

/// One server of three failing its renewals is not suspect (a majority
/// still renews); two are, until the validity runs out. An extend moves the
/// majority's validity.
#[tokio::test]
async fn suspect_needs_a_failing_majority_and_extend_moves_the_validity() {
    let mut s = servers(3);
    let ttl = Duration::from_millis(600);
    let r = redlock(&s, ttl).await;
    let g = bounded(r.acquire("sus", Duration::from_secs(2)))
        .await
        .unwrap();
    bounded(g.extend(Duration::from_secs(5))).await.unwrap();
    assert!(g.validity() > Duration::from_secs(3), "{:?}", g.validity());
    s[0].stop();
    // Renewals every TTL / 3 from now on, one of three failing each time.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(g.state(), lockyard::LeaseState::Held);
    s[1].stop();
    bounded(g.suspect()).await;
    assert_eq!(g.state(), lockyard::LeaseState::Suspect);
    bounded(g.lost()).await;
    assert_eq!(g.state(), lockyard::LeaseState::Lost);
}

#[tokio::test]
async fn lost_fires_when_a_majority_becomes_unreachable() {
    let mut s = servers(3);
    // A drift margin of TTL / 4 rather than the default 8 ms: the check
    // below is "within the validity", and a timer on a loaded 2-core CI box
    // can fire tens of ms late (the margin exists to absorb that).
    let ttl = Duration::from_millis(600);
    let opts = RedlockOptions::new()
        .redis(
            RedisOptions::default()
                .ttl(ttl)
                .connect_timeout(Duration::from_millis(500))
                .op_timeout(Duration::from_millis(250)),
        )
        .retry_delay(Duration::from_millis(20))
        .drift(ttl / 4);
    let r = bounded(Redlock::connect_with(&urls(&s), opts))
        .await
        .expect("connect");
    let g = bounded(r.acquire("unreach", Duration::from_secs(2)))
        .await
        .unwrap();
    s[0].stop();
    s[1].stop();
    let stopped = Instant::now();
    bounded(g.lost()).await;
    // Within the validity, before the keys could expire.
    assert!(stopped.elapsed() < Duration::from_millis(600));
    let err = bounded(g.release()).await.unwrap_err();
    assert!(matches!(err, LockError::NoQuorum { .. }), "{err}");
}

/// Tasks on two Redlock clients increment a shared counter in Redis with a
/// read-modify-write: no lost updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_counter() {
    let s = servers(3);
    let clients = [
        redlock(&s, Duration::from_secs(5)).await,
        redlock(&s, Duration::from_secs(5)).await,
    ];
    let raw = redis::Client::open(s[0].url()).unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let rounds = 8;
    let mut tasks = Vec::new();
    for c in &clients {
        for _ in 0..3 {
            let (r, raw, inside) = (c.clone(), raw.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn = raw.get_multiplexed_async_connection().await.unwrap();
                for _ in 0..rounds {
                    let g = r.acquire("counter", Duration::from_secs(20)).await.unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                    let v: Option<i64> = redis::cmd("GET")
                        .arg("n")
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let _: () = redis::cmd("SET")
                        .arg("n")
                        .arg(v.unwrap_or(0) + 1)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    g.release().await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        bounded(t).await.unwrap();
    }
    assert_eq!(s[0].command(&["GET", "n"]), (2 * 3 * rounds).to_string());
}

/// Acquisitions cancelled at random moments leave no key on any server
/// (long before the 10 s TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_at_random_moments_leaks_nothing() {
    use rand::Rng;
    let s = servers(3);
    let r = redlock(&s, Duration::from_secs(10)).await;
    let other = redlock(&s, Duration::from_secs(10)).await;
    let mut rng = rand::rng();
    for round in 0..40 {
        let blocker = if round % 3 == 0 {
            Some(
                bounded(other.acquire("cancel", Duration::from_secs(5)))
                    .await
                    .unwrap(),
            )
        } else {
            None
        };
        let cancel_after = Duration::from_micros(rng.random_range(0..2000));
        if let Ok(Ok(g)) =
            tokio::time::timeout(cancel_after, r.acquire("cancel", Duration::from_secs(5))).await
        {
            drop(g);
        }
        if let Some(b) = blocker {
            b.release().await.unwrap();
        }
    }
    let start = Instant::now();
    while holders(&s, "cancel") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a cancelled acquisition left a key"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bounded(other.try_acquire("cancel"))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}
