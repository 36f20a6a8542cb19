//! Waiting with a deadline: the one combinator behind every `*_timeout`
//! method of the in-process primitives.
//!
//! It knows nothing of tokio: the timer is a parameter, so the loom models
//! (`src/local/tests/`) drive it with a timer of their own and check the
//! race between a deadline and a hand-over; the public methods pass
//! [`tokio_timer`].

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

/// The timer fired before the acquisition completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired;

/// Runs `acquire` until it completes or the timer made by `timer` fires.
///
/// `acquire` is polled first, every time: what is free now is taken even
/// with a zero timeout, and an acquisition that completes in the same poll
/// as the timer wins. The timer is made only once `acquire` has to wait, so
/// an uncontended acquisition costs no timer.
///
/// When the timer wins, `acquire` is dropped before this returns: an
/// acquisition future leaves its queue in `Drop` and hands on whatever had
/// already been assigned to it, so an `Expired` caller holds nothing.
pub(crate) async fn within<F, S>(
    acquire: F,
    timer: impl FnOnce() -> S,
) -> Result<F::Output, Expired>
where
    F: Future,
    S: Future<Output = ()>,
{
    let mut acquire = pin!(acquire);
    if let Poll::Ready(out) = futures::poll!(acquire.as_mut()) {
        return Ok(out);
    }
    let mut timer = pin!(timer());
    poll_fn(|cx| {
        if let Poll::Ready(out) = acquire.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        timer.as_mut().poll(cx).map(|()| Err(Expired))
    })
    .await
}

/// A tokio timer of `timeout`, started when the acquisition starts to wait.
/// Needs a tokio runtime with the time driver.
pub(crate) fn tokio_timer(timeout: Duration) -> impl FnOnce() -> tokio::time::Sleep {
    move || tokio::time::sleep(timeout)
}
