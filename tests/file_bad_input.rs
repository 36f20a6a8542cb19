//! Bad input: odd names, symlinks and FIFOs under lock-file names, foreign
//! or missing or unwritable directories, garbage in lock files.

use std::path::Path;
use std::time::Duration;

use lockyard::{FileLockManager, FileLockOptions, LockError, Mode};

const T: Duration = Duration::from_secs(10);

fn manager() -> (tempfile::TempDir, FileLockManager) {
    let dir = tempfile::tempdir().unwrap();
    let m = FileLockManager::new(dir.path().join("locks")).unwrap();
    (dir, m)
}

#[cfg(unix)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Only the lock directory changed: nothing was created beside it.
fn only_inside(d: &tempfile::TempDir) {
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names,
        ["locks"],
        "something was created outside the lock dir"
    );
}

#[tokio::test]
async fn odd_names_stay_inside_and_round_trip() {
    let (d, m) = manager();
    let long = "n".repeat(10_000);
    let names = [
        "..",
        ".",
        "/",
        "a/../../b",
        "../../../../etc/passwd",
        "nul\0inside",
        "模型/llama 7B ☃",
        "~x",
        ".hidden",
        "white space\ttab\nnewline",
        "%41",
        long.as_str(),
        "plain-name_1.0",
    ];
    let mut guards = Vec::new();
    for name in names {
        let g = m
            .acquire(name, T)
            .await
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        assert_eq!(g.path().parent(), Some(m.dir()), "{name:?} escaped");
        assert_eq!(g.name(), name);
        assert!(m.is_locked(name).await.unwrap(), "{name:?} not seen held");
        assert!(m.try_acquire(name).await.unwrap_err().is_would_block());
        guards.push(g);
    }
    only_inside(&d);
    let listed = m.list().await.unwrap();
    assert_eq!(listed.len(), names.len());
    for name in names {
        let shown = listed.iter().any(|i| i.name == name && i.held);
        // The 10 000-byte name is too long to be recorded in the file: it is
        // listed under its file name instead.
        assert_eq!(shown, name.len() < 400, "{name:?} listed wrongly");
    }
    drop(guards);
    for name in names {
        assert!(!m.is_locked(name).await.unwrap(), "{name:?} seen held");
    }
    // Distinct names, distinct locks.
    let _a = m.acquire("a/b", T).await.unwrap();
    let _b = m.try_acquire("a_b").await.unwrap();
}

