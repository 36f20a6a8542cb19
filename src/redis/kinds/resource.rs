//! One named resource's exclusive and shared holds: what [`RedisLock`] and
//! [`RedisRwLock`] are thin handles over.
//!
//! One name is one lock (the lease core's invariant 6): the plain lock's
//! exclusive mode *is* the RW lock's writer and its shared mode the RW
//! lock's readers, on the same keys ([`ResourceKeys`](crate::redis::protocol::keys::ResourceKeys)), so that
//! `lock("x")` and `rwlock("x")` exclude each other exactly as exclusive
//! and shared file locks on one name do. The scripts refuse a name in use
//! as a semaphore ([`LockError::WrongKind`]).
//!
//! # How it works
//!
//! - Exclusive: `INCR` of the fencing counter and `SET NX PX` on `:lock`:
//!   readers and a semaphore's holders mark `:lock` while they hold, so a
//!   free `:lock` is a free name. When only readers stand in the way (their
//!   mark), a blocking attempt sets its *intent* (`:intent`, refreshed on
//!   every attempt), which keeps new readers out, so the readers drain and
//!   the writer goes next: a stream of readers cannot starve it. The writer
//!   withdraws its intent with its grant.
//! - Shared: a member of the `:readers` ZSET scored by its expiry, and the
//!   readers' mark on `:lock`, when there is no exclusive holder and no
//!   writer intent.
//! - An uncontended acquisition is one script call: a task of this process
//!   queues in-process only behind another, or after a busy first attempt.
//! - Every grant `INCR`s the resource's fencing counter (a busy exclusive
//!   attempt spends one too: tokens increase, with gaps); every release
//!   publishes on the release channel; a busy answer says when the blocking
//!   lease ends, so waiters never poll blindly ([`crate::redis::acquire::waiting`]).
//!
//! [`RedisLock`]: crate::redis::RedisLock
//! [`RedisRwLock`]: crate::redis::RedisRwLock
//! [`LockError::WrongKind`]: crate::LockError::WrongKind

use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, Script};

use crate::error::LockError;
use crate::lost::Moment;
use crate::options::{Deadline, Mode};
use crate::redis::acquire::held::Hold;
use crate::redis::acquire::waiting::{self, Attempt, Pending, ScriptCall, Undo, WaitFor};
use crate::redis::conn::pool::Conn;
use crate::redis::context::ops;
use crate::redis::context::queue::LocalTurn;
use crate::redis::context::{Context, Named};
use crate::redis::lease::{Expired, retry_after_late_grant};
use crate::redis::protocol::keys;
use crate::redis::protocol::token;
use crate::redis::protocol::{intent_ttl, scripts};
use crate::stats::Acquisition;

/// The exclusive script's busy reason: readers hold it and our intent is set.
const REASON_INTENT_SET: i64 = 3;

/// One resource name on one client (clone-cheap: two pointers).
#[derive(Clone)]
pub(crate) struct Resource {
    pub(crate) client: Context,
    /// The name (shared with the acquisitions' and holds' own records of
    /// it), its keys and stats entry: the client's, shared by every handle
    /// of the name.
    pub(crate) named: Arc<Named>,
}

impl Resource {
    /// The resource `name` (validated by the client the first time it
    /// sees the name).
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for a name the client refuses.
    pub(crate) fn new(client: &Context, name: &str) -> Result<Self, LockError> {
        Ok(Self {
            named: client.named(name)?,
            client: client.clone(),
        })
    }

