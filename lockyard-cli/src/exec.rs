//! `exec`: run COMMAND while holding a lock file; `--redis` goes to
//! `exec_redis`, `--postgres` to `exec_postgres`.

use lockyard::{AcquireOptions, Escaped, FileLock, FileLockManager, Mode};

use crate::args::ExecArgs;
use crate::exit::CliError;
use crate::lockdir;
use crate::signals::Signals;
use crate::supervisor::{run_locked, signal_exit};
use crate::waiting::{self, Ctx};

/// `exec`, on files or (`--redis`) on Redis.
pub(crate) async fn run(ctx: &Ctx, args: &ExecArgs) -> Result<u8, CliError> {
    let mut signals = Signals::install()?;
    if args.postgres.url.is_some() {
        postgres(ctx, args, &mut signals).await
    } else if args.redis.urls.is_empty() {
        files(ctx, args, &mut signals).await
    } else {
        redis(ctx, args, &mut signals).await
    }
}

#[cfg(feature = "postgres")]
async fn postgres(ctx: &Ctx, args: &ExecArgs, signals: &mut Signals) -> Result<u8, CliError> {
    crate::exec_postgres::run(ctx, args, signals).await
}

#[cfg(not(feature = "postgres"))]
async fn postgres(_: &Ctx, _: &ExecArgs, _: &mut Signals) -> Result<u8, CliError> {
    Err(CliError::usage(
        "this lockyard was built without Postgres support (feature `postgres`)",
    ))
}

#[cfg(feature = "redis")]
async fn redis(ctx: &Ctx, args: &ExecArgs, signals: &mut Signals) -> Result<u8, CliError> {
    crate::exec_redis::run(ctx, args, signals).await
}

#[cfg(not(feature = "redis"))]
async fn redis(_: &Ctx, _: &ExecArgs, _: &mut Signals) -> Result<u8, CliError> {
    Err(CliError::usage(
        "this lockyard was built without Redis support (feature `redis`)",
    ))
}

/// The lock file `exec` takes: a path as flock(1) takes it (`--file PATH`,
/// or a NAME with a `/`), else NAME in the lock directory; and the manager
/// that can name its holder (the named case).
fn file_lock(args: &ExecArgs) -> Result<(FileLock, Option<FileLockManager>), CliError> {
    if let Some(path) = args.lock_path() {
        return Ok((FileLock::at_path(path, lockdir::options(&args.dir))?, None));
    }
    let manager = lockdir::manager(&args.dir)?;
    Ok((manager.lock(args.lock_name())?, Some(manager)))
}

async fn files(ctx: &Ctx, args: &ExecArgs, signals: &mut Signals) -> Result<u8, CliError> {
    let (lock, manager) = file_lock(args)?;
    let name = args.lock_name();
    let mode = if args.shared {
        Mode::Shared
    } else {
        Mode::Exclusive
    };
    let timeout = ctx.timeout(args);
    let acquire = async {
        match timeout {
            Some(t) if t.is_zero() => lock.try_acquire(mode).await,
            _ => {
                let mut opts = AcquireOptions::new().mode(mode);
                opts.timeout = timeout;
                lock.acquire(&opts).await
            }
        }
    };
    let holder = || async {
        let owner = manager.as_ref()?.owner(name).await.ok().flatten();
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
    tracing::debug!("holding {} ({mode})", Escaped(guard.path().display()));
    let code = run_locked(args, &[], lockyard::Lost::never(), signals).await;
    if let Err(e) = guard.release().await {
        tracing::warn!("releasing lock `{}`: {e}", Escaped(name));
    }
    code
}
