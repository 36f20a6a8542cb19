//! `lockyard exec` on file locks: exit codes, contention, timeouts, mutual
//! exclusion, signals and fd hygiene.
#![cfg(unix)]

mod cli_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use cli_support::*;

#[test]
fn exit_code_is_passed_through() {
    let env = Env::new();
    for code in [0, 3, 42, 255] {
        let out = env.run(&["exec", "job", "--", "sh", "-c", &format!("exit {code}")]);
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
    }
    // Without `--` too, and COMMAND's own flags are not taken for ours.
    let out = env.run(&["exec", "job", "sh", "-c", "echo -n x; exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(stdout(&out), "x");
}

#[test]
fn killed_command_gives_128_plus_signal() {
    let env = Env::new();
    for (sig, name) in [(9, "KILL"), (15, "TERM")] {
        let out = env.run(&["exec", "job", "--", "sh", "-c", &format!("kill -{name} $$")]);
        assert_eq!(out.status.code(), Some(128 + sig), "{}", stderr(&out));
    }
}

#[test]
fn missing_or_unrunnable_command_is_127_or_126() {
    let env = Env::new();
    let out = env.run(&["exec", "job", "--", "/nonexistent/command"]);
    assert_clean_failure(&out, 127);
    let out = env.run(&["exec", "job", "--", "/"]);
    assert_clean_failure(&out, 126);
}

#[test]
fn nonblock_on_held_lock_fails_at_once_naming_the_holder() {
    let env = Env::new();
    let holder = env.hold("job", &[]);
    for (extra, code) in [(&[][..], 1), (&["-E", "7"][..], 7), (&["-w", "0"][..], 1)] {
        let mut args = vec!["exec"];
        if extra.first() != Some(&"-w") {
            args.push("-n");
        }
        args.extend_from_slice(extra);
        args.extend_from_slice(&["job", "--", "true"]);
        let start = Instant::now();
        let out = env.run(&args);
        let took = start.elapsed();
        println!("{args:?} returned in {took:?}");
        assert_clean_failure(&out, code);
        // "At once": no waiting at all; the bound only absorbs a loaded machine.
        assert!(took < Duration::from_secs(1), "-n took {took:?}");
        let err = stderr(&out);
        assert!(err.contains(&format!("pid {}", holder.pid())), "{err}");
        assert!(err.contains("since"), "{err}");
    }
    // --quiet: nothing on stderr, same code.
    let out = env.run(&["exec", "-q", "-n", "job", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "");
}

#[test]
fn timeout_is_honoured() {
    let env = Env::new();
    let _holder = env.hold("job", &[]);
    let start = Instant::now();
    let out = env.run(&["exec", "-w", "0.5", "job", "--", "true"]);
    let took = start.elapsed();
    println!(
        "-w 0.5 returned after {:.3}s (bar: 0.5..0.6)",
        took.as_secs_f64()
    );
    assert_clean_failure(&out, 1);
    assert!(stderr(&out).contains("gave up after"), "{}", stderr(&out));
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[test]
fn waiter_runs_once_holder_is_gone() {
    let env = Env::new();
    let mut holder = env.hold("job", &[]);
    let waiter = env
        .cmd(&["exec", "-w", "10", "job", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    holder.kill();
    let mut waiter = Holder { child: waiter };
    assert_eq!(waiter.wait().code(), Some(0));
}

#[test]
fn verbose_reports_holder_and_wait() {
    let env = Env::new();
    let holder = env.hold("job", &[]);
    let out = env.run(&["exec", "-v", "-w", "2.5", "job", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let waiting: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("waiting for lock"))
        .collect();
    assert!(waiting.len() >= 2, "no periodic report: {err}");
    assert!(
        waiting[0].contains(&format!("pid {}", holder.pid())),
        "{err}"
    );
    assert!(
        waiting
            .iter()
            .any(|l| l.contains("waited 1.") || l.contains("waited 2.")),
        "{err}"
    );
}

#[test]
fn exclusive_holders_never_overlap() {
    let env = Env::new();
    let log = env.path("log");
    let script = format!(
        "for i in 1 2 3; do :; done; echo start >> '{0}'; sleep 0.02; echo end >> '{0}'",
        log.display()
    );
    let children: Vec<_> = (0..6)
        .map(|_| {
            env.cmd(&["exec", "-w", "15", "counter", "--", "sh", "-c", &script])
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let mut h = Holder { child };
        assert_eq!(h.wait().code(), Some(0));
    }
    let lines: Vec<String> = read(&log).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 12, "{lines:?}");
    for pair in lines.chunks(2) {
        assert_eq!(pair, ["start", "end"], "overlap in {lines:?}");
    }
}

#[test]
fn shared_holders_overlap_and_exclude_writers() {
    let env = Env::new();
    // Each reader announces itself and waits for the other: both finish only
    // if they hold the shared lock at the same time.
    let (a, b) = (env.path("a"), env.path("b"));
    let script = |me: &std::path::Path, other: &std::path::Path| {
        format!(
            "touch '{}'; i=0; while [ ! -e '{}' ]; do i=$((i+1)); [ $i -gt 400 ] && exit 9; sleep 0.02; done",
            me.display(),
            other.display()
        )
    };
    let (sa, sb) = (script(&a, &b), script(&b, &a));
    let ra = env
        .cmd(&["exec", "-s", "-w", "10", "rw", "--", "sh", "-c", &sa])
        .spawn()
        .unwrap();
    let rb = env
        .cmd(&["exec", "-s", "-w", "10", "rw", "--", "sh", "-c", &sb])
        .spawn()
        .unwrap();
    assert_eq!(
        Holder { child: ra }.wait().code(),
        Some(0),
        "readers did not overlap"
    );
    assert_eq!(
        Holder { child: rb }.wait().code(),
        Some(0),
        "readers did not overlap"
    );

    let _reader = env.hold("rw", &["-s"]);
    let out = env.run(&["exec", "-n", "rw", "--", "true"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a writer got in beside a reader"
    );
    let out = env.run(&["exec", "-n", "-s", "rw", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "a second reader was refused");
}

#[cfg(target_os = "linux")]
#[test]
fn lock_fd_is_not_inherited() {
    let env = Env::new();
    let out = env.run(&["exec", "job", "--", "sh", "-c", "ls -l /proc/self/fd"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!stdout(&out).contains(".lock"), "{}", stdout(&out));

    // A grandchild left running after COMMAND exits must not keep the lock.
    let out = env.run(&[
        "exec",
        "job",
        "--",
        "sh",
        "-c",
        "sleep 20 >/dev/null 2>&1 </dev/null & echo $!",
    ]);
    let grandchild: i32 = stdout(&out).trim().parse().expect("grandchild pid");
    let again = env.run(&["exec", "-n", "job", "--", "true"]);
    // SAFETY: kill only reads its integer arguments.
    unsafe { libc::kill(grandchild, libc::SIGKILL) };
    assert_eq!(
        again.status.code(),
        Some(0),
        "lock kept by grandchild: {}",
        stderr(&again)
    );
}

#[test]
fn signals_are_forwarded_to_command() {
    let env = Env::new();
    for (sig, name) in [
        (libc::SIGTERM, "TERM"),
        (libc::SIGINT, "INT"),
        (libc::SIGHUP, "HUP"),
    ] {
        let ready = env.path(&format!("ready-{name}"));
        let got = env.path(&format!("got-{name}"));
        let script = format!(
            "trap 'echo {name} > \"{got}\"; exit 42' {name}; touch '{ready}'; i=0; \
             while [ $i -lt 1000 ]; do i=$((i+1)); sleep 0.01; done; exit 3",
            got = got.display(),
            ready = ready.display()
        );
        let child = env
            .cmd(&["exec", "job", "--", "sh", "-c", &script])
            .spawn()
            .unwrap();
        let mut h = Holder { child };
        assert!(eventually_blocking(PATIENCE, || ready.exists()));
        h.signal(sig);
        assert_eq!(h.wait().code(), Some(42), "SIG{name} not forwarded");
        assert_eq!(read(&got).trim(), name);
    }
}

#[test]
fn signal_while_waiting_exits_128_plus_signal() {
    let env = Env::new();
    let _holder = env.hold("job", &[]);
    let child = env
        .cmd(&[
            "exec",
            "job",
            "--",
            "touch",
            env.path("ran").to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    let mut waiter = Holder { child };
    std::thread::sleep(Duration::from_millis(200));
    waiter.signal(libc::SIGTERM);
    assert_eq!(waiter.wait().code(), Some(128 + libc::SIGTERM));
    assert!(!env.path("ran").exists(), "COMMAND ran without the lock");
}

#[cfg(target_os = "linux")]
#[test]
fn command_dies_with_lockyard() {
    let env = Env::new();
    let pidfile = env.path("pid");
    let script = format!("echo $$ > '{}'; exec sleep 30", pidfile.display());
    let child = env
        .cmd(&["exec", "job", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let mut h = Holder { child };
    assert!(eventually_blocking(PATIENCE, || read(&pidfile).ends_with('\n')));
    let pid: u32 = read(&pidfile).trim().parse().unwrap();
    assert!(!process_gone(pid));
    h.kill(); // SIGKILL: no chance to forward anything
    assert!(
        eventually_blocking(Duration::from_secs(5), || process_gone(pid)),
        "COMMAND {pid} survived lockyard"
    );
    // ... and the lock is free for the next one.
    assert_eq!(
        env.run(&["exec", "-n", "job", "--", "true"]).status.code(),
        Some(0)
    );
}

/// A Ctrl-C typed at the terminal reaches COMMAND (same foreground process
/// group) once, not a second time through lockyard's forwarding. Runs
/// lockyard on a pseudo-terminal with util-linux `script`.
#[cfg(target_os = "linux")]
#[test]
fn ctrl_c_at_a_terminal_reaches_command_once() {
    use std::io::Write;
    let env = Env::new();
    let (ready, got) = (env.path("ready"), env.path("got"));
    let inner = format!(
        "trap \"echo INT >> {got}\" INT; touch {ready}; i=0; \
         while [ $i -lt 300 ]; do i=$((i+1)); sleep 0.01; done",
        got = got.display(),
        ready = ready.display()
    );
    let line = format!("{} exec job -- sh -c '{inner}'", bin());
    let mut h = at_terminal(&env, &line, &ready);
    let mut stdin = h.child.stdin.take().unwrap();
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    h.wait();
    drop(stdin);
    assert_eq!(
        read(&got),
        "INT\n",
        "COMMAND saw Ctrl-C a wrong number of times"
    );
}
