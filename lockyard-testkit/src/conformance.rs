//! The guard contract, checked the same way on every backend through
//! `Arc<dyn Lock>`: two views of one named lock (two file-lock managers on
//! one directory, two Redis clients on one server, two handles to one
//! in-process lock) must behave alike.
//!
//! A backend runs the whole suite with one line in a test file:
//!
//! ```ignore
//! lockyard_testkit::conformance_tests!(my_backend, my_views);
//! ```
//!
//! where `my_views(name)` is an `async fn(&str) -> (Keep, Arc<dyn Lock>,
//! Arc<dyn Lock>)`: two views of the lock `name`, and whatever keeps them
//! alive (a directory, a server). Each check is also a public function, for
//! a backend that needs to run one on its own.

use std::sync::Arc;
use std::time::Duration;

use lockyard::{AcquireOptions, Lock, Mode};
use tokio::time::Instant;

use crate::wait::bounded;

/// What keeps a backend's views alive (a directory, a server).
pub type Keep = Box<dyn std::any::Any + Send>;

/// Retries `try_lock(Exclusive)` on `lock` until it succeeds (bounded):
/// whatever a cancelled operation left behind must go away by itself.
pub async fn eventually_free(lock: &dyn Lock, why: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match lock.try_lock(Mode::Exclusive).await {
            Ok(g) => {
                g.release().await.expect("release");
                return;
            }
            Err(e) if e.is_would_block() => {}
            Err(e) => panic!("{why}: {e}"),
        }
        assert!(Instant::now() < end, "{why}: still held after 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Takes `lock` exclusively, retrying (bounded) while what an earlier
/// dropped guard or cancelled acquisition left is still being released in
/// the background (Redis releases dropped guards from a task).
pub async fn take_soon(lock: &dyn Lock) -> lockyard::LockGuard {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match lock.try_lock(Mode::Exclusive).await {
            Ok(g) => return g,
            Err(e) if e.is_would_block() && Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("still held after 5 s: {e}"),
        }
    }
}

/// Try, timeout and would-block: contention is `WouldBlock` for a try,
/// `Timeout` for a wait (also a zero one); a released lock is free at once.
pub async fn try_timeout_and_would_block(a: Arc<dyn Lock>, b: Arc<dyn Lock>) {
    let g = a.try_lock(Mode::Exclusive).await.unwrap();
    assert_eq!(g.mode(), Mode::Exclusive);
    let e = b.try_lock(Mode::Exclusive).await.unwrap_err();
    assert!(e.is_would_block(), "{e}");
    let e = b.try_lock(Mode::Shared).await.unwrap_err();
    assert!(e.is_would_block(), "shared vs exclusive: {e}");
    for t in [Duration::ZERO, Duration::from_millis(100)] {
        let asked = Instant::now();
        let e = bounded(b.lock(&AcquireOptions::exclusive().timeout(t)))
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert!(asked.elapsed() >= t, "gave up before its timeout");
    }
    assert!(b.is_locked().await.unwrap());
    g.release().await.unwrap();
    b.try_lock(Mode::Exclusive)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// Shared holds share; an exclusive one excludes them.
pub async fn shared_holds_share(a: Arc<dyn Lock>, b: Arc<dyn Lock>) {
    let r1 = a.try_lock(Mode::Shared).await.unwrap();
    let r2 = b.try_lock(Mode::Shared).await.unwrap();
    assert!(
        b.try_lock(Mode::Exclusive)
            .await
            .unwrap_err()
            .is_would_block()
    );
    r1.release().await.unwrap();
    r2.release().await.unwrap();
    eventually_free(&*b, "after shared holds").await;
}

/// A release wakes a waiter on the other view at once (not at a TTL: the
/// Redis clients use a 30 s one).
pub async fn release_wakes_a_waiter(a: Arc<dyn Lock>, b: Arc<dyn Lock>) {
    let g = a.try_lock(Mode::Exclusive).await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = b
            .lock(&AcquireOptions::exclusive().timeout(Duration::from_secs(15)))
            .await;
        (g, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let released = Instant::now();
    g.release().await.unwrap();
    let (got, at) = bounded(waiter).await.unwrap();
    got.unwrap().release().await.unwrap();
    let after = at.duration_since(released);
    assert!(
        after < Duration::from_secs(3),
        "the waiter got it {after:?} after the release"
    );
}

/// Acquisitions cancelled at random moments, with and without a holder,
/// leak nothing.
pub async fn cancel_at_random_moments_leaks_nothing(a: Arc<dyn Lock>, b: Arc<dyn Lock>) {
    use rand::Rng;
    let mut rng = rand::rng();
    for round in 0..60 {
        let blocker = if round % 3 == 0 {
            Some(take_soon(&*a).await)
        } else {
            None
        };
        let mode = if round % 4 == 1 {
            Mode::Shared
        } else {
            Mode::Exclusive
        };
        let cancel_after = Duration::from_micros(rng.random_range(0..3000));
        let opts = AcquireOptions::exclusive()
            .mode(mode)
            .timeout(Duration::from_secs(5));
        if let Ok(Ok(g)) = tokio::time::timeout(cancel_after, b.lock(&opts)).await {
            drop(g);
        }
        if let Some(g) = blocker {
            g.release().await.unwrap();
        }
    }
    eventually_free(&*a, "after cancelled acquisitions").await;
}

/// A release whose future is dropped before it completes still releases.
pub async fn cancelled_release_still_releases(a: Arc<dyn Lock>, b: Arc<dyn Lock>) {
    let g = a.try_lock(Mode::Exclusive).await.unwrap();
    let release = g.release();
    // Poll it at most once, then drop it.
    let _ = futures::FutureExt::now_or_never(release);
    eventually_free(&*b, "after a cancelled release").await;
}

/// A guard that is dropped releases (in the background where that needs
/// I/O).
pub async fn dropped_guard_releases(a: Arc<dyn Lock>, b: Arc<dyn Lock>) {
    drop(a.try_lock(Mode::Exclusive).await.unwrap());
    eventually_free(&*b, "after a dropped guard").await;
}

/// One `#[tokio::test]` per check of the suite, in a module named
/// `$backend`, each on fresh views from `$views` (an
/// `async fn(&str) -> (Keep, Arc<dyn Lock>, Arc<dyn Lock>)` in scope where
/// the macro is used).
///
/// With `cancel_unsafe = f`, `f()` (an `Option<String>`) says why the
/// cancellation storm must not run here (a server or proxy known to crash
/// on cancel requests); the check then says so and passes.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:ident, $views:expr) => {
        $crate::conformance_tests!($backend, $views, cancel_unsafe = || None::<String>);
    };
    ($backend:ident, $views:expr, cancel_unsafe = $cancel_unsafe:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn try_timeout_and_would_block() {
                let (_keep, a, b) = ($views)("try").await;
                $crate::conformance::try_timeout_and_would_block(a, b).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn shared_holds_share() {
                let (_keep, a, b) = ($views)("shared").await;
                $crate::conformance::shared_holds_share(a, b).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn release_wakes_a_waiter() {
                let (_keep, a, b) = ($views)("wake").await;
                $crate::conformance::release_wakes_a_waiter(a, b).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancel_at_random_moments_leaks_nothing() {
                if let Some(why) = ($cancel_unsafe)() {
                    eprintln!("cancellation storm skipped: {why}");
                    return;
                }
                let (_keep, a, b) = ($views)("cancel").await;
                $crate::conformance::cancel_at_random_moments_leaks_nothing(a, b).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancelled_release_still_releases() {
                let (_keep, a, b) = ($views)("cancelled-release").await;
                $crate::conformance::cancelled_release_still_releases(a, b).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dropped_guard_releases() {
                let (_keep, a, b) = ($views)("dropped").await;
                $crate::conformance::dropped_guard_releases(a, b).await;
            }
        }
    };
}
