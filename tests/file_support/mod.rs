//! The file-lock tests' child roles, on the test kit's child harness.
//!
//! A test binary re-executes itself (`lockyard_testkit::child::spawn`),
//! running only its `child_process_entry` test in a role; that entry
//! calls [`child_main`], which performs the role and exits the process.
//! Roles talk to the parent through stdout lines (`HELD`, `RELEASED`, …) and
//! take orders from stdin (a line, or EOF, means "release and exit").
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::{Duration, Instant};

use lockyard::{AcquireOptions, FileLockManager, Mode};
pub use lockyard_testkit::child::Child;
use lockyard_testkit::child::{self, say};

/// The test every file-test binary runs as a child.
const ENTRY: &str = "child_process_entry";

/// The pid of a process that has just exited (reused only after the pid
/// space wraps): an owner record naming it is a dead owner's.
pub fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// Starts a child running `role` with `envs`, in the test binary's
/// `child_process_entry` (the kit's harness).
pub fn spawn(role: &str, envs: &[(&str, String)]) -> Child {
    child::spawn(ENTRY, role, envs)
}

/// As [`spawn`], as the user `uid` (the caller must be root).
pub fn spawn_as(uid: u32, role: &str, envs: &[(&str, String)]) -> Child {
    child::spawn_as(uid, ENTRY, role, envs)
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("child needs {key}"))
}

fn env_num(key: &str) -> usize {
    env(key).parse().unwrap()
}

/// The body of a child process; returns at once in the parent.
pub fn child_main() {
    let Some(role) = child::role() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match role.as_str() {
            "hold" => hold().await,
            "count" => count().await,
            "rw" => rw().await,
            "flap" => flap().await,
            "signal" => signal().await,
            "exact" => exact().await,
            other => panic!("unknown role {other}"),
        }
    });
    std::process::exit(0);
}

fn manager() -> FileLockManager {
    FileLockManager::new(env("DIR")).unwrap()
}

/// Holds `NAME` in `MODE` until told to release.
async fn hold() {
    let m = manager();
    let mode: Mode = env("MODE").parse().unwrap();
    let g = m
        .acquire_with(
            &env("NAME"),
            &AcquireOptions::new()
                .mode(mode)
                .timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    say("HELD");
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await;
    g.release().await.unwrap();
    say("RELEASED");
}

/// `TASKS` tasks × `ITERS` increments of the number in `COUNTER`, under the
/// exclusive lock; a `COUNTER.busy` marker catches overlaps. With `CLEANUP`
/// set, one more task keeps removing the (free) lock file meanwhile.
async fn count() {
    let m = manager();
    let (tasks, iters) = (env_num("TASKS"), env_num("ITERS"));
    let counter = env("COUNTER");
    let name = env("NAME");
    let cleaning = std::env::var("CLEANUP").is_ok();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cleaner = cleaning.then(|| {
        let (m, done) = (m.clone(), done.clone());
        tokio::spawn(async move {
            let mut removed = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                removed += m.cleanup_stale_locks(Some(Duration::ZERO)).await.unwrap();
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
            removed + m.cleanup_stale_locks(Some(Duration::ZERO)).await.unwrap()
        })
    });
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (m, counter, name) = (m.clone(), counter.clone(), name.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..iters {
                let g = m.acquire(&name, Duration::from_secs(240)).await.unwrap();
                increment(Path::new(&counter));
                drop(g);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    if let Some(c) = cleaner {
        say(&format!("REMOVED {}", c.await.unwrap()));
    }
    say("DONE");
}

fn increment(counter: &Path) {
    let busy = counter.with_extension("busy");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&busy)
        .unwrap_or_else(|e| panic!("overlap: {} exists ({e})", busy.display()));
    let n: u64 = std::fs::read_to_string(counter)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    std::thread::yield_now();
    std::fs::write(counter, format!("{}\n", n + 1)).unwrap();
    std::fs::remove_file(&busy).unwrap();
}

/// Readers (shared) and one writer (exclusive) per process over `STATE`: a
/// writer marks the state `busy` while it works; a reader must never see it.
async fn rw() {
    let m = manager();
    let (iters, state, name) = (env_num("ITERS"), env("STATE"), env("NAME"));
    let mut handles = Vec::new();
    for i in 0..3 {
        let (m, state, name) = (m.clone(), state.clone(), name.clone());
        handles.push(tokio::spawn(async move {
            let mut reads = 0usize;
            for _ in 0..iters {
                if i == 0 {
                    let _g = m.acquire(&name, Duration::from_secs(60)).await.unwrap();
                    let n: u64 = std::fs::read_to_string(&state)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(0);
                    std::fs::write(&state, "busy").unwrap();
                    tokio::time::sleep(Duration::from_micros(300)).await;
                    std::fs::write(&state, format!("{}", n + 1)).unwrap();
                } else {
                    let _g = m
                        .acquire_shared(&name, Duration::from_secs(60))
                        .await
                        .unwrap();
                    let s = std::fs::read_to_string(&state).unwrap_or_default();
                    assert_ne!(s, "busy", "a reader saw a writer at work");
                    tokio::time::sleep(Duration::from_micros(300)).await;
                    let again = std::fs::read_to_string(&state).unwrap_or_default();
                    assert_eq!(s, again, "the state changed under a shared lock");
                    reads += 1;
                }
            }
            reads
        }));
    }
    let mut reads = 0;
    for h in handles {
        reads += h.await.unwrap();
    }
    say(&format!("READS {reads}"));
    say("DONE");
}

/// Takes and releases `NAME` exclusively in a loop until told to stop.
async fn flap() {
    let m = manager();
    let name = env("NAME");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        s.store(true, std::sync::atomic::Ordering::Release);
    });
    say("HELD");
    let mut rounds = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let g = m.acquire(&name, Duration::from_secs(30)).await.unwrap();
        tokio::time::sleep(Duration::from_micros(700)).await;
        drop(g);
        tokio::time::sleep(Duration::from_micros(500)).await;
        rounds += 1;
    }
    say(&format!("RELEASED {rounds}"));
}

