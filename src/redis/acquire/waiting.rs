//! Acquiring a Redis semaphore permit or RW lock without blind polling,
//! shared by [`RedisSemaphore`](crate::redis::RedisSemaphore) and
//! [`RedisRwLock`](crate::redis::RedisRwLock).
//!
//! Two levels, as for the exclusive lock: tasks of one process queue in the
//! client's fair in-process FIFO for the resource ([`local_turn`]), and only
//! the head of that queue talks to Redis. The head runs the acquire script;
//! when the script says "busy" it subscribes to the resource's release
//! channel (once), marks the messages so far as seen, retries, and then
//! sleeps until the first of
//! - a message on the release channel (every release that frees something
//!   publishes),
//! - the moment the script said the blocking lease ends (so a crashed
//!   holder's permit is taken over on time),
//! - the caller's deadline,
//!
//! and tries again. Without a working pub/sub connection the sleep is a
//! backoff (5 ms doubling to 1 s) bounded by the same lease end.
//!
//! Every attempt of one acquisition goes over one connection, and
//! [`Pending`] undoes whatever the attempts may have taken (with the
//! acquisition's own token, on that same connection, so the undo runs after
//! any attempt still in flight) unless the acquisition ends in a guard.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::{Script, Value};

use crate::error::LockError;
use crate::lost::Moment;
use crate::options::Deadline;
use crate::owner::Owner;
use crate::redis::conn::cluster::slot_of;
use crate::redis::conn::errors::{is_slot_moving, map_redis, name_slot, timed_out};
use crate::redis::conn::pool::Conn;
use crate::redis::conn::wakeups::Subscription;
use crate::redis::context::ops::{eval, invoke_on};
use crate::redis::context::queue::LocalTurn;
use crate::redis::context::{Context, bad_reply};
use crate::redis::lease::{Expired, retry_after_late_grant};
use crate::redis::protocol::Args;
use crate::redis::protocol::token::parse_holder;
use crate::stats::Acquisition;

/// Without any message, re-check Redis at least this often (a safety net for
/// a release message lost while pub/sub reconnects; not the wake-up path).
const MAX_NAP: Duration = Duration::from_secs(5);

/// While still waiting, log again at `info` this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// What one run of an acquire script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// Acquired, with this fencing token.
    Granted {
        /// The fencing token (the resource's `INCR` counter).
        fencing: u64,
    },
    /// Not acquired.
    Busy {
        /// When the blocking lease ends if nobody renews it.
        retry_in: Duration,
        /// Script-specific reason code (see the `.lua` files).
        reason: i64,
        /// How many holders block us, when the script says.
        holders: i64,
        /// Who blocks us (the earliest-expiring holder, or the writer), when
        /// the script says and the value parses.
        holder: Option<Owner>,
    },
}

impl Attempt {
    /// Parses `{1, fencing}` or a bare fencing token (a positive integer:
    /// the exclusive acquire's grant), or
    /// `{0, ms[, reason[, holders[, holder value]]]}`.
    pub(crate) fn parse(
        value: &Value,
        resource: &str,
        op: &'static str,
    ) -> Result<Self, LockError> {
        let protocol = |detail: String| LockError::Protocol {
            resource: resource.to_owned(),
            op,
            detail,
        };
        let items = match value {
            Value::Array(items) => items,
            Value::Int(fencing) if *fencing > 0 => {
                return Ok(Attempt::Granted {
                    fencing: fencing.unsigned_abs(),
                });
            }
            _ => return Err(protocol(format!("expected an array, got {value:?}"))),
        };
        let int = |i: usize| -> Result<i64, LockError> {
            match items.get(i) {
                Some(Value::Int(n)) => Ok(*n),
                other => Err(protocol(format!(
                    "element {i}: expected an integer, got {other:?}"
                ))),
            }
        };
        match int(0)? {
            1 => {
                let fencing = u64::try_from(int(1)?)
                    .map_err(|_| protocol("negative fencing token".to_owned()))?;
                Ok(Attempt::Granted { fencing })
            }
            0 => {
                let ms = u64::try_from(int(1)?).unwrap_or(0);
                let reason = if items.len() > 2 { int(2)? } else { 0 };
                let holders = if items.len() > 3 { int(3)? } else { 0 };
                let holder = match items.get(4) {
                    Some(Value::BulkString(v)) => parse_holder(v),
                    _ => None,
                };
                Ok(Attempt::Busy {
                    retry_in: Duration::from_millis(ms),
                    reason,
                    holders,
                    holder,
                })
            }
            other => Err(protocol(format!("unknown status {other}"))),
        }
    }
}

