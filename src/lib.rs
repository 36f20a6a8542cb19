//! Async-first locks for tokio: cross-process file locks, distributed Redis
//! locks, fair in-process primitives, and a manager that takes several of
//! them without deadlock.
//!
//! Every acquisition is a future: dropping it at any `.await` leaves nothing
//! held and nothing queued. Every guard releases on drop. Every method that
//! waits says what a cancelled caller loses under `# Cancel safety`.
//!
//! # A tour
//!
//! **File locks** coordinate processes on one machine (and tasks inside
//! them, which contend exactly as separate processes do). The kernel
//! releases them when a holder dies, so a crash never leaves a lock behind:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lockyard::LockError> {
//! use std::time::Duration;
//! use lockyard::FileLockManager;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let locks = FileLockManager::new(dir.path())?;
//!
//! let guard = locks.acquire("nightly-report", Duration::from_secs(10)).await?;
//! // Someone else (another task or process) cannot have it now:
//! let busy = locks.try_acquire("nightly-report").await.unwrap_err();
//! assert!(busy.is_would_block());
//! // ... and is told who holds it: pid, host, since.
//! assert_eq!(busy.holder().map(|o| o.pid), Some(std::process::id()));
//! drop(guard);
//! assert!(!locks.is_locked("nightly-report").await?);
//!
//! // Readers share, a writer excludes.
//! let r1 = locks.acquire_shared("cache", Duration::from_secs(1)).await?;
//! let r2 = locks.acquire_shared("cache", Duration::from_secs(1)).await?;
//! let w = locks.acquire("cache", Duration::from_millis(20)).await;
//! assert!(w.unwrap_err().is_timeout());
//! # drop((r1, r2));
//! # Ok(())
//! # }
//! ```
//!
//! **Redis locks** coordinate machines. The lock's TTL is renewed in the
//! background while the guard lives; `lost()` tells the holder when it can no
//! longer be sure it holds it, and fencing tokens let storage reject a stale
//! holder. [`RedisLocks`] also makes semaphores and read-write locks, and
//! [`Redlock`] spreads one lock over several independent servers:
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lockyard::LockError> {
//! use std::time::Duration;
//! use lockyard::RedisLocks;
//!
//! let redis = RedisLocks::connect("redis://127.0.0.1:6379").await?;
//! let guard = redis.acquire("invoice-42", Duration::from_secs(5)).await?;
//! let token = guard.fencing_token(); // pass it along to storage
//! # let _ = token;
//! // Stop working the moment the lock is lost:
//! let outcome = guard.run_until_lost(async { /* the work */ }).await;
//! outcome?;
//! guard.release().await?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "redis"))]
//! # fn main() {}
//! ```
//!
//! **In-process primitives**: a fair (FIFO) async [`Semaphore`], usable from
//! plain threads too, and an [`RwLock`] whose waiting writer is never starved.
//! Their waiter queue is model-checked with loom.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use lockyard::Semaphore;
//!
//! let downloads = Semaphore::new(2);
//! let a = downloads.acquire().await.unwrap();
//! let b = downloads.acquire().await.unwrap();
//! assert!(downloads.try_acquire().is_err());
//! drop(a);
//! assert_eq!(downloads.available_permits(), 1);
//! # drop(b);
//! # }
//! ```
//!
//! **Several locks at once**: [`AsyncLockManager`] holds named locks of any
//! kind behind the object-safe [`Lock`] trait and takes sets of them in
//! sorted order under one deadline, all or nothing.
//!
//! **Statistics**: every acquisition of every backend is counted in one
//! process-wide registry ([`stats`]), wherever it is made; the manager's
//! [`LockStats`] read it, the `serde` feature serializes it, and the
//! `metrics` feature exports it through the `metrics` facade (Prometheus and
//! others).
//!
//! # Features
//!
//! - `redis` (default): distributed locks on Redis ([`RedisLocks`],
//!   [`Redlock`]).
//! - `postgres`: distributed locks on Postgres advisory locks
//!   (`postgres::PgLocks`).
//! - `tls`: TLS over rustls for the backends that are on: `rediss://` to
//!   Redis (one server, Cluster, Redlock) and `sslmode` to Postgres, with a
//!   custom CA and client certificates ([`TlsSettings`], set through
//!   `RedisOptions::tls_ca` / `PgOptions::tls_ca` and `tls_client_cert`);
//!   what managed Redis and Postgres services require. It turns on neither
//!   backend by itself.
//! - `serde`: `Serialize` for the statistics, [`Owner`], [`Mode`] and the
//!   listings ([`FileLockInfo`], `RedisLockInfo`); `Deserialize` for the
//!   statistics, [`Owner`] and [`Mode`].
//! - `metrics`: every statistics event also goes to the
//!   [`metrics`](https://docs.rs/metrics) facade (`stats::metric` lists
//!   the names).
//!
//! # When not to use lockyard
//!
//! - To guard data inside one process with no `.await` while locked,
//!   `std::sync::Mutex` is simpler and faster; for plain async data locks
//!   `tokio::sync` is enough. lockyard's in-process primitives are for when
//!   you need them behind the [`Lock`] trait, from threads and tasks alike,
//!   or with its fairness guarantees.
//! - File locks are advisory and local: processes that do not take them are
//!   not stopped, and on network file systems `flock` may not reach other
//!   machines. Use Redis (or a database) to coordinate hosts.
//! - A Redis lock is a lease, not a mutex in the strict sense: a paused or
//!   partitioned holder can outlive its TTL. `lost()` narrows that window and
//!   fencing tokens close it only where the protected storage checks them.
//!   For correctness that must survive any timing, use a consensus system
//!   (etcd, ZooKeeper) and fencing.
#![warn(
    missing_debug_implementations,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
#![deny(unused_must_use, unsafe_op_in_unsafe_fn)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod guard;
// The lease rules and guard surface shared by the lease backends.
#[cfg(feature = "redis")]
mod lease;
mod lock;
mod lost;
mod options;
mod owner;
// This process's id and owner record, right again in a forked child.
mod process;
mod text;
// TLS material shared by the Redis and Postgres backends (unused by a
// build with neither).
#[cfg_attr(
    not(any(feature = "redis", feature = "postgres")),
    allow(dead_code, unused_macros)
)]
mod tls;

