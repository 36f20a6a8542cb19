//! Where `lockyard exec` locks: one per-user default directory whatever the
//! session's environment (cron vs a login), a path as the lock exactly as
//! flock(1) takes it, the standard lock directories, and
//! `--allow-foreign-dir`.
#![cfg(target_os = "linux")]

mod cli_support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use cli_support::*;

/// A lock name no other test (or run) uses, for the shared default directory.
fn unique_name(what: &str) -> String {
    format!("cli-lock-files-{what}-{}", std::process::id())
}

#[test]
fn cron_and_a_login_session_share_the_default_directory() {
    let env = Env::new();
    let name = unique_name("default");
    let xdg = env.path("xdg");
    std::fs::create_dir(&xdg).unwrap();
    let ready = env.path("ready");
    // A login session: XDG_RUNTIME_DIR set.
    let mut login = env.cmd(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        &format!("touch '{}'; exec sleep 30", ready.display()),
    ]);
    login
        .env_remove("LOCKYARD_DIR")
        .env("XDG_RUNTIME_DIR", &xdg);
    let mut holder = Holder {
        child: login.stdout(Stdio::null()).spawn().unwrap(),
    };
    assert!(
        eventually_blocking(PATIENCE, || ready.exists()),
        "login holder never ran"
    );
    // cron: no XDG_RUNTIME_DIR, a different TMPDIR.
    let mut cron = env.cmd(&["exec", "-n", &name, "--", "true"]);
    cron.env_remove("LOCKYARD_DIR")
        .env_remove("XDG_RUNTIME_DIR")
        .env("TMPDIR", env.path(""));
    let out = output(cron);
    holder.kill();
    for base in ["/run/lock", "/tmp"] {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let _ = std::fs::remove_file(format!("{base}/lockyard-{uid}/{name}.lock"));
    }
    assert_eq!(
        out.status.code(),
        Some(1),
        "cron's lockyard ran beside the login's: {}",
        stderr(&out)
    );
}

/// `flock PATH sh -c 'touch READY; sleep 5'` in the background, in a
/// process group of its own so that [`end_group`] ends flock and its child
/// (which holds the lock through the inherited descriptor).
fn flock_holding(path: &std::path::Path, ready: &std::path::Path) -> Holder {
    let child = Command::new("flock")
        .arg(path)
        .args([
            "sh",
            "-c",
            &format!("touch '{}'; exec sleep 5", ready.display()),
        ])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("flock(1) (util-linux) is needed for this test");
    let h = Holder { child };
    assert!(
        eventually_blocking(PATIENCE, || ready.exists()),
        "flock never ran"
    );
    h
}

fn end_group(mut h: Holder) {
    kill(-(h.pid() as i32), libc::SIGKILL);
    h.wait();
}

#[test]
fn a_path_is_locked_itself_and_excludes_flock_users() {
    let env = Env::new();
    let path = env.path("x.lock");
    let path_s = path.to_str().unwrap();
    // flock(1) holds it: lockyard must not get in.
    let flock = flock_holding(&path, &env.path("flock-ready"));
    let out = env.run(&["exec", "-n", path_s, "true"]);
    assert_clean_failure(&out, 1);
    let out = env.run(&["exec", "-n", "--file", path_s, "--", "true"]);
    assert_clean_failure(&out, 1);
    end_group(flock);
    // The reverse: lockyard holds it, flock -n fails.
    let ready = env.path("lockyard-ready");
    let holder = env
        .cmd(&[
            "exec",
            path_s,
            "--",
            "sh",
            "-c",
            &format!("touch '{}'; exec sleep 30", ready.display()),
        ])
        .spawn()
        .unwrap();
    let _holder = Holder { child: holder };
    assert!(
        eventually_blocking(PATIENCE, || ready.exists()),
        "lockyard never ran"
    );
    let status = Command::new("flock")
        .args(["-n", path_s, "true"])
        .status()
        .expect("flock(1)");
    assert_eq!(status.code(), Some(1), "flock(1) got in beside lockyard");
    assert!(path.is_file(), "the path itself was not the lock file");
    let out = env.run(&["exec", "-n", "-E", "3", "--file", path_s, "-c", "true"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

/// `--dir` says where NAMEs go; a path (a NAME with `/`, or `--file`) is
/// locked where it says, so `--dir` beside it is refused, not ignored.
/// `$LOCKYARD_DIR` is only a default: a path NAME beside it is fine.
#[test]
fn dir_is_refused_beside_a_path() {
    let env = Env::new();
    let cwd = env.path("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let dir = env.path("d");
    let dir_s = dir.to_str().unwrap();
    for path_args in [&["a/b"][..], &["--file", "a/b"][..]] {
        let mut args = vec!["exec", "--dir", dir_s];
        args.extend_from_slice(path_args);
        args.extend_from_slice(&["--", "true"]);
        let mut cmd = env.cmd(&args);
        cmd.current_dir(&cwd);
        let out = output(cmd);
        assert_clean_failure(&out, 64);
        assert!(stderr(&out).contains("--dir"), "{args:?}: {}", stderr(&out));
        assert!(!cwd.join("a").exists(), "{args:?} created ./a");
        assert!(!dir.exists(), "{args:?} created --dir");
    }
    std::fs::create_dir(cwd.join("a")).unwrap();
    let mut cmd = env.cmd(&["exec", "a/b", "--", "true"]);
    cmd.current_dir(&cwd);
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(cwd.join("a/b").is_file(), "the path was not the lock file");
}

/// flock(1) creates no directory for its lock file; neither does a path
/// lock: a missing directory is exit 73, naming it.
#[test]
fn a_path_lock_creates_no_directory() {
    let env = Env::new();
    let cwd = env.path("cwd");
    std::fs::create_dir(&cwd).unwrap();
    for path_args in [&["a/b/c"][..], &["--file", "a/b/c"][..]] {
        let mut args = vec!["exec"];
        args.extend_from_slice(path_args);
        args.extend_from_slice(&["--", "true"]);
        let mut cmd = env.cmd(&args);
        cmd.current_dir(&cwd);
        let out = output(cmd);
        assert_clean_failure(&out, 73);
        assert!(
            stderr(&out).contains("a/b does not exist"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!cwd.join("a").exists(), "{args:?} created ./a");
    }
}

#[test]
fn standard_lock_directories_are_accepted() {
    let env = Env::new();
    for dir in ["/var/lock", "/run/lock"] {
        if !std::path::Path::new(dir).is_dir() {
            println!("{dir} does not exist here; skipped");
            continue;
        }
        let name = unique_name("std");
        let out = env.run(&["exec", "--dir", dir, &name, "--", "true"]);
        assert_eq!(out.status.code(), Some(0), "--dir {dir}: {}", stderr(&out));
        let _ = std::fs::remove_file(format!("{dir}/{name}.lock"));
    }
}

#[test]
fn a_foreign_directory_needs_allow_foreign_dir() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("needs root to make a directory owned by another user; skipped");
        return;
    }
    let env = Env::new();
    let dir = env.path("foreign");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&dir, Some(4242), Some(4242)).unwrap();
    let dir_s = dir.to_str().unwrap();
    let out = env.run(&["exec", "--dir", dir_s, "job", "--", "true"]);
    assert_clean_failure(&out, 77);
    assert!(
        stderr(&out).contains("--allow-foreign-dir"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&[
        "exec",
        "--dir",
        dir_s,
        "--allow-foreign-dir",
        "job",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
