//! The watchdog: one task per client renews every held lease, batched, and
//! signals loss.
//!
//! # Batching
//!
//! Each registered [`Lease`] is due for renewal every `interval` (about a
//! third of its TTL). When the task wakes for the earliest due lease it also
//! takes every lease due within the next half interval, and sends all of
//! their renewal scripts in one pipeline (split into pipelines of
//! [`MAX_BATCH`] commands). Renewing a little early is harmless, and it
//! aligns the schedules: after one period, all leases of a client are
//! renewed together, so 10,000 held locks cost a few round trips per period
//! rather than 10,000.
//!
//! # Loss
//!
//! A lease's validity is kept by [`Validity`]: every renewal and extend is
//! scored with the TTL it carried and its own send time, and requests that
//! may have been applied in either order are assumed applied in the worse
//! one (invariants 1 and 2). The task wakes at the earliest deadline,
//! independently of renewals in flight (they run in their own tasks, so a
//! hung or paused server cannot delay the signal), and fires the lease's
//! lost signal ([`LeaseDeadline::fire`]: the token of every `Lost` made
//! from it, made only when one is asked for) with a `tracing::warn!`
//! (invariant 3). A renewal script that
//! answers `0` (the key is gone or holds another owner) fires the signal at
//! once. A lost lease is no longer renewed, and its handle refuses to
//! extend.
//!
//! # Stopping
//!
//! Dropping a [`LeaseHandle`] (the guard is dropped or released) removes
//! the lease's entry at once, under the lock a renewal reply takes: a reply
//! that arrives later finds no entry and is ignored.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::{Script, Value};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::LockError;
use crate::lease::validity::{RequestId, Validity};
use crate::lost::{LeaseDeadline, Moment};
use crate::redis::conn::cluster::{Cluster, Node, is_redirect, redirect_target};
use crate::redis::conn::link::Conn;
use crate::redis::conn::pool::Connections;
use crate::redis::protocol::Args;
use crate::stats::{Backend, Counter};

/// Most renewal commands per pipeline.
pub(crate) const MAX_BATCH: usize = 4096;

/// Shortest delay before retrying a failed renewal.
const MIN_RETRY: Duration = Duration::from_millis(10);

/// Shortest sleep of a task with no lease to renew.
const MIN_IDLE: Duration = Duration::from_millis(10);

/// What the watchdog needs to renew one lease.
///
/// The renewal is `EVALSHA script keys... args... ttl_ms`: the watchdog
/// appends the lease's current TTL in milliseconds as the **last** argument.
/// The script must return integer `1` when it renewed (we still own the
/// lease) and `0` when it did not (someone else holds it, or it is gone);
/// anything else is treated as a failed attempt and retried.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    /// The resource name, for logs.
    pub(crate) resource: Arc<str>,
    /// The renewal script (for example [`EXTEND`](crate::redis::protocol::scripts::EXTEND)).
    pub(crate) script: &'static Script,
    /// `KEYS` of the renewal script.
    pub(crate) keys: Arc<[String]>,
    /// `ARGV` of the renewal script, before the TTL the watchdog appends
    /// (shared with the guard's own calls: see [`Args`]).
    pub(crate) args: Args,
    /// The lease length.
    pub(crate) ttl: Duration,
    /// How much longer than `ttl` the server keeps the key (the client's
    /// lock-delay: see `RedisOptions::lock_delay`); validity counts `ttl`
    /// only.
    pub(crate) lock_delay: Duration,
    /// How often to renew (see `RedisOptions::renew_interval_for`).
    pub(crate) interval: Duration,
    /// Clock-drift margin (see `RedisOptions::drift_for`).
    pub(crate) drift: Duration,
    /// When the request that acquired the lease was sent: validity is
    /// counted from here.
    pub(crate) acquired_at: Moment,
    /// Told of every change to this lease's deadline, suspect flag or
    /// loss, as member `.1` (a Redlock guard's quorum); `None` for a lease
    /// that is a guard's whole hold.
    pub(crate) observer: Option<(Arc<dyn Observer>, usize)>,
}

/// Told of every change to a lease's deadline, suspect flag or loss: what
/// a guard over several leases (Redlock's quorum, one lease per server)
/// needs to keep its own deadline without a task of its own.
///
/// Called with the watchdog's lock held: it must be quick and must not
/// call back into a watchdog.
pub(crate) trait Observer: Send + Sync + fmt::Debug {
    /// Lease `member` is now certainly valid until `end` (`None`: lost
    /// for good), and `suspect` when its last renewal failed.
    fn changed(&self, member: usize, end: Option<Moment>, suspect: bool);
}

/// A grant that was no longer certainly valid when it was registered
/// (invariant 1): the caller must undo it and not hand out a guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired;

/// What the server answered to a renewal or extend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// The lease is ours and now runs for the TTL the request carried.
    Renewed,
    /// Applied, but `WAIT` did not confirm it on enough replicas: a
    /// failover could undo it.
    Unconfirmed,
    /// The key is gone or holds another owner.
    NotOwner,
}

