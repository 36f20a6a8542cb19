//! The command line, declared with clap.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::duration::parse_duration;

/// The exit-code table, shared by `--help` and `exec --help`.
macro_rules! exit_codes {
    () => {
        "\
Exit codes:
  N        exec: COMMAND's own exit code (128+S if it was killed by signal S)
  1        exec: the lock is held (-n, or -w ran out); -E N changes it
  64       usage error (bad option, DUR, name, or combination)
  66       status/cleanup: the lock directory does not exist
  69       the backend (Redis, Postgres) is unavailable or refused us (TLS too: an
           untrusted or expired certificate, a plain server behind rediss:// or
           sslmode=require)
  70       internal error
  71       COMMAND could not be started (OS error)
  73       the lock directory or a lock file cannot be created
  74       other I/O error
  75       exec --redis/--postgres: the lock was lost while COMMAND ran; COMMAND's tree got
           SIGTERM, then SIGKILL 5 s later
  76       the backend answered something unexpected
  77       permission denied, an unsafe path (symlinked lock file, foreign
           directory), or a Redis ACL user that may not run a command lockyard needs
  126/127  COMMAND cannot be executed / was not found"
    };
}

const EXIT_CODES: &str = exit_codes!();

const EXEC_HELP: &str = concat!(
    "\
COMMAND runs with lockyard's stdio and environment, in a process group of its
own; the lock's file descriptor is not inherited (flock(1) passes it on).
The lock covers COMMAND's whole process tree: lockyard is a child subreaper
(Linux), and when COMMAND exits, or the lock is lost (--redis), every
descendant still running gets SIGTERM, then SIGKILL 5 s later; only then is
the lock released (flock(1) leaves them running). If lockyard itself dies,
COMMAND's process group gets SIGKILL at once (a descendant that left it with
setsid survives only this case).

Signals: HUP, INT, QUIT, TERM, USR1, USR2, ALRM, WINCH, CONT and TSTP sent to
lockyard or to its process group reach COMMAND's group once (flock(1)
forwards nothing). A signal the caller ignored (nohup) stays ignored for both.
In the foreground of a terminal, COMMAND's group gets the terminal, so Ctrl-C
and Ctrl-Z reach it directly. When COMMAND stops (Ctrl-Z, SIGTSTP), lockyard
stops too; SIGCONT resumes both. A signal received while waiting for the
lock ends the wait: exit 128+S. Under systemd, KillMode=mixed sends the stop
signal to lockyard only; the default control-group mode also signals COMMAND
directly, which then sees it twice. With --redis or --postgres, COMMAND
finds its fencing token in LOCKYARD_FENCING_TOKEN (unset for Redlock, which
has none).

A NAME with a `/`, or --file PATH, locks that file itself, as flock(1) does:
lockyard and flock(1) users of the same path exclude each other. As with
flock(1), its directory must exist (none is created: exit 73). --dir beside a
path is a usage error; $LOCKYARD_DIR, a default for NAMEs, does not apply.

Examples:
  lockyard exec nightly-report -- ./report.sh
  lockyard exec -n /var/lock/backup.lock -c 'rsync -a src/ dst/'   # as flock(1)
  lockyard exec -n -E 0 backup -- rsync -a src/ dst/     # skip if one runs
  lockyard exec -w 30s --redis redis://10.0.0.5/ deploy -- ./deploy.sh
  lockyard exec -w 30s --postgres postgres://app@db/app deploy -- ./deploy.sh

",
    exit_codes!()
);

/// Run commands under cross-process (file) or distributed (Redis) locks.
#[derive(Debug, Parser)]
#[command(name = "lockyard", version, after_long_help = EXIT_CODES)]
pub(crate) struct Cli {
    /// Print what lockyard does to stderr: who holds the lock and how long
    /// the wait has taken (-vv, -vvv: more detail).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub(crate) verbose: u8,

    /// Do not print why the lock could not be had.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run COMMAND while holding the lock NAME; exit with COMMAND's exit code.
    #[command(after_long_help = EXEC_HELP)]
    Exec(ExecArgs),
    /// List lock files (or, with --redis, held Redis locks).
    Status(StatusArgs),
    /// Remove stale lock files (free, and whose owner is gone or older than --max-age).
    Cleanup(CleanupArgs),
}

