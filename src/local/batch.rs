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
//! An atomic counter holds the permits nobody has been given yet, shifted
//! left by two: the low bit marks the semaphore closed, the next one
//! (`QUEUED`) says that the wait list is not empty. Acquiring when the
//! counter has enough is one compare-and-swap, with no lock; so is every
//! *release* that does not complete the waiter at the front.
//!
//! Otherwise the acquirer locks the wait list, takes whatever the counter
//! still has (if nobody is queued), and queues itself at the back for the
//! rest, setting `QUEUED` in the same compare-and-swap. While `QUEUED` is
//! set, released permits are *banked* in the counter, where no newcomer may
//! take them; a second atomic, `front_needs`, tells releasers how many the
//! waiter at the front still needs, and the release that makes the bank
//! reach it takes the lock and serves the queue: the bank is drained and
//! assigned in queue order (to the front, possibly only part of what it
//! needs), and each waiter that has all it asked for is woken and unlinked.
//! When the queue empties, what is left becomes free, in the same atomic
//! step that clears `QUEUED`. Hence the invariants:
//!
//! 1. **`QUEUED` is set exactly while the queue is not empty**; it changes
//!    only under the lock.
//! 2. **While `QUEUED` is set, the counter's permits are banked for the
//!    queue**: no newcomer takes them, whatever it asks for, so nobody
//!    overtakes a waiter. A large request at the front holds back the small
//!    ones behind it; that is what keeps an `RwLock` writer from being
//!    starved by readers.
//! 3. **No banked permit is forgotten.** Every lock holder that changes the
//!    front (or its need) stores the new need in `front_needs` and *then*
//!    drains the bank with a read-modify-write of the counter, repeating
//!    until a drain finds it empty; a releaser banks with a
//!    read-modify-write and *then* reads `front_needs`. All writes to the
//!    counter are read-modify-writes, so the two are ordered: either the
//!    drain sees the banked permits, or the releaser's read-modify-write
//!    comes later in the counter's order, synchronises with the drain's,
//!    and reads the need stored before it; if the bank reaches that need,
//!    the releaser serves the queue. A stale, smaller need only costs a
//!    releaser a needless look under the lock.
//!
//! (An `RwLock`'s readers leaving while a writer waits were the most
//! frequent locked operation of a read-mostly mix, and both workers of a
//! runtime took turns on the lock for them; now only the last one locks.)
//!
//! The queue is a doubly linked list threaded through a [`Slab`] by index,
//! so linking, unlinking a cancelled waiter and finding the front are O(1)
//! and need no `unsafe`; the slab keeps its memory for reuse. Each waiter
//! also shares a one-word [`Ticket`] with its [`Acquire`] future: whoever
//! serves the waiter (or closes the semaphore) frees its slab entry at once
//! and writes the outcome into the ticket, so the woken future completes by
//! reading one atomic, without taking the lock again (4). The slab entry
//! belongs to the future only while its ticket says `WAITING` (5), which is
//! checked under the lock before the entry is touched.
//! Served tickets are kept under the lock and reused (6), but only once
//! the future they served has dropped its clone, so a future never reads
//! a ticket that was reset for somebody else.
//!
//! Wakers are collected under the lock and woken after it is released, in
//! batches, because a waker may call back into the semaphore.
//!
//! # Why this shape (the profile)
//!
//! The first version took the wait-list lock on *every* release and again
//! in every woken waiter's poll. Under contention (an `RwLock` with 64
//! tasks on two workers) the profile showed that lock itself as the
//! bottleneck: `add_permits_locked` and `release` spent their time in
//! `futex_wait`/`futex_wake`, i.e. threads were put to sleep by the kernel
//! on a lock that protects a few loads and stores. How often that happens
//! depends on the machine (core count, other load, the mutex's spinning),
//! which is why the same benchmark was ahead of tokio on one machine and
//! behind on another. Invariants 3 and 4 take the lock off the two most
//! frequent paths (the mutex is `parking_lot`'s too: see `crate::loom`).
//!
//! Instruction counts under contention (callgrind,
//! `cargo bench --bench local -- instructions`, readers holding the lock
//! across an `.await`, so that every acquisition waits) then showed what
//! this core still paid over tokio's, whose waiters are intrusive nodes in
//! the futures: a ticket allocated and freed per wait, a pass over all 32
//! slots of the wake list after every locked release, and a wake list made
//! even when a release only brings a waiting writer closer. Spare tickets
//! (6), a wake list that drops only what it holds, and that early return
//! took the RW lock from 1.11–1.17 to 0.97–1.01 of tokio's instructions
//! per acquisition there. Two usual suspects are absent by construction:
//! no waiter is woken before it has all it asked for, and a release walks
//! the queue once. Putting the counter and the wait list on separate cache
//! lines changed nothing measurable (measured again with each worker on
//! its own core), so they stay side by side.
//!
//! Instruction counts do not show what two workers running at once pay for
//! taking turns on the lock. Run as a real-time process (`chrt -f 10`, so
//! that each worker keeps its core whatever else the machine runs), the
//! interleaved bench showed it: nearly every acquisition of a contended
//! mix queues (98 % at one write in 8, for tokio's lock as for this one:
//! that is what FIFO hand-off costs), and while a writer waited, each
//! reader leaving took the lock to bring it one permit closer. Banking
//! those permits without the lock (invariants 2 and 3) took the mixes with
//! one write in 8 or 32 from 0.93–0.98 of tokio's time to 0.86–0.93
//! (readers holding across an `.await`: 0.94–0.98 to 0.87–0.93); the
//! write-heavy mix (one in 2), where a writer's release is what serves the
//! queue, stayed at 0.96–0.98.
//!
//! [`Semaphore`]: super::Semaphore
//! [`RwLock`]: super::RwLock

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use slab::Slab;

