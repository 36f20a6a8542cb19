//! Who holds which file, read from `/proc/locks` (Linux) without touching
//! the file.
//!
//! Probing a lock by taking it (`LOCK_NB`) makes a real acquirer that comes
//! at that instant fail, so looking (`is_locked`, `list`, `stale_locks`,
//! dry runs) reads the kernel's table instead. It also names the real
//! holder's pid, whatever tool took the lock, and shows `fcntl`/`lockf`
//! record locks (`POSIX`, `OFDLCK`), which `flock` cannot see.
//!
//! Each line reads `<n>: <type> <ADVISORY|MANDATORY|…> <READ|WRITE> <pid>
//! <major>:<minor>:<inode> <start> <end>`; a line whose type is `->` is a
//! blocked request, not a holder. Files are matched on (major, minor,
//! inode). Some file systems (btrfs subvolumes, overlayfs) report another
//! device in `stat` than in this table: when only the inode matches, the
//! answer is [`Lookup::Unsure`] and the caller probes as before.
//!
//! The kernel writes the table one `read` at a time, each from where the
//! last stopped *by position* in its list of locks: a lock released between
//! two reads, anywhere before that position, shifts the rest, and one line
//! is never shown; one taken shows a line twice. (std's `read_to_string`
//! starts with a 32-byte read, so a held lock went missing from
//! `is_locked` under churn: seen in CI, and in
//! `tests/file_looking.rs` 929 times in 2,000 looks.) So the table is read
//! in page-sized reads: a table that ends within the first read came from
//! one pass under the kernel's lock and is exact. A longer one is read
//! [`READS`] times and the union kept: a lock held throughout is missed
//! only when every read skips it, and one that comes or goes meanwhile may
//! be shown either way, as for any look that races with a lock.

use crate::options::Mode;

/// The kinds of lock the table lists that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `flock(2)`: lockyard's own, flock(1)'s.
    Flock,
    /// `fcntl`/`lockf` record locks (`POSIX`, `OFDLCK`) and leases:
    /// invisible to `flock`.
    Other,
}

/// One lock held on a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LockEntry {
    pub(crate) kind: Kind,
    pub(crate) mode: Mode,
    /// The holder's pid as this process sees it (`None` for OFD locks,
    /// which belong to no process, and holders in other pid namespaces).
    pub(crate) pid: Option<u32>,
}

/// A snapshot of the kernel's lock table.
#[derive(Debug, Default)]
pub(crate) struct KernelLocks {
    entries: Vec<((u32, u32, u64), LockEntry)>,
}

/// What the table says about one file.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// These locks (possibly none: the file is free).
    Known(Vec<LockEntry>),
    /// The device numbers do not match but the inode does: probe instead.
    Unsure,
}

impl KernelLocks {
    /// Reads the table; `None` where there is none (not Linux, or
    /// `/proc` not mounted).
    pub(crate) fn read() -> Option<Self> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        let mut table = Self::default();
        for _ in 0..READS {
            let (text, exact) = read_table().ok()?;
            let read = Self::parse(&text);
            if exact {
                return Some(read);
            }
            // Duplicates are harmless: one read can show a line twice too.
            table.entries.extend(read.entries);
        }
        Some(table)
    }

    pub(crate) fn parse(text: &str) -> Self {
        let entries = text.lines().filter_map(parse_line).collect();
        Self { entries }
    }

    /// The locks held on the file with `stat` device `dev` and inode `ino`.
    pub(crate) fn lookup(&self, dev: u64, ino: u64) -> Lookup {
        let key = (dev_major(dev), dev_minor(dev), ino);
        let mut found = Vec::new();
        let mut same_inode_elsewhere = false;
        for (k, held) in &self.entries {
            if *k == key {
                found.push(*held);
            } else if k.2 == ino {
                same_inode_elsewhere = true;
            }
        }
        if found.is_empty() && same_inode_elsewhere {
            Lookup::Unsure
        } else {
            Lookup::Known(found)
        }
    }
}

/// How many times a table longer than one read is read (see the module
/// docs).
const READS: usize = 3;

/// Longer than any line of the table (a blocked request's `->` line with
/// 20-digit pid, inode and range).
const LONGEST_LINE: usize = 160;