/// A script call with its keys and arguments.
#[derive(Clone)]
pub(crate) struct ScriptCall {
    pub(crate) script: &'static Script,
    /// Shared with every other call on the resource (see `KeySets`).
    pub(crate) keys: Arc<[String]>,
    pub(crate) args: Args,
}

impl ScriptCall {
    /// Runs it once on `conn`.
    pub(crate) async fn run_on(
        &self,
        conn: &mut Conn,
        resource: &str,
        op: &'static str,
    ) -> Result<Value, LockError> {
        invoke_on(conn, resource, op, self.script, &self.keys, &self.args).await
    }
}

impl fmt::Debug for ScriptCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptCall")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Sends `cmd`, an [`evalsha`](crate::redis::context::ops::evalsha) of
/// `script`, once on `conn` and parses the answer: the first attempt of an
/// acquisition that nothing unusual applies to (`Resource::first_at_hand`),
/// without [`Pending::attempt`]'s general path. Returns the answer and when
/// it was sent; `None` if the connection broke on the way (the outcome is
/// unknown).
///
/// # Errors
///
/// Redis errors of the call; [`LockError::Protocol`] for a reply of the
/// wrong shape.
///
/// # Cancel safety
///
/// If dropped after the command was written, it may still run: the caller
/// keeps its undo armed meanwhile.
pub(crate) async fn attempt_on(
    conn: &mut Conn,
    script: &Script,
    cmd: &redis::Cmd,
    resource: &str,
    op: &'static str,
) -> Result<Option<(Attempt, Moment)>, LockError> {
    let sent_at = Moment::now();
    let reply = match eval::<Value>(conn, script, cmd).await {
        Ok(reply) => reply,
        Err(_) if conn.is_broken() => return Ok(None),
        Err(e) => return Err(map_redis(e, resource, op)),
    };
    Ok(Some((Attempt::parse(&reply, resource, op)?, sent_at)))
}

/// What undoes an acquisition, in order: the release of its hold, then (a
/// writer's) the same release of its intent key. Each compares the
/// acquisition's value. The intent's call is made only when an undo runs:
/// building both calls in a `Vec` for every acquisition, which almost never
/// undoes, was an allocation and four reference counts each time.
pub(crate) struct Undo {
    release: ScriptCall,
    /// The intent key, released with `release`'s script and arguments.
    intent: Option<Arc<[String]>>,
}

impl Undo {
    /// Undone by `release` alone.
    pub(crate) fn release(release: ScriptCall) -> Self {
        Self {
            release,
            intent: None,
        }
    }

    /// Undone by `release`, then by its script and arguments on `intent`.
    pub(crate) fn with_intent(release: ScriptCall, intent: Arc<[String]>) -> Self {
        Self {
            release,
            intent: Some(intent),
        }
    }

    /// Runs the calls from the `i`th on in the background: one task per
    /// release, each first sent on `conn`, the connection of the attempts
    /// it undoes (so after them: invariant 5).
    pub(crate) fn spawn_from(
        &self,
        mut i: usize,
        client: &Context,
        resource: &Arc<str>,
        conn: &Conn,
    ) {
        tracing::debug!(resource = &**resource, "undoing an abandoned acquisition");
        while let Some((script, keys, args)) = self.call(i) {
            let conn = Some(conn.clone());
            client.spawn_release(
                resource.clone(),
                script,
                keys.clone(),
                args.clone(),
                conn,
                (),
            );
            i += 1;
        }
    }

