//! Descriptors kept open between acquisitions, capped for the whole process.
//!
//! Re-acquiring a name that was used recently skips the `open` (and the
//! permission and link checks) by reusing the unlocked descriptor of its
//! last acquisition. Those descriptors are kept here, not in the name's
//! state, so that their number is capped for the whole process — however
//! many names, handles or managers exist — at [`CAPACITY`]; the least
//! recently parked one is closed first.
//!
//! A kept descriptor may point to a file that a cleanup has removed since:
//! the identity check after locking catches that. It is never used by a
//! forked child (the open file description is shared with the parent): the
//! cache belongs to the process that filled it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::lockfile::LockFile;

/// How many unlocked descriptors the process keeps open at most.
pub(crate) const CAPACITY: usize = 64;

struct Cache {
    /// Oldest first; at most one entry per key.
    entries: VecDeque<(u64, LockFile)>,
    /// The process the descriptors belong to.
    pid: u32,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    entries: VecDeque::new(),
    pid: 0,
});

fn cache() -> MutexGuard<'static, Cache> {
    let mut c = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let pid = crate::process::id();
    if c.pid != pid {
        // First use, or a forked child: the parent's descriptors are not
        // ours to reuse. Closing them here leaves the parent's locks alone.
        c.entries.clear();
        c.pid = pid;
    }
    c
}

/// One name's place in the cache. Dropping it closes the descriptor kept
/// for the name.
#[derive(Debug)]
pub(crate) struct IdleKey(u64);

impl IdleKey {
    /// A fresh key for one name's descriptors.
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// Keeps `file` (unlocked) for the name's next acquisition.
    pub(crate) fn park(&self, file: LockFile) {
        park(self.0, file);
    }

    /// The descriptor kept for the name, if any.
    pub(crate) fn take(&self) -> Option<LockFile> {
        take(self.0)
    }
}

impl Drop for IdleKey {
    fn drop(&mut self) {
        drop(take(self.0));
    }
}

/// Keeps `file` (unlocked) for the next acquisition under `key`.
fn park(key: u64, file: LockFile) {
    let mut c = cache();
    let old = c
        .entries
        .iter()
        .rposition(|(k, _)| *k == key)
        .and_then(|i| c.entries.remove(i));
    c.entries.push_back((key, file));
    let evicted = if c.entries.len() > CAPACITY {
        c.entries.pop_front()
    } else {
        None
    };
    drop(c);
    // Closed outside the lock.
    drop((old, evicted));
}

/// The descriptor kept for `key`, if any.
fn take(key: u64) -> Option<LockFile> {
    let mut c = cache();
    let i = c.entries.iter().rposition(|(k, _)| *k == key)?;
    let (_, file) = c.entries.remove(i)?;
    Some(file)
}
