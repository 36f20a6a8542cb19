//! Taking a resource: the acquisition loop (in-process queue, one script
//! call, the wait for a release) and the hold it produces (a lease renewed
//! by the watchdog, released once).

pub(super) mod held;
pub(super) mod waiting;
