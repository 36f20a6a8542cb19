//! Owner tokens and the owner values stored in Redis: a random token, a
//! newline, and this process's owner metadata (so waiters can say who holds
//! what). Every compare in the scripts is on the whole value.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::error::LockError;
use crate::options::Mode;
use crate::owner::Owner;

/// A fresh owner value for `resource` held in `mode`.
///
/// # Errors
///
/// [`LockError::Backend`] if the OS random source fails.
pub(crate) fn fresh_value(resource: &str, mode: Mode) -> Result<String, LockError> {
    Ok(owner_value(&new_token(resource)?, mode))
}

/// Parses the owner metadata stored after the token line; `None` for a value
/// lockyard did not write.
pub(crate) fn parse_holder(value: &[u8]) -> Option<Owner> {
    let text = std::str::from_utf8(value).ok()?;
    let (_token, meta) = text.split_once('\n')?;
    Owner::parse(meta).ok()
}

/// A random owner token: 128 bits from the OS CSPRNG, hex.
///
/// The bytes come from `getrandom`, fetched 32 tokens at a time into a
/// thread-local buffer (one system call per 32 tokens instead of one per
/// token). Each byte is used once. The buffer records the pid that filled
/// it and is refilled in a forked child, so parent and child never share
/// tokens.
pub(crate) fn new_token(name: &str) -> Result<String, LockError> {
    const TOKEN: usize = 16;
    const BATCH: usize = 32 * TOKEN;
    struct Pool {
        bytes: [u8; BATCH],
        used: usize,
        pid: u32,
    }
    thread_local! {
        static POOL: std::cell::RefCell<Pool> = const {
            std::cell::RefCell::new(Pool { bytes: [0; BATCH], used: BATCH, pid: 0 })
        };
    }
    let mut buf = [0u8; TOKEN];
    POOL.with_borrow_mut(|pool| {
        let pid = std::process::id();
        if pool.used + TOKEN > BATCH || pool.pid != pid {
            getrandom::fill(&mut pool.bytes)?;
            pool.used = 0;
            pool.pid = pid;
        }
        buf.copy_from_slice(&pool.bytes[pool.used..pool.used + TOKEN]);
        // Never hand out the same bytes twice.
        pool.bytes[pool.used..pool.used + TOKEN].fill(0);
        pool.used += TOKEN;
        Ok(())
    })
    .map_err(|e: getrandom::Error| LockError::Backend {
        resource: name.to_owned(),
        op: "generate an owner token",
        source: Box::new(std::io::Error::other(e.to_string())),
    })?;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * TOKEN);
    for b in buf {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    Ok(s)
}

/// The stored owner value: `token\n` + owner metadata (so waiters can say
/// who holds the lock), in [`Owner::to_text`]'s format.
pub(crate) fn owner_value(token: &str, mode: Mode) -> String {
    // The lines before `since=` (header, pid, start, host) never change in
    // a process: format them once.
    static PREFIX: OnceLock<String> = OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let text = Owner::current(mode).to_text();
        match text.find("\nsince=") {
            Some(i) => text[..=i].to_owned(),
            None => text,
        }
    });
    let since = humantime::format_rfc3339_nanos(SystemTime::now());
    let mut v = String::with_capacity(token.len() + prefix.len() + 80);
    v.push_str(token);
    v.push('\n');
    v.push_str(prefix);
    let _ = write!(v, "since={since}\nmode={mode}\n");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex() {
        let a = new_token("x").unwrap();
        let b = new_token("x").unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        // Across buffer refills, all distinct.
        let all: std::collections::HashSet<String> =
            (0..200).map(|_| new_token("x").unwrap()).collect();
        assert_eq!(all.len(), 200);
    }

    #[test]
    fn holder_round_trips() {
        let v = owner_value("abc", Mode::Exclusive);
        let o = parse_holder(v.as_bytes()).unwrap();
        assert_eq!(o.pid, std::process::id());
        assert_eq!(o.mode, Mode::Exclusive);
        let mut me = Owner::current(Mode::Exclusive);
        me.since = o.since;
        assert_eq!(o, me);
        assert!(parse_holder(b"foreign").is_none());
    }
}
