//! Forked children for the tests of what crosses `fork()`: a child made by
//! the C library's `fork` (so `pthread_atfork` handlers run in it, as in an
//! application that forks), which runs a closure and `_exit`s with its code,
//! and a bounded wait for it.

use std::time::{Duration, Instant};

/// Forks; the child runs `f` and exits with its code (never returning).
pub fn fork_child(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child only runs `f` (a fresh current-thread runtime and the
    // lock calls under test) and then `_exit`s; glibc's malloc is fork-safe.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(99);
        // SAFETY: _exit ends the child without running the parent's atexit
        // handlers or destructors.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Waits (bounded) for a forked child and returns its exit code.
pub fn wait_child(pid: libc::pid_t) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            assert!(libc::WIFEXITED(status), "child died: status {status}");
            return libc::WEXITSTATUS(status);
        }
        if Instant::now() > deadline {
            // SAFETY: kills our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("forked child hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Forks a child that runs `f`, and returns its exit code.
pub fn in_forked_child(f: impl FnOnce() -> i32) -> i32 {
    wait_child(fork_child(f))
}
