//! A short tour of `FileLockManager`: exclusive and shared locks, trying,
//! timeouts, who holds what, and cleanup.
//!
//! Run: `cargo run --example quickstart`

use std::time::Duration;

use lockyard::{FileLockManager, LockError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), LockError> {
    let dir = tempfile::tempdir().expect("temp dir");
    // One directory of lock files; created 0700 if missing.
    let locks = FileLockManager::new(dir.path().join("locks"))?;

    // Exclusive: one holder at a time, across tasks *and* processes.
    let guard = locks
        .acquire("nightly-report", Duration::from_secs(5))
        .await?;
    println!("holding {} ({})", guard.name(), guard.path().display());

    // A second attempt sees who holds it.
    match locks.try_acquire("nightly-report").await {
        Err(e) if e.is_would_block() => println!("try_acquire: {e}"),
        other => panic!("expected WouldBlock, got {other:?}"),
    }
    // Waiting is bounded by the timeout.
    let err = locks
        .acquire("nightly-report", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    println!("acquire with 200ms timeout: {err}");

    // Releasing reports errors; dropping the guard also releases.
    guard.release().await?;

    // Shared: readers coexist, writers wait for them.
    let r1 = locks
        .acquire_shared("index", Duration::from_secs(5))
        .await?;
    let r2 = locks.try_acquire_shared("index").await?;
    assert!(
        locks
            .try_acquire("index")
            .await
            .unwrap_err()
            .is_would_block()
    );
    println!("two shared holders of `index`");

    // Any string is a name; odd ones map to safe file names.
    let odd = locks
        .acquire("models/llama 7B", Duration::from_secs(5))
        .await?;

    // What `lockyard status` shows.
    for info in locks.list().await? {
        println!(
            "{:<16} held={:<5} mode={:<9} owner={}",
            info.name,
            info.held,
            info.mode.map(|m| m.as_str()).unwrap_or("-"),
            info.owner
                .map(|o| o.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    drop((r1, r2, odd));

    // Stale files: free locks whose owner is gone (none here: we are alive),
    // or older than max_age.
    let removed = locks.cleanup_stale_locks(Some(Duration::ZERO)).await?;
    println!("cleanup removed {removed} lock files");
    Ok(())
}
