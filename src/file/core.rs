//! The core of file locks: one [`Slot`] per name and process (its in-process
//! queue in front of its kernel side), the map of slots, and the
//! acquisition that goes through both and writes the owner record.
//!
//! The split exists so that the handle ([`FileLock`](super::FileLock)) and
//! the facade ([`FileLockManager`](super::FileLockManager)) can both
//! acquire without either importing the other: the handle holds a slot, the
//! facade holds the map.
//!
//! # Layering
//!
//! Uses `guard.rs` (what an acquisition returns), `kernel/`, `disk/`;
//! `lock.rs` and `manager.rs` are above it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::RwLock;

use super::disk::dir::LockDir;
use super::disk::scan;
use super::guard::{FileLockGuard, QueuePlace};
use super::kernel::{KernelSide, Start, TryOutcome};
use super::options::FileLockOptions;
use crate::error::LockError;
use crate::options::{AcquireOptions, Deadline, Mode};
use crate::owner::Owner;
use crate::stats::{self, Acquisition, Backend};

/// How often a waiting acquisition logs that it is still waiting.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// How many names the map may hold before idle ones are dropped.
const KEEP_IDLE: usize = 64;

/// One name's state in this process.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The in-process FIFO queue: exclusive acquirers take it for writing,
    /// shared ones for reading, so tasks contend as separate processes do.
    queue: Arc<RwLock<()>>,
    /// The kernel lock behind the queue.
    pub(crate) kernel: Arc<KernelSide>,
}

impl Slot {
    fn new(
        dir: Arc<LockDir>,
        file: String,
        options: &FileLockOptions,
        threads: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            queue: Arc::new(RwLock::new(())),
            kernel: Arc::new(KernelSide::new(
                dir,
                file,
                options.file_mode(),
                threads,
                options.wait_strategy,
            )),
        }
    }

    /// Whether anything but the map refers to the slot or its parts: a
    /// handle or an acquisition (the slot), a holder (its queue place and
    /// kernel lock), a ticket or a waiter thread (the kernel side). A slot in
    /// use must stay the name's only one in the process.
    fn in_use(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > 1
            || Arc::strong_count(&self.queue) > 1
            || Arc::strong_count(&self.kernel) > 1
    }

    /// A slot of its own for the file `file` of `dir`, outside any map.
    pub(crate) fn standalone(dir: LockDir, file: String, options: &FileLockOptions) -> Arc<Self> {
        Arc::new(Self::new(
            Arc::new(dir),
            file,
            options,
            Arc::new(AtomicUsize::new(0)),
        ))
    }
}

