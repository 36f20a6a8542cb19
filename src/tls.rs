//! TLS material every backend shares (Redis's `rediss://`, Postgres's
//! `sslmode`): what a client trusts and presents ([`TlsSettings`]), the PEM
//! files read from it at connect time ([`TlsPems`]), the rustls
//! [`ClientConfig`](rustls::ClientConfig) built from them, the one crypto
//! provider, and the diagnosis of a rustls error into a [`TlsProblem`].
//!
//! Certificates are always checked against the platform's roots or the CA
//! given; no setting here turns that off. Whether the host name is checked
//! too is the backend's choice ([`NameCheck`]), stated in its docs.
//!
//! # Layering
//!
//! Uses the contract's error types and rustls only; `redis/conn/` and
//! `postgres/` use it.

use std::fmt;
use std::path::PathBuf;

use crate::error::LockError;
#[cfg(feature = "tls")]
use crate::error::TlsProblem;

/// Where a PEM comes from: a file read at connect time, or bytes given.
#[derive(Clone, PartialEq, Eq)]
enum Pem {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl Pem {
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
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

/// The TLS settings of a client, for every backend: a custom CA to trust
/// instead of the platform's roots, and a client certificate for mutual
/// TLS. Set them with the backend's options:
/// `RedisOptions::tls_ca` (for `rediss://` URLs, where this type is also
/// called `RedisTls`) or `PgOptions::tls_ca` (for a Postgres URL's
/// `sslmode`), and their siblings; feature `tls`.
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
pub struct TlsSettings {
    ca: Option<Pem>,
    /// (certificate chain, private key).
    client: Option<(Pem, Pem)>,
}

impl TlsSettings {
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

    /// Whether a CA or a client certificate was given.
    pub(crate) fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    /// Trusts the CA certificates in the PEM file at `path` (read at
    /// connect time) instead of the platform's roots.
    ///
    /// ```
    /// let tls = lockyard::TlsSettings::default().ca("/etc/ssl/private-ca.pem");
    /// assert!(tls.has_ca());
    /// ```
    ///
    /// # Errors
    ///
    /// None here: the backend's connect reports an unreadable or malformed
    /// file as [`LockError::InvalidArgument`].
    pub fn ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(Pem::File(path.into()));
        self
    }

    /// As [`ca`](Self::ca), with the CA certificates as PEM bytes (from a
    /// secret store, say) rather than a file.
    ///
    /// ```
    /// let pem = b"-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n";
    /// let tls = lockyard::TlsSettings::default().ca_pem(pem.to_vec());
    /// assert!(tls.has_ca());
    /// ```
    ///
    /// # Errors
    ///
    /// None here: the backend's connect reports malformed PEM as
    /// [`LockError::InvalidArgument`].
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(Pem::Bytes(pem.into()));
        self
    }

    /// Presents the client certificate (chain) in the PEM file `cert`, with
    /// its private key in `key` (read at connect time), to a server that
    /// requires mutual TLS.
    ///
    /// ```
    /// let tls = lockyard::TlsSettings::default().client_cert("client.pem", "client.key");
    /// assert!(tls.has_client_cert());
    /// ```
    ///
    /// # Errors
    ///
    /// None here: the backend's connect reports unreadable or malformed
    /// files as [`LockError::InvalidArgument`].
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client = Some((Pem::File(cert.into()), Pem::File(key.into())));
        self
    }

    /// As [`client_cert`](Self::client_cert), from PEM bytes. The key never
    /// appears in `Debug` output.
    ///
    /// ```
    /// let tls = lockyard::TlsSettings::default().client_cert_pem("CERT", "KEY");
    /// assert!(!format!("{tls:?}").contains("KEY\""));
    /// ```
    ///
    /// # Errors
    ///
    /// None here: the backend's connect reports malformed PEM as
    /// [`LockError::InvalidArgument`].
    pub fn client_cert_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.client = Some((Pem::Bytes(cert.into()), Pem::Bytes(key.into())));
        self
    }

    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    /// Reads the files given and checks that each holds the PEM block it
    /// should.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidArgument`] for an unreadable file or one without
    /// a `CERTIFICATE` (`PRIVATE KEY`) block.
    pub(crate) fn load(&self) -> Result<TlsPems, LockError> {
        let ca = match &self.ca {
            Some(pem) => {
                let bytes = pem.load("TLS CA")?;
                check_pem(&bytes, "TLS CA", "CERTIFICATE")?;
                Some(bytes)
            }
            None => None,
        };
        let client = match &self.client {
            Some((cert, key)) => {
                let cert = cert.load("TLS client certificate")?;
                check_pem(&cert, "TLS client certificate", "CERTIFICATE")?;
                let key = key.load("TLS client key")?;
                check_pem(&key, "TLS client key", "PRIVATE KEY")?;
                Some((cert, key))
            }
            None => None,
        };
        Ok(TlsPems { ca, client })
    }
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TlsSettings");
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

