//! `exec --redis` and `status --redis`: distributed locks.
//!
//! One URL: a [`RedisLocks`] lock, a semaphore (`--permits N`), or a RW
//! lock (`--rw`; `--shared` reads). Several URLs: Redlock over independent
//! servers (exclusive only; no fencing token, as Redlock cannot issue a
//! strictly increasing one). The library's watchdog renews the lease every
//! TTL/3 while COMMAND runs; if the lock is lost COMMAND's whole process tree
//! gets SIGTERM, then SIGKILL after [`GRACE`](crate::child::GRACE), and lockyard exits
//! with [`LOCK_LOST`](crate::exit::LOCK_LOST). COMMAND sees its fencing token
//! in `LOCKYARD_FENCING_TOKEN`.

use std::time::Duration;

use lockyard::redis::{
    RedisLock, RedisLockInfo, RedisLocks, RedisOptions, RedisRwLock, RedisSemaphore, Redlock,
};
use lockyard::{AcquireOptions, Lock, LockError, LockGuard, Mode, Owner};

use crate::args::{ExecArgs, StatusArgs};
use crate::child::{Signals, signal_exit};
use crate::exit::{self, CliError};
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
        sig = signals.recv_fatal() => return Ok(signal_exit(sig)),
    };
    let acquired = tokio::select! {
        res = backend.acquire(name, timeout) => res,
        sig = signals.recv_fatal() => return Ok(signal_exit(sig)),
    };
    let guard = match acquired {
        Ok(guard) => guard,
        Err(err) if err.is_contended() => {
            let who = match err.holder() {
                Some(owner) => waiting::describe_owner(owner),
                None => backend.holder().await,
            };
            return Err(ctx.conflict(args, name, Some(who), &err));
        }
        Err(err) => return Err(err.into()),
    };
    let token = guard.fencing_token();
    tracing::info!("holding `{name}` on Redis (fencing token {token:?})");
    // Unset rather than inherited from an outer lockyard when there is none.
    let envs = [(FENCING_ENV, token.map(|t| t.to_string()))];
    let code = run_locked(args, &envs, guard.lost(), signals).await;
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
    /// The same lock, to ask who holds it (one server only).
    who: Who,
}

/// What `-v` asks who holds the lock.
enum Who {
    Lock(RedisLock),
    Semaphore(RedisSemaphore),
    RwLock(RedisRwLock),
    /// Redlock: several servers, each may name a different holder.
    Unknown,
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
            let (lock, who): (Box<dyn Lock>, Who) = match args.permits {
                Some(permits) => {
                    let sem = client.semaphore(name, permits)?;
                    (Box::new(sem.clone()), Who::Semaphore(sem))
                }
                None if args.rw || args.shared => {
                    let rw = client.rwlock(name)?;
                    (Box::new(rw.clone()), Who::RwLock(rw))
                }
                None => {
                    let lock = client.lock(name)?;
                    (Box::new(lock.clone()), Who::Lock(lock))
                }
            };
            return Ok(Backend { lock, mode, who });
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
            who: Who::Unknown,
        })
    }

    /// Who holds the lock, for messages: `pid 42 on host since ... (mode)`,
    /// with `and N more` for several holders; "another Redis client" when
    /// it cannot be told (Redlock, a foreign value, an error).
    async fn holder(&self) -> String {
        let owners: Vec<Owner> = match &self.who {
            Who::Lock(lock) => lock.owner().await.ok().flatten().into_iter().collect(),
            Who::Semaphore(sem) => sem.owners().await.unwrap_or_default(),
            Who::RwLock(rw) => rw.owners().await.unwrap_or_default(),
            Who::Unknown => Vec::new(),
        };
        describe_owners(&owners).unwrap_or_else(|| "another Redis client".to_owned())
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
        waiting::acquire_reporting(name, acquire, || async { Some(self.holder().await) }).await
    }
}

pub(crate) async fn status(url: &str, args: &StatusArgs) -> Result<u8, CliError> {
    let locks = RedisLocks::connect(url).await?;
    let held = locks.list().await?;
    let text = if args.json {
        let rows: Vec<serde_json::Value> = held.iter().map(json_row).collect();
        serde_json::Value::Array(rows).to_string() + "\n"
    } else {
        let mut rows = vec![
            [
                "NAME", "KIND", "HOLDERS", "TTL", "FENCING", "PID", "HOST", "SINCE",
            ]
            .map(str::to_owned),
        ];
        let dash = || "-".to_owned();
        for info in &held {
            // The longest holder; `--json` lists them all.
            let owner = info.owners.first();
            rows.push([
                info.name.clone(),
                info.kind.to_owned(),
                info.holders.to_string(),
                info.ttl
                    .map_or_else(dash, |t| format!("{:.1}s", t.as_secs_f64())),
                info.fencing_token.map_or_else(dash, |t| t.to_string()),
                owner.map_or_else(dash, |o| o.pid.to_string()),
                owner.map_or_else(dash, |o| o.host.clone()),
                owner.map_or_else(dash, |o| {
                    humantime::format_rfc3339_seconds(o.since).to_string()
                }),
            ]);
        }
        crate::format_table(&rows)
    };
    crate::print(&text)?;
    Ok(0)
}

/// `pid 42 on host since ... (mode)`, plus `and N more` for several.
fn describe_owners(owners: &[Owner]) -> Option<String> {
    let first = waiting::describe_owner(owners.first()?);
    Some(match owners.len() {
        1 => first,
        n => format!("{first} and {} more", n - 1),
    })
}

/// The same keys as the file listing (`pid`, `host`, `since` of the
/// longest holder, null when unknown) plus `kind`, `holders`, `ttl_ms`,
/// `fencing_token`, and `owners` (every holder lockyard can identify).
fn json_row(info: &RedisLockInfo) -> serde_json::Value {
    let owner = info.owners.first();
    let since = |o: &Owner| humantime::format_rfc3339_millis(o.since).to_string();
    let mode = match info.kind {
        "lock" => Some("exclusive"),
        "rwlock" => owner.map(|o| o.mode.as_str()),
        _ => None,
    };
    let owners: Vec<serde_json::Value> = info
        .owners
        .iter()
        .map(|o| {
            serde_json::json!({
                "pid": o.pid,
                "host": o.host,
                "since": since(o),
                "mode": o.mode.as_str(),
            })
        })
        .collect();
    serde_json::json!({
        "name": info.name,
        "held": info.holders > 0,
        "mode": mode,
        "pid": owner.map(|o| o.pid),
        "host": owner.map(|o| o.host.as_str()),
        "since": owner.map(since),
        "kind": info.kind,
        "holders": info.holders,
        "owners": owners,
        "ttl_ms": info.ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        "fencing_token": info.fencing_token,
    })
}
