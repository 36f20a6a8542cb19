//! `exec`: run COMMAND while holding a lock file; `--redis` goes to
//! [`exec_redis`](crate::exec_redis).

use lockyard::{AcquireOptions, Escaped, FileLockManager, Mode};

use crate::args::ExecArgs;
use crate::exit::CliError;
use crate::lockdir::resolve_dir;
use crate::supervisor::{Signals, run_locked, signal_exit};
use crate::waiting::{self, Ctx};

/// `exec`, on files or (`--redis`) on Redis.
pub(crate) async fn run(ctx: &Ctx, args: &ExecArgs) -> Result<u8, CliError> {
    let mut signals = Signals::install()?;
    if args.redis.is_empty() {
        files(ctx, args, &mut signals).await
    } else {
        redis(ctx, args, &mut signals).await
    }
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

async fn files(ctx: &Ctx, args: &ExecArgs, signals: &mut Signals) -> Result<u8, CliError> {
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
    tracing::debug!("holding {} ({mode})", Escaped(guard.path().display()));
    let code = run_locked(args, &[], std::future::pending(), signals).await;
    if let Err(e) = guard.release().await {
        tracing::warn!("releasing lock `{}`: {e}", Escaped(name));
    }
    code
}
