//! Stale-lock cleanup: held locks are never removed; dead owners, reused
//! pids, unreadable records and (with `max_age`) old records are.

mod file_support;

use std::time::{Duration, SystemTime};

use file_support::{child_main, dead_pid, spawn};
use lockyard::{FileLockManager, Mode, Owner};

const T: Duration = Duration::from_secs(30);

#[test]
fn child_process_entry() {
    child_main();
}

fn write_record(m: &FileLockManager, name: &str, owner: &Owner) {
    let text = format!("{}name={name}\nend\n", owner.to_text());
    std::fs::write(m.path_for(name).unwrap(), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_rules() {
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    let m = FileLockManager::new(&locks).unwrap();

    // Held by this process and by another one: never stale.
    let held_here = m.acquire("held-here", T).await.unwrap();
    let mut other = spawn(
        "hold",
        &[
            ("DIR", locks.display().to_string()),
            ("NAME", "held-there".to_owned()),
            ("MODE", "shared".to_owned()),
        ],
    );
    other.wait_line("HELD", T);
    // Make the held ones look ancient and dead: still never removed.
    let mut ancient = Owner::current(Mode::Exclusive);
    ancient.pid = dead_pid();
    ancient.since = SystemTime::now() - Duration::from_secs(86_400);
    write_record(&m, "held-here", &ancient);

    let mut dead = Owner::current(Mode::Exclusive);
    dead.pid = dead_pid();
    write_record(&m, "dead-owner", &dead);

    let mut reused = Owner::current(Mode::Exclusive);
    reused.start_time = reused.start_time.map(|s| s - 1000);
    write_record(&m, "reused-pid", &reused);

    let alive = Owner::current(Mode::Shared);
    write_record(&m, "alive-free", &alive);

    let mut old = Owner::current(Mode::Exclusive);
    old.since = SystemTime::now() - Duration::from_secs(3600);
    write_record(&m, "old-alive", &old);

    let mut foreign = Owner::current(Mode::Exclusive);
    foreign.host = "some-other-host".into();
    foreign.since = SystemTime::now() - Duration::from_secs(3600);
    write_record(&m, "other-host", &foreign);

    std::fs::write(m.path_for("garbage").unwrap(), "not a record").unwrap();

    let names = |v: Vec<lockyard::FileLockInfo>| {
        let mut n: Vec<String> = v.into_iter().map(|i| i.name).collect();
        n.sort();
        n
    };

    // Dry run: provably dead only (another tool's file is kept); nothing
    // removed.
    let stale = names(m.stale_locks(None).await.unwrap());
    assert_eq!(stale, ["dead-owner", "reused-pid"]);
    assert_eq!(
        names(m.stale_locks(None).await.unwrap()),
        stale,
        "dry run removed files"
    );
    // With max_age, old records too (whatever the host), never held ones.
    let stale = names(m.stale_locks(Some(Duration::from_secs(600))).await.unwrap());
    assert_eq!(
        stale,
        ["dead-owner", "old-alive", "other-host", "reused-pid"]
    );

    assert_eq!(m.cleanup_stale_locks(None).await.unwrap(), 2);
    for gone in ["dead-owner", "reused-pid"] {
        assert!(!m.path_for(gone).unwrap().exists(), "{gone} kept");
    }
    assert_eq!(
        m.cleanup_stale_locks(Some(Duration::from_secs(600)))
            .await
            .unwrap(),
        2
    );
    let left = names(m.list().await.unwrap());
    assert_eq!(left, ["alive-free", "garbage", "held-here", "held-there"]);

    // Even max_age zero removes only free locks, and only recorded ones.
    assert_eq!(
        m.cleanup_stale_locks(Some(Duration::ZERO)).await.unwrap(),
        1
    );
    assert_eq!(
        names(m.list().await.unwrap()),
        ["garbage", "held-here", "held-there"]
    );
    // Asked for, files without a record go too.
    let removed = m
        .cleanup_with(&lockyard::CleanupOptions::default().remove_unrecorded(true))
        .await
        .unwrap();
    assert_eq!(names(removed), ["garbage"]);
    let left = m.list().await.unwrap();
    assert_eq!(names(left.clone()), ["held-here", "held-there"]);
    assert!(left.iter().all(|i| i.held));
    assert_eq!(left[1].mode, Some(Mode::Shared));
    // The kernel names the real holders; the ancient record written over
    // held-here names a dead pid, not a holder, so it is not shown as one.
    assert_eq!(left[0].holder_pids, [std::process::id()]);
    assert!(left[0].owner.is_none(), "{:?}", left[0].owner);
    assert_eq!(left[1].holder_pids, [other.pid()]);

    drop(held_here);
    other.release();
    other.wait_line("RELEASED", T);
    other.wait_success(T);
    // The other process exited: its record names a dead pid now.
    let stale = names(m.stale_locks(None).await.unwrap());
    assert_eq!(stale, ["held-here", "held-there"]);
    assert_eq!(m.cleanup_stale_locks(None).await.unwrap(), 2);
    assert!(m.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_cleaned_name_can_be_locked_again() {
    let dir = tempfile::tempdir().unwrap();
    let m = FileLockManager::new(dir.path()).unwrap();
    drop(m.acquire("x", T).await.unwrap());
    assert_eq!(
        m.cleanup_stale_locks(Some(Duration::ZERO)).await.unwrap(),
        1
    );
    // The manager still has the removed file's descriptor open; the identity
    // check makes it take the new file.
    let g = m.acquire("x", T).await.unwrap();
    assert!(m.path_for("x").unwrap().exists());
    let other = FileLockManager::new(dir.path()).unwrap();
    assert!(other.try_acquire("x").await.unwrap_err().is_would_block());
    drop(g);
}