use super::error::{AcquireError, TryAcquireError};
use crate::loom::sync::atomic::{AtomicUsize, Ordering};
use crate::loom::sync::{Arc, Mutex, MutexGuard};

/// "No node" in the index-linked list.
const NIL: usize = usize::MAX;

/// A FIFO counting semaphore whose acquirers may ask for many permits at
/// once.
pub(crate) struct BatchSemaphore {
    /// `available << PERMIT_SHIFT | QUEUED | CLOSED` (module docs,
    /// invariants 1–3); while `QUEUED` is set, `available` is the bank.
    ///
    /// Orderings: a successful acquiring CAS is `Acquire` (it must see every
    /// write made under the permits it takes) and every change that adds
    /// permits is `Release`; the CASes are `AcqRel` because a partial take
    /// under the lock is followed by writes that later holders must see,
    /// and because banking and draining synchronise through them
    /// (invariant 3).
    permits: AtomicUsize,
    /// While `QUEUED` is set: how many permits the waiter at the front
    /// still needs, or more (stale); written under the lock, read by
    /// releasers after they bank (invariant 3).
    front_needs: AtomicUsize,
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
    /// Tickets of served waiters, oldest first, kept for reuse (invariant
    /// 6): a contended lock queues and serves a waiter per acquisition, and
    /// allocating and freeing a ticket for each was the largest cost this
    /// core added to tokio's under contention.
    spare: VecDeque<Ticket>,
}

/// One queued waiter; its slab entry is freed by whoever unlinks it.
struct Node {
    /// Permits it asked for.
    needed: usize,
    /// Permits it still needs (`needed` minus what was assigned so far).
    remaining: usize,
    /// Its waker; taken by whoever unlinks it.
    waker: Option<Waker>,
    /// The outcome, shared with the future.
    ticket: Ticket,
    prev: usize,
    next: usize,
}

/// The outcome of one queued acquisition, shared between the wait list and
/// the [`Acquire`] future: `WAITING`, then `SERVED` or `CLOSED`, written
/// once, under the lock, by whoever unlinks the node (and reset to
/// `WAITING` for another waiter only when nobody else holds it, invariant
/// 6). The store is
/// `Release` and the future's load `Acquire`: a future that reads `SERVED`
/// sees everything the permits' previous holders wrote (they released them
/// before the lock was taken to serve it).
type Ticket = Arc<AtomicUsize>;

const WAITING: usize = 0;
const SERVED: usize = 1;
const CLOSED_OUT: usize = 2;

