//! Running COMMAND under the lock: the child supervisor.
//!
//! # The rules (Unix)
//!
//! 1. **COMMAND's tree is one process group, led by a group keeper.** Before
//!    COMMAND, lockyard starts itself again as a *group keeper* (`lockyard
//!    __group-keeper`) in a new process group, and COMMAND joins that group.
//!    The keeper ignores every signal but SIGKILL and blocks reading a pipe
//!    whose only writer is lockyard; when lockyard dies, even by SIGKILL,
//!    the read returns and the keeper SIGKILLs its whole group. While the
//!    keeper lives the group's id cannot be reused, so signalling the
//!    group never reaches a stranger.
//! 2. **lockyard is a child subreaper** (Linux): a descendant orphaned by its
//!    parent is re-parented to lockyard, not to init, so lockyard sees every
//!    descendant, even one that left the group (`setsid`), as its own child.
//! 3. **The lock outlives the tree.** When COMMAND exits, or the lock is lost,
//!    every remaining descendant gets SIGTERM, then SIGKILL after [`GRACE`];
//!    only then is the lock released. COMMAND itself also has a parent-death
//!    signal (SIGKILL, Linux). Limit: if lockyard is SIGKILLed, a descendant
//!    that left COMMAND's process group (`setsid`, a daemon) survives it.
//! 4. **Forwarding: once, to the group.** Every signal lockyard handles
//!    (HUP, INT, QUIT, TERM, USR1, USR2, ALRM, WINCH, CONT, TSTP) is sent on
//!    to COMMAND's group. COMMAND is not in lockyard's process group, so a
//!    signal sent to lockyard's group (systemd's stop, a hangup, `kill --
//!    -PGID`) reaches COMMAND only through lockyard: once. (systemd's default
//!    `KillMode=control-group` also signals COMMAND directly: use
//!    `KillMode=mixed` to have it sent once.)
//! 5. **The terminal goes to COMMAND, as a shell gives it to a job.** If
//!    lockyard is in the foreground of its controlling terminal, it makes
//!    COMMAND's group the foreground group, so Ctrl-C, Ctrl-\, Ctrl-Z and
//!    window changes go from the terminal to COMMAND alone (once, whatever
//!    lockyard's stdio is), and COMMAND may read the terminal. lockyard takes
//!    the terminal back at the end.
//! 6. **Ignored stays ignored.** A signal ignored when lockyard started
//!    (`nohup`, `trap '' HUP`) is neither handled nor forwarded, and COMMAND
//!    starts with it ignored.
//! 7. **Job control.** When COMMAND stops on SIGTSTP, SIGTTIN or SIGTTOU,
//!    lockyard stops too (SIGSTOP), so a shell sees the job stopped; the
//!    SIGCONT that resumes lockyard is forwarded and, in the foreground,
//!    the terminal is handed to COMMAND again.
//!
//! Only processes lockyard has not reaped yet are signalled by pid, so a
//! pid is never reused under it.

#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(not(unix))]
pub(crate) use other::*;

use std::ffi::OsString;
use std::time::Duration;

use lockyard::Lost;

use crate::args::ExecArgs;
use crate::exit::{self, CliError};
use crate::signals::Signals;

/// How long COMMAND's tree gets between SIGTERM and SIGKILL once the lock
/// is lost, or once COMMAND has exited and left descendants behind.
pub(crate) const GRACE: Duration = Duration::from_secs(5);

/// How COMMAND ended.
#[derive(Debug)]
pub(crate) enum End {
    /// It exited: lockyard's exit code for it (its code, or 128+signal).
    Exited(u8),
    /// The lock was lost; COMMAND's tree was terminated.
    LockLost,
}

