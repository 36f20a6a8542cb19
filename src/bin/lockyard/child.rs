//! Running COMMAND: spawning it (with a parent-death signal on Linux),
//! forwarding signals to it, and terminating it when the lock is lost.

use std::ffi::OsString;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::exit::{self, CliError};

/// How long COMMAND gets between SIGTERM and SIGKILL once the lock is lost.
pub(crate) const LOST_GRACE: Duration = Duration::from_secs(5);

/// The signals lockyard forwards to COMMAND (and, while it waits for the
/// lock, exits on with 128+signal).
#[cfg(unix)]
const FORWARDED: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Signal streams, installed before the lock is awaited so that a SIGTERM
/// during the wait is handled (the wait is abandoned) rather than fatal.
#[derive(Debug)]
pub(crate) struct Signals {
    #[cfg(unix)]
    streams: Vec<(i32, tokio::signal::unix::Signal)>,
}

impl Signals {
    pub(crate) fn install() -> Result<Self, CliError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut streams = Vec::with_capacity(FORWARDED.len());
            for sig in FORWARDED {
                let stream = signal(SignalKind::from_raw(sig)).map_err(|e| {
                    CliError::new(exit::OS_ERR, format!("cannot handle signal {sig}: {e}"))
                })?;
                streams.push((sig, stream));
            }
            Ok(Self { streams })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// The next forwarded signal received. Cancel safe.
    pub(crate) async fn recv(&mut self) -> i32 {
        #[cfg(unix)]
        {
            std::future::poll_fn(|cx| {
                for (sig, stream) in &mut self.streams {
                    if let std::task::Poll::Ready(Some(())) = stream.poll_recv(cx) {
                        return std::task::Poll::Ready(*sig);
                    }
                }
                std::task::Poll::Pending
            })
            .await
        }
        #[cfg(not(unix))]
        {
            // Console Ctrl-C reaches COMMAND directly on Windows.
            std::future::pending().await
        }
    }
}

/// Starts COMMAND with inherited stdio and environment, where `envs` sets
/// (`Some`) or removes (`None`) variables.
///
/// Must be called on the thread that lives as long as lockyard (the main
/// thread): Linux delivers the parent-death signal when the *thread* that
/// forked the child exits.
pub(crate) fn spawn(
    command: &[OsString],
    envs: &[(&str, Option<String>)],
) -> Result<Child, CliError> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| CliError::usage("no COMMAND given"))?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (key, value) in envs {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    #[cfg(target_os = "linux")]
    set_parent_death_signal(&mut cmd);
    cmd.spawn().map_err(|e| {
        let program = program.to_string_lossy();
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
    })
}

/// If lockyard dies (even by SIGKILL), COMMAND gets SIGKILL: the kernel drops
/// lockyard's lock at that moment, so COMMAND must not go on unprotected.
/// (SIGKILL rather than SIGTERM: a COMMAND that lingered on SIGTERM would
/// already overlap the next holder.)
#[cfg(target_os = "linux")]
fn set_parent_death_signal(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe functions may be called; `arm_parent_death_signal`
    // makes two syscalls (prctl, getppid) and does not allocate (its errors
    // are raw OS error codes).
    unsafe {
        cmd.pre_exec(move || arm_parent_death_signal(parent));
    }
}

#[cfg(target_os = "linux")]
fn arm_parent_death_signal(parent: u32) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only reads its integer arguments.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    // lockyard may have died between fork and prctl, in which case no signal
    // will ever come: we were re-parented, so getppid no longer names it.
    // SAFETY: getppid has no preconditions and cannot fail.
    let ppid = unsafe { libc::getppid() };
    if u32::try_from(ppid).ok() != Some(parent) {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// How COMMAND ended.
#[derive(Debug)]
pub(crate) enum End {
    /// It exited or was killed by a signal on its own (or by a forwarded one).
    Exited(ExitStatus),
    /// The lock was lost; COMMAND was terminated.
    LockLost,
}

/// Waits for COMMAND, forwarding signals; if `lost` completes first, sends
/// SIGTERM, then SIGKILL after [`LOST_GRACE`].
pub(crate) async fn supervise(
    child: &mut Child,
    signals: &mut Signals,
    lost: impl Future<Output = ()>,
) -> Result<End, CliError> {
    tokio::pin!(lost);
    loop {
        tokio::select! {
            status = child.wait() => return Ok(End::Exited(status.map_err(wait_error)?)),
            sig = signals.recv() => forward(child, sig),
            () = &mut lost => break,
        }
    }
    terminate(child, signals).await?;
    Ok(End::LockLost)
}

async fn terminate(child: &mut Child, signals: &mut Signals) -> Result<(), CliError> {
    #[cfg(unix)]
    send(child, libc::SIGTERM);
    #[cfg(not(unix))]
    let _ = child.start_kill();
    let grace = tokio::time::sleep(LOST_GRACE);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            status = child.wait() => { status.map_err(wait_error)?; return Ok(()); }
            sig = signals.recv() => forward(child, sig),
            () = &mut grace => break,
        }
    }
    tracing::warn!(
        "COMMAND still runs {}s after SIGTERM: sending SIGKILL",
        LOST_GRACE.as_secs()
    );
    // start_kill sends SIGKILL (TerminateProcess on Windows).
    let _ = child.start_kill();
    child.wait().await.map_err(wait_error)?;
    Ok(())
}

/// Passes a signal lockyard received on to COMMAND, except a SIGINT the
/// terminal sent to its whole foreground process group, COMMAND included: a
/// second copy would turn one Ctrl-C into two.
fn forward(child: &Child, sig: i32) {
    #[cfg(unix)]
    if sig == libc::SIGINT && in_terminal_foreground() {
        tracing::info!("SIGINT came from the terminal, which sent it to COMMAND too");
        return;
    }
    tracing::info!("forwarding signal {sig} to COMMAND");
    send(child, sig);
}

/// Whether lockyard's process group (which COMMAND shares) is the
/// foreground group of the terminal on stdin, stderr or stdout.
#[cfg(unix)]
fn in_terminal_foreground() -> bool {
    // SAFETY: getpgrp has no preconditions and cannot fail.
    let own = unsafe { libc::getpgrp() };
    [0, 2, 1].into_iter().any(|fd| {
        // SAFETY: tcgetpgrp only queries `fd`; a descriptor that is closed or
        // not a terminal gives -1.
        let fg = unsafe { libc::tcgetpgrp(fd) };
        fg != -1 && fg == own
    })
}

/// Sends `sig` to COMMAND if it has not been reaped yet.
fn send(child: &Child, sig: i32) {
    #[cfg(unix)]
    if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill only reads its integer arguments. `child.id()` is Some
        // only until the child is reaped, so the pid cannot have been reused
        // by another process.
        unsafe {
            libc::kill(pid, sig);
        }
    }
    #[cfg(not(unix))]
    let _ = (child, sig);
}

fn wait_error(e: io::Error) -> CliError {
    CliError::new(exit::OS_ERR, format!("cannot wait for COMMAND: {e}"))
}

/// lockyard's exit code for COMMAND's status: its code, or 128+signal.
pub(crate) fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        // Unix codes are 0..=255; a wider Windows code must not become 0.
        return u8::try_from(code).unwrap_or(u8::MAX);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return u8::try_from(128 + sig).unwrap_or(u8::MAX);
        }
    }
    exit::SOFTWARE
}
