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
//! connector; [`MakeTls`] is that connector, configured per database. It also turns rustls'
//! terse handshake errors into messages that say what failed and which setting decides it.
//! The files it uses (root certificates, client certificate and key) are read by
//! `config::tls`.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::Socket;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{
    is_unix_socket, Config, ConfigError, DatabaseConfig, KeyError, SslMode, Verify,
};

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
    pub fn new(db: &DatabaseConfig) -> Result<MakeTls, KeyError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = db.tls_files()?;
        let supported = provider.signature_verification_algorithms;
        let verifier: Arc<dyn ServerCertVerifier> = match (files.verify, files.roots) {
            (Verify::Full, Some(roots)) => {
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| {
                        KeyError::new(
                            "sslrootcert",
                            format!("cannot use the CA certificates: {e}"),
                        )
                    })?
            }
            (Verify::Chain, Some(roots)) => Arc::new(ChainVerifier {
                roots: Some(Arc::new(roots)),
                supported,
            }),
            _ => Arc::new(ChainVerifier {
                roots: None,
                supported,
            }),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| KeyError::new("sslmode", format!("cannot set up TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match files.client {
            Some(client) => builder
                .with_client_auth_cert(client.chain, client.key)
                .map_err(|e| {
                    KeyError::new(
                        "sslkey",
                        format!(
                            "{} does not fit sslcert {}: {e}",
                            client.key_path.display(),
                            client.cert_path.display()
                        ),
                    )
                })?,
            None => builder.with_no_client_auth(),
        };
        Ok(MakeTls {
            inner: Ok(MakeRustlsConnect::new(config)),
            context: Arc::new(Context {
                sslmode: db.sslmode,
                root_cert: files.root_path,
                verifies_chain: files.verify != Verify::Nothing,
            }),
        })
    }
}

/// Builds every database's connector, so that the command reports at start what
/// [`Config::load`] cannot see (a key that does not fit its certificate) as a configuration
/// error naming its key.
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    for (i, db) in config.databases.iter().enumerate() {
        MakeTls::new(db).map_err(|e| e.at(&format!("databases[{i}]")))?;
    }
    Ok(())
}

/// The verifier for every sslmode but verify-full (which uses rustls' own, host name included).
/// With `roots` (verify-ca, or require with a root certificate) the chain must lead to a
/// trusted root, with validity dates and the server-auth purpose checked, but the host name is
/// not compared, as libpq's verify-ca. Without (require, prefer, allow) it is encryption
/// against eavesdropping only, as libpq. Either way the handshake signature is checked, so the
/// session key belongs to whoever holds the presented certificate's key.
#[derive(Debug)]
struct ChainVerifier {
    roots: Option<Arc<RootCertStore>>,
    supported: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.supported.all,
            )?;
        }
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

#[cfg(test)]
mod tests;
