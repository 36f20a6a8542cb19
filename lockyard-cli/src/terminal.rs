//! The controlling terminal (rule 5 of `supervisor.rs`):
//! handed to COMMAND's process group as a shell hands it to a job, and taken
//! back at the end.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;

use rustix::process::Pid;

/// Rule 5: if lockyard is the foreground of its controlling terminal,
/// makes `group` the foreground group; returns the terminal then.
pub(crate) fn hand_to(group: Pid) -> Option<File> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/tty")
        .ok()?;
    let own = rustix::process::getpgrp();
    if rustix::termios::tcgetpgrp(&tty).ok()? != own {
        return None;
    }
    rustix::termios::tcsetpgrp(&tty, group).ok()?;
    tracing::debug!("handed the terminal to COMMAND's process group");
    Some(tty)
}

/// Gives the terminal back to lockyard's group if COMMAND's group still
/// has it.
pub(crate) fn restore(tty: Option<&File>, group: Pid) {
    let Some(tty) = tty else { return };
    if rustix::termios::tcgetpgrp(tty).ok() != Some(group) {
        return;
    }
    // lockyard is in the background now: tcsetpgrp would raise SIGTTOU.
    // rustix does not wrap signal masks; libc's pthread_sigmask does.
    // SAFETY: the sets are valid, initialised sigset_t values; only the
    // calling thread's mask changes, and it is restored below.
    unsafe {
        let mut block: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut block);
        libc::sigaddset(&mut block, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
        let _ = rustix::termios::tcsetpgrp(tty, rustix::process::getpgrp());
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}
