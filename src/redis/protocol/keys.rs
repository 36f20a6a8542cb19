//! Resource names and the Redis keys derived from them.
//!
//! Every key of one resource carries the resource name as its `{hash tag}`,
//! `{prefix}{<name>}:<suffix>`, so all of them live in one Redis Cluster slot
//! and a script may touch several. Names therefore must not contain `{` or
//! `}` (which would move the hash tag).

use std::sync::Arc;

use crate::error::LockError;

/// Longest accepted resource name, in bytes.
pub(crate) const MAX_NAME: usize = 512;

/// Checks a resource name: 1 to [`MAX_NAME`] bytes, no `{`, `}` or control
/// characters.
pub(crate) fn validate_name(name: &str) -> Result<(), LockError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_NAME {
        "must be at most 512 bytes"
    } else if name.contains(['{', '}']) {
        "must not contain `{` or `}` (the name is the Redis hash tag)"
    } else if name.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(LockError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// `{prefix}{<name>}:<suffix>`; the caller has validated `name`.
pub(crate) fn key(prefix: &str, name: &str, suffix: &str) -> String {
    let mut k = String::with_capacity(prefix.len() + name.len() + suffix.len() + 3);
    k.push_str(prefix);
    k.push('{');
    k.push_str(name);
    k.push_str("}:");
    k.push_str(suffix);
    k
}

/// Splits a key written by [`key`] back into `(name, suffix)`.
pub(crate) fn parse_key<'a>(prefix: &str, key: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('{')?;
    let (name, suffix) = rest.split_once("}:")?;
    validate_name(name).ok()?;
    Some((name, suffix))
}

/// A `SCAN MATCH` pattern for every key under `prefix` (glob characters in
/// the prefix escaped).
pub(crate) fn scan_pattern(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 4);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push_str("{*");
    p
}

/// Every key of one resource name. One name is one lock: its exclusive
/// holder (the plain lock, and the RW lock's writer), its shared holders (the
/// RW lock's readers) and a waiting writer's intent live here, and so does a
/// semaphore of the same name, so that the scripts can refuse a name in use
/// as the other kind.
///
/// | key                       | holds                                     |
/// |---------------------------|-------------------------------------------|
/// | `{prefix}{<name>}:lock`    | the exclusive holder's owner value, or a  |
/// |                           | mark of shared holders or of a semaphore  |
/// |                           | ([`READERS_MARK`], [`SEMAPHORE_MARK`]), `PX`|
/// | `{prefix}{<name>}:readers` | ZSET: shared holders, scored by expiry ms |
/// | `{prefix}{<name>}:intent`  | the first waiting writer's value, `PX`    |
/// | `{prefix}{<name>}:sem`     | ZSET: semaphore holders, scored by expiry |
/// | `{prefix}{<name>}:permits` | the semaphore's permit count (as `:sem`)  |
/// | `{prefix}{<name>}:fence`   | the fencing counter (never expires)       |
/// | `{prefix}{<name>}:released`| the channel every release publishes on    |
///
/// The `KEYS` of each script call on the resource are built once with the
/// keys (`KeySets`), so that an acquisition clones a pointer, not strings.
#[derive(Debug, Clone)]
pub(crate) struct ResourceKeys {
    pub(crate) lock: String,
    pub(crate) readers: String,
    pub(crate) sem: String,
    pub(crate) fence: String,
    /// Shared as an argument of every release call (see [`Args`](super::Args)).
    pub(crate) channel: Arc<str>,
    /// The `KEYS` of every script call on this resource (the intent and
    /// permit-count keys appear only there).
    pub(crate) sets: KeySets,
}