    /// Takes a hold in `mode` with a lease of `lease` (default: the
    /// client's TTL), waiting until `deadline`.
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] naming the holder; [`LockError::WrongKind`]
    /// if the name is a semaphore; [`LockError::InvalidArgument`] for a
    /// lease the client refuses; [`LockError::Closed`] after shutdown; Redis
    /// errors.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the in-process queue at once; whatever an
    /// in-flight attempt may take on the server (a hold, a writer intent) is
    /// undone in the background with the attempt's own value, on the
    /// attempt's connection (invariant 5), and expires by its TTL if that
    /// fails.
    pub(crate) async fn hold(
        &self,
        mode: Mode,
        deadline: &Deadline,
        lease: Option<Duration>,
    ) -> Result<Hold, LockError> {
        // Every wait for a lock or RW lock is counted here.
        let attempt = self.named.begin();
        let busy = match self.first_at_hand(mode, lease).await {
            Ok(AtHand::Held(hold)) => return attempt.record(Ok(hold), Hold::count),
            Ok(AtHand::Busy(_)) => {
                attempt.contended();
                true
            }
            Ok(AtHand::General) => false,
            Err(e) => return attempt.record(Err(e), Hold::count),
        };
        // Boxed: the general path (the wait, a failover, a lease of its own)
        // stays out of the future of the uncontended acquisition.
        let result = Box::pin(self.wait_for_hold(mode, deadline, lease, &attempt, busy)).await;
        attempt.record(result, Hold::count)
    }

    /// The first attempt, when it can be an uncontended acquisition's one
    /// script call and nothing else: the client's own lease, one server
    /// with a connection at hand, no failover followed, no replicas waited
    /// for, and no task of this process queued for the name. The call is
    /// built straight into the command, sent once
    /// ([`waiting::attempt_on`]), and undone from [`Armed`] if it may have
    /// taken something the acquisition does not keep; the hold keeps the
    /// connection for its release.
    ///
    /// [`AtHand::General`] when any of that does not hold, when the
    /// connection broke on the way (the attempt is undone in the
    /// background), or when a grant came too late (undone first): the
    /// general path then starts afresh.
    /// [`AtHand::Busy`]: the name is held (nothing was taken).
    ///
    /// # Errors
    ///
    /// [`LockError::Closed`] after shutdown; [`LockError::WrongKind`]; Redis
    /// errors of the call.
    ///
    /// # Cancel safety
    ///
    /// As [`hold`](Self::hold): dropped, the acquisition's undo runs in the
    /// background, on the attempt's connection.
    async fn first_at_hand(
        &self,
        mode: Mode,
        lease: Option<Duration>,
    ) -> Result<AtHand, LockError> {
        let client = &self.client;
        let inner = &client.inner;
        let ttl = inner.timing.ttl;
        if lease.is_some_and(|l| l != ttl)
            || inner.follows_failovers
            || inner.opts.wait_for_replicas.is_some()
            || inner.local.has_queue(&self.named.name)
        {
            return Ok(AtHand::General);
        }
        client.check_open(&self.named.name)?;
        let Some(mut conn) = inner.conns.ready() else {
            return Ok(AtHand::General);
        };
        let value = token::fresh_value(&self.named.name, mode)?;
        let (what, script, cmd) = self.first_command(mode, &value);
        let mut armed = Armed {
            res: self,
            mode,
            value: &value,
            conn: &mut conn,
            armed: true,
        };
        let attempt = waiting::attempt_on(armed.conn, script, &cmd, &self.named.name, what);
        // Broken on the way: the undo runs from `armed`'s drop.
        let Some((answer, sent_at)) = attempt.await? else {
            return Ok(AtHand::General);
        };
        let Attempt::Granted { fencing } = answer else {
            // A busy answer took nothing (a first attempt sets no intent).
            armed.armed = false;
            return Ok(AtHand::Busy(answer));
        };
        let release = self.release_call(mode, &value);
        let Ok(hold) = self.take(mode, release, fencing, sent_at, ttl) else {
            // Too late to keep (invariant 1): undone before the general
            // path tries again, which would otherwise find the name still
            // held by this very grant (a `try_acquire` would say busy).
            armed.armed = false;
            drop(armed);
            let undo = self.undo_of(mode, &value);
            Pending::undo_on(client, &self.named.name, conn, undo, ttl).await;
            retry_after_late_grant(&mut 0, true, &self.named.name, what)?;
            return Ok(AtHand::General);
        };
        armed.armed = false;
        drop(armed);
        Ok(AtHand::Held(hold.on(conn)))
    }

    /// The first attempt's command in `mode` with the client's own lease:
    /// what it is for logs, its script, and the `EVALSHA`.
    fn first_command(&self, mode: Mode, value: &str) -> (&'static str, &'static Script, Cmd) {
        let sets = &self.named.keys.sets;
        let a = &self.client.inner.timing.args;
        match mode {
            Mode::Shared => {
                let script = &*scripts::READ;
                let cmd = ops::evalsha(script, &sets.shared_acquire, &[value, &*a.server_ms]);
                ("shared lock", script, cmd)
            }
            _ => {
                // No intent: a busy answer takes nothing.
                let script = &*scripts::EXCLUSIVE_ACQUIRE;
                let args = [value, &*a.server_ms, &*a.zero];
                let cmd = ops::evalsha(script, &sets.exclusive_acquire, &args);
                ("exclusive lock", script, cmd)
            }
        }
    }

    /// The general path of [`hold`](Self::hold); `busy`: a first attempt
    /// was made and found the name held (the wait starts with the queue).
    async fn wait_for_hold(
        &self,
        mode: Mode,
        deadline: &Deadline,
        lease: Option<Duration>,
        attempt: &Acquisition,
        busy: bool,
    ) -> Result<Hold, LockError> {
        let ttl = self.client.lease_for(lease)?;
        let what = match mode {
            Mode::Shared => "shared lock",
            _ => "exclusive lock",
        };
        // Behind another task of this process, wait for the turn first;
        // else one attempt before any queue entry (the queue is for
        // waiters): an uncontended acquisition is that one attempt.
        let local = &self.client.inner.local;
        let mut turn = None;
        if local.has_queue(&self.named.name) {
            // Refused before waiting there (`Pending` refuses it too).
            self.client.check_open(&self.named.name)?;
            turn = Some(self.local_turn(deadline, attempt).await?);
        }
        let (claim, mut pending) = self.begin(mode, ttl, Some(deadline)).await?;
        if turn.is_none() && !busy {
            let first = match mode {
                Mode::Shared => self.shared_call(&claim.value, ttl),
                // No intent yet: a busy answer takes nothing.
                _ => self.exclusive_call(&claim.value, Queue::No, ttl),
            };
            let grant =
                |fencing, sent_at| self.take(mode, claim.release.clone(), fencing, sent_at, ttl);
            if let Some(hold) =
                waiting::first_attempt(&mut pending, &first, what, attempt, grant).await?
            {
                pending.done();
                return Ok(hold);
            }
        }
        if turn.is_none() {
            // Busy (or a grant too late, undone, or a failover or slot move
            // the wait rides out): queue, then wait on Redis as below (its
            // first attempt comes at once).
            turn = Some(self.local_turn(deadline, attempt).await?);
        }
        let (call, after_claim, max_nap) = match mode {
            Mode::Shared => (self.shared_call(&claim.value, ttl), None, ttl),
            // Refresh the intent well before it expires; once set, withdraw
            // it with the grant.
            _ => (
                self.exclusive_call(&claim.value, Queue::Intent, ttl),
                Some(self.exclusive_call(&claim.value, Queue::IntentSet, ttl)),
                intent_ttl(ttl) / 3,
            ),
        };
        let wait = WaitFor {
            client: &self.client,
            resource: &self.named.name,
            channel: &self.named.keys.channel,
            what,
            max_nap,
            turn: turn.as_ref(),
            stats: attempt,
            after_claim: after_claim.as_ref(),
        };
        // Boxed, as the turn (`local_turn`): the wait stays out of the
        // future of every acquisition, which mostly never waits. With the
        // other cold paths boxed (a pool refill, an undo, `WAIT`, a
        // NOSCRIPT reload), `RedisLock::acquire`'s future went from 5.8 KB
        // to 3.0 KB and a guard's `release` from 4.1 KB to 2.7 KB
        // (`-Zprint-type-sizes`), for ~1% fewer client instructions; the
        // 64-task throughput did not move measurably.
        let result = Box::pin(waiting::wait_until_granted(
            wait,
            deadline,
            &mut pending,
            &call,
            |reason| mode != Mode::Shared && reason == REASON_INTENT_SET,
            |fencing, sent_at| self.take(mode, claim.release.clone(), fencing, sent_at, ttl),
        ))
        .await;
        match result {
            Ok(hold) => {
                pending.done();
                drop(turn);
                Ok(hold)
            }
            Err(e) => {
                // Withdraw a writer intent now rather than in the
                // background, so the readers it blocks go on at once.
                if e.is_timeout() {
                    pending.undo_now().await;
                }
                Err(e)
            }
        }
    }

    /// This task's turn in the process's queue of the name, boxed: the
    /// wait stays out of the future of every acquisition, which mostly
    /// never waits.
    async fn local_turn(
        &self,
        deadline: &Deadline,
        attempt: &Acquisition,
    ) -> Result<LocalTurn, LockError> {
        let name = &self.named.name;
        Box::pin(waiting::local_turn(
            &self.client,
            name,
            name,
            deadline,
            attempt,
        ))
        .await
    }

    /// Takes a hold in `mode` if it is free now (leaving no writer intent
    /// behind).
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] naming the holder; [`LockError::WrongKind`];
    /// Redis errors.
    ///
    /// # Cancel safety
    ///
    /// As [`hold`](Self::hold).
    pub(crate) async fn try_hold(
        &self,
        mode: Mode,
        lease: Option<Duration>,
    ) -> Result<Hold, LockError> {
        // Every try of a lock or RW lock is counted here.
        let attempt = self.named.begin();
        let result = match self.first_at_hand(mode, lease).await {
            Ok(AtHand::Held(hold)) => Ok(hold),
            Ok(AtHand::Busy(busy)) => Err(waiting::would_block(&self.named.name, busy)),
            // Boxed, as `hold`'s general path.
            Ok(AtHand::General) => Box::pin(self.try_once(mode, lease)).await,
            Err(e) => Err(e),
        };
        attempt.record(result, Hold::count)
    }

    async fn try_once(&self, mode: Mode, lease: Option<Duration>) -> Result<Hold, LockError> {
        // (`Pending::new` refuses a client that was shut down.)
        let ttl = self.client.lease_for(lease)?;
        let (claim, mut pending) = self.begin(mode, ttl, None).await?;
        let (what, call) = match mode {
            Mode::Shared => ("shared lock", self.shared_call(&claim.value, ttl)),
            _ => (
                "exclusive lock",
                self.exclusive_call(&claim.value, Queue::No, ttl),
            ),
        };
        let hold = waiting::try_once(&mut pending, &call, what, |fencing, sent_at| {
            self.take(mode, claim.release.clone(), fencing, sent_at, ttl)
        })
        .await?;
        pending.done();
        Ok(hold)
    }

    /// Whether anyone holds the resource now, exclusively or shared.
    ///
    /// # Errors
    ///
    /// Redis errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub(crate) async fn is_locked(&self) -> Result<bool, LockError> {
        // The lock key says it in one read, but for readers whose mark
        // outlives them (they crashed): then count the live ones.
        let key = &self.named.keys.lock;
        let value: Option<Vec<u8>> = self
            .client
            .retry_once(&self.named.name, "check", |mut conn| async move {
                redis::cmd("GET").arg(key).query_async(&mut conn).await
            })
            .await?;
        match value.as_deref() {
            None => Ok(false),
            // A semaphore of the name: no lock is held.
            Some(v) if v == keys::SEMAPHORE_MARK.as_bytes() => Ok(false),
            Some(v) if v == keys::READERS_MARK.as_bytes() => {
                let readers = ops::count_live(
                    &self.client,
                    &self.named.name,
                    "count readers",
                    &self.named.keys.readers,
                )
                .await?;
                Ok(readers > 0)
            }
            Some(_) => Ok(true),
        }
    }

    /// A fresh owner value and the acquisition it belongs to (its
    /// connection, and the release that undoes it if it is abandoned).
    /// (Waiting until `deadline` for a connection, if given: see
    /// [`Pending::new_within`].)
    async fn begin(
        &self,
        mode: Mode,
        ttl: Duration,
        deadline: Option<&Deadline>,
    ) -> Result<(Claim, Pending), LockError> {
        let value = token::fresh_value(&self.named.name, mode)?;
        let release = self.release_call(mode, &value);
        let undo = self.undo_calls(mode, &release);
        let pending = match deadline {
            Some(d) => Pending::new_within(&self.client, &self.named.name, undo, ttl, d).await?,
            None => Pending::new(&self.client, &self.named.name, undo, ttl).await?,
        };
        Ok((Claim { value, release }, pending))
    }

    /// A granted attempt becomes a hold (or is refused as expired:
    /// invariant 1).
    /// (`release`: the hold's release, moved in; the general path's claim
    /// keeps its own for the attempts after a late grant.)
    fn take(
        &self,
        mode: Mode,
        release: ScriptCall,
        fencing: u64,
        sent_at: Moment,
        ttl: Duration,
    ) -> Result<Hold, Expired> {
        let (script, keys) = match mode {
            Mode::Shared => (&*scripts::RENEW_MEMBER, &self.named.keys.sets.shared_renew),
            _ => (&*scripts::EXTEND, &self.named.keys.sets.exclusive_renew),
        };
        // The release's arguments: the renewal scripts read the value first
        // and the TTL the watchdog appends last.
        let renew = ScriptCall {
            script,
            keys: keys.clone(),
            args: release.args.clone(),
        };
        Hold::new(
            &self.client,
            &self.named.name,
            mode,
            fencing,
            sent_at,
            ttl,
            renew,
            release,
        )
    }

    fn exclusive_call(&self, value: &Arc<str>, queue: Queue, ttl: Duration) -> ScriptCall {
        let a = self.client.lease_args(ttl);
        let intent = match queue {
            Queue::No => &a.zero,
            Queue::Intent => &a.intent_ms,
            Queue::IntentSet => &a.intent_set_ms,
        };
        ScriptCall {
            script: &scripts::EXCLUSIVE_ACQUIRE,
            keys: self.named.keys.sets.exclusive_acquire.clone(),
            args: Arc::new([value.clone(), a.server_ms.clone(), intent.clone()]),
        }
    }

    fn shared_call(&self, value: &Arc<str>, ttl: Duration) -> ScriptCall {
        ScriptCall {
            script: &scripts::READ,
            keys: self.named.keys.sets.shared_acquire.clone(),
            args: Arc::new([value.clone(), self.client.lease_args(ttl).server_ms.clone()]),
        }
    }

    /// The release of a hold in `mode` (also the undo of its attempts).
    fn release_call(&self, mode: Mode, value: &Arc<str>) -> ScriptCall {
        let k = &self.named.keys;
        let cluster = self.client.is_cluster();
        let (script, keys) = match mode {
            Mode::Shared => (scripts::READ_RELEASE.get(cluster), &k.sets.shared_release),
            _ => (scripts::RELEASE.get(cluster), &k.sets.exclusive_release),
        };
        ScriptCall {
            script,
            keys: keys.clone(),
            args: Arc::new([value.clone(), k.channel.clone()]),
        }
    }

    /// What undoes an acquisition in `mode`: its hold, and for a writer
    /// also the intent a busy attempt may have set. One key per call, so
    /// that a Cluster node serves each while the slot migrates (see
    /// `scripts.rs`); they need not be atomic, each compares our value.
    /// The two calls share their arguments.
    fn undo_calls(&self, mode: Mode, release: &ScriptCall) -> Undo {
        match mode {
            Mode::Shared => Undo::release(release.clone()),
            _ => Undo::with_intent(release.clone(), self.named.keys.sets.intent_release.clone()),
        }
    }

    /// What undoes an attempt in `mode` with `value` that has no claim of
    /// its own (the first attempt at hand): its release, then a writer's
    /// intent. Built only when an undo runs.
    fn undo_of(&self, mode: Mode, value: &Arc<str>) -> Undo {
        self.undo_calls(mode, &self.release_call(mode, value))
    }

    /// Undoes an attempt in `mode` with `value` in the background, on
    /// `conn` (so after the attempt: invariant 5): the hold's release, then
    /// a writer's intent ([`Undo::spawn_from`]), as [`Pending`]'s drop does.
    #[cold]
    #[inline(never)]
    fn undo_in_background(&self, mode: Mode, value: &Arc<str>, conn: &Conn) {
        let undo = self.undo_of(mode, value);
        undo.spawn_from(0, &self.client, &self.named.name, conn);
    }
}

