//! Loom models of the semaphore core through the public [`Semaphore`].

use std::pin::pin;

use loom::future::block_on;
use loom::sync::Arc;
use loom::sync::atomic::AtomicUsize;
use loom::sync::atomic::Ordering::SeqCst;
use loom::thread;

use super::poll_once;
use crate::local::Semaphore;

/// Acquires, checks that no more than `limit` are inside, releases.
fn enter(semaphore: &Semaphore, inside: &AtomicUsize, n: u32, limit: usize) {
    let permit = block_on(semaphore.acquire_many(n)).unwrap();
    let now = inside.fetch_add(n as usize, SeqCst) + n as usize;
    assert!(now <= limit, "{now} permits held of {limit}");
    inside.fetch_sub(n as usize, SeqCst);
    drop(permit);
}

/// Never more holders than permits; every permit back at the end.
#[test]
fn permits_conserved() {
    loom::model(|| {
        let semaphore = Arc::new(Semaphore::new(1));
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (semaphore, inside) = (semaphore.clone(), inside.clone());
                thread::spawn(move || enter(&semaphore, &inside, 1, 1))
            })
            .collect();
        enter(&semaphore, &inside, 1, 1);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(semaphore.available_permits(), 1);
    });
}

/// Weighted requests (a large one among small ones) are all served, and
/// never over-commit the semaphore.
#[test]
fn weighted_permits_conserved() {
    loom::model(|| {
        let semaphore = Arc::new(Semaphore::new(3));
        let inside = Arc::new(AtomicUsize::new(0));
        let big = {
            let (semaphore, inside) = (semaphore.clone(), inside.clone());
            thread::spawn(move || enter(&semaphore, &inside, 3, 3))
        };
        let small = {
            let (semaphore, inside) = (semaphore.clone(), inside.clone());
            thread::spawn(move || enter(&semaphore, &inside, 2, 3))
        };
        enter(&semaphore, &inside, 2, 3);
        big.join().unwrap();
        small.join().unwrap();
        assert_eq!(semaphore.available_permits(), 3);
    });
}

/// Acquire futures polled once and dropped, racing with a release, leave
/// every permit in the semaphore (tokio's `concurrent_cancel`).
#[test]
fn concurrent_cancel_returns_permits() {
    fn poll_and_cancel(semaphore: &Semaphore) {
        let mut one = pin!(semaphore.acquire());
        let mut two = pin!(semaphore.acquire_many(2));
        let _ = poll_once(&mut one);
        let _ = poll_once(&mut two);
        // Both dropped here, served, partly served or not.
    }

    loom::model(|| {
        let semaphore = Arc::new(Semaphore::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let semaphore = semaphore.clone();
                thread::spawn(move || poll_and_cancel(&semaphore))
            })
            .collect();
        semaphore.add_permits(3);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(semaphore.available_permits(), 3);
    });
}

/// A waiter at the front that is cancelled after being partly served hands
/// its permits to the waiter behind it, which then completes.
#[test]
fn cancel_of_partly_served_waiter_hands_permits_on() {
    loom::model(|| {
        let semaphore = Arc::new(Semaphore::new(0));
        let (queued_tx, queued_rx) = loom::sync::mpsc::channel::<()>();
        let front = {
            let semaphore = semaphore.clone();
            thread::spawn(move || {
                let mut big = pin!(semaphore.acquire_many(2));
                assert!(poll_once(&mut big).is_pending());
                queued_tx.send(()).unwrap();
                thread::yield_now();
                // Dropped: its share (if any) goes to the next waiter.
            })
        };
        queued_rx.recv().unwrap();
        let behind = {
            let semaphore = semaphore.clone();
            thread::spawn(move || {
                let permit = block_on(semaphore.acquire()).unwrap();
                permit.forget();
            })
        };
        semaphore.add_permits(1);
        front.join().unwrap();
        behind.join().unwrap();
        assert_eq!(semaphore.available_permits(), 0);
    });
}

/// `close` wakes every queued waiter, and each fails.
#[test]
fn close_wakes_every_waiter() {
    loom::model(|| {
        let semaphore = Arc::new(Semaphore::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let semaphore = semaphore.clone();
                thread::spawn(move || block_on(semaphore.acquire()).is_err())
            })
            .collect();
        semaphore.close();
        for t in threads {
            assert!(
                t.join().unwrap(),
                "acquire succeeded on a closed empty semaphore"
            );
        }
        assert!(semaphore.try_acquire().unwrap_err().is_closed());
    });
}

/// Close racing with acquirers that hold and release (tokio's
/// `concurrent_close`): nobody hangs, nobody over-commits.
#[test]
fn close_races_acquire_and_release() {
    loom::model(|| {
        let semaphore = Arc::new(Semaphore::new(1));
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (semaphore, inside) = (semaphore.clone(), inside.clone());
                thread::spawn(move || {
                    if let Ok(permit) = block_on(semaphore.acquire()) {
                        assert_eq!(inside.fetch_add(1, SeqCst), 0);
                        inside.fetch_sub(1, SeqCst);
                        drop(permit);
                    }
                    semaphore.close();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(semaphore.is_closed());
    });
}

/// Blocking (thread-parking) and async acquirers share one queue.
#[test]
fn blocking_and_async_acquirers_mix() {
    loom::model(|| {
        let semaphore = Arc::new(Semaphore::new(1));
        let inside = Arc::new(AtomicUsize::new(0));
        let blocking = {
            let (semaphore, inside) = (semaphore.clone(), inside.clone());
            thread::spawn(move || {
                let permit = semaphore.acquire_blocking().unwrap();
                assert_eq!(inside.fetch_add(1, SeqCst), 0);
                inside.fetch_sub(1, SeqCst);
                drop(permit);
            })
        };
        // The async acquirer first registers with a no-op waker, as a task
        // that is then moved to another executor would.
        let mut acquire = pin!(semaphore.acquire());
        let permit = match poll_once(&mut acquire) {
            std::task::Poll::Ready(result) => result.unwrap(),
            std::task::Poll::Pending => block_on(acquire).unwrap(),
        };
        assert_eq!(inside.fetch_add(1, SeqCst), 0);
        inside.fetch_sub(1, SeqCst);
        drop(permit);
        blocking.join().unwrap();
        assert_eq!(semaphore.available_permits(), 1);
    });
}

/// A served waiter's ticket goes back to the queue for reuse while its
/// future may not have read it yet; a later waiter gets it only once that
/// future has let go of it. So the served future completes (it never sees
/// the ticket reset to `WAITING` for the next one), the later waiter is
/// served by the first one's release, and no permit is lost or doubled.
#[test]
fn served_ticket_is_reused_only_after_its_future_lets_go() {
    loom::model(|| {
        let semaphore = Arc::new(Semaphore::new(0));
        let (queued_tx, queued_rx) = loom::sync::mpsc::channel::<()>();
        let first = {
            let semaphore = semaphore.clone();
            thread::spawn(move || {
                let mut acquire = pin!(semaphore.acquire());
                assert!(poll_once(&mut acquire).is_pending());
                queued_tx.send(()).unwrap();
                let permit = block_on(acquire).unwrap();
                drop(permit);
            })
        };
        queued_rx.recv().unwrap();
        // Serves `first` and keeps its ticket as a spare.
        semaphore.add_permits(1);
        // Queues (unless `first` has already released), with `first`'s
        // ticket if `first` is done with it.
        let permit = block_on(semaphore.acquire()).unwrap();
        drop(permit);
        first.join().unwrap();
        assert_eq!(semaphore.available_permits(), 1);
    });
}
