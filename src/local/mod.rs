//! In-process primitives: a fair, weighted [`Semaphore`] and a fair
//! [`RwLock`], for tasks and plain threads alike.
//!
//! Both are built on one crate-private FIFO core (a waiter queue with
//! weighted requests, in the manner of tokio's `batch_semaphore`), written
//! against the crate's loom shim and model-checked with loom:
//!
//! ```text
//! LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg lockyard_loom" \
//!     CARGO_TARGET_DIR=target/loom cargo test --release --lib -- loom
//! ```
//!
//! [`NamedSemaphore`] and [`NamedRwLock`] put them behind the crate's
//! [`Lock`](crate::Lock) trait, beside file and Redis locks.
//!
//! # When to use these rather than tokio's
//!
//! `tokio::sync::Semaphore` and `tokio::sync::RwLock` are just as fair. Use
//! these when the same primitive must serve async tasks *and* plain threads
//! (`acquire_blocking`, `blocking_read`), when you want acquisition with a
//! timeout in one call, or when it must be held through the [`Lock`](crate::Lock)
//! trait.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use lockyard::local::{RwLock, Semaphore};
//!
//! let slots = Semaphore::new(2);
//! let a = slots.acquire().await.unwrap();
//! let b = slots.acquire().await.unwrap();
//! assert!(slots.try_acquire().is_err());
//! drop((a, b));
//!
//! let settings = RwLock::new(vec!["fast"]);
//! settings.write().await.push("safe");
//! assert_eq!(settings.read().await.len(), 2);
//! # }
//! ```

mod batch;
mod error;
mod named;
mod rwlock;
mod semaphore;
mod timeout;

#[cfg(all(test, lockyard_loom))]
mod tests;

pub use error::{
    AcquireError, AcquireTimeoutError, LockTimeoutError, TryAcquireError, TryLockError,
};
pub use named::{NamedRwLock, NamedSemaphore};
pub use rwlock::{
    MAX_READS, OwnedRwLockMappedWriteGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock,
    RwLockMappedWriteGuard, RwLockReadGuard, RwLockWriteGuard,
};
pub use semaphore::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};
