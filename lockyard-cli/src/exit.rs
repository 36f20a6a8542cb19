//! Exit codes and the one-line error every failure ends in.

use std::fmt;
use std::process::ExitCode;

use lockyard::LockError;

/// The lock could not be had (`-n`, or `-w` ran out); `-E N` replaces it.
pub(crate) const CONFLICT: u8 = 1;
/// EX_USAGE: bad arguments (unknown flag, bad DUR, bad lock name).
pub(crate) const USAGE: u8 = 64;
/// EX_NOINPUT: the lock directory given to `status`/`cleanup` does not exist.
pub(crate) const NO_INPUT: u8 = 66;
/// EX_UNAVAILABLE: the backend (Redis, Postgres) is down or refused us
/// (TLS included: an untrusted certificate, a plain server behind
/// rediss:// or sslmode=require).
pub(crate) const UNAVAILABLE: u8 = 69;
/// EX_SOFTWARE: an internal error.
pub(crate) const SOFTWARE: u8 = 70;
/// EX_OSERR: the OS failed us (cannot spawn COMMAND, signal setup failed).
pub(crate) const OS_ERR: u8 = 71;
/// EX_CANTCREAT: the lock directory or a lock file cannot be created.
pub(crate) const CANT_CREATE: u8 = 73;
/// EX_IOERR: any other I/O error.
pub(crate) const IO_ERR: u8 = 74;
/// EX_TEMPFAIL: the lock was lost while COMMAND ran (Redis); COMMAND was
/// terminated.
pub(crate) const LOCK_LOST: u8 = 75;
/// EX_PROTOCOL: the backend answered something unexpected.
pub(crate) const PROTOCOL: u8 = 76;
/// EX_NOPERM: permission denied, a path refused as unsafe, or a Redis ACL
/// user that may not run a command lockyard needs.
pub(crate) const NO_PERM: u8 = 77;
/// COMMAND exists but cannot be executed (as `env`, `timeout`, `nohup`).
pub(crate) const CANNOT_EXECUTE: u8 = 126;
/// COMMAND was not found (as `env`, `timeout`, `nohup`).
pub(crate) const NOT_FOUND: u8 = 127;

/// A failure: the exit code and one line for stderr (none when empty).
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl CliError {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }

    /// Prints the message (if any) and returns the exit code.
    pub(crate) fn report(self) -> ExitCode {
        if !self.message.is_empty() {
            eprintln!("lockyard: {}", self.message);
        }
        ExitCode::from(self.code)
    }
}

impl From<LockError> for CliError {
    fn from(err: LockError) -> Self {
        let code = lock_error_code(&err);
        match &err {
            // Redlock refuses to start without a reachable majority.
            LockError::NoQuorum {
                resource,
                granted,
                needed,
                total,
                errors,
            } if resource.is_empty() => {
                let why = errors.first().map(|e| format!(": {}", error_chain(e)));
                CliError::new(
                    code,
                    format!(
                        "only {granted} of {total} Redis servers are reachable ({needed} needed){}",
                        why.unwrap_or_default()
                    ),
                )
            }
            // The library names its option; the CLI's flag is the way here.
            LockError::UnsafePath { .. } => CliError::new(
                code,
                error_chain(&err).replace("set allow_foreign_dir", "pass --allow-foreign-dir"),
            ),
            _ => CliError::new(code, error_chain(&err)),
        }
    }
}

/// The exit code for a library error (contention is handled by the caller,
/// which knows `-E`).
pub(crate) fn lock_error_code(err: &LockError) -> u8 {
    match err {
        LockError::Timeout { .. } | LockError::WouldBlock { .. } => CONFLICT,
        LockError::InvalidName { .. }
        | LockError::InvalidArgument { .. }
        | LockError::Unsupported { .. } => USAGE,
        LockError::PermissionDenied { .. } | LockError::UnsafePath { .. } => NO_PERM,
        LockError::Io { op, .. } if op.contains("create") => CANT_CREATE,
        LockError::Io { .. } | LockError::UnsupportedFilesystem { .. } => IO_ERR,
        LockError::Unavailable { .. }
        | LockError::Backend { .. }
        | LockError::NoQuorum { .. }
        | LockError::Tls { .. } => UNAVAILABLE,
        LockError::NotPermitted { .. } => NO_PERM,
        LockError::Protocol { .. } => PROTOCOL,
        LockError::Lost { .. } => LOCK_LOST,
        _ => SOFTWARE,
    }
}

/// `err: source: source ...` on one line.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    OneLine(&out).to_string()
}

/// Collapses newlines so an error is always one line.
struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for part in self.0.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(part)?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn codes() {
        let io_err = |kind| io::Error::from(kind);
        assert_eq!(
            lock_error_code(&LockError::InvalidName {
                name: "".into(),
                reason: "empty"
            }),
            USAGE
        );
        assert_eq!(
            lock_error_code(&LockError::PermissionDenied {
                op: "open",
                path: "/x".into(),
                source: io_err(io::ErrorKind::PermissionDenied)
            }),
            NO_PERM
        );
        assert_eq!(
            lock_error_code(&LockError::Io {
                op: "create directory",
                path: "/x".into(),
                source: io_err(io::ErrorKind::Other)
            }),
            CANT_CREATE
        );
        assert_eq!(
            lock_error_code(&LockError::Unavailable {
                resource: "r".into(),
                op: "connect",
                source: "refused".into()
            }),
            UNAVAILABLE
        );
        assert_eq!(
            lock_error_code(&LockError::Lost {
                resource: "r".into()
            }),
            LOCK_LOST
        );
    }

    #[test]
    fn chain_is_one_line() {
        let err = LockError::Io {
            op: "open",
            path: "/x".into(),
            source: io::Error::other("multi\nline"),
        };
        let line = error_chain(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("/x") && line.contains("multi line"), "{line}");
    }
}