/// The `KEYS` argument of each script call on one resource, in the order
/// its `.lua` file documents.
#[derive(Debug, Clone)]
pub(crate) struct KeySets {
    /// `exclusive_acquire.lua`: lock, readers, intent, fence.
    pub(crate) exclusive_acquire: Arc<[String]>,
    /// `release.lua` for an exclusive hold: lock.
    pub(crate) exclusive_release: Arc<[String]>,
    /// `release.lua` for a waiting writer's intent: intent.
    pub(crate) intent_release: Arc<[String]>,
    /// `extend.lua` (the exclusive renewal): lock.
    pub(crate) exclusive_renew: Arc<[String]>,
    /// `rwlock_read.lua`: readers, lock, intent, fence.
    pub(crate) shared_acquire: Arc<[String]>,
    /// `rwlock_read_release.lua`: readers, lock (the readers' mark).
    pub(crate) shared_release: Arc<[String]>,
    /// `semaphore_renew.lua` for a reader: readers, lock (the mark).
    pub(crate) shared_renew: Arc<[String]>,
    /// `semaphore_acquire.lua`: sem, fence, permits, lock.
    pub(crate) sem_acquire: Arc<[String]>,
    /// `semaphore_release.lua`: sem, permits, lock (the semaphore's mark).
    pub(crate) sem_release: Arc<[String]>,
    /// `semaphore_renew.lua` for a permit: sem, lock (the mark), permits.
    pub(crate) sem_renew: Arc<[String]>,
}

/// The lock key's value while readers hold the name (with a `PX` at least
/// as long as every read hold), so that a writer's `SET NX` alone says
/// whether the name is free. No owner value can equal it (an owner value
/// starts with a hex token and a newline).
pub(crate) const READERS_MARK: &str = "lockyard:readers";
/// The lock key's value while a semaphore of the name has holders (as
/// [`READERS_MARK`]).
pub(crate) const SEMAPHORE_MARK: &str = "lockyard:semaphore";

/// Whether a lock key's value is a mark of shared holders or a semaphore,
/// not an exclusive holder's value.
pub(crate) fn is_mark(value: &[u8]) -> bool {
    value == READERS_MARK.as_bytes() || value == SEMAPHORE_MARK.as_bytes()
}

/// The suffix of the lock key.
pub(crate) const LOCK: &str = "lock";
/// The suffix of the readers ZSET.
pub(crate) const READERS: &str = "readers";
/// The suffix of the semaphore ZSET.
pub(crate) const SEM: &str = "sem";
/// The suffix of the fencing counter.
pub(crate) const FENCE: &str = "fence";

impl ResourceKeys {
    /// The keys of `name` (validated by the caller) under `prefix`.
    pub(crate) fn new(prefix: &str, name: &str) -> Self {
        let [lock, readers, intent, sem, permits, fence, channel] =
            [LOCK, READERS, "intent", SEM, "permits", FENCE, "released"]
                .map(|suffix| key(prefix, name, suffix));
        let set =
            |keys: &[&String]| -> Arc<[String]> { keys.iter().map(|k| (*k).clone()).collect() };
        let sets = KeySets {
            exclusive_acquire: set(&[&lock, &readers, &intent, &fence]),
            exclusive_release: set(&[&lock]),
            intent_release: set(&[&intent]),
            exclusive_renew: set(&[&lock]),
            shared_acquire: set(&[&readers, &lock, &intent, &fence]),
            shared_release: set(&[&readers, &lock]),
            shared_renew: set(&[&readers, &lock]),
            sem_acquire: set(&[&sem, &fence, &permits, &lock]),
            sem_release: set(&[&sem, &permits, &lock]),
            sem_renew: set(&[&sem, &lock, &permits]),
        };
        Self {
            lock,
            readers,
            sem,
            fence,
            channel: channel.into(),
            sets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        validate_name("db/migrations 1").unwrap();
        for bad in ["", "a{b", "a}b", "a\nb", &"x".repeat(513)] {
            assert!(validate_name(bad).unwrap_err().is_invalid_input());
        }
    }

    #[test]
    fn keys_round_trip() {
        let k = key("lockyard:", "jobs:nightly", "lock");
        assert_eq!(k, "lockyard:{jobs:nightly}:lock");
        assert_eq!(parse_key("lockyard:", &k), Some(("jobs:nightly", "lock")));
        assert_eq!(parse_key("other:", &k), None);
        assert_eq!(scan_pattern("a*b:"), "a\\*b:{*");
    }
}