    /// The `i`th call: its script, keys and arguments.
    fn call(&self, i: usize) -> Option<(&'static Script, &Arc<[String]>, &Args)> {
        let r = &self.release;
        match (i, &self.intent) {
            (0, _) => Some((r.script, &r.keys, &r.args)),
            (1, Some(intent)) => Some((r.script, intent, &r.args)),
            _ => None,
        }
    }
}

/// One acquisition in progress: the connection its attempts use, and the
/// releases that undo them, run in the background if dropped while armed.
pub(crate) struct Pending {
    client: Context,
    resource: Arc<str>,
    conn: Conn,
    /// Compare-and-deletes with the acquisition's value, run in order.
    undo: Undo,
    /// The first of `undo` that [`undo_now`](Self::undo_now) has not seen
    /// answered: dropped midway, `Drop` sends it and the rest.
    undo_from: usize,
    armed: bool,
    /// An attempt's outcome was lost with a broken connection: keep the undo
    /// armed whatever later answers say (it compares our value, so it never
    /// touches anyone else's).
    always_undo: bool,
    /// Bound on each attempt: the client's per-request timeout for this
    /// acquisition's lease.
    op_timeout: Duration,
}

impl Pending {
    /// Checks out the connection of an acquisition with a lease of `ttl`;
    /// `undo` are the releases that undo it.
    pub(crate) async fn new(
        client: &Context,
        resource: &Arc<str>,
        undo: Undo,
        ttl: Duration,
    ) -> Result<Self, LockError> {
        client.check_open(resource)?;
        let conn = client.conn(resource, "acquire").await?;
        Ok(Self::on(client, resource, conn, undo, ttl))
    }

    fn on(client: &Context, resource: &Arc<str>, conn: Conn, undo: Undo, ttl: Duration) -> Self {
        Self {
            client: client.clone(),
            resource: resource.clone(),
            conn,
            undo,
            undo_from: 0,
            armed: false,
            always_undo: false,
            op_timeout: client.request_timeout_for(ttl),
        }
    }

