//! Kernel waits: the mode asked of the kernel follows the waiters that
//! remain, and the interrupt signal is only used while it is ours.

mod file_support;

use std::time::{Duration, Instant};

use file_support::{Child, child_main, spawn};
use lockyard::{FileLockManager, Mode};

const T: Duration = Duration::from_secs(30);

#[test]
fn child_process_entry() {
    child_main();
}

fn holder(locks: &std::path::Path, name: &str, mode: Mode) -> Child {
    let mut c = spawn(
        "hold",
        &[
            ("DIR", locks.display().to_string()),
            ("NAME", name.to_owned()),
            ("MODE", mode.to_string()),
        ],
    );
    c.wait_line("HELD", T);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_wait_is_not_stuck_behind_an_abandoned_exclusive_wait() {
    let d = tempfile::tempdir().unwrap();
    let locks = d.path().join("locks");
    let m = FileLockManager::new(&locks).unwrap();
    let mut reader = holder(&locks, "s", Mode::Shared);
    for round in 0..10 {
        let err = m
            .acquire("s", Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        // Another process holds it shared only: a shared acquisition must
        // get it at once, not join a kernel wait that asks for LOCK_EX.
        let start = Instant::now();
        let g = m
            .acquire_shared("s", Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(start.elapsed() < Duration::from_secs(3));
        // And the kernel lock behind it is shared, so other processes'
        // readers are not kept out.
        let shown = format!("{g:?}");
        assert!(shown.contains("kernel_mode: Some(Shared)"), "{shown}");
        drop(g);
    }
    reader.release();
    reader.wait_success(T);
}

/// The application resets the interrupt signal to its default action (which
/// kills the process) after lockyard installed its handler, then abandons a
/// wait: the child process must survive and its waits keep working.
#[test]
fn signal_reset_by_the_application_does_not_kill_the_process() {
    run_signal_case("default");
}

/// The application installs its own handler with `SA_RESTART`: lockyard
/// must stop signalling (the handler is not ours) and fall back to polling.
#[test]
fn signal_taken_by_the_application_is_left_alone() {
    run_signal_case("restart");
}

fn run_signal_case(how: &str) {
    let d = tempfile::tempdir().unwrap();
    let locks = d.path().join("locks");
    std::fs::create_dir(&locks).unwrap();
    let mut holder = holder(&locks, "x", Mode::Exclusive);
    let mut c = spawn(
        "signal",
        &[
            ("DIR", locks.display().to_string()),
            ("NAME", "x".to_owned()),
            ("HOW", how.to_owned()),
        ],
    );
    let line = c.wait_line("WAITED", T);
    println!("{line}");
    holder.release();
    c.wait_line("ACQUIRED", T);
    let handled = c.wait_line("HANDLER", T);
    println!("{handled}");
    let n: usize = handled["HANDLER ".len()..].trim().parse().unwrap();
    assert!(
        n <= 5,
        "lockyard kept signalling a handler that is not its own: {n} calls"
    );
    c.wait_success(T);
    holder.wait_success(T);
}
