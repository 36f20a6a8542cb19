#![cfg(feature = "redis")]
//! Adversarial tests of the uncontended first attempt (`first_at_hand`,
//! `Armed`), the hold's kept connection, the atomic shutdown flag and the
//! fork-aware token pool / owner record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lockyard::redis::{RedisLocks, RedisOptions};
use lockyard::stats::{self, Backend};
use lockyard::{AcquireOptions, LockError};
use lockyard_testkit::bounded;
use lockyard_testkit::redis::RedisServer;

const TTL: Duration = Duration::from_secs(30);

fn opts() -> RedisOptions {
    RedisOptions::default()
        .ttl(TTL)
        .connect_timeout(Duration::from_secs(2))
}

async fn connect(server: &RedisServer, o: RedisOptions) -> RedisLocks {
    bounded(RedisLocks::connect_with(&server.url(), o))
        .await
        .expect("connect")
}

/// Waits (bounded) until `name` reads free from `checker`.
async fn free_within(checker: &RedisLocks, name: &str, limit: Duration, why: &str) {
    let start = Instant::now();
    while bounded(checker.is_locked(name))
        .await
        .unwrap_or_else(|e| panic!("{why}: is_locked({name}) failed: {e:?}"))
    {
        assert!(
            start.elapsed() < limit,
            "{why}: {name} still held after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Try,
    Acquire,
    Shared,
}

const KINDS: [Kind; 3] = [Kind::Try, Kind::Acquire, Kind::Shared];

async fn take(
    locks: &RedisLocks,
    kind: Kind,
    name: &str,
) -> Result<lockyard::redis::RedisLockGuard, LockError> {
    match kind {
        Kind::Try => locks.try_acquire(name).await,
        Kind::Acquire => locks.acquire(name, Duration::from_secs(5)).await,
        Kind::Shared => {
            let o = AcquireOptions::shared().timeout(Duration::from_secs(5));
            locks.acquire_with(name, &o).await
        }
    }
}

/// Takes and releases `name` once: the connections are open and the
/// scripts loaded before an attack.
async fn warm(locks: &RedisLocks, kind: Kind, name: &str) {
    bounded(take(locks, kind, name))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// Polls `fut` `n` times (yielding to the runtime in between) and drops it
/// unless it finished first.
async fn poll_n_then_drop<F: std::future::Future>(fut: F, n: usize) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    for _ in 0..n {
        let waker = futures_noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        tokio::task::yield_now().await;
    }
    None
}

fn futures_noop_waker() -> std::task::Waker {
    std::task::Waker::noop().clone()
}

/// Cancelled at many moments (after n polls, or after 0..2.4 ms), every
/// kind of acquisition leaves the name free in bounded time, and the same
/// client's next blocking acquisition of the name gets it at once (the undo
/// of the abandoned attempt never lands after a grant it should undo: no
/// ghost hold until the TTL). Pool of 4 so that later attempts may go on
/// other connections than the abandoned one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_first_attempts_never_leave_the_name_held() {
    let server = RedisServer::start();
    let a = connect(&server, opts().pool_size(4)).await;
    let b = connect(&server, opts()).await;
    for kind in KINDS {
        let name = format!("cancel-{kind:?}");
        warm(&a, kind, &name).await;
        let mut cancelled = 0;
        for step in 0..24u64 {
            let out = if step % 2 == 0 {
                poll_n_then_drop(take(&a, kind, &name), (step / 2) as usize).await
            } else {
                tokio::time::timeout(Duration::from_micros(step * 100), take(&a, kind, &name))
                    .await
                    .ok()
            };
            match out {
                Some(r) => r.unwrap().release().await.unwrap(),
                None => cancelled += 1,
            }
            // The next acquisition on the same client: at once, not at the
            // TTL of a ghost grant.
            let g = bounded(a.acquire(&name, Duration::from_secs(3)))
                .await
                .unwrap_or_else(|e| panic!("{kind:?} step {step}: re-acquire failed: {e}"));
            assert!(bounded(b.is_locked(&name)).await.unwrap());
            bounded(g.release()).await.unwrap();
            free_within(&b, &name, Duration::from_secs(2), "after release").await;
        }
        // Cancelled after the attempt reached the server: it spent a
        // fencing token that no guard got (undone grants).
        let g = bounded(a.try_acquire(&name)).await.unwrap();
        eprintln!(
            "{kind:?}: {cancelled} of 24 cancelled; fencing {} after 48 acquisitions",
            g.fencing_token()
        );
        g.release().await.unwrap();
        // Nothing landed late either.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!bounded(b.is_locked(&name)).await.unwrap(), "{kind:?}");
    }
}

/// The EVALSHA in flight while the server is paused (CLIENT PAUSE ALL),
/// the acquisition dropped: once the pause ends the grant it may get is
/// undone, and the name stays free afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_attempt_dropped_while_paused_is_undone() {
    let server = RedisServer::start();
    let a = connect(&server, opts().pool_size(2)).await;
    let b = connect(&server, opts()).await;
    for kind in KINDS {
        let n = format!("paused-{kind:?}");
        warm(&a, kind, &n).await;
    }
    for round in 0..2 {
        server.pause(Duration::from_millis(300));
        let mut set = tokio::task::JoinSet::new();
        for kind in KINDS {
            let a = a.clone();
            set.spawn(async move {
                let n = format!("paused-{kind:?}");
                tokio::time::timeout(Duration::from_millis(80 + 40 * round), take(&a, kind, &n))
                    .await
                    .is_ok()
            });
        }
        while let Some(done) = set.join_next().await {
            assert!(!done.unwrap(), "answered while paused");
        }
        for kind in KINDS {
            let n = format!("paused-{kind:?}");
            free_within(&b, &n, Duration::from_secs(3), "dropped while paused").await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        for kind in KINDS {
            let n = format!("paused-{kind:?}");
            assert!(!bounded(b.is_locked(&n)).await.unwrap(), "{n} held late");
            let g = bounded(b.try_acquire(&n)).await.expect("free for others");
            g.release().await.unwrap();
        }
    }
}

/// A request timeout shorter than the pause: the first attempt fails with
/// an error (the undo is armed) and whatever it took once the pause ends is
/// undone. Also reports how a blocking acquire with a long deadline ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_attempt_that_times_out_is_undone() {
    let server = RedisServer::start();
    let o = opts().op_timeout(Duration::from_millis(150));
    let a = connect(&server, o).await;
    let b = connect(&server, opts()).await;
    for kind in KINDS {
        let n = format!("slow-{kind:?}");
        warm(&a, kind, &n).await;
    }
    server.pause(Duration::from_millis(500));
    let mut set = tokio::task::JoinSet::new();
    for kind in KINDS {
        let a = a.clone();
        set.spawn(async move {
            let n = format!("slow-{kind:?}");
            (kind, bounded(take(&a, kind, &n)).await.map(drop))
        });
    }
    while let Some(r) = set.join_next().await {
        let (kind, r) = r.unwrap();
        eprintln!("{kind:?} across a 500 ms pause with a 150 ms request timeout: {r:?}");
    }
    for kind in KINDS {
        let n = format!("slow-{kind:?}");
        free_within(&b, &n, Duration::from_secs(3), "timed-out first attempt").await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    for kind in KINDS {
        let n = format!("slow-{kind:?}");
        assert!(!bounded(b.is_locked(&n)).await.unwrap(), "{n} held late");
    }
}

/// One name is one lock: exclusive and shared holders from two clients
/// (try, blocking, shared, on a pool of 2 and of 1) never overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_and_exclusive_holders_never_coexist() {
    let server = RedisServer::start();
    let a = connect(&server, opts().pool_size(2)).await;
    let b = connect(&server, opts()).await;
    let writers = Arc::new(AtomicI32::new(0));
    let readers = Arc::new(AtomicI32::new(0));
    let grants = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for t in 0..6usize {
        let locks = if t % 2 == 0 { a.clone() } else { b.clone() };
        let (w, r, g) = (writers.clone(), readers.clone(), grants.clone());
        set.spawn(async move {
            for i in 0..40usize {
                let kind = KINDS[(t + i) % 3];
                let Ok(guard) = take(&locks, kind, "one-name").await else {
                    continue;
                };
                g.fetch_add(1, Ordering::Relaxed);
                if matches!(kind, Kind::Shared) {
                    r.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(w.load(Ordering::SeqCst), 0, "reader beside a writer");
                } else {
                    assert_eq!(w.fetch_add(1, Ordering::SeqCst), 0, "two writers");
                    assert_eq!(r.load(Ordering::SeqCst), 0, "writer beside readers");
                }
                if i % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                } else {
                    tokio::task::yield_now().await;
                }
                if matches!(kind, Kind::Shared) {
                    r.fetch_sub(1, Ordering::SeqCst);
                } else {
                    w.fetch_sub(1, Ordering::SeqCst);
                }
                guard.release().await.unwrap();
            }
        });
    }
    bounded(async {
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    })
    .await;
    assert!(grants.load(Ordering::Relaxed) > 100);
    assert!(!bounded(a.is_locked("one-name")).await.unwrap());
}