struct Entry {
    lease: Lease,
    /// Next renewal.
    due: Instant,
    /// Until when the lease is certainly ours.
    validity: Validity,
    /// `validity`'s deadline as the guard's checks read it (published after
    /// every change; once passed, it stays passed).
    end: LeaseDeadline,
    /// A watchdog renewal is in flight (at most one at a time).
    in_flight: bool,
    /// The last attempt failed: retry when due, without renewing early.
    retrying: bool,
}

impl Entry {
    /// The published deadline: `validity`'s, unless that moved out after
    /// the lease had already ended (invariant 3: lost never un-fires).
    fn deadline(&self) -> Instant {
        self.end.at()
    }

    /// Publishes `validity`'s deadline to the guard's checks (call after
    /// every change to it). A deadline already passed stays put.
    fn publish(&mut self) {
        self.end.set_end(self.validity.deadline());
        self.observe();
    }

    /// Marks the lease suspect (a renewal failed) or not.
    fn set_suspect(&self, suspect: bool) {
        self.end.set_suspect(suspect);
        self.observe();
    }

    /// Fires the lost signal (the entry is out of the watchdog's map).
    fn declare_lost(&self) {
        self.end.fire();
        if let Some((observer, member)) = &self.lease.observer {
            observer.changed(*member, None, true);
        }
    }

    /// Tells the observer, if any, the published deadline and suspect flag.
    fn observe(&self) {
        if let Some((observer, member)) = &self.lease.observer {
            observer.changed(*member, Some(self.end.end()), self.end.is_suspect());
        }
    }

    fn next_wake(&self) -> Instant {
        if self.in_flight {
            self.deadline()
        } else {
            self.due.min(self.deadline())
        }
    }

    /// Schedules the next renewal after a confirmed one: `interval` after
    /// the anchor, but at the latest half-way to the deadline (which a
    /// short request of unknown outcome may have pulled in).
    fn reschedule(&mut self) {
        let anchor = self.validity.anchor();
        let left = self.deadline().saturating_duration_since(anchor);
        self.due = anchor + self.lease.interval.min(left / 2);
    }
}

/// Renewal counters of a client (see `RedisLocks::stats`), also exported
/// through the stats layer's `metrics` export.
#[derive(Debug)]
pub(crate) struct Counters {
    /// Pipelined round trips the watchdog made.
    pub(crate) round_trips: Counter,
    /// Individual lease renewals sent.
    pub(crate) renewals: Counter,
    /// Leases declared lost.
    pub(crate) lost: Counter,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            round_trips: Counter::new("lockyard_redis_renewal_round_trips_total", Backend::Redis),
            renewals: Counter::new("lockyard_redis_renewals_total", Backend::Redis),
            lost: Counter::new("lockyard_redis_leases_lost_total", Backend::Redis),
        }
    }
}

struct State {
    /// Every registered lease (see [`Entries`]).
    entries: Entries,
    next_id: u64,
    /// When the task will wake next (`None`: before its first pass).
    wake_at: Option<Instant>,
}

/// The registered leases, in a slab: registering one and dropping it
/// reuse a slot instead of allocating (a `BTreeMap` allocated a node for
/// the first lease of an empty map and freed it with the last, once per
/// uncontended acquire+release; before it, a `HashMap` hashed the id
/// with SipHash). A slot is found by its index and checked by the
/// lease's id, which only grows: an answer for a lease dropped since
/// (its slot reused) finds nothing.
///
/// A slab keeps its slots when entries leave, and the task's pass walks
/// every slot: after a burst of many leases, most of them ended, the pass
/// [`shrink`](Entries::shrink)s it.
struct Entries<E = Entry> {
    slab: slab::Slab<(u64, E)>,
}

impl<E> Default for Entries<E> {
    fn default() -> Self {
        Self {
            slab: slab::Slab::new(),
        }
    }
}

/// Below this many slots the slab is left as it is.
const KEEP_SLOTS: usize = 1024;

/// Where a lease's entry is: its slot and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    index: usize,
    id: u64,
}

impl Key {
    /// Matches no entry (a lease registered after a shutdown).
    const NONE: Key = Key {
        index: usize::MAX,
        id: u64::MAX,
    };
}

impl<E> Entries<E> {
    fn insert(&mut self, id: u64, entry: E) -> Key {
        Key {
            index: self.slab.insert((id, entry)),
            id,
        }
    }

    fn get_mut(&mut self, key: Key) -> Option<&mut E> {
        match self.slab.get_mut(key.index) {
            Some((id, e)) if *id == key.id => Some(e),
            _ => None,
        }
    }

