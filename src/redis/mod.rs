//! Distributed locks on Redis (feature `redis`, on by default).
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lockyard::LockError> {
//! use std::time::Duration;
//! use lockyard::redis::{RedisLocks, RedisOptions};
//!
//! let locks = RedisLocks::connect_with(
//!     "redis://127.0.0.1:6380/",
//!     RedisOptions::default().ttl(Duration::from_secs(10)),
//! ).await?;
//! let guard = locks.acquire("nightly-report", Duration::from_secs(60)).await?;
//! // Pass the fencing token to the storage you write to, so that it can
//! // refuse a stale holder.
//! let token = guard.fencing_token();
//! // Stop working if the lock is lost (Redis unreachable for a whole lease,
//! // or the key taken over).
//! guard.run_until_lost(async { /* the work */ }).await?;
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # When to use it
//!
//! When processes on *several machines* must take turns and a Redis server
//! they all reach is already part of the system. On one machine, prefer the
//! file locks: the kernel releases them when a holder dies, with no lease to
//! tune. Within one process, prefer the in-process primitives.
//!
//! # What is guaranteed, and what is not
//!
//! - **Mutual exclusion while Redis keeps its data and clocks behave.** The
//!   lock is a key `SET NX PX ttl` with a random 128-bit owner token;
//!   release and extend compare the token in a Lua script, so nobody but the
//!   owner releases or extends it.
//! - **A lease, not a promise.** A holder that stalls (GC pause, swapped out,
//!   partitioned) for longer than the lease loses the lock *without knowing
//!   it at that instant*. Two defences: the holder's [`lost`] signal fires
//!   when no renewal has been confirmed within *TTL − drift* (measured on the
//!   monotonic clock from the *send* time of the last confirmed renewal, so
//!   it fires before the key can expire on the server), and **fencing tokens**:
//!   [`RedisLockGuard::fencing_token`] strictly increases across holders of a
//!   resource (an `INCR` inside the acquire script), so storage that checks it
//!   can refuse a stale holder's writes. Use both for anything that matters.
//! - **One Redis server is one point of failure.** If it restarts without
//!   persistence, every lock is gone (holders see `lost` at the next renewal)
//!   and fencing counters start again from 1. With replication, a fail-over
//!   can lose a lock that was not yet replicated (a Sentinel-managed primary,
//!   `redis+sentinel://`, is followed through failovers: the README's "Redis
//!   Cluster and replicas" says what that promises, with and without
//!   [`RedisOptions::wait_for_replicas`]). If that matters, use AOF
//!   with `appendfsync always`, or Redlock over independent servers (which
//!   has its own caveats; see its docs), or a consensus system.
//! - **Liveness**: a crashed holder's lock comes back after its TTL.
//! - **Faults, as tested**: Redis killed while a lock is held → `lost` fires
//!   before the lease can end on the server; Redis restarted empty → the next
//!   renewal finds the key gone and fires `lost` at once (a client's first
//!   request after a restart reconnects and reloads its scripts); Redis paused
//!   (`CLIENT PAUSE`, `DEBUG SLEEP`) → renewals wait, and catch up if the
//!   pause ends within the validity left (nothing is lost), otherwise `lost`
//!   fires while the server is still paused; Redis down → operations fail
//!   with [`LockError::Unavailable`] after at most `connect_timeout` /
//!   `op_timeout`.
//!
//! # How it works
//!
//! - **One name is one lock.** Every key of a resource is
//!   `{prefix}{<name>}:<suffix>`, the name being the `{hash tag}` (one Redis
//!   Cluster slot): `:lock` (the exclusive holder's owner value: the plain
//!   lock, and the RW lock's writer; while readers or a semaphore's holders
//!   hold the name, their mark, `lockyard:readers` or `lockyard:semaphore`,
//!   with a `PX` at least their longest hold, so that a free name's
//!   exclusive acquire is `INCR` + `SET NX PX` alone), `:readers` (shared
//!   holders), `:intent`
//!   (a waiting writer), `:sem` and `:permits` (a semaphore and its stored
//!   permit count), `:fence` (the fencing counter, never expires: one small
//!   key per resource ever locked) and the release channel `:released`. The
//!   exclusive and shared modes of [`RedisLock`] are the writer and readers
//!   of [`RedisRwLock`] of the same name; a name in use as a semaphore
//!   refuses lock use and the reverse ([`LockError::WrongKind`]); a
//!   semaphore used with another permit count than its first holder's is
//!   refused ([`LockError::PermitsMismatch`]).
//! - **The lease rules live in one place** (`lease/`, its module docs
//!   number them): a grant counts from the moment its request was sent, a
//!   grant whose answer arrives after its validity is undone and never
//!   handed out, renewals and extends are scored by the TTL each carried
//!   and the worse order is assumed when they may have been reordered, and
//!   a lost lease stays lost (extend and release report it).
//! - Scripts are built once and sent with `EVALSHA` (falling back to loading
//!   them on `NOSCRIPT`).
//! - Waiting is not polling: a waiter subscribes to the release channel over
//!   the client's one pub/sub connection, then retries; it wakes on a release
//!   message, at the holder's remaining TTL (a crashed holder is taken over on
//!   time), or at its deadline. If pub/sub is down it falls back to backoff
//!   polling (5 ms doubling to 1 s) bounded by the holder's TTL. Tasks of one
//!   process waiting for one name queue in-process (FIFO) behind a single
//!   waiter on Redis.
//! - One watchdog task per client renews every held lease at about TTL / 3,
//!   batched into one pipelined round trip per period (see
//!   [`RedisLocks::stats`]).
//! - Waiting and timeouts are logged with `tracing` (at `debug`), naming the
//!   holder (pid, host, since) and the time waited; a lost lock is a
//!   `warn`.
//!
//! # TLS and ACL users
//!
//! With the feature `tls`, `rediss://` URLs (one server, any Cluster
//! node, `rediss+cluster://` seed lists, Redlock's servers) connect over
//! rustls, trusting the platform's roots or the CA given with
//! [`RedisOptions::tls_ca`], and presenting a client certificate given
//! with [`RedisOptions::tls_client_cert`] (mutual TLS). Certificates are
//! always checked. A connection that cannot be set up fails within the
//! connect timeout with [`LockError::Tls`] saying why (see
//! [`TlsProblem`](crate::TlsProblem)), including a `rediss://` URL to a
//! plain port and a `redis://` URL to a TLS-only one. An ACL user is
//! checked at connect with `ACL DRYRUN`: a command lockyard needs that it
//! may not run is [`LockError::NotPermitted`], naming the command.
//!
//! # Cancel safety
//!
//! Before a service exits, [`RedisLocks::shutdown`] waits for the releases
//! of dropped guards still in flight, so no lock is left to its TTL.
//!
//! Every acquisition is cancel safe: dropping the future leaves the local
//! queue at once, and if the acquire script may already have reached Redis, a
//! background task deletes the key if it holds *this acquisition's* token (on
//! the same connection, so after the script). Dropping a guard stops its
//! renewal at once and releases from a background task; nothing ever blocks
//! the runtime. Whatever happens, no lock outlives its TTL once its holder
//! is gone. Without a tokio runtime (a guard dropped after the runtime shut
//! down) the background release cannot run and the lock expires by its TTL.
//!
//! # Errors
//!
//! Contention ([`LockError::Timeout`], [`LockError::WouldBlock`], naming the
//! holder) is kept apart from outage ([`LockError::Unavailable`]: refused,
//! reset, timed out, pool exhausted, loading), refusal
//! ([`LockError::Backend`]: authentication, ACL, script errors) and garbage
//! ([`LockError::Protocol`]: a reply of the wrong type, a key of the wrong
//! type), TLS that cannot be set up ([`LockError::Tls`]) and an ACL user
//! lacking a command ([`LockError::NotPermitted`]).
//!
//! [`lost`]: RedisLockGuard::lost
//! [`LockError::WrongKind`]: crate::LockError::WrongKind
//! [`LockError::PermitsMismatch`]: crate::LockError::PermitsMismatch
//! [`LockError::Timeout`]: crate::LockError::Timeout
//! [`LockError::WouldBlock`]: crate::LockError::WouldBlock
//! [`LockError::Unavailable`]: crate::LockError::Unavailable
//! [`LockError::Backend`]: crate::LockError::Backend
//! [`LockError::Protocol`]: crate::LockError::Protocol
//! [`LockError::Tls`]: crate::LockError::Tls
//! [`LockError::NotPermitted`]: crate::LockError::NotPermitted

// The stack, bottom first (scripts/check-layers.py checks that every arrow
// points down):
//   conn/      the wire: TLS, error mapping, the connection shapes (one
//              server's pool, a Cluster), pub/sub release wake-ups
//   protocol/  what is said on it: keys of a name, owner tokens, scripts
//   options    the client's options
//   lease/     the lease rules' Redis side: the watchdog's batched renewals
//   context/   one client's shared state, its in-process queues, and the
//              one way a script is invoked (retries, replicas)
//   acquire/   the acquisition loop and the hold it produces
//   kinds/     lock, RW lock, semaphore, listing: thin, over acquire/
//   redlock/   a quorum of independent servers
//   acl        the connect-time ACL check
//   client     the facade: RedisLocks' methods
mod conn;
mod protocol;

mod options;

mod lease;

mod context;

mod acquire;

mod kinds;

mod redlock;

mod acl;

mod client;

pub use client::RedisLocks;
pub use client::RedisStats;
pub use kinds::guard::RedisLockGuard;
pub use kinds::listing::RedisLockInfo;
pub use kinds::lock::RedisLock;
pub use kinds::rwlock::{RedisReadGuard, RedisRwLock, RedisWriteGuard};
pub use kinds::semaphore::{RedisPermitGuard, RedisSemaphore};
pub use options::{RedisOptions, RedisTls};
pub use redlock::{Redlock, RedlockGuard, RedlockLock, RedlockOptions};
