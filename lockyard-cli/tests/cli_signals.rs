//! `lockyard exec` and signals as cron, systemd, nohup and terminals send
//! them: ignored signals stay ignored, a signal to the whole process group
//! reaches COMMAND once, every catchable signal is forwarded, job control
//! stops and continues COMMAND.
#![cfg(target_os = "linux")]

mod cli_support;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use cli_support::*;

/// Starts `lockyard exec job -- sh -c SCRIPT` as the leader of its own
/// process group (as cron and systemd start a job) and waits for `ready`.
fn start_in_own_group(env: &Env, script: &str, ready: &std::path::Path) -> Holder {
    let child = env
        .cmd(&["exec", "job", "--", "sh", "-c", script])
        .process_group(0)
        .spawn()
        .expect("spawn lockyard");
    let h = Holder { child };
    assert!(
        eventually_blocking(PATIENCE, || ready.exists()),
        "COMMAND never ran"
    );
    h
}

/// Lets COMMAND finish and returns lockyard's exit code.
fn finish(h: &mut Holder, go: &std::path::Path) -> Option<i32> {
    // Time for a late (duplicate) delivery to show up first.
    std::thread::sleep(Duration::from_millis(300));
    touch(go);
    h.wait().code()
}

#[test]
fn signal_ignored_by_the_caller_stays_ignored_and_is_not_forwarded() {
    let env = Env::new();
    let (ready, go, ign) = (env.path("ready"), env.path("go"), env.path("sigign"));
    let script = format!(
        "grep SigIgn /proc/$$/status > '{ign}'; touch '{ready}'; i=0; \
         while [ ! -e '{go}' ] && [ $i -lt 1000 ]; do i=$((i+1)); sleep 0.01; done; exit 0",
        ign = ign.display(),
        ready = ready.display(),
        go = go.display()
    );
    // nohup(1) sets SIGHUP to ignored and execs lockyard; the other
    // signals start at their defaults, whatever the suite was started with.
    let child = default_signals(&mut Command::new("nohup"))
        .arg(bin())
        .args(["exec", "job", "--", "sh", "-c", &script])
        .env("LOCKYARD_DIR", env.dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir(env.tmp.path())
        .process_group(0)
        .spawn()
        .expect("nohup");
    let mut h = Holder { child };
    assert!(
        eventually_blocking(PATIENCE, || ready.exists()),
        "COMMAND never ran"
    );
    let mask = read(&ign);
    let mask = u64::from_str_radix(mask.trim().trim_start_matches("SigIgn:").trim(), 16)
        .expect("SigIgn mask");
    assert_ne!(
        mask & (1 << (libc::SIGHUP - 1)),
        0,
        "COMMAND lost the ignored SIGHUP"
    );
    // A hangup, to lockyard and to its whole group: nobody dies of it.
    h.signal(libc::SIGHUP);
    kill(-(h.pid() as i32), libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        h.child.try_wait().unwrap(),
        None,
        "lockyard died of an ignored SIGHUP"
    );
    touch(&go);
    assert_eq!(
        h.wait().code(),
        Some(0),
        "COMMAND died of an ignored SIGHUP"
    );
}

#[test]
fn signal_to_the_process_group_reaches_command_once() {
    for (sig, name) in [
        (libc::SIGTERM, "TERM"),
        (libc::SIGHUP, "HUP"),
        (libc::SIGINT, "INT"),
    ] {
        let env = Env::new();
        let (ready, go, got) = (env.path("ready"), env.path("go"), env.path("got"));
        let script = trap_script(&[name], &got, &ready, &go);
        let mut h = start_in_own_group(&env, &script, &ready);
        // systemd's stop, a terminal hangup: the signal goes to the group.
        kill(-(h.pid() as i32), sig);
        assert_eq!(finish(&mut h, &go), Some(0), "SIG{name}");
        assert_eq!(read(&got), format!("{name}\n"), "SIG{name} to the group");
    }
}

#[test]
fn signal_to_lockyard_alone_reaches_command_once() {
    let env = Env::new();
    let (ready, go, got) = (env.path("ready"), env.path("go"), env.path("got"));
    let script = trap_script(&["TERM"], &got, &ready, &go);
    let mut h = start_in_own_group(&env, &script, &ready);
    h.signal(libc::SIGTERM);
    assert_eq!(finish(&mut h, &go), Some(0));
    assert_eq!(read(&got), "TERM\n");
}

#[test]
fn quit_usr1_usr2_winch_and_cont_are_forwarded_not_fatal() {
    let names = ["QUIT", "USR1", "USR2", "WINCH", "CONT"];
    let sigs = [
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
        libc::SIGCONT,
    ];
    let env = Env::new();
    let (ready, go, got) = (env.path("ready"), env.path("go"), env.path("got"));
    let script = trap_script(&names, &got, &ready, &go);
    let mut h = start_in_own_group(&env, &script, &ready);
    for (sig, name) in sigs.into_iter().zip(names) {
        h.signal(sig);
        let want = format!("{name}\n");
        assert!(
            eventually_blocking(Duration::from_secs(5), || read(&got).ends_with(&want)),
            "SIG{name} not forwarded: got {:?}",
            read(&got)
        );
        assert_eq!(
            h.child.try_wait().unwrap(),
            None,
            "SIG{name} killed lockyard"
        );
    }
    assert_eq!(finish(&mut h, &go), Some(0));
    assert_eq!(read(&got), "QUIT\nUSR1\nUSR2\nWINCH\nCONT\n");
}

#[test]
fn sigtstp_stops_command_and_sigcont_resumes_it() {
    for to_group in [false, true] {
        let env = Env::new();
        let (ready, pidfile) = (env.path("ready"), env.path("pid"));
        // COMMAND is `sleep` itself: a shell loop would vfork, and a stop
        // that catches the vfork child leaves the shell in D, not T.
        let script = format!(
            "echo $$ > '{pid}'; touch '{ready}'; exec sleep 30",
            pid = pidfile.display(),
            ready = ready.display(),
        );
        let mut h = start_in_own_group(&env, &script, &ready);
        let command: u32 = read(&pidfile).trim().parse().expect("COMMAND pid");
        let target = if to_group {
            -(h.pid() as i32)
        } else {
            h.pid() as i32
        };
        kill(target, libc::SIGTSTP);
        assert!(
            eventually_blocking(Duration::from_secs(5), || process_state(command)
                == Some('T')),
            "COMMAND not stopped by SIGTSTP (to group: {to_group}): {:?}",
            process_state(command)
        );
        assert!(
            eventually_blocking(Duration::from_secs(5), || process_state(h.pid())
                == Some('T')),
            "lockyard did not stop with COMMAND (to group: {to_group})"
        );
        kill(target, libc::SIGCONT);
        assert!(
            eventually_blocking(Duration::from_secs(5), || {
                !matches!(process_state(command), Some('T'))
                    && !matches!(process_state(h.pid()), Some('T'))
            }),
            "SIGCONT did not resume COMMAND and lockyard (to group: {to_group})"
        );
        h.signal(libc::SIGTERM);
        assert_eq!(h.wait().code(), Some(128 + libc::SIGTERM));
    }
}

/// Ctrl-C at a terminal, with lockyard's own stdio redirected away from
/// it (as `lockyard exec ... </dev/null >log 2>&1` typed at a prompt):
/// COMMAND sees it once. Runs on a pseudo-terminal with util-linux `script`.
#[test]
fn ctrl_c_with_redirected_stdio_reaches_command_once() {
    use std::io::Write;
    for _ in 0..3 {
        let env = Env::new();
        let (ready, go, got) = (env.path("ready"), env.path("go"), env.path("got"));
        let file = env.path("command.sh");
        std::fs::write(&file, trap_script(&["INT"], &got, &ready, &go)).unwrap();
        let line = format!(
            "{} exec job -- sh '{}' </dev/null >/dev/null 2>&1",
            bin(),
            file.display()
        );
        let mut h = at_terminal(&env, &line, &ready);
        let mut stdin = h.child.stdin.take().unwrap();
        stdin.write_all(b"\x03").unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        touch(&go);
        h.wait();
        drop(stdin);
        assert_eq!(
            read(&got),
            "INT\n",
            "COMMAND saw Ctrl-C a wrong number of times"
        );
    }
}

/// Ctrl-Z at a terminal stops COMMAND (its group has the terminal) and
/// lockyard with it, so a shell sees the job stopped; SIGCONT to lockyard
/// resumes both.
#[test]
fn ctrl_z_at_a_terminal_stops_command_and_lockyard() {
    use std::io::Write;
    let env = Env::new();
    let (ready, pids) = (env.path("ready"), env.path("pids"));
    let file = env.path("command.sh");
    // `sleep` itself, not a shell loop (see the SIGTSTP test).
    std::fs::write(
        &file,
        format!(
            "echo $$ $PPID > '{pids}'; touch '{ready}'; exec sleep 30",
            pids = pids.display(),
            ready = ready.display(),
        ),
    )
    .unwrap();
    let line = format!("{} exec job -- sh '{}'", bin(), file.display());
    let mut h = at_terminal(&env, &line, &ready);
    let ids: Vec<u32> = read(&pids)
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    let (command, lockyard) = (ids[0], ids[1]);
    let mut stdin = h.child.stdin.take().unwrap();
    stdin.write_all(b"\x1a").unwrap();
    stdin.flush().unwrap();
    let stopped = eventually_blocking(Duration::from_secs(5), || {
        process_state(command) == Some('T') && process_state(lockyard) == Some('T')
    });
    let states = (process_state(command), process_state(lockyard));
    // script(1) stops itself when its child (lockyard) stops, as a shell
    // would see the job: continue both, as `fg` would.
    kill(h.pid() as i32, libc::SIGCONT);
    kill(lockyard as i32, libc::SIGCONT);
    let resumed = eventually_blocking(Duration::from_secs(5), || {
        process_state(command) != Some('T') && process_state(lockyard) != Some('T')
    });
    kill(lockyard as i32, libc::SIGTERM);
    h.wait();
    drop(stdin);
    assert!(stopped, "Ctrl-Z: COMMAND and lockyard states {states:?}");
    assert!(resumed, "SIGCONT did not resume both");
}
