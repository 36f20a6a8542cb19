//! TLS to Postgres: the URL's `sslmode` (libpq's five values, two of which
//! tokio-postgres does not know), the rustls connector tokio-postgres
//! connects through (feature `tls`), and what a failed connect says about
//! TLS.
//!
//! What each `sslmode` checks is the [module docs'](super#tls) table;
//! [`connector()`] is where it is decided.
//!
//! # Layering
//!
//! Uses the shared [`crate::tls`] and the contract's errors; `session`,
//! `context`, `client` and `xact` use it.

use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;

use crate::error::{LockError, TlsProblem};
use crate::tls::TlsSettings;

/// The connector tokio-postgres connects (and cancels) through.
#[cfg(feature = "tls")]
pub(crate) type PgConnector = connector::RustlsConnector;
/// The connector tokio-postgres connects (and cancels) through: no TLS in
/// this build.
#[cfg(not(feature = "tls"))]
pub(crate) type PgConnector = tokio_postgres::NoTls;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslChoice {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslChoice {
    fn parse(value: &str) -> Result<Self, LockError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                // Shown only if it looks like a mode: a mistyped string may
                // have swallowed the next parameter (`sslmode= password=…`).
                let looks_like_a_mode = other.len() <= 16
                    && other.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                let shown = if looks_like_a_mode {
                    format!("sslmode={other}")
                } else {
                    "sslmode (its value not shown)".to_owned()
                };
                return Err(LockError::InvalidArgument {
                    what: "postgres URL",
                    reason: format!(
                        "{shown}: lockyard knows disable, prefer, require, verify-ca and \
                         verify-full"
                    ),
                });
            }
        })
    }

    /// What tokio-postgres is told: it knows `disable`, `prefer` and
    /// `require`; the checks beyond are the connector's.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    fn ssl_mode(self) -> SslMode {
        match self {
            Self::Disable => SslMode::Disable,
            Self::Prefer => SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => SslMode::Require,
        }
    }
}

/// `url` with its `sslmode` taken out, and the value it had (`None`: not
/// given). Both spellings tokio-postgres parses are read: a URL's query
/// (`postgres://…?sslmode=verify-full&…`) and a key-value string
/// (`host=… sslmode=verify-full`).
///
/// # Errors
///
/// [`LockError::InvalidArgument`] for a value libpq does not know.
pub(crate) fn take_sslmode(url: &str) -> Result<(String, Option<SslChoice>), LockError> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let (rest, found) = if is_url {
        take_from_query(url)
    } else {
        take_from_key_values(url)
    };
    let choice = match found.as_slice() {
        [] => None,
        [one] => Some(SslChoice::parse(one)?),
        _ => {
            // libpq lets the last one win; a URL that both asks for a
            // verified connection and turns TLS off is more likely a
            // mistake (a default appended) than a wish.
            return Err(LockError::InvalidArgument {
                what: "postgres URL",
                reason: "sslmode is given more than once; give it once".to_owned(),
            });
        }
    };
    Ok((rest, choice))
}

/// `url` parsed by tokio-postgres with its `sslmode` taken out first, and
/// that `sslmode`.
///
/// # Errors
///
/// [`LockError::InvalidArgument`] for a URL tokio-postgres cannot parse,
/// an `sslmode` [`take_sslmode`] refuses, or one tokio-postgres read but
/// [`take_sslmode`] did not see (a spelling the two read differently):
/// it would otherwise be overridden by the default, `prefer`.
pub(crate) fn parse_url(
    url: &str,
) -> Result<(tokio_postgres::Config, Option<SslChoice>), LockError> {
    let (url, sslmode) = take_sslmode(url)?;
    let config: tokio_postgres::Config = url.parse().map_err(|e| LockError::InvalidArgument {
        what: "postgres URL",
        reason: format!("{e}"),
    })?;
    if config.get_ssl_mode() != SslMode::Prefer {
        return Err(LockError::InvalidArgument {
            what: "postgres URL",
            reason: "sslmode is spelled in a way lockyard does not read (percent-encoded, or \
                     in a URL whose user name or password has an unencoded `?` or `@`): \
                     write it as `sslmode=…`"
                .to_owned(),
        });
    }
    // The credentials end at the first `@` (tokio-postgres and libpq read
    // it so): in `postgres://u:pa@ss@h/db` the host is `ss@h`, which every
    // error naming the server would show. A host name never holds `@`.
    let at_in_host = config
        .get_hosts()
        .iter()
        .any(|h| matches!(h, tokio_postgres::config::Host::Tcp(name) if name.contains('@')));
    if at_in_host {
        return Err(LockError::InvalidArgument {
            what: "postgres URL",
            reason: "its host holds `@`: a user name or password with `@` must be \
                     percent-encoded (`%40`)"
                .to_owned(),
        });
    }
    Ok((config, sslmode))
}

