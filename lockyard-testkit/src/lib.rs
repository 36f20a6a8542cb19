//! What lockyard's tests, benches, examples and the CLI's tests share.
//!
//! - [`redis`], [`cluster`], [`sentinel`]: private `redis-server`s, Redis
//!   Clusters and Sentinel-managed primaries with replicas on free loopback
//!   ports (never the machine's own 6379), killed on drop;
//! - [`postgres`]: private Postgres servers (`initdb`, `pg_ctl`) on free
//!   loopback ports (never 5432), run as the `postgres` user under root;
//! - [`pgbouncer`]: a private PgBouncer in front of one, in a pool mode;
//! - [`proxy`]: the loopback fault proxy (hold a request, hold replies,
//!   delay, drop one direction, cut);
//! - [`child`]: one child-process harness (this test binary re-executed in
//!   a role, lines over pipes, `CLOCK_MONOTONIC` timestamps);
//! - [`fork`]: forked children (the C library's `fork`, so atfork
//!   handlers run), for what crosses `fork()`;
//! - [`counter`]: a counter in plain files that workers in several
//!   processes increment under a lock, logging fencing tokens;
//! - [`wait`]: [`bounded`] with one documented limit, [`bounded_for`] for
//!   the waits that need another, and [`eventually`];
//! - [`conformance`]: the guard contract every backend passes, run with
//!   [`conformance_tests!`] and a factory of `Arc<dyn Lock>` views;
//! - [`floor`]: the hand-written Redis locks the benches measure against
//!   (plain, fenced, lockyard's own protocol) and the raw hand-off;
//! - [`bench`]: what interleaved bench rounds share (quartiles, the load,
//!   CPU pinning);
//! - [`tls`]: a CA and certificates (valid, expired, client, another CA)
//!   for TLS-only servers ([`redis::RedisServer::start_tls`]) and Clusters
//!   ([`cluster::RedisCluster::start_tls`]).
//!
//! `publish = false`: lockyard dev-depends on it by path. The library's
//! own unit tests (in `src/`) cannot use it: they would see a second copy
//! of the `lockyard` crate.

pub mod bench;
pub mod child;
pub mod cluster;
pub mod conformance;
pub mod counter;
pub mod floor;
pub mod fork;
pub mod pgbouncer;
pub mod postgres;
pub mod proxy;
pub mod redis;
pub mod sentinel;
pub mod tls;
pub mod wait;

pub use wait::{LIMIT, bounded, bounded_for, eventually, eventually_blocking, eventually_within};

/// A fresh scratch directory's path for one start of a private `kind`
/// server on `port`, in the temporary directory: unique within the
/// process, not only by port. Two threads can be handed the same free
/// port (it is free until one of them binds it); with the port alone in
/// the name, the second start's clean-up of "its" directory, or the drop
/// of the start that lost the port, would delete the first server's data
/// under it.
pub(crate) fn scratch_dir(kind: &str, port: u16) -> std::path::PathBuf {
    static STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "lockyard-test-{kind}-{}-{n}-{port}",
        std::process::id()
    ))
}
