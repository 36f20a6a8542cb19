//! Attacks on the Redlock guard, as a user's process meets them: servers
//! frozen (SIGSTOP) or slowed at different times, a holder process frozen
//! past its validity, extends racing renewals and outages, futures dropped
//! mid-flight, grant replies lost, clients shut down under live guards,
//! and a thousand guards riding the watchdogs while a server is frozen.
//!
//! The safety checks compare orderings, never durations: when a rival
//! client is granted a majority, the holder's `is_lost()` must already say
//! so; and while a holder says held, its deadline (read as a lower bound)
//! must not lie past the moment by which fewer than a majority of the
//! servers still hold its key (read from `PTTL` as an upper bound).
#![cfg(feature = "redis")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockyard::redis::{RedisOptions, Redlock, RedlockGuard, RedlockOptions};
use lockyard::{LeaseState, LockError, Lost, RedisLocks};
use lockyard_testkit::child::{self, monotonic_ns};
use lockyard_testkit::proxy::{FaultProxy, Rule, Then};
use lockyard_testkit::redis::{RedisServer, redlock_options};
use lockyard_testkit::{bounded, eventually, eventually_within};
use rand::Rng;
use rustix::process::{Pid, Signal};
use tokio::time::Instant;

fn servers(n: usize) -> Vec<RedisServer> {
    (0..n).map(|_| RedisServer::start()).collect()
}

fn urls(servers: &[RedisServer]) -> Vec<String> {
    servers.iter().map(RedisServer::url).collect()
}

fn proxies(servers: &[RedisServer]) -> Vec<FaultProxy> {
    servers
        .iter()
        .map(|s| FaultProxy::start(s.port()))
        .collect()
}

fn proxy_urls(proxies: &[FaultProxy]) -> Vec<String> {
    proxies.iter().map(FaultProxy::url).collect()
}

async fn redlock_with(urls: &[String], opts: RedlockOptions) -> Redlock {
    bounded(Redlock::connect_with(urls, opts))
        .await
        .expect("connect")
}

async fn redlock(urls: &[String], ttl: Duration) -> Redlock {
    redlock_with(urls, redlock_options(ttl)).await
}

fn key(name: &str) -> String {
    format!("lockyard:{{{name}}}:lock")
}

/// How many servers hold the lock key of `name` (every server must be up
/// and not frozen).
fn holders(servers: &[RedisServer], name: &str) -> usize {
    servers
        .iter()
        .filter(|s| s.command(&["EXISTS", &key(name)]) == ":1")
        .count()
}

/// Runs `op` until it does not fail for an outage (a per-server timeout of
/// a tenth of the TTL that a loaded 2-core machine can miss), at most 50
/// times. Contention and every other error are returned.
async fn outage_retried<T, F, Fut>(mut op: F) -> Result<T, LockError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LockError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op().await {
            Err(e)
                if attempt < 50
                    && (e.is_unavailable() || matches!(e, LockError::NoQuorum { .. })) =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

async fn acquire(r: &Redlock, name: &str) -> RedlockGuard {
    bounded(outage_retried(|| r.acquire(name, Duration::from_secs(5))))
        .await
        .unwrap_or_else(|e| panic!("acquire {name}: {e:?}"))
}

/// Tries `rival` on `name` until it is granted (the caller looks at the
/// holder right after: the servers applied the grant before its reply).
async fn rival_granted(rival: &Redlock, name: &str) -> RedlockGuard {
    bounded(async {
        loop {
            match rival.try_acquire(name).await {
                Ok(g) => return g,
                Err(e)
                    if e.is_would_block()
                        || e.is_unavailable()
                        || matches!(e, LockError::NoQuorum { .. }) =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("rival: {e:?}"),
            }
        }
    })
    .await
}

/// A redis-server stopped with SIGSTOP (it keeps its data, answers nobody,
/// and its keys' TTLs run on: they expire on the wall clock). Continued on
/// drop.
struct Frozen(Pid);

impl Frozen {
    fn new(server: &RedisServer) -> Self {
        let info = server.command(&["INFO", "server"]);
        let pid: i32 = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .expect("process_id in INFO")
            .trim()
            .parse()
            .expect("a pid");
        let pid = Pid::from_raw(pid).expect("a valid pid");
        rustix::process::kill_process(pid, Signal::STOP).expect("SIGSTOP redis-server");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.0, Signal::CONT);
    }
}

/// Waits (bounded) until `lost` completes by itself: a task awaits it and
/// finishes only when woken by the signal firing. (A `timeout` around it
/// would poll it once more when it expires and find the deadline passed,
/// hiding a signal that never fires.)
async fn fired(what: &str, lost: Lost) {
    let waiter = tokio::spawn(lost);
    eventually(what, || {
        let done = waiter.is_finished();
        async move { done }
    })
    .await;
}