/// The query's `sslmode` values, the query being where tokio-postgres
/// finds it: after the credentials (which end at the first `@`, whatever
/// follows), at the next `?`; keys are percent-decoded, as it does.
fn take_from_query(url: &str) -> (String, Vec<String>) {
    let after_credentials = url.find('@').map_or(0, |at| at + 1);
    let Some(mark) = url[after_credentials..].find('?') else {
        return (url.to_owned(), Vec::new());
    };
    let (base, query) = url.split_at(after_credentials + mark);
    let query = &query[1..];
    let mut found = Vec::new();
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((key, value)) if percent_decoded(key) == "sslmode" => {
                found.push(percent_decoded(value));
                false
            }
            _ => true,
        })
        .collect();
    if kept.is_empty() {
        (base.to_owned(), found)
    } else {
        (format!("{base}?{}", kept.join("&")), found)
    }
}

/// `s` with its `%XX` escapes decoded (lossily, as UTF-8).
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits: at most 0xff.
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Walks `key = value` pairs as libpq writes them (backslash escapes in
/// values unquoted or in single quotes) and drops `sslmode`.
fn take_from_key_values(s: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(s.len());
    let mut found = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut key = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_some_and(|&(_, c)| c == '=') {
            chars.next();
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek().is_some_and(|&(_, c)| c == '\'') {
            chars.next();
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(e);
                        }
                    }
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        let end = chars.peek().map_or(s.len(), |&(i, _)| i);
        if key == "sslmode" {
            found.push(value);
        } else {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&s[start..end]);
        }
    }
    // A key-value string whose first key now looks like a URL (its leading
    // whitespace or an sslmode before it dropped) would be read as one.
    if out.starts_with("postgres://") || out.starts_with("postgresql://") {
        out.insert(0, ' ');
    }
    (out, found)
}

/// The mode tokio-postgres is told and the connector for `choice` (none
/// given: `prefer`) with `settings`.
///
/// # Errors
///
/// - [`LockError::InvalidArgument`] for TLS files with `sslmode=disable`,
///   `verify-ca` without a custom CA, or files that cannot be read or
///   parsed.
/// - [`LockError::Tls`] ([`TlsProblem::NotEnabled`]) for a mode that needs
///   TLS, or TLS files, in a build without the feature `tls`.
pub(crate) fn connector(
    choice: Option<SslChoice>,
    settings: &TlsSettings,
    server: &str,
) -> Result<(SslMode, PgConnector), LockError> {
    let choice = choice.unwrap_or(SslChoice::Prefer);
    if choice == SslChoice::Disable {
        if settings.is_set() {
            return Err(LockError::InvalidArgument {
                what: "postgres URL",
                reason: "a CA or client certificate was given with sslmode=disable; use \
                         sslmode=verify-full to connect with TLS"
                    .to_owned(),
            });
        }
        return Ok((SslMode::Disable, disabled()));
    }
    if choice == SslChoice::VerifyCa && !settings.has_ca() {
        return Err(LockError::InvalidArgument {
            what: "postgres URL",
            reason: "sslmode=verify-ca skips the host name check, which is only safe with a \
                     private CA: give one (PgOptions::tls_ca, --tls-ca), or use verify-full"
                .to_owned(),
        });
    }
    build(choice, settings, server)
}

#[cfg(not(feature = "tls"))]
fn disabled() -> PgConnector {
    tokio_postgres::NoTls
}

#[cfg(feature = "tls")]
fn disabled() -> PgConnector {
    connector::RustlsConnector::none()
}

