//! One lock file on disk: opening it safely, locking it, checking that the
//! locked file is still the one at the path, and the owner record inside it.
//!
//! Opening goes through the directory's descriptor ([`LockDir`]), never
//! follows a symbolic link (`O_NOFOLLOW`, `O_CLOEXEC`), refuses anything but
//! a regular file with exactly one link (a hard link planted under a lock
//! name would make us write into its target), and never blocks on a FIFO
//! planted under a lock file's name. A file this user may not write (in a
//! directory shared between users) is still locked through a read-only
//! descriptor — `flock` does not need write access — but then no owner
//! record is written. A record is only ever written into a file that is
//! empty or already holds a lockyard record: anything else is somebody's
//! data and is left as it is.

use std::fs::{File, TryLockError};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::dir::{self, LockDir, OpenMode};
use crate::error::LockError;
use crate::options::Mode;
use crate::owner::{self, Owner, OwnerParseError};

/// How much of a lock file is read when looking for the owner record.
const MAX_RECORD: usize = 4096;
/// Longest escaped resource name kept in the record (`Owner::parse` refuses
/// lines over 512 bytes).
const MAX_NAME_LINE: usize = 480;

/// How a lock file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read-write, created when missing (acquiring).
    Create,
    /// Read-write if allowed, never created (cleanup).
    Existing,
    /// Read-only, never created (status probes).
    Probe,
}

/// An open lock file and what `fstat` said about it when it was opened.
#[derive(Debug)]
pub(crate) struct LockFile {
    pub(crate) file: File,
    /// The entry's name in the lock directory.
    pub(crate) name: String,
    /// The full path, for messages.
    pub(crate) path: PathBuf,
    /// Whether the descriptor may write the owner record.
    pub(crate) writable: bool,
    id: (u64, u64),
    /// The process that opened it: a forked child shares the open file
    /// description (and with it any lock on it) and must never use it.
    born: u32,
    /// The file's length as last seen or written (to trim leftovers).
    len: AtomicU64,
    /// Known to hold a lockyard record (or to have been empty): records may
    /// be written into it.
    ours: AtomicBool,
}

