//! `lockyard status`, `lockyard cleanup`, and clean failures on bad input.
#![cfg(unix)]

mod cli_support;

use cli_support::*;

#[test]
fn status_json_shows_held_locks() {
    let env = Env::new();
    let holder = env.hold("build", &[]);
    let reader = env.hold("cache", &["-s"]);
    let out = env.run(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON value");
    let rows = v.as_array().expect("a JSON array");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {v}"))
            .clone()
    };
    let build = row("build");
    assert_eq!(build["held"], true);
    assert_eq!(build["mode"], "exclusive");
    assert_eq!(build["pid"], holder.pid());
    assert!(build["host"].is_string());
    let since = build["since"].as_str().expect("since");
    humantime::parse_rfc3339(since).expect("RFC 3339");
    let cache = row("cache");
    assert_eq!(cache["held"], true);
    assert_eq!(cache["mode"], "shared");
    assert_eq!(cache["pid"], reader.pid());
    for r in rows {
        for key in ["name", "held", "mode", "pid", "host", "since"] {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
    }

    let out = env.run(&["status"]);
    let text = stdout(&out);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("build") && l.contains(&holder.pid().to_string())),
        "{text}"
    );
}

#[test]
fn status_of_missing_dir() {
    let env = Env::new();
    let missing = env.path("nope");
    let out = env.run(&["status", "--dir", missing.to_str().unwrap()]);
    assert_clean_failure(&out, 66);
}