#[cfg(not(feature = "tls"))]
fn build(
    choice: SslChoice,
    settings: &TlsSettings,
    server: &str,
) -> Result<(SslMode, PgConnector), LockError> {
    // Without TLS, `prefer` is plain text, as libpq built without SSL.
    if choice == SslChoice::Prefer && !settings.is_set() {
        return Ok((SslMode::Disable, tokio_postgres::NoTls));
    }
    Err(LockError::Tls {
        server: server.to_owned(),
        problem: TlsProblem::NotEnabled,
        source: None,
    })
}

#[cfg(feature = "tls")]
fn build(
    choice: SslChoice,
    settings: &TlsSettings,
    _server: &str,
) -> Result<(SslMode, PgConnector), LockError> {
    use crate::tls::NameCheck;
    let names = if choice == SslChoice::VerifyCa {
        NameCheck::ChainOnly
    } else {
        NameCheck::HostName
    };
    let config = crate::tls::client_config(&settings.load()?, names)?;
    Ok((
        choice.ssl_mode(),
        connector::RustlsConnector::new(std::sync::Arc::new(config)),
    ))
}

/// What `e`, from opening a connection, says about TLS, if anything: a
/// handshake that failed (the rustls error classified), a server that
/// answered the TLS request with "no", a server that wants a client
/// certificate or TLS itself (its `pg_hba.conf` refusal).
pub(crate) fn problem_of(e: &tokio_postgres::Error) -> Option<TlsProblem> {
    #[cfg(feature = "tls")]
    if let Some(problem) = crate::tls::problem_in(e) {
        return Some(problem);
    }
    if let Some(db) = e.as_db_error() {
        if db.code() != &SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
            return None;
        }
        let message = db.message();
        if message.contains("certificate") {
            return Some(TlsProblem::ClientCertificateRefused);
        }
        if message.contains("no encryption") {
            return Some(TlsProblem::ServerRequiresTls);
        }
        return None;
    }
    // tokio-postgres says "error performing TLS handshake" for every TLS
    // failure, with the reason as its source.
    if !e.to_string().starts_with("error performing TLS handshake") {
        return None;
    }
    let reason = std::error::Error::source(e).map(ToString::to_string);
    Some(match reason.as_deref() {
        Some("server does not support TLS") => TlsProblem::ServerIsPlain,
        _ => TlsProblem::Handshake,
    })
}

#[cfg(feature = "tls")]
mod connector {
    //! A `MakeTlsConnect` for tokio-postgres over tokio-rustls, with
    //! `tls-server-end-point` channel binding (SCRAM-SHA-256-PLUS) and the
    //! URL's host as SNI and checked name.
    //!
    //! Our own rather than the `tokio-postgres-rustls` crate: that crate
    //! depends on tokio-postgres, which the feature `tls` would then build
    //! for Redis-only users too (Cargo cannot enable a dependency only when
    //! two features are both on), and this is all of it.

    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio_postgres::Socket;
    use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

    /// Connects through rustls with one client configuration (`None`:
    /// never asked to, `sslmode=disable`).
    #[derive(Clone)]
    pub(crate) struct RustlsConnector(Option<Arc<rustls::ClientConfig>>);

    impl RustlsConnector {
        pub(crate) fn new(config: Arc<rustls::ClientConfig>) -> Self {
            Self(Some(config))
        }

        pub(crate) fn none() -> Self {
            Self(None)
        }
    }

    impl std::fmt::Debug for RustlsConnector {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_tuple("RustlsConnector")
                .field(&self.0.is_some())
                .finish()
        }
    }

    impl MakeTlsConnect<Socket> for RustlsConnector {
        type Stream = RustlsStream;
        type TlsConnect = RustlsConnect;
        type Error = io::Error;

        fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, io::Error> {
            // A bad name is reported by the handshake, not here: a Unix
            // socket's empty host must not fail a connection that never
            // asks for TLS.
            Ok(RustlsConnect {
                config: self.0.clone(),
                host: host.to_owned(),
            })
        }
    }

    /// One handshake, to `host`.
    pub(crate) struct RustlsConnect {
        config: Option<Arc<rustls::ClientConfig>>,
        host: String,
    }

    type Handshake = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    impl TlsConnect<Socket> for RustlsConnect {
        type Stream = RustlsStream;
        type Error = io::Error;
        type Future = Handshake;

        fn connect(self, stream: Socket) -> Handshake {
            Box::pin(async move {
                let config = self
                    .config
                    .ok_or_else(|| io::Error::other("TLS was not set up for this client"))?;
                let name = ServerName::try_from(self.host)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await?;
                Ok(RustlsStream(Box::new(tls)))
            })
        }
    }

    /// A TLS connection to the server.
    pub(crate) struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

    impl TlsStream for RustlsStream {
        fn channel_binding(&self) -> ChannelBinding {
            let (_, session) = self.0.get_ref();
            match session
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|cert| super::end_point::hash(cert.as_ref()))
            {
                Some(hash) => ChannelBinding::tls_server_end_point(hash),
                None => ChannelBinding::none(),
            }
        }
    }

    impl AsyncRead for RustlsStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut *self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for RustlsStream {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut *self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut *self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut *self.0).poll_shutdown(cx)
        }
    }
}