/// A busy first attempt hands over to the wait: the waiter gets the lock
/// promptly when the holder releases (wake-up, not a nap to the TTL), and
/// is counted once as an acquisition and once as contended; a try on a held
/// name is busy once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_first_attempt_still_wakes_and_counts_once() {
    let server = RedisServer::start();
    let a = connect(&server, opts()).await;
    let b = connect(&server, opts()).await;
    for (holder, waiter) in [
        (Kind::Acquire, Kind::Acquire),
        (Kind::Acquire, Kind::Shared),
        (Kind::Shared, Kind::Acquire),
    ] {
        let name = format!("wake-{holder:?}-{waiter:?}");
        let held = bounded(take(&a, holder, &name)).await.unwrap();
        let err = bounded(b.try_acquire(&name)).await.unwrap_err();
        assert!(err.is_would_block(), "{err}");
        let w = {
            let b = b.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let r = take(&b, waiter, &name).await;
                (r, Instant::now())
            })
        };
        let start = Instant::now();
        while stats::get(Backend::Redis, &name).map_or(0, |s| s.waiting) == 0 {
            assert!(start.elapsed() < Duration::from_secs(3), "never waiting");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        let released = Instant::now();
        bounded(held.release()).await.unwrap();
        let (r, got) = bounded(w).await.unwrap();
        let g = r.unwrap();
        let lag = got.duration_since(released);
        assert!(lag < Duration::from_millis(500), "woken late: {lag:?}");
        let s = stats::get(Backend::Redis, &name).unwrap();
        assert_eq!(s.acquisitions, 2, "{name}: {s:?}");
        assert_eq!(s.busy, 1, "{name}: {s:?}");
        // The try (busy) and the waiter: contended twice, the holder never.
        assert_eq!(s.contended, 2, "{name}: {s:?}");
        assert_eq!((s.waiting, s.held), (0, 1), "{name}: {s:?}");
        bounded(g.release()).await.unwrap();
        let s = stats::get(Backend::Redis, &name).unwrap();
        assert_eq!(s.held, 0, "{name}: {s:?}");
    }
}

