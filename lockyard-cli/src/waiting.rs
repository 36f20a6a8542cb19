//! Waiting for a lock while telling the user why (`--verbose`), and the
//! one-line conflict message.

use std::future::Future;
use std::time::{Duration, Instant};

use lockyard::{Escaped, LockError, Owner};

use crate::args::ExecArgs;
use crate::exit::CliError;

/// How often `--verbose` repeats who holds the lock while waiting.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// How `exec` reports a lock it cannot have: `--quiet`, `--verbose`.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) quiet: bool,
    pub(crate) verbose: bool,
}

impl Ctx {
    /// `-n` (or `-w 0`) → `Some(ZERO)`; `-w DUR` → `Some(DUR)`; else wait for ever.
    pub(crate) fn timeout(&self, args: &ExecArgs) -> Option<Duration> {
        if args.nonblock {
            Some(Duration::ZERO)
        } else {
            args.timeout
        }
    }

    /// The error for "the lock is held": `-E N` (default 1) and one line
    /// naming the holder, unless `--quiet`, or `-E 0` without `-v` (a
    /// skip that succeeds is silent, so cron mails nothing).
    pub(crate) fn conflict(
        &self,
        args: &ExecArgs,
        name: &str,
        holder: Option<String>,
        err: &LockError,
    ) -> CliError {
        let code = args.conflict_exit_code.unwrap_or(crate::exit::CONFLICT);
        if self.quiet || (code == 0 && !self.verbose) {
            CliError::new(code, "")
        } else {
            CliError::new(code, conflict_message(name, holder, err))
        }
    }
}

/// `pid 42 on build-07 since 2026-11-22T21:03:26Z (exclusive)`.
pub(crate) fn describe_owner(owner: &Owner) -> String {
    format!(
        "pid {} on {} since {} ({})",
        owner.pid,
        Escaped(&owner.host),
        humantime::format_rfc3339_seconds(owner.since),
        owner.mode
    )
}

/// Drives `acquire` to completion; while it is pending and INFO events are
/// enabled, logs who holds the lock (from `holder`) and how long the wait has
/// taken, at once and then every [`REPORT_EVERY`].
///
/// The holder query runs beside the acquisition, never in front of it, so it
/// cannot delay a hand-off or a timeout.
pub(crate) async fn acquire_reporting<T, A, H, HF>(
    name: &str,
    acquire: A,
    holder: H,
) -> Result<T, LockError>
where
    A: Future<Output = Result<T, LockError>>,
    H: Fn() -> HF,
    HF: Future<Output = Option<String>>,
{
    let name = Escaped(name);
    let start = Instant::now();
    let verbose = tracing::enabled!(tracing::Level::INFO);
    let report = async {
        if !verbose {
            return std::future::pending::<Result<T, LockError>>().await;
        }
        let mut tick = tokio::time::interval(REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let who = holder().await;
            let who = who.as_deref().unwrap_or("an unknown holder");
            tracing::info!(
                "waiting for lock `{name}`: held by {who}; waited {:.3}s",
                start.elapsed().as_secs_f64()
            );
        }
    };
    let result = tokio::select! {
        biased;
        result = acquire => result,
        never = report => never,
    };
    match &result {
        Ok(_) => tracing::info!(
            "acquired lock `{name}` after {:.3}s",
            start.elapsed().as_secs_f64()
        ),
        Err(e) => tracing::info!(
            "gave up on lock `{name}` after {:.3}s: {e}",
            start.elapsed().as_secs_f64()
        ),
    }
    result
}

/// The line printed when the lock cannot be had.
pub(crate) fn conflict_message(name: &str, holder: Option<String>, err: &LockError) -> String {
    let name = Escaped(name);
    let who = holder.map_or_else(
        || "held by another process".to_owned(),
        |h| format!("held by {h}"),
    );
    match err {
        LockError::Timeout { waited, .. } => format!(
            "lock `{name}` is {who}; gave up after {:.3}s",
            waited.as_secs_f64()
        ),
        _ => format!("lock `{name}` is {who}; not waiting (-n)"),
    }
}
