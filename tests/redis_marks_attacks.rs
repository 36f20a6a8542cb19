//! Attacks on the Redis key protocol with marks: readers and semaphore
//! holders mark the lock key (`lockyard:readers`, `lockyard:semaphore`), a
//! waiting writer sets (and withdraws) its intent, an uncontended blocking
//! acquire makes one attempt before queueing. Each test tries to break one
//! guarantee: one name is one lock; no stale state blocks anyone longer
//! than it should; fencing tokens increase; `is_locked`, `owner()` and
//! `list()` tell the truth with marks present; dropped acquisitions leave
//! nothing behind.
#![cfg(feature = "redis")]

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard::{AcquireOptions, LockError};
use lockyard_testkit::proxy::{FaultProxy, Rule, Then};
use lockyard_testkit::redis::{RedisServer, client};
use lockyard_testkit::{bounded, bounded_for, eventually_within};
use tokio::time::Instant;

/// Every key of `name` on the server, sorted.
async fn keys_of(server: &RedisServer, name: &str) -> Vec<String> {
    let raw = redis::Client::open(server.url()).unwrap();
    let mut conn = raw.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("lockyard:{{{name}}}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    keys
}

/// Whether only the fencing counter of `name` is left (no hold, no mark,
/// no intent, no permit count).
async fn only_fence_left(server: &RedisServer, name: &str) -> bool {
    let keys = keys_of(server, name).await;
    keys.is_empty() || keys == [format!("lockyard:{{{name}}}:fence")]
}

/// A client through `url` with `ttl` and a short op timeout (a proxy that
/// drops requests must not stall it for long).
async fn client_via(url: &str, ttl: Duration) -> RedisLocks {
    let opts = RedisOptions::default()
        .ttl(ttl)
        .connect_timeout(Duration::from_secs(1))
        .op_timeout(Duration::from_millis(200));
    RedisLocks::connect_with(url, opts).await.unwrap()
}

/// A private server, a client of it behind a proxy with leases of 500 ms
/// (cut off once the test calls `proxy.drop_requests(true)`: a holder that
/// crashes) and a live client with leases of 10 s.
async fn crashed_and_live() -> (RedisServer, FaultProxy, RedisLocks, RedisLocks) {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let crashed = client_via(&proxy.url(), Duration::from_millis(500)).await;
    let live = client(&server.url(), Duration::from_secs(10)).await;
    (server, proxy, crashed, live)
}

/// `name`'s keys and its lock key's PTTL, for a failure message.
async fn lock_state(server: &RedisServer, name: &str) -> String {
    let keys = keys_of(server, name).await;
    let pttl = server.command(&["PTTL", &format!("lockyard:{{{name}}}:lock")]);
    format!("keys {keys:?}, lock PTTL {pttl}")
}

/// A RESP bulk string: one argument on the wire.
fn bulk(arg: &str) -> Vec<u8> {
    format!("${}\r\n{arg}\r\n", arg.len()).into_bytes()
}

/// Tiny deterministic PRNG (xorshift), one per task.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Holders of one name by kind, counted inside the holds (incremented after
/// the grant, decremented before the release), and what went wrong.
#[derive(Default)]
struct Census {
    exclusive: AtomicI64,
    shared: AtomicI64,
    permits: AtomicI64,
    grants: [AtomicUsize; 3],
    violations: Mutex<Vec<String>>,
}

impl Census {
    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }

    /// Enter as kind 0 (exclusive), 1 (shared), 2 (permit).
    fn enter(&self, kind: usize, permits: i64) {
        self.grants[kind].fetch_add(1, Ordering::SeqCst);
        let (x, s, p) = match kind {
            0 => (
                self.exclusive.fetch_add(1, Ordering::SeqCst) + 1,
                self.shared.load(Ordering::SeqCst),
                self.permits.load(Ordering::SeqCst),
            ),
            1 => (
                self.exclusive.load(Ordering::SeqCst),
                self.shared.fetch_add(1, Ordering::SeqCst) + 1,
                self.permits.load(Ordering::SeqCst),
            ),
            _ => (
                self.exclusive.load(Ordering::SeqCst),
                self.shared.load(Ordering::SeqCst),
                self.permits.fetch_add(1, Ordering::SeqCst) + 1,
            ),
        };
        let ok = match kind {
            0 => x == 1 && s == 0 && p == 0,
            1 => x == 0 && p == 0,
            _ => x == 0 && s == 0 && p <= permits,
        };
        if !ok {
            self.violation(format!(
                "kind {kind} granted while exclusive={x} shared={s} permits={p}"
            ));
        }
    }

    fn leave(&self, kind: usize) {
        let c = [&self.exclusive, &self.shared, &self.permits][kind];
        c.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An acquire error that is part of the game (busy, timed out, the name
/// is in use as the other kind); anything else is a violation.
fn expected(e: &LockError) -> bool {
    e.is_would_block() || e.is_timeout() || e.is_wrong_kind()
}

// ---------------------------------------------------------------------
// 1. One name is one lock.
// ---------------------------------------------------------------------

/// Many tasks on three clients, one name, every way in: `acquire`,
/// `try_acquire`, `acquire_with(shared)`, `read`, `try_read`, `write`,
/// `try_write`, semaphore `acquire` and `try_acquire`. Some holds outlive
/// the TTL (the watchdog renews them and their marks). Never an exclusive
/// holder with anyone else, never readers with permits, never more permits
/// than the semaphore has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_modes_on_one_name_never_overlap() {
    let server = RedisServer::start();
    let ttl = Duration::from_millis(900);
    let clients = [
        client(&server.url(), ttl).await,
        client(&server.url(), ttl).await,
        client(&server.url(), ttl).await,
    ];
    let census = Arc::new(Census::default());
    let lost = Arc::new(AtomicUsize::new(0));
    let begin = Instant::now();
    let end = begin + Duration::from_millis(3600);
    let mut tasks = Vec::new();
    for t in 0..14u64 {
        let locks = clients[(t % 3) as usize].clone();
        let census = census.clone();
        let lost = lost.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t + 1) * 0x1234_5678));
            let lock = locks.lock("one").unwrap();
            let rw = locks.rwlock("one").unwrap();
            let sem = locks.semaphore("one", 2).unwrap();
            let short = Duration::from_millis(150);
            while Instant::now() < end {
                // A long hold now and then: past one TTL, renewed.
                let hold = if rng.below(25) == 0 {
                    Duration::from_millis(1100)
                } else {
                    Duration::from_millis(rng.below(8))
                };
                macro_rules! run {
                    ($kind:expr, $acq:expr) => {
                        match $acq.await {
                            Ok(g) => {
                                census.enter($kind, 2);
                                tokio::time::sleep(hold).await;
                                if g.is_lost() {
                                    lost.fetch_add(1, Ordering::SeqCst);
                                }
                                census.leave($kind);
                                if let Err(e) = g.release().await {
                                    census.violation(format!("release: {e}"));
                                }
                            }
                            Err(e) if expected(&e) => {
                                tokio::time::sleep(Duration::from_millis(rng.below(3))).await;
                            }
                            Err(e) => census.violation(format!("acquire: {e}")),
                        }
                    };
                }
                // Phases of 600 ms: everything goes, then no new permit is
                // asked for (the semaphore drains and locks get in), then no
                // new lock (it drains and the semaphore gets in).
                let phase = (Instant::now() - begin).as_millis() % 600 / 200;
                let op = loop {
                    let op = (t + rng.below(9)) % 9;
                    if (phase == 1 && op >= 7) || (phase == 2 && op < 7) {
                        continue;
                    }
                    break op;
                };
                match op {
                    0 => run!(0, lock.acquire(short)),
                    1 => run!(0, lock.try_acquire()),
                    2 => run!(0, rw.write(short)),
                    3 => run!(0, rw.try_write()),
                    4 => run!(1, rw.read(short)),
                    5 => run!(1, rw.try_read()),
                    6 => run!(
                        1,
                        lock.acquire_with(&AcquireOptions::shared().timeout(short))
                    ),
                    7 => run!(2, sem.acquire(short)),
                    _ => run!(2, sem.try_acquire()),
                }
            }
        }));
    }
    for t in tasks {
        bounded(t).await.unwrap();
    }
    // The mix gave every kind windows, but not a guaranteed grant: a name
    // in use as a lock refuses a semaphore (and the reverse) instead of
    // queueing it, by design, so under load (another test's servers on
    // the same two CPUs) one kind can miss every window; this failed once
    // so with no overlap and no loss. The mix must not be vacuous, and
    // each kind, alone now, gets in at once.
    let mixed: usize = census.grants.iter().map(|g| g.load(Ordering::SeqCst)).sum();
    assert!(mixed >= 50, "only {mixed} grants in the mix");
    let locks = &clients[0];
    for kind in 0..3 {
        let quick = Duration::from_secs(2);
        let rw = locks.rwlock("one").unwrap();
        let sem = locks.semaphore("one", 2).unwrap();
        let released = match kind {
            0 => {
                let g = bounded(rw.write(quick)).await.unwrap();
                census.enter(0, 2);
                census.leave(0);
                g.release().await
            }
            1 => {
                let g = bounded(rw.read(quick)).await.unwrap();
                census.enter(1, 2);
                census.leave(1);
                g.release().await
            }
            _ => {
                let g = bounded(sem.acquire(quick)).await.unwrap();
                census.enter(2, 2);
                census.leave(2);
                g.release().await
            }
        };
        released.unwrap();
    }
    let v = census.violations.lock().unwrap().clone();
    let grants: Vec<usize> = census
        .grants
        .iter()
        .map(|g| g.load(Ordering::SeqCst))
        .collect();
    assert!(
        v.is_empty(),
        "{} violations (grants {grants:?}): {v:#?}",
        v.len()
    );
    assert_eq!(
        lost.load(Ordering::SeqCst),
        0,
        "holds lost (grants {grants:?})"
    );
    assert!(grants.iter().all(|g| *g > 0), "grants {grants:?}");
    eventually_within("the name's keys gone", Duration::from_secs(2), || {
        only_fence_left(&server, "one")
    })
    .await;
}

