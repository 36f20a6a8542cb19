//! `lockyard`: run commands under cross-process (file) or distributed
//! (Redis, Postgres) locks, list locks, clean up stale lock files.
//!
//! ```text
//! lockyard exec [--dir DIR] [-s | -x] [-n] [-w DUR] [-E N] [-o] [-v] [--redis URL,... | --postgres URL]
//!               [--ttl DUR] [--permits N | --rw] NAME (-- COMMAND [ARGS...] | -c LINE)
//! lockyard status  [--dir DIR] [--json] [--redis URL | --postgres URL]
//! lockyard cleanup [--dir DIR] [--max-age DUR] [--dry-run]
//! ```
//!
//! # Layout
//!
//! A stack: a file imports only files below it, and nothing imports this one.
//!
//! ```text
//! main.rs                                   parse, runtime, dispatch
//! exec.rs → exec_redis.rs exec_postgres.rs exec (files; --redis; --postgres)
//! status.rs   cleanup.rs                    the other subcommands
//! lockdir.rs                                which lock directory
//! supervisor.rs                             COMMAND's tree: spawn, supervise, stop
//! signals.rs   group_keeper.rs   terminal.rs   what it is built from
//! waiting.rs                                waiting for a lock, the conflict line
//! output.rs   args.rs → duration.rs   exit.rs
//! ```
//!
//! Failures print one line on stderr and exit with a sysexits code (see
//! `lockyard exec --help`); nothing here panics on user or OS input.
#![warn(missing_debug_implementations, rust_2018_idioms)]
#![deny(unused_must_use, unsafe_op_in_unsafe_fn)]

mod args;
mod cleanup;
mod duration;
mod exec;
#[cfg(feature = "postgres")]
mod exec_postgres;
#[cfg(feature = "redis")]
mod exec_redis;
mod exit;
mod group_keeper;
mod lockdir;
mod output;
mod signals;
mod status;
mod supervisor;
#[cfg(unix)]
mod terminal;
mod waiting;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::exit::CliError;
use crate::waiting::Ctx;

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == group_keeper::KEEPER_ARG)
    {
        return group_keeper::keeper_main();
    }
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(&e),
    };
    // An empty `LOCKYARD_REDIS` (or a stray comma) names no server.
    match &mut cli.command {
        Command::Exec(args) => {
            if let Err(e) = args.normalize() {
                return CliError::usage(e).report();
            }
        }
        Command::Status(args) => {
            args.redis.normalize();
            args.postgres.normalize();
        }
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
        Command::Exec(args) => exec::run(&ctx, args).await,
        Command::Status(args) => status::run(args).await,
        Command::Cleanup(args) => cleanup::run(args).await,
    }
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
