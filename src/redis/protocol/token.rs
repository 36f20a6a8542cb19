//! Owner tokens and the owner values stored in Redis: a random token, a
//! newline, and this process's owner metadata (so waiters can say who holds
//! what). Every compare in the scripts is on the whole value.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::error::LockError;
use crate::options::Mode;
use crate::owner::Owner;

/// A fresh owner value for `resource` held in `mode`, shared by every
/// call of the acquisition (see [`Args`](super::Args)).
///
/// # Errors
///
/// [`LockError::Backend`] if the OS random source fails.
pub(crate) fn fresh_value(resource: &str, mode: Mode) -> Result<Arc<str>, LockError> {
    // Written in a buffer kept per thread, then copied once into the value
    // every call shares.
    thread_local! {
        static BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    BUF.with_borrow_mut(|buf| {
        buf.clear();
        push_token(buf, resource)?;
        push_record(buf, mode);
        Ok(Arc::from(buf.as_str()))
    })
}

/// Parses the owner metadata stored after the token line; `None` for a value
/// lockyard did not write.
pub(crate) fn parse_holder(value: &[u8]) -> Option<Owner> {
    let text = std::str::from_utf8(value).ok()?;
    let (_token, meta) = text.split_once('\n')?;
    Owner::parse(meta).ok()
}

/// A fresh owner token as a string of its own.
#[cfg(test)]
pub(crate) fn new_token(name: &str) -> Result<String, LockError> {
    let mut s = String::new();
    push_token(&mut s, name)?;
    Ok(s)
}

/// Appends a random owner token to `out`: 128 bits from the OS CSPRNG, as
/// 32 hex digits.
///
/// The bytes come from `getrandom`, fetched 32 tokens at a time into a
/// thread-local buffer (one system call per 32 tokens instead of one per
/// token). Each byte is used once. The buffer records the pid that filled
/// it and is refilled in a forked child, so parent and child never share
/// tokens.
fn push_token(out: &mut String, name: &str) -> Result<(), LockError> {
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
    let mut hex = [0u8; 2 * TOKEN];
    for (pair, b) in hex.chunks_exact_mut(2).zip(buf) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
    // Hex digits only: always UTF-8.
    out.push_str(std::str::from_utf8(&hex).unwrap_or_default());
    Ok(())
}

/// The stored owner value: `token\n` + owner metadata (so waiters can say
/// who holds the lock), in [`Owner::to_text`]'s format.
#[cfg(test)]
pub(crate) fn owner_value(token: &str, mode: Mode) -> String {
    let mut v = token.to_owned();
    push_record(&mut v, mode);
    v
}

/// Appends what follows the token in an owner value: a newline and the
/// owner record.
fn push_record(v: &mut String, mode: Mode) {
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
    v.push('\n');
    v.push_str(prefix);
    v.push_str("since=");
    push_rfc3339_nanos(v, SystemTime::now());
    v.push_str("\nmode=");
    v.push_str(mode.as_str());
    v.push('\n');
}

/// Appends `t` as `humantime::format_rfc3339_nanos` writes it
/// (`2026-11-22T20:57:34.123456789Z`), formatting the part up to the
/// second once per second per thread: the date and time of day cost more
/// to format than the rest of an owner value together (callgrind).
fn push_rfc3339_nanos(out: &mut String, t: SystemTime) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let Ok(since_epoch) = t.duration_since(SystemTime::UNIX_EPOCH) else {
        let _ = write!(out, "{}", humantime::format_rfc3339_nanos(t));
        return;
    };
    let secs = since_epoch.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            let whole = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            text.clear();
            let _ = write!(text, "{}", humantime::format_rfc3339_seconds(whole));
            // "…:34Z": keep all but the zone, the nanoseconds go before it.
            text.pop();
            *cached = secs;
        }
        out.push_str(text);
    });
    out.push('.');
    let mut nanos = since_epoch.subsec_nanos();
    let mut digits = [b'0'; 9];
    for d in digits.iter_mut().rev() {
        // `nanos % 10` < 10: the cast keeps it.
        *d = b'0' + (nanos % 10) as u8;
        nanos /= 10;
    }
    out.push_str(std::str::from_utf8(&digits).unwrap_or_default());
    out.push('Z');
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
    fn since_is_written_as_humantime_writes_it() {
        let epoch = SystemTime::UNIX_EPOCH;
        let times = [
            SystemTime::now(),
            epoch + std::time::Duration::new(1_763_800_000, 0),
            epoch + std::time::Duration::new(1_763_800_000, 7),
            epoch + std::time::Duration::new(1_763_800_001, 999_999_999),
            epoch + std::time::Duration::new(0, 1),
        ];
        // Twice each, so the second comes from the per-second cache.
        for t in times.iter().chain(&times) {
            let mut ours = String::new();
            push_rfc3339_nanos(&mut ours, *t);
            assert_eq!(ours, humantime::format_rfc3339_nanos(*t).to_string());
        }
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
