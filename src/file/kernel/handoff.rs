//! [`channel`]: how the waiter thread hands a kernel lock (or an error) to a
//! waiting task — one value, one wake-up.
//!
//! A oneshot channel on the loom shim's mutex and a std [`Waker`], so that
//! the kernel state machine it serves can be model-checked. The waker is
//! called after the mutex is released (the woken task may run at once on
//! another CPU and would otherwise find it still locked).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::loom::sync::{Arc, Mutex};

#[derive(Debug)]
struct Channel<T> {
    value: Option<T>,
    waker: Option<Waker>,
    /// The sender was dropped, with or without sending.
    sent_or_gone: bool,
    /// The receiver was dropped: nobody will take a value.
    closed: bool,
}

/// The sending half, kept by the waiter thread.
#[derive(Debug)]
pub(crate) struct Sender<T>(Arc<Mutex<Channel<T>>>);

/// The receiving half: a future resolving to the value, or `None` if the
/// sender went away without sending.
#[derive(Debug)]
pub(crate) struct Receiver<T>(Arc<Mutex<Channel<T>>>);

/// A channel for one value.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let channel = Arc::new(Mutex::new(Channel {
        value: None,
        waker: None,
        sent_or_gone: false,
        closed: false,
    }));
    (Sender(channel.clone()), Receiver(channel))
}

impl<T> Sender<T> {
    /// Whether the receiver is gone (the task stopped waiting).
    pub(crate) fn is_closed(&self) -> bool {
        self.0.lock().closed
    }

    /// Sends `value` and wakes the receiver; hands `value` back if the
    /// receiver is gone.
    pub(crate) fn send(self, value: T) -> Result<(), T> {
        let waker = {
            let mut ch = self.0.lock();
            if ch.closed {
                return Err(value);
            }
            ch.value = Some(value);
            ch.sent_or_gone = true;
            ch.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut ch = self.0.lock();
            if ch.sent_or_gone {
                return;
            }
            ch.sent_or_gone = true;
            ch.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut ch = self.0.lock();
        if let Some(v) = ch.value.take() {
            return Poll::Ready(Some(v));
        }
        if ch.sent_or_gone {
            return Poll::Ready(None);
        }
        match &mut ch.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // A value sent but not taken is dropped here, outside the lock:
        // for a kernel lock, that releases it.
        let value = {
            let mut ch = self.0.lock();
            ch.closed = true;
            ch.waker = None;
            ch.value.take()
        };
        drop(value);
    }
}
