//! A lock does not cross `fork()`: a forked child can neither take a lock
//! its parent holds through the descriptors the parent keeps open, nor
//! release the parent's lock by dropping its copy of a guard.

use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use lockyard::FileLockManager;
use lockyard_testkit::fork::{fork_child, in_forked_child, wait_child};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Whether a descriptor of our own (a separate open file description) can
/// take the lock file exclusively right now.
fn free_for_others(path: &std::path::Path) -> bool {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .unwrap();
    f.try_lock().is_ok()
}

/// The child's `try_acquire` result: 0 refused as held, 1 acquired, 2 error.
fn child_try(m: &FileLockManager, name: &str) -> i32 {
    let rt = runtime();
    match rt.block_on(m.try_acquire(name)) {
        Ok(_) => 1,
        Err(e) if e.is_would_block() => 0,
        Err(e) => {
            eprintln!("child: {e}");
            2
        }
    }
}

#[test]
fn forked_child_cannot_take_the_parents_lock_through_a_cached_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let m = FileLockManager::new(dir.path()).unwrap();
    let rt = runtime();
    // First use: the descriptor stays open (unlocked) after the release.
    rt.block_on(async { drop(m.try_acquire("job").await.unwrap()) });
    let child = fork_child(|| {
        // The parent takes the lock meanwhile.
        std::thread::sleep(Duration::from_millis(300));
        child_try(&m, "job")
    });
    let guard = rt.block_on(m.try_acquire("job")).unwrap();
    assert_eq!(
        wait_child(child),
        0,
        "the forked child acquired the lock its parent holds"
    );
    drop(guard);
}

#[test]
fn guard_dropped_in_a_forked_child_does_not_unlock_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let m = FileLockManager::new(dir.path()).unwrap();
    let rt = runtime();
    let guard = rt.block_on(m.try_acquire("job")).unwrap();
    let path = guard.path().to_owned();
    assert!(!free_for_others(&path));
    let copy = &guard as *const lockyard::FileLockGuard as usize;
    let code = in_forked_child(move || {
        // SAFETY: in the child, the parent's guard lives at the same address
        // in our copy of its memory; the parent's own guard is untouched.
        // Reading it out and dropping it is what a child does when it
        // unwinds out of the scope that held the guard.
        drop(unsafe { std::ptr::read(copy as *const lockyard::FileLockGuard) });
        0
    });
    assert_eq!(code, 0);
    // The child's drop must not have released the parent's lock.
    assert!(
        !free_for_others(&path),
        "a guard dropped in the child unlocked the parent's lock"
    );
    // The parent still holds it: in-process and kernel alike.
    assert!(
        rt.block_on(m.try_acquire("job"))
            .unwrap_err()
            .is_would_block()
    );
    drop(guard);
    assert!(free_for_others(&path));
}

#[test]
fn forked_child_can_use_its_own_locks() {
    let dir = tempfile::tempdir().unwrap();
    let m = FileLockManager::new(dir.path()).unwrap();
    let rt = runtime();
    rt.block_on(async { drop(m.try_acquire("a").await.unwrap()) });
    let code = in_forked_child(|| {
        let rt = runtime();
        rt.block_on(async {
            // A name the parent does not hold: the child takes and frees it.
            let g = m.acquire("a", Duration::from_secs(5)).await.unwrap();
            drop(g);
            i32::from(m.is_locked("a").await.unwrap())
        })
    });
    assert_eq!(code, 0);
}

#[test]
fn forked_child_waits_in_the_kernel_with_its_own_threads() {
    let dir = tempfile::tempdir().unwrap();
    let m = FileLockManager::new(dir.path()).unwrap();
    let rt = runtime();
    // The parent has used the waiter pool and the interrupter, so the child
    // inherits their state, but not their threads.
    let guard = rt.block_on(m.try_acquire("b")).unwrap();
    {
        let other = FileLockManager::new(dir.path()).unwrap();
        let err = rt
            .block_on(other.acquire("b", Duration::from_millis(100)))
            .unwrap_err();
        assert!(err.is_timeout());
        // Leave a parked pool thread behind (it lives for two seconds).
        std::thread::sleep(Duration::from_millis(50));
    }
    let child = fork_child(|| {
        let rt = runtime();
        let start = Instant::now();
        // Timed out while the parent holds it; then handed over once the
        // parent lets go, by a waiter thread of the child's own.
        let early = rt.block_on(m.acquire("b", Duration::from_millis(100)));
        if !matches!(&early, Err(e) if e.is_timeout()) {
            eprintln!("child: {early:?}");
            return 1;
        }
        match rt.block_on(m.acquire("b", Duration::from_secs(10))) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("child: {e} after {:?}", start.elapsed());
                2
            }
        }
    });
    std::thread::sleep(Duration::from_millis(400));
    drop(guard);
    assert_eq!(wait_child(child), 0);
}

/// A forked child's owner record names the child — its pid and its own
/// start time — so that a lock the child holds reads as held by a live
/// process, not by a dead one (a pid running with another start time is a
/// reused pid). The parent records first, and the child starts more than
/// the one second of rounding `liveness` allows after the parent did.
#[test]
fn forked_childs_record_names_it_alive() {
    let dir = tempfile::tempdir().unwrap();
    let m = FileLockManager::new(dir.path()).unwrap();
    let t = Duration::from_secs(10);
    drop(runtime().block_on(m.acquire("parent", t)).unwrap());
    std::thread::sleep(Duration::from_millis(2500));
    let code = in_forked_child(|| {
        let rt = runtime();
        rt.block_on(async {
            let g = m.acquire("child", t).await.unwrap();
            let recorded = m.owner("child").await.unwrap().expect("a record");
            if &recorded != g.owner() {
                return 2;
            }
            if recorded.liveness() != lockyard::Liveness::Alive {
                eprintln!("child: its own record reads {:?}", recorded.liveness());
                return 1;
            }
            0
        })
    });
    assert_eq!(code, 0, "the child's record does not name a live process");
}
