//! Adversarial tests of the lease guarantee: a lease guard never says
//! "held" after its lease's deadline, and once lost it never says held
//! again (`crate::lease` invariants 1–3, `lost.rs` invariants 1–2).
//!
//! Each test names the behaviour it proves. The holder is attacked the way a
//! real one goes wrong: its runtime stalls (a GC-like pause: the current
//! thread blocks, so no watchdog task runs), the network holds a request or
//! its reply back (the fault proxy), a server stops answering (`CLIENT
//! PAUSE`), a replica dies between an extend and a renewal. The servers are
//! private (`RedisServer`); every wait is bounded.
//!
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::Duration;

use lockyard::redis::{RedisLocks, RedisOptions, Redlock};
use lockyard::{
    AcquireOptions, AsyncLockManager, LeaseDeadline, LeaseState, Lock, LockError, LockGuard, Lost,
};
use lockyard_testkit::proxy::{FaultProxy, Rule, Then};
use lockyard_testkit::redis::{RedisServer, redlock_options};
use lockyard_testkit::{bounded, bounded_for, eventually};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- helpers

/// A RESP bulk string: how one argument looks on the wire.
fn bulk(arg: &str) -> Vec<u8> {
    format!("${}\r\n{arg}\r\n", arg.len()).into_bytes()
}

/// The key of a plain lock named `name` (default prefix).
fn lock_key(name: &str) -> String {
    format!("lockyard:{{{name}}}:lock")
}

/// Blocks the current thread (the whole current-thread runtime: no
/// watchdog, no renewal task runs) until `until`.
fn stall_until(until: Instant) {
    let now = Instant::now();
    if until > now {
        std::thread::sleep(until - now);
    }
}

/// Whether `fut` is ready at its first poll (no waiting at all).
async fn ready_now<F: std::future::Future>(fut: F) -> bool {
    // `timeout` polls the inner future before its timer.
    tokio::time::timeout(Duration::ZERO, fut).await.is_ok()
}

fn is_lost_or_not_held<T: std::fmt::Debug>(r: &Result<T, LockError>) -> bool {
    matches!(r, Err(LockError::Lost { .. } | LockError::NotHeld { .. }))
}

async fn client(url: &str, opts: RedisOptions) -> RedisLocks {
    bounded(RedisLocks::connect_with(url, opts))
        .await
        .expect("connect")
}

fn opts(ttl: Duration) -> RedisOptions {
    RedisOptions::default()
        .ttl(ttl)
        .connect_timeout(Duration::from_secs(1))
}

fn redlock_servers(n: usize) -> Vec<RedisServer> {
    (0..n).map(|_| RedisServer::start()).collect()
}

async fn redlock(servers: &[RedisServer], ttl: Duration, drift: Option<Duration>) -> Redlock {
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let mut o = redlock_options(ttl);
    if let Some(d) = drift {
        o = o.drift(d);
    }
    bounded(Redlock::connect_with(&urls, o))
        .await
        .expect("connect")
}

/// How many servers hold the lock key of `name`.
fn holders(servers: &[RedisServer], name: &str) -> usize {
    servers
        .iter()
        .filter(|s| s.command(&["EXISTS", &lock_key(name)]) == ":1")
        .count()
}

// ------------------------------------------------------------------ attacks

