//! [`LockError`], the one error type every backend returns.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::options::Mode;
use crate::owner::Owner;
use crate::text::Escaped;

/// A boxed error from a backend library (redis, bb8, …).
///
/// ```
/// let err: lockyard::BoxError = "connection reset".into();
/// assert_eq!(err.to_string(), "connection reset");
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong taking, holding or releasing a lock.
///
/// Every variant says which resource (or path) it is about. Contention
/// ([`Timeout`](Self::Timeout), [`WouldBlock`](Self::WouldBlock)) is kept
/// apart from outage ([`Unavailable`](Self::Unavailable), [`Io`](Self::Io))
/// so callers can tell "someone else has it" from "the backend is broken":
///
/// ```
/// use std::time::Duration;
/// use lockyard::LockError;
///
/// let err = LockError::Timeout { resource: "db".into(), waited: Duration::from_secs(1), holder: None };
/// assert!(err.is_timeout() && err.is_contended() && !err.is_unavailable());
/// assert_eq!(err.resource(), Some("db"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock was held by someone else for the whole timeout.
    #[error("timed out after {} waiting for {}{}", Waited(*waited), Subject("lock", resource), HolderSuffix(holder.as_deref()))]
    Timeout {
        /// The resource name.
        resource: String,
        /// How long the caller waited.
        waited: Duration,
        /// Who held it when we gave up, when known.
        holder: Option<Box<Owner>>,
    },
    /// A non-blocking attempt found the lock held.
    #[error("{} is held{}", Subject("lock", resource), HolderSuffix(holder.as_deref()))]
    WouldBlock {
        /// The resource name.
        resource: String,
        /// Who holds it, when known.
        holder: Option<Box<Owner>>,
    },
    /// The resource name cannot be used.
    #[error("invalid lock name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An argument (duration, URL, count, …) is out of range or malformed.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The backend cannot do what was asked (for example a shared mode).
    #[error("`{resource}`: {what} is not supported by this backend", resource = Escaped(resource))]
    Unsupported {
        /// The resource name.
        resource: String,
        /// What is unsupported.
        what: &'static str,
    },
    /// The OS refused access to a lock file or directory.
    #[error("permission denied to {op} {}", Escaped(path.display()))]
    PermissionDenied {
        /// What we were doing (`"open"`, `"create directory"`, …).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A path was refused for safety: a symlinked lock file, a lock directory
    /// that is a symlink root does not own or is owned by another user, a
    /// non-regular file.
    #[error("refusing {}: {reason}", Escaped(path.display()))]
    UnsafePath {
        /// The path concerned.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// The file system does not support `flock`-style locks (some network
    /// file systems).
    #[error("the file system holding {} does not support file locks", Escaped(path.display()))]
    UnsupportedFilesystem {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Any other I/O error on a lock file or directory.
    #[error("I/O error while trying to {op} {}", Escaped(path.display()))]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The backend could not be reached or did not answer in time
    /// (connection refused or reset, pool timeout, server loading).
    #[error("backend unavailable while trying to {op} `{resource}`", resource = Escaped(resource))]
    Unavailable {
        /// The resource name.
        resource: String,
        /// What we were doing.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The backend answered with an error (authentication, script error,
    /// permissions) that retrying will not fix.
    #[error("backend refused to {op} `{resource}`", resource = Escaped(resource))]
    Backend {
        /// The resource name.
        resource: String,
        /// What we were doing.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The backend answered something we did not expect (wrong type, bad value).
    #[error("unexpected reply while trying to {op} `{resource}`: {detail}", resource = Escaped(resource), detail = Escaped(detail))]
    Protocol {
        /// The resource name.
        resource: String,
        /// What we were doing.
        op: &'static str,
        /// What was wrong with the reply.
        detail: String,
    },
    /// Too few of several independent servers granted the lock (Redlock).
    #[error("`{resource}`: only {granted} of {total} servers granted the lock ({needed} needed)", resource = Escaped(resource))]
    NoQuorum {
        /// The resource name.
        resource: String,
        /// How many servers granted it.
        granted: usize,
        /// How many are needed.
        needed: usize,
        /// How many there are.
        total: usize,
        /// The errors of the servers that failed, if any failed (rather than
        /// refused because of contention).
        errors: Vec<LockError>,
    },
    /// The holder can no longer be sure it holds the lock (expired, taken
    /// over, renewal failed past validity).
    #[error("lock `{resource}` was lost", resource = Escaped(resource))]
    Lost {
        /// The resource name.
        resource: String,
    },
    /// An operation that needs ownership (release, extend) found the lock
    /// held by someone else or by nobody.
    #[error("lock `{resource}` is not held by this owner", resource = Escaped(resource))]
    NotHeld {
        /// The resource name.
        resource: String,
    },
    /// The lock or semaphore was closed.
    #[error("{} is closed", Subject("", resource))]
    Closed {
        /// The resource name.
        resource: String,
    },
    /// Every permit of a semaphore was taken: for the whole timeout
    /// (`timed_out`), or when a non-blocking attempt asked.
    ///
    /// This is *saturation* (a capacity limit reached), not a lock held by
    /// someone: an HTTP service answers it with 429 where it answers
    /// [`Timeout`](Self::Timeout) and [`WouldBlock`](Self::WouldBlock) with
    /// 409. It still counts as [`is_contended`](Self::is_contended), and as
    /// [`is_timeout`](Self::is_timeout) or
    /// [`is_would_block`](Self::is_would_block) according to `timed_out`, so
    /// code written before this variant keeps its meaning;
    /// [`is_saturated`](Self::is_saturated) tells it apart.
    #[error("every permit of {} {}", Subject("semaphore", resource), SaturatedSuffix(*timed_out, *waited))]
    Saturated {
        /// The resource name.
        resource: String,
        /// Whether the caller waited for a permit and gave up (`false`: a
        /// non-blocking attempt).
        timed_out: bool,
        /// How long the caller waited, when known.
        waited: Option<Duration>,
    },
    /// The name is in use as another kind of lock (one name is one lock: a
    /// Redis name held as a semaphore cannot be locked, and the reverse).
    #[error("`{resource}` is in use as a {in_use_as}, not as a {requested}")]
    WrongKind {
        /// The resource name.
        resource: String,
        /// What the name is in use as (`"lock"`, `"semaphore"`).
        in_use_as: &'static str,
        /// What was asked for.
        requested: &'static str,
    },
    /// A TLS connection to the backend could not be set up; `problem` says
    /// why (an untrusted or expired certificate, a plain server behind a
    /// `rediss://` URL or `sslmode=require`, a TLS-only port behind a
    /// `redis://` one, …).
    /// Retrying will not fix it: the configuration must change.
    #[error("TLS to {server}: {problem}", server = Escaped(server))]
    Tls {
        /// The server, as its URL without a password.
        server: String,
        /// What went wrong.
        problem: TlsProblem,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The backend's access control does not let this client's user run a
    /// command lockyard needs (Redis ACL users): found at connect time,
    /// not at the first release.
    #[error("Redis user `{user}` may not run `{command}`, which lockyard needs: {reason}", user = Escaped(user), reason = Escaped(reason))]
    NotPermitted {
        /// The user the client authenticated as (`default` without one).
        user: String,
        /// The command refused (`EVALSHA`, `SCRIPT LOAD`, `PUBLISH`, …).
        command: String,
        /// The server's explanation (the command, a key or a channel).
        reason: String,
    },
    /// A semaphore in use with another permit count than the caller's.
    #[error("semaphore `{resource}` is in use with {stored} permits, not {requested}")]
    PermitsMismatch {
        /// The resource name.
        resource: String,
        /// The count stored with the semaphore by its first holder.
        stored: u32,
        /// The caller's count.
        requested: u32,
    },
}

impl LockError {
    /// The acquisition timed out: a lock stayed held
    /// ([`Timeout`](Self::Timeout)), or every permit of a semaphore stayed
    /// taken ([`Saturated`](Self::Saturated) after a wait).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockyard::LockError;
    ///
    /// let err = LockError::Timeout { resource: "db".into(), waited: Duration::from_secs(1), holder: None };
    /// assert!(err.is_timeout() && !err.is_would_block());
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            LockError::Timeout { .. }
                | LockError::Saturated {
                    timed_out: true,
                    ..
                }
        )
    }

    /// A non-blocking attempt found the lock held
    /// ([`WouldBlock`](Self::WouldBlock)), or no permit free
    /// ([`Saturated`](Self::Saturated) without a wait).
    ///
    /// ```
    /// use lockyard::LockError;
    ///
    /// let err = LockError::WouldBlock { resource: "db".into(), holder: None };
    /// assert!(err.is_would_block() && !err.is_timeout());
    /// ```
    pub fn is_would_block(&self) -> bool {
        matches!(
            self,
            LockError::WouldBlock { .. }
                | LockError::Saturated {
                    timed_out: false,
                    ..
                }
        )
    }

    /// Someone else holds the lock or every permit ([`Timeout`](Self::Timeout),
    /// [`WouldBlock`](Self::WouldBlock), [`Saturated`](Self::Saturated)): an
    /// expected outcome, not a fault.
    ///
    /// ```
    /// use lockyard::LockError;
    ///
    /// let busy = LockError::WouldBlock { resource: "db".into(), holder: None };
    /// assert!(busy.is_contended());
    /// let closed = LockError::Closed { resource: "db".into() };
    /// assert!(!closed.is_contended());
    /// ```
    pub fn is_contended(&self) -> bool {
        self.is_timeout() || self.is_would_block()
    }

    /// Every permit of a semaphore was taken ([`Saturated`](Self::Saturated)),
    /// as opposed to a lock held by someone: a service's 429, where a held
    /// lock is its 409.
    ///
    /// ```
    /// use lockyard::LockError;
    /// use lockyard::local::Semaphore;
    ///
    /// let gpu = Semaphore::new(0);
    /// let err: LockError = gpu.try_acquire().unwrap_err().into();
    /// assert!(err.is_saturated() && err.is_would_block() && err.is_contended());
    /// let held = LockError::WouldBlock { resource: "db".into(), holder: None };
    /// assert!(!held.is_saturated());
    /// ```
    pub fn is_saturated(&self) -> bool {
        matches!(self, LockError::Saturated { .. })
    }

    /// The backend is down or unreachable; retrying later may help.
    ///
    /// ```
    /// use lockyard::LockError;
    ///
    /// let down = LockError::Unavailable { resource: "db".into(), op: "acquire", source: "connection refused".into() };
    /// assert!(down.is_unavailable() && !down.is_contended());
    /// ```
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LockError::Unavailable { .. })
    }

    /// The lock was lost while held.
    ///
    /// ```
    /// use lockyard::LockError;
    ///
    /// assert!(LockError::Lost { resource: "leader".into() }.is_lost());
    /// assert!(!LockError::NotHeld { resource: "leader".into() }.is_lost());
    /// ```
    pub fn is_lost(&self) -> bool {
        matches!(self, LockError::Lost { .. })
    }

    /// The caller's input (name, argument) was refused.
    ///
    /// ```
    /// use lockyard::LockError;
    ///
    /// let err = LockError::InvalidArgument { what: "ttl", reason: "must be positive".into() };
    /// assert!(err.is_invalid_input() && !err.is_contended());
    /// ```
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            LockError::InvalidName { .. } | LockError::InvalidArgument { .. }
        )
    }

    /// The name is in use as another kind of lock, or a semaphore with
    /// another permit count ([`WrongKind`](Self::WrongKind),
    /// [`PermitsMismatch`](Self::PermitsMismatch)).
    ///
    /// ```
    /// use lockyard::LockError;
    ///
    /// let err = LockError::PermitsMismatch { resource: "pool".into(), stored: 4, requested: 2 };
    /// assert!(err.is_wrong_kind());
    /// ```
    pub fn is_wrong_kind(&self) -> bool {
        matches!(
            self,
            LockError::WrongKind { .. } | LockError::PermitsMismatch { .. }
        )
    }

    /// The resource the error is about, where there is one. An error
    /// converted from an unnamed in-process primitive's (`From`) has none.
    ///
    /// ```
    /// use lockyard::LockError;
    ///
    /// assert_eq!(LockError::Lost { resource: "leader".into() }.resource(), Some("leader"));
    /// let err = LockError::InvalidArgument { what: "ttl", reason: "zero".into() };
    /// assert_eq!(err.resource(), None);
    /// ```
    pub fn resource(&self) -> Option<&str> {
        let resource = match self {
            LockError::Timeout { resource, .. }
            | LockError::WouldBlock { resource, .. }
            | LockError::Unsupported { resource, .. }
            | LockError::Unavailable { resource, .. }
            | LockError::Backend { resource, .. }
            | LockError::Protocol { resource, .. }
            | LockError::NoQuorum { resource, .. }
            | LockError::Lost { resource }
            | LockError::NotHeld { resource }
            | LockError::WrongKind { resource, .. }
            | LockError::PermitsMismatch { resource, .. }
            | LockError::Saturated { resource, .. }
            | LockError::Closed { resource } => resource,
            LockError::InvalidName { name, .. } => name,
            _ => return None,
        };
        Some(resource.as_str()).filter(|r| !r.is_empty())
    }

    /// Who held the lock, for contention errors that know it.
    ///
    /// ```
    /// use lockyard::{LockError, Mode, Owner};
    ///
    /// let me = Owner::current(Mode::Exclusive);
    /// let err = LockError::WouldBlock { resource: "db".into(), holder: Some(Box::new(me.clone())) };
    /// assert_eq!(err.holder(), Some(&me));
    /// ```
    pub fn holder(&self) -> Option<&Owner> {
        match self {
            LockError::Timeout { holder, .. } | LockError::WouldBlock { holder, .. } => {
                holder.as_deref()
            }
            _ => None,
        }
    }

    /// Maps an `io::Error` on `path` to the most specific variant.
    pub(crate) fn from_io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                LockError::PermissionDenied { op, path, source }
            }
            io::ErrorKind::Unsupported => LockError::UnsupportedFilesystem { path, source },
            _ if is_nolock_errno(&source) => LockError::UnsupportedFilesystem { path, source },
            _ => LockError::Io { op, path, source },
        }
    }
}

