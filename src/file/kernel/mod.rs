//! The thread side of file locks: a name's kernel lock shared by this
//! process's holders, the one waiter thread per contended name that blocks
//! in `flock` for the tasks waiting, the threads it runs on, and how it is
//! interrupted.
//!
//! # Layering (bottom first)
//!
//! `interrupt.rs` (a blocked `flock` interrupted), `threads.rs` (the kernel
//! threads, kept alive between waits), `wait.rs` (one kernel wait),
//! `held.rs` ([`KernelLock`]), `handoff.rs` (one value to a waiting task),
//! `side.rs` (a name's kernel state machine),
//! `waiter.rs` (the waiter thread's body), `take.rs` (the entry points).
//! Below all of them: the disk side and the process identity.

mod handoff;
mod held;
mod interrupt;
mod side;
mod take;
mod threads;
mod wait;
mod waiter;

pub(crate) use held::KernelLock;
pub(crate) use side::KernelSide;
pub(crate) use take::{Start, TryOutcome};
