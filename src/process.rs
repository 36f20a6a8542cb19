//! This process's id, cached, and right again in a forked child; this
//! process as a lock owner. Shared by the backends that must not carry a
//! parent's state into a forked child: the file backend (its fork safety
//! checks the pid on every acquisition and release; see the `file` module
//! docs on `fork()`) and Redis (its owner values' random bytes and record,
//! made on every acquisition).
//!
//! `getpid` is a system call (glibc stopped caching it): once per
//! acquisition it was a large part of a Redis acquisition's client time.
//! So the pid is cached here and the cache is cleared in a forked child by
//! a `pthread_atfork` handler, which runs in the child of every `fork()`
//! made through the C library (`fork`, `nix::unistd::fork`, …). A child
//! made by a raw `clone` system call bypasses such handlers; if registering
//! the handler fails, every call asks the kernel.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::time::SystemTime;

use crate::options::Mode;
use crate::owner::Owner;

/// The cached pid; 0 when unknown (first use, or just forked).
static PID: AtomicU32 = AtomicU32::new(0);
/// Whether the atfork handler is registered (so that the cache is safe).
static CACHEABLE: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn forget_in_child() {
    // Async-signal-safe: one atomic store.
    PID.store(0, Ordering::Relaxed);
}

/// This process's id.
pub(crate) fn id() -> u32 {
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        #[cfg(unix)]
        // SAFETY: registers a child handler that only stores to an atomic;
        // no prepare or parent handler.
        let ok = unsafe { libc::pthread_atfork(None, None, Some(forget_in_child)) } == 0;
        #[cfg(not(unix))]
        let ok = true; // no fork()
        CACHEABLE.store(ok, Ordering::Release);
    });
    let pid = std::process::id();
    if CACHEABLE.load(Ordering::Acquire) {
        PID.store(pid, Ordering::Relaxed);
    }
    pid
}

/// This process as the owner of a lock taken now in `mode`: what
/// [`Owner::current`] says, without its system calls on every acquisition
/// (the pid, start time and host are looked up once per process, again in
/// a forked child).
///
/// The start time is this process's own: `Owner::current` keeps the one it
/// first read for the rest of the process, so in a forked child it gives
/// the parent's, which makes the child's record read as a dead owner's.
pub(crate) fn owner(mode: Mode) -> Owner {
    static TEMPLATE: Mutex<Option<Owner>> = Mutex::new(None);
    let pid = id();
    let mut template = TEMPLATE.lock().unwrap_or_else(|p| p.into_inner());
    let template = match &*template {
        Some(o) if o.pid == pid => o,
        _ => template.insert(Owner {
            start_time: crate::owner::process_start_time(pid),
            ..Owner::current(mode)
        }),
    };
    Owner {
        since: SystemTime::now(),
        mode,
        ..template.clone()
    }
}