fn is_nolock_errno(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Why a TLS connection could not be set up ([`LockError::Tls`]).
///
/// ```
/// use lockyard::{LockError, TlsProblem};
///
/// let err = LockError::Tls {
///     server: "rediss://cache.example:6380/".into(),
///     problem: TlsProblem::UntrustedCertificate,
///     source: None,
/// };
/// assert!(err.to_string().contains("not signed by a CA this client trusts"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsProblem {
    /// The server's certificate is not signed by a trusted CA (the wrong
    /// CA file, or a private CA that was not given).
    UntrustedCertificate,
    /// The server's certificate (or one in its chain) has expired or is not
    /// valid yet.
    ExpiredCertificate,
    /// The server's certificate is not valid for the host name in the URL.
    WrongHostName,
    /// The server refused the connection during the handshake: it requires
    /// a client certificate (mutual TLS) and none, or one it does not
    /// trust, was given.
    ClientCertificateRefused,
    /// The URL asks for TLS (`rediss://`, `sslmode=require`), but the
    /// server does not speak it on that port: a Redis answered in plain
    /// text, a Postgres answered the TLS request with "no" (`ssl = off`).
    ServerIsPlain,
    /// The URL asks for no TLS (`redis://`, `sslmode=disable`), but the
    /// server requires it: a TLS-only Redis port, a Postgres whose
    /// `pg_hba.conf` admits only `hostssl` connections.
    ServerRequiresTls,
    /// The URL asks for TLS (`rediss://`, an `sslmode` that needs it), or
    /// TLS files were given, but this build has no TLS: enable lockyard's
    /// feature `tls`.
    NotEnabled,
    /// Any other handshake failure; the source says what.
    Handshake,
}

