//! In-process Semaphore and RwLock: behaviour, fairness, and cancellation of
//! every waiting method at awkward moments (before its first poll, while
//! queued, partly served, served but not yet polled).

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use lockyard::local::{
    AcquireTimeoutError, NamedRwLock, NamedSemaphore, OwnedRwLockMappedWriteGuard,
    OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock, RwLockMappedWriteGuard, RwLockReadGuard,
    RwLockWriteGuard, Semaphore, TryAcquireError,
};
use lockyard::{AcquireOptions, Lock, LockError, Mode};

/// Polls once with a no-op waker.
fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// Bounds every wait: in-process waits get half the kit's `LIMIT`.
#[track_caller]
fn bounded<F: Future>(f: F) -> impl Future<Output = F::Output> {
    lockyard_testkit::bounded_for(Duration::from_secs(10), f)
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One way of waiting for `n` permits of a semaphore; resolves to whether it
/// got them (and forgets them).
type AcquireFn = fn(Arc<Semaphore>, u32) -> BoxFuture<bool>;

fn long() -> Duration {
    Duration::from_secs(60)
}

fn semaphore_waiters() -> Vec<(&'static str, u32, AcquireFn)> {
    vec![
        ("acquire", 1, |s, _| {
            Box::pin(async move { s.acquire().await.map(|p| p.forget()).is_ok() })
        }),
        ("acquire_many", 2, |s, n| {
            Box::pin(async move { s.acquire_many(n).await.map(|p| p.forget()).is_ok() })
        }),
        ("acquire_timeout", 1, |s, _| {
            Box::pin(async move { s.acquire_timeout(long()).await.map(|p| p.forget()).is_ok() })
        }),
        ("acquire_many_timeout", 2, |s, n| {
            Box::pin(async move {
                s.acquire_many_timeout(n, long())
                    .await
                    .map(|p| p.forget())
                    .is_ok()
            })
        }),
        ("acquire_owned", 1, |s, _| {
            Box::pin(async move { s.acquire_owned().await.map(|p| p.forget()).is_ok() })
        }),
        ("acquire_many_owned", 2, |s, n| {
            Box::pin(async move { s.acquire_many_owned(n).await.map(|p| p.forget()).is_ok() })
        }),
        ("acquire_many_owned_timeout", 2, |s, n| {
            Box::pin(async move {
                s.acquire_many_owned_timeout(n, long())
                    .await
                    .map(|p| p.forget())
                    .is_ok()
            })
        }),
        ("NamedSemaphore::lock", 1, |s, _| {
            Box::pin(async move {
                let named = NamedSemaphore::from_arc("x", s);
                let opts = AcquireOptions::exclusive().timeout(long());
                named.lock(&opts).await.map(std::mem::forget).is_ok()
            })
        }),
    ]
}

#[tokio::test]
async fn cancel_every_semaphore_waiter_at_awkward_moments() {
    for (name, n, make) in semaphore_waiters() {
        let permits = n as usize;

        // Dropped before its first poll.
        let s = Arc::new(Semaphore::new(0));
        drop(make(Arc::clone(&s), n));
        s.add_permits(permits);
        assert_eq!(s.available_permits(), permits, "{name}: never polled");

        // Dropped while queued with nothing assigned.
        let s = Arc::new(Semaphore::new(0));
        let mut fut = make(Arc::clone(&s), n);
        assert!(poll_once(fut.as_mut()).is_pending(), "{name}");
        drop(fut);
        s.add_permits(permits);
        assert_eq!(s.available_permits(), permits, "{name}: queued");

        // Dropped after being served but before being polled again.
        let s = Arc::new(Semaphore::new(0));
        let mut fut = make(Arc::clone(&s), n);
        assert!(poll_once(fut.as_mut()).is_pending(), "{name}");
        s.add_permits(permits);
        assert_eq!(
            s.available_permits(),
            0,
            "{name}: permits went to the waiter"
        );
        drop(fut);
        assert_eq!(s.available_permits(), permits, "{name}: served, unpolled");

        // Served, unpolled, with another waiter behind: the permits go on to
        // it rather than to the counter.
        let s = Arc::new(Semaphore::new(0));
        let mut first = make(Arc::clone(&s), n);
        assert!(poll_once(first.as_mut()).is_pending());
        let mut second = pin!(Arc::clone(&s).acquire_many_owned(n));
        assert!(poll_once(second.as_mut()).is_pending());
        s.add_permits(permits);
        drop(first);
        assert_eq!(s.available_permits(), 0, "{name}: handed on");
        assert!(matches!(poll_once(second.as_mut()), Poll::Ready(Ok(_))));

        // Weighted: partly served at the front, then dropped; the waiter
        // behind gets the share.
        if n == 2 {
            let s = Arc::new(Semaphore::new(1));
            let mut fut = make(Arc::clone(&s), n);
            // Takes the one free permit and waits for the other.
            assert!(poll_once(fut.as_mut()).is_pending());
            assert_eq!(s.available_permits(), 0, "{name}: partly served");
            let mut behind = pin!(s.acquire());
            assert!(
                poll_once(behind.as_mut()).is_pending(),
                "{name}: no overtaking"
            );
            drop(fut);
            assert!(
                matches!(poll_once(behind.as_mut()), Poll::Ready(Ok(_))),
                "{name}: share handed on"
            );
        }

        // And it does complete when not cancelled.
        let s = Arc::new(Semaphore::new(0));
        let waiter = tokio::spawn(make(Arc::clone(&s), n));
        tokio::task::yield_now().await;
        s.add_permits(permits);
        assert!(bounded(waiter).await.unwrap(), "{name}: completes");
    }
}

/// One way of waiting for an RwLock.
type LockFn = fn(Arc<RwLock>) -> BoxFuture<()>;

fn rwlock_waiters() -> Vec<(&'static str, bool, LockFn)> {
    vec![
        ("read", false, |l| {
            Box::pin(async move { drop(l.read().await) })
        }),
        ("write", true, |l| {
            Box::pin(async move { drop(l.write().await) })
        }),
        ("read_owned", false, |l| {
            Box::pin(async move { drop(l.read_owned().await) })
        }),
        ("write_owned", true, |l| {
            Box::pin(async move { drop(l.write_owned().await) })
        }),
        ("read_timeout", false, |l| {
            Box::pin(async move { drop(l.read_timeout(long()).await.unwrap()) })
        }),
        ("write_timeout", true, |l| {
            Box::pin(async move { drop(l.write_timeout(long()).await.unwrap()) })
        }),
        ("read_owned_timeout", false, |l| {
            Box::pin(async move { drop(l.read_owned_timeout(long()).await.unwrap()) })
        }),
        ("write_owned_timeout", true, |l| {
            Box::pin(async move { drop(l.write_owned_timeout(long()).await.unwrap()) })
        }),
        ("NamedRwLock::lock(shared)", false, |l| {
            Box::pin(async move {
                let named = NamedRwLock::from_arc("x", l);
                drop(named.lock(&AcquireOptions::shared()).await.unwrap())
            })
        }),
        ("NamedRwLock::lock(exclusive)", true, |l| {
            Box::pin(async move {
                let named = NamedRwLock::from_arc("x", l);
                drop(named.lock(&AcquireOptions::exclusive()).await.unwrap())
            })
        }),
    ]
}

#[tokio::test]
async fn cancel_every_rwlock_waiter_at_awkward_moments() {
    for (name, is_write, make) in rwlock_waiters() {
        // Never polled.
        let l = Arc::new(RwLock::new(()));
        drop(make(Arc::clone(&l)));
        assert!(!l.is_locked(), "{name}");

        // Queued behind a writer, then dropped.
        let l = Arc::new(RwLock::new(()));
        let w = Arc::clone(&l).try_write_owned().unwrap();
        let mut fut = make(Arc::clone(&l));
        assert!(poll_once(fut.as_mut()).is_pending(), "{name}");
        drop(fut);
        drop(w);
        assert!(!l.is_locked(), "{name}: queued then dropped");
        assert!(l.try_write().is_ok());

        // Served but not yet polled, then dropped.
        let l = Arc::new(RwLock::new(()));
        let w = Arc::clone(&l).try_write_owned().unwrap();
        let mut fut = make(Arc::clone(&l));
        assert!(poll_once(fut.as_mut()).is_pending());
        drop(w);
        assert!(l.is_locked(), "{name}: handed to the waiter");
        drop(fut);
        assert!(!l.is_locked(), "{name}: served, unpolled, dropped");

        if is_write {
            // Partly served (a reader inside), then dropped: the reader
            // queued behind it gets in.
            let l = Arc::new(RwLock::new(()));
            let r = Arc::clone(&l).try_read_owned().unwrap();
            let mut fut = make(Arc::clone(&l));
            assert!(poll_once(fut.as_mut()).is_pending());
            let mut late = pin!(l.read());
            assert!(
                poll_once(late.as_mut()).is_pending(),
                "{name}: reader waits behind writer"
            );
            drop(fut);
            assert!(poll_once(late.as_mut()).is_ready(), "{name}: reader let in");
            drop(r);
        }
    }
}

#[tokio::test]
async fn fifo_no_overtaking() {
    let s = Semaphore::new(1);
    let held = s.try_acquire().unwrap();
    let mut big = pin!(s.acquire_many(2));
    assert!(poll_once(big.as_mut()).is_pending());
    s.add_permits(1);
    // One permit is free in total, but it is set aside for `big`: a
    // newcomer asking for one waits.
    assert_eq!(s.try_acquire().unwrap_err(), TryAcquireError::NoPermits);
    let mut small = pin!(s.acquire());
    assert!(poll_once(small.as_mut()).is_pending());
    drop(held);
    let big = poll_once(big.as_mut());
    assert!(matches!(big, Poll::Ready(Ok(ref p)) if p.num_permits() == 2));
    assert!(poll_once(small.as_mut()).is_pending());
    drop(big);
    assert!(poll_once(small.as_mut()).is_ready());
}

#[tokio::test]
async fn waiters_are_served_in_order() {
    let s = Arc::new(Semaphore::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (s, tx) = (Arc::clone(&s), tx.clone());
        tasks.push(tokio::spawn(async move {
            let p = s.acquire().await.unwrap();
            tx.send(i).unwrap();
            drop(p);
        }));
        // Let it queue before the next one starts.
        tokio::task::yield_now().await;
    }
    s.add_permits(1);
    for t in tasks {
        bounded(t).await.unwrap();
    }
    let order: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(order, (0..20).collect::<Vec<_>>());
}

#[tokio::test]
async fn close_fails_waiters_and_keeps_holders() {
    let s = Arc::new(Semaphore::new(1));
    let held = s.try_acquire().unwrap();
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.acquire_many(1).await.is_err() })
        })
        .collect();
    tokio::task::yield_now().await;
    s.close();
    for w in waiters {
        assert!(bounded(w).await.unwrap());
    }
    assert!(s.acquire().await.is_err());
    assert_eq!(
        s.acquire_timeout(Duration::from_secs(1)).await.unwrap_err(),
        AcquireTimeoutError::Closed
    );
    assert!(s.try_acquire().unwrap_err().is_closed());
    drop(held);
    assert_eq!(s.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn timeouts_leave_nothing_behind() {
    let s = Arc::new(Semaphore::new(1));
    let held = s.try_acquire().unwrap();
    let err = s
        .acquire_timeout(Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    let err = Arc::clone(&s)
        .acquire_many_owned_timeout(1, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    drop(held);
    assert_eq!(s.available_permits(), 1);
    // A free permit is taken even with a zero timeout.
    assert!(s.acquire_timeout(Duration::ZERO).await.is_ok());
}

#[test]
fn blocking_acquirers_on_threads() {
    let s = Semaphore::new(2);
    let inside = AtomicUsize::new(0);
    let max = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for i in 0..8 {
            let (s, inside, max) = (&s, &inside, &max);
            scope.spawn(move || {
                for _ in 0..200 {
                    let p = if i % 2 == 0 {
                        s.acquire_blocking().unwrap()
                    } else {
                        s.acquire_many_blocking(1).unwrap()
                    };
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(now, Ordering::SeqCst);
                    inside.fetch_sub(1, Ordering::SeqCst);
                    drop(p);
                }
            });
        }
    });
    assert!(max.load(Ordering::SeqCst) <= 2);
    assert_eq!(s.available_permits(), 2);
}

#[test]
fn rwlock_blocking_threads_keep_data_consistent() {
    let lock = RwLock::new((0u64, 0u64));
    std::thread::scope(|scope| {
        for i in 0..6 {
            let lock = &lock;
            scope.spawn(move || {
                for _ in 0..300 {
                    if i % 3 == 0 {
                        let mut g = lock.blocking_write();
                        g.0 += 1;
                        g.1 += 1;
                    } else {
                        let g = lock.blocking_read();
                        assert_eq!(g.0, g.1, "torn read");
                    }
                }
            });
        }
    });
    assert_eq!(*lock.blocking_read(), (600, 600));
}

#[tokio::test]
async fn rwlock_downgrade_lets_readers_in_not_writers() {
    let l = RwLock::new(1);
    let mut w = l.write().await;
    *w = 2;
    let r = w.downgrade();
    assert!(l.try_write().is_err());
    assert_eq!(*l.try_read().unwrap(), 2);
    drop(r);
    assert!(l.try_write().is_ok());
}

#[tokio::test]
async fn named_semaphore_through_the_lock_trait() {
    let lock: Arc<dyn Lock> = Arc::new(NamedSemaphore::new("gpu", 2));
    assert_eq!(lock.name(), "gpu");
    let a = lock.lock(&AcquireOptions::exclusive()).await.unwrap();
    let b = lock.try_lock(Mode::Shared).await.unwrap();
    assert_eq!(
        (a.resource(), a.mode(), a.fencing_token()),
        ("gpu", Mode::Exclusive, None)
    );
    assert!(lock.is_locked().await.unwrap());
    let err = lock.try_lock(Mode::Exclusive).await.unwrap_err();
    assert!(
        matches!(err, LockError::Saturated { ref resource, timed_out: false, .. } if resource == "gpu")
    );
    let opts = AcquireOptions::exclusive().timeout(Duration::from_millis(20));
    let err = lock.lock(&opts).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let zero = AcquireOptions::exclusive().timeout(Duration::ZERO);
    let err = lock.lock(&zero).await.unwrap_err();
    assert!(err.is_timeout(), "zero timeout tries once: {err}");
    a.release().await.unwrap();
    drop(b);
    assert!(!lock.is_locked().await.unwrap());

    let named = NamedSemaphore::new("closed", 1);
    named.semaphore().close();
    assert!(matches!(
        named.lock(&AcquireOptions::new()).await,
        Err(LockError::Closed { .. })
    ));
    assert!(matches!(
        named.try_lock(Mode::Exclusive).await,
        Err(LockError::Closed { .. })
    ));
}

#[tokio::test]
async fn named_rwlock_through_the_lock_trait() {
    let lock = NamedRwLock::new("index");
    let r1 = lock.lock(&AcquireOptions::shared()).await.unwrap();
    let r2 = lock.lock(&AcquireOptions::shared()).await.unwrap();
    assert_eq!(r1.mode(), Mode::Shared);
    assert!(lock.is_locked().await.unwrap());
    let opts = AcquireOptions::exclusive().timeout(Duration::from_millis(20));
    assert!(lock.lock(&opts).await.unwrap_err().is_timeout());
    // The timed-out writer left; readers still get in.
    let r3 = lock.try_lock(Mode::Shared).await.unwrap();
    drop((r1, r2, r3));
    let w = lock.lock(&AcquireOptions::exclusive()).await.unwrap();
    assert_eq!(w.mode(), Mode::Exclusive);
    assert!(
        lock.try_lock(Mode::Shared)
            .await
            .unwrap_err()
            .is_would_block()
    );
    w.release().await.unwrap();
    assert!(!lock.is_locked().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_writer_not_starved_by_reader_stream() {
    let lock = Arc::new(RwLock::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (lock, stop) = (Arc::clone(&lock), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) && reads < 1_000_000 {
                    let g = lock.read().await;
                    tokio::task::yield_now().await;
                    drop(g);
                    reads += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..10 {
        *bounded(lock.write()).await += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        bounded(r).await.unwrap();
    }
    assert_eq!(*lock.read().await, 10);
}

#[tokio::test]
async fn held_by_the_manager_beside_other_locks() {
    use lockyard::AsyncLockManager;

    let manager = AsyncLockManager::new();
    manager
        .register("gpu", Arc::new(NamedSemaphore::new("gpu", 1)))
        .unwrap();
    manager
        .register("index", Arc::new(NamedRwLock::new("index")))
        .unwrap();
    let set = manager
        .acquire_all(&["index", "gpu"], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(set.len(), 2);
    let busy = manager
        .acquire(
            "gpu",
            &AcquireOptions::exclusive().timeout(Duration::from_millis(10)),
        )
        .await
        .unwrap_err();
    assert!(busy.is_timeout(), "{busy}");
    let shared = AcquireOptions::shared().timeout(Duration::from_millis(10));
    assert!(
        manager
            .acquire("index", &shared)
            .await
            .unwrap_err()
            .is_timeout()
    );
    set.release().await.unwrap();
    let r1 = manager.acquire("index", &shared).await.unwrap();
    let r2 = manager.acquire("index", &shared).await.unwrap();
    drop((r1, r2));
    assert!(!manager.get("gpu").unwrap().is_locked().await.unwrap());
}

/// Counts its wakes.
struct CountingWaker(AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// More waiters than one wake batch (32): `add_permits` and `close` go
/// round the lock again until every waiter is woken, served or failed.
#[tokio::test]
async fn wake_batches_larger_than_one_round() {
    let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&counter));
    let mut cx = Context::from_waker(&waker);
    let s = Arc::new(Semaphore::new(0));
    let mut waiters: Vec<_> = (0..100).map(|_| Box::pin(s.acquire())).collect();
    for w in &mut waiters {
        assert!(w.as_mut().poll(&mut cx).is_pending());
    }
    s.add_permits(70);
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        70,
        "every served waiter woken"
    );
    let mut served = 0;
    for w in &mut waiters {
        if let Poll::Ready(p) = w.as_mut().poll(&mut cx) {
            p.unwrap().forget();
            served += 1;
        }
    }
    assert_eq!(served, 70);
    s.close();
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        100,
        "every waiter woken by close"
    );
    let failed = waiters
        .iter_mut()
        .skip(70)
        .map(|w| poll_once(w.as_mut()))
        .filter(|p| matches!(p, Poll::Ready(Err(_))))
        .count();
    assert_eq!(failed, 30);
}

/// Issue 11, item 4: a semaphore out of permits is told apart from a lock
/// held by someone, through the `Lock` trait (429 versus 409), while
/// `is_timeout` / `is_would_block` keep their meaning.
#[tokio::test(start_paused = true)]
async fn named_semaphore_saturation_is_told_apart_from_a_held_lock() {
    let pool: Arc<dyn Lock> = Arc::new(NamedSemaphore::new("pool", 1));
    let rw: Arc<dyn Lock> = Arc::new(NamedRwLock::new("row"));
    let _permit = pool.try_lock(Mode::Exclusive).await.unwrap();
    let _writer = rw.try_lock(Mode::Exclusive).await.unwrap();

    let busy = pool.try_lock(Mode::Exclusive).await.unwrap_err();
    assert!(busy.is_saturated() && busy.is_would_block() && busy.is_contended());
    assert!(!busy.is_timeout());
    assert_eq!(busy.resource(), Some("pool"));
    assert_eq!(
        busy.to_string(),
        "every permit of semaphore `pool` is taken"
    );

    let opts = AcquireOptions::exclusive().timeout(Duration::from_millis(20));
    let waited = bounded(pool.lock(&opts)).await.unwrap_err();
    assert!(waited.is_saturated() && waited.is_timeout() && !waited.is_would_block());
    assert!(
        matches!(waited, LockError::Saturated { waited: Some(w), .. } if w >= Duration::from_millis(20)),
        "{waited:?}"
    );
    assert!(
        waited
            .to_string()
            .starts_with("every permit of semaphore `pool` stayed taken for")
    );

    let held = rw.try_lock(Mode::Shared).await.unwrap_err();
    assert!(held.is_would_block() && !held.is_saturated());
    let held = bounded(rw.lock(&opts.mode(Mode::Shared)))
        .await
        .unwrap_err();
    assert!(held.is_timeout() && !held.is_saturated());
}

/// Every error of the in-process primitives converts into `LockError`
/// (so `?` works), into the same variants the named adapters use, with no
/// resource name.
#[tokio::test(start_paused = true)]
async fn local_errors_convert_into_lock_error() {
    let s = Semaphore::new(0);
    let e: LockError = s.try_acquire().unwrap_err().into();
    assert!(matches!(
        e,
        LockError::Saturated {
            timed_out: false,
            ..
        }
    ));
    assert!(e.resource().is_none());
    assert_eq!(
        e.to_string(),
        "every permit of an unnamed in-process semaphore is taken"
    );
    let e: LockError = bounded(s.acquire_timeout(Duration::from_millis(1)))
        .await
        .unwrap_err()
        .into();
    assert!(e.is_saturated() && e.is_timeout());
    s.close();
    let e: LockError = bounded(s.acquire()).await.unwrap_err().into();
    assert!(matches!(e, LockError::Closed { .. }) && e.resource().is_none());
    assert_eq!(e.to_string(), "an unnamed in-process primitive is closed");
    let e: LockError = s.try_acquire().unwrap_err().into();
    assert!(matches!(e, LockError::Closed { .. }));
    let e: LockError = bounded(s.acquire_timeout(Duration::ZERO))
        .await
        .unwrap_err()
        .into();
    assert!(matches!(e, LockError::Closed { .. }));

    let l = RwLock::new(());
    let _w = l.try_write().unwrap();
    let e: LockError = l.try_read().unwrap_err().into();
    assert!(e.is_would_block() && !e.is_saturated() && e.resource().is_none());
    assert_eq!(e.to_string(), "an unnamed in-process lock is held");
    let e: LockError = bounded(l.read_timeout(Duration::from_millis(3)))
        .await
        .unwrap_err()
        .into();
    assert!(
        matches!(e, LockError::Timeout { waited, .. } if waited == Duration::from_millis(3)),
        "{e:?}"
    );
    assert!(!e.is_saturated());
}

#[tokio::test(start_paused = true)]
async fn rwlock_timeouts_give_up_and_leave_nothing_behind() {
    let l = Arc::new(RwLock::new(0));
    // Free: taken even with a zero timeout (and without a timer).
    assert_eq!(*l.read_timeout(Duration::ZERO).await.unwrap(), 0);
    *l.write_timeout(Duration::ZERO).await.unwrap() = 1;

    let w = l.try_write().unwrap();
    let err = bounded(l.read_timeout(Duration::from_millis(10)))
        .await
        .unwrap_err();
    assert_eq!(err.waited(), Duration::from_millis(10));
    assert!(
        bounded(Arc::clone(&l).read_owned_timeout(Duration::from_millis(1)))
            .await
            .is_err()
    );
    assert!(
        bounded(l.write_timeout(Duration::from_millis(1)))
            .await
            .is_err()
    );
    drop(w);
    assert!(!l.is_locked(), "the timed-out waiters left nothing");

    // A writer that times out while partly served (a reader inside) hands
    // its share on: the reader queued behind it gets in.
    let r = Arc::clone(&l).try_read_owned().unwrap();
    let writer = tokio::spawn({
        let l = Arc::clone(&l);
        async move {
            l.write_owned_timeout(Duration::from_millis(50))
                .await
                .is_err()
        }
    });
    tokio::task::yield_now().await;
    assert!(l.try_read().is_err(), "the writer is queued");
    let late = tokio::spawn({
        let l = Arc::clone(&l);
        async move { *l.read_owned_timeout(long()).await.unwrap() }
    });
    assert!(bounded(writer).await.unwrap(), "the writer timed out");
    assert_eq!(
        bounded(late).await.unwrap(),
        1,
        "the reader behind it got in"
    );
    drop(r);
    assert!(!l.is_locked());

    // A waiter served in the same instant its timer fires keeps the lock.
    let w = Arc::clone(&l).try_write_owned().unwrap();
    let reader = tokio::spawn({
        let l = Arc::clone(&l);
        async move {
            l.read_owned_timeout(Duration::from_millis(5))
                .await
                .map(|g| *g)
        }
    });
    tokio::task::yield_now().await;
    drop(w);
    assert_eq!(bounded(reader).await.unwrap().unwrap(), 1);
    assert!(!l.is_locked());
}

#[tokio::test]
async fn mapped_guards_keep_their_permits() {
    let l = RwLock::new((1, vec![2, 3]));

    let first = RwLockReadGuard::map(l.read().await, |t| &t.0);
    assert_eq!(*first, 1);
    assert!(l.try_write().is_err(), "a mapped read guard still reads");
    assert!(l.try_read().is_ok(), "and shares");
    drop(first);
    assert!(!l.is_locked());

    let guard = l.read().await;
    let guard = RwLockReadGuard::try_map(guard, |t| t.1.get(5)).unwrap_err();
    assert!(
        l.try_write().is_err(),
        "a failed try_map gives the guard back"
    );
    let last = RwLockReadGuard::try_map(guard, |t| t.1.last()).unwrap();
    assert_eq!(*last, 3);
    drop(last);

    let mut list = RwLockWriteGuard::map(l.write().await, |t| &mut t.1);
    list.push(4);
    assert!(
        l.try_read().is_err(),
        "a mapped write guard is still exclusive"
    );
    let mut last = RwLockMappedWriteGuard::try_map(list, |v| v.last_mut()).unwrap();
    *last = 40;
    assert!(l.try_read().is_err());
    drop(last);
    assert_eq!(l.read().await.1, [2, 3, 40]);

    let w = l.write().await;
    let w = RwLockWriteGuard::try_map(w, |t| t.1.get_mut(9)).unwrap_err();
    assert!(l.try_read().is_err());
    drop(w);
    assert!(!l.is_locked());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_mapped_guards_move_and_keep_their_permits() {
    let l = Arc::new(RwLock::new((String::from("a"), 0u32)));
    let name = OwnedRwLockReadGuard::map(Arc::clone(&l).read_owned().await, |t| &t.0);
    assert!(Arc::ptr_eq(OwnedRwLockReadGuard::rwlock(&name), &l));
    let reader = tokio::spawn(async move { name.len() });
    assert_eq!(bounded(reader).await.unwrap(), 1);
    assert!(!l.is_locked(), "dropped in the task");

    let count = OwnedRwLockWriteGuard::map(Arc::clone(&l).write_owned().await, |t| &mut t.1);
    let count = OwnedRwLockMappedWriteGuard::try_map(count, |c| Some(c)).unwrap();
    assert!(l.try_read().is_err());
    let writer = tokio::spawn(async move {
        let mut count = count;
        *count += 1;
    });
    bounded(writer).await.unwrap();
    assert_eq!(l.read().await.1, 1);

    let w = Arc::clone(&l).write_owned().await;
    let w = OwnedRwLockWriteGuard::try_map(w, |_| None::<&mut u8>).unwrap_err();
    assert!(
        l.try_read().is_err(),
        "a failed try_map keeps exclusive access"
    );
    drop(w);
    assert!(!l.is_locked());
}

#[tokio::test]
async fn owned_write_guard_downgrade_lets_readers_in_not_writers() {
    let l = Arc::new(RwLock::new(1));
    let mut w = Arc::clone(&l).write_owned().await;
    *w = 2;
    let reader = tokio::spawn({
        let l = Arc::clone(&l);
        async move { *l.read_owned().await }
    });
    // On this single-threaded runtime the reader runs, and queues, here.
    tokio::task::yield_now().await;
    assert!(!reader.is_finished(), "the reader waits behind the writer");
    let r = w.downgrade();
    assert_eq!(
        bounded(reader).await.unwrap(),
        2,
        "the queued reader got in"
    );
    assert!(
        l.try_write().is_err(),
        "no writer while the downgraded guard reads"
    );
    assert_eq!(*l.try_read().unwrap(), 2);
    let held_elsewhere = tokio::spawn(async move { *r });
    assert_eq!(bounded(held_elsewhere).await.unwrap(), 2);
    assert!(l.try_write().is_ok());
}

#[test]
fn a_map_that_panics_releases_the_lock() {
    let l = RwLock::new(vec![1]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = RwLockWriteGuard::map(l.try_write().unwrap(), |_| -> &mut u8 { panic!("in map") });
    }));
    assert!(result.is_err());
    assert!(
        !l.is_locked(),
        "the write guard was dropped while unwinding"
    );
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = RwLockReadGuard::map(l.try_read().unwrap(), |_| -> &u8 { panic!("in map") });
    }));
    assert!(result.is_err());
    assert!(!l.is_locked());
}
