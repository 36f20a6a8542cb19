//! The threads that wait in the kernel, kept alive between waits.
//!
//! A waiter thread that exits right after handing a lock over delays the
//! woken task by its own exit (tens of microseconds on a busy machine), and
//! spawning one per contended acquisition costs more still. So, as tokio's
//! blocking threads do, finished threads stay parked for [`KEEP_ALIVE`] and
//! take the next wait. A parked thread holds no lock and waits for nothing in
//! the kernel; the number of threads is bounded by the number of waits in
//! progress at once (one per contended name and manager).

use std::collections::VecDeque;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// How long a parked thread waits for new work before exiting.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

type Job = Box<dyn FnOnce() + Send + 'static>;

struct KernelThreads {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Parked threads not yet claimed by a job.
    idle: usize,
    /// Claims handed to parked threads and not yet taken up.
    wakeups: usize,
    /// The process the threads run in: a forked child has none of them.
    pid: u32,
}

fn threads() -> &'static KernelThreads {
    static THREADS: OnceLock<KernelThreads> = OnceLock::new();
    THREADS.get_or_init(|| KernelThreads {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
    })
}

fn lock(p: &KernelThreads) -> MutexGuard<'_, State> {
    p.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `job` on a parked thread, or on a new one.
pub(crate) fn execute(job: Job) -> io::Result<()> {
    let p = threads();
    let mut st = lock(p);
    let pid = crate::process::id();
    if st.pid != pid {
        // First use, or a forked child: the parked threads counted here are
        // the parent's (threads do not survive fork). Their jobs too.
        let inherited = std::mem::take(&mut st.jobs);
        std::mem::forget(inherited);
        st.idle = 0;
        st.wakeups = 0;
        st.pid = pid;
    }
    st.jobs.push_back(job);
    if st.idle > 0 {
        st.idle -= 1;
        st.wakeups += 1;
        drop(st);
        p.wake.notify_one();
        return Ok(());
    }
    // Spawned under the lock, so that on failure the newest job is ours.
    let spawned = std::thread::Builder::new()
        .name("lockyard-flock".into())
        .stack_size(256 * 1024)
        .spawn(|| worker(threads()));
    if let Err(e) = spawned {
        st.jobs.pop_back();
        return Err(e);
    }
    Ok(())
}

fn worker(p: &'static KernelThreads) {
    let mut st = lock(p);
    loop {
        if let Some(job) = st.jobs.pop_front() {
            drop(st);
            job();
            st = lock(p);
            continue;
        }
        // Park until claimed or idle for KEEP_ALIVE.
        st.idle += 1;
        loop {
            let (guard, timeout) = p
                .wake
                .wait_timeout(st, KEEP_ALIVE)
                .unwrap_or_else(|e| e.into_inner());
            st = guard;
            if st.wakeups > 0 {
                st.wakeups -= 1;
                break; // claimed (the claimer already took us off `idle`)
            }
            if timeout.timed_out() {
                st.idle -= 1;
                return;
            }
        }
    }
}