impl fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsProblem::UntrustedCertificate => {
                "the server's certificate is not signed by a CA this client trusts (give the CA that \
                 signed it: tls_ca, --tls-ca or LOCKYARD_TLS_CA; a self-signed server \
                 certificate is its own CA)"
            }
            TlsProblem::ExpiredCertificate => {
                "the server's certificate has expired (or is not valid yet)"
            }
            TlsProblem::WrongHostName => {
                "the server's certificate is not valid for the host name in the URL"
            }
            TlsProblem::ClientCertificateRefused => {
                "the server refused the handshake: it wants a client certificate it trusts \
                 (mutual TLS: give a certificate and key)"
            }
            TlsProblem::ServerIsPlain => {
                "the server does not speak TLS on this port (for Redis use redis://, not \
                 rediss://; for Postgres the server has ssl = off)"
            }
            TlsProblem::ServerRequiresTls => {
                "the server requires TLS on this port (for Redis use rediss://, not redis://; \
                 for Postgres an sslmode other than disable)"
            }
            TlsProblem::NotEnabled => {
                "this build of lockyard has no TLS (enable its feature `tls`)"
            }
            TlsProblem::Handshake => "the TLS handshake failed",
        })
    }
}

/// Formats a wait like `1.502s`.
struct Waited(Duration);