    fn remove(&mut self, key: Key) -> Option<E> {
        match self.slab.get(key.index) {
            Some((id, _)) if *id == key.id => Some(self.slab.remove(key.index).1),
            _ => None,
        }
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (Key, &mut E)> {
        self.slab
            .iter_mut()
            .map(|(index, (id, e))| (Key { index, id: *id }, e))
    }

    fn len(&self) -> usize {
        self.slab.len()
    }

    fn into_all(self) -> impl Iterator<Item = E> {
        self.slab.into_iter().map(|(_, (_, e))| e)
    }

    /// Gives back the slots of ended leases once fewer than a quarter are
    /// in use, as far as the last one in use allows (entries do not move:
    /// their handles know them by slot). O(slots), as the pass that calls
    /// it.
    fn shrink(&mut self) {
        let slots = self.slab.capacity();
        if slots > KEEP_SLOTS && self.slab.len() < slots / 4 {
            self.slab.shrink_to_fit();
        }
    }

    #[cfg(test)]
    fn slots(&self) -> usize {
        self.slab.capacity()
    }
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
    shutdown: CancellationToken,
    /// Set by [`Watchdog::close`], before `shutdown` is cancelled.
    closed: AtomicBool,
    counters: Counters,
    /// `WAIT` for this many replicas, this long, after each pipeline.
    replicas: Option<(u32, Duration)>,
    /// How long the task sleeps with no lease to renew (see [`run`]).
    idle: Duration,
    /// The task's passes, for the tests.
    #[cfg(test)]
    passes: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A client's watchdog. Cloning shares it.
#[derive(Clone)]
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
}

impl fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watchdog")
            .field("leases", &self.shared.lock().entries.len())
            .finish_non_exhaustive()
    }
}

impl Watchdog {
    /// Starts the task; it stops when `shutdown` is cancelled. `first_due`
    /// is how long after its acquisition a lease of the client's TTL is
    /// first renewed: an idle task sleeps that long, so that registering
    /// such a lease does not wake it (see [`run`]).
    pub(crate) fn start(
        pool: Arc<Connections>,
        op_timeout: Duration,
        replicas: Option<(u32, Duration)>,
        first_due: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                entries: Entries::default(),
                next_id: 0,
                wake_at: None,
            }),
            notify: Notify::new(),
            shutdown,
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            replicas,
            idle: first_due.max(MIN_IDLE),
            #[cfg(test)]
            passes: std::sync::atomic::AtomicU64::new(0),
        });
        tokio::spawn(run(shared.clone(), pool, op_timeout));
        Self { shared }
    }

    /// Starts renewing `lease` until the returned handle is dropped.
    ///
    /// The lease must have been acquired with `lease.ttl` by a request sent
    /// at `lease.acquired_at`, whose answer is in. A grant whose validity
    /// has already passed is refused ([`Expired`], invariant 1): the caller
    /// undoes it instead of returning a guard that may be someone else's.
    pub(crate) fn register(&self, lease: Lease) -> Result<LeaseHandle, Expired> {
        let clocks = Moment::now();
        let now = clocks.at;
        let validity = Validity::granted(lease.acquired_at, now, lease.ttl, lease.drift);
        if validity.deadline().passed_by(clocks) {
            return Err(Expired);
        }
        // The lease's lost signal is its deadline's (`LeaseDeadline::fire`,
        // and a token made only when a `Lost` is asked for). A dropped
        // handle removes its entry under the lock (an answer in flight then
        // finds no entry), so nothing else is needed to say "stopped" (a
        // child token was ~5% of the client's instructions per
        // acquire+release, callgrind).
        let resource = lease.resource.clone();
        let end = LeaseDeadline::ending_as_of(validity.deadline(), clocks);
        let mut entry = Entry {
            lease,
            due: now,
            validity,
            end: end.clone(),
            in_flight: false,
            retrying: false,
        };
        entry.reschedule();
        let wake = entry.next_wake();
        let mut st = self.shared.lock();
        // Looked at under the lock the task drains the entries with after a
        // shutdown: a lease registered later would be renewed by nobody and
        // declared lost by nobody, so it is lost from the start. (`closed`
        // is set before the token is cancelled, and the task drains only
        // once it sees the token cancelled: a registration that finds it
        // unset is drained.)
        if self.is_closed() {
            drop(st);
            warn_lost(&entry.lease.resource, "the client was shut down");
            entry.declare_lost();
            return Ok(LeaseHandle {
                watchdog: self.clone(),
                id: Key::NONE,
                resource,
                end,
            });
        }
        let id = st.next_id;
        st.next_id += 1;
        let id = st.entries.insert(id, entry);
        let notify = st.wake_at.is_none_or(|at| wake < at);
        drop(st);
        if notify {
            self.shared.notify.notify_one();
        }
        Ok(LeaseHandle {
            watchdog: self.clone(),
            id,
            resource,
            end,
        })
    }

    /// Closes it (the client is shutting down), before its token is
    /// cancelled: a lease registered from now on is lost from the start.
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
    }

    /// Whether [`close`](Self::close) was called: one atomic load, where
    /// the token's `is_cancelled` takes a lock.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// The client's renewal counters.
    pub(crate) fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Number of leases being renewed.
    pub(crate) fn len(&self) -> usize {
        self.shared.lock().entries.len()
    }

    /// The task's passes so far.
    #[cfg(test)]
    pub(crate) fn passes(&self) -> u64 {
        self.shared.passes.load(Ordering::Relaxed)
    }
}

/// A registered lease: renewed until dropped. Holds the lease's lost signal.
pub(crate) struct LeaseHandle {
    watchdog: Watchdog,
    id: Key,
    resource: Arc<str>,
    /// The lease's deadline, read by every check at the moment it is
    /// asked, and its lost signal (see [`LeaseDeadline::fire`]).
    end: LeaseDeadline,
}