/// Runs COMMAND while the caller holds lock `name` and returns lockyard's
/// exit code: COMMAND's, 128+signal, or [`exit::LOCK_LOST`] when `lost` fired.
/// When this returns, no process of COMMAND's tree is left.
pub(crate) async fn run_locked(
    args: &ExecArgs,
    envs: &[(&str, Option<String>)],
    lost: Lost,
    signals: &mut Signals,
) -> Result<u8, CliError> {
    let name = args.lock_name();
    let command = match &args.shell_command {
        Some(line) => shell_command(line),
        None => args.command.clone(),
    };
    let child = spawn(&command, envs, signals)?;
    match child
        .supervise(signals, lost, args.on_suspect, args.close)
        .await
    {
        End::Exited(code) => Ok(code),
        End::LockLost => Err(CliError::new(
            exit::LOCK_LOST,
            format!(
                "lock `{}` was lost while COMMAND ran; COMMAND was terminated",
                lockyard::Escaped(name)
            ),
        )),
    }
}

/// `-c LINE`: `$SHELL -c LINE` if `$SHELL` is an absolute path, else
/// `/bin/sh -c LINE` (as flock(1)).
fn shell_command(line: &str) -> Vec<OsString> {
    let shell = std::env::var_os("SHELL")
        .filter(|s| std::path::Path::new(s).is_absolute())
        .unwrap_or_else(|| OsString::from("/bin/sh"));
    vec![shell, OsString::from("-c"), OsString::from(line)]
}

/// lockyard's exit code when it ends on signal `sig`: 128+sig.
pub(crate) fn signal_exit(sig: i32) -> u8 {
    u8::try_from(128 + sig).unwrap_or(u8::MAX)
}

#[cfg(unix)]
mod unix {
    use std::collections::HashSet;
    use std::ffi::OsString;
    use std::fs::File;
    use std::io::{self, PipeWriter};
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    use std::time::Instant;

    use std::future::Future;
    use std::pin::Pin;

    use lockyard::{LeaseState, Lost};
    use rustix::process::{Pid, Signal as Sig, WaitOptions, WaitStatus};

    use super::{End, GRACE, signal_exit};
    use crate::exit::{self, CliError};
    use crate::signals::{Signals, stop_self};
    use crate::{group_keeper, terminal};

    /// Completes when `lost` becomes suspect (after it is held again first,
    /// if `rearm`); never without `--on-suspect`.
    fn suspect_watch(
        lost: &Lost,
        on_suspect: Option<i32>,
        rearm: bool,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        if on_suspect.is_none() {
            return Box::pin(std::future::pending());
        }
        let lost = lost.clone();
        Box::pin(async move {
            if rearm {
                while lost.state() == LeaseState::Suspect {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
            lost.suspect().await;
        })
    }

    /// The stops that are job control (rule 7); a plain SIGSTOP is not.
    const JOB_STOPS: [i32; 3] = [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU];

    /// Sends `sig` to `pid`; an error (it is gone) changes nothing.
    fn send(pid: Pid, sig: i32) {
        if let Some(sig) = Sig::from_named_raw(sig) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// COMMAND, its group and its keeper, while lockyard supervises them.
    #[derive(Debug)]
    pub(crate) struct Child {
        command: Pid,
        /// COMMAND's process group: the keeper's pid.
        group: Pid,
        /// `None` once the keeper was reaped (then the group is not
        /// signalled any more: its id could be reused).
        keeper: Option<Pid>,
        /// Held until the end: the keeper acts when its last writer closes.
        _keeper_pipe: PipeWriter,
        /// Our controlling terminal, if we handed it to COMMAND's group.
        terminal: Option<File>,
        status: Option<WaitStatus>,
    }

    /// Starts the keeper and COMMAND (rule 1), with inherited stdio and
    /// environment, where `envs` sets (`Some`) or removes (`None`)
    /// variables.
    ///
    /// Must be called on the thread that lives as long as lockyard (the main
    /// thread): Linux delivers the parent-death signal when the *thread*
    /// that forked the child exits.
    pub(crate) fn spawn(
        command: &[OsString],
        envs: &[(&str, Option<String>)],
        signals: &Signals,
    ) -> Result<Child, CliError> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| CliError::usage("no COMMAND given"))?;
        let os_err = |what: &str, e: io::Error| CliError::new(exit::OS_ERR, format!("{what}: {e}"));
        #[cfg(target_os = "linux")]
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(|e| os_err("cannot become a child subreaper", e.into()))?;
        let (reader, writer) = io::pipe().map_err(|e| os_err("cannot create a pipe", e))?;
        let keeper =
            group_keeper::spawn(reader).map_err(|e| os_err("cannot start the keeper", e))?;
        let group = keeper;
        let terminal = terminal::hand_to(group);

        let mut cmd = Command::new(program);
        cmd.args(args).process_group(group.as_raw_pid());
        for (key, value) in envs {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        let ignored = signals.ignored.clone();
        let parent = rustix::process::getpid();
        // SAFETY: the closure runs in the forked child before exec, where
        // only async-signal-safe functions may be called: it makes
        // signal(2), prctl(2) and getppid(2) calls and does not allocate
        // (`ignored` was moved in; errors are raw OS codes).
        unsafe {
            cmd.pre_exec(move || prepare_command(&ignored, parent));
        }
        let spawned = cmd.spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                terminal::restore(terminal.as_ref(), group);
                send(keeper, libc::SIGKILL);
                let _ = rustix::process::waitpid(Some(keeper), WaitOptions::empty());
                return Err(spawn_error(&program.to_string_lossy(), &e));
            }
        };
        // lockyard reaps COMMAND itself (`reap`); the std handle only closes.
        let command = Pid::from_child(&child);
        drop(child);
        tracing::debug!("started COMMAND as pid {command} in process group {group}");
        Ok(Child {
            command,
            group,
            keeper: Some(keeper),
            _keeper_pipe: writer,
            terminal,
            status: None,
        })
    }

