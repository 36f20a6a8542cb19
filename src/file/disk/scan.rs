//! Looking over the whole lock directory: listing and stale-lock cleanup.
//!
//! Looking never touches: on Linux whether a file is locked, how, and by
//! whom is read from `/proc/locks` ([`super::proc_locks`]); a lock is only
//! taken on a file about to be removed, after it was found stale. (Where
//! there is no such table, a free lock is probed with `LOCK_NB`, which holds
//! it for the instant of the probe.)

use std::path::PathBuf;
use std::time::Duration;

use super::dir::LockDir;
use super::lockfile::{Access, LockFile, Record};
use super::name;
use super::proc_locks::{KernelLocks, Kind, LockEntry, Lookup};
use crate::error::LockError;
use crate::options::Mode;
use crate::owner::{Liveness, Owner};

/// One lock file as seen by [`FileLockManager::list`](crate::FileLockManager::list).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockyard::LockError> {
/// use std::time::Duration;
/// use lockyard::{FileLockManager, Mode};
///
/// let dir = tempfile::tempdir().unwrap();
/// let locks = FileLockManager::new(dir.path())?;
/// let guard = locks.acquire("report", Duration::from_secs(1)).await?;
/// let info = &locks.list().await?[0];
/// assert_eq!((info.name.as_str(), info.held, info.mode), ("report", true, Some(Mode::Exclusive)));
/// assert_eq!(info.owner.as_ref().map(|o| o.pid), Some(std::process::id()));
/// # drop(guard);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct FileLockInfo {
    /// The resource name: read from the file name for plain names, else from
    /// the record inside the file; for an escaped name whose record is
    /// missing or damaged, the file name without `.lock`.
    pub name: String,
    /// The lock file.
    pub path: PathBuf,
    /// Whether someone held the (`flock`) lock when it was looked at.
    pub held: bool,
    /// How it was held (`None` when free).
    pub mode: Option<Mode>,
    /// The recorded owner: the holder when held, else the last holder.
    /// `None` when the record is missing or unreadable, and when the lock is
    /// held but the kernel names other holders than the recorded process
    /// (the record is then a previous holder's: another tool such as
    /// flock(1) holds the file now; see [`holder_pids`](Self::holder_pids)).
    pub owner: Option<Owner>,
    /// The pids of the processes holding the `flock` lock, as the kernel
    /// names them (Linux `/proc/locks`); empty when free or unknown.
    pub holder_pids: Vec<u32>,
    /// Whether an `fcntl`/`lockf` record lock is held on the file. Such
    /// locks are invisible to `flock` and so do not exclude lockyard
    /// holders, but cleanup never removes a file that has one (Linux only).
    pub record_locked: bool,
}

/// What [`FileLockManager::cleanup_with`](crate::FileLockManager::cleanup_with)
/// removes.
///
/// ```
/// use std::time::Duration;
/// use lockyard::CleanupOptions;
///
/// let opts = CleanupOptions::default().max_age(Duration::from_secs(86_400));
/// assert!(!opts.remove_unrecorded);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CleanupOptions {
    /// Also remove free files whose record is older than this (default
    /// `None`: only provably dead owners' files).
    pub max_age: Option<Duration>,
    /// Also remove free files that hold no lockyard owner record: empty
    /// files, and files another tool wrote (default `false`: they are kept,
    /// since their lock may be one lockyard cannot see).
    pub remove_unrecorded: bool,
}

impl CleanupOptions {
    /// Sets [`max_age`](Self::max_age).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::CleanupOptions;
    ///
    /// let week = CleanupOptions::default().max_age(Duration::from_secs(7 * 86_400));
    /// assert_eq!(week.max_age, Some(Duration::from_secs(604_800)));
    /// ```
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Sets [`remove_unrecorded`](Self::remove_unrecorded).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockyard::LockError> {
    /// use lockyard::{CleanupOptions, FileLockManager};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let locks = FileLockManager::new(dir.path())?;
    /// std::fs::File::create(dir.path().join("stray.lock")).unwrap(); // no record inside
    /// assert!(locks.cleanup_with(&CleanupOptions::default()).await?.is_empty());
    /// let all = CleanupOptions::default().remove_unrecorded(true);
    /// assert_eq!(locks.cleanup_with(&all).await?.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn remove_unrecorded(mut self, remove: bool) -> Self {
        self.remove_unrecorded = remove;
        self
    }
}

/// How a lock file is held, as far as can be told without taking it.
#[derive(Debug, Default)]
struct Seen {
    /// The `flock` mode held by others, `None` when free.
    mode: Option<Mode>,
    pids: Vec<u32>,
    /// An `fcntl`/`lockf` lock is held.
    record_locked: bool,
}