impl LeaseHandle {
    /// The lease's deadline and lost state, which outlive the handle: its
    /// lost signal is `Lost::with_deadline(d.token(), d.clone())` (see
    /// [`LeaseDeadline::token`]).
    pub(crate) fn deadline(&self) -> &LeaseDeadline {
        &self.end
    }

    /// Whether the lease is lost: the watchdog said so, or its deadline has
    /// passed by the clock now, however late the watchdog's timer runs
    /// (invariant 3: once true, for good).
    pub(crate) fn is_lost(&self) -> bool {
        self.end.is_lost()
    }

    /// As [`is_lost`](Self::is_lost), by the clocks read at `now`.
    pub(crate) fn is_lost_at(&self, now: Moment) -> bool {
        self.end.is_lost_at(now)
    }

    /// The error for an operation that needs the lease after it was lost.
    pub(crate) fn lost_error(&self) -> LockError {
        LockError::Lost {
            resource: self.resource.to_string(),
        }
    }

    /// Sets the lease to `ttl` by running `send` (an extend script carrying
    /// `ttl`); renewals carry `ttl` from then on.
    ///
    /// The request counts against the lease's validity from before it is
    /// sent until its answer says otherwise, however it interleaves with
    /// the watchdog's renewals on other connections (invariant 2).
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] if the lease was lost before or while the extend
    /// ran (it then stays lost, invariant 3); [`LockError::NotHeld`] (and
    /// the lost signal fires) if the server says the lease is not ours;
    /// `send`'s own error otherwise.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, the request may still be applied: it keeps
    /// counting with its TTL (so the lease can only be judged shorter, never
    /// longer), and the watchdog goes on renewing with the TTL it had.
    pub(crate) async fn extend<F, Fut>(
        &self,
        ttl: Duration,
        interval: Duration,
        drift: Duration,
        send: F,
    ) -> Result<(), LockError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Renewal, LockError>>,
    {
        if self.is_lost() {
            return Err(self.lost_error());
        }
        let shared = &self.watchdog.shared;
        let request = {
            let mut st = shared.lock();
            let Some(e) = st.entries.get_mut(self.id) else {
                return Err(self.lost_error());
            };
            let req = e.validity.begin(Moment::now(), ttl, drift);
            e.publish();
            req
        };
        // The deadline may have moved in: let the task look.
        shared.notify.notify_one();
        let mut pending = Unsettled {
            shared,
            id: self.id,
            request: Some(request),
        };
        let reply = send().await;
        let request = pending.request.take();
        let mut st = shared.lock();
        let entry = st.entries.get_mut(self.id);
        let result = match (reply, entry, request) {
            (Ok(Renewal::Renewed), Some(e), Some(req)) => {
                let now = Instant::now();
                e.validity.confirmed(req, now);
                e.publish();
                if e.end.has_passed() {
                    // Confirmed, but looked at only after the lease's
                    // validity: it may be someone else's by now (the rule
                    // of invariant 1, for an extend).
                    drop(st);
                    self.fire_lost("extend confirmed after the lease's validity");
                    return Err(self.lost_error());
                }
                e.lease.ttl = ttl;
                e.lease.interval = interval;
                e.lease.drift = drift;
                e.reschedule();
                Ok(())
            }
            (Ok(Renewal::NotOwner), _, _) => {
                drop(st);
                self.fire_lost("extend found the lock gone or held by another owner");
                return Err(LockError::NotHeld {
                    resource: self.resource.to_string(),
                });
            }
            (Ok(Renewal::Unconfirmed), entry, req) => {
                // Applied: it bounds the lease with its TTL (a shorter
                // extend shortens it) but lengthens nothing (invariant 2).
                if let (Some(en), Some(req)) = (entry, req) {
                    en.validity.unknown(req);
                    en.publish();
                }
                Err(LockError::Unavailable {
                    resource: self.resource.to_string(),
                    op: "extend",
                    source: "the replicas did not confirm the extend in time; the lease was not \
                             lengthened"
                        .into(),
                })
            }
            (Err(e), entry, req) => {
                if let (Some(en), Some(req)) = (entry, req) {
                    en.validity.unknown(req);
                    en.publish();
                }
                Err(e)
            }
            // Lost (and removed) while the extend ran.
            (Ok(Renewal::Renewed), _, _) => Err(self.lost_error()),
        };
        drop(st);
        shared.notify.notify_one();
        if result.is_ok() && self.is_lost() {
            return Err(self.lost_error());
        }
        result
    }

    /// Declares the lease lost now (for example an explicit extend found
    /// another owner), with a warning.
    pub(crate) fn fire_lost(&self, why: &str) {
        let removed = self.watchdog.shared.lock().entries.remove(self.id);
        if let Some(e) = removed {
            warn_lost(&e.lease.resource, why);
            self.watchdog
                .shared
                .counters
                .lost
                .fetch_add(1, Ordering::Relaxed);
            e.declare_lost();
        }
        self.end.fire();
    }
}