    fn spawn_error(program: &str, e: &io::Error) -> CliError {
        match e.kind() {
            io::ErrorKind::NotFound => {
                CliError::new(exit::NOT_FOUND, format!("{program}: command not found"))
            }
            io::ErrorKind::PermissionDenied => CliError::new(
                exit::CANNOT_EXECUTE,
                format!("{program}: permission denied"),
            ),
            _ => CliError::new(exit::OS_ERR, format!("cannot run {program}: {e}")),
        }
    }

    /// In COMMAND, between fork and exec: re-ignore what the caller ignored
    /// (rule 6) and arm the parent-death signal (Linux).
    fn prepare_command(ignored: &[i32], parent: Pid) -> io::Result<()> {
        for &sig in ignored {
            // SAFETY: setting SIG_IGN is async-signal-safe and touches no
            // memory of ours.
            unsafe {
                libc::signal(sig, libc::SIG_IGN);
            }
        }
        #[cfg(target_os = "linux")]
        {
            rustix::process::set_parent_process_death_signal(Some(Sig::KILL))?;
            // lockyard may have died between fork and prctl, in which case
            // no signal will ever come: we were re-parented.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = parent;
        Ok(())
    }

    impl Child {
        /// Waits for COMMAND, forwarding signals (rule 4) and following its
        /// stops (rule 7); if `lost` completes first, terminates the tree.
        /// Either way no descendant is left when this returns (rule 3).
        ///
        /// With `close` (`-o`), a COMMAND that exits leaves its remaining
        /// processes running, and the lock is released at once.
        pub(crate) async fn supervise(
            mut self,
            signals: &mut Signals,
            lost: Lost,
            on_suspect: Option<i32>,
            close: bool,
        ) -> End {
            let lost_now = lost.clone();
            tokio::pin!(lost_now);
            let mut suspect = suspect_watch(&lost, on_suspect, false);
            self.reap();
            let end = loop {
                if let Some(status) = self.status {
                    tracing::debug!("COMMAND ended: {status:?}");
                    break End::Exited(exit_code(status));
                }
                tokio::select! {
                    biased;
                    () = &mut lost_now => break End::LockLost,
                    () = &mut suspect => {
                        if let Some(sig) = on_suspect
                            && lost.state() == LeaseState::Suspect
                        {
                            tracing::warn!(
                                signal = sig,
                                "the lease is suspect (a renewal failed): signalling COMMAND"
                            );
                            self.signal_group(sig);
                        }
                        // Again once the lease has been renewed.
                        suspect = suspect_watch(&lost, on_suspect, true);
                    }
                    event = signals.next() => match event {
                        None => self.reap(),
                        Some(sig) => self.on_signal(sig),
                    },
                }
            };
            if close && matches!(end, End::Exited(_)) {
                tracing::debug!("-o: leaving COMMAND's remaining processes running");
                self.release_group();
            } else {
                self.stop_tree(signals).await;
            }
            end
        }

        /// Reaps every child that changed state: COMMAND (exit or stop),
        /// the keeper, orphaned descendants.
        fn reap(&mut self) {
            let opts = WaitOptions::NOHANG | WaitOptions::UNTRACED | WaitOptions::CONTINUED;
            while let Ok(Some((pid, status))) = rustix::process::wait(opts) {
                if pid == self.command {
                    if status.exited() || status.signaled() {
                        self.status = Some(status);
                    } else if let Some(sig) = status.stopping_signal() {
                        self.on_command_stopped(sig);
                    }
                } else if Some(pid) == self.keeper && (status.exited() || status.signaled()) {
                    tracing::warn!("the keeper of COMMAND's process group died: {status:?}");
                    self.keeper = None;
                }
            }
        }

        /// Rule 7.
        fn on_command_stopped(&mut self, sig: i32) {
            if !JOB_STOPS.contains(&sig) {
                return;
            }
            if matches!(sig, libc::SIGTTIN | libc::SIGTTOU) && self.take_foreground() {
                // It touched the terminal while lockyard was in the
                // background; lockyard is in the foreground now.
                self.signal_group(libc::SIGCONT);
                return;
            }
            tracing::info!("COMMAND stopped (signal {sig}): stopping too");
            stop_self();
        }

        /// Rule 5 again after a stop: if lockyard is in the foreground of the
        /// terminal, hands it to COMMAND's group.
        fn take_foreground(&mut self) -> bool {
            if self.terminal.is_none() {
                self.terminal = terminal::hand_to(self.group);
                return self.terminal.is_some();
            }
            let Some(tty) = &self.terminal else {
                return false;
            };
            let own = rustix::process::getpgrp();
            rustix::termios::tcgetpgrp(tty).ok() == Some(own)
                && rustix::termios::tcsetpgrp(tty, self.group).is_ok()
        }

        fn on_signal(&mut self, sig: i32) {
            if sig == libc::SIGCONT {
                self.take_foreground();
            }
            tracing::info!("forwarding signal {sig} to COMMAND's process group");
            self.signal_group(sig);
        }

        /// Sends `sig` to COMMAND's group while its keeper (which keeps
        /// the group id from being reused) is unreaped.
        fn signal_group(&self, sig: i32) {
            if let (Some(_), Some(sig)) = (self.keeper, Sig::from_named_raw(sig)) {
                let _ = rustix::process::kill_process_group(self.group, sig);
            }
        }

        /// Rule 3: SIGTERM to every remaining descendant, SIGKILL after
        /// [`GRACE`]; then the keeper goes and the terminal comes back.
        async fn stop_tree(&mut self, signals: &mut Signals) {
            let deadline = Instant::now() + GRACE;
            let mut termed = HashSet::new();
            let mut first = true;
            loop {
                self.reap();
                let rest = self.descendants();
                if rest.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        "COMMAND's processes still run {}s after SIGTERM: sending SIGKILL",
                        GRACE.as_secs()
                    );
                    self.kill_tree().await;
                    break;
                }
                if first {
                    tracing::info!("COMMAND left {} processes: sending SIGTERM", rest.len());
                    self.signal_group(libc::SIGTERM);
                    first = false;
                }
                for pid in rest {
                    if termed.insert(pid) {
                        send(pid, libc::SIGTERM);
                    }
                }
                let tick = tokio::time::sleep(std::time::Duration::from_millis(20));
                tokio::select! {
                    () = tick => {}
                    event = signals.next() => if let Some(sig) = event {
                        self.on_signal(sig);
                    },
                }
            }
            self.release_group();
        }

