//! Files and directories planted by others: hard links, foreign content,
//! and a lock directory replaced after the manager checked it.

use std::time::Duration;

use lockyard::{FileLockManager, LockError};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn hard_linked_lock_file_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let m = FileLockManager::new(dir.path().join("locks")).unwrap();
    let victim = dir.path().join("victim");
    let content = vec![b'v'; 8893];
    std::fs::write(&victim, &content).unwrap();
    std::fs::hard_link(&victim, m.path_for("job").unwrap()).unwrap();
    let err = m.acquire("job", T).await.unwrap_err();
    assert!(matches!(err, LockError::UnsafePath { .. }), "{err:?}");
    assert!(m.try_acquire("job").await.is_err());
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        content,
        "target overwritten"
    );
}

#[tokio::test]
async fn a_record_is_written_only_into_an_empty_file_or_over_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let m = FileLockManager::new(dir.path()).unwrap();
    let path = m.path_for("data").unwrap();
    let content = b"somebody's data, not a lockyard record\n".repeat(50);
    std::fs::write(&path, &content).unwrap();
    let g = m.acquire("data", T).await.unwrap();
    drop(g);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        content,
        "foreign file overwritten"
    );

    // Empty: a record is written.
    let g = m.acquire("fresh", T).await.unwrap();
    let owner = m.owner("fresh").await.unwrap().expect("record written");
    assert_eq!(owner.pid, std::process::id());
    drop(g);
}

#[tokio::test]
async fn a_lock_directory_replaced_by_a_symlink_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    let m = FileLockManager::new(&locks).unwrap();
    drop(m.acquire("warm", T).await.unwrap());
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::rename(&locks, dir.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &locks).unwrap();

    let g = m.acquire("job", T).await.unwrap();
    assert!(
        !elsewhere.join("job.lock").exists(),
        "the manager created a lock file through the swapped-in symlink"
    );
    assert!(dir.path().join("moved/job.lock").exists());
    drop(g);
    // Listing and cleanup look at the directory that was checked, too.
    let names: Vec<String> = m
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["job", "warm"]);
    std::fs::write(elsewhere.join("bait.lock"), "x").unwrap();
    m.cleanup_stale_locks(Some(Duration::ZERO)).await.unwrap();
    assert!(
        elsewhere.join("bait.lock").exists(),
        "cleanup followed the symlink"
    );
}
