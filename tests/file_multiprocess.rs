//! File locks across processes: mutual exclusion, shared mode, a holder
//! killed with SIGKILL, timeouts, and removal of lock files under load.

mod file_support;

use std::time::{Duration, Instant};

use file_support::{Child, child_main, no_kernel_waiters, one_kernel_waiter, spawn};
use lockyard::{FileLockManager, LockError, Mode};

const T: Duration = Duration::from_secs(60);

#[test]
fn child_process_entry() {
    child_main();
}

fn dir() -> (tempfile::TempDir, String) {
    let d = tempfile::tempdir().unwrap();
    let locks = d.path().join("locks").display().to_string();
    (d, locks)
}

fn holder(locks: &str, name: &str, mode: Mode) -> Child {
    let mut c = spawn(
        "hold",
        &[
            ("DIR", locks.to_owned()),
            ("NAME", name.to_owned()),
            ("MODE", mode.to_string()),
        ],
    );
    c.wait_line("HELD", Duration::from_secs(30));
    c
}

/// Bound on each wait of the counter runs. They take about a second, but
/// 480 hand-overs between processes are slow on an overloaded machine (30 s
/// to over 60 s measured at a load average of 16–24 on 2 cores): this only
/// catches a hang.
const COUNTERS: Duration = Duration::from_secs(240);

