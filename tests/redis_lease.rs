//! The lease rules under attack, through a fault proxy between the client
//! and its private redis-server: a renewal that lands after an extend, a
//! grant whose reply arrives after its validity, an extend after the lease
//! was lost. In each case the holder must learn it may have lost the lock
//! before anybody else can be granted it.
#![cfg(feature = "redis")]

use std::time::Duration;

use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard::{LeaseState, LockError, LockGuard};
use lockyard_testkit::proxy::{FaultProxy, Rule, Then};
use lockyard_testkit::redis::RedisServer;
use lockyard_testkit::{LIMIT, bounded, eventually};
use tokio::time::Instant;

/// A private server, a fault proxy in front of it, a client through the
/// proxy (the one under attack) and one straight to the server.
struct Rig {
    server: RedisServer,
    proxy: FaultProxy,
    via_proxy: RedisLocks,
    direct: RedisLocks,
}

async fn rig(ttl: Duration, op_timeout: Duration) -> Rig {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let opts = RedisOptions::default()
        .ttl(ttl)
        .connect_timeout(Duration::from_secs(1))
        .op_timeout(op_timeout);
    let via_proxy = RedisLocks::connect_with(&proxy.url(), opts.clone())
        .await
        .unwrap();
    let direct = RedisLocks::connect_with(&server.url(), opts).await.unwrap();
    Rig {
        server,
        proxy,
        via_proxy,
        direct,
    }
}

/// A RESP bulk string: how one argument looks on the wire.
fn bulk(arg: &str) -> Vec<u8> {
    format!("${}\r\n{arg}\r\n", arg.len()).into_bytes()
}

/// Polls `other` until it is granted `name` (bounded), then returns when.
async fn taken_over_at(other: &RedisLocks, name: &str, limit: Duration) -> Option<Instant> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        match other.try_acquire(name).await {
            Ok(g) => {
                let at = Instant::now();
                g.release().await.ok();
                return Some(at);
            }
            Err(e) if e.is_would_block() => {}
            Err(e) => panic!("unexpected error from the other client: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_landing_after_an_extend_cannot_outlive_the_holders_deadline() {
    let ttl = Duration::from_secs(3);
    let Rig {
        server: _server,
        proxy,
        via_proxy: holder,
        direct: other,
    } = rig(ttl, Duration::from_millis(1400)).await;
    let g = holder.acquire("job", Duration::from_secs(1)).await.unwrap();
    // The watchdog's first renewal carries the 3 s TTL: hold it back 1 s,
    // and from then on the server never hears from the watchdog again.
    proxy.on_request(Rule {
        pattern: bulk("3000"),
        hold: Duration::from_secs(1),
        then: Then::DropRequests,
    });
    proxy.wait_matched(1, Duration::from_secs(5)).await;
    // While that renewal is in flight, extend to 9 s on another connection.
    g.extend(Duration::from_secs(9)).await.unwrap();
    // The held renewal lands after the extend: the server's lease is 3 s
    // again. Whoever takes the lock next must find the holder told.
    let at = taken_over_at(&other, "job", Duration::from_secs(12))
        .await
        .expect("the key expires once renewals stop");
    assert!(
        g.is_lost(),
        "another client was granted the lock at {:?} while the holder still believed it held it",
        at.elapsed()
    );
}

/// The primitives a late grant is tried on.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Lock,
    Semaphore,
    Read,
    Write,
}

/// Acquires `kind` on "job"; returns whether the hold was known lost at the
/// moment it was handed over, and the hold itself (type-erased).
async fn acquire(locks: &RedisLocks, kind: Kind) -> Result<(bool, lockyard::LockGuard), LockError> {
    let t = Duration::from_secs(5);
    Ok(match kind {
        Kind::Lock => {
            let g = locks.acquire("job", t).await?;
            (g.is_lost(), g.into())
        }
        Kind::Semaphore => {
            let g = locks.semaphore("job", 1)?.acquire(t).await?;
            (g.is_lost(), g.into())
        }
        Kind::Read => {
            let g = locks.rwlock("job")?.read(t).await?;
            (g.is_lost(), g.into())
        }
        Kind::Write => {
            let g = locks.rwlock("job")?.write(t).await?;
            (g.is_lost(), g.into())
        }
    })
}

/// Whether a client other than the holder can take `kind` on "job" now.
async fn someone_else_can_take(other: &RedisLocks, kind: Kind) -> bool {
    match kind {
        Kind::Lock => other.try_acquire("job").await.is_ok(),
        Kind::Semaphore => other
            .semaphore("job", 1)
            .unwrap()
            .try_acquire()
            .await
            .is_ok(),
        // A reader does not exclude readers; a writer would be refused.
        Kind::Read | Kind::Write => other.rwlock("job").unwrap().try_write().await.is_ok(),
    }
}

