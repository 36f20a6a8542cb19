//! TLS to Redis (`rediss://`, feature `tls`): what a client trusts and
//! presents ([`RedisTls`], set through
//! [`RedisOptions`](crate::redis::RedisOptions)), the material loaded from it at
//! connect time ([`TlsMaterial`]), and the diagnosis of a connection that
//! failed into a [`TlsProblem`].
//!
//! Certificates are always checked: the server's chain against the
//! platform's roots or the CA given, and its name against the URL's host.
//! There is no switch to turn that off (redis-rs's `#insecure` URL
//! fragment is refused), so no configuration can skip it by accident.
//!
//! # Layering
//!
//! Uses the contract's error types and redis-rs only; `errors`, `cluster`,
//! `pool` and `client` use it.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{LockError, TlsProblem};

/// Where a PEM comes from: a file read at connect time, or bytes given.
#[derive(Clone, PartialEq, Eq)]
enum Pem {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl Pem {
    #[cfg(feature = "tls")]
    fn load(&self, what: &'static str) -> Result<Vec<u8>, LockError> {
        match self {
            Pem::Bytes(b) => Ok(b.clone()),
            Pem::File(path) => std::fs::read(path).map_err(|e| LockError::InvalidArgument {
                what,
                reason: format!("cannot read {}: {e}", crate::text::Escaped(path.display())),
            }),
        }
    }
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(p) => p.fmt(f),
            Pem::Bytes(b) => write!(f, "<{} bytes of PEM>", b.len()),
        }
    }
}

/// The TLS settings of a client: a custom CA to trust instead of the
/// platform's roots, and a client certificate for mutual TLS. Set them with
/// [`RedisOptions::tls_ca`](crate::redis::RedisOptions::tls_ca) and its siblings;
/// they apply to `rediss://` and `rediss+cluster://` URLs (feature `tls`).
///
/// Its `Debug` output never shows a private key:
///
/// ```
/// use lockyard::redis::RedisOptions;
///
/// let opts = RedisOptions::new().tls_client_cert_pem("CERT", "-----BEGIN PRIVATE KEY----- secret");
/// assert!(opts.tls.has_client_cert());
/// assert!(!format!("{opts:?}").contains("secret"));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisTls {
    ca: Option<Pem>,
    /// (certificate chain, private key).
    client: Option<(Pem, Pem)>,
}

impl RedisTls {
    /// Whether a custom CA was given (otherwise the platform's roots are
    /// trusted).
    ///
    /// ```
    /// use lockyard::redis::RedisOptions;
    ///
    /// assert!(!RedisOptions::new().tls.has_ca());
    /// assert!(RedisOptions::new().tls_ca("/etc/redis/ca.pem").tls.has_ca());
    /// ```
    pub fn has_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// Whether a client certificate (mutual TLS) was given.
    ///
    /// ```
    /// use lockyard::redis::RedisOptions;
    ///
    /// let opts = RedisOptions::new().tls_client_cert("client.pem", "client.key");
    /// assert!(opts.tls.has_client_cert());
    /// ```
    pub fn has_client_cert(&self) -> bool {
        self.client.is_some()
    }

    fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    pub(crate) fn set_ca_file(&mut self, path: PathBuf) {
        self.ca = Some(Pem::File(path));
    }

    pub(crate) fn set_ca_pem(&mut self, pem: Vec<u8>) {
        self.ca = Some(Pem::Bytes(pem));
    }

    pub(crate) fn set_client_files(&mut self, cert: PathBuf, key: PathBuf) {
        self.client = Some((Pem::File(cert), Pem::File(key)));
    }

    pub(crate) fn set_client_pem(&mut self, cert: Vec<u8>, key: Vec<u8>) {
        self.client = Some((Pem::Bytes(cert), Pem::Bytes(key)));
    }

    /// Reads the files and checks the URL's scheme against the settings.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidArgument`] for unreadable or malformed files,
    /// TLS settings on a plain URL, or an `#insecure` URL;
    /// [`LockError::Tls`] ([`TlsProblem::NotEnabled`]) for a `rediss://`
    /// URL without the feature `tls`.
    pub(crate) fn load(&self, url: &str, what: &str) -> Result<TlsMaterial, LockError> {
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        let tls_url = scheme.starts_with("rediss");
        if !tls_url {
            if self.is_set() {
                return Err(LockError::InvalidArgument {
                    what: "redis URL",
                    reason: format!(
                        "{what}: a CA or client certificate was given for a plain URL; \
                         use rediss:// (or rediss+cluster://) to connect with TLS"
                    ),
                });
            }
            return Ok(TlsMaterial::default());
        }
        if url.contains('#') {
            return Err(LockError::InvalidArgument {
                what: "redis URL",
                reason: format!(
                    "{what}: lockyard always checks the server's certificate and name; \
                     give the server's CA instead of an #insecure URL"
                ),
            });
        }
        self.load_tls(what)
    }

