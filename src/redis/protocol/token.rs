//! Owner tokens and the owner values stored in Redis: a random token, a
//! newline, and this process's owner metadata (so waiters can say who holds
//! what). Every compare in the scripts is on the whole value.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::LockError;
use crate::options::Mode;
use crate::owner::Owner;

/// A fresh owner value for `resource` held in `mode`, shared by every
/// call of the acquisition (see [`Args`](super::Args)).
///
/// Made from a template kept per thread: the value's text but for the
/// token and the nanoseconds of `since=`, rebuilt when the second or the
/// mode changes. Per call, only the token's and the nanoseconds' digits
/// are written: fewer distinct instructions (and instruction-cache lines)
/// than formatting the value piece by piece each time.
///
/// # Errors
///
/// [`LockError::Backend`] if the OS random source fails.
pub(crate) fn fresh_value(resource: &str, mode: Mode) -> Result<Arc<str>, LockError> {
    let Ok(since) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) else {
        return slow_value(resource, mode);
    };
    let secs = since.as_secs();
    // Cached (no system call), and right again in a forked child.
    let pid = crate::process::id();
    THREAD.with_borrow_mut(|t| {
        let mut token = [0u8; TOKEN];
        t.pool
            .take(&mut token, pid)
            .map_err(|e| rng_error(resource, &e))?;
        if t.secs != secs || t.mode != Some(mode) || t.pid != pid {
            t.rebuild(secs, mode, pid);
        }
        let mut hex = [0u8; 2 * TOKEN];
        hex_into(&mut hex, &token);
        let digits = nanos_digits(since.subsec_nanos());
        let buf = &mut t.buf;
        buf.clear();
        // Hex and decimal digits only: always UTF-8.
        buf.push_str(std::str::from_utf8(&hex).unwrap_or_default());
        buf.push_str(&t.head);
        buf.push_str(std::str::from_utf8(&digits).unwrap_or_default());
        buf.push_str(&t.tail);
        Ok(Arc::from(buf.as_str()))
    })
}

/// [`fresh_value`] piece by piece (a clock before 1970).
#[cold]
#[inline(never)]
fn slow_value(resource: &str, mode: Mode) -> Result<Arc<str>, LockError> {
    let mut v = String::new();
    push_token(&mut v, resource)?;
    push_record(&mut v, mode);
    Ok(Arc::from(v))
}

/// Bytes of randomness in a token.
const TOKEN: usize = 16;

/// What [`fresh_value`] keeps per thread.
struct Thread {
    pool: Pool,
    /// The value as written, before it is copied into its `Arc`.
    buf: String,
    /// The second, mode and process `head` and `tail` were written for.
    secs: u64,
    mode: Option<Mode>,
    pid: u32,
    /// What follows the token, up to the nanoseconds of `since=`.
    head: String,
    /// What follows the nanoseconds.
    tail: String,
}

thread_local! {
    static THREAD: std::cell::RefCell<Thread> = const {
        std::cell::RefCell::new(Thread {
            pool: Pool { bytes: [0; BATCH], used: BATCH, pid: 0 },
            buf: String::new(),
            secs: u64::MAX,
            mode: None,
            pid: 0,
            head: String::new(),
            tail: String::new(),
        })
    };
}

impl Thread {
    /// Writes `head` and `tail` for values made in second `secs` (since the
    /// epoch) held in `mode` by process `pid`: what [`push_record`] writes,
    /// but for the nanoseconds.
    #[cold]
    #[inline(never)]
    fn rebuild(&mut self, secs: u64, mode: Mode, pid: u32) {
        let mut record = String::new();
        push_record_at(
            &mut record,
            mode,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        );
        // "….000000000Z\nmode=…": split around the nanoseconds.
        let dot = record.rfind("Z\nmode=").map_or(0, |z| z.saturating_sub(10));
        self.head.clear();
        self.head.push_str(&record[..=dot]);
        self.tail.clear();
        self.tail.push_str(&record[dot + 10..]);
        self.secs = secs;
        self.mode = Some(mode);
        self.pid = pid;
    }
}

