//! The cluster cookie and optional TLS between nodes.
//!
//! **Cookie.** ractor_cluster authenticates every new connection with a challenge/response on
//! a shared secret (the cookie; the cookie itself never crosses the wire). conclave reads it
//! from `--cookie-file FILE` (trailing whitespace and newlines are trimmed) or, without that
//! flag, from the `CONCLAVE_COOKIE` environment variable, and refuses to start a cluster
//! without one: an unauthenticated cluster would run anyone's agents with this node's API
//! keys. The cookie is never logged ([`Cookie`]'s `Debug` is redacted).
//!
//! **TLS** (`--tls-cert`, `--tls-key`, `--tls-ca`, all PEM): mutual TLS 1.3 with rustls (the
//! aws-lc-rs provider). Each node presents its certificate and accepts only peers whose
//! certificate chains to the CA, in both directions; the cookie check still runs inside the
//! TLS session. The client checks the server's certificate against the host name of
//! `--join` (or `--tls-server-name`), so the orchestrator's certificate must name it
//! (a DNS name or an IP address SAN).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The environment variable read when no `--cookie-file` is given.
pub const COOKIE_ENV: &str = "CONCLAVE_COOKIE";

/// Cookies shorter than this are refused: they could be guessed.
pub const MIN_COOKIE_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read the cookie file {path}: {source}")]
    CookieFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no cluster cookie: pass --cookie-file FILE or set {COOKIE_ENV} (the same secret on every node; e.g. `head -c 32 /dev/urandom | base64 > cookie`)"
    )]
    NoCookie,
    #[error("the cluster cookie is too short ({len} characters); use at least {MIN_COOKIE_LEN}")]
    CookieTooShort { len: usize },
    #[error("TLS needs --tls-cert, --tls-key and --tls-ca together; missing: {0}")]
    TlsIncomplete(String),
    #[error("cannot read {what} from {path}: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("`{0}` is not a valid TLS server name (a DNS name or an IP address)")]
    ServerName(String),
}

/// The shared cluster secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Cookie(String);

impl std::fmt::Debug for Cookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookie(<redacted>)")
    }
}

impl Cookie {
    /// A cookie from its text (trailing whitespace trimmed).
    pub fn new(text: &str) -> Result<Self, SecurityError> {
        let text = text.trim_end();
        if text.is_empty() {
            return Err(SecurityError::NoCookie);
        }
        let len = text.chars().count();
        if len < MIN_COOKIE_LEN {
            return Err(SecurityError::CookieTooShort { len });
        }
        Ok(Self(text.to_owned()))
    }

    /// From `--cookie-file`, else the `CONCLAVE_COOKIE` value `env` gives.
    pub fn load(file: Option<&Path>, env: Option<String>) -> Result<Self, SecurityError> {
        match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| SecurityError::CookieFile {
                        path: path.to_owned(),
                        source,
                    })?;
                Self::new(&text)
            }
            None => Self::new(&env.unwrap_or_default()),
        }
    }

    /// The secret, for ractor_cluster only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The PEM files of a node's TLS identity and the cluster CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    /// All three flags or none.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Option<Self>, SecurityError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(Self { cert, key, ca })),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "--tls-cert"),
                    (key.is_none(), "--tls-key"),
                    (ca.is_none(), "--tls-ca"),
                ]
                .into_iter()
                .filter_map(|(missing, flag)| missing.then_some(flag))
                .collect();
                Err(SecurityError::TlsIncomplete(missing.join(", ")))
            }
        }
    }
}

/// A node's loaded TLS setup: both directions of mutual TLS.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(mutual, rustls)")
    }
}

fn pem_error(what: &'static str, path: &Path, error: impl std::fmt::Display) -> SecurityError {
    SecurityError::Pem {
        what,
        path: path.to_owned(),
        message: error.to_string(),
    }
}

fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(pem_error(what, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

impl Tls {
    /// Loads the PEM files and builds both TLS configurations.
    pub fn load(files: &TlsFiles) -> Result<Self, SecurityError> {
        let certs = load_certs(&files.cert, "the node certificate")?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| pem_error("the private key", &files.key, e))?;
        let mut roots = RootCertStore::empty();
        for ca in load_certs(&files.ca, "the CA certificate")? {
            roots
                .add(ca)
                .map_err(|e| pem_error("the CA certificate", &files.ca, e))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = |e: rustls::Error| SecurityError::Tls(e.to_string());

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| SecurityError::Tls(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(tls)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(tls)?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }
}

/// The TLS server name for a `HOST:PORT` address (or an explicit override).
pub fn server_name(host: &str) -> Result<ServerName<'static>, SecurityError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| SecurityError::ServerName(host.to_owned()))
}

/// Says in words why an inbound TLS handshake failed (for the refusal in the log).
pub fn describe_tls_error(error: &std::io::Error) -> String {
    use rustls::{CertificateError, Error};
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                "the peer closed the connection during the handshake".to_owned()
            }
            _ => format!("connection error: {error}"),
        };
    };
    match tls {
        Error::NoCertificatesPresented => {
            "no client certificate: the peer presented none (start the node with --tls-cert, --tls-key and --tls-ca)".to_owned()
        }
        Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | Error::InvalidCertificate(CertificateError::BadSignature) => {
            "wrong CA: the peer's certificate is not signed by this cluster's CA (--tls-ca)".to_owned()
        }
        Error::InvalidCertificate(CertificateError::Expired)
        | Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "the peer's certificate has expired".to_owned()
        }
        Error::InvalidMessage(_) | Error::InappropriateHandshakeMessage { .. } | Error::InappropriateMessage { .. } => {
            "not TLS: the peer does not speak TLS (a node started without --tls-*?) or sent garbage".to_owned()
        }
        other => format!("TLS error: {other}"),
    }
}

/// Whether a (CA-verified) node certificate is issued for `name`: one of its DNS names (SAN)
/// equals it. The common name is not read: WebPKI trusts only the SAN.
pub fn certificate_names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    match webpki::EndEntityCert::try_from(cert) {
        Ok(end_entity) => end_entity
            .verify_is_valid_for_subject_name(&server_name)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_trimmed_checked_and_never_printed() {
        let cookie = Cookie::new("correct-horse-battery\n").unwrap();
        assert_eq!(cookie.expose(), "correct-horse-battery");
        assert!(!format!("{cookie:?}").contains("horse"));
        assert!(matches!(Cookie::new("  \n"), Err(SecurityError::NoCookie)));
        assert!(matches!(
            Cookie::new("short"),
            Err(SecurityError::CookieTooShort { len: 5 })
        ));
        assert!(matches!(
            Cookie::load(None, None),
            Err(SecurityError::NoCookie)
        ));
        let dir = std::env::temp_dir().join(format!("conclave-cookie-{}", std::process::id()));
        std::fs::write(&dir, "from-a-file-1234\n").unwrap();
        assert_eq!(
            Cookie::load(Some(&dir), Some("ignored-env-value".into()))
                .unwrap()
                .expose(),
            "from-a-file-1234"
        );
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn tls_flags_come_together() {
        assert_eq!(TlsFiles::from_flags(None, None, None).unwrap(), None);
        let err = TlsFiles::from_flags(Some("c".into()), None, None).unwrap_err();
        assert!(err.to_string().contains("--tls-key, --tls-ca"), "{err}");
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("orch.example").is_ok());
        assert!(server_name("[::1]").is_ok());
    }
}