/// Where the lock files live.
#[derive(Debug, Args)]
pub(crate) struct DirArg {
    /// Lock directory [default: $LOCKYARD_DIR, else one per user whatever the
    /// session: /run/lock/lockyard-<uid> where /run/lock is a shared sticky
    /// directory, else /tmp/lockyard-<uid>].
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,

    /// Accept a lock directory owned by another user (not root), or a
    /// symbolic link not owned by root. Root-owned sticky directories
    /// (/tmp, /run/lock) and root's links (/var/lock) need no flag.
    #[arg(long)]
    pub(crate) allow_foreign_dir: bool,
}

/// Which Redis server(s), if any: `exec` locks there, `status` lists there.
#[derive(Debug, Args)]
pub(crate) struct RedisArg {
    /// Use the Redis server at URL instead of lock files: `exec` renews the
    /// lease while COMMAND runs (exit 75 if it is lost anyway), `status`
    /// lists the locks held there. A Redis Cluster node's URL is detected
    /// and the whole cluster used; `redis+cluster://HOST:PORT,HOST:PORT/`
    /// names several seed nodes; `redis+sentinel://HOST:PORT,HOST:PORT/NAME`
    /// the sentinels of a Sentinel-managed primary and its master NAME
    /// (rediss+ for TLS). Several URLs (repeated, or separated by commas;
    /// independent servers, 3 or 5) mean Redlock. Set LOCKYARD_REDIS empty
    /// to use files.
    #[arg(
        id = "redis",
        long = "redis",
        value_name = "URL",
        env = "LOCKYARD_REDIS",
        value_delimiter = ','
    )]
    pub(crate) urls: Vec<String>,
}

/// The TLS files, for whichever backend is used: `rediss://` Redis URLs,
/// Postgres URLs whose `sslmode` asks for TLS.
#[derive(Debug, Args)]
pub(crate) struct TlsArg {
    /// Trust the CA certificates in FILE (PEM) instead of the system's roots,
    /// for rediss:// URLs and Postgres TLS (sslmode=prefer, the default,
    /// require, verify-ca, verify-full): the CA of a private or managed
    /// server. The server's certificate is always checked (with Postgres
    /// also its name, except with sslmode=verify-ca, which needs this CA);
    /// there is no flag to skip that.
    #[arg(long, value_name = "FILE", env = "LOCKYARD_TLS_CA")]
    pub(crate) tls_ca: Option<PathBuf>,

    /// Present the client certificate in FILE (PEM) to a server that
    /// requires one (mutual TLS); needs --tls-key.
    #[arg(
        long,
        value_name = "FILE",
        env = "LOCKYARD_TLS_CERT",
        requires = "tls_key"
    )]
    pub(crate) tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "LOCKYARD_TLS_KEY",
        requires = "tls_cert"
    )]
    pub(crate) tls_key: Option<PathBuf>,
}

impl TlsArg {
    /// The TLS files given (read when the client connects), for a
    /// backend's options' `tls`.
    pub(crate) fn settings(&self) -> lockyard::TlsSettings {
        let mut tls = lockyard::TlsSettings::default();
        if let Some(ca) = &self.tls_ca {
            tls = tls.ca(ca);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            tls = tls.client_cert(cert, key);
        }
        tls
    }
}

impl RedisArg {
    /// Drops empty URLs (an empty LOCKYARD_REDIS means files), and joins
    /// the seeds of a `redis+cluster://h1:p1,h2:p2/` URL and the sentinels
    /// of a `redis+sentinel://h1:p1,h2:p2/name` URL back together (the
    /// comma that separates Redlock servers also separates those hosts: a
    /// piece without a scheme continues the URL before it).
    pub(crate) fn normalize(&mut self) {
        let mut urls: Vec<String> = Vec::new();
        for url in self.urls.drain(..).filter(|url| !url.is_empty()) {
            match urls.last_mut() {
                Some(prev)
                    if [
                        "redis+cluster://",
                        "rediss+cluster://",
                        "redis+sentinel://",
                        "rediss+sentinel://",
                    ]
                    .iter()
                    .any(|scheme| prev.starts_with(scheme))
                        && !url.contains("://") =>
                {
                    prev.push(',');
                    prev.push_str(&url);
                }
                _ => urls.push(url),
            }
        }
        self.urls = urls;
    }
}