#[cfg(feature = "tls")]
mod end_point {
    //! `tls-server-end-point` channel binding (RFC 5929): the hash of the
    //! server's certificate, with the hash function of its signature
    //! algorithm (SHA-256 for MD5 and SHA-1).

    use sha2::Digest;

    /// The binding data of the DER certificate `cert`; `None` for a
    /// signature algorithm without one hash function (Ed25519, RSA-PSS),
    /// which then goes without channel binding.
    pub(super) fn hash(cert: &[u8]) -> Option<Vec<u8>> {
        // OIDs' contents: 1.2.840.113549.1.1.{4,5,11,12,13} (RSA with MD5,
        // SHA-1, SHA-256, -384, -512) and 1.2.840.10045.4.{1,3.2,3.3,3.4}
        // (ECDSA with SHA-1, SHA-256, -384, -512).
        const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
        const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
        let oid = signature_oid(cert)?;
        let bits = match oid {
            [rsa @ .., n] if rsa == RSA => match n {
                0x04 | 0x05 | 0x0b => 256,
                0x0c => 384,
                0x0d => 512,
                _ => return None,
            },
            [ec @ .., 0x01] if ec == ECDSA => 256,
            [ec @ .., 0x03, n] if ec == ECDSA => match n {
                0x02 => 256,
                0x03 => 384,
                0x04 => 512,
                _ => return None,
            },
            _ => return None,
        };
        Some(match bits {
            256 => sha2::Sha256::digest(cert).to_vec(),
            384 => sha2::Sha384::digest(cert).to_vec(),
            _ => sha2::Sha512::digest(cert).to_vec(),
        })
    }

    /// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm
    /// SEQUENCE { algorithm OID, … }, signature }`: the algorithm's OID.
    fn signature_oid(cert: &[u8]) -> Option<&[u8]> {
        let (0x30, body, _) = item(cert)? else {
            return None;
        };
        let (0x30, _tbs, rest) = item(body)? else {
            return None;
        };
        let (0x30, algorithm, _) = item(rest)? else {
            return None;
        };
        match item(algorithm)? {
            (0x06, oid, _) => Some(oid),
            _ => None,
        }
    }

    /// One DER item: (tag, contents, what follows).
    fn item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_hash_follows_the_signature_algorithm() {
            // SEQUENCE { SEQUENCE {} (tbs), SEQUENCE { OID ecdsa-with-SHA384 }, BIT STRING }
            let cert = [
                0x30, 0x10, 0x30, 0x00, 0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04,
                0x03, 0x03, 0x03, 0x00,
            ];
            assert_eq!(hash(&cert).map(|h| h.len()), Some(48));
            let mut ed25519 = cert;
            // Another algorithm's OID, or a truncated certificate: no hash.
            ed25519[15] = 0x09;
            assert_eq!(hash(&ed25519), None);
            assert_eq!(hash(&cert[..10]), None);
        }
    }
}