    #[cfg(not(feature = "tls"))]
    fn load_tls(&self, what: &str) -> Result<TlsMaterial, LockError> {
        Err(LockError::Tls {
            server: what.to_owned(),
            problem: TlsProblem::NotEnabled,
            source: None,
        })
    }

    #[cfg(feature = "tls")]
    fn load_tls(&self, _what: &str) -> Result<TlsMaterial, LockError> {
        ensure_crypto_provider();
        if !self.is_set() {
            return Ok(TlsMaterial {
                tls: true,
                certs: None,
            });
        }
        let root_cert = match &self.ca {
            Some(pem) => {
                let bytes = pem.load("TLS CA")?;
                check_pem(&bytes, "TLS CA", "CERTIFICATE")?;
                Some(bytes)
            }
            None => None,
        };
        let client_tls = match &self.client {
            Some((cert, key)) => {
                let client_cert = cert.load("TLS client certificate")?;
                check_pem(&client_cert, "TLS client certificate", "CERTIFICATE")?;
                let client_key = key.load("TLS client key")?;
                check_pem(&client_key, "TLS client key", "PRIVATE KEY")?;
                Some(redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                })
            }
            None => None,
        };
        let certs = redis::TlsCertificates {
            client_tls,
            root_cert,
        };
        // Parse them now (redis-rs does when a client is built), so that a
        // malformed file is reported as such, before any connect.
        if let Err(e) = redis::Client::build_with_tls("rediss://localhost/", certs.clone()) {
            return Err(LockError::InvalidArgument {
                what: "TLS files",
                reason: e.to_string(),
            });
        }
        Ok(TlsMaterial {
            tls: true,
            certs: Some(std::sync::Arc::new(certs)),
        })
    }
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RedisTls");
        d.field("ca", &self.ca);
        match &self.client {
            Some((cert, Pem::File(key))) => d.field("client_cert", cert).field("client_key", key),
            Some((cert, Pem::Bytes(_))) => d
                .field("client_cert", cert)
                .field("client_key", &"<redacted>"),
            None => d.field("client_cert", &None::<()>),
        };
        d.finish()
    }
}

/// Whether `bytes` hold at least one PEM block whose label ends in `label`
/// (`CERTIFICATE`; `PRIVATE KEY` also matches `RSA PRIVATE KEY`).
#[cfg(feature = "tls")]
fn check_pem(bytes: &[u8], what: &'static str, label: &str) -> Result<(), LockError> {
    let text = String::from_utf8_lossy(bytes);
    let found = text.lines().any(|l| {
        l.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|l| l.ends_with(label))
    });
    if found {
        Ok(())
    } else {
        Err(LockError::InvalidArgument {
            what,
            reason: format!("no PEM block `{label}` found"),
        })
    }
}

/// rustls needs one process-wide crypto provider; an application that
/// compiles in two (ring and aws-lc-rs, through other crates) and installs
/// neither would make rustls panic on its first TLS client. Install ours
/// (ring) unless the application already chose one.
#[cfg(feature = "tls")]
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may have installed one meanwhile: then that one
        // stays, which is as good. ring rather than aws-lc-rs for its
        // build cost (no C toolchain beyond cc); rustls marks it
        // deprecated because it lacks post-quantum key exchange, which
        // Redis servers do not offer either.
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let _ = provider.install_default();
    }
}

/// The TLS material of one client, loaded at connect time: whether its URL
/// is `rediss://`, and the custom CA and client certificate (none: the
/// platform's roots, no client certificate).
#[derive(Clone, Default)]
pub(crate) struct TlsMaterial {
    tls: bool,
    /// Shared by every connection of the client (and kept small: the
    /// Cluster shape holds one).
    #[cfg(feature = "tls")]
    certs: Option<std::sync::Arc<redis::TlsCertificates>>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Whether connections use TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls
    }

    /// A redis client for `info`, with this material when it is TLS.
    pub(crate) fn client(&self, info: redis::ConnectionInfo) -> redis::RedisResult<redis::Client> {
        #[cfg(feature = "tls")]
        if let (Some(certs), redis::ConnectionAddr::TcpTls { .. }) = (&self.certs, info.addr()) {
            return redis::Client::build_with_tls(info, (**certs).clone());
        }
        redis::Client::open(info)
    }

    /// The address of a Cluster node at `host:port`, TLS or not as the
    /// seeds are.
    pub(crate) fn node_addr(&self, host: String, port: u16) -> redis::ConnectionAddr {
        if self.tls {
            redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            redis::ConnectionAddr::Tcp(host, port)
        }
    }

    /// A Cluster client builder with this material.
    pub(crate) fn cluster(
        &self,
        builder: redis::cluster::ClusterClientBuilder,
    ) -> redis::cluster::ClusterClientBuilder {
        #[cfg(feature = "tls")]
        if let Some(certs) = &self.certs {
            return builder.certs((**certs).clone());
        }
        builder
    }
}

