//! lockyard: async-first locks for tokio.
//!
//! (The crate tour is written once the backends land.)
#![warn(
    missing_debug_implementations,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
#![deny(unused_must_use, unsafe_op_in_unsafe_fn)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod guard;
mod lock;
mod options;
mod owner;

pub use error::{BoxError, LockError};
pub use guard::{LockGuard, Lost, RawGuard};
pub use lock::Lock;
pub use options::{AcquireOptions, Mode};
pub use owner::{Liveness, Owner, OwnerParseError, host_name};

// ---- in-process primitives (issue 3) ----
pub mod local;
mod loom;
pub use local::{NamedRwLock, NamedSemaphore, RwLock, Semaphore};

// ---- file locks (issue 2) ----
pub mod file;
pub use file::{FileLock, FileLockGuard, FileLockInfo, FileLockManager, FileLockOptions};

#[doc(hidden)]
pub mod __fuzz {
    //! Not public API: the functions the fuzz targets (and the corpus tests
    //! that replay their seeds) call. Each panics on a broken property.

    /// Checks the name → file name mapping for the UTF-8 (lossy) of `data`.
    pub fn name_mapping(data: &[u8]) {
        crate::file::fuzz::check_mapping(&String::from_utf8_lossy(data));
    }

    /// Parses `data` as owner metadata; whatever parses must round-trip.
    pub fn owner_parse(data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        if let Ok(owner) = crate::Owner::parse(&text) {
            let again = crate::Owner::parse(&owner.to_text());
            assert_eq!(again.as_ref(), Ok(&owner), "round trip changed {text:?}");
        }
    }
}

// ---- redis (issue 4) ----
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub use crate::redis::{
    RedisLock, RedisLockGuard, RedisLockInfo, RedisLocks, RedisOptions, RedisStats,
};
#[cfg(feature = "redis")]
pub use crate::redis::{
    RedisPermitGuard, RedisReadGuard, RedisRwLock, RedisSemaphore, RedisWriteGuard, Redlock,
    RedlockGuard, RedlockLock, RedlockOptions,
};

// ---- manager ----
mod manager;
pub use manager::{AsyncLockManager, LockSet, LockStat, LockStats};

// ---- end of modules ----