/// A reader renewed by the watchdog for four TTLs keeps every writer and
/// every semaphore out all along (its mark must be renewed with it), and
/// the name is free at once when it lets go.
#[tokio::test]
async fn a_reader_renewed_past_its_ttl_keeps_writers_and_semaphores_out() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_millis(400)).await;
    let b = client(&server.url(), Duration::from_secs(5)).await;
    let r = bounded(a.rwlock("long").unwrap().try_read()).await.unwrap();
    // A second reader that comes and goes in the middle.
    let rw_b = b.rwlock("long").unwrap();
    let sem = b.semaphore("long", 3).unwrap();
    let lock = b.lock("long").unwrap();
    let start = Instant::now();
    let mut checks = 0;
    while start.elapsed() < Duration::from_millis(1600) {
        let e = rw_b.try_write().await.unwrap_err();
        assert!(
            e.is_would_block(),
            "try_write at {:?}: {e}",
            start.elapsed()
        );
        let e = lock.try_acquire().await.unwrap_err();
        assert!(
            e.is_would_block(),
            "try_acquire at {:?}: {e}",
            start.elapsed()
        );
        let e = rw_b.write(Duration::from_millis(30)).await.unwrap_err();
        assert!(e.is_timeout(), "write at {:?}: {e}", start.elapsed());
        let e = sem.try_acquire().await.unwrap_err();
        assert!(e.is_wrong_kind(), "semaphore at {:?}: {e}", start.elapsed());
        assert!(lock.is_locked().await.unwrap());
        if checks == 10 {
            let r2 = rw_b.try_read().await.unwrap();
            r2.release().await.unwrap();
        }
        checks += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(!r.is_lost());
    r.release().await.unwrap();
    bounded(lock.try_acquire())
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    bounded(sem.try_acquire())
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    assert!(only_fence_left(&server, "long").await);
}