/// The guard's deadline as a lower bound (`None` once it reads lost).
fn deadline_lower(g: &RedlockGuard) -> Option<Instant> {
    let now = Instant::now();
    let v = g.validity();
    (!v.is_zero()).then_some(now + v)
}

/// The guard's deadline as an upper bound.
fn deadline_upper(g: &RedlockGuard) -> Instant {
    let v = g.validity();
    Instant::now() + v
}

/// An upper bound on the moment after which fewer than `quorum` servers
/// hold `name`'s key (`None`: fewer hold it now). Each server's expiry is
/// at most the reply's arrival plus its `PTTL` (rounded up).
fn majority_expiry_upper(servers: &[RedisServer], name: &str, quorum: usize) -> Option<Instant> {
    let mut ends: Vec<Instant> = servers
        .iter()
        .filter_map(|s| {
            let reply = s.command(&["PTTL", &key(name)]);
            let at = Instant::now();
            let ms: i64 = reply.strip_prefix(':')?.parse().ok()?;
            (ms >= 0).then(|| at + Duration::from_millis(ms as u64 + 1))
        })
        .collect();
    ends.sort_unstable_by(|a, b| b.cmp(a));
    ends.get(quorum - 1).copied()
}

/// The safety invariant, read so that it cannot fail by timing alone: the
/// guard's deadline (read first, a lower bound) is no later than the
/// majority's expiry on the servers (read after, an upper bound; renewals
/// landing meanwhile only move it later).
fn assert_deadline_within_the_servers(
    g: &RedlockGuard,
    servers: &[RedisServer],
    name: &str,
    what: &str,
) {
    let Some(believed) = deadline_lower(g) else {
        return;
    };
    match majority_expiry_upper(servers, name, servers.len() / 2 + 1) {
        Some(real) => assert!(
            believed <= real,
            "{what}: the guard believes it holds {name} {:?} past the majority's expiry",
            believed - real
        ),
        None => panic!(
            "{what}: the guard says held for {:?} more, but fewer than a majority hold {name}",
            believed - Instant::now()
        ),
    }
}

// ---------------------------------------------------------------------
// 1. Lost before anyone else can be granted a majority.
// ---------------------------------------------------------------------

/// Two of three servers frozen past the TTL: when they thaw, a rival gets
/// a majority; the holder must read lost by then, and its `lost` future
/// must have fired on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_frozen_servers_make_the_holder_lost_before_a_rival_majority() {
    let s = servers(3);
    let u = urls(&s);
    let ttl = Duration::from_millis(600);
    let (a, b) = (redlock(&u, ttl).await, redlock(&u, ttl).await);
    let g = acquire(&a, "frozen2").await;
    let waiter = tokio::spawn(g.lost());
    let frozen = [Frozen::new(&s[0]), Frozen::new(&s[1])];
    tokio::time::sleep(ttl * 2).await;
    drop(frozen);
    let rival = rival_granted(&b, "frozen2").await;
    assert!(
        g.is_lost(),
        "a rival holds a majority and the holder says held"
    );
    bounded(waiter).await.unwrap();
    // The rival's keys are on the thawed servers: not ours.
    let err = bounded(g.release()).await.unwrap_err();
    assert!(matches!(err, LockError::NotHeld { .. }), "{err:?}");
    assert!(!rival.is_lost());
    bounded(rival.release()).await.unwrap();
}

/// Five servers frozen one after another, so that the members' leases die
/// at different times: two lost members leave the lock held (three of five
/// still renew, not even suspect); the third loses it, and a rival
/// majority of the thawed servers comes only after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_dying_one_by_one_lose_the_lock_exactly_at_the_majority() {
    let s = servers(5);
    let u = urls(&s);
    let ttl = Duration::from_millis(900);
    let (a, b) = (redlock(&u, ttl).await, redlock(&u, ttl).await);
    let g = acquire(&a, "stagger").await;
    let first = Frozen::new(&s[0]);
    tokio::time::sleep(ttl / 3).await;
    let second = Frozen::new(&s[1]);
    // Both members' leases run out (no renewal gets through to them).
    tokio::time::sleep(ttl * 2).await;
    assert!(!g.is_lost(), "three of five still hold it");
    assert_eq!(g.state(), LeaseState::Held, "three of five still renew");
    let third = Frozen::new(&s[2]);
    fired("lost after the third member", g.lost()).await;
    drop((first, second, third));
    let rival = rival_granted(&b, "stagger").await;
    assert!(g.is_lost());
    bounded(rival.release()).await.unwrap();
}

