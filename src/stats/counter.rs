//! A monotonic counter that is also exported: what per-client counters
//! without a lock name (the Redis watchdog's renewals) use, with the
//! `AtomicU64` methods their call sites already use.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Backend;

/// An `AtomicU64` counter that, with the `metrics` feature, also increments
/// the metric `name` labelled with its backend.
#[derive(Debug)]
pub(crate) struct Counter {
    value: AtomicU64,
    #[cfg(feature = "metrics")]
    key: metrics::Key,
}

impl Counter {
    pub(crate) fn new(_name: &'static str, _backend: Backend) -> Self {
        Self {
            value: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            key: metrics::Key::from_parts(
                _name,
                vec![metrics::Label::new("backend", _backend.as_str())],
            ),
        }
    }

    pub(crate) fn fetch_add(&self, n: u64, order: Ordering) -> u64 {
        #[cfg(feature = "metrics")]
        super::export::increment(&self.key, n);
        self.value.fetch_add(n, order)
    }

    pub(crate) fn load(&self, order: Ordering) -> u64 {
        self.value.load(order)
    }
}
