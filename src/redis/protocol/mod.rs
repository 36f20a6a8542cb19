//! What lockyard says to Redis: the keys of a resource name, the owner
//! token and value, and the Lua scripts (`scripts/`, each with a header
//! saying what it does and why).

pub(super) mod keys;
pub(super) mod scripts;
pub(super) mod token;

use std::sync::Arc;

/// A script's `ARGV`, shared: the owner value is written once per
/// acquisition and every call of it (the attempt, the undo, the renewal,
/// the release) points at it, so a clone of a call is two counter
/// increments, not a copy of each string.
pub(crate) type Args = Arc<[Arc<str>]>;
