//! The lease core: what every Redis primitive holds.
//!
//! Every Redis primitive is a *lease*: a key (the plain lock, the RW lock's
//! writer) or a member of a sorted set (a semaphore permit, a reader)
//! holding an owner token with an expiry. The primitives supply their
//! scripts and keys; the rules of a lease are written here, once.
//!
//! # Invariants
//!
//! 1. A grant is valid until `sent_at + ttl − drift`, where `sent_at` is
//!    taken *before* the request is written; a grant whose validity has
//!    passed when it is registered is refused ([`Watchdog::register`]
//!    returns [`Expired`]), undone with its own token, and never returned
//!    as held.
//! 2. A renewal or extend is scored with the TTL it actually carried and
//!    its own `sent_at`; requests on one lease that may have been applied
//!    in either order (different connections, or an unknown outcome) are
//!    assumed applied in the worse order ([`validity`]).
//! 3. `lost` fires no later than the deadline: every check (`is_lost`, a
//!    poll of the `Lost` future, `run_until_lost`) compares the published
//!    [`LeaseDeadline`](crate::LeaseDeadline) with the clock when it is
//!    asked, so a process resumed after a pause past its lease is told lost
//!    before the watchdog's late timer runs; once fired it never un-fires
//!    (a renewal confirmed after the deadline does not move it); after it,
//!    extend reports [`LockError::Lost`] and release
//!    never reports success: `Lost` if the server still had our token (the
//!    key is deleted all the same), else `NotHeld` or the outage.
//! 4. Release runs exactly once (explicit or from `Drop`); the watchdog
//!    entry is removed before the release is sent, so no renewal is sent
//!    after it (one still in flight compares the token and finds nothing).
//! 5. A cancelled in-flight acquisition is undone with its own token on its
//!    own connection (requests on one multiplexed connection run in order,
//!    so the undo cannot overtake the attempt).
//!
//! # Layering
//!
//! `validity` is pure bookkeeping; `watchdog` uses it and the connection
//! layer (`pool`); neither imports a primitive or the client facade.
//!
//! [`LockError::Lost`]: crate::LockError::Lost

use crate::error::LockError;

pub(crate) mod validity;
mod watchdog;

pub(crate) use validity::grant_end;
pub(crate) use watchdog::{Expired, Lease, LeaseHandle, Renewal, Watchdog};

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
