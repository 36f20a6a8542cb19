//! Redis Sentinel: a private primary, its replicas and three sentinels
//! (`lockyard_testkit::sentinel`), failed over gracefully (`SENTINEL
//! FAILOVER`) and by a crash (SIGKILL of the primary) while a lock is held
//! and contended; a failover while replication to the replica that will be
//! promoted is stalled, without and with `wait_for_replicas`; the guard
//! contract on Sentinel; bad Sentinel URLs.
#![cfg(feature = "redis")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockyard::Lock;
use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard_testkit::conformance::Keep;
use lockyard_testkit::sentinel::{FAILOVER_LIMIT, MASTER_NAME, RedisSentinel};
use lockyard_testkit::{bounded, bounded_for, child, conformance_tests, eventually};
use tokio::time::Instant;

/// Quick timeouts, so that a dead primary is noticed fast (but room for a
/// loaded 2-core machine).
fn options(ttl: Duration) -> RedisOptions {
    RedisOptions::default()
        .ttl(ttl)
        .connect_timeout(Duration::from_secs(2))
        .op_timeout(Duration::from_millis(600))
}

async fn start(replicas: usize) -> RedisSentinel {
    tokio::task::spawn_blocking(move || RedisSentinel::start(replicas))
        .await
        .unwrap()
}

async fn start_stallable() -> RedisSentinel {
    tokio::task::spawn_blocking(RedisSentinel::start_stallable)
        .await
        .unwrap()
}

/// `SENTINEL FAILOVER`, off the runtime's threads; the new primary's port.
async fn failover(s: &Arc<RedisSentinel>) -> u16 {
    let s = s.clone();
    tokio::task::spawn_blocking(move || s.failover())
        .await
        .unwrap()
}

/// The key of the plain lock `name` under the default prefix.
fn lock_key(name: &str) -> String {
    format!("lockyard:{{{name}}}:lock")
}

// ---- 4 processes x 50 increments through a failover ----

/// How many increments each child makes.
const ROUNDS: u32 = 50;

/// A child: `URL|COUNTER FILE|WAIT` (WAIT `1`: with `wait_for_replicas(1,
/// 200 ms)`). Takes the lock `counter` ROUNDS times
/// (waiting as long as it takes, through the failover), increments the
/// number in the file under it (read, pause, write: a second holder at the
/// same time would lose an increment), and reports every hold as
/// `granted_ns-end_ns` (the end taken before the release is sent, or when
/// `lost` fired; a hold that was lost wrote nothing and is retried).
#[tokio::test(flavor = "current_thread")]
async fn child_process_entry() {
    let Some(spec) = child::role() else {
        return;
    };
    let mut parts = spec.split('|');
    let (url, file) = (parts.next().unwrap(), parts.next().unwrap());
    let mut opts = options(Duration::from_secs(3));
    if parts.next() == Some("1") {
        opts = opts.wait_for_replicas(1, Duration::from_millis(200));
    }
    let client = RedisLocks::connect_with(url, opts).await.unwrap();
    let mut holds = Vec::new();
    let mut done = 0;
    while done < ROUNDS {
        let g = client
            .acquire("counter", Duration::from_secs(60))
            .await
            .unwrap();
        let granted = child::monotonic_ns();
        let work = g
            .run_until_lost(async {
                let n: u64 = std::fs::read_to_string(file)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
                std::fs::write(file, (n + 1).to_string()).unwrap();
            })
            .await;
        let end = child::monotonic_ns();
        match work {
            Ok(()) => {
                done += 1;
                holds.push(format!("{granted}-{end}"));
                // During a failover the release may not get through: the
                // lock then expires by its TTL.
                let _ = g.release().await;
            }
            Err(_) => holds.push(format!("{granted}-{end}L")),
        }
    }
    child::say(&format!("done {}", holds.join(",")));
}

enum Failover {
    Graceful,
    Kill,
}

