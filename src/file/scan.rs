//! Looking over the whole lock directory: listing and stale-lock cleanup.

use std::path::PathBuf;
use std::time::Duration;

use super::dir::LockDir;
use super::lockfile::{Access, LockFile, Record};
use super::name;
use crate::error::LockError;
use crate::options::Mode;
use crate::owner::{Liveness, Owner};

/// One lock file as seen by [`FileLockManager::list`](super::FileLockManager::list).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FileLockInfo {
    /// The resource name: read from the file name for plain names, else from
    /// the record inside the file; for an escaped name whose record is
    /// missing or damaged, the file name without `.lock`.
    pub name: String,
    /// The lock file.
    pub path: PathBuf,
    /// Whether someone held the lock when it was probed.
    pub held: bool,
    /// How it was held (`None` when free).
    pub mode: Option<Mode>,
    /// The recorded owner (the holder when held, else the last holder);
    /// `None` when the record is missing or unreadable.
    pub owner: Option<Owner>,
}

/// Which mode the lock is held in by others (`None`: free), by trying it.
/// A free lock is held for the duration of the probe.
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

pub(crate) fn list(dir: &LockDir) -> Result<Vec<FileLockInfo>, LockError> {
    let mut out = Vec::new();
    for file_name in lock_files(dir)? {
        let path = dir.join(&file_name);
        let file = match LockFile::open(dir, &file_name, Access::Probe, 0) {
            Ok(Some(f)) => f,
            Ok(None) => continue, // removed meanwhile
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "skipping");
                continue;
            }
        };
        let mode = match probe_mode(&file) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot probe; skipping");
                continue;
            }
        };
        let record = file.read_record().unwrap_or_else(|_| Record::parse(b""));
        out.push(info(&file_name, path, mode, record));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The stale lock files; removed unless `dry_run`.
pub(crate) fn stale(
    dir: &LockDir,
    max_age: Option<Duration>,
    dry_run: bool,
) -> Result<Vec<FileLockInfo>, LockError> {
    let mut out = Vec::new();
    for file_name in lock_files(dir)? {
        let path = dir.join(&file_name);
        let file = match LockFile::open(dir, &file_name, Access::Existing, 0) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "skipping");
                continue;
            }
        };
        match file.try_lock(Mode::Exclusive) {
            Ok(true) => {}
            Ok(false) => continue, // held: never stale
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot lock; skipping");
                continue;
            }
        }
        // Holding the lock from here on (until `file` is dropped).
        if !matches!(file.still_at_path(dir), Ok(true)) {
            continue; // replaced meanwhile: the new file is someone else's
        }
        let record = file.read_record().unwrap_or_else(|_| Record::parse(b""));
        let Some(reason) = staleness(&record, max_age) else {
            continue;
        };
        if !dry_run {
            if let Err(e) = dir.unlink(&file_name) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove stale lock file");
                continue;
            }
            tracing::info!(path = %path.display(), reason, "removed stale lock file");
        }
        out.push(info(&file_name, path, None, record));
    }
    Ok(out)
}

fn staleness(record: &Record, max_age: Option<Duration>) -> Option<&'static str> {
    match &record.owner {
        Err(_) => Some("no readable owner record"),
        Ok(owner) if owner.liveness() == Liveness::Dead => Some("owner process is gone"),
        Ok(owner) if max_age.is_some_and(|max| owner.age() > max) => Some("older than max_age"),
        Ok(_) => None,
    }
}

fn info(file_name: &str, path: PathBuf, mode: Option<Mode>, record: Record) -> FileLockInfo {
    let name = match name::plain_name_of(file_name) {
        Some(plain) => plain.to_owned(),
        None => record
            .name
            // A record may only name the resource that maps to this file.
            .filter(|n| name::file_name(n).is_ok_and(|f| f == file_name))
            .unwrap_or_else(|| file_name.trim_end_matches(name::SUFFIX).to_owned()),
    };
    FileLockInfo {
        name,
        path,
        held: mode.is_some(),
        mode,
        owner: record.owner.ok(),
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