impl LockFile {
    /// Opens the lock file `name` of `dir`. `Ok(None)` when it does not exist
    /// and `access` does not create it.
    pub(crate) fn open(
        dir: &LockDir,
        name: &str,
        access: Access,
        file_mode: u32,
    ) -> Result<Option<Self>, LockError> {
        let path = dir.join(name);
        let how = match access {
            Access::Create => OpenMode::Create(file_mode),
            Access::Existing => OpenMode::Write,
            Access::Probe => OpenMode::Read,
        };
        let (file, writable) = match dir.open_file(name, how) {
            Ok(f) => (f, access != Access::Probe),
            // A file another user created in a shared directory: lock it
            // read-only (flock needs no write access), write no record.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && access != Access::Probe => {
                match dir.open_file(name, OpenMode::Read) {
                    Ok(f) => (f, false),
                    Err(e2) if e2.kind() == io::ErrorKind::NotFound => {
                        return Err(LockError::from_io("open", &path, e));
                    }
                    Err(e2) => return Err(open_error(path, e2)),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && access != Access::Create => {
                return Ok(None);
            }
            Err(e) => return Err(open_error(path, e)),
        };
        let st = dir::fstat(&file).map_err(|e| LockError::from_io("inspect", &path, e))?;
        if !st.is_file {
            return Err(LockError::UnsafePath {
                path,
                reason: "the lock file is not a regular file".into(),
            });
        }
        if st.nlink != 1 {
            return Err(LockError::UnsafePath {
                path,
                reason: format!(
                    "the lock file has {} links, not 1 (a hard link would make the lock \
                     write into another file)",
                    st.nlink
                ),
            });
        }
        Ok(Some(Self {
            file,
            name: name.to_owned(),
            path,
            writable,
            id: st.id,
            born: crate::process::id(),
            len: AtomicU64::new(st.len),
            ours: AtomicBool::new(false),
        }))
    }

    /// Whether this process opened the descriptor (not a forked child that
    /// inherited it).
    pub(crate) fn opened_by_this_process(&self) -> bool {
        self.born == crate::process::id()
    }

    /// Tries to take the kernel lock without blocking: `Ok(false)` when
    /// someone else holds it.
    pub(crate) fn try_lock(&self, mode: Mode) -> Result<bool, LockError> {
        let r = match mode {
            Mode::Shared => self.file.try_lock_shared(),
            _ => self.file.try_lock(),
        };
        match r {
            Ok(()) => Ok(true),
            Err(TryLockError::WouldBlock) => Ok(false),
            Err(TryLockError::Error(e)) => Err(LockError::from_io("lock", &self.path, e)),
        }
    }

    /// Blocks until the kernel lock is taken. Returns the raw `io::Error` so
    /// that the caller can tell `Interrupted` apart.
    pub(crate) fn lock_blocking(&self, mode: Mode) -> io::Result<()> {
        match mode {
            Mode::Shared => self.file.lock_shared(),
            _ => self.file.lock(),
        }
    }

    /// Releases the kernel lock.
    pub(crate) fn unlock(&self) -> io::Result<()> {
        self.file.unlock()
    }

    /// Whether the file we opened (and locked) is still the one at its name
    /// in the directory. A lock taken on an unlinked or replaced file
    /// protects nothing: the caller drops it and starts over.
    pub(crate) fn still_at_path(&self, dir: &LockDir) -> Result<bool, LockError> {
        if !cfg!(unix) {
            return Ok(true);
        }
        match dir.stat(&self.name) {
            Ok(st) => Ok(st.id == self.id),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(LockError::from_io("inspect", &self.path, e)),
        }
    }

    /// Writes the owner record at offset 0 (while holding the lock), if the
    /// file is empty or already holds a lockyard record; `Ok(false)` when it
    /// holds anything else (left untouched) or the descriptor is read-only.
    ///
    /// The record ends with an `end` line, so leftovers of a longer earlier
    /// record (or of a concurrent shared holder's) after it are ignored. An
    /// exclusive holder trims such leftovers; a shared holder never
    /// truncates, since other shared holders may be writing too.
    pub(crate) fn write_record(&self, owner: &Owner, name: &str, mode: Mode) -> io::Result<bool> {
        if !self.writable {
            return Ok(false);
        }
        if !self.ours.load(Ordering::Relaxed) {
            let mut head = [0u8; owner::MAGIC.len() + 1];
            let n = read_full_at(&self.file, &mut head)?;
            let is_record = n == head.len()
                && head.starts_with(owner::MAGIC.as_bytes())
                && head[n - 1] == b'\n';
            if n != 0 && !is_record {
                return Ok(false);
            }
            self.ours.store(true, Ordering::Relaxed);
        }
        let text = record_text(owner, name);
        write_all_at(&self.file, text.as_bytes())?;
        let len = text.len() as u64;
        let before = self
            .len
            .swap(len.max(self.len.load(Ordering::Relaxed)), Ordering::Relaxed);
        if mode == Mode::Exclusive && before > len {
            self.file.set_len(len)?;
            self.len.store(len, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// Reads and parses the owner record.
    pub(crate) fn read_record(&self) -> io::Result<Record> {
        let mut buf = vec![0u8; MAX_RECORD];
        let filled = read_full_at(&self.file, &mut buf)?;
        buf.truncate(filled);
        Ok(Record::parse(&buf))
    }
}

/// Reads from offset 0 until `buf` is full or the file ends.
fn read_full_at(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match read_at(file, &mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// What a lock file says about its holder.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) owner: Result<Owner, OwnerParseError>,
    /// The resource name as recorded (needed to show escaped names).
    pub(crate) name: Option<String>,
    /// The content starts like a lockyard record (perhaps damaged): the file
    /// is lockyard's, not another tool's.
    pub(crate) is_lockyard: bool,
}

impl Record {
    pub(crate) fn parse(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let owner = Owner::parse(&text);
        let name = text
            .lines()
            .take_while(|l| *l != "end")
            .find_map(|l| l.strip_prefix("name="))
            .and_then(unescape_name);
        let is_lockyard = text
            .lines()
            .next()
            .is_some_and(|l| l.trim_end() == owner::MAGIC);
        Record {
            owner,
            name,
            is_lockyard,
        }
    }
}

/// The full record: the owner lines, the escaped resource name (when short
/// enough), and `end`.
pub(crate) fn record_text(owner: &Owner, name: &str) -> String {
    let mut text = owner.to_text();
    let escaped = escape_name(name);
    if escaped.len() <= MAX_NAME_LINE {
        text.push_str("name=");
        text.push_str(&escaped);
        text.push('\n');
    }
    text.push_str("end\n");
    text
}

/// Percent-escapes `%` and control characters so the name fits on one line.
fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c == '%' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape_name(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|n| !n.is_empty())
}

fn open_error(path: PathBuf, e: io::Error) -> LockError {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return LockError::UnsafePath {
            path,
            reason: "the lock file is a symbolic link".into(),
        };
    }
    LockError::from_io("open", &path, e)
}

#[cfg(unix)]
fn write_all_at(file: &File, buf: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(buf, 0)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut buf: &[u8]) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    let mut off = 0u64;
    while !buf.is_empty() {
        let n = file.seek_write(buf, off)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    file.read_at(buf, off)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    use std::os::windows::fs::FileExt;
    file.seek_read(buf, off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_with_name() {
        let me = Owner::current(Mode::Exclusive);
        for name in ["plain", "a/b\nc%d", "模型"] {
            let r = Record::parse(record_text(&me, name).as_bytes());
            assert_eq!(r.owner.unwrap(), me);
            assert_eq!(r.name.as_deref(), Some(name));
        }
        let long = "x".repeat(1000);
        let r = Record::parse(record_text(&me, &long).as_bytes());
        assert!(r.owner.is_ok());
        assert_eq!(r.name, None);
    }

    #[test]
    fn leftovers_after_end_are_ignored() {
        let me = Owner::current(Mode::Shared);
        let mut text = record_text(&me, "n");
        text.push_str("pid=1\nname=other\ngarbage without equals\n");
        let r = Record::parse(text.as_bytes());
        assert_eq!(r.owner.unwrap(), me);
        assert_eq!(r.name.as_deref(), Some("n"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\xff\xfe",
            b"name=%zz\nend\n",
            b"lockyard-owner 1\nend\n",
        ] {
            let r = Record::parse(bytes);
            assert!(r.owner.is_err());
            assert_eq!(r.name, None);
        }
    }
}
