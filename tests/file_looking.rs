//! Looking never touches: `is_locked`, `list` and `stale_locks` never make a
//! real acquirer fail, and cleanup keeps what it cannot prove is ours.

mod file_support;

use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use file_support::dead_pid;
use lockyard::{FileLockManager, Mode, Owner};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looking_never_makes_an_acquirer_fail() {
    let dir = tempfile::tempdir().unwrap();
    let acquirer = FileLockManager::new(dir.path()).unwrap();
    let looker = FileLockManager::new(dir.path()).unwrap();
    // A dead owner's record: stale, so stale_locks looks closely at it.
    let mut dead = Owner::current(Mode::Exclusive);
    dead.pid = dead_pid();
    std::fs::write(
        acquirer.path_for("x").unwrap(),
        format!("{}name=x\nend\n", dead.to_text()),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let looks = Arc::new(AtomicU64::new(0));
    let looking = {
        let (stop, looks) = (stop.clone(), looks.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                looker.is_locked("x").await.unwrap();
                looker.list().await.unwrap();
                looker.stale_locks(None).await.unwrap();
                looks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Try while the looker makes 300 rounds of looks (bounded in time).
    let (mut refused, mut attempts) = (0, 0);
    let start = Instant::now();
    while looks.load(Ordering::Relaxed) < 300 && start.elapsed() < Duration::from_secs(20) {
        attempts += 1;
        match acquirer.try_acquire("x").await {
            Ok(g) => drop(g),
            Err(e) if e.is_would_block() => refused += 1,
            Err(e) => panic!("{e}"),
        }
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Release);
    tokio::time::timeout(Duration::from_secs(20), looking)
        .await
        .unwrap()
        .unwrap();
    let looks = looks.load(Ordering::Relaxed);
    println!("{refused} of {attempts} attempts refused during {looks} looks");
    assert_eq!(refused, 0, "looking made try_acquire fail");
}

#[tokio::test]
async fn cleanup_keeps_files_without_a_lockyard_record() {
    let dir = tempfile::tempdir().unwrap();
    let m = FileLockManager::new(dir.path()).unwrap();
    // A dpkg-style lock: another tool's content, held with an fcntl record
    // lock (invisible to flock) by this very process.
    let dpkg = m.path_for("dpkg").unwrap();
    std::fs::write(&dpkg, b"").unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dpkg)
        .unwrap();
    // SAFETY: fcntl on a descriptor we own with an initialised flock struct.
    unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        assert_eq!(libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl), 0);
    }
    // Another tool's file, not held at all.
    let foreign = m.path_for("foreign").unwrap();
    std::fs::write(&foreign, b"pid 12\n").unwrap();

    m.cleanup_stale_locks(Some(Duration::ZERO)).await.unwrap();
    assert!(
        dpkg.exists(),
        "cleanup removed a file held with an fcntl lock"
    );
    assert!(
        foreign.exists(),
        "cleanup removed a file another tool wrote"
    );
    drop(f);
}

/// `/proc/locks` is produced a record or a page at a time (std's
/// `read_to_string` starts with a 32-byte read), and between two reads the
/// kernel's list may change: a lock released before the reader's position
/// shifts the rest, and one line is never shown. A held lock must still be
/// seen held by `is_locked` and `list` while other locks come and go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_is_seen_held_while_other_locks_come_and_go() {
    seen_held_under_churn(0, 8, 2000).await;
}

/// The same with a table of several pages, whose reads cannot be one pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_is_seen_held_in_a_long_table_under_churn() {
    seen_held_under_churn(100, 64, 300).await;
}

/// Holds "x", then `still` more locks and `churned` that come and go: all
/// newer, so before it in the kernel's list; looks `looks` times.
async fn seen_held_under_churn(still: usize, churned: usize, looks: usize) {
    let dir = tempfile::tempdir().unwrap();
    let m = FileLockManager::new(dir.path().join("locks")).unwrap();
    let _held = m.acquire("x", Duration::from_secs(10)).await.unwrap();
    let file = |i| std::fs::File::create(dir.path().join(format!("other-{i}"))).unwrap();
    let still: Vec<std::fs::File> = (0..still).map(file).collect();
    for f in &still {
        f.lock().unwrap();
    }
    let others: Vec<std::fs::File> = (still.len()..still.len() + churned).map(file).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                for f in &others {
                    f.lock().unwrap();
                }
                for f in &others {
                    f.unlock().unwrap();
                }
            }
        })
    };
    let (mut missed, mut looked) = (0, 0);
    let start = Instant::now();
    while looked < looks && start.elapsed() < Duration::from_secs(20) {
        looked += 1;
        if !m.is_locked("x").await.unwrap() {
            missed += 1;
        }
        if !m
            .list()
            .await
            .unwrap()
            .iter()
            .any(|i| i.name == "x" && i.held)
        {
            missed += 1;
        }
    }
    stop.store(true, Ordering::Release);
    churn.join().unwrap();
    assert_eq!(
        missed, 0,
        "a held lock was seen free {missed} times in {looked} looks"
    );
}
