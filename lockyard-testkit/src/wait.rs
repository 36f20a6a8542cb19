//! Bounded waits: every wait in a test ends, and a hang fails fast with a
//! message instead of stalling CI.
//!
//! [`bounded`] is the one bound ([`LIMIT`]); [`bounded_for`] takes another
//! for the few waits that need one (a Cluster forming, a failover), so no
//! bound is loosened by accident. [`eventually`] polls a condition until it
//! holds, within [`LIMIT`]; [`eventually_blocking`] is its twin for plain
//! threads.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long [`bounded`] and [`eventually`] wait before they fail the test.
///
/// Every wait a test bounds finishes in well under a second on a quiet
/// machine; 20 s leaves room for a loaded 2-core CI machine.
pub const LIMIT: Duration = Duration::from_secs(20);

/// How often [`eventually`] and [`eventually_blocking`] look again.
const POLL: Duration = Duration::from_millis(5);

/// Awaits `f`, failing the test if it takes longer than [`LIMIT`]; the
/// failure names the line that called it.
///
/// # Panics
///
/// If `f` is not done within [`LIMIT`].
#[track_caller]
pub fn bounded<F: Future>(f: F) -> impl Future<Output = F::Output> {
    bounded_for(LIMIT, f)
}

/// Awaits `f`, failing the test if it takes longer than `limit` (for a wait
/// that needs another bound than [`LIMIT`]; say why where it is used).
///
/// # Panics
///
/// If `f` is not done within `limit`.
#[track_caller]
pub fn bounded_for<F: Future>(limit: Duration, f: F) -> impl Future<Output = F::Output> {
    let caller = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(limit, f).await {
            Ok(out) => out,
            Err(_) => panic!("bounded wait at {caller}: not done within {limit:?}"),
        }
    }
}

/// Polls `cond` every 5 ms until it holds, within [`LIMIT`].
///
/// # Panics
///
/// If `cond` still does not hold after [`LIMIT`]; the message names `what`.
pub async fn eventually<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, LIMIT, cond).await;
}

/// [`eventually`] with another bound than [`LIMIT`] (one shorter than the
/// behaviour under test allows, say).
///
/// # Panics
///
/// If `cond` still does not hold after `within`; the message names `what`.
pub async fn eventually_within<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{what}: still not so after {within:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `cond` every 5 ms until it holds or `limit` passes; returns
/// whether it held (for plain threads and synchronous tests).
pub fn eventually_blocking(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(POLL);
    }
    cond()
}