/// Two of three servers crash and restart empty after a TTL (the delayed
/// restart the Redlock docs ask for): the rival's majority on the
/// restarted servers finds the holder lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_restarted_after_a_ttl_find_the_holder_lost() {
    let mut s = servers(3);
    let u = urls(&s);
    let ttl = Duration::from_millis(600);
    let (a, b) = (redlock(&u, ttl).await, redlock(&u, ttl).await);
    let g = acquire(&a, "restarted").await;
    s[0].stop();
    s[1].stop();
    tokio::time::sleep(ttl * 3 / 2).await;
    s[0].restart();
    s[1].restart();
    let rival = rival_granted(&b, "restarted").await;
    assert!(
        g.is_lost(),
        "a rival holds a majority and the holder says held"
    );
    fired("lost after the crash", g.lost()).await;
    bounded(rival.release()).await.unwrap();
}

/// Requests or replies slowed on some servers in turn (replies late but
/// within the op timeout; requests applied late; requests applied after
/// the client gave up on them): at every look, the holder's deadline is
/// within what a majority of the servers really hold. Then the holder is
/// cut off, and a rival's grant finds it lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowed_servers_never_let_the_validity_outrun_the_servers() {
    let s = servers(3);
    let p = proxies(&s);
    let ttl = Duration::from_millis(900);
    let a = redlock(&proxy_urls(&p), ttl).await;
    let b = redlock(&urls(&s), ttl).await;
    let g = acquire(&a, "slowed").await;
    let phases: [(&[usize], Duration, bool); 4] = [
        (&[0, 1], Duration::from_millis(150), false),
        (&[1, 2], Duration::from_millis(150), true),
        (&[0, 2], Duration::from_millis(400), true),
        (&[0, 1, 2], Duration::from_millis(100), false),
    ];
    for (which, delay, requests) in phases {
        for &i in which {
            if requests {
                p[i].delay_requests(delay);
            } else {
                p[i].delay_replies(delay);
            }
        }
        let end = Instant::now() + ttl * 2;
        while Instant::now() < end {
            assert_deadline_within_the_servers(&g, &s, "slowed", "under delays");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for proxy in &p {
            proxy.delay_requests(Duration::ZERO);
            proxy.delay_replies(Duration::ZERO);
        }
    }
    for proxy in &p {
        proxy.drop_requests(true);
    }
    let rival = rival_granted(&b, "slowed").await;
    assert!(g.is_lost());
    bounded(rival.release()).await.unwrap();
}

/// The child of [`frozen_holder_deadline_precedes_the_rival_grant`]: holds
/// a Redlock lock while sampling its deadline; on `check STOPPED` answers
/// `result LATEST LOST`: the latest deadline sampled before the stop (a
/// lower bound each, on `CLOCK_MONOTONIC`) and whether it reads lost now.
#[tokio::test]
async fn child_process_entry() {
    let Some(spec) = child::role() else {
        return;
    };
    let (rounds, list) = spec.split_once('|').expect("ROUNDS|URLS");
    let rounds: u32 = rounds.parse().unwrap();
    let urls: Vec<String> = list.split(',').map(str::to_owned).collect();
    let mut orders = child::orders();
    let r = Redlock::connect_with(&urls, holder_options())
        .await
        .expect("connect");
    for round in 0..rounds {
        let g = Arc::new(acquire(&r, &format!("paused{round}")).await);
        let samples: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let sampler = {
            let (g, samples) = (g.clone(), samples.clone());
            tokio::spawn(async move {
                loop {
                    let at = monotonic_ns();
                    let v = g.validity();
                    if !v.is_zero() {
                        samples.lock().unwrap().push((at, at + v.as_nanos() as u64));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        child::say("held");
        let line = orders.recv().await.expect("a check order");
        let stopped: u64 = line
            .strip_prefix("check ")
            .expect("check STOPPED")
            .parse()
            .unwrap();
        let lost = g.is_lost();
        sampler.abort();
        let latest = samples
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at < stopped)
            .map(|&(_, end)| end)
            .max()
            .unwrap_or(0);
        child::say(&format!("result {latest} {lost}"));
    }
}

fn holder_options() -> RedlockOptions {
    redlock_options(Duration::from_millis(600))
}

/// A holder process frozen (SIGSTOP) past its validity while a rival in
/// another process takes the lock: every deadline the holder had computed
/// before the freeze lies before the rival's grant, and its first look
/// after the thaw says lost.
#[tokio::test]
async fn frozen_holder_deadline_precedes_the_rival_grant() {
    let s = servers(3);
    let u = urls(&s);
    let rounds = 3;
    let rival = redlock_with(&u, holder_options()).await;
    let mut holder = child::spawn(
        "child_process_entry",
        &format!("{rounds}|{}", u.join(",")),
        &[],
    );
    for round in 0..rounds {
        holder.wait_line("held", Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
        holder.signal(Signal::STOP);
        holder.wait_stopped();
        let stopped = monotonic_ns();
        let g = rival_granted(&rival, &format!("paused{round}")).await;
        let granted = monotonic_ns();
        holder.signal(Signal::CONT);
        holder.send(&format!("check {stopped}"));
        let result = holder.wait_line("result", Duration::from_secs(20));
        let fields: Vec<&str> = result.split_whitespace().collect();
        let latest: u64 = fields[1].parse().unwrap();
        assert!(
            latest > 0,
            "round {round}: no sample said held before the stop"
        );
        assert!(
            latest <= granted,
            "round {round}: the frozen holder's deadline was {} µs after the rival's grant",
            (latest - granted) / 1000
        );
        assert_eq!(fields[2], "true", "round {round}: resumed holder says held");
        bounded(g.release()).await.unwrap();
    }
    holder.wait_success(Duration::from_secs(20));
}

// ---------------------------------------------------------------------
// 2. Extend.
// ---------------------------------------------------------------------

/// An extend with two of three servers down fails, and lengthens nothing:
/// the deadline after it is no later than before. Once lost, extend says
/// `Lost`.
#[tokio::test]
async fn extend_without_a_majority_fails_and_lengthens_nothing() {
    let mut s = servers(3);
    let r = redlock(&urls(&s), Duration::from_secs(2)).await;
    let g = acquire(&r, "ext-down").await;
    s[1].stop();
    s[2].stop();
    let before = deadline_upper(&g);
    let err = bounded(g.extend(Duration::from_secs(20)))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::NoQuorum { .. }), "{err:?}");
    if let Some(after) = deadline_lower(&g) {
        assert!(after <= before, "a failed extend lengthened the lock");
    }
    fired("lost with two servers down", g.lost()).await;
    let err = bounded(g.extend(Duration::from_secs(20)))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Lost { .. }), "{err:?}");
}

/// An extend with one server too slow to answer counts the other two: `Ok`,
/// and the validity is the majority's (never past the servers' keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_with_one_slow_server_counts_the_majority() {
    let s = servers(3);
    let p = proxies(&s);
    let r = redlock(&proxy_urls(&p), Duration::from_secs(2)).await;
    let g = acquire(&r, "ext-slow").await;
    p[2].delay_replies(Duration::from_millis(600));
    bounded(outage_retried(|| g.extend(Duration::from_secs(6))))
        .await
        .unwrap();
    assert!(g.validity() > Duration::from_secs(2), "{:?}", g.validity());
    assert!(g.validity() <= Duration::from_secs(6));
    assert_deadline_within_the_servers(&g, &s, "ext-slow", "after the extend");
    p[2].delay_replies(Duration::ZERO);
    bounded(g.release()).await.unwrap();
}

