//! The Redis lease core: what every Redis primitive holds, renewed.
//!
//! Every Redis primitive is a *lease*: a key (the plain lock, the RW lock's
//! writer) or a member of a sorted set (a semaphore permit, a reader)
//! holding an owner token with an expiry. The primitives supply their
//! scripts and keys; the lease rules are [`crate::lease`]'s, and the
//! watchdog here renews every lease of a client in batches.
//!
//! # Invariants
//!
//! The lease invariants 1–5 of [`crate::lease`] (cited by number in the
//! code). Here: a grant whose validity has passed when it is registered is
//! refused by [`Watchdog::register`] ([`Expired`], invariant 1); the
//! watchdog entry is removed before the release is sent (invariant 4).
//!
//! # Layering
//!
//! `watchdog` uses the shared lease rules (`crate::lease`) and the
//! connection layer (`pool`); it imports no primitive and not the client
//! facade.
//!
//! [`LockError::Lost`]: crate::LockError::Lost

use crate::error::LockError;

mod watchdog;

pub(crate) use crate::lease::grant_end;
pub(crate) use watchdog::{Expired, Lease, LeaseHandle, Observer, Renewal, Watchdog};

/// What an acquisition does after a grant came back too late to be sure of
/// (invariant 1; the grant was undone): try again at once, unless an earlier
/// grant of this acquisition was late too and the caller cannot wait any
/// longer. Then the server (or this process) is too slow to grant a lease
/// that is still valid on arrival: [`LockError::Unavailable`].
///
/// # Errors
///
/// [`LockError::Unavailable`] as above.
pub(crate) fn retry_after_late_grant(
    late: &mut u32,
    can_wait: bool,
    resource: &str,
    op: &'static str,
) -> Result<(), LockError> {
    *late += 1;
    tracing::debug!(
        resource,
        op,
        late = *late,
        "grant arrived after its validity; undone, retrying"
    );
    if *late > 1 && !can_wait {
        return Err(LockError::Unavailable {
            resource: resource.to_owned(),
            op,
            source: Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "every grant arrived after its lease's validity",
            )),
        });
    }
    Ok(())
}
