//! The crate-private FIFO, weighted semaphore that [`Semaphore`] and
//! [`RwLock`] are built on.
//!
//! Why the split: the waiter queue, the hand-off of permits and the clean-up
//! of cancelled waiters are the hard part, and they are the same for both
//! public types (an `RwLock` reader takes one permit, a writer takes all of
//! them). Keeping them here, free of any data, any runtime and any `unsafe`,
//! gives one small piece of code to model-check with loom
//! (`src/local/tests/`), instantiated once instead of once per `T`.
//!
//! # Implementation
//!
//! An atomic counter holds the permits nobody has been given yet (shifted
//! left by one; the low bit marks the semaphore closed). Acquiring when the
//! counter has enough is one compare-and-swap, with no lock.
//!
//! Otherwise the acquirer locks the wait list, takes whatever the counter
//! still has, and queues itself at the back for the rest. Released permits
//! go to the wait list first: they are assigned to the waiter at the front
//! (possibly only part of what it needs), which is woken and unlinked once it
//! has all it asked for. Permits are added back to the counter only when the
//! queue is empty. Hence the invariant that makes the semaphore fair:
//!
//! > **while any waiter is queued, the counter is zero**,
//!
//! so a newcomer can never take permits ahead of a waiter, whatever it asks
//! for. A large request at the front holds back the small ones behind it;
//! that is what keeps an `RwLock` writer from being starved by readers.
//!
//! The queue is a doubly linked list threaded through a [`Slab`] by index,
//! so linking, unlinking a cancelled waiter and finding the front are O(1)
//! and need no `unsafe`; the slab keeps its memory for reuse. A waiter's
//! slab entry belongs to its [`Acquire`] future from the moment it queues
//! until the future completes or is dropped: the releaser only unlinks it,
//! so the future can read there that it was served.
//!
//! Wakers are collected under the lock and woken after it is released, in
//! batches, because a waker may call back into the semaphore.
//!
//! [`Semaphore`]: super::Semaphore
//! [`RwLock`]: super::RwLock

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use slab::Slab;

use super::error::{AcquireError, TryAcquireError};
use crate::loom::sync::atomic::{AtomicUsize, Ordering};
use crate::loom::sync::{Mutex, MutexGuard};

/// "No node" in the index-linked list.
const NIL: usize = usize::MAX;

/// A FIFO counting semaphore whose acquirers may ask for many permits at
/// once.
pub(crate) struct BatchSemaphore {
    /// `available << PERMIT_SHIFT | CLOSED`. Zero permits while the queue is
    /// not empty (see the module docs).
    ///
    /// Orderings: a successful acquiring CAS is `Acquire` (it must see every
    /// write made under the permits it takes) and the release that adds to
    /// it is `Release`; `AcqRel` on the CAS because a partial take under the
    /// lock is followed by writes that later holders must see.
    permits: AtomicUsize,
    /// The waiters, and whether the semaphore is closed.
    waiters: Mutex<Waitlist>,
}

/// Everything behind the lock.
struct Waitlist {
    nodes: Slab<Node>,
    /// Front of the queue (the next to be served), or `NIL`.
    head: usize,
    /// Back of the queue, or `NIL`.
    tail: usize,
    /// Set by `close` (under the lock, together with the counter's bit).
    closed: bool,
}

/// One waiter.
struct Node {
    /// Permits it still needs; zero once served.
    remaining: usize,
    /// Its waker; taken by whoever unlinks it (served or closed).
    waker: Option<Waker>,
    prev: usize,
    next: usize,
    /// In the queue. A node that is not linked is either served
    /// (`remaining == 0`) or was dropped from the queue by `close`.
    linked: bool,
}

