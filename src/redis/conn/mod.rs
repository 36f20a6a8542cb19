//! The wire: TLS setup, the mapping of Redis errors to [`LockError`]s, the
//! connection shapes every request is sent on (one server's pooled
//! multiplexed connections, a Cluster's routed connection), Sentinel
//! discovery of the primary those connections go to, and the one
//! pub/sub connection that carries release wake-ups. Knows nothing of locks.
//!
//! [`LockError`]: crate::LockError

pub(super) mod cluster;
pub(super) mod errors;
pub(super) mod link;
pub(super) mod pool;
pub(super) mod sentinel;
pub(super) mod ticks;
pub(super) mod tls;
pub(super) mod wakeups;