/// An extend whose answer is not in: if dropped so, its outcome is unknown
/// and it keeps counting (see [`Validity::unknown`]).
struct Unsettled<'a> {
    shared: &'a Shared,
    id: Key,
    request: Option<RequestId>,
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if let Some(req) = self.request.take()
            && let Some(e) = self.shared.lock().entries.get_mut(self.id)
        {
            e.validity.unknown(req);
            e.publish();
        }
    }
}

impl fmt::Debug for LeaseHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseHandle")
            .field("id", &self.id)
            .field("lost", &self.end.is_fired())
            .finish()
    }
}

impl Drop for LeaseHandle {
    fn drop(&mut self) {
        // Under the lock: an answer in flight for it then finds no entry.
        self.watchdog.shared.lock().entries.remove(self.id);
    }
}

fn warn_lost(resource: &str, why: &str) {
    tracing::warn!(
        resource,
        reason = why,
        "Redis lock lost: the holder can no longer be sure it holds it"
    );
}

/// The watchdog task.
///
/// With no lease to renew it sleeps `idle` (the first renewal of a lease of
/// the client's TTL), not until notified: a lease registered meanwhile is
/// due no sooner than the task wakes, so registering it does not wake the
/// task. (Sleeping until notified, every acquire+release of a sequential
/// loop woke it once: the release emptied the map before the task ran.) A
/// lease due sooner (a shorter lease, or one acquired before the task
/// went idle) still wakes it.
async fn run(shared: Arc<Shared>, pool: Arc<Connections>, op_timeout: Duration) {
    loop {
        #[cfg(test)]
        shared.passes.fetch_add(1, Ordering::Relaxed);
        let clocks = Moment::now();
        let now = clocks.at;
        let mut batch: Vec<(Key, Lease, RequestId)> = Vec::new();
        let next = {
            let mut st = shared.lock();
            let mut next: Option<Instant> = None;
            let mut dead = Vec::new();
            for (id, e) in st.entries.iter_mut() {
                if e.end.is_fired() {
                    dead.push((id, None));
                    continue;
                }
                // By the clocks now, not `now` alone: after a suspend only
                // the boot clock knows (see `LeaseDeadline`).
                if now >= e.deadline() || e.end.has_passed() {
                    dead.push((
                        id,
                        Some("no renewal confirmed within the lease (TTL − drift)"),
                    ));
                    continue;
                }
                let early = if e.retrying {
                    Duration::ZERO
                } else {
                    e.lease.interval / 2
                };
                if !e.in_flight && e.due <= now + early {
                    e.in_flight = true;
                    // Counts from before it is sent (invariant 2).
                    let req = e.validity.begin(clocks, e.lease.ttl, e.lease.drift);
                    e.publish();
                    batch.push((id, e.lease.clone(), req));
                }
                let wake = e.next_wake();
                next = Some(next.map_or(wake, |n| n.min(wake)));
            }
            for (id, why) in dead {
                if let (Some(e), Some(why)) = (st.entries.remove(id), why) {
                    warn_lost(&e.lease.resource, why);
                    shared.counters.lost.fetch_add(1, Ordering::Relaxed);
                    e.declare_lost();
                }
            }
            st.entries.shrink();
            let next = next.unwrap_or(now + shared.idle);
            st.wake_at = Some(next);
            next
        };
        for chunk in batch.chunks(MAX_BATCH) {
            tokio::spawn(renew(
                shared.clone(),
                pool.clone(),
                chunk.to_vec(),
                op_timeout,
            ));
        }
        let sleep = tokio::time::sleep_until(next);
        tokio::select! {
            () = shared.shutdown.cancelled() => {
                // A lease that can no longer be renewed is lost: its
                // holder is told now (invariant 3), not left to find out.
                let entries = std::mem::take(&mut shared.lock().entries);
                for e in entries.into_all() {
                    if !e.end.is_fired() {
                        warn_lost(&e.lease.resource, "the client was shut down");
                        shared.counters.lost.fetch_add(1, Ordering::Relaxed);
                        e.declare_lost();
                    }
                }
                return;
            }
            () = shared.notify.notified() => {}
            () = sleep => {}
        }
    }
}

/// Outcome of one lease's renewal.
#[derive(Clone, Copy)]
enum Outcome {
    Renewed,
    NotOwner,
    /// Applied on the master, but `WAIT` did not confirm it on enough
    /// replicas: it bounds the lease like a request of unknown outcome (it
    /// may be the last one applied) and confirms nothing.
    Unconfirmed,
    /// The server answered with an error: nothing was applied.
    Refused,
    /// No usable answer: it may or may not have been applied.
    Failed,
}

