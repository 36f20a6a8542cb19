//! The lock directory: `--dir`, `$LOCKYARD_DIR`, or the per-user default.

use std::path::PathBuf;

use lockyard::FileLockManager;

use crate::args::DirArg;
use crate::exit::{self, CliError};

/// `--dir`, else `$LOCKYARD_DIR` (unless empty), else a per-user directory;
/// and whether the user chose it.
pub(crate) fn resolve_dir(arg: &DirArg) -> (PathBuf, bool) {
    let env = std::env::var_os("LOCKYARD_DIR").filter(|d| !d.is_empty());
    match arg.dir.clone().or_else(|| env.map(PathBuf::from)) {
        Some(dir) => (dir, true),
        None => (default_dir(), false),
    }
}

/// `$XDG_RUNTIME_DIR/lockyard`, else `<temp dir>/lockyard-<uid>`.
pub(crate) fn default_dir() -> PathBuf {
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
        let runtime = PathBuf::from(runtime);
        if runtime.is_absolute() {
            return runtime.join("lockyard");
        }
    }
    std::env::temp_dir().join(format!("lockyard-{}", user_id()))
}

#[cfg(unix)]
fn user_id() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }.to_string()
}

#[cfg(not(unix))]
fn user_id() -> String {
    std::env::var("USERNAME").unwrap_or_else(|_| "user".to_owned())
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
        _ => Ok(Some(FileLockManager::new(&dir)?)),
    }
}