/// An extend to a shorter TTL shortens the validity at once (and the
/// servers' keys): the deadline stays within the keys, and renewals go on
/// with the shorter TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_to_a_shorter_ttl_shortens_the_validity() {
    let s = servers(3);
    let r = redlock(&urls(&s), Duration::from_secs(4)).await;
    let g = acquire(&r, "ext-short").await;
    bounded(outage_retried(|| g.extend(Duration::from_millis(900))))
        .await
        .unwrap();
    assert!(
        g.validity() <= Duration::from_millis(900),
        "{:?}",
        g.validity()
    );
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        assert_deadline_within_the_servers(&g, &s, "ext-short", "after a shorter extend");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!g.is_lost());
    assert!(g.validity() <= Duration::from_millis(900));
    bounded(g.release()).await.unwrap();
}

/// The Redlock drift allowance (`RedlockOptions::drift`) is subtracted from
/// every validity, the extended one included: an extend must not leave the
/// lock believed valid for more than `ttl − drift`.
#[tokio::test]
async fn extend_keeps_the_redlock_drift_allowance() {
    let s = servers(3);
    let ttl = Duration::from_secs(2);
    let drift = Duration::from_millis(500);
    let r = redlock_with(&urls(&s), redlock_options(ttl).drift(drift)).await;
    let g = acquire(&r, "ext-drift").await;
    assert!(g.validity() <= ttl - drift, "{:?}", g.validity());
    bounded(outage_retried(|| g.extend(ttl))).await.unwrap();
    assert!(
        g.validity() <= ttl - drift,
        "after extend({ttl:?}) the lock is believed valid for {:?}, more than ttl − drift = {:?}",
        g.validity(),
        ttl - drift
    );
    // And the renewals after it (every ttl / 3) keep the allowance too.
    tokio::time::sleep(ttl / 2).await;
    assert!(
        g.validity() <= ttl - drift,
        "after a renewal the lock is believed valid for {:?}",
        g.validity()
    );
    bounded(g.release()).await.unwrap();
}