/// A reader (and, in turn, a permit holder) cut off from Redis stops being
/// renewed: a writer gets the name once its lease ends on the server, and
/// by then the holder must have been told it lost it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_shared_holder_is_told_lost_before_a_writer_gets_in() {
    for semaphore in [false, true] {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.port());
        let ttl = Duration::from_millis(600);
        let cut = client_via(&proxy.url(), ttl).await;
        let other = client(&server.url(), Duration::from_secs(5)).await;
        let held: lockyard::LockGuard = if semaphore {
            bounded(cut.semaphore("cut", 2).unwrap().try_acquire())
                .await
                .unwrap()
                .into()
        } else {
            bounded(cut.rwlock("cut").unwrap().try_read())
                .await
                .unwrap()
                .into()
        };
        proxy.drop_requests(true);
        let rw = other.rwlock("cut").unwrap();
        let start = Instant::now();
        let w = loop {
            match rw.try_write().await {
                Ok(w) => break w,
                Err(e) if e.is_would_block() || e.is_wrong_kind() => {}
                Err(e) => panic!("{e}"),
            }
            assert!(start.elapsed() < Duration::from_secs(5), "never got in");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(
            held.is_lost(),
            "semaphore={semaphore}: a writer got in after {:?} while the shared holder believed it held",
            start.elapsed()
        );
        w.release().await.unwrap();
        drop(held);
    }
}

/// A crashed reader (its member and mark, nobody renewing) keeps writers
/// out until its lease ends and a semaphore of the name out as well; a
/// crashed permit holder the same for readers and writers.
#[tokio::test]
async fn crashed_shared_holders_keep_the_other_kinds_out_until_their_lease_ends() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_secs(5)).await;
    let now = server_ms(&server);
    // A reader that crashed: a member ending in 600 ms, and its mark.
    server.command(&[
        "ZADD",
        "lockyard:{dead}:readers",
        &(now + 600).to_string(),
        "dead-reader",
    ]);
    server.command(&[
        "SET",
        "lockyard:{dead}:lock",
        "lockyard:readers",
        "PX",
        "600",
    ]);
    let rw = a.rwlock("dead").unwrap();
    let sem = a.semaphore("dead", 1).unwrap();
    assert!(rw.try_write().await.unwrap_err().is_would_block());
    assert!(sem.try_acquire().await.unwrap_err().is_wrong_kind());
    let start = Instant::now();
    let w = bounded(rw.write(Duration::from_secs(5))).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    assert!(sem.try_acquire().await.unwrap_err().is_wrong_kind());
    w.release().await.unwrap();
    let p = bounded(sem.try_acquire()).await.unwrap();
    assert!(rw.try_read().await.unwrap_err().is_wrong_kind());
    assert!(rw.try_write().await.unwrap_err().is_wrong_kind());
    p.release().await.unwrap();
    assert!(
        only_fence_left(&server, "dead").await,
        "{:?}",
        keys_of(&server, "dead").await
    );
}

/// The server's clock in ms.
fn server_ms(server: &RedisServer) -> u64 {
    let time = server.command(&[
        "EVAL",
        "local t = redis.call('TIME') return t[1] * 1000 + math.floor(t[2] / 1000)",
        "0",
    ]);
    time.trim_start_matches(':').parse().unwrap()
}

// ---------------------------------------------------------------------
// 2. No stale state blocks anyone longer than it should.
// ---------------------------------------------------------------------