/// Future returned by [`BatchSemaphore::acquire`].
///
/// Dropping it before it completes leaves the queue and hands back any
/// permits it had already been assigned.
#[must_use = "futures do nothing unless polled"]
pub(crate) struct Acquire<'a> {
    semaphore: &'a BatchSemaphore,
    needed: usize,
    /// Its slab key and ticket, from the moment it queues until it
    /// completes. The key is valid only while the ticket says `WAITING`.
    queued: Option<(usize, Ticket)>,
}

impl BatchSemaphore {
    /// The largest number of permits a semaphore can hold (three bits are
    /// reserved, as in tokio).
    pub(crate) const MAX_PERMITS: usize = usize::MAX >> 3;
    const CLOSED: usize = 1;
    const QUEUED: usize = 2;
    const PERMIT_SHIFT: u32 = 2;

    /// A semaphore with `permits` permits.
    ///
    /// Callers check `permits <= MAX_PERMITS`.
    pub(crate) fn new(permits: usize) -> Self {
        debug_assert!(permits <= Self::MAX_PERMITS);
        Self {
            permits: AtomicUsize::new(permits << Self::PERMIT_SHIFT),
            front_needs: AtomicUsize::new(usize::MAX),
            waiters: Mutex::new(Waitlist {
                nodes: Slab::new(),
                head: NIL,
                tail: NIL,
                spare: VecDeque::new(),
            }),
        }
    }

    /// Permits nobody holds or waits for (banked ones are waited for).
    pub(crate) fn available_permits(&self) -> usize {
        let curr = self.permits.load(Ordering::Acquire);
        if curr & Self::QUEUED == Self::QUEUED {
            return 0;
        }
        curr >> Self::PERMIT_SHIFT
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.permits.load(Ordering::Acquire) & Self::CLOSED == Self::CLOSED
    }

