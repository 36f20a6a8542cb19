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

use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::SystemTime;

use crate::options::Mode;
use crate::owner::Owner;

/// The cached pid; 0 when unknown (first use, or just forked).
static PID: AtomicU32 = AtomicU32::new(0);

/// The atfork handler's registration: [`UNREGISTERED`], [`REGISTERING`],
/// [`REGISTERED`] (the cache is safe) or [`FAILED`].
static HANDLER: AtomicU8 = AtomicU8::new(UNREGISTERED);
const UNREGISTERED: u8 = 0;
const REGISTERING: u8 = 1;
const REGISTERED: u8 = 2;
const FAILED: u8 = 3;

#[cfg(unix)]
extern "C" fn forget_in_child() {
    // Async-signal-safe: one atomic store.
    PID.store(0, Ordering::Relaxed);
}

/// This process's id.
///
/// Takes no lock and waits on no `Once`: a child forked while another
/// thread of the parent held one would inherit it held, with nobody left to
/// let it go, and wait for ever on its first acquisition. A thread that
/// finds the registration under way (or a child forked meanwhile) asks the
/// kernel instead of the cache.
pub(crate) fn id() -> u32 {
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    if HANDLER
        .compare_exchange(
            UNREGISTERED,
            REGISTERING,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
    {
        #[cfg(unix)]
        // SAFETY: registers a child handler that only stores to an atomic;
        // no prepare or parent handler.
        let ok = unsafe { libc::pthread_atfork(None, None, Some(forget_in_child)) } == 0;
        #[cfg(not(unix))]
        let ok = true; // no fork()
        HANDLER.store(if ok { REGISTERED } else { FAILED }, Ordering::Release);
    }
    let pid = std::process::id();
    if HANDLER.load(Ordering::Acquire) == REGISTERED {
        PID.store(pid, Ordering::Relaxed);
    }
    pid
}

/// This process as the owner of a lock taken now in `mode`: what
/// [`Owner::current`] says, without its system calls on every acquisition
/// (the pid, start time and host are looked up once per thread, again in a
/// forked child).
///
/// The start time is this process's own: `Owner::current` keeps the one it
/// first read for the rest of the process, so in a forked child it gives
/// the parent's, which makes the child's record read as a dead owner's.
///
/// The template is kept per thread, so that this takes no lock: a
/// process-wide one, held by another thread of the parent at a `fork()`,
/// stayed held in the child, whose first acquisition then waited for ever
/// (tests/redis_fast_path_attacks.rs).
pub(crate) fn owner(mode: Mode) -> Owner {
    thread_local! {
        static TEMPLATE: RefCell<Option<Owner>> = const { RefCell::new(None) };
    }
    let pid = id();
    let made = |t: &mut Option<Owner>| {
        let template = match t {
            Some(o) if o.pid == pid => o,
            _ => t.insert(template_of(pid)),
        };
        Owner {
            since: SystemTime::now(),
            mode,
            ..template.clone()
        }
    };
    // Without the thread's template (a thread being torn down), one made
    // for this call.
    TEMPLATE
        .try_with(|t| match t.try_borrow_mut() {
            Ok(mut t) => made(&mut t),
            Err(_) => made(&mut None),
        })
        .unwrap_or_else(|_| made(&mut None))
}

/// The parts of this process's owner record that do not change while it
/// runs (`since` and `mode` are filled in per lock).
fn template_of(pid: u32) -> Owner {
    Owner {
        pid,
        start_time: crate::owner::process_start_time(pid),
        host: crate::owner::host_name().to_owned(),
        since: SystemTime::UNIX_EPOCH,
        mode: Mode::Exclusive,
    }
}