        /// Gives the terminal back and ends the keeper (with SIGKILL, so
        /// it does not kill the group).
        fn release_group(&mut self) {
            terminal::restore(self.terminal.as_ref(), self.group);
            if let Some(keeper) = self.keeper.take() {
                send(keeper, libc::SIGKILL);
                let _ = rustix::process::waitpid(Some(keeper), WaitOptions::empty());
            }
        }

        /// SIGKILL to the group and to every child until none is left
        /// (orphans of the killed keep arriving for a moment).
        async fn kill_tree(&mut self) {
            self.signal_group(libc::SIGKILL);
            let give_up = Instant::now() + GRACE;
            loop {
                self.reap();
                let rest = self.descendants();
                if rest.is_empty() {
                    return;
                }
                if Instant::now() >= give_up {
                    tracing::warn!("could not kill COMMAND's processes {rest:?}");
                    return;
                }
                for pid in rest {
                    send(pid, libc::SIGKILL);
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }

        /// lockyard's live children other than the keeper: with lockyard a
        /// subreaper, every descendant of COMMAND is one of them or below
        /// one of them.
        fn descendants(&self) -> Vec<Pid> {
            let me = rustix::process::getpid();
            let Ok(dir) = std::fs::read_dir("/proc") else {
                return Vec::new();
            };
            dir.filter_map(|entry| {
                let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
                let state = fields.next()?;
                let ppid: i32 = fields.next()?.parse().ok()?;
                let pid = Pid::from_raw(pid)?;
                (ppid == me.as_raw_pid() && state != "Z" && Some(pid) != self.keeper).then_some(pid)
            })
            .collect()
        }
    }

    /// lockyard's exit code for COMMAND's status: its code, or 128+signal.
    fn exit_code(status: WaitStatus) -> u8 {
        if let Some(code) = status.exit_status() {
            return u8::try_from(code).unwrap_or(u8::MAX);
        }
        status
            .terminating_signal()
            .map_or(exit::SOFTWARE, signal_exit)
    }
}

/// Outside Unix: COMMAND is waited for and killed when the lock is lost;
/// there are no signals to forward and no process groups.
#[cfg(not(unix))]
mod other {
    use std::ffi::OsString;

    use super::End;
    use crate::exit::{self, CliError};
    use crate::signals::Signals;

    #[derive(Debug)]
    pub(crate) struct Child(tokio::process::Child);

    pub(crate) fn spawn(
        command: &[OsString],
        envs: &[(&str, Option<String>)],
        _: &Signals,
    ) -> Result<Child, CliError> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| CliError::usage("no COMMAND given"))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args);
        for (key, value) in envs {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd.spawn().map(Child).map_err(|e| {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::OS_ERR,
            };
            CliError::new(
                code,
                format!("cannot run {}: {e}", program.to_string_lossy()),
            )
        })
    }

    impl Child {
        pub(crate) async fn supervise(
            mut self,
            _: &mut Signals,
            lost: lockyard::Lost,
            _on_suspect: Option<i32>,
            _close: bool,
        ) -> End {
            tokio::select! {
                status = self.0.wait() => End::Exited(status.ok().and_then(|s| s.code())
                    .map_or(exit::SOFTWARE, |c| u8::try_from(c).unwrap_or(u8::MAX))),
                () = lost => {
                    let _ = self.0.start_kill();
                    let _ = self.0.wait().await;
                    End::LockLost
                }
            }
        }
    }
}