pub use error::{BoxError, LockError, TlsProblem};
pub use guard::{LockGuard, RawGuard};
pub use lock::Lock;
pub use lost::{LeaseDeadline, LeaseState, Lost};
pub use options::{AcquireOptions, Mode};
pub use owner::{Liveness, Owner, OwnerParseError, host_name};
pub use text::{Escaped, escape_for_display};
pub use tls::TlsSettings;

// ---- in-process primitives (issue 3) ----
pub mod local;
mod loom;
pub use local::{NamedRwLock, NamedSemaphore, RwLock, Semaphore};

// ---- file locks (issue 2) ----
pub mod file;
pub use file::{
    CleanupOptions, FileLock, FileLockGuard, FileLockInfo, FileLockManager, FileLockOptions,
    WaitStrategy,
};

#[doc(hidden)]
pub mod __fuzz {
    //! Not public API: the functions the fuzz targets (and the corpus tests
    //! that replay their seeds) call. Each panics on a broken property.

    /// Checks the name → file name mapping for the UTF-8 (lossy) of `data`.
    pub fn name_mapping(data: &[u8]) {
        crate::file::fuzz::check_mapping(&String::from_utf8_lossy(data));
    }

    /// Parses `data` as owner metadata; whatever parses must round-trip.
    pub fn owner_parse(data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        if let Ok(owner) = crate::Owner::parse(&text) {
            let again = crate::Owner::parse(&owner.to_text());
            assert_eq!(again.as_ref(), Ok(&owner), "round trip changed {text:?}");
        }
    }

    /// Takes `sslmode` out of the UTF-8 (lossy) of `data` as a Postgres
    /// URL or key-value string: what is left must set no `sslmode` that
    /// tokio-postgres reads and lockyard missed.
    #[cfg(feature = "postgres")]
    pub fn pg_url(data: &[u8]) {
        crate::postgres::fuzz::check_url(&String::from_utf8_lossy(data));
    }
}

// ---- redis (issue 4) ----
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub use crate::redis::{
    RedisLock, RedisLockGuard, RedisLockInfo, RedisLocks, RedisOptions, RedisStats,
};
#[cfg(feature = "redis")]
pub use crate::redis::{
    RedisPermitGuard, RedisReadGuard, RedisRwLock, RedisSemaphore, RedisWriteGuard, Redlock,
    RedlockGuard, RedlockLock, RedlockOptions,
};

#[cfg(feature = "postgres")]
pub mod postgres;

// ---- statistics: every backend records, the manager and exports read ----
pub mod stats;
pub use stats::{LockStat, LockStats};

// ---- manager ----
mod manager;
pub use manager::{AsyncLockManager, LockSet};

// ---- end of modules ----

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