    /// Takes `n` permits if they are available now. Never takes permits a
    /// queued waiter is owed (invariant 2).
    #[inline]
    pub(crate) fn try_acquire(&self, n: usize) -> Result<(), TryAcquireError> {
        debug_assert!(n <= Self::MAX_PERMITS);
        let mut curr = self.permits.load(Ordering::Acquire);
        loop {
            if curr & Self::CLOSED == Self::CLOSED {
                return Err(TryAcquireError::Closed);
            }
            // Banked permits are the queue's (invariant 2).
            if curr >> Self::PERMIT_SHIFT < n || (curr & Self::QUEUED == Self::QUEUED && n > 0) {
                return Err(TryAcquireError::NoPermits);
            }
            match self.permits.compare_exchange_weak(
                curr,
                curr - (n << Self::PERMIT_SHIFT),
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
            queued: None,
        }
    }

    /// Returns `n` permits: to the counter, free if nobody waits, else
    /// banked for the waiters; serves the queue if the bank now covers what
    /// the front needs (invariant 3). Lock-free otherwise.
    ///
    /// # Panics
    ///
    /// If the counter would exceed `MAX_PERMITS`.
    #[inline]
    pub(crate) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut curr = self.permits.load(Ordering::Relaxed);
        loop {
            let next = Self::plus(curr, n);
            // `AcqRel`: a bank synchronises with the last drain (invariant
            // 3), so that the need read below is at least as new as it.
            match self.permits.compare_exchange_weak(
                curr,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) if curr & Self::QUEUED == 0 => return,
                Ok(_) => {
                    if next >> Self::PERMIT_SHIFT >= self.front_needs.load(Ordering::Relaxed) {
                        self.add_permits_locked(0, self.waiters.lock());
                    }
                    return;
                }
                Err(actual) => curr = actual,
            }
        }
    }

    /// Removes up to `n` available permits; returns how many were removed.
    /// Banked permits are not available (invariant 2).
    pub(crate) fn forget_permits(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let mut curr = self.permits.load(Ordering::Acquire);
        loop {
            if curr & Self::QUEUED == Self::QUEUED {
                return 0;
            }
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
        // The bit on the counter stops every later acquisition; it is set
        // under the lock, so that no waiter queues after it.
        self.permits.fetch_or(Self::CLOSED, Ordering::Release);
        // Permits set aside for the waiters dropped here go back to the
        // counter once the queue is empty, where the bank becomes free.
        let mut returned = 0;
        loop {
            let mut wakers = WakeList::new();
            while wakers.can_push() {
                let head = waiters.head;
                if head == NIL {
                    break;
                }
                let node = waiters.unlink_and_free(head);
                returned += node.needed - node.remaining;
                node.ticket.store(CLOSED_OUT, Ordering::Release);
                wakers.push(node.waker);
            }
            let done = waiters.head == NIL;
            if done {
                self.settle(returned);
            }
            drop(waiters);
            wakers.wake_all();
            if done {
                return;
            }
            waiters = self.waiters.lock();
        }
    }

    /// `curr` with `n` more permits.
    ///
    /// # Panics
    ///
    /// If that exceeds `MAX_PERMITS`. Checked before anything is stored, so
    /// nobody ever sees permits that do not exist.
    #[inline]
    fn plus(curr: usize, n: usize) -> usize {
        let available = curr >> Self::PERMIT_SHIFT;
        assert!(
            n <= Self::MAX_PERMITS - available,
            "adding {n} permits would exceed the maximum of {} permits",
            Self::MAX_PERMITS
        );
        curr + (n << Self::PERMIT_SHIFT)
    }

    /// Hands `rem` permits and the bank to the waiters in queue order, then
    /// frees what is left if the queue is empty; wakes the served waiters
    /// after unlocking. Returns with the front's need stored and the bank
    /// found empty after it, or with the queue empty (invariant 3).
    fn add_permits_locked<'a>(&'a self, mut rem: usize, mut waiters: MutexGuard<'a, Waitlist>) {
        // The most frequent case under contention: the permits only bring
        // the waiter at the front closer (a partly served writer whose
        // readers leave). Nobody is woken, so no wake list is made.
        let head = waiters.head;
        if head != NIL {
            loop {
                let node = &mut waiters.nodes[head];
                if node.remaining <= rem {
                    break;
                }
                node.remaining -= rem;
                self.front_needs.store(node.remaining, Ordering::Relaxed);
                rem = self.drain_bank();
                if rem == 0 {
                    return;
                }
            }
        }
        loop {
            let mut wakers = WakeList::new();
            let done = loop {
                while wakers.can_push() {
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
                    let node = waiters.unlink_and_free(head);
                    node.ticket.store(SERVED, Ordering::Release);
                    waiters.retire(node.ticket);
                    wakers.push(node.waker);
                }
                let head = waiters.head;
                if head == NIL {
                    // Frees `rem` and the bank, clearing `QUEUED`.
                    self.settle(rem);
                    rem = 0;
                    break true;
                }
                if !wakers.can_push() {
                    // A full batch: wake it, then go on.
                    break false;
                }
                self.front_needs
                    .store(waiters.nodes[head].remaining, Ordering::Relaxed);
                rem = self.drain_bank();
                if rem == 0 {
                    break true;
                }
            };
            drop(waiters);
            wakers.wake_all();
            if done {
                return;
            }
            waiters = self.waiters.lock();
        }
    }

    /// Called with the wait list locked and `QUEUED` set: takes the bank
    /// with a read-modify-write (even when it is empty: invariant 3) and
    /// returns how many permits it held.
    fn drain_bank(&self) -> usize {
        let mut curr = self.permits.load(Ordering::Relaxed);
        loop {
            debug_assert!(curr & Self::QUEUED == Self::QUEUED);
            let next = curr & !(usize::MAX << Self::PERMIT_SHIFT);
            match self.permits.compare_exchange_weak(
                curr,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return curr >> Self::PERMIT_SHIFT,
                Err(actual) => curr = actual,
            }
        }
    }

    /// Called with the wait list locked and *empty*: clears `QUEUED` and
    /// adds `n` permits to the counter, in one atomic step, which frees the
    /// bank too (invariants 1 and 2).
    fn settle(&self, n: usize) {
        let mut curr = self.permits.load(Ordering::Relaxed);
        loop {
            let next = Self::plus(curr & !Self::QUEUED, n);
            if next == curr {
                return;
            }
            match self.permits.compare_exchange_weak(
                curr,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => curr = actual,
            }
        }
    }

    /// First poll of an [`Acquire`]: the lock-free fast path, else queue.
    fn poll_acquire_first(
        &self,
        cx: &mut Context<'_>,
        n: usize,
        queued: &mut Option<(usize, Ticket)>,
    ) -> Poll<Result<(), AcquireError>> {
        match self.try_acquire(n) {
            Ok(()) => return Poll::Ready(Ok(())),
            Err(TryAcquireError::Closed) => return Poll::Ready(Err(AcquireError(()))),
            Err(TryAcquireError::NoPermits) => {}
        }

        // Slow path. What can be made without the lock is made first.
        let waker = cx.waker().clone();
        // Lock, then take what the counter has and set `QUEUED` in one CAS:
        // from then on releases bank their permits, and none can serve the
        // queue before this waiter is linked and its need stored.
        let mut waiters = self.waiters.lock();
        let mut curr = self.permits.load(Ordering::Acquire);
        let taken = loop {
            if curr & Self::CLOSED == Self::CLOSED {
                drop(waiters);
                return Poll::Ready(Err(AcquireError(())));
            }
            if curr & Self::QUEUED == Self::QUEUED {
                // Others already queued: the bank is theirs (invariant 2),
                // and the front's need does not change. Nothing to write,
                // which spares the busiest cache line a write per queued
                // waiter.
                break 0;
            }
            let take = (curr >> Self::PERMIT_SHIFT).min(n);
            let mut next = curr - (take << Self::PERMIT_SHIFT);
            if take < n {
                next |= Self::QUEUED;
            }
            match self.permits.compare_exchange_weak(
                curr,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break take,
                Err(actual) => curr = actual,
            }
        };
        if taken == n {
            // Released between the fast path and the lock.
            drop(waiters);
            return Poll::Ready(Ok(()));
        }
        let ticket = waiters.ticket();
        let key = waiters.push_back(Node {
            needed: n,
            remaining: n - taken,
            waker: Some(waker),
            ticket: Arc::clone(&ticket),
            prev: NIL,
            next: NIL,
        });
        *queued = Some((key, ticket));
        if waiters.head == key {
            // The new front: store its need and drain what was banked since
            // `QUEUED` was set (invariant 3). If that serves it, its waker
            // is woken and the next poll reads the ticket.
            self.add_permits_locked(0, waiters);
        } else {
            drop(waiters);
        }
        Poll::Pending
    }

    /// Later polls: served, closed (read from the ticket, no lock), or
    /// still waiting (refresh the waker, under the lock).
    fn poll_acquire_queued(
        &self,
        cx: &mut Context<'_>,
        queued: &mut Option<(usize, Ticket)>,
    ) -> Poll<Result<(), AcquireError>> {
        let Some((key, ticket)) = queued.as_ref() else {
            unreachable!("polled as queued without a ticket");
        };
        let key = *key;
        let outcome = match ticket.load(Ordering::Acquire) {
            WAITING => {
                let mut waiters = self.waiters.lock();
                // Served or closed while we took the lock?
                match ticket.load(Ordering::Acquire) {
                    WAITING => {
                        // Invariant 5: the slab entry is ours.
                        let node = &mut waiters.nodes[key];
                        let old = match &node.waker {
                            Some(w) if w.will_wake(cx.waker()) => None,
                            _ => node.waker.replace(cx.waker().clone()),
                        };
                        drop(waiters);
                        // A waker may run arbitrary code on drop: not under
                        // the lock.
                        drop(old);
                        return Poll::Pending;
                    }
                    outcome => outcome,
                }
            }
            outcome => outcome,
        };
        *queued = None;
        if outcome == SERVED {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(AcquireError(())))
        }
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
        let key = self.nodes.insert(node);
        if self.tail == NIL {
            self.head = key;
        } else {
            self.nodes[self.tail].next = key;
        }
        self.tail = key;
        key
    }

    /// A ticket saying `WAITING` for a new waiter: the oldest spare one if
    /// its last future has let go of it, else a new one.
    fn ticket(&mut self) -> Ticket {
        if let Some(mut ticket) = self.spare.pop_front() {
            // `get_mut` succeeds only once every other clone is dropped, and
            // it synchronises with those drops (as `Arc::drop` does before
            // freeing): the old future's last read of the ticket happens
            // before the store below, so that future never sees `WAITING`
            // again. Nobody else can read it until the new node is linked,
            // under the lock, hence `Relaxed`.
            if Arc::get_mut(&mut ticket).is_some() {
                ticket.store(WAITING, Ordering::Relaxed);
                return ticket;
            }
            // Its future has not read it yet: keep it for later.
            self.spare.push_back(ticket);
        }
        Arc::new(AtomicUsize::new(WAITING))
    }

    /// Keeps the ticket of an unlinked node for a later waiter, up to
    /// `MAX_SPARE` of them.
    fn retire(&mut self, ticket: Ticket) {
        if self.spare.len() < Self::MAX_SPARE {
            self.spare.push_back(ticket);
        }
    }

    /// More spare tickets than a burst of waiters served at once needs.
    const MAX_SPARE: usize = 64;

    /// Unlinks a node and frees its slab entry; returns it (with its waker
    /// and ticket, for the caller to use and drop).
    fn unlink_and_free(&mut self, key: usize) -> Node {
        let node = self.nodes.remove(key);
        if node.prev == NIL {
            self.head = node.next;
        } else {
            self.nodes[node.prev].next = node.next;
        }
        if node.next == NIL {
            self.tail = node.prev;
        } else {
            self.nodes[node.next].prev = node.prev;
        }
        node
    }
}

