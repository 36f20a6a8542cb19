//! The inside of a held semaphore permit or RW lock: what the public guards
//! ([`RedisPermitGuard`](crate::redis::RedisPermitGuard),
//! [`RedisReadGuard`](crate::redis::RedisReadGuard),
//! [`RedisWriteGuard`](crate::redis::RedisWriteGuard)) share.
//!
//! It owns the watchdog lease (dropping it stops renewal) and the release
//! operation, and runs that operation exactly once: now in
//! [`Hold::release`], or in a background task from `Drop`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::LockError;
use crate::lease::LeaseHold;
use crate::lost::{LeaseDeadline, Lost, Moment};
use crate::options::Mode;
use crate::redis::acquire::waiting::ScriptCall;
use crate::redis::conn::pool::Conn;
use crate::redis::context::ops;
use crate::redis::context::{Context, bad_reply};
use crate::redis::lease::{Expired, Lease, LeaseHandle, Observer, Renewal};
use crate::stats::Held;

/// A held permit or lock.
pub(crate) struct Hold {
    client: Context,
    resource: Arc<str>,
    mode: Mode,
    fencing: u64,
    /// The lease's deadline and lost state (its lost signal), kept after
    /// the lease handle is dropped.
    end: LeaseDeadline,
    /// Renewal runs while this is `Some`.
    lease: Option<LeaseHandle>,
    /// The renewal call, without the TTL the watchdog appends (for
    /// `extend`).
    renew: ScriptCall,
    /// `None` once released (by `release` or `Drop`).
    release: Option<ScriptCall>,
    /// Counts the hold in the stats registry (set once acquired).
    stats: Option<Held>,
    /// The connection the grant came on, kept for the release (see
    /// [`on`](Self::on)).
    conn: Option<Conn>,
}

