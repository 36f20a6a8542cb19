//! Loom models of the in-process primitives (run with
//! `RUSTFLAGS="--cfg lockyard_loom" cargo test --profile loom --lib -- loom`).

mod loom_rwlock;
mod loom_semaphore;
mod loom_timeout;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Polls `future` once with a waker that does nothing.
fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(future).poll(&mut cx)
}
