//! The inside of a held semaphore permit or RW lock: what the public guards
//! ([`RedisPermitGuard`](super::RedisPermitGuard),
//! [`RedisReadGuard`](super::RedisReadGuard),
//! [`RedisWriteGuard`](super::RedisWriteGuard)) share.
//!
//! It owns the watchdog lease (dropping it stops renewal) and the release
//! operation, and runs that operation exactly once: now in
//! [`Hold::release`], or in a background task from `Drop`.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::context::{RedisLocks, bad_reply};
use super::lease::{Expired, LeaseHandle, Renewal};
use super::ops;
use super::waiting::ScriptCall;
use crate::error::LockError;
use crate::guard::Lost;
use crate::options::Mode;
use crate::stats::Held;

/// A held permit or lock.
pub(crate) struct Hold {
    client: RedisLocks,
    resource: String,
    mode: Mode,
    fencing: u64,
    /// The lease's lost signal (its token and its deadline), kept after
    /// the lease handle is dropped.
    lost: Lost,
    /// Renewal runs while this is `Some`.
    lease: Option<LeaseHandle>,
    /// The renewal call, without the TTL the watchdog appends (for
    /// `extend`).
    renew: ScriptCall,
    /// `None` once released (by `release` or `Drop`).
    release: Option<ScriptCall>,
    /// Counts the hold in the stats registry (set once acquired).
    stats: Option<Held>,
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
        client: &RedisLocks,
        resource: &str,
        mode: Mode,
        fencing: u64,
        sent_at: Instant,
        ttl: Duration,
        renew: ScriptCall,
        release: ScriptCall,
    ) -> Result<Self, Expired> {
        // The watchdog appends the TTL as the renewal script's last argument.
        let lease = client.register_lease(client.lease(
            resource,
            renew.script,
            renew.keys.clone(),
            renew.args.clone(),
            ttl,
            sent_at,
        ))?;
        Ok(Self {
            client: client.clone(),
            resource: resource.to_owned(),
            mode,
            fencing,
            lost: lease.lost(),
            lease: Some(lease),
            renew,
            release: Some(release),
            stats: None,
        })
    }

    /// Counts this hold in the stats registry until it ends.
    pub(crate) fn count(&mut self, held: Held) {
        self.stats = Some(held);
    }

    /// Sets the lease to `ttl` from now if still held; the watchdog renews
    /// with `ttl` from then on.
    pub(crate) async fn extend(&self, ttl: Duration) -> Result<(), LockError> {
        // The lease rules of an acquisition (a TTL the op timeout leaves
        // room in) apply to an extend too.
        self.client.options().check_lease(ttl)?;
        let Some(lease) = &self.lease else {
            return Err(LockError::NotHeld {
                resource: self.resource.clone(),
            });
        };
        let ms = ops::ms(ttl);
        let keys: Vec<&str> = self.renew.keys.iter().map(String::as_str).collect();
        let mut args: Vec<&str> = self.renew.args.iter().map(String::as_str).collect();
        args.push(&ms);
        let send = || async {
            let renewed: i64 = ops::invoke(
                &self.client,
                &self.resource,
                "extend",
                self.renew.script,
                &keys,
                &args,
            )
            .await?;
            Ok(if renewed == 1 {
                Renewal::Renewed
            } else {
                Renewal::NotOwner
            })
        };
        let opts = self.client.options();
        lease
            .extend(ttl, opts.renew_interval_for(ttl), opts.drift_for(ttl), send)
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
        self.lost.clone()
    }

    /// Lost as of now: the watchdog said so, or the lease's deadline has
    /// passed by the clock (however late the watchdog runs).
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.is_lost()
    }

    /// Stops renewal and releases now.
    ///
    /// `Ok` when the server confirmed it held our token; [`LockError::NotHeld`]
    /// when it did not (the lease had expired or was taken over).
    pub(crate) async fn release(&mut self) -> Result<(), LockError> {
        // Stop renewing before the release is sent (invariant 4); a lost
        // hold stays lost (invariant 3).
        let lost = self
            .lease
            .take()
            .and_then(|l| l.is_lost().then(|| l.lost_error()));
        let Some(op) = self.release.as_ref() else {
            return Ok(());
        };
        // The op stays in place until the reply is in: if this future is
        // dropped mid-flight, `Drop` releases again in the background (the
        // script compares tokens, so a second release is harmless).
        // Retried while a Cluster slot changes hands, within op_timeout, so
        // that `Ok` means the key is gone.
        let limit = self.client.options().request_timeout();
        let call = (op.script, &op.keys[..], &op.args[..]);
        let result = (self.client)
            .run_release(&self.resource, "release", call, None, limit)
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
                resource: self.resource.clone(),
            }),
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(stats) = &mut self.stats
            && self.lost.is_lost()
        {
            stats.lost();
        }
        self.lease = None;
        if let Some(op) = self.release.take() {
            self.client
                .spawn_release(self.resource.clone(), op.script, op.keys, op.args, None, ());
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

/// The guard surface shared by the permit and RW-lock guards: inherent
/// `resource`/`fencing_token`/`lost`/`is_lost`/`release`, `Debug`,
/// [`RawGuard`](crate::RawGuard) and `From<_> for LockGuard`. The type must
/// be a struct with a single field `held: Hold`.
macro_rules! held_guard {
    ($guard:ident, $what:literal) => {
        impl $guard {
            #[doc = concat!("The name of the ", $what, ".")]
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::redis::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
            /// tracing::info!(resource = guard.resource(), "holding");
            /// # Ok(())
            /// # }
            /// ```
            pub fn resource(&self) -> &str {
                self.held.resource()
            }

            /// The fencing token: strictly increases across successive
            /// holders of this resource (the counter is shared by the
            /// semaphore, RW lock and lock of one name on one server).
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::redis::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
            /// let token = guard.fencing_token();
            /// // Storage that remembers the highest token it saw refuses a stale holder:
            /// let update = format!("UPDATE report SET body = $1, fence = {token} WHERE fence < {token}");
            /// # let _ = update;
            /// # Ok(())
            /// # }
            /// ```
            pub fn fencing_token(&self) -> u64 {
                self.held.fencing_token()
            }

            /// Completes when the hold is lost: renewal found it gone or
            /// taken over, or could not confirm it before its TTL (minus the
            /// drift margin) ran out.
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::redis::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
            /// tokio::select! {
            ///     () = guard.lost() => tracing::warn!("lost {}: stopping", guard.resource()),
            ///     () = tokio::time::sleep(std::time::Duration::from_secs(60)) => { /* the work */ }
            /// }
            /// # Ok(())
            /// # }
            /// ```
            pub fn lost(&self) -> $crate::Lost {
                self.held.lost()
            }

            /// Whether the hold is lost, as of the moment of asking: the
            /// lease's deadline is compared with the clock now, so this never
            /// says held after the deadline, however late the watchdog runs
            /// (after a pause of the process, say). A pause *between* this
            /// check and the write it guards is what the
            /// [`fencing_token`](Self::fencing_token) is for.
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::redis::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
            /// for batch in 0..10 {
            ///     if guard.is_lost() {
            ///         break; // someone else may hold it now: write nothing more
            ///     }
            ///     # let _ = batch;
            /// }
            /// # Ok(())
            /// # }
            /// ```
            pub fn is_lost(&self) -> bool {
                self.held.is_lost()
            }

            /// Runs `fut` while held; if the hold is lost first, `fut` is
            /// dropped and [`LockError::Lost`](crate::LockError::Lost)
            /// returned. The lost signal is looked at before `fut` at every
            /// poll and compares the lease's deadline with the clock, so
            /// `fut` is not polled again once the deadline has passed.
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::redis::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
            /// let rows = guard.run_until_lost(async { /* the work */ 42 }).await?;
            /// assert_eq!(rows, 42);
            /// # Ok(())
            /// # }
            /// ```
            ///
            /// # Errors
            ///
            /// [`LockError::Lost`](crate::LockError::Lost) if the lock is lost before `fut` completes (`fut` is then dropped).
            ///
            /// # Cancel safety
            ///
            /// Dropping the returned future drops `fut`; the hold stays.
            pub async fn run_until_lost<F: ::std::future::Future>(
                &self,
                fut: F,
            ) -> Result<F::Output, $crate::LockError> {
                let lost = self.held.lost();
                ::tokio::select! {
                    biased;
                    () = lost => Err($crate::LockError::Lost {
                        resource: self.held.resource().to_owned(),
                    }),
                    out = fut => Ok(out),
                }
            }

            /// Sets the lease to `ttl` from now (if still held); the
            /// watchdog renews with `ttl` from then on.
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::redis::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
            /// // A long step ahead: keep the lock for 10 minutes should this process stall.
            /// guard.extend(std::time::Duration::from_secs(600)).await?;
            /// # Ok(())
            /// # }
            /// ```
            ///
            /// # Errors
            ///
            /// [`LockError::Lost`](crate::LockError::Lost) if the lost
            /// signal had fired or fires meanwhile;
            /// [`LockError::NotHeld`](crate::LockError::NotHeld) (and the
            /// lost signal fires) if it is no longer held;
            /// [`LockError::InvalidArgument`](crate::LockError::InvalidArgument)
            /// for a TTL the client refuses.
            ///
            /// # Cancel safety
            ///
            /// If the future is dropped the extension may or may not have
            /// reached Redis; the watchdog keeps renewing either way.
            pub async fn extend(
                &self,
                ttl: ::std::time::Duration,
            ) -> Result<(), $crate::LockError> {
                self.held.extend(ttl).await
            }

            /// Gives it back now and reports errors.
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::redis::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
            /// match guard.release().await {
            ///     Err(e) if e.is_lost() => tracing::warn!("the lease had run out before the release"),
            ///     other => other?,
            /// }
            /// # Ok(())
            /// # }
            /// ```
            ///
            /// # Errors
            ///
            /// [`LockError::Lost`](crate::LockError::Lost) if the lost
            /// signal had fired;
            /// [`LockError::NotHeld`](crate::LockError::NotHeld) if the
            /// server no longer had it; Redis errors as for acquisition. `Ok`
            /// means the key is gone: a release refused while a Cluster slot
            /// changes hands (`TRYAGAIN`, `CLUSTERDOWN`) is retried within
            /// the client's `op_timeout` before it fails with
            /// [`LockError::Unavailable`](crate::LockError::Unavailable).
            ///
            /// # Cancel safety
            ///
            /// If the future is dropped before it completes, the release is
            /// retried in the background; its outcome is not reported.
            pub async fn release(mut self) -> Result<(), $crate::LockError> {
                self.held.release().await
            }
        }

        impl ::std::fmt::Debug for $guard {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($guard))
                    .field("resource", &self.held.resource())
                    .field("mode", &self.held.mode())
                    .field("fencing_token", &self.held.fencing_token())
                    .field("lost", &self.held.is_lost())
                    .finish()
            }
        }

        #[::async_trait::async_trait]
        impl $crate::RawGuard for $guard {
            fn resource(&self) -> &str {
                self.held.resource()
            }

            fn mode(&self) -> $crate::Mode {
                self.held.mode()
            }

            fn fencing_token(&self) -> Option<u64> {
                Some(self.held.fencing_token())
            }

            fn lost(&self) -> $crate::Lost {
                self.held.lost()
            }

            async fn release(mut self: Box<Self>) -> Result<(), $crate::LockError> {
                self.held.release().await
            }
        }

        impl From<$guard> for $crate::LockGuard {
            fn from(guard: $guard) -> Self {
                $crate::LockGuard::new(guard)
            }
        }
    };
}
pub(crate) use held_guard;