/// The watchdog's renewal (short TTL) is held back on its way to every
/// server while an extend to a long TTL goes through and is confirmed; the
/// held renewal then lands last and shortens the keys. The holder must not
/// believe the long TTL: when the rival gets the lock, it reads lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_racing_a_held_back_renewal_never_believes_the_long_ttl() {
    let s = servers(3);
    let p = proxies(&s);
    let ttl = Duration::from_millis(900);
    let a = redlock(&proxy_urls(&p), ttl).await;
    let b = redlock(&urls(&s), ttl).await;
    let g = acquire(&a, "ext-race").await;
    // The renewal carries the TTL in ms as its last argument.
    for proxy in &p {
        proxy.on_request(Rule {
            pattern: b"$3\r\n900\r\n".to_vec(),
            hold: Duration::from_millis(700),
            then: Then::Pass,
        });
    }
    for proxy in &p {
        proxy.wait_matched(1, Duration::from_secs(10)).await;
    }
    bounded(outage_retried(|| g.extend(Duration::from_secs(5))))
        .await
        .unwrap();
    // Nothing of the holder reaches the servers from now on but the held
    // renewals.
    for proxy in &p {
        proxy.drop_requests(true);
    }
    assert!(
        g.validity() < ttl,
        "believes the long TTL: {:?}",
        g.validity()
    );
    let rival = rival_granted(&b, "ext-race").await;
    assert!(g.is_lost(), "the rival holds it and the holder says held");
    bounded(rival.release()).await.unwrap();
}

/// Extends of random TTLs fired concurrently with each other and with the
/// watchdog's renewals, some of them dropped at random moments: at every
/// look, the deadline is within the servers' keys, and the guard ends
/// released cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_and_cancelled_extends_never_overstate_the_validity() {
    let s = servers(3);
    let p = proxies(&s);
    let r = redlock(&proxy_urls(&p), Duration::from_millis(1500)).await;
    let g = Arc::new(acquire(&r, "ext-many").await);
    p[1].delay_replies(Duration::from_millis(30));
    p[2].delay_requests(Duration::from_millis(20));
    let mut rng = rand::rng();
    for _round in 0..15 {
        let extends: Vec<_> = (0..3)
            .map(|_| {
                let g = g.clone();
                let ttl = Duration::from_millis(rng.random_range(1000..4000));
                let cut = Duration::from_micros(rng.random_range(0..40_000));
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(cut, g.extend(ttl)).await;
                })
            })
            .collect();
        for _ in 0..5 {
            assert_deadline_within_the_servers(&g, &s, "ext-many", "while extends run");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for e in extends {
            bounded(e).await.unwrap();
        }
        assert!(!g.is_lost(), "healthy servers, and the lock was lost");
    }
    let g = Arc::into_inner(g).expect("the only guard");
    bounded(g.release()).await.unwrap();
    eventually("no key left", || async { holders(&s, "ext-many") == 0 }).await;
}

// ---------------------------------------------------------------------
// 3. Cancel safety.
// ---------------------------------------------------------------------

/// Acquisitions through slowed servers, dropped at random moments: no key
/// is left on any server (long before the TTL), and a guard that came back
/// is held by a majority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquisitions_dropped_mid_flight_leave_no_key() {
    let s = servers(3);
    let p = proxies(&s);
    p[0].delay_requests(Duration::from_millis(3));
    p[1].delay_replies(Duration::from_millis(5));
    let r = redlock(&proxy_urls(&p), Duration::from_secs(10)).await;
    let mut rng = rand::rng();
    for _ in 0..40 {
        let cut = Duration::from_micros(rng.random_range(0..30_000));
        if let Ok(Ok(g)) =
            tokio::time::timeout(cut, r.acquire("cancel", Duration::from_secs(5))).await
        {
            assert!(
                holders(&s, "cancel") >= 2,
                "a guard nobody's majority granted"
            );
            drop(g);
        }
    }
    eventually_within(
        "a dropped acquisition left a key",
        Duration::from_secs(5),
        || async { holders(&s, "cancel") == 0 },
    )
    .await;
}

/// Releases dropped at random moments (a server slowed): every key is gone
/// in the background, long before the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_dropped_mid_flight_still_release_everywhere() {
    let s = servers(3);
    let p = proxies(&s);
    let r = redlock(&proxy_urls(&p), Duration::from_secs(10)).await;
    p[2].delay_requests(Duration::from_millis(5));
    let mut rng = rand::rng();
    for round in 0..25 {
        let name = format!("rel-cancel{round}");
        let g = acquire(&r, &name).await;
        let cut = Duration::from_micros(rng.random_range(0..15_000));
        let _ = tokio::time::timeout(cut, g.release()).await;
    }
    eventually_within(
        "a dropped release left a key",
        Duration::from_secs(5),
        || async { (0..25).all(|round| holders(&s, &format!("rel-cancel{round}")) == 0) },
    )
    .await;
}

// ---------------------------------------------------------------------
// 4. Release.
// ---------------------------------------------------------------------