/// `/proc/locks` in reads of at least a page, and whether it came in one
/// read that ended before the page was full: then it is one pass over the
/// kernel's list, taken under its lock.
fn read_table() -> std::io::Result<(String, bool)> {
    use std::io::Read;
    let page = rustix::param::page_size();
    let mut file = std::fs::File::open("/proc/locks")?;
    let mut chunk = vec![0u8; (4 * page).max(64 * 1024)];
    let mut text = Vec::new();
    let (mut reads, mut first) = (0usize, 0usize);
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if reads == 0 {
            first = n;
        }
        reads += 1;
        text.extend_from_slice(&chunk[..n]);
    }
    let exact = reads <= 1 && first + LONGEST_LINE <= page;
    Ok((String::from_utf8_lossy(&text).into_owned(), exact))
}

fn parse_line(line: &str) -> Option<((u32, u32, u64), LockEntry)> {
    let mut fields = line.split_whitespace();
    fields.next()?; // "<n>:"
    let kind = match fields.next()? {
        "->" => return None, // a blocked request, not a holder
        "FLOCK" => Kind::Flock,
        _ => Kind::Other,
    };
    fields.next()?; // ADVISORY / MANDATORY / ACTIVE / BREAKING …
    let mode = match fields.next()? {
        "WRITE" => Mode::Exclusive,
        "READ" => Mode::Shared,
        _ => return None, // UNLCK and the like hold nothing
    };
    let pid = fields.next()?.parse::<i64>().ok()?;
    let pid = u32::try_from(pid).ok().filter(|p| *p > 0);
    let mut id = fields.next()?.split(':');
    let major = u32::from_str_radix(id.next()?, 16).ok()?;
    let minor = u32::from_str_radix(id.next()?, 16).ok()?;
    let ino = id.next()?.parse::<u64>().ok()?;
    Some(((major, minor, ino), LockEntry { kind, mode, pid }))
}

/// Linux's `major(dev)` of a `st_dev`.
fn dev_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

/// Linux's `minor(dev)` of a `st_dev`.
fn dev_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
1: FLOCK  ADVISORY  WRITE 19110 fe:00:10010893 0 EOF
1: -> FLOCK  ADVISORY  WRITE 20000 fe:00:10010893 0 EOF
2: FLOCK  ADVISORY  READ 8286 fe:00:10010698 0 EOF
2: FLOCK  ADVISORY  READ 8287 fe:00:10010698 0 EOF
3: POSIX  ADVISORY  WRITE 3780 fe:00:770197 0 EOF
4: OFDLCK ADVISORY  READ -1 103:02:42 0 EOF
garbage line
5: FLOCK  ADVISORY  WRITE notapid fe:00:1 0 EOF
";

    #[test]
    fn parses_holders_and_skips_waiters_and_garbage() {
        let t = KernelLocks::parse(TABLE);
        let dev = (0xfe << 8) as u64; // major fe, minor 0
        let Lookup::Known(h) = t.lookup(dev, 10010893) else {
            panic!("unsure")
        };
        assert_eq!(
            h,
            [LockEntry {
                kind: Kind::Flock,
                mode: Mode::Exclusive,
                pid: Some(19110)
            }]
        );
        let Lookup::Known(h) = t.lookup(dev, 10010698) else {
            panic!("unsure")
        };
        assert_eq!(h.len(), 2);
        assert!(h.iter().all(|h| h.mode == Mode::Shared));
        let Lookup::Known(h) = t.lookup(dev, 770197) else {
            panic!("unsure")
        };
        assert_eq!(h[0].kind, Kind::Other);
        let Lookup::Known(h) = t.lookup(dev, 1) else {
            panic!("unsure")
        };
        assert!(h.is_empty());
        // Major 0x103 (259), minor 2: a big device number round-trips.
        let big = (0x103u64 << 8) | 2;
        let Lookup::Known(h) = t.lookup(big, 42) else {
            panic!("unsure")
        };
        assert_eq!(h[0].pid, None);
        assert!(matches!(t.lookup(dev + 1, 42), Lookup::Unsure));
    }
}
