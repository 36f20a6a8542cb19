//! `lockyard`: run commands under cross-process (file) or distributed
//! (Redis) locks, list locks, clean up stale lock files.
//!
//! ```text
//! lockyard exec [--dir DIR] [-s | -x] [-n] [-w DUR] [-E N] [-o] [-v] [--redis URL,...]
//!               [--ttl DUR] [--permits N | --rw] NAME (-- COMMAND [ARGS...] | -c LINE)
//! lockyard status  [--dir DIR] [--json] [--redis URL]
//! lockyard cleanup [--dir DIR] [--max-age DUR] [--dry-run]
//! ```
//!
//! Failures print one line on stderr and exit with a sysexits code (see
//! `lockyard exec --help`); nothing here panics on user or OS input.
#![warn(missing_debug_implementations, rust_2018_idioms)]
#![deny(unused_must_use, unsafe_op_in_unsafe_fn)]

#[path = "lockyard/args.rs"]
mod args;
#[path = "lockyard/child.rs"]
mod child;
#[path = "lockyard/duration.rs"]
mod duration;
#[path = "lockyard/exit.rs"]
mod exit;
#[path = "lockyard/files.rs"]
mod files;
#[cfg(feature = "redis")]
#[path = "lockyard/remote.rs"]
mod remote;
#[path = "lockyard/waiting.rs"]
mod waiting;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lockyard::LockError;

use crate::args::{Cli, Command, ExecArgs};
use crate::child::{End, Signals};
use crate::exit::CliError;

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == child::SENTINEL_ARG)
    {
        return child::sentinel_main();
    }
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(&e),
    };
    // An empty `LOCKYARD_REDIS` (or a stray comma) names no server.
    match &mut cli.command {
        Command::Exec(args) => args.redis.retain(|url| !url.is_empty()),
        Command::Status(args) => args.redis.retain(|url| !url.is_empty()),
        Command::Cleanup(_) => {}
    }
    init_tracing(cli.verbose);
    // A current-thread runtime: COMMAND is forked from the main thread, which
    // lives as long as lockyard (Linux's parent-death signal follows the
    // forking thread, not the process).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return CliError::new(exit::OS_ERR, format!("cannot start the runtime: {e}")).report();
        }
    };
    let result = runtime.block_on(run(&cli));
    // Every guard has been released inside `run`; do not wait for blocking
    // threads (a cancelled kernel wait) on the way out.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => e.report(),
    }
}

async fn run(cli: &Cli) -> Result<u8, CliError> {
    let ctx = Ctx {
        quiet: cli.quiet,
        verbose: cli.verbose > 0,
    };
    match &cli.command {
        Command::Exec(args) => {
            let mut signals = Signals::install()?;
            if args.redis.is_empty() {
                files::exec(&ctx, args, &mut signals).await
            } else {
                redis_exec(&ctx, args, &mut signals).await
            }
        }
        Command::Status(args) => match args.redis.as_slice() {
            [] => files::status(args).await,
            [url] => redis_status(url, args).await,
            _ => Err(CliError::usage("status --redis takes one server")),
        },
        Command::Cleanup(args) => files::cleanup(args).await,
    }
}

#[cfg(feature = "redis")]
async fn redis_exec(ctx: &Ctx, args: &ExecArgs, signals: &mut Signals) -> Result<u8, CliError> {
    remote::exec(ctx, args, signals).await
}

#[cfg(feature = "redis")]
async fn redis_status(url: &str, args: &args::StatusArgs) -> Result<u8, CliError> {
    remote::status(url, args).await
}

#[cfg(not(feature = "redis"))]
async fn redis_exec(_: &Ctx, _: &ExecArgs, _: &mut Signals) -> Result<u8, CliError> {
    Err(CliError::usage(
        "this lockyard was built without Redis support (feature `redis`)",
    ))
}

#[cfg(not(feature = "redis"))]
async fn redis_status(_: &str, _: &args::StatusArgs) -> Result<u8, CliError> {
    Err(CliError::usage(
        "this lockyard was built without Redis support (feature `redis`)",
    ))
}

/// Options shared by the subcommands' implementations.
#[derive(Debug)]
pub(crate) struct Ctx {
    quiet: bool,
    verbose: bool,
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
        let code = args.conflict_exit_code.unwrap_or(exit::CONFLICT);
        if self.quiet || (code == 0 && !self.verbose) {
            CliError::new(code, "")
        } else {
            CliError::new(code, waiting::conflict_message(name, holder, err))
        }
    }
}

/// Runs COMMAND while the caller holds lock `name` and returns lockyard's
/// exit code: COMMAND's, 128+signal, or [`exit::LOCK_LOST`] when `lost` fired.
/// When this returns, no process of COMMAND's tree is left.
pub(crate) async fn run_locked(
    args: &ExecArgs,
    envs: &[(&str, Option<String>)],
    lost: impl Future<Output = ()>,
    signals: &mut Signals,
) -> Result<u8, CliError> {
    let name = args.name.as_str();
    let command = match &args.shell_command {
        Some(line) => shell_command(line),
        None => args.command.clone(),
    };
    let child = child::spawn(&command, envs, signals)?;
    match child.supervise(signals, lost, args.close).await {
        End::Exited(code) => Ok(code),
        End::LockLost => Err(CliError::new(
            exit::LOCK_LOST,
            format!("lock `{name}` was lost while COMMAND ran; COMMAND was terminated"),
        )),
    }
}

/// `-c LINE`: `$SHELL -c LINE` if `$SHELL` is an absolute path, else
/// `/bin/sh -c LINE` (as flock(1)).
fn shell_command(line: &str) -> Vec<OsString> {
    let shell = std::env::var_os("SHELL")
        .filter(|s| std::path::Path::new(s).is_absolute())
        .unwrap_or_else(|| OsString::from("/bin/sh"));
    vec![shell, OsString::from("-c"), OsString::from(line)]
}

/// Writes to stdout; a closed or failing stdout is an I/O error, not a panic.
pub(crate) fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::new(exit::IO_ERR, format!("cannot write output: {e}")))
}

/// Left-aligned columns separated by two spaces.
pub(crate) fn format_table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// clap's errors: `--help`/`--version` print and exit 0; anything else is a
/// usage error, printed as one line, exit 64.
fn clap_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        return match e.print() {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(exit::IO_ERR),
        };
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return CliError::usage("missing subcommand: exec, status or cleanup (see --help)")
            .report();
    }
    let rendered = e.render().to_string();
    let mut paragraphs = rendered.split("\n\n");
    let what = paragraphs.next().unwrap_or_default();
    let what: Vec<&str> = what
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let what = what.join(" ");
    let what = what.strip_prefix("error: ").unwrap_or(&what);
    let usage = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .map(|u| format!(" (usage: {u}; see --help)"))
        .unwrap_or_default();
    CliError::usage(format!("{what}{usage}")).report()
}

/// `-v`: INFO events of lockyard (the library and this tool) to stderr;
/// `-vv` DEBUG, `-vvv` TRACE.
fn init_tracing(verbose: u8) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = match verbose {
        0 => return,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(verbose > 1);
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(Targets::new().with_target("lockyard", level))
        .try_init();
}
