//! The lease rules, written once for every lease backend (Redis, Redlock,
//! and the backends to come): how long a grant is certainly ours
//! ([`validity`]) and the guard surface their guards share ([`surface`]).
//! The lost signal itself ([`Lost`](crate::Lost),
//! [`LeaseDeadline`](crate::LeaseDeadline)) is in `lost.rs`, below the
//! guard contract.
//!
//! Every lease is a record on a server holding an owner token with an
//! expiry (a Redis key or sorted-set member). A backend supplies its
//! requests; the rules are these.
//!
//! # Invariants
//!
//! 1. A grant is valid until `sent_at + ttl − drift`, where `sent_at` is
//!    taken *before* the request is written; a grant whose validity has
//!    passed when it is registered is refused, undone with its own token,
//!    and never returned as held.
//! 2. A renewal or extend is scored with the TTL it actually carried and
//!    its own `sent_at`; requests on one lease that may have been applied
//!    in either order (different connections, or an unknown outcome) are
//!    assumed applied in the worse order ([`validity`]).
//! 3. `lost` fires no later than the deadline: every check (`is_lost`, a
//!    poll of the `Lost` future, `run_until_lost`) compares the published
//!    [`LeaseDeadline`](crate::LeaseDeadline) with the clock when it is
//!    asked, so a process resumed after a pause past its lease is told lost
//!    before the renewal task's late timer runs; once fired it never
//!    un-fires (a renewal confirmed after the deadline does not move it);
//!    after it, extend reports [`LockError::Lost`] and release never
//!    reports success: `Lost` if the server still had our token (the
//!    record is deleted all the same), else `NotHeld` or the outage.
//! 4. Release runs exactly once (explicit or from `Drop`); renewal stops
//!    before the release is sent, so no renewal follows it (one still in
//!    flight compares the token and finds nothing).
//! 5. A cancelled in-flight acquisition is undone with its own token on its
//!    own connection (requests on one connection run in order, so the undo
//!    cannot overtake the attempt).
//!
//! # Layering
//!
//! Imports the contract only (`error`, `options`, `lost`); a backend
//! imports this, never the reverse.
//!
//! [`LockError::Lost`]: crate::LockError::Lost

#[cfg(test)]
mod model;
pub(crate) mod surface;
pub(crate) mod validity;

pub(crate) use surface::{LeaseHold, lease_guard};
pub(crate) use validity::grant_end;
