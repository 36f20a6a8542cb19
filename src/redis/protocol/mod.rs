//! What lockyard says to Redis: the keys of a resource name, the owner
//! token and value, and the Lua scripts (`scripts/`, each with a header
//! saying what it does and why).

pub(super) mod keys;
pub(super) mod scripts;
pub(super) mod token;