/// A GC-pause-like stall of the holder's (current-thread) runtime at the
/// worst moment: after the grant's reply reached the client, before the
/// acquiring task looks at it. A request on the same multiplexed
/// connection, sent just before the acquisition, gets its reply just before
/// it (the proxy delivers both in one write); the task that made it then
/// blocks the thread for longer than the lease. The grant is then too late
/// to be sure of: it must be undone, never handed out as held.
async fn late_grant_is_never_returned_as_held(kind: Kind) {
    let ttl = Duration::from_secs(1);
    let Rig {
        server: _server,
        proxy,
        via_proxy: holder,
        direct: other,
    } = rig(ttl, Duration::from_millis(400)).await;
    // Warm the connection and load the scripts, then slow replies a little.
    let (_, warm) = acquire(&holder, kind).await.unwrap();
    warm.release().await.unwrap();
    proxy.delay_replies(Duration::from_millis(150));
    let stall = tokio::spawn({
        let holder = holder.clone();
        async move {
            // One request (a single GET), so that its reply is the one just
            // before the acquisition's.
            holder.owner("elsewhere").await.unwrap();
            std::thread::sleep(Duration::from_millis(1300));
            Instant::now()
        }
    });
    // Spawned right after the stall task, so its request follows at once.
    let acquiring = tokio::spawn({
        let holder = holder.clone();
        async move {
            let result = acquire(&holder, kind).await;
            (result, Instant::now())
        }
    });
    let (result, returned) = tokio::time::timeout(LIMIT, acquiring)
        .await
        .expect("bounded")
        .unwrap();
    let stall_ended = stall.await.unwrap();
    proxy.delay_replies(Duration::ZERO);
    let (lost_at_return, _guard) = result.unwrap();
    assert!(
        returned >= stall_ended,
        "{kind:?}: the acquisition returned before the stall ended: the attack missed"
    );
    assert!(
        lost_at_return || !someone_else_can_take(&other, kind).await,
        "{kind:?}: a guard that was not lost was handed out while another client could take it"
    );
}

#[tokio::test]
async fn a_late_lock_grant_is_never_returned_as_held() {
    late_grant_is_never_returned_as_held(Kind::Lock).await;
}

#[tokio::test]
async fn a_late_semaphore_grant_is_never_returned_as_held() {
    late_grant_is_never_returned_as_held(Kind::Semaphore).await;
}

#[tokio::test]
async fn a_late_read_grant_is_never_returned_as_held() {
    late_grant_is_never_returned_as_held(Kind::Read).await;
}

#[tokio::test]
async fn a_late_write_grant_is_never_returned_as_held() {
    late_grant_is_never_returned_as_held(Kind::Write).await;
}

#[tokio::test]
async fn options_refuse_an_op_timeout_not_well_below_the_lease() {
    let server = RedisServer::start();
    let opts = RedisOptions::default()
        .ttl(Duration::from_secs(1))
        .op_timeout(Duration::from_secs(3));
    let e = RedisLocks::connect_with(&server.url(), opts)
        .await
        .unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
}

#[tokio::test]
async fn extend_after_lost_is_an_error_and_lost_stays_fired() {
    let ttl = Duration::from_millis(1500);
    let Rig {
        server: _server,
        proxy,
        via_proxy: holder,
        ..
    } = rig(ttl, Duration::from_millis(400)).await;
    let g = holder.acquire("job", Duration::from_secs(1)).await.unwrap();
    // Renewals reach the server (the key stays ours there) but their
    // answers never come back: the holder cannot confirm, so it is lost.
    proxy.on_request(Rule {
        pattern: bulk("1500"),
        hold: Duration::ZERO,
        then: Then::HoldReplies,
    });
    tokio::time::timeout(LIMIT, g.lost())
        .await
        .expect("lost fires");
    let e = g.extend(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(e, LockError::Lost { .. } | LockError::NotHeld { .. }),
        "extend after lost: {e}"
    );
    assert!(g.is_lost(), "lost never un-fires");
    let e = g.release().await.unwrap_err();
    assert!(
        matches!(e, LockError::Lost { .. } | LockError::NotHeld { .. }),
        "release after lost: {e}"
    );
}