impl Hold {
    /// Takes over a grant made with a lease of `ttl`: registers the lease
    /// with the watchdog.
    ///
    /// # Errors
    ///
    /// [`Expired`] if the grant's validity had passed (invariant 1): the
    /// caller undoes it instead.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client: &Context,
        resource: &Arc<str>,
        mode: Mode,
        fencing: u64,
        sent_at: Moment,
        ttl: Duration,
        renew: ScriptCall,
        release: ScriptCall,
    ) -> Result<Self, Expired> {
        // The watchdog appends the TTL as the renewal script's last argument.
        let lease = client.lease(
            resource,
            renew.script,
            renew.keys.clone(),
            renew.args.clone(),
            ttl,
            sent_at,
        );
        Self::registered(client, lease, mode, fencing, renew, release)
    }

    /// Takes over one server's grant of a lock held on several (Redlock's
    /// members): as [`new`](Self::new), with the lock's `drift`, and the
    /// lease reported to `observer` as `member` on every change.
    ///
    /// # Errors
    ///
    /// [`Expired`] if the grant's validity had passed (invariant 1).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn member(
        client: &Context,
        resource: &Arc<str>,
        fencing: u64,
        sent_at: Moment,
        ttl: Duration,
        drift: Duration,
        renew: ScriptCall,
        release: ScriptCall,
        observer: (Arc<dyn Observer>, usize),
    ) -> Result<Self, Expired> {
        let mut lease = client.lease(
            resource,
            renew.script,
            renew.keys.clone(),
            renew.args.clone(),
            ttl,
            sent_at,
        );
        lease.drift = drift;
        lease.observer = Some(observer);
        Self::registered(client, lease, Mode::Exclusive, fencing, renew, release)
    }

    fn registered(
        client: &Context,
        lease: Lease,
        mode: Mode,
        fencing: u64,
        renew: ScriptCall,
        release: ScriptCall,
    ) -> Result<Self, Expired> {
        let resource = lease.resource.clone();
        let lease = client.register_lease(lease)?;
        Ok(Self {
            client: client.clone(),
            resource,
            mode,
            fencing,
            end: lease.deadline().clone(),
            lease: Some(lease),
            renew,
            release: Some(release),
            stats: None,
            conn: None,
        })
    }

    /// Releases on `conn`, the connection the grant came on, while it stays
    /// healthy: the release then needs no connection of the pool's, and
    /// runs after everything the acquisition sent (requests on one
    /// connection run in order).
    pub(crate) fn on(mut self, conn: Conn) -> Self {
        self.conn = Some(conn);
        self
    }

    /// Counts this hold in the stats registry until it ends.
    pub(crate) fn count(&mut self, held: Held) {
        self.stats = Some(held);
    }

    /// Sets the lease to `ttl` from now if still held; the watchdog renews
    /// with `ttl` from then on.
    pub(crate) async fn extend(&self, ttl: Duration) -> Result<(), LockError> {
        self.extend_with(ttl, None).await
    }

    /// As [`extend`](Self::extend), with a clock-drift allowance of its own
    /// (a Redlock member keeps the Redlock's) instead of the client's.
    pub(crate) async fn extend_with(
        &self,
        ttl: Duration,
        drift: Option<Duration>,
    ) -> Result<(), LockError> {
        // The lease rules of an acquisition (a TTL the op timeout leaves
        // room in) apply to an extend too.
        self.client.options().check_lease(ttl)?;
        let Some(lease) = &self.lease else {
            return Err(LockError::NotHeld {
                resource: self.resource.to_string(),
            });
        };
        let ms = ops::ms(self.client.options().server_ttl(ttl));
        let keys: Vec<&str> = self.renew.keys.iter().map(String::as_str).collect();
        let mut args: Vec<&str> = self.renew.args.iter().map(AsRef::as_ref).collect();
        args.push(&ms);
        // With `wait_for_replicas`, the extend is confirmed by WAIT as the
        // watchdog's renewals are: applied but not replicated, it bounds the
        // lease and lengthens nothing.
        let replicas = self.client.options().wait_for_replicas;
        let send = || async {
            let (renewed, replicated): (i64, bool) = ops::invoke_replicated(
                &self.client,
                &self.resource,
                "extend",
                self.renew.script,
                &keys,
                &args,
                replicas,
            )
            .await?;
            Ok(match (renewed, replicated) {
                (1, true) => Renewal::Renewed,
                (1, false) => Renewal::Unconfirmed,
                _ => Renewal::NotOwner,
            })
        };
        let opts = self.client.options();
        lease
            .extend(
                ttl,
                opts.renew_interval_for(ttl),
                drift.unwrap_or_else(|| opts.drift_for(ttl)),
                send,
            )
            .await
    }

    pub(crate) fn resource(&self) -> &str {
        &self.resource
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    pub(crate) fn fencing_token(&self) -> u64 {
        self.fencing
    }

    pub(crate) fn lost(&self) -> Lost {
        Lost::with_deadline(self.end.token(), self.end.clone())
    }

    /// Lost as of now: the watchdog said so, or the lease's deadline has
    /// passed by the clock (however late the watchdog runs).
    pub(crate) fn is_lost(&self) -> bool {
        self.end.is_lost()
    }

    /// Stops renewal and releases now.
    ///
    /// `Ok` when the server confirmed it held our token; [`LockError::NotHeld`]
    /// when it did not (the lease had expired or was taken over).
    pub(crate) async fn release(&mut self) -> Result<(), LockError> {
        // Stop renewing before the release is sent (invariant 4); a lost
        // hold stays lost (invariant 3).
        // One reading of the clocks: the lease's end, and the release's
        // time limit.
        let now = Moment::now();
        let lost = self
            .lease
            .take()
            .and_then(|l| l.is_lost_at(now).then(|| l.lost_error()));
        // The hold ends for the stats here, lost or not, as read just now
        // (`Drop` then has nothing to read again).
        if let Some(mut stats) = self.stats.take()
            && lost.is_some()
        {
            stats.lost();
        }
        let Some(op) = self.release.as_ref() else {
            return Ok(());
        };
        // The op stays in place until the reply is in: if this future is
        // dropped mid-flight, `Drop` releases again in the background (the
        // script compares tokens, so a second release is harmless).
        // Retried while a Cluster slot changes hands, within op_timeout, so
        // that `Ok` means the key is gone.
        let limit = self.client.request_timeout();
        let call = (op.script, &op.keys[..], &op.args[..]);
        let conn = self.conn.take().filter(Conn::is_healthy);
        let result = (self.client)
            .run_release_from(&self.resource, "release", call, conn, (now.at, limit))
            .await;
        self.release = None;
        let held = match result? {
            redis::Value::Int(n) => n == 1,
            other => return Err(bad_reply(&self.resource, "release", &other)),
        };
        match (held, lost) {
            (true, Some(lost)) => Err(lost),
            (true, None) => Ok(()),
            (false, _) => Err(LockError::NotHeld {
                resource: self.resource.to_string(),
            }),
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(stats) = &mut self.stats
            && self.end.is_lost()
        {
            stats.lost();
        }
        self.lease = None;
        if let Some(op) = self.release.take() {
            let conn = self.conn.take().filter(Conn::is_healthy);
            let resource = self.resource.clone();
            self.client
                .spawn_release(resource, op.script, op.keys, op.args, conn, ());
        }
    }
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("resource", &self.resource)
            .field("mode", &self.mode)
            .field("fencing_token", &self.fencing)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl LeaseHold for Hold {
    fn resource(&self) -> &str {
        Hold::resource(self)
    }

    fn mode(&self) -> Mode {
        Hold::mode(self)
    }

    fn fencing_token(&self) -> u64 {
        Hold::fencing_token(self)
    }

    fn lost(&self) -> Lost {
        Hold::lost(self)
    }

    fn is_lost(&self) -> bool {
        Hold::is_lost(self)
    }

    async fn extend(&self, ttl: Duration) -> Result<(), LockError> {
        Hold::extend(self, ttl).await
    }

    async fn release(&mut self) -> Result<(), LockError> {
        Hold::release(self).await
    }
}
