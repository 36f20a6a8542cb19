//! [`PgOptions`]: how a [`PgLocks`](super::PgLocks) client connects,
//! watches its holds, maps names and issues fencing tokens.

use std::time::Duration;

use super::keys::PgKeyMode;
use crate::error::LockError;
use crate::tls::TlsSettings;

/// Options of a [`PgLocks`](super::PgLocks) client.
///
/// ```
/// use std::time::Duration;
/// use lockyard::postgres::{PgKeyMode, PgOptions};
///
/// let opts = PgOptions::default()
///     .keepalive(Duration::from_secs(2))
///     .key_mode(PgKeyMode::distributed_lock())
///     .fencing(false);
/// assert_eq!(opts.keepalive, Duration::from_secs(2));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PgOptions {
    /// How long opening a connection (TCP, authentication) may take before
    /// it fails with [`LockError::Unavailable`]. Default 5 s.
    pub connect_timeout: Duration,
    /// How long any request other than a wait for a lock may take before it
    /// fails with [`LockError::Unavailable`] (and its connection is
    /// dropped). Default 5 s.
    pub op_timeout: Duration,
    /// How often a held lock's connection is probed (`SELECT 1`, bounded by
    /// this same interval). A probe that fails or does not answer in time
    /// fires `lost`. Default 5 s.
    pub keepalive: Duration,
    /// How names become advisory lock keys. Default
    /// [`PgKeyMode::Sha256V1`].
    pub key_mode: PgKeyMode,
    /// Whether each grant takes a fencing token from the fence table.
    /// Default on.
    pub fencing: bool,
    /// The schema of the fence table `lockyard_fence`. Default `public`.
    pub fence_schema: String,
    /// How many idle connections the client keeps for later acquisitions.
    /// Default 8.
    pub max_idle: usize,
    /// TLS (feature `tls`): a custom CA, a client certificate. Used as the
    /// URL's `sslmode` says (see [`tls_ca`](Self::tls_ca)).
    pub tls: TlsSettings,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(5),
            key_mode: PgKeyMode::default(),
            fencing: true,
            fence_schema: "public".to_owned(),
            max_idle: 8,
            tls: TlsSettings::default(),
        }
    }
}

impl PgOptions {
    /// Sets [`connect_timeout`](Self::connect_timeout).
    ///
    /// ```
    /// let opts = lockyard::postgres::PgOptions::default().connect_timeout(std::time::Duration::from_secs(1));
    /// # let _ = opts;
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`op_timeout`](Self::op_timeout).
    ///
    /// ```
    /// let opts = lockyard::postgres::PgOptions::default().op_timeout(std::time::Duration::from_secs(2));
    /// # let _ = opts;
    /// ```
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Sets [`keepalive`](Self::keepalive).
    ///
    /// ```
    /// let opts = lockyard::postgres::PgOptions::default().keepalive(std::time::Duration::from_secs(1));
    /// # let _ = opts;
    /// ```
    pub fn keepalive(mut self, every: Duration) -> Self {
        self.keepalive = every;
        self
    }

    /// Sets [`key_mode`](Self::key_mode).
    ///
    /// ```
    /// use lockyard::postgres::{PgKeyMode, PgOptions};
    /// let opts = PgOptions::default().key_mode(PgKeyMode::distributed_lock());
    /// # let _ = opts;
    /// ```
    pub fn key_mode(mut self, mode: PgKeyMode) -> Self {
        self.key_mode = mode;
        self
    }

    /// Sets [`fencing`](Self::fencing).
    ///
    /// ```
    /// let opts = lockyard::postgres::PgOptions::default().fencing(false);
    /// # let _ = opts;
    /// ```
    pub fn fencing(mut self, on: bool) -> Self {
        self.fencing = on;
        self
    }

    /// Sets [`fence_schema`](Self::fence_schema).
    ///
    /// ```
    /// let opts = lockyard::postgres::PgOptions::default().fence_schema("locks");
    /// # let _ = opts;
    /// ```
    pub fn fence_schema(mut self, schema: impl Into<String>) -> Self {
        self.fence_schema = schema.into();
        self
    }

    /// Sets [`max_idle`](Self::max_idle).
    ///
    /// ```
    /// let opts = lockyard::postgres::PgOptions::default().max_idle(2);
    /// # let _ = opts;
    /// ```
    pub fn max_idle(mut self, connections: usize) -> Self {
        self.max_idle = connections;
        self
    }

    crate::tls::tls_option_methods!(
        "postgres::PgOptions",
        "::default()",
        "for the server's certificate whenever a connection is encrypted, as the URL's \
         `sslmode` says: `prefer` (or none) when the server offers TLS, `require` and \
         `verify-full` always, all three checking the chain and the host name; \
         `verify-ca` checks the chain only and needs this CA. Certificates are always \
         checked: no mode skips it (so `require` is stricter than libpq's); see the \
         [module docs](super#tls). Needs the feature `tls`; with `sslmode=disable` a CA \
         is refused rather than silently unused."
    );

    /// Checks the options.
    pub(crate) fn validate(&self) -> Result<(), LockError> {
        let bad = |what: &'static str, reason: &str| {
            Err(LockError::InvalidArgument {
                what,
                reason: reason.to_owned(),
            })
        };
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be more than zero");
        }
        if self.op_timeout.is_zero() {
            return bad("op_timeout", "must be more than zero");
        }
        if self.keepalive < Duration::from_millis(10) {
            return bad("keepalive", "must be at least 10 ms");
        }
        if self.fence_schema.is_empty() || self.fence_schema.contains('\0') {
            return bad("fence_schema", "must be a non-empty name without NUL");
        }
        Ok(())
    }

    /// The fence table, quoted for SQL.
    pub(crate) fn fence_table(&self) -> String {
        format!("{}.\"lockyard_fence\"", quote_ident(&self.fence_schema))
    }
}

/// `ident` as a quoted SQL identifier.
pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}