/// Attack: a renewal is in flight when the holder's runtime stalls; its
/// reply arrives during the stall, and is looked at only after the old
/// deadline has passed but before the deadline it would set. The guard must
/// say lost at the first check after the stall, and a confirmation processed
/// afterwards must not bring it back (lost.rs invariant 1, lease invariant 3).
#[tokio::test]
async fn a_renewal_confirmed_after_the_deadline_does_not_bring_the_lease_back() {
    let ttl = Duration::from_secs(3);
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    // An op timeout as long as the rules allow, so that the renewal's reply
    // has a chance to be taken as a confirmation after the stall.
    let holder = client(
        &proxy.url(),
        opts(ttl).op_timeout(Duration::from_millis(1400)),
    )
    .await;
    let g = holder
        .acquire("late-renewal", Duration::from_secs(1))
        .await
        .unwrap();
    let acquired = Instant::now();
    // Replies come 200 ms late, so the first renewal's reply is in flight
    // while the runtime stalls.
    proxy.delay_replies(Duration::from_millis(200));
    proxy.on_request(Rule {
        pattern: bulk("3000"),
        hold: Duration::ZERO,
        then: Then::Pass,
    });
    proxy.wait_matched(1, Duration::from_secs(5)).await;
    let renewal_sent = Instant::now();
    // Past the old deadline (≤ acquired + 2.968 s), before the one the
    // renewal would set (≥ renewal_sent − a few ms + 2.968 s).
    let resume = acquired + Duration::from_millis(3200);
    assert!(
        resume + Duration::from_millis(100) < renewal_sent + Duration::from_millis(2968),
        "attack missed: the renewal was sent {:?} after the grant",
        renewal_sent - acquired
    );
    stall_until(resume);
    // First check after the stall, before any other task ran.
    assert!(
        g.is_lost(),
        "held after the deadline (first check after the stall)"
    );
    assert_eq!(g.state(), LeaseState::Lost);
    // Let the renewal task look at the reply, then watch for a while.
    let watch_until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < watch_until {
        assert_eq!(
            g.state(),
            LeaseState::Lost,
            "a lost lease said {:?} again",
            g.state()
        );
        assert!(g.is_lost());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e = bounded(g.extend(ttl)).await;
    assert!(
        matches!(e, Err(LockError::Lost { .. })),
        "extend after the deadline: {e:?}"
    );
    assert!(g.is_lost());
    proxy.delay_replies(Duration::ZERO);
    let r = bounded(g.release()).await;
    assert!(is_lost_or_not_held(&r), "release after the deadline: {r:?}");
}

/// Attack: the holder's runtime stalls past the lease's validity (TTL −
/// drift) but not past the server's TTL, so the server still has its token.
/// Release must not say `Ok` (lease invariant 3: "release never reports
/// success" after lost; `Lost` if the server still had the token).
#[tokio::test]
async fn redis_release_after_the_deadline_reports_lost_even_though_the_key_was_still_ours() {
    let ttl = Duration::from_secs(3);
    let server = RedisServer::start();
    let holder = client(
        &server.url(),
        opts(ttl)
            .drift(Duration::from_millis(1400))
            .op_timeout(Duration::from_millis(300)),
    )
    .await;
    let g = holder
        .acquire("release-late", Duration::from_secs(1))
        .await
        .unwrap();
    let acquired = Instant::now();
    stall_until(acquired + Duration::from_millis(2100));
    assert!(g.is_lost(), "held after the validity (1.6 s) ran out");
    assert_eq!(
        server.command(&["EXISTS", &lock_key("release-late")]),
        ":1",
        "attack missed: the key had already expired"
    );
    let r = bounded(g.release()).await;
    assert!(
        matches!(r, Err(LockError::Lost { .. })),
        "release after the deadline, key still ours: {r:?}"
    );
}

/// The same attack on Redlock: the holder stalls past the validity
/// (`ttl − elapsed − drift`), every server still has its key. Release must
/// not report success (lease invariant 3, which `crate::lease` states for
/// every lease backend, Redlock included).
#[tokio::test]
async fn redlock_release_after_the_validity_never_reports_success() {
    let s = redlock_servers(3);
    let ttl = Duration::from_secs(3);
    let rl = redlock(&s, ttl, Some(Duration::from_millis(1500))).await;
    let g = bounded(rl.acquire("rl-release", Duration::from_secs(2)))
        .await
        .unwrap();
    let acquired = Instant::now();
    assert!(g.validity() <= Duration::from_millis(1500));
    stall_until(acquired + Duration::from_millis(2000));
    assert!(g.is_lost(), "held after the validity");
    assert_eq!(g.state(), LeaseState::Lost);
    assert_eq!(
        holders(&s, "rl-release"),
        3,
        "attack missed: the servers' keys had already expired"
    );
    let r = bounded(g.release()).await;
    assert!(
        is_lost_or_not_held(&r),
        "Redlock release after the validity ran out returned {r:?}"
    );
}

/// Attack: the watchdog's renewal (3 s) is held back by the network while an
/// extend to 9 s is confirmed on another connection; a replica dies; the
/// renewal then lands on the master *after* the extend (the server's lease
/// is 3 s again) but its `WAIT` is not confirmed. The holder must still
/// bound its lease by that renewal (lease invariant 2): an unreplicated
/// renewal was applied on the master all the same. Whoever takes the lock
/// next must find the holder told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreplicated_renewal_landing_after_an_extend_still_bounds_the_lease() {
    let ttl = Duration::from_secs(3);
    let master = RedisServer::start();
    let port = master.port();
    let mut replica = RedisServer::start_with(move |_, _| {
        vec!["--replicaof".into(), "127.0.0.1".into(), port.to_string()]
    });
    let synced = async {
        while !master.replicates_to(&replica) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    bounded(synced).await;
    let proxy = FaultProxy::start(master.port());
    let holder = client(
        &proxy.url(),
        opts(ttl)
            // Longer than the renewal is held back plus its WAIT, so that
            // its reply is taken (not timed out). The WAIT allows a loaded
            // machine's live replica time to answer the grant's.
            .op_timeout(Duration::from_millis(1450))
            .wait_for_replicas(1, Duration::from_millis(500)),
    )
    .await;
    let other = client(&master.url(), opts(ttl)).await;
    let name = "unreplicated";
    let g = holder.acquire(name, Duration::from_secs(2)).await.unwrap();
    // The first renewal (3 s) is held back 0.8 s; the watchdog's connection
    // then reaches the server no more.
    proxy.on_request(Rule {
        pattern: bulk("3000"),
        hold: Duration::from_millis(800),
        then: Then::DropRequests,
    });
    proxy.wait_matched(1, Duration::from_secs(5)).await;
    let matched = Instant::now();
    g.extend(Duration::from_secs(9)).await.unwrap();
    // The replica dies: the held renewal's WAIT will not be confirmed.
    replica.stop();
    // The renewal lands (matched + 0.8 s) and its reply comes back (+ the
    // WAIT's 500 ms); then nothing of the holder reaches the server any
    // more (the next renewal is due 0.75 s after that reply).
    tokio::time::sleep_until(matched + Duration::from_millis(1400)).await;
    proxy.drop_requests(true);
    let pttl: i64 = master
        .command(&["PTTL", &lock_key(name)])
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!(
        pttl > 0 && pttl <= 3000,
        "attack missed: the 3 s renewal did not land after the 9 s extend (PTTL {pttl})"
    );
    // Its reply (the WAIT unconfirmed) came about matched + 1.3 s: give the
    // watchdog until matched + 2.4 s to record it (a loaded machine once
    // took more than the 100 ms left above), still before the next
    // renewal (due 0.75 s after that reply, dropped) could time out.
    let seen = matched + Duration::from_millis(2400);
    while g.state() == LeaseState::Held && Instant::now() < seen {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_ne!(
        g.state(),
        LeaseState::Held,
        "attack missed: the unreplicated renewal was not seen as failed"
    );
    // The server's lease ends 3 s after the renewal landed (matched + 3.8 s);
    // a correct holder is lost by E.sent + 2.97 s (about matched + 3 s).
    let end = matched + Duration::from_secs(9);
    let taken = loop {
        assert!(Instant::now() < end, "the key never expired: attack missed");
        match other.try_acquire(name).await {
            Ok(g2) => break g2,
            Err(e) if e.is_would_block() => {}
            Err(e) => panic!("other client: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        g.is_lost(),
        "another client holds the lock ({:?} after the renewal was held back) while the holder says {:?}",
        matched.elapsed(),
        g.state()
    );
    drop(taken);
    proxy.drop_requests(false);
}

/// Attack: a guard whose extend *shortened* its lease (10 s → 1 s), then a
/// stall of the holder longer than the short lease. The guard must be lost
/// by the time the server lets another client in.
#[tokio::test]
async fn an_extend_that_shortens_the_lease_shortens_the_guards_deadline() {
    let server = RedisServer::start();
    let o = opts(Duration::from_secs(10)).op_timeout(Duration::from_millis(300));
    let holder = client(&server.url(), o.clone()).await;
    let other = client(&server.url(), o).await;
    let g = holder
        .acquire("shortened", Duration::from_secs(1))
        .await
        .unwrap();
    bounded(g.extend(Duration::from_secs(1))).await.unwrap();
    assert!(!g.is_lost());
    let extended = Instant::now();
    stall_until(extended + Duration::from_millis(1300));
    assert!(g.is_lost(), "held 1.3 s after an extend to 1 s");
    let other_got_it = other.try_acquire("shortened").await;
    assert!(
        other_got_it.is_ok(),
        "attack missed: the key had not expired: {other_got_it:?}"
    );
    assert!(g.is_lost());
    let e = bounded(g.extend(Duration::from_secs(5))).await;
    assert!(
        matches!(e, Err(LockError::Lost { .. })),
        "extend after lost: {e:?}"
    );
}

/// Attack: the same stall on guards that came through the type-erased
/// surfaces: the manager (`AsyncLockManager::acquire`, a managed guard), a
/// `Lock` trait object, and a `LockSet`. Every one of them must say lost at
/// the first check after the deadline (`is_lost`, `state`, a poll of `lost()`,
/// `run_until_lost`, `Debug`), the set's `lost()` must be ready at once, and
/// none may release with `Ok`.
#[tokio::test]
async fn type_erased_and_managed_guards_are_lost_at_the_deadline() {
    let server = RedisServer::start();
    let locks = client(
        &server.url(),
        opts(Duration::from_secs(3))
            .drift(Duration::from_millis(1400))
            .op_timeout(Duration::from_millis(300)),
    )
    .await;
    let manager = AsyncLockManager::new();
    for n in ["m-one", "m-set-a", "m-set-b"] {
        manager
            .register(n, Arc::new(locks.lock(n).unwrap()))
            .unwrap();
    }
    let wait = AcquireOptions::exclusive().timeout(Duration::from_secs(1));
    let started = Instant::now();
    let managed = bounded(manager.acquire("m-one", &wait)).await.unwrap();
    let as_trait: Arc<dyn Lock> = Arc::new(locks.lock("t-one").unwrap());
    let erased = bounded(as_trait.lock(&wait)).await.unwrap();
    let set = bounded(manager.acquire_all(&["m-set-a", "m-set-b"], Duration::from_secs(1)))
        .await
        .unwrap();
    let guards: Vec<(&str, &LockGuard)> = vec![
        ("managed", &managed),
        ("Lock trait object", &erased),
        ("set member a", set.get("m-set-a").unwrap()),
        ("set member b", set.get("m-set-b").unwrap()),
    ];
    for (what, g) in &guards {
        assert_eq!(g.state(), LeaseState::Held, "{what}");
    }
    // Validity 1.6 s from each grant's send (all sent after `started`, and
    // before now); the server's keys live 3 s.
    stall_until(
        Instant::now().max(started + Duration::from_millis(1700)) + Duration::from_millis(400),
    );
    for (what, g) in &guards {
        assert!(g.is_lost(), "{what}: held after the deadline");
        assert_eq!(g.state(), LeaseState::Lost, "{what}");
        assert!(
            ready_now(g.lost()).await,
            "{what}: lost() not ready after the deadline"
        );
        assert!(
            ready_now(g.suspect()).await,
            "{what}: suspect() not ready after the deadline"
        );
        let ran = g.run_until_lost(async { "ran" }).await;
        assert!(
            matches!(ran, Err(LockError::Lost { .. })),
            "{what}: run_until_lost: {ran:?}"
        );
        let dbg = format!("{g:?}");
        assert!(dbg.contains("lost: true"), "{what}: Debug says {dbg}");
    }
    assert!(
        ready_now(set.lost()).await,
        "LockSet::lost not ready after the deadline"
    );
    // And still, after the watchdog has had its turn.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (what, g) in &guards {
        assert_eq!(g.state(), LeaseState::Lost, "{what}: un-lost");
    }
    drop(guards);
    let r = bounded(managed.release()).await;
    assert!(is_lost_or_not_held(&r), "managed release: {r:?}");
    let r = bounded(erased.release()).await;
    assert!(is_lost_or_not_held(&r), "Lock-trait release: {r:?}");
    let r = bounded(set.release()).await;
    assert!(is_lost_or_not_held(&r), "LockSet release: {r:?}");
}

/// Attack: two of three Redlock servers stop answering (`CLIENT PAUSE`) for
/// longer than the validity, then come back (and apply the extensions they
/// had queued). The guard's state, sampled all along, must go Held →
/// Suspect → Lost in that order (Suspect ↔ Held allowed before Lost), never
/// say held or suspect once lost, say lost no later than the servers' TTL,
/// and `validity()` must be zero whenever it is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_with_a_paused_majority_goes_suspect_then_lost_and_stays_lost() {
    let s = redlock_servers(3);
    let ttl = Duration::from_millis(1500);
    let rl = redlock(&s, ttl, None).await;
    let g = bounded(rl.acquire("rl-paused", Duration::from_secs(2)))
        .await
        .unwrap();
    let acquired = Instant::now();
    s[1].pause(Duration::from_millis(2500));
    s[2].pause(Duration::from_millis(2500));
    let paused = Instant::now();
    let mut seen: Vec<(Duration, LeaseState)> = Vec::new();
    let mut lost_at = None;
    while paused.elapsed() < Duration::from_millis(3500) {
        let st = g.state();
        if seen.last().map(|(_, s)| *s) != Some(st) {
            seen.push((acquired.elapsed(), st));
        }
        if st == LeaseState::Lost {
            lost_at.get_or_insert(acquired.elapsed());
            assert_eq!(g.validity(), Duration::ZERO, "lost with validity left");
        } else {
            assert!(lost_at.is_none(), "{st:?} after lost: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lost_at = lost_at.unwrap_or_else(|| panic!("never lost: {seen:?}"));
    assert!(
        seen.iter().any(|(_, s)| *s == LeaseState::Suspect),
        "never suspect before lost: {seen:?}"
    );
    // No majority can confirm an extension once the pause has begun.
    let bound = paused.duration_since(acquired) + ttl;
    assert!(
        lost_at <= bound,
        "lost only {lost_at:?} after the grant, past the servers' TTL ({bound:?}): {seen:?}"
    );
    assert!(g.is_lost());
    let r = bounded(g.release()).await;
    assert!(r.is_err(), "release of a lost Redlock guard: {r:?}");
}

/// Attack on the suspect signal: a waiter on `suspect()` is woken by a
/// renewal failing, but before it runs the next renewal is confirmed
/// (suspect → held). The spell of suspicion happened; the waiter must not
/// sleep through it.
#[tokio::test]
async fn a_suspect_spell_that_ends_before_the_waiter_runs_still_wakes_it() {
    let d = LeaseDeadline::new(Instant::now() + Duration::from_secs(60));
    let lost = Lost::with_deadline(CancellationToken::new(), d.clone());
    let mut waiter = Box::pin(lost.suspect());
    assert!(
        !ready_now(&mut waiter).await,
        "suspect before anything failed"
    );
    d.set_suspect(true); // a renewal failed ...
    d.set_suspect(false); // ... and the next one got through
    let woke = tokio::time::timeout(Duration::from_millis(200), &mut waiter)
        .await
        .is_ok();
    assert!(
        woke,
        "the waiter slept through a suspect spell it was notified of"
    );
}

/// A guard must never be handed out already past its deadline, and a
/// fresh guard's state is Held with its deadline ahead: a lease whose grant
/// came back later than its validity (every reply delayed past TTL − drift)
/// is refused, not returned (lease invariant 1).
#[tokio::test]
async fn a_grant_whose_reply_comes_after_its_validity_is_never_a_guard_and_is_undone() {
    let ttl = Duration::from_secs(1);
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    // A drift of 450 ms: validity 550 ms; replies 600 ms late.
    let holder = client(
        &proxy.url(),
        opts(ttl)
            .drift(Duration::from_millis(450))
            .op_timeout(Duration::from_millis(150)),
    )
    .await;
    // Warm the connection and the scripts first.
    holder
        .try_acquire("warm")
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    proxy.delay_replies(Duration::from_millis(600));
    let r = bounded_for(Duration::from_secs(10), holder.try_acquire("late")).await;
    match &r {
        Ok(g) => panic!(
            "a guard was returned for a late grant: lost={} state={:?}",
            g.is_lost(),
            g.state()
        ),
        Err(e) => assert!(!e.is_would_block(), "{e}"),
    }
    proxy.delay_replies(Duration::ZERO);
    eventually("the late grant was undone or expired", || async {
        server.command(&["EXISTS", &lock_key("late")]) == ":0"
    })
    .await;
}