#[test]
fn cleanup_counts_and_dry_run() {
    let env = Env::new();
    // Two holders killed with SIGKILL leave lock files whose owner is gone.
    for name in ["dead1", "dead2"] {
        let mut h = env.hold(name, &[]);
        h.kill();
    }
    let _live = env.hold("live", &[]);
    let files = || {
        let mut v: Vec<String> = std::fs::read_dir(env.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = files();
    assert!(before.iter().any(|f| f.contains("dead1")), "{before:?}");

    let out = env.run(&["cleanup", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("would remove 2 stale lock files"), "{text}");
    assert!(
        text.contains("dead1") && text.contains("dead2") && !text.contains("live"),
        "{text}"
    );
    assert_eq!(files(), before, "--dry-run removed something");

    // --max-age 0 makes every free file stale; a held one is never removed.
    let out = env.run(&["cleanup", "--max-age", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("removed 2 stale lock files"),
        "{}",
        stdout(&out)
    );
    let after = files();
    assert!(
        after.iter().any(|f| f.contains("live")),
        "held lock removed: {after:?}"
    );
    assert!(!after.iter().any(|f| f.contains("dead")), "{after:?}");

    let out = env.run(&["cleanup"]);
    assert!(
        stdout(&out).starts_with("removed 0 stale lock files"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn usage_errors_exit_64_in_one_line() {
    let env = Env::new();
    for args in [
        &[][..],
        &["bogus"],
        &["exec"],
        &["exec", "job"],
        &["exec", "--bogus", "job", "--", "true"],
        &["exec", "-w", "abc", "job", "--", "true"],
        &["exec", "-w", "-1", "job", "--", "true"],
        &["exec", "-w", "1e999", "job", "--", "true"],
        &["exec", "-E", "300", "job", "--", "true"],
        &["exec", "--ttl", "5s", "job", "--", "true"],
        &[
            "exec",
            "--redis",
            "redis://127.0.0.1:1",
            "--permits",
            "0",
            "job",
            "--",
            "true",
        ],
        &["exec", "--rw", "job", "true"],
        &[
            "exec",
            "--redis",
            "redis://127.0.0.1:1",
            "--permits",
            "2",
            "--rw",
            "job",
            "true",
        ],
        &["exec", "", "--", "true"],
        &["status", "--bogus"],
        &["cleanup", "--max-age", "soon"],
    ] {
        let out = env.run(args);
        println!("{args:?}: {}", stderr(&out).trim_end());
        assert_clean_failure(&out, 64);
    }
}

#[test]
fn help_and_version_exit_0() {
    let env = Env::new();
    for args in [
        &["--help"][..],
        &["--version"],
        &["exec", "--help"],
        &["help", "status"],
    ] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(!stdout(&out).is_empty());
    }
    let help = stdout(&env.run(&["exec", "--help"]));
    assert!(help.contains("Exit codes") && help.contains("75"), "{help}");
}

#[test]
fn bad_lock_dir_is_a_clean_error() {
    let env = Env::new();
    let file = env.path("a-file");
    std::fs::write(&file, "x").unwrap();
    let under_file = file.join("sub");
    for dir in [&file, &under_file] {
        let out = env.run(&["exec", "--dir", dir.to_str().unwrap(), "job", "--", "true"]);
        let code = out.status.code().unwrap();
        println!(
            "--dir {}: {code} {}",
            dir.display(),
            stderr(&out).trim_end()
        );
        assert!(code >= 64, "exit {code}");
        assert_clean_failure(&out, code);
    }
    // /proc refuses new directories even to root.
    let out = env.run(&["exec", "--dir", "/proc/lockyard-test", "job", "--", "true"]);
    let code = out.status.code().unwrap();
    println!(
        "--dir /proc/lockyard-test: {code} {}",
        stderr(&out).trim_end()
    );
    assert!(code >= 64);
    assert_clean_failure(&out, code);
}

#[test]
fn failing_stdout_is_an_error_not_a_panic() {
    let env = Env::new();
    let _h = env.hold("x", &[]);
    // Writing to /dev/full fails with ENOSPC.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut cmd = env.cmd(&["status"]);
    cmd.stdout(full).stderr(std::process::Stdio::piped());
    let out = cmd.output().unwrap();
    assert_clean_failure(&out, 74);
}

#[test]
fn lock_dir_precedence() {
    let env = Env::new();
    let list = |dir: &std::path::Path| format!("ls '{}'", dir.display());
    // --dir beats $LOCKYARD_DIR.
    let chosen = env.path("chosen");
    let out = env.run(&[
        "exec",
        "--dir",
        chosen.to_str().unwrap(),
        "a",
        "--",
        "sh",
        "-c",
        &list(&chosen),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("a.lock"), "{}", stdout(&out));
    // No (or an empty) $LOCKYARD_DIR: the one per-user directory, whatever
    // XDG_RUNTIME_DIR and TMPDIR say (cron and a login session agree).
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let expected = ["/run/lock", "/tmp"]
        .map(|base| std::path::Path::new(base).join(format!("lockyard-{uid}")));
    let name = format!("cli-status-precedence-{}", std::process::id());
    let script = format!(
        "ls {} {} 2>/dev/null; true",
        expected[0].display(),
        expected[1].display()
    );
    let xdg = env.path("xdg");
    std::fs::create_dir(&xdg).unwrap();
    for (lockyard_dir, with_xdg) in [("", true), ("", false)] {
        let mut cmd = env.cmd(&["exec", &name, "--", "sh", "-c", &script]);
        cmd.env("LOCKYARD_DIR", lockyard_dir)
            .env("TMPDIR", env.path(""));
        if with_xdg {
            cmd.env("XDG_RUNTIME_DIR", &xdg);
        } else {
            cmd.env_remove("XDG_RUNTIME_DIR");
        }
        let out = output(cmd);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!("{name}.lock")),
            "XDG_RUNTIME_DIR set: {with_xdg}: {}",
            stdout(&out)
        );
    }
    for dir in expected {
        let _ = std::fs::remove_file(dir.join(format!("{name}.lock")));
    }
}

/// The row of lock `name` in `lockyard status`, split into its columns.
fn status_row(env: &Env, name: &str) -> Vec<String> {
    let out = env.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} missing: {}", stdout(&out)))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn status_names_the_kernels_holder_when_flock_holds_the_file() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    std::fs::create_dir_all(env.dir()).unwrap();
    let ready = env.path("ready");
    let flock = std::process::Command::new("flock")
        .arg(env.dir().join("tool.lock"))
        .args([
            "sh",
            "-c",
            &format!("touch '{}'; exec sleep 10", ready.display()),
        ])
        .process_group(0)
        .spawn()
        .expect("flock(1) (util-linux) is needed for this test");
    let mut flock = Holder { child: flock };
    assert!(
        eventually_blocking(PATIENCE, || ready.exists()),
        "flock never ran"
    );
    let row = status_row(&env, "tool");
    kill(-(flock.pid() as i32), libc::SIGKILL);
    flock.wait();
    assert_eq!(row[1], "yes", "{row:?}");
    assert!(
        row[3].split(',').any(|p| p == flock.pid().to_string()),
        "the kernel's holder (flock, pid {}) is not shown: {row:?}",
        flock.pid()
    );
}

#[cfg(target_os = "linux")]
#[test]
fn status_marks_a_dead_holders_record_stale() {
    let env = Env::new();
    let mut holder = env.hold("crashed", &[]);
    let dead = holder.pid();
    holder.kill(); // the record stays behind in the file
    let row = status_row(&env, "crashed");
    assert_eq!(row[1], "no", "{row:?}");
    assert!(
        !row[3].contains(&dead.to_string()),
        "a dead process is named as the holder: {row:?}"
    );
    assert!(
        row.iter().any(|c| c.contains("stale")),
        "not marked stale: {row:?}"
    );
    let out = env.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v[0]["stale"], true, "{v}");
}

/// `cleanup` keeps a free file that holds no lockyard record (another
/// tool's lock file, whose lock flock cannot see) unless `--unrecorded`.
#[test]
fn cleanup_keeps_unrecorded_files_unless_asked() {
    let env = Env::new();
    // A lockyard lock creates the directory; then another tool's file.
    let out = env.run(&["exec", "mine", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let foreign = env.dir().join("dpkg.lock");
    std::fs::write(&foreign, b"").unwrap();
    let out = env.run(&["cleanup", "--max-age", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(foreign.exists(), "removed a file with no lockyard record");
    let out = env.run(&["cleanup", "--dry-run", "--max-age", "0", "--unrecorded"]);
    assert!(stdout(&out).contains("dpkg.lock"), "{}", stdout(&out));
    assert!(foreign.exists(), "--dry-run removed something");
    let out = env.run(&["cleanup", "--max-age", "0", "--unrecorded"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!foreign.exists(), "--unrecorded kept it");
}
