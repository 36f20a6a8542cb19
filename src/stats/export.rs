//! The `metrics` export: every event of the registry goes to the
//! [`metrics`] facade as it happens, under the names in [`metric`].
//!
//! Metric keys are built once per registry entry (no allocation per event);
//! each event asks the installed recorder for its handle, so a recorder
//! installed after a lock was first used still gets that lock's later
//! events. Events before a recorder is installed are not exported (as with
//! any `metrics` user); the registry's own counters have them.

use std::time::Duration;

use metrics::{Key, Label, Level, Metadata, Unit};

use super::{Backend, Metric};

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The names of the exported metrics.
///
/// Every metric has a `backend` label; the per-lock ones also a `lock`
/// label (the lock name, or [`OTHER`](super::OTHER) past the name limit).
pub mod metric {
    /// Counter: successful acquisitions.
    pub const ACQUISITIONS: &str = "lockyard_acquisitions_total";
    /// Counter: acquisitions that found the lock held.
    pub const CONTENDED: &str = "lockyard_contended_total";
    /// Counter: `try_` acquisitions refused because the lock was held.
    pub const BUSY: &str = "lockyard_busy_total";
    /// Counter: waits that gave up at their deadline.
    pub const TIMEOUTS: &str = "lockyard_timeouts_total";
    /// Counter: acquisitions that failed otherwise.
    pub const ERRORS: &str = "lockyard_errors_total";
    /// Counter: guards whose lock was lost while held.
    pub const LOST: &str = "lockyard_lost_total";
    /// Gauge: guards alive now.
    pub const HELD: &str = "lockyard_held";
    /// Gauge: callers waiting now.
    pub const WAITING: &str = "lockyard_waiting";
    /// Histogram (seconds): how long successful acquisitions waited.
    pub const WAIT_SECONDS: &str = "lockyard_wait_seconds";
    /// Histogram (seconds): how long guards were held.
    pub const HOLD_SECONDS: &str = "lockyard_hold_seconds";
    /// Counter (`backend="redis"` only): lease renewals the watchdogs sent.
    pub const REDIS_RENEWALS: &str = "lockyard_redis_renewals_total";
    /// Counter (`backend="redis"` only): pipelined renewal round trips.
    pub const REDIS_RENEWAL_ROUND_TRIPS: &str = "lockyard_redis_renewal_round_trips_total";
    /// Counter (`backend="redis"` only): leases the watchdogs declared lost.
    pub const REDIS_LEASES_LOST: &str = "lockyard_redis_leases_lost_total";
}

/// Describes every lockyard metric (unit and help text) to the installed
/// recorder. Optional: call it once after installing the recorder so that
/// exporters which print descriptions (Prometheus `# HELP`) have them.
///
/// ```
/// lockyard::stats::describe_metrics();
/// ```
pub fn describe_metrics() {
    use metric::*;
    let counters = [
        (ACQUISITIONS, "Successful lock acquisitions."),
        (CONTENDED, "Acquisitions that found the lock held."),
        (
            BUSY,
            "Non-blocking acquisitions refused because the lock was held.",
        ),
        (TIMEOUTS, "Waits for a lock that gave up at their deadline."),
        (
            ERRORS,
            "Acquisitions that failed for a reason other than contention.",
        ),
        (LOST, "Guards whose lock was lost while held."),
        (
            REDIS_RENEWALS,
            "Redis lease renewals sent by the watchdogs.",
        ),
        (
            REDIS_RENEWAL_ROUND_TRIPS,
            "Pipelined Redis renewal round trips.",
        ),
        (
            REDIS_LEASES_LOST,
            "Redis leases the watchdogs declared lost.",
        ),
    ];
    for (name, help) in counters {
        metrics::describe_counter!(name, Unit::Count, help);
    }
    metrics::describe_gauge!(HELD, Unit::Count, "Lock guards alive now.");
    metrics::describe_gauge!(WAITING, Unit::Count, "Callers waiting for a lock now.");
    metrics::describe_histogram!(
        WAIT_SECONDS,
        Unit::Seconds,
        "How long successful acquisitions waited."
    );
    metrics::describe_histogram!(
        HOLD_SECONDS,
        Unit::Seconds,
        "How long lock guards were held."
    );
}

/// The keys of one registry entry, built once.
#[derive(Debug)]
pub(crate) struct Keys {
    acquisitions: Key,
    contended: Key,
    busy: Key,
    timeouts: Key,
    errors: Key,
    lost: Key,
    held: Key,
    waiting: Key,
    wait: Key,
    hold: Key,
}

impl Keys {
    pub(crate) fn new(backend: Backend, name: &str) -> Self {
        let labels = vec![
            Label::new("backend", backend.as_str()),
            Label::new("lock", name.to_owned()),
        ];
        let key = |n: &'static str| Key::from_parts(n, labels.clone());
        Self {
            acquisitions: key(metric::ACQUISITIONS),
            contended: key(metric::CONTENDED),
            busy: key(metric::BUSY),
            timeouts: key(metric::TIMEOUTS),
            errors: key(metric::ERRORS),
            lost: key(metric::LOST),
            held: key(metric::HELD),
            waiting: key(metric::WAITING),
            wait: key(metric::WAIT_SECONDS),
            hold: key(metric::HOLD_SECONDS),
        }
    }

    pub(crate) fn increment(&self, m: Metric) {
        let key = match m {
            Metric::Acquisitions => &self.acquisitions,
            Metric::Contended => &self.contended,
            Metric::Busy => &self.busy,
            Metric::Timeouts => &self.timeouts,
            Metric::Errors => &self.errors,
            Metric::Lost => &self.lost,
        };
        increment(key, 1);
    }

    pub(crate) fn gauge(&self, held: bool, up: bool) {
        let key = if held { &self.held } else { &self.waiting };
        metrics::with_recorder(|r| {
            let g = r.register_gauge(key, &METADATA);
            if up {
                g.increment(1.0);
            } else {
                g.decrement(1.0);
            }
        });
    }

    pub(crate) fn wait(&self, d: Duration) {
        record(&self.wait, d);
    }

    pub(crate) fn hold(&self, d: Duration) {
        record(&self.hold, d);
    }
}

pub(crate) fn increment(key: &Key, n: u64) {
    metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(n));
}

fn record(key: &Key, d: Duration) {
    metrics::with_recorder(|r| r.register_histogram(key, &METADATA).record(d.as_secs_f64()));
}