/// The fuzz target `pg_url`'s property: taking `sslmode` out of `url`
/// never panics, and leaves nothing in which tokio-postgres still finds an
/// `sslmode` (lockyard would override it with `prefer`) or another
/// `sslmode` to take.
///
/// # Panics
///
/// When the property is broken.
pub(crate) fn check_url(url: &str) {
    let _ = parse_url(url);
    let Ok((rest, _)) = take_sslmode(url) else {
        return;
    };
    if let Ok(config) = rest.parse::<tokio_postgres::Config>() {
        assert_eq!(
            config.get_ssl_mode(),
            SslMode::Prefer,
            "{url:?} left {rest:?}, where tokio-postgres still reads an sslmode"
        );
    }
    let again = take_sslmode(&rest).map(|(_, mode)| mode);
    assert!(
        matches!(again, Ok(None)),
        "{url:?} left {rest:?}, which has an sslmode again: {again:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unencoded_at_in_the_password_is_refused_without_showing_it() {
        let err = parse_url("postgres://u:pa@ss@127.0.0.1:5/db").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("%40"), "{text}");
        assert!(!text.contains("ss@") && !text.contains("pa@"), "{text}");
        // Percent-encoded, it is a password like any other.
        let (config, _) = parse_url("postgres://u:pa%40ss@127.0.0.1:5/db").unwrap();
        assert_eq!(config.get_password(), Some(&b"pa@ss"[..]));
    }

    #[test]
    fn sslmode_is_found_where_tokio_postgres_finds_it() {
        // A `?` in the password: the query starts after the host.
        let (rest, mode) = take_sslmode("postgres://u:a?b@h/db?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), mode),
            ("postgres://u:a?b@h/db", Some(SslChoice::Require))
        );
        // Percent-encoded keys and values.
        let (_, mode) = take_sslmode("postgres://h/db?ssl%6dode=%72equire").unwrap();
        assert_eq!(mode, Some(SslChoice::Require));
        // An escaped space in an unquoted key-value: one value.
        let (rest, mode) = take_sslmode("password=a\\ sslmode=disable user=u").unwrap();
        assert_eq!(
            (rest.as_str(), mode),
            ("password=a\\ sslmode=disable user=u", None)
        );
        // Twice: refused.
        assert!(take_sslmode("postgres://h/?sslmode=require&sslmode=disable").is_err());
        assert!(take_sslmode("sslmode=require sslmode=require").is_err());
        // Whatever tokio-postgres would still read is refused.
        let (_, mode) = parse_url("postgres://h/db?ssl%6dode=require&application_name=x").unwrap();
        assert_eq!(mode, Some(SslChoice::Require));
        for url in [
            "postgres://h/db?a=1&ssl%2564ode=disable",
            "host=h password=a sslmode=prefer",
        ] {
            check_url(url);
        }
    }

    #[test]
    fn a_key_value_string_stays_one_when_its_sslmode_is_taken() {
        for kv in [
            " postgres://h/db?sslmode=require",
            "sslmode=verify-full postgres://h/db?sslmode=disable",
            "\u{c}\u{c}postgres://postgres://@h/db?ire&sslmode=dil@h/d\u{c}%\0\u{c}\0c\u{4}l:n?%6do",
        ] {
            check_url(kv);
            let (rest, _) = take_sslmode(kv).unwrap();
            assert!(rest.starts_with(' '), "{rest:?}");
        }
    }

    #[test]
    fn an_unknown_sslmode_is_shown_only_if_it_looks_like_one() {
        let err = take_sslmode("postgres://h/?sslmode=allow").unwrap_err();
        assert!(err.to_string().contains("sslmode=allow"), "{err}");
        let err = take_sslmode("host=h sslmode= password=hunter2").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn sslmode_is_taken_from_a_url_and_from_key_values() {
        let (rest, mode) =
            take_sslmode("postgres://u:p@h:1/db?application_name=x&sslmode=verify-full").unwrap();
        assert_eq!(rest, "postgres://u:p@h:1/db?application_name=x");
        assert_eq!(mode, Some(SslChoice::VerifyFull));
        let (rest, mode) = take_sslmode("postgresql://h/db?sslmode=verify-ca").unwrap();
        assert_eq!(
            (rest.as_str(), mode),
            ("postgresql://h/db", Some(SslChoice::VerifyCa))
        );
        let (rest, mode) =
            take_sslmode("host=h password='a b\\' sslmode=x' sslmode = require user=u").unwrap();
        assert_eq!(rest, "host=h password='a b\\' sslmode=x' user=u");
        assert_eq!(mode, Some(SslChoice::Require));
        assert_eq!(take_sslmode("host=h").unwrap().1, None);
        assert!(take_sslmode("postgres://h/?sslmode=allow").is_err());
    }
}