/// The `tls_*` builder methods of a backend's options type (which has a
/// `tls: TlsSettings` field), written once: `$options` is the type's path
/// under `lockyard::`, `$new` how its docs make one, `$about` what the CA
/// is used for with that backend.
macro_rules! tls_option_methods {
    ($options:literal, $new:literal, $about:literal) => {
        /// Trusts the CA certificates in the PEM file at `path` (read at
        /// connect time) instead of the platform's roots,
        #[doc = $about]
        ///
        /// ```
        #[doc = concat!("let opts = lockyard::", $options, $new, ".tls_ca(\"/etc/ssl/private-ca.pem\");")]
        /// assert!(opts.tls.has_ca());
        /// ```
        ///
        /// # Errors
        ///
        /// None here: connecting reports an unreadable or malformed file as
        /// [`LockError::InvalidArgument`](crate::LockError::InvalidArgument).
        pub fn tls_ca(mut self, path: impl Into<std::path::PathBuf>) -> Self {
            self.tls = std::mem::take(&mut self.tls).ca(path);
            self
        }

        /// As [`tls_ca`](Self::tls_ca), with the CA certificates as PEM
        /// bytes (from a secret store, say) rather than a file.
        ///
        /// ```
        /// let pem = b"-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n";
        #[doc = concat!("let opts = lockyard::", $options, $new, ".tls_ca_pem(pem.to_vec());")]
        /// assert!(opts.tls.has_ca());
        /// ```
        ///
        /// # Errors
        ///
        /// None here: connecting reports malformed PEM as
        /// [`LockError::InvalidArgument`](crate::LockError::InvalidArgument).
        pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
            self.tls = std::mem::take(&mut self.tls).ca_pem(pem);
            self
        }

        /// Presents the client certificate (chain) in the PEM file `cert`,
        /// with its private key in `key`, to a server that requires mutual
        /// TLS. Read at connect time; needs the feature `tls`.
        ///
        /// ```
        #[doc = concat!("let opts = lockyard::", $options, $new)]
        ///     .tls_ca("/etc/ssl/private-ca.pem")
        ///     .tls_client_cert("/etc/ssl/client.pem", "/etc/ssl/client.key");
        /// assert!(opts.tls.has_client_cert());
        /// ```
        ///
        /// # Errors
        ///
        /// None here: connecting reports unreadable or malformed files as
        /// [`LockError::InvalidArgument`](crate::LockError::InvalidArgument).
        pub fn tls_client_cert(
            mut self,
            cert: impl Into<std::path::PathBuf>,
            key: impl Into<std::path::PathBuf>,
        ) -> Self {
            self.tls = std::mem::take(&mut self.tls).client_cert(cert, key);
            self
        }

        /// As [`tls_client_cert`](Self::tls_client_cert), from PEM bytes.
        /// The key never appears in `Debug` output.
        ///
        /// ```
        #[doc = concat!("let opts = lockyard::", $options, $new, ".tls_client_cert_pem(\"CERT\", \"KEY\");")]
        /// assert!(opts.tls.has_client_cert());
        /// assert!(!format!("{opts:?}").contains("KEY\""));
        /// ```
        ///
        /// # Errors
        ///
        /// None here: connecting reports malformed PEM as
        /// [`LockError::InvalidArgument`](crate::LockError::InvalidArgument).
        pub fn tls_client_cert_pem(
            mut self,
            cert: impl Into<Vec<u8>>,
            key: impl Into<Vec<u8>>,
        ) -> Self {
            self.tls = std::mem::take(&mut self.tls).client_cert_pem(cert, key);
            self
        }
    };
}
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) use tls_option_methods;

