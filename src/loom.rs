//! The one std-or-loom shim.
//!
//! The synchronisation that loom checks imports its atomics and mutexes
//! from here, so that
//! `RUSTFLAGS="--cfg lockyard_loom" cargo test --profile loom --lib -- loom`
//! model-checks it with [loom](https://docs.rs/loom): the in-process
//! semaphore core (`local/batch.rs`), the file backend's kernel-waiter
//! hand-shake (`file/kernel/interrupt.rs`, `ThreadCtl`: a cancel is never lost
//! against a waiter about to block), and a file lock name's kernel state
//! machine (`file/kernel/side.rs` with its hand-off channel,
//! `file/kernel/handoff.rs`; the models replace the kernel's `flock` by a
//! model of it, since its critical sections otherwise do system calls).
//!
//! Not everything goes through it, and that is deliberate: `static`s need
//! `const` constructors loom does not have (the file backend's kernel
//! threads, interrupter and descriptor cache), and the Redis client's
//! bookkeeping does network I/O in its critical sections. Those use
//! `std::sync` directly, hold their locks only for short non-blocking
//! sections, and are exercised by the multi-process integration tests
//! instead. The cfg is
//! crate-specific on purpose: `--cfg loom` would also switch tokio's own
//! cfgs and remove `tokio::net`, which the Redis backend needs.
//!
//! loom is a dev-dependency, so it is swapped in for unit-test builds only
//! (`cfg(all(test, lockyard_loom))`, as tokio does with `cfg(all(test,
//! loom))`); any other build under the cfg keeps std.
//!
//! The [`Mutex`](sync::Mutex) here never reports poisoning: the code that
//! holds it keeps the protected data consistent before anything that could
//! panic, so a poisoned lock is recovered rather than propagated.
//!
//! Outside loom it is `parking_lot`'s, not `std`'s (the one tokio's
//! semaphore uses when tokio's `parking_lot` feature is on, as with
//! `full`). The in-process semaphore's wait list is locked by both workers
//! of a contended runtime for a few loads and stores at a time; `std`'s
//! futex mutex puts a waiter to sleep after a short spin, and from then on
//! every unlock makes a `futex_wake` system call, while `parking_lot`'s
//! spins and yields a little longer before it parks, and unlocks with one
//! compare-and-swap while nobody is parked. With `std`'s, an `RwLock` whose
//! readers hold it across an `.await` took 1.07–1.12 times tokio's time on
//! two workers; with `parking_lot`'s, 0.94–1.00 (`cargo bench --bench
//! local -- interleaved 200 await:32:2`, the benchmark run as a real-time
//! process, so that the other load of the machine does not preempt its
//! workers; before the wait list's banked releases).

#[cfg(not(all(test, lockyard_loom)))]
mod imp {
    pub(crate) mod sync {
        pub(crate) use parking_lot::MutexGuard;
        pub(crate) use std::sync::Arc;

        pub(crate) mod atomic {
            /// A lease's model clock (`lost.rs`) in unit tests.
            #[cfg(test)]
            pub(crate) use std::sync::atomic::AtomicU64;
            pub(crate) use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        }

        /// `parking_lot::Mutex` (module docs: why not `std`'s); it has no
        /// poisoning.
        #[derive(Debug, Default)]
        pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);

        impl<T> Mutex<T> {
            #[inline]
            pub(crate) fn new(value: T) -> Self {
                Self(parking_lot::Mutex::new(value))
            }

            #[inline]
            pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
                self.0.lock()
            }
        }
    }

    /// Runs a future to completion on the current thread, parking it while
    /// the future is pending.
    pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
        futures::executor::block_on(future)
    }
}

#[cfg(all(test, lockyard_loom))]
mod imp {
    pub(crate) mod sync {
        pub(crate) use ::loom::sync::{Arc, MutexGuard};

        pub(crate) mod atomic {
            pub(crate) use ::loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
        }

        /// `loom::sync::Mutex` whose `lock` ignores poisoning.
        #[derive(Debug, Default)]
        pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

        impl<T> Mutex<T> {
            #[inline]
            pub(crate) fn new(value: T) -> Self {
                Self(::loom::sync::Mutex::new(value))
            }

            #[inline]
            pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
                self.0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            }
        }
    }

    pub(crate) use ::loom::future::block_on;
}

pub(crate) use imp::*;