/// A server applies the grant but its reply never comes: the guard is the
/// other two's; its release deletes the third key too, and so does a drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_reply_was_lost_is_released_too() {
    let s = servers(3);
    let p = proxies(&s);
    let r = redlock(&proxy_urls(&p), Duration::from_secs(10)).await;
    for (name, by_drop) in [("lostreply-a", false), ("lostreply-b", true)] {
        p[2].on_request(Rule {
            pattern: format!("{{{name}}}").into_bytes(),
            hold: Duration::ZERO,
            then: Then::HoldReplies,
        });
        let g = acquire(&r, name).await;
        assert_eq!(holders(&s, name), 3, "the third server applied the grant");
        if by_drop {
            drop(g);
        } else {
            bounded(g.release()).await.unwrap();
        }
        eventually_within("the lost grant's key", Duration::from_secs(5), || async {
            holders(&s, name) == 0
        })
        .await;
    }
}

/// A release asked after the validity ran out (the holder's runtime was
/// blocked, the keys still on the servers): `Lost`, never `Ok`, and the
/// keys are deleted all the same.
#[tokio::test(flavor = "current_thread")]
async fn release_after_the_validity_is_lost_and_still_deletes() {
    let s = servers(3);
    let ttl = Duration::from_secs(2);
    // Validity is ttl − drift = 1 s; the keys live 2 s.
    let r = redlock_with(&urls(&s), redlock_options(ttl).drift(ttl / 2)).await;
    let g = acquire(&r, "late-release").await;
    // A stall of the whole runtime: no renewal can run.
    std::thread::sleep(Duration::from_millis(1300));
    assert!(g.is_lost());
    assert_eq!(
        holders(&s, "late-release"),
        3,
        "the keys outlive the validity"
    );
    let err = bounded(g.extend(ttl)).await.unwrap_err();
    assert!(matches!(err, LockError::Lost { .. }), "{err:?}");
    let err = bounded(g.release()).await.unwrap_err();
    assert!(matches!(err, LockError::Lost { .. }), "{err:?}");
    assert_eq!(holders(&s, "late-release"), 0);
}

// ---------------------------------------------------------------------
// 5. The quorum observer, called under the watchdogs' locks.
// ---------------------------------------------------------------------