/// Which Postgres database, if any: `exec` locks there (session advisory
/// locks), `status` lists the advisory locks held there.
#[derive(Debug, Args)]
pub(crate) struct PostgresArg {
    /// Use the Postgres database at URL (postgres://USER:PASSWORD@HOST:PORT/DB)
    /// instead of lock files: `exec` holds a session advisory lock while
    /// COMMAND runs (exit 75 if the session is lost), `status` lists the
    /// advisory locks held in that database. TLS as the URL's sslmode says
    /// (?sslmode=verify-full; prefer when none: TLS when the server offers
    /// it, its certificate checked), with --tls-ca and --tls-cert. Set
    /// LOCKYARD_POSTGRES empty to use files. Not with --redis.
    #[arg(
        id = "postgres",
        long = "postgres",
        value_name = "URL",
        env = "LOCKYARD_POSTGRES",
        conflicts_with = "redis"
    )]
    pub(crate) url: Option<String>,
}

impl PostgresArg {
    /// An empty LOCKYARD_POSTGRES means files.
    pub(crate) fn normalize(&mut self) {
        if self.url.as_deref() == Some("") {
            self.url = None;
        }
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("distributed").args(["redis", "postgres"])))]
pub(crate) struct ExecArgs {
    #[command(flatten)]
    pub(crate) dir: DirArg,

    /// Take a shared lock (readers share, an exclusive holder excludes them;
    /// on files and on Redis alike).
    #[arg(short, long)]
    pub(crate) shared: bool,

    /// Take an exclusive lock (the default; -e is flock(1)'s spelling too).
    #[arg(short = 'x', short_alias = 'e', long, conflicts_with = "shared")]
    pub(crate) exclusive: bool,

    /// Release the lock when COMMAND exits and leave its background
    /// processes running, without the lock (flock(1) -o: they do not keep
    /// the lock). Without -o they are stopped before the lock is released.
    #[arg(short = 'o', long)]
    pub(crate) close: bool,

    /// Fail at once if the lock is held (same as -w 0).
    #[arg(short, long)]
    pub(crate) nonblock: bool,

    /// Give up after DUR (2.5, 500ms, 30s, 2m, 1h); the default waits for ever.
    #[arg(short = 'w', long, value_name = "DUR", value_parser = parse_duration,
          allow_negative_numbers = true)]
    pub(crate) timeout: Option<Duration>,

    /// Exit code when the lock cannot be had [default: 1].
    #[arg(short = 'E', long, value_name = "N")]
    pub(crate) conflict_exit_code: Option<u8>,

    #[command(flatten)]
    pub(crate) redis: RedisArg,

    #[command(flatten)]
    pub(crate) postgres: PostgresArg,

    #[command(flatten)]
    pub(crate) tls: TlsArg,

    /// Redis lease time-to-live; renewed about every TTL/3 while COMMAND runs
    /// [default: 30s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration, requires = "redis")]
    pub(crate) ttl: Option<Duration>,

    /// Redis: send signal SIG (a name such as USR1, or a number) to COMMAND's
    /// process group when the lease becomes suspect (a renewal failed; the
    /// lease may still be renewed before it runs out), and again each time
    /// it becomes suspect after being renewed.
    #[arg(long, value_name = "SIG", requires = "redis", value_parser = parse_signal)]
    pub(crate) on_suspect: Option<i32>,

    /// Semaphore NAME (Redis or Postgres): up to N holders run at once.
    #[arg(long, value_name = "N", requires = "distributed", conflicts_with_all = ["shared", "rw"],
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) permits: Option<u32>,

    /// Accepted for compatibility, and changes nothing: on Redis and
    /// Postgres, one name is one lock, whose exclusive holder is the RW
    /// lock's writer and whose shared holders (-s) are its readers.
    #[arg(long, requires = "distributed")]
    pub(crate) rw: bool,

    /// Lock the file PATH itself, exactly as flock(1) does (no .lock added;
    /// its directory must exist; not with --dir); lockyard and flock(1)
    /// users of PATH exclude each other. Then there is no NAME.
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,

    /// The lock's name ([A-Za-z0-9._-] maps to <DIR>/<NAME>.lock; anything
    /// else is escaped). A NAME with a `/` is a path, locked as --file PATH.
    #[arg(required_unless_present = "file")]
    pub(crate) name: Option<String>,

    /// Run this shell command ($SHELL -c, else /bin/sh -c, as flock(1)
    /// -c) instead of COMMAND.
    #[arg(
        short = 'c',
        long = "command",
        value_name = "SHELL_COMMAND",
        conflicts_with = "command"
    )]
    pub(crate) shell_command: Option<String>,

    /// The command to run, and its arguments (after `--`, or directly).
    #[arg(
        required_unless_present_any = ["shell_command", "file"],
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub(crate) command: Vec<OsString>,
}

