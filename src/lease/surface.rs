//! The guard surface every lease backend's guards share, written once:
//! [`LeaseHold`], what a backend's held lease provides, and
//! [`lease_guard!`], which turns a struct holding one into a public guard
//! with the same methods, docs, `Debug`, [`RawGuard`](crate::RawGuard) and
//! [`LockGuard`](crate::LockGuard) conversion on every backend.

use std::time::Duration;

use crate::error::LockError;
use crate::lost::Lost;
use crate::options::Mode;

/// A held lease, as a backend implements it (Redis's `Hold`). The guard
/// surface of [`lease_guard!`] calls nothing else.
pub(crate) trait LeaseHold {
    /// The resource name.
    fn resource(&self) -> &str;

    /// Exclusive or shared.
    fn mode(&self) -> Mode;

    /// The fencing token issued with the grant (a fenced backend's; the
    /// public `fencing_token` is emitted for fenced guards only).
    fn fencing_token(&self) -> u64;

    /// The fencing token as the contract reports it: `None` for a backend
    /// whose tokens are not fencing tokens (Redlock).
    fn fencing(&self) -> Option<u64> {
        Some(self.fencing_token())
    }

    /// The lost signal (token and deadline).
    fn lost(&self) -> Lost;

    /// Lost as of now (the deadline compared with the clock).
    fn is_lost(&self) -> bool {
        self.lost().is_lost()
    }

    /// Sets the lease to `ttl` from now if still held.
    async fn extend(&self, ttl: Duration) -> Result<(), LockError>;

    /// Releases now, exactly once (invariant 4); `Drop` releases otherwise.
    async fn release(&mut self) -> Result<(), LockError>;
}

