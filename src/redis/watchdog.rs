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
//! A lease's validity ends at *the send time of its last confirmed renewal
//! (or of its acquisition) + TTL − drift*, on tokio's monotonic clock. The
//! task wakes at the earliest such deadline, independently of renewals in
//! flight (they run in their own tasks, so a hung or paused server cannot
//! delay the signal), and cancels the lease's `lost` token with a
//! `tracing::warn!`. A renewal script that answers `0` (the key is gone or
//! holds another owner) fires the signal at once. A lost lease is no longer
//! renewed.
//!
//! # Stopping
//!
//! A [`LeaseHandle`] owns a child of the lease's lost token (so a lost
//! lease stops renewing too) through a `DropGuard`: dropping the handle (the guard is dropped or released)
//! removes the lease at once, and a renewal reply that arrives later is
//! ignored.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::{Script, Value};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::pool::Connections;

/// Most renewal commands per pipeline.
pub(crate) const MAX_BATCH: usize = 4096;

/// Shortest delay before retrying a failed renewal.
const MIN_RETRY: Duration = Duration::from_millis(10);

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
    pub(crate) resource: String,
    /// The renewal script (for example [`super::scripts::EXTEND`]).
    pub(crate) script: &'static Script,
    /// `KEYS` of the renewal script.
    pub(crate) keys: Vec<String>,
    /// `ARGV` of the renewal script, before the TTL the watchdog appends.
    pub(crate) args: Vec<String>,
    /// The lease length.
    pub(crate) ttl: Duration,
    /// How often to renew (see `RedisOptions::renew_interval_for`).
    pub(crate) interval: Duration,
    /// Clock-drift margin (see `RedisOptions::drift_for`).
    pub(crate) drift: Duration,
    /// When the request that acquired the lease was sent: validity is
    /// counted from here.
    pub(crate) acquired_at: Instant,
}

struct Entry {
    lease: Lease,
    /// Next renewal.
    due: Instant,
    /// End of validity: last confirmed renewal's send time + TTL − drift.
    deadline: Instant,
    in_flight: bool,
    /// The last attempt failed: retry when due, without renewing early.
    retrying: bool,
    lost: CancellationToken,
    stop: CancellationToken,
}

impl Entry {
    fn next_wake(&self) -> Instant {
        if self.in_flight {
            self.deadline
        } else {
            self.due.min(self.deadline)
        }
    }
}

/// Renewal counters of a client (see `RedisLocks::stats`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Pipelined round trips the watchdog made.
    pub(crate) round_trips: AtomicU64,
    /// Individual lease renewals sent.
    pub(crate) renewals: AtomicU64,
    /// Leases declared lost.
    pub(crate) lost: AtomicU64,
}

struct State {
    entries: HashMap<u64, Entry>,
    next_id: u64,
    /// When the task will wake next (`None`: not sleeping on a timer).
    wake_at: Option<Instant>,
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
    shutdown: CancellationToken,
    counters: Counters,
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
    /// Starts the task; it stops when `shutdown` is cancelled.
    pub(crate) fn start(
        pool: Arc<Connections>,
        op_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                entries: HashMap::new(),
                next_id: 0,
                wake_at: None,
            }),
            notify: Notify::new(),
            shutdown,
            counters: Counters::default(),
        });
        tokio::spawn(run(shared.clone(), pool, op_timeout));
        Self { shared }
    }

    /// Starts renewing `lease` until the returned handle is dropped.
    ///
    /// The lease must have been acquired with `lease.ttl` at
    /// `lease.acquired_at` (the send time of the acquiring request).
    pub(crate) fn register(&self, lease: Lease) -> LeaseHandle {
        let lost = CancellationToken::new();
        // A child of `lost`, not of a client-wide token: creating and
        // dropping it then touches no lock shared with other leases.
        let stop = lost.child_token();
        let due = lease.acquired_at + lease.interval;
        let deadline = lease.acquired_at + lease.ttl.saturating_sub(lease.drift);
        let wake = due.min(deadline);
        let mut st = self.shared.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.entries.insert(
            id,
            Entry {
                lease,
                due,
                deadline,
                in_flight: false,
                retrying: false,
                lost: lost.clone(),
                stop: stop.clone(),
            },
        );
        let notify = st.wake_at.is_none_or(|at| wake < at);
        drop(st);
        if notify {
            self.shared.notify.notify_one();
        }
        LeaseHandle {
            watchdog: self.clone(),
            id,
            lost,
            _stop: stop.drop_guard(),
        }
    }

    /// The client's renewal counters.
    pub(crate) fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Number of leases being renewed.
    pub(crate) fn len(&self) -> usize {
        self.shared.lock().entries.len()
    }
}