/// The PEM bytes of [`TlsSettings`], read and checked.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) struct TlsPems {
    /// The custom CA's certificates (none: the platform's roots).
    pub(crate) ca: Option<Vec<u8>>,
    /// The client certificate chain and its private key.
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
}

/// Whether `bytes` hold at least one PEM block whose label ends in `label`
/// (`CERTIFICATE`; `PRIVATE KEY` also matches `RSA PRIVATE KEY`).
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
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
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may have installed one meanwhile: then that one
        // stays, which is as good. ring rather than aws-lc-rs for its
        // build cost (no C toolchain beyond cc); rustls marks it
        // deprecated because it lacks post-quantum key exchange, which
        // Redis and Postgres servers do not offer either.
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let _ = provider.install_default();
    }
}

/// Which of the server certificate's checks a [`client_config`] makes
/// besides its chain and dates (always checked).
#[cfg(feature = "tls")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) enum NameCheck {
    /// The certificate must be valid for the host connected to.
    HostName,
    /// Any host name (libpq's `verify-ca`): only safe with a private CA,
    /// which the caller must insist on.
    ChainOnly,
}

/// A rustls client configuration from `pems`: the custom CA or else the
/// platform's roots, the client certificate if any, with the process's
/// crypto provider.
///
/// # Errors
///
/// [`LockError::InvalidArgument`] for PEM that does not parse, a key that
/// does not fit, or a platform without any root certificate.
#[cfg(feature = "tls")]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn client_config(
    pems: &TlsPems,
    names: NameCheck,
) -> Result<rustls::ClientConfig, LockError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;

    ensure_crypto_provider();
    let bad = |what: &'static str, reason: String| LockError::InvalidArgument { what, reason };
    let mut roots = rustls::RootCertStore::empty();
    match &pems.ca {
        Some(ca) => {
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert = cert.map_err(|e| bad("TLS CA", e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| bad("TLS CA", format!("not a CA certificate: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(ToString::to_string);
                return Err(bad(
                    "TLS roots",
                    format!(
                        "no root certificate found on this platform ({}): give the server's CA",
                        why.as_deref().unwrap_or("none installed")
                    ),
                ));
            }
        }
    }
    let roots = Arc::new(roots);
    let verifier = rustls::client::WebPkiServerVerifier::builder(roots)
        .build()
        .map_err(|e| bad("TLS CA", e.to_string()))?;
    let builder = rustls::ClientConfig::builder();
    let builder = match names {
        NameCheck::HostName => builder.with_webpki_verifier(verifier),
        NameCheck::ChainOnly => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier))),
    };
    match &pems.client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("TLS client certificate", e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| bad("TLS client key", e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("TLS client certificate", e.to_string()))
        }
    }
}

/// A verifier that checks the chain, the dates and the signatures as
/// webpki does, and accepts a certificate for any host name (libpq's
/// `verify-ca`). webpki checks the chain before the name, so a name error
/// means the chain passed.
#[cfg(feature = "tls")]
#[derive(Debug)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
struct ChainOnly(std::sync::Arc<rustls::client::WebPkiServerVerifier>);

#[cfg(feature = "tls")]
impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError as C;
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The rustls error somewhere in `err`'s chain of sources, classified.
/// An `io::Error` hides its inner error from `source()`, so each one met is
/// opened with `get_ref`.
#[cfg(feature = "tls")]
pub(crate) fn problem_in(err: &(dyn std::error::Error + 'static)) -> Option<TlsProblem> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(classify(r));
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(classify(r));
        }
        next = e.source();
    }
    None
}

/// What a rustls error says went wrong.
#[cfg(feature = "tls")]
pub(crate) fn classify(e: &rustls::Error) -> TlsProblem {
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

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;

    #[test]
    fn a_rustls_error_inside_an_io_error_is_found() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(problem_in(&io), Some(TlsProblem::UntrustedCertificate));
        let plain = std::io::Error::other("reset");
        assert_eq!(problem_in(&plain), None);
    }

    #[test]
    fn files_without_the_right_pem_block_are_refused() {
        let tls = TlsSettings::default().ca_pem("not a certificate");
        let err = tls.load().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("CERTIFICATE"), "{err}");
    }
}
