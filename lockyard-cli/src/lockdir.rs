//! The lock directory: `--dir`, `$LOCKYARD_DIR`, or the per-user default.

use std::path::PathBuf;

use lockyard::{FileLockManager, FileLockOptions};

use crate::args::DirArg;
use crate::exit::{self, CliError};

/// `--dir`, else `$LOCKYARD_DIR` (unless empty), else the library's one
/// per-user directory ([`FileLockManager::default_dir`], which depends on no
/// environment variable, so cron and a login session agree); and whether the
/// user chose it.
pub(crate) fn resolve_dir(arg: &DirArg) -> (PathBuf, bool) {
    let env = std::env::var_os("LOCKYARD_DIR").filter(|d| !d.is_empty());
    match arg.dir.clone().or_else(|| env.map(PathBuf::from)) {
        Some(dir) => (dir, true),
        None => (FileLockManager::default_dir(), false),
    }
}

/// The lock options `--allow-foreign-dir` sets.
pub(crate) fn options(arg: &DirArg) -> FileLockOptions {
    FileLockOptions::default().allow_foreign_dir(arg.allow_foreign_dir)
}

/// The manager for `exec`, which creates the directory if missing.
pub(crate) fn manager(arg: &DirArg) -> Result<FileLockManager, CliError> {
    let (dir, _) = resolve_dir(arg);
    Ok(FileLockManager::with_options(&dir, options(arg))?)
}

/// The manager for `status`/`cleanup`, which must not create a directory:
/// `None` when the default directory does not exist (nothing to show), an
/// error (66) when the chosen one does not.
pub(crate) fn existing_manager(arg: &DirArg) -> Result<Option<FileLockManager>, CliError> {
    let (dir, chosen) = resolve_dir(arg);
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if chosen {
                Err(CliError::new(
                    exit::NO_INPUT,
                    format!(
                        "lock directory {} does not exist",
                        lockyard::Escaped(dir.display())
                    ),
                ))
            } else {
                Ok(None)
            }
        }
        _ => Ok(Some(FileLockManager::with_options(&dir, options(arg))?)),
    }
}
