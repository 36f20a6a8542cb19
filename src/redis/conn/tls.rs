//! TLS to Redis (`rediss://`, feature `tls`): the URL's scheme checked
//! against the settings ([`RedisTls`], the shared [`TlsSettings`] set
//! through [`RedisOptions`](crate::redis::RedisOptions)), the material
//! handed to redis-rs at connect time ([`TlsMaterial`]), and the diagnosis
//! of a connection that failed into a [`TlsProblem`] (the rustls error,
//! classified by [`crate::tls`], or a probe of the port).
//!
//! Certificates are always checked: the server's chain against the
//! platform's roots or the CA given, and its name against the URL's host.
//! There is no switch to turn that off (redis-rs's `#insecure` URL
//! fragment is refused), so no configuration can skip it by accident.
//!
//! # Layering
//!
//! Uses the contract's error types, the shared [`crate::tls`] and redis-rs
//! only; `errors`, `cluster`, `pool` and `client` use it.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::{LockError, TlsProblem};
use crate::tls::TlsSettings;

/// The TLS settings of a Redis client: [`TlsSettings`], under the name the
/// Redis options have always used. Set them with
/// [`RedisOptions::tls_ca`](crate::redis::RedisOptions::tls_ca) and its
/// siblings; they apply to `rediss://` and `rediss+cluster://` URLs
/// (feature `tls`).
pub type RedisTls = TlsSettings;

/// Reads `tls`'s files and checks the URL's scheme against the settings.
///
/// # Errors
///
/// [`LockError::InvalidArgument`] for unreadable or malformed files,
/// TLS settings on a plain URL, or an `#insecure` URL;
/// [`LockError::Tls`] ([`TlsProblem::NotEnabled`]) for a `rediss://`
/// URL without the feature `tls`.
pub(crate) fn load(tls: &TlsSettings, url: &str, what: &str) -> Result<TlsMaterial, LockError> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    let tls_url = scheme.starts_with("rediss");
    if !tls_url {
        if tls.is_set() {
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
    load_tls(tls, what)
}

#[cfg(not(feature = "tls"))]
fn load_tls(_: &TlsSettings, what: &str) -> Result<TlsMaterial, LockError> {
    Err(LockError::Tls {
        server: what.to_owned(),
        problem: TlsProblem::NotEnabled,
        source: None,
    })
}

#[cfg(feature = "tls")]
fn load_tls(tls: &TlsSettings, _what: &str) -> Result<TlsMaterial, LockError> {
    crate::tls::ensure_crypto_provider();
    if !tls.is_set() {
        return Ok(TlsMaterial {
            tls: true,
            certs: None,
        });
    }
    let pems = tls.load()?;
    let certs = redis::TlsCertificates {
        client_tls: pems
            .client
            .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
        root_cert: pems.ca,
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
        crate::tls::problem_in(inner)
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = err;
        None
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
        let tls = RedisTls::default();
        assert!(load(&tls, "redis://h:1/", "redis://h:1/").is_ok());
        let tls = tls.ca_pem("x");
        let err = load(&tls, "redis://h:1/", "redis://h:1/").unwrap_err();
        assert!(err.to_string().contains("rediss://"), "{err}");
        assert!(load(&tls, "rediss://h:1/#insecure", "x").is_err());
    }
}
