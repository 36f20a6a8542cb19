//! Distributed locks on Postgres advisory locks (feature `postgres`, off by
//! default), on `tokio-postgres`.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lockyard::LockError> {
//! use std::time::Duration;
//! use lockyard::postgres::{PgLocks, PgOptions};
//!
//! let locks = PgLocks::connect_with(
//!     "postgres://app:secret@db.internal:5432/app",
//!     PgOptions::default().keepalive(Duration::from_secs(2)),
//! ).await?;
//! let guard = locks.acquire("nightly-report", Duration::from_secs(60)).await?;
//! let token = guard.fencing_token(); // Some(n): pass it to the storage you write to
//! guard.run_until_lost(async { /* the work */ }).await?;
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # When to use it
//!
//! When processes on several machines must take turns and the Postgres
//! database they share is already part of the system (no Redis to run).
//! On one machine, prefer the file locks; within one process, the
//! in-process primitives.
//!
//! # What is guaranteed, and what is not
//!
//! - **Session advisory locks.** A lock is `pg_advisory_lock(key)` (shared:
//!   `pg_advisory_lock_shared`) held by one server session; the server
//!   frees it when the session ends, however it ends. There is no lease to
//!   tune and nothing expires while the session lives.
//! - **Connections.** Each held lock pins a connection of its own: a
//!   connection holding a lock is never used by another acquisition while
//!   held. Released (the unlock confirmed), it goes back to the client's
//!   idle list (at most [`PgOptions::max_idle`]); a connection whose state
//!   is unknown is scrubbed (`pg_advisory_unlock_all`, confirmed in
//!   `pg_locks`) or closed, never reused holding something. So `n` locks
//!   held at once take `n` connections: mind `max_connections`.
//! - **Lost.** [`PgLockGuard::lost`] fires when the connection's task ends
//!   (the server restarted, the backend was terminated, the socket was
//!   reset) or a keepalive probe (`SELECT 1` every
//!   [`PgOptions::keepalive`], 5 s by default) fails or goes unanswered for
//!   one interval. The server frees a dead session's locks at once, so
//!   another client can be granted the lock *before* the holder knows: the
//!   bound is that `lost` fires within about two keepalive intervals of the
//!   session's death (at once when the connection is closed in the open;
//!   up to a probe interval plus its timeout when packets just stop).
//!   Fencing tokens are what covers that window: storage that checks them
//!   refuses the old holder's late writes.
//! - **Fencing tokens** come from a small table, `lockyard_fence` in
//!   [`PgOptions::fence_schema`] (`public` by default): `(key text primary
//!   key, name text, token bigint)`, one row per key ever locked, bumped
//!   with `INSERT … ON CONFLICT DO UPDATE SET token = token + 1 RETURNING
//!   token` in the same statement as the grant. The table is created on
//!   first use if missing; a role that may not create it gets
//!   [`LockError::Backend`](crate::LockError::Backend) saying so (create
//!   it once as an owner with the statement above and grant
//!   `SELECT, INSERT, UPDATE`, or turn fencing off: then
//!   [`fencing_token`](PgLockGuard::fencing_token) is `None`).
//! - **PgBouncer** in transaction (or statement) pooling hands each
//!   transaction another server session: a session lock taken through it
//!   is held by a server session other clients then use (advisory locks are
//!   reentrant, so they are granted it too). Connect straight to the
//!   server, or through session pooling (which passes the conformance
//!   suite). What is detected: each connection learns its backend's pid
//!   when it opens, and every statement that takes a lock runs only if
//!   `pg_backend_pid()` is still that one (checked in the same statement,
//!   before the lock function); a statement run by another backend takes
//!   nothing and fails with [`LockError::Unsupported`](crate::LockError::Unsupported)
//!   naming PgBouncer and what to do, as does a prepared statement that
//!   vanished or collided (SQLSTATE 26000, 42P05), which only a pooler
//!   causes, and PgBouncer refusing the wait's transaction in statement
//!   pooling (08P01). While a lock is held, a keepalive probe answered by another
//!   backend fires `lost`. A direct connection keeps one backend for life,
//!   so it never sees either. The limit: a pooler that happens to run
//!   every statement on the connection's first backend (a client alone on
//!   the pool) cannot be told apart from a direct connection until the
//!   backend moves; the probe notices that within one keepalive interval
//!   of the next probe, not at once.
//! - **PgBouncer before 1.19.1** (1.18.0 is Debian 12's) crashes when a
//!   client cancels a query through it the way tokio-postgres does (half
//!   closing the cancel connection; pgbouncer/pgbouncer#846). lockyard
//!   sends such a cancel when an acquisition is dropped while the server
//!   waits for the lock: behind session pooling, use 1.19.1 or later.
//!
//! # How it works
//!
//! - **Names to keys** ([`PgKeyMode`]): by default the first 8 bytes of the
//!   name's SHA-256 as one `bigint` (version 1 of the mapping; collision
//!   odds in [`PgKeyMode`]); or exactly DistributedLock.Postgres's mapping,
//!   so .NET and Rust services share locks; or an explicit key
//!   ([`PgLocks::lock_key`]).
//! - **Waiting is the server's**: a `pg_try_advisory_lock` first (one round
//!   trip when free, the fence write in the same statement); if held, one
//!   `pg_advisory_lock` in a transaction under `SET LOCAL lock_timeout`,
//!   so the server wakes the waiter when the holder unlocks, and the fence
//!   write after its `COMMIT` in the same simple query (one round trip;
//!   the server skips it if the wait fails). A
//!   `lock_timeout` error (55P03) is reported as a timeout only after
//!   `pg_locks` shows the lock was not granted as it fired (a session lock
//!   survives the rollback); a deadlock (40P01) is an error.
//! - **Deadlocks between holds are yours to avoid.** Each hold and each
//!   wait is a session of its own, and a waiting session holds nothing, so
//!   the server's deadlock detector never sees a cycle through a task that
//!   holds one lock and waits for another: such a wait ends at its timeout.
//!   Take several locks in one fixed order (the manager's `acquire_all`
//!   sorts them) or with timeouts.
//! - **Cancel safety**: see [`PgLocks::acquire`].
//!
//! - **Transaction-scoped locks** on the caller's own transaction
//!   ([`PgLocks::lock_in_transaction`]: `pg_advisory_xact_lock`) end with
//!   the transaction and cannot leak.
//! - **Semaphores** ([`PgLocks::semaphore`]) are `permits` advisory keys
//!   derived from the name, tried in turn; **RW locks**
//!   ([`PgLocks::rwlock`]) are the shared and exclusive holds of the
//!   name's key. Their docs say how fair each is.
//!
//! # TLS
//!
//! With the feature `tls`, the URL's `sslmode` is honoured over rustls
//! (ring), trusting the platform's roots or the CA given with
//! [`PgOptions::tls_ca`], and presenting the client certificate given with
//! [`PgOptions::tls_client_cert`] (mutual TLS). lockyard has no unverified
//! TLS: an encrypted connection always checks the server's chain and dates.
//!
//! | `sslmode` | TLS | certificate checks |
//! |---|---|---|
//! | `disable` | never | – |
//! | `prefer` (or none) | when the server offers it; plain text when it answers it has none | chain and host name |
//! | `require` | always: a server without TLS is an error | chain and host name (libpq checks nothing) |
//! | `verify-ca` | always | chain only; needs [`PgOptions::tls_ca`] |
//! | `verify-full` | always | chain and host name |
//!
//! A certificate that fails a check is an error in every mode, `prefer`
//! included (never a fall back to plain text), reported within
//! `connect_timeout` as [`LockError::Tls`](crate::LockError::Tls) with a
//! [`TlsProblem`](crate::TlsProblem): untrusted, expired, for another
//! host, a client certificate refused or missing, a server without TLS
//! (`require`) or one that requires it (`disable`). SCRAM authentication
//! over TLS binds the channel (`tls-server-end-point`), so
//! `channel_binding=require` works. An `sslmode` given twice, or spelled
//! so that tokio-postgres would read it and lockyard not, is refused.
//! Without the feature, `prefer` is
//! plain text and the other TLS modes are refused
//! ([`TlsProblem::NotEnabled`](crate::TlsProblem::NotEnabled)).

mod acquire;
mod client;
mod context;
mod errors;
mod guard;
mod hold;
mod keys;
mod listing;
mod lock;
mod options;
mod rwlock;
mod semaphore;
mod session;
mod sql;
mod tls;
mod xact;

#[doc(hidden)]
pub(crate) mod fuzz {
    pub(crate) use super::tls::check_url;
}

pub use context::PgLocks;
pub use guard::PgLockGuard;
pub use keys::{PgKey, PgKeyMode};
pub use listing::PgLockInfo;
pub use lock::PgLock;
pub use options::PgOptions;
pub use rwlock::PgRwLock;
pub use semaphore::PgSemaphore;
pub use xact::PgXactLock;
