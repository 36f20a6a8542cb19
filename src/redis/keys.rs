//! Resource names and the Redis keys derived from them.
//!
//! Every key of one resource carries the resource name as its `{hash tag}`,
//! `{prefix}{<name>}:<suffix>`, so all of them live in one Redis Cluster slot
//! and a script may touch several. Names therefore must not contain `{` or
//! `}` (which would move the hash tag).

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

/// The keys of one exclusive lock.
#[derive(Debug, Clone)]
pub(crate) struct LockKeys {
    /// The lock itself: a string holding the owner value, with a TTL.
    pub(crate) lock: String,
    /// The fencing counter (never expires).
    pub(crate) fence: String,
    /// The channel a release is published on.
    pub(crate) channel: String,
}

impl LockKeys {
    pub(crate) fn new(prefix: &str, name: &str) -> Self {
        Self {
            lock: key(prefix, name, "lock"),
            fence: key(prefix, name, "fence"),
            channel: key(prefix, name, "released"),
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
