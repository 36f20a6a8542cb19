//! `exec --postgres`: run COMMAND while holding a Postgres session advisory
//! lock (or, with `--permits N`, one permit of a semaphore).
//!
//! The lock's connection is probed every few seconds while COMMAND runs; if
//! the session is lost (the server restarted, the backend was terminated,
//! the connection died), COMMAND's whole process tree gets SIGTERM, then
//! SIGKILL after [`GRACE`](crate::supervisor::GRACE), and lockyard exits
//! with [`LOCK_LOST`](crate::exit::LOCK_LOST). COMMAND sees its fencing
//! token in `LOCKYARD_FENCING_TOKEN`.

use std::time::Duration;

use lockyard::postgres::{PgKey, PgLocks, PgOptions};
use lockyard::{AcquireOptions, Escaped, Lock, LockError, LockGuard, Mode};

use crate::args::ExecArgs;
use crate::exit::{self, CliError};
use crate::signals::Signals;
use crate::supervisor::{run_locked, signal_exit};
use crate::waiting::{self, Ctx};

/// The environment variable COMMAND finds its fencing token in.
const FENCING_ENV: &str = "LOCKYARD_FENCING_TOKEN";

pub(crate) async fn run(ctx: &Ctx, args: &ExecArgs, signals: &mut Signals) -> Result<u8, CliError> {
    let name = args.lock_name();
    let Some(url) = args.postgres.url.as_deref() else {
        return Err(CliError::usage("--postgres needs a URL"));
    };
    let timeout = ctx.timeout(args);
    let backend = tokio::select! {
        res = Backend::connect(url, args) => res?,
        sig = signals.recv_fatal() => return Ok(signal_exit(sig)),
    };
    let acquired = tokio::select! {
        res = backend.acquire(name, timeout) => res,
        sig = signals.recv_fatal() => return Ok(signal_exit(sig)),
    };
    let guard = match acquired {
        Ok(guard) => guard,
        Err(err) if err.is_contended() => {
            let who = backend.holder().await;
            return Err(ctx.conflict(args, name, who, &err));
        }
        Err(err) => return Err(err.into()),
    };
    let token = guard.fencing_token();
    tracing::info!(
        "holding `{}` on Postgres (fencing token {token:?})",
        Escaped(name)
    );
    let envs = [(FENCING_ENV, token.map(|t| t.to_string()))];
    let code = run_locked(args, &envs, guard.lost(), signals).await;
    if code.as_ref().is_err_and(|e| e.code == exit::LOCK_LOST) {
        // The session is gone, and its locks with it.
        drop(guard);
    } else if let Err(e) = guard.release().await
        && !ctx.quiet
    {
        eprintln!(
            "lockyard: warning: could not release `{}` (the server frees it when the \
             connection closes): {}",
            Escaped(name),
            exit::error_chain(&e)
        );
    }
    backend.client.shutdown().await;
    code
}

/// What `exec --postgres` locks with.
struct Backend {
    client: PgLocks,
    lock: Box<dyn Lock>,
    mode: Mode,
    /// The keys whose holders `-v` and the conflict line name.
    keys: Vec<PgKey>,
}

impl Backend {
    async fn connect(url: &str, args: &ExecArgs) -> Result<Self, LockError> {
        let name = args.lock_name();
        let mode = if args.shared {
            Mode::Shared
        } else {
            Mode::Exclusive
        };
        let mut opts = PgOptions::default();
        opts.tls = args.tls.settings();
        let client = PgLocks::connect_with(url, opts).await?;
        let (lock, keys): (Box<dyn Lock>, Vec<PgKey>) = match args.permits {
            Some(permits) => {
                let sem = client.semaphore(name, permits)?;
                let keys = sem
                    .permit_keys()
                    .iter()
                    .map(|k| PgKey::Single(*k))
                    .collect();
                (Box::new(sem), keys)
            }
            None => {
                let lock = client.lock(name)?;
                let key = lock.key();
                (Box::new(lock), vec![key])
            }
        };
        Ok(Backend {
            client,
            lock,
            mode,
            keys,
        })
    }

    /// Who holds it, for messages: `postgres backend pid N`, plus `and N
    /// more`; `None` when it cannot be told.
    async fn holder(&self) -> Option<String> {
        let held = self.client.list().await.ok()?;
        let pids: Vec<i32> = held
            .iter()
            .filter(|i| self.keys.contains(&i.key))
            .map(|i| i.pid)
            .collect();
        let first = pids.first()?;
        Some(match pids.len() {
            1 => format!("postgres backend pid {first}"),
            n => format!("postgres backend pid {first} and {} more", n - 1),
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
        waiting::acquire_reporting(name, acquire, || self.holder()).await
    }
}