fn run_counters(cleanup: bool) {
    let (d, locks) = dir();
    let counter = d.path().join("counter");
    let (procs, tasks, iters) = (4, 3, 40);
    let mut env = vec![
        ("DIR", locks),
        ("NAME", "counter".to_owned()),
        ("TASKS", tasks.to_string()),
        ("ITERS", iters.to_string()),
        ("COUNTER", counter.display().to_string()),
    ];
    if cleanup {
        env.push(("CLEANUP", "1".to_owned()));
    }
    let mut children: Vec<Child> = (0..procs).map(|_| spawn("count", &env)).collect();
    let mut removed = 0;
    for c in &mut children {
        if cleanup {
            let line = c.wait_line("REMOVED", COUNTERS);
            removed += line["REMOVED ".len()..].parse::<usize>().unwrap();
        }
        c.wait_line("DONE", COUNTERS);
    }
    for c in children {
        c.wait_success(COUNTERS);
    }
    let n: usize = std::fs::read_to_string(&counter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(n, procs * tasks * iters, "lost updates");
    if cleanup {
        println!("lock file removed {removed} times during the run");
        assert!(removed > 0, "the cleanup never removed the lock file");
    }
}

#[test]
fn exclusive_counter_across_processes() {
    run_counters(false);
}

#[test]
fn removing_lock_files_never_breaks_exclusion() {
    run_counters(true);
}

#[test]
fn shared_across_processes_and_writers_excluded() {
    let (d, locks) = dir();
    let state = d.path().join("state");
    let env = [
        ("DIR", locks),
        ("NAME", "rw".to_owned()),
        ("ITERS", "40".to_owned()),
        ("STATE", state.display().to_string()),
    ];
    let mut children: Vec<Child> = (0..3).map(|_| spawn("rw", &env)).collect();
    for c in &mut children {
        c.wait_line("DONE", T);
    }
    for c in children {
        c.wait_success(T);
    }
    let n: usize = std::fs::read_to_string(&state)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(n, 3 * 40, "lost writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_holders_in_two_processes_coexist() {
    let (_d, locks) = dir();
    let m = FileLockManager::new(&locks).unwrap();
    let mut a = holder(&locks, "s", Mode::Shared);
    let mut b = holder(&locks, "s", Mode::Shared); // got it while `a` holds it
    let mine = m.try_acquire_shared("s").await.unwrap();
    assert!(m.try_acquire("s").await.unwrap_err().is_would_block());
    let writer = {
        let m = m.clone();
        tokio::spawn(async move { m.acquire("s", T).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!writer.is_finished());
    drop(mine);
    a.release();
    a.wait_line("RELEASED", T);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !writer.is_finished(),
        "writer got in while `b` held the lock shared"
    );
    b.release();
    let g = tokio::time::timeout(T, writer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(g.mode(), Mode::Exclusive);
    a.wait_success(T);
    b.wait_success(T);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_hands_over_at_once() {
    let (_d, locks) = dir();
    let m = FileLockManager::new(&locks).unwrap();
    let mut child = holder(&locks, "job", Mode::Exclusive);
    let err = m.try_acquire("job").await.unwrap_err();
    assert_eq!(err.holder().map(|h| h.pid), Some(child.pid()));
    let waiter = {
        let m = m.clone();
        tokio::spawn(async move {
            let g = m.acquire("job", T).await;
            (g, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The waiter is blocked in the kernel.
    one_kernel_waiter(&m).await;
    let killed = Instant::now();
    child.kill9();
    let (g, got) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    let g = g.unwrap();
    let after = got.duration_since(killed);
    println!("lock taken {after:?} after SIGKILL of the holder");
    assert!(after < Duration::from_secs(1), "{after:?}");
    assert_eq!(g.owner().pid, std::process::id());
    assert_eq!(
        m.owner("job").await.unwrap().unwrap().pid,
        std::process::id()
    );
    drop(g);
    no_kernel_waiters(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_against_another_process() {
    let (_d, locks) = dir();
    let m = FileLockManager::new(&locks).unwrap();
    let mut child = holder(&locks, "busy", Mode::Exclusive);
    let start = Instant::now();
    let err = m
        .acquire("busy", Duration::from_millis(500))
        .await
        .unwrap_err();
    let took = start.elapsed();
    println!("0.5 s timeout against another process returned after {took:?}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let LockError::Timeout {
        holder,
        waited,
        resource,
    } = err
    else {
        panic!("not a timeout")
    };
    assert_eq!(resource, "busy");
    assert!(waited >= Duration::from_millis(500));
    assert_eq!(holder.unwrap().pid, child.pid());
    // The thread that waited in the kernel is interrupted, not left behind.
    no_kernel_waiters(&m).await;
    let start = Instant::now();
    assert!(m.try_acquire("busy").await.unwrap_err().is_would_block());
    println!(
        "try_acquire on a held lock returned after {:?}",
        start.elapsed()
    );
    let info = m.list().await.unwrap();
    assert_eq!(info.len(), 1);
    assert!(info[0].held);
    assert_eq!(info[0].mode, Some(Mode::Exclusive));
    assert_eq!(info[0].owner.as_ref().unwrap().pid, child.pid());
    assert_eq!(
        m.cleanup_stale_locks(Some(Duration::ZERO)).await.unwrap(),
        0
    );
    child.release();
    child.wait_line("RELEASED", T);
    let g = m.try_acquire("busy").await.unwrap();
    drop(g);
}

/// Waiters are told why: the `tracing` event names the holder.
#[test]
fn waiting_logs_the_holder() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let (_d, locks) = dir();
    let mut child = holder(&locks, "logged", Mode::Exclusive);
    // tracing-core 0.1.36 bug (tokio-rs/tracing#3611): while exactly one
    // `Dispatch` exists in the process, a callsite first hit by another
    // thread (another test here, e.g. the "gave up" event of
    // `timeout_against_another_process`) caches `Interest::never` from that
    // thread's (empty) default, and our scoped subscriber misses the event.
    // A second live `Dispatch` makes tracing combine the interest of all
    // of them instead.
    let _second_dispatch = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let m = FileLockManager::new(&locks).unwrap();
            let err = m
                .acquire("logged", Duration::from_millis(100))
                .await
                .unwrap_err();
            assert!(err.is_timeout());
        });
    });
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    println!("{log}");
    assert!(log.contains("waiting"), "{log}");
    assert!(
        log.contains(&format!("pid {}", child.pid())),
        "holder not named: {log}"
    );
    assert!(log.contains("gave up"), "{log}");
    child.release();
    child.wait_success(T);
}
