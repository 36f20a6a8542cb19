//! Cached descriptors are capped for the whole process, however many
//! handles exist.

use std::time::Duration;

use lockyard::FileLockManager;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "current_thread")]
async fn handles_do_not_pin_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let m = FileLockManager::new(dir.path()).unwrap();
    let handles: Vec<_> = (0..400)
        .map(|i| m.lock(&format!("tenant-{i}")).unwrap())
        .collect();
    let before = open_fds();
    for h in &handles {
        let g = h
            .acquire(&lockyard::AcquireOptions::exclusive().timeout(Duration::from_secs(5)))
            .await
            .unwrap();
        drop(g);
    }
    let after = open_fds();
    println!("open descriptors: {before} before, {after} after 400 handles were used");
    // The process-wide cap is 64 kept descriptors (plus what the runtime
    // may open meanwhile).
    assert!(
        after <= before + 70,
        "descriptors grew from {before} to {after} with the number of handles"
    );
}