impl fmt::Display for Waited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.0.as_secs_f64())
    }
}

/// Names a resource in a message: ``lock `db` `` (or `` `db` `` when
/// `kind` is empty), or "an unnamed in-process lock" for the empty name of
/// an error converted from an unnamed local primitive.
struct Subject<'a>(&'static str, &'a str);

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Subject(kind, name) = *self;
        match (kind, name) {
            ("", "") => f.write_str("an unnamed in-process primitive"),
            (kind, "") => write!(f, "an unnamed in-process {kind}"),
            ("", name) => write!(f, "`{}`", Escaped(name)),
            (kind, name) => write!(f, "{kind} `{}`", Escaped(name)),
        }
    }
}

/// The end of a [`LockError::Saturated`] message.
struct SaturatedSuffix(bool, Option<Duration>);

impl fmt::Display for SaturatedSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SaturatedSuffix(false, _) => f.write_str("is taken"),
            SaturatedSuffix(true, Some(waited)) => {
                write!(f, "stayed taken for {}", Waited(waited))
            }
            SaturatedSuffix(true, None) => f.write_str("stayed taken for the whole timeout"),
        }
    }
}

struct HolderSuffix<'a>(Option<&'a Owner>);

impl fmt::Display for HolderSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(owner) => write!(f, " (held by {owner})"),
            None => Ok(()),
        }
    }
}

/// Parsing a [`Mode`] fails with a [`LockError`]: the impl lives here, not
/// beside `Mode`, so that `options.rs` stays below this file (the contract is
/// a stack: `options` ← `owner` ← `error`).
impl FromStr for Mode {
    type Err = LockError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exclusive" => Ok(Mode::Exclusive),
            "shared" => Ok(Mode::Shared),
            other => Err(LockError::InvalidArgument {
                what: "mode",
                reason: format!("expected `exclusive` or `shared`, got {other:?}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_resource_and_holder() {
        let err = LockError::Timeout {
            resource: "db".into(),
            waited: Duration::from_millis(1500),
            holder: Some(Box::new(Owner::current(Mode::Exclusive))),
        };
        let msg = err.to_string();
        assert!(msg.contains("`db`") && msg.contains("1.500s"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(err.holder().is_some());
    }

    #[test]
    fn io_errors_are_classified() {
        let e = LockError::from_io(
            "open",
            "/x",
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert!(matches!(e, LockError::PermissionDenied { .. }));
        let e = LockError::from_io("open", "/x", io::Error::from(io::ErrorKind::NotFound));
        assert!(matches!(e, LockError::Io { .. }));
    }
}