#[tokio::test]
async fn semaphore_extend_after_lost_is_an_error() {
    let ttl = Duration::from_millis(1500);
    let Rig {
        server: _server,
        proxy,
        via_proxy: holder,
        ..
    } = rig(ttl, Duration::from_millis(400)).await;
    let sem = holder.semaphore("slots", 2).unwrap();
    let g = sem.acquire(Duration::from_secs(1)).await.unwrap();
    proxy.on_request(Rule {
        pattern: bulk("1500"),
        hold: Duration::ZERO,
        then: Then::HoldReplies,
    });
    tokio::time::timeout(LIMIT, g.lost())
        .await
        .expect("lost fires");
    let e = g.extend(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(e, LockError::Lost { .. } | LockError::NotHeld { .. }),
        "extend after lost: {e}"
    );
    assert!(g.is_lost());
}

/// A per-acquisition lease (Redisson's `lock(leaseTime)`): the key carries
/// it, the watchdog renews with it, and a lease too short for the client's
/// op timeout is refused.
#[tokio::test]
async fn a_per_acquisition_lease_is_the_one_on_the_server_and_renewed() {
    let server = RedisServer::start();
    let locks = RedisLocks::connect_with(
        &server.url(),
        RedisOptions::default().ttl(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    let lease = Duration::from_millis(900);
    let opts = lockyard::AcquireOptions::exclusive()
        .timeout(Duration::from_secs(1))
        .lease(lease);
    let g = locks.acquire_with("leased", &opts).await.unwrap();
    let pttl = |key: &str| -> i64 {
        server
            .command(&["PTTL", key])
            .trim_start_matches(':')
            .parse()
            .unwrap()
    };
    let p = pttl("lockyard:{leased}:lock");
    assert!(p > 0 && p <= 900, "pttl {p}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!g.is_lost(), "renewed with its own lease");
    let p = pttl("lockyard:{leased}:lock");
    assert!(p > 0 && p <= 900, "pttl after renewals {p}");
    g.release().await.unwrap();

    let permit = locks
        .semaphore("leased-sem", 2)
        .unwrap()
        .acquire_with(&opts)
        .await
        .unwrap();
    let p = pttl("lockyard:{leased-sem}:sem");
    assert!(p > 0 && p <= 900, "semaphore pttl {p}");
    drop(permit);

    // An op timeout set to more than half of a lease's validity is refused
    // for that lease, not silently unsafe (the default one adapts).
    let strict = RedisLocks::connect_with(
        &server.url(),
        RedisOptions::default()
            .ttl(Duration::from_secs(30))
            .op_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let e = strict
        .acquire_with("leased", &opts.lease(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
}

/// A half-open pub/sub connection (replies stop, no error, no FIN) is
/// noticed by its health check within about a second, and the waiter it
/// carried is woken, instead of sleeping until its 5 s safety net.
#[tokio::test]
async fn a_half_open_pubsub_connection_is_noticed_by_its_health_check() {
    let Rig {
        server: _server,
        proxy,
        via_proxy: waiter,
        direct: holder,
    } = rig(Duration::from_secs(30), Duration::from_millis(500)).await;
    let g = holder
        .acquire("half-open", Duration::from_secs(1))
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let got = waiter.acquire("half-open", Duration::from_secs(20)).await;
        (got.map(|g| g.fencing_token()), Instant::now())
    });
    // From its first health check on, the pub/sub connection answers
    // nothing: a release message sent to it is lost.
    proxy.on_request(Rule {
        pattern: b"PING".to_vec(),
        hold: Duration::ZERO,
        then: Then::HoldReplies,
    });
    proxy.wait_matched(1, Duration::from_secs(5)).await;
    let released = Instant::now();
    g.release().await.unwrap();
    let (got, at) = tokio::time::timeout(LIMIT, waiting).await.unwrap().unwrap();
    got.unwrap();
    let after = at.duration_since(released);
    assert!(
        after < Duration::from_secs(3),
        "the waiter got the lock {after:?} after the release"
    );
}

/// The late-grant rule holds for an extend too: an extend whose
/// confirmation is looked at only after the lease's validity (the same
/// runtime stall as above) reports the lock lost instead of `Ok`.
#[tokio::test]
async fn an_extend_confirmed_after_the_validity_reports_lost() {
    let ttl = Duration::from_secs(1);
    let Rig {
        server: _server,
        proxy,
        via_proxy: holder,
        ..
    } = rig(ttl, Duration::from_millis(400)).await;
    let g = std::sync::Arc::new(holder.acquire("job", Duration::from_secs(1)).await.unwrap());
    proxy.delay_replies(Duration::from_millis(150));
    let stall = tokio::spawn({
        let holder = holder.clone();
        async move {
            holder.owner("elsewhere").await.unwrap();
            std::thread::sleep(Duration::from_millis(1300));
            Instant::now()
        }
    });
    let extending = tokio::spawn({
        let g = g.clone();
        async move { (g.extend(ttl).await, Instant::now()) }
    });
    let (result, returned) = tokio::time::timeout(LIMIT, extending)
        .await
        .expect("bounded")
        .unwrap();
    let stall_ended = stall.await.unwrap();
    proxy.delay_replies(Duration::ZERO);
    assert!(
        returned >= stall_ended,
        "the extend returned before the stall ended: the attack missed"
    );
    assert!(
        matches!(result, Err(LockError::Lost { .. })),
        "an extend confirmed after the lease's validity returned {result:?}"
    );
    assert!(g.is_lost());
}

/// Renewals that fail make a lease suspect at once (its deadline still
/// ahead); renewals that get through again make it held again; renewals
/// that never do make it lost at the deadline, and it stays lost.
#[tokio::test]
async fn failing_renewals_make_a_lease_suspect_before_it_is_lost() {
    let ttl = Duration::from_secs(3);
    let Rig {
        server: _server,
        proxy,
        via_proxy,
        direct: _direct,
    } = rig(ttl, Duration::from_millis(300)).await;
    let g = via_proxy
        .acquire("suspect", Duration::from_secs(1))
        .await
        .unwrap();
    let generic: LockGuard = via_proxy
        .acquire("suspect-generic", Duration::from_secs(1))
        .await
        .unwrap()
        .into();
    assert_eq!(g.state(), LeaseState::Held);

    // Requests vanish: the next renewal gets no answer.
    let blocked = Instant::now();
    proxy.drop_requests(true);
    bounded(g.suspect()).await;
    bounded(generic.suspect()).await;
    assert_eq!(g.state(), LeaseState::Suspect, "suspect, not lost yet");
    assert_eq!(generic.state(), LeaseState::Suspect);
    assert!(!g.is_lost());
    assert!(
        blocked.elapsed() < ttl,
        "suspect only after {:?}: it should follow the first failed renewal",
        blocked.elapsed()
    );

    // They get through again before the deadline: held again.
    proxy.drop_requests(false);
    eventually("held again after renewals got through", || {
        std::future::ready(g.state() == LeaseState::Held && generic.state() == LeaseState::Held)
    })
    .await;
    assert!(!g.is_lost());

    // For good now: suspect, then lost at the deadline.
    proxy.drop_requests(true);
    let blocked = Instant::now();
    bounded(g.suspect()).await;
    assert_eq!(g.state(), LeaseState::Suspect);
    bounded(g.lost()).await;
    let lost_after = blocked.elapsed();
    assert_eq!(g.state(), LeaseState::Lost);
    assert_eq!(generic.state(), LeaseState::Lost);
    assert!(
        lost_after <= ttl + Duration::from_millis(500),
        "lost {lost_after:?} after renewals stopped: later than the lease"
    );
    proxy.drop_requests(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(g.state(), LeaseState::Lost, "lost stays lost");
}

/// With `wait_for_replicas`, an extend that no replica confirms lengthens
/// nothing: it fails with `Unavailable`, and the lease still ends by the
/// deadline its last confirmed renewal set (the watchdog's renewals are
/// unconfirmed too once the replica is gone).
#[tokio::test]
async fn an_extend_no_replica_confirms_lengthens_nothing() {
    let server = RedisServer::start();
    let port = server.port();
    let mut replica = RedisServer::start_with(move |_, _| {
        vec!["--replicaof".into(), "127.0.0.1".into(), port.to_string()]
    });
    eventually("the replica is online and acknowledging", || {
        std::future::ready(server.replicates_to(&replica))
    })
    .await;
    let ttl = Duration::from_secs(4);
    // A WAIT long enough for a loaded machine's live replica to answer.
    let opts = RedisOptions::default()
        .ttl(ttl)
        .wait_for_replicas(1, Duration::from_millis(500));
    let locks = RedisLocks::connect_with(&server.url(), opts).await.unwrap();
    let g = locks
        .acquire("extend-unreplicated", Duration::from_secs(1))
        .await
        .unwrap();
    replica.stop();
    let stopped = Instant::now();
    let e = g.extend(Duration::from_secs(60)).await.unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    bounded(g.lost()).await;
    assert!(
        stopped.elapsed() <= ttl + Duration::from_millis(500),
        "lost only {:?} after the replica stopped: the unconfirmed extend lengthened the lease",
        stopped.elapsed()
    );
}