/// Waits (bounded) until `name`'s lock key is gone, read on a fresh
/// connection of the test's own (the kills below also kill a checking
/// client's connections).
async fn key_gone_within(server: &RedisServer, name: &str, limit: Duration, why: &str) {
    let start = Instant::now();
    let key = format!("lockyard:{{{name}}}:lock");
    while server.command(&["EXISTS", &key]) != ":0" {
        assert!(
            start.elapsed() < limit,
            "{why}: {name} still held after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The hold's kept connection killed (data kept): the release still says
/// Ok and frees the name; a guard dropped after such a kill frees it in
/// bounded time. With a pool of 1 and of 4 (the kill also kills the pool's
/// other connections, which the pool does not know are dead yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_on_a_killed_kept_connection_frees_the_name() {
    let server = RedisServer::start();
    let kill = || server.command(&["CLIENT", "KILL", "TYPE", "normal"]);
    let mut failures = Vec::new();
    for pool in [1u32, 4] {
        let a = connect(&server, opts().pool_size(pool)).await;
        for kind in KINDS {
            let name = format!("kill-{pool}-{kind:?}");
            let g = bounded(take(&a, kind, &name)).await.unwrap();
            kill();
            if let Err(e) = bounded(g.release()).await {
                failures.push(format!("pool {pool} {kind:?}: release after kill: {e}"));
            }
            key_gone_within(&server, &name, Duration::from_secs(3), "released").await;
            // From Drop.
            let g = bounded(take(&a, kind, &name)).await.unwrap();
            kill();
            drop(g);
            key_gone_within(&server, &name, Duration::from_secs(3), "dropped").await;
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Acquisitions racing `shutdown()`: each ends in `Closed` or a guard; every
/// guard is lost within a short bound of the shutdown, and a guard whose
/// acquisition returned after `shutdown()` returned and after its lease
/// could have been drained reads lost at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquisitions_racing_shutdown_are_closed_or_lost() {
    let server = RedisServer::start();
    let mut held_late = 0;
    for round in 0..30u64 {
        let locks = connect(&server, opts()).await;
        bounded(locks.try_acquire("sd-warm"))
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        let shut = Arc::new(AtomicBool::new(false));
        let mut set = tokio::task::JoinSet::new();
        for t in 0..6usize {
            let (locks, shut) = (locks.clone(), shut.clone());
            set.spawn(async move {
                let kind = KINDS[t % 3];
                let name = format!("sd-{round}-{t}");
                let r = take(&locks, kind, &name).await;
                let after = shut.load(Ordering::SeqCst);
                let lost_at_once = r.as_ref().map(|g| g.is_lost()).unwrap_or(true);
                (r, after, lost_at_once)
            });
        }
        // Somewhere in the middle of the acquisitions.
        for _ in 0..(round % 5) {
            tokio::task::yield_now().await;
        }
        if round % 3 == 0 {
            tokio::time::sleep(Duration::from_micros(200 * (round % 7))).await;
        }
        bounded(locks.shutdown()).await;
        shut.store(true, Ordering::SeqCst);
        let mut guards = Vec::new();
        while let Some(r) = bounded(set.join_next()).await {
            let (r, after, lost_at_once) = r.unwrap();
            match r {
                Err(LockError::Closed { .. }) => {}
                Err(e) => panic!("round {round}: {e}"),
                Ok(g) => {
                    if after && !lost_at_once {
                        held_late += 1;
                    }
                    guards.push(g);
                }
            }
        }
        for g in &guards {
            tokio::time::timeout(Duration::from_millis(500), g.lost())
                .await
                .unwrap_or_else(|_| panic!("round {round}: a guard still held after shutdown"));
        }
        drop(guards);
    }
    eprintln!("guards returned after shutdown() that read held for a moment: {held_late}");
}

/// After a client shut down, an acquisition on it is refused, even one on a
/// name whose first attempt would be uncontended (the fast path checks too).
#[tokio::test]
async fn after_shutdown_the_fast_path_refuses() {
    let server = RedisServer::start();
    let locks = connect(&server, opts()).await;
    bounded(locks.try_acquire("x"))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    bounded(locks.shutdown()).await;
    for kind in KINDS {
        let e = bounded(take(&locks, kind, "x")).await.unwrap_err();
        assert!(matches!(e, LockError::Closed { .. }), "{kind:?}: {e}");
    }
    assert!(
        !bounded(
            RedisLocks::connect_lazy(&server.url(), opts())
                .unwrap()
                .is_locked("x")
        )
        .await
        .unwrap()
    );
}

/// The fork tests run one at a time: a child forked while the other test's
/// threads hold a lock would hang for that test's reason.
static FORKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn stored(server: &RedisServer, name: &str) -> String {
    server.command(&["GET", &format!("lockyard:{{{name}}}:lock")])
}

fn token_of(v: &str) -> String {
    v.lines().next().unwrap_or_default().to_owned()
}

/// A child acquires `name` (exclusive or shared), leaves it held, and exits
/// 0 if its owner record names it.
fn child_acquires(url: &str, name: &str, shared: bool) -> i32 {
    let rt = runtime();
    rt.block_on(async {
        let Ok(locks) = RedisLocks::connect_with(url, opts()).await else {
            return 2;
        };
        let g = if shared {
            let o = AcquireOptions::shared().timeout(Duration::from_secs(5));
            locks.acquire_with(name, &o).await
        } else {
            locks.acquire(name, Duration::from_secs(5)).await
        };
        let Ok(g) = g else {
            return 3;
        };
        let pid = if shared {
            match locks.rwlock(name).unwrap().owners().await {
                Ok(o) if o.len() == 1 => o[0].pid,
                _ => return 4,
            }
        } else {
            match locks.owner(name).await {
                Ok(Some(o)) => o.pid,
                _ => return 4,
            }
        };
        std::mem::forget(g);
        if pid == std::process::id() { 0 } else { 1 }
    })
}

/// Waits for a forked child, at most `limit` (SIGKILL and `None` if it hung).
fn wait_bounded(pid: libc::pid_t, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: our own child; valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                98
            });
        }
        if Instant::now() > deadline {
            // Where it hangs (FAST_PATH_GDB=1: gdb's backtrace; it showed
            // the child blocked in `process::owner`'s TEMPLATE.lock(), from
            // `token::push_record_at` <- `Thread::rebuild` <- `fresh_value`
            // <- `Resource::first_at_hand`), then kill it.
            if std::env::var_os("FAST_PATH_GDB").is_some()
                && let Ok(out) = std::process::Command::new("gdb")
                    .args(["-p", &pid.to_string(), "-batch", "-ex", "bt 25"])
                    .output()
            {
                let text = String::from_utf8_lossy(&out.stdout);
                let frames: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
                eprintln!("hung child {pid}:\n{}", frames.join("\n"));
            }
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = unsafe { libc::waitpid(pid, &mut status, 0) };
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Forked from a thread other than the one that made the parent's tokens
/// (and from that thread too), two children forked from the same state
/// each name themselves and draw tokens of their own (not the parent's, not
/// each other's), in both modes.
#[test]
fn forked_children_from_any_thread_have_their_own_tokens_and_names() {
    let _one = FORKS.lock().unwrap_or_else(|p| p.into_inner());
    let server = RedisServer::start();
    let url = server.url();
    let rt = runtime();
    let locks = rt.block_on(async {
        let locks = RedisLocks::connect_with(&url, opts()).await.unwrap();
        // Tokens made on this thread, in both modes.
        let g = locks
            .acquire("fp-parent", Duration::from_secs(5))
            .await
            .unwrap();
        g.release().await.unwrap();
        let o = AcquireOptions::shared().timeout(Duration::from_secs(5));
        let g = locks.acquire_with("fp-parent-r", &o).await.unwrap();
        std::mem::forget(g);
        locks
    });
    // The parent's reader, still held: its token is the parent's.
    let mut tokens = vec![token_of(&server.command(&[
        "ZRANGE",
        "lockyard:{fp-parent-r}:readers",
        "0",
        "-1",
    ]))];
    for (i, from_other) in [(0, true), (1, true), (2, false), (3, false)] {
        for shared in [false, true] {
            let name = format!("fp-child-{i}-{shared}");
            let fork = {
                let (url, name) = (url.clone(), name.clone());
                move || {
                    lockyard_testkit::fork::fork_child(move || child_acquires(&url, &name, shared))
                }
            };
            let pid = if from_other {
                std::thread::spawn(fork).join().unwrap()
            } else {
                fork()
            };
            let code = wait_bounded(pid, Duration::from_secs(10));
            assert_eq!(
                code,
                Some(0),
                "child {i} shared={shared} (from another thread: {from_other}); None: it hung (run alongside the other tests, the PREFIX deadlock below)"
            );
            let t = if shared {
                server.command(&["ZRANGE", &format!("lockyard:{{{name}}}:readers"), "0", "-1"])
            } else {
                stored(&server, &name)
            };
            tokens.push(token_of(&t));
        }
    }
    // The parent's next tokens, after the forks.
    rt.block_on(async {
        let g = locks
            .acquire("fp-after", Duration::from_secs(5))
            .await
            .unwrap();
        tokens.push(token_of(&stored(&server, "fp-after")));
        g.release().await.unwrap();
    });
    let mut uniq = tokens.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), tokens.len(), "a token drawn twice: {tokens:#?}");
    assert!(tokens.iter().all(|t| t.len() >= 16), "{tokens:#?}");
}

/// A forked child's first Redis acquisition rebuilds the owner record,
/// which takes process-wide mutexes (`process::owner`'s TEMPLATE, the
/// record's PREFIX). Another thread of the parent holding one of them at
/// the moment of the fork (here: a thread taking file locks, each of which
/// calls `process::owner`) leaves it locked forever in the child: the
/// child's acquisition must still finish.
#[test]
fn a_forked_child_acquires_while_another_parent_thread_takes_locks() {
    let _one = FORKS.lock().unwrap_or_else(|p| p.into_inner());
    let server = RedisServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let hammers: Vec<_> = (0..2)
        .map(|h| {
            let (stop, path) = (stop.clone(), dir.path().to_owned());
            std::thread::spawn(move || {
                let rt = runtime();
                rt.block_on(async {
                    let files = lockyard::FileLockManager::new(&path).unwrap();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let g = files.try_acquire(&format!("hammer-{h}")).await.unwrap();
                        drop(g);
                        n += 1;
                    }
                    n
                })
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let mut hung = 0;
    let mut bad = Vec::new();
    let start = Instant::now();
    let mut forks = 0;
    // Until the first hang (each fork has a chance of well under 1%).
    while hung == 0 && forks < 1500 && start.elapsed() < Duration::from_secs(12) {
        let name = format!("fh-{forks}");
        let pid = {
            let url = url.clone();
            lockyard_testkit::fork::fork_child(move || child_acquires(&url, &name, false))
        };
        match wait_bounded(pid, Duration::from_secs(2)) {
            None => hung += 1,
            Some(0) => {}
            Some(c) => bad.push(c),
        }
        forks += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let n: u64 = hammers.into_iter().map(|h| h.join().unwrap()).sum();
    eprintln!(
        "{forks} forks beside {n} file acquisitions: {hung} children hung, bad codes {bad:?}"
    );
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(
        hung, 0,
        "forked children deadlocked on a mutex held by another parent thread at fork time"
    );
}

/// A grant whose reply is read only after the lease's validity (the
/// runtime stalled meanwhile: a task blocked its thread) is too late and is
/// undone. A `try_acquire` of a name nobody else holds must then not say
/// `WouldBlock` because of its own undone grant: the general path's
/// `try_once` undoes a late grant (`undo_now().await`) before it tries
/// again; the fast path spawns the undo and tries again at once.
#[tokio::test]
async fn a_late_first_grant_does_not_make_a_free_name_busy() {
    let server = RedisServer::start();
    let ttl = Duration::from_millis(400);
    let a = connect(&server, RedisOptions::default().ttl(ttl)).await;
    let b = connect(&server, opts()).await;
    let mut outcomes = Vec::new();
    for kind in KINDS {
        let name = format!("late-{kind:?}");
        let warm = bounded(take(&a, kind, &name)).await.unwrap();
        let f0 = warm.fencing_token();
        warm.release().await.unwrap();
        let t = {
            let (a, name) = (a.clone(), name.clone());
            tokio::spawn(async move { take(&a, kind, &name).await })
        };
        let stall = tokio::spawn(async move {
            tokio::task::yield_now().await;
            // Blocks the (current-thread) runtime: the reply is read late.
            std::thread::sleep(ttl + Duration::from_millis(150));
        });
        bounded(stall).await.unwrap();
        let r = bounded(t).await.unwrap();
        let fence = r.as_ref().map(|g| g.fencing_token() - f0).unwrap_or(0);
        eprintln!("{kind:?}: fencing +{fence} (+2: a late grant was undone first)");
        outcomes.push(format!("{kind:?}: {:?}", r.as_ref().map(|g| g.is_lost())));
        if let Ok(g) = r {
            let _ = g.release().await;
        }
        free_within(&b, &name, Duration::from_secs(3), "late grant undone").await;
    }
    eprintln!("{outcomes:#?}");
    assert!(
        outcomes.iter().all(|o| o.ends_with("Ok(false)")),
        "an acquisition of a free name failed after its own late grant: {outcomes:#?}"
    );
}

/// As above with Redis alone: parent tasks on two worker threads take
/// exclusive and shared locks in turn, so each acquisition rebuilds its
/// thread's record template (`Thread::rebuild` -> `push_record_at`, which
/// holds the process-wide PREFIX mutex). A child forked while a parent
/// thread holds PREFIX blocks forever on it in its first acquisition
/// (token.rs `PREFIX.lock()`): it must not.
#[test]
fn a_forked_child_acquires_while_parent_threads_take_redis_locks() {
    let _one = FORKS.lock().unwrap_or_else(|p| p.into_inner());
    let server = RedisServer::start();
    let url = server.url();
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let locks = rt.block_on(RedisLocks::connect_with(&url, opts())).unwrap();
    let busy: Vec<_> = (0..4)
        .map(|t| {
            let (locks, stop) = (locks.clone(), stop.clone());
            rt.spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let kind = if n.is_multiple_of(2) {
                        Kind::Try
                    } else {
                        Kind::Shared
                    };
                    if let Ok(g) = take(&locks, kind, &format!("rb-{t}")).await {
                        let _ = g.release().await;
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let (mut hung, mut forks, mut bad) = (0, 0, Vec::new());
    let start = Instant::now();
    while hung == 0 && forks < 1500 && start.elapsed() < Duration::from_secs(12) {
        let name = format!("rbc-{forks}");
        let pid = {
            let url = url.clone();
            lockyard_testkit::fork::fork_child(move || child_acquires(&url, &name, false))
        };
        match wait_bounded(pid, Duration::from_secs(2)) {
            None => hung += 1,
            Some(0) => {}
            Some(c) => bad.push(c),
        }
        forks += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let n: u64 = rt.block_on(async {
        let mut n = 0;
        for h in busy {
            n += bounded(h).await.unwrap();
        }
        n
    });
    eprintln!(
        "{forks} forks beside {n} Redis acquisitions: {hung} children hung, bad codes {bad:?}"
    );
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(
        hung, 0,
        "a forked child deadlocked on the owner record's PREFIX mutex"
    );
}
