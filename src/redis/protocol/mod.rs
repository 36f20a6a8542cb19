//! What lockyard says to Redis: the keys of a resource name, the owner
//! token and value, and the Lua scripts (`scripts/`, each with a header
//! saying what it does and why).

pub(super) mod keys;
pub(super) mod scripts;
pub(super) mod token;

use std::sync::Arc;
use std::time::Duration;

/// A script's `ARGV`, shared: the owner value is written once per
/// acquisition and every call of it (the attempt, the undo, the renewal,
/// the release) points at it, so a clone of a call is two counter
/// increments, not a copy of each string.
pub(crate) type Args = Arc<[Arc<str>]>;

/// A TTL as the whole milliseconds scripts take (validated ≤ `u32::MAX`).
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A TTL as the scripts' argument: its milliseconds, as text.
pub(crate) fn ms(d: Duration) -> String {
    ttl_ms(d).to_string()
}

/// How long a waiting writer's intent lives without a refresh: the lock TTL,
/// so a crashed waiting writer blocks readers no longer than a crashed
/// holder would.
pub(crate) fn intent_ttl(ttl: Duration) -> Duration {
    ttl.max(Duration::from_millis(3))
}

/// The acquire scripts' lease arguments for a lease of the client's TTL,
/// built once per client (the client keeps them) rather than formatted on
/// every call: a handle is made per call by `RedisLocks::acquire(name)`.
#[derive(Debug, Clone)]
pub(crate) struct LeaseArgs {
    /// The lease they are for.
    pub(crate) ttl: Duration,
    /// The server's TTL for it in ms (the lease and the lock-delay).
    pub(crate) server_ms: Arc<str>,
    /// A waiting writer's intent TTL for it in ms (`exclusive_acquire.lua`'s
    /// `ARGV[3]`).
    pub(crate) intent_ms: Arc<str>,
    /// The same, negative: an intent of ours may be set.
    pub(crate) intent_set_ms: Arc<str>,
    /// `0`: a non-blocking attempt sets no intent.
    pub(crate) zero: Arc<str>,
}

impl LeaseArgs {
    /// The arguments for a lease of `ttl`, which the server keeps for
    /// `server_ttl` (the lease and the lock-delay).
    pub(crate) fn new(ttl: Duration, server_ttl: Duration) -> Self {
        Self {
            ttl,
            server_ms: ms(server_ttl).into(),
            intent_ms: ms(intent_ttl(ttl)).into(),
            intent_set_ms: format!("-{}", ms(intent_ttl(ttl))).into(),
            zero: "0".into(),
        }
    }
}