/// Tokens' bytes from the OS CSPRNG, fetched 32 tokens at a time (one
/// system call per 32 tokens instead of one per token). Each byte is used
/// once. It records the pid that filled it and is refilled in a forked
/// child, so parent and child never share tokens.
struct Pool {
    bytes: [u8; BATCH],
    used: usize,
    pid: u32,
}

const BATCH: usize = 32 * TOKEN;

impl Pool {
    /// The next token's bytes into `out`, in process `pid` (this one's,
    /// from [`crate::process::id`]: `getpid` is a system call).
    fn take(&mut self, out: &mut [u8; TOKEN], pid: u32) -> Result<(), getrandom::Error> {
        if self.used + TOKEN > BATCH || self.pid != pid {
            self.refill(pid)?;
        }
        out.copy_from_slice(&self.bytes[self.used..self.used + TOKEN]);
        // Never hand out the same bytes twice.
        self.bytes[self.used..self.used + TOKEN].fill(0);
        self.used += TOKEN;
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn refill(&mut self, pid: u32) -> Result<(), getrandom::Error> {
        getrandom::fill(&mut self.bytes)?;
        self.used = 0;
        self.pid = pid;
        Ok(())
    }
}

#[cold]
#[inline(never)]
fn rng_error(name: &str, e: &getrandom::Error) -> LockError {
    LockError::Backend {
        resource: name.to_owned(),
        op: "generate an owner token",
        source: Box::new(std::io::Error::other(e.to_string())),
    }
}

/// `bytes` as lowercase hex digits.
fn hex_into(out: &mut [u8; 2 * TOKEN], bytes: &[u8; TOKEN]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
}

/// `nanos` (< 10⁹) as nine decimal digits.
fn nanos_digits(mut nanos: u32) -> [u8; 9] {
    let mut digits = [b'0'; 9];
    for d in digits.iter_mut().rev() {
        // `nanos % 10` < 10: the cast keeps it.
        *d = b'0' + (nanos % 10) as u8;
        nanos /= 10;
    }
    digits
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
    let mut buf = [0u8; TOKEN];
    THREAD
        .with_borrow_mut(|t| t.pool.take(&mut buf, crate::process::id()))
        .map_err(|e| rng_error(name, &e))?;
    let mut hex = [0u8; 2 * TOKEN];
    hex_into(&mut hex, &buf);
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
    push_record_at(v, mode, SystemTime::now());
}

/// [`push_record`] with `since=` at `now`.
fn push_record_at(v: &mut String, mode: Mode, now: SystemTime) {
    // The lines before `since=` (header, pid, start, host): from this
    // process's owner template (per thread, no lock: see
    // `crate::process::owner`; right again in a forked child). Once per
    // second per thread (`Thread::rebuild`), and on the slow paths.
    let text = crate::process::owner(mode).to_text();
    let end = text.find("\nsince=").map_or(text.len(), |i| i + 1);
    v.push('\n');
    v.push_str(&text[..end]);
    v.push_str("since=");
    push_rfc3339_nanos(v, now);
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
    let digits = nanos_digits(since_epoch.subsec_nanos());
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
    fn fresh_values_are_token_and_record() {
        for mode in [Mode::Exclusive, Mode::Shared, Mode::Exclusive] {
            let before = SystemTime::now();
            let v = fresh_value("x", mode).unwrap();
            let after = SystemTime::now();
            let (token, record) = v.split_once('\n').unwrap();
            assert_eq!(token.len(), 32);
            assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
            // The same record as written piece by piece, but for `since=`.
            let mut expected = String::new();
            push_record(&mut expected, mode);
            let since = |r: &str| {
                let at = r.find("since=").unwrap();
                (
                    r[..at].to_owned(),
                    r[at..].split_once('\n').unwrap().1.to_owned(),
                )
            };
            assert_eq!(since(&format!("\n{record}")), since(&expected));
            let o = parse_holder(v.as_bytes()).unwrap();
            assert_eq!(o.mode, mode);
            let at = &record[record.find("since=").unwrap() + 6..];
            let at = humantime::parse_rfc3339(at.split_once('\n').unwrap().0).unwrap();
            assert!(before <= at && at <= after);
        }
        let a = fresh_value("x", Mode::Exclusive).unwrap();
        let b = fresh_value("x", Mode::Exclusive).unwrap();
        assert_ne!(a[..32], b[..32]);
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