/// One acquisition's owner value and the release of its hold (shared by
/// its undo, and by the hold and its renewal once granted).
struct Claim {
    value: Arc<str>,
    release: ScriptCall,
}

/// The undo of a first attempt at hand while it may hold what the
/// acquisition will not keep: dropped armed (the future dropped, an error,
/// a broken connection), it releases the attempt's value in
/// the background, on the attempt's connection, so after the attempt
/// (invariant 5). Borrows everything: building the undo's calls is left to
/// the rare drop that needs them.
struct Armed<'a> {
    res: &'a Resource,
    mode: Mode,
    value: &'a Arc<str>,
    conn: &'a mut Conn,
    armed: bool,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.res
                .undo_in_background(self.mode, self.value, self.conn);
        }
    }
}

/// What [`Resource::first_at_hand`] came to.
enum AtHand {
    /// Granted: the hold.
    Held(Hold),
    /// The name is held (the answer, naming the holder when it can).
    Busy(Attempt),
    /// Not tried, or the outcome was not one of these: take the general
    /// path.
    General,
}

/// How an exclusive attempt queues behind readers
/// (`exclusive_acquire.lua`'s `ARGV[3]`).
#[derive(Clone, Copy)]
enum Queue {
    /// A non-blocking attempt: it sets no intent.
    No,
    /// A blocking attempt sets its intent when readers hold the name.
    Intent,
    /// As `Intent`, after an answer said our intent is set: a grant
    /// withdraws it.
    IntentSet,
}
