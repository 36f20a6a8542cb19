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

// ---- file locks (issue 2) ----

// ---- redis (issue 4) ----

// ---- end of modules ----