/// After every kind of hold (and mixes of them) is released, a reader, a
/// writer and a semaphore of the name all get in at once, and only the
/// fencing counter is left.
#[tokio::test]
async fn after_every_release_a_reader_a_writer_and_a_semaphore_all_get_in() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_secs(10)).await;
    let b = client(&server.url(), Duration::from_secs(10)).await;
    let (rw_a, rw_b) = (a.rwlock("free").unwrap(), b.rwlock("free").unwrap());
    let (sem_a, sem_b) = (
        a.semaphore("free", 2).unwrap(),
        b.semaphore("free", 2).unwrap(),
    );

    async fn all_get_in(a: &RedisLocks, b: &RedisLocks, server: &RedisServer, step: &str) {
        assert!(
            only_fence_left(server, "free").await,
            "{step}: left behind {:?}",
            keys_of(server, "free").await
        );
        let r = a.rwlock("free").unwrap().try_read().await;
        let r = r.unwrap_or_else(|e| panic!("{step}: reader refused: {e}"));
        r.release().await.unwrap();
        let w = b.rwlock("free").unwrap().try_write().await;
        let w = w.unwrap_or_else(|e| panic!("{step}: writer refused: {e}"));
        w.release().await.unwrap();
        let p = a.semaphore("free", 2).unwrap().try_acquire().await;
        let p = p.unwrap_or_else(|e| panic!("{step}: semaphore refused: {e}"));
        p.release().await.unwrap();
        assert!(
            only_fence_left(server, "free").await,
            "{step}: after the probes"
        );
    }

    // Two readers, released in either order.
    let r1 = rw_a.try_read().await.unwrap();
    let r2 = rw_b.read(Duration::from_secs(1)).await.unwrap();
    r1.release().await.unwrap();
    r2.release().await.unwrap();
    all_get_in(&a, &b, &server, "two readers").await;

    // Readers with a writer waiting behind them (its intent set), which
    // then gets in and leaves.
    let r1 = rw_a.try_read().await.unwrap();
    let waiting = tokio::spawn({
        let rw = rw_b.clone();
        async move { rw.write(Duration::from_secs(5)).await }
    });
    eventually_within("the intent set", Duration::from_secs(2), || async {
        keys_of(&server, "free")
            .await
            .contains(&"lockyard:{free}:intent".to_owned())
    })
    .await;
    r1.release().await.unwrap();
    let w = bounded(waiting).await.unwrap().unwrap();
    w.release().await.unwrap();
    all_get_in(&a, &b, &server, "a writer that waited behind readers").await;

    // Two permits on two clients.
    let p1 = sem_a.try_acquire().await.unwrap();
    let p2 = sem_b.acquire(Duration::from_secs(1)).await.unwrap();
    p2.release().await.unwrap();
    p1.release().await.unwrap();
    all_get_in(&a, &b, &server, "two permits").await;

    // The plain lock, then a blocking writer through it.
    let g = a
        .lock("free")
        .unwrap()
        .acquire(Duration::from_secs(1))
        .await
        .unwrap();
    g.release().await.unwrap();
    let g = b
        .acquire_with(
            "free",
            &AcquireOptions::shared().timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    g.release().await.unwrap();
    all_get_in(&a, &b, &server, "plain lock, exclusive then shared").await;

    // Guards dropped rather than released (background releases).
    drop(rw_a.try_read().await.unwrap());
    drop(rw_b.try_read().await.unwrap());
    eventually_within("dropped readers released", Duration::from_secs(2), || {
        only_fence_left(&server, "free")
    })
    .await;
    all_get_in(&a, &b, &server, "dropped readers").await;
}