/// One pipelined round trip renewing `batch`; then records the outcomes.
async fn renew(
    shared: Arc<Shared>,
    pool: Arc<Connections>,
    batch: Vec<(Key, Lease, RequestId)>,
    op_timeout: Duration,
) {
    let leases: Vec<&Lease> = batch.iter().map(|(_, lease, _)| lease).collect();
    let outcomes = tokio::time::timeout(op_timeout, renew_all(&shared, &pool, &leases))
        .await
        .unwrap_or_else(|_| {
            tracing::debug!(leases = batch.len(), "lease renewal timed out; retrying");
            Vec::new()
        });
    let now = Instant::now();
    let mut st = shared.lock();
    for (i, (id, _, req)) in batch.iter().enumerate() {
        let Some(e) = st.entries.get_mut(*id) else {
            continue;
        };
        e.in_flight = false;
        if e.end.is_fired() {
            continue;
        }
        match outcomes.get(i).unwrap_or(&Outcome::Failed) {
            Outcome::Renewed => {
                // Scored with its own send time and the TTL it carried,
                // whatever an extend did meanwhile (invariant 2).
                e.validity.confirmed(*req, now);
                // A confirmation that arrives after the deadline (the
                // process was paused) leaves it passed; the task then
                // declares the lease lost (invariant 3).
                e.publish();
                e.set_suspect(false);
                e.reschedule();
                e.retrying = false;
            }
            Outcome::NotOwner => {
                if let Some(e) = st.entries.remove(*id) {
                    warn_lost(
                        &e.lease.resource,
                        "renewal found the lock gone or held by another owner",
                    );
                    shared.counters.lost.fetch_add(1, Ordering::Relaxed);
                    e.declare_lost();
                }
            }
            Outcome::Unconfirmed => {
                // Applied: it still counts with its TTL (invariant 2), but a
                // failover could undo it, so the anchor stays where it was.
                e.validity.unknown(*req);
                e.publish();
                e.set_suspect(true);
                e.due = now + (e.lease.interval / 4).max(MIN_RETRY);
                e.retrying = true;
            }
            Outcome::Refused => {
                e.validity.refused(*req);
                e.publish();
                e.set_suspect(true);
                e.due = now + (e.lease.interval / 4).max(MIN_RETRY);
                e.retrying = true;
            }
            Outcome::Failed => {
                // No answer: it may still be applied later.
                e.validity.unknown(*req);
                e.publish();
                e.set_suspect(true);
                e.due = now + (e.lease.interval / 4).max(MIN_RETRY);
                e.retrying = true;
            }
        }
    }
    drop(st);
    shared.notify.notify_one();
}

fn outcome(v: &Value) -> Outcome {
    match v {
        Value::Int(1) => Outcome::Renewed,
        Value::Int(0) | Value::Nil => Outcome::NotOwner,
        Value::ServerError(e) => {
            tracing::debug!(error = ?e, "renewal refused by the server; retrying");
            Outcome::Refused
        }
        other => {
            tracing::debug!(reply = ?other, "unexpected renewal reply; retrying");
            Outcome::Failed
        }
    }
}

