//! Certificates for the TLS tests, made by the test with `rcgen` (no
//! `openssl` needed): a CA, a server certificate it signed for `localhost`
//! and `127.0.0.1`, an expired one, one for another host name, a client
//! certificate for mutual TLS, and a second, unrelated CA (the "wrong CA" a client may be given).
//!
//! [`TlsFiles::generate`] writes them as PEM files into a temporary
//! directory (removed on drop); [`crate::redis::RedisServer::start_tls`]
//! and [`crate::cluster::RedisCluster::start_tls`] start servers with them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// A CA and the certificates it signed, as PEM files.
#[derive(Debug)]
pub struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    /// Makes the CA and every certificate (a few milliseconds).
    pub fn generate() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lockyard-test-tls-")
            .tempdir()
            .expect("a temporary directory");
        let write = |name: &str, pem: &str| {
            std::fs::write(dir.path().join(name), pem).expect("write a PEM file");
        };

        let ca = issuer("lockyard test CA");
        write("ca.pem", &ca.pem());
        let other_ca = issuer("another CA");
        write("other-ca.pem", &other_ca.pem());

        let leaf = |cn: &str, client: bool, expired: bool| {
            let names = if cn == "elsewhere.invalid" {
                vec![cn.to_owned()]
            } else {
                vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
            };
            let mut p = CertificateParams::new(names).expect("SANs");
            p.distinguished_name.push(DnType::CommonName, cn);
            p.use_authority_key_identifier_extension = true;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            // A Cluster node presents its server certificate as a client
            // too, on the cluster bus and to the master it replicates.
            p.extended_key_usages = if client {
                vec![ExtendedKeyUsagePurpose::ClientAuth]
            } else {
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ]
            };
            if expired {
                p.not_before = date_time_ymd(2020, 1, 1);
                p.not_after = date_time_ymd(2021, 1, 1);
            }
            let key = KeyPair::generate().expect("a key");
            let cert = p.signed_by(&key, &ca).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (cert, key) = leaf("localhost", false, false);
        write("server.pem", &cert);
        write("server.key", &key);
        let (cert, key) = leaf("localhost", false, true);
        write("expired.pem", &cert);
        write("expired.key", &key);
        let (cert, key) = leaf("elsewhere.invalid", false, false);
        write("elsewhere.pem", &cert);
        write("elsewhere.key", &key);
        let (cert, key) = leaf("lockyard test client", true, false);
        write("client.pem", &cert);
        write("client.key", &key);
        Self { dir }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA that signed the server and client certificates.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// An unrelated CA: trusting it instead of [`ca`](Self::ca) must fail.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    /// The server's certificate and key.
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("server.pem"),
            self.dir.path().join("server.key"),
        )
    }

    /// A server certificate (signed by the CA) that expired in 2021.
    pub fn expired_server(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("expired.pem"),
            self.dir.path().join("expired.key"),
        )
    }

    /// A server certificate (signed by the CA) for `elsewhere.invalid`
    /// only: not valid for `127.0.0.1` or `localhost`.
    pub fn wrong_name_server(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("elsewhere.pem"),
            self.dir.path().join("elsewhere.key"),
        )
    }

    /// The client certificate and key for mutual TLS.
    pub fn client(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("client.pem"),
            self.dir.path().join("client.key"),
        )
    }
}

fn issuer(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(p, KeyPair::generate().expect("a key")).expect("a CA")
}

/// How a TLS server is set up: which certificate it presents and whether
/// it requires a client certificate.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The CA file (`--tls-ca-cert-file`; also what `redis-cli` trusts).
    pub ca: PathBuf,
    /// `--tls-cert-file`, `--tls-key-file`.
    pub cert: (PathBuf, PathBuf),
    /// `--tls-auth-clients yes` (mutual TLS) rather than `no`.
    pub mutual: bool,
    /// The client certificate `redis-cli` presents (for a mutual server).
    pub client: (PathBuf, PathBuf),
}

impl ServerTls {
    /// A server presenting the valid certificate, without client
    /// certificates.
    pub fn new(files: &TlsFiles) -> Self {
        Self {
            ca: files.ca(),
            cert: files.server(),
            mutual: false,
            client: files.client(),
        }
    }

    /// Requires client certificates (`--tls-auth-clients yes`).
    pub fn mutual(mut self) -> Self {
        self.mutual = true;
        self
    }

    /// Presents the expired certificate.
    pub fn expired(mut self, files: &TlsFiles) -> Self {
        self.cert = files.expired_server();
        self
    }

    /// Presents a certificate for another host name.
    pub fn wrong_name(mut self, files: &TlsFiles) -> Self {
        self.cert = files.wrong_name_server();
        self
    }

    /// The `redis-server` arguments for TLS only on `port`.
    pub(crate) fn server_args(&self, port: u16) -> Vec<String> {
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            self.cert.0.display().to_string(),
            "--tls-key-file".into(),
            self.cert.1.display().to_string(),
            "--tls-ca-cert-file".into(),
            self.ca.display().to_string(),
            "--tls-auth-clients".into(),
            if self.mutual { "yes" } else { "no" }.into(),
        ]
    }

    /// The `redis-cli` arguments to reach such a server, for the test's
    /// own administration (`--insecure`: it reaches the expired one too;
    /// only lockyard's checks are under test).
    pub(crate) fn cli_args(&self) -> Vec<String> {
        vec![
            "--tls".into(),
            "--insecure".into(),
            "--cacert".into(),
            self.ca.display().to_string(),
            "--cert".into(),
            self.client.0.display().to_string(),
            "--key".into(),
            self.client.1.display().to_string(),
        ]
    }
}