#[tokio::test]
async fn empty_name_is_refused_everywhere() {
    let (_d, m) = manager();
    for err in [
        m.acquire("", T).await.unwrap_err(),
        m.acquire_shared("", T).await.unwrap_err(),
        m.try_acquire_shared("").await.unwrap_err(),
        m.is_locked("").await.unwrap_err(),
        m.owner("").await.unwrap_err(),
        m.lock("").unwrap_err(),
        m.path_for("").unwrap_err(),
    ] {
        assert!(matches!(err, LockError::InvalidName { .. }), "{err}");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn symlinked_lock_file_is_refused_and_target_untouched() {
    let (d, m) = manager();
    let target = d.path().join("precious");
    std::fs::write(&target, "do not touch").unwrap();
    let link = m.path_for("victim").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for err in [
        m.acquire("victim", T).await.unwrap_err(),
        m.try_acquire("victim").await.unwrap_err(),
        m.is_locked("victim").await.unwrap_err(),
        m.owner("victim").await.unwrap_err(),
    ] {
        assert!(matches!(err, LockError::UnsafePath { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "do not touch");
    // The target is not locked by us either.
    let f = std::fs::File::open(&target).unwrap();
    f.try_lock().unwrap();
    drop(f);
    // Status skips it, cleanup leaves it alone.
    assert!(m.list().await.unwrap().is_empty());
    assert_eq!(
        m.cleanup_stale_locks(Some(Duration::ZERO)).await.unwrap(),
        0
    );
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "do not touch");
}

#[cfg(unix)]
#[tokio::test]
async fn fifo_or_directory_under_a_lock_name_is_refused_without_hanging() {
    let (_d, m) = manager();
    let fifo = m.path_for("fifo").unwrap();
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    std::fs::create_dir(m.path_for("dir").unwrap()).unwrap();
    for name in ["fifo", "dir"] {
        let err = tokio::time::timeout(T, m.acquire(name, T))
            .await
            .expect("hung")
            .unwrap_err();
        assert!(
            matches!(err, LockError::UnsafePath { .. } | LockError::Io { .. }),
            "{name}: {err}"
        );
        let r = tokio::time::timeout(T, m.is_locked(name))
            .await
            .expect("hung");
        assert!(r.is_err(), "{name}: {r:?}");
    }
    assert!(m.list().await.unwrap().is_empty());
}

#[cfg(unix)]
#[tokio::test]
async fn symlinked_or_foreign_dir_needs_opt_in() {
    let d = tempfile::tempdir().unwrap();
    let real = d.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    if is_root() {
        // A link root owns is trusted (`/var/lock -> /run/lock`): make this
        // one somebody else's.
        std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    }
    let err = FileLockManager::new(&link).unwrap_err();
    assert!(matches!(err, LockError::UnsafePath { .. }), "{err}");
    let m =
        FileLockManager::with_options(&link, FileLockOptions::default().allow_foreign_dir(true))
            .unwrap();
    drop(m.acquire("x", T).await.unwrap());
    assert!(real.join("x.lock").exists());

    // A directory owned by someone else (root's /, as seen by a non-root
    // user; as root, a directory chowned to nobody).
    let foreign = if is_root() {
        let p = d.path().join("nobody");
        std::fs::create_dir(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        p
    } else {
        Path::new("/").to_owned()
    };
    let err = FileLockManager::new(&foreign).unwrap_err();
    assert!(matches!(err, LockError::UnsafePath { .. }), "{err}");
    assert!(err.to_string().contains("owned by uid"), "{err}");
    FileLockManager::with_options(&foreign, FileLockOptions::default().allow_foreign_dir(true))
        .unwrap();
}

#[tokio::test]
async fn missing_dir_is_created_with_the_chosen_mode() {
    let d = tempfile::tempdir().unwrap();
    let deep = d.path().join("a/b/c");
    let m =
        FileLockManager::with_options(&deep, FileLockOptions::default().dir_mode(0o2770)).unwrap();
    drop(m.acquire("x", T).await.unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&deep).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o2770, "{mode:o}");
        let fmode = std::fs::metadata(deep.join("x.lock"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(fmode & 0o777 & !0o022, 0o660 & !0o022, "{fmode:o}");
    }
}

#[tokio::test]
async fn uncreatable_or_non_directory_dir_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("file");
    std::fs::write(&file, "").unwrap();
    let err = FileLockManager::new(&file).unwrap_err();
    assert!(matches!(err, LockError::UnsafePath { .. }), "{err}");
    let err = FileLockManager::new(file.join("below")).unwrap_err();
    assert!(
        matches!(
            err,
            LockError::Io { .. } | LockError::PermissionDenied { .. }
        ),
        "{err}"
    );
    #[cfg(target_os = "linux")]
    {
        let err = FileLockManager::new("/proc/lockyard-cannot-exist").unwrap_err();
        assert!(
            matches!(
                err,
                LockError::Io { .. } | LockError::PermissionDenied { .. }
            ),
            "{err}"
        );
    }
}

#[cfg(unix)]
#[tokio::test]
async fn unwritable_dir_gives_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, m) = manager();
    drop(m.acquire("existing", T).await.unwrap());
    std::fs::set_permissions(m.dir(), std::fs::Permissions::from_mode(0o500)).unwrap();
    let r = m.acquire("new", T).await;
    if is_root() {
        // Root ignores directory permissions: nothing to refuse.
        println!("running as root: directory permissions are not enforced");
        drop(r.unwrap());
    } else {
        let err = r.unwrap_err();
        assert!(matches!(err, LockError::PermissionDenied { .. }), "{err}");
    }
    // An existing lock file can still be locked and inspected.
    drop(m.acquire("existing", T).await.unwrap());
    assert!(!m.list().await.unwrap().is_empty());
    std::fs::set_permissions(m.dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[tokio::test]
async fn garbage_in_a_lock_file_is_survived_and_only_records_are_overwritten() {
    let (_d, m) = manager();
    // (content, whether it is a lockyard record, damaged or not, that a
    // holder may overwrite)
    let cases: Vec<(Vec<u8>, bool)> = vec![
        (b"".to_vec(), true),
        (b"hello, I am another tool's lock file\n".to_vec(), false),
        (vec![0xff, 0x00, 0xfe, b'\n', 0x80], false),
        (b"lockyard-owner 1\npid=notanumber\nhost=x\n".to_vec(), true),
        (
            b"lockyard-owner 1\npid=1\nhost=\x01\nsince=2026-01-01T00:00:00Z\n".to_vec(),
            true,
        ),
        ("lockyard-owner 1\n".repeat(100_000).into_bytes(), true),
        (vec![b'x'; 3 * 1024 * 1024], false),
    ];
    for (i, (garbage, ours)) in cases.iter().enumerate() {
        let name = format!("g{i}");
        let path = m.path_for(&name).unwrap();
        std::fs::write(&path, garbage).unwrap();
        assert_eq!(m.owner(&name).await.unwrap(), None, "case {i}");
        let info = m.list().await.unwrap();
        let me = info.iter().find(|x| x.name == name).unwrap();
        assert!(!me.held && me.owner.is_none(), "case {i}");
        let g = m.acquire(&name, T).await.unwrap();
        if *ours {
            let owner = m.owner(&name).await.unwrap().expect("record written");
            assert_eq!(owner.pid, std::process::id());
            assert_eq!(owner.mode, Mode::Exclusive);
        } else {
            assert_eq!(m.owner(&name).await.unwrap(), None, "case {i}");
        }
        drop(g);
        if *ours {
            assert!(
                std::fs::metadata(&path).unwrap().len() < 4096,
                "case {i}: not trimmed"
            );
        } else {
            assert_eq!(
                &std::fs::read(&path).unwrap(),
                garbage,
                "case {i}: overwritten"
            );
        }
        // Garbage again, free: stale.
        std::fs::write(&path, garbage).unwrap();
    }
    // Damaged lockyard records are stale; other content is kept unless
    // asked for.
    let damaged = cases
        .iter()
        .enumerate()
        .filter(|(i, (_, ours))| *ours && *i != 0)
        .count();
    let stale = m.stale_locks(None).await.unwrap();
    assert_eq!(stale.len(), damaged);
    assert_eq!(m.cleanup_stale_locks(None).await.unwrap(), damaged);
    assert_eq!(m.list().await.unwrap().len(), cases.len() - damaged);
    let all = lockyard::CleanupOptions::default().remove_unrecorded(true);
    assert_eq!(
        m.cleanup_with(&all).await.unwrap().len(),
        cases.len() - damaged
    );
    assert!(m.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn other_files_in_the_dir_are_ignored() {
    let (_d, m) = manager();
    std::fs::write(m.dir().join("notes.txt"), "x").unwrap();
    std::fs::write(m.dir().join(".hidden.lock"), "x").unwrap();
    std::fs::write(m.dir().join("~bogus.lock"), "x").unwrap();
    drop(m.acquire("real", T).await.unwrap());
    let names: Vec<_> = m
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["real"]);
    m.cleanup_stale_locks(Some(Duration::ZERO)).await.unwrap();
    assert!(m.dir().join("notes.txt").exists());
    assert!(m.dir().join(".hidden.lock").exists());
    assert!(m.dir().join("~bogus.lock").exists());
}

#[tokio::test]
async fn escaped_names_use_a_cryptographic_hash() {
    let (_d, m) = manager();
    // The first 128 bits of SHA-256("a/b"): a crafted name cannot share a
    // lock file with another (FNV-1a, used before, is not collision-resistant).
    assert!(
        m.path_for("a/b")
            .unwrap()
            .ends_with("~a_b-c14cddc033f64b9dea80ea675cf280a0.lock"),
        "{:?}",
        m.path_for("a/b")
    );
}

#[tokio::test]
async fn error_messages_escape_control_characters_in_names() {
    let (_d, m) = manager();
    let name = "job\nFAKE ROW\u{1b}[2J";
    let g = m.acquire(name, T).await.unwrap();
    let err = m.try_acquire(name).await.unwrap_err();
    let shown = err.to_string();
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
    assert!(shown.contains("job\\nFAKE ROW\\u{1b}[2J"), "{shown}");
    // The raw name is still there for programs.
    assert_eq!(err.resource(), Some(name));
    assert_eq!(
        lockyard::escape_for_display(&m.list().await.unwrap()[0].name),
        "job\\nFAKE ROW\\u{1b}[2J"
    );
    drop(g);
}
