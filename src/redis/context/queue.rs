//! The in-process queue in front of Redis.
//!
//! Many tasks of one process waiting for one resource should not all poll
//! Redis. Each name gets a FIFO `tokio::sync::Semaphore` with one permit:
//! a task first takes its *turn* here, and only the holder of the turn runs
//! the acquire script and waits on Redis. The turn is kept while the lock is
//! held and handed back after the release reached Redis, so the next local
//! waiter usually acquires at once. Entries are removed when nobody holds or
//! waits for them.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::owner::Owner;

struct Entry {
    turn: Arc<Semaphore>,
    /// The last holder seen by the task at the head (for error messages of
    /// tasks that time out behind it).
    holder: Mutex<Option<Owner>>,
}

/// The per-name queues of one client.
#[derive(Default)]
pub(crate) struct LocalQueues {
    map: Mutex<HashMap<String, Arc<Entry>>>,
    /// References alive over every name (changed under the map's lock):
    /// zero says no name has a queue without locking or hashing.
    refs: AtomicUsize,
}

impl fmt::Debug for LocalQueues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalQueues")
            .field("names", &self.lock().len())
            .finish()
    }
}

impl LocalQueues {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a task of this client holds the turn of `name` or waits for
    /// it: an acquisition that finds none tries Redis before it queues.
    pub(crate) fn has_queue(&self, name: &str) -> bool {
        self.refs.load(Ordering::Acquire) > 0 && self.lock().contains_key(name)
    }

    /// A reference to `name`'s queue, created if needed.
    pub(crate) fn get(self: &Arc<Self>, name: &str) -> QueueRef {
        let mut map = self.lock();
        self.refs.fetch_add(1, Ordering::AcqRel);
        let entry = map
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Entry {
                    turn: Arc::new(Semaphore::new(1)),
                    holder: Mutex::new(None),
                })
            })
            .clone();
        drop(map);
        QueueRef {
            queues: self.clone(),
            name: name.to_owned(),
            entry: Some(entry),
        }
    }

    /// Number of names with holders or waiters.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Interest in one name's queue; removes the entry when the last goes.
pub(crate) struct QueueRef {
    queues: Arc<LocalQueues>,
    name: String,
    entry: Option<Arc<Entry>>,
}

impl QueueRef {
    fn entry(&self) -> &Entry {
        // Only `Drop` takes it.
        self.entry.as_ref().expect("entry present until drop")
    }

    /// Waits for this task's turn (FIFO).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped waiter leaves the queue.
    pub(crate) async fn turn(self) -> LocalTurn {
        let sem = self.entry().turn.clone();
        // The semaphore is never closed.
        let permit = sem.acquire_owned().await.ok();
        LocalTurn {
            _permit: permit,
            queue: self,
        }
    }

    /// Takes the turn if nobody holds or waits for it; otherwise gives the
    /// reference back.
    pub(crate) fn try_turn(self) -> Result<LocalTurn, QueueRef> {
        match self.entry().turn.clone().try_acquire_owned() {
            Ok(permit) => Ok(LocalTurn {
                _permit: Some(permit),
                queue: self,
            }),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => Err(self),
        }
    }

    /// The holder last seen by the head of this queue.
    pub(crate) fn last_holder(&self) -> Option<Owner> {
        self.entry()
            .holder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for QueueRef {
    fn drop(&mut self) {
        let Some(entry) = self.entry.take() else {
            return;
        };
        let mut map = self.queues.lock();
        self.queues.refs.fetch_sub(1, Ordering::AcqRel);
        // Only the map and `entry` left: nobody holds or waits.
        if Arc::strong_count(&entry) == 2 {
            map.remove(&self.name);
        }
        // Give up our reference while the map is still locked: another
        // reference dropped concurrently then sees the true count (dropping
        // it after the unlock let two last drops each see the other's
        // reference, and the entry outlived its name).
        drop(entry);
        drop(map);
    }
}

/// This task's turn on one name. Dropping it lets the next local waiter go.
pub(crate) struct LocalTurn {
    // Field order: the permit goes before the queue reference, so the entry
    // is only removed once nobody holds its permit.
    _permit: Option<OwnedSemaphorePermit>,
    queue: QueueRef,
}

impl LocalTurn {
    /// Records who holds the resource (for local waiters' errors).
    pub(crate) fn set_holder(&self, holder: Option<Owner>) {
        *self
            .queue
            .entry()
            .holder
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = holder;
    }
}

impl fmt::Debug for LocalTurn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalTurn")
            .field("name", &self.queue.name)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn fifo_and_cleanup() {
        let q = Arc::new(LocalQueues::default());
        let first = q.get("a").turn().await;
        assert!(q.get("a").try_turn().is_err());
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.get("a").turn().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(q.len(), 1);
        drop(second);
        assert_eq!(q.len(), 0);
        // A cancelled waiter leaves nothing behind.
        let held = q.get("b").turn().await;
        let fut = q.get("b").turn();
        assert!(
            tokio::time::timeout(Duration::from_millis(10), fut)
                .await
                .is_err()
        );
        drop(held);
        assert_eq!(q.len(), 0);
        assert!(!q.has_queue("a") && !q.has_queue("b"));
        let held = q.get("a").turn().await;
        assert!(q.has_queue("a") && !q.has_queue("b"));
        drop(held);
        assert!(!q.has_queue("a"));
        assert_eq!(q.refs.load(Ordering::Acquire), 0);
    }

    #[test]
    fn concurrent_last_drops_remove_the_entry() {
        // Two references dropped at once must not both miss being the last
        // (each seeing the other's reference): the name would stay forever.
        let q = Arc::new(LocalQueues::default());
        let threads = 4;
        let rounds = 20_000;
        let barrier = Arc::new(std::sync::Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (q, barrier) = (q.clone(), barrier.clone());
                std::thread::spawn(move || {
                    for _ in 0..rounds {
                        barrier.wait();
                        drop(q.get("x"));
                        barrier.wait();
                        if q.len() != 0 {
                            return false;
                        }
                        barrier.wait();
                    }
                    true
                })
            })
            .collect();
        let clean = handles.into_iter().all(|h| h.join().unwrap());
        assert!(clean, "an entry outlived every reference to its name");
    }
}