    /// As [`new`](Self::new) for an acquisition that waits until
    /// `deadline`: a Sentinel client whose primary cannot be reached (a
    /// failover in progress) tries again, 10 ms doubling to 200 ms apart,
    /// until it can or the deadline passes.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing was sent yet.
    pub(crate) async fn new_within(
        client: &Context,
        resource: &Arc<str>,
        undo: Undo,
        ttl: Duration,
        deadline: &Deadline,
    ) -> Result<Self, LockError> {
        let mut pause = Duration::from_millis(10);
        loop {
            client.check_open(resource)?;
            match client.conn(resource, "acquire").await {
                Ok(conn) => return Ok(Self::on(client, resource, conn, undo, ttl)),
                Err(e)
                    if e.is_unavailable()
                        && client.inner.follows_failovers
                        && !deadline.expired() =>
                {
                    tracing::debug!(resource = &**resource, error = %e, "primary unreachable (a failover?); waiting on");
                    back_off(&mut pause, deadline).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs one attempt (armed while in flight), bounded by the client's
    /// `op_timeout`. Returns the answer and when it was sent.
    pub(crate) async fn attempt(
        &mut self,
        call: &ScriptCall,
        op: &'static str,
    ) -> Result<(Attempt, Moment), LockError> {
        if self.client.inner.follows_failovers && self.conn.is_stale() {
            // A Sentinel failover since this acquisition's connection was
            // opened: it may lead to the old primary, which takes writes
            // until the sentinels demote it. Earlier attempts left nothing
            // there that matters (a busy answer takes nothing; a claim
            // expires), and the new primary is where the undo must go.
            tracing::debug!(resource = %self.resource, op, "moving to a fresh connection after a failover");
            self.conn = self.client.conn(&self.resource, op).await?;
        }
        self.armed = true;
        let mut sent_at = Moment::now();
        let mut reply = self.run_bounded(call, op).await;
        if reply.is_err() && self.conn.is_broken() {
            // The connection broke (a restarted server, say): once more on
            // a fresh one. Safe: every acquire script is idempotent for the
            // same owner value (a second run finds our own entry).
            tracing::debug!(resource = %self.resource, op, "connection broke; retrying once on a fresh one");
            self.always_undo = true;
            self.conn = self.client.conn(&self.resource, op).await?;
            sent_at = Moment::now();
            reply = self.run_bounded(call, op).await;
        }
        let reply = reply?;
        let attempt = Attempt::parse(&reply, &self.resource, op)?;
        // A busy answer took nothing (callers re-arm for a writer intent).
        self.armed = matches!(attempt, Attempt::Granted { .. }) || self.always_undo;
        if matches!(attempt, Attempt::Granted { .. })
            && let Some((replicas, wait)) = self.client.options().wait_for_replicas
        {
            // Boxed: `WAIT` and its undo stay out of every attempt's future.
            Box::pin(self.confirm_replicated(call, replicas, wait)).await?;
        }
        Ok((attempt, sent_at))
    }

    /// `WAIT`s until `replicas` replicas confirm the grant just made on this
    /// connection; if they do not in `wait`, undoes the grant and fails with
    /// [`LockError::Unavailable`] (see
    /// [`RedisOptions::wait_for_replicas`](crate::redis::RedisOptions::wait_for_replicas)).
    async fn confirm_replicated(
        &mut self,
        call: &ScriptCall,
        replicas: u32,
        wait: Duration,
    ) -> Result<(), LockError> {
        let key = call.keys.first().map_or("", String::as_str);
        let op = "wait for replicas";
        let reply = tokio::time::timeout(
            self.op_timeout,
            self.conn.wait_replicas(key, replicas, wait),
        )
        .await;
        let confirmed = match reply {
            Ok(Ok(Value::Int(n))) => n,
            failed => {
                self.undo_now().await;
                return Err(match failed {
                    Ok(Ok(other)) => bad_reply(&self.resource, op, &other),
                    Ok(Err(e)) => map_redis(e, &self.resource, op),
                    Err(_) => timed_out(&self.resource, op),
                });
            }
        };
        if confirmed < i64::from(replicas) {
            tracing::debug!(resource = %self.resource, confirmed, replicas, ?wait, "the replicas did not confirm the grant in time; undone");
            self.undo_now().await;
            return Err(LockError::Unavailable {
                resource: self.resource.to_string(),
                op,
                source: format!(
                    "{confirmed} of {replicas} replicas confirmed the grant within {wait:?}; \
                     it was undone"
                )
                .into(),
            });
        }
        Ok(())
    }

    /// Runs `call` on the acquisition's connection within its op timeout.
    /// The connection's own response timeout is the client's; a separate
    /// timer is armed only when this acquisition's lease asks for less.
    async fn run_bounded(
        &mut self,
        call: &ScriptCall,
        op: &'static str,
    ) -> Result<Value, LockError> {
        if self.op_timeout >= self.client.request_timeout() {
            return call.run_on(&mut self.conn, &self.resource, op).await;
        }
        tokio::time::timeout(
            self.op_timeout,
            call.run_on(&mut self.conn, &self.resource, op),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out(&self.resource, op)))
    }

    /// `e`, naming the resource's hash slot on a Cluster when the slot is
    /// changing hands (see [`name_slot`]).
    fn name_slot(&self, e: LockError, call: &ScriptCall) -> LockError {
        match call.keys.first() {
            Some(key) if self.client.is_cluster() => name_slot(e, slot_of(key.as_bytes())),
            _ => e,
        }
    }

    /// Keeps the undo armed (the server holds a claim of ours, such as a
    /// waiting writer's intent) or not.
    pub(crate) fn set_armed(&mut self, armed: bool) {
        self.armed = armed || self.always_undo;
    }

    /// Undoes `undo` now on `conn`, the connection of the attempt it
    /// undoes, as [`undo_now`](Self::undo_now) does: for an acquisition
    /// that has no `Pending` of its own (the uncontended first attempt).
    ///
    /// # Cancel safety
    ///
    /// As [`undo_now`](Self::undo_now): what was not answered yet is sent in
    /// the background.
    pub(crate) async fn undo_on(
        client: &Context,
        resource: &Arc<str>,
        conn: Conn,
        undo: Undo,
        ttl: Duration,
    ) {
        Self::on(client, resource, conn, undo, ttl).undo_now().await;
    }

    /// Undoes now, on the acquisition's connection (so after every attempt
    /// sent on it: invariant 5), each release retried while the slot changes
    /// hands (see [`Context::run_release`](crate::redis::context::Context::run_release)), bounded by `op_timeout`
    /// each; a failure is logged (the claim then expires by its TTL).
    ///
    /// # Cancel safety
    ///
    /// Armed until every call is answered: dropped midway, what was not
    /// answered yet (the call in flight included: each compares our value)
    /// is sent in the background by `Drop`.
    pub(crate) async fn undo_now(&mut self) {
        // Boxed: a release's future (~3 KB) stays out of the futures of
        // every acquisition, which undo only now and then.
        Box::pin(self.undo_all()).await;
    }

    async fn undo_all(&mut self) {
        self.armed = true;
        while let Some((script, keys, args)) = self.undo.call(self.undo_from) {
            let call = (script, &keys[..], &args[..]);
            let conn = Some(self.conn.clone());
            let undone = self
                .client
                .run_release(&self.resource, "undo", call, conn, self.op_timeout)
                .await;
            if let Err(e) = undone {
                tracing::debug!(resource = %self.resource, error = %e, "undo failed; the claim expires by its TTL");
            }
            self.undo_from += 1;
        }
        // All answered; a later attempt (after a late grant) may claim again.
        self.undo_from = 0;
        self.armed = self.always_undo;
    }

    /// The acquisition succeeded: a guard takes over.
    pub(crate) fn done(mut self) {
        self.armed = false;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.undo
            .spawn_from(self.undo_from, &self.client, &self.resource, &self.conn);
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("resource", &self.resource)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

/// What to wait for, for logs and wake-ups.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WaitFor<'a> {
    pub(crate) client: &'a Context,
    pub(crate) resource: &'a str,
    /// The release channel to listen on.
    pub(crate) channel: &'a str,
    /// "semaphore permit", "read lock", "write lock" (for logs and errors).
    pub(crate) what: &'static str,
    /// Re-run the attempt at least this often while busy (a waiting writer
    /// refreshes its intent this way).
    pub(crate) max_nap: Duration,
    /// This task's turn in the in-process queue: the holder it meets is
    /// recorded there, so that tasks queued behind it can name the holder.
    pub(crate) turn: Option<&'a LocalTurn>,
    /// Counted as contended at the first busy answer.
    pub(crate) stats: &'a Acquisition,
    /// The call to make instead of the first once an answer left a claim
    /// (a writer's intent, which this one withdraws when it is granted);
    /// `None`: the same call.
    pub(crate) after_claim: Option<&'a ScriptCall>,
}

/// Runs `call` once; a grant goes to `grant` (the fencing token and when
/// the granting attempt was sent), which registers its lease. A grant that
/// was too late to register (invariant 1) is undone and tried once more.
///
/// # Errors
///
/// [`LockError::WouldBlock`] naming the holder if busy; connection and
/// protocol errors of the attempt.
///
/// # Cancel safety
///
/// Dropping the future leaves `pending` (owned by the caller) to undo what
/// an in-flight attempt may take.
pub(crate) async fn try_once<T>(
    pending: &mut Pending,
    call: &ScriptCall,
    op: &'static str,
    mut grant: impl FnMut(u64, Moment) -> Result<T, Expired>,
) -> Result<T, LockError> {
    let mut late = 0;
    loop {
        let attempt = pending.attempt(call, op).await;
        match attempt.map_err(|e| pending.name_slot(e, call))? {
            (Attempt::Granted { fencing }, sent_at) => match grant(fencing, sent_at) {
                Ok(t) => return Ok(t),
                Err(Expired) => {
                    pending.undo_now().await;
                    retry_after_late_grant(&mut late, false, &pending.resource, op)?;
                }
            },
            (busy, _) => return Err(would_block(&pending.resource, busy)),
        }
    }
}

/// The first attempt of an acquisition that may wait: `Some` hold when
/// granted; `None` when the wait goes on ([`wait_until_granted`], whose
/// first attempt comes at once): busy (the attempt took nothing), a grant
/// too late to register (undone), or an error the wait rides out
/// ([`waits_out`]).
///
/// # Errors
///
/// Connection and protocol errors of the attempt that the wait would not
/// ride out.
///
/// # Cancel safety
///
/// Dropping the future leaves `pending` (owned by the caller) to undo what
/// an in-flight attempt may take.
pub(crate) async fn first_attempt<T>(
    pending: &mut Pending,
    call: &ScriptCall,
    op: &'static str,
    stats: &Acquisition,
    grant: impl FnOnce(u64, Moment) -> Result<T, Expired>,
) -> Result<Option<T>, LockError> {
    match pending.attempt(call, op).await {
        Ok((Attempt::Granted { fencing }, sent_at)) => match grant(fencing, sent_at) {
            Ok(t) => Ok(Some(t)),
            Err(Expired) => {
                pending.undo_now().await;
                let mut late = 0;
                retry_after_late_grant(&mut late, true, &pending.resource, op)?;
                Ok(None)
            }
        },
        Ok(_busy) => {
            stats.contended();
            Ok(None)
        }
        Err(e) if waits_out(&pending.client, &e) => Ok(None),
        Err(e) => Err(pending.name_slot(e, call)),
    }
}

/// Runs `call` until granted or `deadline` passes; a grant goes to `grant`
/// (the fencing token and when the granting attempt was sent), which
/// registers its lease. A grant that was too late to register (invariant
/// 1) is undone, and the wait goes on.
///
/// `claims(reason)` says whether a busy answer with that reason left a claim
/// on the server that `pending` must undo if we give up.
///
/// # Errors
///
/// [`LockError::Timeout`] naming the holder; connection and protocol errors
/// of the attempts.
///
/// # Cancel safety
///
/// Dropping the future leaves `pending` (owned by the caller) to undo what
/// an in-flight attempt may take.
pub(crate) async fn wait_until_granted<T>(
    w: WaitFor<'_>,
    deadline: &Deadline,
    pending: &mut Pending,
    call: &ScriptCall,
    claims: impl Fn(i64) -> bool,
    mut grant: impl FnMut(u64, Moment) -> Result<T, Expired>,
) -> Result<T, LockError> {
    let mut late = 0;
    let mut sub: Option<Subscription> = None;
    let mut backoff = Duration::from_millis(5);
    let mut last_log: Option<Duration> = None;
    // Once an attempt left a claim (a writer intent), keep undoing it on
    // failure even if a later answer does not say so: the undo compares
    // our value, so it never touches anyone else's.
    let mut claimed = false;
    let mut moving_backoff = Duration::from_millis(10);
    loop {
        if let Some(s) = sub.as_mut() {
            s.mark_seen();
        }
        let call = match w.after_claim {
            Some(after) if claimed => after,
            _ => call,
        };
        let (attempt, sent_at) = match pending.attempt(call, w.what).await {
            Ok(a) => a,
            // A Cluster slot changing hands (TRYAGAIN while its keys
            // migrate, CLUSTERDOWN during a failover): nothing was taken;
            // wait on, within the deadline, for the new owner.
            // A Sentinel client's primary unreachable: most likely a
            // failover in progress (the old primary killed, or demoted and
            // its connections closed). Nothing was granted; wait on, within
            // the deadline, for the new primary.
            Err(e) if waits_out(w.client, &e) && !deadline.expired() => {
                tracing::debug!(resource = %w.resource, error = %e, "a failover or a slot changing hands; waiting on");
                back_off(&mut moving_backoff, deadline).await;
                continue;
            }
            Err(e) => return Err(pending.name_slot(e, call)),
        };
        moving_backoff = Duration::from_millis(10);
        let (retry_in, reason, holders, holder) = match attempt {
            Attempt::Granted { fencing } => match grant(fencing, sent_at) {
                Ok(t) => {
                    if last_log.is_some() {
                        tracing::debug!(resource = %w.resource, waited = ?deadline.elapsed(), fencing, "acquired {} after waiting", w.what);
                    }
                    return Ok(t);
                }
                Err(Expired) => {
                    pending.undo_now().await;
                    retry_after_late_grant(&mut late, !deadline.expired(), w.resource, w.what)?;
                    claimed = false;
                    continue;
                }
            },
            Attempt::Busy {
                retry_in,
                reason,
                holders,
                holder,
            } => (retry_in, reason, holders, holder),
        };
        if let Some(turn) = w.turn {
            turn.set_holder(holder.clone());
        }
        w.stats.contended();
        let who = Who(holder.as_ref());
        claimed |= claims(reason);
        pending.set_armed(claimed);
        let waited = deadline.elapsed();
        if deadline.expired() {
            tracing::debug!(
                resource = %w.resource, holder = %who, holders, reason, waited = ?waited,
                "gave up waiting for {}", w.what
            );
            return Err(timeout(w.resource, deadline, holder));
        }
        match last_log {
            None => tracing::debug!(
                resource = %w.resource, holder = %who, holders, reason, retry_in = ?retry_in,
                waited = ?waited, "{} busy; waiting", w.what
            ),
            Some(at) if waited.saturating_sub(at) >= LOG_EVERY => tracing::info!(
                resource = %w.resource, holder = %who, holders, reason, waited = ?waited,
                "still waiting for {}", w.what
            ),
            Some(_) => {}
        }
        if last_log.is_none_or(|at| waited.saturating_sub(at) >= LOG_EVERY) {
            last_log = Some(waited);
        }
        let Some(s) = sub.as_mut() else {
            // First busy answer: subscribe, then retry at once so that a
            // release between the attempt and the subscription is not missed.
            tokio::select! {
                s = w.client.subscribe(w.channel) => sub = Some(s),
                () = deadline.sleep() => return Err(timeout(w.resource, deadline, holder)),
            }
            continue;
        };
        // +1 ms: the scripts treat a lease ending exactly now as live.
        let lease_end = retry_in + Duration::from_millis(1);
        let nap = if s.is_reliable() {
            lease_end
        } else {
            let nap = lease_end.min(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
            nap
        };
        let nap = nap.min(w.max_nap).min(MAX_NAP);
        tokio::select! {
            biased;
            () = s.changed() => {}
            () = tokio::time::sleep(nap) => {}
            // One last attempt at the deadline: it may have been freed just now.
            () = deadline.sleep() => {}
        }
    }
}

/// Whether [`wait_until_granted`] rides out `e` (retrying within its
/// deadline) rather than failing with it: a Cluster slot changing hands,
/// or a Sentinel client's primary unreachable (a failover).
pub(crate) fn waits_out(client: &Context, e: &LockError) -> bool {
    is_slot_moving(e) || (e.is_unavailable() && client.inner.follows_failovers)
}

/// The error for a deadline that passed while the resource was busy.
pub(crate) fn timeout(resource: &str, deadline: &Deadline, holder: Option<Owner>) -> LockError {
    LockError::Timeout {
        resource: resource.to_owned(),
        waited: deadline.elapsed(),
        holder: holder.map(Box::new),
    }
}

/// The error for a non-blocking attempt that found the resource busy.
pub(crate) fn would_block(resource: &str, attempt: Attempt) -> LockError {
    let holder = match attempt {
        Attempt::Busy { holder, .. } => holder,
        Attempt::Granted { .. } => None,
    };
    LockError::WouldBlock {
        resource: resource.to_owned(),
        holder: holder.map(Box::new),
    }
}

/// Displays a holder for logs.
struct Who<'a>(Option<&'a Owner>);

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(owner) => write!(f, "{owner}"),
            None => f.write_str("unknown"),
        }
    }
}

/// Waits for this task's turn in the client's in-process FIFO for `queue`
/// (every kind of hold on one name shares it), until `deadline`. The turn
/// is held while this task talks to Redis and dropped once it holds the
/// permit or lock, so the next local waiter goes. A timeout names the
/// holder the head of the queue last met (else this process).
///
/// # Errors
///
/// [`LockError::Timeout`] if the deadline passes first.
///
/// # Cancel safety
///
/// Cancel safe: a dropped waiter leaves the queue.
pub(crate) async fn local_turn(
    client: &Context,
    queue: &str,
    resource: &str,
    deadline: &Deadline,
    stats: &Acquisition,
) -> Result<LocalTurn, LockError> {
    // Uncontended, take it without arming a timer (registering one can cost
    // a wakeup of the runtime's driver).
    let q = match client.inner.local.get(queue).try_turn() {
        Ok(turn) => return Ok(turn),
        Err(q) => q,
    };
    stats.contended();
    let hint = client.inner.local.get(queue);
    tokio::select! {
        biased;
        turn = q.turn() => Ok(turn),
        () = deadline.sleep() => {
            tracing::debug!(resource, waited = ?deadline.elapsed(), "timed out in the local queue");
            let holder = hint
                .last_holder()
                .or_else(|| Some(Owner::current(crate::options::Mode::Exclusive)));
            Err(timeout(resource, deadline, holder))
        }
    }
}

/// Sleeps `pause` (no longer than `deadline` leaves), then doubles it, up
/// to 200 ms: the wait between tries while a failover or a slot migration
/// runs, when nothing was granted.
///
/// # Cancel safety
///
/// Cancel safe: only a sleep (`pause` is doubled after it).
async fn back_off(pause: &mut Duration, deadline: &Deadline) {
    let nap = deadline.remaining().map_or(*pause, |left| left.min(*pause));
    // Boxed: the rare pause stays out of the futures that may take it.
    Box::pin(tokio::time::sleep(nap)).await;
    *pause = (*pause * 2).min(Duration::from_millis(200));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(v: &[i64]) -> Value {
        Value::Array(v.iter().map(|n| Value::Int(*n)).collect())
    }

    #[test]
    fn parses_replies() {
        assert_eq!(
            Attempt::parse(&arr(&[1, 7]), "r", "acquire").unwrap(),
            Attempt::Granted { fencing: 7 }
        );
        assert_eq!(
            Attempt::parse(&Value::Int(9), "r", "acquire").unwrap(),
            Attempt::Granted { fencing: 9 }
        );
        assert_eq!(
            Attempt::parse(&arr(&[0, 250, 3, 2]), "r", "acquire").unwrap(),
            Attempt::Busy {
                retry_in: Duration::from_millis(250),
                reason: 3,
                holders: 2,
                holder: None,
            }
        );
        let owner = Owner::current(crate::Mode::Shared);
        let value = format!("0123abcd\n{}", owner.to_text());
        let reply = Value::Array(vec![
            Value::Int(0),
            Value::Int(10),
            Value::Int(0),
            Value::Int(1),
            Value::BulkString(value.into_bytes()),
        ]);
        assert!(matches!(
            Attempt::parse(&reply, "r", "acquire").unwrap(),
            Attempt::Busy { holder: Some(o), .. } if o == owner
        ));
        assert!(matches!(
            Attempt::parse(&arr(&[0, -5]), "r", "acquire").unwrap(),
            Attempt::Busy { retry_in, .. } if retry_in == Duration::ZERO
        ));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        for bad in [
            Value::Nil,
            // A bare token is a grant only when positive.
            Value::Int(0),
            Value::Int(-3),
            arr(&[]),
            arr(&[2, 1]),
            arr(&[1, -1]),
            Value::Array(vec![Value::Int(1), Value::Nil]),
            Value::Array(vec![Value::Int(0), Value::SimpleString("x".into())]),
        ] {
            let err = Attempt::parse(&bad, "r", "acquire").unwrap_err();
            assert!(
                matches!(err, LockError::Protocol { .. }),
                "{bad:?}: {err:?}"
            );
        }
    }
}