impl ExecArgs {
    /// With `--file PATH` clap takes COMMAND's first word for NAME: give it
    /// back to COMMAND.
    pub(crate) fn normalize(&mut self) -> Result<(), String> {
        if self.file.is_some()
            && let Some(word) = self.name.take()
        {
            if self.shell_command.is_some() {
                return Err(format!("unexpected argument {word:?} beside --file and -c"));
            }
            self.command.insert(0, OsString::from(word));
        }
        if self.command.is_empty() && self.shell_command.is_none() {
            return Err("no COMMAND given (after NAME, or -c SHELL_COMMAND)".into());
        }
        self.redis.normalize();
        self.postgres.normalize();
        if !self.redis.urls.is_empty() && self.postgres.url.is_some() {
            return Err("--redis and --postgres are two backends: give one".into());
        }
        if self.lock_path().is_none() {
            return Ok(());
        }
        if !self.redis.urls.is_empty() || self.postgres.url.is_some() {
            return Err(
                "a path (--file, or a NAME with `/`) is a file lock: not with --redis or \
                 --postgres"
                    .into(),
            );
        }
        // Only the flag: $LOCKYARD_DIR is a default for NAMEs, not a choice
        // made for this path.
        if self.dir.dir.is_some() {
            return Err(match &self.file {
                Some(_) => "--file PATH is locked where it is: --dir does not apply \
                            (drop one of them)"
                    .into(),
                None => format!(
                    "NAME {:?} has a `/`, so it is a path, locked where it is: --dir does \
                     not apply (drop --dir, or give a NAME without `/`)",
                    self.lock_name()
                ),
            });
        }
        Ok(())
    }

    /// The path to lock as flock(1) does: `--file`, or a NAME with a `/`.
    pub(crate) fn lock_path(&self) -> Option<PathBuf> {
        self.file.clone().or_else(|| {
            self.name
                .as_deref()
                .filter(|n| n.contains('/'))
                .map(PathBuf::from)
        })
    }

    /// The lock's name for messages and the library: NAME, or the path.
    pub(crate) fn lock_name(&self) -> &str {
        match (&self.name, &self.file) {
            (Some(name), _) => name,
            (None, Some(path)) => path.to_str().unwrap_or("<non-UTF-8 path>"),
            (None, None) => "",
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) dir: DirArg,

    /// Print one JSON array of {name, held, mode, pid, host, since} (the
    /// holder's; null when free), plus for files holder_pids (the kernel's
    /// holders), stale and record (a past holder's record in a free file).
    #[arg(long)]
    pub(crate) json: bool,

    #[command(flatten)]
    pub(crate) redis: RedisArg,

    #[command(flatten)]
    pub(crate) postgres: PostgresArg,

    #[command(flatten)]
    pub(crate) tls: TlsArg,
}

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    #[command(flatten)]
    pub(crate) dir: DirArg,

    /// Also remove free lock files older than DUR, even if their owner may live.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) max_age: Option<Duration>,

