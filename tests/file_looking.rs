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
