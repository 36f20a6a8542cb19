//! The disk side of file locks: the lock directory, one lock file (opening,
//! locking, the owner record), how names map to files, the descriptors kept
//! open between acquisitions, the kernel's table of locks, and scans over
//! the directory.
//!
//! # Layering (bottom first)
//!
//! `name.rs`, `proc_locks.rs`, `dir.rs`, `lockfile.rs`, `idle.rs`,
//! `scan.rs`. Below them: the options and the process identity; nothing
//! here knows about threads or the in-process queue.

pub(crate) mod dir;
pub(crate) mod idle;
pub(crate) mod lockfile;
pub(crate) mod name;
pub(crate) mod proc_locks;
pub(crate) mod scan;
