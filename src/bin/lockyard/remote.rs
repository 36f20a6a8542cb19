//! `exec --redis` and `status --redis`: distributed locks.
//!
//! One URL: a [`RedisLocks`] lock, a semaphore (`--permits N`), or a RW
//! lock (`--rw`; `--shared` reads). Several URLs: Redlock over independent
//! servers (exclusive only; no fencing token, as Redlock cannot issue a
//! strictly increasing one). The library's watchdog renews the lease every
//! TTL/3 while COMMAND runs; if the lock is lost COMMAND gets SIGTERM, then
//! SIGKILL after [`LOST_GRACE`](crate::child::LOST_GRACE), and lockyard exits
//! with [`LOCK_LOST`](crate::exit::LOCK_LOST). COMMAND sees its fencing token
//! in `LOCKYARD_FENCING_TOKEN`.

use std::time::Duration;

use lockyard::redis::{RedisLockInfo, RedisLocks, RedisOptions, Redlock};
use lockyard::{AcquireOptions, Lock, LockError, LockGuard, Mode};

use crate::args::{ExecArgs, StatusArgs};
use crate::child::Signals;
use crate::exit::{self, CliError};
use crate::files::signal_exit;
use crate::{Ctx, run_locked, waiting};

/// The lease when `--ttl` is not given.
const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// The environment variable COMMAND finds its fencing token in.
const FENCING_ENV: &str = "LOCKYARD_FENCING_TOKEN";

pub(crate) async fn exec(
    ctx: &Ctx,
    args: &ExecArgs,
    signals: &mut Signals,
) -> Result<u8, CliError> {
    let name = args.name.as_str();
    let opts = RedisOptions::new().ttl(args.ttl.unwrap_or(DEFAULT_TTL));
    let timeout = ctx.timeout(args);
    // The client (and lock handle) live until the guard is released: the
    // client owns the watchdog that renews the lease.
    let backend = tokio::select! {
        res = Backend::connect(args, opts) => res?,
        sig = signals.recv() => return Ok(signal_exit(sig)),
    };
    let acquired = tokio::select! {
        res = backend.acquire(name, timeout) => res,
        sig = signals.recv() => return Ok(signal_exit(sig)),
    };
    let guard = match acquired {
        Ok(guard) => guard,
        Err(err) if err.is_contended() => {
            let who = err.holder().map_or_else(
                || "another Redis client".to_owned(),
                waiting::describe_owner,
            );
            let who = Some(who);
            return Err(ctx.conflict(args, name, who, &err));
        }
        Err(err) => return Err(err.into()),
    };
    let token = guard.fencing_token();
    tracing::info!("holding `{name}` on Redis (fencing token {token:?})");
    // Unset rather than inherited from an outer lockyard when there is none.
    let envs = [(FENCING_ENV, token.map(|t| t.to_string()))];
    let code = run_locked(name, &args.command, &envs, guard.lost(), signals).await;
    if code.as_ref().is_err_and(|e| e.code == exit::LOCK_LOST) {
        // The lease is gone; releasing would only wait on a Redis that may be down.
        drop(guard);
    } else if let Err(e) = guard.release().await
        && !ctx.quiet
    {
        eprintln!(
            "lockyard: warning: could not release `{name}` (it expires by itself within its TTL): {}",
            exit::error_chain(&e)
        );
    }
    drop(backend);
    code
}

/// What `exec --redis` locks with.
struct Backend {
    /// The handle holds its client(s), whose watchdog renews the lease: it
    /// lives until the guard is released.
    lock: Box<dyn Lock>,
    mode: Mode,
}

impl Backend {
    /// One URL: a lock, a semaphore (`--permits`) or a RW lock (`--rw`,
    /// `--shared`). Several: Redlock (exclusive only).
    async fn connect(args: &ExecArgs, opts: RedisOptions) -> Result<Self, LockError> {
        let name = args.name.as_str();
        let mode = if args.shared {
            Mode::Shared
        } else {
            Mode::Exclusive
        };
        if let [url] = args.redis.as_slice() {
            let client = RedisLocks::connect_with(url, opts).await?;
            let lock: Box<dyn Lock> = match args.permits {
                Some(permits) => Box::new(client.semaphore(name, permits)?),
                None if args.rw || args.shared => Box::new(client.rwlock(name)?),
                None => Box::new(client.lock(name)?),
            };
            return Ok(Backend { lock, mode });
        }
        if args.permits.is_some() || args.shared || args.rw {
            return Err(LockError::InvalidArgument {
                what: "--permits/--shared/--rw",
                reason: "Redlock (several --redis URLs) offers exclusive locks only".to_owned(),
            });
        }
        let redlock = Redlock::connect(&args.redis, opts).await?;
        Ok(Backend {
            lock: Box::new(redlock.lock(name)?),
            mode,
        })
    }

    /// `timeout`: `None` waits for ever, `Some(ZERO)` tries once.
    async fn acquire(&self, name: &str, timeout: Option<Duration>) -> Result<LockGuard, LockError> {
        let acquire = async {
            match timeout {
                Some(t) if t.is_zero() => self.lock.try_lock(self.mode).await,
                _ => {
                    let mut o = AcquireOptions::new().mode(self.mode);
                    o.timeout = timeout;
                    self.lock.lock(&o).await
                }
            }
        };
        waiting::acquire_reporting(name, acquire, || async {
            Some("another Redis client".to_owned())
        })
        .await
    }
}

pub(crate) async fn status(url: &str, args: &StatusArgs) -> Result<u8, CliError> {
    let locks = RedisLocks::connect(url).await?;
    let held = locks.list().await?;
    let text = if args.json {
        let rows: Vec<serde_json::Value> = held.iter().map(json_row).collect();
        serde_json::Value::Array(rows).to_string() + "\n"
    } else {
        let mut rows = vec![["NAME", "KIND", "HOLDERS", "TTL", "FENCING"].map(str::to_owned)];
        for info in &held {
            rows.push([
                info.name.clone(),
                info.kind.to_owned(),
                info.holders.to_string(),
                info.ttl
                    .map_or_else(|| "-".to_owned(), |t| format!("{:.1}s", t.as_secs_f64())),
                info.fencing_token
                    .map_or_else(|| "-".to_owned(), |t| t.to_string()),
            ]);
        }
        crate::format_table(&rows)
    };
    crate::print(&text)?;
    Ok(0)
}

/// The same keys as the file listing (`pid`, `host`, `since` are unknown on
/// Redis: null) plus `kind`, `holders`, `ttl_ms`, `fencing_token`.
fn json_row(info: &RedisLockInfo) -> serde_json::Value {
    serde_json::json!({
        "name": info.name,
        "held": info.holders > 0,
        "mode": (info.kind == "lock").then_some("exclusive"),
        "pid": null,
        "host": null,
        "since": null,
        "kind": info.kind,
        "holders": info.holders,
        "ttl_ms": info.ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        "fencing_token": info.fencing_token,
    })
}
