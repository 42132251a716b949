//! TLS for database connections, with libpq's `sslmode` semantics, on rustls (ring provider):
//! the binary links no system OpenSSL.
//!
//! | sslmode | encrypts | verifies the chain | verifies the host name |
//! |---|---|---|---|
//! | `disable` | no | | |
//! | `allow`, `prefer` | if the server offers it | no | no |
//! | `require` | yes | only if a root certificate is there (as libpq) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! The `postgres` crate only knows disable/prefer/require and hands the TLS handshake to a
//! connector; [`MakeTls`](crate::tls::MakeTls) is that connector, configured per database. It also turns rustls'
//! terse handshake errors into messages that say what failed and which setting decides it.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::Socket;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{DatabaseConfig, KeyError, SslMode};

/// Where the default files live when the config names none, as libpq looks for them.
const DEFAULT_DIR: &str = ".postgresql";
const DEFAULT_ROOT_CERT: &str = "root.crt";
const DEFAULT_CERT: &str = "postgresql.crt";
const DEFAULT_KEY: &str = "postgresql.key";

/// CA bundles `sslrootcert: system` means, first one present wins (Debian, then Red Hat).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// True when `host` names a Unix-domain socket directory; libpq never uses TLS there.
pub fn is_unix_socket(host: &str) -> bool {
    host.starts_with('/') || host.starts_with('@')
}

/// The sslmode the `postgres` crate is given: it only knows disable, prefer and require, and
/// leaves verification to the connector.
pub fn pg_ssl_mode(db: &DatabaseConfig) -> postgres::config::SslMode {
    use postgres::config::SslMode as Pg;
    if is_unix_socket(&db.host) {
        return Pg::Disable;
    }
    match db.sslmode {
        SslMode::Disable => Pg::Disable,
        // `allow` tries plain text first in libpq; the postgres crate cannot, so it encrypts
        // when the server offers it, which is never less safe.
        SslMode::Allow | SslMode::Prefer => Pg::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
    }
}

/// A TLS setting that cannot be used names its key (e.g. `sslrootcert`).
type SetupError = KeyError;

fn setup_err(key: &'static str, message: String) -> SetupError {
    KeyError::new(key, message)
}

/// The files TLS uses for a database: explicit settings, else libpq's defaults when present.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    root_cert: Option<RootCert>,
    client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RootCert {
    File(PathBuf),
    System(PathBuf),
}

impl RootCert {
    fn path(&self) -> &Path {
        match self {
            RootCert::File(p) | RootCert::System(p) => p,
        }
    }
}

fn home_file(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(DEFAULT_DIR).join(name))
}

fn files(db: &DatabaseConfig) -> Result<Files, SetupError> {
    let root_cert = match &db.sslrootcert {
        Some(p) if p.as_os_str() == "system" => {
            // As libpq 16: the system's CAs vouch for many names, so only a host-name check
            // makes them meaningful.
            if db.sslmode != SslMode::VerifyFull {
                return Err(setup_err(
                    "sslrootcert",
                    format!(
                        "\"system\" needs sslmode verify-full (the system CAs vouch for any \
                         public host), not {}",
                        db.sslmode.as_str()
                    ),
                ));
            }
            let bundle = SYSTEM_CA_BUNDLES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    setup_err(
                        "sslrootcert",
                        format!(
                            "\"system\": no CA bundle found (looked for {})",
                            SYSTEM_CA_BUNDLES.join(", ")
                        ),
                    )
                })?;
            Some(RootCert::System(bundle))
        }
        Some(p) => Some(RootCert::File(p.clone())),
        None => home_file(DEFAULT_ROOT_CERT)
            .filter(|p| p.is_file())
            .map(RootCert::File),
    };
    let client = match (&db.sslcert, &db.sslkey) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (Some(cert), None) => {
            let missing = format!(
                "sslcert {} is set but no sslkey (and there is no ~/{DEFAULT_DIR}/{DEFAULT_KEY})",
                cert.display()
            );
            let key = home_file(DEFAULT_KEY)
                .filter(|p| p.is_file())
                .ok_or_else(|| setup_err("sslkey", missing))?;
            Some((cert.clone(), key))
        }
        (None, Some(key)) => {
            return Err(setup_err(
                "sslcert",
                format!(
                    "sslkey {} is set but no sslcert to go with it",
                    key.display()
                ),
            ))
        }
        (None, None) => match home_file(DEFAULT_CERT).filter(|p| p.is_file()) {
            Some(cert) => home_file(DEFAULT_KEY)
                .filter(|p| p.is_file())
                .map(|key| (cert, key)),
            None => None,
        },
    };
    Ok(Files { root_cert, client })
}

