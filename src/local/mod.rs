//! In-process primitives: a fair, weighted [`Semaphore`] and a fair
//! [`RwLock`], for tasks and plain threads alike.
//!
//! Both are built on one crate-private FIFO core (a waiter queue with
//! weighted requests, in the manner of tokio's `batch_semaphore`), written
//! against the crate's loom shim and model-checked with loom:
//!
//! ```text
//! LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg lockyard_loom" \
//!     CARGO_TARGET_DIR=target/loom cargo test --profile loom --lib -- loom --test-threads=1
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
//!
//! # When async-lock's is faster, and why
//!
//! With many tasks and critical sections of a few nanoseconds,
//! `async_lock::RwLock` can be two to three times faster than these and
//! tokio's on write-heavier mixes (`cargo bench --bench local --
//! interleaved`, on an otherwise idle machine). That is the price of
//! fairness, not a mechanism these could borrow: async-lock does not hand
//! the lock over. A release makes it free and wakes a waiter, and whichever
//! task runs first takes it, so no acquisition waits for a woken task to be
//! scheduled. In exchange it lets later arrivals go first
//! (`cargo bench --bench local -- fairness` plays each case step by step):
//!
//! - a newcomer (`try_write`, `try_read`, or a first poll) takes the lock
//!   right after a release, ahead of a writer that was queued and woken;
//! - a reader queued after a waiting writer is let in before it if it runs
//!   first after the release (readers and writers wait on separate events,
//!   and both are woken);
//! - writers take an internal mutex that a newcomer may take ahead of
//!   queued writers, until one of them has waited 0.5 ms.
//!
//! Here (and in tokio) the released permits are assigned to the front of
//! the queue before anyone else can see them, so none of these happen, and
//! a writer waits only for the readers that came before it. When readers
//! hold the lock across an `.await`, async-lock is the slow one (5 to 20
//! times slower than both in the same bench).

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
