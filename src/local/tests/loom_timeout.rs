//! Loom models of the timeout path (`local/timeout.rs`, `within`), driven by
//! a timer that another thread fires: the race between a deadline and a
//! hand-over.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use loom::future::{AtomicWaker, block_on};
use loom::sync::atomic::AtomicBool;
use loom::sync::atomic::Ordering::SeqCst;
use loom::thread;

use crate::local::timeout::{Expired, within};
use crate::local::{RwLock, Semaphore};

/// A timer that fires when [`fire`](Self::fire) is called, from any thread.
#[derive(Clone)]
struct Timer(loom::sync::Arc<(AtomicBool, AtomicWaker)>);

impl Timer {
    fn new() -> Self {
        Self(loom::sync::Arc::new((
            AtomicBool::new(false),
            AtomicWaker::new(),
        )))
    }

    fn fire(&self) {
        self.0.0.store(true, SeqCst);
        self.0.1.wake();
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.1.register_by_ref(cx.waker());
        if self.0.0.load(SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A reader whose timer fires while the writer ahead of it leaves: it
/// either holds the lock (and sees the write) or nothing, and afterwards
/// nothing is left held.
#[test]
fn timeout_racing_a_release_holds_all_or_nothing() {
    loom::model(|| {
        let lock = Arc::new(RwLock::new(0usize));
        let mut writer = lock.clone().try_write_owned().unwrap();
        *writer = 1;
        let timer = Timer::new();
        let firing = {
            let timer = timer.clone();
            thread::spawn(move || timer.fire())
        };
        let leaving = thread::spawn(move || drop(writer));
        match block_on(within(lock.read(), move || timer)) {
            Ok(guard) => assert_eq!(*guard, 1, "a reader overlapped the writer"),
            Err(Expired) => {}
        }
        firing.join().unwrap();
        leaving.join().unwrap();
        assert!(!lock.is_locked(), "a timed-out reader kept its permit");
    });
}

/// A writer that times out while partly served (a reader inside) hands its
/// share on: the reader queued behind it completes, and nobody hangs.
#[test]
fn timed_out_writer_hands_its_share_to_the_reader_behind() {
    loom::model(|| {
        let lock = Arc::new(RwLock::new(()));
        let inside = lock.clone().try_read_owned().unwrap();
        let timer = Timer::new();
        let writer = {
            let (lock, timer) = (lock.clone(), timer.clone());
            thread::spawn(move || block_on(within(lock.write(), move || timer)).is_err())
        };
        let late_reader = {
            let lock = lock.clone();
            thread::spawn(move || drop(block_on(lock.read())))
        };
        timer.fire();
        assert!(
            writer.join().unwrap(),
            "the writer got in while a reader held the lock"
        );
        late_reader.join().unwrap();
        drop(inside);
        assert!(lock.try_write().is_ok());
    });
}

/// A semaphore waiter whose timer fires as a permit is handed to it: the
/// permit is either held by it or back in the semaphore.
#[test]
fn semaphore_timeout_racing_a_hand_over_loses_no_permit() {
    loom::model(|| {
        let semaphore = Arc::new(Semaphore::new(0));
        let timer = Timer::new();
        let firing = {
            let timer = timer.clone();
            thread::spawn(move || timer.fire())
        };
        let adding = {
            let semaphore = semaphore.clone();
            thread::spawn(move || semaphore.add_permits(1))
        };
        let held = block_on(within(semaphore.acquire(), move || timer));
        firing.join().unwrap();
        adding.join().unwrap();
        match held {
            Ok(permit) => {
                assert_eq!(semaphore.available_permits(), 0);
                drop(permit.unwrap());
            }
            Err(Expired) => {}
        }
        assert_eq!(semaphore.available_permits(), 1, "a permit was lost");
    });
}