/// A registered lease: renewed until dropped. Holds the lease's lost signal.
pub(crate) struct LeaseHandle {
    watchdog: Watchdog,
    id: u64,
    lost: CancellationToken,
    _stop: DropGuard,
}

impl LeaseHandle {
    /// The token cancelled when the lease is lost.
    pub(crate) fn lost_token(&self) -> &CancellationToken {
        &self.lost
    }

    /// Records an explicit renewal to `ttl` that succeeded for a request
    /// sent at `sent_at` (for example `extend`): later renewals use `ttl`.
    pub(crate) fn renewed(
        &self,
        ttl: Duration,
        interval: Duration,
        drift: Duration,
        sent_at: Instant,
    ) {
        let mut st = self.watchdog.shared.lock();
        let Some(e) = st.entries.get_mut(&self.id) else {
            return;
        };
        e.lease.ttl = ttl;
        e.lease.interval = interval;
        e.lease.drift = drift;
        e.deadline = sent_at + ttl.saturating_sub(drift);
        e.due = sent_at + interval;
        drop(st);
        self.watchdog.shared.notify.notify_one();
    }

    /// Declares the lease lost now (for example an explicit extend found
    /// another owner), with a warning.
    pub(crate) fn fire_lost(&self, why: &str) {
        let removed = self.watchdog.shared.lock().entries.remove(&self.id);
        if let Some(e) = removed {
            warn_lost(&e.lease.resource, why);
            self.watchdog
                .shared
                .counters
                .lost
                .fetch_add(1, Ordering::Relaxed);
        }
        self.lost.cancel();
    }
}

impl fmt::Debug for LeaseHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseHandle")
            .field("id", &self.id)
            .field("lost", &self.lost.is_cancelled())
            .finish()
    }
}

