//! `exec`, `status` and `cleanup` on lock files (`FileLockManager`).

use std::path::{Path, PathBuf};

use lockyard::{AcquireOptions, FileLockInfo, FileLockManager, Mode};

use crate::args::{CleanupArgs, DirArg, ExecArgs, StatusArgs};
use crate::child::{Signals, signal_exit};
use crate::exit::{self, CliError};
use crate::{Ctx, run_locked, waiting};

/// `--dir`, else `$LOCKYARD_DIR` (unless empty), else a per-user directory;
/// and whether the user chose it.
fn resolve_dir(arg: &DirArg) -> (PathBuf, bool) {
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
fn existing_manager(arg: &DirArg) -> Result<Option<FileLockManager>, CliError> {
    let (dir, chosen) = resolve_dir(arg);
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if chosen {
                Err(CliError::new(
                    exit::NO_INPUT,
                    format!("lock directory {} does not exist", dir.display()),
                ))
            } else {
                Ok(None)
            }
        }
        _ => Ok(Some(FileLockManager::new(&dir)?)),
    }
}

pub(crate) async fn exec(
    ctx: &Ctx,
    args: &ExecArgs,
    signals: &mut Signals,
) -> Result<u8, CliError> {
    let (dir, _) = resolve_dir(&args.dir);
    let manager = FileLockManager::new(&dir)?;
    let name = args.name.as_str();
    let mode = if args.shared {
        Mode::Shared
    } else {
        Mode::Exclusive
    };
    let timeout = ctx.timeout(args);
    let acquire = async {
        match (timeout, mode) {
            (Some(t), Mode::Exclusive) if t.is_zero() => manager.try_acquire(name).await,
            (Some(t), _) if t.is_zero() => manager.try_acquire_shared(name).await,
            _ => {
                let mut opts = AcquireOptions::new().mode(mode);
                opts.timeout = timeout;
                manager.acquire_with(name, &opts).await
            }
        }
    };
    let holder = || async {
        let owner = manager.owner(name).await.ok().flatten();
        owner.as_ref().map(waiting::describe_owner)
    };
    let acquired = tokio::select! {
        res = waiting::acquire_reporting(name, acquire, holder) => res,
        sig = signals.recv_fatal() => return Ok(signal_exit(sig)),
    };
    let guard = match acquired {
        Ok(guard) => guard,
        Err(err) if err.is_contended() => {
            let who = match err.holder() {
                Some(owner) => Some(waiting::describe_owner(owner)),
                None => holder().await,
            };
            return Err(ctx.conflict(args, name, who, &err));
        }
        Err(err) => return Err(err.into()),
    };
    tracing::debug!("holding {} ({mode})", guard.path().display());
    let code = run_locked(args, &[], std::future::pending(), signals).await;
    if let Err(e) = guard.release().await {
        tracing::warn!("releasing lock `{name}`: {e}");
    }
    code
}

pub(crate) async fn status(args: &StatusArgs) -> Result<u8, CliError> {
    let locks = match existing_manager(&args.dir)? {
        Some(manager) => manager.list().await?,
        None => Vec::new(),
    };
    let text = if args.json {
        let rows: Vec<serde_json::Value> = locks.iter().map(json_row).collect();
        serde_json::Value::Array(rows).to_string() + "\n"
    } else {
        table(&locks)
    };
    crate::print(&text)?;
    Ok(0)
}

fn json_row(info: &FileLockInfo) -> serde_json::Value {
    let owner = info.owner.as_ref();
    serde_json::json!({
        "name": info.name,
        "held": info.held,
        "mode": info.mode.map(Mode::as_str),
        "pid": owner.map(|o| o.pid),
        "host": owner.map(|o| o.host.as_str()),
        "since": owner.map(|o| humantime::format_rfc3339_millis(o.since).to_string()),
    })
}

fn table(locks: &[FileLockInfo]) -> String {
    let mut rows = vec![["NAME", "HELD", "MODE", "PID", "HOST", "SINCE"].map(str::to_owned)];
    for info in locks {
        let owner = info.owner.as_ref();
        rows.push([
            info.name.clone(),
            if info.held { "yes" } else { "no" }.to_owned(),
            info.mode.map_or("-", Mode::as_str).to_owned(),
            owner.map_or_else(|| "-".to_owned(), |o| o.pid.to_string()),
            owner.map_or_else(|| "-".to_owned(), |o| o.host.clone()),
            owner.map_or_else(
                || "-".to_owned(),
                |o| humantime::format_rfc3339_seconds(o.since).to_string(),
            ),
        ]);
    }
    crate::format_table(&rows)
}

pub(crate) async fn cleanup(args: &CleanupArgs) -> Result<u8, CliError> {
    let (dir, _) = resolve_dir(&args.dir);
    let Some(manager) = existing_manager(&args.dir)? else {
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        crate::print(&format!(
            "{verb} 0 stale lock files from {}\n",
            dir.display()
        ))?;
        return Ok(0);
    };
    let text = if args.dry_run {
        let stale = manager.stale_locks(args.max_age).await?;
        let mut text = String::new();
        for info in &stale {
            text.push_str(&format!("{}\n", info.path.display()));
        }
        text.push_str(&format!(
            "would remove {} stale lock file{} from {}\n",
            stale.len(),
            plural(stale.len()),
            dir_of(&manager).display()
        ));
        text
    } else {
        let removed = manager.cleanup_stale_locks(args.max_age).await?;
        format!(
            "removed {removed} stale lock file{} from {}\n",
            plural(removed),
            dir_of(&manager).display()
        )
    };
    crate::print(&text)?;
    Ok(0)
}

fn dir_of(manager: &FileLockManager) -> &Path {
    manager.dir()
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
