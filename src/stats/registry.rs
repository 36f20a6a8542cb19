//! The process-wide registry: one entry per (backend, lock name), created on
//! first use and never removed (so counters only grow), with a cap on how
//! many names each backend gets before the rest share one overflow entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

use super::histogram::AtomicHistogram;
use super::{Backend, LockStat, Metric, OTHER};
use crate::error::LockError;

/// Default for [`super::set_name_limit`].
pub(crate) const DEFAULT_NAME_LIMIT: usize = 256;

static NAME_LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_NAME_LIMIT);

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    fork::guard_across_fork();
    Registry::default()
});

/// The registry's lock across `fork()`: a thread of the parent that held it
/// when another thread forked would hold it in the child for ever, and the
/// child's first new lock name would hang. So the forking thread takes the
/// write lock just before `fork` (a `pthread_atfork` prepare handler: other
/// threads hold it only for short, non-blocking map operations) and gives
/// it back in the parent and in the child.
mod fork {
    #[cfg(unix)]
    use std::cell::RefCell;
    #[cfg(unix)]
    use std::collections::HashMap;
    #[cfg(unix)]
    use std::sync::RwLockWriteGuard;

    #[cfg(unix)]
    use super::{Backend, Names, REGISTRY};

    #[cfg(unix)]
    thread_local! {
        static HELD: RefCell<Option<RwLockWriteGuard<'static, HashMap<Backend, Names>>>> =
            const { RefCell::new(None) };
    }

    #[cfg(unix)]
    extern "C" fn prepare() {
        let guard = REGISTRY.backends.write().unwrap_or_else(|e| e.into_inner());
        HELD.with(|h| *h.borrow_mut() = Some(guard));
    }

    #[cfg(unix)]
    extern "C" fn release() {
        HELD.with(|h| h.borrow_mut().take());
    }

    /// Registers the handlers (once: called from the registry's
    /// initializer, before anyone can hold its lock).
    pub(super) fn guard_across_fork() {
        #[cfg(unix)]
        // SAFETY: the handlers only take and drop the registry's lock on
        // the forking thread (a fork racing the registry's initialization
        // waits in `prepare` for it to finish).
        unsafe {
            libc::pthread_atfork(Some(prepare), Some(release), Some(release));
        }
    }
}

pub(crate) fn set_name_limit(limit: usize) {
    NAME_LIMIT.store(limit, Ordering::Relaxed);
}

/// The entry `name` of `backend` records into (the overflow entry once the
/// backend has [`super::set_name_limit`] names).
pub(crate) fn site(backend: Backend, name: &str) -> Site {
    REGISTRY.site(backend, name)
}

/// The entry `name` of `backend` records into, if it has recorded anything.
pub(crate) fn lookup(backend: Backend, name: &str) -> Option<Site> {
    REGISTRY.lookup(backend, name)
}

/// Every entry, in no particular order.
pub(crate) fn all() -> Vec<Site> {
    REGISTRY
        .read()
        .values()
        .flat_map(|names| names.map.values().cloned())
        .collect()
}

#[derive(Default)]
struct Registry {
    backends: RwLock<HashMap<Backend, Names>>,
}

/// One backend's entries.
#[derive(Default)]
struct Names {
    map: HashMap<Box<str>, Site>,
    /// Entries other than the overflow entry.
    named: usize,
}

impl Registry {
    // The map is only held for operations that cannot panic, so poisoning
    // cannot leave it inconsistent: recover the guard.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Backend, Names>> {
        self.backends.read().unwrap_or_else(|e| e.into_inner())
    }

    fn lookup(&self, backend: Backend, name: &str) -> Option<Site> {
        self.read().get(&backend)?.map.get(name).cloned()
    }

    fn site(&self, backend: Backend, name: &str) -> Site {
        if let Some(site) = self.lookup(backend, name) {
            return site;
        }
        let mut map = self.backends.write().unwrap_or_else(|e| e.into_inner());
        let names = map.entry(backend).or_default();
        if let Some(site) = names.map.get(name) {
            return site.clone();
        }
        let label = if names.named < NAME_LIMIT.load(Ordering::Relaxed) && name != OTHER {
            names.named += 1;
            name
        } else {
            tracing::debug!(
                backend = backend.as_str(),
                lock = name,
                "stats name limit reached; counted as {OTHER}"
            );
            OTHER
        };
        names
            .map
            .entry(Box::from(label))
            .or_insert_with(|| Site(Arc::new(Entry::new(backend, label))))
            .clone()
    }
}