async fn counter_through(kind: Failover, wait_for_replicas: bool) {
    let s = start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("counter");
    std::fs::write(&file, "0").unwrap();
    let role = format!(
        "{}|{}|{}",
        s.url(),
        file.display(),
        u8::from(wait_for_replicas)
    );
    let mut kids: Vec<child::Child> = (0..4)
        .map(|_| child::spawn("child_process_entry", &role, &[]))
        .collect();
    let read = |f: &std::path::Path| -> u64 {
        std::fs::read_to_string(f)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    eventually("the children are under way", || async { read(&file) >= 40 }).await;
    let s = Arc::new(Mutex::new(s));
    let topology = s.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = topology.lock().unwrap();
        match kind {
            Failover::Graceful => {
                s.failover();
            }
            Failover::Kill => {
                let old = s.kill_primary();
                s.wait_new_primary(old, 1);
            }
        }
    })
    .await
    .unwrap();
    let mut holds: Vec<(u64, u64, bool, usize)> = Vec::new();
    for (i, kid) in kids.iter_mut().enumerate() {
        let line = tokio::task::block_in_place(|| kid.wait_line("done", FAILOVER_LIMIT * 2));
        for hold in line.trim_start_matches("done ").split(',') {
            let lost = hold.ends_with('L');
            let (a, b) = hold.trim_end_matches('L').split_once('-').unwrap();
            holds.push((a.parse().unwrap(), b.parse().unwrap(), lost, i));
        }
    }
    // Holds by different processes never overlap: each grant comes after
    // the previous holder stopped (released, or saw `lost`).
    holds.sort();
    for pair in holds.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        assert!(
            next.0 >= prev.1 || next.3 == prev.3,
            "process {} was granted at {} while process {} held it until {} (lost: {})",
            next.3,
            next.0,
            prev.3,
            prev.1,
            prev.2
        );
    }
    assert_eq!(read(&file), u64::from(4 * ROUNDS), "an increment was lost");
    drop(kids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_lose_no_increment_through_a_graceful_failover() {
    counter_through(Failover::Graceful, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_lose_no_increment_when_the_primary_is_killed() {
    counter_through(Failover::Kill, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_for_replicas_four_processes_lose_no_increment_when_the_primary_is_killed() {
    counter_through(Failover::Kill, true).await;
}

// ---- wait_for_replicas: the lease survives ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_for_replicas_the_holder_keeps_its_lock_through_a_failover() {
    let s = Arc::new(start(2).await);
    // Long enough for the other replica to attach to the new primary (its
    // confirmations are what the renewals wait for; seen taking over 6 s on
    // a loaded 2-core machine), renewed often.
    let ttl = Duration::from_secs(15);
    let holder = RedisLocks::connect_with(
        &s.url(),
        options(ttl)
            .renew_interval(Duration::from_millis(500))
            .wait_for_replicas(1, Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let other = RedisLocks::connect_with(&s.url(), options(ttl))
        .await
        .unwrap();
    let g = bounded(holder.acquire("job", Duration::from_secs(5)))
        .await
        .unwrap();
    let old = s.primary_port();
    let new = failover(&s).await;
    assert_ne!(old, new);
    // Renewed on the new primary past a whole TTL (32 renewals, 500 ms
    // apart): had the renewals gone elsewhere, the key there would have
    // expired and `other` got it.
    let renewed = holder.stats().renewals;
    bounded_for(FAILOVER_LIMIT, async {
        while holder.stats().renewals < renewed + 32 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(!g.is_lost(), "the holder lost its lock in the failover");
    let e = other.try_acquire("job").await.unwrap_err();
    assert!(e.is_would_block(), "{e}");
    let on_new = s.server(new);
    assert_eq!(on_new.command(&["EXISTS", &lock_key("job")]), ":1");
    g.release().await.unwrap();
    bounded(other.try_acquire("job"))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

// ---- replication to the replica that is promoted, stalled ----

/// Without `wait_for_replicas`, exactly what the README says: the promoted
/// replica never got the key, so it grants the lock again at once (and
/// the fencing token does not go up: the counter was not replicated
/// either); the old holder learns it at its first renewal on the new
/// primary, before its lease would have run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_replication_without_wait_for_replicas_lets_the_promoted_replica_grant_again() {
    let s = Arc::new(start_stallable().await);
    let ttl = Duration::from_secs(6);
    let holder = RedisLocks::connect_with(&s.url(), options(ttl))
        .await
        .unwrap();
    s.stall_replication(FAILOVER_LIMIT);
    let acquired = Instant::now();
    let a = bounded(holder.acquire("job", Duration::from_secs(5)))
        .await
        .unwrap();
    failover(&s).await;
    let other = RedisLocks::connect_with(&s.url(), options(ttl))
        .await
        .unwrap();
    let b = bounded(other.try_acquire("job")).await.unwrap();
    assert!(
        b.fencing_token() <= a.fencing_token(),
        "the fencing counter was not replicated either: {} then {}",
        a.fencing_token(),
        b.fencing_token()
    );
    bounded(a.lost()).await;
    let lost_at = Instant::now();
    let drift = options(ttl).drift_for(ttl);
    assert!(
        lost_at < acquired + ttl - drift,
        "lost fired at the lease's end, not at the failed renewal"
    );
    assert_eq!(holder.stats().lost, 1);
    s.stall_replication(Duration::ZERO);
    b.release().await.unwrap();
}

/// With `wait_for_replicas`, the stalled replica confirms nothing: a grant
/// is refused (undone) rather than given unreplicated, renewals do not
/// count, and nobody is granted the lock the holder had before the
/// holder's `lost` fired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_replication_with_wait_for_replicas_grants_nothing_twice() {
    let s = Arc::new(start_stallable().await);
    let ttl = Duration::from_secs(3);
    let replicated = options(ttl).wait_for_replicas(1, Duration::from_millis(200));
    let holder = RedisLocks::connect_with(&s.url(), replicated.clone())
        .await
        .unwrap();
    let a = bounded(holder.acquire("job", Duration::from_secs(5)))
        .await
        .unwrap();
    s.stall_replication(FAILOVER_LIMIT);
    let e = bounded(holder.try_acquire("other-job")).await.unwrap_err();
    assert!(
        e.is_unavailable(),
        "an unreplicated grant was handed out: {e}"
    );
    let lost_at = Arc::new(Mutex::new(None));
    let watch = {
        let lost = a.lost();
        let lost_at = lost_at.clone();
        tokio::spawn(async move {
            lost.await;
            *lost_at.lock().unwrap() = Some(Instant::now());
        })
    };
    failover(&s).await;
    let other = RedisLocks::connect_with(&s.url(), options(ttl))
        .await
        .unwrap();
    // Waits through the rest of the holder's lease (and then some: the
    // holder's unconfirmed renewals reached the new primary).
    match bounded_for(
        FAILOVER_LIMIT,
        other.acquire("job", Duration::from_secs(15)),
    )
    .await
    {
        Ok(b) => {
            let granted = Instant::now();
            bounded(watch).await.unwrap();
            let lost = lost_at.lock().unwrap().expect("lost fired");
            assert!(lost <= granted, "granted while the holder still held it");
            b.release().await.unwrap();
        }
        // The old primary came back as a replica in time: the holder's
        // renewals were confirmed again and it kept the lock.
        Err(e) if e.is_timeout() => assert!(!a.is_lost(), "{e}"),
        Err(e) => panic!("{e}"),
    }
    s.stall_replication(Duration::ZERO);
}

// ---- the guard contract and bad input ----

async fn sentinel_views(name: &str) -> (Keep, Arc<dyn Lock>, Arc<dyn Lock>) {
    let s = start(1).await;
    let opts = RedisOptions::default().ttl(Duration::from_secs(30));
    let c1 = RedisLocks::connect_with(&s.url(), opts.clone())
        .await
        .unwrap();
    let c2 = RedisLocks::connect_with(&s.url(), opts).await.unwrap();
    let a: Arc<dyn Lock> = Arc::new(c1.lock(name).unwrap());
    let b: Arc<dyn Lock> = Arc::new(c2.lock(name).unwrap());
    (Box::new(s), a, b)
}

conformance_tests!(redis_sentinel, sentinel_views);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sentinel_urls_are_typed_errors() {
    for bad in [
        "redis+sentinel://127.0.0.1:1",
        "redis+sentinel://127.0.0.1:1/",
        "redis+sentinel://127.0.0.1:1,,127.0.0.1:2/m",
        "redis+sentinel://127.0.0.1:1/m/x",
    ] {
        let e = RedisLocks::connect(bad).await.unwrap_err();
        assert!(e.is_invalid_input(), "{bad}: {e}");
    }
    // Nobody listens there.
    let e = bounded(RedisLocks::connect_with(
        "redis+sentinel://127.0.0.1:1/m",
        options(Duration::from_secs(3)),
    ))
    .await
    .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    let s = start(0).await;
    let wrong = s.url().replace(MASTER_NAME, "no-such-master");
    let e = bounded(RedisLocks::connect_with(
        &wrong,
        options(Duration::from_secs(3)),
    ))
    .await
    .unwrap_err();
    assert!(e.to_string().contains("no-such-master"), "{e}");
    // The right name works, lazily too.
    let lazy = RedisLocks::connect_lazy(&s.url(), options(Duration::from_secs(3))).unwrap();
    bounded(lazy.try_acquire("lazy"))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// `rediss+sentinel://`: the sentinels and the servers speak TLS only
/// (replication too), the client trusts the test CA; a lock is held
/// through a graceful failover.
#[cfg(all(feature = "redis", feature = "tls"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sentinel_finds_and_follows_the_primary() {
    use lockyard_testkit::tls::{ServerTls, TlsFiles};
    let files = TlsFiles::generate();
    let tls = ServerTls::new(&files);
    let s = Arc::new(
        tokio::task::spawn_blocking(move || RedisSentinel::start_tls(1, &tls))
            .await
            .unwrap(),
    );
    assert!(s.url().starts_with("rediss+sentinel://"), "{}", s.url());
    let opts = options(Duration::from_secs(6)).tls_ca(files.ca());
    let a = RedisLocks::connect_with(&s.url(), opts.clone())
        .await
        .unwrap();
    let b = RedisLocks::connect_with(&s.url(), opts).await.unwrap();
    let g = bounded(a.acquire("job", Duration::from_secs(5)))
        .await
        .unwrap();
    failover(&s).await;
    let e = bounded(b.try_acquire("job")).await.unwrap_err();
    assert!(e.is_would_block(), "{e}");
    assert!(!g.is_lost());
    g.release().await.unwrap();
    bounded(b.acquire("job", Duration::from_secs(5)))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    // The plain scheme to a TLS sentinel is refused, not hung.
    let plain = s.url().replacen("rediss+", "redis+", 1);
    let e = bounded(RedisLocks::connect_with(
        &plain,
        options(Duration::from_secs(3)),
    ))
    .await
    .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    // `s` goes before `files`, which its servers read.
}

/// An ACL user that may not run `ROLE` (it is in `@admin`): the URL's
/// credentials go to the servers, not the sentinels, and the primary check
/// trusts the sentinels when `ROLE` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_without_role_locks_through_sentinel() {
    let s = start(1).await;
    for port in [s.primary_port(), s.replicas()[0].port()] {
        let reply = s.server(port).command(&[
            "ACL", "SETUSER", "locker", "on", ">pw", "~*", "&*", "+@all", "-role",
        ]);
        assert_eq!(reply, "+OK", "{reply}");
    }
    let url = s.url().replacen("://", "://locker:pw@", 1);
    let locks = RedisLocks::connect_with(&url, options(Duration::from_secs(3)))
        .await
        .unwrap();
    bounded(locks.acquire("job", Duration::from_secs(5)))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    // A wrong password is the servers' refusal, not a sentinel's.
    let wrong = s.url().replacen("://", "://locker:nope@", 1);
    let e = bounded(RedisLocks::connect_with(
        &wrong,
        options(Duration::from_secs(3)),
    ))
    .await
    .unwrap_err();
    assert!(!e.is_unavailable() && !e.is_invalid_input(), "{e}");
}