/// The slots of one manager. Entries are kept while idle, so re-acquiring a
/// name skips the lookup (its descriptor may be kept open in the
/// process-wide, capped descriptor cache); when the map grows past
/// `purge_at`, idle entries are dropped.
///
/// The map belongs to one process: a forked child starts with an empty one
/// (its copy of the parent's in-process queues and kernel waits means
/// nothing in the child).
#[derive(Debug)]
pub(crate) struct Slots {
    dir: Arc<LockDir>,
    options: FileLockOptions,
    map: Mutex<SlotMap>,
    /// Waiter threads running for these names.
    waiter_threads: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct SlotMap {
    map: HashMap<String, Arc<Slot>>,
    purge_at: usize,
    /// The process the map belongs to.
    pid: u32,
}

impl Slots {
    pub(crate) fn new(dir: Arc<LockDir>, options: FileLockOptions) -> Self {
        Self {
            dir,
            options,
            map: Mutex::new(SlotMap::default()),
            waiter_threads: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many waiter threads run for these names.
    pub(crate) fn waiter_threads(&self) -> usize {
        self.waiter_threads
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The slot of the lock file `file`.
    pub(crate) fn get(&self, file: String) -> Arc<Slot> {
        let mut slots = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let pid = crate::process::id();
        if slots.pid != pid {
            // Forked (or first use): the parent's slots are not ours.
            let inherited = std::mem::take(&mut slots.map);
            slots.purge_at = 0;
            slots.pid = pid;
            // Dropping them closes only descriptors this process opened;
            // inherited ones are closed without unlocking (see `KernelLock`).
            drop(inherited);
        }
        if let Some(slot) = slots.map.get(&file) {
            return slot.clone();
        }
        if slots.map.len() >= slots.purge_at.max(KEEP_IDLE) {
            // Idle: nobody but the map refers to it. No one can take a new
            // reference meanwhile: that happens only under this lock.
            let mut idle = Vec::new();
            slots.map.retain(|_, s| {
                let keep = s.in_use();
                if !keep {
                    idle.push(s.clone());
                }
                keep
            });
            slots.purge_at = KEEP_IDLE.max(slots.map.len() * 2);
            drop(slots);
            drop(idle); // closes their descriptors outside the lock
            return self.get(file);
        }
        let slot = Arc::new(Slot::new(
            self.dir.clone(),
            file.clone(),
            &self.options,
            self.waiter_threads.clone(),
        ));
        slots.map.insert(file, slot.clone());
        slot
    }
}

/// Every file-lock acquisition goes through here, and is counted here in
/// the stats registry. `try_only`: one attempt, failing with
/// [`LockError::WouldBlock`].
pub(crate) async fn acquire(
    name: &str,
    slot: &Slot,
    options: &AcquireOptions,
    try_only: bool,
) -> Result<FileLockGuard, LockError> {
    let attempt = stats::site(Backend::File, name).begin();
    let result = take(name, slot, options, try_only, &attempt).await;
    attempt.record(result, FileLockGuard::count)
}

async fn take(
    name: &str,
    slot: &Slot,
    options: &AcquireOptions,
    try_only: bool,
    attempt: &Acquisition,
) -> Result<FileLockGuard, LockError> {
    let mode = options.mode;
    let kernel = &slot.kernel;
    let name_arc: Arc<str> = Arc::from(name);
    let deadline = Deadline::after(options.timeout);
    let once = try_only || options.timeout == Some(Duration::ZERO);
    let busy = || contended(name, kernel, try_only, &deadline);

    // Level 1: the in-process queue.
    let place = match try_queue(slot, mode) {
        Some(place) => place,
        None if once => return Err(busy()),
        None => {
            attempt.contended();
            tracing::debug!(
                resource = name,
                "waiting behind another task of this process"
            );
            let wait = async {
                match mode {
                    Mode::Shared => QueuePlace::Shared(slot.queue.clone().read_owned().await),
                    _ => QueuePlace::Exclusive(slot.queue.clone().write_owned().await),
                }
            };
            match deadline.instant() {
                Some(at) => match tokio::time::timeout_at(at, wait).await {
                    Ok(place) => place,
                    Err(_) => return Err(busy()),
                },
                None => wait.await,
            }
        }
    };

    // Level 2: the kernel lock. If the queue used up the time, the kernel
    // still gets one non-blocking attempt.
    let (held, owner) = if once || deadline.expired() {
        match kernel.try_take(mode)? {
            TryOutcome::Acquired(held) => (held, None),
            TryOutcome::Busy => return Err(busy()),
        }
    } else {
        match kernel.start(mode, &name_arc)? {
            Start::Acquired(held) => (held, None),
            Start::Queued(mut ticket) => {
                attempt.contended();
                // Finding the holder costs system calls (the record,
                // `/proc/locks`): only when someone listens.
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let holder = scan::recorded_holder(&kernel.dir, &kernel.file_name);
                    tracing::debug!(
                        resource = name,
                        path = %kernel.path.display(),
                        holder = %HolderDisplay(holder.as_ref()),
                        timeout = ?deadline.remaining(),
                        "lock is held by another process; waiting"
                    );
                }
                let mut report = tokio::time::Instant::now() + REPORT_EVERY;
                loop {
                    tokio::select! {
                        biased;
                        r = ticket.handed() => {
                            let handed = r?;
                            break (handed.kernel, handed.owner);
                        }
                        () = deadline.sleep() => {
                            drop(ticket);
                            return Err(busy());
                        }
                        () = tokio::time::sleep_until(report) => {
                            report += REPORT_EVERY;
                            if tracing::enabled!(tracing::Level::INFO) {
                                let holder = scan::recorded_holder(&kernel.dir, &kernel.file_name);
                                tracing::info!(
                                    resource = name,
                                    waited = %humantime::format_duration(round_ms(deadline.elapsed())),
                                    holder = %HolderDisplay(holder.as_ref()),
                                    "still waiting for lock"
                                );
                            }
                        }
                    }
                }
            }
        }
    };
    // The waiter thread wrote the record of a lock it handed over.
    let owner = owner.unwrap_or_else(|| {
        let owner = crate::process::owner(mode);
        held.record(&owner, name, mode);
        owner
    });
    Ok(FileLockGuard::new(
        held,
        place,
        kernel.clone(),
        name_arc,
        mode,
        owner,
    ))
}

fn try_queue(slot: &Slot, mode: Mode) -> Option<QueuePlace> {
    match mode {
        Mode::Shared => slot
            .queue
            .clone()
            .try_read_owned()
            .ok()
            .map(QueuePlace::Shared),
        _ => slot
            .queue
            .clone()
            .try_write_owned()
            .ok()
            .map(QueuePlace::Exclusive),
    }
}

fn contended(name: &str, kernel: &KernelSide, would_block: bool, deadline: &Deadline) -> LockError {
    let holder = scan::recorded_holder(&kernel.dir, &kernel.file_name).map(Box::new);
    if would_block {
        LockError::WouldBlock {
            resource: name.to_owned(),
            holder,
        }
    } else {
        tracing::debug!(resource = name, waited = ?deadline.elapsed(), "gave up waiting for lock");
        LockError::Timeout {
            resource: name.to_owned(),
            waited: deadline.elapsed(),
            holder,
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

struct HolderDisplay<'a>(Option<&'a Owner>);

impl fmt::Display for HolderDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(o) => fmt::Display::fmt(o, f),
            None => f.write_str("unknown"),
        }
    }
}
