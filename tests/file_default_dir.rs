//! `FileLockManager::default_dir()` ignores the session's environment.
//!
//! Alone in its binary: it sets `TMPDIR` and `XDG_RUNTIME_DIR` for the
//! whole process, and any test running beside it that makes a temporary
//! directory would make it under `/nonexistent` (seen in CI when it lived in
//! `tests/file_basic.rs`).

use std::time::Duration;

use lockyard::FileLockManager;

#[cfg(unix)]
#[tokio::test]
async fn default_dir_is_one_per_user_whatever_the_session_environment() {
    let before = FileLockManager::default_dir();
    // SAFETY: the only test of this binary: nothing else reads the
    // environment meanwhile (in tests/file_basic.rs, beside tests making
    // temporary directories, it made one of them fail with TMPDIR set).
    unsafe {
        std::env::set_var("XDG_RUNTIME_DIR", "/nonexistent/run/user/1000");
        std::env::set_var("TMPDIR", "/nonexistent/tmp");
    }
    let with_session = FileLockManager::default_dir();
    // SAFETY: as above.
    unsafe {
        std::env::remove_var("XDG_RUNTIME_DIR");
        std::env::remove_var("TMPDIR");
    }
    let without = FileLockManager::default_dir();
    assert_eq!(before, with_session);
    assert_eq!(before, without);
    let uid = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    if let Ok(uid) = uid {
        assert!(before.ends_with(format!("lockyard-{uid}")), "{before:?}");
    }
    // It is usable: created private, and it locks.
    let m = FileLockManager::new(&before).unwrap();
    let name = format!("default-dir-test-{}", std::process::id());
    drop(m.acquire(&name, Duration::from_secs(5)).await.unwrap());
    std::fs::remove_file(m.path_for(&name).unwrap()).unwrap();
}
