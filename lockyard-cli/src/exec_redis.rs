//! `exec --redis`: run COMMAND while holding a distributed lock.
//!
//! One URL: a [`RedisLocks`] lock, a semaphore (`--permits N`), or a RW
//! lock (`--rw`; `--shared` reads). Several URLs: Redlock over independent
//! servers (exclusive only; no fencing token, as Redlock cannot issue a
//! strictly increasing one). The library's watchdog renews the lease every
//! TTL/3 while COMMAND runs; if the lock is lost COMMAND's whole process tree
//! gets SIGTERM, then SIGKILL after [`GRACE`](crate::supervisor::GRACE), and lockyard exits
//! with [`LOCK_LOST`](crate::exit::LOCK_LOST). COMMAND sees its fencing token
//! in `LOCKYARD_FENCING_TOKEN`.

use std::time::Duration;

use lockyard::redis::{RedisLock, RedisLocks, RedisOptions, RedisRwLock, RedisSemaphore, Redlock};
use lockyard::{AcquireOptions, Escaped, Lock, LockError, LockGuard, Mode, Owner};

use crate::args::ExecArgs;
use crate::exit::{self, CliError};
use crate::signals::Signals;
use crate::supervisor::{run_locked, signal_exit};
use crate::waiting::{self, Ctx};

/// The lease when `--ttl` is not given.
const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// The environment variable COMMAND finds its fencing token in.
const FENCING_ENV: &str = "LOCKYARD_FENCING_TOKEN";

pub(crate) async fn run(ctx: &Ctx, args: &ExecArgs, signals: &mut Signals) -> Result<u8, CliError> {
    let name = args.lock_name();
    let mut opts = RedisOptions::new().ttl(args.ttl.unwrap_or(DEFAULT_TTL));
    opts.tls = args.tls.settings();
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
    tracing::info!(
        "holding `{}` on Redis (fencing token {token:?})",
        Escaped(name)
    );
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
            "lockyard: warning: could not release `{}` (it expires by itself within its TTL): {}",
            Escaped(name),
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
    /// A lock's holders, exclusive or shared (asked through the RW view of
    /// the same name, which lists both).
    Lock(RedisRwLock),
    Semaphore(RedisSemaphore),
    /// Redlock: several servers, each may name a different holder.
    Unknown,
}

impl Backend {
    /// One URL: a lock (exclusive, or shared with `--shared`; one name is
    /// one lock, so `--rw` changes nothing) or a semaphore (`--permits`).
    /// Several: Redlock (exclusive only).
    async fn connect(args: &ExecArgs, opts: RedisOptions) -> Result<Self, LockError> {
        let name = args.lock_name();
        let mode = if args.shared {
            Mode::Shared
        } else {
            Mode::Exclusive
        };
        if let [url] = args.redis.urls.as_slice() {
            let client = RedisLocks::connect_with(url, opts).await?;
            let (lock, who): (Box<dyn Lock>, Who) = match args.permits {
                Some(permits) => {
                    let sem = client.semaphore(name, permits)?;
                    (Box::new(sem.clone()), Who::Semaphore(sem))
                }
                None => {
                    let lock: RedisLock = client.lock(name)?;
                    (Box::new(lock), Who::Lock(client.rwlock(name)?))
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
        let redlock = Redlock::connect(&args.redis.urls, opts).await?;
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
            Who::Lock(rw) => rw.owners().await.unwrap_or_default(),
            Who::Semaphore(sem) => sem.owners().await.unwrap_or_default(),
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

/// `pid 42 on host since ... (mode)`, plus `and N more` for several.
fn describe_owners(owners: &[Owner]) -> Option<String> {
    let first = waiting::describe_owner(owners.first()?);
    Some(match owners.len() {
        1 => first,
        n => format!("{first} and {} more", n - 1),
    })
}