/// Looks at `file`'s lock: from the kernel's table where there is one,
/// else by probing.
fn look(file: &LockFile, table: Option<&KernelLocks>) -> Result<Seen, LockError> {
    if let Some(table) = table {
        let st = super::dir::fstat(&file.file)
            .map_err(|e| LockError::from_io("inspect", &file.path, e))?;
        if let Lookup::Known(held) = table.lookup(st.id.0, st.id.1) {
            return Ok(seen_from(&held));
        }
    }
    Ok(Seen {
        mode: probe_mode(file)?,
        ..Seen::default()
    })
}

fn seen_from(held: &[LockEntry]) -> Seen {
    let mut seen = Seen::default();
    for h in held {
        match h.kind {
            Kind::Flock => {
                seen.mode = Some(match (seen.mode, h.mode) {
                    (Some(Mode::Exclusive), _) | (_, Mode::Exclusive) => Mode::Exclusive,
                    _ => Mode::Shared,
                });
                seen.pids.extend(h.pid);
            }
            Kind::Other => seen.record_locked = true,
        }
    }
    seen.pids.sort_unstable();
    seen.pids.dedup();
    seen
}

/// Which mode the lock is held in by others (`None`: free), by trying it.
/// A free lock is held for the duration of the probe: only used where the
/// kernel's table cannot be read.
pub(crate) fn probe_mode(file: &LockFile) -> Result<Option<Mode>, LockError> {
    if file.try_lock(Mode::Exclusive)? {
        let _ = file.unlock();
        return Ok(None);
    }
    if file.try_lock(Mode::Shared)? {
        let _ = file.unlock();
        return Ok(Some(Mode::Shared));
    }
    Ok(Some(Mode::Exclusive))
}

/// Whether the lock file `file_name` is held, without taking it where the
/// kernel's table can be read.
pub(crate) fn is_locked(dir: &LockDir, file_name: &str) -> Result<bool, LockError> {
    let Some(file) = LockFile::open(dir, file_name, Access::Probe, 0)? else {
        return Ok(false);
    };
    Ok(look(&file, KernelLocks::read().as_ref())?.mode.is_some())
}

/// The holder named by the record of the lock file `file_name`, unless the
/// kernel's table (Linux) shows the lock held by other processes only: then
/// the record is a previous holder's (flock(1) or another tool holds it now)
/// and naming it would mislead.
pub(crate) fn recorded_holder(dir: &LockDir, file_name: &str) -> Option<Owner> {
    let file = LockFile::open(dir, file_name, Access::Probe, 0).ok()??;
    let owner = file.read_record().ok()?.owner.ok()?;
    if owner.host != crate::owner::host_name() {
        return Some(owner);
    }
    let Some(table) = KernelLocks::read() else {
        return Some(owner);
    };
    let st = super::dir::fstat(&file.file).ok()?;
    match table.lookup(st.id.0, st.id.1) {
        Lookup::Known(held) => {
            let seen = seen_from(&held);
            (seen.pids.is_empty() || seen.pids.contains(&owner.pid)).then_some(owner)
        }
        Lookup::Unsure => Some(owner),
    }
}

/// The owner recorded in the lock file `file_name`, if it exists and parses.
pub(crate) fn read_owner(dir: &LockDir, file_name: &str) -> Result<Option<Owner>, LockError> {
    let Some(file) = LockFile::open(dir, file_name, Access::Probe, 0)? else {
        return Ok(None);
    };
    let record = file
        .read_record()
        .map_err(|e| LockError::from_io("read", &file.path, e))?;
    Ok(record.owner.ok())
}

pub(crate) fn list(dir: &LockDir) -> Result<Vec<FileLockInfo>, LockError> {
    let table = KernelLocks::read();
    let mut out = Vec::new();
    for file_name in lock_files(dir)? {
        let file = match LockFile::open(dir, &file_name, Access::Probe, 0) {
            Ok(Some(f)) => f,
            Ok(None) => continue, // removed meanwhile
            Err(e) => {
                tracing::debug!(path = %dir.join(&file_name).display(), error = %e, "skipping");
                continue;
            }
        };
        let seen = match look(&file, table.as_ref()) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(path = %file.path.display(), error = %e, "cannot look; skipping");
                continue;
            }
        };
        let record = file.read_record().unwrap_or_else(|_| Record::parse(b""));
        out.push(info(&file_name, file.path.clone(), seen, record));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The stale lock files; removed unless `dry_run`.
