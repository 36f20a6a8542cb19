//! The kinds of resource, thin over `acquire/`: the exclusive and shared
//! lock, the RW lock (the same keys), the semaphore, and the listing that
//! `status` reads.

pub(super) mod guard;
pub(super) mod listing;
pub(super) mod lock;
pub(super) mod resource;
pub(super) mod rwlock;
pub(super) mod semaphore;
