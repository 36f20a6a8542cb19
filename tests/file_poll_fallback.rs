//! The fallback where a blocked `flock` cannot be interrupted (no signal
//! available, or `WaitStrategy::Poll`): waiter threads poll with `LOCK_NB`
//! instead. Chosen here through the public option, so it runs on Linux too.

mod file_support;

use std::time::{Duration, Instant};

use file_support::{Child, child_main, no_kernel_waiters, one_kernel_waiter, spawn};
use lockyard::{FileLockManager, FileLockOptions, Mode, WaitStrategy};

const T: Duration = Duration::from_secs(30);

#[test]
fn child_process_entry() {
    child_main();
}

fn setup() -> (tempfile::TempDir, FileLockManager, Child) {
    let d = tempfile::tempdir().unwrap();
    let locks = d.path().join("locks");
    let m = FileLockManager::with_options(
        &locks,
        FileLockOptions::default().wait_strategy(WaitStrategy::Poll),
    )
    .unwrap();
    let mut c = spawn(
        "hold",
        &[
            ("DIR", locks.display().to_string()),
            ("NAME", "p".to_owned()),
            ("MODE", Mode::Exclusive.to_string()),
        ],
    );
    c.wait_line("HELD", T);
    (d, m, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_waits_time_out_cancel_and_hand_over() {
    let (_d, m, mut child) = setup();

    // Timeout, and the polling thread stops once nobody waits.
    let start = Instant::now();
    let err = m
        .acquire("p", Duration::from_millis(500))
        .await
        .unwrap_err();
    let took = start.elapsed();
    println!("polling: 0.5 s timeout returned after {took:?}");
    assert!(err.is_timeout());
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(1500));
    no_kernel_waiters(&m).await;

    // Cancelled waits leave nothing behind.
    for i in 0..200u64 {
        let _ =
            tokio::time::timeout(Duration::from_micros(100 * (i % 20)), m.acquire("p", T)).await;
    }
    no_kernel_waiters(&m).await;

    // A waiter gets the lock once the holder lets go.
    let waiter = {
        let m = m.clone();
        tokio::spawn(async move { m.acquire("p", T).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The waiter is blocked in the kernel.
    one_kernel_waiter(&m).await;
    child.release();
    let g = tokio::time::timeout(T, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(g.owner().pid, std::process::id());
    drop(g);
    no_kernel_waiters(&m).await;
    drop(m.try_acquire("p").await.expect("left held"));
    child.wait_success(T);
    // Polling installed nothing (no manager here uses signals).
    #[cfg(target_os = "linux")]
    // SAFETY: only queries the current action into a zeroed struct.
    unsafe {
        let mut cur: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(libc::SIGRTMAX() - 3, std::ptr::null(), &mut cur),
            0
        );
        assert_eq!(
            cur.sa_sigaction,
            libc::SIG_DFL,
            "a polling manager installed a handler"
        );
    }
}