///
/// Staleness is decided first, by looking only; then each stale file is
/// locked, checked again (still the same file, still free of record locks,
/// still stale) and removed while held. A dry run never locks anything
/// where the kernel's table can be read.
pub(crate) fn stale(
    dir: &LockDir,
    options: &CleanupOptions,
    dry_run: bool,
) -> Result<Vec<FileLockInfo>, LockError> {
    let table = KernelLocks::read();
    let mut out = Vec::new();
    for file_name in lock_files(dir)? {
        let file = match LockFile::open(dir, &file_name, Access::Probe, 0) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(path = %dir.join(&file_name).display(), error = %e, "skipping");
                continue;
            }
        };
        match look(&file, table.as_ref()) {
            Ok(seen) if seen.mode.is_none() && !seen.record_locked => {}
            Ok(_) => continue, // held: never stale
            Err(e) => {
                tracing::debug!(path = %file.path.display(), error = %e, "cannot look; skipping");
                continue;
            }
        }
        let record = file.read_record().unwrap_or_else(|_| Record::parse(b""));
        if staleness(&record, options).is_none() {
            continue;
        }
        drop(file);
        if dry_run {
            out.push(info(
                &file_name,
                dir.join(&file_name),
                Seen::default(),
                record,
            ));
            continue;
        }
        if let Some(record) = remove_if_still_stale(dir, &file_name, options) {
            out.push(info(
                &file_name,
                dir.join(&file_name),
                Seen::default(),
                record,
            ));
        }
    }
    Ok(out)
}

/// Locks a file found stale, checks it again while holding it, and removes
/// it. Returns its record when removed.
fn remove_if_still_stale(
    dir: &LockDir,
    file_name: &str,
    options: &CleanupOptions,
) -> Option<Record> {
    let file = LockFile::open(dir, file_name, Access::Existing, 0).ok()??;
    if !matches!(file.try_lock(Mode::Exclusive), Ok(true)) {
        return None; // taken meanwhile
    }
    // Holding the lock from here on (until `file` is dropped).
    if !matches!(file.still_at_path(dir), Ok(true)) {
        return None; // replaced meanwhile: the new file is someone else's
    }
    if let Some(table) = KernelLocks::read()
        && let Ok(st) = super::dir::fstat(&file.file)
        && !matches!(table.lookup(st.id.0, st.id.1), Lookup::Known(ref h) if h.iter().all(|h| h.kind == Kind::Flock))
    {
        return None; // a record lock appeared, or the table is unsure
    }
    let record = file.read_record().unwrap_or_else(|_| Record::parse(b""));
    let reason = staleness(&record, options)?;
    if let Err(e) = dir.unlink(file_name) {
        tracing::warn!(path = %file.path.display(), error = %e, "could not remove stale lock file");
        return None;
    }
    tracing::info!(path = %file.path.display(), reason, "removed stale lock file");
    Some(record)
}

fn staleness(record: &Record, options: &CleanupOptions) -> Option<&'static str> {
    match &record.owner {
        Err(_) if record.is_lockyard => Some("damaged lockyard owner record"),
        Err(_) if options.remove_unrecorded => Some("no lockyard owner record"),
        Err(_) => None,
        Ok(owner) if owner.liveness() == Liveness::Dead => Some("owner process is gone"),
        Ok(owner) if options.max_age.is_some_and(|max| owner.age() > max) => {
            Some("older than max_age")
        }
        Ok(_) => None,
    }
}

fn info(file_name: &str, path: PathBuf, seen: Seen, record: Record) -> FileLockInfo {
    let name = match name::plain_name_of(file_name) {
        Some(plain) => plain.to_owned(),
        None => record
            .name
            // A record may only name the resource that maps to this file.
            .filter(|n| name::file_name(n).is_ok_and(|f| f == file_name))
            .unwrap_or_else(|| file_name.trim_end_matches(name::SUFFIX).to_owned()),
    };
    let mut owner = record.owner.ok();
    // Held, but not by the recorded process: the record is a previous
    // holder's (another tool, flock(1) say, holds it now).
    if seen.mode.is_some()
        && !seen.pids.is_empty()
        && owner
            .as_ref()
            .is_some_and(|o| o.host == crate::owner::host_name() && !seen.pids.contains(&o.pid))
    {
        owner = None;
    }
    FileLockInfo {
        name,
        path,
        held: seen.mode.is_some(),
        mode: seen.mode,
        owner,
        holder_pids: seen.pids,
        record_locked: seen.record_locked,
    }
}

/// The names of every regular file in `dir` named like a lock file.
fn lock_files(dir: &LockDir) -> Result<Vec<String>, LockError> {
    let mut names = dir
        .regular_files()
        .map_err(|e| LockError::from_io("list", dir.path(), e))?;
    names.retain(|n| name::is_lock_file_name(n));
    Ok(names)
}