/// As another user: locks the exact file `PATH_TO_LOCK` (in a standard,
/// root-owned lock directory) and uses the default directory.
async fn exact() {
    let path = env("PATH_TO_LOCK");
    let lock = lockyard::FileLock::at_path(&path, lockyard::FileLockOptions::default())
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let g = lock.try_acquire(Mode::Exclusive).await.unwrap();
    say("LOCKED");
    drop(g);
    let _ = std::fs::remove_file(&path);
    let dir = FileLockManager::default_dir();
    let m = FileLockManager::new(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    drop(m.try_acquire("default-dir-check").await.unwrap());
    say("DEFAULT OK");
    // Root's, writable by everyone and not sticky: anyone could swap lock
    // files in it.
    let err = FileLockManager::new(env("OPEN_DIR")).unwrap_err();
    assert!(
        matches!(err, lockyard::LockError::UnsafePath { .. }),
        "{err}"
    );
    say("OPEN DIR REFUSED");
}

static HANDLER_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn count_calls(_: libc::c_int) {
    HANDLER_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Waits once for `NAME` (held by the parent's holder) so that lockyard sets
/// up its interrupt signal, then changes that signal as `HOW` says
/// (`default`: back to the default action; `restart`: a counting handler
/// with `SA_RESTART`), abandons another wait, and finally waits until the
/// holder lets go. Prints `WAITED`, `ACQUIRED`, `HANDLER <calls>`.
async fn signal() {
    let m = manager();
    let name = env("NAME");
    let err = m
        .acquire(&name, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // The application changes the signal *later*, not while lockyard's
    // signal to the abandoned waiter may still be in flight (a signal sent
    // before the change is delivered with whatever action is set then).
    no_kernel_waiters(&m).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sig = libc::SIGRTMAX() - 3;
    // SAFETY: sigaction with a valid signal number and initialised structs;
    // the counting handler only touches an atomic (async-signal-safe).
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        match env("HOW").as_str() {
            "default" => act.sa_sigaction = libc::SIG_DFL,
            "restart" => {
                act.sa_sigaction = count_calls as extern "C" fn(libc::c_int) as libc::sighandler_t;
                act.sa_flags = libc::SA_RESTART;
            }
            other => panic!("unknown HOW {other}"),
        }
        libc::sigemptyset(&mut act.sa_mask);
        assert_eq!(libc::sigaction(sig, &act, std::ptr::null_mut()), 0);
    }
    let start = Instant::now();
    let err = m
        .acquire(&name, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    say(&format!("WAITED {:?}", start.elapsed()));
    let g = m.acquire(&name, Duration::from_secs(30)).await.unwrap();
    say("ACQUIRED");
    drop(g);
    say(&format!(
        "HANDLER {}",
        HANDLER_CALLS.load(std::sync::atomic::Ordering::Relaxed)
    ));
}

/// Waits (bounded, for a loaded machine) until exactly `n` threads of `m`
/// wait in the kernel.
async fn kernel_waiters_reach(m: &FileLockManager, n: usize, limit: Duration) {
    let start = Instant::now();
    while m.kernel_waiter_threads() != n {
        assert!(
            start.elapsed() < limit,
            "{} kernel waiter threads, want {n}",
            m.kernel_waiter_threads()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (bounded) until no thread of `m` waits in the kernel: nothing was
/// left behind.
pub async fn no_kernel_waiters(m: &FileLockManager) {
    kernel_waiters_reach(m, 0, Duration::from_secs(5)).await;
}

/// Waits (bounded) until the one waiter thread of `m` blocks in the kernel.
pub async fn one_kernel_waiter(m: &FileLockManager) {
    kernel_waiters_reach(m, 1, Duration::from_secs(10)).await;
}
