//! The Lua scripts of the exclusive lock, each built once.
//!
//! [`redis::Script`] hashes its body once; `invoke_async` sends `EVALSHA` and
//! falls back to `SCRIPT LOAD` + `EVALSHA` on `NOSCRIPT` (after a server
//! restart or `SCRIPT FLUSH`). Pipelines do not get that fallback, so the
//! watchdog reloads by itself when a pipelined `EVALSHA` answers `NOSCRIPT`.

use std::sync::LazyLock;

use redis::Script;

/// `SET key value NX PX ttl` + `INCR fence`; see `scripts/acquire.lua`.
pub(crate) static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/acquire.lua")));

/// Compare-and-delete + `PUBLISH`; see `scripts/release.lua`.
pub(crate) static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release.lua")));

/// Compare-and-`PEXPIRE`; see `scripts/extend.lua`. Also the watchdog's
/// renewal script for exclusive locks.
pub(crate) static EXTEND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/extend.lua")));

/// Every script of this module, for loading at connect time.
pub(crate) fn all() -> [&'static Script; 3] {
    [&ACQUIRE, &RELEASE, &EXTEND]
}