/// Shutting down the servers' clients one by one under 50 live guards
/// while tasks hammer them: one client down leaves every guard held; two
/// make every guard lost; nothing hangs; releases report the loss; every
/// key is gone soon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_clients_under_live_guards() {
    let s = servers(3);
    let opts = RedisOptions::default()
        .ttl(Duration::from_secs(10))
        .connect_timeout(Duration::from_millis(500))
        .op_timeout(Duration::from_millis(250));
    let mut clients = Vec::new();
    for url in urls(&s) {
        clients.push(
            bounded(RedisLocks::connect_with(&url, opts.clone()))
                .await
                .unwrap(),
        );
    }
    let r = Redlock::from_clients(clients.clone(), RedlockOptions::new()).unwrap();
    let mut guards = Vec::new();
    for i in 0..50 {
        guards.push(Arc::new(acquire(&r, &format!("shut{i}")).await));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammers: Vec<_> = guards
        .chunks(10)
        .map(|chunk| {
            let (chunk, stop) = (chunk.to_vec(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for g in &chunk {
                        let _ = (g.state(), g.validity(), g.is_lost());
                        let _ = g.extend(Duration::from_secs(10)).await;
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    bounded(clients[0].shutdown()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for g in &guards {
        assert!(!g.is_lost(), "two of three clients still renew");
    }
    bounded(clients[1].shutdown()).await;
    for g in &guards {
        fired("lost after two shutdowns", g.lost()).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hammers {
        bounded(h).await.unwrap();
    }
    for g in guards {
        let g = Arc::into_inner(g).expect("the hammers are done");
        let err = bounded(g.extend(Duration::from_secs(10)))
            .await
            .unwrap_err();
        assert!(matches!(err, LockError::Lost { .. }), "{err:?}");
        // Every key was still ours (deleted), but the lock was lost first.
        let err = bounded(g.release()).await.unwrap_err();
        assert!(matches!(err, LockError::Lost { .. }), "{err:?}");
    }
    eventually_within(
        "keys of released guards",
        Duration::from_secs(5),
        || async { (0..50).all(|i| holders(&s, &format!("shut{i}")) == 0) },
    )
    .await;
}

/// A Redlock whose servers' clients were shut down must refuse to acquire
/// (as `RedisLocks::acquire` does, with `Closed`): a guard granted now
/// would hold leases in watchdogs that no longer run, never renewed and
/// never reported, so its `lost` future would never fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquiring_over_shut_down_clients_is_refused() {
    let s = servers(3);
    let ttl = Duration::from_millis(900);
    let opts = redlock_options(ttl).redis;
    let mut clients = Vec::new();
    for url in urls(&s) {
        clients.push(
            bounded(RedisLocks::connect_with(&url, opts.clone()))
                .await
                .unwrap(),
        );
    }
    let r = Redlock::from_clients(clients.clone(), RedlockOptions::new()).unwrap();
    for c in &clients {
        bounded(c.shutdown()).await;
    }
    match bounded(r.try_acquire("after-shutdown")).await {
        Err(LockError::NoQuorum { errors, .. }) => {
            assert!(
                errors.iter().all(|e| matches!(e, LockError::Closed { .. })),
                "{errors:?}"
            );
        }
        Err(e) => panic!("expected NoQuorum of Closed, got {e:?}"),
        Ok(g) => {
            // What the holder then meets: nothing renews the keys (they
            // expire on the servers), and the lost future never fires.
            let waiter = tokio::spawn(g.lost());
            tokio::time::sleep(ttl * 4).await;
            let fired = waiter.is_finished();
            panic!(
                "granted over shut-down clients; is_lost() after 4 TTLs: {}, lost future fired: \
                 {fired}, keys left: {}",
                g.is_lost(),
                holders(&s, "after-shutdown")
            );
        }
    }
}

/// Two servers frozen at once under 300 guards: both watchdogs report
/// their members lost concurrently, into the same quorums. Every guard's
/// lost future fires (no deadlock, no missed signal), after a suspect
/// spell; after the thaw everything is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_watchdogs_report_into_the_same_quorums_at_once() {
    let s = servers(3);
    let ttl = Duration::from_millis(1200);
    let r = redlock(&urls(&s), ttl).await;
    let mut guards = Vec::new();
    for chunk in 0..3 {
        let r = &r;
        let batch = futures::future::join_all(
            (0..100).map(|i| async move { acquire(r, &format!("w{chunk}-{i}")).await }),
        );
        guards.extend(batch.await);
    }
    let suspects: Vec<_> = guards.iter().map(|g| tokio::spawn(g.suspect())).collect();
    let losts: Vec<_> = guards.iter().map(|g| tokio::spawn(g.lost())).collect();
    let frozen = [Frozen::new(&s[0]), Frozen::new(&s[1])];
    for t in suspects {
        bounded(t).await.unwrap();
    }
    for t in losts {
        bounded(t).await.unwrap();
    }
    drop(frozen);
    assert!(guards.iter().all(RedlockGuard::is_lost));
    for g in guards {
        let _ = bounded(g.release()).await;
    }
    eventually("keys gone after the releases", || async {
        (0..3).all(|c| (0..100).all(|i| holders(&s, &format!("w{c}-{i}")) == 0))
    })
    .await;
}

/// Two servers frozen for a moment (shorter than the validity): the lock
/// turns suspect, and back to held once renewals go through again, not
/// stuck suspect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspect_clears_when_the_majority_renews_again() {
    let s = servers(3);
    let r = redlock(&urls(&s), Duration::from_secs(3)).await;
    let g = acquire(&r, "sus-clear").await;
    let frozen = [Frozen::new(&s[0]), Frozen::new(&s[1])];
    bounded(g.suspect()).await;
    drop(frozen);
    eventually("held again", || async { g.state() == LeaseState::Held }).await;
    assert!(!g.is_lost());
    bounded(g.release()).await.unwrap();
}

// ---------------------------------------------------------------------
// 6. Stats, and a thousand guards.
// ---------------------------------------------------------------------

/// 1,000 guards while one server is frozen past the TTL: its 1,000 member
/// leases are lost (counted), every guard stays held (two of three still
/// renew, in batches), and all release with `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_guards_survive_a_frozen_server() {
    let s = servers(3);
    let ttl = Duration::from_millis(1500);
    let r = redlock(&urls(&s), ttl).await;
    let mut guards = Vec::new();
    for chunk in 0..10 {
        let r = &r;
        let batch = futures::future::join_all(
            (0..100).map(|i| async move { acquire(r, &format!("k{chunk}-{i}")).await }),
        );
        guards.extend(bounded(batch).await);
    }
    assert_eq!(r.stats().held, 3000, "one lease per guard per server");
    let before = r.stats();
    let frozen = Frozen::new(&s[2]);
    eventually("the frozen server's 1,000 leases lost", || async {
        r.stats().lost == before.lost + 1000
    })
    .await;
    assert_eq!(r.stats().held, 2000);
    assert!(
        guards.iter().all(|g| !g.is_lost()),
        "two of three still hold"
    );
    assert!(guards.iter().all(|g| g.state() == LeaseState::Held));
    let mid = r.stats();
    tokio::time::sleep(ttl).await;
    let after = r.stats();
    let (renewals, trips) = (
        after.renewals - mid.renewals,
        after.renewal_round_trips - mid.renewal_round_trips,
    );
    assert!(renewals >= 2000, "{after:?} after {mid:?}");
    assert!(
        renewals >= 50 * trips,
        "{renewals} renewals in {trips} round trips"
    );
    drop(frozen);
    // Released as they were acquired, a hundred at a time.
    while !guards.is_empty() {
        let chunk: Vec<RedlockGuard> = guards.drain(..guards.len().min(100)).collect();
        let releases = futures::future::join_all(chunk.into_iter().map(RedlockGuard::release));
        for result in bounded(releases).await {
            result.expect("two of three keys were ours");
        }
    }
    assert_eq!(r.stats().held, 0);
}

/// The registry counts a Redlock guard once (held while alive, lost once
/// when it ends lost); the servers' watchdogs count its leases.
#[tokio::test]
async fn stats_count_the_guard_once_and_its_leases_per_server() {
    use lockyard::stats::{self, Backend};
    // The other tests of this binary take over a thousand names; past the
    // default limit of 256 a name is counted under `OTHER`.
    stats::set_name_limit(usize::MAX);
    let mut s = servers(3);
    let r = redlock(&urls(&s), Duration::from_millis(900)).await;
    let g = acquire(&r, "stats-attack").await;
    let stat = stats::get(Backend::Redlock, "stats-attack").expect("an entry");
    assert_eq!((stat.acquisitions, stat.held, stat.lost), (1, 1, 0));
    assert_eq!(r.stats().held, 3);
    s[0].stop();
    s[1].stop();
    fired("lost with two servers down", g.lost()).await;
    eventually("two leases counted lost", || async { r.stats().lost == 2 }).await;
    drop(g);
    let stat = stats::get(Backend::Redlock, "stats-attack").expect("an entry");
    assert_eq!((stat.held, stat.lost), (0, 1));
    assert_eq!(r.stats().held, 0);
}

/// An extend with a TTL the servers' clients refuse is refused as such
/// (`InvalidArgument`, as the guard surface documents), not reported as
/// an outage of every server.
#[tokio::test]
async fn extend_with_a_refused_ttl_is_invalid_argument() {
    let s = servers(3);
    let r = redlock(&urls(&s), Duration::from_secs(2)).await;
    let g = acquire(&r, "ext-bad-ttl").await;
    // 100 ms leaves less than twice the 250 ms op timeout of validity.
    let err = bounded(g.extend(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert!(err.is_invalid_input(), "{err:?}");
    assert!(!g.is_lost());
    bounded(g.release()).await.unwrap();
}

/// Keys taken over behind the holder's back (overwritten with another
/// owner's value before any renewal could notice): with a majority taken,
/// release is `NotHeld`, never `Ok`; with a minority, `Ok`. Either way the
/// other owner's keys are left alone.
#[tokio::test]
async fn release_counts_only_keys_that_were_ours() {
    let s = servers(3);
    let r = redlock(&urls(&s), Duration::from_secs(10)).await;
    for (name, taken) in [("taken-two", 2), ("taken-one", 1)] {
        let g = acquire(&r, name).await;
        for server in &s[..taken] {
            assert_eq!(server.command(&["SET", &key(name), "someone-else"]), "+OK");
        }
        let result = bounded(g.release()).await;
        if taken >= 2 {
            let err = result.unwrap_err();
            assert!(matches!(err, LockError::NotHeld { .. }), "{err:?}");
        } else {
            result.expect("two of three keys were ours");
        }
        for server in &s[..taken] {
            assert_eq!(server.command(&["GET", &key(name)]), "someone-else");
        }
        for server in &s[taken..] {
            assert_eq!(server.command(&["EXISTS", &key(name)]), ":0");
        }
    }
}

/// `RedisLocks::shutdown` waits for the releases of dropped guards and
/// cancelled acquisitions "so a service that returns from `main` right
/// after leaves no lock held until its TTL". A Redlock over those clients
/// (`from_clients`) must leave nothing either: an acquisition cancelled
/// after its `SET`s were applied, then every client shut down, then the
/// runtime gone (as `main` returning).
#[test]
fn shutdown_waits_for_a_cancelled_redlock_acquisition_s_cleanup() {
    let s = servers(3);
    let p = proxies(&s);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = redlock_options(Duration::from_secs(10)).redis;
        let mut clients = Vec::new();
        for url in proxy_urls(&p) {
            clients.push(
                bounded(RedisLocks::connect_with(&url, opts.clone()))
                    .await
                    .unwrap(),
            );
        }
        let r = Redlock::from_clients(clients.clone(), RedlockOptions::new()).unwrap();
        // The SETs reach the servers at once; their answers come late.
        for proxy in &p {
            proxy.delay_replies(Duration::from_millis(300));
        }
        let cut = tokio::time::timeout(
            Duration::from_millis(100),
            r.acquire("exit-cleanup", Duration::from_secs(5)),
        )
        .await;
        assert!(cut.is_err(), "the acquisition was cut off mid-flight");
        assert_eq!(holders(&s, "exit-cleanup"), 3, "the SETs were applied");
        for c in &clients {
            bounded(c.shutdown()).await;
        }
    });
    drop(rt);
    assert_eq!(
        holders(&s, "exit-cleanup"),
        0,
        "shut down and gone, and the cancelled acquisition's keys are left to their TTL"
    );
}