/// Future returned by [`BatchSemaphore::acquire`].
///
/// Dropping it before it completes leaves the queue and hands back any
/// permits it had already been assigned.
#[must_use = "futures do nothing unless polled"]
pub(crate) struct Acquire<'a> {
    semaphore: &'a BatchSemaphore,
    needed: usize,
    /// Its slab entry, while it has one (queued, or served but not yet
    /// polled, or dropped from the queue by `close`).
    key: Option<usize>,
}

impl BatchSemaphore {
    /// The largest number of permits a semaphore can hold (three bits are
    /// reserved, as in tokio).
    pub(crate) const MAX_PERMITS: usize = usize::MAX >> 3;
    const CLOSED: usize = 1;
    const PERMIT_SHIFT: u32 = 1;

    /// A semaphore with `permits` permits.
    ///
    /// Callers check `permits <= MAX_PERMITS`.
    pub(crate) fn new(permits: usize) -> Self {
        debug_assert!(permits <= Self::MAX_PERMITS);
        Self {
            permits: AtomicUsize::new(permits << Self::PERMIT_SHIFT),
            waiters: Mutex::new(Waitlist {
                nodes: Slab::new(),
                head: NIL,
                tail: NIL,
                closed: false,
            }),
        }
    }

    /// Permits nobody holds or waits for.
    pub(crate) fn available_permits(&self) -> usize {
        self.permits.load(Ordering::Acquire) >> Self::PERMIT_SHIFT
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.permits.load(Ordering::Acquire) & Self::CLOSED == Self::CLOSED
    }

    /// Takes `n` permits if they are available now. Never takes permits a
    /// queued waiter is owed (the counter is zero while anyone waits).
    pub(crate) fn try_acquire(&self, n: usize) -> Result<(), TryAcquireError> {
        debug_assert!(n <= Self::MAX_PERMITS);
        let needed = n << Self::PERMIT_SHIFT;
        let mut curr = self.permits.load(Ordering::Acquire);
        loop {
            if curr & Self::CLOSED == Self::CLOSED {
                return Err(TryAcquireError::Closed);
            }
            if curr < needed {
                return Err(TryAcquireError::NoPermits);
            }
            match self.permits.compare_exchange_weak(
                curr,
                curr - needed,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => curr = actual,
            }
        }
    }