/// A writer that times out behind readers (blocking `write`, and the plain
/// lock's `acquire`) leaves no intent: new readers get in at once.
#[tokio::test]
async fn a_writer_timed_out_behind_readers_leaves_no_intent() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_secs(10)).await;
    let b = client(&server.url(), Duration::from_secs(10)).await;
    let r = a.rwlock("to").unwrap().try_read().await.unwrap();
    let e = b
        .rwlock("to")
        .unwrap()
        .write(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(server.command(&["EXISTS", "lockyard:{to}:intent"]), ":0");
    let e = b
        .lock("to")
        .unwrap()
        .acquire(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(server.command(&["EXISTS", "lockyard:{to}:intent"]), ":0");
    // Two writers of one process: the second times out in the local queue.
    let w1 = tokio::spawn({
        let rw = b.rwlock("to").unwrap();
        async move { rw.write(Duration::from_millis(400)).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let e = b
        .rwlock("to")
        .unwrap()
        .write(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(bounded(w1).await.unwrap().unwrap_err().is_timeout());
    assert_eq!(server.command(&["EXISTS", "lockyard:{to}:intent"]), ":0");
    let r2 = bounded(b.rwlock("to").unwrap().try_read()).await.unwrap();
    r2.release().await.unwrap();
    r.release().await.unwrap();
    assert!(
        only_fence_left(&server, "to").await,
        "{:?}",
        keys_of(&server, "to").await
    );
}

/// A waiting writer that crashes (cut off from Redis) leaves its intent:
/// it may keep new readers out for its TTL, not longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_writers_intent_blocks_readers_only_for_its_ttl() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let ttl = Duration::from_millis(600);
    let writer = client_via(&proxy.url(), ttl).await;
    let readers = client(&server.url(), Duration::from_secs(10)).await;
    let rw = readers.rwlock("crashw").unwrap();
    let r = rw.try_read().await.unwrap();
    let waiting = tokio::spawn({
        let rw = writer.rwlock("crashw").unwrap();
        async move { rw.write(Duration::from_secs(30)).await.map(drop) }
    });
    eventually_within("the intent set", Duration::from_secs(2), || async {
        server.command(&["EXISTS", "lockyard:{crashw}:intent"]) == ":1"
    })
    .await;
    // The writer's process dies: nothing it sends arrives any more.
    proxy.drop_requests(true);
    waiting.abort();
    let crashed = Instant::now();
    assert!(rw.try_read().await.unwrap_err().is_would_block());
    let r2 = bounded(rw.read(Duration::from_secs(10))).await.unwrap();
    let took = crashed.elapsed();
    assert!(
        took <= Duration::from_millis(1500),
        "readers kept out {took:?}"
    );
    r2.release().await.unwrap();
    r.release().await.unwrap();
    assert!(
        only_fence_left(&server, "crashw").await,
        "{:?}",
        keys_of(&server, "crashw").await
    );
}

/// A reader cut off from Redis (its lease runs out by itself) while a
/// second reader, with a longer lease, came and went: once the first
/// reader's lease has ended nobody holds the name, so a semaphore of it
/// must get in. The second reader raised the readers' mark to its own
/// lease; its release left the mark (a reader still held then); the mark
/// must not outlive the last reader's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readers_mark_does_not_outlive_its_readers() {
    let (server, proxy, crashed, live) = crashed_and_live().await;
    let c = bounded(crashed.rwlock("rmark").unwrap().try_read())
        .await
        .unwrap();
    proxy.drop_requests(true);
    let l = bounded(live.rwlock("rmark").unwrap().try_read())
        .await
        .unwrap();
    l.release().await.unwrap();
    // The cut-off reader's lease ends on the server (500 ms + slack).
    bounded(c.lost()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let rw = live.rwlock("rmark").unwrap();
    assert!(
        !rw.is_locked().await.unwrap(),
        "is_locked with no live reader"
    );
    assert!(live.owner("rmark").await.unwrap().is_none());
    let listed = live.list().await.unwrap();
    assert!(
        listed.iter().all(|i| i.name != "rmark"),
        "listed with no live holder: {listed:?}"
    );
    let sem = live.semaphore("rmark", 1).unwrap();
    let got = sem.try_acquire().await;
    let state = lock_state(&server, "rmark").await;
    let p = got.unwrap_or_else(|e| {
        panic!("no reader holds any more, yet a semaphore is refused: {e} ({state})")
    });
    p.release().await.unwrap();
    drop(c);
}

/// The same for a semaphore: a permit holder cut off from Redis, a second
/// holder with a longer lease came and went; once the first holder's lease
/// has ended nobody holds the name, so a reader and a writer must get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphores_mark_does_not_outlive_its_holders() {
    let (server, proxy, crashed, live) = crashed_and_live().await;
    let c = bounded(crashed.semaphore("smark", 2).unwrap().try_acquire())
        .await
        .unwrap();
    proxy.drop_requests(true);
    let l = bounded(live.semaphore("smark", 2).unwrap().try_acquire())
        .await
        .unwrap();
    l.release().await.unwrap();
    bounded(c.lost()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sem = live.semaphore("smark", 2).unwrap();
    assert_eq!(sem.holders().await.unwrap(), 0);
    let rw = live.rwlock("smark").unwrap();
    assert!(!rw.is_locked().await.unwrap());
    let listed = live.list().await.unwrap();
    assert!(
        listed.iter().all(|i| i.name != "smark"),
        "listed with no live holder: {listed:?}"
    );
    let got = rw.try_write().await;
    let state = lock_state(&server, "smark").await;
    let w = got.unwrap_or_else(|e| {
        panic!("no permit is held any more, yet a writer is refused: {e} ({state})")
    });
    w.release().await.unwrap();
    drop(c);
}

/// The last live permit holder lets go after a crashed holder's lease has
/// ended (its member expired but still in the set): nobody holds the
/// name, so the mark must go with that release, and a writer and a reader
/// get in at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_live_permits_release_after_a_crashed_holder_expired_frees_the_name() {
    let (server, proxy, crashed, live) = crashed_and_live().await;
    let c = bounded(crashed.semaphore("slast", 2).unwrap().try_acquire())
        .await
        .unwrap();
    proxy.drop_requests(true);
    let l = bounded(live.semaphore("slast", 2).unwrap().try_acquire())
        .await
        .unwrap();
    bounded(c.lost()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Only `l` holds now; its release is the last one.
    assert_eq!(
        live.semaphore("slast", 2).unwrap().holders().await.unwrap(),
        1
    );
    l.release().await.unwrap();
    let rw = live.rwlock("slast").unwrap();
    let got = rw.try_write().await;
    let state = lock_state(&server, "slast").await;
    let w = got.unwrap_or_else(|e| {
        panic!("every permit was released or expired, yet a writer is refused: {e} ({state})")
    });
    w.release().await.unwrap();
    drop(c);
}

/// The same for readers (whose release counts the live readers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_live_readers_release_after_a_crashed_reader_expired_frees_the_name() {
    let (server, proxy, crashed, live) = crashed_and_live().await;
    let c = bounded(crashed.rwlock("rlast").unwrap().try_read())
        .await
        .unwrap();
    proxy.drop_requests(true);
    let l = bounded(live.rwlock("rlast").unwrap().try_read())
        .await
        .unwrap();
    bounded(c.lost()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    l.release().await.unwrap();
    assert!(
        only_fence_left(&server, "rlast").await,
        "{:?}",
        keys_of(&server, "rlast").await
    );
    let p = live.semaphore("rlast", 1).unwrap().try_acquire().await;
    p.unwrap_or_else(|e| panic!("semaphore refused: {e}"))
        .release()
        .await
        .unwrap();
    live.rwlock("rlast")
        .unwrap()
        .try_write()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    drop(c);
}

// ---------------------------------------------------------------------
// 3. Fencing tokens strictly increase.
// ---------------------------------------------------------------------

/// One after the other, every grant of a name in any mode, with busy and
/// refused attempts between them, gets a larger token than the one before.
#[tokio::test]
async fn fencing_tokens_increase_across_modes_and_busy_attempts() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_secs(10)).await;
    let b = client(&server.url(), Duration::from_secs(10)).await;
    let (rw_a, rw_b) = (a.rwlock("fence").unwrap(), b.rwlock("fence").unwrap());
    let lock_b = b.lock("fence").unwrap();
    let sem = a.semaphore("fence", 2).unwrap();
    let mut last = 0u64;
    let mut check = |t: u64, what: &str| {
        assert!(t > last, "{what}: token {t} after {last}");
        last = t;
    };
    for round in 0..5 {
        let w = rw_a.try_write().await.unwrap();
        check(w.fencing_token(), "try_write");
        // Busy attempts of every kind.
        assert!(rw_b.try_read().await.is_err());
        assert!(lock_b.try_acquire().await.is_err());
        assert!(rw_b.write(Duration::from_millis(20)).await.is_err());
        assert!(sem.try_acquire().await.is_err());
        w.release().await.unwrap();
        let r1 = rw_b.read(Duration::from_secs(1)).await.unwrap();
        check(r1.fencing_token(), "read");
        let r2 = lock_b
            .acquire_with(&AcquireOptions::shared().timeout(Duration::from_secs(1)))
            .await
            .unwrap();
        check(r2.fencing_token(), "shared acquire");
        assert!(rw_a.try_write().await.is_err());
        assert!(rw_a.write(Duration::from_millis(20)).await.is_err());
        assert!(sem.acquire(Duration::from_millis(20)).await.is_err());
        // A writer waits behind them, intent set.
        let waiting = tokio::spawn({
            let rw = rw_a.clone();
            async move { rw.write(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        r1.release().await.unwrap();
        r2.release().await.unwrap();
        let w = bounded(waiting).await.unwrap().unwrap();
        check(w.fencing_token(), "write after waiting");
        w.release().await.unwrap();
        let p1 = sem.try_acquire().await.unwrap();
        check(p1.fencing_token(), "permit");
        let p2 = sem.acquire(Duration::from_secs(1)).await.unwrap();
        check(p2.fencing_token(), "second permit");
        assert!(sem.try_acquire().await.is_err());
        assert!(rw_b.try_write().await.is_err());
        p1.release().await.unwrap();
        p2.release().await.unwrap();
        let g = lock_b.acquire(Duration::from_secs(1)).await.unwrap();
        check(g.fencing_token(), &format!("acquire, round {round}"));
        g.release().await.unwrap();
    }
}

/// Concurrently: every token is unique, and a grant that began after
/// another hold was released has a larger token than that hold's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_under_concurrency() {
    let server = RedisServer::start();
    let clients = [
        client(&server.url(), Duration::from_secs(5)).await,
        client(&server.url(), Duration::from_secs(5)).await,
    ];
    let released_max = Arc::new(AtomicU64::new(0));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let bad = Arc::new(Mutex::new(Vec::new()));
    let end = Instant::now() + Duration::from_millis(2000);
    let mut tasks = Vec::new();
    for t in 0..10u64 {
        let locks = clients[(t % 2) as usize].clone();
        let (released_max, tokens, bad) = (released_max.clone(), tokens.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(77 + t * 1_000_003);
            let rw = locks.rwlock("cf").unwrap();
            let sem = locks.semaphore("cf", 3).unwrap();
            while Instant::now() < end {
                let floor = released_max.load(Ordering::SeqCst);
                let short = Duration::from_millis(100);
                let got: Result<(u64, lockyard::LockGuard), LockError> = match rng.below(6) {
                    0 => rw.write(short).await.map(|g| (g.fencing_token(), g.into())),
                    1 => rw.try_write().await.map(|g| (g.fencing_token(), g.into())),
                    2 => rw.read(short).await.map(|g| (g.fencing_token(), g.into())),
                    3 => rw.try_read().await.map(|g| (g.fencing_token(), g.into())),
                    4 => sem
                        .acquire(short)
                        .await
                        .map(|g| (g.fencing_token(), g.into())),
                    _ => sem
                        .try_acquire()
                        .await
                        .map(|g| (g.fencing_token(), g.into())),
                };
                match got {
                    Ok((token, g)) => {
                        if token <= floor {
                            bad.lock().unwrap().push(format!(
                                "token {token} granted after a hold with {floor} was released"
                            ));
                        }
                        tokens.lock().unwrap().push(token);
                        tokio::time::sleep(Duration::from_millis(rng.below(4))).await;
                        released_max.fetch_max(token, Ordering::SeqCst);
                        g.release().await.unwrap();
                    }
                    Err(e) if expected(&e) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => bad.lock().unwrap().push(format!("{e}")),
                }
            }
        }));
    }
    for t in tasks {
        bounded(t).await.unwrap();
    }
    let bad = bad.lock().unwrap().clone();
    assert!(bad.is_empty(), "{bad:#?}");
    let mut tokens = tokens.lock().unwrap().clone();
    let n = tokens.len();
    assert!(n > 20, "only {n} grants");
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), n, "a token was issued twice");
}

// ---------------------------------------------------------------------
// 4. is_locked, owner(), list() with marks.
// ---------------------------------------------------------------------

#[tokio::test]
async fn is_locked_owner_and_list_tell_marks_from_holders() {
    let server = RedisServer::start();
    let a = client(&server.url(), Duration::from_secs(10)).await;
    let rw = a.rwlock("look").unwrap();
    let lock = a.lock("look").unwrap();
    let sem = a.semaphore("look", 3).unwrap();

    // Nothing.
    assert!(!rw.is_locked().await.unwrap());
    assert!(!a.is_locked("look").await.unwrap());
    assert!(a.owner("look").await.unwrap().is_none());
    assert!(a.list().await.unwrap().iter().all(|i| i.name != "look"));

    // Readers.
    let r1 = rw.try_read().await.unwrap();
    let r2 = rw.try_read().await.unwrap();
    assert!(rw.is_locked().await.unwrap());
    assert!(lock.is_locked().await.unwrap());
    assert!(
        lock.owner().await.unwrap().is_none(),
        "a reader's mark is no owner"
    );
    assert_eq!(rw.owners().await.unwrap().len(), 2);
    let listed = a.list().await.unwrap();
    let mine: Vec<_> = listed.iter().filter(|i| i.name == "look").collect();
    assert_eq!(mine.len(), 1, "{listed:?}");
    assert_eq!(
        (mine[0].kind, mine[0].holders, mine[0].owners.len()),
        ("lock", 2, 2)
    );
    assert!(mine[0].ttl.is_some());
    r1.release().await.unwrap();
    r2.release().await.unwrap();

    // A writer.
    let w = rw.try_write().await.unwrap();
    assert!(lock.is_locked().await.unwrap());
    assert_eq!(lock.owner().await.unwrap().unwrap().pid, std::process::id());
    let listed = a.list().await.unwrap();
    let mine: Vec<_> = listed.iter().filter(|i| i.name == "look").collect();
    assert_eq!(mine.len(), 1, "{listed:?}");
    assert_eq!((mine[0].kind, mine[0].holders), ("lock", 1));
    w.release().await.unwrap();

    // A semaphore.
    let p1 = sem.try_acquire().await.unwrap();
    let p2 = sem.try_acquire().await.unwrap();
    assert!(
        lock.owner().await.unwrap().is_none(),
        "the semaphore's mark is no owner"
    );
    assert!(
        !lock.is_locked().await.unwrap(),
        "no lock is held: a semaphore is"
    );
    let listed = a.list().await.unwrap();
    let mine: Vec<_> = listed.iter().filter(|i| i.name == "look").collect();
    assert_eq!(mine.len(), 1, "{listed:?}");
    assert_eq!(
        (mine[0].kind, mine[0].holders, mine[0].owners.len()),
        ("semaphore", 2, 2)
    );
    assert_eq!(sem.owners().await.unwrap().len(), 2);
    p1.release().await.unwrap();
    p2.release().await.unwrap();
    assert!(a.list().await.unwrap().iter().all(|i| i.name != "look"));

    // Marks whose holders crashed and are gone: a readers' mark over an
    // empty set of readers, a semaphore's over expired permits.
    let now = server_ms(&server);
    server.command(&[
        "ZADD",
        "lockyard:{look}:readers",
        &(now - 10).to_string(),
        "dead",
    ]);
    server.command(&[
        "SET",
        "lockyard:{look}:lock",
        "lockyard:readers",
        "PX",
        "5000",
    ]);
    assert!(!lock.is_locked().await.unwrap(), "a dead reader's mark");
    assert!(lock.owner().await.unwrap().is_none());
    assert!(a.list().await.unwrap().iter().all(|i| i.name != "look"));
    assert!(rw.owners().await.unwrap().is_empty());
    server.command(&["DEL", "lockyard:{look}:readers", "lockyard:{look}:lock"]);
    server.command(&[
        "ZADD",
        "lockyard:{look}:sem",
        &(now - 10).to_string(),
        "dead",
    ]);
    server.command(&["SET", "lockyard:{look}:permits", "3", "PX", "5000"]);
    server.command(&[
        "SET",
        "lockyard:{look}:lock",
        "lockyard:semaphore",
        "PX",
        "5000",
    ]);
    assert!(!lock.is_locked().await.unwrap(), "a dead semaphore's mark");
    assert!(lock.owner().await.unwrap().is_none());
    assert_eq!(sem.holders().await.unwrap(), 0);
    assert!(a.list().await.unwrap().iter().all(|i| i.name != "look"));
    // A waiting writer's intent alone is no hold either.
    server.command(&[
        "DEL",
        "lockyard:{look}:sem",
        "lockyard:{look}:permits",
        "lockyard:{look}:lock",
    ]);
    server.command(&["SET", "lockyard:{look}:intent", "dead-writer", "PX", "5000"]);
    assert!(!lock.is_locked().await.unwrap());
    assert!(a.list().await.unwrap().iter().all(|i| i.name != "look"));
}

// ---------------------------------------------------------------------
// 5. Cancel safety.
// ---------------------------------------------------------------------

/// Acquisitions of every kind dropped at random moments (before their
/// first attempt, during it, queued in-process, waiting on Redis behind a
/// holder that comes and goes): once every holder has released, nothing
/// of the name is left (leases of 10 s: a leftover would stay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_acquisitions_leave_nothing_behind() {
    let server = RedisServer::start();
    let ttl = Duration::from_secs(10);
    let clients = [
        client(&server.url(), ttl).await,
        client(&server.url(), ttl).await,
        client(&server.url(), ttl).await,
    ];
    let end = Instant::now() + Duration::from_millis(2500);
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for t in 0..12u64 {
        let locks = clients[(t % 3) as usize].clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0xDEAD_BEEF ^ ((t + 1) * 0x9E37_79B9));
            let lock = locks.lock("cancel").unwrap();
            let rw = locks.rwlock("cancel").unwrap();
            let sem = locks.semaphore("cancel", 2).unwrap();
            while Instant::now() < end {
                let cut = Duration::from_micros(rng.below(15_000));
                let long = Duration::from_secs(5);
                let hold = Duration::from_millis(rng.below(20));
                let op = rng.below(7);
                let fut = async {
                    let g: lockyard::LockGuard = match op {
                        0 => rw.write(long).await?.into(),
                        1 => rw.read(long).await?.into(),
                        2 => lock.acquire(long).await?.into(),
                        3 => sem.acquire(long).await?.into(),
                        4 => rw.try_write().await?.into(),
                        5 => rw.try_read().await?.into(),
                        _ => lock
                            .acquire_with(&AcquireOptions::shared().timeout(long))
                            .await?
                            .into(),
                    };
                    Ok::<_, LockError>(g)
                };
                // Holders run their course; acquisitions are cut short.
                match tokio::time::timeout(cut, fut).await {
                    Ok(Ok(g)) => {
                        tokio::time::sleep(hold).await;
                        if rng.below(2) == 0 {
                            g.release().await.unwrap();
                        } else {
                            drop(g);
                        }
                    }
                    Ok(Err(e)) if expected(&e) => {}
                    Ok(Err(e)) => errors.lock().unwrap().push(e.to_string()),
                    Err(_) => {}
                }
            }
        }));
    }
    for t in tasks {
        bounded(t).await.unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{errors:?}");
    // Background releases and undos run within an op timeout; give them 2 s
    // (the leases are 10 s).
    let end = Instant::now() + Duration::from_secs(2);
    while !only_fence_left(&server, "cancel").await {
        if Instant::now() > end {
            let keys = keys_of(&server, "cancel").await;
            let mut detail = Vec::new();
            for k in &keys {
                detail.push(format!(
                    "{k}: type {} pttl {}",
                    server.command(&["TYPE", k]),
                    server.command(&["PTTL", k])
                ));
            }
            panic!("left behind 2 s after every holder let go: {detail:#?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A writer whose wait timed out behind readers withdraws its intent on
/// the way out (`undo_now`: first the lock key, then the intent). If the
/// caller drops the acquisition while that undo is under way (its own
/// outer timeout, a `select!`), the intent must still be withdrawn: it
/// keeps every new reader out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_writer_dropped_while_it_undoes_leaves_no_intent() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let ttl = Duration::from_secs(10);
    let writer = client_via(&proxy.url(), ttl).await;
    let readers = client(&server.url(), ttl).await;
    let rw = readers.rwlock("undo").unwrap();
    let r = rw.try_read().await.unwrap();
    // The undo's first call: release.lua with one key, the lock key.
    let mut pattern = bulk("1");
    pattern.extend(bulk("lockyard:{undo}:lock"));
    proxy.on_request(Rule {
        pattern,
        hold: Duration::from_millis(400),
        then: Then::Pass,
    });
    let w = writer.rwlock("undo").unwrap();
    // The wait times out at 300 ms; the caller gives up at 450 ms, while
    // the undo's first call is held back.
    let out = tokio::time::timeout(
        Duration::from_millis(450),
        w.write(Duration::from_millis(300)),
    )
    .await;
    assert!(
        out.is_err(),
        "the write was to be cut short: {:?}",
        out.map(|r| r.map(drop))
    );
    assert_eq!(
        proxy.matched(),
        1,
        "the undo was not under way when dropped"
    );
    // Background work of the writer's client has 1 s to finish.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let intent = server.command(&["EXISTS", "lockyard:{undo}:intent"]);
    let pttl = server.command(&["PTTL", "lockyard:{undo}:intent"]);
    let got = bounded_for(Duration::from_secs(2), rw.try_read()).await;
    assert!(
        got.is_ok(),
        "a new reader is kept out by the abandoned writer's intent (EXISTS {intent}, PTTL {pttl}): {:?}",
        got.map(drop)
    );
    drop(got);
    r.release().await.unwrap();
}

/// An uncontended blocking acquisition (its one attempt before any queue)
/// and a blocking read, dropped while that attempt is held up on the way
/// to Redis: the attempt is granted on the server after the drop, and the
/// background undo must give it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_dropped_during_its_first_attempt_leaves_nothing() {
    for (i, shared) in [false, true].into_iter().enumerate() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.port());
        let ttl = Duration::from_secs(10);
        let cut = client_via(&proxy.url(), ttl).await;
        let other = client(&server.url(), ttl).await;
        // Both acquire scripts name the intent key; nothing else here does.
        proxy.on_request(Rule {
            pattern: bulk("lockyard:{first}:intent"),
            hold: Duration::from_millis(300),
            then: Then::Pass,
        });
        let rw = cut.rwlock("first").unwrap();
        let out = if shared {
            tokio::time::timeout(Duration::from_millis(100), rw.read(Duration::from_secs(5)))
                .await
                .map(|r| r.map(drop))
        } else {
            tokio::time::timeout(Duration::from_millis(100), rw.write(Duration::from_secs(5)))
                .await
                .map(|r| r.map(drop))
        };
        assert!(out.is_err(), "case {i}: not cut short");
        assert_eq!(proxy.matched(), 1, "case {i}: the attempt was not held up");
        // The held attempt reaches the server 300 ms after it was sent.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            server.command(&["GET", "lockyard:{first}:fence"]),
            "1",
            "case {i}: the attempt never ran"
        );
        eventually_within(
            &format!("case {i}: the late grant given back"),
            Duration::from_secs(2),
            || only_fence_left(&server, "first"),
        )
        .await;
        other
            .rwlock("first")
            .unwrap()
            .try_write()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
}