/// What a TLS failure in `err` was, when it was one: the rustls error
/// inside, classified.
pub(crate) fn problem_of(err: &redis::RedisError) -> Option<TlsProblem> {
    #[cfg(feature = "tls")]
    {
        use std::error::Error as _;
        // redis-rs keeps the io::Error (tokio-rustls puts the rustls error
        // inside it) behind an `Arc<dyn Error>`, which is what `source()`
        // returns; `io::Error::source` skips its inner error, so look.
        type Inner = std::sync::Arc<dyn std::error::Error + Send + Sync>;
        let inner = err.source()?.downcast_ref::<Inner>()?;
        let inner: &(dyn std::error::Error + 'static) = &**inner;
        let rustls_err = match inner.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?,
            None => inner.downcast_ref::<rustls::Error>()?,
        };
        Some(classify(rustls_err))
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = err;
        None
    }
}

#[cfg(feature = "tls")]
fn classify(e: &rustls::Error) -> TlsProblem {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. })
        | E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            TlsProblem::ExpiredCertificate
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            TlsProblem::WrongHostName
        }
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            TlsProblem::UntrustedCertificate
        }
        E::AlertReceived(
            A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::AccessDenied
            | A::DecryptError,
        ) => TlsProblem::ClientCertificateRefused,
        E::InvalidMessage(_) => TlsProblem::ServerIsPlain,
        _ => TlsProblem::Handshake,
    }
}

/// After a connect to `host:port` failed without a TLS error to say why,
/// asks the server itself which protocol it speaks, within `budget`:
/// `tls` says whether we spoke TLS. Returns the mismatch found, if any.
///
/// A plain Redis answers `PING` with `+PONG` (or `-NOAUTH …`); a TLS port
/// answers a TLS `ClientHello` with a handshake record or an alert (type
/// 0x16 or 0x15, version 3.x). Blocking I/O: run it on a blocking thread.
pub(crate) fn diagnose(host: &str, port: u16, tls: bool, budget: Duration) -> Option<TlsProblem> {
    let deadline = Instant::now() + budget;
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    let mut s = TcpStream::connect_timeout(&addr, budget).ok()?;
    let left = deadline.checked_duration_since(Instant::now())?;
    s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .ok()?;
    s.set_write_timeout(Some(left.max(Duration::from_millis(1))))
        .ok()?;
    if tls {
        s.write_all(b"*1\r\n$4\r\nPING\r\n").ok()?;
        let mut first = [0u8; 1];
        s.read_exact(&mut first).ok()?;
        matches!(first[0], b'+' | b'-').then_some(TlsProblem::ServerIsPlain)
    } else {
        s.write_all(&client_hello()).ok()?;
        let mut head = [0u8; 2];
        s.read_exact(&mut head).ok()?;
        (matches!(head[0], 0x15 | 0x16) && head[1] == 0x03).then_some(TlsProblem::ServerRequiresTls)
    }
}

/// A minimal TLS 1.2 `ClientHello` (two ECDHE suites, the groups and
/// signature schemes they need): enough for any TLS server to answer with a
/// `ServerHello` or an alert, which is all [`diagnose`] reads.
fn client_hello() -> Vec<u8> {
    let mut ext = Vec::new();
    // supported_groups: x25519, secp256r1
    ext.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    ext.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms: rsa_pss_rsae_sha256, rsa_pkcs1_sha256, ecdsa_secp256r1_sha256
    ext.extend([
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x08, 0x04, 0x04, 0x01, 0x04, 0x03,
    ]);
    let mut body = vec![0x03, 0x03]; // TLS 1.2
    body.extend([0x42; 32]); // random
    body.push(0); // no session id
    body.extend([0x00, 0x04, 0xc0, 0x2f, 0xc0, 0x2b]); // ECDHE-RSA/ECDSA-AES128-GCM-SHA256
    body.extend([0x01, 0x00]); // null compression
    body.extend(u16::try_from(ext.len()).unwrap_or(0).to_be_bytes());
    body.extend(ext);
    let mut handshake = vec![0x01]; // ClientHello
    let len = u32::try_from(body.len()).unwrap_or(0).to_be_bytes();
    handshake.extend(&len[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16::try_from(handshake.len()).unwrap_or(0).to_be_bytes());
    record.extend(handshake);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hello_lengths_add_up() {
        let r = client_hello();
        let record_len = usize::from(u16::from_be_bytes([r[3], r[4]]));
        assert_eq!(record_len, r.len() - 5);
        let hs_len = usize::from(r[6]) << 16 | usize::from(r[7]) << 8 | usize::from(r[8]);
        assert_eq!(hs_len, r.len() - 9);
    }

    #[test]
    fn tls_settings_on_a_plain_url_are_refused() {
        let mut tls = RedisTls::default();
        assert!(tls.load("redis://h:1/", "redis://h:1/").is_ok());
        tls.set_ca_pem(b"x".to_vec());
        let err = tls.load("redis://h:1/", "redis://h:1/").unwrap_err();
        assert!(err.to_string().contains("rediss://"), "{err}");
        assert!(tls.load("rediss://h:1/#insecure", "x").is_err());
    }
}