    /// List what would be removed; remove nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// Also remove free lock files that hold no lockyard owner record
    /// (empty files, files another tool wrote). By default they are kept:
    /// their lock may be an fcntl/lockf lock, which flock cannot see.
    #[arg(long)]
    pub(crate) unrecorded: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cluster_seeds_stay_one_url_and_redlock_servers_split() {
        let parse = |argv: &[&str]| {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Status(mut s) = cli.command else {
                panic!("not status")
            };
            s.redis.normalize();
            s.redis.urls
        };
        assert_eq!(
            parse(&["lockyard", "status", "--redis", "redis+cluster://a:1,b:2/"]),
            ["redis+cluster://a:1,b:2/"]
        );
        assert_eq!(
            parse(&[
                "lockyard",
                "status",
                "--redis",
                "redis://a:1,redis://b:2,redis://c:3"
            ]),
            ["redis://a:1", "redis://b:2", "redis://c:3"]
        );
        assert_eq!(
            parse(&[
                "lockyard",
                "status",
                "--redis",
                "redis+cluster://a:1,b:2,redis://c:3"
            ]),
            ["redis+cluster://a:1,b:2", "redis://c:3"]
        );
        assert_eq!(
            parse(&[
                "lockyard",
                "status",
                "--redis",
                "redis+sentinel://a:1,b:2,c:3/main"
            ]),
            ["redis+sentinel://a:1,b:2,c:3/main"]
        );
        assert_eq!(
            parse(&[
                "lockyard",
                "status",
                "--redis",
                "rediss+sentinel://a:1,b:2/main,redis://c:3"
            ]),
            ["rediss+sentinel://a:1,b:2/main", "redis://c:3"]
        );
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn command_with_and_without_double_dash() {
        for argv in [
            &["lockyard", "exec", "-n", "job", "--", "echo", "-n", "x"][..],
            &["lockyard", "exec", "-n", "job", "echo", "-n", "x"][..],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Exec(e) = cli.command else {
                panic!("not exec")
            };
            assert!(e.nonblock);
            assert_eq!(e.name.as_deref(), Some("job"));
            assert_eq!(e.command, ["echo", "-n", "x"]);
        }
    }

    #[test]
    fn shell_command_replaces_command() {
        let cli = Cli::try_parse_from(["lockyard", "exec", "-x", "job", "-c", "echo hi"]).unwrap();
        let Command::Exec(e) = cli.command else {
            panic!("not exec")
        };
        assert!(e.exclusive);
        assert_eq!(e.shell_command.as_deref(), Some("echo hi"));
        assert!(e.command.is_empty());
        assert!(Cli::try_parse_from(["lockyard", "exec", "job"]).is_err());
    }
}

/// `--on-suspect SIG`: a signal name (`USR1`, `SIGUSR1`, any case) or
/// number. The stops of job control (and SIGSTOP) are refused: COMMAND would
/// stay stopped with the lock held.
fn parse_signal(text: &str) -> Result<i32, String> {
    const NAMES: [(&str, i32); 14] = [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("ABRT", libc::SIGABRT),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("CONT", libc::SIGCONT),
        ("URG", libc::SIGURG),
        ("WINCH", libc::SIGWINCH),
        ("PWR", libc::SIGPWR),
    ];
    const STOPS: [i32; 4] = [libc::SIGSTOP, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU];
    let upper = text.trim().to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let sig = match name.parse::<i32>() {
        Ok(n) if (1..=libc::SIGRTMAX()).contains(&n) => n,
        Ok(_) => return Err(format!("{text:?} is not a signal number")),
        Err(_) => match NAMES.iter().find(|(n, _)| *n == name) {
            Some(&(_, sig)) => sig,
            None => {
                return Err(format!(
                    "{text:?} is not a signal name (try USR1, TERM or a number)"
                ));
            }
        },
    };
    if STOPS.contains(&sig) {
        return Err(format!(
            "{text:?} stops COMMAND, which would then hold the lock stopped"
        ));
    }
    Ok(sig)
}

#[cfg(test)]
mod signal_tests {
    use super::parse_signal;

    #[test]
    fn signal_names_and_numbers() {
        assert_eq!(parse_signal("USR1"), Ok(libc::SIGUSR1));
        assert_eq!(parse_signal("sigterm"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("10"), Ok(10));
        assert!(parse_signal("STOP").is_err());
        assert!(parse_signal("TSTP").is_err());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("999").is_err());
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("").is_err());
    }
}