/// Renews `batch`: one pipeline on one server; on a Cluster, one pipeline
/// per master (concurrently), so that a node that fails fails exactly its
/// own leases' renewals. A renewal answered `MOVED` or `ASK` (its slot
/// moved or is moving) is sent again alone to the node named, with its own
/// `WAIT` there ([`renew_on`]); one answered `TRYAGAIN` or `CLUSTERDOWN` is
/// retried a quarter interval later; one whose slot no known master serves
/// goes through the routed connection. Only the redirected renewals are
/// sent again, never their whole pipeline. The outcomes are in `batch`'s
/// order (missing ones: [`Outcome::Failed`]).
async fn renew_all(shared: &Shared, pool: &Connections, batch: &[&Lease]) -> Vec<Outcome> {
    let Some(cluster) = pool.as_cluster() else {
        let sent = async { send(shared, pool.watchdog().await?, batch).await }.await;
        return match sent {
            Ok((values, replicated)) => values.iter().map(|v| outcome_of(v, replicated)).collect(),
            Err(e) => {
                tracing::debug!(error = %e, leases = batch.len(), "lease renewal failed; retrying");
                Vec::new()
            }
        };
    };
    let mut outcomes = vec![Outcome::Failed; batch.len()];
    let groups = cluster
        .group(batch.iter().map(|lease| first_key(lease).as_bytes()))
        .await;
    let mut alone: Vec<usize> = Vec::new();
    let mut redirected: Vec<(usize, Node, bool)> = Vec::new();
    let mut per_node = Vec::new();
    for (node, items) in groups {
        match node {
            Some(node) => per_node.push(async move {
                let leases: Vec<&Lease> = items.iter().map(|&i| batch[i]).collect();
                let sent = match cluster.node(&node).await {
                    Ok(conn) => send(shared, conn, &leases).await,
                    Err(e) => Err(e),
                };
                (node, items, sent)
            }),
            // No known master serves the slot: let the routed connection
            // find it.
            None => alone.extend(items),
        }
    }
    for (node, items, sent) in futures::future::join_all(per_node).await {
        match sent {
            Ok((values, replicated)) => {
                for (&i, v) in items.iter().zip(&values) {
                    if let Some((node, asking)) = redirect_target(v) {
                        redirected.push((i, node, asking));
                    } else if is_redirect(v) {
                        // TRYAGAIN, CLUSTERDOWN: nothing applied; the next
                        // try (a quarter interval on) finds the slot settled.
                        cluster.note_moved();
                        outcomes[i] = Outcome::Refused;
                    } else {
                        outcomes[i] = outcome_of(v, replicated);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(node = %node, error = %e, leases = items.len(), "renewals on this node failed; retrying");
                cluster.note_moved();
            }
        }
    }
    if !redirected.is_empty() {
        cluster.note_moved();
        let resent = redirected.iter().map(|(i, node, asking)| async move {
            (
                *i,
                renew_on(shared, cluster, batch[*i], node, *asking).await,
            )
        });
        for (i, outcome) in futures::future::join_all(resent).await {
            outcomes[i] = outcome;
        }
    }
    if !alone.is_empty() {
        cluster.note_moved();
        let routed = cluster.conn();
        let resent = alone.iter().map(|&i| {
            let mut conn = routed.clone();
            let lease = batch[i];
            async move {
                let mut inv = lease.script.prepare_invoke();
                for k in lease.keys.iter() {
                    inv.key(k);
                }
                for a in lease.args.iter() {
                    inv.arg(&**a);
                }
                inv.arg(lease.server_ttl_ms());
                let reply = inv.invoke_async::<Value>(&mut conn).await;
                let mut replicated = true;
                if let (Ok(_), Some((replicas, wait))) = (&reply, shared.replicas) {
                    let confirmed = conn.wait_replicas(first_key(lease), replicas, wait).await;
                    replicated = matches!(confirmed, Ok(Value::Int(n)) if n >= i64::from(replicas));
                }
                (i, reply, replicated)
            }
        });
        shared
            .counters
            .round_trips
            .fetch_add(alone.len() as u64, Ordering::Relaxed);
        for (i, r, replicated) in futures::future::join_all(resent).await {
            outcomes[i] = match r {
                Ok(v) => outcome_of(&v, replicated),
                Err(e) if e.code().is_some() => {
                    tracing::debug!(error = %e, "renewal refused by the server; retrying");
                    Outcome::Refused
                }
                Err(e) => {
                    tracing::debug!(error = %e, "renewal failed; retrying");
                    Outcome::Failed
                }
            };
        }
    }
    outcomes
}

/// Renews `lease` on `node`, where a `MOVED` or `ASK` reply sent it (after
/// `ASKING` for an `ASK`), and `WAIT`s there: the replicas that count are
/// those of the node that applied the renewal, not of the slot's old master
/// (which would confirm at once, having nothing new to replicate). On
/// `NOSCRIPT` the script is loaded on that node and the renewal sent once
/// more.
async fn renew_on(
    shared: &Shared,
    cluster: &Cluster,
    lease: &Lease,
    node: &Node,
    asking: bool,
) -> Outcome {
    let mut conn = match cluster.node(node).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(node = %node, error = %e, "could not reach the node a renewal was redirected to; retrying");
            return Outcome::Refused;
        }
    };
    for loaded in [false, true] {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        if asking {
            // Applies to the next command only; a pipeline is written at
            // once, so nothing of another request comes between.
            pipe.cmd("ASKING").ignore();
        }
        push_renewal(&mut pipe, lease);
        if let Some((replicas, wait)) = shared.replicas {
            push_wait(&mut pipe, replicas, wait);
        }
        shared.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        shared.counters.renewals.fetch_add(1, Ordering::Relaxed);
        let values: Vec<Value> = match pipe.query_async(&mut conn).await {
            Ok(values) => values,
            Err(e) => {
                tracing::debug!(node = %node, error = %e, "redirected renewal failed; retrying");
                return Outcome::Failed;
            }
        };
        let Some(reply) = values.first() else {
            return Outcome::Failed;
        };
        if is_noscript(reply) && !loaded {
            conn.note_server_restart();
            if let Err(e) = lease.script.load_async(&mut conn).await {
                tracing::debug!(node = %node, error = %e, "could not load the renewal script; retrying");
                return Outcome::Refused;
            }
            continue;
        }
        if is_redirect(reply) {
            // Moved on meanwhile: the next try follows the fresh slot map.
            cluster.note_moved();
            return Outcome::Refused;
        }
        let replicated = shared
            .replicas
            .is_none_or(|(replicas, _)| confirmed(values.get(1)) >= i64::from(replicas));
        return outcome_of(reply, replicated);
    }
    Outcome::Refused
}

/// How many replicas a `WAIT` reply says confirmed (`-1` for anything else).
fn confirmed(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Int(n)) => *n,
        _ => -1,
    }
}

fn push_wait(pipe: &mut redis::Pipeline, replicas: u32, wait: Duration) {
    pipe.cmd("WAIT")
        .arg(replicas)
        .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
}