    /// Waits for `n` permits, in FIFO order.
    pub(crate) fn acquire(&self, n: usize) -> Acquire<'_> {
        debug_assert!(n <= Self::MAX_PERMITS);
        Acquire {
            semaphore: self,
            needed: n,
            key: None,
        }
    }

    /// Returns `n` permits: to the waiters first, the rest to the counter.
    ///
    /// # Panics
    ///
    /// If the counter would exceed `MAX_PERMITS`.
    pub(crate) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.add_permits_locked(n, self.waiters.lock());
    }

    /// Removes up to `n` available permits; returns how many were removed.
    pub(crate) fn forget_permits(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let mut curr = self.permits.load(Ordering::Acquire);
        loop {
            let available = curr >> Self::PERMIT_SHIFT;
            let taken = available.min(n);
            let next = curr - (taken << Self::PERMIT_SHIFT);
            match self.permits.compare_exchange_weak(
                curr,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return taken,
                Err(actual) => curr = actual,
            }
        }
    }

    /// Closes the semaphore: no more permits are issued, and every queued
    /// waiter is woken to fail.
    pub(crate) fn close(&self) {
        let mut waiters = self.waiters.lock();
        // The bit on the counter stops the lock-free fast path; it is set
        // under the lock so that the counter and the list never disagree.
        self.permits.fetch_or(Self::CLOSED, Ordering::Release);
        waiters.closed = true;
        loop {
            let mut wakers = WakeList::new();
            while wakers.can_push() {
                let head = waiters.head;
                if head == NIL {
                    break;
                }
                wakers.push(waiters.unlink(head));
            }
            let done = waiters.head == NIL;
            drop(waiters);
            wakers.wake_all();
            if done {
                return;
            }
            waiters = self.waiters.lock();
        }
    }

    /// Hands `rem` permits to the waiters in queue order, then adds what is
    /// left to the counter; wakes the served waiters after unlocking.
    fn add_permits_locked<'a>(&'a self, mut rem: usize, mut waiters: MutexGuard<'a, Waitlist>) {
        if waiters.head == NIL {
            // The common, uncontended case.
            self.add_to_counter(rem);
            drop(waiters);
            return;
        }
        loop {
            let mut wakers = WakeList::new();
            while rem > 0 && wakers.can_push() {
                let head = waiters.head;
                if head == NIL {
                    break;
                }
                let node = &mut waiters.nodes[head];
                let assigned = node.remaining.min(rem);
                node.remaining -= assigned;
                rem -= assigned;
                if node.remaining > 0 {
                    // Partly served: it stays at the front, `rem` is 0.
                    break;
                }
                wakers.push(waiters.unlink(head));
            }
            if rem > 0 && waiters.head == NIL {
                self.add_to_counter(rem);
                rem = 0;
            }
            drop(waiters);
            wakers.wake_all();
            if rem == 0 {
                return;
            }
            waiters = self.waiters.lock();
        }
    }

    /// Adds permits to the counter. Called with the wait list locked and
    /// empty, which is what keeps the counter zero while anyone waits.
    fn add_to_counter(&self, n: usize) {
        // Checked before adding: with the lock held the counter can only
        // shrink meanwhile (lock-free acquirers), so the check is safe, and
        // nobody ever sees permits that do not exist.
        let available = self.permits.load(Ordering::Acquire) >> Self::PERMIT_SHIFT;
        assert!(
            n <= Self::MAX_PERMITS - available,
            "adding {n} permits would exceed the maximum of {} permits",
            Self::MAX_PERMITS
        );
        self.permits
            .fetch_add(n << Self::PERMIT_SHIFT, Ordering::Release);
    }

    /// First poll of an [`Acquire`]: the lock-free fast path, else queue.
    fn poll_acquire_first(
        &self,
        cx: &mut Context<'_>,
        n: usize,
        key: &mut Option<usize>,
    ) -> Poll<Result<(), AcquireError>> {
        match self.try_acquire(n) {
            Ok(()) => return Poll::Ready(Ok(())),
            Err(TryAcquireError::Closed) => return Poll::Ready(Err(AcquireError(()))),
            Err(TryAcquireError::NoPermits) => {}
        }

        // Slow path. Lock first, then take what the counter has: permits can
        // only be added to the counter under this lock, so none can slip in
        // between the take and the queueing.
        let mut waiters = self.waiters.lock();
        if waiters.closed {
            return Poll::Ready(Err(AcquireError(())));
        }
        let mut curr = self.permits.load(Ordering::Acquire);
        let taken = loop {
            let take = (curr >> Self::PERMIT_SHIFT).min(n);
            match self.permits.compare_exchange_weak(
                curr,
                curr - (take << Self::PERMIT_SHIFT),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break take,
                Err(actual) => curr = actual,
            }
        };
        if taken == n {
            // Released between the fast path and the lock.
            return Poll::Ready(Ok(()));
        }
        *key = Some(waiters.push_back(Node {
            remaining: n - taken,
            waker: Some(cx.waker().clone()),
            prev: NIL,
            next: NIL,
            linked: false,
        }));
        Poll::Pending
    }

    /// Later polls: served, closed, or still waiting (refresh the waker).
    fn poll_acquire_queued(
        &self,
        cx: &mut Context<'_>,
        n: usize,
        key: &mut Option<usize>,
        slot: usize,
    ) -> Poll<Result<(), AcquireError>> {
        let mut waiters = self.waiters.lock();
        let node = &mut waiters.nodes[slot];
        if node.remaining == 0 {
            waiters.nodes.remove(slot);
            *key = None;
            return Poll::Ready(Ok(()));
        }
        if !node.linked {
            // Dropped from the queue by `close`: give back what it had.
            debug_assert!(waiters.closed);
            let node = waiters.nodes.remove(slot);
            *key = None;
            let assigned = n - node.remaining;
            if assigned > 0 {
                self.add_permits_locked(assigned, waiters);
            }
            return Poll::Ready(Err(AcquireError(())));
        }
        let old = match &node.waker {
            Some(w) if w.will_wake(cx.waker()) => None,
            _ => node.waker.replace(cx.waker().clone()),
        };
        drop(waiters);
        // A waker may run arbitrary code on drop: not under the lock.
        drop(old);
        Poll::Pending
    }
}

