//! Locking an exact path, as flock(1) does, and the standard lock
//! directories for a user who is not root.

mod file_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use file_support::{child_main, spawn_as};
use lockyard::{AcquireOptions, FileLock, FileLockOptions, LockError, Mode};

const T: Duration = Duration::from_secs(30);

#[test]
fn child_process_entry() {
    child_main();
}

/// Starts `flock -o <path> -c 'echo HELD; sleep 30'` and waits until it holds.
fn flock_holder(path: &std::path::Path) -> std::process::Child {
    // -o: the command does not inherit the lock, so killing flock(1)
    // releases it.
    let mut c = Command::new("flock")
        .arg("-o")
        .arg(path)
        .args(["-c", "echo HELD; exec sleep 30"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("flock(1)");
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "HELD");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_path_excludes_flock_1_both_ways() {
    if Command::new("flock").arg("--version").output().is_err() {
        println!("flock(1) is not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.lock");
    let lock = FileLock::at_path(&path, FileLockOptions::default()).unwrap();
    assert_eq!(lock.path(), path);

    // A previous lockyard holder, long dead, left its record in the file.
    let mut dead = lockyard::Owner::current(Mode::Exclusive);
    dead.pid = {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    std::fs::write(&path, format!("{}name=x\nend\n", dead.to_text())).unwrap();
    let mut holder = flock_holder(&path);
    let err = lock.try_acquire(Mode::Exclusive).await.unwrap_err();
    assert!(err.is_would_block(), "{err}");
    // flock(1) holds it: the dead previous holder is not named as holder.
    assert!(err.holder().is_none(), "{err}");
    // The kernel names flock(1) as the holder.
    let info = lockyard::FileLockManager::new(dir.path())
        .unwrap()
        .list()
        .await
        .unwrap();
    assert_eq!(info[0].name, "x");
    assert!(info[0].held);
    assert!(info[0].holder_pids.contains(&holder.id()), "{info:?}");
    assert!(info[0].owner.is_none(), "{info:?}");
    // A waiter gets it when flock(1)'s command ends.
    let waiter = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.acquire(&AcquireOptions::exclusive().timeout(T)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    holder.kill().unwrap();
    holder.wait().unwrap();
    let g = tokio::time::timeout(T, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(g.path(), path);
    // Held by us: flock(1) -n fails on the same file.
    let st = Command::new("flock")
        .args(["-n"])
        .arg(&path)
        .arg("true")
        .status()
        .unwrap();
    assert!(!st.success(), "flock(1) got the file lockyard holds");
    drop(g);
    let st = Command::new("flock")
        .args(["-n"])
        .arg(&path)
        .arg("true")
        .status()
        .unwrap();
    assert!(st.success());
    assert!(!dir.path().join("x.lock.lock").exists());
}

#[tokio::test]
async fn exact_path_never_writes_into_a_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.db");
    std::fs::write(&path, b"precious data").unwrap();
    let lock = FileLock::at_path(&path, FileLockOptions::default()).unwrap();
    let g = lock.try_acquire(Mode::Exclusive).await.unwrap();
    drop(g);
    assert_eq!(std::fs::read(&path).unwrap(), b"precious data");
    for bad in ["", "/", "dir/", "."] {
        assert!(
            FileLock::at_path(bad, FileLockOptions::default()).is_err(),
            "{bad:?}"
        );
    }
}

/// As with flock(1), a path whose directory is missing is an error: no
/// directory is created for it (nor for any missing component above it).
#[test]
fn exact_path_creates_no_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("a");
    let path = missing.join("b").join("x.lock");
    let err = FileLock::at_path(&path, FileLockOptions::default()).unwrap_err();
    assert!(
        matches!(&err, LockError::Io { op: "create lock file", path: p, .. } if *p == path),
        "{err:?}"
    );
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains(&format!("{} does not exist", missing.join("b").display())),
        "{chain}"
    );
    assert!(!missing.exists(), "created {}", missing.display());
}

/// As a user who is not root: the sticky, root-owned `/run/lock` (and the
/// root-owned link `/var/lock` to it) and the default directory are
/// accepted without `allow_foreign_dir`.
#[test]
fn standard_lock_dirs_are_accepted_for_a_non_root_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("not root: cannot start a child as another user; skipped");
        return;
    }
    if !others_can_run(&std::env::current_exe().unwrap()) {
        println!("the test binary is not reachable by other users here: skipped");
        return;
    }
    let Some(base) = ["/var/lock", "/run/lock"]
        .into_iter()
        .find(|d| std::path::Path::new(d).is_dir())
    else {
        println!("no /run/lock here: skipped");
        return;
    };
    let path = format!("{base}/lockyard-test-{}.lock", std::process::id());
    let open_dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let mut c = spawn_as(
        65534,
        "exact",
        &[
            ("PATH_TO_LOCK", path.clone()),
            ("OPEN_DIR", open_dir.path().display().to_string()),
        ],
    );
    c.wait_line("LOCKED", T);
    c.wait_line("DEFAULT OK", T);
    c.wait_line("OPEN DIR REFUSED", T);
    c.wait_success(T);
    let _ = std::fs::remove_file(&path);
}

/// Whether a user with no special rights can execute `exe` (every parent
/// directory searchable by others, the file readable and executable).
fn others_can_run(exe: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode());
    exe.ancestors()
        .skip(1)
        .all(|d| d.as_os_str().is_empty() || mode(d).is_ok_and(|m| m & 0o001 != 0))
        && mode(exe).is_ok_and(|m| m & 0o005 == 0o005)
}