/// Sends the renewal pipeline on `conn`; on `NOSCRIPT` (a restarted or
/// flushed server) loads the scripts and sends the affected renewals once
/// more.
async fn send(
    shared: &Shared,
    mut conn: Conn,
    batch: &[&Lease],
) -> Result<(Vec<Value>, bool), LockError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for lease in batch {
        push_renewal(&mut pipe, lease);
    }
    shared.counters.round_trips.fetch_add(1, Ordering::Relaxed);
    shared
        .counters
        .renewals
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    if let Some((replicas, wait)) = shared.replicas {
        // One WAIT covers every renewal before it on this connection.
        push_wait(&mut pipe, replicas, wait);
    }
    let mut values: Vec<Value> = pipe
        .query_async(&mut conn)
        .await
        .map_err(|e| crate::redis::conn::errors::map_redis(e, "(watchdog)", "renew"))?;
    let mut replicated = true;
    if let Some((replicas, _)) = shared.replicas {
        let confirmed = confirmed(values.pop().as_ref());
        if confirmed < i64::from(replicas) {
            // Applied on the master, not confirmed on the replicas: a
            // failover could undo it, so it does not count (the validity
            // runs on from the last confirmed renewal).
            tracing::debug!(
                confirmed,
                replicas,
                leases = batch.len(),
                "the replicas did not confirm the renewals in time"
            );
            replicated = false;
        }
    }
    let missing: Vec<usize> = values
        .iter()
        .enumerate()
        .filter(|(_, v)| is_noscript(v))
        .map(|(i, _)| i)
        .collect();
    // Loaded even when the replicas did not confirm: a primary new after a
    // Sentinel failover has no scripts, and its replicas may take a while
    // to attach; the renewals count once both are there.
    if missing.is_empty() {
        return Ok((values, replicated));
    }
    conn.note_server_restart();
    let mut loaded: Vec<&'static Script> = Vec::new();
    for &i in &missing {
        let script = batch[i].script;
        if !loaded.iter().any(|s| std::ptr::eq(*s, script)) {
            script.load_async(&mut conn).await.map_err(|e| {
                crate::redis::conn::errors::map_redis(e, "(watchdog)", "load renewal script")
            })?;
            loaded.push(script);
        }
    }
    let mut retry = redis::pipe();
    retry.ignore_errors();
    for &i in &missing {
        push_renewal(&mut retry, batch[i]);
    }
    shared.counters.round_trips.fetch_add(1, Ordering::Relaxed);
    let again: Vec<Value> = retry
        .query_async(&mut conn)
        .await
        .map_err(|e| crate::redis::conn::errors::map_redis(e, "(watchdog)", "renew"))?;
    for (&i, v) in missing.iter().zip(again) {
        values[i] = v;
    }
    // The resent renewals were not covered by the WAIT.
    Ok((values, shared.replicas.is_none()))
}

/// The key a lease's renewal is routed by (every key of a resource carries
/// its hash tag, so any would do).
fn first_key(lease: &Lease) -> &str {
    lease.keys.first().map_or("", String::as_str)
}

/// The outcome of one renewal reply in a pipeline whose `WAIT` was (or
/// was not) confirmed by enough replicas.
fn outcome_of(v: &Value, replicated: bool) -> Outcome {
    match outcome(v) {
        Outcome::Renewed if !replicated => Outcome::Unconfirmed,
        o => o,
    }
}

fn push_renewal(pipe: &mut redis::Pipeline, lease: &Lease) {
    pipe.cmd("EVALSHA")
        .arg(lease.script.get_hash())
        .arg(lease.keys.len())
        .arg(&*lease.keys);
    for a in lease.args.iter() {
        pipe.arg(&**a);
    }
    pipe.arg(lease.server_ttl_ms());
}

impl Lease {
    /// The TTL a renewal sets on the server: the lease and its lock-delay.
    fn server_ttl_ms(&self) -> u64 {
        u64::try_from((self.ttl + self.lock_delay).as_millis()).unwrap_or(u64::MAX)
    }
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slots_of_a_burst_are_given_back_once_it_ends() {
        let mut entries: Entries<u32> = Entries::default();
        let keys: Vec<Key> = (0..10_000).map(|i| entries.insert(i, i as u32)).collect();
        assert!(entries.slots() >= 10_000);
        // One lease of the burst outlives it, in the middle of the slab.
        let kept = keys[4_000];
        for &k in &keys {
            if k != kept {
                assert!(entries.remove(k).is_some());
            }
        }
        entries.shrink();
        assert!(entries.slots() <= 4_001, "{} slots", entries.slots());
        // The kept entry is still found by its key; the others' keys find
        // nothing, also once their slots are reused.
        assert_eq!(entries.get_mut(kept), Some(&mut 4_000));
        let fresh = entries.insert(20_000, 7);
        assert_eq!(entries.get_mut(keys[0]), None);
        assert_eq!(entries.remove(keys[fresh.index]), None);
        assert_eq!(entries.remove(kept), Some(4_000));
        entries.shrink();
        entries.remove(fresh);
        entries.shrink();
        assert!(entries.slots() <= KEEP_SLOTS, "{} slots", entries.slots());
        // A small slab is left alone.
        let few: Vec<Key> = (0..100).map(|i| entries.insert(30_000 + i, 0)).collect();
        let before = entries.slots();
        for k in few {
            entries.remove(k);
        }
        entries.shrink();
        assert_eq!(entries.slots(), before);
    }

    #[test]
    fn outcomes() {
        assert!(matches!(outcome(&Value::Int(1)), Outcome::Renewed));
        assert!(matches!(outcome(&Value::Int(0)), Outcome::NotOwner));
        assert!(matches!(outcome(&Value::Okay), Outcome::Failed));
    }
}