/// The guard surface of a lease backend's guard, written once: inherent
/// `resource`, `fencing_token`, `lost`, `is_lost`, `run_until_lost`,
/// `extend` and `release`, `Debug`, [`RawGuard`](crate::RawGuard) and
/// `From<_> for LockGuard`.
///
/// `$guard` must be a struct whose field `held` implements [`LeaseHold`];
/// `$module` is the public module that exports it (for the doc examples),
/// `$what` names what it holds ("lock", "semaphore"). A trailing `unfenced`
/// leaves out the public `fencing_token` (and the contract's is `None`),
/// for a backend that cannot issue fencing tokens (Redlock).
macro_rules! lease_guard {
    ($guard:ident, $module:literal, $what:literal) => {
        impl $guard {
            /// The fencing token: strictly increases across successive
            /// holders of this resource (the counter is shared by the
            /// semaphore, RW lock and lock of one name on one server).
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::", $module, "::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
            /// let token = guard.fencing_token();
            /// // Storage that remembers the highest token it saw refuses a stale holder:
            /// let update = format!("UPDATE report SET body = $1, fence = {token} WHERE fence < {token}");
            /// # let _ = update;
            /// # Ok(())
            /// # }
            /// ```
            pub fn fencing_token(&self) -> u64 {
                $crate::lease::LeaseHold::fencing_token(&self.held)
            }
        }

        $crate::lease::lease_guard!(@surface $guard, $module, $what);
    };
    ($guard:ident, $module:literal, $what:literal, unfenced) => {
        $crate::lease::lease_guard!(@surface $guard, $module, $what);
    };
    (@surface $guard:ident, $module:literal, $what:literal) => {
        impl $guard {
            #[doc = concat!("The name of the ", $what, ".")]
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::", $module, "::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
            /// tracing::info!(resource = guard.resource(), "holding");
            /// # Ok(())
            /// # }
            /// ```
            pub fn resource(&self) -> &str {
                $crate::lease::LeaseHold::resource(&self.held)
            }

            /// Completes when the hold is lost: renewal found it gone or
            /// taken over, or could not confirm it before its TTL (minus the
            /// drift margin) ran out.
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::", $module, "::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
            /// tokio::select! {
            ///     () = guard.lost() => tracing::warn!("lost {}: stopping", guard.resource()),
            ///     () = tokio::time::sleep(std::time::Duration::from_secs(60)) => { /* the work */ }
            /// }
            /// # Ok(())
            /// # }
            /// ```
            pub fn lost(&self) -> $crate::Lost {
                $crate::lease::LeaseHold::lost(&self.held)
            }

            /// Whether the hold is lost, as of the moment of asking: the
            /// lease's deadline is compared with the clock now, so this never
            /// says held after the deadline, however late the watchdog runs
            /// (after a pause of the process, say). A pause *between* this
            /// check and the write it guards is what fencing tokens are for
            /// (on a backend that has them).
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::", $module, "::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
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
                $crate::lease::LeaseHold::is_lost(&self.held)
            }

            /// Held, suspect (renewals failing, the deadline not passed yet)
            /// or lost, as of now.
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::", $module, "::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
            /// if guard.state() == lockyard::LeaseState::Suspect {
            ///     // renewals are failing: checkpoint before writing more
            /// }
            /// # Ok(())
            /// # }
            /// ```
            pub fn state(&self) -> $crate::LeaseState {
                $crate::lease::LeaseHold::lost(&self.held).state()
            }

            /// Completes when the hold becomes suspect (a renewal failed;
            /// the next may still get through before the deadline) or lost.
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::", $module, "::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
            /// tokio::select! {
            ///     () = guard.suspect() => tracing::warn!("renewals failing: pausing writes"),
            ///     () = tokio::time::sleep(std::time::Duration::from_secs(60)) => { /* the work */ }
            /// }
            /// # Ok(())
            /// # }
            /// ```
            ///
            /// # Cancel safety
            ///
            /// Dropping it changes nothing; the hold stays.
            pub fn suspect(
                &self,
            ) -> impl ::std::future::Future<Output = ()> + Send + use<> {
                $crate::lease::LeaseHold::lost(&self.held).suspect()
            }

            /// Runs `fut` while held; if the hold is lost first, `fut` is
            /// dropped and [`LockError::Lost`](crate::LockError::Lost)
            /// returned. The lost signal is looked at before `fut` at every
            /// poll and compares the lease's deadline with the clock, so
            /// `fut` is not polled again once the deadline has passed.
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::", $module, "::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
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
                let lost = $crate::lease::LeaseHold::lost(&self.held);
                ::tokio::select! {
                    biased;
                    () = lost => Err($crate::LockError::Lost {
                        resource: $crate::lease::LeaseHold::resource(&self.held).to_owned(),
                    }),
                    out = fut => Ok(out),
                }
            }

            /// Sets the lease to `ttl` from now (if still held); the
            /// watchdog renews with `ttl` from then on.
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::", $module, "::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
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
            /// for a TTL the client refuses;
            /// [`LockError::Unavailable`](crate::LockError::Unavailable) if
            /// the server did not answer, or (with `wait_for_replicas`) the
            /// replicas did not confirm the extend: it then lengthens
            /// nothing, though it may shorten the lease.
            ///
            /// # Cancel safety
            ///
            /// If the future is dropped the extension may or may not have
            /// reached Redis; the watchdog keeps renewing either way.
            pub async fn extend(
                &self,
                ttl: ::std::time::Duration,
            ) -> Result<(), $crate::LockError> {
                $crate::lease::LeaseHold::extend(&self.held, ttl).await
            }

            /// Gives it back now and reports errors.
            ///
            #[doc = "```no_run"]
            #[doc = concat!("# async fn demo(guard: lockyard::", $module, "::", stringify!($guard), ") -> Result<(), lockyard::LockError> {")]
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
                $crate::lease::LeaseHold::release(&mut self.held).await
            }
        }

        impl ::std::fmt::Debug for $guard {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($guard))
                    .field("resource", &$crate::lease::LeaseHold::resource(&self.held))
                    .field("mode", &$crate::lease::LeaseHold::mode(&self.held))
                    .field("fencing_token", &$crate::lease::LeaseHold::fencing(&self.held))
                    .field("lost", &$crate::lease::LeaseHold::is_lost(&self.held))
                    .finish()
            }
        }

        #[::async_trait::async_trait]
        impl $crate::RawGuard for $guard {
            fn resource(&self) -> &str {
                $crate::lease::LeaseHold::resource(&self.held)
            }

            fn mode(&self) -> $crate::Mode {
                $crate::lease::LeaseHold::mode(&self.held)
            }

            fn fencing_token(&self) -> Option<u64> {
                $crate::lease::LeaseHold::fencing(&self.held)
            }

            fn lost(&self) -> $crate::Lost {
                $crate::lease::LeaseHold::lost(&self.held)
            }

            async fn release(mut self: Box<Self>) -> Result<(), $crate::LockError> {
                $crate::lease::LeaseHold::release(&mut self.held).await
            }
        }

        impl From<$guard> for $crate::LockGuard {
            fn from(guard: $guard) -> Self {
                $crate::LockGuard::new(guard)
            }
        }
    };
}
pub(crate) use lease_guard;