impl Drop for LeaseHandle {
    fn drop(&mut self) {
        // `_stop` cancels the child token right after this, so a reply in
        // flight is ignored too.
        self.watchdog.shared.lock().entries.remove(&self.id);
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
async fn run(shared: Arc<Shared>, pool: Arc<Connections>, op_timeout: Duration) {
    loop {
        let now = Instant::now();
        let mut batch: Vec<(u64, Lease)> = Vec::new();
        let next = {
            let mut st = shared.lock();
            let mut next: Option<Instant> = None;
            let mut dead = Vec::new();
            for (&id, e) in st.entries.iter_mut() {
                if e.stop.is_cancelled() {
                    dead.push((id, None));
                    continue;
                }
                if now >= e.deadline {
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
                    batch.push((id, e.lease.clone()));
                }
                let wake = e.next_wake();
                next = Some(next.map_or(wake, |n| n.min(wake)));
            }
            for (id, why) in dead {
                if let (Some(e), Some(why)) = (st.entries.remove(&id), why) {
                    warn_lost(&e.lease.resource, why);
                    shared.counters.lost.fetch_add(1, Ordering::Relaxed);
                    e.lost.cancel();
                }
            }
            st.wake_at = next;
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
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = shared.notify.notified() => {}
            () = sleep => {}
        }
    }
}

/// Outcome of one lease's renewal.
enum Outcome {
    Renewed,
    NotOwner,
    Failed,
}

/// One pipelined round trip renewing `batch`; then records the outcomes.
async fn renew(
    shared: Arc<Shared>,
    pool: Arc<Connections>,
    batch: Vec<(u64, Lease)>,
    op_timeout: Duration,
) {
    let sent_at = Instant::now();
    let results = tokio::time::timeout(op_timeout, send(&shared, &pool, &batch)).await;
    let outcomes: Vec<Outcome> = match results {
        Ok(Ok(values)) => values.iter().map(outcome).collect(),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, leases = batch.len(), "lease renewal failed; retrying");
            Vec::new()
        }
        Err(_) => {
            tracing::debug!(leases = batch.len(), "lease renewal timed out; retrying");
            Vec::new()
        }
    };
    let now = Instant::now();
    let mut st = shared.lock();
    for (i, (id, _)) in batch.iter().enumerate() {
        let Some(e) = st.entries.get_mut(id) else {
            continue;
        };
        e.in_flight = false;
        if e.stop.is_cancelled() {
            continue;
        }
        match outcomes.get(i).unwrap_or(&Outcome::Failed) {
            Outcome::Renewed => {
                // The server applied the new TTL no earlier than `sent_at`.
                let deadline = sent_at + e.lease.ttl.saturating_sub(e.lease.drift);
                e.deadline = e.deadline.max(deadline);
                e.due = sent_at + e.lease.interval;
                e.retrying = false;
            }
            Outcome::NotOwner => {
                if let Some(e) = st.entries.remove(id) {
                    warn_lost(
                        &e.lease.resource,
                        "renewal found the lock gone or held by another owner",
                    );
                    shared.counters.lost.fetch_add(1, Ordering::Relaxed);
                    e.lost.cancel();
                }
            }
            Outcome::Failed => {
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
        other => {
            tracing::debug!(reply = ?other, "unexpected renewal reply; retrying");
            Outcome::Failed
        }
    }
}

/// Sends the renewal pipeline; on `NOSCRIPT` (a restarted or flushed
/// server) loads the scripts and sends the affected renewals once more.
async fn send(
    shared: &Shared,
    pool: &Connections,
    batch: &[(u64, Lease)],
) -> Result<Vec<Value>, crate::error::LockError> {
    let mut conn = pool.watchdog().await?;
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (_, lease) in batch {
        push_renewal(&mut pipe, lease);
    }
    shared.counters.round_trips.fetch_add(1, Ordering::Relaxed);
    shared
        .counters
        .renewals
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let mut values: Vec<Value> = pipe
        .query_async(&mut conn)
        .await
        .map_err(|e| super::errors::map_redis(e, "(watchdog)", "renew"))?;
    let missing: Vec<usize> = values
        .iter()
        .enumerate()
        .filter(|(_, v)| is_noscript(v))
        .map(|(i, _)| i)
        .collect();
    if missing.is_empty() {
        return Ok(values);
    }
    conn.note_server_restart();
    let mut loaded: Vec<&'static Script> = Vec::new();
    for &i in &missing {
        let script = batch[i].1.script;
        if !loaded.iter().any(|s| std::ptr::eq(*s, script)) {
            script
                .load_async(&mut conn)
                .await
                .map_err(|e| super::errors::map_redis(e, "(watchdog)", "load renewal script"))?;
            loaded.push(script);
        }
    }
    let mut retry = redis::pipe();
    retry.ignore_errors();
    for &i in &missing {
        push_renewal(&mut retry, &batch[i].1);
    }
    shared.counters.round_trips.fetch_add(1, Ordering::Relaxed);
    let again: Vec<Value> = retry
        .query_async(&mut conn)
        .await
        .map_err(|e| super::errors::map_redis(e, "(watchdog)", "renew"))?;
    for (&i, v) in missing.iter().zip(again) {
        values[i] = v;
    }
    Ok(values)
}

fn push_renewal(pipe: &mut redis::Pipeline, lease: &Lease) {
    pipe.cmd("EVALSHA")
        .arg(lease.script.get_hash())
        .arg(lease.keys.len())
        .arg(&lease.keys)
        .arg(&lease.args)
        .arg(u64::try_from(lease.ttl.as_millis()).unwrap_or(u64::MAX));
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        assert!(matches!(outcome(&Value::Int(1)), Outcome::Renewed));
        assert!(matches!(outcome(&Value::Int(0)), Outcome::NotOwner));
        assert!(matches!(outcome(&Value::Okay), Outcome::Failed));
    }
}