impl Future for Acquire<'_> {
    type Output = Result<(), AcquireError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `Acquire` is `Unpin`: nothing points into it.
        let this = self.get_mut();
        if this.queued.is_none() {
            this.semaphore
                .poll_acquire_first(cx, this.needed, &mut this.queued)
        } else {
            this.semaphore.poll_acquire_queued(cx, &mut this.queued)
        }
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        let Some((key, ticket)) = self.queued.take() else {
            // Never queued, or completed: nothing to clean up.
            return;
        };
        let semaphore = self.semaphore;
        match ticket.load(Ordering::Acquire) {
            // Served but never told: hand the permits on.
            SERVED => return semaphore.release(self.needed),
            // Dropped from the queue by `close`, which took back its share.
            CLOSED_OUT => return,
            _ => {}
        }
        let mut waiters = semaphore.waiters.lock();
        match ticket.load(Ordering::Acquire) {
            SERVED => semaphore.add_permits_locked(self.needed, waiters),
            CLOSED_OUT => drop(waiters),
            _ => {
                // Still queued (invariant 5: the entry is ours).
                let node = waiters.unlink_and_free(key);
                let assigned = node.needed - node.remaining;
                if node.prev == NIL {
                    // It was the front (only the front is partly served):
                    // its share and the bank go to the next waiters, whose
                    // need is stored (invariant 3); or the queue is now
                    // empty, and `QUEUED` must be cleared.
                    semaphore.add_permits_locked(assigned, waiters);
                } else {
                    drop(waiters);
                }
                // `node` (and its waker) is dropped here, after the lock.
            }
        }
    }
}

impl fmt::Debug for Acquire<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("needed", &self.needed)
            .field("queued", &self.queued.is_some())
            .finish()
    }
}

/// Wakers collected under the lock, woken after it is released.
///
/// Only `wakers[..len]` can hold a waker (`wake_all` takes them and resets
/// `len`), so `Drop` looks at those only instead of all `CAPACITY` slots:
/// under callgrind, that pass was 5 % of the instructions of a contended
/// acquire-and-release (readers holding across an `.await`).
struct WakeList {
    wakers: ManuallyDrop<[Option<Waker>; WakeList::CAPACITY]>,
    len: usize,
}

impl WakeList {
    const CAPACITY: usize = 32;

    fn new() -> Self {
        Self {
            wakers: ManuallyDrop::new([const { None }; Self::CAPACITY]),
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

impl Drop for WakeList {
    fn drop(&mut self) {
        // Reached with `len > 0` only if a waker panicked in `wake_all`, or
        // before it ran: drop the wakers not woken. Slots past `len` are
        // `None`, so nothing is leaked.
        for waker in self.wakers[..self.len].iter_mut() {
            drop(waker.take());
        }
    }
}
