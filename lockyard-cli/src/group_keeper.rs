//! The group keeper (rule 1 of `supervisor.rs`): lockyard run again as
//! `lockyard __group-keeper`, the leader of COMMAND's process group, which
//! SIGKILLs that group when lockyard dies. (Not to be confused with Redis
//! Sentinel, the only "sentinel" in lockyard.)

/// The hidden first argument that makes lockyard a group keeper.
pub(crate) const KEEPER_ARG: &str = "__group-keeper";

#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(unix)]
mod unix {
    use std::io::{self, Read};
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, ExitCode, Stdio};

    use rustix::process::{Pid, Signal as Sig};

    use super::KEEPER_ARG;
    use crate::exit;
    use crate::signals::HANDLED;

    /// Starts `lockyard __group-keeper` as the leader of a new process group,
    /// reading `reader`.
    pub(crate) fn spawn(reader: io::PipeReader) -> io::Result<Pid> {
        #[cfg(target_os = "linux")]
        let exe = std::path::PathBuf::from("/proc/self/exe");
        #[cfg(not(target_os = "linux"))]
        let exe = std::env::current_exe()?;
        let child = Command::new(exe)
            .arg(KEEPER_ARG)
            .stdin(Stdio::from(reader))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        Ok(Pid::from_child(&child))
    }

    /// The keeper's life (rule 1): wait for lockyard's end, then SIGKILL
    /// the process group. Refuses to run unless it leads its own group and
    /// reads a pipe, as lockyard starts it.
    pub(crate) fn keeper_main() -> ExitCode {
        let leader = rustix::process::getpgrp() == rustix::process::getpid();
        let stdin_is_pipe = std::fs::metadata("/dev/stdin")
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false);
        if !leader || !stdin_is_pipe {
            eprintln!("lockyard: {KEEPER_ARG} is internal to `lockyard exec`");
            return ExitCode::from(exit::USAGE);
        }
        for sig in HANDLED
            .into_iter()
            .chain([libc::SIGTTIN, libc::SIGTTOU, libc::SIGPIPE])
        {
            // SAFETY: setting SIG_IGN touches no memory of ours.
            unsafe {
                libc::signal(sig, libc::SIG_IGN);
            }
        }
        let mut stdin = io::stdin().lock();
        let mut buf = [0u8; 64];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = rustix::process::kill_current_process_group(Sig::KILL);
        ExitCode::from(exit::SOFTWARE)
    }
}

/// Outside Unix there is no keeper.
#[cfg(not(unix))]
pub(crate) fn keeper_main() -> std::process::ExitCode {
    std::process::ExitCode::from(crate::exit::USAGE)
}