/// What the connector knows about its database, for error messages.
#[derive(Debug)]
struct Context {
    sslmode: SslMode,
    root_cert: Option<PathBuf>,
    verifies_chain: bool,
}

/// The connector for one database's connections (and cancel requests).
#[derive(Clone)]
pub struct MakeTls {
    /// An unusable setting fails every handshake with its error, never a weaker connection.
    inner: Result<MakeRustlsConnect, KeyError>,
    context: Arc<Context>,
}

impl fmt::Debug for MakeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeTls")
            .field("context", &self.context)
            .finish()
    }
}

impl MakeTls {
    /// The connector for `db`; if its settings are unusable, every TLS handshake fails with
    /// the reason (see [`MakeTls::new`] to get the error at once instead).
    pub fn for_database(db: &DatabaseConfig) -> MakeTls {
        MakeTls::new(db).unwrap_or_else(|e| MakeTls {
            inner: Err(e),
            context: Arc::new(Context {
                sslmode: db.sslmode,
                root_cert: db.sslrootcert.clone(),
                verifies_chain: db.sslmode != SslMode::Disable,
            }),
        })
    }

    /// Builds the connector for `db`, reading its certificate files now so that a missing or
    /// bad file is reported once, naming its key, rather than at every connection.
    pub fn new(db: &DatabaseConfig) -> Result<MakeTls, SetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls_off = db.sslmode == SslMode::Disable || is_unix_socket(&db.host);
        // With TLS off the connector is never called; do not make unused files an error.
        let files = if tls_off {
            Files {
                root_cert: None,
                client: None,
            }
        } else {
            files(db)?
        };
        let verify_mode = match db.sslmode {
            _ if tls_off => Verify::Nothing,
            SslMode::VerifyFull => Verify::Full,
            SslMode::VerifyCa => Verify::Chain,
            // libpq: `require` verifies the chain when a root certificate is present.
            SslMode::Require if files.root_cert.is_some() => Verify::Chain,
            _ => Verify::Nothing,
        };
        let roots = match (&files.root_cert, verify_mode) {
            (_, Verify::Nothing) => None,
            (Some(root), _) => Some(Arc::new(load_roots(root)?)),
            (None, _) => {
                return Err(setup_err(
                    "sslrootcert",
                    format!(
                        "sslmode {} verifies the server's certificate and needs the CA \
                         certificate(s) to trust: set sslrootcert (no ~/{DEFAULT_DIR}/{DEFAULT_ROOT_CERT} \
                         found), or use sslmode require to encrypt without verifying",
                        db.sslmode.as_str()
                    ),
                ))
            }
        };
        let supported = provider.signature_verification_algorithms;
        let verifier: Arc<dyn ServerCertVerifier> = match (verify_mode, roots) {
            (Verify::Full, Some(roots)) => {
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| {
                        setup_err(
                            "sslrootcert",
                            format!("cannot use the CA certificates: {e}"),
                        )
                    })?
            }
            (Verify::Chain, Some(roots)) => Arc::new(ChainOnly { roots, supported }),
            _ => Arc::new(NoVerification { supported }),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| setup_err("sslmode", format!("cannot set up TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &files.client {
            Some((cert, key)) => {
                let chain = load_certs("sslcert", cert)?;
                let key_der = load_key(key)?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    setup_err(
                        "sslkey",
                        format!(
                            "{} does not fit sslcert {}: {e}",
                            key.display(),
                            cert.display()
                        ),
                    )
                })?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(MakeTls {
            inner: Ok(MakeRustlsConnect::new(config)),
            context: Arc::new(Context {
                sslmode: db.sslmode,
                root_cert: files.root_cert.map(|r| r.path().to_path_buf()),
                verifies_chain: verify_mode != Verify::Nothing,
            }),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    Full,
}

fn load_roots(root: &RootCert) -> Result<RootCertStore, SetupError> {
    let path = root.path();
    let certs = load_certs("sslrootcert", path)?;
    let mut store = RootCertStore::empty();
    match root {
        // A system bundle may hold a certificate rustls cannot parse; skip it as libpq would.
        RootCert::System(_) => {
            store.add_parsable_certificates(certs);
        }
        RootCert::File(_) => {
            for cert in certs {
                store.add(cert).map_err(|e| {
                    setup_err(
                        "sslrootcert",
                        format!("{}: unusable CA certificate: {e}", path.display()),
                    )
                })?;
            }
        }
    }
    if store.is_empty() {
        return Err(setup_err(
            "sslrootcert",
            format!("{}: no usable CA certificate", path.display()),
        ));
    }
    Ok(store)
}

fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let bytes = std::fs::read(path)
        .map_err(|e| setup_err(key, format!("cannot read {}: {e}", path.display())))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| setup_err(key, format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(setup_err(
            key,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, SetupError> {
    check_key_permissions(path)?;
    let bytes = std::fs::read(path)
        .map_err(|e| setup_err("sslkey", format!("cannot read {}: {e}", path.display())))?;
    // The parser's message may quote the file; a private key's content stays out of errors.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        setup_err(
            "sslkey",
            format!(
                "{} holds no usable private key (PEM PKCS#8, PKCS#1 or SEC1; encrypted keys \
                 are not supported)",
                path.display()
            ),
        )
    })
}

/// libpq refuses a private key others can read: 0600 or less for the owner's own file, 0640
/// or less when root owns it (so a group can be given read access).
#[cfg(unix)]
fn check_key_permissions(path: &Path) -> Result<(), SetupError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| setup_err("sslkey", format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(setup_err(
            "sslkey",
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mode = meta.mode() & 0o777;
    let too_open = if meta.uid() == 0 {
        mode & 0o037 != 0
    } else {
        mode & 0o077 != 0
    };
    if too_open {
        return Err(setup_err(
            "sslkey",
            format!(
                "{} has group or world access (mode {mode:04o}); it must be u=rw (0600) or \
                 less, or u=rw,g=r (0640) or less if owned by root",
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_key_permissions(_path: &Path) -> Result<(), SetupError> {
    Ok(())
}

/// verify-ca: the chain must lead to a trusted root (with validity dates and the server-auth
/// purpose checked), but the host name is not compared, as libpq's verify-ca.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    supported: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.supported.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.supported)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.supported)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.supported.supported_schemes()
    }
}

/// require (without a root certificate), prefer, allow: encryption against eavesdropping only,
/// as libpq. The handshake signature is still checked, so the session key belongs to whoever
/// holds the presented certificate's key.
#[derive(Debug)]
struct NoVerification {
    supported: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.supported)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.supported)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.supported.supported_schemes()
    }
}

type InnerConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

impl MakeTlsConnect<Socket> for MakeTls {
    type Stream = Stream;
    type TlsConnect = Connect;
    type Error = KeyError;

    fn make_tls_connect(&mut self, host: &str) -> Result<Connect, KeyError> {
        let inner = match &mut self.inner {
            Ok(make) => match MakeTlsConnect::<Socket>::make_tls_connect(make, host) {
                Ok(connect) => connect,
                Err(never) => match never {},
            },
            Err(e) => return Err(e.clone()),
        };
        Ok(Connect {
            inner,
            host: host.to_string(),
            context: self.context.clone(),
        })
    }
}

/// One handshake; its errors are explained in terms of the database's settings.
pub struct Connect {
    inner: InnerConnect,
    host: String,
    context: Arc<Context>,
}

impl TlsConnect<Socket> for Connect {
    type Stream = Stream;
    type Error = HandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, HandshakeError>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        let handshake = self.inner.connect(stream);
        let (host, context) = (self.host, self.context);
        Box::pin(async move {
            handshake
                .await
                .map_err(|e| HandshakeError::explain(e, &host, &context))
        })
    }
}

/// A failed TLS handshake, said in terms of sslmode and sslrootcert.
#[derive(Debug)]
pub struct HandshakeError {
    message: String,
    source: io::Error,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl HandshakeError {
    fn explain(source: io::Error, host: &str, context: &Context) -> HandshakeError {
        let mode = if context.sslmode == SslMode::Require && context.verifies_chain {
            // Surprising to anyone who does not know libpq: say why require verified anything.
            "require, which verifies the chain when a root certificate is given".to_string()
        } else {
            context.sslmode.as_str().to_string()
        };
        let roots = match &context.root_cert {
            Some(p) => format!("sslrootcert {}", p.display()),
            None => "no sslrootcert".to_string(),
        };
        let rustls_error = source
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        let message = match rustls_error {
            Some(rustls::Error::InvalidCertificate(cert_error)) => match cert_error {
                CertificateError::NotValidForName => format!(
                    "the server's certificate is not valid for host name {host:?} \
                     (sslmode {mode} checks the host name: connect by a name the certificate \
                     holds, or use sslmode verify-ca)"
                ),
                CertificateError::NotValidForNameContext { presented, .. } => format!(
                    "the server's certificate is not valid for host name {host:?}, only for {} \
                     (sslmode {mode} checks the host name: connect by a name the certificate \
                     holds, or use sslmode verify-ca)",
                    if presented.is_empty() {
                        "no name".to_string()
                    } else {
                        presented
                            .iter()
                            .map(|n| plain_name(n))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
                CertificateError::UnknownIssuer => format!(
                    "the server's certificate is not trusted: it is not issued by a CA in {roots} \
                     (sslmode {mode})"
                ),
                CertificateError::BadSignature => format!(
                    "the server's certificate is not trusted: its signature does not verify \
                     against {roots} (sslmode {mode})"
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
                    "the server's certificate (or one in its chain) has expired: {cert_error} \
                     (sslmode {mode})"
                ),
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    format!(
                        "the server's certificate (or one in its chain) is not valid yet: \
                         {cert_error} (sslmode {mode})"
                    )
                }
                other => format!(
                    "the server's certificate was rejected: {other} (sslmode {mode}, {roots})"
                ),
            },
            Some(rustls::Error::AlertReceived(alert)) => format!(
                "the server refused the TLS handshake with alert {alert:?} (a client \
                 certificate the server does not accept? see sslcert/sslkey)"
            ),
            Some(other) => format!("TLS handshake failed: {other} (sslmode {mode})"),
            None => format!("TLS handshake failed: {source} (sslmode {mode})"),
        };
        // Without verification nothing about the certificate can fail; say so when it matters.
        let message = if context.verifies_chain || rustls_error.is_none() {
            message
        } else {
            format!("{message}; note: sslmode {mode} does not verify the certificate")
        };
        HandshakeError { message, source }
    }
}

/// `DnsName("db.example")` as rustls lists a certificate's names, said plainly: `db.example`.
fn plain_name(name: &str) -> &str {
    name.split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map(|inner| inner.trim_matches('"'))
        .unwrap_or(name)
}

/// The connection-failure text with a hint for the failures the connector cannot explain: a
/// server that refuses TLS while sslmode demands it, and a password nobody gave.
pub fn describe_connect_error(e: &postgres::Error) -> String {
    let mut text = crate::db::describe(e);
    // postgres::Error's Display leaves out its cause ("error performing TLS handshake"), and
    // the cause is what the person needs: the refused port, the certificate problem.
    if e.as_db_error().is_none() {
        if let Some(cause) = std::error::Error::source(e) {
            text = format!("{text}: {cause}");
        }
    }
    if text.ends_with("server does not support TLS") {
        format!(
            "{text}: the server has ssl = off (or does not offer TLS); sslmode require, \
             verify-ca and verify-full insist on TLS, prefer would fall back to plain text"
        )
    } else if text.ends_with("password missing") {
        // Not TLS, but the other connection failure whose fix is in the broker's settings.
        format!(
            "{text}: the server asks for a password and none was found (set password, \
             password_file, PGSQL_BROKER_DB_<NAME>_PASSWORD or a pgpass entry)"
        )
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_names_read_plainly() {
        assert_eq!(plain_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(plain_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(plain_name("db.example"), "db.example");
    }

    #[test]
    fn unix_sockets_never_use_tls() {
        let mut db = DatabaseConfig::new("app");
        db.host = "/var/run/postgresql".into();
        db.sslmode = SslMode::VerifyFull;
        assert_eq!(pg_ssl_mode(&db), postgres::config::SslMode::Disable);
        // No root certificate needed either: TLS is never attempted.
        assert!(MakeTls::new(&db).is_ok());
    }

    #[test]
    fn modes_map_to_the_postgres_crate() {
        use postgres::config::SslMode as Pg;
        let mut db = DatabaseConfig::new("app");
        db.host = "db.example".into();
        for (mode, pg) in [
            (SslMode::Disable, Pg::Disable),
            (SslMode::Allow, Pg::Prefer),
            (SslMode::Prefer, Pg::Prefer),
            (SslMode::Require, Pg::Require),
            (SslMode::VerifyCa, Pg::Require),
            (SslMode::VerifyFull, Pg::Require),
        ] {
            db.sslmode = mode;
            assert_eq!(pg_ssl_mode(&db), pg, "{mode:?}");
        }
    }

    #[test]
    fn setup_errors_name_the_key() {
        let mut db = DatabaseConfig::new("app");
        db.host = "db.example".into();
        db.sslmode = SslMode::VerifyFull;
        db.sslrootcert = Some("/nonexistent/root.crt".into());
        let e = MakeTls::new(&db).unwrap_err();
        assert_eq!(e.key, "sslrootcert");
        assert!(e.message.contains("/nonexistent/root.crt"), "{e}");

        db.sslrootcert = Some("system".into());
        db.sslmode = SslMode::Require;
        let e = MakeTls::new(&db).unwrap_err();
        assert!(e.message.contains("verify-full"), "{e}");

        db.sslrootcert = None;
        db.sslmode = SslMode::Require;
        db.sslkey = Some("/nonexistent/client.key".into());
        let e = MakeTls::new(&db).unwrap_err();
        assert_eq!(e.key, "sslcert");

        // Disabled TLS reads no files.
        db.sslmode = SslMode::Disable;
        assert!(MakeTls::new(&db).is_ok());
    }
}