impl fmt::Debug for BatchSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchSemaphore")
            .field("permits", &self.available_permits())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Waitlist {
    /// Links a new node at the back; returns its key.
    fn push_back(&mut self, mut node: Node) -> usize {
        node.prev = self.tail;
        node.next = NIL;
        node.linked = true;
        let key = self.nodes.insert(node);
        if self.tail == NIL {
            self.head = key;
        } else {
            self.nodes[self.tail].next = key;
        }
        self.tail = key;
        key
    }

    /// Unlinks a linked node (it stays in the slab) and takes its waker.
    fn unlink(&mut self, key: usize) -> Option<Waker> {
        let node = &mut self.nodes[key];
        debug_assert!(node.linked);
        let (prev, next) = (node.prev, node.next);
        node.linked = false;
        node.prev = NIL;
        node.next = NIL;
        let waker = node.waker.take();
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next].prev = prev;
        }
        waker
    }

    /// Unlinks (if linked) and frees a node. The node keeps its waker, for
    /// the caller to drop after unlocking.
    fn remove(&mut self, key: usize) -> Node {
        let waker = if self.nodes[key].linked {
            self.unlink(key)
        } else {
            None
        };
        let mut node = self.nodes.remove(key);
        node.waker = node.waker.take().or(waker);
        node
    }
}

impl Future for Acquire<'_> {
    type Output = Result<(), AcquireError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `Acquire` is `Unpin`: nothing points into it.
        let this = self.get_mut();
        match this.key {
            None => this
                .semaphore
                .poll_acquire_first(cx, this.needed, &mut this.key),
            Some(slot) => this
                .semaphore
                .poll_acquire_queued(cx, this.needed, &mut this.key, slot),
        }
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        let Some(slot) = self.key.take() else {
            // Never queued, or completed: nothing to clean up.
            return;
        };
        let mut waiters = self.semaphore.waiters.lock();
        let node = waiters.remove(slot);
        let assigned = self.needed - node.remaining;
        if assigned > 0 {
            // Served (fully or partly) but never told: hand the permits on.
            self.semaphore.add_permits_locked(assigned, waiters);
        } else {
            drop(waiters);
        }
        // `node` (and its waker) is dropped here, after the lock.
    }
}

impl fmt::Debug for Acquire<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("needed", &self.needed)
            .field("queued", &self.key.is_some())
            .finish()
    }
}

/// Wakers collected under the lock, woken after it is released.
struct WakeList {
    wakers: [Option<Waker>; WakeList::CAPACITY],
    len: usize,
}

impl WakeList {
    const CAPACITY: usize = 32;

    fn new() -> Self {
        Self {
            wakers: [const { None }; Self::CAPACITY],
            len: 0,
        }
    }

    fn can_push(&self) -> bool {
        self.len < Self::CAPACITY
    }

    /// Counts even a missing waker, so one batch never unlinks more than
    /// `CAPACITY` nodes.
    fn push(&mut self, waker: Option<Waker>) {
        debug_assert!(self.can_push());
        self.wakers[self.len] = waker;
        self.len += 1;
    }

    fn wake_all(&mut self) {
        for waker in self.wakers[..self.len].iter_mut() {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
        self.len = 0;
    }
}