/// One (backend, name)'s live counters.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) backend: Backend,
    pub(crate) name: Arc<str>,
    acquisitions: AtomicU64,
    contended: AtomicU64,
    busy: AtomicU64,
    timeouts: AtomicU64,
    errors: AtomicU64,
    lost: AtomicU64,
    held: AtomicU64,
    waiting: AtomicU64,
    wait: AtomicHistogram,
    hold: AtomicHistogram,
    #[cfg(feature = "metrics")]
    keys: super::export::Keys,
}

impl Entry {
    fn new(backend: Backend, name: &str) -> Self {
        Self {
            backend,
            name: Arc::from(name),
            acquisitions: AtomicU64::new(0),
            contended: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            held: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            wait: AtomicHistogram::default(),
            hold: AtomicHistogram::default(),
            #[cfg(feature = "metrics")]
            keys: super::export::Keys::new(backend, name),
        }
    }
}

/// A handle to one registry entry; cheap to clone. Backends keep one per
/// lock handle (or look it up per acquisition by name).
#[derive(Debug, Clone)]
pub(crate) struct Site(Arc<Entry>);

impl Site {
    /// Whether this is a backend's overflow entry ([`OTHER`]), where names
    /// past the name limit are counted.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn is_overflow(&self) -> bool {
        &*self.0.name == OTHER
    }

    /// Starts counting one acquisition.
    pub(crate) fn begin(&self) -> Acquisition {
        Acquisition {
            site: self.clone(),
            started: Instant::now(),
            contended: AtomicBool::new(false),
            done: false,
        }
    }

    /// Counts a timeout decided outside the backend (the manager cutting off
    /// a backend that overran its deadline).
    pub(crate) fn timed_out(&self) {
        let e = &self.0;
        add(e, &e.contended, Metric::Contended);
        add(e, &e.timeouts, Metric::Timeouts);
    }

    pub(crate) fn entry(&self) -> &Entry {
        &self.0
    }

    pub(crate) fn snapshot(&self) -> LockStat {
        let e = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let wait = e.wait.snapshot();
        LockStat {
            acquisitions: load(&e.acquisitions),
            contended: load(&e.contended),
            busy: load(&e.busy),
            timeouts: load(&e.timeouts),
            errors: load(&e.errors),
            lost: load(&e.lost),
            held: load(&e.held),
            waiting: load(&e.waiting),
            wait_p50: wait.quantile(0.50),
            wait_p90: wait.quantile(0.90),
            wait_p99: wait.quantile(0.99),
            wait_max: wait.max(),
            wait,
            hold: e.hold.snapshot(),
        }
    }
}

fn add(e: &Entry, counter: &AtomicU64, _metric: Metric) {
    counter.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "metrics")]
    e.keys.increment(_metric);
    #[cfg(not(feature = "metrics"))]
    let _ = e;
}

fn gauge(e: &Entry, gauge: &AtomicU64, up: bool, _held: bool) {
    if up {
        gauge.fetch_add(1, Ordering::Relaxed);
    } else {
        gauge.fetch_sub(1, Ordering::Relaxed);
    }
    #[cfg(feature = "metrics")]
    e.keys.gauge(_held, up);
    #[cfg(not(feature = "metrics"))]
    let _ = e;
}

/// One acquisition being counted. Finish it with [`granted`](Self::granted)
/// or [`failed`](Self::failed); dropped unfinished (a cancelled acquisition)
/// it counts nothing but leaves the waiting gauge.
#[derive(Debug)]
pub(crate) struct Acquisition {
    site: Site,
    started: Instant,
    contended: AtomicBool,
    done: bool,
}

impl Acquisition {
    /// The lock was found held and the caller waits: raises the waiting
    /// gauge (once, however often it is called); `contended` is counted
    /// when the acquisition ends, so a cancelled one counts nothing.
    pub(crate) fn contended(&self) {
        if !self.contended.swap(true, Ordering::Relaxed) {
            let e = self.site.entry();
            gauge(e, &e.waiting, true, false);
        }
    }

    /// The acquisition succeeded: the returned [`Held`] lives in the guard.
    pub(crate) fn granted(mut self) -> Held {
        self.finish();
        let e = self.site.entry();
        if self.contended.load(Ordering::Relaxed) {
            add(e, &e.contended, Metric::Contended);
        }
        add(e, &e.acquisitions, Metric::Acquisitions);
        // One reading of the clock ends the wait and starts the hold.
        let now = Instant::now();
        let waited = now.saturating_duration_since(self.started);
        e.wait.record(waited);
        #[cfg(feature = "metrics")]
        e.keys.wait(waited);
        gauge(e, &e.held, true, true);
        Held {
            site: self.site.clone(),
            since: now,
            lost: false,
        }
    }

    /// The acquisition failed with `err`: a timeout, a refused try
    /// (`WouldBlock`; both also count as contended), or an error.
    pub(crate) fn failed(self, err: &LockError) {
        match err {
            LockError::Timeout { .. } => self.timed_out(),
            LockError::WouldBlock { .. } => self.busy(),
            _ => self.errored(),
        }
    }

    /// The wait gave up at its deadline.
    pub(crate) fn timed_out(mut self) {
        self.finish();
        let e = self.site.entry();
        add(e, &e.contended, Metric::Contended);
        add(e, &e.timeouts, Metric::Timeouts);
    }

    /// A `try_` found the lock held.
    pub(crate) fn busy(mut self) {
        self.finish();
        let e = self.site.entry();
        add(e, &e.contended, Metric::Contended);
        add(e, &e.busy, Metric::Busy);
    }

    /// The acquisition failed for a reason other than contention.
    pub(crate) fn errored(mut self) {
        self.finish();
        let e = self.site.entry();
        if self.contended.load(Ordering::Relaxed) {
            add(e, &e.contended, Metric::Contended);
        }
        add(e, &e.errors, Metric::Errors);
    }

    /// Records `result`, handing a success's [`Held`] to `attach`.
    pub(crate) fn record<T>(
        self,
        result: Result<T, LockError>,
        attach: impl FnOnce(&mut T, Held),
    ) -> Result<T, LockError> {
        match result {
            Ok(mut t) => {
                attach(&mut t, self.granted());
                Ok(t)
            }
            Err(err) => {
                self.failed(&err);
                Err(err)
            }
        }
    }

    fn finish(&mut self) {
        self.done = true;
        if self.contended.load(Ordering::Relaxed) {
            let e = self.site.entry();
            gauge(e, &e.waiting, false, false);
        }
    }
}

impl Drop for Acquisition {
    fn drop(&mut self) {
        if !self.done {
            self.finish();
        }
    }
}

/// A held lock, counted: dropping it (with the guard) records the hold time
/// and lowers the held gauge.
#[derive(Debug)]
pub(crate) struct Held {
    site: Site,
    since: Instant,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    lost: bool,
}

impl Held {
    /// The lock was lost while held (counted once).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn lost(&mut self) {
        if !std::mem::replace(&mut self.lost, true) {
            let e = self.site.entry();
            add(e, &e.lost, Metric::Lost);
        }
    }

    /// How long it has been held.
    pub(crate) fn held_for(&self) -> Duration {
        self.since.elapsed()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let e = self.site.entry();
        let held = self.held_for();
        e.hold.record(held);
        #[cfg(feature = "metrics")]
        e.keys.hold(held);
        gauge(e, &e.held, false, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_timeout() -> LockError {
        LockError::Timeout {
            resource: "x".into(),
            waited: Duration::ZERO,
            holder: None,
        }
    }

    #[test]
    fn an_attempt_counts_its_outcome_once() {
        let site = Registry::default().site(Backend::Custom, "registry-unit-outcome");
        let a = site.begin();
        a.contended();
        a.contended();
        assert_eq!(site.snapshot().waiting, 1);
        let held = a.granted();
        let s = site.snapshot();
        assert_eq!(
            (s.acquisitions, s.contended, s.held, s.waiting),
            (1, 1, 1, 0)
        );
        drop(held);
        let s = site.snapshot();
        assert_eq!((s.held, s.hold.count()), (0, 1));

        site.begin().failed(&err_timeout());
        let s = site.snapshot();
        assert_eq!((s.timeouts, s.contended), (1, 2));
        // A cancelled attempt counts nothing and leaves the waiting gauge.
        let a = site.begin();
        a.contended();
        drop(a);
        let s = site.snapshot();
        assert_eq!((s.waiting, s.acquisitions, s.timeouts), (0, 1, 1));
    }

    #[test]
    fn names_past_the_limit_share_one_overflow_entry() {
        let r = Registry::default();
        let limit = NAME_LIMIT.load(Ordering::Relaxed);
        for i in 0..limit {
            assert_eq!(
                &*r.site(Backend::Redlock, &format!("n{i}")).entry().name,
                format!("n{i}")
            );
        }
        let over = r.site(Backend::Redlock, "one-too-many");
        assert_eq!(&*over.entry().name, OTHER);
        // Names already known keep their entry; other backends have their own budget.
        assert_eq!(&*r.site(Backend::Redlock, "n0").entry().name, "n0");
        assert_eq!(&*r.site(Backend::File, "fresh").entry().name, "fresh");
    }
}
